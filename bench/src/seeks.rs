//! `tessera-bench seeks`: reads at random offsets of a large object nobody asked for before,
//! as a video player's seeks are, through Tessera's upstream-mode edge (slices of 1 MiB, its
//! default) and nginx's `proxy_cache` with its slice module (`slice 1m`), in front of the
//! same upstream: nginx serving the file from disk. With `--no-slices`, also an edge with
//! slices off (`slice_bytes = 0`: a range miss fetches the whole object, as before).
//!
//! Each seek asks both servers in turn for the same range (`--read-kib` from a seeded random
//! offset): a cold pass over all the seeks, then a warm pass over the same ones. The edge with
//! slices off runs after them, alone, on the first `--seeks-without` seeks (it keeps
//! fetching whole objects in the background, which would take the others' CPU). The upstream
//! listens on one port per front server and logs each response's body bytes, so the bytes
//! each front fetched are counted by the upstream itself.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use http_body_util::BodyExt;
use rand::{RngExt, SeedableRng};
use tessera_edge::client::{ClientOptions, Connection, Mode};

use crate::edge_hits::{Server, free_port, machine, spawn_edge_with, start_nginx};

/// Options of `tessera-bench seeks`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the object, MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Seeks: random offsets, each read by every server, cold then warm.
    #[arg(long, default_value_t = 200)]
    seeks: usize,
    /// Bytes read at each offset, KiB.
    #[arg(long, default_value_t = 256)]
    read_kib: u64,
    /// Also run an edge with slices off (it fetches the whole object on the first seek).
    #[arg(long)]
    no_slices: bool,
    /// Seeks of the edge with slices off.
    #[arg(long, default_value_t = 20)]
    seeks_without: usize,
    /// Seed of the offsets.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(2)?.block_on(run_async(a))
}

/// Writes `mib` MiB of seeded random bytes to `path`, a MiB at a time.
fn write_object(path: &Path, mib: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..mib {
        f.write_all(&crate::run::content(&format!("seeks-{i}"), 1 << 20))?;
    }
    f.flush()?;
    Ok(())
}

/// A `tessera edge --upstream URL` on a free port with 512 MiB of memory and 2 GiB of SSD
/// tier, its data in `data`, `toml` its configuration file.
async fn spawn_edge(upstream: &str, data: &Path, toml: &str) -> Result<Server> {
    std::fs::create_dir_all(data)?;
    let config = data.join("edge.toml");
    std::fs::write(&config, toml)?;
    let backend = ["--upstream", upstream];
    spawn_edge_with(
        "tessera",
        backend,
        data.to_path_buf(),
        [512, 2048],
        None,
        false,
        Some(&config),
    )
    .await
}

/// Seconds to the last byte of `len` bytes from `offset` of `path`, checked against
/// `object`.
async fn read_range(
    conn: &mut Connection,
    path: &str,
    offset: u64,
    len: u64,
    object: &[u8],
) -> Result<f64> {
    let started = Instant::now();
    let req = http::Request::get(path)
        .header("range", format!("bytes={offset}-{}", offset + len - 1))
        .body(bytes::Bytes::new())?;
    let resp = conn.send(req).await?;
    if resp.status() != http::StatusCode::PARTIAL_CONTENT {
        bail!("status {} for a range", resp.status());
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("body: {e}"))?
        .to_bytes();
    let t = started.elapsed().as_secs_f64();
    if body[..] != object[offset as usize..(offset + len) as usize] {
        bail!("wrong bytes for the range at {offset}");
    }
    Ok(t)
}

/// Body bytes the upstream sent, by the port it was asked on.
fn upstream_bytes(log: &Path) -> Result<HashMap<u16, u64>> {
    let mut by_port = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [port, _status, bytes] = f[..] {
            *by_port.entry(port.parse()?).or_default() += bytes.parse::<u64>()?;
        }
    }
    Ok(by_port)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn run_async(a: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("machine: {}", machine());
    let root = dir.path().join("files");
    std::fs::create_dir_all(&root)?;
    let size = a.mib << 20;
    println!("writing a {} MiB object of seeded random bytes", a.mib);
    write_object(&root.join("video.bin"), a.mib)?;
    let object = std::fs::read(root.join("video.bin"))?;

    // The upstream: one port per front, so its log counts each front's bytes.
    let up_dir = dir.path().join("upstream");
    std::fs::create_dir_all(&up_dir)?;
    let ports = [free_port(), free_port()];
    let vars = [
        ("PORT2", ports[0].to_string()),
        ("PORT3", ports[1].to_string()),
        ("ROOT", root.display().to_string()),
    ];
    let upstream = start_nginx(&up_dir, "nginx-files.conf", &vars, 0).await?;
    let upstream_ports = [upstream.addr.port(), ports[0], ports[1]];
    let url = |port: u16| format!("http://127.0.0.1:{port}");

    let mut servers: Vec<(&str, Server, u16)> = Vec::new();
    let edge = spawn_edge(
        &url(upstream_ports[0]),
        &dir.path().join("edge"),
        "slice_bytes = \"1MiB\"\n",
    )
    .await?;
    servers.push(("tessera (slices of 1 MiB)", edge, upstream_ports[0]));
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let origin = [("ORIGIN", format!("127.0.0.1:{}", upstream_ports[1]))];
    let nginx = start_nginx(&nginx_dir, "nginx-slice.conf", &origin, 2048).await?;
    servers.push(("nginx (slice 1m)", nginx, upstream_ports[1]));
    if a.no_slices {
        let whole = spawn_edge(
            &url(upstream_ports[2]),
            &dir.path().join("edge-whole"),
            "slice_bytes = 0\nmax_object_bytes = \"2GiB\"\n",
        )
        .await?;
        servers.push(("tessera (slices off)", whole, upstream_ports[2]));
    }

    let read = a.read_kib << 10;
    anyhow::ensure!(read <= size, "--read-kib is larger than the object");
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let offsets: Vec<u64> = (0..a.seeks)
        .map(|_| rng.random_range(0..=size - read))
        .collect();
    let opts = ClientOptions::new(Mode::Http1);
    let log = up_dir.join("upstream-access.log");
    let mut times = vec![[Vec::new(), Vec::new()]; servers.len()];
    let mut fetched = vec![[0u64; 2]; servers.len()];
    // Tessera and nginx take turns per seek; the edge without slices runs alone after them.
    let groups: Vec<(std::ops::Range<usize>, usize)> = if a.no_slices {
        vec![(0..2, a.seeks), (2..3, a.seeks_without.min(a.seeks))]
    } else {
        vec![(0..2, a.seeks)]
    };
    for (group, seeks) in groups {
        let mut conns = Vec::new();
        for (_, s, _) in &servers[group.clone()] {
            conns.push(Connection::connect(&format!("http://{}/", s.addr), &opts).await?);
        }
        for pass in 0..2 {
            for &o in &offsets[..seeks] {
                for (i, conn) in group.clone().zip(conns.iter_mut()) {
                    let t = read_range(conn, "/video.bin", o, read, &object).await?;
                    times[i][pass].push(t);
                }
            }
            let sent = upstream_bytes(&log)?;
            for i in group.clone() {
                let before: u64 = fetched[i][..pass].iter().sum();
                fetched[i][pass] = sent.get(&servers[i].2).copied().unwrap_or(0) - before;
            }
        }
    }

    // Fetches still under way (an edge without slices goes on fetching whole objects) are
    // logged by the upstream once their front is gone.
    let ports: Vec<u16> = servers.iter().map(|s| s.2).collect();
    let names: Vec<&str> = servers.iter().map(|s| s.0).collect();
    drop(servers);
    let mut total = upstream_bytes(&log)?;
    for _ in 0..25 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = upstream_bytes(&log)?;
        if now == total {
            break;
        }
        total = now;
    }
    println!();
    println!(
        "{} seeks, each a {} KiB range at a random offset of a {} MiB object, over HTTP/1.1, \
         the first two servers in turn per seek (the third alone after them, on the first \
         {} seeks); a cold pass, then the same seeks again",
        a.seeks, a.read_kib, a.mib, a.seeks_without
    );
    println!(
        "| server | seeks | cold p50 | cold p99 | warm p50 | warm p99 | upstream bytes, cold pass | per seek | warm pass | in all, once stopped |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let ms = |s: f64| format!("{:.2} ms", s * 1e3);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    for (i, name) in names.iter().enumerate() {
        let [cold, warm] = &times[i];
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cold.len(),
            ms(quantile(cold, 0.5)),
            ms(quantile(cold, 0.99)),
            ms(quantile(warm, 0.5)),
            ms(quantile(warm, 0.99)),
            mib(fetched[i][0]),
            mib(fetched[i][0] / cold.len() as u64),
            mib(fetched[i][1]),
            mib(total.get(&ports[i]).copied().unwrap_or(0)),
        );
    }
    let (t, n) = (&times[0], &times[1]);
    println!(
        "Headline: seeks into a cold {} MiB object through Tessera, time against nginx slice 1m: \
         cold p50 x{:.2}, cold p99 x{:.2}, warm p50 x{:.2}; upstream bytes x{:.2}",
        a.mib,
        quantile(&t[0], 0.5) / quantile(&n[0], 0.5),
        quantile(&t[0], 0.99) / quantile(&n[0], 0.99),
        quantile(&t[1], 0.5) / quantile(&n[1], 0.5),
        fetched[0][0] as f64 / fetched[1][0].max(1) as f64,
    );
    drop(upstream);
    Ok(())
}
