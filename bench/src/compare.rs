//! `tessera-bench compare`: one workload, in one run, against a Tessera edge (origin mode)
//! and against nginx `proxy_cache`, Varnish and Caddy in front of the same Tessera origin,
//! with the same objects and cache size (configurations in `bench/peers/*-origin*`). Each
//! figure is printed with the ratio Tessera/peer.
//!
//! Needs the release `tessera` binary next to this one; `nginx`, `varnishd` and `caddy`
//! (Debian packages `nginx-light`, `varnish`, `caddy`) are installed with apt-get when
//! missing (as root).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use clap::ValueEnum;

use crate::edge_hits::{
    Server, free_port, machine, spawn_edge_on, spawn_origin, start_caddy, start_nginx,
    start_varnish,
};
use crate::load::percentiles;
use crate::run::{self, Kind, Report};

/// Options of `tessera-bench compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload (writes go to the origin, so peers see the same objects).
    #[arg(long, value_enum, default_value = "cdn")]
    workload: Kind,
    /// Seconds per server and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds: every server in turn, this many times; each figure is a server's median round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Size scale.
    #[arg(long, default_value_t = 0.01)]
    scale: f64,
    /// Cache size of every server, MiB.
    #[arg(long, default_value_t = 256)]
    cache_mib: usize,
    /// Peers to run beside Tessera.
    #[arg(long, value_delimiter = ',', default_value = "nginx,varnish,caddy")]
    peers: Vec<String>,
    /// Protocol of the reads: `http1` (plain), `http2` (TLS, ALPN) or `http3` (QUIC). Over
    /// TLS every server uses the same certificate (the edge's development one); peers that
    /// cannot speak the protocol are left out and said so (Varnish has no TLS; Debian 12's
    /// nginx 1.22 has no HTTP/3).
    #[arg(long, default_value = "http1", value_parser = ["http1", "http2", "http3"])]
    protocol: String,
    /// The CSV trace for `--workload trace`.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Draw Tessera's charts (latency percentiles, operations per second) into this folder.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// While each server's round runs, publish this many new small files (1–16 KiB, 8 at a
    /// time, as `tessera push` does) to the same origin: reads while a site is pushed. The
    /// publisher stops when the round ends, whether or not it is done.
    #[arg(long, default_value_t = 0)]
    publish_files: usize,
    /// Publish this many small files to the origin (as `--publish-files` does) before the
    /// servers start (after a trace's objects), and give Tessera's first round a new edge
    /// started just before it: the edge starts behind a change feed backlog of that many
    /// entries (it follows the feeds from their start). Use with `--rounds 1`: later rounds
    /// find the backlog long applied.
    #[arg(long, default_value_t = 0)]
    backlog_files: usize,
}

/// Publishes up to `files` small files under `prefix`, 8 at a time, until done or `stop`;
/// returns how many were published.
async fn publisher(
    origin: String,
    prefix: String,
    files: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> usize {
    use futures_util::StreamExt;
    let Ok(client) = tessera_origin_proto::OriginClient::new(&origin, Some("bench".into())) else {
        return 0;
    };
    let puts = futures_util::stream::iter(0..files)
        .take_until({
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        })
        .map(|i| {
            let client = client.clone();
            let path = format!("{prefix}/{}/{i}.html", i % 100);
            // 1–16 KiB of text that differs per file (so it is stored, not deduplicated).
            let len = 1024 + (i * 7919) % (15 << 10);
            let body: String = format!("<p>file {i} of {prefix}</p>\n")
                .repeat(len / 24 + 1)
                .chars()
                .take(len)
                .collect();
            async move { client.put_bytes(&path, body).await.is_ok() }
        })
        .buffer_unordered(8);
    puts.filter(|ok| std::future::ready(*ok)).count().await
}

/// Why a peer cannot serve `protocol`, if it cannot.
fn unsupported(peer: &str, protocol: &str) -> Option<&'static str> {
    match (peer, protocol) {
        ("varnish", "http2" | "http3") => {
            Some("Varnish has no TLS (it needs a TLS proxy such as hitch)")
        }
        ("nginx", "http3") => Some("Debian 12's nginx 1.22 has no HTTP/3 (QUIC came in 1.25)"),
        _ => None,
    }
}

/// Starts peer `name`; `tls` is the certificate and key to serve HTTPS (and HTTP/3) with.
pub(crate) async fn start_peer(
    name: &str,
    dir: &Path,
    origin: SocketAddr,
    cache_mib: usize,
    tls: Option<(&Path, &Path)>,
) -> Result<Server> {
    let mut vars = vec![
        ("ORIGIN", origin.to_string()),
        ("ORIGIN_HOST", origin.ip().to_string()),
        ("ORIGIN_PORT", origin.port().to_string()),
    ];
    if let Some((cert, key)) = tls {
        vars.push(("CERT", cert.display().to_string()));
        vars.push(("KEY", key.display().to_string()));
    }
    let suffix = if tls.is_some() { "-tls" } else { "" };
    match name {
        "nginx" => start_nginx(dir, &format!("nginx-origin{suffix}.conf"), &vars, cache_mib).await,
        "varnish" => start_varnish(dir, "varnish-origin.vcl", &vars, cache_mib).await,
        "caddy" => {
            start_caddy(
                dir,
                &format!("Caddyfile-origin{suffix}"),
                &vars,
                free_port(),
            )
            .await
        }
        other => anyhow::bail!("unknown peer {other:?}: expected nginx, varnish or caddy"),
    }
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(2)?.block_on(run_async(a))
}

async fn run_async(a: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("machine: {}", machine());
    let origin = spawn_origin(dir.path()).await?;
    let origin_addr = origin.addr;
    let origin_url = format!("http://{origin_addr}");
    if a.backlog_files > 0 {
        // What the trace reads goes first, so the whole backlog lies between it and the edge.
        if let Some(t) = a.trace.as_ref().filter(|_| a.workload == Kind::Trace) {
            let trace = crate::workload::parse_trace(&std::fs::read_to_string(t)?)?;
            let client =
                tessera_origin_proto::OriginClient::new(&origin_url, Some("bench".into()))?;
            run::publish_objects(&client, run::trace_objects(&trace)).await?;
        }
        let started = std::time::Instant::now();
        let (_keep, never) = tokio::sync::watch::channel(false);
        let n = publisher(origin_url.clone(), "backlog".into(), a.backlog_files, never).await;
        println!(
            "{n} files published before the edge started ({:.1} s): a change feed backlog of {n} entries",
            started.elapsed().as_secs_f64()
        );
    }
    let tls = a.protocol != "http1";
    // Tessera's edge with its admin URL, its data in `folder`.
    let start_edge = |folder: &'static str| {
        let (data, origin_url) = (dir.path().join(folder), origin_url.clone());
        async move {
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let edge = spawn_edge_on(
                "tessera",
                ["--origin", &origin_url],
                data,
                a.cache_mib,
                Some(admin),
                tls,
            )
            .await?;
            anyhow::Ok((edge, Some(format!("http://{admin}"))))
        }
    };
    let edge = start_edge("edge").await?;
    let (cert, key) = (
        dir.path().join("edge/tls/dev-cert.pem"),
        dir.path().join("edge/tls/dev-key.pem"),
    );
    let mut servers = vec![edge];
    // `--peers ""`: Tessera alone.
    for p in a.peers.iter().filter(|p| !p.is_empty()) {
        if let Some(why) = unsupported(p, &a.protocol) {
            println!("{p} left out over {}: {why}", a.protocol);
            continue;
        }
        let peer_dir = dir.path().join(p);
        std::fs::create_dir_all(&peer_dir)?;
        let tls = tls.then_some((cert.as_path(), key.as_path()));
        servers.push((
            start_peer(p, &peer_dir, origin_addr, a.cache_mib, tls).await?,
            None,
        ));
    }
    let scheme = if tls { "https" } else { "http" };
    // Every server in turn, round after round, so a slow spell of this shared machine
    // falls on all of them; each server's figure is its median round.
    let mut rows: Vec<(&'static str, Vec<Report>)> =
        servers.iter().map(|(s, _)| (s.name, Vec::new())).collect();
    for round in 0..a.rounds.max(1) {
        for i in 0..servers.len() {
            if a.backlog_files > 0 && round == 0 && i == 0 {
                // A new edge (new data folder, so it follows the feeds from their start),
                // started just before its run: it is as far behind as it gets.
                servers[0] = start_edge("edge-behind").await?;
            }
            let (server, admin) = &servers[i];
            let args = run::Args {
                workload: a.workload,
                origin: origin_url.clone(),
                token: Some("bench".into()),
                edge: format!("{scheme}://{}", server.addr),
                edge_admin: admin.clone(),
                protocol: a.protocol.clone(),
                // The edge's development certificate, which every server uses here.
                insecure: tls,
                seconds: a.seconds,
                concurrency: a.concurrency,
                scale: a.scale,
                seed: 1,
                trace: a.trace.clone(),
                json: None,
                // The objects are published once, before the first run (before the backlog
                // when there is one).
                no_preload: i > 0
                    || round > 0
                    || (a.backlog_files > 0 && a.workload == Kind::Trace),
                rate: 0.0,
                plot: if i == 0 { a.plot.clone() } else { None },
            };
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let publishing = (a.publish_files > 0).then(|| {
                tokio::spawn(publisher(
                    origin_url.clone(),
                    format!("push/{round}-{}", server.name),
                    a.publish_files,
                    stopped,
                ))
            });
            let report = run::run_workload(&args).await;
            let _ = stop.send(true);
            if let Some(p) = publishing {
                let n = p.await.unwrap_or(0);
                println!(
                    "{}, round {}: {n} files published during the round",
                    server.name,
                    round + 1
                );
            }
            let report = report?;
            if round + 1 == a.rounds.max(1) {
                // The details of the last round (the table below has every round).
                println!("--- {}", server.name);
                report.print(&args);
                if let Some(dir) = &args.plot {
                    run::plot_report(&report, &args, dir)?;
                    println!("Charts of Tessera's last round: `{}`", dir.display());
                }
            }
            rows[i].1.push(report);
        }
    }
    let rps = |r: &Report| r.reads.ops as f64 / r.secs;
    // The median round of each server, by reads/s.
    let median = |reports: &[Report]| -> usize {
        let mut idx: Vec<usize> = (0..reports.len()).collect();
        idx.sort_by(|&x, &y| rps(&reports[x]).total_cmp(&rps(&reports[y])));
        idx[idx.len() / 2]
    };
    let name = a
        .workload
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    println!();
    println!(
        "{name}, {} clients, {} rounds of {} s per server (servers in turn), scale {}, reads over {}: \
         reads through each server, writes to the origin; each figure is the server's median round{}",
        a.concurrency,
        a.rounds.max(1),
        a.seconds,
        a.scale,
        a.protocol,
        if a.publish_files > 0 {
            format!(
                "; a publisher pushed up to {} small files to the origin during every round",
                a.publish_files
            )
        } else {
            String::new()
        }
    );
    println!(
        "| server | reads/s | every round | read p50 | read p99 | read errors | Tessera / server (reads/s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let tessera_rps = rps(&rows[0].1[median(&rows[0].1)]);
    let mut ratios = Vec::new();
    for (server, reports) in &rows {
        let m = &reports[median(reports)];
        let p = percentiles(&m.reads.hist);
        let every: Vec<String> = reports.iter().map(|r| format!("{:.0}", rps(r))).collect();
        let errors: u64 = reports.iter().map(|r| r.reads.errors).sum();
        let ratio = tessera_rps / rps(m).max(1e-9);
        println!(
            "| {server} | {:.0} | {} | {:.2} ms | {:.2} ms | {errors} | x{ratio:.2} |",
            rps(m),
            every.join(", "),
            p[0],
            p[2],
        );
        if *server != "tessera" {
            ratios.push(format!("x{ratio:.2} {server}"));
        }
    }
    if a.workload == Kind::Trace {
        // Open loop: every server gets the trace's rate; latency is the figure.
        let lat: Vec<String> = rows
            .iter()
            .map(|(server, reports)| {
                let p = percentiles(&reports[median(reports)].reads.hist);
                format!("{server} {:.2} / {:.2} ms", p[0], p[2])
            })
            .collect();
        println!(
            "Headline: a trace replayed at its own times over {}{}, read p50 / p99: {}",
            a.protocol,
            match (a.publish_files, a.backlog_files) {
                (0, 0) => String::new(),
                (0, n) => format!(" by an edge started behind a feed backlog of {n} changes"),
                _ => " while small files are pushed to the origin".into(),
            },
            lat.join(", ")
        );
    } else {
        println!(
            "Headline: {name} over {}, {tessera_rps:.0} reads/s through Tessera{}{}",
            a.protocol,
            if ratios.is_empty() { "" } else { ": " },
            ratios.join(", ")
        );
    }
    drop(servers);
    drop(origin);
    Ok(())
}
