//! Manifests: fetched from the file's owners (any origin, without a ring), revalidated by
//! `ETag`, stored as the file's response. Concurrent fetches of one manifest share one.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tessera_origin_proto::{ClientError, Manifest, ManifestFetch};

use crate::backends::origin::{OriginBackend, note_error};
use crate::basics::clock::now_secs;
use crate::basics::error::{FetchError, FetchFailure};
use crate::basics::metrics::FetchKind;
use crate::coalesce::Join;
use crate::rules::freshness::Freshness;
use crate::rules::not_modified::merge_304;
use crate::rules::store_plan::surrogate_keys;
use crate::store::advice::Candidate;
use crate::store::entry::{BodyRef, INLINE_MAX, Key, Meta, Placement, Value};
use crate::store::headers::StoredHeaders;

/// The cache key of the manifest of the file at `path`.
pub fn manifest_key(path: &str) -> Key {
    Key::derive("manifest", &[path.as_bytes()])
}

/// What the origins say of a file.
#[derive(Debug, Clone)]
pub enum ManifestAnswer {
    /// The file's current response (refreshed by a `304` when the fetch was a
    /// revalidation and the origin's status is `304`).
    Found(Arc<Meta>),
    /// Nothing is published there.
    Missing,
}

impl OriginBackend {
    /// Fetches (or, with `stale`, revalidates) the manifest of `file`, stores it, and returns
    /// it with the origin's status (`200`, or `304` when `stale` is still current), and
    /// whether this call followed another's fetch. Concurrent calls for one file share one
    /// fetch, which runs on a task of its own: a client that goes away does not cancel it
    /// for the others.
    pub async fn manifest(
        self: &Arc<Self>,
        file: &str,
        stale: Option<Arc<Meta>>,
    ) -> Result<(ManifestAnswer, u16, bool), FetchError> {
        let key = manifest_key(file);
        let permit = match self.manifests.join(key) {
            Join::Follow(flight) => {
                let (answer, status) = flight.wait().await?;
                return Ok((answer, status, true));
            }
            Join::Lead(permit) => permit,
        };
        let flight = permit.flight().clone();
        // The fetch runs on its own task, holding the permit: a leader whose client goes away
        // does not fail the followers.
        let me = self.clone();
        let file = file.to_string();
        tokio::spawn(async move {
            // A flight that ended between this request's cache miss and its join has stored
            // its manifest: take that instead of fetching again.
            let cache = &me.ctx.store.cache;
            if stale.is_none()
                && cache.contains(&key)
                && let Some((Value::Meta(m), _)) = cache.get(&key).await
            {
                permit.flight().set(Ok((ManifestAnswer::Found(m), 200)));
                return;
            }
            let got = me.fetch_manifest(&file, stale).await;
            permit.flight().set(got);
        });
        let (answer, status) = flight.wait().await?;
        Ok((answer, status, false))
    }

    async fn fetch_manifest(
        &self,
        file: &str,
        stale: Option<Arc<Meta>>,
    ) -> Result<(ManifestAnswer, u16), FetchError> {
        let etag = stale
            .as_ref()
            .and_then(|m| m.headers.get(header::ETAG))
            .and_then(|v| v.to_str().ok().map(str::to_string));
        let kind = if stale.is_some() {
            FetchKind::Revalidate
        } else {
            FetchKind::Manifest
        };
        let key = manifest_key(file);
        let mut last = FetchError::new(FetchFailure::Connect, "no origin configured");
        let position = self.recent.position();
        let order = self.origins.for_file(file);
        let ask = |i: usize| {
            self.ctx.call(
                kind,
                // A small file comes with its manifest: one round trip for its miss.
                self.origins.client(i).manifest_with(
                    file,
                    etag.as_deref(),
                    Some(INLINE_MAX as u64),
                ),
            )
        };
        let mut next = 0;
        while let Some(&first) = order.get(next) {
            // The next origin in the list is asked too when this one is slow to answer.
            let second = order.get(next + 1).copied();
            let request_time = now_secs();
            let (r, from_second) = self
                .ctx
                .hedged(ask(first), second.map(ask), |r| matches!(r, Some(Ok(_))))
                .await;
            let response_time = now_secs();
            let i = match second {
                Some(second) if from_second => {
                    // It failed, or it lost the race.
                    self.origins.failed(first);
                    next += 2;
                    second
                }
                _ => {
                    next += 1;
                    first
                }
            };
            let origin = self.origins.client(i);
            if let Some(Ok(_)) = &r {
                self.origins.succeeded(i);
            }
            match r {
                None => {
                    self.origins.failed(i);
                    last = FetchError::new(
                        FetchFailure::Timeout,
                        format!("origin {} did not answer in time", origin.base()),
                    );
                }
                Some(Ok(ManifestFetch::Found {
                    manifest,
                    headers,
                    inline,
                })) => {
                    let meta = self.store_manifest(
                        file,
                        &manifest,
                        &headers,
                        inline,
                        [request_time, response_time],
                        position,
                    );
                    return Ok((ManifestAnswer::Found(meta), 200));
                }
                Some(Ok(ManifestFetch::NotModified { headers })) => {
                    let Some(old) = &stale else {
                        last = FetchError::new(
                            FetchFailure::Malformed,
                            "origin answered 304 to an unconditional request",
                        );
                        continue;
                    };
                    let mut m = (**old).clone();
                    let merged;
                    (merged, m.freshness) = merge_304(
                        &old.headers.to_map(),
                        &headers,
                        request_time,
                        response_time,
                        self.ctx.heuristic_cap_secs,
                    );
                    m.headers = StoredHeaders::from_map(&merged);
                    m.stored_at_ms = self.ctx.store.bans.stamp_ms();
                    let m = Arc::new(m);
                    self.ctx.store.cache.insert(key, Value::Meta(m.clone()));
                    return Ok((ManifestAnswer::Found(m), 304));
                }
                Some(Ok(ManifestFetch::Missing)) => {
                    self.ctx.store.cache.remove(&key);
                    return Ok((ManifestAnswer::Missing, 404));
                }
                Some(Err(e)) => {
                    let failure = note_error(self, i, &e);
                    tracing::warn!(origin = origin.base(), path = file, error = %e, "manifest fetch failed");
                    last = FetchError::new(failure, format!("origin error: {e}"));
                    if !e.retryable() && !matches!(e, ClientError::Malformed { .. }) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Stores a fetched manifest as the file's response (unless eviction advice refuses it
    /// or the file changed meanwhile) and returns it. A small file that came with its
    /// manifest (`inline`, checked by the client) is stored assembled from the start.
    fn store_manifest(
        &self,
        file: &str,
        manifest: &Manifest,
        headers: &HeaderMap,
        inline: Option<Bytes>,
        [request_time, response_time]: [u64; 2],
        position: u64,
    ) -> Arc<Meta> {
        let key = manifest_key(file);
        let mut meta = self.meta_of(manifest, headers, request_time, response_time);
        if let Some(all) = inline {
            meta.body = BodyRef::Inline(all);
        }
        // Eviction advice governs the file's stored response (its manifest, and the
        // assembled copy of a small file) and, through its placement, where the chunks
        // fetched for it are kept (chunks other files brought in stay where they are).
        let advice = self.ctx.advisor.advise(Candidate {
            key: &key,
            path: &meta.path,
            size: meta.size,
            content_type: meta.headers.get(header::CONTENT_TYPE).as_ref(),
            status: meta.status,
            ttl_secs: meta.freshness.lifetime,
        });
        if let Some(ttl) = advice.and_then(|a| a.ttl_secs) {
            meta.freshness.lifetime = ttl;
        }
        meta.placement = Placement::of(advice);
        let meta = Arc::new(meta);
        if advice.is_some_and(|a| !a.admit) {
            return meta;
        }
        // A change reported while this fetch was in flight may be newer than what it
        // returned: serve it, but do not keep it. Checked again after storing: a change
        // noted between the check and the store would otherwise find nothing to remove and
        // leave this copy behind.
        let raced = || self.recent.superseded(file, position, &manifest.blake3);
        if !raced() {
            let cache = &self.ctx.store.cache;
            cache.insert_advised(key, Value::Meta(meta.clone()), advice);
            if raced() {
                cache.remove(&key);
            }
        }
        meta
    }

    /// The stored response for a file: its representation headers for clients, freshness
    /// from the origin's manifest response.
    fn meta_of(
        &self,
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
        let mut freshness = Freshness::of(
            StatusCode::OK,
            origin_headers,
            request_time,
            response_time,
            self.ctx.heuristic_cap_secs,
        );
        freshness.stale_if_error = freshness.stale_if_error.max(self.grace_secs);
        Meta {
            status: 200,
            headers: StoredHeaders::from_map(&headers),
            freshness,
            stored_at_ms: self.ctx.store.bans.stamp_ms(),
            path: format!("/{}", m.path),
            surrogate_keys: surrogate_keys(origin_headers),
            size: m.size,
            body: BodyRef::Chunks(Arc::new(m.chunks.clone())),
            placement: Placement::Both,
        }
    }
}
