//! `tessera-bench slow-readers`: an upstream-mode edge while many clients read different cold
//! large objects slowly (1 MB/s each by default), with a fast client on a hot object beside
//! them. Samples the edge's RSS every second and measures the fast client's throughput
//! before and during the slow readers. Issue 21's goal: 50 slow readers of 50 cold 1 GiB
//! objects keep the edge under 512 MiB of RSS while the fast client keeps its throughput
//! (± 10 %).
//!
//! The upstream (in this process) streams each large object from one repeated MiB, as fast
//! as the edge takes it. Run once with bodies the edge stores (`max-age`: the fill goes on
//! at the upstream's pace, readers that fall behind read the cache) and once with bodies it
//! does not (`no-store`: the fill waits for its slowest reader, within its window).
//!
//! On one machine the bench's own upstream and slow clients take CPU the fast client then
//! lacks, whatever the edge does; in a deployment they are other machines. So the fast
//! client is measured three times: alone; beside the same slow clients reading the upstream
//! directly (the control: the bench's own load, no edge work for them); and beside them
//! reading through the edge. The goal's ratio is the third against the control: what the
//! edge's work for the slow readers costs the fast client. The ratio against "alone" is
//! printed too. The fast client runs on a thread and runtime of its own, so its requests
//! never queue behind the slow clients' tasks. One loopback connection's throughput on two
//! shared cores moves by a third from one phase to the next (and is often higher beside
//! other work than alone, the cores never idling), so each round has its own edge, control
//! and phase through the edge, and the ratio is the rounds' median. The edge's RSS is
//! sampled through the slow reads and for a few seconds after the readers leave, while the
//! fills they left go on in the background.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tessera_edge::client::{ClientOptions, Connection, Mode};

use crate::edge_hits::{machine, rss, spawn_edge};

/// Options of `tessera-bench slow-readers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Slow clients, each on a cold object of its own.
    #[arg(long, default_value_t = 50)]
    readers: usize,
    /// Size of each cold object, MiB.
    #[arg(long, default_value_t = 1024)]
    object_mib: u64,
    /// Rate of each slow client, bytes per second.
    #[arg(long, default_value_t = 1_000_000)]
    rate: u64,
    /// Seconds the slow readers read in each phase (the fast client is measured in the
    /// second half).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Rounds of the control phase and the phase through the edge, alternated; the ratio
    /// is the median of the rounds'.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(2)?.block_on(run_async(a))
}

/// An upstream serving `/hot` (1 MiB) and `/cold/N` (`size` bytes, streamed), with
/// `cache_control`.
async fn upstream(size: u64, cache_control: &'static str) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mib = crate::run::content("slow-readers", 1 << 20);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let mib = mib.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let mib = mib.clone();
                    async move {
                        let hot = req.uri().path() == "/hot";
                        let len = if hot { 1 << 20 } else { size };
                        let pieces = len.div_ceil(1 << 20);
                        let body = futures_util::stream::iter((0..pieces).map(move |i| {
                            let n = (len - i * (1 << 20)).min(1 << 20) as usize;
                            Ok::<_, Infallible>(Frame::data(mib.slice(..n)))
                        }));
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header(
                                    "cache-control",
                                    if hot { "max-age=3600" } else { cache_control },
                                )
                                .header("content-length", len)
                                .body(StreamBody::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// MB/s of back-to-back downloads of `/hot` on `FAST_CONNECTIONS` connections for `secs`,
/// on a thread and runtime of its own: the median of half-second windows, so a moment's
/// hiccup (the scheduler moving a thread) weighs less than it would in one long average.
async fn fast_client(addr: SocketAddr, secs: f64) -> Result<f64> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(fast_downloads(addr, secs))
    })
    .await?
}

/// Connections of the fast client: a browser's few, which also spread it over the edge's
/// threads as one connection, landing on one of them, would not.
const FAST_CONNECTIONS: usize = 4;

async fn fast_downloads(addr: SocketAddr, secs: f64) -> Result<f64> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let bytes = std::sync::Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut conns = tokio::task::JoinSet::new();
    for _ in 0..FAST_CONNECTIONS {
        let bytes = bytes.clone();
        conns.spawn(async move {
            let mut c =
                Connection::connect(&format!("http://{addr}/"), &ClientOptions::new(Mode::Http1))
                    .await?;
            while Instant::now() < until {
                let n = crate::run::get_whole(&mut c, "/hot", Some(1 << 20)).await?;
                bytes.fetch_add(n, Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let window = Duration::from_millis(500);
    let mut windows = Vec::new();
    let (mut at, mut seen) = (Instant::now(), 0);
    while Instant::now() + window <= until {
        tokio::time::sleep(window).await;
        let now = bytes.load(Relaxed);
        windows.push((now - seen) as f64 / at.elapsed().as_secs_f64() / 1e6);
        (at, seen) = (Instant::now(), now);
    }
    while let Some(c) = conns.join_next().await {
        c??;
    }
    Ok(median(windows))
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Reads `/cold/{i}` at `rate` bytes per second until `until`; returns the bytes read.
async fn slow_reader(addr: SocketAddr, i: usize, rate: u64, until: Instant) -> Result<u64> {
    let mut c =
        Connection::connect(&format!("http://{addr}/"), &ClientOptions::new(Mode::Http1)).await?;
    let resp = c.get(&format!("/cold/{i}")).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let mut body = resp.into_body();
    let started = Instant::now();
    let mut got = 0u64;
    while Instant::now() < until {
        let Some(f) = body.frame().await else { break };
        let f = f.map_err(|e| anyhow::anyhow!("body: {e}"))?;
        got += f.data_ref().map_or(0, |d| d.len() as u64);
        // Keep to the rate: wait until this many bytes are due.
        let due = started + Duration::from_secs_f64(got as f64 / rate as f64);
        tokio::time::sleep_until(due.min(until).into()).await;
    }
    Ok(got)
}

/// `readers` slow clients of `addr`, each on `/cold/{i}` of its own, until `until`; the
/// bytes they read and how many failed.
fn slow_readers(
    addr: SocketAddr,
    readers: usize,
    rate: u64,
    until: Instant,
) -> tokio::task::JoinHandle<(u64, usize)> {
    let tasks: Vec<_> = (0..readers)
        .map(|i| tokio::spawn(slow_reader(addr, i, rate, until)))
        .collect();
    tokio::spawn(async move {
        let (mut read, mut failed) = (0, 0);
        for t in tasks {
            match t.await {
                Ok(Ok(n)) => read += n,
                Ok(Err(e)) => {
                    eprintln!("slow reader: {e}");
                    failed += 1;
                }
                Err(e) => {
                    eprintln!("slow reader: {e}");
                    failed += 1;
                }
            }
        }
        (read, failed)
    })
}

/// How long the edge's RSS is sampled after the slow readers leave.
const AFTER: Duration = Duration::from_secs(5);

/// One mode's figures.
struct Row {
    cache_control: &'static str,
    /// The edge's RSS at most, idle and beside the slow readers.
    idle: u64,
    peak: u64,
    /// Each round's fast client (alone, control, beside the slow readers), MB/s.
    rounds: Vec<(f64, f64, f64)>,
    failed: usize,
}

impl Row {
    /// The median of the rounds' ratios of the fast client beside the slow readers through
    /// the edge to the control.
    fn ratio(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.2 / r.1).collect())
    }

    /// The median of the rounds' ratios of the fast client beside the slow readers through
    /// the edge to alone.
    fn ratio_alone(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.2 / r.0).collect())
    }

    /// The medians of the rounds' (alone, control, beside) throughput.
    fn medians(&self) -> (f64, f64, f64) {
        let of = |f: fn(&(f64, f64, f64)) -> f64| median(self.rounds.iter().map(f).collect());
        (of(|r| r.0), of(|r| r.1), of(|r| r.2))
    }
}

async fn run_async(a: Args) -> Result<()> {
    println!("machine: {}", machine());
    let size = a.object_mib << 20;
    let half = Duration::from_secs(a.seconds / 2);
    let measure = (a.seconds / 2).saturating_sub(1).max(1) as f64;
    let mut rows = Vec::new();
    for cache_control in ["max-age=3600", "no-store"] {
        let up = upstream(size, cache_control).await?;
        let mut row = Row {
            cache_control,
            peak: 0,
            idle: 0,
            rounds: Vec::new(),
            failed: 0,
        };
        for round in 0..a.rounds {
            // A new edge each round: cold objects, and nothing left of the last round (the
            // fills its readers left go on in the background).
            let dir = tempfile::tempdir()?;
            let edge = spawn_edge(
                "tessera",
                ["--upstream", &format!("http://{up}")],
                dir.path().join("edge"),
                256,
                None,
            )
            .await?;
            let pid = edge.child.id();
            // The hot object is a memory hit from here on.
            fast_client(edge.addr, 0.5).await?;
            let alone = fast_client(edge.addr, 3.0).await?;
            row.idle = row.idle.max(rss(pid).unwrap_or(0));
            // The control: the same slow clients on the upstream itself.
            let until = Instant::now() + Duration::from_secs(a.seconds);
            let direct = slow_readers(up, a.readers, a.rate, until);
            tokio::time::sleep(half).await;
            let control = fast_client(edge.addr, measure).await?;
            let (_, direct_failed) = direct.await?;
            anyhow::ensure!(
                direct_failed == 0,
                "{direct_failed} slow clients of the upstream itself failed"
            );
            let until = Instant::now() + Duration::from_secs(a.seconds);
            let through = slow_readers(edge.addr, a.readers, a.rate, until);
            // Sampled on for a while after the readers leave, while the fills they left go on
            // in the background (`max_background_fills` of them).
            let sampled_until = until + AFTER;
            let sampler = tokio::spawn(async move {
                let mut peak = 0u64;
                while Instant::now() < sampled_until {
                    peak = peak.max(rss(pid).unwrap_or(0));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                peak
            });
            tokio::time::sleep(half).await;
            let beside = fast_client(edge.addr, measure).await?;
            let (read, failed) = through.await?;
            row.peak = row.peak.max(sampler.await?);
            row.failed += failed;
            row.rounds.push((alone, control, beside));
            drop(edge);
            println!(
                "{cache_control}, round {}: fast client {alone:.0} MB/s alone, {control:.0} MB/s \
                 beside the slow clients on the upstream, {beside:.0} MB/s beside them through \
                 the edge (x{:.2}); slow readers read {:.0} MB, {failed} failed",
                round + 1,
                beside / control,
                read as f64 / 1e6
            );
        }
        println!(
            "{cache_control}: RSS idle {:.0} MiB, peak {:.0} MiB",
            row.idle as f64 / 1048576.0,
            row.peak as f64 / 1048576.0,
        );
        rows.push(row);
    }
    println!();
    println!(
        "{} slow readers at {} kB/s on cold {} MiB objects, {} rounds of {} s with the slow \
         clients on the upstream (control) then {} s through the edge, a new upstream-mode edge \
         with 256 MiB of memory each round; a fast client downloading a hot 1 MiB \
         object back to back on 4 connections, on its own thread (median of half-second windows; the ratio is the \
         median of the rounds')",
        a.readers,
        a.rate / 1000,
        a.object_mib,
        a.rounds,
        a.seconds,
        a.seconds
    );
    println!(
        "| bodies | peak RSS | fast client alone | beside slow clients of the upstream (control) | \
         beside slow readers through the edge | ratio to control | ratio to alone | failed readers |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut pass = true;
    for r in &rows {
        let (alone, control, beside) = r.medians();
        println!(
            "| {} | {:.0} MiB | {alone:.0} MB/s | {control:.0} MB/s | {beside:.0} MB/s | x{:.2} | x{:.2} | {} |",
            r.cache_control,
            r.peak as f64 / 1048576.0,
            r.ratio(),
            r.ratio_alone(),
            r.failed
        );
        pass &= r.peak < 512 << 20 && r.ratio() >= 0.9 && r.failed == 0;
    }
    println!(
        "Headline: {} slow readers of cold {} MiB objects: peak RSS {} (goal < 512 MiB), fast client \
         x{} of its throughput beside the same load on the upstream alone (goal ≥ 0.9; x{} of its \
         throughput with nothing else running): {}",
        a.readers,
        a.object_mib,
        rows.iter()
            .map(|r| format!("{:.0} MiB {}", r.peak as f64 / 1048576.0, r.cache_control))
            .collect::<Vec<_>>()
            .join(", "),
        rows.iter()
            .map(|r| format!("{:.2}", r.ratio()))
            .collect::<Vec<_>>()
            .join("/"),
        rows.iter()
            .map(|r| format!("{:.2}", r.ratio_alone()))
            .collect::<Vec<_>>()
            .join("/"),
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(())
}
