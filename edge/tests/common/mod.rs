//! Helpers shared by the edge's integration tests: real origins, real edges and a scriptable
//! upstream HTTP server, all on 127.0.0.1:0, and clients for HTTP/1.1, h2c, HTTP/2 over TLS
//! and HTTP/3.
//!
//! Behaviour tests are written once and run over each protocol by [`over_protocols!`]: the
//! macro runs the test body three times with [`PROTO`] set, and every request an
//! [`EdgeNode`] sends (`get`, `get_with`, `request`) goes over that protocol: HTTP/1.1 on
//! the plain listener, HTTP/2 over TLS (ALPN), HTTP/3 over QUIC on the HTTPS port.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tessera_edge::{Backend, Edge, EdgeConfig, Listeners};
use tessera_origin::OriginConfig;
use tessera_origin_proto::OriginClient;

pub const ADMIN_TOKEN: &str = "admin-secret";

/// The protocol a test's clients speak to the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
    Http3,
}

impl Proto {
    /// The edge's `protocol` metric label for this protocol.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Http1 => "http/1.1",
            Proto::Http2 => "h2",
            Proto::Http3 => "h3",
        }
    }
}

tokio::task_local! {
    /// The protocol of the running test (HTTP/1.1 when a test does not set it).
    pub static PROTO: Proto;
}

/// The protocol of the running test.
pub fn proto() -> Proto {
    PROTO.try_with(|p| *p).unwrap_or(Proto::Http1)
}

/// Runs each test body once per protocol: `over_protocols! { async fn name() { ... } }`
/// makes tests `name::http1`, `name::http2` and `name::http3`.
#[macro_export]
macro_rules! over_protocols {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn case() $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http1() {
                $crate::common::PROTO.scope($crate::common::Proto::Http1, case()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http2() {
                $crate::common::PROTO.scope($crate::common::Proto::Http2, case()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http3() {
                $crate::common::PROTO.scope($crate::common::Proto::Http3, case()).await
            }
        }
    )*};
}

/// A real origin node.
pub struct Origin {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: OriginClient,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    pub async fn start() -> Origin {
        Self::start_with(|_| {}).await
    }

    /// An origin whose configuration `f` changes first.
    pub async fn start_with(f: impl FnOnce(&mut OriginConfig)) -> Origin {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = OriginConfig {
            data: dir.path().join("data"),
            token: Some("t".into()),
            ..Default::default()
        };
        f(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tessera_origin::run(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let client = OriginClient::new(&format!("http://{addr}"), Some("t".into())).unwrap();
        Origin {
            addr,
            dir,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn publish(&self, path: &str, data: impl Into<Bytes>) -> u64 {
        self.client.put_bytes(path, data.into()).await.unwrap();
        self.client.changes(0, 0).await.unwrap().next
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// A real edge node, in process, serving HTTP, HTTPS and HTTP/3 (on the HTTPS port).
pub struct EdgeNode {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub edge: Arc<Edge>,
    pub data: PathBuf,
    pub cert: Option<PathBuf>,
    /// The protocol `get`, `get_with` and `request` speak.
    pub proto: Proto,
    /// The HTTP/2 or HTTP/3 connection requests share.
    conn: tokio::sync::Mutex<Option<Connection>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn config(backend: Backend, data: &Path) -> EdgeConfig {
    EdgeConfig {
        backend,
        data: data.to_path_buf(),
        memory_bytes: 64 << 20,
        disk_bytes: 256 << 20,
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Default::default()
    }
}

impl EdgeNode {
    pub async fn start(cfg: EdgeConfig) -> EdgeNode {
        Self::start_with(cfg, true).await
    }

    /// Starts an edge; `tls` adds the HTTPS listener and HTTP/3 on the same port.
    pub async fn start_with(cfg: EdgeConfig, tls: bool) -> EdgeNode {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let http = bind().await.unwrap();
        let admin = bind().await.unwrap();
        let (http_addr, admin_addr) = (http.local_addr().unwrap(), admin.local_addr().unwrap());
        let mut listeners = Listeners {
            http: Some(http),
            admin: Some(admin),
            https: None,
            h3: None,
        };
        let (mut https_addr, mut cert) = (None, None);
        if tls {
            let id = tessera_edge::tls::development(&cfg.data.join("tls")).unwrap();
            // A TCP port and the same UDP port (another test may hold that UDP port).
            let (l, udp) = tessera_edge::h3::bind_https_and_quic("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            https_addr = Some(l.local_addr().unwrap());
            cert = Some(id.cert_path.clone());
            let c = tessera_edge::tls::server_config(&id, &[b"h2", b"http/1.1"]).unwrap();
            let quic = tessera_edge::h3::server_config(&id, &cfg).unwrap();
            listeners.https = Some((l, c));
            listeners.h3 = Some((udp, quic));
        }
        let data = cfg.data.clone();
        let edge = Edge::open(cfg, Default::default()).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let e = edge.clone();
        let task = tokio::spawn(async move {
            tessera_edge::run(listeners, e, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        EdgeNode {
            http: http_addr,
            https: https_addr,
            admin: admin_addr,
            edge,
            data,
            cert,
            proto: if tls { proto() } else { Proto::Http1 },
            conn: tokio::sync::Mutex::new(None),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The URL of `path` on the plain HTTP/1.1 listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers).await
    }

    /// `method path` with `headers`, over this edge's protocol.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(method, path, headers, Bytes::new()).await
    }

    /// Sends a request over this edge's protocol and reads the whole response.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let resp = self.send_streaming(method, path, headers, body).await;
        Reply::read(resp).await
    }

    /// Sends a request over this edge's protocol; the response body streams.
    pub async fn send_streaming(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Response<tessera_edge::client::ClientBody> {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).unwrap();
        let mut conn = self.connection().await;
        conn.send(req).await.unwrap()
    }

    /// A connection over this edge's protocol: a new one for HTTP/1.1, a shared one for
    /// HTTP/2 and HTTP/3.
    pub async fn connection(&self) -> Connection {
        if self.proto == Proto::Http1 {
            return Connection::connect(&self.url("/"), &ClientOptions::new(Mode::Http1))
                .await
                .unwrap();
        }
        let mut shared = self.conn.lock().await;
        if let Some(c) = shared.as_ref() {
            return c.clone();
        }
        let c = self.connect(self.proto).await;
        *shared = Some(c.clone());
        c
    }

    /// A new connection over HTTPS (`Http1`, `Http2`) or HTTP/3, trusting the edge's
    /// development certificate.
    pub async fn connect(&self, proto: Proto) -> Connection {
        let https = self.https.expect("the edge serves HTTPS");
        let mode = match proto {
            Proto::Http1 => Mode::Http1,
            Proto::Http2 => Mode::Http2,
            Proto::Http3 => Mode::Http3,
        };
        let mut opts = ClientOptions::new(mode)
            .trust_file(self.cert.as_ref().unwrap())
            .unwrap();
        opts.connect_to = Some(https);
        Connection::connect(&format!("https://localhost:{}/", https.port()), &opts)
            .await
            .unwrap()
    }

    /// A counter of the edge's metrics by name and label values (0 when never set).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.edge.metrics().render(), name, labels)
    }

    pub fn origin_fetches(&self, kind: &str) -> u64 {
        self.edge
            .metrics()
            .origin_fetches
            .with_label_values(&[kind])
            .get()
    }

    /// Chunks the edge received from origins (and checked).
    pub fn origin_chunks(&self) -> u64 {
        self.edge.metrics().origin_chunks.get()
    }

    /// Stops the edge gracefully (the cache is flushed to SSD) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    pub async fn admin(&self, method: &str, path: &str, body: &str) -> Reply {
        self.admin_bytes(method, path, Bytes::copy_from_slice(body.as_bytes()))
            .await
    }

    pub async fn admin_bytes(&self, method: &str, path: &str, body: Bytes) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.admin, path))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(body))
            .unwrap();
        send(req).await
    }

    /// Waits until `cond` holds, up to 10 s: for conditions the edge reaches on its own
    /// (a feed position, a count), never as a stand-in for a response.
    pub async fn until(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = key.split_once('{').unwrap_or((key, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return value.parse().unwrap();
        }
    }
    0.0
}

#[derive(Debug)]
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

    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Reply {
    /// Reads a whole response.
    pub async fn read<B>(resp: Response<B>) -> Reply
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    Reply::read(client.request(req).await.unwrap()).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request("GET", url, headers).await
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::new())).unwrap()).await
}

/// An HTTP/2-over-TLS client that trusts exactly the certificate in `cert`.
/// A TLS connection to the edge at `addr` as `localhost`, trusting exactly the certificate
/// in `cert`, offering ALPN `h2` and `http/1.1`.
pub async fn tls_connect(
    addr: SocketAddr,
    cert: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// `GET path` over HTTP/2 over TLS; also returns the protocol ALPN chose.
pub async fn h2_tls_get(addr: SocketAddr, cert: &Path, path: &str) -> (Reply, String) {
    let tls = tls_connect(addr, cert).await;
    let alpn = String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or(b"")).to_string();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    (Reply::read(resp).await, alpn)
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the scripted upstream answers: a function of the request and how many requests for
/// the same path came before it.
pub type Script = dyn Fn(&Request<Bytes>, usize) -> Response<Full<Bytes>> + Send + Sync;

/// A small HTTP server the test controls, counting requests per path.
///
/// Paths under `/gated/` wait for [`Upstream::open_gate`] before answering. Paths under
/// `/stream/` answer with the script's body split in two: the first 64 KiB at once, the rest
/// after the gate opens.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<HashMap<String, Vec<HeaderMap>>>>,
    gate: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(
        script: impl Fn(&Request<Bytes>, usize) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Upstream {
        let script: Arc<Script> = Arc::new(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<HashMap<String, Vec<HeaderMap>>>> = Default::default();
        let s2 = seen.clone();
        let (gate, gate_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (script, seen, gate_rx) = (script.clone(), s2.clone(), gate_rx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (script, seen, mut gate_rx) =
                            (script.clone(), seen.clone(), gate_rx.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let req = Request::from_parts(parts, body);
                            let key = req.uri().path_and_query().unwrap().to_string();
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                let list = seen.entry(key).or_default();
                                list.push(req.headers().clone());
                                list.len() - 1
                            };
                            let path = req.uri().path().to_string();
                            if path.starts_with("/gated/") {
                                gate_rx.wait_for(|open| *open).await.unwrap();
                            }
                            let (parts, body) = script(&req, n).into_parts();
                            let body: UpBody = if path.starts_with("/stream/") {
                                let all = body.collect().await.unwrap().to_bytes();
                                let first = all.slice(..all.len().min(64 << 10));
                                let rest = all.slice(first.len()..);
                                let s = futures_util::stream::unfold(0, move |step| {
                                    let (first, rest, mut gate_rx) =
                                        (first.clone(), rest.clone(), gate_rx.clone());
                                    async move {
                                        match step {
                                            0 => Some((Ok(hyper::body::Frame::data(first)), 1)),
                                            1 => {
                                                gate_rx.wait_for(|open| *open).await.unwrap();
                                                Some((Ok(hyper::body::Frame::data(rest)), 2))
                                            }
                                            _ => None,
                                        }
                                    }
                                });
                                http_body_util::StreamBody::new(s).boxed()
                            } else {
                                body.boxed()
                            };
                            Ok::<_, Infallible>(Response::from_parts(parts, body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            gate,
            task,
        }
    }

    /// Lets gated requests and held stream bodies proceed.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests the upstream received for `path_and_query`.
    pub fn count(&self, path_and_query: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .get(path_and_query)
            .map_or(0, |v| v.len())
    }

    /// The headers of the `i`th request for `path_and_query`.
    pub fn request_headers(&self, path_and_query: &str, i: usize) -> HeaderMap {
        self.seen.lock().unwrap()[path_and_query][i].clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from_static(body))).unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Eight concurrent `GET`s of `path` asking for brotli: each comes compressed, all the same
/// bytes, which decompress to `plain`.
pub async fn concurrent_brotli_gets(edge: &EdgeNode, path: &str, plain: &[u8]) {
    let all = futures_util::future::join_all(
        (0..8).map(|_| edge.get_with(path, &[("accept-encoding", "br")])),
    )
    .await;
    for r in &all {
        assert_eq!(r.header("content-encoding"), "br");
        assert_eq!(r.body, all[0].body);
    }
    let mut decoded = Vec::new();
    brotli::BrotliDecompress(&mut &all[0].body[..], &mut decoded).unwrap();
    assert_eq!(decoded, plain);
}
