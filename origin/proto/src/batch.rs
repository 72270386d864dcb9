//! Chunk batches: many chunks in one streamed response, so a miss on a file costs one request
//! per origin node instead of one per 16 KiB chunk.
//!
//! This module holds the wire format only (an encoder and a decoder that do no I/O); the
//! request is [`crate::OriginClient::chunk_batch`] and the origin's `POST /api/v1/chunks`.
//!
//! # Wire format (version 1)
//! Request: `POST /api/v1/chunks` with `Content-Type: application/vnd.tessera.chunk-list.v1`,
//! the body the chunks' blake3 addresses as raw 32-byte values, back to back, at most
//! [`MAX_BATCH_CHUNKS`] of them (the origin answers `400` to a body whose length is not a
//! multiple of 32 and `413` to a longer list). An `Accept-Encoding: br` request header lets
//! the origin send chunks in the brotli encoding it stores them in.
//!
//! Response: `200`, `Content-Type: application/vnd.tessera.chunks.v1`, a streamed body made of
//! the 4 bytes [`MAGIC`] followed by exactly one frame per requested address, in the order
//! requested:
//!
//! ```text
//! kind: u8 | address: [u8; 32] | length: u32, big endian | payload: [u8; length]
//! ```
//!
//! - kind 0, [`Encoding::Identity`]: the payload is the chunk.
//! - kind 1, [`Encoding::Brotli`]: the payload is a brotli stream that decodes to the chunk.
//! - kind 2, unavailable: this node has no copy it could verify (length 0): ask a replica.
//!
//! A payload is at most [`MAX_PAYLOAD`] bytes. The origin checks every chunk against its
//! address before it sends it, and the client checks again after decoding: a frame whose
//! bytes do not hash to its address is corruption (in transit or on the node), never data.
//! An origin that fails in the middle of a batch ends the body early; the client reports
//! how many frames arrived, so the rest can be asked of another node.
//!
//! Compatibility: the magic names the version. A decoder refuses any other magic, an
//! unknown kind, an oversized payload, bytes after the last frame, and frames for
//! addresses other than those requested, in that order.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ChunkHash;

/// The first bytes of a batch response body; the last byte is the format version.
pub const MAGIC: [u8; 4] = *b"TCB\x01";
/// Content type of a batch request body.
pub const REQUEST_TYPE: &str = "application/vnd.tessera.chunk-list.v1";
/// Content type of a batch response body.
pub const RESPONSE_TYPE: &str = "application/vnd.tessera.chunks.v1";
/// Most addresses one batch request may list.
pub const MAX_BATCH_CHUNKS: usize = 4096;
/// Largest payload of one frame: the chunker's largest chunk is 64 KiB; brotli may add a
/// little to incompressible bytes, and a later chunker may cut larger chunks.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER: usize = 1 + 32 + 4;

/// How a frame's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The chunk's own bytes.
    Identity,
    /// A brotli stream of the chunk's bytes.
    Brotli,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A chunk's payload, not yet decoded or checked.
    Chunk {
        hash: ChunkHash,
        encoding: Encoding,
        payload: Bytes,
    },
    /// The node has no copy of `hash` it could verify.
    Unavailable { hash: ChunkHash },
}

impl Frame {
    /// The address the frame is for.
    pub fn hash(&self) -> ChunkHash {
        match self {
            Frame::Chunk { hash, .. } | Frame::Unavailable { hash } => *hash,
        }
    }
}

/// What is wrong with a batch body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body does not start with [`MAGIC`].
    #[error("not a chunk batch of version 1 (starts with {0:02x?})")]
    BadMagic(Vec<u8>),
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame longer than [`MAX_PAYLOAD`].
    #[error("a frame of {0} bytes is larger than the limit of {MAX_PAYLOAD}")]
    TooLarge(u32),
    /// A frame for another address than the one requested at its position.
    #[error("frame {position} is for chunk {got}, but {expected} was requested there")]
    OutOfOrder {
        position: usize,
        expected: ChunkHash,
        got: ChunkHash,
    },
    /// More frames than addresses requested.
    #[error("more frames than the {0} chunks requested")]
    TooMany(usize),
    /// The body ended before every requested frame arrived.
    #[error("the body ended after {got} of {expected} frames")]
    Truncated { got: usize, expected: usize },
}

/// The request body listing `hashes`.
pub fn encode_request(hashes: &[ChunkHash]) -> Bytes {
    let mut b = BytesMut::with_capacity(hashes.len() * 32);
    for h in hashes {
        b.put_slice(&h.0);
    }
    b.freeze()
}

/// The addresses a request body lists, or why it is not a valid list.
pub fn decode_request(body: &[u8]) -> Result<Vec<ChunkHash>, String> {
    if !body.len().is_multiple_of(32) {
        return Err(format!(
            "a chunk list is 32-byte addresses back to back; {} bytes is not a multiple of 32",
            body.len()
        ));
    }
    let n = body.len() / 32;
    if n > MAX_BATCH_CHUNKS {
        return Err(format!(
            "{n} chunks asked; a batch holds at most {MAX_BATCH_CHUNKS}"
        ));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| ChunkHash(c.try_into().unwrap()))
        .collect())
}

/// The header of a frame carrying `payload_len` bytes (the payload follows it on the wire).
pub fn frame_header(kind: Option<Encoding>, hash: &ChunkHash, payload_len: usize) -> Bytes {
    assert!(payload_len <= MAX_PAYLOAD, "frame payload over the limit");
    let mut b = BytesMut::with_capacity(FRAME_HEADER);
    b.put_u8(match kind {
        Some(Encoding::Identity) => 0,
        Some(Encoding::Brotli) => 1,
        None => 2,
    });
    b.put_slice(&hash.0);
    b.put_u32(payload_len as u32);
    b.freeze()
}

/// Decodes a batch body fed to it piece by piece, checking each frame against the address
/// requested at its position. Does no I/O. Each payload is copied once, into a buffer of its
/// own of exactly its length (allocated when its frame's header arrived): a chunk kept from
/// it holds no bytes of its neighbours, and nothing is allocated more than one frame ahead of
/// what was given.
#[derive(Debug)]
pub struct Decoder {
    expected: Vec<ChunkHash>,
    /// The magic, or the header of the next frame, while incomplete.
    head: Vec<u8>,
    magic_seen: bool,
    /// Frame headers accepted (the position of the next one).
    headers: usize,
    /// The frame whose payload is arriving: kind, address, length and the bytes so far.
    current: Option<(u8, ChunkHash, usize, BytesMut)>,
    /// Complete frames not yet taken.
    ready: std::collections::VecDeque<Frame>,
    /// What was wrong with the body; given after the frames that came before it.
    error: Option<BatchError>,
    /// Frames taken so far.
    given: usize,
}

impl Decoder {
    /// A decoder for the answer to a request for `expected`, in order.
    pub fn new(expected: Vec<ChunkHash>) -> Decoder {
        Decoder {
            expected,
            head: Vec::with_capacity(FRAME_HEADER),
            magic_seen: false,
            headers: 0,
            current: None,
            ready: Default::default(),
            error: None,
            given: 0,
        }
    }

    /// Adds bytes received.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            if let Some((_, _, len, payload)) = &mut self.current {
                let take = (*len - payload.len()).min(data.len());
                payload.extend_from_slice(&data[..take]);
                data = &data[take..];
                if payload.len() == *len {
                    self.complete();
                }
                continue;
            }
            let want = if self.magic_seen {
                FRAME_HEADER
            } else {
                MAGIC.len()
            };
            if self.magic_seen && self.headers == self.expected.len() {
                self.error = Some(BatchError::TooMany(self.expected.len()));
                break;
            }
            let take = (want - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() == want {
                self.error = self.accept_head().err();
                self.head.clear();
            }
        }
    }

    /// The magic or a frame header is complete: check it and start its frame.
    fn accept_head(&mut self) -> Result<(), BatchError> {
        let h = &self.head;
        if !self.magic_seen {
            if h[..] != MAGIC {
                return Err(BatchError::BadMagic(h.clone()));
            }
            self.magic_seen = true;
            return Ok(());
        }
        let kind = h[0];
        if kind > 2 {
            return Err(BatchError::UnknownKind(kind));
        }
        let len = u32::from_be_bytes(h[33..37].try_into().unwrap());
        if len as usize > MAX_PAYLOAD {
            return Err(BatchError::TooLarge(len));
        }
        let hash = ChunkHash(h[1..33].try_into().unwrap());
        let expected = self.expected[self.headers];
        if hash != expected {
            return Err(BatchError::OutOfOrder {
                position: self.headers,
                expected,
                got: hash,
            });
        }
        self.headers += 1;
        let len = len as usize;
        self.current = Some((kind, hash, len, BytesMut::with_capacity(len)));
        if len == 0 {
            self.complete();
        }
        Ok(())
    }

    /// The current frame's payload is complete.
    fn complete(&mut self) {
        let Some((kind, hash, _, payload)) = self.current.take() else {
            return;
        };
        let payload = payload.freeze();
        self.ready.push_back(match kind {
            0 => Frame::Chunk {
                hash,
                encoding: Encoding::Identity,
                payload,
            },
            1 => Frame::Chunk {
                hash,
                encoding: Encoding::Brotli,
                payload,
            },
            _ => Frame::Unavailable { hash },
        });
    }

    /// Frames taken so far.
    pub fn frames(&self) -> usize {
        self.given
    }

    /// The next complete frame, `None` when more bytes are needed or every frame arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, BatchError> {
        if let Some(f) = self.ready.pop_front() {
            self.given += 1;
            return Ok(Some(f));
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// Checks, once the body ended, that every frame arrived and nothing followed.
    pub fn finish(&self) -> Result<(), BatchError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let complete = self.headers - usize::from(self.current.is_some());
        if complete < self.expected.len() {
            return Err(BatchError::Truncated {
                got: complete,
                expected: self.expected.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frames: &[(Option<Encoding>, ChunkHash, &[u8])]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for (kind, h, p) in frames {
            b.extend_from_slice(&frame_header(*kind, h, p.len()));
            b.extend_from_slice(p);
        }
        b
    }

    #[test]
    fn frames_round_trip_fed_byte_by_byte() {
        let (a, b, c) = (
            ChunkHash::of(b"a"),
            ChunkHash::of(b"bb"),
            ChunkHash::of(b"c"),
        );
        let wire = body(&[
            (Some(Encoding::Identity), a, b"a"),
            (None, b, b""),
            (Some(Encoding::Brotli), c, b"xyz"),
        ]);
        let mut d = Decoder::new(vec![a, b, c]);
        let mut got = Vec::new();
        for byte in &wire {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(
            got,
            [
                Frame::Chunk {
                    hash: a,
                    encoding: Encoding::Identity,
                    payload: Bytes::from_static(b"a")
                },
                Frame::Unavailable { hash: b },
                Frame::Chunk {
                    hash: c,
                    encoding: Encoding::Brotli,
                    payload: Bytes::from_static(b"xyz")
                },
            ]
        );
    }

    #[test]
    fn each_payload_is_a_buffer_of_its_own_of_its_exact_length() {
        let payloads: Vec<Vec<u8>> = (1..=3u8).map(|i| vec![i; 1000 * i as usize]).collect();
        let hashes: Vec<ChunkHash> = payloads.iter().map(|p| ChunkHash::of(p)).collect();
        let frames: Vec<_> = hashes
            .iter()
            .zip(&payloads)
            .map(|(h, p)| (Some(Encoding::Identity), *h, &p[..]))
            .collect();
        let wire = body(&frames);
        let mut d = Decoder::new(hashes);
        // Pieces that cut across frames, as a socket delivers them.
        for piece in wire.chunks(1500) {
            d.push(piece);
        }
        for p in &payloads {
            let Some(Frame::Chunk { payload, .. }) = d.next_frame().unwrap() else {
                panic!("a chunk frame")
            };
            assert_eq!(&payload[..], &p[..]);
            // Held by nothing else (no neighbour shares its buffer), and no larger.
            let own = payload
                .try_into_mut()
                .expect("the payload's buffer is its own");
            assert_eq!(own.capacity(), p.len());
        }
        d.finish().unwrap();
        assert_eq!(d.frames(), 3);
    }

    #[test]
    fn bad_bodies_are_refused() {
        let (a, b) = (ChunkHash::of(b"a"), ChunkHash::of(b"b"));
        let one = |kind, h: ChunkHash, p: &[u8], expected: Vec<ChunkHash>| {
            let mut d = Decoder::new(expected);
            d.push(&body(&[(kind, h, p)]));
            d.next_frame()
        };
        assert_eq!(
            one(Some(Encoding::Identity), b, b"b", vec![a]),
            Err(BatchError::OutOfOrder {
                position: 0,
                expected: a,
                got: b
            })
        );
        assert_eq!(
            one(Some(Encoding::Identity), a, b"a", vec![]),
            Err(BatchError::TooMany(0))
        );
        let mut d = Decoder::new(vec![a]);
        d.push(b"TCB\x02");
        assert!(matches!(d.next_frame(), Err(BatchError::BadMagic(_))));
        let mut wire = body(&[(None, a, b"")]);
        wire[4] = 9;
        let mut d = Decoder::new(vec![a]);
        d.push(&wire);
        assert_eq!(d.next_frame(), Err(BatchError::UnknownKind(9)));
        let mut wire = MAGIC.to_vec();
        wire.push(0);
        wire.extend_from_slice(&a.0);
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut d = Decoder::new(vec![a]);
        d.push(&wire);
        assert_eq!(d.next_frame(), Err(BatchError::TooLarge(u32::MAX)));
        // Truncated: one of two frames.
        let mut d = Decoder::new(vec![a, b]);
        d.push(&body(&[(None, a, b"")]));
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(BatchError::Truncated {
                got: 1,
                expected: 2
            })
        );
        // Bytes after the last frame.
        let mut d = Decoder::new(vec![a]);
        let mut wire = body(&[(None, a, b"")]);
        wire.push(0);
        d.push(&wire);
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.next_frame(), Err(BatchError::TooMany(1)));
    }

    #[test]
    fn request_lists_round_trip_and_are_bounded() {
        let hs: Vec<_> = (0..3u8).map(|i| ChunkHash::of(&[i])).collect();
        assert_eq!(decode_request(&encode_request(&hs)).unwrap(), hs);
        assert!(
            decode_request(&[0; 33])
                .unwrap_err()
                .contains("multiple of 32")
        );
        let many = vec![0u8; 32 * (MAX_BATCH_CHUNKS + 1)];
        assert!(decode_request(&many).unwrap_err().contains("at most"));
        assert!(decode_request(&[]).unwrap().is_empty());
    }
}
