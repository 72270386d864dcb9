//! The origin's Prometheus metrics. Each server has its own registry, so several origins
//! can run in one process (tests, `tessera up`).

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use tessera_origin_proto::client::Stats;

/// The metrics of one origin node.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by operation and status code.
    pub requests: IntCounterVec,
    /// Request latency by operation (to the response head; bodies stream after).
    pub latency: HistogramVec,
    /// Bytes received in published bodies.
    pub ingested_bytes: IntCounter,
    /// Chunks in published files, and of those the ones that were new.
    pub chunks_published: IntCounter,
    pub chunks_new: IntCounter,
    /// Bytes added to the chunk store by publishes.
    pub chunk_bytes_added: IntCounter,
    /// Chunks that failed their blake3 check on read and were not served.
    pub corrupt_chunks: IntCounter,
    /// Chunks removed by garbage collection.
    pub gc_chunks: IntCounter,
    /// Publishes being ingested now.
    pub uploads_in_flight: IntGauge,
    /// Cluster: origin nodes in the topology, and those this node can reach (itself
    /// included).
    pub cluster_nodes: IntGauge,
    pub cluster_nodes_live: IntGauge,
    /// Cluster: chunk copies the last repair pass could not place on their owners.
    pub cluster_under_replicated: IntGauge,
    /// Cluster: copies (records and chunks) repair pushed to owners, and repair passes.
    pub cluster_repair_copies: IntCounter,
    pub cluster_repair_bytes_sent: IntCounter,
    pub cluster_repair_passes: IntCounter,
    /// Cluster: 1 while a repair pass runs, and the items (records and fragments) it has
    /// checked so far.
    pub cluster_repair_running: IntGauge,
    pub cluster_repair_checked: IntGauge,
    /// Cluster: digest buckets repair found differing from a peer's, and paths it looked
    /// at (changed here, or differing); both stay flat while nothing changes.
    pub cluster_repair_buckets_differing: IntCounter,
    pub cluster_repair_paths: IntCounter,
    /// Cluster: 1 while this node resynchronises after being away longer than the tombstone
    /// horizon (it serves none of its records meanwhile).
    pub cluster_resyncing: IntGauge,
    /// Cluster publishes: chunk bytes sent to other nodes, and bytes not sent because the
    /// node already held the chunk.
    pub cluster_chunk_bytes_sent: IntCounter,
    pub cluster_chunk_bytes_spared: IntCounter,
    /// Scrub: chunks read and verified, found corrupt, and replaced from a replica.
    pub scrub_chunks: IntCounter,
    pub scrub_corrupt: IntCounter,
    pub scrub_repaired: IntCounter,
    objects: IntGauge,
    logical_bytes: IntGauge,
    unique_bytes: IntGauge,
    stored_bytes: IntGauge,
    /// The file system of the data folder: its size and what is free on it.
    pub disk_bytes: IntGauge,
    pub disk_free_bytes: IntGauge,
    dedup_ratio: Gauge,
    compression_ratio: Gauge,
    efficiency: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tessera_origin_requests_total",
                "Origin HTTP requests by operation and status",
            ),
            &["op", "status"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tessera_origin_request_duration_seconds",
                "Origin request latency by operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["op"],
        )
        .unwrap();
        let c = |n: &str, h: &str| IntCounter::new(n, h).unwrap();
        let g = |n: &str, h: &str| IntGauge::new(n, h).unwrap();
        let f = |n: &str, h: &str| Gauge::new(n, h).unwrap();
        let m = Self {
            requests,
            latency,
            ingested_bytes: c(
                "tessera_origin_ingested_bytes_total",
                "Bytes received in published bodies",
            ),
            chunks_published: c(
                "tessera_origin_chunks_published_total",
                "Chunks in published files",
            ),
            chunks_new: c(
                "tessera_origin_chunks_new_total",
                "Published chunks the store did not have",
            ),
            chunk_bytes_added: c(
                "tessera_origin_chunk_bytes_added_total",
                "Bytes added to the chunk store by publishes",
            ),
            corrupt_chunks: c(
                "tessera_origin_corrupt_chunks_total",
                "Chunks that failed their blake3 check and were not served",
            ),
            gc_chunks: c(
                "tessera_origin_gc_chunks_total",
                "Chunks reclaimed by garbage collection",
            ),
            uploads_in_flight: g(
                "tessera_origin_uploads_in_flight",
                "Publishes being ingested now",
            ),
            cluster_nodes: g(
                "tessera_origin_cluster_nodes",
                "Origin nodes in the cluster's topology",
            ),
            cluster_nodes_live: g(
                "tessera_origin_cluster_nodes_live",
                "Origin nodes this node can reach, itself included",
            ),
            cluster_under_replicated: g(
                "tessera_origin_cluster_under_replicated_chunks",
                "Chunk copies the last repair pass could not place on their owners",
            ),
            cluster_repair_copies: c(
                "tessera_origin_cluster_repair_copies_total",
                "Records and chunk copies repair pushed to their owners",
            ),
            cluster_repair_bytes_sent: c(
                "tessera_origin_cluster_repair_bytes_sent_total",
                "Chunk bytes repair sent to other nodes (paced by repair_bytes_per_sec)",
            ),
            cluster_repair_passes: c(
                "tessera_origin_cluster_repair_passes_total",
                "Repair passes completed",
            ),
            cluster_repair_running: g(
                "tessera_origin_cluster_repair_running",
                "1 while a repair pass runs",
            ),
            cluster_repair_checked: g(
                "tessera_origin_cluster_repair_checked",
                "Records and fragments the current (or last) repair pass has checked",
            ),
            cluster_repair_buckets_differing: c(
                "tessera_origin_cluster_repair_buckets_differing_total",
                "Anti-entropy digest buckets repair found differing from a peer's",
            ),
            cluster_repair_paths: c(
                "tessera_origin_cluster_repair_paths_total",
                "Paths repair looked at: changed on this node, or differing from a peer",
            ),
            cluster_resyncing: g(
                "tessera_origin_cluster_resyncing",
                "1 while this node resynchronises after being away longer than tombstones are kept",
            ),
            cluster_chunk_bytes_sent: c(
                "tessera_origin_cluster_chunk_bytes_sent_total",
                "Chunk bytes a publish through this node sent to other nodes",
            ),
            cluster_chunk_bytes_spared: c(
                "tessera_origin_cluster_chunk_bytes_spared_total",
                "Chunk bytes a publish through this node did not send: the node they went to already held them",
            ),
            scrub_chunks: c(
                "tessera_origin_scrub_chunks_total",
                "Chunks read and verified by the scrub",
            ),
            scrub_corrupt: c(
                "tessera_origin_scrub_corrupt_total",
                "Corrupt chunks the scrub found",
            ),
            scrub_repaired: c(
                "tessera_origin_scrub_repaired_total",
                "Corrupt chunks the scrub replaced from a replica",
            ),
            objects: g("tessera_origin_objects", "Published files"),
            logical_bytes: g(
                "tessera_origin_logical_bytes",
                "Sum of published file sizes",
            ),
            unique_bytes: g(
                "tessera_origin_unique_bytes",
                "Sum of distinct chunk sizes before compression",
            ),
            stored_bytes: g(
                "tessera_origin_stored_bytes",
                "Bytes allocated on disk for chunks and metadata",
            ),
            disk_bytes: g(
                "tessera_origin_disk_bytes",
                "Size of the file system holding the data folder",
            ),
            disk_free_bytes: g(
                "tessera_origin_disk_free_bytes",
                "Bytes free on the file system holding the data folder; publishes get 507 when it is full",
            ),
            dedup_ratio: f("tessera_origin_dedup_ratio", "logical_bytes / unique_bytes"),
            compression_ratio: f(
                "tessera_origin_compression_ratio",
                "unique_bytes / stored_bytes",
            ),
            efficiency: f(
                "tessera_origin_storage_efficiency",
                "logical_bytes / stored_bytes",
            ),
            registry,
        };
        m.registry.register(Box::new(m.requests.clone())).unwrap();
        m.registry.register(Box::new(m.latency.clone())).unwrap();
        for x in [
            &m.ingested_bytes,
            &m.chunks_published,
            &m.chunks_new,
            &m.chunk_bytes_added,
            &m.corrupt_chunks,
            &m.gc_chunks,
            &m.cluster_repair_copies,
            &m.cluster_repair_bytes_sent,
            &m.cluster_repair_passes,
            &m.cluster_chunk_bytes_sent,
            &m.cluster_chunk_bytes_spared,
            &m.cluster_repair_buckets_differing,
            &m.cluster_repair_paths,
            &m.scrub_chunks,
            &m.scrub_corrupt,
            &m.scrub_repaired,
        ] {
            m.registry.register(Box::new(x.clone())).unwrap();
        }
        for x in [
            &m.uploads_in_flight,
            &m.cluster_nodes,
            &m.cluster_repair_running,
            &m.cluster_repair_checked,
            &m.cluster_resyncing,
            &m.cluster_nodes_live,
            &m.cluster_under_replicated,
            &m.objects,
            &m.logical_bytes,
            &m.unique_bytes,
            &m.stored_bytes,
            &m.disk_bytes,
            &m.disk_free_bytes,
        ] {
            m.registry.register(Box::new(x.clone())).unwrap();
        }
        for x in [&m.dedup_ratio, &m.compression_ratio, &m.efficiency] {
            m.registry.register(Box::new(x.clone())).unwrap();
        }
        m
    }

    /// Sets the storage gauges from `stats`.
    pub fn set_storage(&self, s: &Stats) {
        self.objects.set(s.objects as i64);
        self.logical_bytes.set(s.logical_bytes as i64);
        self.unique_bytes.set(s.unique_bytes as i64);
        self.stored_bytes.set(s.stored_bytes as i64);
        self.dedup_ratio.set(s.dedup_ratio);
        self.compression_ratio.set(s.compression_ratio);
        self.efficiency.set(s.efficiency);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap_or_default()
    }
}
