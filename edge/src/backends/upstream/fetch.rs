//! The fill's leader: one `GET` upstream (conditional when revalidating), the head published
//! to followers, the body streamed into the fill and stored as the store plan says. A thin
//! loop: every decision is in [`crate::rules`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;

use crate::backends::upstream::{Upstream, forward_headers, response_headers, timed_frames};
use crate::basics::body::empty_body;
use crate::basics::clock::now_secs;
use crate::basics::error::{FetchError, FetchFailure};
use crate::basics::metrics::FetchKind;
use crate::coalesce::fill::{Fill, FillHead, FillLimits, FillReader, Rest, Room};
use crate::coalesce::{Join, Permit};
use crate::rules::freshness::Freshness;
use crate::rules::not_modified::merge_304;
use crate::rules::partial::in_parts;
use crate::rules::representation::BROTLI_MAX;
use crate::rules::store_plan::{
    BodyLayout, Layout, storable, stored_headers, surrogate_keys, worth_keeping,
};
use crate::rules::vary::{selecting_values, vary_names};
use crate::store::advice::{Advice, Candidate};
use crate::store::entry::{
    BodyRef, Key, Meta, Placement, SEGMENT, Value, segment_key, variant_key,
};
use crate::store::headers::StoredHeaders;

impl Upstream {
    /// Joins the fill for `key`, or starts it: the fetch then runs on a task of its own (a
    /// client that goes away does not cancel it for the others), revalidating `stale` (the
    /// stored response and its key) when given. Returns the fill and whether this call
    /// started it.
    pub fn fill(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        pq: &str,
        key: Key,
        stale: Option<(Arc<Meta>, Key)>,
    ) -> (Arc<Fill>, Option<FillReader>, bool) {
        match self.fills.join(key) {
            Join::Follow(fill) => {
                let reader = fill.reader();
                (fill, reader, false)
            }
            Join::Lead(permit) => {
                let fill = permit.flight().clone();
                // The leading request reads from the first byte, whatever happens first.
                let reader = fill.reader();
                let (me, parts, pq) = (self.clone(), parts.clone(), pq.to_string());
                tokio::spawn(async move { me.lead(&parts, &pq, stale, permit).await });
                (fill, reader, true)
            }
        }
    }

    /// Revalidates `stale` in the background (`stale-while-revalidate`), unless a fill for
    /// `key` is already under way; gives up after `limit`.
    pub fn revalidate_in_background(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        pq: &str,
        key: Key,
        stale: (Arc<Meta>, Key),
        limit: Duration,
    ) {
        if self.fills.get(&key).is_some() {
            return;
        }
        if let Join::Lead(permit) = self.fills.join(key) {
            let (me, parts, pq) = (self.clone(), parts.clone(), pq.to_string());
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(limit, me.lead(&parts, &pq, Some(stale), permit)).await;
            });
        }
    }

    /// How a reader that fell behind a stored fill (and the cache) gets the rest of the
    /// body on its own: a `Range` request from its offset, `If-Range` the response's strong
    /// ETag or its Last-Modified, so that a representation changed since fails the reader
    /// instead of mixing two. `None` without a validator.
    fn rest_of_body(
        self: &Arc<Self>,
        pq: &str,
        req: &http::HeaderMap,
        resp: &http::HeaderMap,
    ) -> Option<Rest> {
        let validator = resp
            .get(header::ETAG)
            .filter(|e| !e.as_bytes().starts_with(b"W/"))
            .or_else(|| resp.get(header::LAST_MODIFIED))?
            .clone();
        let headers = forward_headers(self, req, true);
        let (me, uri) = (self.clone(), self.uri(pq));
        Some(Rest(Arc::new(move |from: u64| {
            let (me, uri, mut headers) = (me.clone(), uri.clone(), headers.clone());
            headers.insert(header::RANGE, format!("bytes={from}-").parse().unwrap());
            headers.insert(header::IF_RANGE, validator.clone());
            let fetch = async move {
                let mut req = Request::new(empty_body());
                *req.uri_mut() = uri;
                *req.headers_mut() = headers;
                let resp = me.request(FetchKind::Object, req, None).await?;
                let starts_at = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if resp.status() != StatusCode::PARTIAL_CONTENT || starts_at != Some(from) {
                    return Err(FetchError::new(
                        FetchFailure::Body,
                        format!(
                            "the upstream answered {} to the rest of a body from byte {from}",
                            resp.status()
                        ),
                    ));
                }
                // Each piece within the between-bytes timeout, as the fill's own.
                Ok(timed_frames(me.ctx.clone(), resp.into_body())
                    .map_ok(|frame| frame.into_data().unwrap_or_default()))
            };
            futures_util::stream::once(fetch).try_flatten().boxed()
        })))
    }

    /// The leader's work. Dropping `permit` (at the end, or early when the task is cut off)
    /// ends the fill.
    async fn lead(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        pq: &str,
        stale: Option<(Arc<Meta>, Key)>,
        permit: Permit<Key, Fill>,
    ) {
        let fill = permit.flight();
        let key = *permit.key();
        let ctx = &self.ctx;
        let mut headers = forward_headers(self, &parts.headers, true);
        if let Some((m, _)) = &stale {
            if let Some(e) = m.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, e);
            }
            if let Some(lm) = m.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, lm);
            }
        }
        let mut req = Request::new(empty_body());
        *req.uri_mut() = self.uri(pq);
        *req.headers_mut() = headers;
        let request_time = now_secs();
        let kind = if stale.is_some() {
            FetchKind::Revalidate
        } else {
            FetchKind::Object
        };
        // The upstream's early hints go to the client whose request leads the fill.
        let resp = match self
            .request_hinted(kind, req, None, Some(&parts.extensions))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                fill.set_head(Err(e));
                return;
            }
        };
        let response_time = now_secs();
        let (rparts, mut body) = resp.into_parts();
        if rparts.status.is_server_error() {
            ctx.failed(FetchFailure::Status);
        }
        let cap = ctx.heuristic_cap_secs;
        if let (Some((old, vkey)), StatusCode::NOT_MODIFIED) = (&stale, rparts.status) {
            let mut m = (**old).clone();
            let merged;
            (merged, m.freshness) = merge_304(
                &old.headers.to_map(),
                &rparts.headers,
                request_time,
                response_time,
                cap,
            );
            m.headers = StoredHeaders::from_map(&merged);
            m.stored_at_ms = ctx.store.bans.stamp_ms();
            let m = Arc::new(m);
            ctx.store.cache.insert(*vkey, Value::Meta(m.clone()));
            fill.set_head(Ok(FillHead {
                status: StatusCode::NOT_MODIFIED,
                headers: Default::default(),
                storable: false,
                vary: Vec::new(),
                revalidated: Some(m),
                key: *vkey,
            }));
            fill.finish(Ok(()));
            return;
        }
        let content_length = rparts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let freshness = || {
            Freshness::of(
                rparts.status,
                &rparts.headers,
                request_time,
                response_time,
                cap,
            )
        };
        // Eviction advice, when a plugin gives it: here when the size is known, else once the
        // body is complete.
        let advise = |size: u64| {
            ctx.advisor.advise(Candidate {
                key: &key,
                path: pq,
                size,
                content_type: rparts.headers.get(header::CONTENT_TYPE),
                status: rparts.status.as_u16(),
                ttl_secs: freshness().lifetime,
            })
        };
        let mut storing = storable(
            &parts.headers,
            rparts.status,
            &rparts.headers,
            content_length,
            ctx.max_object_bytes,
            ctx.store_set_cookie,
        );
        let mut advice: Option<Advice> = None;
        if storing && let Some(n) = content_length {
            advice = advise(n);
            storing = advice.is_none_or(|a| a.admit);
        }
        let mut headers = response_headers(&rparts.headers);
        // A stored response is everyone's: a cookie it carried (stored only when the
        // operator allows it) goes to no one, as Varnish's `unset beresp.http.set-cookie`.
        if storing {
            headers.remove(header::SET_COOKIE);
        }
        let names = vary_names(&headers);
        fill.set_head(Ok(FillHead {
            status: rparts.status,
            headers: headers.clone(),
            storable: storing,
            vary: selecting_values(&names, &parts.headers),
            revalidated: None,
            key,
        }));

        // The body: to the fill as it arrives, segments to the cache as they fill up. The
        // fill holds a bounded window of it (see `coalesce::fill`).
        let seg_id: [u8; 16] = rand::random();
        fill.limit(FillLimits {
            window: ctx.fill_window_bytes,
            gauge: ctx.metrics.fill_bytes.clone(),
            waiting: ctx.metrics.fills_waiting.clone(),
            segments: storing.then(|| (ctx.store.cache.clone(), seg_id)),
            rest: self.rest_of_body(pq, &parts.headers, &rparts.headers),
            background: ctx.background_fills.clone(),
        });
        let store_segment = |advice: Option<Advice>| {
            move |i: u32, bytes: Bytes| {
                // In the cache first: a reader behind the window reads it there.
                ctx.store.cache.insert_advised(
                    segment_key(&seg_id, i),
                    Value::Bytes(bytes.clone()),
                    advice,
                );
                fill.stored(i as u64 * SEGMENT as u64, &bytes);
            }
        };
        let mut layout = BodyLayout::new(storing, ctx.max_object_bytes);
        loop {
            if fill.room(layout.storing()).await == Room::Stop {
                // Every reader went away, and the body is not stored or too many others
                // go on without readers already.
                fill.finish(Err(FetchError::abandoned()));
                return;
            }
            let piece = match ctx.next_piece(body.frame(), "the upstream").await {
                Ok(piece) => piece,
                Err(e) => {
                    tracing::warn!(upstream = %self.authority, error = %e, "upstream body stalled; nothing stored");
                    fill.finish(Err(e));
                    return;
                }
            };
            match piece {
                None => break,
                Some(Err(e)) => {
                    ctx.failed(FetchFailure::Body);
                    tracing::warn!(upstream = %self.authority, error = %e, "upstream body failed; nothing stored");
                    fill.finish(Err(FetchError::new(
                        FetchFailure::Body,
                        format!("origin body failed: {e}"),
                    )));
                    return;
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        layout.push(data, store_segment(advice), |b| fill.push(b));
                    }
                }
            }
        }
        let total = layout.total();
        if let Some(n) = content_length
            && n != total
        {
            // hyper enforces Content-Length, so this is a second line of defence.
            fill.finish(Err(FetchError::new(
                FetchFailure::Body,
                format!("origin body failed: upstream sent {total} bytes for Content-Length {n}"),
            )));
            return;
        }
        if layout.storing() && content_length.is_none() {
            advice = advise(total);
            if advice.is_some_and(|a| !a.admit) {
                layout.stop_storing();
            }
        }
        let (stored, held) = layout.finish(store_segment(advice));
        if let Some(stored) = stored {
            let mut freshness = freshness();
            if let Some(ttl) = advice.and_then(|a| a.ttl_secs) {
                freshness.lifetime = ttl;
            }
            let kept = stored_headers(headers);
            let meta = Meta {
                status: rparts.status.as_u16(),
                headers: StoredHeaders::from_map(&kept),
                freshness,
                stored_at_ms: ctx.store.bans.stamp_ms(),
                path: parts.uri.path().to_string(),
                surrogate_keys: surrogate_keys(&rparts.headers),
                size: total,
                body: match stored {
                    Layout::Inline(b) => BodyRef::Inline(b),
                    // A large body that can be fetched again in parts is kept as slices: one
                    // whose segments were evicted is completed from what is missing, not
                    // fetched whole again.
                    Layout::Segments(_)
                        if ctx.slices
                            && names.is_empty()
                            && total > BROTLI_MAX
                            && in_parts(&kept) =>
                    {
                        BodyRef::Slices {
                            id: seg_id,
                            slice: SEGMENT as u64,
                        }
                    }
                    Layout::Segments(count) => BodyRef::Segments { id: seg_id, count },
                },
                placement: Placement::of(advice),
            };
            if worth_keeping(&meta.freshness, &kept) {
                let cache = &ctx.store.cache;
                if names.is_empty() {
                    cache.insert_advised(key, Value::Meta(Arc::new(meta)), advice);
                } else {
                    let vkey = variant_key(&key, &names, &parts.headers);
                    cache.insert_advised(vkey, Value::Meta(Arc::new(meta)), advice);
                    cache.insert(key, Value::Vary(Arc::new(names)));
                }
                // An unsafe request that invalidated this key while the body was arriving
                // wins.
                if fill.is_invalidated() {
                    cache.remove(&key);
                }
            }
        }
        if let Some(last) = held {
            fill.push(last);
        }
        fill.finish(Ok(()));
    }
}
