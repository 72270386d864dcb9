//! Pack files: append-only files of chunk records.
//!
//! Chunks are small (16 KiB on average); a file each would cost a block-rounding tail and an
//! inode per chunk and an fsync per chunk. Like restic and git, an upload appends its new
//! chunks to pack files instead, and makes each durable with one fsync before the publish
//! commits.
//!
//! # Format, version 1
//! `packs/{id:016x}.pack` = header `b"TESSPACK" | version u32 = 1 | 4 reserved bytes`, then
//! records `blake3 [32] | codec u8 | raw_len u32 | stored_len u32 | stored bytes`.
//! The index keeps each chunk's record offset; the hash in the record lets a scrub or a
//! compaction tell which chunk a record holds without the index.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tessera_origin_proto::ChunkHash;

use crate::codec::Codec;

pub const MAGIC: &[u8; 8] = b"TESSPACK";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
pub const RECORD_HEAD: u64 = 32 + 1 + 4 + 4;

/// The file name of pack `id` in the packs folder.
pub fn pack_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.pack"))
}

/// The pack id a file name stands for, if it is a pack's name.
pub fn parse_pack_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// A pack being written by one upload.
#[derive(Debug)]
pub struct PackWriter {
    pub id: u64,
    pub path: PathBuf,
    out: BufWriter<File>,
    /// Bytes of records written so far.
    pub len: u64,
}

impl PackWriter {
    /// Creates a new pack with a fresh random id in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        loop {
            let id: u64 = rand::random();
            let path = pack_path(dir, id);
            let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(MAGIC)?;
            out.write_all(&VERSION.to_le_bytes())?;
            out.write_all(&[0u8; 4])?;
            return Ok(Self {
                id,
                path,
                out,
                len: 0,
            });
        }
    }

    /// Appends a record; returns its offset in the file.
    pub fn append(
        &mut self,
        hash: &ChunkHash,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
    ) -> std::io::Result<u64> {
        let offset = HEADER_LEN + self.len;
        self.out.write_all(hash.as_bytes())?;
        self.out.write_all(&[codec as u8])?;
        self.out.write_all(&raw_len.to_le_bytes())?;
        self.out.write_all(&(stored.len() as u32).to_le_bytes())?;
        self.out.write_all(stored)?;
        self.len += RECORD_HEAD + stored.len() as u64;
        Ok(offset)
    }

    /// Flushes and fsyncs the pack's data (the caller fsyncs the folder).
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}

/// One record read back from a pack.
#[derive(Debug)]
pub struct Record {
    pub hash: ChunkHash,
    pub codec: Option<Codec>,
    pub raw_len: u32,
    pub stored: Vec<u8>,
}

/// Reads the record at `offset` whose stored bytes are `stored_len` long.
pub fn read_record(file: &File, offset: u64, stored_len: u32) -> std::io::Result<Record> {
    let mut buf = vec![0u8; RECORD_HEAD as usize + stored_len as usize];
    file.read_exact_at(&mut buf, offset)?;
    let hash = ChunkHash(buf[..32].try_into().unwrap());
    let codec = Codec::from_u8(buf[32]);
    let raw_len = u32::from_le_bytes(buf[33..37].try_into().unwrap());
    let recorded = u32::from_le_bytes(buf[37..41].try_into().unwrap());
    if recorded != stored_len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "pack record length differs from the index",
        ));
    }
    buf.drain(..RECORD_HEAD as usize);
    Ok(Record {
        hash,
        codec,
        raw_len,
        stored: buf,
    })
}

/// Walks every record of a pack file: `(offset, hash, stored_len)`. Stops at the first
/// record that does not fit in the file.
pub fn scan(file: &File) -> std::io::Result<Vec<(u64, ChunkHash, u32)>> {
    let len = file.metadata()?.len();
    let mut head = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a Tessera pack",
        ));
    }
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    let mut rh = [0u8; RECORD_HEAD as usize];
    while at + RECORD_HEAD <= len {
        file.read_exact_at(&mut rh, at)?;
        let stored_len = u32::from_le_bytes(rh[37..41].try_into().unwrap());
        if at + RECORD_HEAD + u64::from(stored_len) > len {
            break;
        }
        out.push((at, ChunkHash(rh[..32].try_into().unwrap()), stored_len));
        at += RECORD_HEAD + u64::from(stored_len);
    }
    Ok(out)
}
