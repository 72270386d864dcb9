//! `tessera-bench slow-readers`: an upstream-mode edge while many clients read different cold
//! large objects slowly (1 MB/s each by default), with a fast client on a hot object beside
//! them. Samples the edge's RSS every second and measures the fast client's throughput
//! beside the slow readers. Issue 21's goal: 50 slow readers of 50 cold 1 GiB objects keep
//! the edge under 512 MiB of RSS while the fast client keeps its throughput (± 10 %).
//!
//! The upstream (in this process) streams each large object from one repeated MiB, as fast
//! as the edge takes it. Run once with bodies the edge stores (`max-age`: the fill goes on
//! at its fastest reader's pace, readers that fall behind read the cache) and once with
//! bodies it does not (`no-store`: the fill waits for its slowest reader, within its window).
//!
//! On one machine the bench's own upstream and slow clients take CPU the fast client then
//! lacks, whatever the edge does; in a deployment they are other machines. And one
//! loopback client's throughput on two shared cores drifts by a third or more from one
//! ten seconds to the next (even alone, and often higher beside other work than alone, the
//! cores never idling). So the comparison is paired and interleaved: two sets of slow
//! clients take turns every two seconds, one reading its objects from the upstream directly
//! (the control: the bench's own load, no work for the edge), the other through the edge
//! (the edge's work for slow readers), each at the full rate while its turn lasts and
//! paused (its fills waiting) otherwise. The fast client downloads all along, on a thread
//! and runtime of its own; its throughput in each turn after the first pair is compared with
//! the turn before it, and the ratio is the median of these pairs. The edge's RSS is sampled
//! throughout and for a few seconds after the readers leave, while the fills they left go
//! on in the background.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Result;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tokio::sync::watch;

use crate::edge_hits::{machine, rss, spawn_edge};

/// Options of `tessera-bench slow-readers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Slow clients through the edge, each on a cold object of its own (and as many on the
    /// upstream itself, the control).
    #[arg(long, default_value_t = 50)]
    readers: usize,
    /// Size of each cold object, MiB.
    #[arg(long, default_value_t = 1024)]
    object_mib: u64,
    /// Rate of each slow client while its set's turn lasts, bytes per second.
    #[arg(long, default_value_t = 1_000_000)]
    rate: u64,
    /// Seconds of turns (each turn 2 s).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
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

/// Connections of the fast client: a browser's few, which also spread it over the edge's
/// threads as one connection, landing on one of them, would not.
const FAST_CONNECTIONS: usize = 4;

/// Back-to-back downloads of `/hot` on [`FAST_CONNECTIONS`] connections until `until`, on a
/// thread and runtime of their own, counted in `bytes`.
fn fast_client(
    addr: SocketAddr,
    until: Instant,
    bytes: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                let mut conns = tokio::task::JoinSet::new();
                for _ in 0..FAST_CONNECTIONS {
                    let bytes = bytes.clone();
                    conns.spawn(async move {
                        let mut c = Connection::connect(
                            &format!("http://{addr}/"),
                            &ClientOptions::new(Mode::Http1),
                        )
                        .await?;
                        while Instant::now() < until {
                            let n = crate::run::get_whole(&mut c, "/hot", Some(1 << 20)).await?;
                            bytes.fetch_add(n, Relaxed);
                        }
                        anyhow::Ok(())
                    });
                }
                while let Some(c) = conns.join_next().await {
                    c??;
                }
                Ok(())
            })
    })
}

/// A turn: the first half-second lets the sets of slow clients settle, the rest is
/// measured.
const SETTLE: Duration = Duration::from_millis(500);
const MEASURED: Duration = Duration::from_millis(1500);

/// MB/s counted in `bytes` over [`MEASURED`] (after [`SETTLE`]).
async fn turn(bytes: &AtomicU64) -> f64 {
    tokio::time::sleep(SETTLE).await;
    let (at, before) = (Instant::now(), bytes.load(Relaxed));
    tokio::time::sleep(MEASURED).await;
    (bytes.load(Relaxed) - before) as f64 / at.elapsed().as_secs_f64() / 1e6
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

/// Reads `/cold/{i}` of `addr` at `rate` bytes per second while `turn` is `mine`, until
/// `until`; returns the bytes read.
async fn slow_reader(
    addr: SocketAddr,
    i: usize,
    rate: u64,
    until: Instant,
    mut turn: watch::Receiver<bool>,
    mine: bool,
) -> Result<u64> {
    let my_turn = async |turn: &mut watch::Receiver<bool>| {
        tokio::select! {
            r = turn.wait_for(|t| *t == mine) => r.is_ok(),
            _ = tokio::time::sleep_until(until.into()) => false,
        }
    };
    if !my_turn(&mut turn).await {
        return Ok(0);
    }
    let mut c =
        Connection::connect(&format!("http://{addr}/"), &ClientOptions::new(Mode::Http1)).await?;
    let resp = c.get(&format!("/cold/{i}")).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let mut body = resp.into_body();
    let (mut since, mut got_since, mut got) = (Instant::now(), 0u64, 0u64);
    while Instant::now() < until {
        if *turn.borrow() != mine {
            if !my_turn(&mut turn).await {
                break;
            }
            (since, got_since) = (Instant::now(), 0);
        }
        let Some(f) = body.frame().await else { break };
        let f = f.map_err(|e| anyhow::anyhow!("body: {e}"))?;
        let n = f.data_ref().map_or(0, |d| d.len() as u64);
        got += n;
        got_since += n;
        // Keep to the rate: wait until this many bytes are due.
        let due = since + Duration::from_secs_f64(got_since as f64 / rate as f64);
        tokio::time::sleep_until(due.min(until).into()).await;
    }
    Ok(got)
}

/// `readers` slow clients of `addr`, each on `/cold/{i}` of its own, reading while `turn`
/// is `mine`, until `until`; the bytes they read and how many failed.
fn slow_readers(
    addr: SocketAddr,
    readers: usize,
    rate: u64,
    until: Instant,
    turn: &watch::Sender<bool>,
    mine: bool,
) -> tokio::task::JoinHandle<(u64, usize)> {
    let tasks: Vec<_> = (0..readers)
        .map(|i| tokio::spawn(slow_reader(addr, i, rate, until, turn.subscribe(), mine)))
        .collect();
    tokio::spawn(async move {
        let (mut read, mut failed) = (0, 0);
        for t in tasks {
            match t.await.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(n) => read += n,
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
    idle: u64,
    peak: u64,
    /// MB/s of the fast client alone.
    alone: f64,
    /// Each pair of turns' fast client (control, through the edge), MB/s.
    pairs: Vec<(f64, f64)>,
    /// Bytes the slow readers through the edge read.
    read: u64,
    failed: usize,
}

impl Row {
    /// The median of the pairs' ratios of the fast client beside the slow readers through
    /// the edge to the control.
    fn ratio(&self) -> f64 {
        median(self.pairs.iter().map(|p| p.1 / p.0).collect())
    }

    /// The medians of the pairs' (control, through the edge) throughput.
    fn medians(&self) -> (f64, f64) {
        (
            median(self.pairs.iter().map(|p| p.0).collect()),
            median(self.pairs.iter().map(|p| p.1).collect()),
        )
    }
}

async fn run_async(a: Args) -> Result<()> {
    println!("machine: {}", machine());
    let size = a.object_mib << 20;
    let mut rows = Vec::new();
    for cache_control in ["max-age=3600", "no-store"] {
        let dir = tempfile::tempdir()?;
        let up = upstream(size, cache_control).await?;
        let edge = spawn_edge(
            "tessera",
            ["--upstream", &format!("http://{up}")],
            dir.path().join("edge"),
            256,
            None,
        )
        .await?;
        let pid = edge.child.id();
        let bytes = Arc::new(AtomicU64::new(0));
        // The hot object is a memory hit from here on; then the fast client alone.
        let warm = Instant::now() + Duration::from_secs(1);
        fast_client(edge.addr, warm, bytes.clone()).await??;
        let alone_until = Instant::now() + SETTLE + MEASURED;
        let alone = fast_client(edge.addr, alone_until, bytes.clone());
        let alone_mbs = turn(&bytes).await;
        alone.await??;
        let idle = rss(pid).unwrap_or(0);

        let until = Instant::now() + Duration::from_secs(a.seconds);
        let fast = fast_client(edge.addr, until, bytes.clone());
        let (turns, _) = watch::channel(false);
        let direct = slow_readers(up, a.readers, a.rate, until, &turns, false);
        let through = slow_readers(edge.addr, a.readers, a.rate, until, &turns, true);
        let sampled_until = until + AFTER;
        let sampler = tokio::spawn(async move {
            let mut peak = 0u64;
            while Instant::now() < sampled_until {
                peak = peak.max(rss(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            peak
        });
        let mut pairs = Vec::new();
        let mut first = true;
        while Instant::now() + 2 * (SETTLE + MEASURED) <= until {
            turns.send_replace(false);
            let control = turn(&bytes).await;
            turns.send_replace(true);
            let beside = turn(&bytes).await;
            // The first pair starts the slow clients' requests (and the edge's fills).
            if !std::mem::take(&mut first) {
                pairs.push((control, beside));
            }
        }
        // No more turns: a slow client waiting for one stops, the others read on until
        // `until`.
        drop(turns);
        fast.await??;
        let (_, direct_failed) = direct.await?;
        anyhow::ensure!(
            direct_failed == 0,
            "{direct_failed} slow clients of the upstream itself failed"
        );
        let (read, failed) = through.await?;
        let row = Row {
            cache_control,
            idle,
            peak: sampler.await?,
            alone: alone_mbs,
            pairs,
            read,
            failed,
        };
        let (control, beside) = row.medians();
        println!(
            "{cache_control}: RSS idle {:.0} MiB, peak {:.0} MiB; fast client {:.0} MB/s alone, \
             {control:.0} MB/s beside the slow clients on the upstream, {beside:.0} MB/s beside \
             them through the edge (x{:.2}, median of {} pairs: {}); slow readers read {:.0} MB, \
             {failed} failed",
            row.idle as f64 / 1048576.0,
            row.peak as f64 / 1048576.0,
            row.alone,
            row.ratio(),
            row.pairs.len(),
            row.pairs
                .iter()
                .map(|p| format!("{:.2}", p.1 / p.0))
                .collect::<Vec<_>>()
                .join(" "),
            row.read as f64 / 1e6
        );
        rows.push(row);
        drop(edge);
    }
    println!();
    println!(
        "{} slow readers at {} kB/s on cold {} MiB objects through an upstream-mode edge with \
         256 MiB of memory, taking 2-s turns for {} s with as many slow clients of the upstream \
         itself (the control); a fast client downloading a hot 1 MiB object back to back on {} \
         connections, on its own thread, all along; the ratio is the median over pairs of turns",
        a.readers,
        a.rate / 1000,
        a.object_mib,
        a.seconds,
        FAST_CONNECTIONS
    );
    println!(
        "| bodies | peak RSS | fast client alone | beside slow clients of the upstream (control) | \
         beside slow readers through the edge | ratio | failed readers |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut pass = true;
    for r in &rows {
        let (control, beside) = r.medians();
        println!(
            "| {} | {:.0} MiB | {:.0} MB/s | {control:.0} MB/s | {beside:.0} MB/s | x{:.2} | {} |",
            r.cache_control,
            r.peak as f64 / 1048576.0,
            r.alone,
            r.ratio(),
            r.failed
        );
        pass &= r.peak < 512 << 20 && r.ratio() >= 0.9 && r.failed == 0;
    }
    println!(
        "Headline: {} slow readers of cold {} MiB objects: peak RSS {} (goal < 512 MiB), fast client \
         x{} of its throughput beside the same load on the upstream itself (goal ≥ 0.9): {}",
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
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(())
}
