//! Origin mode: the edge in front of Tessera origin nodes, content addressed.
//!
//! `GET /{path}` serves the file published at `{path}` (`/` and `…/` serve `index.html`).
//! The edge keeps the file's manifest (under a key derived from the path, fresh as the
//! origin's `Cache-Control` says, revalidated by `ETag`) and its chunks (under their blake3,
//! immutable). A miss fetches the manifest, then only the chunks the response needs and the
//! cache lacks; every chunk from the origin or the SSD tier is checked against its blake3
//! before it is stored or sent.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use tessera_origin_proto::{
    ChunkHash, ClientError, Manifest, ManifestChunk, ManifestFetch, validate_path,
};

use crate::cache::{BodyRef, Key, Meta, Value};
use crate::freshness::{Freshness, Use, update_from_304};
use crate::proxy::{
    BACKGROUND_REVALIDATE, BoxError, Edge, EdgeBody, Outcome, Refusal, now_secs, request_directives,
};
use crate::purge::Verdict;

/// The cache key of the manifest of the file at `path`.
pub fn manifest_key(path: &str) -> Key {
    Key::derive("manifest", &[path.as_bytes()])
}

/// The published path a request path names.
pub fn file_path(request_path: &str) -> String {
    let p = request_path.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        format!("{p}index.html")
    } else {
        p.to_string()
    }
}

pub(crate) async fn handle(
    edge: &Arc<Edge>,
    req: Request<EdgeBody>,
    path: String,
) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        let mut r = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not served by an edge; publish to the origin"),
        )
        .response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok((r, Outcome::pass("method")));
    }
    let file = file_path(&path);
    validate_path(&file)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad path {path:?}: {e}")))?;
    let headers = req.headers();
    let key = manifest_key(&file);
    let req_cc = request_directives(headers);
    let now = now_secs();
    if let Some((meta, tier, key, verdict)) = edge.lookup(&key, headers).await {
        let usage = if verdict == Verdict::Stale {
            Use::Revalidate
        } else {
            meta.freshness.judge(now, &req_cc)
        };
        let ttl = meta.freshness.lifetime as i64 - meta.freshness.age(now) as i64;
        match usage {
            Use::Fresh => {
                let meta = assemble(edge, meta, key, headers).await;
                let r = edge
                    .serve(headers, &method, meta, key, Some(tier), now)
                    .await;
                return Ok((r, Outcome::hit(tier, ttl)));
            }
            Use::StaleAllowed => {
                let r = edge
                    .serve(headers, &method, meta, key, Some(tier), now)
                    .await;
                return Ok((r, Outcome::stale(tier, ttl, "max-stale")));
            }
            Use::StaleWhileRevalidate => {
                let e = edge.clone();
                let (f, m) = (file.clone(), meta.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(BACKGROUND_REVALIDATE, manifest(&e, &f, Some(m)))
                        .await;
                });
                let r = edge
                    .serve(headers, &method, meta, key, Some(tier), now)
                    .await;
                return Ok((r, Outcome::stale(tier, ttl, "stale-while-revalidate")));
            }
            Use::Revalidate => {
                return match manifest(edge, &file, Some(meta.clone())).await {
                    Ok((Some(m), status)) => {
                        let r = edge.serve(headers, &method, m, key, None, now).await;
                        Ok((r, Outcome::revalidated(status)))
                    }
                    Ok((None, _)) => Err(not_published(&file)),
                    Err(e) if meta.freshness.usable_on_error(now, &req_cc) => {
                        tracing::warn!(path = %file, error = %e.message, "origin failed; serving stale");
                        let r = edge
                            .serve(headers, &method, meta, key, Some(tier), now)
                            .await;
                        Ok((r, Outcome::stale(tier, ttl, "stale-if-error")))
                    }
                    Err(e) => Err(Refusal::new(e.status, e.message.clone())),
                };
            }
        }
    }
    if req_cc.only_if_cached {
        return Err(Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            "only-if-cached, and this edge does not hold it",
        ));
    }
    match manifest(edge, &file, None).await {
        Ok((Some(m), _)) => {
            let r = edge.serve(headers, &method, m, key, None, now).await;
            Ok((r, Outcome::miss(true)))
        }
        Ok((None, _)) => Err(not_published(&file)),
        Err(e) => Err(Refusal::new(e.status, e.message.clone())),
    }
}

/// A small file hit again in whole is kept assembled: its stored response gets the bytes
/// inline, so later hits cost one lookup instead of a manifest and chunk lookups
/// (`tessera-bench edge-hits`, figures in `bench/HISTORY.md`). The chunks stay cached by address for
/// ranges and for other files sharing them. Anything that fails leaves `meta` as it was.
async fn assemble(edge: &Arc<Edge>, meta: Arc<Meta>, key: Key, req: &HeaderMap) -> Arc<Meta> {
    let BodyRef::Chunks(chunks) = &meta.body else {
        return meta;
    };
    // Only once every chunk is cached: assembling must not be a second origin fetch.
    if meta.size as usize > crate::cache::INLINE_MAX
        || req.contains_key(header::RANGE)
        || !chunks.iter().all(|c| edge.cache.contains(&Key(c.hash.0)))
    {
        return meta;
    }
    let mut all = Vec::with_capacity(meta.size as usize);
    let mut parts = edge.clone().body_stream(meta.clone(), 0, meta.size);
    while let Some(p) = parts.next().await {
        match p {
            Ok(b) => all.extend_from_slice(&b),
            Err(_) => return meta,
        }
    }
    let mut m = (*meta).clone();
    m.body = BodyRef::Inline(Bytes::from(all));
    let m = Arc::new(m);
    edge.cache.insert(key, Value::Meta(m.clone()));
    m
}

fn not_published(file: &str) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        format!("nothing is published at {file:?}"),
    )
}

/// Fetches (or, with `stale`, revalidates) the manifest of `file`, stores it, and returns
/// it with the origin's status (`200`, or `304` when `stale` is still current). `None` when
/// nothing is published there. Concurrent calls for one file share one fetch.
async fn manifest(
    edge: &Arc<Edge>,
    file: &str,
    stale: Option<Arc<Meta>>,
) -> Result<(Option<Arc<Meta>>, u16), Arc<Refusal>> {
    let key = manifest_key(file);
    let mut recheck = stale.is_none();
    loop {
        let flight = {
            let mut flights = edge.flights.lock().unwrap();
            match flights.get(&key) {
                Some(f) => {
                    edge.metrics.coalesced.inc();
                    Some(f.clone())
                }
                // A flight that ended between this request's cache miss and now has stored
                // its manifest: take that instead of fetching again.
                None if recheck && edge.cache.contains(&key) => None,
                None => {
                    let e = edge.clone();
                    let f = file.to_string();
                    let stale = stale.clone();
                    let fut = async move {
                        let r = fetch_manifest(&e, &f, stale).await.map_err(Arc::new);
                        e.flights.lock().unwrap().remove(&manifest_key(&f));
                        r
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, fut.clone());
                    Some(fut)
                }
            }
        };
        match flight {
            Some(f) => return f.await,
            None => {
                recheck = false;
                if let Some((Value::Meta(m), _)) = edge.cache.get(&key).await {
                    edge.metrics.coalesced.inc();
                    return Ok((Some(m), 200));
                }
            }
        }
    }
}

async fn fetch_manifest(
    edge: &Arc<Edge>,
    file: &str,
    stale: Option<Arc<Meta>>,
) -> Result<(Option<Arc<Meta>>, u16), Refusal> {
    let etag = stale
        .as_ref()
        .and_then(|m| m.headers.get(header::ETAG))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut last = Refusal::new(StatusCode::BAD_GATEWAY, "no origin configured");
    let position = edge.recent.position();
    for i in edge.origins_for_file(file) {
        let origin = &edge.origins[i];
        let request_time = now_secs();
        let kind = if stale.is_some() {
            "revalidate"
        } else {
            "manifest"
        };
        let r = edge
            .call_origin(kind, origin.manifest_revalidate(file, etag.as_deref()))
            .await;
        let response_time = now_secs();
        let key = manifest_key(file);
        match r {
            None => {
                edge.origin_failed(i);
                last = Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("origin {} did not answer in time", origin.base()),
                );
            }
            Some(Ok(ManifestFetch::Found { manifest, headers })) => {
                let mut meta = meta_of(edge, &manifest, &headers, request_time, response_time);
                // Eviction advice governs the file's stored response (its manifest, and the
                // assembled copy of a small file); chunks are shared by address between
                // files and stay under the built-in policy.
                let placement = crate::plugins::advise(
                    edge,
                    crate::plugins::Candidate {
                        key: &key,
                        path: &meta.path,
                        size: meta.size,
                        content_type: meta.headers.get(header::CONTENT_TYPE),
                        status: meta.status,
                        ttl_secs: meta.freshness.lifetime,
                        hits: 0,
                        last_hit_secs: None,
                    },
                );
                if let Some(ttl) = placement.and_then(|p| p.ttl_secs) {
                    meta.freshness.lifetime = ttl;
                }
                let meta = Arc::new(meta);
                if placement.is_some_and(|p| !p.admit) {
                    return Ok((Some(meta), 200));
                }
                // A change reported while this fetch was in flight may be newer than what
                // it returned: serve it, but do not keep it.
                // Checked again after storing: a change noted between the check and the
                // store would otherwise find nothing to remove and leave this copy behind.
                let raced = || edge.recent.superseded(file, position, &manifest.blake3);
                if !raced() {
                    edge.cache
                        .insert_placed(key, Value::Meta(meta.clone()), placement);
                    if raced() {
                        edge.cache.remove(&key);
                    }
                }
                return Ok((Some(meta), 200));
            }
            Some(Ok(ManifestFetch::NotModified { headers })) => {
                let Some(old) = &stale else {
                    last = Refusal::new(
                        StatusCode::BAD_GATEWAY,
                        "origin answered 304 to an unconditional request",
                    );
                    continue;
                };
                let mut m = (**old).clone();
                update_from_304(&mut m.headers, &headers);
                let mut fresh_headers = headers.clone();
                if !fresh_headers.contains_key(header::CACHE_CONTROL)
                    && let Some(cc) = m.headers.get(header::CACHE_CONTROL)
                {
                    fresh_headers.insert(header::CACHE_CONTROL, cc.clone());
                }
                m.freshness = Freshness::of(
                    StatusCode::OK,
                    &fresh_headers,
                    request_time,
                    response_time,
                    edge.cfg.heuristic_cap_secs,
                );
                m.stored_at_ms = edge.bans.stamp_ms();
                let m = Arc::new(m);
                edge.cache.insert(key, Value::Meta(m.clone()));
                return Ok((Some(m), 304));
            }
            Some(Ok(ManifestFetch::Missing)) => {
                edge.cache.remove(&key);
                return Ok((None, 404));
            }
            Some(Err(e)) => {
                let kind = error_kind(&e);
                edge.origin_error(kind);
                if kind == "connect" {
                    edge.origin_failed(i);
                }
                tracing::warn!(origin = origin.base(), path = file, error = %e, "manifest fetch failed");
                last = Refusal::new(StatusCode::BAD_GATEWAY, format!("origin error: {e}"));
                if !e.retryable() && !matches!(e, ClientError::Malformed { .. }) {
                    break;
                }
            }
        }
    }
    Err(last)
}

fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Transport { .. } | ClientError::BadUrl { .. } => "connect",
        ClientError::Status { .. } => "status",
        ClientError::Malformed { .. } => "malformed",
        ClientError::Corrupt { .. } => "corrupt",
    }
}

/// The stored response for a file: its representation headers for clients, freshness from
/// the origin's manifest response.
fn meta_of(
    edge: &Edge,
    m: &Manifest,
    origin_headers: &HeaderMap,
    request_time: u64,
    response_time: u64,
) -> Meta {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&m.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&m.blake3.etag()).unwrap(),
    );
    headers.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.modified),
        ))
        .unwrap(),
    );
    for name in [header::CACHE_CONTROL, header::EXPIRES] {
        if let Some(v) = origin_headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let surrogate_keys = origin_headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect();
    Meta {
        status: 200,
        headers,
        freshness: Freshness::of(
            StatusCode::OK,
            origin_headers,
            request_time,
            response_time,
            edge.cfg.heuristic_cap_secs,
        ),
        stored_at_ms: edge.bans.stamp_ms(),
        path: format!("/{}", m.path),
        surrogate_keys,
        size: m.size,
        body: BodyRef::Chunks(Arc::new(m.chunks.clone())),
    }
}

/// The bytes `start..end` of a file made of `chunks`: chunks are looked up in the cache and
/// fetched from the origin when missing, up to 8 at a time, in order.
pub(crate) fn chunk_stream(
    edge: Arc<Edge>,
    chunks: Arc<Vec<ManifestChunk>>,
    start: u64,
    end: u64,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>> {
    let first = chunks.partition_point(|c| c.offset + c.size as u64 <= start);
    let last = chunks.partition_point(|c| c.offset < end);
    let list = chunks.clone();
    Box::pin(
        futures_util::stream::iter(first..last)
            .map(move |i| {
                let edge = edge.clone();
                let c = list[i];
                async move { chunk(&edge, c.hash).await.map(|b| (c, b)) }
            })
            .buffered(8)
            .map(move |r| {
                r.map(|(c, b)| {
                    let s = start.saturating_sub(c.offset) as usize;
                    let e = ((end - c.offset) as usize).min(b.len());
                    b.slice(s.min(e)..e)
                })
            }),
    )
}

/// The verified bytes of one chunk: from memory, from the SSD tier (checked), or from an
/// origin (checked by the client) — concurrent misses of one chunk share one fetch.
pub(crate) async fn chunk(edge: &Arc<Edge>, hash: ChunkHash) -> Result<Bytes, BoxError> {
    let key = Key(hash.0);
    let e = edge.clone();
    let got = edge
        .cache
        .get_or_fetch(
            key,
            async move { fetch_chunk(&e, hash).await.map(Value::Bytes) },
        )
        .await;
    match got {
        Ok((Value::Bytes(b), foyer::Source::Disk)) => {
            if ChunkHash::of(&b) == hash {
                return Ok(b);
            }
            edge.metrics.corrupt_chunks.inc();
            tracing::error!(chunk = %hash, "SSD tier returned a corrupt chunk; refetching");
            edge.cache.remove(&key);
            let b = fetch_chunk(edge, hash).await.map_err(BoxError::from)?;
            edge.cache.insert(key, Value::Bytes(b.clone()));
            Ok(b)
        }
        Ok((Value::Bytes(b), _)) => Ok(b),
        Ok(_) => Err(format!("cache entry {hash} is not a chunk").into()),
        Err(e) => Err(format!("chunk {hash}: {e}").into()),
    }
}

async fn fetch_chunk(edge: &Arc<Edge>, hash: ChunkHash) -> anyhow::Result<Bytes> {
    let mut last = anyhow::anyhow!("no origin configured");
    for i in edge.origins_for_chunk(&hash) {
        let origin = &edge.origins[i];
        let r = edge.call_origin("chunk", origin.chunk(hash)).await;
        match r {
            Some(Ok(b)) => return Ok(b),
            Some(Err(e)) => {
                if matches!(e, ClientError::Corrupt { .. }) {
                    edge.metrics.corrupt_chunks.inc();
                }
                let kind = error_kind(&e);
                edge.origin_error(kind);
                if kind == "connect" {
                    edge.origin_failed(i);
                }
                tracing::warn!(origin = origin.base(), chunk = %hash, error = %e, "chunk fetch failed");
                last = e.into();
            }
            None => {
                edge.origin_failed(i);
                last = anyhow::anyhow!("origin {} did not answer in time", origin.base());
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_name_published_files() {
        assert_eq!(file_path("/"), "index.html");
        assert_eq!(file_path("/docs/"), "docs/index.html");
        assert_eq!(file_path("/assets/app.js"), "assets/app.js");
    }
}
