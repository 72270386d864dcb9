//! Upstream mode: the edge in front of any HTTP server, as an RFC 9111 shared cache of whole
//! responses.
//!
//! A `GET` or `HEAD` is looked up by host and path-with-query (then by `Vary` variant). A
//! miss joins or leads a [`Fill`]: one `GET` to the upstream per key however many clients
//! miss at once ([`crate::coalesce`]); each streams the body as it arrives, and the cache
//! stores it (inline, or in segments for large bodies) once it is complete and matched its
//! framing ([`crate::rules::store_plan`] decides; [`fetch`] moves the bytes). A request for
//! one byte range that the store cannot answer fetches slices instead ([`slices`]). Unsafe
//! methods pass through and invalidate what the cache holds for their target.
//!
//! [`Fill`]: crate::coalesce::fill::Fill

pub mod fetch;
pub mod slices;

use std::net::IpAddr;
use std::time::Duration;

use futures_util::TryStreamExt;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::backends::Context;
use crate::basics::body::{BoxError, EdgeBody, empty_body};
use crate::basics::error::{FetchError, FetchFailure};
use crate::basics::metrics::FetchKind;
use crate::basics::protocol::Interim;
use crate::coalesce::Flights;
use crate::coalesce::fill::Fill;
use crate::rules::freshness::{connection_options, end_to_end, is_hop_by_hop};
use crate::rules::hints::{passed_hints, passed_on};
use crate::store::entry::Key;

/// The most an upstream connection reads at once (hyper's minimum is 8 KiB).
const UPSTREAM_READ_BUF: usize = 64 << 10;

/// An HTTP server this edge fronts: a pooled client for it, and its fills in progress.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in `EdgeConfig::upstreams`; `None` for the default backend.
    name: Option<String>,
    scheme: Scheme,
    authority: Authority,
    client: Client<HttpConnector, EdgeBody>,
    ctx: Context,
    fills: Flights<Key, Fill>,
    /// Slices of partial objects being fetched ([`slices`]).
    slices: slices::SliceFlights,
    first_slices: slices::FirstSliceFlights,
}

impl Upstream {
    /// The upstream at `url` (`http://HOST:PORT`), connecting within `connect_timeout`.
    pub fn new(
        url: &str,
        name: Option<&str>,
        connect_timeout: Duration,
        ctx: Context,
    ) -> anyhow::Result<Upstream> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("upstream URL {url:?}: {e}"))?;
        anyhow::ensure!(
            uri.scheme() == Some(&Scheme::HTTP) && uri.authority().is_some(),
            "upstream URL {url:?}: expected http://HOST:PORT"
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            // Body frames are slices of hyper's read buffer, and a fill holds a window of
            // them: each frame keeps its whole buffer alive. hyper's default (up to ~400 KiB
            // a read) made a fill's 2 MiB window pin ~3.6 MiB (heaptrack, 25 slow readers).
            .http1_max_buf_size(UPSTREAM_READ_BUF)
            .build(connector);
        Ok(Upstream {
            name: name.map(str::to_string),
            scheme: Scheme::HTTP,
            authority: uri.authority().unwrap().clone(),
            client,
            fills: Flights::new(Some(ctx.metrics.coalesced.clone())),
            slices: Flights::new(None),
            first_slices: Flights::new(Some(ctx.metrics.coalesced.clone())),
            ctx,
        })
    }

    fn uri(&self, path_and_query: &str) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("checked path")
    }

    /// The cache key of a request target (a named upstream's responses are kept apart from
    /// the default backend's).
    pub fn key(&self, host: &str, path_and_query: &str) -> Key {
        match &self.name {
            None => Key::derive("url", &[host.as_bytes(), path_and_query.as_bytes()]),
            Some(name) => Key::derive(
                "url-named",
                &[name.as_bytes(), host.as_bytes(), path_and_query.as_bytes()],
            ),
        }
    }

    /// Forgets what the cache holds for `key`, including a fill in progress (RFC 9111 §4.4).
    pub fn invalidate(&self, key: &Key) {
        if let Some(fill) = self.fills.get(key) {
            fill.invalidate();
        }
        self.ctx.store.cache.remove(key);
    }

    /// After a successful unsafe request to `host`: invalidates its target `key` and the
    /// same-host URIs its response names in `Location` and `Content-Location` (RFC 9111 §4.4).
    pub fn invalidate_after(&self, key: &Key, host: &str, response: &HeaderMap) {
        self.invalidate(key);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = response.get(&name).and_then(|v| v.to_str().ok())
                && let Ok(uri) = target.parse::<Uri>()
                && uri
                    .authority()
                    .is_none_or(|a| a.as_str().eq_ignore_ascii_case(host))
                && let Some(p) = uri.path_and_query()
            {
                self.invalidate(&self.key(host, p.as_str()));
            }
        }
    }

    /// Sends `req` to the upstream, counted by `kind` and timed to its answer. No answer
    /// within the first-byte timeout is a `Timeout` failure (counted by [`Context::call`]);
    /// a request that fails (no connection, a broken one) a `Connect` failure, counted and
    /// logged, unless `client_body` says the client's own body broke it (a `Client`
    /// failure, which is the client's fault and counts nowhere as the upstream's).
    async fn request(
        &self,
        kind: FetchKind,
        req: Request<EdgeBody>,
        client_body: Option<&ClientBody>,
    ) -> Result<Response<hyper::body::Incoming>, FetchError> {
        self.request_hinted(kind, req, client_body, None).await
    }

    /// [`Upstream::request`], passing the upstream's `103 Early Hints` and `102 Processing`
    /// on to `interim` (the client's, when it can take them), never storing them.
    async fn request_hinted(
        &self,
        kind: FetchKind,
        mut req: Request<EdgeBody>,
        client_body: Option<&ClientBody>,
        interim: Option<&http::Extensions>,
    ) -> Result<Response<hyper::body::Incoming>, FetchError> {
        if let Some(i) = interim.and_then(|e| e.get::<Interim>()).cloned() {
            hyper::ext::on_informational(&mut req, move |r| {
                if passed_on(r.status()) {
                    i.0.give(r.status(), passed_hints(r.headers()));
                }
            });
        }
        match self.ctx.call(kind, self.client.request(req)).await {
            Some(Ok(r)) => Ok(r),
            None => Err(FetchError::new(
                FetchFailure::Timeout,
                format!("the upstream {} did not answer in time", self.authority),
            )),
            Some(Err(e)) if client_body.is_some_and(ClientBody::failed) => Err(FetchError::new(
                FetchFailure::Client,
                format!("the request body is malformed or broke off: {e}"),
            )),
            Some(Err(e)) => {
                self.ctx.failed(FetchFailure::Connect);
                // Logged where the failure reaches a client, under its request id.
                tracing::debug!(upstream = %self.authority, error = %e, "upstream request failed");
                Err(FetchError::new(
                    FetchFailure::Connect,
                    format!("upstream {} unreachable: {e}", self.authority),
                ))
            }
        }
    }

    /// Forwards a request as it is (its body too) and streams the answer back, storing
    /// nothing.
    pub async fn pass(
        &self,
        parts: &http::request::Parts,
        pq: &str,
        body: Option<EdgeBody>,
    ) -> Result<Response<EdgeBody>, FetchError> {
        let watch = ClientBody::default();
        let body = match body {
            Some(b) => watch.watch(b),
            None => empty_body(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = self.uri(pq);
        *req.headers_mut() = forward_headers(self, &parts.headers, false);
        let resp = self
            .request_hinted(FetchKind::Pass, req, Some(&watch), Some(&parts.extensions))
            .await?;
        let (rparts, body) = resp.into_parts();
        let counter = self.ctx.metrics.bytes_served.with_label_values(&["origin"]);
        let frames = timed_frames(self.ctx.clone(), body).map_err(BoxError::from);
        let body = http_body_util::StreamBody::new(frames)
            .map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    counter.inc_by(d.len() as u64);
                }
                f
            })
            .boxed_unsync();
        let mut r = Response::new(body);
        *r.status_mut() = rparts.status;
        *r.headers_mut() = response_headers(&rparts.headers);
        Ok(r)
    }
}

/// Whether a client's request body, passed on to the upstream, ended in an error (a
/// malformed chunked encoding, a client that went away mid-body).
#[derive(Debug, Clone, Default)]
struct ClientBody(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl ClientBody {
    /// `body`, noting here when it fails.
    fn watch(&self, body: EdgeBody) -> EdgeBody {
        let failed = self.0.clone();
        body.map_err(move |e| {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            e
        })
        .boxed_unsync()
    }

    fn failed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// An upstream body's frames, each within the between-bytes timeout of the one before; the
/// stream ends after its first error.
fn timed_frames(
    ctx: Context,
    body: hyper::body::Incoming,
) -> impl futures_util::Stream<Item = Result<hyper::body::Frame<bytes::Bytes>, FetchError>>
+ Send
+ 'static {
    futures_util::stream::unfold(Some(body), move |body| {
        let ctx = ctx.clone();
        async move {
            let mut body = body?;
            match ctx.next_piece(body.frame(), "the upstream").await {
                Ok(None) => None,
                Ok(Some(Ok(frame))) => Some((Ok(frame), Some(body))),
                Ok(Some(Err(e))) => Some((
                    Err(FetchError::new(
                        FetchFailure::Body,
                        format!("origin body failed: {e}"),
                    )),
                    None,
                )),
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// The host a request is for: its `Host` field, else its URI's authority, lowercase.
pub fn host_of(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Headers that say who a request came from and how, set by the edge.
const FORWARDED: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Headers a client could use to pose as a proxy in front of the edge or to redirect the
/// upstream's routing: dropped unless the client is a trusted proxy.
const POSING: [&str; 3] = ["x-real-ip", "x-original-url", "x-rewrite-url"];

/// Sets the request's forwarded headers from what the edge knows: the client's address,
/// the scheme it used (`tls`) and the `host` it asked for, as `Forwarded` (RFC 7239) and its
/// `X-Forwarded-*` forms. What a client sent in them is dropped, unless it is a `trusted`
/// proxy, whose values are kept and extended.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    tls: bool,
    host: Option<String>,
    trusted: bool,
) {
    let proto = if tls { "https" } else { "http" };
    if !trusted {
        for name in FORWARDED.iter().chain(&POSING) {
            headers.remove(*name);
        }
    }
    let append = |headers: &mut HeaderMap, name: &'static str, value: String| {
        let joined = match headers.get(name).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {value}"),
            None => value,
        };
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.insert(name, v);
        }
    };
    append(headers, "x-forwarded-for", client.to_string());
    let node = match client {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    };
    let mut forwarded = format!("for={node};proto={proto}");
    if let Some(h) = host.as_deref().filter(|h| !h.contains(['"', '\\'])) {
        forwarded.push_str(&format!(";host=\"{h}\""));
    }
    append(headers, "forwarded", forwarded);
    for (name, value) in [
        ("x-forwarded-proto", Some(proto)),
        ("x-forwarded-host", host.as_deref()),
    ] {
        if let Some(v) = value
            && !headers.contains_key(name)
            && let Ok(v) = HeaderValue::from_str(v)
        {
            headers.insert(name, v);
        }
    }
}

/// Headers sent upstream: the client's end-to-end headers, with `Host` set to the
/// upstream's and a `Via` entry. A fill (`for_fill`) fetches the whole current
/// representation for everyone, so the client's own validators and ranges stay behind: they
/// are answered from the stored copy.
fn forward_headers(up: &Upstream, from: &HeaderMap, for_fill: bool) -> HeaderMap {
    let connection_listed = connection_options(from);
    let mut h = HeaderMap::new();
    for (k, v) in from {
        // Framing is the body's that is sent (hyper writes it from the body: none for a
        // fill), never the client's: a `Content-Length` kept on a request sent without its
        // body makes the upstream read the next request on the connection as that body.
        // The forwarded headers are the edge's own by now: a client cannot strip them by
        // listing them in `Connection`.
        if is_hop_by_hop(k)
            || k == header::HOST
            || k == header::CONTENT_LENGTH
            || k == header::EXPECT
            || (connection_listed.iter().any(|c| c == k.as_str())
                && !FORWARDED.contains(&k.as_str()))
        {
            continue;
        }
        if for_fill
            && matches!(
                k.as_str(),
                "if-none-match"
                    | "if-modified-since"
                    | "if-match"
                    | "if-unmodified-since"
                    | "if-range"
                    | "range"
            )
        {
            continue;
        }
        h.append(k.clone(), v.clone());
    }
    h.insert(
        header::HOST,
        HeaderValue::from_str(up.authority.as_str()).unwrap(),
    );
    h.append(header::VIA, HeaderValue::from_static("1.1 tessera"));
    h
}

/// Response headers as stored and sent: end-to-end only.
fn response_headers(from: &HeaderMap) -> HeaderMap {
    end_to_end(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    pub(crate) async fn context() -> (Context, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cache = crate::store::tiers::Cache::open(
            dir.path(),
            1 << 20,
            0,
            crate::basics::config::Policy::default(),
            &Default::default(),
        )
        .await
        .unwrap();
        let ctx = Context {
            store: crate::store::Store {
                cache,
                bans: crate::store::bans::Bans::load(dir.path()).unwrap(),
            },
            metrics: Default::default(),
            advisor: Arc::new(crate::store::advice::BuiltIn),
            timeouts: Default::default(),
            heuristic_cap_secs: 3600,
            max_object_bytes: 1 << 20,
            store_set_cookie: false,
            fill_window_bytes: 8 << 20,
            slices: true,
            background_fills: crate::coalesce::fill::Background::new(
                16,
                prometheus::IntGauge::new("going", "going").unwrap(),
                prometheus::IntCounter::new("stopped", "stopped").unwrap(),
            ),
        };
        (ctx, dir)
    }

    #[tokio::test]
    async fn forwarded_headers_drop_hop_by_hop_and_connection_listed() {
        let (ctx, _dir) = context().await;
        let up = Upstream::new("http://127.0.0.1:9", None, Duration::from_secs(1), ctx).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("if-none-match", HeaderValue::from_static("\"a\""));
        h.insert("host", HeaderValue::from_static("example.org"));
        h.insert("content-length", HeaderValue::from_static("27"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        let f = forward_headers(&up, &h, true);
        // Framing comes from the body sent, not the client's.
        assert!(!f.contains_key("content-length") && !f.contains_key("expect"));
        assert!(!f.contains_key("x-secret"));
        assert!(!f.contains_key("te"));
        assert!(!f.contains_key("if-none-match"));
        assert_eq!(f["host"], "127.0.0.1:9");
        assert_eq!(f["accept"], "*/*");
        assert!(forward_headers(&up, &h, false).contains_key("if-none-match"));
    }

    #[test]
    fn forwarded_headers_say_what_the_edge_knows() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("site.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        let mut untrusted = h.clone();
        let host = Some("site.example".to_string());
        set_forwarded(
            &mut untrusted,
            "10.0.0.1".parse().unwrap(),
            true,
            host.clone(),
            false,
        );
        assert_eq!(untrusted["x-forwarded-for"], "10.0.0.1");
        assert_eq!(untrusted["x-forwarded-host"], "site.example");
        assert_eq!(untrusted["x-forwarded-proto"], "https");
        assert_eq!(
            untrusted["forwarded"],
            "for=10.0.0.1;proto=https;host=\"site.example\""
        );
        assert!(!untrusted.contains_key("x-original-url"));
        let mut trusted = h;
        set_forwarded(&mut trusted, "::1".parse().unwrap(), false, host, true);
        assert_eq!(trusted["x-forwarded-for"], "6.6.6.6, ::1");
        assert_eq!(trusted["x-forwarded-host"], "evil.example");
        assert!(
            trusted["forwarded"]
                .to_str()
                .unwrap()
                .starts_with("for=\"[::1]\";proto=http")
        );
    }
}
