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

use crate::edge_hits::{
    Server, free_port, machine, spawn_edge, spawn_origin, start_caddy, start_nginx, start_varnish,
};
use crate::load::percentiles;
use crate::run::{self, Kind, Report};

/// Options of `tessera-bench compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload (writes go to the origin, so peers see the same objects).
    #[arg(long, value_enum, default_value = "cdn")]
    workload: Kind,
    /// Seconds per server.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
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
}

async fn start_peer(
    name: &str,
    dir: &Path,
    origin: SocketAddr,
    cache_mib: usize,
) -> Result<Server> {
    let vars = [
        ("ORIGIN", origin.to_string()),
        ("ORIGIN_HOST", origin.ip().to_string()),
        ("ORIGIN_PORT", origin.port().to_string()),
    ];
    match name {
        "nginx" => start_nginx(dir, "nginx-origin.conf", &vars, cache_mib).await,
        "varnish" => start_varnish(dir, "varnish-origin.vcl", &vars, cache_mib).await,
        "caddy" => start_caddy(dir, "Caddyfile-origin", &vars, free_port()).await,
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
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let edge = spawn_edge(
        "tessera",
        ["--origin", &origin_url],
        dir.path().join("edge"),
        a.cache_mib,
        Some(admin),
    )
    .await?;
    let mut servers = vec![(edge, Some(format!("http://{admin}")))];
    for p in &a.peers {
        let peer_dir = dir.path().join(p);
        std::fs::create_dir_all(&peer_dir)?;
        servers.push((
            start_peer(p, &peer_dir, origin_addr, a.cache_mib).await?,
            None,
        ));
    }
    let mut rows: Vec<(&'static str, Report)> = Vec::new();
    for (i, (server, admin)) in servers.iter().enumerate() {
        let args = run::Args {
            workload: a.workload,
            origin: origin_url.clone(),
            token: Some("bench".into()),
            edge: format!("http://{}", server.addr),
            edge_admin: admin.clone(),
            protocol: "http1".into(),
            insecure: false,
            seconds: a.seconds,
            concurrency: a.concurrency,
            scale: a.scale,
            seed: 1,
            trace: None,
            json: None,
            // The objects are published once, before the first server's run.
            no_preload: i > 0,
            rate: 0.0,
            plot: None,
        };
        let report = run::run_workload(&args).await?;
        println!("--- {}", server.name);
        report.print(&args);
        rows.push((server.name, report));
    }
    println!();
    println!(
        "{:?}, {} clients, {} s each, scale {}: reads through each server, writes to the origin",
        a.workload, a.concurrency, a.seconds, a.scale
    );
    println!(
        "| server | reads/s | read p50 | read p99 | read errors | Tessera / server (reads/s) |"
    );
    println!("|---|---|---|---|---|---|");
    let tessera_rps = rows[0].1.reads.ops as f64 / rows[0].1.secs;
    for (name, r) in &rows {
        let rps = r.reads.ops as f64 / r.secs;
        let p = percentiles(&r.reads.hist);
        println!(
            "| {name} | {rps:.0} | {:.2} ms | {:.2} ms | {} | x{:.2} |",
            p[0],
            p[2],
            r.reads.errors,
            tessera_rps / rps.max(1e-9)
        );
    }
    drop(servers);
    drop(origin);
    Ok(())
}
