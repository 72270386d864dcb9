//! `tessera-bench hit-ratio --trace FILE`: the object hit ratio of a CSV request trace at
//! fixed memory budgets, through a Tessera edge in origin mode (`--disk 0`) and peers in
//! front of the same Tessera origin, beside foyer's S3-FIFO and LRU simulated on the same
//! sequence and budget.
//!
//! Every key of the trace is published to a `tessera origin` first, at its first size; a
//! key whose size changes is published again at that point of the replay (an update, as in
//! `run --workload trace`), and its reads are not size-checked. Each server reaches the
//! origin through a counting proxy in this process. One client replays the trace, one request
//! at a time, so a request is a hit exactly when the origin was asked for no file, manifest or
//! chunk while it was served (change-feed polls, health checks and metrics are not counted).
//! Each server starts empty at each size; the first half of the trace warms it, the second
//! half is measured. The origin's responses say `max-age=60`: a long replay revalidates,
//! for every server alike.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tessera_edge::client::{ClientOptions, Connection, Mode};

use crate::edge_hits::{Server, spawn_edge_with, spawn_origin};
use crate::hit_ratio::Args;
use crate::run::{content, get_whole, publish_objects, trace_objects};
use crate::workload::{TraceEntry, parse_trace};

/// Whether a request to the origin counts as the origin serving content.
fn counted(path: &str) -> bool {
    path.starts_with("/api/v1/files/")
        || path.starts_with("/api/v1/manifests/")
        || path.starts_with("/api/v1/chunks")
}

/// A proxy to `origin` on a new port that counts the content requests through it.
async fn counting_proxy(origin: SocketAddr) -> Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicU64::new(0));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let (client, c) = (client.clone(), c.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    forward(client.clone(), origin, c.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok((addr, count))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Forwards `req` to `origin`, counting it in `count` when it asks for content.
async fn forward(
    client: Client<HttpConnector, Full<Bytes>>,
    origin: SocketAddr,
    count: Arc<AtomicU64>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<hyper::body::Incoming>, BoxError> {
    if counted(req.uri().path()) {
        count.fetch_add(1, Ordering::SeqCst);
    }
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{origin}{pq}").parse::<http::Uri>()?;
    let resp = client
        .request(hyper::Request::from_parts(parts, Full::new(body)))
        .await?;
    Ok(resp)
}

/// What one server did with the measured half of the trace.
#[derive(Debug, Clone, Copy, Default)]
struct Replayed {
    requests: u64,
    hits: u64,
    errors: u64,
    secs: f64,
}

impl Replayed {
    fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.requests.max(1) as f64
    }
}

/// Replays `trace` through `addr` with one client: the first half warms, the second half is
/// measured against `count`, the proxy's count of origin requests.
async fn replay(
    addr: SocketAddr,
    trace: &[TraceEntry],
    origin: &tessera_origin_proto::OriginClient,
    count: &AtomicU64,
) -> Result<Replayed> {
    let url = format!("http://{addr}/");
    let opts = ClientOptions::new(Mode::Http1);
    let mut conn: Option<Connection> = None;
    let half = trace.len() / 2;
    let mut r = Replayed::default();
    let mut measured = Instant::now();
    for (i, e) in trace.iter().enumerate() {
        if i == half {
            measured = Instant::now();
        }
        let key = e.key.trim_start_matches('/');
        if e.update {
            origin.put_bytes(key, content(key, e.size)).await?;
        }
        let before = count.load(Ordering::SeqCst);
        let got = async {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(Connection::connect(&url, &opts).await?),
            };
            get_whole(c, &e.key, (!e.varies).then_some(e.size)).await
        }
        .await;
        if got.is_err() {
            // A new connection for the next request, warming or measured.
            conn = None;
        }
        if i < half {
            continue;
        }
        r.requests += 1;
        match got {
            Ok(_) if count.load(Ordering::SeqCst) == before => r.hits += 1,
            Ok(_) => {}
            Err(err) => {
                if r.errors < 3 {
                    eprintln!("hit-ratio: {}: {err}", e.key);
                }
                r.errors += 1;
            }
        }
    }
    r.secs = measured.elapsed().as_secs_f64();
    Ok(r)
}

/// Starts server `name` with `mib` MiB of memory in front of the origin at `origin`.
async fn start(name: &str, dir: &Path, origin: SocketAddr, mib: usize) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    match name {
        "tessera" => {
            let url = format!("http://{origin}");
            spawn_edge_with(
                "tessera",
                ["--origin", &url],
                dir.to_path_buf(),
                [mib, 0],
                None,
                false,
                None,
            )
            .await
        }
        peer => crate::compare::start_peer(peer, dir, origin, mib, None).await,
    }
}

/// The trace through a foyer cache of `mib` MiB with `eviction`, each object weighed as an
/// origin-mode edge's memory tier weighs a file it holds whole
/// ([`crate::hit_ratio::edge_weight`] with the fields such an edge stores): the measured
/// half's hit ratio.
fn simulate(trace: &[TraceEntry], mib: usize, eviction: foyer::EvictionConfig) -> f64 {
    let mut fields = http::HeaderMap::new();
    let etag = tessera_origin_proto::ChunkHash::of(b"").etag();
    fields.insert(
        "content-type",
        http::HeaderValue::from_static("application/octet-stream"),
    );
    fields.insert(
        "etag",
        http::HeaderValue::from_str(&etag).expect("a quoted hex string"),
    );
    fields.insert(
        "last-modified",
        http::HeaderValue::from_static("Sun, 06 Dec 2026 04:37:20 GMT"),
    );
    let cache: foyer::Cache<String, (u64, usize)> = foyer::CacheBuilder::new(mib << 20)
        // One shard: the policy itself, not eight smaller caches.
        .with_shards(1)
        .with_eviction_config(eviction)
        .with_weighter(|_k: &String, v: &(u64, usize)| v.1)
        .build::<foyer::CacheProperties>();
    let half = trace.len() / 2;
    let mut hits = 0;
    for (i, e) in trace.iter().enumerate() {
        // An update replaces what was held.
        if !e.update && cache.get(&e.key).is_some_and(|s| s.value().0 == e.size) {
            hits += usize::from(i >= half);
        } else {
            let weight = crate::hit_ratio::edge_weight(&e.key, &fields, e.size);
            cache.insert(e.key.clone(), (e.size, weight));
        }
    }
    hits as f64 / (trace.len() - half).max(1) as f64
}

pub async fn run(a: &Args, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the trace {}", path.display()))?;
    let trace = parse_trace(&text)?;
    if trace.len() < 2 {
        bail!("the trace needs two requests or more");
    }
    let mut unique: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for e in &trace {
        unique.insert(&e.key, e.size);
    }
    let unique_bytes: u64 = unique.values().sum();
    let updates = trace.iter().filter(|e| e.update).count();
    let dir = tempfile::tempdir()?;
    let origin = spawn_origin(dir.path()).await?;
    let client = tessera_origin_proto::OriginClient::new(
        &format!("http://{}", origin.addr),
        Some("bench".into()),
    )?;
    publish_objects(&client, trace_objects(&trace)).await?;
    let (proxy, count) = counting_proxy(origin.addr).await?;
    println!(
        "Trace `{}`: {} requests for {} distinct objects of {:.1} MiB in all ({} updates, \
         published at their point of the replay). Each server starts empty at each size in front \
         of one Tessera origin, is warmed with the first half and measured on the second ({} \
         requests), replayed by one client one request at a time over HTTP/1.1; a hit is a request \
         during which the origin was asked for no file, manifest or chunk (counted by a proxy in \
         front of it). Tessera: an origin-mode edge with its memory tier only (`--disk 0`); \
         Varnish: `-s malloc`; nginx: `proxy_cache` `max_size` (on disk, enforced after the fact). \
         Simulated: foyer with the same budget in one shard, on the same sequence, each object weighed as the edge's memory tier weighs a file it holds whole (its body, the stored response, foyer's record).",
        path.display(),
        trace.len(),
        unique.len(),
        unique_bytes as f64 / (1 << 20) as f64,
        updates,
        trace.len() - trace.len() / 2,
    );
    println!();
    let names: Vec<String> = std::iter::once("tessera".to_string())
        .chain(a.peers.iter().cloned())
        .collect();
    let mut head =
        "| memory | of unique bytes | S3-FIFO (simulated) | LRU (simulated) |".to_string();
    let mut rule = "|---:|---:|---:|---:|".to_string();
    for n in &names {
        head.push_str(&format!(" {n} hits | {n} req/s |"));
        rule.push_str("---:|---:|");
    }
    head.push_str(" Tessera − S3-FIFO (requests) | Tessera − best peer (requests) |");
    rule.push_str("---:|---:|");
    let mut lines = vec![head, rule];
    let mut against_sim = Vec::new();
    let mut against_peer = Vec::new();
    for &mib in &a.sizes {
        let s3 = simulate(&trace, mib, foyer::S3FifoConfig::default().into());
        let lru = simulate(&trace, mib, foyer::LruConfig::default().into());
        let mut line = format!(
            "| {mib} MiB | {:.1} % | {:.1} % | {:.1} % |",
            100.0 * (mib << 20) as f64 / unique_bytes.max(1) as f64,
            100.0 * s3,
            100.0 * lru
        );
        let mut got = Vec::new();
        for name in &names {
            eprintln!("hit-ratio: {name} with {mib} MiB");
            if updates > 0 {
                publish_objects(&client, trace_objects(&trace)).await?;
            }
            let server = start(name, &dir.path().join(format!("{name}-{mib}")), proxy, mib).await?;
            let r = replay(server.addr, &trace, &client, &count).await?;
            drop(server);
            let errors = if r.errors > 0 {
                format!(", {} errors", r.errors)
            } else {
                String::new()
            };
            line.push_str(&format!(
                " {:.1} %{errors} | {:.0} |",
                100.0 * r.hit_ratio(),
                r.requests as f64 / r.secs.max(1e-9)
            ));
            got.push(r.hit_ratio());
        }
        let best_peer = got[1..].iter().copied().reduce(f64::max);
        // The difference in points and in requests of the measured half ("-0.0 points" may be
        // a few requests either way).
        let measured = (trace.len() - trace.len() / 2) as f64;
        let diff = |other: f64| {
            let d = got[0] - other;
            format!(" {:+.1} points ({:+.0}) |", 100.0 * d, d * measured)
        };
        line.push_str(&diff(s3));
        line.push_str(&match best_peer {
            Some(b) => diff(b),
            None => " – |".into(),
        });
        against_sim.push(100.0 * (got[0] - s3));
        if let Some(b) = best_peer {
            against_peer.push(100.0 * (got[0] - b));
        }
        lines.push(line);
    }
    for l in &lines {
        println!("{l}");
    }
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), d| (l.min(*d), h.max(*d)));
        format!("{lo:+.1} to {hi:+.1} points")
    };
    println!();
    let mut headline = format!(
        "Headline: object hit ratio of the trace through an origin-mode edge at {}–{} MiB: {} against foyer's S3-FIFO simulated",
        a.sizes.iter().min().unwrap_or(&0),
        a.sizes.iter().max().unwrap_or(&0),
        range(&against_sim)
    );
    if !against_peer.is_empty() {
        headline.push_str(&format!(", {} against the best peer", range(&against_peer)));
    }
    println!("{headline}");
    drop(origin);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64, update: bool) -> TraceEntry {
        TraceEntry {
            at: std::time::Duration::ZERO,
            key: key.into(),
            size,
            update,
            varies: update,
        }
    }

    #[test]
    fn only_content_requests_count_as_the_origin_serving() {
        assert!(counted("/api/v1/files/cdn/a"));
        assert!(counted("/api/v1/manifests/cdn/a"));
        assert!(counted("/api/v1/chunks"));
        assert!(counted("/api/v1/chunks/abc"));
        assert!(!counted("/api/v1/changes"));
        assert!(!counted("/healthz"));
        assert!(!counted("/metrics"));
    }

    #[test]
    fn the_simulation_hits_what_fits_and_misses_updates() {
        // Two small objects requested in turn: after the warm half, every read hits...
        let mut t: Vec<TraceEntry> = (0..20)
            .map(|i| entry(if i % 2 == 0 { "/a" } else { "/b" }, 1000, false))
            .collect();
        assert_eq!(simulate(&t, 1, foyer::LruConfig::default().into()), 1.0);
        // ...except a read of an updated object, which is a miss.
        t[15] = entry("/b", 2000, true);
        t[17] = entry("/b", 2000, false);
        t[19] = entry("/b", 2000, false);
        assert_eq!(simulate(&t, 1, foyer::LruConfig::default().into()), 0.9);
    }
}
