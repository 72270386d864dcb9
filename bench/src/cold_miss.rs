//! `tessera-bench cold-miss`: the time to the last byte of a large object nobody asked for
//! before, through a Tessera edge in origin mode (manifest, then chunks in streamed batches,
//! each checked) against nginx `proxy_cache` and Varnish in front of the same origin (the
//! origin's plain file `GET`), and that `GET` straight from the origin as the floor.
//!
//! Every server gets objects of its own, so each request is a cold miss: distinct random
//! bytes (no chunk is shared between them, so the edge's content addressing cannot help),
//! published before the first round. Servers take turns, round after round; each figure is
//! a server's median round.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Result;
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tessera_origin_proto::OriginClient;

use crate::edge_hits::{Server, free_port, machine, spawn_edge_on, spawn_origin};

/// Options of `tessera-bench cold-miss`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of each object, MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Rounds: every server in turn, this many times.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Cache size of every server, MiB (larger than the objects: a miss is stored).
    #[arg(long, default_value_t = 1024)]
    cache_mib: usize,
    /// Peers to run beside Tessera.
    #[arg(long, value_delimiter = ',', default_value = "nginx,varnish")]
    peers: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(2)?.block_on(run_async(a))
}

/// Seconds to the last byte of `path` through `addr`, checking its length.
async fn fetch(addr: SocketAddr, path: &str, size: u64) -> Result<f64> {
    let opts = ClientOptions::new(Mode::Http1);
    let mut conn = Connection::connect(&format!("http://{addr}/"), &opts).await?;
    let started = Instant::now();
    crate::run::get_whole(&mut conn, path, Some(size)).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn run_async(a: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("machine: {}", machine());
    let origin = spawn_origin(dir.path()).await?;
    let origin_url = format!("http://{}", origin.addr);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let edge = spawn_edge_on(
        "tessera",
        ["--origin", &origin_url],
        dir.path().join("edge"),
        a.cache_mib,
        Some(admin),
        false,
    )
    .await?;
    // (name, address, path prefix): the origin's own GET serves /api/v1/files/.
    let mut servers: Vec<(&'static str, SocketAddr, &'static str, Option<Server>)> =
        vec![("tessera", edge.addr, "/", Some(edge))];
    for p in &a.peers {
        let peer_dir = dir.path().join(p);
        std::fs::create_dir_all(&peer_dir)?;
        let s = crate::compare::start_peer(p, &peer_dir, origin.addr, a.cache_mib, None).await?;
        servers.push((s.name, s.addr, "/", Some(s)));
    }
    servers.push(("origin GET", origin.addr, "/api/v1/files/", None));

    let size = (a.mib as u64) << 20;
    let client = OriginClient::new(&origin_url, Some("bench".into()))?;
    let rounds = a.rounds.max(1);
    println!(
        "publishing {} objects of {} MiB (distinct random bytes)",
        rounds * servers.len(),
        a.mib
    );
    for r in 0..rounds {
        for i in 0..servers.len() {
            let key = format!("cold/{r}-{i}.bin");
            client
                .put_bytes(&key, crate::run::content(&key, size))
                .await?;
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for r in 0..rounds {
        for (i, (name, addr, prefix, _)) in servers.iter().enumerate() {
            let path = format!("{prefix}cold/{r}-{i}.bin");
            let t = fetch(*addr, &path, size).await?;
            println!("round {r}: {name} {t:.3} s");
            times[i].push(t);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    println!(
        "cold miss of a {} MiB object, time to the last byte over HTTP/1.1, {rounds} rounds \
         per server (servers in turn); each figure is the server's median round",
        a.mib
    );
    println!("| server | time to last byte | every round (s) | MB/s | Tessera / server (time) |");
    println!("|---|---|---|---|---|");
    let tessera = median(&times[0]);
    let mut ratios = Vec::new();
    for ((name, ..), t) in servers.iter().zip(&times) {
        let m = median(t);
        let every: Vec<String> = t.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "| {name} | {m:.3} s | {} | {:.0} | x{:.2} |",
            every.join(", "),
            size as f64 / m / 1e6,
            tessera / m
        );
        if *name != "tessera" {
            ratios.push(format!("x{:.2} {name}", tessera / m));
        }
    }
    println!(
        "Headline: cold miss of {} MiB through Tessera in {tessera:.3} s to the last byte, \
         time against: {}",
        a.mib,
        ratios.join(", ")
    );
    drop(servers);
    drop(origin);
    Ok(())
}
