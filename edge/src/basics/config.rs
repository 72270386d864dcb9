//! The edge's configuration, read from TOML (`tessera edge --config FILE`) or built by the
//! command line; every field has a default that serves a laptop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where misses go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Tessera origin nodes (`http://host:port`), tried in order: the edge reads manifests
    /// and chunks and caches chunks by content address.
    Origin(Vec<String>),
    /// Any HTTP server (`http://host:port`), fronted as a standard RFC 9111 proxy cache.
    Upstream(String),
}

impl Backend {
    pub fn is_origin(&self) -> bool {
        matches!(self, Backend::Origin(_))
    }
}

/// A host an edge serves (see [`EdgeConfig::hosts`]), kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern(String);

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let p = s.trim_end_matches('.').to_ascii_lowercase();
        let name = p.strip_prefix("*.").unwrap_or(&p);
        let ipv6 = name.starts_with('[')
            && name.ends_with(']')
            && name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok();
        let valid = ipv6
            || (!name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }));
        if valid && !(ipv6 && p.starts_with("*.")) {
            Ok(HostPattern(p))
        } else {
            Err(format!(
                "{s:?} is not a host: expected a name (cdn.example.com), an address \
                 (127.0.0.1, [::1]) or *.example.com, without a port"
            ))
        }
    }
}

impl From<HostPattern> for String {
    fn from(h: HostPattern) -> String {
        h.0
    }
}

impl HostPattern {
    /// Whether a request's `host` (a `Host` value or an authority, the port included or
    /// not) is this one.
    pub fn matches(&self, host: &str) -> bool {
        let name = host_name(host);
        match self.0.strip_prefix("*.") {
            Some(parent) => name
                .strip_suffix(parent)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => name == self.0,
        }
    }
}

/// A `Host` value without its port and trailing dot, in lower case.
fn host_name(host: &str) -> String {
    let h = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Configuration of one edge node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Where misses go.
    pub backend: Backend,
    /// Serve plain HTTP/1.1 (and h2c with prior knowledge) on this address. `tessera edge`
    /// binds the listeners; the library is handed them bound. Neither `http` nor `https`:
    /// `127.0.0.1:8080`.
    pub http: Option<SocketAddr>,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on this address, and HTTP/3 on its UDP port.
    pub https: Option<SocketAddr>,
    /// Serve HTTP/3 (QUIC) beside `https`.
    pub http3: bool,
    /// Certificate chain (PEM) for `https`; without it (and `tls_key`) a development
    /// certificate for localhost is made in the data folder.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve the admin API (purge, stats, plugins, `/metrics`, `/healthz`) on this address.
    pub admin: Option<SocketAddr>,
    /// Folder of the SSD tier and the edge's small state files (purges, feed position).
    pub data: PathBuf,
    /// Bytes of the memory tier (`memory` in topology files, as `--memory`).
    #[serde(
        alias = "memory",
        deserialize_with = "tessera_origin_proto::size::bytes"
    )]
    pub memory_bytes: usize,
    /// Bytes of the SSD tier; 0: no SSD tier (memory only). `disk` is the same key.
    #[serde(alias = "disk", deserialize_with = "tessera_origin_proto::size::bytes")]
    pub disk_bytes: usize,
    /// Eviction policy of the memory tier.
    pub policy: Policy,
    /// Token required by the admin listener (`Authorization: Bearer …`); `None` refuses
    /// every admin request but `/healthz`.
    pub admin_token: Option<String>,
    /// Cap on heuristic freshness (10 % of the time since `Last-Modified`), seconds.
    pub heuristic_cap_secs: u64,
    /// Upstream mode: store a response that carries `Set-Cookie`, dropping the cookie (no
    /// client gets it, the one whose request fetched it included), as nginx's
    /// `proxy_ignore_headers Set-Cookie` with `proxy_hide_header Set-Cookie` or Varnish's
    /// `unset beresp.http.set-cookie` do: for sites that set cookies on static files. Off:
    /// such responses are passed to their client and never stored.
    pub store_set_cookie_responses: bool,
    /// Largest response body the edge stores; larger ones are streamed through uncached.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub max_object_bytes: u64,
    /// Upstream mode: body bytes one fill (a response being fetched, shared by its readers)
    /// holds at most (at least 2 MiB). A stored body goes on at its fastest reader's pace
    /// (readers that fall behind read the cache); one not stored waits for its slowest
    /// reader.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub fill_window_bytes: usize,
    /// Upstream mode: a request for one byte range that the edge does not hold fetches the
    /// slices of this many bytes its range covers (each a range request of its own, stored
    /// on its own, as nginx's `slice`), not the whole response; a partial object is then
    /// completed slice by slice as requests need them. 0: ranges are answered from the
    /// whole response, fetched whole. From 64 KiB to 64 MiB.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub slice_bytes: u64,
    /// Upstream mode: stored responses whose readers all went away that are still fetched
    /// to the end into the cache, at most (as nginx and Varnish finish a cacheable fetch
    /// whose client left). Each holds up to its window and takes the upstream's pace of
    /// CPU; one left when this many go on stops (0: every one stops).
    pub max_background_fills: usize,
    /// How long the edge waits on origins and upstreams, and when it asks a second origin.
    pub timeouts: Timeouts,
    /// Origin mode: when an origin that keeps failing is set aside.
    pub outliers: Outliers,
    /// Origin mode: bytes of chunks a response fetches ahead of what its client has been
    /// sent (refilled when half of it was sent). Bounds the memory one slow client of a cold
    /// large file can hold; larger windows mean fewer, longer batch requests.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub origin_readahead_bytes: u64,
    /// Origin mode: ask origins for chunks in the brotli encoding they store them in (less
    /// to transfer, a decode per chunk here). Off by default: on a LAN or loopback the
    /// decode costs more than the bytes saved.
    pub origin_brotli: bool,
    /// Origin mode: seconds a file past its freshness is still served while its origins
    /// fail (unreachable, timing out, answering 5xx), as Varnish's grace and nginx's
    /// `proxy_cache_use_stale error timeout` keep a site up through an origin outage;
    /// `Cache-Status` says `detail=stale-if-error`. The origin's own `stale-if-error` is
    /// used when longer; a `must-revalidate` file is never served stale. 0: only what the
    /// origin's headers allow.
    pub origin_stale_if_error_secs: u64,
    /// Time a client has to send a request head, seconds.
    pub header_timeout_secs: u64,
    /// Largest request header section, bytes (larger gets `431`).
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub max_header_bytes: usize,
    /// Follow the origin's change feed (origin mode), so publishes and deletes reach this
    /// cache at once.
    pub follow_changes: bool,
    /// Compress compressible responses with brotli for clients that accept it.
    pub brotli: bool,
    /// Time a connection may stay open without a new request, seconds (then it is closed;
    /// HTTP/2 with GOAWAY, letting requests in flight finish). A TCP connection must also
    /// send its first byte within `header_timeout_secs`.
    pub idle_timeout_secs: u64,
    /// Upstream mode: clients (proxies in front of the edge, as CIDR blocks) whose
    /// `Forwarded` / `X-Forwarded-*` headers are kept and extended; from anyone else they
    /// are replaced by what the edge knows, and `X-Real-IP`, `X-Original-URL` and
    /// `X-Rewrite-URL` are dropped.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The hosts this edge serves: names (`cdn.example.com`), addresses (`127.0.0.1`,
    /// `[::1]`) or `*.example.com` for every name under one. A request for any other host
    /// (its `Host` or `:authority`, without the port, in any case) gets `421 Misdirected
    /// Request`, so made-up hosts neither reach the upstream nor take cache space. Empty
    /// (the default): every host is served.
    pub hosts: Vec<HostPattern>,
    /// Client connections (TCP) open at most; further clients wait in the listen backlog
    /// until one closes. `None`: the open-file limit less a reserve of 256 descriptors, so
    /// the SSD tier, upstream connections and the admin listener still get theirs.
    pub max_connections: Option<usize>,
    /// Connections (TCP and QUIC together) one client address may hold open; past it, a TCP
    /// connection's requests get `503` (HTTP/1.1: and it is closed), a QUIC connection is refused
    /// (`CONNECTION_REFUSED`). Generous by default: many users can share an address (NAT).
    /// 0: no limit.
    pub max_connections_per_client: usize,
    /// Time a response may wait for a client to accept more of its body (a client that
    /// stopped reading), seconds; then the stream is reset. HTTP/3 only: hyper's HTTP/1.1
    /// and HTTP/2 connections end on TCP's own timeouts.
    pub send_stall_secs: u64,
    /// QUIC settings of the HTTP/3 listener.
    pub quic: crate::basics::quic::QuicSettings,
    /// One log line per request (`pipeline::access`): protocol, status, cache result,
    /// bytes, duration.
    pub access_log: bool,
    /// Origin mode in front of an origin cluster: the ring of its nodes (in the order of
    /// the origin URLs), so the edge asks each manifest's and chunk's owners first and
    /// follows every node's change feed. Without it the URLs are a failover list.
    pub origin_ring: Option<OriginRing>,
    /// Named HTTP upstreams (`name = "http://host:port"`) a `route` plugin may send requests
    /// to, beside the default backend.
    pub upstreams: BTreeMap<String, String>,
    /// WebAssembly plugins: the sandbox's limits and the plugins bound at start-up.
    pub plugins: PluginsConfig,
}

/// Plugins of an edge ([`tessera_plugins`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Deadline, memory cap and instance count of the sandbox.
    pub limits: tessera_plugins::Limits,
    /// Plugins bound when the edge starts. Run-time deploys are saved in the data folder
    /// and outlive restarts; a hook's bindings here win over them only when they changed
    /// since the last start (see `pipeline::deployed`).
    pub bind: Vec<PluginBinding>,
}

/// A plugin bound at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginBinding {
    /// The hook: `route`, `authorize` or `eviction`.
    pub hook: tessera_plugins::Hook,
    /// A `.wasm` component file, or the name of a plugin Tessera ships (`signed-url`,
    /// `router`, `size-eviction`).
    pub plugin: String,
    /// The name it is listed and logged under (default: the file's stem or the shipped
    /// name).
    #[serde(default)]
    pub name: Option<String>,
    /// The plugin's configuration (`key = "value"`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl PluginBinding {
    /// The component's bytes and its name.
    pub fn load(&self) -> anyhow::Result<(Vec<u8>, String)> {
        let (bytes, default_name) = tessera_plugins::shipped::load(&self.plugin)?;
        Ok((bytes, self.name.clone().unwrap_or(default_name)))
    }
}

/// The placement of an origin cluster, as its nodes compute it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginRing {
    /// The nodes, one per origin URL, in the same order.
    pub nodes: Vec<tessera_origin_proto::ring::RingNode>,
    /// Copies of each chunk and manifest.
    pub replication: usize,
    /// Ring points per node and unit of weight.
    pub vnodes: u32,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            backend: Backend::Upstream("http://127.0.0.1:8080".into()),
            http: None,
            https: None,
            http3: true,
            tls_cert: None,
            tls_key: None,
            admin: None,
            data: PathBuf::from("tessera-edge-data"),
            memory_bytes: 256 << 20,
            disk_bytes: 1 << 30,
            policy: Policy::default(),
            admin_token: None,
            heuristic_cap_secs: 24 * 3600,
            store_set_cookie_responses: false,
            max_object_bytes: 1 << 30,
            fill_window_bytes: 2 << 20,
            slice_bytes: 1 << 20,
            max_background_fills: 16,
            timeouts: Timeouts::default(),
            outliers: Outliers::default(),
            origin_readahead_bytes: 4 << 20,
            origin_brotli: false,
            origin_stale_if_error_secs: 86_400,
            header_timeout_secs: 10,
            idle_timeout_secs: 75,
            max_connections: None,
            max_connections_per_client: 256,
            trusted_proxies: Vec::new(),
            hosts: Vec::new(),
            max_header_bytes: 32 << 10,
            follow_changes: true,
            brotli: true,
            send_stall_secs: 30,
            quic: crate::basics::quic::QuicSettings::default(),
            origin_ring: None,
            access_log: false,
            upstreams: BTreeMap::new(),
            plugins: PluginsConfig::default(),
        }
    }
}

/// How long the edge waits on an origin or upstream (`[timeouts]`, in milliseconds).
/// Varnish's `connect_timeout`, `first_byte_timeout` and `between_bytes_timeout` are the
/// model; the defaults are shorter than its 60 s, since a CDN's client is still waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Time to open a TCP connection (then the next origin, or `502`).
    pub connect_ms: u64,
    /// Time from sending a request to the response head (then the next origin, or `504`).
    pub first_byte_ms: u64,
    /// Time between two reads of a response body (then the body is cut off: nothing is
    /// stored, and the client's response ends in an error).
    pub between_bytes_ms: u64,
    /// Origin mode: time an origin has to answer before the same request goes to the next
    /// origin that holds the data too (a hedge: the first answer wins, the other is
    /// cancelled). 0: never hedge.
    pub hedge_after_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 3_000,
            first_byte_ms: 15_000,
            between_bytes_ms: 15_000,
            hedge_after_ms: 200,
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms.max(1))
    }
    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms.max(1))
    }
    pub fn between_bytes(&self) -> Duration {
        Duration::from_millis(self.between_bytes_ms.max(1))
    }
    /// The hedge delay, `None` when hedging is off.
    pub fn hedge_after(&self) -> Option<Duration> {
        (self.hedge_after_ms > 0).then(|| Duration::from_millis(self.hedge_after_ms))
    }
}

/// Outlier detection of origins (`[outliers]`, as Envoy's `outlier_detection`): an origin
/// that failed this many times in a row (no connection, no answer in time, an error status,
/// a broken or corrupt body, or a hedge it lost) is ejected: asked last, after every other
/// origin that holds the data, for `eject_secs` times the number of its ejections in a row
/// (at most 10 times). Then it is back on probation: one success clears it, one failure
/// ejects it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outliers {
    /// Failures in a row that eject an origin; 0: never eject.
    pub consecutive_failures: u32,
    /// Base ejection time, seconds.
    pub eject_secs: u64,
}

impl Default for Outliers {
    fn default() -> Self {
        Outliers {
            consecutive_failures: 5,
            eject_secs: 30,
        }
    }
}

/// The memory tier's eviction policy (both are foyer's; see `bench/HISTORY.md` for the
/// measurement that chose the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// W-TinyLFU: a small LRU window in front of a frequency-filtered segmented LRU.
    WTinyLfu,
    /// S3-FIFO: small and main FIFO queues with a ghost queue. The default: on Zipf
    /// workloads it ties W-TinyLFU's hit ratio (within 0.3 points, both 5–11 points above
    /// LRU; `tessera-bench policy`) and a hit only bumps a counter, with no list to relink.
    #[default]
    S3Fifo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_sets_any_field_and_refuses_unknown_ones() {
        let cfg: EdgeConfig = toml::from_str(
            r#"
            backend = { origin = ["http://127.0.0.1:7070"] }
            memory_bytes = 1048576
            policy = "w-tiny-lfu"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.backend,
            Backend::Origin(vec!["http://127.0.0.1:7070".into()])
        );
        assert_eq!(cfg.memory_bytes, 1 << 20);
        assert_eq!(cfg.policy, Policy::WTinyLfu);
        assert_eq!(cfg.disk_bytes, EdgeConfig::default().disk_bytes);
        let err = toml::from_str::<EdgeConfig>("memroy_bytes = 1").unwrap_err();
        assert!(err.to_string().contains("memroy_bytes"), "{err}");
    }

    #[test]
    fn hosts_match_names_addresses_and_subdomains_without_the_port() {
        let cfg: EdgeConfig = toml::from_str(
            r#"hosts = ["CDN.example.com.", "*.img.example.com", "127.0.0.1", "[::1]"]"#,
        )
        .unwrap();
        let served = |h: &str| cfg.hosts.iter().any(|p| p.matches(h));
        for h in [
            "cdn.example.com",
            "cdn.EXAMPLE.com:8443",
            "cdn.example.com.",
            "a.img.example.com",
            "a.b.img.example.com:80",
            "127.0.0.1:8080",
            "[::1]:443",
            "[::1]",
        ] {
            assert!(served(h), "{h}");
        }
        for h in [
            "",
            "evil.com",
            "cdn.example.com.evil.com",
            "xcdn.example.com",
            "img.example.com",
            "aimg.example.com",
            "127.0.0.2",
            "[::2]:443",
        ] {
            assert!(!served(h), "{h}");
        }
        for bad in [
            "cdn.example.com:80",
            "a/b",
            "",
            "*.",
            "a..b",
            "*.[::1]",
            "x*.y",
        ] {
            let e = toml::from_str::<EdgeConfig>(&format!("hosts = [{bad:?}]")).unwrap_err();
            assert!(e.to_string().contains("is not a host"), "{bad}: {e}");
        }
    }
}
