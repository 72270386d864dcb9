//! Manifests: what a published file is made of.

use serde::{Deserialize, Serialize};

use crate::ChunkHash;

/// Version of the manifest wire format written by this crate.
///
/// Readers refuse other versions. A change that old readers could misread (a new meaning for
/// a field, a different hash) bumps it; adding an optional field does not.
pub const MANIFEST_FORMAT: u32 = 1;

/// A published file, as `GET /api/v1/manifests/{path}` returns it (JSON).
///
/// Format version 1:
/// ```json
/// {"format": 1, "path": "assets/app.js", "size": 70000,
///  "blake3": "<64 hex: hash of the whole file>",
///  "content_type": "text/javascript", "modified": 1764316800,
///  "chunks": [{"hash": "<64 hex>", "offset": 0, "size": 17000}, ...]}
/// ```
/// `chunks` are in file order; each starts where the previous one ended, and their sizes add
/// up to `size`. A chunk's bytes are served by `GET /api/v1/chunks/{hash}`; `hash` is the
/// blake3 of the chunk's uncompressed bytes. `modified` is the publish time in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Wire format version, [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The publish path, without a leading `/`.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// blake3 of the whole file; the origin's `ETag` is this, quoted.
    pub blake3: ChunkHash,
    /// MIME type, from the path's extension at publish time.
    pub content_type: String,
    /// Publish time, Unix seconds; the origin's `Last-Modified`.
    pub modified: u64,
    /// The file's chunks, in order.
    pub chunks: Vec<ManifestChunk>,
}

/// One chunk of a [`Manifest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestChunk {
    /// blake3 of the chunk's bytes: its address.
    pub hash: ChunkHash,
    /// Offset of the chunk's first byte in the file.
    pub offset: u64,
    /// Chunk length in bytes (never 0).
    pub size: u32,
}

/// Why bytes are not a valid manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the right shape.
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A format version this reader does not know.
    #[error("manifest format {0} is not supported (this reader knows {MANIFEST_FORMAT})")]
    Format(u32),
    /// The chunk list does not tile the file.
    #[error("manifest chunk {index} is inconsistent: {why}")]
    Chunks {
        /// Position of the bad chunk in the list.
        index: usize,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Manifest {
    /// Parses and checks a manifest received from outside (an origin's reply).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        m.check()?;
        Ok(m)
    }

    /// Checks the invariants a reader relies on: the version, and chunks that tile the file.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        let mut at = 0u64;
        for (index, c) in self.chunks.iter().enumerate() {
            if c.size == 0 {
                return Err(ManifestError::Chunks {
                    index,
                    why: "size is 0",
                });
            }
            if c.offset != at {
                return Err(ManifestError::Chunks {
                    index,
                    why: "offset does not follow the previous chunk",
                });
            }
            at += u64::from(c.size);
        }
        if at != self.size {
            return Err(ManifestError::Chunks {
                index: self.chunks.len(),
                why: "chunk sizes do not add up to the file size",
            });
        }
        Ok(())
    }

    /// Indices of the chunks that hold bytes `start..end` of the file (`end` exclusive).
    pub fn chunks_covering(&self, start: u64, end: u64) -> std::ops::Range<usize> {
        if start >= end {
            return 0..0;
        }
        let first = self
            .chunks
            .partition_point(|c| c.offset + u64::from(c.size) <= start);
        let last = self.chunks.partition_point(|c| c.offset < end);
        first..last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let chunks = [10u32, 20, 5]
            .iter()
            .scan(0u64, |at, &size| {
                let c = ManifestChunk {
                    hash: ChunkHash::of(&at.to_le_bytes()),
                    offset: *at,
                    size,
                };
                *at += u64::from(size);
                Some(c)
            })
            .collect();
        Manifest {
            format: MANIFEST_FORMAT,
            path: "a/b".into(),
            size: 35,
            blake3: ChunkHash::of(b"x"),
            content_type: "text/plain".into(),
            modified: 1,
            chunks,
        }
    }

    #[test]
    fn json_round_trip_and_checks() {
        let m = sample();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);

        let mut bad = m.clone();
        bad.size = 36;
        assert!(matches!(
            bad.check(),
            Err(ManifestError::Chunks { index: 3, .. })
        ));
        let mut bad = m.clone();
        bad.chunks[1].offset = 11;
        assert!(matches!(
            bad.check(),
            Err(ManifestError::Chunks { index: 1, .. })
        ));
        let mut bad = m;
        bad.format = 2;
        assert!(matches!(bad.check(), Err(ManifestError::Format(2))));
        assert!(Manifest::from_json(b"{\"format\":1}").is_err());
    }

    #[test]
    fn covering() {
        let m = sample(); // chunks [0,10) [10,30) [30,35)
        assert_eq!(m.chunks_covering(0, 35), 0..3);
        assert_eq!(m.chunks_covering(0, 10), 0..1);
        assert_eq!(m.chunks_covering(9, 11), 0..2);
        assert_eq!(m.chunks_covering(10, 30), 1..2);
        assert_eq!(m.chunks_covering(34, 35), 2..3);
        assert_eq!(m.chunks_covering(5, 5), 0..0);
    }
}
