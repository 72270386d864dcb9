//! Helpers of the bench's own tests: a real edge in this process on 127.0.0.1:0.

use std::net::SocketAddr;
use std::path::Path;

/// Starts an edge with `backend`, `memory` and `disk` bytes, its data in `dir`; returns its
/// HTTP and admin addresses. It runs until the test's runtime ends.
pub async fn edge(
    backend: tessera_edge::Backend,
    dir: &Path,
    memory: usize,
    disk: usize,
) -> (SocketAddr, SocketAddr) {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (http.local_addr().unwrap(), admin.local_addr().unwrap());
    let cfg = tessera_edge::EdgeConfig {
        backend,
        data: dir.to_path_buf(),
        memory_bytes: memory,
        disk_bytes: disk,
        ..Default::default()
    };
    let e = tessera_edge::Edge::open(cfg, Default::default())
        .await
        .unwrap();
    let listeners = tessera_edge::Listeners {
        http: Some(http),
        admin: Some(admin),
        ..Default::default()
    };
    tokio::spawn(async move {
        tessera_edge::run(listeners, e, std::future::pending::<()>())
            .await
            .unwrap()
    });
    addrs
}
