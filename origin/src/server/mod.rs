//! The origin's HTTP API (hyper 1, HTTP/1.1 and h2c).
//!
//! Routes:
//! - `PUT|GET|HEAD|DELETE /api/v1/files/{path}`, `POST /api/v1/files`, `GET /api/v1/files?prefix=P`
//! - `GET|HEAD /api/v1/manifests/{path}` (with a small file's bytes when asked,
//!   [`tessera_origin_proto::inline`]), `GET|HEAD /api/v1/chunks/{blake3}`,
//!   `POST /api/v1/chunks` (many at once, [`tessera_origin_proto::batch`]): the edges' view
//! - `GET /api/v1/stats`, `GET /metrics`, `GET /healthz`
//!
//! Every error reply is JSON `{"error": "..."}` naming the problem.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tessera_origin_proto::upload::Piece;
use tessera_origin_proto::{CHUNK_CACHE_CONTROL, ChunkHash, Manifest, inline, validate_path};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info_span, warn};

mod batch;
mod internal;

use crate::OriginConfig;
use crate::cluster::{Cluster, ClusterError};
use crate::codec::Codec;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use tessera_origin_proto::range::{
    RangeAsk, accepts_encoding, etag_matches, if_range_holds, parse_range, preconditions,
};

/// Response body type of every handler.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Shared state of one origin server.
#[derive(Debug)]
pub struct App {
    pub store: Arc<Store>,
    pub config: OriginConfig,
    pub metrics: Metrics,
    /// Publishes that may ingest at once (`max_concurrent_uploads`); others wait their turn,
    /// their bodies held back by TCP, so memory stays bounded whatever clients send.
    pub uploads: tokio::sync::Semaphore,
    /// The cluster this node belongs to; `None` for a standalone node.
    pub cluster: Option<Arc<Cluster>>,
}

/// An error reply: a status and a message for the JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut r = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store");
        for (k, v) in self.headers {
            r = r.header(k, v);
        }
        r.body(full(body)).unwrap()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Corrupt { hash, .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("chunk {hash} failed its integrity check and was not served"),
            ),
            e if e.is_disk_full() => {
                warn!(error = %e, "publish refused: the data disk is full");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "the origin's data disk is full, nothing was published ({e}); reads go on: free space or add capacity, then publish again"
                    ),
                )
            }
            _ => {
                error!(error = %e, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal storage error: {e}"),
                )
            }
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Store(s) => s.into(),
            ClusterError::BadInput(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            ClusterError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            e @ ClusterError::DiskFull { .. } => {
                warn!(error = %e, "publish refused: a node's data disk is full");
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            }
            e @ (ClusterError::TooFewNodes { .. }
            | ClusterError::Node { .. }
            | ClusterError::ChunkUnavailable(_)) => {
                warn!(error = %e, "cluster operation failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
        }
    }
}

type Reply = Result<Response<Body>, ApiError>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn json_reply(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

/// Runs `f` on a blocking thread (the store does file I/O).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal task failed: {e}"),
        )
    })
}

/// Serves the origin API on `listener` until `shutdown` completes, then lets requests in
/// flight finish (up to 30 s).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that says nothing, or never finishes its request head, is cut off instead
    // of holding a connection open forever.
    let header_timeout = Duration::from_secs(app.config.header_timeout_secs.max(1));
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, peer) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(app, req).await) }
                });
                let watcher = graceful.watcher();
                let builder = builder.clone();
                tokio::spawn(async move {
                    if !tessera_origin_proto::sends_within(&stream, header_timeout).await {
                        debug!(%peer, "closed a connection that sent nothing");
                        return;
                    }
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open 30 s after shutdown; closing them");
    }
    Ok(())
}

/// The operation label of a request, for metrics.
fn op_of(method: &Method, path: &str) -> &'static str {
    let files = path.strip_prefix("/api/v1/files");
    match (method, path) {
        (_, "/metrics") => "metrics",
        (_, "/healthz") => "health",
        (_, "/api/v1/stats") => "stats",
        (_, "/api/v1/changes") => "changes",
        (&Method::POST, _) if files.is_some() => "post",
        (&Method::GET, _) if files == Some("") => "list",
        (&Method::PUT, _) if files.is_some() => "put",
        (&Method::GET, _) if files.is_some() => "get",
        (&Method::HEAD, _) if files.is_some() => "head",
        (&Method::DELETE, _) if files.is_some() => "delete",
        _ if path.starts_with("/api/v1/manifests/") => "manifest",
        _ if path.starts_with("/api/v1/cluster") => "cluster",
        _ if path.starts_with("/api/v1/chunks/") => "chunk",
        (_, "/api/v1/chunks") => "chunks",
        _ => "other",
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let op = op_of(req.method(), req.uri().path());
    let span = info_span!("request", op, method = %req.method(), path = %req.uri().path());
    // A peer's clock: followed, and answered with this node's (see `Cluster::stamp`). Only
    // from a caller with the write token (the peers have it), so no reader can push the
    // version stamps ahead.
    let peer_clock = app
        .cluster
        .as_ref()
        .and_then(|cl| Some((cl, tessera_origin_proto::client::clock_of(req.headers())?)))
        .filter(|_| authorize(&app, req.headers()).is_ok());
    if let Some((cl, theirs)) = peer_clock {
        cl.observe(theirs);
    }
    let mut resp = async {
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        match route(&app, &parts, &mut body).await {
            Ok(r) => r,
            Err(e) => {
                // Refused before its body was read: read (and drop) a bounded amount of it
                // first, so the client finishes sending and sees this reply rather than a
                // reset connection.
                if let Some(b) = body.take() {
                    drain(b).await;
                }
                if e.status.is_server_error() {
                    warn!(status = %e.status, error = %e.message, "request failed");
                } else {
                    debug!(status = %e.status, error = %e.message, "request refused");
                }
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await;
    if let Some((cl, _)) = peer_clock {
        resp.headers_mut().insert(
            tessera_origin_proto::client::CLOCK_HEADER,
            HeaderValue::from(cl.clock()),
        );
    }
    app.metrics
        .requests
        .with_label_values(&[op, resp.status().as_str()])
        .inc();
    app.metrics
        .latency
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// The decoded, validated publish path after `prefix` in the request path.
fn publish_path(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "path is not valid UTF-8 once percent-decoded",
            )
        })?;
    validate_path(&decoded)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid path: {e}")))?;
    Ok(decoded.into_owned())
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; allowed: {allow}"),
    )
    .with_header(header::ALLOW, HeaderValue::from_static(allow))
}

/// Reads and drops up to 16 MiB of a refused request's body, for at most 5 s.
async fn drain(mut body: Incoming) {
    let mut left: i64 = 16 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while left > 0 {
            match body.frame().await {
                Some(Ok(f)) => left -= f.data_ref().map_or(0, |d| d.len() as i64),
                _ => break,
            }
        }
    })
    .await;
}

/// `body` is taken by the handler that reads it; one left in place was not read.
async fn route(app: &Arc<App>, req: &http::request::Parts, body: &mut Option<Incoming>) -> Reply {
    let path = req.uri.path().to_string();
    let method = req.method.clone();
    if path == "/healthz" {
        return Ok(json_reply(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        ));
    }
    if path == "/metrics" {
        let store = app.store.clone();
        let (stats, space) = blocking(move || (store.stats(), store.disk_space())).await?;
        if let Ok(stats) = stats {
            app.metrics.set_storage(&stats);
        }
        if let Ok((size, free)) = space {
            app.metrics.disk_bytes.set(size as i64);
            app.metrics.disk_free_bytes.set(free as i64);
        }
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(full(app.metrics.encode()))
            .unwrap());
    }
    if path == "/api/v1/stats" {
        let store = app.store.clone();
        let stats = blocking(move || store.stats()).await??;
        app.metrics.set_storage(&stats);
        return Ok(json_reply(StatusCode::OK, &stats));
    }
    if path == "/api/v1/changes" {
        return match method {
            Method::GET => changes(app, req.uri.query().unwrap_or("")).await,
            _ => Err(method_not_allowed("GET")),
        };
    }
    if path == "/api/v1/cluster" || path.starts_with("/api/v1/cluster/") {
        return internal::route(app, req, body).await;
    }
    if path == "/api/v1/files" || path == "/api/v1/files/" {
        return match method {
            Method::GET => list(app, req.uri.query().unwrap_or("")).await,
            Method::POST => {
                authorize(app, &req.headers)?;
                let id = format!("{:032x}", rand::random::<u128>());
                let (status, mut v) = publish(app, id.clone(), &req.headers, body).await?;
                v["id"] = serde_json::Value::String(id.clone());
                let mut resp = json_reply(status, &v);
                // The id is 32 hex digits: always a valid header value.
                resp.headers_mut().insert(
                    header::LOCATION,
                    HeaderValue::from_str(&format!("/api/v1/files/{id}")).unwrap(),
                );
                Ok(resp)
            }
            _ => Err(method_not_allowed("GET, POST")),
        };
    }
    if let Some(raw) = path.strip_prefix("/api/v1/files/") {
        let p = publish_path(raw)?;
        return match method {
            Method::GET | Method::HEAD => {
                get_file(app, p, &req.headers, method == Method::HEAD).await
            }
            Method::PUT => {
                authorize(app, &req.headers)?;
                let (status, reply) = publish(app, p, &req.headers, body).await?;
                Ok(json_reply(status, &reply))
            }
            Method::DELETE => {
                authorize(app, &req.headers)?;
                delete(app, p).await
            }
            _ => Err(method_not_allowed("GET, HEAD, PUT, DELETE")),
        };
    }
    if let Some(raw) = path.strip_prefix("/api/v1/manifests/") {
        let p = publish_path(raw)?;
        return match method {
            Method::GET | Method::HEAD => {
                get_manifest(app, p, &req.headers, method == Method::HEAD).await
            }
            _ => Err(method_not_allowed("GET, HEAD")),
        };
    }
    if path == "/api/v1/chunks/known" {
        return match method {
            Method::POST => {
                authorize(app, &req.headers)?;
                known_chunks(app, body).await
            }
            _ => Err(method_not_allowed("POST")),
        };
    }
    if path == "/api/v1/chunks" {
        return match method {
            Method::POST => batch::chunks(app, &req.headers, body).await,
            _ => Err(method_not_allowed("POST")),
        };
    }
    if let Some(raw) = path.strip_prefix("/api/v1/chunks/") {
        let hash: ChunkHash = raw.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{raw:?} is not a chunk address (64 hex digits)"),
            )
        })?;
        return match method {
            Method::GET | Method::HEAD => {
                get_chunk(app, hash, &req.headers, method == Method::HEAD).await
            }
            _ => Err(method_not_allowed("GET, HEAD")),
        };
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {path}"),
    ))
}

/// Checks the bearer token on writes, when the node has one. Compares in constant time.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.config.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = tessera_origin_proto::token_matches(given, token);
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "writes, and reads of cluster records, need the header 'Authorization: Bearer <token>' with this node's token",
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tessera-origin\""),
        ))
    }
}

/// Streams the body into a new version of `path`; returns `201` (or `200` when it replaced
/// one) with the publish reply (and, in a cluster, where the copies went).
async fn publish(
    app: &Arc<App>,
    path: String,
    headers: &HeaderMap,
    body: &mut Option<Incoming>,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let limit = app.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than this node's limit of {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    let _permit =
        app.uploads.acquire().await.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down")
        })?;
    app.metrics.uploads_in_flight.inc();
    let _in_flight = scopeguard_dec(&app.metrics.uploads_in_flight);
    let content_type = mime_guess::from_path(&path)
        .first_or_octet_stream()
        .essence_str()
        .to_string();
    // The body's bytes go to the ingest as they arrive; an empty piece marks its normal end,
    // without which the upload is abandoned.
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, ()>>(8);
    let ingest = match &app.cluster {
        Some(cluster) => {
            let (c, p) = (cluster.clone(), path.clone());
            tokio::spawn(async move {
                c.publish(&p, &content_type, rx)
                    .await
                    .map(|(reply, placement)| {
                        let mut v = serde_json::to_value(&reply).unwrap();
                        v["placement"] = serde_json::to_value(&placement).unwrap();
                        (false, reply, v)
                    })
            })
        }
        None => {
            let store = app.store.clone();
            let target = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut upload = store.upload();
                while let Some(piece) = rx.blocking_recv() {
                    match piece {
                        Ok(b) if b.is_empty() => {
                            let (reply, replaced) = upload.finish(&target, &content_type)?;
                            let v = serde_json::to_value(&reply).unwrap();
                            return Ok((replaced, reply, v));
                        }
                        Ok(b) => upload.write(&b)?,
                        Err(()) => break,
                    }
                }
                // Abandoned: dropping `upload` removes what it wrote.
                Err(ClusterError::BadInput("upload was abandoned".into()))
            })
        }
    };
    let Some(mut body) = body.take() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "request body already read",
        ));
    };
    // A body of pieces ([`tessera_origin_proto::upload`]) names chunks this node has; they
    // are read back (and checked) into the same stream of the file's bytes.
    let mut pieces = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == tessera_origin_proto::upload::CONTENT_TYPE.as_bytes())
        .then(tessera_origin_proto::upload::Decoder::default);
    let mut received = 0u64;
    let mut refused = None;
    let mut ingest_stopped = false;
    'frames: while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                refused = Some(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("request body ended early: {e}"),
                ));
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let Some(decoder) = pieces.as_mut() else {
            received += data.len() as u64;
            if received > limit {
                refused = Some(too_large());
                break;
            }
            if tx.send(Ok(data)).await.is_err() {
                break; // the ingest stopped on an error; it is reported below
            }
            continue;
        };
        decoder.push(&data);
        loop {
            // The whole pieces at hand, their named chunks read together: at most 64 pieces
            // and about 4 MiB of named bytes, so 37 bytes of body naming 64 KiB cannot make
            // an upload hold more than that.
            let mut batch = Vec::new();
            let mut named_bytes = 0u64;
            while batch.len() < 64 && named_bytes < 4 << 20 {
                match decoder.next_piece() {
                    Ok(Some(p)) => {
                        if let Piece::Chunk(_, len) = p {
                            named_bytes += u64::from(len);
                        }
                        batch.push(p);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        refused = Some(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()));
                        break 'frames;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let named: Vec<(ChunkHash, u32)> = batch
                .iter()
                .filter_map(|p| match p {
                    Piece::Chunk(h, len) => Some((*h, *len)),
                    Piece::Data(_) => None,
                })
                .collect();
            let mut read = match stored_chunks(app, named).await {
                Ok(r) => r.into_iter(),
                Err(e) => {
                    refused = Some(e);
                    break 'frames;
                }
            };
            for piece in batch {
                let data = match piece {
                    Piece::Data(b) => b,
                    Piece::Chunk(..) => read.next().expect("one read per named chunk"),
                };
                received += data.len() as u64;
                if received > limit {
                    refused = Some(too_large());
                    break 'frames;
                }
                if tx.send(Ok(data)).await.is_err() {
                    ingest_stopped = true;
                    break 'frames; // the ingest stopped on an error; it is reported below
                }
            }
        }
    }
    if refused.is_none()
        && !ingest_stopped
        && let Some(Err(e)) = pieces.as_ref().map(|d| d.finish())
    {
        refused = Some(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()));
    }
    let _ = tx
        .send(if refused.is_none() {
            Ok(Bytes::new())
        } else {
            Err(())
        })
        .await;
    drop(tx);
    let outcome = ingest.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ingest task failed: {e}"),
        )
    })?;
    if let Some(e) = refused {
        return Err(e);
    }
    let (replaced, reply, json) = outcome?;
    let m = &app.metrics;
    m.ingested_bytes.inc_by(reply.size);
    m.chunks_published.inc_by(reply.chunks);
    m.chunks_new.inc_by(reply.new_chunks);
    m.chunk_bytes_added.inc_by(reply.stored_bytes_added);
    if replaced {
        // Reclaim the replaced version's chunks in the background; the publish is done.
        let app = app.clone();
        tokio::task::spawn_blocking(move || gc(&app));
    }
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, json))
}

/// The bytes of the chunks an upload names, in order, each checked against its address and
/// its stated length: from this node's store (one pass) or, in a cluster, from the nodes
/// that hold them (a few at a time). `409` when no node has one.
async fn stored_chunks(
    app: &Arc<App>,
    named: Vec<(ChunkHash, u32)>,
) -> Result<Vec<Bytes>, ApiError> {
    let missing = |hash: ChunkHash| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("chunk {hash} is not stored here: send the file's bytes"),
        )
    };
    let sized = |hash: ChunkHash, len: u32, b: Bytes| {
        if b.len() == len as usize {
            Ok(b)
        } else {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("chunk {hash} is {} bytes, not {len}", b.len()),
            ))
        }
    };
    match &app.cluster {
        Some(c) => {
            use futures_util::{StreamExt as _, TryStreamExt as _};
            futures_util::stream::iter(named)
                .map(|(hash, len)| async move {
                    let b = c.chunk(hash).await.map_err(|e| match e {
                        ClusterError::ChunkUnavailable(_) => missing(hash),
                        e => e.into(),
                    })?;
                    sized(hash, len, b)
                })
                .buffered(8)
                .try_collect()
                .await
        }
        None => {
            let store = app.store.clone();
            blocking(move || {
                named
                    .into_iter()
                    .map(|(hash, len)| {
                        let b = store.read_chunk(&hash)?.ok_or_else(|| missing(hash))?;
                        sized(hash, len, b)
                    })
                    .collect()
            })
            .await?
        }
    }
}

/// `POST /api/v1/chunks/known`: which of the listed chunks this node's store has, one byte
/// each ([`tessera_origin_proto::upload`]).
async fn known_chunks(app: &Arc<App>, body: &mut Option<Incoming>) -> Reply {
    let Some(body) = body.take() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "request body already read",
        ));
    };
    let max = tessera_origin_proto::batch::MAX_BATCH_CHUNKS * 32;
    let bytes = http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a chunk list is at most {max} bytes: {e}"),
            )
        })?
        .to_bytes();
    let hashes = tessera_origin_proto::batch::decode_request(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let store = app.store.clone();
    let known = blocking(move || store.has_chunks(&hashes)).await??;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(full(tessera_origin_proto::upload::encode_known(&known)))
        .unwrap())
}

/// Decrements `g` when dropped.
fn scopeguard_dec(g: &prometheus::IntGauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus::IntGauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(g)
}

fn gc(app: &App) {
    match app.store.collect_garbage() {
        Ok(r) => app.metrics.gc_chunks.inc_by(r.chunks),
        Err(e) => error!(error = %e, "garbage collection failed"),
    }
}

async fn delete(app: &Arc<App>, path: String) -> Reply {
    let existed = match &app.cluster {
        Some(c) => c.delete(&path).await?,
        None => {
            let store = app.store.clone();
            let p = path.clone();
            blocking(move || store.delete(&p)).await??
        }
    };
    if !existed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("nothing is published at {path:?}"),
        ));
    }
    // Reclaim before replying, so a 204 means the space is free.
    let a = app.clone();
    blocking(move || gc(&a)).await?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(empty())
        .unwrap())
}

async fn list(app: &Arc<App>, query: &str) -> Reply {
    let mut prefix = String::new();
    for (k, v) in form_pairs(query) {
        if k == "prefix" {
            // Published paths have no leading slash; a prefix written as a URL path
            // (`/img/`) means the same files.
            prefix = v.trim_start_matches('/').to_string();
        }
    }
    let files = match &app.cluster {
        Some(c) => c
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|r| r.manifest)
            .map(|m| crate::store::Listed {
                path: m.path,
                size: m.size,
                blake3: m.blake3,
            })
            .collect(),
        None => {
            let store = app.store.clone();
            blocking(move || store.list(&prefix)).await??
        }
    };
    Ok(json_reply(StatusCode::OK, &files))
}

/// Longest a change feed request may wait, in seconds.
const MAX_WAIT_SECS: u64 = 60;

/// `GET /api/v1/changes?since=N&wait=S&limit=L`: the change feed, long-polled with `wait`;
/// `since=head` asks for the latest change number only (a new follower's first call).
async fn changes(app: &Arc<App>, query: &str) -> Reply {
    let (mut since, mut wait, mut limit) = (0u64, 0u64, 1000usize);
    for (k, v) in form_pairs(query) {
        let bad =
            |what: &str| ApiError::new(StatusCode::BAD_REQUEST, format!("{k}={v:?} is not {what}"));
        match k.as_str() {
            "since" if v == "head" => since = u64::MAX,
            "since" => since = v.parse().map_err(|_| bad("a change number or head"))?,
            "wait" => {
                wait = v
                    .parse::<u64>()
                    .map_err(|_| bad("a number of seconds"))?
                    .min(MAX_WAIT_SECS)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| bad("a count"))?
                    .clamp(1, 10_000)
            }
            _ => {}
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    // Subscribed before reading, so a commit between the read and the wait is not missed.
    let mut rx = app.store.subscribe();
    loop {
        rx.borrow_and_update();
        let store = app.store.clone();
        let reply = blocking(move || store.changes_since(since, limit)).await??;
        if !reply.changes.is_empty() || reply.truncated {
            return Ok(json_reply(StatusCode::OK, &reply));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(json_reply(StatusCode::OK, &reply)), // waited long enough
        }
    }
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|s| !s.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

async fn load_manifest(app: &Arc<App>, path: String) -> Result<Manifest, ApiError> {
    let found = match &app.cluster {
        Some(c) => c.manifest(&path).await?,
        None => {
            let store = app.store.clone();
            let p = path.clone();
            blocking(move || store.manifest(&p)).await??
        }
    };
    found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("nothing is published at {path:?}"),
        )
    })
}

/// A manifest's validators (the quoted whole-file hash and the publish time) and the
/// response head its file and manifest replies share.
struct Validated<'a> {
    etag: String,
    last_modified: String,
    modified: u64,
    cache_control: &'a str,
}

impl<'a> Validated<'a> {
    fn new(app: &'a App, m: &Manifest) -> Self {
        Self {
            etag: m.blake3.etag(),
            last_modified: httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(m.modified)),
            modified: m.modified,
            cache_control: &app.config.file_cache_control,
        }
    }

    fn head(&self, status: StatusCode) -> http::response::Builder {
        Response::builder()
            .status(status)
            .header(header::ETAG, &self.etag)
            .header(header::LAST_MODIFIED, &self.last_modified)
            .header(header::CACHE_CONTROL, self.cache_control)
    }

    /// The reply when the request's preconditions decide it: `304`, or `412` as an error.
    fn decide(&self, headers: &HeaderMap) -> Result<Option<Response<Body>>, ApiError> {
        match preconditions(headers, Some(&self.etag), Some(self.modified)) {
            None => Ok(None),
            Some(StatusCode::NOT_MODIFIED) => Ok(Some(
                self.head(StatusCode::NOT_MODIFIED).body(empty()).unwrap(),
            )),
            Some(s) => Err(ApiError::new(s, "If-Match does not match the current ETag")),
        }
    }
}

async fn get_file(app: &Arc<App>, path: String, headers: &HeaderMap, head: bool) -> Reply {
    let m = load_manifest(app, path).await?;
    let v = Validated::new(app, &m);
    if let Some(r) = v.decide(headers)? {
        return Ok(r);
    }
    let mut ask = headers
        .get(header::RANGE)
        .map(|v| {
            v.to_str()
                .map(|s| parse_range(s, m.size))
                .unwrap_or(RangeAsk::Malformed)
        })
        .unwrap_or(RangeAsk::Whole);
    // If-Range: a range only applies to the representation the client already has part of.
    if !if_range_holds(headers, Some(&v.etag), Some(v.modified)) {
        ask = RangeAsk::Whole;
    }
    let (status, start, end) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, m.size),
        RangeAsk::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        RangeAsk::Unsatisfiable | RangeAsk::Malformed => {
            let what = if ask == RangeAsk::Malformed {
                "malformed"
            } else {
                "not satisfiable"
            };
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("Range {range:?} is {what} for a file of {} bytes", m.size),
            )
            .with_header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", m.size)).unwrap(),
            ));
        }
    };
    let mut r = v
        .head(status)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, &m.content_type)
        .header(header::CONTENT_LENGTH, end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        r = r.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", end - 1, m.size),
        );
    }
    let body = if head {
        empty()
    } else {
        stream_file(app, m, start, end).await?
    };
    Ok(r.body(body).unwrap())
}

/// How many chunks a reader decodes and verifies at once, in parallel.
const READ_GROUP: usize = 16;

/// Streams bytes `start..end` of the file. The first group of chunks is read and verified
/// before the reply starts, so a corrupt beginning is a clean `500`; a corrupt chunk later
/// aborts the body (the client sees a truncated transfer), so wrong bytes are never sent.
async fn stream_file(app: &Arc<App>, m: Manifest, start: u64, end: u64) -> Result<Body, ApiError> {
    let chunks = m.chunks_covering(start, end);
    if chunks.is_empty() {
        return Ok(empty());
    }
    if let Some(c) = &app.cluster {
        return Ok(stream_cluster_file(c.clone(), m, start, end, chunks).await?);
    }
    let hashes: Arc<Vec<ChunkHash>> = Arc::new(m.chunks.iter().map(|c| c.hash).collect());
    let slice = move |i: usize, data: Bytes| {
        let c = m.chunks[i];
        let from = start.saturating_sub(c.offset) as usize;
        let to = (end - c.offset).min(u64::from(c.size)) as usize;
        data.slice(from..to)
    };
    let read_group = {
        let store = app.store.clone();
        let metrics = app.metrics.clone();
        move |ids: std::ops::Range<usize>, hashes: &[ChunkHash]| -> Result<Vec<Bytes>, StoreError> {
            use rayon::prelude::*;
            hashes[ids]
                .par_iter()
                .map(|h| store.read_chunk(h)?.ok_or(StoreError::MissingChunk(*h)))
                .collect::<Result<Vec<_>, _>>()
                .inspect_err(|e| {
                    if matches!(e, StoreError::Corrupt { .. }) {
                        metrics.corrupt_chunks.inc();
                    }
                })
        }
    };
    let first = chunks.start..(chunks.start + READ_GROUP).min(chunks.end);
    let (h, f, rg) = (hashes.clone(), first.clone(), read_group.clone());
    let first_data = blocking(move || rg(f, &h)).await??;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let (mut group, mut datas): (_, Result<_, StoreError>) = (first, Ok(first_data));
        loop {
            match datas {
                Ok(datas) => {
                    for (i, d) in group.clone().zip(datas) {
                        if tx.blocking_send(Ok(Frame::data(slice(i, d)))).is_err() {
                            return; // the client went away
                        }
                    }
                }
                Err(e) => {
                    error!(error = %e, "aborting a response body: a chunk could not be served");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
            if group.end >= chunks.end {
                return;
            }
            group = group.end..(group.end + READ_GROUP).min(chunks.end);
            datas = read_group(group.clone(), &hashes);
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok(StreamBody::new(stream).boxed())
}

/// [`stream_file`] in a cluster: chunks come from this node or from their owners, a group
/// at a time fetched concurrently, each verified by [`Cluster::chunk`].
async fn stream_cluster_file(
    cluster: Arc<Cluster>,
    m: Manifest,
    start: u64,
    end: u64,
    chunks: std::ops::Range<usize>,
) -> Result<Body, ClusterError> {
    let fetch = move |cluster: Arc<Cluster>, ids: std::ops::Range<usize>, m: Arc<Manifest>| async move {
        let calls = ids.map(|i| {
            let (cluster, m) = (cluster.clone(), m.clone());
            async move {
                let c = m.chunks[i];
                let data = cluster.chunk(c.hash).await?;
                let from = start.saturating_sub(c.offset) as usize;
                let to = (end - c.offset).min(u64::from(c.size)) as usize;
                Ok::<_, ClusterError>(data.slice(from..to))
            }
        });
        futures_util::future::try_join_all(calls).await
    };
    let m = Arc::new(m);
    let first = chunks.start..(chunks.start + READ_GROUP).min(chunks.end);
    let first_data = fetch(cluster.clone(), first.clone(), m.clone()).await?;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut group = first;
        let mut datas: Result<Vec<Bytes>, ClusterError> = Ok(first_data);
        loop {
            match datas {
                Ok(datas) => {
                    for d in datas {
                        if tx.send(Ok(Frame::data(d))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    error!(error = %e, "aborting a response body: a chunk could not be served");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
            if group.end >= chunks.end {
                return;
            }
            group = group.end..(group.end + READ_GROUP).min(chunks.end);
            datas = fetch(cluster.clone(), group.clone(), m.clone()).await;
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok(StreamBody::new(stream).boxed())
}

async fn get_manifest(app: &Arc<App>, path: String, headers: &HeaderMap, head: bool) -> Reply {
    let m = load_manifest(app, path).await?;
    let v = Validated::new(app, &m);
    if let Some(r) = v.decide(headers)? {
        return Ok(r);
    }
    let json = serde_json::to_vec(&m).unwrap();
    let inline_max = headers
        .get(inline::INLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !head
        && inline_max.is_some_and(|max| m.size <= max)
        && let Some(data) = local_file(app, &m).await
    {
        let body = inline::encode(&json, &data);
        let r = v
            .head(StatusCode::OK)
            .header(header::CONTENT_TYPE, inline::CONTENT_TYPE)
            .header(header::VARY, inline::INLINE_HEADER)
            .header(header::CONTENT_LENGTH, body.len());
        return Ok(r.body(full(body)).unwrap());
    }
    // Two forms of one resource: a cache between origin and edge keeps them apart.
    let r = v
        .head(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::VARY, inline::INLINE_HEADER)
        .header(header::CONTENT_LENGTH, json.len());
    Ok(r.body(if head { empty() } else { full(json) }).unwrap())
}

/// The bytes of the (small) file `m` when this node holds every chunk and each is intact;
/// `None` otherwise (the manifest then goes alone, and its chunks are asked for as usual).
async fn local_file(app: &Arc<App>, m: &Manifest) -> Option<Bytes> {
    let store = app.store.clone();
    let chunks: Vec<ChunkHash> = m.chunks.iter().map(|c| c.hash).collect();
    let size = m.size as usize;
    blocking(move || {
        let mut all = BytesMut::with_capacity(size);
        for h in &chunks {
            all.extend_from_slice(&store.read_chunk(h).ok()??);
        }
        Some(all.freeze())
    })
    .await
    .ok()
    .flatten()
}

async fn get_chunk(app: &Arc<App>, hash: ChunkHash, headers: &HeaderMap, head: bool) -> Reply {
    let store = app.store.clone();
    let loaded = match blocking(move || store.load_chunk(&hash)).await? {
        Ok(c) => c,
        Err(e @ StoreError::Corrupt { .. }) => {
            app.metrics.corrupt_chunks.inc();
            if app.cluster.is_none() {
                return Err(e.into());
            }
            // In a cluster, another node's copy is served instead (scrub repairs this one).
            warn!(error = %e, "corrupt chunk; serving a replica's copy");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let (codec, stored, data) = match loaded {
        Some(c) => (c.codec, c.stored, c.data),
        None => match &app.cluster {
            // Another node of the cluster may hold it; a hop is answered locally only.
            Some(cl) if !headers.contains_key(crate::cluster::HOP_HEADER) => {
                let data = cl.chunk(hash).await.map_err(|e| match e {
                    ClusterError::ChunkUnavailable(_) => ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no origin node has chunk {hash}"),
                    ),
                    e => e.into(),
                })?;
                (Codec::Raw, data.clone(), data)
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("this node has no chunk {hash}"),
                ));
            }
        },
    };
    let etag = format!("\"{hash}\"");
    let r = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, CHUNK_CACHE_CONTROL)
        .header(header::VARY, "Accept-Encoding")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|l| etag_matches(l, &etag, true))
    {
        return Ok(r.status(StatusCode::NOT_MODIFIED).body(empty()).unwrap());
    }
    let br = codec == Codec::Brotli
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| accepts_encoding(v, "br"));
    let (r, bytes) = if br {
        (r.header(header::CONTENT_ENCODING, "br"), stored)
    } else {
        (r, data)
    };
    let r = r.header(header::CONTENT_LENGTH, bytes.len());
    Ok(r.body(if head { empty() } else { full(bytes) }).unwrap())
}
