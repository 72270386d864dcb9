//! The metadata database (redb) and the binary encodings of its values.
//!
//! All metadata lives in one redb file, `meta.redb`, so a publish commits its manifest, its
//! new chunk index entries, reference counts and pack registrations in one transaction.
//!
//! # Tables (format version 1)
//! - `manifests`: publish path → [`StoredManifest`] encoding.
//! - `chunks`: blake3 (32 bytes) → [`ChunkEntry`] encoding (33 bytes).
//! - `garbage`: blake3 → `()`: chunks whose reference count reached 0, awaiting collection.
//! - `packs`: pack id → [`PackEntry`] encoding (16 bytes).
//! - `changes`: sequence number → [`StoredChange`] encoding: the change feed.
//! - `files`: path → [`super::cluster::FileRecord`] JSON (cluster nodes only).
//! - `counters`: name → u64 (`objects`, `logical_bytes`, `unique_bytes`, `change_seq`).
//!
//! Integers are little-endian. A change to an encoding bumps [`META_FORMAT`], which is
//! stored under `counters["format"]`; an origin refuses to open a database of another format.

use redb::TableDefinition;
use tessera_origin_proto::changes::{Change, ChangeOp};
use tessera_origin_proto::{ChunkHash, Manifest, ManifestChunk, manifest::MANIFEST_FORMAT};

use crate::codec::Codec;

/// Version of the on-disk metadata encodings.
pub const META_FORMAT: u64 = 1;

pub const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
pub const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
pub const GARBAGE: TableDefinition<&[u8; 32], ()> = TableDefinition::new("garbage");
pub const PACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("packs");
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

/// A change feed entry as the `changes` table keeps it (the sequence number is the key).
///
/// Encoding: `op u8 (1 put, 2 delete) | blake3 [32] (zeros for a delete) | path bytes`.
#[derive(Debug)]
pub struct StoredChange;

impl StoredChange {
    pub fn encode(op: ChangeOp, blake3: Option<ChunkHash>, path: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(33 + path.len());
        b.push(match op {
            ChangeOp::Put => 1,
            ChangeOp::Delete => 2,
        });
        b.extend_from_slice(blake3.as_ref().map_or(&[0u8; 32], |h| h.as_bytes()));
        b.extend_from_slice(path.as_bytes());
        b
    }

    pub fn decode(seq: u64, b: &[u8]) -> Option<Change> {
        let op = match *b.first()? {
            1 => ChangeOp::Put,
            2 => ChangeOp::Delete,
            _ => return None,
        };
        let hash = ChunkHash(b.get(1..33)?.try_into().ok()?);
        let path = std::str::from_utf8(b.get(33..)?).ok()?.to_string();
        Some(Change {
            seq,
            op,
            path,
            blake3: (op == ChangeOp::Put).then_some(hash),
        })
    }
}

/// Where a chunk is stored and how many manifest entries reference it.
///
/// Encoding: `pack u64 | offset u64 | stored_len u32 | raw_len u32 | codec u8 | refs u64`.
/// `offset` is the start of the chunk's record in the pack (see [`super::pack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// The pack file holding the chunk.
    pub pack: u64,
    /// Offset of the chunk's record in that pack.
    pub offset: u64,
    /// Length of the stored (possibly compressed) bytes.
    pub stored_len: u32,
    /// Length of the chunk itself.
    pub raw_len: u32,
    /// How the stored bytes are encoded.
    pub codec: Codec,
    /// Number of manifest entries (across all files) that reference the chunk.
    pub refs: u64,
}

impl ChunkEntry {
    pub const LEN: usize = 33;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.pack.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        b[24] = self.codec as u8;
        b[25..33].copy_from_slice(&self.refs.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(Self {
            pack: u64::from_le_bytes(b[0..8].try_into().ok()?),
            offset: u64::from_le_bytes(b[8..16].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[16..20].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[20..24].try_into().ok()?),
            codec: Codec::from_u8(b[24])?,
            refs: u64::from_le_bytes(b[25..33].try_into().ok()?),
        })
    }
}

/// A registered pack file: its size and how many of its bytes are no longer referenced.
///
/// Encoding: `total u64 | dead u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackEntry {
    /// Bytes of records written to the pack (its file is this plus the header).
    pub total: u64,
    /// Bytes of records whose chunk was collected or superseded.
    pub dead: u64,
}

impl PackEntry {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.total.to_le_bytes());
        b[8..16].copy_from_slice(&self.dead.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == 16).then(|| Self {
            total: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            dead: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        })
    }
}

/// A manifest as the `manifests` table keeps it (the path is the key).
///
/// Encoding, version 1: `version u8 = 1 | size u64 | blake3 [32] | modified u64 |
/// content_type_len u16 | content_type bytes | n u32 | n × (hash [32] | size u32)`.
/// Chunk offsets are not stored; they are the running sum of sizes.
#[derive(Debug)]
pub struct StoredManifest;

impl StoredManifest {
    const VERSION: u8 = 1;
    const HEAD: usize = 1 + 8 + 32 + 8;

    pub fn encode(m: &Manifest) -> Vec<u8> {
        let ct = m.content_type.as_bytes();
        let ct = &ct[..ct.len().min(u16::MAX as usize)];
        let mut b = Vec::with_capacity(Self::HEAD + 2 + ct.len() + 4 + m.chunks.len() * 36);
        b.push(Self::VERSION);
        b.extend_from_slice(&m.size.to_le_bytes());
        b.extend_from_slice(m.blake3.as_bytes());
        b.extend_from_slice(&m.modified.to_le_bytes());
        b.extend_from_slice(&(ct.len() as u16).to_le_bytes());
        b.extend_from_slice(ct);
        b.extend_from_slice(&(m.chunks.len() as u32).to_le_bytes());
        for c in &m.chunks {
            b.extend_from_slice(c.hash.as_bytes());
            b.extend_from_slice(&c.size.to_le_bytes());
        }
        b
    }

    /// The size and whole-file hash, without decoding the chunk list.
    pub fn decode_head(b: &[u8]) -> Option<(u64, ChunkHash)> {
        if b.len() < Self::HEAD || b[0] != Self::VERSION {
            return None;
        }
        Some((
            u64::from_le_bytes(b[1..9].try_into().ok()?),
            ChunkHash(b[9..41].try_into().ok()?),
        ))
    }

    pub fn decode(path: &str, b: &[u8]) -> Option<Manifest> {
        let (size, blake3) = Self::decode_head(b)?;
        let modified = u64::from_le_bytes(b.get(41..49)?.try_into().ok()?);
        let ct_len = u16::from_le_bytes(b.get(49..51)?.try_into().ok()?) as usize;
        let content_type = std::str::from_utf8(b.get(51..51 + ct_len)?)
            .ok()?
            .to_string();
        let mut at = 51 + ct_len;
        let n = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        if b.len() != at + n * 36 {
            return None;
        }
        let mut offset = 0u64;
        let chunks = b[at..]
            .chunks_exact(36)
            .map(|r| {
                let size = u32::from_le_bytes(r[32..36].try_into().unwrap());
                let c = ManifestChunk {
                    hash: ChunkHash(r[..32].try_into().unwrap()),
                    offset,
                    size,
                };
                offset += u64::from(size);
                c
            })
            .collect();
        let m = Manifest {
            format: MANIFEST_FORMAT,
            path: path.to_string(),
            size,
            blake3,
            content_type,
            modified,
            chunks,
        };
        m.check().ok()?;
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let e = ChunkEntry {
            pack: 7,
            offset: 99,
            stored_len: 5,
            raw_len: 9,
            codec: Codec::Brotli,
            refs: 3,
        };
        assert_eq!(ChunkEntry::decode(&e.encode()), Some(e));
        assert_eq!(ChunkEntry::decode(&[0u8; 32]), None);
        let p = PackEntry { total: 10, dead: 4 };
        assert_eq!(PackEntry::decode(&p.encode()), Some(p));

        let m = Manifest {
            format: MANIFEST_FORMAT,
            path: "x/y.css".into(),
            size: 7,
            blake3: ChunkHash::of(b"f"),
            content_type: "text/css".into(),
            modified: 1234,
            chunks: vec![
                ManifestChunk {
                    hash: ChunkHash::of(b"a"),
                    offset: 0,
                    size: 3,
                },
                ManifestChunk {
                    hash: ChunkHash::of(b"b"),
                    offset: 3,
                    size: 4,
                },
            ],
        };
        let b = StoredManifest::encode(&m);
        assert_eq!(StoredManifest::decode("x/y.css", &b), Some(m));
        for cut in 0..b.len() {
            assert_eq!(
                StoredManifest::decode("x/y.css", &b[..cut]),
                None,
                "truncated at {cut}"
            );
        }
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Damaged bytes never panic a decoder: every truncation and every single-byte change
    /// of a valid encoding, and random bytes, decode to a value or to `None`.
    #[test]
    fn decoders_survive_damaged_input() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            path: "p".into(),
            size: 10,
            blake3: ChunkHash::of(b"p"),
            content_type: "text/plain".into(),
            modified: 5,
            chunks: vec![
                ManifestChunk {
                    hash: ChunkHash::of(b"1"),
                    offset: 0,
                    size: 4,
                },
                ManifestChunk {
                    hash: ChunkHash::of(b"2"),
                    offset: 4,
                    size: 6,
                },
            ],
        };
        let good = StoredManifest::encode(&m);
        for i in 0..good.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                if let Some(d) = StoredManifest::decode("p", &b) {
                    assert!(d.check().is_ok());
                }
            }
        }
        let mut seed = 0x1234_5678_9abc_def0u64;
        for n in 0..2000usize {
            let b: Vec<u8> = (0..n % 300)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = StoredManifest::decode("p", &b);
            let _ = ChunkEntry::decode(&b);
            let _ = PackEntry::decode(&b);
            let _ = StoredChange::decode(1, &b);
            let _ = tessera_origin_proto::Manifest::from_json(&b);
        }
    }
}
