//! `tessera-bench cluster`: the origin cluster.
//!
//! 1. Ring balance: with 100 simulated nodes and several virtual-node counts, how many
//!    chunks the most loaded node owns against the mean (goal ≤ 1.1x), and the cost of one
//!    placement lookup.
//! 2. Aggregate publish and read throughput of clusters of 1, 2 and 3 real `tessera origin`
//!    processes (replication 1, 2, 2) on this machine, with the same clients and data; and
//!    manifest reads per second (metadata operations).
//! 3. A scale model: how many origin and edge nodes the seed's cluster targets would take
//!    at the measured per-node rates.
//! 4. Anti-entropy ([`anti_entropy`]): the CPU a repair pass costs on an idle cluster of a
//!    million files, and the time to repair a node that missed 10,000 publishes.
//! 5. Live membership ([`join`]): a fourth node added to a running cluster with `tessera
//!    cluster add`'s API; the time until the change settles, the rate data moves at against
//!    `repair_bytes_per_sec`, and reads and publishes meanwhile against before.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tessera_origin_proto::ring::{Ring, RingNode};
use tessera_origin_proto::{ChunkHash, OriginClient};

use crate::edge_hits::{Server, free_port, machine, tessera_exe, wait_listening};

/// Options of `tessera-bench cluster`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MiB published per cluster size (files of `--file-mib`).
    #[arg(long, default_value_t = 256)]
    publish_mib: usize,
    /// Size of each published file, MiB.
    #[arg(long, default_value_t = 4)]
    file_mib: usize,
    /// Requests in flight (publishes, reads, manifest reads).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Times the whole published set is read back.
    #[arg(long, default_value_t = 2)]
    read_rounds: usize,
    /// Seconds of manifest reads.
    #[arg(long, default_value_t = 5)]
    metadata_secs: u64,
    /// Ring balance only.
    #[arg(long)]
    balance_only: bool,
    /// Files of the anti-entropy measurement (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    repair_files: usize,
    /// Publishes one node misses before the anti-entropy measurement repairs it.
    #[arg(long, default_value_t = 10_000)]
    missed: usize,
    /// The anti-entropy measurement only.
    #[arg(long)]
    repair_only: bool,
    /// MiB in the cluster before a node joins (the join measurement; 0: skip it).
    #[arg(long, default_value_t = 512)]
    join_mib: usize,
    /// Each node's `repair_bytes_per_sec` during the join, MiB/s.
    #[arg(long, default_value_t = 16)]
    move_mib_per_sec: u64,
    /// The join measurement only.
    #[arg(long)]
    join_only: bool,
}

pub fn run(a: Args) -> Result<()> {
    println!("# machine: {}", machine());
    balance();
    if a.balance_only {
        return Ok(());
    }
    let rt = crate::runtime(2)?;
    if a.repair_only {
        return rt.block_on(anti_entropy(a.repair_files, a.missed, 64));
    }
    if a.join_only {
        return rt.block_on(join(a.join_mib, a.move_mib_per_sec));
    }
    let mut rows = Vec::new();
    for nodes in 1..=3 {
        let r = rt.block_on(measure(nodes, &a))?;
        println!(
            "{nodes} node(s), replication {}: publish {:.0} MB/s (p50 {:.0} ms, p99 {:.0} ms per {} MiB file), read {:.0} MB/s, manifest reads {:.0}/s",
            r.replication,
            r.publish_mbps,
            r.publish_p50,
            r.publish_p99,
            a.file_mib,
            r.read_mbps,
            r.manifest_ops
        );
        rows.push((nodes, r));
    }
    scale_model(&rows);
    if a.repair_files > 0 {
        rt.block_on(anti_entropy(a.repair_files, a.missed, 64))?;
    }
    if a.join_mib > 0 {
        rt.block_on(join(a.join_mib, a.move_mib_per_sec))?;
    }
    if let (Some((_, one)), Some((n, last))) = (rows.first(), rows.last()) {
        println!(
            "Headline: one origin node publishes {:.0} MB/s and reads {:.0} MB/s; {n} nodes with \
             replication {} publish {:.0} MB/s and read {:.0} MB/s (every node on the same 2 cores)",
            one.publish_mbps, one.read_mbps, last.replication, last.publish_mbps, last.read_mbps
        );
    }
    Ok(())
}

fn balance() {
    println!("\n## ring balance: 100 nodes, 1,000,000 chunk addresses, primary owner counts");
    println!("| vnodes per node | max / mean | min / mean | lookup (owners, R=2) |");
    println!("|---:|---:|---:|---:|");
    let keys: Vec<ChunkHash> = (0..1_000_000u64)
        .map(|i| ChunkHash::of(&i.to_le_bytes()))
        .collect();
    for vnodes in [64, 128, 256, 512, 1024, 2048] {
        let nodes = (0..100)
            .map(|i| RingNode {
                id: format!("o{i}"),
                weight: 1,
            })
            .collect();
        let ring = Ring::new(nodes, vnodes, 2);
        let mut counts = vec![0u64; 100];
        for k in &keys {
            counts[ring.primary(k).unwrap()] += 1;
        }
        let mean = keys.len() as f64 / 100.0;
        let max = *counts.iter().max().unwrap() as f64 / mean;
        let min = *counts.iter().min().unwrap() as f64 / mean;
        let t = Instant::now();
        let mut sink = 0usize;
        for k in &keys[..200_000] {
            sink += ring.chunk_owners(k)[1];
        }
        let ns = t.elapsed().as_nanos() as f64 / 200_000.0;
        std::hint::black_box(sink);
        println!("| {vnodes} | {max:.3} | {min:.3} | {ns:.0} ns |");
    }
}

#[derive(Debug)]
struct Figures {
    replication: usize,
    publish_mbps: f64,
    publish_p50: f64,
    publish_p99: f64,
    read_mbps: f64,
    manifest_ops: f64,
}

/// Starts `nodes` origin processes from one topology file in `dir`, `extra` added to each
/// `[[origin]]` entry; returns them, their URLs and the topology file.
async fn start_cluster(
    dir: &Path,
    nodes: usize,
    extra: &str,
) -> Result<(Vec<Server>, Vec<String>, PathBuf)> {
    let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
    let mut t = format!(
        "replication = {}\ndata = {:?}\ntoken = \"bench\"\n",
        nodes.min(2),
        dir.join("data").display().to_string()
    );
    for (i, p) in ports.iter().enumerate() {
        t += &format!(
            "[[origin]]\nid = \"o{}\"\nlisten = \"127.0.0.1:{p}\"\n{extra}",
            i + 1
        );
    }
    let file = dir.join("cluster.toml");
    std::fs::write(&file, t)?;
    let mut servers = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        servers.push(spawn_origin(&file, &format!("o{}", i + 1), port).await?);
    }
    let urls = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    Ok((servers, urls, file))
}

/// Runs `count` operations with `concurrency` in flight; `op(i)` is the i-th. Returns the
/// wall time and the latency histogram (µs).
async fn drive<F, Fut>(
    count: usize,
    concurrency: usize,
    op: F,
) -> Result<(f64, hdrhistogram::Histogram<u64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(h);
                }
                let t = Instant::now();
                op(i).await?;
                h.record(t.elapsed().as_micros() as u64).unwrap();
            }
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await??).unwrap();
    }
    Ok((started.elapsed().as_secs_f64(), all))
}

async fn measure(nodes: usize, a: &Args) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let (_servers, urls, _) = start_cluster(dir.path(), nodes, "").await?;
    let clients: Arc<Vec<OriginClient>> = Arc::new(
        urls.iter()
            .map(|u| OriginClient::new(u, Some("bench".into())))
            .collect::<Result<_, _>>()?,
    );
    let files = (a.publish_mib / a.file_mib).max(1);
    let size = a.file_mib << 20;
    // Distinct random files (no dedup between them), generated before the clock starts.
    let data: Arc<Vec<Bytes>> = Arc::new(
        (0..files)
            .map(|i| Bytes::from(noise(i as u64 + 1, size)))
            .collect(),
    );
    let (c, d) = (clients.clone(), data.clone());
    let (secs, hist) = drive(files, a.concurrency, move |i| {
        let (c, d) = (c.clone(), d.clone());
        async move {
            c[i % c.len()]
                .put_bytes(&format!("b/{i}.bin"), d[i].clone())
                .await?;
            Ok(())
        }
    })
    .await?;
    let publish_mbps = (files * size) as f64 / secs / 1e6;
    let reads = files * a.read_rounds;
    let c = clients.clone();
    let (rsecs, _) = drive(reads, a.concurrency, move |i| {
        let c = c.clone();
        async move {
            // Through a node other than the one that coordinated the publish.
            let node = &c[(i + 1) % c.len()];
            let (p, body) = node
                .call(
                    http::Method::GET,
                    &format!("/api/v1/files/b/{}.bin", i % files),
                    tessera_origin_proto::client::full(Bytes::new()),
                )
                .await?;
            anyhow::ensure!(
                p.status == 200 && body.len() == size,
                "read {i}: {}",
                p.status
            );
            Ok(())
        }
    })
    .await?;
    let read_mbps = (reads * size) as f64 / rsecs / 1e6;
    let manifest_ops = count_manifest_reads(&clients, files, a).await? / a.metadata_secs as f64;
    Ok(Figures {
        replication: nodes.min(2),
        publish_mbps,
        publish_p50: hist.value_at_quantile(0.5) as f64 / 1000.0,
        publish_p99: hist.value_at_quantile(0.99) as f64 / 1000.0,
        read_mbps,
        manifest_ops,
    })
}

/// Manifest reads completed in `metadata_secs` with `concurrency × 8` in flight.
async fn count_manifest_reads(
    clients: &Arc<Vec<OriginClient>>,
    files: usize,
    a: &Args,
) -> Result<f64> {
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.metadata_secs);
    let mut tasks = Vec::new();
    for w in 0..a.concurrency * 8 {
        let (c, done) = (clients.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                c[i % c.len()]
                    .manifest(&format!("b/{}.bin", i % files))
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 7;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64)
}

fn scale_model(rows: &[(usize, Figures)]) {
    let Some((_, one)) = rows.iter().find(|(n, _)| *n == 1) else {
        return;
    };
    println!("\n## scale model (per-node rates of the 1-node run, this 2-core machine)");
    let read = one.read_mbps / 1e3; // GB/s per node
    let write = one.publish_mbps / 1e3;
    let meta = one.manifest_ops;
    let r = 2.0;
    println!(
        "- reads: 100 GB/s / {read:.2} GB/s per origin node = {:.0} origin nodes (before edge caches absorb hits)",
        100.0 / read
    );
    println!(
        "- writes: 50 GB/s x {r} copies / {write:.2} GB/s per node = {:.0} origin nodes",
        50.0 * r / write
    );
    println!(
        "- metadata: 1,000,000 manifest reads/s / {meta:.0} per node = {:.0} origin nodes",
        1e6 / meta
    );
}

/// CPU seconds (user + system) process `pid` has used, from `/proc/PID/stat` (clock ticks
/// of 1/100 s, as on every Linux build that matters here).
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start past its `)`.
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// Starts origin `id` of topology `file` on `port`.
async fn spawn_origin(file: &Path, id: &str, port: u16) -> Result<Server> {
    let child = Command::new(tessera_exe()?)
        .args(["origin", "--topology"])
        .arg(file)
        .args(["--id", id])
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting tessera origin")?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    wait_listening(addr, "tessera origin").await?;
    Ok(Server {
        name: "origin",
        addr,
        child,
    })
}

/// A call to a node that must answer 200 with JSON; the JSON.
async fn call_json(
    c: &OriginClient,
    method: http::Method,
    path: &str,
) -> Result<serde_json::Value> {
    let (p, body) = c
        .call(
            method,
            path,
            tessera_origin_proto::client::full(Bytes::new()),
        )
        .await?;
    anyhow::ensure!(p.status == 200, "{path}: {}", p.status);
    Ok(serde_json::from_slice(&body)?)
}

/// One repair pass on a node; its report.
async fn repair(c: &OriginClient) -> Result<serde_json::Value> {
    call_json(c, http::Method::POST, "/api/v1/cluster/repair").await
}

/// Publishes `count` small distinct files `{prefix}{i}` through `clients` in turn, with
/// `concurrency` in flight; returns the seconds it took.
async fn publish_small(
    clients: &Arc<Vec<OriginClient>>,
    prefix: &'static str,
    count: usize,
    concurrency: usize,
) -> Result<f64> {
    let c = clients.clone();
    let (secs, _) = drive(count, concurrency, move |i| {
        let c = c.clone();
        async move {
            let body = format!("file {prefix}{i}: {}\n", "x".repeat(64 + i % 64));
            c[i % c.len()]
                .put_bytes(&format!("{prefix}{i}"), Bytes::from(body))
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(secs)
}

/// Anti-entropy: what repair costs on an idle cluster of `files` files (3 nodes,
/// replication 2), and how long it takes to repair a node that missed `missed` publishes.
pub async fn anti_entropy(files: usize, missed: usize, concurrency: usize) -> Result<()> {
    println!(
        "\n## anti-entropy: 3 origin nodes, replication 2, {files} files, then {missed} publishes missed by one node"
    );
    let dir = tempfile::tempdir()?;
    // Passes are driven by the bench; no scrub competes for the CPU.
    let extra = "cluster = { repair_interval_secs = 0, scrub_bytes_per_sec = 0 }\n";
    let (mut servers, urls, file) = start_cluster(dir.path(), 3, extra).await?;
    let o3_port = servers[2].addr.port();
    let clients: Arc<Vec<OriginClient>> = Arc::new(
        urls.iter()
            .map(|u| OriginClient::new(u, Some("bench".into())))
            .collect::<Result<_, _>>()?,
    );
    let secs = publish_small(&clients, "f/", files, concurrency).await?;
    println!(
        "- filled: {files} files in {secs:.0} s ({:.0} publishes/s)",
        files as f64 / secs
    );
    // Idle: passes over an unchanged cluster, CPU of all three processes.
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let cpu = |pids: &[u32]| -> Result<f64> { pids.iter().map(|&p| cpu_secs(p)).sum() };
    for c in clients.iter() {
        repair(c).await?;
    }
    let passes = 10;
    let (cpu0, t0) = (cpu(&pids)?, Instant::now());
    let mut looked = 0;
    for _ in 0..passes {
        for c in clients.iter() {
            let r = repair(c).await?;
            looked +=
                r["paths"].as_u64().unwrap_or(0) + r["buckets_differing"].as_u64().unwrap_or(0);
        }
    }
    let (spent, wall) = (cpu(&pids)? - cpu0, t0.elapsed().as_secs_f64());
    let per_pass = spent / (passes * 3) as f64;
    let interval = tessera_origin::cluster::ClusterConfig::default().repair_interval_secs as f64;
    println!(
        "- idle repair: {:.1} ms of CPU per pass per node (all three processes counted; {:.1} ms wall), {} paths or buckets looked at in {} passes; at the default interval of {interval:.0} s that is {:.3} % of a core per node (goal < 1 %: {})",
        per_pass * 1e3,
        wall / (passes * 3) as f64 * 1e3,
        looked,
        passes * 3,
        per_pass / interval * 100.0,
        if per_pass / interval < 0.01 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    // A node misses `missed` publishes, comes back, and repair catches it up.
    let o3 = servers.pop().expect("three servers");
    drop(o3); // SIGTERM, then SIGKILL if it lingers
    let live = Arc::new(clients[..2].to_vec());
    let secs = publish_small(&live, "m/", missed, concurrency).await?;
    println!(
        "- {missed} publishes with o3 down: {secs:.1} s ({:.0}/s)",
        missed as f64 / secs
    );
    // The clock runs from the restart: o3 rebuilds its digests from its store before it
    // answers.
    let started = Instant::now();
    servers.push(spawn_origin(&file, "o3", o3_port).await?);
    loop {
        let r = clients[2]
            .call(
                http::Method::GET,
                "/api/v1/cluster",
                tessera_origin_proto::client::full(Bytes::new()),
            )
            .await;
        if matches!(r, Ok((ref p, _)) if p.status == 200) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "o3 did not answer within 5 minutes of its restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = started.elapsed().as_secs_f64();
    let mut rounds = 0;
    let mut copied = 0u64;
    loop {
        rounds += 1;
        let mut quiet = true;
        for c in clients.iter() {
            let r = repair(c).await?;
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            copied += n("chunks_copied") + n("records_copied");
            if n("chunks_missing") + n("records_copied") + n("chunks_waiting") + n("errors") > 0 {
                quiet = false;
            }
        }
        if quiet {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "repair did not converge in 10 minutes ({rounds} rounds)"
        );
    }
    let took = started.elapsed().as_secs_f64();
    // Check the result: o3 holds the record of every missed path it owns.
    let ring = Ring::new(
        (1..=3)
            .map(|i| RingNode {
                id: format!("o{i}"),
                weight: 1,
            })
            .collect(),
        tessera_origin::cluster::ClusterConfig::default().vnodes,
        2,
    );
    let owned = (0..missed)
        .filter(|i| ring.file_owners(&format!("m/{i}")).contains(&2))
        .count();
    let listed = call_json(
        &clients[2],
        http::Method::GET,
        "/api/v1/cluster/files?prefix=m/",
    )
    .await
    .context("listing o3's records")?;
    let held = serde_json::from_value::<Vec<serde_json::Value>>(listed)?.len();
    anyhow::ensure!(
        held == owned,
        "after repair o3 holds {held} records of the missed publishes, owns {owned}"
    );
    println!(
        "- repair of o3 after it missed {missed} publishes: {took:.1} s from its restart ({ready:.1} s of which until it answered, its digests rebuilt) to a quiet round ({rounds} rounds of a pass on each node, {copied} copies pushed); o3 then holds all {owned} records it owns (goal < 60 s: {})",
        if took < 60.0 { "PASS" } else { "FAIL" }
    );
    Ok(())
}

/// Reads of `files` (1 MiB each, `f/{i}`) through `clients`, 4 in flight, and a publish of a
/// new 256 KiB file every 100 ms, until `stop`: read latency (µs), reads, publishes, and
/// the failures (each named).
async fn read_and_publish(
    clients: Arc<Vec<OriginClient>>,
    files: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tag: &'static str,
) -> (hdrhistogram::Histogram<u64>, u64, u64, Vec<String>) {
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let (clients, stop) = (clients.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut failures = Vec::new();
            let mut i = t * 7919;
            while !stop.load(Ordering::Relaxed) {
                let c = &clients[i % clients.len()];
                let path = format!("f/{}", (i * 31) % files);
                let started = Instant::now();
                let url = format!("/api/v1/files/{path}");
                match c
                    .call(
                        http::Method::GET,
                        &url,
                        tessera_origin_proto::client::full(Bytes::new()),
                    )
                    .await
                {
                    Ok((p, b)) if p.status == 200 && b.len() == 1 << 20 => {}
                    Ok((p, b)) => failures.push(format!(
                        "{path}: {} {}",
                        p.status,
                        String::from_utf8_lossy(&b[..b.len().min(200)])
                    )),
                    Err(e) => failures.push(format!("{path}: {e}")),
                }
                h.record(started.elapsed().as_micros() as u64).unwrap();
                i += 1;
            }
            (h, failures, 0u64)
        }));
    }
    {
        let (clients, stop) = (clients.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = Bytes::from(noise(n + 1_000_000, 256 << 10));
                let path = format!("{tag}/{n}");
                if let Err(e) = clients[n as usize % clients.len()]
                    .put_bytes(&path, body)
                    .await
                {
                    failures.push(format!("publish {path}: {e}"));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (h, failures, n)
        }));
    }
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let (mut failures, mut published) = (Vec::new(), 0);
    for t in tasks {
        let (th, f, n) = t.await.expect("a load task");
        h.add(&th).unwrap();
        failures.extend(f);
        published += n;
    }
    let reads = h.len();
    (h, reads, published, failures)
}

/// `len` bytes of seeded noise (incompressible).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One metric's value summed over `clients`' `/metrics`.
async fn metric_sum(clients: &[OriginClient], name: &str) -> Result<f64> {
    let mut sum = 0.0;
    for c in clients {
        let (_, body) = c
            .call(
                http::Method::GET,
                "/metrics",
                tessera_origin_proto::client::full(Bytes::new()),
            )
            .await?;
        let text = String::from_utf8_lossy(&body);
        sum += text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(sum)
}

/// Live membership: 3 nodes (replication 2) holding `mib` files of 1 MiB, then a fourth
/// node added while reads and publishes go on, each node moving data at `rate_mib` MiB/s.
pub async fn join(mib: usize, rate_mib: u64) -> Result<()> {
    println!(
        "\n## live membership: a 4th origin node joins 3 (replication 2) holding {mib} MiB, repair_bytes_per_sec {rate_mib} MiB/s per node"
    );
    let dir = tempfile::tempdir()?;
    let extra = format!(
        "cluster = {{ repair_interval_secs = 5, scrub_bytes_per_sec = 0, repair_bytes_per_sec = \"{rate_mib}MiB\" }}\n"
    );
    let (mut servers, urls, file) = start_cluster(dir.path(), 3, &extra).await?;
    let clients: Arc<Vec<OriginClient>> = Arc::new(
        urls.iter()
            .map(|u| OriginClient::new(u, Some("bench".into())))
            .collect::<Result<_, _>>()?,
    );
    let c = clients.clone();
    let (secs, _) = drive(mib, 4, move |i| {
        let c = c.clone();
        async move {
            c[i % c.len()]
                .put_bytes(&format!("f/{i}"), Bytes::from(noise(i as u64, 1 << 20)))
                .await?;
            Ok(())
        }
    })
    .await?;
    println!("- filled: {mib} files of 1 MiB in {secs:.1} s");
    // The new node, from the topology that lists it.
    let port = free_port();
    let four = dir.path().join("cluster4.toml");
    std::fs::write(
        &four,
        std::fs::read_to_string(&file)?
            + &format!("[[origin]]\nid = \"o4\"\nlisten = \"127.0.0.1:{port}\"\n{extra}"),
    )?;
    servers.push(spawn_origin(&four, "o4", port).await?);
    let all: Vec<OriginClient> = clients
        .iter()
        .cloned()
        .chain([OriginClient::new(
            &format!("http://127.0.0.1:{port}"),
            Some("bench".into()),
        )?])
        .collect();
    // Before: 10 s of the load on the three nodes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(read_and_publish(
        clients.clone(),
        mib,
        stop.clone(),
        "before",
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let (before, reads_before, _, failed_before) = load.await?;
    // The join, under the same load, until every node says it settled.
    let sent0 = metric_sum(&all, "tessera_origin_cluster_repair_bytes_sent_total").await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(read_and_publish(
        clients.clone(),
        mib,
        stop.clone(),
        "during",
    ));
    let started = Instant::now();
    let body = serde_json::json!({"add": {"id": "o4", "url": format!("http://127.0.0.1:{port}")}});
    let (p, reply) = clients[0]
        .call(
            http::Method::POST,
            "/api/v1/cluster/members",
            tessera_origin_proto::client::full(Bytes::from(body.to_string())),
        )
        .await?;
    anyhow::ensure!(
        p.status == 200,
        "the join was refused: {}",
        String::from_utf8_lossy(&reply)
    );
    loop {
        let mut settled = true;
        for c in &all {
            let v = call_json(c, http::Method::GET, "/api/v1/cluster/members").await?;
            settled &= v["membership"]["epoch"] == 1 && v["settled"] == true;
        }
        if settled {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the join did not settle within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (during, reads_during, published, failed_during) = load.await?;
    let sent = metric_sum(&all, "tessera_origin_cluster_repair_bytes_sent_total").await? - sent0;
    let o4 = call_json(&all[3], http::Method::GET, "/api/v1/stats").await?;
    let rate = sent / took / f64::from(1 << 20);
    let bound = 3.0 * rate_mib as f64;
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "- join settled in {took:.1} s: {:.0} MiB sent by repair ({rate:.1} MiB/s, bound {bound:.0} MiB/s for the 3 senders: {}); o4 holds {:.0} MiB",
        sent / f64::from(1 << 20),
        if rate <= bound * 1.05 { "PASS" } else { "FAIL" },
        o4["unique_bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20)
    );
    println!(
        "- 1 MiB reads through o1..o3, 4 in flight: before p50 {:.1} ms p99 {:.1} ms ({:.0}/s); during the move p50 {:.1} ms p99 {:.1} ms ({:.0}/s), {published} publishes meanwhile; failed: {} before, {} during ({})",
        ms(&before, 0.5),
        ms(&before, 0.99),
        reads_before as f64 / 10.0,
        ms(&during, 0.5),
        ms(&during, 0.99),
        reads_during as f64 / took,
        failed_before.len(),
        failed_during.len(),
        if failed_during.is_empty() && failed_before.is_empty() {
            "PASS".to_string()
        } else {
            format!(
                "FAIL: {:?}",
                failed_during
                    .iter()
                    .chain(&failed_before)
                    .take(3)
                    .collect::<Vec<_>>()
            )
        }
    );
    Ok(())
}
