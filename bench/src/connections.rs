//! `tessera-bench connections`: what idle and hostile connections cost an edge, and whether
//! a normal client still gets its answers. Measures, against one edge process (TLS, HTTP/3
//! on):
//! - idle keep-alive HTTP/1.1 connections (one request each, then silent): the edge's RSS
//!   per connection, as connections per GiB (issue 21's goal: ≥ 100,000);
//! - idle QUIC connections (one HTTP/3 request each): the same, recorded as measured;
//! - slowloris: connections that send a request head one byte every 10 s (and reconnect
//!   when the edge closes them);
//! - for each, a normal client's p99 over HTTP/1.1 beside them against its p99 alone (goal:
//!   within 2x).
//!
//! All connections come from 127.0.0.1, so the edge runs with `max_connections_per_client`
//! off; the open-file limit (20,000 here) bounds the counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tokio::io::AsyncWriteExt;

use crate::edge_hits::{Server, free_port, machine, tessera_exe, upstream, wait_listening};

/// Options of `tessera-bench connections`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Idle keep-alive HTTP/1.1 connections.
    #[arg(long, default_value_t = 10_000)]
    tcp: usize,
    /// Idle QUIC connections.
    #[arg(long, default_value_t = 10_000)]
    quic: usize,
    /// Slowloris connections.
    #[arg(long, default_value_t = 10_000)]
    slowloris: usize,
    /// Seconds of each normal-client measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

pub fn run(a: Args) -> Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    crate::runtime(2)?.block_on(run_async(a))
}

/// The edge's RSS, 0 when it cannot be read.
fn rss(pid: u32) -> u64 {
    crate::edge_hits::rss(pid).unwrap_or(0)
}

/// p99 (ms) of back-to-back GETs of `/1k` on one HTTP/1.1 connection for `secs`, and the
/// failures.
async fn normal_client(addr: SocketAddr, secs: u64) -> Result<(f64, usize)> {
    let opts = ClientOptions::new(Mode::Http1);
    let url = format!("http://{addr}/");
    let mut c = Connection::connect(&url, &opts).await?;
    let mut lat = Vec::new();
    let mut failed = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let t = Instant::now();
        match crate::run::get_whole(&mut c, "/1k", Some(1024)).await {
            Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1e3),
            Err(_) => {
                failed += 1;
                c = Connection::connect(&url, &opts).await?;
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(f64::NAN);
    Ok((p99, failed))
}

async fn run_async(a: Args) -> Result<()> {
    println!("machine: {}", machine());
    let dir = tempfile::tempdir()?;
    let up = upstream().await?;
    let (http, https) = (free_port(), free_port());
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "max_connections_per_client = 0\n")?;
    let child = std::process::Command::new(tessera_exe()?)
        .arg("edge")
        .arg("--config")
        .arg(&config)
        .args(["--upstream", &format!("http://{up}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--https", &format!("127.0.0.1:{https}")])
        .args(["--memory", "64MiB", "--disk", "0", "--data"])
        .arg(dir.path().join("edge"))
        .env("TESSERA_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting tessera edge")?;
    let edge = Server {
        name: "tessera",
        addr: format!("127.0.0.1:{http}").parse()?,
        child,
    };
    let pid = edge.child.id();
    wait_listening(edge.addr, "tessera edge").await?;
    let https_addr: SocketAddr = format!("127.0.0.1:{https}").parse()?;
    let (alone, _) = normal_client(edge.addr, a.seconds).await?;
    println!("normal client alone: p99 {alone:.2} ms");
    let mut rows = Vec::new();

    // Idle keep-alive HTTP/1.1, then idle QUIC: one request each, then silent.
    let mut h3 = ClientOptions::new(Mode::Http3);
    h3.insecure = true;
    h3.connect_to = Some(https_addr);
    let kinds = [
        (
            "idle HTTP/1.1 keep-alive",
            a.tcp,
            format!("http://{}/", edge.addr),
            ClientOptions::new(Mode::Http1),
        ),
        (
            "idle QUIC",
            a.quic,
            format!("https://localhost:{https}/"),
            h3,
        ),
    ];
    for (what, count, url, opts) in kinds {
        let before = rss(pid);
        let mut held = Vec::with_capacity(count);
        for _ in 0..count {
            let mut c = Connection::connect(&url, &opts).await?;
            crate::run::get_whole(&mut c, "/1k", Some(1024)).await?;
            held.push(c);
        }
        let per = (rss(pid).saturating_sub(before)) as f64 / count.max(1) as f64;
        let (p99, failed) = normal_client(edge.addr, a.seconds).await?;
        println!(
            "{count} {what} connections: {:.1} KiB each ({:.0} per GiB); normal client p99 {p99:.2} ms, {failed} failed",
            per / 1024.0,
            (1u64 << 30) as f64 / per
        );
        rows.push((what, count, Some(per), p99, failed));
        for c in held {
            c.close().await;
        }
    }

    // Slowloris: a head one byte every 10 s, reopened when the edge closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let n = a.slowloris.max(1) as u64;
    let lorises: Vec<_> = (0..a.slowloris)
        .map(|i| {
            let stop = stop.clone();
            let addr = edge.addr;
            tokio::spawn(async move {
                let head =
                    b"GET /1k HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
                // Spread over the first 10 s.
                tokio::time::sleep(Duration::from_millis(i as u64 * 10_000 / n)).await;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    for b in head.iter().cycle() {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p99, failed) = normal_client(edge.addr, a.seconds.max(12)).await?;
    println!(
        "{} slowloris connections: normal client p99 {p99:.2} ms, {failed} failed",
        a.slowloris
    );
    rows.push((
        "slowloris (a byte every 10 s)",
        a.slowloris,
        None,
        p99,
        failed,
    ));
    stop.store(true, Ordering::Relaxed);
    for l in lorises {
        l.abort();
    }

    println!();
    println!(
        "connections held against one edge process (upstream mode, 64 MiB memory, TLS and HTTP/3 on, \
         max_connections_per_client off), a normal client's GETs of 1 KiB over HTTP/1.1 beside them \
         (alone: p99 {alone:.2} ms)"
    );
    println!("| connections | count | edge RSS each | per GiB | normal p99 | x alone | failed |");
    println!("|---|---|---|---|---|---|---|");
    for (what, n, per, p99, failed) in &rows {
        let (each, gib) = match per {
            Some(p) => (
                format!("{:.1} KiB", p / 1024.0),
                format!("{:.0}", (1u64 << 30) as f64 / p),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {what} | {n} | {each} | {gib} | {p99:.2} ms | x{:.2} | {failed} |",
            p99 / alone
        );
    }
    let tcp_per_gib = rows[0].2.map_or(0.0, |p| (1u64 << 30) as f64 / p);
    let worst = rows.iter().map(|r| r.3 / alone).fold(0.0, f64::max);
    println!(
        "Headline: {:.0} idle HTTP/1.1 connections per GiB (goal ≥ 100,000), {:.0} idle QUIC per GiB; \
         normal client p99 at worst x{worst:.2} of alone (goal ≤ 2): {}",
        tcp_per_gib,
        rows[1].2.map_or(0.0, |p| (1u64 << 30) as f64 / p),
        if tcp_per_gib >= 100_000.0 && worst <= 2.0 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    Ok(())
}
