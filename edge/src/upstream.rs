//! Upstream mode: the edge in front of any HTTP server, as an RFC 9111 shared cache of whole
//! responses.
//!
//! A `GET` or `HEAD` is looked up by host and path-with-query (then by `Vary` variant). A
//! miss joins or starts a [`crate::fill`]: one `GET` to the upstream per key however many
//! clients miss at once; each streams the body as it arrives, and the cache stores it
//! (inline, or in segments for large bodies) once it is complete and matched its framing.
//! Unsafe methods pass through and invalidate what the cache holds for their target.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tessera_origin_proto::range::{RangeAsk, if_range_holds, parse_range, preconditions};

use crate::cache::{BodyRef, INLINE_MAX, Key, Meta, SEGMENT, Tier, Value, segment_key};
use crate::config::EdgeConfig;
use crate::fill::{Fill, FillError, FillHead, Role};
use crate::freshness::{
    Freshness, Use, date_header, is_hop_by_hop, not_storable, response_directives, update_from_304,
};
use crate::proxy::{
    BACKGROUND_REVALIDATE, BoxError, Edge, EdgeBody, Outcome, Refusal, empty_body, now_secs,
    precondition_answer, request_directives, stream_body, unsatisfiable, variant_key, vary_names,
};
use crate::purge::Verdict;

/// The HTTP server this edge fronts, and a pooled client for it.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in [`EdgeConfig::upstreams`]; `None` for the default backend.
    name: Option<String>,
    scheme: Scheme,
    authority: Authority,
    client: Client<HttpConnector, EdgeBody>,
}

impl Upstream {
    pub fn new(url: &str, name: Option<&str>, cfg: &EdgeConfig) -> anyhow::Result<Upstream> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("upstream URL {url:?}: {e}"))?;
        anyhow::ensure!(
            uri.scheme() == Some(&Scheme::HTTP) && uri.authority().is_some(),
            "upstream URL {url:?}: expected http://HOST:PORT"
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(cfg.connect_timeout_secs)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Upstream {
            name: name.map(str::to_string),
            scheme: Scheme::HTTP,
            authority: uri.authority().unwrap().clone(),
            client,
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
}

/// The cache key of a request target (a named upstream's responses are kept apart from the
/// default backend's).
fn url_key(up: &Upstream, host: &str, path_and_query: &str) -> Key {
    match &up.name {
        None => Key::derive("url", &[host.as_bytes(), path_and_query.as_bytes()]),
        Some(name) => Key::derive(
            "url-named",
            &[name.as_bytes(), host.as_bytes(), path_and_query.as_bytes()],
        ),
    }
}

fn host_of(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Headers sent upstream: the client's end-to-end headers, with `Host` set to the
/// upstream's and a `Via` entry.
fn forward_headers(up: &Upstream, from: &HeaderMap, for_fill: bool) -> HeaderMap {
    let connection_listed: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut h = HeaderMap::new();
    for (k, v) in from {
        if is_hop_by_hop(k)
            || k == header::HOST
            || connection_listed.iter().any(|c| c == k.as_str())
        {
            continue;
        }
        // A fill fetches the whole current representation for everyone: the client's own
        // validators and ranges are answered from the stored copy.
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
    let mut h = HeaderMap::new();
    for (k, v) in from {
        if !is_hop_by_hop(k) {
            h.append(k.clone(), v.clone());
        }
    }
    h
}

pub(crate) async fn handle(
    edge: &Arc<Edge>,
    req: Request<EdgeBody>,
    up: Arc<Upstream>,
) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
    let (parts, body) = req.into_parts();
    let host = host_of(&parts);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let key = url_key(&up, &host, &pq);
    let method = parts.method.clone();
    if method != Method::GET && method != Method::HEAD {
        let r = pass(edge, &up, &parts, &pq, Some(body)).await?;
        // RFC 9111 §4.4: a successful unsafe request invalidates its target and the URIs in
        // its Location and Content-Location (same host only).
        if r.status().is_success() || r.status().is_redirection() {
            edge.fills.invalidate(&key);
            edge.cache.remove(&key);
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(target) = r.headers().get(&name).and_then(|v| v.to_str().ok())
                    && let Ok(uri) = target.parse::<Uri>()
                    && uri
                        .authority()
                        .is_none_or(|a| a.as_str().eq_ignore_ascii_case(&host))
                    && let Some(p) = uri.path_and_query()
                {
                    let k = url_key(&up, &host, p.as_str());
                    edge.fills.invalidate(&k);
                    edge.cache.remove(&k);
                }
            }
        }
        return Ok((r, Outcome::pass("method")));
    }
    let req_cc = request_directives(&parts.headers);
    if req_cc.no_store {
        let r = pass(edge, &up, &parts, &pq, Some(body)).await?;
        return Ok((r, Outcome::pass("request")));
    }
    let now = now_secs();
    let mut stale = None;
    if !parts.headers.contains_key(header::AUTHORIZATION)
        && let Some((meta, tier, vkey, verdict)) = edge.lookup(&key, &parts.headers).await
    {
        let usage = if verdict == Verdict::Stale {
            Use::Revalidate
        } else {
            meta.freshness.judge(now, &req_cc)
        };
        let ttl = meta.freshness.lifetime as i64 - meta.freshness.age(now) as i64;
        match usage {
            Use::Fresh => {
                let r = edge
                    .serve(&parts.headers, &method, meta, vkey, Some(tier), now)
                    .await;
                return Ok((r, Outcome::hit(tier, ttl)));
            }
            Use::StaleAllowed => {
                let r = edge
                    .serve(&parts.headers, &method, meta, vkey, Some(tier), now)
                    .await;
                return Ok((r, Outcome::stale(tier, ttl, "max-stale")));
            }
            Use::StaleWhileRevalidate => {
                if let Role::Leader(fill) = edge.fills.join(key) {
                    let guard = LeaderGuard::new(edge.clone(), key, fill.clone());
                    let (e, p, pq2, up2) = (edge.clone(), parts.clone(), pq.clone(), up.clone());
                    let stale = Some((meta.clone(), vkey));
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            BACKGROUND_REVALIDATE,
                            lead(&e, &up2, &p, &pq2, stale, guard),
                        )
                        .await;
                    });
                }
                let r = edge
                    .serve(&parts.headers, &method, meta, vkey, Some(tier), now)
                    .await;
                return Ok((r, Outcome::stale(tier, ttl, "stale-while-revalidate")));
            }
            Use::Revalidate => stale = Some((meta, tier, vkey)),
        }
    }
    if stale.is_none() && req_cc.only_if_cached {
        return Err(Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            "only-if-cached, and this edge does not hold it",
        ));
    }
    fetch(edge, up, parts, pq, key, stale, now, &req_cc).await
}

/// A miss or a revalidation: join or lead the fill for `key` and answer from it.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    edge: &Arc<Edge>,
    up: Arc<Upstream>,
    parts: http::request::Parts,
    pq: String,
    key: Key,
    stale: Option<(Arc<Meta>, Tier, Key)>,
    now: u64,
    req_cc: &crate::freshness::CacheControl,
) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
    let method = parts.method.clone();
    let (fill, leader) = match edge.fills.join(key) {
        Role::Leader(fill) => {
            let guard = LeaderGuard::new(edge.clone(), key, fill.clone());
            let stale_for_fill = stale.as_ref().map(|(m, _, k)| (m.clone(), *k));
            // The fill runs on its own task: a client that goes away does not cancel it.
            let (e, p, pq2, up2) = (edge.clone(), parts.clone(), pq.clone(), up.clone());
            tokio::spawn(async move { lead(&e, &up2, &p, &pq2, stale_for_fill, guard).await });
            (fill, true)
        }
        Role::Joiner(fill) => {
            edge.metrics.coalesced.inc();
            (fill, false)
        }
    };
    let head = match fill.head().await {
        Ok(h) => h,
        Err(e) => {
            if let Some(r) = serve_stale(edge, &parts, &stale, now, req_cc).await {
                return Ok(r);
            }
            let status = match e {
                FillError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            return Err(Refusal::new(status, e.to_string()));
        }
    };
    if let Some(m) = &head.revalidated {
        let r = edge
            .serve(&parts.headers, &method, m.clone(), head.key, None, now)
            .await;
        return Ok((r, Outcome::revalidated(304)));
    }
    if head.status.is_server_error()
        && let Some(r) = serve_stale(edge, &parts, &stale, now, req_cc).await
    {
        return Ok(r);
    }
    let same_variant = head
        .vary
        .iter()
        .all(|(n, v)| parts.headers.get(n.as_str()) == v.as_ref());
    if !leader && (!head.storable || !same_variant) {
        // Not shareable with this request: fetch for it alone.
        let r = pass(edge, &up, &parts, &pq, None).await?;
        return Ok((r, Outcome::pass("uncacheable")));
    }
    let mut outcome = match &stale {
        Some(_) => Outcome::refetched(head.status.as_u16(), head.storable),
        None => Outcome::miss(head.storable),
    };
    if !leader {
        // RFC 9211: this request was collapsed into another one's forward request.
        outcome.cache_status.push_str("; collapsed");
    }
    Ok((respond_from_fill(edge, &parts, &fill, &head), outcome))
}

/// The stored response, when the origin failed and `stale-if-error` (or the request's
/// `max-stale`) allows serving it.
async fn serve_stale(
    edge: &Arc<Edge>,
    parts: &http::request::Parts,
    stale: &Option<(Arc<Meta>, Tier, Key)>,
    now: u64,
    req_cc: &crate::freshness::CacheControl,
) -> Option<(Response<EdgeBody>, Outcome)> {
    let (m, tier, k) = stale.as_ref()?;
    if !m.freshness.usable_on_error(now, req_cc) {
        return None;
    }
    let ttl = m.freshness.lifetime as i64 - m.freshness.age(now) as i64;
    let r = edge
        .serve(
            &parts.headers,
            &parts.method,
            m.clone(),
            *k,
            Some(*tier),
            now,
        )
        .await;
    Some((r, Outcome::stale(*tier, ttl, "stale-if-error")))
}

/// The response to one client from a fill in progress.
fn respond_from_fill(
    edge: &Arc<Edge>,
    parts: &http::request::Parts,
    fill: &Arc<Fill>,
    head: &FillHead,
) -> Response<EdgeBody> {
    let mut headers = head.headers.clone();
    let size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
    let modified = date_header(&headers, header::LAST_MODIFIED);
    if head.status == StatusCode::OK
        && let Some(decided) = preconditions(&parts.headers, etag, modified)
    {
        return precondition_answer(decided, &headers);
    }
    let (mut status, mut start, mut end) = (head.status, 0u64, u64::MAX);
    if head.status == StatusCode::OK
        && let Some(size) = size
        && let Some(range) = parts
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
        && if_range_holds(&parts.headers, etag, modified)
    {
        match parse_range(range, size) {
            RangeAsk::Part { start: s, end: e } => {
                status = StatusCode::PARTIAL_CONTENT;
                (start, end) = (s, e + 1);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(e + 1 - s));
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {s}-{e}/{size}")).unwrap(),
                );
            }
            RangeAsk::Unsatisfiable => {
                return unsatisfiable(size);
            }
            RangeAsk::Whole | RangeAsk::Malformed => {}
        }
    }
    let body = if parts.method == Method::HEAD {
        empty_body()
    } else {
        let counter = edge.metrics.bytes_served.with_label_values(&["origin"]);
        let mut pos = 0u64;
        stream_body(fill.body().filter_map(move |r| {
            let out = match r {
                Err(e) => Some(Err(BoxError::from(e))),
                Ok(b) => {
                    let (s, e) = (pos, pos + b.len() as u64);
                    pos = e;
                    let (from, to) = (start.max(s), end.min(e));
                    (from < to).then(|| {
                        let part = b.slice((from - s) as usize..(to - s) as usize);
                        counter.inc_by(part.len() as u64);
                        Ok(part)
                    })
                }
            };
            std::future::ready(out)
        }))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Ends a fill even when its leader's future is dropped early, so joiners never wait for a
/// head that will not come.
struct LeaderGuard {
    edge: Arc<Edge>,
    key: Key,
    fill: Arc<Fill>,
    head_set: bool,
}

impl LeaderGuard {
    fn new(edge: Arc<Edge>, key: Key, fill: Arc<Fill>) -> Self {
        LeaderGuard {
            edge,
            key,
            fill,
            head_set: false,
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if !self.head_set {
            self.fill.set_head(Err(FillError::Unreachable(
                "the fetch was abandoned".into(),
            )));
        }
        self.fill
            .finish(Err(FillError::Body("the fetch was abandoned".into())));
        self.edge.fills.done(&self.key, &self.fill);
    }
}

/// The leader's work: one `GET` upstream (conditional when revalidating `stale`), the head
/// published to joiners, the body streamed into the fill and stored when complete.
async fn lead(
    edge: &Arc<Edge>,
    up: &Upstream,
    parts: &http::request::Parts,
    pq: &str,
    stale: Option<(Arc<Meta>, Key)>,
    mut guard: LeaderGuard,
) {
    let fill = guard.fill.clone();
    let mut headers = forward_headers(up, &parts.headers, true);
    if let Some((m, _)) = &stale {
        if let Some(e) = m.headers.get(header::ETAG) {
            headers.insert(header::IF_NONE_MATCH, e.clone());
        }
        if let Some(lm) = m.headers.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let mut req = Request::new(empty_body());
    *req.uri_mut() = up.uri(pq);
    *req.headers_mut() = headers;
    let request_time = now_secs();
    let kind = if stale.is_some() {
        "revalidate"
    } else {
        "object"
    };
    let resp = match edge.call_origin(kind, up.client.request(req)).await {
        None => {
            fill.set_head(Err(FillError::Timeout));
            guard.head_set = true;
            return;
        }
        Some(Err(e)) => {
            edge.origin_error("connect");
            tracing::warn!(upstream = %up.authority, error = %e, "upstream request failed");
            fill.set_head(Err(FillError::Unreachable(e.to_string())));
            guard.head_set = true;
            return;
        }
        Some(Ok(r)) => r,
    };
    let response_time = now_secs();
    let (rparts, mut body) = resp.into_parts();
    if rparts.status.is_server_error() {
        edge.origin_error("status");
    }
    let cap = edge.cfg.heuristic_cap_secs;
    if let (Some((old, vkey)), StatusCode::NOT_MODIFIED) = (&stale, rparts.status) {
        let mut m = (**old).clone();
        update_from_304(&mut m.headers, &rparts.headers);
        m.headers.remove(header::AGE);
        let mut fresh = m.headers.clone();
        if let Some(a) = rparts.headers.get(header::AGE) {
            fresh.insert(header::AGE, a.clone());
        }
        m.freshness = Freshness::of(StatusCode::OK, &fresh, request_time, response_time, cap);
        m.stored_at_ms = edge.bans.stamp_ms();
        let m = Arc::new(m);
        edge.cache.insert(*vkey, Value::Meta(m.clone()));
        fill.set_head(Ok(FillHead {
            status: StatusCode::NOT_MODIFIED,
            headers: HeaderMap::new(),
            storable: false,
            vary: Vec::new(),
            revalidated: Some(m),
            key: *vkey,
        }));
        guard.head_set = true;
        fill.finish(Ok(()));
        return;
    }
    let content_length = rparts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut storable = not_storable(&Method::GET, &parts.headers, rparts.status, &rparts.headers)
        .is_none()
        && !rparts.headers.contains_key(header::SET_COOKIE)
        && content_length.is_none_or(|n| n <= edge.cfg.max_object_bytes);
    // Eviction advice, when a plugin gives it: here when the size is known, else once the
    // body is complete.
    let advice = |size: u64| {
        let ttl = Freshness::of(
            rparts.status,
            &rparts.headers,
            request_time,
            response_time,
            cap,
        );
        crate::plugins::advise(
            edge,
            crate::plugins::Candidate {
                key: &guard.key,
                path: pq,
                size,
                content_type: rparts.headers.get(header::CONTENT_TYPE),
                status: rparts.status.as_u16(),
                ttl_secs: ttl.lifetime,
                hits: 0,
                last_hit_secs: None,
            },
        )
    };
    let mut placement = None;
    if storable && let Some(n) = content_length {
        placement = advice(n);
        if placement.is_some_and(|p| !p.admit) {
            storable = false;
        }
    }
    let mut headers = response_headers(&rparts.headers);
    let names = vary_names(&headers);
    let vary: Vec<(String, Option<HeaderValue>)> = names
        .iter()
        .map(|n| (n.clone(), parts.headers.get(n.as_str()).cloned()))
        .collect();
    fill.set_head(Ok(FillHead {
        status: rparts.status,
        headers: headers.clone(),
        storable,
        vary,
        revalidated: None,
        key: guard.key,
    }));
    guard.head_set = true;

    // The body: to the fill as it arrives; segments to the cache as they fill up.
    let seg_id: [u8; 16] = rand::random();
    let mut seg = BytesMut::new();
    let mut segments = 0u32;
    let mut inline = BytesMut::new();
    let mut total = 0u64;
    let mut held = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                edge.origin_error("body");
                tracing::warn!(upstream = %up.authority, error = %e, "upstream body failed; nothing stored");
                fill.finish(Err(FillError::Body(e.to_string())));
                return;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                total += data.len() as u64;
                if storable {
                    if total > edge.cfg.max_object_bytes {
                        storable = false;
                        inline.clear();
                        seg.clear();
                    } else if segments == 0 && seg.is_empty() && total as usize <= INLINE_MAX {
                        inline.extend_from_slice(&data);
                    } else {
                        // Past the inline size: what was inline starts the first segment.
                        if !inline.is_empty() {
                            seg.extend_from_slice(&inline);
                            inline.clear();
                        }
                        seg.extend_from_slice(&data);
                        while seg.len() >= SEGMENT {
                            let s = seg.split_to(SEGMENT).freeze();
                            edge.cache.insert_placed(
                                segment_key(&seg_id, segments),
                                Value::Bytes(s),
                                placement,
                            );
                            segments += 1;
                        }
                    }
                }
                // The last byte is held back until the end: no client has the whole body
                // before the cache has the response (so a request right after it hits),
                // and everything before it streams as it arrives.
                if data.is_empty() {
                    continue;
                }
                if let Some(h) = held.take() {
                    fill.push(h);
                }
                if data.len() > 1 {
                    fill.push(data.slice(..data.len() - 1));
                }
                held = Some(data.slice(data.len() - 1..));
            }
        }
    }
    if content_length.is_some_and(|n| n != total) {
        // hyper enforces Content-Length, so this is a second line of defence.
        fill.finish(Err(FillError::Body(format!(
            "upstream sent {total} bytes for Content-Length {}",
            content_length.unwrap()
        ))));
        return;
    }
    if storable && content_length.is_none() {
        placement = advice(total);
        if placement.is_some_and(|p| !p.admit) {
            // Segments already stored are never referenced and age out.
            storable = false;
        }
    }
    if storable {
        let cc = response_directives(&rparts.headers);
        for f in &cc.no_cache_fields {
            headers.remove(f.as_str());
        }
        headers.remove(header::AGE);
        headers.remove(header::SET_COOKIE);
        let body = if segments == 0 && seg.is_empty() {
            BodyRef::Inline(inline.freeze())
        } else {
            if !seg.is_empty() {
                edge.cache.insert_placed(
                    segment_key(&seg_id, segments),
                    Value::Bytes(seg.freeze()),
                    placement,
                );
                segments += 1;
            }
            BodyRef::Segments {
                id: seg_id,
                count: segments,
            }
        };
        let surrogate_keys = rparts
            .headers
            .get_all("surrogate-key")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();
        let mut freshness = Freshness::of(
            rparts.status,
            &rparts.headers,
            request_time,
            response_time,
            cap,
        );
        if let Some(ttl) = placement.and_then(|p| p.ttl_secs) {
            freshness.lifetime = ttl;
        }
        let meta = Meta {
            status: rparts.status.as_u16(),
            headers,
            freshness,
            stored_at_ms: edge.bans.stamp_ms(),
            path: parts.uri.path().to_string(),
            surrogate_keys,
            size: total,
            body,
        };
        let useless = meta.freshness.keep_for() == 0
            && !meta.headers.contains_key(header::ETAG)
            && !meta.headers.contains_key(header::LAST_MODIFIED);
        if !useless {
            if names.is_empty() {
                edge.cache
                    .insert_placed(guard.key, Value::Meta(Arc::new(meta)), placement);
            } else {
                let vkey = variant_key(&guard.key, &names, &parts.headers);
                edge.cache
                    .insert_placed(vkey, Value::Meta(Arc::new(meta)), placement);
                edge.cache.insert(guard.key, Value::Vary(Arc::new(names)));
            }
            // An unsafe request that invalidated this key while the body was arriving wins.
            if fill.is_invalidated() {
                edge.cache.remove(&guard.key);
            }
        }
    }
    if let Some(last) = held {
        fill.push(last);
    }
    fill.finish(Ok(()));
}

/// Forwards a request as it is (its body too) and streams the answer back, storing nothing.
async fn pass(
    edge: &Arc<Edge>,
    up: &Upstream,
    parts: &http::request::Parts,
    pq: &str,
    body: Option<EdgeBody>,
) -> Result<Response<EdgeBody>, Refusal> {
    let body: EdgeBody = match body {
        Some(b) => b,
        None => empty_body(),
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = up.uri(pq);
    *req.headers_mut() = forward_headers(up, &parts.headers, false);
    let resp = match edge.call_origin("pass", up.client.request(req)).await {
        None => {
            return Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
            ));
        }
        Some(Err(e)) => {
            edge.origin_error("connect");
            return Err(Refusal::new(
                StatusCode::BAD_GATEWAY,
                format!("upstream request failed: {e}"),
            ));
        }
        Some(Ok(r)) => r,
    };
    let (rparts, body) = resp.into_parts();
    let counter = edge.metrics.bytes_served.with_label_values(&["origin"]);
    let body = body
        .map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                counter.inc_by(d.len() as u64);
            }
            f
        })
        .map_err(BoxError::from)
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = rparts.status;
    *r.headers_mut() = response_headers(&rparts.headers);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_drop_hop_by_hop_and_connection_listed() {
        let up = Upstream::new("http://127.0.0.1:9", None, &EdgeConfig::default()).unwrap();
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
        let f = forward_headers(&up, &h, true);
        assert!(!f.contains_key("x-secret"));
        assert!(!f.contains_key("te"));
        assert!(!f.contains_key("if-none-match"));
        assert_eq!(f["host"], "127.0.0.1:9");
        assert_eq!(f["accept"], "*/*");
        assert!(forward_headers(&up, &h, false).contains_key("if-none-match"));
    }
}
