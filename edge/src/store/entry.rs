//! What the cache holds: entries and their on-disk format.
//!
//! Everything the edge keeps is an entry of this one cache, addressed by a 32-byte [`Key`]:
//! - a chunk of a Tessera-origin file, under its own blake3 (content addressed: two files or
//!   two versions that share a chunk share its entry);
//! - a stored response's description, [`Meta`], under a key derived from the request (its
//!   body inline when small, else in segments or, in origin mode, as the manifest's chunks);
//! - a segment of a large upstream-mode body, or a slice of a partial one;
//! - a `Vary` index: the request header names that select among a URL's stored variants.
//!
//! # On-disk value format (version 1)
//! foyer stores each [`Value`] as `tag: u8` followed by the tag's payload:
//! - `1` bytes (chunk or segment): the raw bytes;
//! - `2` meta: `json_len: u32 LE`, the JSON of [`MetaRecord`], then the inline body bytes;
//! - `3` vary index: the JSON list of header names.
//!
//! An entry that fails to decode is a miss (foyer drops it), never an error to a client. A
//! change of format bumps the tag numbers, so old entries read as misses after an upgrade.

use std::sync::Arc;

use bytes::Bytes;
use foyer::Code;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tessera_origin_proto::ManifestChunk;

use crate::rules::freshness::Freshness;
pub use crate::rules::store_plan::{INLINE_MAX, SEGMENT};
use crate::store::advice::{Advice, Target};
use crate::store::headers::StoredHeaders;

/// The address of a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// A key for `parts` in the namespace `tag`, so keys of different kinds never collide.
    pub fn derive(tag: &str, parts: &[&[u8]]) -> Key {
        let mut h = blake3::Hasher::new();
        h.update(tag.as_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Key(*h.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl Code for Key {
    fn encode(&self, writer: &mut impl std::io::Write) -> foyer::Result<()> {
        writer.write_all(&self.0).map_err(foyer::Error::io_error)
    }
    fn decode(reader: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut k = [0u8; 32];
        reader.read_exact(&mut k).map_err(foyer::Error::io_error)?;
        Ok(Key(k))
    }
    fn estimated_size(&self) -> usize {
        32
    }
}

/// Where a stored response's body lives.
#[derive(Debug, Clone)]
pub enum BodyRef {
    /// In the [`Meta`] entry itself (small bodies: one lookup serves the hit).
    Inline(Bytes),
    /// In `count` segments of [`SEGMENT`] bytes under [`segment_key`]`(id, i)`.
    Segments { id: [u8; 16], count: u32 },
    /// The chunks of a Tessera-origin file, each under its blake3.
    Chunks(Arc<Vec<ManifestChunk>>),
    /// Slices of `slice` bytes under [`slice_key`]`(id, i)`, each fetched with a range
    /// request of its own and kept on its own, any of them possibly absent: a partial
    /// object, completed as it is read ([`crate::rules::partial`]).
    Slices { id: [u8; 16], slice: u64 },
}

/// The key of segment `i` of the body stored under `id`.
pub fn segment_key(id: &[u8; 16], i: u32) -> Key {
    Key::derive("seg", &[id, &i.to_le_bytes()])
}

/// The key of slice `i` of the partial object stored under `id`: the key of segment `i`
/// (so a body stored in segments of [`SEGMENT`] bytes is also one in slices of that size,
/// which may be completed slice by slice once some are evicted), and a key of its own past
/// the segments' `u32` indexes.
pub fn slice_key(id: &[u8; 16], i: u64) -> Key {
    match u32::try_from(i) {
        Ok(i) => segment_key(id, i),
        Err(_) => Key::derive("slice", &[id, &i.to_le_bytes()]),
    }
}

/// Where a response's bytes may be kept, as eviction advice said (the built-in policy:
/// both tiers). In origin mode it governs the file's chunks too, and only `Both` and
/// `Memory` files are assembled in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    #[default]
    Both,
    Memory,
    /// The SSD tier only: a read does not bring it into memory.
    Disk,
    /// Not kept (served, then dropped).
    Nowhere,
}

impl Placement {
    pub fn of(advice: Option<Advice>) -> Placement {
        match advice {
            None => Placement::Both,
            Some(a) if !a.admit => Placement::Nowhere,
            Some(a) => match a.target {
                Target::Both => Placement::Both,
                Target::Memory => Placement::Memory,
                Target::Disk => Placement::Disk,
            },
        }
    }
}

/// A stored response: what the cache needs to serve, judge and purge it.
#[derive(Debug, Clone)]
pub struct Meta {
    pub status: u16,
    /// End-to-end headers of the representation as stored (no hop-by-hop, no `Age`).
    pub headers: StoredHeaders,
    pub freshness: Freshness,
    /// When this entry was stored, in milliseconds since the epoch: purges (bans) compare
    /// against it.
    pub stored_at_ms: u64,
    /// The request path this entry answers (purge by path and prefix match it).
    pub path: String,
    /// `Surrogate-Key` values of the response (purge by key).
    pub surrogate_keys: Vec<String>,
    /// Length of the body in bytes.
    pub size: u64,
    pub body: BodyRef,
    pub placement: Placement,
}

/// The serialised form of [`Meta`], without the inline body.
#[derive(Serialize, Deserialize)]
struct MetaRecord {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    lifetime: u64,
    initial_age: u64,
    response_time: u64,
    must_revalidate: bool,
    no_cache: bool,
    immutable: bool,
    swr: u64,
    sie: u64,
    stored_at_ms: u64,
    path: String,
    surrogate_keys: Vec<String>,
    size: u64,
    segments: Option<([u8; 16], u32)>,
    chunks: Option<Vec<ManifestChunk>>,
    /// A partial object's slices: their id and size. Absent in entries written before it
    /// existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slices: Option<([u8; 16], u64)>,
    /// Absent in entries written before it existed: `both`.
    #[serde(default)]
    placement: Placement,
}

/// One cache entry.
#[derive(Debug, Clone)]
pub enum Value {
    /// A chunk (content addressed) or a body segment.
    Bytes(Bytes),
    Meta(Arc<Meta>),
    /// The header names a URL's variants are selected by.
    Vary(Arc<Vec<String>>),
}

impl Value {
    /// What this value takes in memory, in bytes, as the memory tier counts it (see
    /// [`weigh`]).
    pub fn weight(&self) -> usize {
        match self {
            Value::Bytes(b) => heap(b.len()) + SHARED,
            Value::Meta(m) => {
                let body = match &m.body {
                    BodyRef::Inline(b) => heap(b.len()) + SHARED,
                    BodyRef::Chunks(c) => {
                        heap(16 + 24) + heap(c.len() * std::mem::size_of::<ManifestChunk>())
                    }
                    BodyRef::Segments { .. } | BodyRef::Slices { .. } => 0,
                };
                let keys: usize = m.surrogate_keys.iter().map(|k| heap(k.len())).sum();
                heap(16 + std::mem::size_of::<Meta>())
                    + heap(m.headers.heap_len())
                    + SHARED
                    + heap(m.path.len())
                    + heap(m.surrogate_keys.len() * 24)
                    + keys
                    + body
            }
            Value::Vary(v) => heap(16 + 24) + v.iter().map(|s| 24 + heap(s.len())).sum::<usize>(),
        }
    }
}

/// What an entry of the memory tier takes: foyer's record (key, value, links, its slot in the
/// index: 172 bytes per entry measured with 200,000 entries) and what the value holds. Both
/// tiers are sized by it, and `tessera-bench hit-ratio` weighs its simulations with it.
pub fn weigh(value: &Value) -> usize {
    RECORD + value.weight()
}

/// foyer's memory record of one entry, index slot included.
const RECORD: usize = 176;

/// The shared header a `Bytes` gets once it is cloned.
const SHARED: usize = 32;

/// What a heap buffer of `len` bytes takes from the allocator (glibc: an 8-byte header,
/// rounded to 16, at least 32; nothing for an empty one).
fn heap(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len + 8).next_multiple_of(16).max(32)
    }
}

fn io_err(e: impl std::fmt::Display) -> foyer::Error {
    foyer::Error::io_error(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        e.to_string(),
    ))
}

impl Code for Value {
    fn encode(&self, w: &mut impl std::io::Write) -> foyer::Result<()> {
        let io = foyer::Error::io_error;
        match self {
            Value::Bytes(b) => {
                w.write_all(&[1]).map_err(io)?;
                w.write_all(b).map_err(io)
            }
            Value::Meta(m) => {
                let (mut slices, empty) = (None, Bytes::new());
                let (segments, chunks, inline) = match &m.body {
                    BodyRef::Inline(b) => (None, None, b.clone()),
                    BodyRef::Segments { id, count } => (Some((*id, *count)), None, empty),
                    BodyRef::Chunks(c) => (None, Some(c.as_ref().clone()), empty),
                    BodyRef::Slices { id, slice } => {
                        slices = Some((*id, *slice));
                        (None, None, empty)
                    }
                };
                let f = &m.freshness;
                let rec = MetaRecord {
                    status: m.status,
                    headers: m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    lifetime: f.lifetime,
                    initial_age: f.initial_age,
                    response_time: f.response_time,
                    must_revalidate: f.must_revalidate,
                    no_cache: f.no_cache,
                    immutable: f.immutable,
                    swr: f.stale_while_revalidate,
                    sie: f.stale_if_error,
                    stored_at_ms: m.stored_at_ms,
                    path: m.path.clone(),
                    surrogate_keys: m.surrogate_keys.clone(),
                    size: m.size,
                    segments,
                    chunks,
                    slices,
                    placement: m.placement,
                };
                let json = serde_json::to_vec(&rec).map_err(io_err)?;
                w.write_all(&[2]).map_err(io)?;
                w.write_all(&(json.len() as u32).to_le_bytes())
                    .map_err(io)?;
                w.write_all(&json).map_err(io)?;
                w.write_all(&inline).map_err(io)
            }
            Value::Vary(names) => {
                w.write_all(&[3]).map_err(io)?;
                let json = serde_json::to_vec(names.as_ref()).map_err(io_err)?;
                w.write_all(&json).map_err(io)
            }
        }
    }

    fn decode(r: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut tag = [0u8];
        r.read_exact(&mut tag).map_err(|_| io_err("empty entry"))?;
        let mut all = Vec::new();
        r.read_to_end(&mut all).map_err(foyer::Error::io_error)?;
        let rest = &all[..];
        match tag[0] {
            // The bytes as read, in a buffer of their own: no second copy.
            1 => Ok(Value::Bytes(Bytes::from(all))),
            2 => {
                if rest.len() < 4 {
                    return Err(io_err("short meta entry"));
                }
                let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                let json = rest
                    .get(4..4 + n)
                    .ok_or_else(|| io_err("short meta entry"))?;
                let rec: MetaRecord = serde_json::from_slice(json).map_err(io_err)?;
                let inline = Bytes::copy_from_slice(&rest[4 + n..]);
                let mut map = HeaderMap::with_capacity(rec.headers.len());
                for (k, v) in rec.headers {
                    let k = HeaderName::from_bytes(k.as_bytes()).map_err(io_err)?;
                    let v = HeaderValue::from_bytes(&v).map_err(io_err)?;
                    map.append(k, v);
                }
                let headers = StoredHeaders::from_map(&map);
                let body = match (rec.segments, rec.chunks, rec.slices) {
                    (Some((id, count)), ..) => BodyRef::Segments { id, count },
                    (None, Some(c), _) => BodyRef::Chunks(Arc::new(c)),
                    (None, None, Some((id, slice))) if slice > 0 => BodyRef::Slices { id, slice },
                    (None, None, Some(_)) => return Err(io_err("a slice size of 0")),
                    (None, None, None) => BodyRef::Inline(inline),
                };
                Ok(Value::Meta(Arc::new(Meta {
                    status: rec.status,
                    headers,
                    freshness: Freshness {
                        lifetime: rec.lifetime,
                        initial_age: rec.initial_age,
                        response_time: rec.response_time,
                        must_revalidate: rec.must_revalidate,
                        no_cache: rec.no_cache,
                        immutable: rec.immutable,
                        stale_while_revalidate: rec.swr,
                        stale_if_error: rec.sie,
                    },
                    stored_at_ms: rec.stored_at_ms,
                    path: rec.path,
                    surrogate_keys: rec.surrogate_keys,
                    size: rec.size,
                    body,
                    placement: rec.placement,
                })))
            }
            3 => Ok(Value::Vary(Arc::new(
                serde_json::from_slice(rest).map_err(io_err)?,
            ))),
            t => Err(io_err(format!("unknown entry tag {t}"))),
        }
    }

    fn estimated_size(&self) -> usize {
        self.weight()
    }
}

/// The key of the variant of `primary` that `req` selects by the header `names`.
pub fn variant_key(primary: &Key, names: &[String], req: &HeaderMap) -> Key {
    let values: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            // Field values are compared normalised (RFC 9111 §4.1 allows it): equivalent
            // requests share one variant.
            let v = crate::rules::vary::selecting_value(n, req).unwrap_or_default();
            format!("{n}:{v}").into_bytes()
        })
        .collect();
    let mut parts: Vec<&[u8]> = vec![&primary.0];
    parts.extend(values.iter().map(|v| v.as_slice()));
    Key::derive("variant", &parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_origin_proto::ChunkHash;

    fn meta(body: BodyRef) -> Meta {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-bin", HeaderValue::from_bytes(b"\xfe ok").unwrap());
        Meta {
            status: 200,
            headers: StoredHeaders::from_map(&headers),
            freshness: Freshness {
                lifetime: 60,
                initial_age: 1,
                response_time: 2,
                must_revalidate: true,
                no_cache: false,
                immutable: false,
                stale_while_revalidate: 3,
                stale_if_error: 4,
            },
            stored_at_ms: 5,
            path: "/a".into(),
            surrogate_keys: vec!["k1".into()],
            size: 5,
            body,
            placement: Placement::Disk,
        }
    }

    fn roundtrip(v: &Value) -> Value {
        let mut buf = Vec::new();
        v.encode(&mut buf).unwrap();
        Value::decode(&mut &buf[..]).unwrap()
    }

    #[test]
    fn values_survive_encoding() {
        let Value::Meta(m) = roundtrip(&Value::Meta(Arc::new(meta(BodyRef::Inline(
            Bytes::from_static(b"hello"),
        ))))) else {
            panic!("not a meta")
        };
        let bin = m.headers.get("x-bin").unwrap();
        assert_eq!(bin.as_bytes(), b"\xfe ok");
        assert_eq!(m.freshness.stale_if_error, 4);
        assert!(matches!(&m.body, BodyRef::Inline(b) if &b[..] == b"hello"));
        let chunk = ManifestChunk {
            hash: ChunkHash::of(b"x"),
            offset: 0,
            size: 1,
        };
        let Value::Meta(m) = roundtrip(&Value::Meta(Arc::new(meta(BodyRef::Chunks(Arc::new(
            vec![chunk],
        )))))) else {
            panic!("not a meta")
        };
        assert!(matches!(&m.body, BodyRef::Chunks(c) if c[0] == chunk));
        let Value::Meta(m) = roundtrip(&Value::Meta(Arc::new(meta(BodyRef::Slices {
            id: [3; 16],
            slice: 1 << 20,
        })))) else {
            panic!("not a meta")
        };
        assert!(
            matches!(m.body, BodyRef::Slices { id, slice } if id == [3; 16] && slice == 1 << 20)
        );
        assert!(matches!(
            roundtrip(&Value::Bytes(Bytes::from_static(b"abc"))),
            Value::Bytes(b) if &b[..] == b"abc"
        ));
    }

    #[test]
    fn garbage_entries_do_not_decode() {
        for bad in [&b""[..], b"\x02\x05", b"\x02\xff\xff\x00\x00{}", b"\x09abc"] {
            assert!(Value::decode(&mut &bad[..]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn variants_differ_by_the_named_headers_only() {
        let k = Key([7; 32]);
        let names = vec!["accept-encoding".to_string()];
        let mut a = HeaderMap::new();
        a.insert("accept-encoding", HeaderValue::from_static("br"));
        a.insert("user-agent", HeaderValue::from_static("x"));
        let mut b = a.clone();
        b.insert("user-agent", HeaderValue::from_static("y"));
        assert_eq!(variant_key(&k, &names, &a), variant_key(&k, &names, &b));
        b.insert("accept-encoding", HeaderValue::from_static("gzip"));
        assert_ne!(variant_key(&k, &names, &a), variant_key(&k, &names, &b));
        assert_ne!(
            variant_key(&k, &names, &HeaderMap::new()),
            variant_key(&k, &names, &a)
        );
    }
}
