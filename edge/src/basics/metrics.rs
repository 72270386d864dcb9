//! The edge's Prometheus metrics, in a registry of its own (so several edges in one process,
//! as in tests, count apart). Served on the admin listener at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why the edge asked an origin or upstream (the `kind` label of
/// `tessera_edge_origin_fetches_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// A file's manifest (origin mode).
    Manifest,
    /// One chunk by its blake3 (origin mode, from an origin without batches).
    Chunk,
    /// A batch of chunks, streamed (origin mode).
    Chunks,
    /// A whole response (upstream mode).
    Object,
    /// One slice of a partial object, a range request (upstream mode).
    Slice,
    /// A conditional request for a stored response gone stale.
    Revalidate,
    /// A request passed through without caching.
    Pass,
}

impl FetchKind {
    /// Every kind, in the order stats list them.
    pub const ALL: [FetchKind; 7] = [
        FetchKind::Manifest,
        FetchKind::Chunk,
        FetchKind::Chunks,
        FetchKind::Object,
        FetchKind::Slice,
        FetchKind::Revalidate,
        FetchKind::Pass,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchKind::Manifest => "manifest",
            FetchKind::Chunk => "chunk",
            FetchKind::Chunks => "chunks",
            FetchKind::Object => "object",
            FetchKind::Slice => "slice",
            FetchKind::Revalidate => "revalidate",
            FetchKind::Pass => "pass",
        }
    }
}

/// Every metric the edge exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// The same registry as foyer sees it: its tiers export their own `foyer_*` series.
    pub foyer: mixtrics::registry::prometheus_0_14::PrometheusMetricsRegistry,
    /// Bytes of the SSD tier holding entries: its blocks being written or full, times the
    /// block size (a block is reused whole, as Varnish's file storage reports segments).
    pub ssd_used: IntGauge,
    /// Requests answered, by protocol (`http/1.1`, `h2`, `h3`) and status code.
    pub requests: IntCounterVec,
    /// Cache lookups by result (`hit`, `miss`, `stale`, `revalidated`, `pass`) and tier
    /// (`memory`, `disk`, `none`).
    pub cache: IntCounterVec,
    /// Body bytes sent to clients, by where they came from (`memory`, `disk`, `origin`).
    pub bytes_served: IntCounterVec,
    /// Time to the response head, by protocol and result (`hit`, `miss`).
    pub latency: HistogramVec,
    /// Requests to origins, by kind (`manifest`, `chunk`, `chunks`, `object`, `revalidate`,
    /// `pass`).
    pub origin_fetches: IntCounterVec,
    /// Chunks received from origins and checked against their blake3 (origin mode).
    pub origin_chunks: IntCounter,
    /// Chunks being fetched from origins now (origin mode).
    pub chunks_in_flight: IntGauge,
    /// Body bytes held by fills in progress (upstream mode).
    pub fill_bytes: IntGauge,
    /// Fills waiting for a slow reader.
    pub fills_waiting: IntGauge,
    /// Stored fills going on with no reader left (at most `max_background_fills`).
    pub fills_background: IntGauge,
    /// Stored fills stopped when their last reader left, `max_background_fills` going on.
    pub fills_stopped: IntCounter,
    /// Times the client connection cap was reached.
    pub connection_limit_hits: IntCounter,
    /// Connections refused because their client address holds `max_connections_per_client`,
    /// by protocol (`tcp`, `quic`).
    pub connections_refused: IntCounterVec,
    /// Bodies compressed with brotli for clients (each copy is made once).
    pub brotli_compressions: IntCounter,
    /// Large origin-mode files copied into segments for their hits (origin mode).
    pub assembled: IntCounter,
    /// Origin failures by kind (`connect`, `timeout`, `status`, `corrupt`, `malformed`).
    pub origin_errors: IntCounterVec,
    /// Requests hedged to a second origin (`[timeouts] hedge_after_ms`), by which answered
    /// first: `first`, `second`, or `none` (both failed).
    pub origin_hedges: IntCounterVec,
    /// Origins ejected by outlier detection (`[outliers]`), by origin URL.
    pub origin_ejections: IntCounterVec,
    /// Time from a request to an origin to its response head.
    pub origin_latency: Histogram,
    /// Requests that waited for another request's origin fetch instead of making their own.
    pub coalesced: IntCounter,
    /// Chunks refused because their bytes did not match their blake3.
    pub corrupt_chunks: IntCounter,
    /// Bytes held per tier (`memory`).
    pub cache_bytes: IntGaugeVec,
    /// Errors of the SSD tier, by operation (`read`; `allocate`: no room for its files at
    /// start, so it runs in memory only).
    pub ssd_errors: IntCounterVec,
    /// Bytes of the SSD tier in use by this run (0 when it runs in memory only): its capacity.
    pub ssd_bytes: IntGauge,
    /// Requests refused as malformed (400, 431, bad paths).
    pub bad_requests: IntCounter,
    /// Requests for a host this edge does not serve (421).
    pub misdirected: IntCounter,
    /// `103 Early Hints` sent to clients (HTTP/3).
    pub early_hints: IntCounter,
    /// Purges by kind (`path`, `prefix`, `key`, `all`) and mode (`hard`, `soft`).
    pub purges: IntCounterVec,
    /// Change feed position (origin mode).
    pub feed_position: IntGauge,
    /// HTTP/3 and QUIC events that end a connection or a request early, by event
    /// (`handshake_failed`, `handshake_timeout`, `connection_error`, `request_error`,
    /// `header_too_big`, `request_timeout`, `send_stalled`, `client_reset`).
    pub quic_events: IntCounterVec,
    /// QUIC connections open.
    pub quic_connections: IntGauge,
    /// Plain HTTP/1.1 connections parked between requests (holding no HTTP buffers).
    pub connections_parked: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        Metrics {
            requests: counter_vec(
                "tessera_edge_requests_total",
                "Requests answered, by protocol and status",
                &["protocol", "status"],
            ),
            cache: counter_vec(
                "tessera_edge_cache_lookups_total",
                "Cache lookups by result and tier",
                &["result", "tier"],
            ),
            bytes_served: counter_vec(
                "tessera_edge_bytes_served_total",
                "Body bytes sent to clients, by source",
                &["source"],
            ),
            latency: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tessera_edge_response_seconds",
                        "Time to the response head, by protocol and cache result",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["protocol", "result"],
                )
                .unwrap(),
            ),
            origin_fetches: counter_vec(
                "tessera_edge_origin_fetches_total",
                "Requests to origins, by kind",
                &["kind"],
            ),
            origin_errors: counter_vec(
                "tessera_edge_origin_errors_total",
                "Origin failures, by kind",
                &["kind"],
            ),
            origin_hedges: counter_vec(
                "tessera_edge_origin_hedges_total",
                "Requests hedged to a second origin, by which answered first",
                &["winner"],
            ),
            origin_ejections: counter_vec(
                "tessera_edge_origin_ejections_total",
                "Origins ejected by outlier detection, by origin",
                &["origin"],
            ),
            origin_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tessera_edge_origin_fetch_seconds",
                        "Time from a request to an origin to its response head",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            origin_chunks: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_origin_chunks_total",
                    "Chunks received from origins and checked against their blake3",
                )
                .unwrap(),
            ),
            chunks_in_flight: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_origin_chunks_in_flight",
                    "Chunks being fetched from origins now",
                )
                .unwrap(),
            ),
            connections_refused: counter_vec(
                "tessera_edge_connections_refused_total",
                "Connections refused for their client address's limit, by protocol",
                &["protocol"],
            ),
            connection_limit_hits: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_connection_limit_hits_total",
                    "Times the edge reached max_connections and left new clients waiting",
                )
                .unwrap(),
            ),
            brotli_compressions: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_brotli_compressions_total",
                    "Stored bodies compressed with brotli (a copy kept in the memory tier)",
                )
                .unwrap(),
            ),
            fill_bytes: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_fill_bytes",
                    "Body bytes held by responses being fetched from upstreams for their readers",
                )
                .unwrap(),
            ),
            fills_waiting: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_fills_waiting",
                    "Responses being fetched that wait for a slow reader (their window is full)",
                )
                .unwrap(),
            ),
            fills_background: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_fills_background",
                    "Responses being fetched into the cache with no reader left",
                )
                .unwrap(),
            ),
            fills_stopped: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_fills_stopped_total",
                    "Responses being stored whose fetch stopped when their last reader left, max_background_fills going on already",
                )
                .unwrap(),
            ),
            assembled: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_assembled_files_total",
                    "Large files copied into segments held in memory, so hits are big writes",
                )
                .unwrap(),
            ),
            coalesced: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_coalesced_total",
                    "Requests served by another request's origin fetch",
                )
                .unwrap(),
            ),
            corrupt_chunks: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_corrupt_chunks_total",
                    "Chunks refused because their bytes did not match their blake3",
                )
                .unwrap(),
            ),
            ssd_errors: counter_vec(
                "tessera_edge_ssd_errors_total",
                "Errors of the SSD tier, by operation",
                &["op"],
            ),
            ssd_bytes: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_ssd_bytes",
                    "Bytes of the SSD tier in use (0: memory only)",
                )
                .unwrap(),
            ),
            cache_bytes: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("tessera_edge_cache_bytes", "Bytes held, by tier"),
                    &["tier"],
                )
                .unwrap(),
            ),
            bad_requests: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_bad_requests_total",
                    "Requests refused as malformed",
                )
                .unwrap(),
            ),
            misdirected: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_misdirected_requests_total",
                    "Requests for a host this edge does not serve (421)",
                )
                .unwrap(),
            ),
            early_hints: reg(
                &registry,
                IntCounter::new(
                    "tessera_edge_early_hints_total",
                    "103 Early Hints sent to clients (HTTP/3)",
                )
                .unwrap(),
            ),
            purges: counter_vec(
                "tessera_edge_purges_total",
                "Purges, by kind and mode",
                &["kind", "mode"],
            ),
            feed_position: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_feed_position",
                    "Last change feed sequence number applied",
                )
                .unwrap(),
            ),
            quic_events: counter_vec(
                "tessera_edge_quic_events_total",
                "HTTP/3 connections and requests ended early, by event",
                &["event"],
            ),
            quic_connections: reg(
                &registry,
                IntGauge::new("tessera_edge_quic_connections", "QUIC connections open").unwrap(),
            ),
            connections_parked: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_connections_parked",
                    "Plain HTTP/1.1 keep-alive connections waiting for a request, parked",
                )
                .unwrap(),
            ),
            ssd_used: reg(
                &registry,
                IntGauge::new(
                    "tessera_edge_ssd_used_bytes",
                    "Bytes of the SSD tier holding entries (blocks written or being written)",
                )
                .unwrap(),
            ),
            foyer: mixtrics::registry::prometheus_0_14::PrometheusMetricsRegistry::new(
                registry.clone(),
            ),
            registry,
        }
    }

    /// Bytes of the SSD tier holding entries, from foyer's block gauges (refreshes
    /// `tessera_edge_ssd_used_bytes`). 0 when the tier runs in memory only.
    pub fn ssd_used_bytes(&self) -> i64 {
        let used = if self.ssd_bytes.get() == 0 {
            0
        } else {
            ssd_used_from(&self.registry.gather())
        };
        self.ssd_used.set(used);
        used
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.ssd_used_bytes();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

/// Blocks of foyer's SSD engine that hold entries (every state but `clean`) times its block
/// size.
fn ssd_used_from(families: &[prometheus::proto::MetricFamily]) -> i64 {
    let family = |name: &str| families.iter().find(|f| f.name() == name);
    let gauge_sum = |f: &prometheus::proto::MetricFamily, keep: &dyn Fn(&str) -> bool| {
        f.get_metric()
            .iter()
            .filter(|m| {
                m.get_label()
                    .iter()
                    .all(|l| l.name() != "type" || keep(l.value()))
            })
            .map(|m| m.get_gauge().get_value() as i64)
            .sum::<i64>()
    };
    let (Some(blocks), Some(size)) = (
        family("foyer_storage_block_engine_block"),
        family("foyer_storage_block_engine_block_size_bytes"),
    ) else {
        return 0;
    };
    gauge_sum(blocks, &|t| t != "clean") * gauge_sum(size, &|_| true)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
