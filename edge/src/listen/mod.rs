//! Layer 6, the listeners: plain HTTP (HTTP/1.1 and h2c with prior knowledge) and HTTPS
//! (HTTP/1.1 and HTTP/2 by ALPN) in [`tcp`], HTTP/3 over QUIC in [`h3`], and the admin API
//! in [`admin`], one file per group of endpoints. Each hands requests to the pipeline
//! ([`crate::pipeline::Edge::handle`]).
//!
//! Every connection runs as a task of one [`TaskTracker`]: shutdown stops the accept loops,
//! closes the tracker and waits (up to 30 s) for the connections to finish their requests in
//! flight.

pub mod admin;
pub mod h3;
pub mod tcp;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::pipeline::Edge;

/// The sockets an edge serves, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain HTTP.
    pub http: Option<TcpListener>,
    /// HTTPS, with its TLS configuration (ALPN `h2`, `http/1.1`).
    pub https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// HTTP/3: a UDP socket (normally on the HTTPS address) and its QUIC configuration
    /// ([`h3::server_config`]). HTTP/1.1 and HTTP/2 responses then advertise it in
    /// `Alt-Svc`.
    pub h3: Option<(std::net::UdpSocket, quinn::ServerConfig)>,
    /// The admin API.
    pub admin: Option<TcpListener>,
}

/// How long connections may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `edge` on `listeners` until `shutdown` completes, then lets requests in flight
/// finish (up to 30 s) and closes the cache (flushing the memory tier to SSD).
pub async fn run(
    listeners: Listeners,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let connections = TaskTracker::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut loops = tokio::task::JoinSet::new();
    let mut endpoint = None;
    let mut alt_svc = None;
    if let Some((socket, config)) = listeners.h3 {
        let port = socket.local_addr()?.port();
        let ep = crate::basics::quic::endpoint(socket, Some(config), &edge.config().quic)?;
        alt_svc = Some(h3::alt_svc(port));
        loops.spawn(h3::accept_loop(
            ep.clone(),
            edge.clone(),
            connections.clone(),
            stop_rx.clone(),
        ));
        endpoint = Some(ep);
    }
    let tcp = [
        (
            listeners.http.map(|l| (l, None)),
            tcp::Serves::Content(alt_svc.clone()),
        ),
        (
            listeners.https.map(|(l, tls)| (l, Some(tls))),
            tcp::Serves::Content(alt_svc),
        ),
        (listeners.admin.map(|l| (l, None)), tcp::Serves::Admin),
    ];
    // One cap for every content listener; the admin listener is outside it.
    let limit = Arc::new(tokio::sync::Semaphore::new(tcp::max_connections(
        edge.config(),
    )));
    for (listener, serves) in tcp {
        if let Some((l, tls)) = listener {
            let limit = matches!(serves, tcp::Serves::Content(_)).then(|| limit.clone());
            loops.spawn(tcp::accept_loop(
                l,
                tls,
                edge.clone(),
                connections.clone(),
                stop_rx.clone(),
                serves,
                limit,
            ));
        }
    }
    let background = edge.start_background();
    shutdown.await;
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    if let Some(task) = background {
        task.abort();
    }
    // Connections were told to finish their requests in flight and close (HTTP/2 GOAWAY).
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "connections still open 30 s after shutdown; closing them"
        );
    }
    if let Some(ep) = endpoint {
        // Let the last close frames go out.
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    edge.cache().close().await;
    Ok(())
}
