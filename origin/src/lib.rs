//! A Tessera origin storage node: publishers push files over HTTP; each file is cut into
//! content-defined chunks (FastCDC), each chunk is addressed by its blake3 hash, stored once,
//! brotli-compressed, and every chunk is verified against its hash before it is served.
//!
//! This crate is the server side. The wire formats and the client that edges and publishers
//! use are in `tessera-origin-proto`, which does not depend on this crate. A single node is
//! built here; placement across several nodes comes with the cluster.
//!
//! # Layout
//! - [`chunker`]: streaming FastCDC, no I/O.
//! - [`codec`]: brotli or raw, per chunk.
//! - [`store`]: pack files, the redb index, publish, read, delete and garbage collection.
//! - [`server`]: the HTTP API on hyper.
//! - [`metrics`]: Prometheus metrics.
//! - [`workers`]: where CPU work runs: ingest at a lower priority than reads.

pub mod chunker;
pub mod cluster;
pub mod codec;
pub mod digest;
pub mod metrics;
pub mod server;
pub mod store;
pub mod workers;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use store::{Store, StoreConfig, StoreError};

/// Configuration of one origin node (TOML, every field optional but `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Address the origin API is served on (`tessera origin` binds it; the library is
    /// handed the listener).
    pub listen: std::net::SocketAddr,
    /// Folder for pack files and the metadata database.
    pub data: PathBuf,
    /// Bearer token required on writes (`PUT`, `POST`, `DELETE`); reads stay open.
    pub token: Option<String>,
    /// Largest accepted publish body, in bytes (`413` above it).
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub max_body_bytes: u64,
    /// `Cache-Control` sent with files and manifests (edges revalidate with the `ETag`).
    pub file_cache_control: String,
    /// Publishes ingested at once; more wait their turn (each holds up to ~6 MiB).
    pub max_concurrent_uploads: usize,
    /// Chunking, compression and pack settings.
    pub store: StoreConfig,
    /// Membership of an origin cluster; `None` runs a standalone node.
    pub cluster: Option<cluster::ClusterConfig>,
    /// Time a connection has to send its first byte, and then each request head, seconds
    /// (else it is closed).
    pub header_timeout_secs: u64,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7070)),
            data: PathBuf::from("tessera-data/origin"),
            token: None,
            max_body_bytes: 64 << 30,
            file_cache_control: "public, max-age=60".into(),
            max_concurrent_uploads: 64,
            store: StoreConfig::default(),
            cluster: None,
            header_timeout_secs: 30,
        }
    }
}

/// Why an origin could not run.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The store could not be opened.
    #[error("cannot open the store in {path}: {source}")]
    Store {
        /// The data folder.
        path: PathBuf,
        /// The underlying error.
        source: StoreError,
    },
    /// The cluster configuration is inconsistent.
    #[error("cluster: {0}")]
    Cluster(String),
    /// Serving failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store in `config.data` and serves the origin API on `listener` until
/// `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: OriginConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), OriginError> {
    let (data, store_cfg) = (config.data.clone(), config.store.clone());
    let store = tokio::task::spawn_blocking(move || Store::open(&data, store_cfg))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|source| OriginError::Store {
            path: config.data.clone(),
            source,
        })?;
    let uploads = tokio::sync::Semaphore::new(config.max_concurrent_uploads.max(1));
    let store = Arc::new(store);
    let metrics = metrics::Metrics::new();
    if config.cluster.is_none() {
        // A standalone node is a cluster of one, itself live.
        metrics.cluster_nodes.set(1);
        metrics.cluster_nodes_live.set(1);
    }
    let cluster = match &config.cluster {
        Some(c) => Some(Arc::new(
            cluster::Cluster::new(
                c.clone(),
                store.clone(),
                metrics.clone(),
                config.token.clone(),
            )
            .map_err(OriginError::Cluster)?,
        )),
        None => None,
    };
    // The cluster's background work (peer checks, repair, scrub) stops with the server.
    let tasks: Vec<_> = cluster
        .iter()
        .flat_map(|c| {
            [
                tokio::spawn(c.clone().watch_peers()),
                tokio::spawn(c.clone().repair_loop()),
                tokio::spawn(c.clone().scrub_loop()),
            ]
        })
        .collect();
    let app = Arc::new(server::App {
        store,
        config,
        metrics,
        uploads,
        cluster,
    });
    let served = server::serve(app, listener, shutdown).await;
    // Wait for them to be gone: they hold the store, which a restart in the same process
    // must be able to open again.
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    served?;
    Ok(())
}
