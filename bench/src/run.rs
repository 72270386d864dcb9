//! `tessera-bench run`: one of the seed's workloads against a running origin (writes) and
//! edge (reads), closed loop with `concurrency` clients for `seconds` (a trace replays at its
//! own times instead). Every read is checked for status 200 and its expected length; every
//! write for the origin's acknowledgement. Prints throughput, latency percentiles per kind,
//! error counts, the edge's hit ratio per tier and origin fetches during the run (from its
//! `/metrics`), the origin's dedup and compression, and the seed's latency targets pass/fail;
//! `--json FILE` writes the same as JSON.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tessera_origin_proto::OriginClient;

use crate::load::percentiles;
use crate::workload::{Backup, BackupStep, CDN_HEAD, Cdn, Op, ReadHeavy, WriteHeavy, parse_trace};

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    ReadHeavy,
    WriteHeavy,
    Cdn,
    Backup,
    Trace,
}

/// Options of `tessera-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The workload.
    #[arg(long, value_enum)]
    pub workload: Kind,
    /// The origin that takes writes (http://HOST:PORT).
    #[arg(long)]
    pub origin: String,
    /// The origin's write token.
    #[arg(long, env = "TESSERA_TOKEN")]
    pub token: Option<String>,
    /// The edge that serves reads (http:// or https://).
    #[arg(long)]
    pub edge: String,
    /// The edge's admin listener, for its metrics before and after (http://HOST:PORT).
    #[arg(long)]
    pub edge_admin: Option<String>,
    /// Protocol of the reads.
    #[arg(long, default_value = "http1")]
    pub protocol: String,
    /// Accept the edge's development certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Seconds of load (a trace ends earlier when it runs out).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Clients (closed loop: each sends its next request when the last one is answered).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Open loop instead: this many operations per second in all, spread over the clients;
    /// latency counts from each operation's intended start, so queueing is not hidden
    /// (coordinated omission). 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Size scale (1.0 = the seed's sizes; 0.01 fits a laptop).
    #[arg(long, default_value_t = 0.01)]
    pub scale: f64,
    /// Seed of the generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The CSV trace (`timestamp,key,size`) for `--workload trace`.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Do not publish the objects reads need first (a previous run did).
    #[arg(long)]
    pub no_preload: bool,
    /// Also draw SVG charts into this folder: latency percentiles and operations per
    /// second over the run, reads and writes.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Counts and latencies of one kind of operation.
#[derive(Debug)]
pub struct Tally {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub hist: hdrhistogram::Histogram<u64>,
    /// Operations completed in each second of the run (from `start`).
    pub timeline: Vec<u64>,
    /// When the measured part of the run began.
    start: Instant,
}

impl Tally {
    fn new(start: Instant) -> Tally {
        Tally {
            start,
            ops: 0,
            bytes: 0,
            errors: 0,
            hist: hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).unwrap(),
            timeline: Vec::new(),
        }
    }

    /// One operation of `bytes` that succeeded, timed from `since`.
    fn record(&mut self, bytes: u64, since: Instant) {
        self.ops += 1;
        self.bytes += bytes;
        let us = since.elapsed().as_micros() as u64;
        self.hist.record(us.max(1)).ok();
        let sec = self.start.elapsed().as_secs() as usize;
        if self.timeline.len() <= sec {
            self.timeline.resize(sec + 1, 0);
        }
        self.timeline[sec] += 1;
    }

    fn add(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.hist.add(&o.hist).ok();
        if self.timeline.len() < o.timeline.len() {
            self.timeline.resize(o.timeline.len(), 0);
        }
        for (a, b) in self.timeline.iter_mut().zip(&o.timeline) {
            *a += b;
        }
    }

    fn json(&self, secs: f64) -> serde_json::Value {
        let [p50, p95, p99, p999] = percentiles(&self.hist);
        serde_json::json!({
            "ops": self.ops, "bytes": self.bytes, "errors": self.errors,
            "ops_per_sec": self.ops as f64 / secs, "bytes_per_sec": self.bytes as f64 / secs,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "p99_9_ms": p999,
        })
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub reads: Tally,
    pub writes: Tally,
    pub secs: f64,
    /// From the edge's `/metrics` (differences over the run).
    pub edge: serde_json::Value,
    /// From the origin's `/api/v1/stats` after the run.
    pub origin: serde_json::Value,
}

/// The bytes written at `key`: incompressible and distinct per key (blake3's XOF).
pub(crate) fn content(key: &str, size: u64) -> Bytes {
    let mut out = vec![0u8; size as usize];
    blake3::Hasher::new()
        .update(key.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    Bytes::from(out)
}

/// What the workers draw from.
enum Source {
    ReadHeavy(ReadHeavy),
    WriteHeavy(WriteHeavy),
    Cdn(Cdn),
    Backup(Backup, usize),
}

/// One unit of work.
enum Task {
    Ops(Vec<Op>),
    Version(Vec<(String, Vec<u8>)>),
    Restore(u32, usize),
}

impl Source {
    fn next(&mut self) -> Task {
        match self {
            Source::ReadHeavy(g) => Task::Ops(vec![g.next_op()]),
            Source::WriteHeavy(g) => Task::Ops(g.next_batch()),
            Source::Cdn(g) => Task::Ops(vec![g.next_op()]),
            Source::Backup(g, files) => match g.next_step() {
                BackupStep::Version { files, .. } => Task::Version(files),
                BackupStep::Restore { version } => Task::Restore(version, *files),
            },
        }
    }
}

/// Operations done so far by every client, for the progress line.
#[derive(Debug, Default)]
struct Done {
    reads: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

impl Done {
    fn add(&self, counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        format!(
            "{} reads, {} writes, {} errors",
            get(&self.reads),
            get(&self.writes),
            get(&self.errors)
        )
    }
}

/// A progress bar on standard error (drawn only on a terminal).
fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

struct Worker {
    done: Arc<Done>,
    /// When the current task was meant to start (open loop); `None`: when it starts.
    intended: Option<Instant>,
    origin: OriginClient,
    edge: Connection,
    edge_url: String,
    opts: ClientOptions,
    reads: Tally,
    writes: Tally,
}

impl Worker {
    async fn write(&mut self, key: &str, data: Bytes) {
        let n = data.len() as u64;
        let t = self.intended.unwrap_or_else(Instant::now);
        match self.origin.put_bytes(key, data).await {
            Ok(_) => {
                self.writes.record(n, t);
                self.done.add(&self.done.writes);
            }
            Err(e) => {
                show_error("write", key, &e.to_string());
                self.writes.errors += 1;
                self.done.add(&self.done.errors);
            }
        }
    }

    /// GET `key` from the edge; `size` checked when known.
    async fn read(&mut self, key: &str, size: Option<u64>) {
        let t = self.intended.unwrap_or_else(Instant::now);
        let got = get_whole(&mut self.edge, &format!("/{key}"), size).await;
        match got {
            Ok(n) => {
                self.reads.record(n, t);
                self.done.add(&self.done.reads);
            }
            Err(e) => {
                show_error("read", key, &e.to_string());
                self.reads.errors += 1;
                self.done.add(&self.done.errors);
                // The connection may be broken: a new one for the next request.
                if let Ok(c) = Connection::connect(&self.edge_url, &self.opts).await {
                    self.edge = c;
                }
            }
        }
    }

    async fn task(&mut self, t: Task) {
        match t {
            Task::Ops(ops) => {
                for op in ops {
                    match op {
                        Op::Write { key, size } => {
                            let data = content(&key, size);
                            self.write(&key, data).await
                        }
                        Op::Read { key, size } => self.read(&key, Some(size)).await,
                    }
                }
            }
            Task::Version(files) => {
                for (key, data) in files {
                    self.write(&key, Bytes::from(data)).await;
                }
            }
            Task::Restore(version, files) => {
                for i in 0..files {
                    self.read(&format!("backup/v{version}/file-{i}"), None)
                        .await;
                }
            }
        }
    }
}

/// GETs `path` on `conn` and reads the body to its end, counting its bytes (nothing is
/// kept); a status other than 200, a broken body or, with `size`, another length is an error.
pub(crate) async fn get_whole(conn: &mut Connection, path: &str, size: Option<u64>) -> Result<u64> {
    let resp = conn.get(path).await?;
    if resp.status() != http::StatusCode::OK {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| anyhow::anyhow!("body: {e}"))?;
        n += f.data_ref().map_or(0, |d| d.len() as u64);
    }
    if let Some(s) = size
        && s != n
    {
        bail!("{n} bytes, expected {s}");
    }
    Ok(n)
}

/// Prints the first few failures (the counts carry the rest).
fn show_error(kind: &str, key: &str, e: &str) {
    static SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
        eprintln!("{kind} {key}: {e}");
    }
}

/// The text of `/metrics` on the admin listener at `admin` (`http://HOST:PORT`).
pub(crate) async fn scrape(admin: &str) -> Option<String> {
    let url = format!("{admin}/metrics");
    let opts = ClientOptions::new(Mode::Http1);
    let mut c = Connection::connect(&url, &opts).await.ok()?;
    let resp = c.get("/metrics").await.ok()?;
    let text = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// The sum of every series of metric `name` in a `/metrics` text.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        // An empty sum is -0.
        .sum::<f64>()
        + 0.0
}

/// Sums of the edge's counters that the report differences.
async fn edge_metrics(admin: &Option<String>) -> Option<Vec<(String, f64)>> {
    let text = scrape(admin.as_ref()?).await?;
    Some(
        text.lines()
            .filter(|l| {
                l.starts_with("tessera_edge_cache_lookups_total")
                    || l.starts_with("tessera_edge_origin_fetches_total")
                    || l.starts_with("tessera_edge_feed_position")
            })
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

fn edge_summary(before: &[(String, f64)], after: &[(String, f64)]) -> serde_json::Value {
    let get = |m: &[(String, f64)], name: &str| {
        m.iter()
            .filter(|(k, _)| k.contains(name))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let delta = |name: &str| get(after, name) - get(before, name);
    let lookups = delta("cache_lookups_total");
    let hit = |tier: &str| delta(&format!("result=\"hit\",tier=\"{tier}\""));
    serde_json::json!({
        "lookups": lookups,
        "hit_ratio_memory": if lookups > 0.0 { hit("memory") / lookups } else { 0.0 },
        "hit_ratio_disk": if lookups > 0.0 { hit("disk") / lookups } else { 0.0 },
        "origin_fetches": delta("origin_fetches_total"),
        // How far the edge had followed the origins' change feeds, at the start and the end.
        "feed_position": [get(before, "feed_position"), get(after, "feed_position")],
    })
}

/// The objects a trace reads, each at its first size, published as `key` without its `/`.
pub(crate) fn trace_objects(trace: &[crate::workload::TraceEntry]) -> Vec<(String, u64)> {
    let mut seen = std::collections::HashSet::new();
    trace
        .iter()
        .filter(|e| seen.insert(e.key.clone()))
        .map(|e| (e.key.trim_start_matches('/').to_string(), e.size))
        .collect()
}

/// Publishes what reads will ask for (`key`, `size`: [`content`]), untimed, 16 at a time.
pub(crate) async fn publish_objects(
    origin: &OriginClient,
    objects: Vec<(String, u64)>,
) -> Result<()> {
    eprintln!("publishing {} objects first", objects.len());
    let bar = progress_bar(objects.len() as u64, "publishing {wide_bar} {pos}/{len}");
    futures_util::stream::iter(objects)
        .map(|(key, size)| {
            let (client, bar) = (origin.clone(), bar.clone());
            async move {
                let data = content(&key, size);
                let r = client
                    .put_bytes(&key, data)
                    .await
                    .with_context(|| format!("publishing {key}"));
                bar.inc(1);
                r
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    Ok(())
}

/// Runs the workload and reports.
pub async fn run_workload(a: &Args) -> Result<Report> {
    let mode = match a.protocol.as_str() {
        "http1" => Mode::Http1,
        "http2" => Mode::Http2,
        "http3" => Mode::Http3,
        other => bail!("--protocol {other:?}: expected http1, http2 or http3"),
    };
    let mut opts = ClientOptions::new(mode);
    opts.insecure = a.insecure;
    let origin = OriginClient::new(&a.origin, a.token.clone())?;
    let mut preload: Vec<(String, u64)> = Vec::new();
    let trace = match (a.workload, &a.trace) {
        (Kind::Trace, Some(p)) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Some(parse_trace(&text)?)
        }
        (Kind::Trace, None) => bail!("--workload trace needs --trace FILE"),
        _ => None,
    };
    let source = match a.workload {
        Kind::ReadHeavy => {
            let mut g = ReadHeavy::new(a.seed, a.scale);
            for op in g.preload(100) {
                preload.push((op_key(&op), op.size()));
            }
            Some(Source::ReadHeavy(g))
        }
        Kind::WriteHeavy => Some(Source::WriteHeavy(WriteHeavy::new(a.seed, a.scale))),
        Kind::Cdn => {
            let g = Cdn::new(a.seed, a.scale);
            for k in 0..CDN_HEAD {
                preload.push(g.object(true, k));
            }
            for k in 0..g.tail_len() {
                preload.push(g.object(false, k));
            }
            Some(Source::Cdn(g))
        }
        Kind::Backup => {
            let files = 8;
            let bytes = ((4 << 20) as f64 * a.scale).max(4096.0) as usize;
            Some(Source::Backup(Backup::new(a.seed, files, bytes, 4), files))
        }
        Kind::Trace => {
            preload = trace_objects(trace.as_ref().unwrap());
            None
        }
    };
    if !preload.is_empty() && !a.no_preload {
        publish_objects(&origin, preload).await?;
    }
    let before = edge_metrics(&a.edge_admin).await;
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let source = source.map(|s| Arc::new(Mutex::new(s)));
    let trace = trace.map(Arc::new);
    let next_entry = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(Done::default());
    let bar = progress_bar(a.seconds, "{prefix} {wide_bar} {pos}/{len} s {msg}");
    bar.set_prefix(format!("{:?}", a.workload));
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_position(start.elapsed().as_secs());
                bar.set_message(done.line());
            }
        })
    };
    let mut tasks = Vec::new();
    let clients = a.concurrency.max(1);
    // Open loop: each client's operations are due every `interval`, clients staggered.
    let interval = (a.rate > 0.0).then(|| Duration::from_secs_f64(clients as f64 / a.rate));
    for c in 0..clients {
        let mut w = Worker {
            done: done.clone(),
            intended: None,
            origin: origin.clone(),
            edge: Connection::connect(&a.edge, &opts).await?,
            edge_url: a.edge.clone(),
            opts: opts.clone(),
            reads: Tally::new(start),
            writes: Tally::new(start),
        };
        let (source, trace, next_entry) = (source.clone(), trace.clone(), next_entry.clone());
        let mut due = interval.map(|i| start + i.mul_f64(c as f64 / clients as f64));
        tasks.push(tokio::spawn(async move {
            loop {
                if Instant::now() >= end {
                    break;
                }
                if let Some(t) = &trace {
                    // Open loop at the trace's own times; latency from the intended time.
                    let i = next_entry.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(e) = t.get(i) else { break };
                    let due = start + e.at;
                    if due >= end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    w.intended = Some(due);
                    let key = e.key.trim_start_matches('/');
                    if e.update {
                        w.write(key, content(key, e.size)).await;
                    }
                    w.read(key, (!e.varies).then_some(e.size)).await;
                    continue;
                }
                if let (Some(d), Some(i)) = (due, interval) {
                    if d >= end {
                        break;
                    }
                    tokio::time::sleep_until(d.into()).await;
                    w.intended = Some(d);
                    due = Some(d + i);
                }
                let task = source.as_ref().unwrap().lock().unwrap().next();
                w.task(task).await;
            }
            (w.reads, w.writes)
        }));
    }
    let (mut reads, mut writes) = (Tally::new(start), Tally::new(start));
    for t in tasks {
        let (r, w) = t.await?;
        reads.add(&r);
        writes.add(&w);
    }
    ticker.abort();
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let after = edge_metrics(&a.edge_admin).await;
    let edge = match (before, after) {
        (Some(b), Some(af)) => edge_summary(&b, &af),
        _ => serde_json::Value::Null,
    };
    // A cluster's figures for the whole cluster (each file once, every copy on disk); a
    // standalone origin's own.
    let cluster_stats = match origin
        .call(
            http::Method::GET,
            "/api/v1/cluster/stats",
            tessera_origin_proto::client::full(bytes::Bytes::new()),
        )
        .await
    {
        Ok((p, body)) if p.status.is_success() => {
            serde_json::from_slice::<tessera_origin_proto::client::Stats>(&body).ok()
        }
        _ => None,
    };
    let stats = match cluster_stats {
        Some(s) => Ok(s),
        None => origin.stats().await,
    };
    let origin = stats
        .map(|s| {
            serde_json::json!({
                "dedup_ratio": s.dedup_ratio,
                "compression_ratio": s.compression_ratio,
                "efficiency": s.efficiency,
                "logical_bytes": s.logical_bytes,
                "stored_bytes": s.stored_bytes,
            })
        })
        .unwrap_or(serde_json::Value::Null);
    Ok(Report {
        reads,
        writes,
        secs,
        edge,
        origin,
    })
}

fn op_key(op: &Op) -> String {
    match op {
        Op::Read { key, .. } | Op::Write { key, .. } => key.clone(),
    }
}

/// The seed's latency targets (ms): p50, p95, p99.
const READ_TARGETS: [f64; 3] = [10.0, 50.0, 100.0];
const WRITE_TARGETS: [f64; 3] = [50.0, 200.0, 500.0];

impl Report {
    pub fn json(&self, a: &Args) -> serde_json::Value {
        serde_json::json!({
            "workload": format!("{:?}", a.workload),
            "seconds": self.secs,
            "concurrency": a.concurrency,
            "rate": a.rate,
            "scale": a.scale,
            "protocol": a.protocol,
            "reads": self.reads.json(self.secs),
            "writes": self.writes.json(self.secs),
            "edge": self.edge,
            "origin": self.origin,
        })
    }

    pub fn print(&self, a: &Args) {
        // Open loop: latency from each operation's intended start, which includes the up
        // to 1 ms by which tokio's timer (millisecond wheel) wakes the client late.
        let late = "latency from the intended start, incl. up to 1 ms of client timer granularity";
        let mode = if a.rate > 0.0 {
            format!("open loop at {} ops/s ({late})", a.rate)
        } else if a.workload == Kind::Trace {
            format!("open loop at the trace's times ({late})")
        } else {
            "closed loop".into()
        };
        println!(
            "workload {:?}, {} clients, {mode}, scale {}, {:.1} s, reads over {}",
            a.workload, a.concurrency, a.scale, self.secs, a.protocol
        );
        println!("| kind | ops/s | MB/s | p50 | p95 | p99 | p99.9 | errors |");
        println!("|---|---|---|---|---|---|---|---|");
        for (name, t, targets) in [
            ("read", &self.reads, READ_TARGETS),
            ("write", &self.writes, WRITE_TARGETS),
        ] {
            if t.ops + t.errors == 0 {
                continue;
            }
            let p = percentiles(&t.hist);
            println!(
                "| {name} | {:.0} | {:.1} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
                t.ops as f64 / self.secs,
                t.bytes as f64 / self.secs / 1e6,
                p[0],
                p[1],
                p[2],
                p[3],
                t.errors
            );
            let verdict: Vec<String> = ["p50", "p95", "p99"]
                .iter()
                .zip(targets)
                .zip(p)
                .map(|((q, limit), got)| {
                    let ok = if got < limit { "pass" } else { "FAIL" };
                    format!("{q} < {limit} ms: {ok}")
                })
                .collect();
            println!("seed targets, {name}: {}", verdict.join(", "));
        }
        if !self.edge.is_null() {
            println!("edge during the run: {}", self.edge);
        }
        if !self.origin.is_null() {
            println!("origin: {}", self.origin);
            println!(
                "seed storage targets: {}",
                storage_verdict(&self.origin).join(", ")
            );
        }
    }
}

/// `latency.svg` and `throughput.svg` of a run in `dir`.
pub(crate) fn plot_report(report: &Report, a: &Args, dir: &std::path::Path) -> Result<()> {
    use crate::plot::{Series, XAxis, line_chart};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    const QS: [f64; 6] = [0.5, 0.9, 0.95, 0.99, 0.999, 0.9999];
    const NAMES: &[&str] = &["p50", "p90", "p95", "p99", "p99.9", "p99.99"];
    let mut lat = Vec::new();
    let mut thr = Vec::new();
    for (name, t) in [("reads", &report.reads), ("writes", &report.writes)] {
        if t.ops == 0 {
            continue;
        }
        lat.push(Series {
            name: name.into(),
            points: QS
                .iter()
                .enumerate()
                .map(|(i, q)| (i as f64, t.hist.value_at_quantile(*q) as f64 / 1000.0))
                .collect(),
        });
        thr.push(Series {
            name: format!("{name} / s"),
            // Whole seconds only: the last, partial one would read as a drop.
            points: t
                .timeline
                .iter()
                .take(report.secs.floor() as usize)
                .enumerate()
                .map(|(s, n)| (s as f64, *n as f64))
                .collect(),
        });
    }
    let what = format!("{:?} workload, {} clients", a.workload, a.concurrency);
    line_chart(
        &dir.join("latency.svg"),
        &format!("Latency percentiles: {what}"),
        "percentile",
        "ms",
        XAxis::Named(NAMES),
        &lat,
    )?;
    line_chart(
        &dir.join("throughput.svg"),
        &format!("Operations per second: {what}"),
        "second of the run",
        "operations",
        XAxis::Linear,
        &thr,
    )?;
    println!(
        "charts: {}/latency.svg, {}/throughput.svg",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// The seed's storage targets against the origin's ratios: dedup saves 70 % of the
/// logical bytes, compression 60 % of what is left, 5x overall.
fn storage_verdict(origin: &serde_json::Value) -> Vec<String> {
    let ratio = |k: &str| origin[k].as_f64().unwrap_or(1.0).max(1e-9);
    let verdict = |ok: bool| if ok { "pass" } else { "FAIL" };
    let dedup = 1.0 - 1.0 / ratio("dedup_ratio");
    let compression = 1.0 - 1.0 / ratio("compression_ratio");
    let overall = ratio("efficiency");
    vec![
        format!(
            "dedup saves >= 70 % (got {:.1} %): {}",
            dedup * 100.0,
            verdict(dedup >= 0.70)
        ),
        format!(
            "compression saves >= 60 % more (got {:.1} %): {}",
            compression * 100.0,
            verdict(compression >= 0.60)
        ),
        format!(
            "overall >= 5x (got {overall:.2}x): {}",
            verdict(overall >= 5.0)
        ),
    ]
}

pub fn run(a: Args) -> Result<()> {
    let report = crate::runtime(2)?.block_on(run_workload(&a))?;
    report.print(&a);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report.json(&a))?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(dir) = &a.plot {
        plot_report(&report, &a, dir)?;
    }
    if report.reads.errors + report.writes.errors > 0 {
        bail!(
            "{} reads and {} writes failed",
            report.reads.errors,
            report.writes.errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A short smoke run of every workload against a real origin and a real edge, in
    //! process on 127.0.0.1:0: seconds, not minutes.
    use super::*;

    async fn origin_and_edge() -> (String, String, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ol = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", ol.local_addr().unwrap());
        let cfg = tessera_origin::OriginConfig {
            data: dir.path().join("origin"),
            token: Some("t".into()),
            ..Default::default()
        };
        tokio::spawn(async move {
            tessera_origin::run(ol, cfg, std::future::pending::<()>())
                .await
                .unwrap()
        });
        let (http, admin) = crate::testing::edge(
            tessera_edge::Backend::Origin(vec![origin.clone()]),
            &dir.path().join("edge"),
            64 << 20,
            256 << 20,
        )
        .await;
        let (edge, admin_url) = (format!("http://{http}"), format!("http://{admin}"));
        (origin, edge, admin_url, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_workload_runs_against_a_real_edge() {
        let (origin, edge, admin, dir) = origin_and_edge().await;
        let trace = dir.path().join("trace.csv");
        std::fs::write(
            &trace,
            "timestamp,key,size\n0,/t/a.js,1000\n0.1,/t/b.css,2000\n0.2,/t/a.js,1000\n0.3,/t/c.png,30000\n",
        )
        .unwrap();
        for kind in [
            Kind::ReadHeavy,
            Kind::WriteHeavy,
            Kind::Cdn,
            Kind::Backup,
            Kind::Trace,
        ] {
            let a = Args {
                workload: kind,
                origin: origin.clone(),
                token: Some("t".into()),
                edge: edge.clone(),
                edge_admin: Some(admin.clone()),
                protocol: "http1".into(),
                insecure: false,
                seconds: 1,
                concurrency: 4,
                scale: 0.0005,
                seed: 7,
                trace: Some(trace.clone()),
                json: None,
                no_preload: false,
                // Open loop for one of them, closed for the rest.
                rate: if kind == Kind::Cdn { 2000.0 } else { 0.0 },
                plot: None,
            };
            let client = tessera_origin_proto::OriginClient::new(&origin, None).unwrap();
            let before = client.stats().await.unwrap();
            let r = run_workload(&a).await.unwrap();
            let what = format!("{kind:?}: {}", r.json(&a));
            if kind == Kind::ReadHeavy {
                let charts = tempfile::tempdir().unwrap();
                plot_report(&r, &a, charts.path()).unwrap();
                let lat = std::fs::read_to_string(charts.path().join("latency.svg")).unwrap();
                assert!(lat.contains("reads") && lat.contains("writes") && lat.contains("p99"));
                let thr = std::fs::read_to_string(charts.path().join("throughput.svg")).unwrap();
                assert!(thr.contains("reads / s"), "{what}");
                assert!(
                    r.reads.timeline.iter().sum::<u64>() == r.reads.ops,
                    "{what}"
                );
            }
            assert_eq!(r.reads.errors + r.writes.errors, 0, "{what}");
            match kind {
                Kind::WriteHeavy => assert!(r.writes.ops >= 10, "{what}"),
                Kind::Backup => assert!(r.writes.ops >= 8, "{what}"),
                Kind::Trace => assert_eq!(r.reads.ops, 4, "{what}"),
                _ => assert!(r.reads.ops > 0, "{what}"),
            }
            if kind == Kind::Cdn {
                // Open loop: never more than the rate allows, whatever the server's speed.
                assert!(
                    (500..=2004).contains(&r.reads.ops),
                    "open loop at 2000/s for 1 s: {what}"
                );
                // The popular head is hit from memory once fetched.
                assert!(r.edge["hit_ratio_memory"].as_f64().unwrap() > 0.5, "{what}");
            }
            if kind == Kind::Backup {
                // Versions that differ a little share most chunks: what this run published
                // took far less new chunk data than its size (the origin's overall ratio
                // also counts the other workloads' unique objects, so it is not the measure).
                let after = client.stats().await.unwrap();
                let logical = after.logical_bytes.saturating_sub(before.logical_bytes) as f64;
                let unique = after
                    .unique_bytes
                    .saturating_sub(before.unique_bytes)
                    .max(1) as f64;
                assert!(logical / unique > 1.5, "{logical} / {unique}: {what}");
            }
        }
    }
}
