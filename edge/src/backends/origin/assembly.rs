//! Hot files kept assembled, so a hit is a few large writes instead of a lookup and a write
//! per 16 KiB chunk, and their bytes are counted once in the memory tier.
//!
//! - A small file (up to [`INLINE_MAX`]) read in whole, on its miss or on a hit, gets its
//!   bytes inline in its stored response: one entry, one lookup serves it.
//! - A larger file hit again in whole is copied, in the background, into segments of
//!   [`SEGMENT`] bytes kept in memory only, under keys derived from its list of chunks (two
//!   paths with the same content share them). A hit then sends a segment per write, as an
//!   upstream-mode hit does; a segment that left the cache is read from the chunks instead.
//!
//! Either way the file's chunks then leave the memory tier: the bytes are held there once.
//! The SSD tier keeps the chunks (and a small file's stored response, inline bytes and all),
//! so a range or another file sharing a chunk reads it from there; with no SSD tier it is
//! fetched again. A chunk looked up while its file's copy was being made is cut from the
//! copy ([`OriginBackend::cut_from_assembled`]).
//!
//! Figures: `tessera-bench edge-hits` (origin row) and `tessera-bench hit-ratio --trace`,
//! before and after in `bench/HISTORY.md`.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, header};
use tessera_origin_proto::{ChunkHash, ManifestChunk};

use crate::backends::origin::OriginBackend;
use crate::basics::body::ByteStream;
use crate::basics::error::FetchError;
use crate::store::Found;
use crate::store::entry::{BodyRef, INLINE_MAX, Key, Meta, Placement, SEGMENT, Value, segment_key};
use crate::store::tiers::Tier;

/// Where a file's assembled copy is kept.
#[derive(Debug, Clone, Copy)]
pub enum Assembled {
    /// Inline in the stored response under this key (a small file).
    Inline(Key),
    /// In segments with this [`assembly_id`].
    Segments([u8; 16]),
}

/// Files up to this share of the memory tier are assembled (a larger one would push out
/// more than it saves).
const ASSEMBLE_SHARE: usize = 8;

impl OriginBackend {
    /// Called with `meta` (stored under `key`) for a `GET` with headers `req`: on a fresh hit,
    /// or on a miss (`missed`) that fetched it for this request. Returns what to serve:
    /// - a small file comes back assembled: on a miss its chunks are fetched for it, so it is
    ///   stored as one entry from the start (and not stored again, losing what the eviction
    ///   policy learned of it, when it is hit); on a hit, once every chunk is cached
    ///   (assembling must not be a second origin fetch);
    /// - a large one, hit, is assembled in the background and served from its chunks this
    ///   time.
    ///
    /// On a hit, anything that fails leaves `meta` as it was; on a miss, a chunk the origins
    /// could not give is the error (it was fetched once, for this request, and is not fetched
    /// again to serve it).
    pub async fn assemble(
        self: &Arc<Self>,
        meta: Arc<Meta>,
        key: Key,
        req: &HeaderMap,
        missed: bool,
    ) -> Result<Arc<Meta>, FetchError> {
        let BodyRef::Chunks(chunks) = &meta.body else {
            return Ok(meta);
        };
        // Only a file memory may keep is assembled there.
        if req.contains_key(header::RANGE)
            || !matches!(meta.placement, Placement::Both | Placement::Memory)
        {
            return Ok(meta);
        }
        let cache = &self.ctx.store.cache;
        if meta.size as usize > INLINE_MAX {
            if missed {
                return Ok(meta);
            }
            let id = assembly_id(chunks);
            if meta.size as usize <= cache.memory_capacity() / ASSEMBLE_SHARE
                && !cache.in_memory(&segment_key(&id, 0))
                && chunks.iter().all(|c| cache.contains(&Key(c.hash.0)))
                && self.assembling.lock().unwrap().insert(id)
            {
                tokio::spawn(
                    self.clone()
                        .assemble_segments(chunks.clone(), meta.size, id),
                );
            }
            return Ok(meta);
        }
        if !missed && !chunks.iter().all(|c| cache.contains(&Key(c.hash.0))) {
            return Ok(meta);
        }
        let all = match self.read_all(chunks, meta.size).await {
            Ok(all) => all,
            Err(e) if missed => return Err(e),
            Err(_) => return Ok(meta),
        };
        let mut m = (*meta).clone();
        m.body = BodyRef::Inline(all);
        let m = Arc::new(m);
        cache.insert_placed(key, Value::Meta(m.clone()), m.placement);
        self.forget_chunks_in_memory(chunks);
        Ok(m)
    }

    /// The bytes `start..end` of a file of `size` bytes made of `chunks`, stored under `key`:
    /// from its assembled segments where memory holds them, else from the chunks.
    /// `keep`: where the chunks it fetches go ([`Meta::placement`]).
    pub fn file_stream(
        self: &Arc<Self>,
        chunks: Arc<Vec<ManifestChunk>>,
        key: Key,
        size: u64,
        [start, end]: [u64; 2],
        keep: Placement,
    ) -> ByteStream {
        let seg = SEGMENT as u64;
        let first = start / seg;
        if size as usize <= INLINE_MAX {
            return self.chunk_stream(chunks, Some(Assembled::Inline(key)), start, end, keep);
        }
        let id = assembly_id(&chunks);
        let copy = Some(Assembled::Segments(id));
        let cache = self.ctx.store.cache.clone();
        if !cache.in_memory(&segment_key(&id, first as u32)) {
            return self.chunk_stream(chunks, copy, start, end, keep);
        }
        let me = self.clone();
        let last = (end - 1) / seg;
        Box::pin(futures_util::stream::iter(first..=last).flat_map(move |i| {
            let (off, len) = (i * seg, seg.min(size - i * seg));
            let (s, e) = (start.max(off), end.min(off + len));
            match cache.get_in_memory(&segment_key(&id, i as u32)) {
                Some(Value::Bytes(b)) if b.len() as u64 == len => {
                    let part = b.slice((s - off) as usize..(e - off) as usize);
                    Box::pin(futures_util::stream::once(async move { Ok(part) })) as ByteStream
                }
                _ => me.chunk_stream(chunks.clone(), copy, s, e, keep),
            }
        }))
    }

    /// Copies a file into its segments (memory only), then drops its chunks from memory.
    /// Gives up, leaving what it stored, when a chunk cannot be read.
    async fn assemble_segments(
        self: Arc<Self>,
        chunks: Arc<Vec<ManifestChunk>>,
        size: u64,
        id: [u8; 16],
    ) {
        let cache = &self.ctx.store.cache;
        let mut parts = self.chunk_stream(chunks.clone(), None, 0, size, Placement::Both);
        let mut segment = Vec::with_capacity(SEGMENT.min(size as usize));
        let mut i = 0u32;
        let mut complete = true;
        while let Some(part) = parts.next().await {
            let Ok(mut part) = part else {
                complete = false;
                break;
            };
            while !part.is_empty() {
                let take = (SEGMENT - segment.len()).min(part.len());
                segment.extend_from_slice(&part.split_to(take));
                if segment.len() == SEGMENT {
                    let full = std::mem::replace(&mut segment, Vec::with_capacity(SEGMENT));
                    cache.insert_in_memory(segment_key(&id, i), Value::Bytes(full.into()));
                    i += 1;
                }
            }
        }
        if complete {
            if !segment.is_empty() {
                // The last segment, copied to its size (its buffer has room for a whole one).
                let last = if segment.capacity() > segment.len() {
                    Bytes::copy_from_slice(&segment)
                } else {
                    segment.into()
                };
                cache.insert_in_memory(segment_key(&id, i), Value::Bytes(last));
            }
            self.forget_chunks_in_memory(&chunks);
            self.ctx.metrics.assembled.inc();
        }
        self.assembling.lock().unwrap().remove(&id);
    }

    /// The whole file, read from its chunks (those fetched are stored on the SSD tier only:
    /// memory keeps the file assembled); the error of the first that cannot be read.
    async fn read_all(
        self: &Arc<Self>,
        chunks: &Arc<Vec<ManifestChunk>>,
        size: u64,
    ) -> Result<Bytes, FetchError> {
        let mut all = Vec::with_capacity(size as usize);
        let mut parts = self.chunks_to_assemble(chunks.clone());
        while let Some(p) = parts.next().await {
            all.extend_from_slice(&p.map_err(FetchError::of_stream)?);
        }
        Ok(Bytes::from(all))
    }

    /// Chunk `c` cut from its file's assembled `copy`, if memory holds it. A chunk may be
    /// looked up just after the copy was made and the chunks left memory (and before the SSD
    /// tier finished writing them): it is not fetched again.
    pub(crate) fn cut_from_assembled(&self, copy: Assembled, c: &ManifestChunk) -> Option<Bytes> {
        let cache = &self.ctx.store.cache;
        let (from, to) = (c.offset, c.offset + u64::from(c.size));
        if from >= to {
            // No bytes (a manifest's chunks are never empty; whatever an origin says).
            return None;
        }
        match copy {
            Assembled::Inline(key) => {
                let Some(Value::Meta(m)) = cache.get_in_memory(&key) else {
                    return None;
                };
                let BodyRef::Inline(b) = &m.body else {
                    return None;
                };
                // The path's stored response may be another version by now.
                let part = b.get(from as usize..to as usize)?;
                (ChunkHash::of(part) == c.hash).then(|| b.slice(from as usize..to as usize))
            }
            Assembled::Segments(id) => {
                let seg = SEGMENT as u64;
                let mut out = Vec::new();
                for i in from / seg..=(to - 1) / seg {
                    let Some(Value::Bytes(b)) = cache.get_in_memory(&segment_key(&id, i as u32))
                    else {
                        return None;
                    };
                    let off = i * seg;
                    let part =
                        b.get((from.max(off) - off) as usize..(to.min(off + seg) - off) as usize)?;
                    if from >= off && to <= off + seg {
                        // Within one segment: no copy.
                        return Some(b.slice_ref(part));
                    }
                    out.extend_from_slice(part);
                }
                Some(Bytes::from(out))
            }
        }
    }

    /// Whether the stored response `found` may be served: a file held whole (inline) that
    /// came from the SSD tier must hash to its `ETag`, the file's blake3. One that does not is
    /// counted as a corrupt chunk and removed.
    pub fn intact(&self, found: &Found) -> bool {
        let BodyRef::Inline(b) = &found.meta.body else {
            return true;
        };
        if found.tier != Tier::Disk {
            return true;
        }
        let etag = found.meta.headers.get(header::ETAG);
        if etag.is_some_and(|e| e.as_bytes() == ChunkHash::of(b).etag().as_bytes()) {
            return true;
        }
        self.ctx.metrics.corrupt_chunks.inc();
        tracing::error!(path = %found.meta.path, "SSD tier returned a corrupt file; refetching");
        self.ctx.store.cache.remove(&found.key);
        false
    }

    /// The file's bytes are held assembled: its chunks leave the memory tier.
    fn forget_chunks_in_memory(&self, chunks: &[ManifestChunk]) {
        for c in chunks {
            self.ctx.store.cache.forget_in_memory(&Key(c.hash.0));
        }
    }
}

/// The id of the assembled copy of a file made of `chunks` (its segments are
/// [`segment_key`]`(id, i)`): derived from the chunks' addresses and sizes, so it names the
/// content, whatever path or version serves it.
pub fn assembly_id(chunks: &[ManifestChunk]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"assembled");
    for c in chunks {
        h.update(&c.hash.0);
        h.update(&c.size.to_le_bytes());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}
