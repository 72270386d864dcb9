//! Publishing without resending what the origin has: a file's bytes in which chunks the
//! origin already stores are named instead of sent (format version 1).
//!
//! A publisher first asks which chunks the origin has: `POST /api/v1/chunks/known` with the
//! addresses as raw 32-byte values back to back (at most [`crate::batch::MAX_BATCH_CHUNKS`],
//! the same body as a chunk batch); the answer (`application/octet-stream`) is one byte per
//! address, in order: `1` stored, `0` not. A cluster node answers for the chunks it holds
//! itself: it may say `0` for a chunk another node holds (the bytes are then sent), never `1`
//! for one it cannot read.
//!
//! Then it publishes with `PUT /api/v1/files/{path}`, `Content-Type:`
//! [`CONTENT_TYPE`], a body of pieces back to back:
//! - `D`, a 4-byte big-endian length (1 to [`MAX_DATA`]), then that many bytes of the file;
//! - `C`, a chunk's 32-byte blake3 address, then its 4-byte big-endian length: the chunk's
//!   bytes, read from the origin's store.
//!
//! The origin puts the file back together (every named chunk is read and checked against its
//! address), so the file it publishes, its manifest and its whole-file blake3 are the same as
//! if the bytes had been sent: nothing the publisher names can make a file other than the
//! bytes it stands for. A named chunk the origin does not have (or no longer has: a garbage
//! collection ran in between) answers `409`, and the publisher sends the file's bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ChunkHash;

/// The request body's type.
pub const CONTENT_TYPE: &str = "application/vnd.tessera.upload.v1";

/// Largest `D` piece.
pub const MAX_DATA: u32 = 4 << 20;

/// Largest chunk a `C` piece may name (larger than any chunk FastCDC cuts).
pub const MAX_CHUNK: u32 = 16 << 20;

/// One piece of an upload body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes of the file, sent.
    Data(Bytes),
    /// A chunk of the file the origin has: its address and length.
    Chunk(ChunkHash, u32),
}

impl Piece {
    /// The piece on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Piece::Data(b) => {
                debug_assert!(!b.is_empty() && b.len() <= MAX_DATA as usize);
                out.put_u8(b'D');
                out.put_u32(b.len() as u32);
                out.put_slice(b);
            }
            Piece::Chunk(h, len) => {
                out.put_u8(b'C');
                out.put_slice(&h.0);
                out.put_u32(*len);
            }
        }
    }
}

/// Why an upload body is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// A piece starts with an unknown tag.
    #[error("upload piece {0}: unknown tag {1:#04x} (expected 'D' or 'C')")]
    Tag(u64, u8),
    /// A `D` piece is empty or too long, or a `C` piece names an impossible length.
    #[error("upload piece {0}: length {1} is out of bounds")]
    Length(u64, u32),
    /// The body ended inside a piece.
    #[error("the upload body ends inside piece {0}")]
    Truncated(u64),
}

/// Cuts an upload body, arriving in pieces of any size, into [`Piece`]s.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    pieces: u64,
}

impl Decoder {
    /// Adds bytes as they arrive.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole piece, if the bytes so far hold one.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, UploadError> {
        let Some(&tag) = self.buf.first() else {
            return Ok(None);
        };
        let n = self.pieces;
        match tag {
            b'D' => {
                if self.buf.len() < 5 {
                    return Ok(None);
                }
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap());
                if len == 0 || len > MAX_DATA {
                    return Err(UploadError::Length(n, len));
                }
                if self.buf.len() < 5 + len as usize {
                    return Ok(None);
                }
                self.buf.advance(5);
                self.pieces += 1;
                Ok(Some(Piece::Data(self.buf.split_to(len as usize).freeze())))
            }
            b'C' => {
                if self.buf.len() < 37 {
                    return Ok(None);
                }
                let hash = ChunkHash(self.buf[1..33].try_into().unwrap());
                let len = u32::from_be_bytes(self.buf[33..37].try_into().unwrap());
                if len == 0 || len > MAX_CHUNK {
                    return Err(UploadError::Length(n, len));
                }
                self.buf.advance(37);
                self.pieces += 1;
                Ok(Some(Piece::Chunk(hash, len)))
            }
            other => Err(UploadError::Tag(n, other)),
        }
    }

    /// Checks that the body ended between pieces.
    pub fn finish(&self) -> Result<(), UploadError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(UploadError::Truncated(self.pieces))
        }
    }
}

/// The answer to `POST /api/v1/chunks/known`: one byte per address.
pub fn encode_known(known: &[bool]) -> Bytes {
    known
        .iter()
        .map(|&k| u8::from(k))
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_round_trip_through_any_cut() {
        let pieces = vec![
            Piece::Data(Bytes::from_static(b"hello")),
            Piece::Chunk(ChunkHash([7; 32]), 16384),
            Piece::Data(Bytes::from(vec![1u8; 70_000])),
        ];
        let mut wire = BytesMut::new();
        for p in &pieces {
            p.encode(&mut wire);
        }
        for cut in [1, 3, 36, 37, 1500, wire.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for part in wire.chunks(cut) {
                d.push(part);
                while let Some(p) = d.next_piece().unwrap() {
                    got.push(p);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, pieces, "cut {cut}");
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        let mut d = Decoder::default();
        d.push(b"X");
        assert_eq!(d.next_piece(), Err(UploadError::Tag(0, b'X')));
        let mut d = Decoder::default();
        d.push(&[b'D', 0, 0, 0, 0]);
        assert_eq!(d.next_piece(), Err(UploadError::Length(0, 0)));
        let mut d = Decoder::default();
        d.push(&[b'D', 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_piece(), Err(UploadError::Length(0, _))));
        let mut d = Decoder::default();
        d.push(&[b'D', 0, 0, 0, 3, 1]);
        assert_eq!(d.next_piece(), Ok(None));
        assert_eq!(d.finish(), Err(UploadError::Truncated(0)));
    }
}
