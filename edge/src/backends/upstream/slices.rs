//! Partial objects: a representation fetched and kept in slices ([`crate::rules::partial`]).
//!
//! A request for one byte range that the store cannot answer asks the upstream for the slice
//! its range starts in (`Range: bytes=i×S-(i+1)×S−1`): the `206` says the length and the
//! representation's fields, and is stored as a [`Meta`] whose body is
//! [`BodyRef::Slices`] plus that slice. Every other slice is fetched when a request first
//! needs it, with `If-Range` the stored validator, checked to be exactly that slice of the
//! same representation, and stored on its own. One fetch per slice however many requests
//! need it at once (a flight per slice, led by a task of its own so a client that goes away
//! does not cancel it for the others).
//!
//! An upstream that answers a slice's range with anything but that slice (a `200`: it does
//! not do ranges, a `206` of other bytes, a response that varies or may not be stored) makes
//! the request go the whole-response way instead ([`FirstSlice::Whole`]). A later slice that
//! comes from another representation (the object changed upstream) removes the partial
//! object and fails that read, so no client gets two versions' bytes joined.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{Request, StatusCode, header};

use crate::backends::upstream::{Upstream, forward_headers, response_headers, timed_frames};
use crate::basics::body::empty_body;
use crate::basics::clock::{now_ms, now_secs};
use crate::basics::error::{FetchError, FetchFailure};
use crate::basics::metrics::FetchKind;
use crate::coalesce::Once;
use crate::rules::freshness::Freshness;
use crate::rules::partial::{
    check_slice, if_range_validator, same_representation, slice_bounds, slice_range,
    unsatisfied_length, whole_fields,
};
use crate::rules::store_plan::{storable, stored_headers, surrogate_keys, worth_keeping};
use crate::rules::vary::vary_names;
use crate::store::advice::Candidate;
use crate::store::entry::{BodyRef, Key, Meta, Placement, Value, slice_key};
use crate::store::headers::StoredHeaders;

/// The flights of slices being fetched, by the key of their entry.
pub type SliceFlights = crate::coalesce::Flights<Key, Once<Result<Bytes, FetchError>>>;
/// The flights of first slices (objects not held yet), by object and slice.
pub type FirstSliceFlights = crate::coalesce::Flights<Key, Once<Result<FirstSlice, FetchError>>>;

/// What the range request for a request's first slice gave.
#[derive(Debug, Clone)]
pub enum FirstSlice {
    /// The representation, stored as a partial object, and the slice fetched.
    Stored {
        meta: Arc<Meta>,
        index: u64,
        bytes: Bytes,
        /// Whether the stored response it replaced was the same representation (its slices
        /// kept): a revalidation.
        same_as_stale: bool,
    },
    /// The range starts past the end of a representation of this many bytes (`416`).
    Unsatisfiable(u64),
    /// Not to be kept in slices: answer the request from the whole response.
    Whole,
}

impl Upstream {
    /// The first slice, `index`, of the object stored under `key` (for `pq`), which the store
    /// cannot answer (`stale`: a partial object gone stale, whose slices are kept when the
    /// upstream still has the same representation). Slices are `slice` bytes.
    pub async fn first_slice(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        pq: &str,
        key: Key,
        index: u64,
        slice: u64,
        stale: Option<Arc<Meta>>,
    ) -> Result<FirstSlice, FetchError> {
        let flight = Key::derive("slice-first", &[&key.0, &index.to_le_bytes()]);
        let (me, parts, pq) = (self.clone(), parts.clone(), pq.to_string());
        let fetch = async move {
            me.fetch_first_slice(&parts, &pq, key, index, slice, stale)
                .await
        };
        self.first_slices.shared(flight, fetch).await
    }

    async fn fetch_first_slice(
        &self,
        parts: &http::request::Parts,
        pq: &str,
        key: Key,
        index: u64,
        slice: u64,
        stale: Option<Arc<Meta>>,
    ) -> Result<FirstSlice, FetchError> {
        let ctx = &self.ctx;
        let mut headers = forward_headers(self, &parts.headers, true);
        headers.insert(header::RANGE, slice_range(index, slice).parse().unwrap());
        let mut req = Request::new(empty_body());
        *req.uri_mut() = self.uri(pq);
        *req.headers_mut() = headers;
        let (request_time, asked_ms) = (now_secs(), now_ms());
        let resp = self.request(FetchKind::Slice, req, None).await?;
        let response_time = now_secs();
        let (rparts, body) = resp.into_parts();
        if rparts.status == StatusCode::RANGE_NOT_SATISFIABLE
            && let Some(total) = unsatisfied_length(&rparts.headers)
        {
            return Ok(FirstSlice::Unsatisfiable(total));
        }
        let range = match check_slice(rparts.status, &rparts.headers, index, slice, None) {
            Ok(r) => r,
            Err(why) => {
                if rparts.status.is_server_error() {
                    ctx.failed(FetchFailure::Status);
                }
                tracing::debug!(upstream = %self.authority, %why, "not kept in slices");
                return Ok(FirstSlice::Whole);
            }
        };
        let total = range.total;
        let fields = response_headers(&rparts.headers);
        let storing = storable(
            &parts.headers,
            StatusCode::OK,
            &rparts.headers,
            None,
            u64::MAX,
            ctx.store_set_cookie,
        );
        if !storing || !vary_names(&fields).is_empty() {
            return Ok(FirstSlice::Whole);
        }
        let mut freshness = Freshness::of(
            StatusCode::OK,
            &rparts.headers,
            request_time,
            response_time,
            ctx.heuristic_cap_secs,
        );
        let advice = ctx.advisor.advise(Candidate {
            key: &key,
            path: pq,
            size: total,
            content_type: rparts.headers.get(header::CONTENT_TYPE),
            status: 200,
            ttl_secs: freshness.lifetime,
        });
        let placement = Placement::of(advice);
        if let Some(ttl) = advice.and_then(|a| a.ttl_secs) {
            freshness.lifetime = ttl;
        }
        let kept = stored_headers(whole_fields(fields, total));
        if placement == Placement::Nowhere || !worth_keeping(&freshness, &kept) {
            return Ok(FirstSlice::Whole);
        }
        let bytes = self.read_slice(body, index, slice, total).await?;
        // A partial object gone stale keeps its slices when the upstream still has the same
        // representation (the same strong validator and length).
        let same = stale.as_ref().and_then(|m| match m.body {
            BodyRef::Slices { id, slice: s }
                if s == slice
                    && m.size == total
                    && same_representation(&m.headers.to_map(), &kept) =>
            {
                Some(id)
            }
            _ => None,
        });
        let id = same.unwrap_or_else(rand::random);
        let meta = Arc::new(Meta {
            status: 200,
            headers: StoredHeaders::from_map(&kept),
            freshness,
            stored_at_ms: ctx.store.bans.stamp_ms(),
            path: parts.uri.path().to_string(),
            surrogate_keys: surrogate_keys(&rparts.headers),
            size: total,
            body: BodyRef::Slices { id, slice },
            placement,
        });
        let cache = &ctx.store.cache;
        cache.insert_advised(slice_key(&id, index), Value::Bytes(bytes.clone()), advice);
        // An unsafe request that invalidated the object while its slice was fetched wins: this
        // request is answered, nothing is stored.
        if !cache.removed_since(&key, asked_ms) {
            cache.insert_advised(key, Value::Meta(meta.clone()), advice);
        }
        Ok(FirstSlice::Stored {
            meta,
            index,
            bytes,
            same_as_stale: same.is_some(),
        })
    }

    /// Slice `index` of the partial object `meta` stored under `key`: fetched with `If-Range`
    /// its validator, checked to be that slice of that representation, and stored. A slice of
    /// another representation removes `meta` and fails.
    pub async fn slice(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        pq: &str,
        key: Key,
        meta: &Arc<Meta>,
        index: u64,
    ) -> Result<Bytes, FetchError> {
        let BodyRef::Slices { id, .. } = meta.body else {
            return Err(FetchError::new(
                FetchFailure::Malformed,
                "not a partial object",
            ));
        };
        let (me, parts, pq, meta) = (self.clone(), parts.clone(), pq.to_string(), meta.clone());
        let fetch = async move { me.fetch_slice(&parts, &pq, key, &meta, index).await };
        self.slices.shared(slice_key(&id, index), fetch).await
    }

    async fn fetch_slice(
        &self,
        parts: &http::request::Parts,
        pq: &str,
        key: Key,
        meta: &Meta,
        index: u64,
    ) -> Result<Bytes, FetchError> {
        let BodyRef::Slices { id, slice } = meta.body else {
            unreachable!("checked by the caller")
        };
        let stored = meta.headers.to_map();
        let (start, end) = slice_bounds(index, slice, meta.size);
        let mut headers = forward_headers(self, &parts.headers, true);
        headers.insert(
            header::RANGE,
            format!("bytes={start}-{}", end - 1).parse().unwrap(),
        );
        if let Some(v) = if_range_validator(&stored) {
            headers.insert(header::IF_RANGE, v);
        }
        let mut req = Request::new(empty_body());
        *req.uri_mut() = self.uri(pq);
        *req.headers_mut() = headers;
        let resp = self.request(FetchKind::Slice, req, None).await?;
        let (rparts, body) = resp.into_parts();
        let checked = check_slice(
            rparts.status,
            &rparts.headers,
            index,
            slice,
            Some(meta.size),
        )
        .and_then(|_| {
            let fields = response_headers(&rparts.headers);
            if same_representation(&stored, &fields) {
                Ok(())
            } else {
                Err("the upstream's validator changed".to_string())
            }
        });
        if let Err(why) = checked {
            // What is stored no longer describes the upstream's representation: gone, so the
            // next request starts over.
            self.ctx.store.cache.remove(&key);
            let failure = match rparts.status {
                s if s.is_server_error() => FetchFailure::Status,
                _ => FetchFailure::Changed,
            };
            self.ctx.failed(failure);
            return Err(FetchError::new(
                failure,
                format!(
                    "slice {index} of a partial object from {}: {why}",
                    self.authority
                ),
            ));
        }
        let bytes = self.read_slice(body, index, slice, meta.size).await?;
        self.ctx.store.cache.insert_placed(
            slice_key(&id, index),
            Value::Bytes(bytes.clone()),
            meta.placement,
        );
        Ok(bytes)
    }

    /// The body of a slice's `206`: exactly its length, each piece within the between-bytes
    /// timeout, in one buffer of its own.
    async fn read_slice(
        &self,
        body: hyper::body::Incoming,
        index: u64,
        slice: u64,
        total: u64,
    ) -> Result<Bytes, FetchError> {
        let (start, end) = slice_bounds(index, slice, total);
        let want = (end - start) as usize;
        let mut buf = BytesMut::with_capacity(want);
        let mut frames = std::pin::pin!(timed_frames(self.ctx.clone(), body));
        while let Some(frame) = frames.next().await {
            let frame = frame?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > want {
                    break;
                }
                buf.extend_from_slice(&data);
            }
        }
        if buf.len() != want {
            self.ctx.failed(FetchFailure::Body);
            return Err(FetchError::new(
                FetchFailure::Body,
                format!(
                    "slice {index} from {}: {} bytes where {want} were due",
                    self.authority,
                    buf.len()
                ),
            ));
        }
        Ok(buf.freeze())
    }
}
