//! `tessera-bench hit-ratio`: the hit ratio against cache size, measured through real
//! servers: a Tessera edge (memory tier only, `--disk 0`), nginx `proxy_cache` and Varnish
//! (`-s malloc`), each given the same cache size, in front of the same upstream, sent the same
//! seeded cdn request sequence.
//!
//! The upstream is a small HTTP server inside this process that serves every cdn object
//! (`/cdn/head-K`, `/cdn/tail-K`, at the workload's sizes, `Cache-Control: public,
//! max-age=3600`) and counts what it is asked for. A server's hit ratio is the share of the
//! client's requests that never reached the upstream, so every server is measured the same
//! way, whatever its own counters call a hit. Each server starts empty for each size; the
//! first half of the sequence warms it, the second half is measured. Beside the servers, the
//! same sequence through an in-process foyer cache of the same size and weights (S3-FIFO, the
//! edge's policy) shows what the policy alone would reach.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use tessera_edge::client::{ClientOptions, Connection, Mode};

use crate::edge_hits::{Server, serve_http1, spawn_edge_with, start_nginx, start_varnish};
use crate::workload::{Cdn, Op};

/// Options of `tessera-bench hit-ratio`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Cache sizes to measure, MiB.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32,64,128")]
    pub sizes: Vec<usize>,
    /// Requests per server and size (half warm the cache, half are measured).
    #[arg(long, default_value_t = 100_000)]
    pub requests: usize,
    /// Clients, each with one connection and one request in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Size scale of the cdn objects (1.0: 1 KiB–1 MiB; 0.1: 100 B–100 KiB).
    #[arg(long, default_value_t = 0.1)]
    pub scale: f64,
    /// Objects in the cdn workload's uniform long tail.
    #[arg(long, default_value_t = 10_000)]
    pub tail: usize,
    /// Peers measured beside Tessera.
    #[arg(long, value_delimiter = ',', default_value = "nginx,varnish")]
    pub peers: Vec<String>,
    /// Seed of the request sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Draw the chart (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replay this CSV trace (`timestamp,key,size`) instead of the cdn workload, through an
    /// origin-mode edge and the peers in front of one Tessera origin, beside foyer's S3-FIFO
    /// and LRU simulated on it (`--requests`, `--scale`, `--tail`, `--seed`, `--plot` and
    /// `--json` do not apply).
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// What the upstream was asked for.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

impl Counts {
    fn get(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// The size of cdn object `path` (`/cdn/head-K` or `/cdn/tail-K`), if it is one.
fn object_size(cdn: &Cdn, path: &str) -> Option<u64> {
    let rest = path.strip_prefix("/cdn/")?;
    let (head, k) = if let Some(k) = rest.strip_prefix("head-") {
        (true, k)
    } else {
        (false, rest.strip_prefix("tail-")?)
    };
    Some(cdn.object(head, k.parse().ok()?).1)
}

/// Starts the counting upstream: every cdn object at its size, cacheable for an hour; any
/// other path is a 404.
pub async fn upstream(scale: f64) -> Result<(SocketAddr, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    let sizes = Cdn::new(0, scale);
    let largest = ((1u64 << 20) as f64 * scale).ceil() as usize + 1;
    let filler = Bytes::from(vec![b'x'; largest]);
    let c = counts.clone();
    let addr = serve_http1(move |req| {
        let mut resp = hyper::Response::builder();
        let body = match object_size(&sizes, req.uri().path()) {
            Some(n) if (n as usize) <= filler.len() => {
                c.requests.fetch_add(1, Ordering::SeqCst);
                c.bytes.fetch_add(n, Ordering::SeqCst);
                resp = resp
                    .header("cache-control", "public, max-age=3600")
                    .header("content-type", "application/octet-stream");
                filler.slice(..n as usize)
            }
            _ => {
                resp = resp.status(404);
                Bytes::from_static(b"not a cdn object\n")
            }
        };
        resp.body(Full::new(body)).unwrap()
    })
    .await?;
    Ok((addr, counts))
}

/// The request sequence: `n` reads of the cdn workload (seeded).
pub fn sequence(a: &Args) -> Vec<(String, u64)> {
    let mut cdn = Cdn::with_tail(a.seed, a.scale, a.tail);
    (0..a.requests)
        .map(|_| match cdn.next_op() {
            Op::Read { key, size } | Op::Write { key, size } => (format!("/{key}"), size),
        })
        .collect()
}

/// What one server did with the measured half of the sequence.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub upstream_requests: u64,
    pub upstream_bytes: u64,
    pub secs: f64,
    /// The most bytes its cache folder held while it ran (nginx).
    pub peak_held: Option<u64>,
}

/// Samples the bytes of the files under a folder every 100 ms, keeping the largest.
struct Peak {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Peak {
    fn watch(dir: PathBuf) -> Peak {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(folder_bytes(&dir));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            peak.max(folder_bytes(&dir))
        });
        Peak { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Bytes of the files under `dir` (files removed while it walks are skipped).
fn folder_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

impl Measured {
    /// Share of requests answered without the upstream.
    pub fn hit_ratio(&self) -> f64 {
        1.0 - self.upstream_requests as f64 / self.requests.max(1) as f64
    }

    /// Whether its cache held more than a quarter over `mib` MiB at some point (such a peer
    /// is not compared at that size).
    pub fn over_size(&self, mib: usize) -> bool {
        self.peak_held.is_some_and(|b| b > ((mib as u64 * 5) << 18))
    }

    /// Share of bytes answered without the upstream.
    pub fn byte_hit_ratio(&self) -> f64 {
        1.0 - self.upstream_bytes as f64 / self.bytes.max(1) as f64
    }
}

/// Sends `ops` to `addr` with `concurrency` clients, checking each status and length;
/// returns (requests, bytes, errors).
async fn send(addr: SocketAddr, ops: Arc<[(String, u64)]>, concurrency: usize) -> (u64, u64, u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ops, next) = (ops.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let url = format!("http://{addr}/");
            let opts = ClientOptions::new(Mode::Http1);
            let (mut n, mut bytes, mut errors) = (0u64, 0u64, 0u64);
            let mut conn = Connection::connect(&url, &opts).await.ok();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, size)) = ops.get(i) else {
                    break;
                };
                let got = async {
                    let c = match &mut conn {
                        Some(c) => c,
                        None => conn.insert(Connection::connect(&url, &opts).await?),
                    };
                    crate::run::get_whole(c, path, Some(*size)).await
                }
                .await;
                n += 1;
                match got {
                    Ok(_) => bytes += size,
                    Err(e) => {
                        if errors < 3 {
                            eprintln!("hit-ratio: {path}: {e}");
                        }
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (n, bytes, errors)
        }));
    }
    let mut sum = (0, 0, 0);
    for t in tasks {
        let (n, b, e) = t.await.unwrap_or((0, 0, 1));
        sum = (sum.0 + n, sum.1 + b, sum.2 + e);
    }
    sum
}

/// Warms `addr` with the first half of `ops`, then measures the second half.
pub async fn measure(
    addr: SocketAddr,
    ops: &[(String, u64)],
    concurrency: usize,
    counts: &Counts,
) -> Measured {
    let half = ops.len() / 2;
    send(addr, ops[..half].into(), concurrency).await;
    let (r0, b0) = counts.get();
    let started = Instant::now();
    let (requests, bytes, errors) = send(addr, ops[half..].into(), concurrency).await;
    let secs = started.elapsed().as_secs_f64();
    let (r1, b1) = counts.get();
    Measured {
        requests,
        bytes,
        errors,
        upstream_requests: r1 - r0,
        upstream_bytes: b1 - b0,
        secs,
        peak_held: None,
    }
}

/// The same sequence through an in-process foyer cache of `mib` MiB, S3-FIFO, each object
/// weighed as the edge's memory tier weighs it ([`edge_weight`], with the upstream's fields).
fn simulate(ops: &[(String, u64)], mib: usize) -> f64 {
    use foyer::{CacheBuilder, S3FifoConfig};
    let mut fields = http::HeaderMap::new();
    for (name, value) in [
        ("cache-control", "public, max-age=3600"),
        ("content-type", "application/octet-stream"),
        ("content-length", "1048576"),
        ("date", "Sun, 06 Dec 2026 04:37:20 GMT"),
    ] {
        fields.insert(name, http::HeaderValue::from_static(value));
    }
    let cache: foyer::Cache<String, usize> = CacheBuilder::new(mib << 20)
        // One shard: the policy itself, not eight smaller caches.
        .with_shards(1)
        .with_eviction_config(S3FifoConfig::default())
        .with_weighter(|_k: &String, w: &usize| *w)
        .build::<foyer::CacheProperties>();
    let half = ops.len() / 2;
    let mut hits = 0;
    for (i, (k, size)) in ops.iter().enumerate() {
        if cache.get(k).is_some() {
            hits += usize::from(i >= half);
        } else {
            cache.insert(k.clone(), edge_weight(k, &fields, *size));
        }
    }
    hits as f64 / (ops.len() - half).max(1) as f64
}

/// What an edge's memory tier charges for the response to `path` with the fields `fields`
/// and a body of `size` bytes, held whole
/// ([`tessera_edge::store::entry::weigh`]: foyer's record, the stored response, its body).
/// The simulations weigh objects with it, so that they and the edge spend one budget alike.
pub(crate) fn edge_weight(path: &str, fields: &http::HeaderMap, size: u64) -> usize {
    use tessera_edge::rules::freshness::Freshness;
    use tessera_edge::store::entry::{BodyRef, Meta, Value, weigh};
    let meta = Meta {
        status: 200,
        headers: tessera_edge::store::headers::StoredHeaders::from_map(fields),
        freshness: Freshness::default(),
        stored_at_ms: 0,
        path: format!("/{}", path.trim_start_matches('/')),
        surrogate_keys: Vec::new(),
        size,
        body: BodyRef::Inline(Bytes::from(vec![0; size as usize])),
        placement: Default::default(),
    };
    weigh(&Value::Meta(Arc::new(meta)))
}

async fn start(name: &str, dir: &std::path::Path, up: SocketAddr, mib: usize) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    match name {
        "tessera" => {
            let upstream = format!("http://{up}");
            spawn_edge_with(
                "tessera",
                ["--upstream", &upstream],
                dir.to_path_buf(),
                [mib, 0],
                None,
                false,
                None,
            )
            .await
        }
        "nginx" => start_nginx(dir, "nginx.conf", &[("UPSTREAM", up.to_string())], mib).await,
        "varnish" => {
            let vars = [
                ("UPSTREAM_HOST", up.ip().to_string()),
                ("UPSTREAM_PORT", up.port().to_string()),
            ];
            start_varnish(dir, "varnish.vcl", &vars, mib).await
        }
        other => bail!("unknown peer {other:?}: expected nginx or varnish"),
    }
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(1)?.block_on(run_async(a))
}

async fn run_async(a: Args) -> Result<()> {
    if a.sizes.is_empty() || a.requests < 2 {
        bail!("give at least one --sizes value and --requests of 2 or more");
    }
    let dir = tempfile::tempdir()?;
    let (up, counts) = upstream(a.scale).await?;
    let ops = sequence(&a);
    let measured_ops = &ops[ops.len() / 2..];
    let distinct: std::collections::HashMap<&str, u64> =
        ops.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    let catalogue: u64 = distinct.values().sum();
    println!(
        "The cdn workload's request sequence (seed {}, sizes x{}, a head of 1,000 objects and a tail of {}): \
         {} requests for {} distinct objects of {:.1} MiB in all, {:.1} MiB requested. \
         Each server starts empty at each size, is warmed with the first half and measured on the second \
         ({} requests, {:.1} MiB); a hit is a request that did not reach the upstream. {} clients, HTTP/1.1. \
         Tessera: memory tier only (`--disk 0`); nginx: `proxy_cache` with `max_size` (on disk, \
         through the page cache; its keys zone is extra; a separate cache manager process enforces \
         it after the fact, so the table gives the most its cache folder held, sampled every 100 ms); Varnish: `-s malloc` (its per-object overhead \
         counts against the size, as Tessera's does).",
        a.seed,
        a.scale,
        a.tail,
        ops.len(),
        distinct.len(),
        catalogue as f64 / (1 << 20) as f64,
        ops.iter().map(|o| o.1).sum::<u64>() as f64 / (1 << 20) as f64,
        measured_ops.len(),
        measured_ops.iter().map(|o| o.1).sum::<u64>() as f64 / (1 << 20) as f64,
        a.concurrency,
    );
    println!();
    let names: Vec<String> = std::iter::once("tessera".to_string())
        .chain(a.peers.iter().cloned())
        .collect();
    let mut rows: Vec<(usize, f64, Vec<Measured>)> = Vec::new();
    for &mib in &a.sizes {
        let mut per = Vec::new();
        for name in &names {
            eprintln!("hit-ratio: {name} with {mib} MiB");
            let folder = dir.path().join(format!("{name}-{mib}"));
            let server = start(name, &folder, up, mib).await?;
            // nginx enforces max_size from a separate cache manager process, after the
            // fact: what its cache folder holds is sampled through the run.
            let held = (name == "nginx").then(|| Peak::watch(folder.join("nginx-cache")));
            let mut m = measure(server.addr, &ops, a.concurrency, &counts).await;
            m.peak_held = held.map(Peak::stop);
            drop(server);
            if m.errors > 0 {
                eprintln!("hit-ratio: {name} at {mib} MiB: {} errors", m.errors);
            }
            per.push(m);
        }
        rows.push((mib, simulate(&ops, mib), per));
    }
    let mut head = "| cache | foyer S3-FIFO (simulated) |".to_string();
    let mut rule = "|---:|---:|".to_string();
    for n in &names {
        head.push_str(&format!(" {n} hits (bytes) | {n} req/s |"));
        rule.push_str("---:|---:|");
    }
    if names.len() > 1 {
        head.push_str(" Tessera − best peer within its size |");
        rule.push_str("---:|");
    }
    println!("{head}\n{rule}");
    for (mib, sim, per) in &rows {
        let mut line = format!("| {mib} MiB | {:.1} % |", 100.0 * sim);
        for m in per {
            let mut notes = String::new();
            if m.errors > 0 {
                notes.push_str(&format!(", {} errors", m.errors));
            }
            if let Some(p) = m.peak_held {
                notes.push_str(&format!(
                    ", held up to {:.0} MiB",
                    p as f64 / (1 << 20) as f64
                ));
            }
            line.push_str(&format!(
                " {:.1} % ({:.1} %){notes} | {:.0} |",
                100.0 * m.hit_ratio(),
                100.0 * m.byte_hit_ratio(),
                m.requests as f64 / m.secs.max(1e-9)
            ));
        }
        if per.len() > 1 {
            let best = per[1..]
                .iter()
                .filter(|m| !m.over_size(*mib))
                .map(Measured::hit_ratio)
                .reduce(f64::max);
            line.push_str(&match best {
                Some(b) => format!(" {:+.1} points |", 100.0 * (per[0].hit_ratio() - b)),
                None => " – |".to_string(),
            });
        }
        println!("{line}");
    }
    let mut headline = Vec::new();
    for (i, n) in names.iter().enumerate().skip(1) {
        let diffs: Vec<f64> = rows
            .iter()
            .map(|(_, _, per)| 100.0 * (per[0].hit_ratio() - per[i].hit_ratio()))
            .collect();
        let (lo, hi) = diffs
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), d| (l.min(*d), h.max(*d)));
        let over = rows.iter().any(|(mib, _, per)| per[i].over_size(*mib));
        let held = rows
            .iter()
            .filter_map(|(mib, _, per)| Some((mib, per[i].peak_held?)))
            .map(|(mib, b)| b as f64 / (*mib << 20) as f64)
            .fold(0.0, f64::max);
        headline.push(format!(
            "{lo:+.1} to {hi:+.1} points against {n}{}",
            if over {
                format!(" (which held up to {held:.0}x its size)")
            } else {
                String::new()
            }
        ));
    }
    if !headline.is_empty() {
        println!();
        println!(
            "Headline: hit ratio of the cdn workload at {}–{} MiB: Tessera {}",
            a.sizes.iter().min().unwrap_or(&0),
            a.sizes.iter().max().unwrap_or(&0),
            headline.join(", ")
        );
    }
    if let Some(p) = &a.plot {
        let mut series: Vec<crate::plot::Series> = names
            .iter()
            .enumerate()
            .map(|(i, n)| crate::plot::Series {
                name: if rows.iter().any(|(mib, _, per)| per[i].over_size(*mib)) {
                    format!("{n} (held more than its size)")
                } else {
                    n.clone()
                },
                points: rows
                    .iter()
                    .map(|(mib, _, per)| ((*mib as f64).log2(), 100.0 * per[i].hit_ratio()))
                    .collect(),
            })
            .collect();
        series.push(crate::plot::Series {
            name: "foyer S3-FIFO (simulated)".into(),
            points: rows
                .iter()
                .map(|(mib, sim, _)| ((*mib as f64).log2(), 100.0 * sim))
                .collect(),
        });
        crate::plot::line_chart(
            p,
            "Hit ratio against cache size, cdn workload, through each server",
            "cache size, MiB",
            "hit ratio, %",
            crate::plot::XAxis::Log2,
            &series,
        )?;
        println!();
        println!("Chart: `{}`", p.display());
    }
    if let Some(j) = &a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(mib, sim, per)| {
                let servers: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(per)
                    .map(|(n, m)| {
                        (
                            n.clone(),
                            serde_json::json!({
                                "hit_ratio": m.hit_ratio(),
                                "byte_hit_ratio": m.byte_hit_ratio(),
                                "requests": m.requests,
                                "errors": m.errors,
                                "upstream_requests": m.upstream_requests,
                                "peak_held_bytes": m.peak_held,
                                "requests_per_sec": m.requests as f64 / m.secs.max(1e-9),
                            }),
                        )
                    })
                    .collect();
                serde_json::json!({"cache_mib": mib, "simulated_s3fifo": sim, "servers": servers})
            })
            .collect();
        std::fs::write(j, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The upstream and the measurement against a real in-process edge (memory only).
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bigger_cache_hits_more_and_the_upstream_counts_every_miss() {
        let a = Args {
            sizes: vec![],
            requests: 20_000,
            concurrency: 4,
            scale: 0.05,
            tail: 2_000,
            peers: vec![],
            seed: 3,
            plot: None,
            json: None,
            trace: None,
        };
        let (up, counts) = upstream(a.scale).await.unwrap();
        let ops = sequence(&a);
        let dir = tempfile::tempdir().unwrap();
        let mut ratios = Vec::new();
        for mib in [1, 64] {
            let backend = tessera_edge::Backend::Upstream(format!("http://{up}"));
            let dir = dir.path().join(mib.to_string());
            let (addr, _) = crate::testing::edge(backend, &dir, mib << 20, 0).await;
            let m = measure(addr, &ops, a.concurrency, &counts).await;
            assert_eq!(m.errors, 0, "{m:?}");
            assert_eq!(m.requests, 10_000);
            ratios.push((m.hit_ratio(), simulate(&ops, mib)));
        }
        // 64 MiB holds every object the sequence asks for: only first requests miss, and
        // with the cache warmed by the first half, few of those are left.
        let (small, big) = (ratios[0], ratios[1]);
        assert!(big.0 > 0.85, "{ratios:?}");
        assert!(big.0 > small.0 + 0.1, "{ratios:?}");
        // The edge is within a few points of its policy simulated alone.
        assert!((small.0 - small.1).abs() < 0.1, "{ratios:?}");
        // Anything else is a 404 and is not counted.
        let before = counts.get();
        let opts = ClientOptions::new(Mode::Http1);
        let mut c = Connection::connect(&format!("http://{up}/"), &opts)
            .await
            .unwrap();
        assert_eq!(c.get("/elsewhere").await.unwrap().status(), 404);
        assert_eq!(counts.get(), before);
    }
}
