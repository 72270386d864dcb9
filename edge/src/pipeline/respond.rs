//! Answering from a response the edge holds or is filling: the representation plan
//! ([`crate::rules::representation`]) turned into a response, and the bytes moved — from the
//! store, the origin's chunks, a brotli copy or a fill in progress. `Age`, `Content-Length`
//! and the served-bytes metric are set here.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::backends::upstream::Upstream;
use crate::basics::body::{BoxError, ByteStream, EdgeBody, empty_body, full_body, stream_body};
use crate::basics::error::{FetchError, FetchFailure, Refusal};
use crate::coalesce::Join;
use crate::coalesce::fill::{FillHead, FillReader};
use crate::pipeline::Edge;
use crate::pipeline::outcome::refusal_of;
use crate::rules::partial::slice_bounds;
use crate::rules::representation::{Plan, mark_brotli, plan, wants_brotli, weaken_etag};
use crate::store::entry::{BodyRef, Key, Meta, Value, slice_key};
use crate::store::tiers::Tier;

impl Edge {
    /// Answers the request `parts` from the stored response `meta` (under `key`), found in
    /// `tier` (`None`: just fetched); a partial object's missing slices come from `slices`.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        meta: Arc<Meta>,
        key: Key,
        tier: Option<Tier>,
        now: u64,
        slices: Option<SliceSource>,
    ) -> Response<EdgeBody> {
        let req = &parts.headers;
        let partial = matches!(meta.body, BodyRef::Slices { .. });
        let status = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
        let mut headers = meta.headers.to_map();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(header::AGE, HeaderValue::from(meta.freshness.age(now)));
        let (code, start, end) = match plan(req, status, &mut headers, Some(meta.size)) {
            Plan::Decided(decided) => {
                // A 304 stands for the 200 this request would get: for a brotli one, its weak
                // ETag and its Vary (RFC 9110 §15.4.5).
                if decided == StatusCode::NOT_MODIFIED
                    && status == StatusCode::OK
                    && !partial
                    && wants_brotli(self.cfg.brotli, meta.size, &mut headers, req)
                {
                    weaken_etag(&mut headers);
                }
                return precondition_answer(decided, &headers);
            }
            Plan::Unsatisfiable { size } => return unsatisfiable(size),
            Plan::Send { status, start, end } => (status, start, end),
        };
        let head = parts.method == Method::HEAD;
        let counter = self
            .metrics
            .bytes_served
            .with_label_values(&[tier.map(Tier::as_str).unwrap_or("origin")]);
        // A partial object is sent as stored: compressing needs every byte at once.
        if code == StatusCode::OK
            && !partial
            && wants_brotli(self.cfg.brotli, meta.size, &mut headers, req)
            && let Some(compressed) = self.brotli_copy(&meta, key).await
        {
            mark_brotli(&mut headers, compressed.len());
            let body = if head {
                empty_body()
            } else {
                counter.inc_by(compressed.len() as u64);
                full_body(compressed)
            };
            return respond(code, headers, body);
        }
        let body = if head || end == start {
            empty_body()
        } else if let BodyRef::Inline(b) = &meta.body {
            counter.inc_by(end - start);
            full_body(b.slice(start as usize..end as usize))
        } else {
            let mut stream = match slices {
                Some(src) if partial => self.slices_stream(src, parts, &meta, key, start, end),
                _ => self.body_stream(&meta, key, start, end),
            };
            if matches!(meta.body, BodyRef::Chunks(_) | BodyRef::Slices { .. }) {
                // The first bytes before the head: when the origin cannot give them (or
                // gives corrupt bytes), the client gets a clear 502 instead of a cut-off 200.
                match stream.next().await {
                    Some(Ok(first)) => {
                        stream =
                            Box::pin(futures_util::stream::once(async { Ok(first) }).chain(stream));
                    }
                    Some(Err(e)) => return refusal_of(&FetchError::of_stream(e)).response(),
                    None => {}
                }
            }
            stream_body(stream.inspect(move |r| {
                if let Ok(b) = r {
                    counter.inc_by(b.len() as u64);
                }
            }))
        };
        respond(code, headers, body)
    }

    /// The bytes `start..end` of a stored body, as they are read or fetched.
    pub(crate) fn body_stream(&self, meta: &Meta, key: Key, start: u64, end: u64) -> ByteStream {
        if let Some(s) = self.store.body_stream(meta, start, end) {
            return s;
        }
        match (&meta.body, &self.origin) {
            (BodyRef::Chunks(chunks), Some(origin)) => {
                origin.file_stream(chunks.clone(), key, meta.size, [start, end], meta.placement)
            }
            _ => Box::pin(futures_util::stream::once(async {
                Err(BoxError::from(
                    "a stored body made of chunks, and no origin",
                ))
            })),
        }
    }

    /// The bytes `start..end` of the partial object `meta` (under `key`): each slice read
    /// from the store, or fetched from `src` when the store lacks it (and stored). One slice
    /// is fetched ahead of the one being sent, so a response holds two slices at most.
    fn slices_stream(
        &self,
        src: SliceSource,
        parts: &http::request::Parts,
        meta: &Arc<Meta>,
        key: Key,
        start: u64,
        end: u64,
    ) -> ByteStream {
        let BodyRef::Slices { id, slice } = meta.body else {
            return Box::pin(futures_util::stream::once(async {
                Err(BoxError::from("not a partial object"))
            }));
        };
        let (first, last) = (start / slice, (end - 1) / slice);
        let cache = self.store.cache.clone();
        let (meta, parts, src) = (meta.clone(), Arc::new(parts.clone()), Arc::new(src));
        Box::pin(
            futures_util::stream::iter(first..=last)
                .map(move |i| {
                    let (cache, meta, parts, src) =
                        (cache.clone(), meta.clone(), parts.clone(), src.clone());
                    async move {
                        let ready = src.fetched.lock().unwrap().take_if(|(n, _)| *n == i);
                        if let Some((_, b)) = ready {
                            return Ok((i, b));
                        }
                        let (s, e) = slice_bounds(i, slice, meta.size);
                        if let Some((Value::Bytes(b), _)) =
                            cache.get_as(&slice_key(&id, i), meta.placement).await
                            && b.len() as u64 == e - s
                        {
                            return Ok((i, b));
                        }
                        src.up
                            .slice(&parts, &src.pq, key, &meta, i)
                            .await
                            .map(|b| (i, b))
                            .map_err(BoxError::from)
                    }
                })
                .buffered(2)
                .map(move |r| {
                    r.map(|(i, b)| {
                        let off = i * slice;
                        let s = start.saturating_sub(off).min(b.len() as u64) as usize;
                        let e = (end - off).min(b.len() as u64) as usize;
                        b.slice(s..e)
                    })
                }),
        )
    }

    /// The brotli-compressed copy of a stored body; `None` when it does not get smaller or
    /// cannot be read. Copies live in the memory tier (counted and evicted with everything
    /// else), one per content: in origin mode the `ETag` is the file's blake3; in upstream
    /// mode a stored version is hashed once (blake3, its digest kept under the version) so
    /// URLs with the same bytes share one copy. Requests for a copy being made wait for it
    /// rather than compress it again.
    async fn brotli_copy(&self, meta: &Meta, key: Key) -> Option<Bytes> {
        let cache = &self.store.cache;
        let etag = meta.headers.get(header::ETAG);
        let (copy_key, mut body) = match (&self.origin, &etag) {
            (Some(_), Some(e)) => (Key::derive("brotli-content", &[e.as_bytes()]), None),
            _ => {
                let version = Key::derive(
                    "brotli-version",
                    &[&key.0, &meta.stored_at_ms.to_le_bytes()],
                );
                match cache.get_in_memory(&version) {
                    Some(Value::Bytes(digest)) => (Key::derive("brotli-hash", &[&digest]), None),
                    _ => {
                        let body = self.body_bytes(meta, key).await?;
                        let hash_of = body.clone();
                        let digest =
                            tokio::task::spawn_blocking(move || *blake3::hash(&hash_of).as_bytes())
                                .await
                                .ok()?;
                        cache.insert_in_memory(
                            version,
                            Value::Bytes(Bytes::copy_from_slice(&digest)),
                        );
                        (Key::derive("brotli-hash", &[&digest]), Some(body))
                    }
                }
            }
        };
        if let Some(Value::Bytes(c)) = cache.get_in_memory(&copy_key) {
            return (!c.is_empty()).then_some(c);
        }
        let permit = match self.compressing.join(copy_key) {
            Join::Follow(once) => return once.wait().await.ok().filter(|c| !c.is_empty()),
            Join::Lead(permit) => permit,
        };
        self.metrics.brotli_compressions.inc();
        if body.is_none() {
            body = self.body_bytes(meta, key).await;
        }
        let compressed = match body {
            Some(b) => compress(b).await,
            None => None,
        };
        if let Some(c) = &compressed {
            cache.insert_in_memory(copy_key, Value::Bytes(c.clone()));
        }
        permit.flight().set(compressed.clone().ok_or_else(|| {
            FetchError::new(
                FetchFailure::Body,
                "the stored body could not be compressed",
            )
        }));
        compressed.filter(|c| !c.is_empty())
    }

    /// The whole stored body, read or fetched; `None` when it cannot be.
    async fn body_bytes(&self, meta: &Meta, key: Key) -> Option<Bytes> {
        Some(match &meta.body {
            BodyRef::Inline(b) => b.clone(),
            _ => {
                let mut all = Vec::with_capacity(meta.size as usize);
                let mut s = self.body_stream(meta, key, 0, meta.size);
                while let Some(part) = s.next().await {
                    all.extend_from_slice(&part.ok()?);
                }
                Bytes::from(all)
            }
        })
    }

    /// The response to the request `parts` from a fill in progress.
    pub(crate) fn serve_fill(
        &self,
        parts: &http::request::Parts,
        reader: Option<FillReader>,
        head: &FillHead,
    ) -> Response<EdgeBody> {
        let mut headers = head.headers.clone();
        let size = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (status, start, end) = match plan(&parts.headers, head.status, &mut headers, size) {
            Plan::Decided(decided) => return precondition_answer(decided, &headers),
            Plan::Unsatisfiable { size } => return unsatisfiable(size),
            Plan::Send { status, start, end } => (status, start, end),
        };
        let body = if parts.method == Method::HEAD {
            empty_body()
        } else if let Some(reader) = reader {
            let counter = self.metrics.bytes_served.with_label_values(&["origin"]);
            let mut pos = 0u64;
            stream_body(reader.body().filter_map(move |r| {
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
        } else {
            // The leader's reader is taken before its fill starts: only a follower may have
            // none, and followers without one fetch on their own.
            stream_body(futures_util::stream::once(async {
                Err(BoxError::from("this response's fill could not be joined"))
            }))
        };
        respond(status, headers, body)
    }
}

/// Where a partial object's missing slices come from: its upstream, the path and query to
/// ask, and a slice just fetched (served as it is, not read back).
#[derive(Debug)]
pub(crate) struct SliceSource {
    pub up: Arc<Upstream>,
    pub pq: String,
    pub fetched: std::sync::Mutex<Option<(u64, Bytes)>>,
}

fn respond(status: StatusCode, headers: HeaderMap, body: EdgeBody) -> Response<EdgeBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// The answer when a request's preconditions decided it: `304` with the validators and
/// caching headers of the response it stands for (RFC 9110 §15.4.5), or `412` naming the
/// problem.
fn precondition_answer(decided: StatusCode, headers: &HeaderMap) -> Response<EdgeBody> {
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

/// `body` compressed with brotli (empty when that does not make it smaller).
async fn compress(body: Bytes) -> Option<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(body.len() / 3);
        let params = brotli::enc::BrotliEncoderParams {
            quality: 5,
            lgwin: 22,
            ..Default::default()
        };
        brotli::BrotliCompress(&mut &body[..], &mut out, &params).ok()?;
        // Not worth it: remember that as an empty copy.
        Some(if out.len() < body.len() {
            Bytes::from(out)
        } else {
            Bytes::new()
        })
    })
    .await
    .ok()?
}
