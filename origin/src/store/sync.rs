//! The sync index: what anti-entropy compares, kept in the same transactions as the data.
//!
//! Every file record (`files` table) and every cluster fragment (`manifests` table, see
//! [`super::cluster`]) has an entry in the `sync` table under
//! `bucket (u16 BE) | kind (b'r' or b'f') | path | 0 | stamp (u64 BE) | upload`, where the
//! bucket is the first 16 bits of the blake3 of the path ([`bucket_of`]). So the items of a
//! bucket, on any node, are one range scan, and a node that finds one bucket of its digest
//! differing from a peer's lists that bucket only (the cluster's anti-entropy).
//!
//! Each committed change of a record or fragment is also handed, after its commit, to the
//! observer installed with [`Store::observe_sync`] as a [`SyncEvent`]: the cluster keeps
//! its digests up to date from them instead of rescanning.

use std::sync::{Arc, RwLock};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tessera_origin_proto::ChunkHash;

use super::cluster::{FILES, FileRecord, fragment_of, is_fragment_key, parse_fragment_key};
use super::meta::MANIFESTS;
use super::{Result, Store, StoreError};

/// Sync entries; the value is unused.
pub const SYNC: TableDefinition<&[u8], ()> = TableDefinition::new("sync");

/// Buckets of a digest: the first 16 bits of a path's blake3.
pub const BUCKETS: usize = 1 << 16;

const RECORD: u8 = b'r';
const FRAGMENT: u8 = b'f';

/// The digest bucket of a path.
pub fn bucket_of(path: &str) -> u16 {
    let h = blake3::hash(path.as_bytes());
    u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]])
}

/// One record or fragment version as anti-entropy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncItem {
    /// A file record (manifest or tombstone) of this version.
    Record {
        path: String,
        stamp: u64,
        upload: String,
    },
    /// A fragment of this version, with the chunks it references.
    Fragment {
        path: String,
        stamp: u64,
        upload: String,
        chunks: Vec<ChunkHash>,
    },
}

impl SyncItem {
    /// The path the item belongs to.
    pub fn path(&self) -> &str {
        match self {
            SyncItem::Record { path, .. } | SyncItem::Fragment { path, .. } => path,
        }
    }

    fn key(&self) -> Vec<u8> {
        let (kind, path, stamp, upload) = match self {
            SyncItem::Record {
                path,
                stamp,
                upload,
            } => (RECORD, path, stamp, upload),
            SyncItem::Fragment {
                path,
                stamp,
                upload,
                ..
            } => (FRAGMENT, path, stamp, upload),
        };
        sync_key(kind, path, *stamp, upload)
    }
}

fn sync_key(kind: u8, path: &str, stamp: u64, upload: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + path.len() + 9 + upload.len());
    k.extend_from_slice(&bucket_of(path).to_be_bytes());
    k.push(kind);
    k.extend_from_slice(path.as_bytes());
    k.push(0);
    k.extend_from_slice(&stamp.to_be_bytes());
    k.extend_from_slice(upload.as_bytes());
    k
}

/// `(kind, path, stamp, upload)` of a sync key.
fn parse_sync_key(k: &[u8]) -> Option<(u8, &str, u64, &str)> {
    let kind = *k.get(2)?;
    let rest = k.get(3..)?;
    let zero = rest.iter().position(|&b| b == 0)?;
    let path = std::str::from_utf8(&rest[..zero]).ok()?;
    let v = &rest[zero + 1..];
    let stamp = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let upload = std::str::from_utf8(&v[8..]).ok()?;
    Some((kind, path, stamp, upload))
}

/// A committed change: `item` appeared on this node (`added`) or went.
#[derive(Debug, Clone)]
pub struct SyncEvent {
    pub item: SyncItem,
    pub added: bool,
}

/// Receives every committed [`SyncEvent`], in batches, after the commit.
pub type SyncObserver = Arc<dyn Fn(&[SyncEvent]) + Send + Sync>;

/// Where the store's writers hand their events.
#[derive(Default)]
pub(super) struct SyncHub {
    observer: RwLock<Option<SyncObserver>>,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHub")
    }
}

impl SyncHub {
    pub fn fire(&self, events: &[SyncEvent]) {
        if events.is_empty() {
            return;
        }
        if let Some(o) = self.observer.read().unwrap().as_ref() {
            o(events);
        }
    }
}

/// Notes in `txn` that `item` appeared or went, and queues its event.
pub(super) fn note(
    txn: &WriteTransaction,
    events: &mut Vec<SyncEvent>,
    item: SyncItem,
    added: bool,
) -> Result<()> {
    let mut t = txn.open_table(SYNC)?;
    let key = item.key();
    if added {
        t.insert(key.as_slice(), ())?;
    } else {
        t.remove(key.as_slice())?;
    }
    events.push(SyncEvent { item, added });
    Ok(())
}

/// The fragment item of a `manifests` entry, if `key` is a fragment's.
pub(super) fn fragment_item(key: &str, stored: &[u8]) -> Result<Option<SyncItem>> {
    if !is_fragment_key(key) {
        return Ok(None);
    }
    let f = fragment_of(key, stored)?;
    Ok(Some(SyncItem::Fragment {
        path: f.path,
        stamp: f.stamp,
        upload: f.upload,
        chunks: f.chunks.into_iter().map(|(h, _)| h).collect(),
    }))
}

/// The fragment item of a manifest being committed, if it is a fragment's.
pub(super) fn manifest_item(m: &tessera_origin_proto::Manifest) -> Option<SyncItem> {
    let (path, stamp, upload) = parse_fragment_key(&m.path)?;
    Some(SyncItem::Fragment {
        path: path.to_string(),
        stamp,
        upload: upload.to_string(),
        chunks: m.chunks.iter().map(|c| c.hash).collect(),
    })
}

/// The record item of a `files` entry.
pub(super) fn record_item(rec: &FileRecord) -> SyncItem {
    SyncItem::Record {
        path: rec.path.clone(),
        stamp: rec.stamp,
        upload: rec.upload.clone(),
    }
}

/// Builds the sync index from the `files` and `manifests` tables if it was never built
/// (a store from before it existed). Runs at open, before any writer.
pub(super) fn build_if_missing(db: &redb::Database) -> Result<()> {
    let txn = db.begin_write()?;
    {
        let mut counters = txn.open_table(super::meta::COUNTERS)?;
        if counters.get("sync_index")?.is_some() {
            return Ok(());
        }
        counters.insert("sync_index", 1)?;
        let mut sync = txn.open_table(SYNC)?;
        let files = txn.open_table(FILES)?;
        for r in files.iter()? {
            let (k, v) = r?;
            let rec: FileRecord = serde_json::from_slice(v.value())
                .map_err(|_| StoreError::Damaged(format!("file record of {}", k.value())))?;
            sync.insert(record_item(&rec).key().as_slice(), ())?;
        }
        let manifests = txn.open_table(MANIFESTS)?;
        let start = super::cluster::FRAGMENT_MARK.to_string();
        for r in manifests.range(start.as_str()..)? {
            let (k, _) = r?;
            let key = k.value();
            if !is_fragment_key(key) {
                break;
            }
            let (path, stamp, upload) = parse_fragment_key(key)
                .ok_or_else(|| StoreError::Damaged(format!("fragment key {key:?}")))?;
            sync.insert(sync_key(FRAGMENT, path, stamp, upload).as_slice(), ())?;
        }
    }
    txn.commit()?;
    Ok(())
}

impl Store {
    /// Installs the observer of committed record and fragment changes (replacing any).
    /// Install it before the node takes writes: changes committed before are not replayed
    /// (read them with [`Store::sync_scan`]).
    pub fn observe_sync(&self, observer: SyncObserver) {
        *self.sync.observer.write().unwrap() = Some(observer);
    }

    /// Calls `f` with every record and fragment item of this node, in sync-index order.
    pub fn sync_scan(&self, mut f: impl FnMut(SyncItem)) -> Result<()> {
        self.sync_range(0..BUCKETS as u32, &mut f)
    }

    /// The items of the given buckets.
    pub fn sync_items(&self, buckets: &[u16]) -> Result<Vec<SyncItem>> {
        let mut out = Vec::new();
        for &b in buckets {
            self.sync_range(b as u32..b as u32 + 1, &mut |i| out.push(i))?;
        }
        Ok(out)
    }

    fn sync_range(&self, buckets: std::ops::Range<u32>, f: &mut dyn FnMut(SyncItem)) -> Result<()> {
        let txn = self.db.begin_read()?;
        let sync = txn.open_table(SYNC)?;
        let manifests = txn.open_table(MANIFESTS)?;
        let lo = (buckets.start as u16).to_be_bytes();
        let hi = buckets.end;
        for r in sync.range(&lo[..]..)? {
            let (k, _) = r?;
            let k = k.value();
            let bucket = u16::from_be_bytes([k[0], k[1]]) as u32;
            if bucket >= hi {
                break;
            }
            let (kind, path, stamp, upload) =
                parse_sync_key(k).ok_or_else(|| StoreError::Damaged(format!("sync key {k:?}")))?;
            let item = if kind == RECORD {
                SyncItem::Record {
                    path: path.to_string(),
                    stamp,
                    upload: upload.to_string(),
                }
            } else {
                let key = super::cluster::fragment_key(path, stamp, upload);
                let Some(v) = manifests.get(key.as_str())? else {
                    return Err(StoreError::Damaged(format!(
                        "sync index names fragment {key:?}, which is missing"
                    )));
                };
                match fragment_item(&key, v.value())? {
                    Some(i) => i,
                    None => continue,
                }
            };
            f(item);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_keys_round_trip_and_group_by_bucket() {
        let k = sync_key(FRAGMENT, "img/a b.png", 1 << 40, "00ff");
        assert_eq!(
            parse_sync_key(&k),
            Some((FRAGMENT, "img/a b.png", 1 << 40, "00ff"))
        );
        assert_eq!(u16::from_be_bytes([k[0], k[1]]), bucket_of("img/a b.png"));
    }
}
