//! Group commit: one thread makes publishes visible, many at a time.
//!
//! Every publish ends here. Uploads with little new data hand their chunk records over in
//! memory; the committer appends them to a pack shared by such uploads, so a folder of small
//! web assets does not cost a pack file (and its block-rounding tail) per file. Then one
//! fsync of that pack and one redb transaction commit every publish waiting at that moment:
//! with N uploads in flight, N publishes share two fsyncs instead of paying for them each.
//!
//! The shared pack is written only by this thread. It is registered with its extent (`total`)
//! in the same transaction that commits the manifests referencing it; a crash after an
//! append but before the commit leaves bytes past the registered extent, which
//! [`super::Store::open`] truncates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use redb::{Database, ReadableTable, WriteTransaction};
use tessera_origin_proto::client::PublishReply;
use tessera_origin_proto::{ChunkHash, Manifest};
use tracing::error;

use super::meta::{
    CHUNKS, COUNTERS, ChunkEntry, GARBAGE, MANIFESTS, PACKS, PackEntry, StoredManifest,
};
use super::pack::{PackWriter, RECORD_HEAD};
use super::{
    Result, StoreError, Written, counter_add, fsync_dir, get_entry, io, record_change, retire,
};
use crate::codec::Codec;
use tessera_origin_proto::changes::ChangeOp;

/// A chunk record an upload kept in memory for the shared pack.
#[derive(Debug)]
pub(super) struct SmallRecord {
    pub hash: ChunkHash,
    pub codec: Codec,
    pub raw_len: u32,
    pub stored: Vec<u8>,
}

impl SmallRecord {
    /// Where this record is once appended to pack `pack` at `offset`.
    pub fn written_at(&self, pack: u64, offset: u64) -> Written {
        Written {
            pack,
            offset,
            stored_len: self.stored.len() as u32,
            raw_len: self.raw_len,
            codec: self.codec,
        }
    }
}

/// What the committer did for one publish.
#[derive(Debug)]
pub(super) struct Committed {
    pub reply: PublishReply,
    /// A previous version was replaced (its chunks may now be garbage).
    pub replaced: bool,
    /// The upload's own packs that were registered (the others held only dead records).
    pub registered: Vec<u64>,
}

/// One publish, ready to commit.
#[derive(Debug)]
pub(super) struct CommitJob {
    pub manifest: Manifest,
    /// Whether the publish goes into the change feed (a cluster fragment does not).
    pub feed: bool,
    /// Chunks the upload stored in its own packs, already durable.
    pub written: HashMap<ChunkHash, Written>,
    /// Chunks for the shared pack.
    pub small: Vec<SmallRecord>,
    /// The upload's own packs: id and length of their records.
    pub packs: Vec<(u64, u64)>,
    pub reply: SyncSender<Result<Committed>>,
}

/// The committer thread's state.
pub(super) struct Committer {
    pub db: Arc<Database>,
    pub packs_dir: PathBuf,
    pub pack_target: u64,
    /// The id of the shared pack being appended to (0: none), read by the collector so it
    /// never deletes or compacts the pack under the committer.
    pub open_id: Arc<AtomicU64>,
    pub open: Option<PackWriter>,
    /// Told the latest change sequence number after each commit.
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Changes the feed keeps.
    pub change_retention: u64,
    /// Where fragment changes are reported after the commit.
    pub sync: Arc<super::sync::SyncHub>,
}

/// Most publishes committed in one transaction.
const MAX_BATCH: usize = 256;

impl Committer {
    /// Serves jobs until every sender is gone.
    pub fn run(mut self, rx: Receiver<CommitJob>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            match self.commit(&mut jobs) {
                Ok(outcomes) => {
                    for (job, outcome) in jobs.iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    error!(error = %e, publishes = jobs.len(), "group commit failed");
                    // The shared pack may hold records past its registered extent: start a
                    // new one; the tail is truncated at the next start.
                    self.open = None;
                    self.open_id.store(0, Ordering::SeqCst);
                    let full = e.is_disk_full();
                    for job in &jobs {
                        let why = e.to_string();
                        let err = if full {
                            StoreError::Full(why)
                        } else {
                            StoreError::Commit(why)
                        };
                        let _ = job.reply.send(Err(err));
                    }
                }
            }
        }
    }

    fn commit(&mut self, jobs: &mut [CommitJob]) -> Result<Vec<Committed>> {
        // The write transaction comes first: within it, whether the index has a chunk cannot
        // change under us, so a small record whose chunk is already indexed (or appended by
        // an earlier publish of this batch) is not appended again.
        let txn = self.db.begin_write()?;
        // 1. Append small records to the shared pack, rolling it when full.
        let mut shared: Vec<PackWriter> = Vec::new(); // sealed in this batch, still to sync
        let mut touched: Vec<u64> = Vec::new();
        let mut created = false;
        {
            let chunks = txn.open_table(CHUNKS)?;
            let mut appended = std::collections::HashSet::new();
            for job in jobs.iter_mut() {
                for rec in job.small.drain(..) {
                    if appended.contains(&rec.hash) || get_entry(&chunks, &rec.hash)?.is_some() {
                        continue;
                    }
                    appended.insert(rec.hash);
                    if self.open.as_ref().is_none_or(|p| p.len >= self.pack_target) {
                        if let Some(old) = self.open.take() {
                            shared.push(old);
                        }
                        let p = PackWriter::create(&self.packs_dir).map_err(io(&self.packs_dir))?;
                        self.open_id.store(p.id, Ordering::SeqCst);
                        self.open = Some(p);
                        created = true;
                    }
                    let p = self.open.as_mut().unwrap();
                    let offset = p
                        .append(&rec.hash, rec.codec, rec.raw_len, &rec.stored)
                        .map_err(io(&p.path))?;
                    if !touched.contains(&p.id) {
                        touched.push(p.id);
                    }
                    job.written.insert(rec.hash, rec.written_at(p.id, offset));
                }
            }
        }
        let mut extents: HashMap<u64, u64> = HashMap::new();
        for p in shared.iter_mut().chain(self.open.as_mut()) {
            if touched.contains(&p.id) {
                p.sync().map_err(io(&p.path))?;
                extents.insert(p.id, p.len);
            }
        }
        if created {
            fsync_dir(&self.packs_dir)?;
        }
        // 2. One transaction for every publish in the batch.
        let mut dead: HashMap<u64, u64> = HashMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut seq = 0;
        let mut events = Vec::new();
        for job in jobs.iter() {
            outcomes.push(apply(&txn, job, &mut dead, &mut events)?);
            let m = &job.manifest;
            if !job.feed {
                continue;
            }
            seq = record_change(
                &txn,
                ChangeOp::Put,
                &m.path,
                Some(m.blake3),
                self.change_retention,
            )?;
        }
        {
            let mut packs = txn.open_table(PACKS)?;
            for (id, total) in extents {
                let mut e = packs
                    .get(id)?
                    .and_then(|v| PackEntry::decode(v.value()))
                    .unwrap_or_default();
                e.total = total;
                e.dead += dead.get(&id).copied().unwrap_or(0);
                packs.insert(id, &e.encode()[..])?;
            }
        }
        txn.commit()?;
        if seq > 0 {
            self.changes.send_replace(seq);
        }
        self.sync.fire(&events);
        Ok(outcomes)
    }
}

/// Applies one publish inside `txn`: reference counts, new index entries, the upload's own
/// packs, the manifest (replacing and releasing any previous version) and the counters.
/// Dead-on-arrival bytes of shared packs are added to `dead`.
fn apply(
    txn: &WriteTransaction,
    job: &CommitJob,
    dead: &mut HashMap<u64, u64>,
    events: &mut Vec<super::sync::SyncEvent>,
) -> Result<Committed> {
    let m = &job.manifest;
    let (mut new_chunks, mut stored_added, mut unique_added) = (0u64, 0u64, 0u64);
    let mut chunks = txn.open_table(CHUNKS)?;
    let mut garbage = txn.open_table(GARBAGE)?;
    for c in &m.chunks {
        match get_entry(&chunks, &c.hash)? {
            Some(mut e) => {
                e.refs += 1;
                if e.refs == 1 {
                    garbage.remove(c.hash.as_bytes())?;
                }
                chunks.insert(c.hash.as_bytes(), &e.encode()[..])?;
            }
            None => {
                let w = job
                    .written
                    .get(&c.hash)
                    .ok_or(StoreError::MissingChunk(c.hash))?;
                let e = ChunkEntry {
                    pack: w.pack,
                    offset: w.offset,
                    stored_len: w.stored_len,
                    raw_len: w.raw_len,
                    codec: w.codec,
                    refs: 1,
                };
                chunks.insert(c.hash.as_bytes(), &e.encode()[..])?;
                new_chunks += 1;
                stored_added += RECORD_HEAD + u64::from(w.stored_len);
                unique_added += u64::from(w.raw_len);
            }
        }
    }
    // Records another publish committed first are dead on arrival.
    let mut own_dead: HashMap<u64, u64> = HashMap::new();
    for (h, w) in &job.written {
        let e = get_entry(&chunks, h)?.ok_or(StoreError::MissingChunk(*h))?;
        if e.pack != w.pack || e.offset != w.offset {
            let bytes = RECORD_HEAD + u64::from(w.stored_len);
            if job.packs.iter().any(|(id, _)| *id == w.pack) {
                *own_dead.entry(w.pack).or_default() += bytes;
            } else {
                *dead.entry(w.pack).or_default() += bytes;
            }
        }
    }
    let mut registered = Vec::new();
    let mut packs = txn.open_table(PACKS)?;
    for &(id, total) in &job.packs {
        let entry = PackEntry {
            total,
            dead: own_dead.get(&id).copied().unwrap_or(0),
        };
        if entry.dead < entry.total {
            packs.insert(id, &entry.encode()[..])?;
            registered.push(id);
        }
    }
    let mut manifests = txn.open_table(MANIFESTS)?;
    let mut counters = txn.open_table(COUNTERS)?;
    let old = manifests
        .insert(m.path.as_str(), &StoredManifest::encode(m)[..])?
        .map(|v| v.value().to_vec());
    let replaced = old.is_some();
    if let Some(old) = old {
        retire(&mut chunks, &mut garbage, &mut counters, &m.path, &old)?;
        if let Some(item) = super::sync::fragment_item(&m.path, &old)? {
            super::sync::note(txn, events, item, false)?;
        }
    }
    if let Some(item) = super::sync::manifest_item(m) {
        super::sync::note(txn, events, item, true)?;
    }
    counter_add(&mut counters, "objects", 1)?;
    counter_add(&mut counters, "logical_bytes", i128::from(m.size))?;
    counter_add(&mut counters, "unique_bytes", i128::from(unique_added))?;
    let reply = PublishReply {
        path: m.path.clone(),
        size: m.size,
        blake3: m.blake3,
        chunks: m.chunks.len() as u64,
        new_chunks,
        stored_bytes_added: stored_added,
    };
    Ok(Committed {
        reply,
        replaced,
        registered,
    })
}
