//! Content-defined chunking: cutting a byte stream into chunks whose boundaries depend on
//! the content, so an insertion early in a file changes only the chunks around it.
//!
//! This module holds no I/O. It wraps `fastcdc`'s v2020 cut-point function with a buffer
//! that accepts input in pieces of any size (an HTTP body arrives in frames) and hands out
//! chunks as zero-copy [`Bytes`] slices.

use bytes::Bytes;
use fastcdc::v2020::{Normalization, cut, select_masks};
use serde::{Deserialize, Serialize};

/// FastCDC sizes, in bytes.
///
/// The default (8 KiB / 16 KiB / 64 KiB) was chosen by measurement (`bench/HISTORY.md`,
/// "Chunk sizes"): between two versions of a release tarball it stores a quarter of the new
/// bytes that 64 KiB chunks store, and a fiftieth of what restic's 1 MiB chunks store;
/// 8 KiB chunks save little more and double the chunk count. A minimum of 8 KiB rather
/// than 4 KiB skips more bytes without hashing them (FastCDC's cut-point skipping) for
/// ~8 % more chunking speed, and costs almost no dedup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkParams {
    /// Smallest chunk (except a file's last one).
    pub min: u32,
    /// Average chunk size the cut-point masks aim for.
    pub avg: u32,
    /// Largest chunk: a cut is forced here.
    pub max: u32,
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self {
            min: 8 * 1024,
            avg: 16 * 1024,
            max: 64 * 1024,
        }
    }
}

impl ChunkParams {
    /// Checks the sizes against FastCDC's limits.
    pub fn check(&self) -> Result<(), String> {
        use fastcdc::v2020::*;
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            || !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            || !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
        {
            return Err(format!(
                "chunk sizes {min}/{avg}/{max} are outside FastCDC's limits \
                 (min {MINIMUM_MIN}..={MINIMUM_MAX}, avg {AVERAGE_MIN}..={AVERAGE_MAX}, max {MAXIMUM_MIN}..={MAXIMUM_MAX})"
            ));
        }
        if !(min < avg && avg < max) {
            return Err(format!(
                "chunk sizes must grow: min {min} < avg {avg} < max {max}"
            ));
        }
        if min % 2 + avg % 2 + max % 2 != 0 {
            return Err("chunk sizes must be even".into());
        }
        Ok(())
    }
}

/// A streaming FastCDC (v2020, normalisation level 1) chunker.
///
/// Input is gathered in a plain buffer until it holds [`Chunker::FILL`] bytes; the buffer is
/// then frozen into one [`Bytes`] and every chunk whose end is certain is handed out as a
/// zero-copy slice of it; the few bytes after the last cut start the next buffer. Each input
/// byte is copied once. (Cutting straight out of a `BytesMut`, one `split_to` per chunk, ran
/// about 7 % slower in `tessera-bench ingest`.)
#[derive(Debug)]
pub struct Chunker {
    params: ChunkParams,
    mask_s: u64,
    mask_l: u64,
    buf: Vec<u8>,
}

impl Chunker {
    /// Bytes gathered before cutting (at least four maximum-size chunks).
    pub const FILL: usize = 1 << 20;

    /// A chunker with `params`, which must have passed [`ChunkParams::check`].
    pub fn new(params: ChunkParams) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Self {
            params,
            mask_s,
            mask_l,
            buf: Vec::new(),
        }
    }

    fn fill(&self) -> usize {
        Self::FILL.max(4 * self.params.max as usize)
    }

    /// Appends `data` and pushes every chunk whose end is now certain onto `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.fill() + data.len());
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.fill() {
            self.cut_buffer(false, out);
        }
    }

    /// Ends the stream: pushes the remaining chunks onto `out`.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.cut_buffer(true, out);
    }

    /// Cuts the buffer; unless `last`, keeps the bytes after the last certain cut (a cut point
    /// is certain once `max` bytes follow its start: the cut never looks further).
    fn cut_buffer(&mut self, last: bool, out: &mut Vec<Bytes>) {
        let p = self.params;
        let max = p.max as usize;
        let buf = Bytes::from(std::mem::take(&mut self.buf));
        let mut at = 0;
        while at < buf.len() && (last || buf.len() - at >= max) {
            let (_, len) = cut(
                &buf[at..],
                p.min as usize,
                p.avg as usize,
                max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
            );
            out.push(buf.slice(at..at + len));
            at += len;
        }
        if at < buf.len() {
            let mut next = Vec::with_capacity(self.fill() + max);
            next.extend_from_slice(&buf[at..]);
            self.buf = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunk_all(input: &[u8], piece: usize) -> Vec<Bytes> {
        let mut c = Chunker::new(ChunkParams::default());
        let mut out = Vec::new();
        for p in input.chunks(piece.max(1)) {
            c.push(p, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn boundaries_do_not_depend_on_how_input_arrives() {
        let p = ChunkParams::default();
        let input = data(1 << 20, 7);
        let whole = chunk_all(&input, input.len());
        for piece in [1, 1000, 4096, 65536, 300_000] {
            assert_eq!(chunk_all(&input, piece), whole, "piece size {piece}");
        }
        let joined: Vec<u8> = whole.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, input);
        for c in &whole[..whole.len() - 1] {
            assert!(c.len() >= p.min as usize && c.len() <= p.max as usize);
        }
        // Matches fastcdc's own slice chunker.
        let reference: Vec<usize> =
            fastcdc::v2020::FastCDC::new(&input, p.min as usize, p.avg as usize, p.max as usize)
                .map(|c| c.length)
                .collect();
        assert_eq!(whole.iter().map(Bytes::len).collect::<Vec<_>>(), reference);
    }

    #[test]
    fn an_insertion_changes_few_chunks() {
        let a = data(2 << 20, 3);
        let mut b = a.clone();
        b.splice(1 << 20..1 << 20, data(100, 9));
        let ca: std::collections::HashSet<Bytes> = chunk_all(&a, 8192).into_iter().collect();
        let cb = chunk_all(&b, 8192);
        let changed = cb.iter().filter(|c| !ca.contains(*c)).count();
        assert!(changed <= 3, "{changed} of {} chunks changed", cb.len());
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(chunk_all(&[], 1).is_empty());
    }

    #[test]
    fn params_are_checked() {
        assert!(ChunkParams::default().check().is_ok());
        assert!(
            ChunkParams {
                min: 10,
                avg: 16384,
                max: 65536
            }
            .check()
            .is_err()
        );
        assert!(
            ChunkParams {
                min: 16384,
                avg: 4096,
                max: 65536
            }
            .check()
            .is_err()
        );
    }
}
