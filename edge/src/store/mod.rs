//! Layer 2, the store: what the edge keeps and how it finds it. Entries and their documented
//! on-disk format ([`entry`]), the foyer tiers ([`tiers`]), purges as bans ([`bans`]) and
//! the eviction advice seam ([`advice`]). [`Store::lookup`] is the one lookup both backends'
//! requests go through: a `Vary` index followed to its variant, removals and purges applied.

pub mod advice;
pub mod bans;
pub mod entry;
pub mod headers;
pub mod tiers;

use std::sync::Arc;

use futures_util::StreamExt;
use http::HeaderMap;

use crate::basics::body::{BoxError, ByteStream};
use crate::store::bans::{BanVerdict, Bans};
use crate::store::entry::{BodyRef, Key, Meta, SEGMENT, Value, segment_key, variant_key};
use crate::store::tiers::{Cache, Tier};

/// The tiers and the purges that apply to them. Cheap to clone; safe to use from any task.
#[derive(Debug, Clone)]
pub struct Store {
    pub cache: Cache,
    pub bans: Bans,
}

/// A stored response found for a request.
#[derive(Debug, Clone)]
pub struct Found {
    pub meta: Arc<Meta>,
    /// The tier it came from (the slower one when a `Vary` index led to it).
    pub tier: Tier,
    /// The key it is stored under (a variant's, when the response varies).
    pub key: Key,
    /// What the purges say of it: `Keep` or `Stale` (a `Gone` entry is not found).
    pub verdict: BanVerdict,
}

impl Store {
    /// Looks up the stored response for `key`; `None` on a miss or when a purge removed it.
    /// Follows a `Vary` index to the variant `req` selects.
    pub async fn lookup(&self, key: &Key, req: &HeaderMap) -> Option<Found> {
        let primary = key;
        let (mut value, mut tier) = self.cache.get(key).await?;
        let mut key = *key;
        if let Value::Vary(names) = &value {
            let vkey = variant_key(&key, names, req);
            let (v, t) = self.cache.get(&vkey).await?;
            (value, tier, key) = (v, t.slower(tier), vkey);
        }
        let Value::Meta(meta) = value else {
            return None;
        };
        if self.cache.removed_since(primary, meta.stored_at_ms) {
            return None;
        }
        if let BodyRef::Segments { id, count } = &meta.body {
            // Segments are separate entries and may have been evicted on their own.
            for i in 0..*count {
                if !self.cache.contains(&segment_key(id, i)) {
                    return None;
                }
            }
        }
        let verdict = if self.bans.is_empty() {
            BanVerdict::Keep
        } else {
            self.bans.verdict(&meta)
        };
        if verdict == BanVerdict::Gone {
            self.cache.remove(&key);
            return None;
        }
        Some(Found {
            meta,
            tier,
            key,
            verdict,
        })
    }

    /// The bytes `start..end` of a body stored inline or in segments, as they are read; `None`
    /// for a body made of an origin's chunks or of slices (the backends read those).
    pub fn body_stream(&self, meta: &Meta, start: u64, end: u64) -> Option<ByteStream> {
        match &meta.body {
            BodyRef::Inline(b) => {
                let b = b.slice(start as usize..end as usize);
                Some(Box::pin(futures_util::stream::once(async move { Ok(b) })))
            }
            BodyRef::Segments { id, .. } => {
                let seg = SEGMENT as u64;
                let id = *id;
                let first = (start / seg) as u32;
                let last = ((end - 1) / seg) as u32;
                let cache = self.cache.clone();
                // Read where the body is kept (one advised to the SSD tier stays out of memory).
                let placement = meta.placement;
                Some(Box::pin(
                    futures_util::stream::iter(first..=last)
                        .map(move |i| {
                            let cache = cache.clone();
                            async move {
                                match cache.get_as(&segment_key(&id, i), placement).await {
                                    Some((Value::Bytes(b), _)) => Ok((i, b)),
                                    _ => Err(BoxError::from("a body segment left the cache")),
                                }
                            }
                        })
                        .buffered(4)
                        .map(move |r| {
                            r.map(|(i, b)| {
                                let off = i as u64 * seg;
                                let s = start.saturating_sub(off).min(b.len() as u64) as usize;
                                let e = (end - off).min(b.len() as u64) as usize;
                                b.slice(s..e)
                            })
                        }),
                ))
            }
            BodyRef::Chunks(_) | BodyRef::Slices { .. } => None,
        }
    }
}
