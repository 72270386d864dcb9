//! Anti-entropy digests: what two nodes compare so that a repair pass over an unchanged
//! cluster exchanges digests and nothing else.
//!
//! For every other node `o`, a node keeps two arrays of [`BUCKETS`] 128-bit digests over
//! what both of them should hold:
//! - **records**: the XOR of `H("r", path, stamp, upload)` over the file records this node
//!   holds whose path both nodes own;
//! - **fragments**: the XOR of `H("f", path, stamp, upload, chunk)` over every chunk of every
//!   fragment this node holds that both nodes own.
//!
//! An item's bucket is [`bucket_of`] its path. Two nodes that agree hold equal arrays
//! (records a node holds without owning them, hinted copies, are left out: repair hands
//! them over separately). XOR makes the digests incremental: each committed change from the
//! store ([`SyncEvent`]) is XORed in or out, so nothing is rescanned.
//!
//! A pass is a two-level Merkle descent. It fetches the peer's top level
//! (`GET /api/v1/cluster/sync/digest?peer=ME`: [`TOP`] groups of [`FANOUT`] buckets, each
//! the XOR of its buckets, records and fragments: 128 KiB); for the groups that differ,
//! their buckets (`POST /api/v1/cluster/sync/digest?peer=ME` with `{"groups": [...]}`); and
//! for the buckets that differ, the items themselves
//! (`POST /api/v1/cluster/sync/items?peer=ME` with `{"buckets": [...]}`). The paths whose
//! items differ are repaired. With 65,536 buckets, a node that missed 1 % of a million
//! files lists about a tenth of the items it shares with the peer, not all of them.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tessera_origin_proto::ChunkHash;
use tessera_origin_proto::ring::Ring;

pub use crate::store::sync::{BUCKETS, SyncEvent, SyncItem, bucket_of};

/// Buckets per group of the top level.
pub const FANOUT: usize = 16;
/// Groups of the top level.
pub const TOP: usize = BUCKETS / FANOUT;

/// One node's view of what it shares with one peer.
#[derive(Debug, Clone)]
struct PeerDigest {
    records: Vec<u128>,
    fragments: Vec<u128>,
    /// Chunk references of this node's fragments the peer also owns.
    chunks: u64,
}

impl PeerDigest {
    fn new() -> Self {
        Self {
            records: vec![0; BUCKETS],
            fragments: vec![0; BUCKETS],
            chunks: 0,
        }
    }
}

/// The digests of one node against each of its peers.
#[derive(Debug)]
pub struct Digests {
    me: usize,
    ring: Arc<Ring>,
    peers: Mutex<Vec<PeerDigest>>,
}

/// An item as listed for one peer: its identity and its hash toward that peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Listed {
    /// `r` (record) or `f` (fragment).
    pub kind: char,
    pub path: String,
    pub stamp: u64,
    pub upload: String,
    /// Hex of the item's 128-bit contribution to the pair's digest.
    pub hash: String,
}

fn h128(parts: &[&[u8]]) -> u128 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    u128::from_le_bytes(h.finalize().as_bytes()[..16].try_into().unwrap())
}

fn record_hash(path: &str, stamp: u64, upload: &str) -> u128 {
    h128(&[
        b"r",
        path.as_bytes(),
        &[0],
        &stamp.to_be_bytes(),
        upload.as_bytes(),
    ])
}

fn chunk_hash(path: &str, stamp: u64, upload: &str, chunk: &ChunkHash) -> u128 {
    h128(&[
        b"f",
        path.as_bytes(),
        &[0],
        &stamp.to_be_bytes(),
        upload.as_bytes(),
        chunk.as_bytes(),
    ])
}

/// What one item adds to the digests of each peer: `(peer, hash, chunk references)`.
#[derive(Debug, Default)]
pub struct Contribution {
    pub shares: Vec<(usize, u128, u64)>,
    /// The item holds something this node does not own (a hinted copy).
    pub hinted: bool,
}

impl Digests {
    /// Empty digests of node `me` on `ring`.
    pub fn new(me: usize, ring: Arc<Ring>) -> Self {
        let n = ring.nodes().len();
        Self {
            me,
            ring,
            peers: Mutex::new(vec![PeerDigest::new(); n]),
        }
    }

    /// What `item` contributes toward each peer.
    pub fn contribution(&self, item: &SyncItem) -> Contribution {
        let mut c = Contribution::default();
        match item {
            SyncItem::Record {
                path,
                stamp,
                upload,
            } => {
                let owners = self.ring.file_owners(path);
                if !owners.contains(&self.me) {
                    c.hinted = true;
                    return c;
                }
                let h = record_hash(path, *stamp, upload);
                for o in owners {
                    if o != self.me {
                        c.shares.push((o, h, 0));
                    }
                }
            }
            SyncItem::Fragment {
                path,
                stamp,
                upload,
                chunks,
            } => {
                let n = self.ring.nodes().len();
                let mut acc = vec![(0u128, 0u64); n];
                for ch in chunks {
                    let owners = self.ring.chunk_owners(ch);
                    if !owners.contains(&self.me) {
                        c.hinted = true;
                        continue;
                    }
                    let h = chunk_hash(path, *stamp, upload, ch);
                    for o in owners {
                        if o != self.me {
                            acc[o].0 ^= h;
                            acc[o].1 += 1;
                        }
                    }
                }
                for (o, (h, count)) in acc.into_iter().enumerate() {
                    if count > 0 {
                        c.shares.push((o, h, count));
                    }
                }
            }
        }
        c
    }

    /// XORs `item` in (`added`) or out; returns whether it is a hinted copy.
    pub fn apply(&self, item: &SyncItem, added: bool) -> bool {
        let c = self.contribution(item);
        let b = bucket_of(item.path()) as usize;
        let is_record = matches!(item, SyncItem::Record { .. });
        let mut peers = self.peers.lock().unwrap();
        for (o, h, count) in c.shares {
            let p = &mut peers[o];
            if is_record {
                p.records[b] ^= h;
            } else {
                p.fragments[b] ^= h;
                if added {
                    p.chunks += count;
                } else {
                    p.chunks = p.chunks.saturating_sub(count);
                }
            }
        }
        c.hinted
    }

    /// The top level of the digests toward `peer`: for each of the [`TOP`] groups of
    /// [`FANOUT`] buckets, the XOR of their record digests, then likewise for fragments;
    /// 16 bytes LE each.
    pub fn encoded_top(&self, peer: usize) -> Vec<u8> {
        let peers = self.peers.lock().unwrap();
        // A node that joined after these digests were built (they are being rebuilt for
        // the new ring): nothing shared yet.
        let Some(p) = peers.get(peer) else {
            return vec![0; 2 * TOP * 16];
        };
        let mut out = Vec::with_capacity(2 * TOP * 16);
        for side in [&p.records, &p.fragments] {
            for group in side.chunks(FANOUT) {
                let x = group.iter().fold(0u128, |a, b| a ^ b);
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// The groups where `theirs` ([`Digests::encoded_top`] by `peer`) differs from ours
    /// toward it; `None` if `theirs` is malformed.
    pub fn differing_top(&self, peer: usize, theirs: &[u8]) -> Option<Vec<u16>> {
        if theirs.len() != 2 * TOP * 16 {
            return None;
        }
        let mine = self.encoded_top(peer);
        Some(
            (0..TOP)
                .filter(|&t| {
                    let r = t * 16..t * 16 + 16;
                    let f = (TOP + t) * 16..(TOP + t) * 16 + 16;
                    mine[r.clone()] != theirs[r] || mine[f.clone()] != theirs[f]
                })
                .map(|t| t as u16)
                .collect(),
        )
    }

    /// The bucket digests of `groups` toward `peer`: per group, its [`FANOUT`] record
    /// digests then its fragment digests, 16 bytes LE each.
    pub fn encoded_buckets(&self, peer: usize, groups: &[u16]) -> Vec<u8> {
        let peers = self.peers.lock().unwrap();
        let Some(p) = peers.get(peer) else {
            return vec![0; groups.len() * 2 * FANOUT * 16];
        };
        let mut out = Vec::with_capacity(groups.len() * 2 * FANOUT * 16);
        for &g in groups {
            let r = g as usize * FANOUT..(g as usize + 1) * FANOUT;
            for d in p.records[r.clone()].iter().chain(&p.fragments[r]) {
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        out
    }

    /// The buckets of `groups` where `theirs` ([`Digests::encoded_buckets`] by `peer`)
    /// differs from ours; `None` if `theirs` is malformed.
    pub fn differing_buckets(
        &self,
        peer: usize,
        groups: &[u16],
        theirs: &[u8],
    ) -> Option<Vec<u16>> {
        if theirs.len() != groups.len() * 2 * FANOUT * 16 {
            return None;
        }
        let mine = self.encoded_buckets(peer, groups);
        let mut out = Vec::new();
        for (i, &g) in groups.iter().enumerate() {
            for b in 0..FANOUT {
                let r = (i * 2 * FANOUT + b) * 16;
                let f = (i * 2 * FANOUT + FANOUT + b) * 16;
                if mine[r..r + 16] != theirs[r..r + 16] || mine[f..f + 16] != theirs[f..f + 16] {
                    out.push((g as usize * FANOUT + b) as u16);
                }
            }
        }
        Some(out)
    }

    /// Chunk references this node holds that `peer` also owns.
    pub fn shared_chunks(&self, peer: usize) -> u64 {
        self.peers.lock().unwrap().get(peer).map_or(0, |p| p.chunks)
    }

    /// `items` as listed toward `peer`: those that count in the pair's digests.
    pub fn listed(&self, items: &[SyncItem], peer: usize) -> Vec<Listed> {
        let mut out = Vec::new();
        for item in items {
            let c = self.contribution(item);
            let Some(&(_, h, _)) = c.shares.iter().find(|s| s.0 == peer) else {
                continue;
            };
            let (kind, path, stamp, upload) = match item {
                SyncItem::Record {
                    path,
                    stamp,
                    upload,
                } => ('r', path, stamp, upload),
                SyncItem::Fragment {
                    path,
                    stamp,
                    upload,
                    ..
                } => ('f', path, stamp, upload),
            };
            out.push(Listed {
                kind,
                path: path.clone(),
                stamp: *stamp,
                upload: upload.clone(),
                hash: format!("{h:032x}"),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_origin_proto::ring::RingNode;

    fn ring() -> Arc<Ring> {
        Arc::new(Ring::new(
            (1..=3)
                .map(|i| RingNode {
                    id: format!("o{i}"),
                    weight: 1,
                })
                .collect(),
            64,
            2,
        ))
    }

    #[test]
    fn a_peer_newer_than_the_digests_shares_nothing_and_panics_nothing() {
        // A node joined; these digests, built for the ring before, are being rebuilt.
        let d = Digests::new(0, ring());
        assert_eq!(d.encoded_top(3), vec![0; 2 * TOP * 16]);
        assert_eq!(d.encoded_buckets(3, &[0, 1]).len(), 2 * 2 * FANOUT * 16);
        assert_eq!(d.shared_chunks(3), 0);
        assert!(
            d.differing_top(3, &vec![0; 2 * TOP * 16])
                .unwrap()
                .is_empty()
        );
    }

    fn fragment(path: &str, chunks: &[u8]) -> SyncItem {
        SyncItem::Fragment {
            path: path.into(),
            stamp: 7,
            upload: "u".into(),
            chunks: chunks.iter().map(|&b| ChunkHash::of(&[b])).collect(),
        }
    }

    #[test]
    fn two_nodes_holding_their_shares_agree_and_any_change_shows_in_one_bucket() {
        let ring = ring();
        let nodes: Vec<Digests> = (0..3).map(|i| Digests::new(i, ring.clone())).collect();
        // Each node holds the chunks of the file it owns, as a publish leaves them.
        let all: Vec<u8> = (0..40).collect();
        for (i, d) in nodes.iter().enumerate() {
            let mine: Vec<u8> = all
                .iter()
                .copied()
                .filter(|&b| ring.chunk_owners(&ChunkHash::of(&[b])).contains(&i))
                .collect();
            d.apply(&fragment("a/b", &mine), true);
        }
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    let theirs = nodes[b].encoded_top(a);
                    assert_eq!(nodes[a].differing_top(b, &theirs), Some(vec![]), "{a} {b}");
                }
            }
        }
        // Node 0 loses its fragment: each peer it shares chunks with sees one bucket differ.
        let mine: Vec<u8> = all
            .iter()
            .copied()
            .filter(|&b| ring.chunk_owners(&ChunkHash::of(&[b])).contains(&0))
            .collect();
        nodes[0].apply(&fragment("a/b", &mine), false);
        let bucket = bucket_of("a/b");
        let group = bucket / FANOUT as u16;
        let theirs = nodes[1].encoded_top(0);
        assert_eq!(nodes[0].differing_top(1, &theirs), Some(vec![group]));
        assert_eq!(nodes[0].differing_top(1, &theirs[1..]), None);
        let theirs = nodes[1].encoded_buckets(0, &[group, group ^ 1]);
        assert_eq!(
            nodes[0].differing_buckets(1, &[group, group ^ 1], &theirs),
            Some(vec![bucket])
        );
        assert_eq!(nodes[0].differing_buckets(1, &[group], &theirs), None);
        assert_eq!(nodes[0].shared_chunks(1), 0);
        assert!(nodes[1].shared_chunks(0) > 0);
    }
}
