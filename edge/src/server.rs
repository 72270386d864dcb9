//! The edge's listeners: plain HTTP (HTTP/1.1 and h2c with prior knowledge), HTTPS (HTTP/1.1
//! and HTTP/2 by ALPN), HTTP/3 over QUIC ([`crate::h3`]), and the admin API (purges, stats,
//! `/metrics`, `/healthz`).
//!
//! Limits applied before a request reaches the pipeline: a request head must arrive within
//! `header_timeout_secs` (else the connection is closed), and may be at most
//! `max_header_bytes` (else `431` on HTTP/1.1, a stream error on HTTP/2). hyper refuses
//! malformed requests with `400`, including differing duplicate `Content-Length`s; a request
//! with both `Transfer-Encoding` and `Content-Length` is decoded by the chunked framing only
//! and its connection closed after the response (RFC 9112 §6.3), so no second request can be
//! smuggled behind it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::proxy::{BoxError, Edge, EdgeBody, Protocol, Refusal, full_body, json_response, now_ms};
use crate::purge::{Ban, Selector};

/// The sockets an edge serves, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain HTTP.
    pub http: Option<TcpListener>,
    /// HTTPS, with its TLS configuration (ALPN `h2`, `http/1.1`).
    pub https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// HTTP/3: a UDP socket (normally on the HTTPS address) and its QUIC configuration
    /// ([`crate::h3::server_config`]). HTTP/1.1 and HTTP/2 responses then advertise it in
    /// `Alt-Svc`.
    pub h3: Option<(std::net::UdpSocket, quinn::ServerConfig)>,
    /// The admin API.
    pub admin: Option<TcpListener>,
}

/// Serves `edge` on `listeners` until `shutdown` completes, then lets requests in flight
/// finish (up to 30 s) and closes the cache (flushing the memory tier to SSD).
pub async fn run(
    listeners: Listeners,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Every connection task holds a clone of `live`; shutdown waits for them to go.
    let live = Arc::new(());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut endpoint = None;
    let mut alt_svc = None;
    if let Some((socket, config)) = listeners.h3 {
        let port = socket.local_addr()?.port();
        let ep = crate::h3::endpoint(socket, Some(config), &edge.config().quic)?;
        alt_svc = Some(crate::h3::alt_svc(port));
        tasks.spawn(crate::h3::accept_loop(
            ep.clone(),
            edge.clone(),
            live.clone(),
            stop_rx.clone(),
        ));
        endpoint = Some(ep);
    }
    if let Some(l) = listeners.http {
        tasks.spawn(accept_loop(
            l,
            None,
            edge.clone(),
            live.clone(),
            stop_rx.clone(),
            Role::Public(alt_svc.clone()),
        ));
    }
    if let Some((l, tls)) = listeners.https {
        tasks.spawn(accept_loop(
            l,
            Some(tls),
            edge.clone(),
            live.clone(),
            stop_rx.clone(),
            Role::Public(alt_svc.clone()),
        ));
    }
    if let Some(l) = listeners.admin {
        tasks.spawn(accept_loop(
            l,
            None,
            edge.clone(),
            live.clone(),
            stop_rx.clone(),
            Role::Admin,
        ));
    }
    let feed = crate::feed::spawn(edge.clone());
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let Some(f) = feed {
        f.abort();
    }
    // Connections were told to finish their requests in flight and close (HTTP/2 GOAWAY);
    // give them 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&live) > 1 {
        if tokio::time::Instant::now() > deadline {
            warn!("connections still open 30 s after shutdown; closing them");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(ep) = endpoint {
        // Let the last close frames go out.
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    edge.cache().close().await;
    Ok(())
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
    ($conn:expr, $stop:expr, $peer:expr) => {{
        let mut stop = $stop;
        let mut conn = std::pin::pin!($conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { drop(stop.wait_for(|stopped| *stopped).await) } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(peer = %$peer, error = %e, "connection ended with an error");
        }
    }};
}

/// Marks a request that arrived over TLS on a TCP listener (HTTP/1.1 has no `:scheme`;
/// the plugins' `request.scheme` reads it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tls;

/// What a TCP listener serves.
#[derive(Debug, Clone)]
enum Role {
    /// Content, advertising HTTP/3 with this `Alt-Svc` value when it is on.
    Public(Option<HeaderValue>),
    /// The admin API.
    Admin,
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    edge: Arc<Edge>,
    live: Arc<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    role: Role,
) {
    let builder = Arc::new(builder(&edge));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let over_tls = acceptor.is_some();
    loop {
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
        let edge = edge.clone();
        let role = role.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let edge = edge.clone();
            let role = role.clone();
            async move {
                let resp = match role {
                    Role::Admin => admin_handle(&edge, req).await,
                    Role::Public(alt_svc) => {
                        let proto = if req.version() == Version::HTTP_2 {
                            Protocol::Http2
                        } else {
                            Protocol::Http1
                        };
                        let mut req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
                        if over_tls && proto == Protocol::Http1 && edge.plugins.get().is_some() {
                            req.extensions_mut().insert(Tls);
                        }
                        let mut resp = edge.handle(req, proto, peer).await;
                        if let Some(v) = alt_svc {
                            resp.headers_mut().insert(header::ALT_SVC, v);
                        }
                        resp
                    }
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let builder = builder.clone();
        match &acceptor {
            None => {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                let (stop, live) = (stop.clone(), live.clone());
                tokio::spawn(async move {
                    drive!(conn, stop, peer);
                    drop(live);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let (stop, live) = (stop.clone(), live.clone());
                tokio::spawn(async move {
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
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), svc)
                        .into_owned();
                    drive!(conn, stop, peer);
                    drop(live);
                });
            }
        }
    }
}

/// The body of `POST /api/v1/purge`: exactly one of `path`, `prefix`, `key`, `all`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    path: Option<String>,
    prefix: Option<String>,
    key: Option<String>,
    #[serde(default)]
    all: bool,
    /// Mark stale (revalidate on next use) instead of removing.
    #[serde(default)]
    soft: bool,
}

const MAX_ADMIN_BODY: usize = 64 << 10;
/// Largest plugin component the admin API accepts.
const MAX_PLUGIN_BYTES: usize = 32 << 20;

async fn admin_handle(edge: &Arc<Edge>, req: Request<Incoming>) -> Response<EdgeBody> {
    match admin_route(edge, req).await {
        Ok(r) => r,
        Err(refusal) => refusal.response(),
    }
}

async fn admin_route(
    edge: &Arc<Edge>,
    req: Request<Incoming>,
) -> Result<Response<EdgeBody>, Refusal> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ok"}),
            ));
        }
        (&Method::GET, "/metrics") => {
            edge.metrics()
                .cache_bytes
                .with_label_values(&["memory"])
                .set(edge.cache().memory_usage() as i64);
            return Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(full_body(edge.metrics().render()))
                .unwrap());
        }
        _ => {}
    }
    authorize(edge, req.headers())?;
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/api/v1/stats") => Ok(json_response(StatusCode::OK, &stats(edge))),
        (Method::GET, "/api/v1/plugins") => {
            Ok(json_response(StatusCode::OK, &crate::plugins::list(edge)))
        }
        (method, p) if p.starts_with("/api/v1/plugins/") => {
            let rest = &p["/api/v1/plugins/".len()..];
            let (hook, action) = rest.split_once('/').unwrap_or((rest, ""));
            let hook: tessera_plugins::Hook = hook
                .parse()
                .map_err(|e: String| Refusal::new(StatusCode::NOT_FOUND, e))?;
            let v = match (method, action) {
                (Method::POST, "") => {
                    let query = req.uri().query().map(str::to_string);
                    let limited = http_body_util::Limited::new(req.into_body(), MAX_PLUGIN_BYTES);
                    let wasm = limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
                        Refusal::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "cannot read the component (at most {MAX_PLUGIN_BYTES} bytes): {e}"
                            ),
                        )
                    })?;
                    crate::plugins::deploy(edge, hook, query.as_deref(), wasm).await?
                }
                (Method::POST, "rollback") => crate::plugins::rollback(edge, hook)?,
                (Method::DELETE, "") => crate::plugins::remove(edge, hook)?,
                (m, _) => {
                    return Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        format!("no admin route {m} {p}"),
                    ));
                }
            };
            Ok(json_response(StatusCode::OK, &v))
        }
        (Method::POST, "/api/v1/purge") => {
            let body = read_body(req).await?;
            let ask: PurgeRequest = serde_json::from_slice(&body).map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "purge body must be JSON like {{\"path\":\"/a.js\",\"soft\":false}}: {e}"
                    ),
                )
            })?;
            let selector = match (ask.path, ask.prefix, ask.key, ask.all) {
                (Some(p), None, None, false) => Selector::Path(purge_path(edge, p)),
                (None, Some(p), None, false) => Selector::Prefix(p),
                (None, None, Some(k), false) => Selector::Key(k),
                (None, None, None, true) => Selector::All,
                _ => {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "give exactly one of \"path\", \"prefix\", \"key\" or \"all\": true",
                    ));
                }
            };
            let ban = Ban {
                selector: selector.clone(),
                at_ms: now_ms() + 1,
                soft: ask.soft,
            };
            edge.bans().add(ban.clone()).await.map_err(|e| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot save the purge: {e}"),
                )
            })?;
            edge.metrics()
                .purges
                .with_label_values(&[selector.kind(), if ask.soft { "soft" } else { "hard" }])
                .inc();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"purged": ban.selector, "soft": ban.soft, "at_ms": ban.at_ms}),
            ))
        }
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no admin route {} {path}", req.method()),
        )),
    }
}

/// Purge paths are request paths; in origin mode `/` and `…/` name their `index.html`.
fn purge_path(edge: &Edge, p: String) -> String {
    if edge.config().backend.is_origin() && (p.is_empty() || p.ends_with('/')) {
        format!("/{}", crate::origin_mode::file_path(&p))
    } else {
        p
    }
}

fn authorize(edge: &Edge, headers: &http::HeaderMap) -> Result<(), Refusal> {
    let Some(token) = &edge.config().admin_token else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "this edge has no admin token configured; start it with --admin-token",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        // Compare without an early exit, so timing does not reveal a prefix.
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "admin requests need Authorization: Bearer <admin token>",
        ))
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )
    })
}

fn stats(edge: &Edge) -> serde_json::Value {
    let m = edge.metrics();
    let mut lookups = serde_json::Map::new();
    for result in ["hit", "miss", "stale", "revalidated", "pass"] {
        let mut by_tier = serde_json::Map::new();
        for tier in ["memory", "disk", "none"] {
            let n = m.cache.with_label_values(&[result, tier]).get();
            if n > 0 {
                by_tier.insert(tier.into(), n.into());
            }
        }
        lookups.insert(result.into(), by_tier.into());
    }
    let bytes: serde_json::Map<String, serde_json::Value> = ["memory", "disk", "origin"]
        .iter()
        .map(|s| {
            (
                s.to_string(),
                m.bytes_served.with_label_values(&[s]).get().into(),
            )
        })
        .collect();
    serde_json::json!({
        "lookups": lookups,
        "bytes_served": bytes,
        "coalesced": m.coalesced.get(),
        "origin_fetches": {
            "manifest": m.origin_fetches.with_label_values(&["manifest"]).get(),
            "chunk": m.origin_fetches.with_label_values(&["chunk"]).get(),
            "object": m.origin_fetches.with_label_values(&["object"]).get(),
            "revalidate": m.origin_fetches.with_label_values(&["revalidate"]).get(),
            "pass": m.origin_fetches.with_label_values(&["pass"]).get(),
        },
        "corrupt_chunks": m.corrupt_chunks.get(),
        "memory": {
            "used_bytes": edge.cache().memory_usage(),
            "capacity_bytes": edge.cache().memory_capacity(),
        },
        "disk": { "capacity_bytes": edge.config().disk_bytes },
        "purges_active": edge.bans().len(),
        "feed_position": m.feed_position.get(),
    })
}
