//! The request pipeline, shared by every protocol: check the request, look it up (memory,
//! then SSD), judge freshness and purges, and answer from cache or go to the backend
//! ([`crate::origin_mode`] or [`crate::upstream`]). Answering from a stored response —
//! conditionals, `Range`, `HEAD`, brotli, `Age`, `Cache-Status` — is here, once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cached::{Cached, SizedCache};
use futures_util::future::{BoxFuture, Shared};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tessera_origin_proto::OriginClient;
use tessera_origin_proto::range::{
    RangeAsk, accepts_encoding, if_range_holds, parse_range, preconditions,
};

use crate::cache::{BodyRef, Cache, Key, Meta, Tier, Value, segment_key};
use crate::config::{Backend, EdgeConfig};
use crate::fill::Fills;
use crate::freshness::{CacheControl, date_header};
use crate::metrics::Metrics;
use crate::purge::Bans;
use crate::upstream::Upstream;

/// Errors of a response body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the edge sends.
pub type EdgeBody = UnsyncBoxBody<Bytes, BoxError>;

/// The protocol a request arrived over (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::Http3 => "h3",
        }
    }
}

/// A request refused or failed, as the client sees it: a status and a JSON body naming the
/// problem.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    pub fn response(&self) -> Response<EdgeBody> {
        json_response(self.status, &serde_json::json!({ "error": self.message }))
    }
}

pub fn full_body(b: impl Into<Bytes>) -> EdgeBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty_body() -> EdgeBody {
    full_body(Bytes::new())
}

pub fn stream_body<S>(s: S) -> EdgeBody
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<EdgeBody> {
    let body = serde_json::to_vec(v).expect("JSON serialises");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(full_body(body))
        .unwrap()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// How a response was produced: the `Cache-Status` value and the metric labels.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `hit`, `miss`, `stale`, `revalidated` or `pass`.
    pub result: &'static str,
    /// `memory`, `disk` or `none`.
    pub tier: &'static str,
    /// Parameters of the `Cache-Status` entry after the cache's name.
    pub cache_status: String,
}

impl Outcome {
    pub fn hit(tier: Tier, ttl: i64) -> Outcome {
        Outcome {
            result: "hit",
            tier: tier.as_str(),
            cache_status: format!("hit; ttl={ttl}; detail={}", tier.as_str()),
        }
    }
    pub fn stale(tier: Tier, ttl: i64, why: &str) -> Outcome {
        Outcome {
            result: "stale",
            tier: tier.as_str(),
            cache_status: format!("hit; ttl={ttl}; detail={why}"),
        }
    }
    pub fn miss(stored: bool) -> Outcome {
        Outcome {
            result: "miss",
            tier: "none",
            cache_status: if stored {
                "fwd=miss; stored".into()
            } else {
                "fwd=miss".into()
            },
        }
    }
    /// A stale entry's revalidation that got a new response instead of `304`.
    pub fn refetched(status: u16, stored: bool) -> Outcome {
        Outcome {
            result: "miss",
            tier: "none",
            cache_status: format!(
                "fwd=stale; fwd-status={status}{}",
                if stored { "; stored" } else { "" }
            ),
        }
    }
    pub fn revalidated(status: u16) -> Outcome {
        Outcome {
            result: "revalidated",
            tier: "none",
            cache_status: format!("fwd=stale; fwd-status={status}"),
        }
    }
    pub fn pass(why: &str) -> Outcome {
        Outcome {
            result: "pass",
            tier: "none",
            cache_status: format!("fwd={why}"),
        }
    }
}

/// Single-flight of manifest fetches (origin mode): concurrent misses of one path share one
/// fetch.
pub(crate) type Flight = Shared<BoxFuture<'static, Result<(Option<Arc<Meta>>, u16), Arc<Refusal>>>>;

/// One edge node's shared state.
#[derive(Debug)]
pub struct Edge {
    pub(crate) cfg: EdgeConfig,
    pub(crate) cache: Cache,
    pub(crate) metrics: Metrics,
    pub(crate) bans: Bans,
    pub(crate) fills: Fills,
    pub(crate) flights: Mutex<HashMap<Key, Flight>>,
    pub(crate) origins: Vec<OriginClient>,
    pub(crate) upstream: Option<Arc<Upstream>>,
    /// Upstreams a `route` plugin may name ([`EdgeConfig::upstreams`]).
    pub(crate) named_upstreams: HashMap<String, Arc<Upstream>>,
    /// The plugin host, made when the first plugin is bound (an edge without plugins runs
    /// no wasmtime engine).
    pub(crate) plugins: std::sync::OnceLock<tessera_plugins::PluginHost>,
    /// Brotli-compressed bodies by (entry key, stored time), so a hot text asset is
    /// compressed once, not per request. A std mutex: a map operation, no `.await`.
    brotli: Mutex<SizedCache<(Key, u64), Bytes>>,
    /// Paths the change feed reported recently (origin mode).
    pub(crate) recent: crate::feed::Recent,
    /// Placement of the origin cluster, when the origins are one.
    ring: Option<tessera_origin_proto::ring::Ring>,
    /// Per origin: until when (Unix ms) it is tried last, after a failure to reach it.
    origin_down: Vec<std::sync::atomic::AtomicU64>,
}

impl Edge {
    /// Opens the cache and state in `cfg.data` and prepares the backend.
    pub async fn open(cfg: EdgeConfig, metrics: Metrics) -> anyhow::Result<Arc<Edge>> {
        std::fs::create_dir_all(&cfg.data).map_err(|e| {
            anyhow::anyhow!("cannot create the data folder {}: {e}", cfg.data.display())
        })?;
        let cache = Cache::open(
            &cfg.data.join("cache"),
            cfg.memory_bytes,
            cfg.disk_bytes,
            cfg.policy,
        )
        .await?;
        let bans = Bans::load(&cfg.data)?;
        let (origins, upstream) = match &cfg.backend {
            Backend::Origin(urls) => {
                anyhow::ensure!(
                    !urls.is_empty(),
                    "origin mode needs at least one origin URL"
                );
                let clients = urls
                    .iter()
                    .map(|u| OriginClient::new(u, None))
                    .collect::<Result<Vec<_>, _>>()?;
                (clients, None)
            }
            Backend::Upstream(url) => (Vec::new(), Some(Arc::new(Upstream::new(url, None, &cfg)?))),
        };
        let named_upstreams = cfg
            .upstreams
            .iter()
            .map(|(name, url)| {
                Ok((
                    name.clone(),
                    Arc::new(Upstream::new(url, Some(name), &cfg)?),
                ))
            })
            .collect::<anyhow::Result<HashMap<_, _>>>()?;
        let n_origins = origins.len();
        let ring = match &cfg.origin_ring {
            Some(r) => {
                anyhow::ensure!(
                    r.nodes.len() == n_origins,
                    "the origin ring names {} nodes but {} origin URLs are given",
                    r.nodes.len(),
                    n_origins
                );
                Some(tessera_origin_proto::ring::Ring::new(
                    r.nodes.clone(),
                    r.vnodes,
                    r.replication,
                ))
            }
            None => None,
        };
        let edge = Arc::new(Edge {
            named_upstreams,
            plugins: Default::default(),
            brotli: Mutex::new(SizedCache::with_size(cfg.brotli_cache_entries.max(1))),
            cfg,
            cache,
            metrics,
            bans,
            fills: Fills::default(),
            flights: Mutex::new(HashMap::new()),
            origins,
            upstream,
            recent: Default::default(),
            origin_down: (0..n_origins).map(|_| Default::default()).collect(),
            ring,
        });
        crate::plugins::bind_configured(&edge)?;
        Ok(edge)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }

    /// Answers one request, whatever protocol it came over. Never fails: every problem is a
    /// response.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<EdgeBody>,
        proto: Protocol,
        client: SocketAddr,
    ) -> Response<EdgeBody> {
        let start = Instant::now();
        let logged = self
            .cfg
            .access_log
            .then(|| (req.method().to_string(), req.uri().path().to_string()));
        let (resp, outcome) = match self.route(req, proto, client).await {
            Ok(r) => r,
            Err(refusal) => {
                if refusal.status == StatusCode::BAD_REQUEST {
                    self.metrics.bad_requests.inc();
                }
                (refusal.response(), Outcome::pass("error"))
            }
        };
        let mut resp = resp;
        if let Ok(v) = HeaderValue::from_str(&format!("tessera; {}", outcome.cache_status)) {
            resp.headers_mut().append("cache-status", v);
        }
        self.metrics
            .requests
            .with_label_values(&[proto.as_str(), resp.status().as_str()])
            .inc();
        self.metrics
            .cache
            .with_label_values(&[outcome.result, outcome.tier])
            .inc();
        let kind = if outcome.result == "hit" {
            "hit"
        } else {
            "miss"
        };
        self.metrics
            .latency
            .with_label_values(&[proto.as_str(), kind])
            .observe(start.elapsed().as_secs_f64());
        match logged {
            Some((method, path)) => {
                let (parts, body) = resp.into_parts();
                let entry = crate::access::Entry {
                    proto: proto.as_str(),
                    method,
                    path,
                    status: parts.status.as_u16(),
                    cache: outcome.result,
                    tier: outcome.tier,
                    client,
                    start,
                };
                let length = parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                Response::from_parts(parts, crate::access::Logged::wrap(body, entry, length))
            }
            None => resp,
        }
    }

    async fn route(
        self: &Arc<Self>,
        mut req: Request<EdgeBody>,
        proto: Protocol,
        client: SocketAddr,
    ) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
        let mut upstream = self.upstream.clone();
        if let Some(host) = self.plugins.get()
            && (host.is_bound(tessera_plugins::Hook::Authorize)
                || host.is_bound(tessera_plugins::Hook::Route))
        {
            match crate::plugins::plan(self, host, &mut req, proto, client) {
                crate::plugins::Plan::Answer(r) => return Ok((r, Outcome::pass("plugin"))),
                crate::plugins::Plan::Serve(Some(named)) => upstream = Some(named),
                crate::plugins::Plan::Serve(None) => {}
            }
        }
        let path = check_path(req.uri().path())?;
        match upstream {
            Some(up) => {
                // The upstream sees who asked: appended to any X-Forwarded-For already
                // present. Checked only: the upstream gets the path as the client sent it.
                let xff = match req
                    .headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                {
                    Some(prev) => format!("{prev}, {}", client.ip()),
                    None => client.ip().to_string(),
                };
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    req.headers_mut().insert("x-forwarded-for", v);
                }
                crate::upstream::handle(self, req, up).await
            }
            None => crate::origin_mode::handle(self, req, path).await,
        }
    }

    /// Looks up the stored response for `key`; `None` on a miss or when a purge removed it.
    /// Follows a `Vary` index to the variant `req` selects.
    pub(crate) async fn lookup(
        &self,
        key: &Key,
        req: &HeaderMap,
    ) -> Option<(Arc<Meta>, Tier, Key, crate::purge::Verdict)> {
        let primary = key;
        let (mut value, mut tier) = self.cache.get(key).await?;
        let mut key = *key;
        if let Value::Vary(names) = &value {
            let vkey = variant_key(&key, names, req);
            let (v, t) = self.cache.get(&vkey).await?;
            (value, tier, key) = (v, t.max_tier(tier), vkey);
        }
        let Value::Meta(meta) = value else {
            return None;
        };
        if self.cache.removed_since(primary, meta.stored_at_ms) {
            return None;
        }
        if let BodyRef::Segments { id, count } = &meta.body {
            // Segments are separate entries and may have been evicted on their own.
            for i in 0..*count {
                if !self.cache.contains(&segment_key(id, i)) {
                    return None;
                }
            }
        }
        let verdict = if self.bans.is_empty() {
            crate::purge::Verdict::Keep
        } else {
            self.bans.verdict(&meta)
        };
        if verdict == crate::purge::Verdict::Gone {
            self.cache.remove(&key);
            return None;
        }
        Some((meta, tier, key, verdict))
    }

    /// Answers `req` from the stored response `meta` (conditionals, `Range`, `HEAD`, brotli,
    /// `Age`).
    pub(crate) async fn serve(
        self: &Arc<Self>,
        req_headers: &HeaderMap,
        method: &Method,
        meta: Arc<Meta>,
        key: Key,
        tier: Option<Tier>,
        now: u64,
    ) -> Response<EdgeBody> {
        let status = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
        let etag = meta.headers.get(header::ETAG).and_then(|v| v.to_str().ok());
        let modified = date_header(&meta.headers, header::LAST_MODIFIED);
        let age = meta.freshness.age(now);
        let mut headers = meta.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(header::AGE, HeaderValue::from(age));
        if status == StatusCode::OK
            && let Some(decided) = preconditions(req_headers, etag, modified)
        {
            return precondition_answer(decided, &headers);
        }
        let size = meta.size;
        let mut ask = RangeAsk::Whole;
        if status == StatusCode::OK && !headers.contains_key(header::CONTENT_ENCODING) {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Some(r) = req_headers.get(header::RANGE).and_then(|v| v.to_str().ok())
                && if_range_holds(req_headers, etag, modified)
            {
                ask = parse_range(r, size);
            }
        }
        let (code, start, end) = match ask {
            RangeAsk::Part { start, end } => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).unwrap(),
                );
                (StatusCode::PARTIAL_CONTENT, start, end + 1)
            }
            RangeAsk::Unsatisfiable => {
                return unsatisfiable(size);
            }
            // A malformed range is ignored (RFC 9110 §14.2 allows it): the whole body.
            RangeAsk::Whole | RangeAsk::Malformed => (status, 0, size),
        };
        let head = method == Method::HEAD;
        let source = tier.map(Tier::as_str).unwrap_or("origin");
        if code == StatusCode::OK
            && let Some(compressed) = self
                .brotli_variant(req_headers, &meta, key, &mut headers)
                .await
        {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(compressed.len()));
            if !head {
                self.metrics
                    .bytes_served
                    .with_label_values(&[source])
                    .inc_by(compressed.len() as u64);
            }
            let mut r = Response::builder().status(code).body(if head {
                empty_body()
            } else {
                full_body(compressed)
            });
            *r.as_mut().unwrap().headers_mut() = headers;
            return r.unwrap();
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        if !head
            && end > start
            && let BodyRef::Chunks(chunks) = &meta.body
        {
            // The first chunk before the head: when the origin cannot give it (or gives
            // corrupt bytes), the client gets a clear 502 instead of a cut-off 200.
            let i = chunks.partition_point(|c| c.offset + c.size as u64 <= start);
            if let Some(c) = chunks.get(i)
                && let Err(e) = crate::origin_mode::chunk(self, c.hash).await
            {
                return Refusal::new(StatusCode::BAD_GATEWAY, format!("origin error: {e}"))
                    .response();
            }
        }
        let body = if head || end == start {
            empty_body()
        } else if let BodyRef::Inline(b) = &meta.body {
            self.metrics
                .bytes_served
                .with_label_values(&[source])
                .inc_by(end - start);
            full_body(b.slice(start as usize..end as usize))
        } else {
            let counter = self.metrics.bytes_served.with_label_values(&[source]);
            stream_body(
                self.clone()
                    .body_stream(meta, start, end)
                    .inspect(move |r| {
                        if let Ok(b) = r {
                            counter.inc_by(b.len() as u64);
                        }
                    }),
            )
        };
        let mut r = Response::new(body);
        *r.status_mut() = code;
        *r.headers_mut() = headers;
        r
    }

    /// The bytes `start..end` of a stored body, as they are read or fetched.
    pub(crate) fn body_stream(
        self: Arc<Self>,
        meta: Arc<Meta>,
        start: u64,
        end: u64,
    ) -> std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>> {
        match &meta.body {
            BodyRef::Inline(b) => {
                let b = b.slice(start as usize..end as usize);
                Box::pin(futures_util::stream::once(async move { Ok(b) }))
            }
            BodyRef::Segments { id, .. } => {
                let seg = crate::cache::SEGMENT as u64;
                let id = *id;
                let first = (start / seg) as u32;
                let last = ((end - 1) / seg) as u32;
                let edge = self.clone();
                Box::pin(
                    futures_util::stream::iter(first..=last)
                        .map(move |i| {
                            let edge = edge.clone();
                            async move {
                                match edge.cache.get(&segment_key(&id, i)).await {
                                    Some((Value::Bytes(b), _)) => Ok((i, b)),
                                    _ => Err(BoxError::from("a body segment left the cache")),
                                }
                            }
                        })
                        .buffered(4)
                        .map(move |r| {
                            r.map(|(i, b)| {
                                let off = i as u64 * seg;
                                let s = start.saturating_sub(off).min(b.len() as u64) as usize;
                                let e = (end - off).min(b.len() as u64) as usize;
                                b.slice(s..e)
                            })
                        }),
                )
            }
            BodyRef::Chunks(chunks) => {
                crate::origin_mode::chunk_stream(self, chunks.clone(), start, end)
            }
        }
    }

    /// A brotli-compressed copy of the stored body when the client accepts it and the type
    /// compresses; updates `headers` to describe it.
    async fn brotli_variant(
        self: &Arc<Self>,
        req: &HeaderMap,
        meta: &Meta,
        key: Key,
        headers: &mut HeaderMap,
    ) -> Option<Bytes> {
        if !self.cfg.brotli
            || meta.size < 256
            || meta.headers.contains_key(header::CONTENT_ENCODING)
            || !compressible(meta.headers.get(header::CONTENT_TYPE))
        {
            return None;
        }
        // Either way the response now varies by Accept-Encoding.
        add_vary(headers, "accept-encoding");
        if !req
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| accepts_encoding(v, "br"))
        {
            return None;
        }
        // Compressing needs every byte: bodies up to BROTLI_MAX only.
        if meta.size > BROTLI_MAX {
            return None;
        }
        let cache_key = (key, meta.stored_at_ms);
        let cached = self.brotli.lock().unwrap().cache_get(&cache_key).cloned();
        let compressed = match cached {
            Some(c) => c,
            None => {
                let body = match &meta.body {
                    BodyRef::Inline(b) => b.clone(),
                    _ => {
                        let mut all = Vec::with_capacity(meta.size as usize);
                        let mut s = self
                            .clone()
                            .body_stream(Arc::new(meta.clone()), 0, meta.size);
                        while let Some(part) = s.next().await {
                            all.extend_from_slice(&part.ok()?);
                        }
                        Bytes::from(all)
                    }
                };
                let c = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::with_capacity(body.len() / 3);
                    let params = brotli::enc::BrotliEncoderParams {
                        quality: 5,
                        lgwin: 22,
                        ..Default::default()
                    };
                    brotli::BrotliCompress(&mut &body[..], &mut out, &params).ok()?;
                    // Not worth it: remember that as an empty entry.
                    Some(if out.len() < body.len() {
                        Bytes::from(out)
                    } else {
                        Bytes::new()
                    })
                })
                .await
                .ok()??;
                self.brotli.lock().unwrap().cache_set(cache_key, c.clone());
                c
            }
        };
        if compressed.is_empty() {
            return None;
        }
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        headers.remove(header::ACCEPT_RANGES);
        // A different representation: its validator must differ from the identity one.
        if let Some(e) = headers.get(header::ETAG).and_then(|v| v.to_str().ok())
            && !e.starts_with("W/")
            && let Ok(w) = HeaderValue::from_str(&format!("W/{e}"))
        {
            headers.insert(header::ETAG, w);
        }
        Some(compressed)
    }

    /// One request to an origin or upstream: counted by `kind` (`manifest`, `chunk`,
    /// `object`, `revalidate`, `pass`), timed to its answer, and cut off after the configured
    /// origin timeout, which is counted as a `timeout` error and gives `None`.
    pub(crate) async fn call_origin<T>(
        &self,
        kind: &str,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        self.metrics.origin_fetches.with_label_values(&[kind]).inc();
        let started = Instant::now();
        match tokio::time::timeout(self.cfg.origin_timeout(), f).await {
            Ok(answer) => {
                self.metrics
                    .origin_latency
                    .observe(started.elapsed().as_secs_f64());
                Some(answer)
            }
            Err(_) => {
                self.origin_error("timeout");
                None
            }
        }
    }

    /// Counts an origin failure of `kind` (`connect`, `status`, `body`, `malformed`, …).
    pub(crate) fn origin_error(&self, kind: &str) {
        self.metrics.origin_errors.with_label_values(&[kind]).inc();
    }

    /// Origins to try, in order: the preference list (all origins without a ring), those
    /// that failed in the last seconds moved to the end.
    fn origin_order(&self, preference: Option<Vec<usize>>) -> Vec<usize> {
        let list = preference.unwrap_or_else(|| (0..self.origins.len()).collect());
        let now = now_ms();
        let down =
            |i: &usize| self.origin_down[*i].load(std::sync::atomic::Ordering::Relaxed) > now;
        let (mut up, rest): (Vec<usize>, Vec<usize>) = list.into_iter().partition(|i| !down(i));
        up.extend(rest);
        up
    }

    /// Origins to ask for the manifest of `path`: its owners first.
    pub(crate) fn origins_for_file(&self, path: &str) -> Vec<usize> {
        self.origin_order(self.ring.as_ref().map(|r| r.file_nodes(path)))
    }

    /// Origins to ask for chunk `hash`: its owners first.
    pub(crate) fn origins_for_chunk(&self, hash: &tessera_origin_proto::ChunkHash) -> Vec<usize> {
        self.origin_order(self.ring.as_ref().map(|r| r.chunk_nodes(hash)))
    }

    /// Origin `i` could not be reached: try it last for a few seconds.
    pub(crate) fn origin_failed(&self, i: usize) {
        self.origin_down[i].store(now_ms() + 3000, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the origins form a cluster with a ring (each has its own change feed).
    pub(crate) fn origin_cluster(&self) -> bool {
        self.ring.is_some()
    }
}

trait MaxTier {
    fn max_tier(self, other: Tier) -> Tier;
}

impl MaxTier for Tier {
    /// The slower of two tiers (a lookup that touched the SSD counts as an SSD hit).
    fn max_tier(self, other: Tier) -> Tier {
        if self == Tier::Disk || other == Tier::Disk {
            Tier::Disk
        } else {
            Tier::Memory
        }
    }
}

/// The key of the variant of `primary` that `req` selects by the header `names`.
pub(crate) fn variant_key(primary: &Key, names: &[String], req: &HeaderMap) -> Key {
    let values: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            // Field values are compared after joining repeated lines and trimming (RFC 9111
            // §4.1 allows this normalisation).
            let joined = req
                .get_all(n.as_str())
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            format!("{n}:{joined}").into_bytes()
        })
        .collect();
    let mut parts: Vec<&[u8]> = vec![&primary.0];
    parts.extend(values.iter().map(|v| v.as_slice()));
    Key::derive("variant", &parts)
}

/// The header names a response varies by (lowercase, deduplicated, sorted).
pub(crate) fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

pub(crate) fn add_vary(headers: &mut HeaderMap, name: &str) {
    if vary_names(headers).iter().any(|n| n == name) {
        return;
    }
    headers.append(header::VARY, HeaderValue::from_str(name).unwrap());
}

/// The answer when a request's preconditions decided it: `304` with the validators and
/// caching headers of the response it stands for (RFC 9110 §15.4.5), or `412` naming the
/// problem.
pub(crate) fn precondition_answer(decided: StatusCode, headers: &HeaderMap) -> Response<EdgeBody> {
    if decided != StatusCode::NOT_MODIFIED {
        return Refusal::new(
            decided,
            "a precondition (If-Match or If-Unmodified-Since) does not hold",
        )
        .response();
    }
    let mut r = Response::new(empty_body());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        header::ETAG,
        header::LAST_MODIFIED,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::VARY,
        header::CONTENT_LOCATION,
        header::DATE,
        header::AGE,
    ] {
        if let Some(v) = headers.get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

/// `416` for a range outside a representation of `size` bytes.
pub(crate) fn unsatisfiable(size: u64) -> Response<EdgeBody> {
    let mut r = Refusal::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        format!("the range is outside the representation's {size} bytes"),
    )
    .response();
    r.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
    );
    r
}

/// Whether a content type is worth compressing.
fn compressible(ct: Option<&HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || matches!(
            ct.as_str(),
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "application/manifest+json"
        )
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

/// Checks a request path: absolute, no dot segments (raw or percent-encoded), no NUL or
/// backslash. Returns it percent-decoded.
pub(crate) fn check_path(raw: &str) -> Result<String, Refusal> {
    let bad = |why: &str| Refusal::new(StatusCode::BAD_REQUEST, format!("bad path {raw:?}: {why}"));
    if !raw.starts_with('/') {
        return Err(bad("must start with /"));
    }
    let decoded = percent_decode(raw).ok_or_else(|| bad("invalid percent-encoding or UTF-8"))?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(bad("NUL and backslash are not allowed"));
    }
    if decoded.split('/').any(|s| s == ".." || s == ".") {
        return Err(bad("dot segments are not allowed"));
    }
    Ok(decoded)
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads the request's `Cache-Control` directives.
pub(crate) fn request_directives(h: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::parse(h, header::CACHE_CONTROL);
    // `Pragma: no-cache` without Cache-Control means no-cache (RFC 9111 §5.4, deprecated
    // but still sent by browsers on reload).
    if !cc.present
        && h.get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"))
    {
        cc.no_cache = true;
    }
    cc
}

/// Largest body compressed for a client.
const BROTLI_MAX: u64 = 8 << 20;

/// How long a background revalidation may be delayed before it is pointless.
pub(crate) const BACKGROUND_REVALIDATE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape() {
        assert_eq!(check_path("/a/b.js").unwrap(), "/a/b.js");
        assert_eq!(check_path("/a%20b").unwrap(), "/a b");
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/b",
            "/a/./b",
            "/a%00",
            "/a%5cb",
            "/%zz",
            "x",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn variants_differ_by_the_named_headers_only() {
        let k = Key([7; 32]);
        let names = vec!["accept-encoding".to_string()];
        let mut a = HeaderMap::new();
        a.insert("accept-encoding", HeaderValue::from_static("br"));
        a.insert("user-agent", HeaderValue::from_static("x"));
        let mut b = a.clone();
        b.insert("user-agent", HeaderValue::from_static("y"));
        assert_eq!(variant_key(&k, &names, &a), variant_key(&k, &names, &b));
        b.insert("accept-encoding", HeaderValue::from_static("gzip"));
        assert_ne!(variant_key(&k, &names, &a), variant_key(&k, &names, &b));
        assert_ne!(
            variant_key(&k, &names, &HeaderMap::new()),
            variant_key(&k, &names, &a)
        );
    }

    #[test]
    fn compressible_types() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(compressible(Some(&v("text/html; charset=utf-8"))));
        assert!(compressible(Some(&v("application/javascript"))));
        assert!(compressible(Some(&v("application/ld+json"))));
        assert!(!compressible(Some(&v("image/png"))));
        assert!(!compressible(None));
    }
}
