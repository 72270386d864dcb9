//! What a node of an origin cluster keeps besides chunks.
//!
//! In a cluster a file's chunks are spread over the nodes the ring names, so no node can
//! count references to its chunks from whole manifests. Instead each node holds, for every
//! version of every file, a *fragment*: a manifest-like record (in the `manifests` table,
//! under a key no publish path can take, see [`fragment_key`]) listing the chunks of that
//! version this node stores. Fragments hold the references, so a node's garbage collection
//! stays local and exact: a chunk goes only when no fragment on its node names it, and a
//! file version keeps every chunk of its fragments until the fragments are dropped, which
//! happens only after a newer version (or a delete) is recorded.
//!
//! The file records themselves (the whole manifest, or a tombstone after a delete) live in
//! the `files` table of the nodes that own the path. Versions are ordered by
//! `(stamp, upload)`, last writer wins, and every applied record enters the change feed.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tessera_origin_proto::changes::ChangeOp;
use tessera_origin_proto::{ChunkHash, Manifest};

use super::meta::{CHUNKS, COUNTERS, GARBAGE, MANIFESTS, PACKS, PackEntry, StoredManifest};
use super::pack::{PackWriter, RECORD_HEAD};
use super::{Result, Store, StoreError, fsync_dir, get_entry, io, record_change, retire, sync};
use crate::codec::{self, Codec};

/// Path → [`FileRecord`] JSON: the versions of files this node owns.
pub const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// Small documents of the cluster layer by name (its membership).
pub const CLUSTER_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster_state");

/// The first character of every fragment key: a control character, which publish paths
/// never contain.
pub(super) const FRAGMENT_MARK: char = '\u{1}';

/// The current version of a path in the cluster, or its tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The path.
    pub path: String,
    /// Version time, Unix milliseconds at the coordinating node; later wins.
    pub stamp: u64,
    /// The publish's id (32 hex digits); breaks ties between equal stamps and names the
    /// version's fragments.
    pub upload: String,
    /// The file, or `None` once deleted.
    pub manifest: Option<Manifest>,
}

impl FileRecord {
    /// The order of versions.
    pub fn version(&self) -> (u64, &str) {
        (self.stamp, &self.upload)
    }

    /// Whether this record replaces `other`.
    pub fn newer_than(&self, other: &FileRecord) -> bool {
        self.version() > other.version()
    }
}

/// The key of the fragment of version `(stamp, upload)` of `path`. Keys of one path sort
/// together, oldest version first.
pub fn fragment_key(path: &str, stamp: u64, upload: &str) -> String {
    format!("{FRAGMENT_MARK}{path}\0{stamp:020}.{upload}")
}

/// `(path, stamp, upload)` of a fragment key.
pub fn parse_fragment_key(key: &str) -> Option<(&str, u64, &str)> {
    let rest = key.strip_prefix(FRAGMENT_MARK)?;
    let (path, version) = rest.rsplit_once('\0')?;
    let (stamp, upload) = version.split_once('.')?;
    Some((path, stamp.parse().ok()?, upload))
}

/// Whether a `manifests` key is a fragment's.
pub fn is_fragment_key(key: &str) -> bool {
    key.starts_with(FRAGMENT_MARK)
}

/// One fragment held by this node.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub path: String,
    pub stamp: u64,
    pub upload: String,
    /// The chunks it references, with their sizes.
    pub chunks: Vec<(ChunkHash, u32)>,
}

/// The fragment stored under `key` as `stored`.
pub(super) fn fragment_of(key: &str, stored: &[u8]) -> Result<Fragment> {
    let (path, stamp, upload) =
        parse_fragment_key(key).ok_or_else(|| damaged(format!("fragment key {key:?}")))?;
    let m =
        StoredManifest::decode(key, stored).ok_or_else(|| damaged(format!("fragment {key:?}")))?;
    Ok(Fragment {
        path: path.to_string(),
        stamp,
        upload: upload.to_string(),
        chunks: m.chunks.iter().map(|c| (c.hash, c.size)).collect(),
    })
}

fn damaged(what: impl Into<String>) -> StoreError {
    StoreError::Damaged(what.into())
}

impl Store {
    /// Records `rec` if it is newer than what this node has for its path; returns the
    /// record now current. An applied record enters the change feed (a publish, or a
    /// delete for a tombstone).
    pub fn put_file(&self, rec: &FileRecord) -> Result<FileRecord> {
        let txn = self.db.begin_write()?;
        let mut events = Vec::new();
        {
            let mut t = txn.open_table(FILES)?;
            let old = t.get(rec.path.as_str())?.map(|v| v.value().to_vec());
            if let Some(v) = old {
                let cur: FileRecord = serde_json::from_slice(&v)
                    .map_err(|_| damaged(format!("file record of {}", rec.path)))?;
                if !rec.newer_than(&cur) {
                    return Ok(cur);
                }
                sync::note(&txn, &mut events, sync::record_item(&cur), false)?;
            }
            let bytes = serde_json::to_vec(rec).expect("records serialise");
            t.insert(rec.path.as_str(), &bytes[..])?;
            sync::note(&txn, &mut events, sync::record_item(rec), true)?;
        }
        let (op, b3) = match &rec.manifest {
            Some(m) => (ChangeOp::Put, Some(m.blake3)),
            None => (ChangeOp::Delete, None),
        };
        let seq = record_change(&txn, op, &rec.path, b3, self.cfg.change_retention)?;
        txn.commit()?;
        self.changes.send_replace(seq);
        self.sync.fire(&events);
        Ok(rec.clone())
    }

    /// The record of `path` on this node (a tombstone too).
    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(FILES)?;
        let Some(v) = t.get(path)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|_| damaged(format!("file record of {path}")))
    }

    /// Every record on this node whose path starts with `prefix`, tombstones included.
    pub fn files(&self, prefix: &str) -> Result<Vec<FileRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(FILES)?;
        let mut out = Vec::new();
        for r in t.range(prefix..)? {
            let (k, v) = r?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|_| damaged(format!("file record of {}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// Removes this node's copy of a record without a feed entry (the path moved to other
    /// owners, or an old tombstone expired), if it is still version `(stamp, upload)`.
    pub fn forget_file(&self, path: &str, stamp: u64, upload: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let mut events = Vec::new();
        {
            let mut t = txn.open_table(FILES)?;
            let same = match t.get(path)? {
                Some(v) => serde_json::from_slice::<FileRecord>(v.value())
                    .map(|r| r.stamp == stamp && r.upload == upload)
                    .unwrap_or(false),
                None => false,
            };
            if !same {
                return Ok(false);
            }
            t.remove(path)?;
            let item = sync::SyncItem::Record {
                path: path.to_string(),
                stamp,
                upload: upload.to_string(),
            };
            sync::note(&txn, &mut events, item, false)?;
        }
        txn.commit()?;
        self.sync.fire(&events);
        Ok(true)
    }

    /// The records this node holds of `paths`.
    pub fn files_of(&self, paths: &[String]) -> Result<Vec<FileRecord>> {
        let mut out = Vec::new();
        for p in paths {
            out.extend(self.file(p)?);
        }
        Ok(out)
    }

    /// The fragments this node holds of `paths`, every version.
    pub fn fragments_of(&self, paths: &[String]) -> Result<Vec<Fragment>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MANIFESTS)?;
        let mut out = Vec::new();
        for p in paths {
            let lo = format!("{FRAGMENT_MARK}{p}\0");
            let hi = format!("{FRAGMENT_MARK}{p}\u{1}");
            for r in t.range(lo.as_str()..hi.as_str())? {
                let (k, v) = r?;
                out.push(fragment_of(k.value(), v.value())?);
            }
        }
        Ok(out)
    }

    /// Every fragment on this node.
    pub fn fragments(&self) -> Result<Vec<Fragment>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MANIFESTS)?;
        let start = FRAGMENT_MARK.to_string();
        let mut out = Vec::new();
        for r in t.range(start.as_str()..)? {
            let (k, v) = r?;
            let key = k.value();
            if !is_fragment_key(key) {
                break;
            }
            out.push(fragment_of(key, v.value())?);
        }
        Ok(out)
    }

    /// The fragment of one version, if this node has it.
    pub fn fragment(&self, path: &str, stamp: u64, upload: &str) -> Result<Option<Fragment>> {
        let key = fragment_key(path, stamp, upload);
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MANIFESTS)?;
        let Some(v) = t.get(key.as_str())? else {
            return Ok(None);
        };
        let m = StoredManifest::decode(&key, v.value())
            .ok_or_else(|| damaged(format!("fragment {key:?}")))?;
        Ok(Some(Fragment {
            path: path.to_string(),
            stamp,
            upload: upload.to_string(),
            chunks: m.chunks.iter().map(|c| (c.hash, c.size)).collect(),
        }))
    }

    /// Drops the fragments of `path` older than version `(stamp, upload)` (all of them with
    /// `None`), releasing their chunks; returns how many went. Call
    /// [`Store::collect_garbage`] to reclaim the space.
    pub fn drop_fragments(&self, path: &str, older_than: Option<(u64, &str)>) -> Result<usize> {
        let lo = format!("{FRAGMENT_MARK}{path}\0");
        let hi = format!("{FRAGMENT_MARK}{path}\u{1}");
        let txn = self.db.begin_write()?;
        let mut dropped = 0;
        let mut events = Vec::new();
        {
            let mut manifests = txn.open_table(MANIFESTS)?;
            let mut doomed = Vec::new();
            for r in manifests.range(lo.as_str()..hi.as_str())? {
                let (k, _) = r?;
                let key = k.value().to_string();
                let Some((_, s, u)) = parse_fragment_key(&key) else {
                    continue;
                };
                if older_than.is_none_or(|v| (s, u) < v) {
                    doomed.push(key);
                }
            }
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut garbage = txn.open_table(GARBAGE)?;
            let mut counters = txn.open_table(COUNTERS)?;
            for key in doomed {
                if let Some(old) = manifests.remove(key.as_str())? {
                    let old = old.value().to_vec();
                    retire(&mut chunks, &mut garbage, &mut counters, &key, &old)?;
                    if let Some(item) = sync::fragment_item(&key, &old)? {
                        sync::note(&txn, &mut events, item, false)?;
                    }
                    dropped += 1;
                }
            }
        }
        txn.commit()?;
        self.sync.fire(&events);
        Ok(dropped)
    }

    /// Drops the fragment of exactly version `(stamp, upload)` of `path`; returns 1 if it
    /// existed, else 0.
    pub fn drop_one_fragment(&self, path: &str, stamp: u64, upload: &str) -> Result<usize> {
        let key = fragment_key(path, stamp, upload);
        let txn = self.db.begin_write()?;
        let mut events = Vec::new();
        let dropped = {
            let mut manifests = txn.open_table(MANIFESTS)?;
            let old = manifests.remove(key.as_str())?.map(|v| v.value().to_vec());
            match old {
                Some(old) => {
                    let mut chunks = txn.open_table(CHUNKS)?;
                    let mut garbage = txn.open_table(GARBAGE)?;
                    let mut counters = txn.open_table(COUNTERS)?;
                    retire(&mut chunks, &mut garbage, &mut counters, &key, &old)?;
                    if let Some(item) = sync::fragment_item(&key, &old)? {
                        sync::note(&txn, &mut events, item, false)?;
                    }
                    1
                }
                None => 0,
            }
        };
        txn.commit()?;
        self.sync.fire(&events);
        Ok(dropped)
    }

    /// Stores a good copy of chunk `hash` (checked against it) in a new pack and points the
    /// index at it, keeping its references: how scrub replaces a corrupt record. The old
    /// record's bytes count as dead in their pack.
    pub fn rewrite_chunk(&self, hash: &ChunkHash, data: &[u8]) -> Result<()> {
        if ChunkHash::of(data) != *hash {
            return Err(StoreError::Corrupt {
                hash: *hash,
                why: "the replacement does not match the address",
            });
        }
        let (codec, stored) = match codec::compress(data, self.cfg.compression_quality) {
            Some(v) => (Codec::Brotli, v),
            None => (Codec::Raw, data.to_vec()),
        };
        let mut pack = PackWriter::create(&self.packs_dir).map_err(io(&self.packs_dir))?;
        let offset = pack
            .append(hash, codec, data.len() as u32, &stored)
            .map_err(io(&pack.path))?;
        pack.sync().map_err(io(&pack.path))?;
        fsync_dir(&self.packs_dir)?;
        let _one_at_a_time = self.gc.lock().unwrap();
        let txn = self.db.begin_write()?;
        {
            let mut chunks = txn.open_table(CHUNKS)?;
            let Some(mut e) = get_entry(&chunks, hash)? else {
                drop(chunks);
                drop(txn);
                let _ = std::fs::remove_file(&pack.path);
                return Ok(()); // collected meanwhile: nothing to repair
            };
            let mut packs = txn.open_table(PACKS)?;
            let old = packs.get(e.pack)?.map(|v| v.value().to_vec());
            if let Some(mut old) = old.as_deref().and_then(PackEntry::decode) {
                old.dead += RECORD_HEAD + u64::from(e.stored_len);
                packs.insert(e.pack, &old.encode()[..])?;
            }
            packs.insert(
                pack.id,
                &PackEntry {
                    total: pack.len,
                    dead: 0,
                }
                .encode()[..],
            )?;
            e.pack = pack.id;
            e.offset = offset;
            e.stored_len = stored.len() as u32;
            e.codec = codec;
            chunks.insert(hash.as_bytes(), &e.encode()[..])?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Whether this node's index has chunk `hash` (not checked against its bytes).
    pub fn has_chunk(&self, hash: &ChunkHash) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHUNKS)?;
        Ok(t.get(hash.as_bytes())?.is_some())
    }

    /// When this node last knew itself in contact with its cluster (Unix ms), as last
    /// saved with [`Store::set_cluster_contact`].
    pub fn cluster_contact(&self) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(COUNTERS)?;
        Ok(t.get("cluster_contact_ms")?.map(|v| v.value()))
    }

    /// The cluster layer's document `key` ([`CLUSTER_STATE`]), if saved.
    pub fn cluster_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(CLUSTER_STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Saves the cluster layer's document `key`, durably.
    pub fn set_cluster_state(&self, key: &str, value: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(CLUSTER_STATE)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// Saves when this node was last in contact with its cluster.
    pub fn set_cluster_contact(&self, ms: u64) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(COUNTERS)?.insert("cluster_contact_ms", ms)?;
        txn.commit()?;
        Ok(())
    }

    /// Every chunk address in this node's index.
    pub fn chunk_addresses(&self) -> Result<Vec<ChunkHash>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHUNKS)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            out.push(ChunkHash(*r?.0.value()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_keys_round_trip_and_sort_by_version() {
        let a = fragment_key("img/a b.png", 5, "00ff");
        let b = fragment_key("img/a b.png", 40, "0000");
        assert!(a < b);
        assert_eq!(parse_fragment_key(&a), Some(("img/a b.png", 5, "00ff")));
        assert!(is_fragment_key(&a));
        assert!(tessera_origin_proto::validate_path(&a).is_err());
        // Another path never falls in the range of this one.
        let c = fragment_key("img/a b.png2", 1, "00");
        assert!(c > format!("{FRAGMENT_MARK}img/a b.png\u{1}"));
    }
}
