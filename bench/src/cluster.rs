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

use std::path::Path;
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
}

pub fn run(a: Args) -> Result<()> {
    println!("# machine: {}", machine());
    balance();
    if a.balance_only {
        return Ok(());
    }
    let rt = crate::runtime(2)?;
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

/// Starts `nodes` origin processes from one topology file in `dir`.
async fn start_cluster(dir: &Path, nodes: usize) -> Result<(Vec<Server>, Vec<String>)> {
    let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
    let mut t = format!(
        "replication = {}\ndata = {:?}\ntoken = \"bench\"\n",
        nodes.min(2),
        dir.join("data").display().to_string()
    );
    for (i, p) in ports.iter().enumerate() {
        t += &format!(
            "[[origin]]\nid = \"o{}\"\nlisten = \"127.0.0.1:{p}\"\n",
            i + 1
        );
    }
    let file = dir.join("cluster.toml");
    std::fs::write(&file, t)?;
    let mut servers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let child = Command::new(tessera_exe()?)
            .args(["origin", "--topology"])
            .arg(&file)
            .args(["--id", &format!("o{}", i + 1)])
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting tessera origin")?;
        let addr = format!("127.0.0.1:{port}").parse()?;
        servers.push(Server {
            name: "origin",
            addr,
            child,
        });
        wait_listening(addr, "tessera origin").await?;
    }
    let urls = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    Ok((servers, urls))
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
    let (_servers, urls) = start_cluster(dir.path(), nodes).await?;
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
            .map(|i| {
                let mut v = vec![0u8; size];
                let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for c in v.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
                }
                Bytes::from(v)
            })
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
