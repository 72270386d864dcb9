//! `tessera-bench faults`: cold misses through an edge in origin mode in front of two
//! origins holding the same files, while the first is healthy, hung (accepts and never
//! answers), resetting connections, or slow, injected by the fault proxy
//! (`tessera-faults`) between the edge and each origin. Reports failed requests, latency
//! percentiles, hedges and ejections per scenario, and checks the goal of issue 21: with
//! one of two owners hung, p99 of misses ≤ 1.5x the healthy p99 + the hedge delay, and no
//! failed request.
//!
//! Both origins are proxies in front of one `tessera origin` process, so each path costs the
//! same but for the fault. Every scenario gets a fresh edge process and files of its own, so
//! every request is a miss; every body is checked against the bytes published.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tessera_faults::{Fault, FaultProxy};
use tessera_origin_proto::OriginClient;

use crate::edge_hits::{Server, free_port, machine, spawn_origin, tessera_exe};

/// Options of `tessera-bench faults`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cold misses per scenario.
    #[arg(long, default_value_t = 300)]
    misses: usize,
    /// Clients sending at once.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Size of the small files, KiB (every other file is 1 MiB: its chunks come in a batch).
    #[arg(long, default_value_t = 64)]
    kib: u64,
    /// The edge's hedge delay, ms.
    #[arg(long, default_value_t = 200)]
    hedge_ms: u64,
}

/// One scenario: what the first origin does, and whether outlier ejection is on.
struct Scenario {
    name: &'static str,
    fault: Fault,
    eject: bool,
}

/// What one scenario measured.
struct Outcome {
    latencies_ms: Vec<f64>,
    failed: usize,
    wrong_bytes: usize,
    hedges: f64,
    ejections: f64,
}

impl Outcome {
    fn pct(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(2)?.block_on(run_async(a))
}

async fn run_async(a: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("machine: {}", machine());
    let origin = spawn_origin(dir.path()).await?;
    let client = OriginClient::new(&format!("http://{}", origin.addr), Some("bench".into()))?;
    let scenarios = [
        Scenario {
            name: "healthy",
            fault: Fault::None,
            eject: true,
        },
        Scenario {
            name: "first origin hung",
            fault: Fault::Blackhole,
            eject: true,
        },
        Scenario {
            name: "first origin hung, no ejection",
            fault: Fault::Blackhole,
            eject: false,
        },
        Scenario {
            name: "first origin resets",
            fault: Fault::Reset,
            eject: true,
        },
        Scenario {
            name: "first origin +1 s latency",
            fault: Fault::Latency(Duration::from_secs(1)),
            eject: true,
        },
    ];
    let small = a.kib << 10;
    let size = move |i: usize| if i.is_multiple_of(2) { small } else { 1 << 20 };
    println!(
        "publishing {} files ({} KiB and 1 MiB)",
        scenarios.len() * a.misses,
        a.kib
    );
    for s in 0..scenarios.len() {
        for i in 0..a.misses {
            let key = format!("faults/{s}/{i}.bin");
            client
                .put_bytes(&key, crate::run::content(&key, size(i)))
                .await?;
        }
    }
    let first = FaultProxy::start(origin.addr).await?;
    let second = FaultProxy::start(origin.addr).await?;
    let mut outcomes = Vec::new();
    for (s, scenario) in scenarios.iter().enumerate() {
        first.set(scenario.fault);
        let edge_dir = dir.path().join(format!("edge-{s}"));
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let edge = spawn_edge(
            &edge_dir,
            [&first.url(), &second.url()],
            admin,
            &a,
            scenario,
        )?;
        crate::edge_hits::wait_listening(edge.addr, "tessera edge").await?;
        let o = misses(edge.addr, admin, s, &a, size).await?;
        println!(
            "{}: {} misses, {} failed, {} wrong bytes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
             {} hedges, {} ejections",
            scenario.name,
            o.latencies_ms.len(),
            o.failed,
            o.wrong_bytes,
            o.pct(0.5),
            o.pct(0.99),
            o.pct(1.0),
            o.hedges,
            o.ejections
        );
        outcomes.push(o);
        drop(edge);
    }
    first.set(Fault::None);

    println!();
    println!(
        "cold misses through an edge in origin mode, two origins (fault proxies in front of one \
         origin process), {} misses per scenario by {} clients, files of {} KiB and 1 MiB, \
         hedge after {} ms",
        a.misses, a.clients, a.kib, a.hedge_ms
    );
    println!("| first origin | failed | p50 ms | p99 ms | max ms | hedges | ejections |");
    println!("|---|---|---|---|---|---|---|");
    for (s, o) in scenarios.iter().zip(&outcomes) {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            s.name,
            o.failed + o.wrong_bytes,
            o.pct(0.5),
            o.pct(0.99),
            o.pct(1.0),
            o.hedges,
            o.ejections
        );
    }
    let healthy = outcomes[0].pct(0.99);
    let limit = 1.5 * healthy + a.hedge_ms as f64;
    let hung = &outcomes[1];
    let pass = hung.pct(0.99) <= limit && hung.failed + hung.wrong_bytes == 0;
    println!(
        "Headline: first of two origins hung: p99 {:.1} ms against healthy {healthy:.1} ms \
         (goal ≤ 1.5x + {} ms = {limit:.1} ms), {} failed: {}",
        hung.pct(0.99),
        a.hedge_ms,
        hung.failed + hung.wrong_bytes,
        if pass { "PASS" } else { "FAIL" }
    );
    drop(origin);
    Ok(())
}

/// A `tessera edge` in front of `origins` (in that order) with the bench's timeouts.
fn spawn_edge(
    dir: &std::path::Path,
    origins: [&str; 2],
    admin: SocketAddr,
    a: &Args,
    s: &Scenario,
) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "follow_changes = false\n[timeouts]\nhedge_after_ms = {}\n[outliers]\n\
             consecutive_failures = {}\n",
            a.hedge_ms,
            if s.eject { 5 } else { 0 }
        ),
    )?;
    let port = free_port();
    let child = Command::new(tessera_exe()?)
        .arg("edge")
        .args(["--config"])
        .arg(&config)
        .args(["--origin", origins[0], origins[1]])
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--admin", &admin.to_string()])
        .args(["--memory", "256MiB", "--disk", "0", "--data"])
        .arg(dir.join("data"))
        .env("TESSERA_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting tessera edge")?;
    Ok(Server {
        name: "tessera",
        addr: format!("127.0.0.1:{port}").parse()?,
        child,
    })
}

/// `a.misses` cold misses of scenario `s`'s files by `a.clients` clients; each body
/// checked against what was published.
async fn misses(
    addr: SocketAddr,
    admin: SocketAddr,
    s: usize,
    a: &Args,
    size: impl Fn(usize) -> u64 + Copy + Send + 'static,
) -> Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let total = a.misses;
    let workers = (0..a.clients).map(|_| {
        let next = next.clone();
        tokio::spawn(async move {
            let opts = ClientOptions::new(Mode::Http1);
            let url = format!("http://{addr}/");
            let mut conn: Option<Connection> = None;
            let (mut lat, mut failed, mut wrong) = (Vec::new(), 0, 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let key = format!("faults/{s}/{i}.bin");
                let started = Instant::now();
                if conn.is_none() {
                    conn = Connection::connect(&url, &opts).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    failed += 1;
                    continue;
                };
                match get_body(c, &format!("/{key}")).await {
                    Ok(body) => {
                        lat.push(started.elapsed().as_secs_f64() * 1e3);
                        if body != crate::run::content(&key, size(i)) {
                            wrong += 1;
                        }
                    }
                    Err(e) => {
                        eprintln!("{key}: {e}");
                        failed += 1;
                        conn = None;
                    }
                }
            }
            (lat, failed, wrong)
        })
    });
    let mut o = Outcome {
        latencies_ms: Vec::new(),
        failed: 0,
        wrong_bytes: 0,
        hedges: 0.0,
        ejections: 0.0,
    };
    for w in futures_util::future::join_all(workers).await {
        let (lat, failed, wrong) = w?;
        o.latencies_ms.extend(lat);
        o.failed += failed;
        o.wrong_bytes += wrong;
    }
    let metrics = crate::run::scrape(&format!("http://{admin}"))
        .await
        .unwrap_or_default();
    o.hedges = crate::run::metric_sum(&metrics, "tessera_edge_origin_hedges_total");
    o.ejections = crate::run::metric_sum(&metrics, "tessera_edge_origin_ejections_total");
    Ok(o)
}

/// The whole body of a `200` to `GET path`.
async fn get_body(conn: &mut Connection, path: &str) -> Result<bytes::Bytes> {
    let resp = conn.get(path).await?;
    anyhow::ensure!(
        resp.status() == http::StatusCode::OK,
        "status {}",
        resp.status()
    );
    let body = resp.into_body().collect().await;
    Ok(body.map_err(|e| anyhow::anyhow!("body: {e}"))?.to_bytes())
}
