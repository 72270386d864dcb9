//! `tessera-bench chaos --minutes N`: a workload through real processes while faults and
//! kills come and go on a schedule, and what it did to the data.
//!
//! Three `tessera origin` processes form a cluster (replication 2); one `tessera edge` in
//! origin mode reads them through a fault proxy each (`tessera-faults`). A writer publishes
//! new versions of a set of files through the origins (any live node); readers fetch them
//! through the edge and check every body against the versions ever published for its path.
//! Every `--period` seconds the next fault of the schedule starts and the previous one
//! ends: an origin's proxy blackholes, adds 500 ms, resets, or stalls mid-body; an origin
//! process is killed (`kill -9`) and restarted; the edge is killed and restarted on its data
//! folder.
//!
//! With `--partitions` (root, iproute2 and Debian's faketime), the origins run in network
//! namespaces of their own ([`tessera_faults::netns`]) with o1's clock ten minutes behind
//! and o3's ten minutes ahead (libfaketime), and the schedule also cuts one origin off from
//! the other two (not from the writer, the readers or the edge) for a step.
//!
//! Reported: reads (failed while the edge was up; failed while it was down, which no cache
//! can help), corrupt bodies served (must be 0), writes acknowledged and acknowledged
//! writes lost (must be 0: at the end each file reads back at its last acknowledged
//! version or a later one), and each process's RSS and open files every second (must stay
//! bounded), drawn in `bench/plots/chaos-rss.svg` and `chaos-files.svg`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tessera_faults::{Fault, FaultProxy};
use tessera_origin_proto::OriginClient;

use crate::edge_hits::{Server, free_port, machine, tessera_exe, wait_listening};

/// Options of `tessera-bench chaos`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Minutes to run.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Seconds between schedule steps.
    #[arg(long, default_value_t = 10)]
    period: u64,
    /// Files the workload writes and reads.
    #[arg(long, default_value_t = 200)]
    files: usize,
    /// Readers.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Where the charts go.
    #[arg(long, default_value = "bench/plots")]
    plots: PathBuf,
    /// Origins in network namespaces with skewed clocks, and partitions in the schedule.
    #[arg(long)]
    partitions: bool,
}

/// libfaketime, preloaded into an origin to skew its clock.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub fn run(a: Args) -> Result<()> {
    crate::runtime(2)?.block_on(run_async(a))
}

/// The size of version `v` of file `i`: small files (sent inline with their manifest) and
/// larger ones (chunk batches).
fn size(i: usize, v: u64) -> u64 {
    if i.is_multiple_of(3) {
        200_000 + (v % 7) * 70_000
    } else {
        2_000 + (v % 5) * 3_000
    }
}

/// How long after a file's first publish a `404` for it still counts as the change feed's
/// lag rather than a failure.
const FEED_LAG: Duration = Duration::from_secs(5);

fn version_key(i: usize, v: u64) -> String {
    format!("chaos/f{i}.bin#{v}")
}

/// What the writer published: per file, every version tried (hash → version) and the last
/// one acknowledged.
#[derive(Default)]
struct Ledger {
    tried: HashMap<usize, HashMap<blake3::Hash, u64>>,
    acked: HashMap<usize, u64>,
    /// When each file's first version was acknowledged.
    first_acked: HashMap<usize, Instant>,
}

/// The cluster's processes and the edge, restartable.
struct Nodes {
    topology: PathBuf,
    /// Each origin's address.
    addrs: Vec<SocketAddr>,
    origins: Vec<Option<Server>>,
    edge_config: PathBuf,
    edge_data: PathBuf,
    edge_port: u16,
    edge: Option<Server>,
    /// Each origin's clock skew (libfaketime's `FAKETIME`), if any.
    skew: Vec<Option<&'static str>>,
    /// The origins' network namespaces, with `--partitions`; dropped after the processes.
    net: Option<tessera_faults::netns::Netns>,
}

impl Nodes {
    fn start_origin(&mut self, i: usize) -> Result<()> {
        let exe = tessera_exe()?;
        let mut cmd = match &self.net {
            Some(net) => net.command(i, exe.to_str().context("a UTF-8 path")?),
            None => Command::new(&exe),
        };
        if let Some(skew) = self.skew[i] {
            cmd.env("LD_PRELOAD", FAKETIME_LIB).env("FAKETIME", skew);
        }
        let child = cmd
            .args(["origin", "--topology"])
            .arg(&self.topology)
            .args(["--id", &format!("o{}", i + 1)])
            .env("TESSERA_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .context("starting tessera origin")?;
        self.origins[i] = Some(Server {
            name: "origin",
            addr: self.addrs[i],
            child,
        });
        Ok(())
    }

    fn start_edge(&mut self) -> Result<()> {
        let child = Command::new(tessera_exe()?)
            .args(["edge", "--config"])
            .arg(&self.edge_config)
            .args(["--http", &format!("127.0.0.1:{}", self.edge_port)])
            .args(["--memory", "64MiB", "--disk", "256MiB", "--data"])
            .arg(&self.edge_data)
            .env("TESSERA_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .context("starting tessera edge")?;
        self.edge = Some(Server {
            name: "tessera",
            addr: format!("127.0.0.1:{}", self.edge_port).parse()?,
            child,
        });
        Ok(())
    }

    /// `kill -9`.
    fn kill(server: &mut Option<Server>) {
        if let Some(mut s) = server.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
            // Already dead: the drop's SIGTERM goes nowhere.
        }
    }

    /// Process ids by name, for sampling.
    fn pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .origins
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((format!("o{}", i + 1), s.as_ref()?.child.id())))
            .collect();
        if let Some(e) = &self.edge {
            v.push(("edge".into(), e.child.id()));
        }
        v
    }
}

/// RSS (bytes) and open files of process `pid`.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let rss = crate::edge_hits::rss(pid)?;
    let files = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, files))
}

/// The schedule's steps, in turn.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Origin k cut off from the other two (network namespaces).
    Partition(usize),
    Proxy(usize, Fault),
    KillOrigin(usize),
    KillEdge,
    Calm,
}

fn schedule(partitions: bool) -> Vec<Step> {
    if partitions {
        return vec![
            Step::Partition(0),
            Step::Proxy(1, Fault::Latency(Duration::from_millis(500))),
            Step::KillOrigin(2),
            Step::Partition(2),
            Step::KillEdge,
            Step::Partition(1),
            Step::KillOrigin(0),
            Step::Proxy(2, Fault::Reset),
            Step::Calm,
        ];
    }
    vec![
        Step::Proxy(0, Fault::Blackhole),
        Step::Calm,
        Step::Proxy(1, Fault::Latency(Duration::from_millis(500))),
        Step::KillOrigin(2),
        Step::Proxy(2, Fault::Reset),
        Step::KillEdge,
        Step::Proxy(0, Fault::Stall { after: 100_000 }),
        Step::KillOrigin(0),
        Step::Proxy(1, Fault::Truncate { after: 50_000 }),
        Step::Calm,
    ]
}

async fn run_async(a: Args) -> Result<()> {
    println!("machine: {}", machine());
    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let net = if a.partitions {
        anyhow::ensure!(
            Path::new(FAKETIME_LIB).exists(),
            "{FAKETIME_LIB} is missing: apt-get install faketime"
        );
        Some(
            tessera_faults::netns::Netns::new(3)
                .context("network namespaces for --partitions (needs root and iproute2)")?,
        )
    } else {
        None
    };
    let host = |i: usize| net.as_ref().map_or("127.0.0.1".to_string(), |n| n.ip(i));
    let mut topo = format!(
        "replication = 2\nvnodes = 1024\ndata = {:?}\ntoken = \"chaos\"\n",
        dir.path().join("data").display().to_string()
    );
    for (i, p) in ports.iter().enumerate() {
        topo += &format!(
            "[[origin]]\nid = \"o{}\"\nlisten = \"{}:{p}\"\n",
            i + 1,
            host(i)
        );
        if net.is_some() {
            // A cut-off peer answers nothing: give up on it after 2 s, not 10.
            topo += "cluster = { call_timeout_secs = 2 }\n";
        }
    }
    let topology = dir.path().join("cluster.toml");
    std::fs::write(&topology, topo)?;
    let origin_addrs: Vec<SocketAddr> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}:{p}", host(i)).parse())
        .collect::<Result<_, _>>()?;
    let mut proxies = Vec::new();
    for addr in &origin_addrs {
        proxies.push(FaultProxy::start(*addr).await?);
    }
    let mut edge_toml = String::from("[backend]\norigin = [");
    edge_toml += &proxies
        .iter()
        .map(|p| format!("{:?}", p.url()))
        .collect::<Vec<_>>()
        .join(", ");
    edge_toml += "]\n[origin_ring]\nreplication = 2\nvnodes = 1024\n";
    for i in 0..3 {
        edge_toml += &format!("[[origin_ring.nodes]]\nid = \"o{}\"\n", i + 1);
    }
    let edge_config = dir.path().join("edge.toml");
    std::fs::write(&edge_config, edge_toml)?;
    let skew = if net.is_some() {
        vec![Some("-600s"), None, Some("+600s")]
    } else {
        vec![None; 3]
    };
    let mut nodes = Nodes {
        topology,
        addrs: origin_addrs.clone(),
        origins: vec![None, None, None],
        edge_config,
        edge_data: dir.path().join("edge"),
        edge_port: free_port(),
        edge: None,
        skew,
        net,
    };
    for i in 0..3 {
        nodes.start_origin(i)?;
    }
    for addr in &origin_addrs {
        wait_listening(*addr, "tessera origin").await?;
    }
    nodes.start_edge()?;
    let edge_addr: SocketAddr = format!("127.0.0.1:{}", nodes.edge_port).parse()?;
    wait_listening(edge_addr, "tessera edge").await?;
    let clients: Vec<OriginClient> = origin_addrs
        .iter()
        .map(|a| OriginClient::new(&format!("http://{a}"), Some("chaos".into())))
        .collect::<Result<_, _>>()?;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let edge_up = Arc::new(AtomicBool::new(true));
    let origin_up: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect());
    let counts: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    // The step in force, and the reads that failed under each (with the edge up): count and
    // the first error.
    let current = Arc::new(Mutex::new(String::from("start")));
    let failures: Arc<Mutex<std::collections::BTreeMap<String, (u64, String)>>> =
        Default::default();
    const READS: usize = 0;
    const FAILED_UP: usize = 1;
    const FAILED_DOWN: usize = 2;
    const CORRUPT: usize = 3;
    const WRITES: usize = 4;
    const ACKED: usize = 5;

    // The writer: a new version of a file, through a live origin, every 50 ms.
    let writer = {
        let (ledger, stop, origin_up, counts, clients) = (
            ledger.clone(),
            stop.clone(),
            origin_up.clone(),
            counts.clone(),
            clients.clone(),
        );
        let files = a.files;
        tokio::spawn(async move {
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let i = (v as usize * 7919) % files;
                let data = crate::run::content(&version_key(i, v), size(i, v));
                ledger
                    .lock()
                    .unwrap()
                    .tried
                    .entry(i)
                    .or_default()
                    .insert(blake3::hash(&data), v);
                let node = (0..3)
                    .map(|k| (v as usize + k) % 3)
                    .find(|k| origin_up[*k].load(Ordering::Relaxed))
                    .unwrap_or(0);
                counts[WRITES].fetch_add(1, Ordering::Relaxed);
                let put = tokio::time::timeout(
                    Duration::from_secs(10),
                    clients[node].put_bytes(&format!("chaos/f{i}.bin"), data),
                )
                .await;
                if let Ok(Ok(_)) = put {
                    counts[ACKED].fetch_add(1, Ordering::Relaxed);
                    let mut l = ledger.lock().unwrap();
                    let acked = l.acked.entry(i).or_default();
                    *acked = (*acked).max(v);
                    l.first_acked.entry(i).or_insert_with(Instant::now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Readers: any file, through the edge; every body checked.
    let readers: Vec<_> = (0..a.readers)
        .map(|r| {
            let (ledger, stop, edge_up, counts) =
                (ledger.clone(), stop.clone(), edge_up.clone(), counts.clone());
            let (current, failures) = (current.clone(), failures.clone());
            let files = a.files;
            tokio::spawn(async move {
                let opts = ClientOptions::new(Mode::Http1);
                let url = format!("http://{edge_addr}/");
                let mut conn: Option<Connection> = None;
                let mut n = r as u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let i = ((n * 2654435761) % files as u64) as usize;
                    let up = edge_up.load(Ordering::Relaxed);
                    let got = async {
                        if conn.is_none() {
                            conn = Some(Connection::connect(&url, &opts).await?);
                        }
                        let c = conn.as_mut().unwrap();
                        let resp = c.get(&format!("/chaos/f{i}.bin")).await?;
                        let status = resp.status().as_u16();
                        let body = resp.into_body().collect().await;
                        let body = body.map_err(|e| anyhow::anyhow!("body: {e}"))?.to_bytes();
                        anyhow::Ok((status, body))
                    };
                    let got = tokio::time::timeout(Duration::from_secs(30), got).await;
                    counts[READS].fetch_add(1, Ordering::Relaxed);
                    let why = match &got {
                        // An error's body names the problem (the edge's JSON).
                        Ok(Ok((s, body))) if *s >= 400 => format!(
                            "status {s}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        ),
                        Ok(Ok((s, _))) => format!("status {s}"),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer within 30 s".into(),
                    };
                    let failed = match got {
                        Ok(Ok((200, body))) => {
                            let known = ledger
                                .lock()
                                .unwrap()
                                .tried
                                .get(&i)
                                .is_some_and(|t| t.contains_key(&blake3::hash(&body)));
                            if !known {
                                counts[CORRUPT].fetch_add(1, Ordering::Relaxed);
                                eprintln!("corrupt: /chaos/f{i}.bin ({} bytes) matches no version published", body.len());
                            }
                            false
                        }
                        // Not published yet, or so lately that the change feed may not have
                        // reached the edge (a CDN serves what it learned, a feed round trip
                        // behind).
                        Ok(Ok((404, _))) => ledger
                            .lock()
                            .unwrap()
                            .first_acked
                            .get(&i)
                            .is_some_and(|t| t.elapsed() > FEED_LAG),
                        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => true,
                    };
                    if failed {
                        conn = None;
                        let slot = if up && edge_up.load(Ordering::Relaxed) { FAILED_UP } else { FAILED_DOWN };
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                        if slot == FAILED_UP {
                            let step = current.lock().unwrap().clone();
                            let mut f = failures.lock().unwrap();
                            let e = f.entry(step).or_insert((0, why));
                            e.0 += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();

    // The schedule, and a sample of every process each second.
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(a.minutes * 60.0);
    let mut samples: HashMap<String, Vec<(f64, u64, u64)>> = HashMap::new();
    let steps = schedule(a.partitions);
    let mut step = 0usize;
    let mut next_step = started + Duration::from_secs(a.period);
    let mut undo: Option<Step> = None;
    let mut log = Vec::new();
    while Instant::now() < end {
        let t = started.elapsed().as_secs_f64();
        for (name, pid) in nodes.pids() {
            if let Some((rss, files)) = sample(pid) {
                samples.entry(name).or_default().push((t, rss, files));
            }
        }
        if Instant::now() >= next_step {
            // End the last fault, start the next.
            if let Some(done) = undo.take() {
                end_step(done, &proxies, &mut nodes, &origin_up, &edge_up).await?;
            }
            let s = steps[step % steps.len()];
            step += 1;
            match s {
                Step::Partition(k) => {
                    let net = nodes.net.as_ref().context("partitions need --partitions")?;
                    for j in (0..3).filter(|&j| j != k) {
                        net.cut(k, j)?;
                    }
                }
                Step::Proxy(k, f) => proxies[k].set(f),
                Step::KillOrigin(k) => {
                    origin_up[k].store(false, Ordering::Relaxed);
                    Nodes::kill(&mut nodes.origins[k]);
                }
                Step::KillEdge => {
                    edge_up.store(false, Ordering::Relaxed);
                    Nodes::kill(&mut nodes.edge);
                }
                Step::Calm => {}
            }
            log.push(format!("{t:.0} s: {s:?}"));
            *current.lock().unwrap() = format!("{s:?}");
            undo = Some(s);
            next_step += Duration::from_secs(a.period);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    // Everything back, then the reckoning.
    if let Some(done) = undo.take() {
        end_step(done, &proxies, &mut nodes, &origin_up, &edge_up).await?;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    for r in readers {
        r.await?;
    }
    let lost = lost_writes(&ledger, &clients).await;
    let c = |k: usize| counts[k].load(Ordering::Relaxed);
    for l in &log {
        println!("{l}");
    }
    let peak = |name: &str, f: fn(&(f64, u64, u64)) -> u64| {
        samples
            .get(name)
            .map_or(0, |v| v.iter().map(f).max().unwrap_or(0))
    };
    println!();
    println!(
        "{:.1} minutes of chaos (a step every {} s: proxies blackholing, slow, resetting, stalling, \
         truncating; origins and the edge killed with -9 and restarted); 3 origins (replication \
         2), one edge through a fault proxy per origin, {} files, {} readers, a writer every 50 ms",
        a.minutes, a.period, a.files, a.readers
    );
    if a.partitions {
        println!(
            "With --partitions: the origins in network namespaces of their own, o1's clock 10 \
             minutes behind and o3's 10 minutes ahead (libfaketime), and steps that cut one \
             origin off from the other two (not from the writer, the readers or the edge)."
        );
    }
    println!(
        "| reads | failed (edge up) | failed (edge down) | corrupt | writes | acknowledged | acknowledged lost |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        c(READS),
        c(FAILED_UP),
        c(FAILED_DOWN),
        c(CORRUPT),
        c(WRITES),
        c(ACKED),
        lost.len()
    );
    for l in lost.iter().take(5) {
        println!("lost: {l}");
    }
    println!();
    println!("| step | reads failed with the edge up | first error |");
    println!("|---|---|---|");
    for (step, (n, why)) in failures.lock().unwrap().iter() {
        println!("| {step} | {n} | {why} |");
    }
    println!();
    println!("| process | peak RSS | peak open files |");
    println!("|---|---|---|");
    let mut names: Vec<&String> = samples.keys().collect();
    names.sort();
    for n in &names {
        println!(
            "| {n} | {:.0} MiB | {} |",
            peak(n, |s| s.1) as f64 / 1048576.0,
            peak(n, |s| s.2)
        );
    }
    draw(&a.plots, &samples)?;
    let pass = c(CORRUPT) == 0 && lost.is_empty();
    println!(
        "Headline: {:.1} minutes of chaos: {} reads, {} failed while the edge was up, {} corrupt \
         (must be 0), {} writes acknowledged, {} lost (must be 0); peak edge RSS {:.0} MiB: {}",
        a.minutes,
        c(READS),
        c(FAILED_UP),
        c(CORRUPT),
        c(ACKED),
        lost.len(),
        peak("edge", |s| s.1) as f64 / 1048576.0,
        if pass { "PASS" } else { "FAIL" }
    );
    drop(nodes);
    anyhow::ensure!(
        pass,
        "corrupt bodies were served or acknowledged writes were lost"
    );
    Ok(())
}

/// Ends schedule step `step`: its proxy passes bytes again, or its process is restarted
/// and listening.
async fn end_step(
    step: Step,
    proxies: &[FaultProxy],
    nodes: &mut Nodes,
    origin_up: &[AtomicBool],
    edge_up: &AtomicBool,
) -> Result<()> {
    match step {
        Step::Partition(k) => {
            let net = nodes.net.as_ref().context("partitions need --partitions")?;
            for j in (0..3).filter(|&j| j != k) {
                net.heal(k, j)?;
            }
        }
        Step::Proxy(k, _) => proxies[k].set(Fault::None),
        Step::KillOrigin(k) => {
            nodes.start_origin(k)?;
            let addr = nodes.origins[k].as_ref().expect("just started").addr;
            wait_listening(addr, "tessera origin").await?;
            origin_up[k].store(true, Ordering::Relaxed);
        }
        Step::KillEdge => {
            nodes.start_edge()?;
            let addr = nodes.edge.as_ref().expect("just started").addr;
            wait_listening(addr, "tessera edge").await?;
            edge_up.store(true, Ordering::Relaxed);
        }
        Step::Calm => {}
    }
    Ok(())
}

/// Files whose current version, as each origin node answers, is older than their last
/// acknowledged one.
async fn lost_writes(ledger: &Mutex<Ledger>, clients: &[OriginClient]) -> Vec<String> {
    let (acked, tried) = {
        let l = ledger.lock().unwrap();
        (l.acked.clone(), l.tried.clone())
    };
    let mut lost = Vec::new();
    for (i, v) in acked {
        let versions: &HashMap<blake3::Hash, u64> = &tried[&i];
        let mut seen = HashSet::new();
        for c in clients {
            let current = match c.manifest(&format!("chaos/f{i}.bin")).await {
                Ok(Some(m)) => versions.get(&blake3::Hash::from_bytes(m.blake3.0)).copied(),
                _ => None,
            };
            seen.insert(current);
        }
        if seen.iter().any(|cur| cur.is_none_or(|c| c < v)) {
            lost.push(format!(
                "chaos/f{i}.bin: acknowledged version {v}, nodes answer {seen:?}"
            ));
        }
    }
    lost
}

/// RSS and open files over time, one line per process.
fn draw(plots: &Path, samples: &HashMap<String, Vec<(f64, u64, u64)>>) -> Result<()> {
    std::fs::create_dir_all(plots)?;
    let mut names: Vec<&String> = samples.keys().collect();
    names.sort();
    let series = |f: &dyn Fn(&(f64, u64, u64)) -> f64| -> Vec<crate::plot::Series> {
        names
            .iter()
            .map(|n| crate::plot::Series {
                name: n.to_string(),
                points: samples[*n].iter().map(|s| (s.0, f(s))).collect(),
            })
            .collect()
    };
    crate::plot::line_chart(
        &plots.join("chaos-rss.svg"),
        "RSS during the chaos run",
        "seconds",
        "MiB",
        crate::plot::XAxis::Linear,
        &series(&|s| s.1 as f64 / 1048576.0),
    )?;
    crate::plot::line_chart(
        &plots.join("chaos-files.svg"),
        "Open files during the chaos run",
        "seconds",
        "open files",
        crate::plot::XAxis::Linear,
        &series(&|s| s.2 as f64),
    )?;
    Ok(())
}
