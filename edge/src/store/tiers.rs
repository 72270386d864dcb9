//! The edge's two cache tiers: memory and SSD, one foyer hybrid cache holding every
//! [`Value`] under its [`Key`].

use std::path::Path;
use std::sync::Arc;

use cached::{Cached, TimedSizedCache};
use foyer::{
    BlockEngineConfig, DeviceBuilder, EvictionConfig, FsDeviceBuilder, Hint, HybridCache,
    HybridCacheBuilder, HybridCachePolicy, HybridCacheProperties, LfuConfig, Load, Location,
    PsyncIoEngineConfig, RecoverMode, S3FifoConfig, Source,
};

use crate::basics::clock::now_ms;
use crate::basics::config::Policy;
use crate::basics::metrics::Metrics;
use crate::store::advice::{Advice, Target};
use crate::store::entry::{Key, Placement, SEGMENT, Value, weigh};

/// foyer's properties for an entry stored as `advice` says.
fn properties(advice: Advice) -> HybridCacheProperties {
    let location = match advice.target {
        Target::Memory => Location::InMem,
        Target::Disk => Location::OnDisk,
        Target::Both => Location::Default,
    };
    let hint = if advice.low_priority {
        Hint::Low
    } else {
        Hint::Normal
    };
    HybridCacheProperties::default()
        .with_location(location)
        .with_hint(hint)
}

/// Shards of a memory tier of `bytes`: one per 64 MiB, at most 8. Each shard evicts on its
/// own, so a small tier cut in eight is eight smaller caches: on a CDN trace at 8 MiB, one
/// S3-FIFO held 78.1 % of requests and eight shards 77.1 % (bench/HISTORY.md). A large tier
/// gets the shards that spread its locks.
pub fn memory_shards(bytes: usize) -> usize {
    (bytes >> 26).clamp(1, 8)
}

/// The memory tier's S3-FIFO: a probationary queue of 5 % of the tier (foyer's default is
/// 10 %). Simulated on a published CDN trace at 2–32 MiB and on Zipf 0.8 at 1 % and 5 % of
/// the catalogue, it held 0.0–0.5 points more requests than the default at every size, and
/// no other setting of the queue, ghost and threshold sizes tried did at all of them
/// (bench/HISTORY.md).
pub fn s3fifo() -> S3FifoConfig {
    S3FifoConfig {
        small_queue_capacity_ratio: 0.05,
        ..S3FifoConfig::default()
    }
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

    /// The slower of two tiers (a lookup that touched the SSD counts as an SSD hit).
    pub fn slower(self, other: Tier) -> Tier {
        if self == Tier::Disk || other == Tier::Disk {
            Tier::Disk
        } else {
            Tier::Memory
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
    /// Recent removals (key → time in ms), the newest [`REMEMBER_REMOVALS`] for up to
    /// [`REMEMBER_REMOVALS_FOR`]. foyer's removal from the SSD tier is queued, and a copy
    /// still waiting to be written may be found after it; a stored response older than its
    /// key's removal is treated as gone. A std mutex: map operations only.
    removed: Arc<std::sync::Mutex<TimedSizedCache<Key, u64>>>,
    /// Entries stored in the memory tier so far (each store that may displace others).
    memory_inserts: Arc<std::sync::atomic::AtomicU64>,
    /// `tessera_edge_ssd_errors_total`, by operation.
    ssd_errors: prometheus::IntCounterVec,
}

/// How long removals are remembered: far longer than foyer's write queue takes to drain.
const REMEMBER_REMOVALS_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// How many removals are remembered at most (the oldest are forgotten first), so a stream
/// of removals (404s, purges) costs bounded memory and constant time each.
const REMEMBER_REMOVALS: usize = 100_000;

impl Cache {
    /// Opens the cache: `memory` bytes in RAM, `disk` bytes in files under `dir` (recovered
    /// from an earlier run when present), every block of them allocated at once. When the
    /// filesystem has no room for them the cache opens in memory only (an error logged and
    /// counted); the files stay for a later start. Errors and the SSD tier's size go to
    /// `metrics`.
    pub async fn open(
        dir: &Path,
        memory: usize,
        disk: usize,
        policy: Policy,
        metrics: &Metrics,
    ) -> Result<Cache, CacheError> {
        let open_err = |source| CacheError::Open {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(foyer::Error::io_error(e)))?;
        let mut hybrid = Self::build(dir, memory, disk, policy, metrics)
            .await
            .map_err(open_err)?;
        let mut ssd_bytes = disk;
        if disk > 0
            && let Err(e) = allocate_files(dir)
        {
            metrics.ssd_errors.with_label_values(&["allocate"]).inc();
            tracing::error!(
                dir = %dir.display(),
                bytes = disk,
                error = %e,
                "no room for the SSD tier: serving from memory only (free space, or lower --disk, and restart)"
            );
            if let Err(e) = hybrid.close().await {
                tracing::warn!(error = %e, "closing the SSD cache failed");
            }
            hybrid = Self::build(dir, memory, 0, policy, metrics)
                .await
                .map_err(open_err)?;
            ssd_bytes = 0;
        }
        metrics.ssd_bytes.set(ssd_bytes as i64);
        Ok(Cache {
            hybrid,
            removed: Arc::new(std::sync::Mutex::new(
                TimedSizedCache::with_size_and_lifespan(REMEMBER_REMOVALS, REMEMBER_REMOVALS_FOR),
            )),
            memory_inserts: Default::default(),
            ssd_errors: metrics.ssd_errors.clone(),
        })
    }

    async fn build(
        dir: &Path,
        memory: usize,
        disk: usize,
        policy: Policy,
        metrics: &Metrics,
    ) -> Result<HybridCache<Key, Value>, foyer::Error> {
        let eviction: EvictionConfig = match policy {
            Policy::WTinyLfu => LfuConfig::default().into(),
            Policy::S3Fifo => s3fifo().into(),
        };
        let storage = HybridCacheBuilder::new()
            .with_name("tessera-edge")
            .with_metrics_registry(Box::new(metrics.foyer.clone()))
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(true)
            .memory(memory)
            .with_shards(memory_shards(memory))
            .with_eviction_config(eviction)
            .with_weighter(|_k: &Key, v: &Value| weigh(v))
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
                .build()?;
            storage
                .with_io_engine_config(PsyncIoEngineConfig::new())
                .with_engine_config(
                    BlockEngineConfig::new(device)
                        .with_block_size(block)
                        .with_tombstone_log(true),
                )
        };
        storage.build().await
    }

    /// Looks `key` up in memory, then on SSD (a disk hit is promoted to memory by foyer).
    /// An I/O error reading the SSD tier is logged and reads as a miss.
    pub async fn get(&self, key: &Key) -> Option<(Value, Tier)> {
        // A memory hit needs none of the hybrid lookup's machinery.
        if let Some(e) = self.hybrid.memory().get(key) {
            let value = e.value().clone();
            drop(e);
            return Some(self.kept_where_advised(key, value, Tier::Memory));
        }
        match self.hybrid.get(key).await {
            Ok(Some(e)) => {
                let tier = match e.source() {
                    Source::Disk => Tier::Disk,
                    _ => Tier::Memory,
                };
                let value = e.value().clone();
                drop(e);
                Some(self.kept_where_advised(key, value, tier))
            }
            Ok(None) => None,
            Err(e) => self.read_failed(e),
        }
    }

    /// An SSD read error: counted, logged, and a miss.
    fn read_failed<T>(&self, e: impl std::fmt::Display) -> Option<T> {
        self.ssd_errors.with_label_values(&["read"]).inc();
        tracing::warn!(error = %e, "SSD cache read failed; treated as a miss");
        None
    }

    /// foyer brings what it reads from the SSD tier (or from its queue of writes to it) into
    /// memory: a response advised to the SSD tier only goes back out, and is said to come
    /// from the SSD tier, where it is kept.
    fn kept_where_advised(&self, key: &Key, value: Value, tier: Tier) -> (Value, Tier) {
        match &value {
            Value::Meta(m) if m.placement == Placement::Disk => {
                self.hybrid.memory().remove(key);
                (value, Tier::Disk)
            }
            _ => (value, tier),
        }
    }

    /// The entry under `key`, read as bytes kept where `placement` says: [`Cache::get`] when
    /// memory may keep them, else from memory or the SSD tier without bringing them into
    /// memory.
    pub async fn get_as(&self, key: &Key, placement: Placement) -> Option<(Value, Tier)> {
        if matches!(placement, Placement::Both | Placement::Memory) {
            return self.get(key).await;
        }
        if let Some(e) = self.hybrid.memory().get(key) {
            return Some((e.value().clone(), Tier::Memory));
        }
        match self.hybrid.storage().load(key).await {
            Ok(Load::Entry { value, .. }) => Some((value, Tier::Disk)),
            Ok(Load::Piece { piece, .. }) => Some((piece.value().clone(), Tier::Disk)),
            Ok(_) => None,
            Err(e) => self.read_failed(e),
        }
    }

    /// Stores `value` under `key` where `placement` says.
    pub fn insert_placed(&self, key: Key, value: Value, placement: Placement) {
        match placement {
            Placement::Both => self.insert(key, value),
            Placement::Memory => self.insert_in_memory(key, value),
            Placement::Disk => self.insert_on_disk(key, value),
            Placement::Nowhere => {}
        }
    }

    /// A group of stores whose SSD writes are handed to the tier's writer together (see
    /// [`DiskBatch`]).
    pub fn disk_batch(&self) -> DiskBatch<'_> {
        DiskBatch {
            cache: self,
            held: Vec::new(),
            bytes: 0,
        }
    }

    /// Stores `value` under `key` in memory and (written behind) on SSD.
    pub fn insert(&self, key: Key, value: Value) {
        self.forget_removal(&key);
        self.counted();
        self.hybrid.insert(key, value);
    }

    /// A store after a removal supersedes it (even within the same millisecond).
    fn forget_removal(&self, key: &Key) {
        let mut removed = self.removed.lock().unwrap();
        if removed.cache_size() > 0 {
            removed.cache_remove(key);
        }
    }

    /// Stores `value` under `key` where `advice` says (`None`: as [`Cache::insert`]).
    pub fn insert_advised(&self, key: Key, value: Value, advice: Option<Advice>) {
        let Some(a) = advice else {
            return self.insert(key, value);
        };
        self.forget_removal(&key);
        if a.admit && a.target != Target::Disk {
            self.counted();
        }
        self.hybrid
            .insert_with_properties(key, value, properties(a));
    }

    /// Whether `key` is probably held (may say yes for an entry that is gone; the caller
    /// copes with a later miss).
    pub fn contains(&self, key: &Key) -> bool {
        self.hybrid.contains(key)
    }

    /// Stores `value` under `key` on the SSD tier only (written behind; nothing with
    /// `--disk 0`): bytes memory holds in another form.
    pub fn insert_on_disk(&self, key: Key, value: Value) {
        self.forget_removal(&key);
        self.hybrid.insert_with_properties(
            key,
            value,
            HybridCacheProperties::default().with_location(Location::OnDisk),
        );
    }

    /// Stores `value` under `key` in memory only (a copy the SSD tier holds in another form).
    pub fn insert_in_memory(&self, key: Key, value: Value) {
        self.forget_removal(&key);
        self.counted();
        self.hybrid.insert_with_properties(
            key,
            value,
            HybridCacheProperties::default().with_location(Location::InMem),
        );
    }

    /// The memory tier's entry under `key`, never touching the SSD tier.
    pub fn get_in_memory(&self, key: &Key) -> Option<Value> {
        self.hybrid.memory().get(key).map(|e| e.value().clone())
    }

    /// Whether the memory tier holds `key`.
    pub fn in_memory(&self, key: &Key) -> bool {
        self.hybrid.memory().contains(key)
    }

    /// Drops `key` from the memory tier only (its bytes are held there in another entry; the
    /// SSD tier's copy, if any, stays).
    pub fn forget_in_memory(&self, key: &Key) {
        self.hybrid.memory().remove(key);
    }

    /// Removes `key` from both tiers.
    pub fn remove(&self, key: &Key) {
        self.removed.lock().unwrap().cache_set(*key, now_ms());
        self.hybrid.remove(key);
    }

    /// Whether `key` was removed at or after `stored_at_ms` (so what was found under it is a
    /// copy the removal has not reached yet).
    pub fn removed_since(&self, key: &Key, stored_at_ms: u64) -> bool {
        let mut removed = self.removed.lock().unwrap();
        removed.cache_size() > 0 && removed.cache_get(key).is_some_and(|at| *at >= stored_at_ms)
    }

    fn counted(&self) {
        self.memory_inserts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Entries stored in the memory tier since it opened: what made room by evicting.
    pub fn memory_inserts(&self) -> u64 {
        self.memory_inserts
            .load(std::sync::atomic::Ordering::Relaxed)
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

/// Gives every file of the SSD tier all its blocks now (foyer creates them sparse), so a
/// filesystem that fills up later cannot fail the tier's writes: foyer's block engine does
/// not survive a failed write (0.22: its flusher and tombstone log panic, and the tier stops
/// storing).
fn allocate_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("foyer-storage-")
        {
            continue;
        }
        let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
        let len = file.metadata()?.len();
        match fs4::fs_std::FileExt::allocate(&file, len) {
            // A filesystem without fallocate: the files stay sparse, as foyer made them.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot give the SSD tier's files their blocks at start; a full filesystem will stop the tier");
                return Ok(());
            }
            other => other?,
        }
    }
    Ok(())
}

/// Stores made one after another (the chunks of one origin batch): each is in memory at once,
/// and their SSD copies go to the tier's writer a group at a time. foyer's flusher writes
/// whatever has queued whenever its last write finished, so entries that arrive one by one
/// are written a few at a time, two `pwrite`s and a blocking-pool hand-off each (2,216
/// `pwrite`s for a 64 MiB miss); handed over together they share one buffer. Dropping the
/// batch hands over the rest.
pub struct DiskBatch<'a> {
    cache: &'a Cache,
    /// Entries stored in memory whose SSD copy is not handed over yet.
    held: Vec<foyer::CacheEntry<Key, Value, foyer::DefaultHasher, HybridCacheProperties>>,
    bytes: usize,
}

impl DiskBatch<'_> {
    /// Bytes of entries after which they are handed to the SSD tier's writer.
    const GROUP_BYTES: usize = 1 << 20;

    /// Stores `value` under `key` where `placement` says; with [`Placement::Both`], the
    /// SSD copy waits for the group.
    pub fn insert_placed(&mut self, key: Key, value: Value, placement: Placement) {
        if placement != Placement::Both {
            return self.cache.insert_placed(key, value, placement);
        }
        let cache = self.cache;
        cache.forget_removal(&key);
        cache.counted();
        self.bytes += weigh(&value);
        self.held.push(cache.hybrid.memory().insert(key, value));
        if self.bytes >= Self::GROUP_BYTES {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        let storage = self.cache.hybrid.storage();
        for e in self.held.drain(..) {
            storage.enqueue(e.piece(), false);
        }
        self.bytes = 0;
    }
}

impl std::fmt::Debug for DiskBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBatch")
            .field("held", &self.held.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Drop for DiskBatch<'_> {
    fn drop(&mut self) {
        self.hand_over();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn a_cache_without_disk_keeps_entries_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20, 0, Policy::S3Fifo, &Metrics::default())
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

    /// A [`DiskBatch`] stores in memory at once and writes every entry to the SSD tier, those
    /// of a full group and, when dropped, the rest.
    #[tokio::test]
    async fn a_disk_batch_writes_every_entry_to_the_ssd_tier() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(
            dir.path(),
            64 << 20,
            64 << 20,
            Policy::S3Fifo,
            &Metrics::default(),
        )
        .await
        .unwrap();
        let key = |i: u32| Key::derive("t", &[&i.to_le_bytes()]);
        let value = |i: u32| Value::Bytes(Bytes::from(vec![i as u8; 48 << 10]));
        // 40 entries of 48 KiB: one full group of 1 MiB handed over while storing, the rest
        // when the batch is dropped.
        let mut batch = cache.disk_batch();
        for i in 0..40 {
            batch.insert_placed(key(i), value(i), Placement::Both);
            assert!(cache.in_memory(&key(i)), "in memory at once");
        }
        drop(batch);
        cache.hybrid.storage().wait().await;
        for i in 0..40 {
            cache.forget_in_memory(&key(i));
            let (v, tier) = cache.get(&key(i)).await.expect("on the SSD tier");
            assert_eq!(tier, Tier::Disk, "entry {i}");
            assert!(matches!(v, Value::Bytes(b) if b.len() == 48 << 10 && b[0] == i as u8));
        }
    }
}
