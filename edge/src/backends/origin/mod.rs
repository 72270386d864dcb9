//! Origin mode: the edge in front of Tessera origin nodes, content addressed.
//!
//! A published file is served from its manifest (kept under a key derived from its path,
//! fresh as the origin's `Cache-Control` says, revalidated by `ETag`) and its chunks (kept
//! under their blake3, immutable). A miss fetches the manifest, then only the chunks the
//! response needs and the cache lacks, in one streamed batch per origin node and a bounded
//! window ahead of the client; every chunk from the origin or the SSD tier is checked
//! against its blake3 before it is stored or sent. Concurrent misses of one manifest or one
//! chunk share one fetch ([`crate::coalesce`]).
//!
//! # Layout
//! - [`origins`]: the clients, the cluster's ring, origins that failed lately.
//! - [`manifest`]: fetching and revalidating manifests, stored as responses.
//! - [`chunks`]: verified chunks, the byte streams made of them, and batch fetches.
//! - [`assembly`]: hot files kept assembled (inline or in segments), counted once.
//! - [`feed`]: following the origins' change feeds, and the recent changes a manifest fetch
//!   checks before storing.

pub mod assembly;
pub mod chunks;
pub mod feed;
pub mod manifest;
pub mod origins;

use std::path::PathBuf;

use tessera_origin_proto::ClientError;

use crate::backends::Context;
use crate::basics::config::EdgeConfig;
use crate::basics::error::{FetchError, FetchFailure};
use crate::coalesce::{Flights, Once};
use crate::store::entry::Key;

pub use manifest::{ManifestAnswer, manifest_key};

/// The origin backend of an edge.
#[derive(Debug)]
pub struct OriginBackend {
    ctx: Context,
    origins: origins::Origins,
    /// Manifest fetches in flight, by manifest key (followers are requests: counted).
    manifests: Flights<Key, Once<Result<(ManifestAnswer, u16), FetchError>>>,
    /// Chunk fetches in flight, by chunk key (not counted: many per request).
    chunks: Flights<Key, chunks::ChunkFlight>,
    /// Bytes of chunks a response looks up and fetches ahead of what its client was sent.
    readahead: u64,
    /// Ask origins for chunks in their stored brotli encoding.
    brotli: bool,
    /// The least `stale-if-error` a file gets ([`EdgeConfig::origin_stale_if_error_secs`]).
    grace_secs: u64,
    /// Held while a window's missing chunks join their flights (see [`chunks`]).
    joining: std::sync::Mutex<()>,
    /// Files being copied into segments now, by [`assembly::assembly_id`].
    assembling: std::sync::Mutex<std::collections::HashSet<[u8; 16]>>,
    /// Paths the change feeds reported recently.
    recent: feed::Recent,
    /// The feeds to follow, with the file each one's position is saved in (none when the
    /// edge does not follow changes).
    feeds: Vec<(Vec<usize>, PathBuf)>,
}

impl OriginBackend {
    /// The backend for origins at `urls`, as `cfg` describes them.
    pub fn new(urls: &[String], cfg: &EdgeConfig, ctx: Context) -> anyhow::Result<OriginBackend> {
        let origins = origins::Origins::new(
            urls,
            cfg.origin_ring.as_ref(),
            cfg.timeouts.connect(),
            cfg.outliers,
            ctx.metrics.origin_ejections.clone(),
        )?;
        let feeds = match &cfg.origin_ring {
            _ if !cfg.follow_changes => Vec::new(),
            // A cluster: every node's feed (each lists the changes of the files it holds).
            Some(ring) if origins.is_cluster() => ring
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (vec![i], cfg.data.join(format!("feed-{}.json", n.id))))
                .collect(),
            // A standalone origin: one feed, the URLs a failover list.
            _ => vec![((0..origins.len()).collect(), cfg.data.join("feed.json"))],
        };
        Ok(OriginBackend {
            manifests: Flights::new(Some(ctx.metrics.coalesced.clone())),
            chunks: Flights::new(None),
            readahead: cfg.origin_readahead_bytes.max(1),
            brotli: cfg.origin_brotli,
            grace_secs: cfg.origin_stale_if_error_secs,
            assembling: Default::default(),
            joining: Default::default(),
            ctx,
            origins,
            recent: Default::default(),
            feeds,
        })
    }
}

/// An origin client's error as a fetch failure.
fn failure_of(e: &ClientError) -> FetchFailure {
    match e {
        ClientError::Transport { .. } | ClientError::BadUrl { .. } => FetchFailure::Connect,
        ClientError::Status { .. } => FetchFailure::Status,
        ClientError::Malformed { .. } => FetchFailure::Malformed,
        ClientError::Corrupt { .. } => FetchFailure::Corrupt,
    }
}

/// Counts an origin client's error, and holds it against the origin for outlier detection
/// unless it is a client error status (a refusal, not a sick origin). Returns the failure.
fn note_error(backend: &OriginBackend, i: usize, e: &ClientError) -> FetchFailure {
    let failure = failure_of(e);
    backend.ctx.failed(failure);
    if !matches!(e, ClientError::Status { status, .. } if status.is_client_error()) {
        backend.origins.failed(i);
    }
    failure
}
