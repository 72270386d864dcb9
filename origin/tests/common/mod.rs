//! Helpers shared by the origin's integration tests: a real origin on 127.0.0.1:0 with a
//! temporary data folder, and a raw HTTP client that sends paths exactly as given.

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tessera_origin::OriginConfig;
use tessera_origin_proto::{ChunkHash, OriginClient};

pub struct Node {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: OriginClient,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    pub async fn start(tweak: impl FnOnce(&mut OriginConfig)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, dir, tweak).await
    }

    /// Starts a node on `listener` with its data in `dir` (kept across restarts).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut OriginConfig),
    ) -> Node {
        let mut cfg = OriginConfig {
            data: dir.path().join("data"),
            ..Default::default()
        };
        tweak(&mut cfg);
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tessera_origin::run(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let client = OriginClient::new(&format!("http://{addr}"), Some("secret".into())).unwrap();
        Node {
            addr,
            dir,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn packs_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data/packs")
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    /// Stops the node and hands back its data folder, for a restart.
    pub async fn stop_keep(mut self) -> (SocketAddr, tempfile::TempDir) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (self.addr, dir)
    }
}

/// The cluster configuration of node `me` among `addrs` (ids `o1`, `o2`, …), with the
/// background repair and scrub off so tests drive them.
pub fn cluster_config(
    addrs: &[SocketAddr],
    me: usize,
    replication: usize,
) -> tessera_origin::cluster::ClusterConfig {
    tessera_origin::cluster::ClusterConfig {
        me: format!("o{}", me + 1),
        nodes: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| tessera_origin::cluster::NodeAddr {
                id: format!("o{}", i + 1),
                url: format!("http://{a}"),
                weight: 1,
            })
            .collect(),
        replication,
        repair_interval_secs: 0,
        scrub_bytes_per_sec: 0,
        call_timeout_secs: 3,
        // Most tests check that what a publish or a delete frees is gone at once.
        superseded_grace_secs: 0,
        ..Default::default()
    }
}

/// `n` origin nodes forming one cluster with replication `r`, all with token `secret`.
pub async fn start_cluster(n: usize, r: usize) -> Vec<Node> {
    start_cluster_with(n, r, |_| {}).await
}

/// [`start_cluster`], each node's configuration changed by `change`.
pub async fn start_cluster_with(
    n: usize,
    r: usize,
    change: impl Fn(&mut tessera_origin::cluster::ClusterConfig),
) -> Vec<Node> {
    start_cluster_each(n, r, |_, c| change(c.cluster.as_mut().unwrap())).await
}

/// [`start_cluster`], node `i`'s whole configuration changed by `change(i, …)` once its
/// cluster part and token are set.
pub async fn start_cluster_each(
    n: usize,
    r: usize,
    change: impl Fn(usize, &mut OriginConfig),
) -> Vec<Node> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let cfg = cluster_config(&addrs, i, r);
        let dir = tempfile::tempdir().unwrap();
        nodes.push(start_member_with(l, dir, cfg, |c| change(i, c)).await);
    }
    nodes
}

/// A cluster node with configuration `cfg` and token `secret` on `listener`, its data in
/// `dir`.
pub async fn start_member(
    listener: tokio::net::TcpListener,
    dir: tempfile::TempDir,
    cfg: tessera_origin::cluster::ClusterConfig,
) -> Node {
    start_member_with(listener, dir, cfg, |_| {}).await
}

/// [`start_member`], its configuration then changed by `change`.
async fn start_member_with(
    listener: tokio::net::TcpListener,
    dir: tempfile::TempDir,
    cfg: tessera_origin::cluster::ClusterConfig,
    change: impl FnOnce(&mut OriginConfig),
) -> Node {
    Node::start_on(listener, dir, move |c| {
        c.token = Some("secret".into());
        c.cluster = Some(cfg);
        change(c);
    })
    .await
}

/// Restarts a stopped cluster node on its old address and data with configuration `cfg`.
pub async fn restart_node(
    addr: SocketAddr,
    dir: tempfile::TempDir,
    cfg: tessera_origin::cluster::ClusterConfig,
) -> Node {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    start_member(listener, dir, cfg).await
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends one request with the path exactly as written (no normalisation).
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The value of an unlabelled metric (or the sum over its label sets) in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An upload body in pieces ([`tessera_origin_proto::upload`]) for `data`, cut as the origin
/// cuts it, naming every chunk `name` accepts and sending the others.
#[allow(dead_code)]
pub fn pieces(data: &[u8], mut name: impl FnMut(&ChunkHash) -> bool) -> Bytes {
    use tessera_origin_proto::upload::Piece;
    let mut chunker = tessera_origin::chunker::Chunker::new(Default::default());
    let mut cut = Vec::new();
    chunker.push(data, &mut cut);
    chunker.finish(&mut cut);
    let mut out = bytes::BytesMut::new();
    for c in cut {
        let h = ChunkHash(*blake3::hash(&c).as_bytes());
        if name(&h) {
            Piece::Chunk(h, c.len() as u32).encode(&mut out);
        } else {
            Piece::Data(c).encode(&mut out);
        }
    }
    out.freeze()
}

/// A real small file system: a tmpfs of `size` (`24m`) mounted on a new temporary folder,
/// unmounted on drop, even while files are open in it (then the folder is removed). Mounting needs root (CI runs as root).
/// The edge's tests have the same in `SmallDisk` (edge/tests/upstream_mode.rs).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: the disk-full tests need root"
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: after a failed assertion the node still holds files open there.
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

/// `PUT` of `body` at `url` with the write token `secret`.
pub async fn put_as_writer(url: &str, body: Vec<u8>) -> Reply {
    send(
        Method::PUT,
        url,
        &[("authorization", "Bearer secret")],
        body,
    )
    .await
}

/// Publishes files of `size` noise bytes (seeds from `seed`) at `/{name}{i}.bin` through
/// `node` until one is refused: the files published with their bytes, then the refused
/// one's number and reply. Panics if all `max` are accepted.
pub async fn publish_until_refused(
    node: &Node,
    name: &str,
    size: usize,
    seed: u64,
    max: u64,
) -> (Vec<(u64, Vec<u8>)>, u64, Reply) {
    let mut published = Vec::new();
    for i in 0..max {
        let body = noise(size, seed + i);
        let r = put_as_writer(
            &node.url(&format!("/api/v1/files/{name}{i}.bin")),
            body.clone(),
        )
        .await;
        if r.status != StatusCode::CREATED {
            return (published, i, r);
        }
        published.push((i, body));
    }
    panic!("all {max} publishes of {size} bytes were accepted");
}
