//! Small files in one round trip: a manifest answered with the file's bytes after it.
//!
//! A miss of a small file would otherwise cost an edge two requests to the origin (the
//! manifest, then a chunk batch) where a plain proxy makes one. An edge that asks for it gets
//! the bytes of a file up to the size it names in the manifest's response.
//!
//! # Wire format (version 1)
//! Request: `GET /api/v1/manifests/{path}` with [`INLINE_HEADER`]`: N` (a byte count). When
//! the file is at most `N` bytes and the node can read and check every chunk itself, it
//! answers `200` with `Content-Type: `[`CONTENT_TYPE`] and the body
//!
//! ```text
//! json_len: u32, big endian | the manifest's JSON (as without the header) | the file's bytes
//! ```
//!
//! and otherwise exactly as without the header (`application/json`, the manifest alone), so
//! a node that predates this format is still understood. The client checks the bytes against
//! the manifest's whole-file blake3 and length; bytes that fail are dropped (the chunks are
//! then fetched as usual), never served.

use bytes::{BufMut, Bytes, BytesMut};

/// Request header naming the largest file whose bytes the answer may carry.
pub const INLINE_HEADER: &str = "x-tessera-inline-max";
/// Content type of a manifest answered with the file's bytes.
pub const CONTENT_TYPE: &str = "application/vnd.tessera.manifest-inline.v1";

/// The body of an answer carrying the manifest's `json` and the file's `data`.
pub fn encode(json: &[u8], data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + json.len() + data.len());
    b.put_u32(json.len() as u32);
    b.put_slice(json);
    b.put_slice(data);
    b.freeze()
}

/// The manifest's JSON and the file's bytes of such a body, or `None` when it is too short
/// for the length it states.
pub fn decode(body: &Bytes) -> Option<(Bytes, Bytes)> {
    let len = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    if end > body.len() {
        return None;
    }
    Some((body.slice(4..end), body.slice(end..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_short_ones_are_refused() {
        let b = encode(b"{\"a\":1}", b"file bytes");
        let (json, data) = decode(&b).unwrap();
        assert_eq!(&json[..], b"{\"a\":1}");
        assert_eq!(&data[..], b"file bytes");
        assert_eq!(decode(&encode(b"{}", b"")).unwrap().1.len(), 0);
        for bad in [&b""[..], b"\x00\x00", b"\x00\x00\x00\x09{}"] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
    }
}
