//! The edge's two cache tiers: memory and SSD, one foyer hybrid cache.
//!
//! Everything the edge keeps is an entry of this one cache, addressed by a 32-byte [`Key`]:
//! - a chunk of a Tessera-origin file, under its own blake3 (content addressed: two files or
//!   two versions that share a chunk share its entry);
//! - a stored response's description, [`Meta`], under a key derived from the request (its
//!   body inline when small, else in segments or, in origin mode, as the manifest's chunks);
//! - a segment of a large upstream-mode body;
//! - a `Vary` index: the request header names that select among a URL's stored variants.
//!
//! # On-disk value format (version 1)
//! foyer stores each [`Value`] as `tag: u8` followed by the tag's payload:
//! - `1` bytes (chunk or segment): the raw bytes;
//! - `2` meta: `json_len: u32 LE`, the JSON of [`MetaRecord`], then the inline body bytes;
//! - `3` vary index: the JSON list of header names.
//!
//! An entry that fails to decode is a miss (foyer drops it), never an error to a client. A
//! change of format bumps the tag numbers, so old entries read as misses after an upgrade.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, EvictionConfig, FsDeviceBuilder, Hint, HybridCache,
    HybridCacheBuilder, HybridCachePolicy, HybridCacheProperties, LfuConfig, Location,
    PsyncIoEngineConfig, RecoverMode, S3FifoConfig, Source,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tessera_origin_proto::ManifestChunk;

use crate::freshness::Freshness;

/// The address of a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// A key for `parts` in the namespace `tag`, so keys of different kinds never collide.
    pub fn derive(tag: &str, parts: &[&[u8]]) -> Key {
        let mut h = blake3::Hasher::new();
        h.update(tag.as_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Key(*h.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

/// Which tiers an entry is stored in (eviction advice; the built-in policy is `Both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Where {
    /// Memory only: never written to SSD.
    Memory,
    /// SSD only: not kept in memory at first (foyer may still promote it on a later hit).
    Disk,
    /// Memory, written behind to SSD.
    #[default]
    Both,
}

/// How a response is stored, as an eviction plugin advised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Store it at all.
    pub admit: bool,
    pub tier: Where,
    /// A freshness lifetime replacing the computed one, seconds.
    pub ttl_secs: Option<u64>,
    /// Evicted from memory before normal entries (where the policy supports hints).
    pub low_priority: bool,
}

impl Placement {
    fn properties(self) -> HybridCacheProperties {
        let location = match self.tier {
            Where::Memory => Location::InMem,
            Where::Disk => Location::OnDisk,
            Where::Both => Location::Default,
        };
        let hint = if self.low_priority {
            Hint::Low
        } else {
            Hint::Normal
        };
        HybridCacheProperties::default()
            .with_location(location)
            .with_hint(hint)
    }
}

impl Code for Key {
    fn encode(&self, writer: &mut impl std::io::Write) -> foyer::Result<()> {
        writer.write_all(&self.0).map_err(foyer::Error::io_error)
    }
    fn decode(reader: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut k = [0u8; 32];
        reader.read_exact(&mut k).map_err(foyer::Error::io_error)?;
        Ok(Key(k))
    }
    fn estimated_size(&self) -> usize {
        32
    }
}

/// Where a stored response's body lives.
#[derive(Debug, Clone)]
pub enum BodyRef {
    /// In the [`Meta`] entry itself (small bodies: one lookup serves the hit).
    Inline(Bytes),
    /// In `count` segments of [`SEGMENT`] bytes under [`segment_key`]`(id, i)`.
    Segments { id: [u8; 16], count: u32 },
    /// The chunks of a Tessera-origin file, each under its blake3.
    Chunks(Arc<Vec<ManifestChunk>>),
}

/// Size of a body segment in upstream mode.
pub const SEGMENT: usize = 1 << 20;
/// Bodies up to this size are stored inline in their [`Meta`].
pub const INLINE_MAX: usize = 256 << 10;

/// The key of segment `i` of the body stored under `id`.
pub fn segment_key(id: &[u8; 16], i: u32) -> Key {
    Key::derive("seg", &[id, &i.to_le_bytes()])
}

/// A stored response: what the cache needs to serve, judge and purge it.
#[derive(Debug, Clone)]
pub struct Meta {
    pub status: u16,
    /// End-to-end headers of the representation as stored (no hop-by-hop, no `Age`).
    pub headers: HeaderMap,
    pub freshness: Freshness,
    /// When this entry was stored, in milliseconds since the epoch: purges (bans) compare
    /// against it.
    pub stored_at_ms: u64,
    /// The request path this entry answers (purge by path and prefix match it).
    pub path: String,
    /// `Surrogate-Key` values of the response (purge by key).
    pub surrogate_keys: Vec<String>,
    /// Length of the body in bytes.
    pub size: u64,
    pub body: BodyRef,
}

/// The serialised form of [`Meta`], without the inline body.
#[derive(Serialize, Deserialize)]
struct MetaRecord {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    lifetime: u64,
    initial_age: u64,
    response_time: u64,
    must_revalidate: bool,
    no_cache: bool,
    immutable: bool,
    swr: u64,
    sie: u64,
    stored_at_ms: u64,
    path: String,
    surrogate_keys: Vec<String>,
    size: u64,
    segments: Option<([u8; 16], u32)>,
    chunks: Option<Vec<ManifestChunk>>,
}

/// One cache entry.
#[derive(Debug, Clone)]
pub enum Value {
    /// A chunk (content addressed) or a body segment.
    Bytes(Bytes),
    Meta(Arc<Meta>),
    /// The header names a URL's variants are selected by.
    Vary(Arc<Vec<String>>),
}

impl Value {
    fn weight(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len() + 64,
            Value::Meta(m) => {
                let inline = match &m.body {
                    BodyRef::Inline(b) => b.len(),
                    BodyRef::Chunks(c) => c.len() * 48,
                    BodyRef::Segments { .. } => 0,
                };
                inline + 512 + m.headers.len() * 64
            }
            Value::Vary(v) => 64 + v.iter().map(|s| s.len() + 24).sum::<usize>(),
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> foyer::Error {
    foyer::Error::io_error(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        e.to_string(),
    ))
}

impl Code for Value {
    fn encode(&self, w: &mut impl std::io::Write) -> foyer::Result<()> {
        let io = foyer::Error::io_error;
        match self {
            Value::Bytes(b) => {
                w.write_all(&[1]).map_err(io)?;
                w.write_all(b).map_err(io)
            }
            Value::Meta(m) => {
                let (segments, chunks, inline) = match &m.body {
                    BodyRef::Inline(b) => (None, None, b.clone()),
                    BodyRef::Segments { id, count } => (Some((*id, *count)), None, Bytes::new()),
                    BodyRef::Chunks(c) => (None, Some(c.as_ref().clone()), Bytes::new()),
                };
                let f = &m.freshness;
                let rec = MetaRecord {
                    status: m.status,
                    headers: m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    lifetime: f.lifetime,
                    initial_age: f.initial_age,
                    response_time: f.response_time,
                    must_revalidate: f.must_revalidate,
                    no_cache: f.no_cache,
                    immutable: f.immutable,
                    swr: f.stale_while_revalidate,
                    sie: f.stale_if_error,
                    stored_at_ms: m.stored_at_ms,
                    path: m.path.clone(),
                    surrogate_keys: m.surrogate_keys.clone(),
                    size: m.size,
                    segments,
                    chunks,
                };
                let json = serde_json::to_vec(&rec).map_err(io_err)?;
                w.write_all(&[2]).map_err(io)?;
                w.write_all(&(json.len() as u32).to_le_bytes())
                    .map_err(io)?;
                w.write_all(&json).map_err(io)?;
                w.write_all(&inline).map_err(io)
            }
            Value::Vary(names) => {
                w.write_all(&[3]).map_err(io)?;
                let json = serde_json::to_vec(names.as_ref()).map_err(io_err)?;
                w.write_all(&json).map_err(io)
            }
        }
    }

    fn decode(r: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut all = Vec::new();
        r.read_to_end(&mut all).map_err(foyer::Error::io_error)?;
        let (&tag, rest) = all.split_first().ok_or_else(|| io_err("empty entry"))?;
        match tag {
            1 => Ok(Value::Bytes(Bytes::copy_from_slice(rest))),
            2 => {
                if rest.len() < 4 {
                    return Err(io_err("short meta entry"));
                }
                let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                let json = rest
                    .get(4..4 + n)
                    .ok_or_else(|| io_err("short meta entry"))?;
                let rec: MetaRecord = serde_json::from_slice(json).map_err(io_err)?;
                let inline = Bytes::copy_from_slice(&rest[4 + n..]);
                let mut headers = HeaderMap::new();
                for (k, v) in rec.headers {
                    let k = HeaderName::from_bytes(k.as_bytes()).map_err(io_err)?;
                    let v = HeaderValue::from_bytes(&v).map_err(io_err)?;
                    headers.append(k, v);
                }
                let body = match (rec.segments, rec.chunks) {
                    (Some((id, count)), _) => BodyRef::Segments { id, count },
                    (None, Some(c)) => BodyRef::Chunks(Arc::new(c)),
                    (None, None) => BodyRef::Inline(inline),
                };
                Ok(Value::Meta(Arc::new(Meta {
                    status: rec.status,
                    headers,
                    freshness: Freshness {
                        lifetime: rec.lifetime,
                        initial_age: rec.initial_age,
                        response_time: rec.response_time,
                        must_revalidate: rec.must_revalidate,
                        no_cache: rec.no_cache,
                        immutable: rec.immutable,
                        stale_while_revalidate: rec.swr,
                        stale_if_error: rec.sie,
                    },
                    stored_at_ms: rec.stored_at_ms,
                    path: rec.path,
                    surrogate_keys: rec.surrogate_keys,
                    size: rec.size,
                    body,
                })))
            }
            3 => Ok(Value::Vary(Arc::new(
                serde_json::from_slice(rest).map_err(io_err)?,
            ))),
            t => Err(io_err(format!("unknown entry tag {t}"))),
        }
    }

    fn estimated_size(&self) -> usize {
        self.weight()
    }
}

/// The memory tier's eviction policy (both are foyer's; see `bench/HISTORY.md` for the
/// measurement that chose the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// W-TinyLFU: a small LRU window in front of a frequency-filtered segmented LRU.
    WTinyLfu,
    /// S3-FIFO: small and main FIFO queues with a ghost queue. The default: on Zipf
    /// workloads it ties W-TinyLFU's hit ratio (within 0.3 points, both 5–11 points above
    /// LRU; `tessera-bench policy`) and a hit only bumps a counter, with no list to relink.
    #[default]
    S3Fifo,
}

/// Which tier served a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// Errors opening the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The SSD tier could not be opened (folder missing, not writable, too small).
    #[error("cannot open the SSD cache in {dir}: {source}")]
    Open {
        dir: String,
        #[source]
        source: foyer::Error,
    },
}

/// The two tiers. Cheap to clone; safe to use from any task.
#[derive(Clone, Debug)]
pub struct Cache {
    hybrid: HybridCache<Key, Value>,
    /// Recent removals (key → time in ms). foyer's removal from the SSD tier is queued, and
    /// a copy still waiting to be written may be found after it; a stored response older
    /// than its key's removal is treated as gone. A std mutex: map operations only.
    removed: Arc<std::sync::Mutex<std::collections::HashMap<Key, u64>>>,
}

/// How long removals are remembered: far longer than foyer's write queue takes to drain.
const REMEMBER_REMOVALS_MS: u64 = 10 * 60 * 1000;

impl Cache {
    /// Opens the cache: `memory` bytes in RAM, `disk` bytes in files under `dir` (recovered
    /// from an earlier run when present).
    pub async fn open(
        dir: &Path,
        memory: usize,
        disk: usize,
        policy: Policy,
    ) -> Result<Cache, CacheError> {
        let eviction: EvictionConfig = match policy {
            Policy::WTinyLfu => LfuConfig::default().into(),
            Policy::S3Fifo => S3FifoConfig::default().into(),
        };
        let open_err = |source| CacheError::Open {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(foyer::Error::io_error(e)))?;
        let storage = HybridCacheBuilder::new()
            .with_name("tessera-edge")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(true)
            .memory(memory)
            .with_shards(8)
            .with_eviction_config(eviction)
            .with_weighter(|_k: &Key, v: &Value| 32 + v.weight())
            .storage()
            .with_recover_mode(RecoverMode::Quiet);
        // `disk` 0: memory only (foyer's no-op storage engine), like Varnish with malloc.
        let storage = if disk == 0 {
            storage
        } else {
            // Blocks must hold the largest entry (a segment plus framing); 16 blocks at
            // least, so eviction of one block frees a small share of the tier.
            let block = (disk / 16).clamp(2 * SEGMENT + 4096, 64 << 20);
            let device = FsDeviceBuilder::new(dir)
                .with_capacity(disk.max(16 * block))
                .build()
                .map_err(open_err)?;
            storage
                .with_io_engine_config(PsyncIoEngineConfig::new())
                .with_engine_config(
                    BlockEngineConfig::new(device)
                        .with_block_size(block)
                        .with_tombstone_log(true),
                )
        };
        let hybrid = storage.build().await.map_err(open_err)?;
        Ok(Cache {
            hybrid,
            removed: Default::default(),
        })
    }

    /// Looks `key` up in memory, then on SSD (a disk hit is promoted to memory by foyer).
    /// An I/O error reading the SSD tier is logged and reads as a miss.
    pub async fn get(&self, key: &Key) -> Option<(Value, Tier)> {
        // A memory hit needs none of the hybrid lookup's machinery.
        if let Some(e) = self.hybrid.memory().get(key) {
            return Some((e.value().clone(), Tier::Memory));
        }
        match self.hybrid.get(key).await {
            Ok(Some(e)) => {
                let tier = match e.source() {
                    Source::Disk => Tier::Disk,
                    _ => Tier::Memory,
                };
                Some((e.value().clone(), tier))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "SSD cache read failed; treated as a miss");
                None
            }
        }
    }

    /// Stores `value` under `key` in memory and (written behind) on SSD.
    pub fn insert(&self, key: Key, value: Value) {
        self.forget_removal(&key);
        self.hybrid.insert(key, value);
    }

    /// A store after a removal supersedes it (even within the same millisecond).
    fn forget_removal(&self, key: &Key) {
        let mut removed = self.removed.lock().unwrap();
        if !removed.is_empty() {
            removed.remove(key);
        }
    }

    /// Stores `value` under `key` where `placement` says (`None`: as [`Cache::insert`]).
    pub fn insert_placed(&self, key: Key, value: Value, placement: Option<Placement>) {
        let Some(p) = placement else {
            return self.insert(key, value);
        };
        self.forget_removal(&key);
        self.hybrid
            .insert_with_properties(key, value, p.properties());
    }

    /// Whether `key` is probably held (may say yes for an entry that is gone; the caller
    /// copes with a later miss).
    pub fn contains(&self, key: &Key) -> bool {
        self.hybrid.contains(key)
    }

    /// Looks `key` up; on a miss runs `fetch` and stores its value. Concurrent calls for one
    /// key share one `fetch` (foyer coalesces them). Returns where the value came from.
    pub async fn get_or_fetch<F>(&self, key: Key, fetch: F) -> Result<(Value, Source), foyer::Error>
    where
        F: std::future::Future<Output = anyhow::Result<Value>> + Send + 'static,
    {
        let e = self.hybrid.get_or_fetch(&key, move || fetch).await?;
        Ok((e.value().clone(), e.source()))
    }

    /// Removes `key` from both tiers.
    pub fn remove(&self, key: &Key) {
        let now = crate::proxy::now_ms();
        {
            let mut removed = self.removed.lock().unwrap();
            if removed.len() >= 100_000 {
                removed.retain(|_, at| now.saturating_sub(*at) < REMEMBER_REMOVALS_MS);
            }
            removed.insert(*key, now);
        }
        self.hybrid.remove(key);
    }

    /// Whether `key` was removed at or after `stored_at_ms` (so what was found under it is a
    /// copy the removal has not reached yet).
    pub fn removed_since(&self, key: &Key, stored_at_ms: u64) -> bool {
        let removed = self.removed.lock().unwrap();
        !removed.is_empty() && removed.get(key).is_some_and(|at| *at >= stored_at_ms)
    }

    /// Bytes in use in the memory tier.
    pub fn memory_usage(&self) -> usize {
        self.hybrid.memory().usage()
    }

    /// Bytes the memory tier may hold.
    pub fn memory_capacity(&self) -> usize {
        self.hybrid.memory().capacity()
    }

    /// Flushes the memory tier to SSD and closes the cache.
    pub async fn close(&self) {
        if let Err(e) = self.hybrid.close().await {
            tracing::warn!(error = %e, "closing the SSD cache failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_origin_proto::ChunkHash;

    fn meta(body: BodyRef) -> Meta {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-bin", HeaderValue::from_bytes(b"\xfe ok").unwrap());
        Meta {
            status: 200,
            headers,
            freshness: Freshness {
                lifetime: 60,
                initial_age: 1,
                response_time: 2,
                must_revalidate: true,
                no_cache: false,
                immutable: false,
                stale_while_revalidate: 3,
                stale_if_error: 4,
            },
            stored_at_ms: 5,
            path: "/a".into(),
            surrogate_keys: vec!["k1".into()],
            size: 5,
            body,
        }
    }

    fn roundtrip(v: &Value) -> Value {
        let mut buf = Vec::new();
        v.encode(&mut buf).unwrap();
        Value::decode(&mut &buf[..]).unwrap()
    }

    #[test]
    fn values_survive_encoding() {
        let Value::Meta(m) = roundtrip(&Value::Meta(Arc::new(meta(BodyRef::Inline(
            Bytes::from_static(b"hello"),
        ))))) else {
            panic!("not a meta")
        };
        assert_eq!(m.headers["x-bin"].as_bytes(), b"\xfe ok");
        assert_eq!(m.freshness.stale_if_error, 4);
        assert!(matches!(&m.body, BodyRef::Inline(b) if &b[..] == b"hello"));
        let chunk = ManifestChunk {
            hash: ChunkHash::of(b"x"),
            offset: 0,
            size: 1,
        };
        let Value::Meta(m) = roundtrip(&Value::Meta(Arc::new(meta(BodyRef::Chunks(Arc::new(
            vec![chunk],
        )))))) else {
            panic!("not a meta")
        };
        assert!(matches!(&m.body, BodyRef::Chunks(c) if c[0] == chunk));
        assert!(matches!(
            roundtrip(&Value::Bytes(Bytes::from_static(b"abc"))),
            Value::Bytes(b) if &b[..] == b"abc"
        ));
    }

    #[test]
    fn garbage_entries_do_not_decode() {
        for bad in [&b""[..], b"\x02\x05", b"\x02\xff\xff\x00\x00{}", b"\x09abc"] {
            assert!(Value::decode(&mut &bad[..]).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_cache_without_disk_keeps_entries_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20, 0, Policy::S3Fifo)
            .await
            .unwrap();
        let key = |i: u32| Key::derive("t", &[&i.to_le_bytes()]);
        // 4 MiB through a 1 MiB memory tier: the early entries are evicted, with nowhere
        // to go, and the last one is a memory hit.
        for i in 0..64 {
            cache.insert(key(i), Value::Bytes(Bytes::from(vec![i as u8; 64 << 10])));
        }
        let (v, tier) = cache.get(&key(63)).await.expect("the newest entry");
        assert_eq!(tier, Tier::Memory);
        assert!(matches!(v, Value::Bytes(b) if b.len() == 64 << 10 && b[0] == 63));
        assert!(
            cache.get(&key(0)).await.is_none(),
            "evicted entries are gone"
        );
        cache.hybrid.close().await.unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(files.is_empty(), "no SSD files: {files:?}");
    }
}
