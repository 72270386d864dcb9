//! Chunks: verified bytes by blake3, from memory, from the SSD tier (checked), or from the
//! chunk's owners (checked by the client); and the byte streams of files made of them.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, header};
use tessera_origin_proto::{ChunkHash, ManifestChunk};

use crate::backends::origin::{OriginBackend, note_error};
use crate::basics::body::ByteStream;
use crate::basics::error::{FetchError, FetchFailure};
use crate::basics::metrics::FetchKind;
use crate::coalesce::Join;
use crate::store::entry::{BodyRef, INLINE_MAX, Key, Meta, Value};
use crate::store::tiers::Tier;

/// Chunks fetched at once for one stream, in order.
const AHEAD: usize = 8;

impl OriginBackend {
    /// A small file hit again in whole is kept assembled: its stored response gets the bytes
    /// inline, so later hits cost one lookup instead of a manifest and chunk lookups
    /// (`tessera-bench edge-hits`, figures in `bench/HISTORY.md`). The chunks stay cached by
    /// address for ranges and for other files sharing them. Anything that fails leaves
    /// `meta` as it was.
    pub async fn assemble(
        self: &Arc<Self>,
        meta: Arc<Meta>,
        key: Key,
        req: &HeaderMap,
    ) -> Arc<Meta> {
        let BodyRef::Chunks(chunks) = &meta.body else {
            return meta;
        };
        let cache = &self.ctx.store.cache;
        // Only once every chunk is cached: assembling must not be a second origin fetch.
        if meta.size as usize > INLINE_MAX
            || req.contains_key(header::RANGE)
            || !chunks.iter().all(|c| cache.contains(&Key(c.hash.0)))
        {
            return meta;
        }
        let mut all = Vec::with_capacity(meta.size as usize);
        let mut parts = self.chunk_stream(chunks.clone(), 0, meta.size);
        while let Some(p) = parts.next().await {
            match p {
                Ok(b) => all.extend_from_slice(&b),
                Err(_) => return meta,
            }
        }
        let mut m = (*meta).clone();
        m.body = BodyRef::Inline(Bytes::from(all));
        let m = Arc::new(m);
        cache.insert(key, Value::Meta(m.clone()));
        m
    }

    /// The bytes `start..end` of a file made of `chunks`: chunks are looked up in the cache and
    /// fetched when missing, up to [`AHEAD`] at a time, in order.
    pub fn chunk_stream(
        self: &Arc<Self>,
        chunks: Arc<Vec<ManifestChunk>>,
        start: u64,
        end: u64,
    ) -> ByteStream {
        let first = chunks.partition_point(|c| c.offset + c.size as u64 <= start);
        let last = chunks.partition_point(|c| c.offset < end);
        let me = self.clone();
        Box::pin(
            futures_util::stream::iter(first..last)
                .map(move |i| {
                    let me = me.clone();
                    let c = chunks[i];
                    async move { me.chunk(c.hash).await.map(|b| (c, b)) }
                })
                .buffered(AHEAD)
                .map(move |r| {
                    r.map(|(c, b)| {
                        let s = start.saturating_sub(c.offset) as usize;
                        let e = ((end - c.offset) as usize).min(b.len());
                        b.slice(s.min(e)..e)
                    })
                    .map_err(Into::into)
                }),
        )
    }

    /// The verified bytes of one chunk. Concurrent misses of one chunk share one fetch, on a
    /// task of its own.
    pub async fn chunk(self: &Arc<Self>, hash: ChunkHash) -> Result<Bytes, FetchError> {
        let key = Key(hash.0);
        if let Some(b) = self.cached_chunk(hash).await? {
            return Ok(b);
        }
        let permit = match self.chunks.join(key) {
            Join::Follow(flight) => return flight.wait().await,
            Join::Lead(permit) => permit,
        };
        let flight = permit.flight().clone();
        // The fetch runs on its own task, holding the permit: a leader whose client goes away
        // does not fail the followers.
        let me = self.clone();
        tokio::spawn(async move {
            // A fetch that ended between this request's lookup and its join has stored the
            // chunk (before it ended its flight): take that instead of fetching again.
            if me.ctx.store.cache.contains(&key)
                && let Ok(Some(b)) = me.cached_chunk(hash).await
            {
                permit.flight().set(Ok(b));
                return;
            }
            let got = me.fetch_chunk(hash).await;
            if let Ok(b) = &got {
                me.ctx.store.cache.insert(key, Value::Bytes(b.clone()));
            }
            permit.flight().set(got);
        });
        flight.wait().await
    }

    /// The chunk from memory, or from the SSD tier when it matches its blake3 (a corrupt copy
    /// is counted, removed and reads as a miss).
    async fn cached_chunk(&self, hash: ChunkHash) -> Result<Option<Bytes>, FetchError> {
        let key = Key(hash.0);
        let cache = &self.ctx.store.cache;
        match cache.get(&key).await {
            Some((Value::Bytes(b), Tier::Memory)) => Ok(Some(b)),
            Some((Value::Bytes(b), Tier::Disk)) => {
                if ChunkHash::of(&b) == hash {
                    return Ok(Some(b));
                }
                self.ctx.metrics.corrupt_chunks.inc();
                tracing::error!(chunk = %hash, "SSD tier returned a corrupt chunk; refetching");
                cache.remove(&key);
                Ok(None)
            }
            Some(_) => Err(FetchError::new(
                FetchFailure::Malformed,
                format!("cache entry {hash} is not a chunk"),
            )),
            None => Ok(None),
        }
    }

    async fn fetch_chunk(&self, hash: ChunkHash) -> Result<Bytes, FetchError> {
        let mut last = FetchError::new(FetchFailure::Connect, "no origin configured");
        for i in self.origins.for_chunk(&hash) {
            let origin = self.origins.client(i);
            match self.ctx.call(FetchKind::Chunk, origin.chunk(hash)).await {
                Some(Ok(b)) => return Ok(b),
                Some(Err(e)) => {
                    let failure = note_error(self, i, &e);
                    if failure == FetchFailure::Corrupt {
                        self.ctx.metrics.corrupt_chunks.inc();
                    }
                    tracing::warn!(origin = origin.base(), chunk = %hash, error = %e, "chunk fetch failed");
                    last = FetchError::new(failure, format!("origin error: chunk {hash}: {e}"));
                }
                None => {
                    self.origins.failed(i);
                    last = FetchError::new(
                        FetchFailure::Timeout,
                        format!(
                            "chunk {hash}: origin {} did not answer in time",
                            origin.base()
                        ),
                    );
                }
            }
        }
        Err(last)
    }
}
