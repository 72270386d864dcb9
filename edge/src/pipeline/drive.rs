//! The one driver both backends share: look the request up, judge what is found (purges,
//! then RFC 9111 freshness against the request's directives), and answer — a hit, a stale
//! response (`max-stale`, `stale-while-revalidate` with a background revalidation), or a
//! fetch from the backend that revalidates or misses, with `stale-if-error` when it fails.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Response, StatusCode};

use crate::backends::origin::{ManifestAnswer, OriginBackend};
use crate::backends::upstream::Upstream;
use crate::backends::upstream::slices::FirstSlice;
use crate::basics::body::EdgeBody;
use crate::basics::clock::now_secs;
use crate::basics::error::{FetchError, FetchFailure, Refusal};
use crate::basics::protocol::Interim;
use crate::coalesce::fill::{FillHead, FillReader};
use crate::pipeline::Edge;
use crate::pipeline::outcome::{Outcome, PassReason, StaleReason, refusal_of};
use crate::pipeline::respond::{SliceSource, unsatisfiable};
use crate::rules::freshness::{CacheControl, Use};
use crate::rules::hints::early_hints;
use crate::rules::partial::{asked_bytes, first_slice};
use crate::rules::vary::selecting_value;
use crate::store::Found;
use crate::store::bans::BanVerdict;
use crate::store::entry::{BodyRef, Key, Meta, Placement, slice_key};
use crate::store::tiers::Tier;

/// How long a background revalidation may take before it is pointless.
const BACKGROUND_REVALIDATE: Duration = Duration::from_secs(30);

/// The backend a request's misses go to.
#[derive(Debug)]
pub enum Via {
    /// A Tessera origin, for the file at `file`.
    Origin {
        origin: Arc<OriginBackend>,
        file: String,
    },
    /// An HTTP upstream, for `pq` (path and query).
    Upstream { up: Arc<Upstream>, pq: String },
}

/// What a backend's fetch gave.
enum Fetched {
    /// A response to serve as stored: a manifest fetched, or a stored response a `304`
    /// refreshed (`status` is the origin's).
    Stored {
        meta: Arc<Meta>,
        key: Key,
        status: u16,
    },
    /// A response being filled (upstream mode).
    Filling {
        head: Arc<FillHead>,
        /// This request's place in the fill; `None` when it joined too late to read it.
        reader: Option<FillReader>,
        leader: bool,
    },
    /// Nothing is published at this path (origin mode).
    Missing(String),
}

impl Via {
    /// Whether `found` may be served: an origin-mode file held whole and read back from the
    /// SSD tier must still hash to its `ETag` (the file's blake3), as chunks are checked; one
    /// that does not is counted, removed and fetched again.
    fn intact(&self, found: &Found) -> bool {
        let Via::Origin { origin, .. } = self else {
            return true;
        };
        origin.intact(found)
    }

    /// Revalidates `found` in the background (`stale-while-revalidate`).
    fn revalidate_in_background(&self, parts: &http::request::Parts, key: Key, found: &Found) {
        match self {
            Via::Origin { origin, file } => {
                let (origin, file, meta) = (origin.clone(), file.clone(), found.meta.clone());
                tokio::spawn(async move {
                    let revalidation = origin.manifest(&file, Some(meta));
                    let _ = tokio::time::timeout(BACKGROUND_REVALIDATE, revalidation).await;
                });
            }
            Via::Upstream { up, pq } => up.revalidate_in_background(
                parts,
                pq,
                key,
                (found.meta.clone(), found.key),
                BACKGROUND_REVALIDATE,
            ),
        }
    }

    /// A miss (`stale` is `None`) or a revalidation of `stale`: what the backend gave, and
    /// whether this request followed another's fetch.
    async fn fetch(
        &self,
        parts: &http::request::Parts,
        key: Key,
        stale: Option<&Found>,
    ) -> Result<(Fetched, bool), FetchError> {
        match self {
            Via::Origin { origin, file } => {
                let (answer, status, followed) =
                    origin.manifest(file, stale.map(|f| f.meta.clone())).await?;
                let fetched = match answer {
                    ManifestAnswer::Found(meta) => Fetched::Stored { meta, key, status },
                    ManifestAnswer::Missing => Fetched::Missing(file.clone()),
                };
                Ok((fetched, followed))
            }
            Via::Upstream { up, pq } => {
                let (fill, reader, leader) =
                    up.fill(parts, pq, key, stale.map(|f| (f.meta.clone(), f.key)));
                let head = fill.head().await?;
                let fetched = match &head.revalidated {
                    Some(m) => Fetched::Stored {
                        meta: m.clone(),
                        key: head.key,
                        status: 304,
                    },
                    None => Fetched::Filling {
                        head,
                        reader,
                        leader,
                    },
                };
                Ok((fetched, !leader))
            }
        }
    }
}

impl Edge {
    /// Answers a `GET` or `HEAD` for `key` through the cache, under the request's directives
    /// `req_cc`; `use_stored` false skips the lookup (the response is still stored when it
    /// may be).
    pub(crate) async fn through_cache(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        req_cc: &CacheControl,
        key: Key,
        via: Via,
        use_stored: bool,
    ) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
        let now = now_secs();
        let mut stale = None;
        if use_stored
            && let Some(found) = self.store.lookup(&key, &parts.headers).await
            && via.intact(&found)
        {
            // A partial object gone stale is revalidated by the range request of the slice
            // the request needs first (below); in the background (`stale-while-revalidate`)
            // by a conditional request, whose `304` keeps its slices.
            let usage = match found.verdict {
                BanVerdict::Stale => Use::Revalidate,
                _ => found.meta.freshness.judge(now, req_cc),
            };
            let (tier, ttl) = (found.tier, found.meta.freshness.ttl(now));
            match usage {
                Use::Fresh => {
                    let meta = match &via {
                        Via::Origin { origin, .. } if parts.method == Method::GET => {
                            let meta = found.meta.clone();
                            origin
                                .assemble(found.meta, found.key, &parts.headers, false)
                                .await
                                .unwrap_or(meta)
                        }
                        Via::Origin { .. } => found.meta,
                        Via::Upstream { .. } => found.meta,
                    };
                    // A partial object's first missing slice is fetched before the head is
                    // sent: when the object changed upstream, the request becomes a miss
                    // of the new one instead of an error.
                    let (mut fetched, mut changed) = (None, false);
                    if let Via::Upstream { up, pq } = &via
                        && let Some(i) = self.first_missing_slice(parts, &meta)
                    {
                        match up.slice(parts, pq, found.key, &meta, i).await {
                            Ok(bytes) => fetched = Some((i, bytes)),
                            Err(e) if e.failure == FetchFailure::Changed => changed = true,
                            Err(e) => return Err(refusal_of(&e)),
                        }
                    }
                    if !changed {
                        let outcome = match fetched {
                            Some(_) => Outcome::miss(true),
                            None => Outcome::hit(tier, ttl),
                        };
                        let r = self
                            .serve_found(parts, &via, meta, found.key, Some(tier), now, fetched)
                            .await;
                        return Ok((r, outcome));
                    }
                }
                Use::StaleAllowed => {
                    let r = self
                        .serve_found(parts, &via, found.meta, found.key, Some(tier), now, None)
                        .await;
                    return Ok((r, Outcome::stale(tier, ttl, StaleReason::MaxStale)));
                }
                Use::StaleWhileRevalidate => {
                    via.revalidate_in_background(parts, key, &found);
                    let r = self
                        .serve_found(parts, &via, found.meta, found.key, Some(tier), now, None)
                        .await;
                    return Ok((r, Outcome::stale(tier, ttl, StaleReason::WhileRevalidate)));
                }
                Use::Revalidate => stale = Some(found),
            }
        }
        if stale.is_none() && req_cc.only_if_cached {
            return Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "only-if-cached, and this edge does not hold it",
            ));
        }
        // While a stored response is revalidated, the client may already fetch what it
        // preloads: early hints from its `Link` fields (clients that can take them).
        if let Some(found) = &stale
            && parts.method == Method::GET
            && let Some(hints) = early_hints(&found.meta.headers.to_map())
        {
            Interim::send(&parts.extensions, StatusCode::EARLY_HINTS, hints);
        }
        // Upstream mode: a request for one range the store cannot answer, or for a partial
        // object gone stale, fetches the slice it needs first, not the whole response.
        if let Via::Upstream { up, pq } = &via
            && use_stored
            && let Some((index, slice)) = self.slice_to_fetch(parts, stale.as_ref())
        {
            let stale_meta = stale.as_ref().map(|f| f.meta.clone());
            match up
                .first_slice(parts, pq, key, index, slice, stale_meta)
                .await
            {
                Ok(FirstSlice::Stored {
                    meta,
                    index,
                    bytes,
                    same_as_stale,
                }) => {
                    let outcome = match (&stale, same_as_stale) {
                        (None, _) => Outcome::miss(true),
                        (Some(_), true) => Outcome::revalidated(206),
                        (Some(_), false) => Outcome::refetched(206, true),
                    };
                    let fetched = Some((index, bytes));
                    let r = self
                        .serve_found(parts, &via, meta, key, None, now, fetched)
                        .await;
                    return Ok((r, outcome));
                }
                Ok(FirstSlice::Unsatisfiable(size)) => {
                    return Ok((unsatisfiable(size), Outcome::miss(false)));
                }
                Ok(FirstSlice::Whole) => {}
                Err(e) => {
                    if let Some(r) = self
                        .stale_on_error(parts, &via, stale.as_ref(), now, req_cc)
                        .await
                    {
                        tracing::warn!(path = %parts.uri.path(), error = %e, "upstream failed; serving stale");
                        return Ok(r);
                    }
                    return Err(refusal_of(&e));
                }
            }
        }
        let (fetched, collapsed) = match via.fetch(parts, key, stale.as_ref()).await {
            Ok(f) => f,
            Err(e) => {
                if let Some(r) = self
                    .stale_on_error(parts, &via, stale.as_ref(), now, req_cc)
                    .await
                {
                    tracing::warn!(path = %parts.uri.path(), error = %e, "origin failed; serving stale");
                    return Ok(r);
                }
                return Err(refusal_of(&e));
            }
        };
        match fetched {
            Fetched::Stored { meta, key, status } => {
                let kept = meta.placement != Placement::Nowhere;
                let outcome = match (&stale, status) {
                    (Some(_), 304) => Outcome::revalidated(304),
                    (Some(_), status) => Outcome::refetched(status, kept),
                    (None, _) => Outcome::miss(kept),
                };
                // The request that fetched a small file stores it assembled (requests that
                // followed its fetch read the same chunks, or the assembled copy).
                let meta = match &via {
                    Via::Origin { origin, .. }
                        if stale.is_none() && !collapsed && parts.method == Method::GET =>
                    {
                        match origin.assemble(meta, key, &parts.headers, true).await {
                            Ok(meta) => meta,
                            Err(e) => return Err(refusal_of(&e)),
                        }
                    }
                    _ => meta,
                };
                let r = self
                    .serve_found(parts, &via, meta, key, None, now, None)
                    .await;
                Ok((r, outcome.collapsed(collapsed)))
            }
            Fetched::Missing(file) => {
                // A folder asked for without its slash: sent to the folder when it has an
                // index, as static hosts do (its manifest is then in the cache).
                let path = parts.uri.path();
                let location = match parts.uri.query() {
                    Some(q) => format!("{path}/?{q}"),
                    None => format!("{path}/"),
                };
                if let Via::Origin { origin, .. } = &via
                    && !path.ends_with('/')
                    && let Ok(location) = http::HeaderValue::from_str(&location)
                    && let Ok((ManifestAnswer::Found(_), ..)) =
                        origin.manifest(&format!("{file}/index.html"), None).await
                {
                    let mut r = Response::new(crate::basics::body::empty_body());
                    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
                    r.headers_mut().insert(http::header::LOCATION, location);
                    r.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("public, max-age=60"),
                    );
                    return Ok((r, Outcome::miss(false).collapsed(collapsed)));
                }
                // An ordinary answer of the origin, not a failure of the fetch.
                let r = Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("nothing is published at {file:?}"),
                )
                .response();
                Ok((r, Outcome::absent().collapsed(collapsed)))
            }
            Fetched::Filling {
                head,
                reader,
                leader,
            } => {
                if head.status.is_server_error()
                    && let Some(r) = self
                        .stale_on_error(parts, &via, stale.as_ref(), now, req_cc)
                        .await
                {
                    return Ok(r);
                }
                let same_variant = head
                    .vary
                    .iter()
                    .all(|(n, v)| selecting_value(n, &parts.headers) == *v);
                let shared = head.storable && same_variant && reader.is_some();
                if !leader
                    && !shared
                    && let Via::Upstream { up, pq } = &via
                {
                    // Not shareable with this request: fetch for it alone (its place in the
                    // fill is let go at once, so the fill does not wait for it).
                    drop(reader);
                    let r = up.pass(parts, pq, None).await.map_err(|e| refusal_of(&e))?;
                    return Ok((r, Outcome::pass(PassReason::Uncacheable)));
                }
                let outcome = match &stale {
                    Some(_) => Outcome::refetched(head.status.as_u16(), head.storable),
                    None => Outcome::miss(head.storable),
                };
                let r = self.serve_fill(parts, reader, &head);
                Ok((r, outcome.collapsed(collapsed)))
            }
        }
    }

    /// The stored response, when the origin failed and `stale-if-error` (or the request's
    /// `max-stale`) allows serving it.
    async fn stale_on_error(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        via: &Via,
        stale: Option<&Found>,
        now: u64,
        req_cc: &CacheControl,
    ) -> Option<(Response<EdgeBody>, Outcome)> {
        let found = stale?;
        if !found.meta.freshness.usable_on_error(now, req_cc) {
            return None;
        }
        let ttl = found.meta.freshness.ttl(now);
        let (meta, key, tier) = (found.meta.clone(), found.key, Some(found.tier));
        let r = self
            .serve_found(parts, via, meta, key, tier, now, None)
            .await;
        Some((r, Outcome::stale(found.tier, ttl, StaleReason::IfError)))
    }

    /// Serves a stored response; a partial object's missing slices come from the request's
    /// upstream (`fetched`: a slice just fetched).
    #[allow(clippy::too_many_arguments)]
    async fn serve_found(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        via: &Via,
        meta: Arc<Meta>,
        key: Key,
        tier: Option<Tier>,
        now: u64,
        fetched: Option<(u64, bytes::Bytes)>,
    ) -> Response<EdgeBody> {
        let src = match via {
            Via::Upstream { up, pq } if matches!(meta.body, BodyRef::Slices { .. }) => {
                Some(SliceSource {
                    up: up.clone(),
                    pq: pq.clone(),
                    fetched: std::sync::Mutex::new(fetched),
                })
            }
            _ => None,
        };
        self.serve(parts, meta, key, tier, now, src).await
    }

    /// The slice to fetch first, and the slice size, for a request the store cannot answer
    /// as it is: for a partial object gone stale, the one the request's range (or the whole
    /// body) starts in; with nothing usable stored, the one a request for one byte range
    /// starts in. `None`: the request goes the whole-response way (slices off, not one range,
    /// a whole stored response to revalidate).
    fn slice_to_fetch(
        &self,
        parts: &http::request::Parts,
        stale: Option<&Found>,
    ) -> Option<(u64, u64)> {
        let slice = self.cfg.slice_bytes;
        if slice == 0 {
            return None;
        }
        match stale.map(|f| (&f.meta.body, f.meta.size)) {
            // In the stored object's own slices (a whole response kept in 1 MiB segments
            // has those, whatever `slice_bytes` says), so they can be kept.
            Some((&BodyRef::Slices { slice, .. }, size)) => {
                let (start, _) = asked_bytes(&parts.headers, size);
                Some((start / slice, slice))
            }
            Some(_) => None,
            None => first_slice(&parts.headers, slice).map(|i| (i, slice)),
        }
    }

    /// The first slice of a partial object the request needs that the store does not hold;
    /// `None` when it holds them all (a hit) and for anything but a partial object.
    fn first_missing_slice(&self, parts: &http::request::Parts, meta: &Meta) -> Option<u64> {
        let BodyRef::Slices { id, slice } = meta.body else {
            return None;
        };
        if parts.method == Method::HEAD || meta.size == 0 {
            return None;
        }
        let (start, end) = asked_bytes(&parts.headers, meta.size);
        (start / slice..=end / slice).find(|i| !self.store.cache.contains(&slice_key(&id, *i)))
    }
}
