//! The chunk store of one origin node: pack files of compressed chunks, and a redb database
//! of manifests, chunk locations and reference counts.
//!
//! This module does blocking file I/O; async callers run it on a blocking thread.
//!
//! # Durability
//! An upload writes its new chunks to its own pack files and fsyncs them (and the packs
//! folder) before one redb transaction makes the manifest, the chunks' index entries and the
//! pack registrations visible together. A crash before that commit leaves only unregistered
//! pack files, which [`Store::open`] deletes; after it, everything the manifest names is on
//! disk.
//!
//! # Garbage and the upload race
//! A chunk whose reference count drops to 0 goes to the `garbage` table; [`Store::collect_garbage`]
//! removes it from the index unless an upload in flight has *pinned* it. An upload pins every
//! chunk it decides not to store because the index already has it, under the same lock that
//! the collector holds while it deletes, and unpins only after its own commit has raised the
//! chunk's reference count. So a chunk an upload is about to reference is never collected.
//! Chunks an upload stores itself are in its own unregistered packs, out of the collector's
//! reach. Packs whose records are all dead are deleted; packs more than half dead are
//! compacted (live records copied to a new pack).

pub mod cluster;
mod commit;
pub mod meta;
pub mod pack;
pub mod sync;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rayon::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTable, Table};
use serde::{Deserialize, Serialize};
use tessera_origin_proto::changes::{ChangeOp, ChangesReply};
use tessera_origin_proto::client::{PublishReply, Stats};
use tessera_origin_proto::manifest::MANIFEST_FORMAT;
use tessera_origin_proto::{ChunkHash, Manifest, ManifestChunk};
use tracing::{info, warn};

use crate::chunker::{ChunkParams, Chunker};
use crate::codec::{self, Codec};
use commit::{CommitJob, Committer, SmallRecord};
use meta::{
    CHANGES, CHUNKS, COUNTERS, ChunkEntry, GARBAGE, MANIFESTS, META_FORMAT, PACKS, PackEntry,
    StoredChange, StoredManifest,
};
use pack::{PackWriter, RECORD_HEAD};

/// Errors of the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    /// A stored chunk does not decode to bytes with its hash: it is never served.
    #[error("chunk {hash} is corrupt on disk: {why}")]
    Corrupt {
        /// The chunk's address.
        hash: ChunkHash,
        /// What the check found.
        why: &'static str,
    },
    /// A manifest names a chunk the index does not have (a bug or a damaged database).
    #[error("chunk {0} is referenced but missing from the index")]
    MissingChunk(ChunkHash),
    /// Stored metadata does not decode.
    #[error("stored metadata is damaged: {0}")]
    Damaged(String),
    /// The configuration is invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The group commit that carried this publish failed (the cause is logged).
    #[error("commit failed: {0}")]
    Commit(String),
    /// The group commit that carried this publish failed for want of disk space.
    #[error("no space left on the data disk: {0}")]
    Full(String),
}

impl StoreError {
    /// Whether this is the data disk being full (`ENOSPC`, or a quota: `EDQUOT`): the
    /// publish is refused with `507`, and reads go on.
    pub fn is_disk_full(&self) -> bool {
        fn full(e: &std::io::Error) -> bool {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        }
        match self {
            StoreError::Io { source, .. } => full(source),
            StoreError::Db(redb::Error::Io(e)) => full(e),
            StoreError::Full(_) => true,
            _ => false,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Settings of the chunk store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// FastCDC chunk sizes.
    pub chunking: ChunkParams,
    /// brotli quality (0–11) for new chunks. The default, 3, was chosen by measurement
    /// (`bench/HISTORY.md`): on 16 KiB chunks it compresses about twice as fast as 5 for
    /// some 10 % more bytes, which keeps a full ingest faster than `restic backup` while
    /// storing less than restic does.
    pub compression_quality: u32,
    /// An upload starts a new pack file past this many bytes.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub pack_target_bytes: u64,
    /// Chunk bytes an upload gathers before hashing and compressing them as a batch, in
    /// parallel; also the most chunk data an upload holds in memory.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub batch_bytes: usize,
    /// Changes the change feed keeps; an edge that falls further behind revalidates all.
    pub change_retention: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            chunking: ChunkParams::default(),
            compression_quality: 3,
            pack_target_bytes: 64 << 20,
            batch_bytes: 4 << 20,
            change_retention: 100_000,
        }
    }
}

/// What a garbage collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks removed from the index.
    pub chunks: u64,
    /// Pack files deleted (all their records dead).
    pub packs_deleted: u64,
    /// Pack files compacted.
    pub packs_compacted: u64,
}

/// Pack files kept open for readers at most.
const MAX_OPEN_PACKS: usize = 256;

/// A chunk read back and verified.
#[derive(Debug, Clone)]
pub struct LoadedChunk {
    /// How `stored` is encoded.
    pub codec: Codec,
    /// The bytes as stored.
    pub stored: Bytes,
    /// The chunk's bytes; their blake3 is the chunk's address.
    pub data: Bytes,
}

/// A file listing entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// Publish path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the whole file.
    pub blake3: ChunkHash,
}

/// One origin node's storage. Shared by all requests (`Arc<Store>`); every method may be
/// called concurrently from blocking threads.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    packs_dir: PathBuf,
    db: Arc<Database>,
    cfg: StoreConfig,
    /// Publishes waiting for the committer thread ([`commit`]). `None` only during drop.
    jobs: Option<SyncSender<CommitJob>>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// The shared pack the committer appends to (0: none); never collected while open.
    open_shared: Arc<AtomicU64>,
    /// The latest change feed sequence number, for long-polling readers.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Chunks that uploads in flight will reference, with a count per upload. A std Mutex:
    /// it is held only in blocking code, never across an await; the collector holds it
    /// across its commit so that check-and-pin and check-and-delete are mutually atomic.
    pins: Mutex<HashMap<ChunkHash, u32>>,
    /// Open pack files, shared by readers (`pread` needs no seek position).
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// One collection (and compaction) at a time.
    gc: Mutex<()>,
    /// Held across a read-modify-write of a fragment ([`Store::fragment_guard`]), one lock
    /// per stripe of fragment keys.
    fragment_rmw: Vec<Mutex<()>>,
    /// Where committed record and fragment changes go ([`sync`]).
    sync: Arc<sync::SyncHub>,
}

/// Locks of [`Store::fragment_guard`].
const FRAGMENT_STRIPES: usize = 64;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

fn counter_add(t: &mut Table<&str, u64>, name: &str, delta: i128) -> Result<()> {
    let cur = t.get(name)?.map(|v| v.value()).unwrap_or(0);
    let new = (i128::from(cur) + delta).max(0) as u64;
    t.insert(name, new)?;
    Ok(())
}

fn get_entry(
    t: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    h: &ChunkHash,
) -> Result<Option<ChunkEntry>> {
    match t.get(h.as_bytes())? {
        None => Ok(None),
        Some(v) => ChunkEntry::decode(v.value())
            .map(Some)
            .ok_or_else(|| StoreError::Damaged(format!("index entry of chunk {h}"))),
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, deletes what a crash left half-written, and
    /// collects pending garbage.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<Self> {
        cfg.chunking.check().map_err(StoreError::Config)?;
        if cfg.compression_quality > 11 {
            return Err(StoreError::Config(format!(
                "compression_quality {} is above brotli's 11",
                cfg.compression_quality
            )));
        }
        let packs_dir = dir.join("packs");
        std::fs::create_dir_all(&packs_dir).map_err(io(&packs_dir))?;
        let db_path = dir.join("meta.redb");
        let db = redb::Builder::new()
            .set_cache_size(64 << 20)
            .create(&db_path)?;
        {
            let txn = db.begin_write()?;
            {
                txn.open_table(MANIFESTS)?;
                txn.open_table(CHUNKS)?;
                txn.open_table(GARBAGE)?;
                txn.open_table(PACKS)?;
                txn.open_table(CHANGES)?;
                txn.open_table(cluster::FILES)?;
                let mut c = txn.open_table(COUNTERS)?;
                let format = c.get("format")?.map(|v| v.value());
                match format {
                    None => {
                        c.insert("format", META_FORMAT)?;
                    }
                    Some(META_FORMAT) => {}
                    Some(f) => {
                        return Err(StoreError::Damaged(format!(
                            "{} has metadata format {f}; this build reads {META_FORMAT}",
                            db_path.display()
                        )));
                    }
                }
            }
            txn.commit()?;
        }
        sync::build_if_missing(&db)?;
        let db = Arc::new(db);
        remove_orphan_packs(&db, &packs_dir)?;
        let sync_hub = Arc::new(sync::SyncHub::default());
        let open_shared = Arc::new(AtomicU64::new(0));
        let latest = {
            let txn = db.begin_read()?;
            let c = txn.open_table(COUNTERS)?;
            c.get("change_seq")?.map(|v| v.value()).unwrap_or(0)
        };
        let changes = Arc::new(tokio::sync::watch::Sender::new(latest));
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        let committer = Committer {
            db: db.clone(),
            packs_dir: packs_dir.clone(),
            pack_target: cfg.pack_target_bytes,
            open_id: open_shared.clone(),
            open: None,
            changes: changes.clone(),
            change_retention: cfg.change_retention,
            sync: sync_hub.clone(),
        };
        let committer = std::thread::Builder::new()
            .name("tessera-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(io(dir))?;
        let store = Self {
            dir: dir.to_path_buf(),
            packs_dir,
            db,
            cfg,
            jobs: Some(tx),
            committer: Some(committer),
            open_shared,
            changes,
            pins: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            gc: Mutex::new(()),
            fragment_rmw: (0..FRAGMENT_STRIPES).map(|_| Mutex::new(())).collect(),
            sync: sync_hub,
        };
        store.collect_garbage()?;
        Ok(store)
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The size of the file system holding the data folder and the bytes free on it for
    /// this process (`statvfs`: blocks available to unprivileged users).
    pub fn disk_space(&self) -> std::io::Result<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.dir)?;
        Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
    }

    /// The folder holding pack files.
    pub fn packs_dir(&self) -> &Path {
        &self.packs_dir
    }

    /// Starts an upload.
    pub fn upload(&self) -> Upload<'_> {
        Upload {
            store: self,
            chunker: Chunker::new(self.cfg.chunking),
            file_hash: blake3::Hasher::new(),
            size: 0,
            pending: Vec::new(),
            pending_len: 0,
            chunks: Vec::new(),
            pinned: HashSet::new(),
            written: HashMap::new(),
            small: Vec::new(),
            small_len: 0,
            packs: Vec::new(),
        }
    }

    /// Held while a fragment is read, changed and committed again (chunks merged into it
    /// from another node, or dropped from it by repair): two of those at once on one
    /// fragment would each write back what it read, and the chunks the other added would
    /// lose their reference (and be collected) though their sender was told they were kept.
    /// `key` is the fragment's ([`cluster::fragment_key`]); fragments of different keys
    /// mostly take different locks, so their commits still group.
    pub fn fragment_guard(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        let h = blake3::hash(key.as_bytes());
        let stripe = h.as_bytes()[0] as usize % FRAGMENT_STRIPES;
        self.fragment_rmw[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The manifest published at `path`.
    pub fn manifest(&self, path: &str) -> Result<Option<Manifest>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MANIFESTS)?;
        let Some(v) = t.get(path)? else {
            return Ok(None);
        };
        StoredManifest::decode(path, v.value())
            .map(Some)
            .ok_or_else(|| StoreError::Damaged(format!("manifest of {path}")))
    }

    /// Files whose path starts with `prefix`, in path order.
    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MANIFESTS)?;
        let mut out = Vec::new();
        for r in t.range(prefix..)? {
            let (k, v) = r?;
            let path = k.value();
            if cluster::is_fragment_key(path) {
                continue;
            }
            if !path.starts_with(prefix) {
                break;
            }
            let (size, blake3) = StoredManifest::decode_head(v.value())
                .ok_or_else(|| StoreError::Damaged(format!("manifest of {path}")))?;
            out.push(Listed {
                path: path.to_string(),
                size,
                blake3,
            });
        }
        Ok(out)
    }

    fn pack_file(&self, id: u64) -> Result<Arc<File>> {
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(&id) {
            return Ok(f.clone());
        }
        let path = pack::pack_path(&self.packs_dir, id);
        let f = Arc::new(File::open(&path).map_err(io(&path))?);
        if files.len() >= MAX_OPEN_PACKS {
            // Bound the descriptors held; readers of an evicted pack keep their handle.
            let evict = files.keys().next().copied();
            evict.map(|k| files.remove(&k));
        }
        files.insert(id, f.clone());
        Ok(f)
    }

    /// Reads chunk `hash`'s stored record and checks it: the record must name the chunk and
    /// its bytes must decode to data whose blake3 is `hash`. `None` if the store lacks it.
    pub fn load_chunk(&self, hash: &ChunkHash) -> Result<Option<LoadedChunk>> {
        // Two tries: a compaction may move the chunk and delete its old pack between our
        // index lookup and our open.
        for attempt in 0..2 {
            let entry = {
                let txn = self.db.begin_read()?;
                let t = txn.open_table(CHUNKS)?;
                match get_entry(&t, hash)? {
                    Some(e) => e,
                    None => return Ok(None),
                }
            };
            let file = match self.pack_file(entry.pack) {
                Ok(f) => f,
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt == 0 =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let corrupt = |why| {
                warn!(chunk = %hash, pack = entry.pack, offset = entry.offset, why, "corrupt chunk refused");
                StoreError::Corrupt { hash: *hash, why }
            };
            let rec = pack::read_record(&file, entry.offset, entry.stored_len).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData
                    || e.kind() == std::io::ErrorKind::UnexpectedEof
                {
                    corrupt("pack record header is damaged")
                } else {
                    StoreError::Io {
                        path: pack::pack_path(&self.packs_dir, entry.pack),
                        source: e,
                    }
                }
            })?;
            if rec.hash != *hash || rec.codec != Some(entry.codec) || rec.raw_len != entry.raw_len {
                return Err(corrupt("pack record header does not match the index"));
            }
            let data = codec::decode(entry.codec, &rec.stored, entry.raw_len as usize)
                .ok_or_else(|| corrupt("stored bytes do not decode"))?;
            if ChunkHash::of(&data) != *hash {
                return Err(corrupt(
                    "blake3 of the stored bytes differs from the address",
                ));
            }
            return Ok(Some(LoadedChunk {
                codec: entry.codec,
                stored: Bytes::from(rec.stored),
                data: Bytes::from(data),
            }));
        }
        Err(StoreError::MissingChunk(*hash))
    }

    /// Whether the store has each of `hashes` (its index says so; the bytes are checked
    /// when read).
    pub fn has_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<bool>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHUNKS)?;
        hashes
            .iter()
            .map(|h| Ok(t.get(h.as_bytes())?.is_some()))
            .collect()
    }

    /// The bytes of chunk `hash`, verified against it; `None` if the store lacks it.
    pub fn read_chunk(&self, hash: &ChunkHash) -> Result<Option<Bytes>> {
        Ok(self.load_chunk(hash)?.map(|c| c.data))
    }

    /// Unpublishes `path`; returns whether something was published there. Call
    /// [`Store::collect_garbage`] to reclaim the chunks only it referenced.
    pub fn delete(&self, path: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        {
            let mut manifests = txn.open_table(MANIFESTS)?;
            let Some(old) = manifests.remove(path)? else {
                return Ok(false);
            };
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut garbage = txn.open_table(GARBAGE)?;
            let mut counters = txn.open_table(COUNTERS)?;
            retire(&mut chunks, &mut garbage, &mut counters, path, old.value())?;
        }
        let seq = record_change(
            &txn,
            ChangeOp::Delete,
            path,
            None,
            self.cfg.change_retention,
        )?;
        txn.commit()?;
        self.changes.send_replace(seq);
        Ok(true)
    }

    /// A receiver that sees the latest change sequence number whenever it moves.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Up to `limit` changes after `since`, oldest first (see [`ChangesReply`]).
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<ChangesReply> {
        let txn = self.db.begin_read()?;
        let latest = txn
            .open_table(COUNTERS)?
            .get("change_seq")?
            .map(|v| v.value())
            .unwrap_or(0);
        let t = txn.open_table(CHANGES)?;
        let oldest = match t.first()? {
            Some((k, _)) => k.value(),
            None => latest + 1,
        };
        let mut changes = Vec::new();
        for r in t.range(since.saturating_add(1)..)?.take(limit) {
            let (k, v) = r?;
            let c = StoredChange::decode(k.value(), v.value())
                .ok_or_else(|| StoreError::Damaged(format!("change {}", k.value())))?;
            changes.push(c);
        }
        // A `since` beyond the latest change means the feed restarted (a new data folder):
        // the caller starts over from here.
        let restarted = since > latest;
        let next = changes
            .last()
            .map_or(if restarted { latest } else { since }, |c| c.seq);
        let truncated = restarted || (since < latest && since.saturating_add(1) < oldest);
        Ok(ChangesReply {
            changes,
            next,
            truncated,
        })
    }

    /// Removes unreferenced, unpinned chunks from the index, deletes packs left with no live
    /// record and compacts packs more than half dead.
    pub fn collect_garbage(&self) -> Result<GcReport> {
        let _one_at_a_time = self.gc.lock().unwrap();
        let mut report = GcReport::default();
        let mut half_dead = Vec::new();
        let mut to_delete = Vec::new();
        {
            let pins = self.pins.lock().unwrap();
            let txn = self.db.begin_write()?;
            {
                let mut garbage = txn.open_table(GARBAGE)?;
                let mut chunks = txn.open_table(CHUNKS)?;
                let mut packs = txn.open_table(PACKS)?;
                let mut counters = txn.open_table(COUNTERS)?;
                // Read inside the transaction: a shared pack registered by an earlier commit
                // was opened before it, so it is seen here if it is still being appended to.
                let open = self.open_shared.load(Ordering::SeqCst);
                let candidates: Vec<[u8; 32]> = garbage
                    .iter()?
                    .map(|r| r.map(|(k, _)| *k.value()))
                    .collect::<Result<_, _>>()?;
                let mut dead: HashMap<u64, u64> = HashMap::new();
                for key in candidates {
                    let h = ChunkHash(key);
                    if pins.contains_key(&h) {
                        continue; // an upload in flight will reference it; next collection decides
                    }
                    garbage.remove(&key)?;
                    if let Some(e) = get_entry(&chunks, &h)?
                        && e.refs == 0
                    {
                        chunks.remove(&key)?;
                        *dead.entry(e.pack).or_default() += RECORD_HEAD + u64::from(e.stored_len);
                        counter_add(&mut counters, "unique_bytes", -i128::from(e.raw_len))?;
                        report.chunks += 1;
                    }
                }
                for (id, bytes) in dead {
                    let mut p = packs
                        .get(id)?
                        .and_then(|v| PackEntry::decode(v.value()))
                        .ok_or_else(|| StoreError::Damaged(format!("pack entry {id:016x}")))?;
                    p.dead += bytes;
                    if p.dead >= p.total && id != open {
                        packs.remove(id)?;
                        to_delete.push(id);
                    } else {
                        packs.insert(id, &p.encode()[..])?;
                        if p.dead * 2 > p.total && id != open {
                            half_dead.push(id);
                        }
                    }
                }
            }
            txn.commit()?;
        }
        for id in to_delete {
            self.delete_pack_file(id)?;
            report.packs_deleted += 1;
        }
        for id in half_dead {
            if self.compact_pack(id)? {
                report.packs_compacted += 1;
            }
        }
        if report.packs_deleted + report.packs_compacted > 0 {
            fsync_dir(&self.packs_dir)?;
        }
        if report != GcReport::default() {
            info!(
                chunks = report.chunks,
                packs_deleted = report.packs_deleted,
                packs_compacted = report.packs_compacted,
                "garbage collected"
            );
        }
        Ok(report)
    }

    fn delete_pack_file(&self, id: u64) -> Result<()> {
        // Readers that already hold the file keep reading it; new lookups no longer find it.
        self.files.lock().unwrap().remove(&id);
        let path = pack::pack_path(&self.packs_dir, id);
        std::fs::remove_file(&path).map_err(io(&path))
    }

    /// Copies the live records of pack `id` into a new pack and deletes it. Returns false
    /// (and keeps the pack) if a live record fails its check: corruption is not copied.
    fn compact_pack(&self, id: u64) -> Result<bool> {
        let path = pack::pack_path(&self.packs_dir, id);
        let file = self.pack_file(id)?;
        let records = pack::scan(&file).map_err(io(&path))?;
        let live: Vec<(u64, ChunkHash, ChunkEntry)> = {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(CHUNKS)?;
            let mut live = Vec::new();
            for (offset, h, _) in records {
                if let Some(e) = get_entry(&t, &h)?
                    && e.pack == id
                    && e.offset == offset
                {
                    live.push((offset, h, e));
                }
            }
            live
        };
        let mut out = PackWriter::create(&self.packs_dir).map_err(io(&self.packs_dir))?;
        let mut moved = Vec::with_capacity(live.len());
        for (offset, h, e) in &live {
            let rec = pack::read_record(&file, *offset, e.stored_len).map_err(io(&path))?;
            let ok = rec.hash == *h
                && codec::decode(e.codec, &rec.stored, e.raw_len as usize)
                    .is_some_and(|d| ChunkHash::of(&d) == *h);
            if !ok {
                warn!(pack = %format!("{id:016x}"), chunk = %h, "corrupt record: pack left uncompacted");
                let new_path = out.path.clone();
                drop(out);
                std::fs::remove_file(&new_path).map_err(io(&new_path))?;
                return Ok(false);
            }
            let new_offset = out
                .append(h, e.codec, e.raw_len, &rec.stored)
                .map_err(io(&out.path))?;
            moved.push((*h, *offset, new_offset, e.stored_len));
        }
        out.sync().map_err(io(&out.path))?;
        fsync_dir(&self.packs_dir)?;
        let txn = self.db.begin_write()?;
        {
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut packs = txn.open_table(PACKS)?;
            let mut dead = 0;
            for (h, old_offset, new_offset, stored_len) in &moved {
                match get_entry(&chunks, h)? {
                    Some(mut e) if e.pack == id && e.offset == *old_offset => {
                        e.pack = out.id;
                        e.offset = *new_offset;
                        chunks.insert(h.as_bytes(), &e.encode()[..])?;
                    }
                    _ => dead += RECORD_HEAD + u64::from(*stored_len),
                }
            }
            packs.remove(id)?;
            packs.insert(
                out.id,
                &PackEntry {
                    total: out.len,
                    dead,
                }
                .encode()[..],
            )?;
        }
        txn.commit()?;
        self.delete_pack_file(id)?;
        Ok(true)
    }

    /// Storage figures; `stored_bytes` is the allocated size of the pack files and the
    /// metadata database, read from the file system.
    pub fn stats(&self) -> Result<Stats> {
        let (objects, logical_bytes, unique_bytes) = {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(COUNTERS)?;
            let get = |k: &str| -> Result<u64> { Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0)) };
            (get("objects")?, get("logical_bytes")?, get("unique_bytes")?)
        };
        let mut stored_bytes = 0u64;
        let db_path = self.dir.join("meta.redb");
        stored_bytes += std::fs::metadata(&db_path).map_err(io(&db_path))?.blocks() * 512;
        for e in std::fs::read_dir(&self.packs_dir).map_err(io(&self.packs_dir))? {
            let e = e.map_err(io(&self.packs_dir))?;
            // A pack may vanish under a concurrent collection; it then occupies nothing.
            if let Ok(m) = e.metadata() {
                stored_bytes += m.blocks() * 512;
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        Ok(Stats {
            objects,
            logical_bytes,
            unique_bytes,
            stored_bytes,
            dedup_ratio: ratio(logical_bytes, unique_bytes),
            compression_ratio: ratio(unique_bytes, stored_bytes),
            efficiency: ratio(logical_bytes, stored_bytes),
        })
    }
}

/// Deletes pack files no committed publish registered, and cuts registered packs back to
/// their registered extent: what torn uploads and torn group commits left.
fn remove_orphan_packs(db: &Database, packs_dir: &Path) -> Result<()> {
    let registered: HashMap<u64, PackEntry> = {
        let txn = db.begin_read()?;
        let t = txn.open_table(PACKS)?;
        let mut m = HashMap::new();
        for r in t.iter()? {
            let (k, v) = r?;
            let e = PackEntry::decode(v.value())
                .ok_or_else(|| StoreError::Damaged(format!("pack entry {:016x}", k.value())))?;
            m.insert(k.value(), e);
        }
        m
    };
    let (mut removed, mut truncated) = (0, 0);
    for e in std::fs::read_dir(packs_dir).map_err(io(packs_dir))? {
        let e = e.map_err(io(packs_dir))?;
        let path = e.path();
        match e
            .file_name()
            .to_str()
            .and_then(pack::parse_pack_name)
            .and_then(|id| registered.get(&id))
        {
            None => {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
            Some(entry) => {
                let extent = pack::HEADER_LEN + entry.total;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                if f.metadata().map_err(io(&path))?.len() > extent {
                    f.set_len(extent)
                        .and_then(|()| f.sync_all())
                        .map_err(io(&path))?;
                    truncated += 1;
                }
            }
        }
    }
    if removed > 0 {
        fsync_dir(packs_dir)?;
    }
    if removed + truncated > 0 {
        info!(
            removed,
            truncated, "cleaned pack files left by interrupted uploads"
        );
    }
    Ok(())
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has committed what was queued.
        drop(self.jobs.take());
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

/// Appends a change to the feed in `txn`, drops what falls out of `retention`; returns its
/// sequence number.
fn record_change(
    txn: &redb::WriteTransaction,
    op: ChangeOp,
    path: &str,
    blake3: Option<ChunkHash>,
    retention: u64,
) -> Result<u64> {
    let mut counters = txn.open_table(COUNTERS)?;
    let seq = counters.get("change_seq")?.map(|v| v.value()).unwrap_or(0) + 1;
    counters.insert("change_seq", seq)?;
    let mut t = txn.open_table(CHANGES)?;
    t.insert(seq, &StoredChange::encode(op, blake3, path)[..])?;
    // Each append drops at most a couple of old entries, so the table stays at `retention`.
    for _ in 0..2 {
        let first = t.first()?.map(|(k, _)| k.value());
        match first {
            Some(k) if k + retention.max(1) <= seq => {
                t.remove(k)?;
            }
            _ => break,
        }
    }
    Ok(seq)
}

/// Retires the version of `path` whose stored manifest is `stored` (deleted or replaced):
/// drops one reference per manifest entry, chunks reaching 0 become garbage, and the file
/// leaves the counters.
fn retire(
    chunks: &mut Table<&[u8; 32], &[u8]>,
    garbage: &mut Table<&[u8; 32], ()>,
    counters: &mut Table<&str, u64>,
    path: &str,
    stored: &[u8],
) -> Result<()> {
    let m = StoredManifest::decode(path, stored)
        .ok_or_else(|| StoreError::Damaged(format!("manifest of {path}")))?;
    counter_add(counters, "objects", -1)?;
    counter_add(counters, "logical_bytes", -i128::from(m.size))?;
    for c in &m.chunks {
        let mut e = get_entry(chunks, &c.hash)?.ok_or(StoreError::MissingChunk(c.hash))?;
        e.refs = e.refs.saturating_sub(1);
        chunks.insert(c.hash.as_bytes(), &e.encode()[..])?;
        if e.refs == 0 {
            garbage.insert(c.hash.as_bytes(), ())?;
        }
    }
    Ok(())
}

/// Where an upload wrote a chunk.
#[derive(Debug, Clone, Copy)]
struct Written {
    pack: u64,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    codec: Codec,
}

/// A file being published. Feed it with [`Upload::write`], then [`Upload::finish`]; dropping
/// it unfinished deletes what it wrote and publishes nothing.
#[derive(Debug)]
pub struct Upload<'s> {
    store: &'s Store,
    chunker: Chunker,
    file_hash: blake3::Hasher,
    size: u64,
    pending: Vec<Bytes>,
    pending_len: usize,
    chunks: Vec<(ChunkHash, u32)>,
    /// Chunks found in the index and pinned against collection until this upload ends.
    pinned: HashSet<ChunkHash>,
    /// Chunks this upload stored in its own packs.
    written: HashMap<ChunkHash, Written>,
    /// New chunks held in memory for the committer's shared pack, while they are few.
    small: Vec<SmallRecord>,
    small_len: usize,
    packs: Vec<PackWriter>,
}

/// New chunk bytes an upload may hand to the shared pack; past this it writes its own packs.
const SMALL_UPLOAD: usize = 1 << 20;

impl Upload<'_> {
    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds one chunk already cut by someone else (a cluster node placing chunks): it is
    /// stored as given, not re-chunked. Do not mix with [`Upload::write`].
    pub fn push_chunk(&mut self, chunk: Bytes) -> Result<()> {
        self.size += chunk.len() as u64;
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= self.store.cfg.batch_bytes {
            self.process_batch()?;
        }
        Ok(())
    }

    /// Appends a chunk the store already has to the chunk list without its bytes (a cluster
    /// node merging or trimming a fragment); it is pinned until the commit. Returns `false`,
    /// adding nothing, if the store lacks it. Pending pushed chunks are processed first so
    /// the order is kept.
    pub fn reference_chunk(&mut self, hash: ChunkHash, size: u32) -> Result<bool> {
        self.process_batch()?;
        let known = self.written.contains_key(&hash)
            || self.small.iter().any(|r| r.hash == hash)
            || self.pinned.contains(&hash);
        if !known {
            let mut pins = self.store.pins.lock().unwrap();
            let txn = self.store.db.begin_read()?;
            if txn.open_table(CHUNKS)?.get(hash.as_bytes())?.is_none() {
                return Ok(false);
            }
            *pins.entry(hash).or_default() += 1;
            self.pinned.insert(hash);
        }
        self.size += u64::from(size);
        self.chunks.push((hash, size));
        Ok(true)
    }

    /// Adds the next bytes of the file. The chunking, hashing and compression run on the
    /// ingest pool ([`crate::workers`]), behind reads.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        crate::workers::ingest(|| {
            self.size += data.len() as u64;
            let before = self.pending.len();
            self.chunker.push(data, &mut self.pending);
            self.pending_len += self.pending[before..].iter().map(Bytes::len).sum::<usize>();
            if self.pending_len >= self.store.cfg.batch_bytes {
                self.process_batch()?;
            }
            Ok(())
        })
    }

    /// Hashes the pending chunks, pins those the store has, compresses and stores the rest,
    /// on the ingest pool ([`crate::workers`]).
    fn process_batch(&mut self) -> Result<()> {
        crate::workers::ingest(|| self.process_batch_here())
    }

    fn process_batch_here(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let file_hash = &mut self.file_hash;
        let (_, hashes) = rayon::join(
            || {
                batch.iter().for_each(|c| {
                    file_hash.update(c);
                })
            },
            || {
                batch
                    .par_iter()
                    .map(|c| ChunkHash::of(c))
                    .collect::<Vec<_>>()
            },
        );
        let mut fresh = Vec::new();
        {
            let mut pins = self.store.pins.lock().unwrap();
            let txn = self.store.db.begin_read()?;
            let t = txn.open_table(CHUNKS)?;
            let mut in_batch = HashSet::new();
            for (i, h) in hashes.iter().enumerate() {
                let known = self.written.contains_key(h) || self.small.iter().any(|r| r.hash == *h);
                if known || self.pinned.contains(h) || !in_batch.insert(*h) {
                    continue;
                }
                if t.get(h.as_bytes())?.is_some() {
                    *pins.entry(*h).or_default() += 1;
                    self.pinned.insert(*h);
                } else {
                    fresh.push(i);
                }
            }
        }
        let quality = self.store.cfg.compression_quality;
        let compressed: Vec<Option<Vec<u8>>> = fresh
            .par_iter()
            .map(|&i| codec::compress(&batch[i], quality))
            .collect();
        for (&i, c) in fresh.iter().zip(compressed) {
            let (codec, stored): (Codec, &[u8]) = match &c {
                Some(v) => (Codec::Brotli, v),
                None => (Codec::Raw, &batch[i]),
            };
            let raw_len = batch[i].len() as u32;
            if self.packs.is_empty() && self.small_len + stored.len() <= SMALL_UPLOAD {
                self.small_len += stored.len();
                self.small.push(SmallRecord {
                    hash: hashes[i],
                    codec,
                    raw_len,
                    stored: stored.to_vec(),
                });
                continue;
            }
            // Too much for the shared pack: this upload writes its own, starting with what it
            // held back.
            for r in std::mem::take(&mut self.small) {
                let pack = self.current_pack()?;
                let offset = pack
                    .append(&r.hash, r.codec, r.raw_len, &r.stored)
                    .map_err(io(&pack.path))?;
                let id = pack.id;
                self.written.insert(r.hash, r.written_at(id, offset));
            }
            self.small_len = 0;
            let pack = self.current_pack()?;
            let offset = pack
                .append(&hashes[i], codec, batch[i].len() as u32, stored)
                .map_err(io(&pack.path))?;
            let pack = pack.id;
            let w = Written {
                pack,
                offset,
                stored_len: stored.len() as u32,
                raw_len: batch[i].len() as u32,
                codec,
            };
            self.written.insert(hashes[i], w);
        }
        self.chunks
            .extend(hashes.into_iter().zip(batch.iter().map(|c| c.len() as u32)));
        Ok(())
    }

    fn current_pack(&mut self) -> Result<&mut PackWriter> {
        let full = self
            .packs
            .last()
            .is_none_or(|p| p.len >= self.store.cfg.pack_target_bytes);
        if full {
            let dir = &self.store.packs_dir;
            self.packs.push(PackWriter::create(dir).map_err(io(dir))?);
        }
        Ok(self.packs.last_mut().unwrap())
    }

    /// Makes everything written durable and publishes it at `path` in one transaction,
    /// replacing what was there. Chunks only the replaced version used become garbage.
    /// Returns the reply and whether a previous version was replaced.
    pub fn finish(self, path: &str, content_type: &str) -> Result<(PublishReply, bool)> {
        self.commit(path, content_type, true)
    }

    /// Commits what was pushed as the cluster fragment `key` ([`fragment_key`]): the chunks
    /// become referenced by it, like a publish, but nothing enters the change feed.
    pub fn finish_fragment(self, key: &str) -> Result<(PublishReply, bool)> {
        self.commit(key, "application/octet-stream", false)
    }

    fn commit(
        mut self,
        path: &str,
        content_type: &str,
        feed: bool,
    ) -> Result<(PublishReply, bool)> {
        let mut tail = Vec::new();
        self.chunker.finish(&mut tail);
        self.pending_len += tail.iter().map(Bytes::len).sum::<usize>();
        self.pending.extend(tail);
        self.process_batch()?;
        for p in &mut self.packs {
            p.sync().map_err(io(&p.path))?;
        }
        if !self.packs.is_empty() {
            fsync_dir(&self.store.packs_dir)?;
        }
        let mut offset = 0u64;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            path: path.to_string(),
            size: self.size,
            blake3: self.file_hash.finalize().into(),
            content_type: content_type.to_string(),
            modified: now_secs(),
            chunks: self
                .chunks
                .iter()
                .map(|&(hash, size)| {
                    let c = ManifestChunk { hash, offset, size };
                    offset += u64::from(size);
                    c
                })
                .collect(),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job = CommitJob {
            manifest,
            feed,
            written: std::mem::take(&mut self.written),
            small: std::mem::take(&mut self.small),
            packs: self.packs.iter().map(|p| (p.id, p.len)).collect(),
            reply: tx,
        };
        let queue = self
            .store
            .jobs
            .as_ref()
            .ok_or_else(|| StoreError::Commit("the store is closing".into()))?;
        queue
            .send(job)
            .map_err(|_| StoreError::Commit("the committer has stopped".into()))?;
        let done = rx
            .recv()
            .map_err(|_| StoreError::Commit("the committer has stopped".into()))??;
        // Committed: registered packs now belong to the store; Drop deletes the others.
        self.packs.retain(|p| !done.registered.contains(&p.id));
        Ok((done.reply, done.replaced))
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        // Packs still listed were never registered: an abandoned upload's, or all-dead ones.
        for p in self.packs.drain(..) {
            let path = p.path.clone();
            drop(p);
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "could not remove an unregistered pack");
            }
        }
        let mut pins = self.store.pins.lock().unwrap();
        for h in self.pinned.drain() {
            if let Some(n) = pins.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&h);
                }
            }
        }
    }
}
