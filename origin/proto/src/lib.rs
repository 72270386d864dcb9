//! The wire format between Tessera's origin and its clients (edges and publishers), and the
//! client that speaks it.
//!
//! This crate is the slice of the origin that edges depend on: it holds no storage and no
//! server code, so an edge can read manifests and chunks without pulling in redb, the chunker
//! or the origin's HTTP server.
//!
//! # Layout
//! - [`hash`]: [`ChunkHash`], the blake3 address of a chunk or a whole file, in hex on the wire.
//! - [`manifest`]: [`Manifest`], the ordered chunk list of a published file (format version 1).
//! - [`path`]: the rules a publish path must follow, shared by server and client.
//! - [`changes`]: the change feed edges follow.
//! - [`range`]: `Range` and conditional request evaluation (RFC 9110), shared by origin and edge.
//! - [`ring`]: consistent-hash placement of chunks and manifests on origin nodes.
//! - [`batch`]: many chunks in one streamed response (the edges' misses), format version 1.
//! - [`inline`]: a small file's bytes with its manifest (one round trip), format version 1.
//! - [`upload`]: publishing with the chunks the origin has named instead of sent, format version 1.
//! - [`client`]: [`OriginClient`], an HTTP client for the publisher and edge APIs.
//!
//! # Chunk wire format (version 1)
//! `GET /api/v1/chunks/{blake3}` answers with the chunk's bytes, whose blake3 is the address
//! (`application/octet-stream`, `ETag: "{blake3}"`, [`CHUNK_CACHE_CONTROL`]). A client that
//! sends `Accept-Encoding: br` may get the origin's stored brotli stream instead, marked
//! `Content-Encoding: br`; decoding it gives the chunk. Clients check the hash after decoding
//! ([`OriginClient::chunk`] does). Many chunks at once: [`batch`].

pub mod batch;
pub mod changes;
pub mod client;
pub mod hash;
pub mod inline;
pub mod manifest;
pub mod path;
pub mod range;
pub mod ring;
pub mod size;
pub mod upload;

pub use client::{BatchItem, ChunkBatch, ClientError, ManifestFetch, OriginClient, PublishReply};
pub use hash::ChunkHash;
pub use manifest::{Manifest, ManifestChunk};
pub use path::{PathError, validate_path};

/// Whether a client that just connected sends its first byte `within` the time given (it is
/// peeked, not read). The edge and the origin close connections that say nothing: hyper's
/// header timeout starts only once it has seen bytes.
pub async fn sends_within(stream: &tokio::net::TcpStream, within: std::time::Duration) -> bool {
    let mut one = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.peek(&mut one)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Whether a bearer token a request `given` is `expected`, in time that reveals neither a
/// matching prefix nor the expected length (their blake3 digests are compared, in constant
/// time).
pub fn token_matches(given: &str, expected: &str) -> bool {
    blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes())
}

/// `Cache-Control` sent with every chunk: a chunk's address is its content, so it never changes.
pub const CHUNK_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
