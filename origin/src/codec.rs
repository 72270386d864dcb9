//! How a chunk's bytes are stored: brotli-compressed, or raw when brotli does not shrink them.

use std::io::Read;

/// The encoding of a stored chunk. The number is what pack records and the chunk index keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The chunk's bytes as they are.
    Raw = 0,
    /// A brotli stream (RFC 7932) of the chunk's bytes.
    Brotli = 1,
}

impl Codec {
    /// The codec stored as `b`, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Brotli),
            _ => None,
        }
    }
}

/// Compresses `data` with brotli at `quality` (0–11); returns `None` when that does not
/// save at least 1/64 of the size, so incompressible chunks are stored raw and cost no
/// decompression on read.
pub fn compress(data: &[u8], quality: u32) -> Option<Vec<u8>> {
    if data.len() < 64 {
        return None;
    }
    let params = brotli::enc::BrotliEncoderParams {
        quality: quality as i32,
        // A window as large as the chunk, so the whole chunk is in reach of every match, but
        // never below 2^17: with a 2^16 window, qualities 5+ of this brotli crate pick a
        // hasher that ran 30x slower in `tessera-bench ingest`.
        lgwin: (usize::BITS - (data.len() - 1).leading_zeros()).clamp(17, 24) as i32,
        size_hint: data.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(data.len() / 2);
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).ok()?;
    (out.len() + data.len() / 64 < data.len()).then_some(out)
}

/// Decodes `stored` bytes of a chunk whose original length is `raw_len`. Returns `None` when
/// they do not decode to exactly `raw_len` bytes.
pub fn decode(codec: Codec, stored: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    match codec {
        Codec::Raw => (stored.len() == raw_len).then(|| stored.to_vec()),
        Codec::Brotli => {
            let mut out = Vec::with_capacity(raw_len);
            // Read one byte past the expected length so an overlong stream is noticed
            // without decoding it all.
            brotli::Decompressor::new(stored, 4096)
                .take(raw_len as u64 + 1)
                .read_to_end(&mut out)
                .ok()?;
            (out.len() == raw_len).then_some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_compresses_and_round_trips() {
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(500);
        let c = compress(text.as_bytes(), 5).expect("text shrinks");
        assert!(c.len() < text.len() / 10);
        assert_eq!(
            decode(Codec::Brotli, &c, text.len()).unwrap(),
            text.as_bytes()
        );
        assert!(decode(Codec::Brotli, &c, text.len() - 1).is_none());
        assert!(decode(Codec::Brotli, &c[..c.len() / 2], text.len()).is_none());
    }

    #[test]
    fn noise_stays_raw() {
        let mut x = 88172645463325252u64;
        let noise: Vec<u8> = (0..20000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&noise, 5).is_none());
        assert_eq!(decode(Codec::Raw, &noise, noise.len()).unwrap(), noise);
    }
}
