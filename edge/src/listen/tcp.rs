//! The TCP listeners: plain HTTP (HTTP/1.1 and h2c with prior knowledge), HTTPS (HTTP/1.1
//! and HTTP/2 by ALPN) and the admin API's.
//!
//! Limits applied before a request reaches the pipeline: at most `max_connections` client
//! connections (the admin listener apart; more wait in the backlog); a connection must send
//! its first byte (plain) or finish its TLS handshake within `header_timeout_secs` / 10 s,
//! and is closed after `idle_timeout_secs` without a new request (HTTP/2: GOAWAY); a
//! request head must arrive within `header_timeout_secs` (else the connection is closed),
//! and may be at most
//! `max_header_bytes` (else `431` on HTTP/1.1, a stream error on HTTP/2). hyper refuses
//! malformed requests with `400`, including differing duplicate `Content-Length`s; a request
//! with both `Transfer-Encoding` and `Content-Length` is decoded by the chunked framing only
//! and its connection closed after the response (RFC 9112 §6.3), so no second request can be
//! smuggled behind it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::interim::{Informing, Interims};
use super::parked::Opening;
use crate::basics::body::{BoxError, EdgeBody};
use crate::basics::protocol::{OverTls, Protocol};
use crate::pipeline::Edge;

/// What a TCP listener serves.
#[derive(Debug, Clone)]
pub enum Serves {
    /// Content, advertising HTTP/3 with this `Alt-Svc` value when it is on.
    Content(Option<HeaderValue>),
    /// The admin API.
    Admin,
}

fn builder(edge: &Edge) -> Builder<TokioExecutor> {
    let cfg = edge.config();
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.header_timeout_secs.max(1)))
        .max_buf_size(cfg.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

/// Runs one connection until it ends, or until `stop`, then lets it finish the requests in
/// flight and close (HTTP/2: GOAWAY). A macro, not a generic function: a spawned generic
/// future over hyper's connection types trips the compiler's higher-ranked lifetime check.
macro_rules! drive {
    ($conn:expr, $stop:expr, $peer:expr, $idle:expr) => {{
        let mut stop = $stop;
        let idle: Idle = $idle;
        let mut conn = std::pin::pin!($conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async {
                tokio::select! {
                    _ = async { drop(stop.wait_for(|stopped| *stopped).await) } => {}
                    _ = idle.expired() => {}
                }
            } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(peer = %$peer, error = %e, "connection ended with an error");
        }
    }};
}

/// What serves each request of a TCP connection: the pipeline or the admin API, or a `503`
/// past the client's connection limit. Its futures are boxed, so an idle connection holds
/// no room for one.
#[derive(Clone)]
pub(super) struct Service {
    pub(super) edge: Arc<Edge>,
    serves: Serves,
    pub(super) touched: Idle,
    refused: bool,
    per_client_limit: usize,
    pub(super) peer: SocketAddr,
    over_tls: bool,
    /// Whether the request being answered lets its plain HTTP/1.1 connection leave hyper
    /// afterwards ([`super::parked::Parking`]): each exchange of a plain HTTP/1.1
    /// connection has its own; `None` on TLS and HTTP/2 connections, which never park.
    pub(super) park: Option<Arc<super::parked::Parking>>,
    /// Where an HTTP/1.1 content connection's interim responses wait to be written under
    /// hyper ([`super::interim::Informing`]); `None` on the admin listener.
    pub(super) interims: Option<Arc<Interims>>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<EdgeBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<EdgeBody>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let this = self.clone();
        this.touched.touch();
        let parkable = this.park.is_some() && super::parked::request_allows(&req);
        if let Some(p) = &this.park {
            p.asked();
        }
        Box::pin(async move {
            let resp = match this.interims.clone() {
                // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
                Some(queue) if req.version() == Version::HTTP_11 && !this.refused => {
                    let mut req = req;
                    req.extensions_mut().insert(queue.open());
                    let resp = this.answer(req).await;
                    // The interim responses go out before hyper has the final one.
                    queue.close().await;
                    resp
                }
                _ => this.answer(req).await,
            };
            if let Some(p) = &this.park {
                p.answered(parkable, &resp);
            }
            Ok(resp)
        })
    }
}

impl Service {
    async fn answer(&self, req: Request<Incoming>) -> Response<EdgeBody> {
        match &self.serves {
            Serves::Admin if !self.refused => crate::listen::admin::handle(&self.edge, req).await,
            _ => {
                let proto = if req.version() == Version::HTTP_2 {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                let mut req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
                if self.over_tls && proto == Protocol::Http1 {
                    req.extensions_mut().insert(OverTls);
                }
                self.content(req, proto).await
            }
        }
    }

    pub(super) fn is_content(&self) -> bool {
        matches!(self.serves, Serves::Content(_))
    }

    /// Answers a content request (or refuses it, past the client's connection limit).
    pub(super) async fn content(
        &self,
        req: Request<EdgeBody>,
        proto: Protocol,
    ) -> Response<EdgeBody> {
        let peer = self.peer;
        if self.refused {
            let mut r = crate::basics::error::Refusal::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many connections from {} (max_connections_per_client {})",
                    peer.ip().to_canonical(),
                    self.per_client_limit
                ),
            )
            .response();
            if req.version() < Version::HTTP_2 {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return r;
        }
        let mut resp = self.edge.handle(req, proto, peer).await;
        if let Serves::Content(Some(v)) = &self.serves {
            resp.headers_mut().insert(header::ALT_SVC, v.clone());
        }
        resp
    }
}

/// A content connection's socket for hyper, writing the interim responses of its HTTP/1.1
/// requests; the admin listener's as it is.
fn informing<S>(io: S, mut svc: Service) -> (TokioIo<Informing<S>>, Service) {
    let interims = Arc::new(Interims::new(&svc.edge));
    if svc.is_content() {
        svc.interims = Some(interims.clone());
    }
    (TokioIo::new(Informing::new(io, interims)), svc)
}

/// When a connection last began a request, to close it once idle.
#[derive(Debug, Clone)]
pub(super) struct Idle {
    last: Arc<std::sync::Mutex<tokio::time::Instant>>,
    limit: Duration,
}

impl Idle {
    pub(super) fn limit(&self) -> Duration {
        self.limit
    }

    fn new(limit: Duration) -> Idle {
        Idle {
            last: Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())),
            limit,
        }
    }

    pub(super) fn touch(&self) {
        *self.last.lock().unwrap() = tokio::time::Instant::now();
    }

    /// Resolves once no request began for the limit.
    pub(super) async fn expired(&self) {
        loop {
            let due = *self.last.lock().unwrap() + self.limit;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// The cap on client connections: `max_connections`, or the open-file limit (raised to its
/// hard limit) less a reserve.
pub(crate) fn max_connections(cfg: &crate::basics::config::EdgeConfig) -> usize {
    const RESERVE: u64 = 256;
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    cfg.max_connections
        .unwrap_or_else(|| files.saturating_sub(RESERVE).max(16) as usize)
        .max(1)
}

/// Accepts connections on `listener` until `stop`, each served on a task of `connections`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    edge: Arc<Edge>,
    connections: TaskTracker,
    mut stop: tokio::sync::watch::Receiver<bool>,
    serves: Serves,
    limits: Option<(Arc<tokio::sync::Semaphore>, Arc<crate::listen::PerClient>)>,
) {
    let (limit, per_client) = limits.unzip();
    let builder = Arc::new(builder(&edge));
    let h1 = Arc::new(super::parked::builder(&edge));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let over_tls = acceptor.is_some();
    let first_byte = Duration::from_secs(edge.config().header_timeout_secs.max(1));
    let idle_limit = Duration::from_secs(edge.config().idle_timeout_secs.max(1));
    let cap = limit.as_ref().map_or(0, |l| l.available_permits());
    let content = matches!(serves, Serves::Content(_));
    let mut warned = false;
    loop {
        // A place for the connection before accepting it: at the cap, clients wait in
        // the backlog (said once per episode: until a place is free at once again).
        let permit = match &limit {
            None => None,
            Some(l) => {
                let permit = match l.clone().try_acquire_owned() {
                    Ok(p) => {
                        warned = false;
                        p
                    }
                    Err(_) => {
                        if !warned {
                            warn!(cap, "at max_connections: new clients wait until one closes");
                            edge.metrics().connection_limit_hits.inc();
                            warned = true;
                        }
                        tokio::select! {
                            p = l.clone().acquire_owned() => p.expect("never closed"),
                            _ = stop.changed() => return,
                        }
                    }
                };
                Some(permit)
            }
        };
        let (stream, peer) = tokio::select! {
            conn = listener.accept() => match conn {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        // Past its address's limit, a connection is served a `503` for each request (HTTP/1.1:
        // and closed after the first).
        let slot = per_client.as_ref().map(|p| (p.admit(peer.ip()), p.limit()));
        let refused = matches!(slot, Some((None, _)));
        if refused {
            edge.metrics()
                .connections_refused
                .with_label_values(&["tcp"])
                .inc();
        }
        let per_client_limit = slot.as_ref().map_or(0, |(_, l)| *l);
        let idle = Idle::new(idle_limit);
        let svc = Service {
            edge: edge.clone(),
            serves: serves.clone(),
            touched: idle.clone(),
            refused,
            per_client_limit,
            peer,
            over_tls,
            park: None,
            interims: None,
        };
        let builder = builder.clone();
        match &acceptor {
            None => {
                let stop = stop.clone();
                let h1 = h1.clone();
                connections.spawn(async move {
                    let _permit = (permit, slot);
                    if !tessera_origin_proto::sends_within(&stream, first_byte).await {
                        debug!(%peer, "closed a connection that sent nothing");
                        return;
                    }
                    match super::parked::opening(&stream).await {
                        Opening::Http1 => {
                            super::parked::serve(stream, svc, &h1, stop, idle).await;
                        }
                        Opening::Http2 if content => {
                            Box::pin(super::h2::serve(stream, svc, stop, idle)).await;
                        }
                        // Boxed: the task's own size is what a parked connection costs.
                        _ => {
                            Box::pin(async move {
                                let (io, svc) = informing(stream, svc);
                                let conn = builder.serve_connection(io, svc).into_owned();
                                drive!(conn, stop, peer, idle);
                            })
                            .await
                        }
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let stop = stop.clone();
                connections.spawn(async move {
                    let _permit = (permit, slot);
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    if content && tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        return super::h2::serve(tls, svc, stop, idle).await;
                    }
                    let (io, svc) = informing(tls, svc);
                    let conn = builder.serve_connection(io, svc).into_owned();
                    drive!(conn, stop, peer, idle);
                });
            }
        }
    }
}
