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
    /// Seconds the slow readers read.
    #[arg(long, default_value_t = 30)]
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

/// MB/s of back-to-back downloads of `/hot` on one connection for `secs`.
async fn fast_client(addr: SocketAddr, secs: f64) -> Result<f64> {
    let mut c =
        Connection::connect(&format!("http://{addr}/"), &ClientOptions::new(Mode::Http1)).await?;
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        bytes += crate::run::get_whole(&mut c, "/hot", Some(1 << 20)).await?;
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
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
        // The hot object is a memory hit from here on.
        fast_client(edge.addr, 0.5).await?;
        let alone = fast_client(edge.addr, 5.0).await?;
        let idle_rss = rss(pid).unwrap_or(0);
        let until = Instant::now() + Duration::from_secs(a.seconds);
        let readers: Vec<_> = (0..a.readers)
            .map(|i| tokio::spawn(slow_reader(edge.addr, i, a.rate, until)))
            .collect();
        let sampler = tokio::spawn(async move {
            let mut peak = 0u64;
            while Instant::now() < until {
                peak = peak.max(rss(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            peak
        });
        // The fast client's second measurement runs in the second half of the slow reads.
        tokio::time::sleep(Duration::from_secs(a.seconds / 2)).await;
        let beside =
            fast_client(edge.addr, (a.seconds / 2).saturating_sub(1).max(1) as f64).await?;
        let mut read = 0u64;
        let mut failed = 0;
        for r in readers {
            match r.await? {
                Ok(n) => read += n,
                Err(e) => {
                    eprintln!("slow reader: {e}");
                    failed += 1;
                }
            }
        }
        let peak = sampler.await?.max(rss(pid).unwrap_or(0));
        println!(
            "{cache_control}: RSS idle {:.0} MiB, peak {:.0} MiB; fast client {alone:.0} MB/s alone, \
             {beside:.0} MB/s beside the slow readers (x{:.2}); slow readers read {:.0} MB, {failed} failed",
            idle_rss as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            beside / alone,
            read as f64 / 1e6
        );
        rows.push((cache_control, peak, alone, beside, failed));
        drop(edge);
    }
    println!();
    println!(
        "{} slow readers at {} kB/s on cold {} MiB objects, {} s, an upstream-mode edge with 256 MiB \
         of memory; a fast client downloading a hot 1 MiB object back to back",
        a.readers,
        a.rate / 1000,
        a.object_mib,
        a.seconds
    );
    println!(
        "| bodies | peak RSS | fast client alone | beside slow readers | ratio | failed readers |"
    );
    println!("|---|---|---|---|---|---|");
    let mut pass = true;
    for (cc, peak, alone, beside, failed) in &rows {
        println!(
            "| {cc} | {:.0} MiB | {alone:.0} MB/s | {beside:.0} MB/s | x{:.2} | {failed} |",
            *peak as f64 / 1048576.0,
            beside / alone
        );
        pass &= *peak < 512 << 20 && beside / alone >= 0.9 && *failed == 0;
    }
    println!(
        "Headline: {} slow readers of cold {} MiB objects: peak RSS {} (goal < 512 MiB), fast client \
         x{} of its throughput alone (goal ≥ 0.9): {}",
        a.readers,
        a.object_mib,
        rows.iter()
            .map(|r| format!("{:.0} MiB {}", r.1 as f64 / 1048576.0, r.0))
            .collect::<Vec<_>>()
            .join(", "),
        rows.iter()
            .map(|r| format!("{:.2}", r.3 / r.2))
            .collect::<Vec<_>>()
            .join("/"),
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(())
}
