//! `tessera-bench http3`: memory hits of a 1 KiB and a 1 MiB object over HTTP/1.1, HTTP/2
//! and HTTP/3 from one Tessera edge, beside Caddy (Debian package `caddy`, which serves
//! HTTP/3) serving the same bytes from files, in one run; then single 100 MiB downloads
//! over HTTP/3 with the QUIC settings the edge could use, to choose its defaults.
//!
//! Every protocol is loaded by the same client (`load.rs`: hyper, and quinn + h3) with the
//! same connections and duration; the HTTP/1.1 cleartext figure is also taken with `wrk`
//! for comparison with `edge-hits`. With `--oha PATH` (`cargo install oha --features
//! http3`), oha's HTTP/3 figures are printed beside ours as an independent client.
//!
//! Needs the release `tessera` binary next to this one, `caddy`, and `wrk`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use tessera_edge::client::{ClientOptions, Mode};

use crate::edge_hits::{Server, free_port, machine, start_caddy, tessera_exe, upstream};
use crate::load::{LoadResult, closed_loop, download};

/// Options of `tessera-bench http3`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per load run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections per load run.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests in flight per HTTP/2 or HTTP/3 connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// 100 MiB downloads per QUIC setting.
    #[arg(long, default_value_t = 3)]
    downloads: usize,
    /// oha built with HTTP/3 (`cargo install oha --features http3`), for a cross-check.
    #[arg(long)]
    oha: Option<PathBuf>,
    /// Skip Caddy.
    #[arg(long)]
    no_caddy: bool,
}

/// A TCP port whose UDP twin is free too (HTTP/3 shares the HTTPS port).
fn free_tcp_udp_port() -> u16 {
    loop {
        let p = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A release `tessera edge` in front of `up` with HTTP on one port and HTTPS + HTTP/3 on
/// another; `quic` is the `[quic]` table of its configuration.
fn start_edge(dir: &Path, name: &str, up: SocketAddr, quic: &str) -> Result<(Server, u16, u16)> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let config = data.join("edge.toml");
    std::fs::write(&config, format!("[quic]\n{quic}\n"))?;
    let (http, https) = (free_port(), free_tcp_udp_port());
    let mut child = Command::new(tessera_exe()?)
        .arg("edge")
        .args(["--upstream", &format!("http://{up}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--https", &format!("127.0.0.1:{https}")])
        .args(["--memory", "512MiB", "--disk", "1GiB", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tessera edge")?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HTTP/3 on udp://") {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            bail!("tessera edge exited before listening");
        }
    }
    let addr = format!("127.0.0.1:{http}").parse()?;
    Ok((
        Server {
            name: "tessera",
            addr,
            child,
        },
        http,
        https,
    ))
}

/// Caddy serving `site` over HTTPS and HTTP/3 with the edge's certificate.
async fn start_site_caddy(
    dir: &Path,
    site: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(Server, u16)> {
    let port = free_tcp_udp_port();
    let dir = dir.join("caddy");
    std::fs::create_dir_all(&dir)?;
    let vars = [
        ("SITE", site.display().to_string()),
        ("CERT", cert.display().to_string()),
        ("KEY", key.display().to_string()),
    ];
    Ok((start_caddy(&dir, "Caddyfile", &vars, port).await?, port))
}

fn options(mode: Mode, port: u16) -> ClientOptions {
    let mut o = ClientOptions::new(mode);
    o.insecure = true;
    o.connect_to = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    o
}

/// oha's HTTP/3 requests/s for `url` (JSON output).
fn oha(exe: &Path, url: &str, a: &Args) -> Result<f64> {
    let out = Command::new(exe)
        .args([
            "--http-version",
            "3",
            "--insecure",
            "--no-tui",
            "--output-format",
            "json",
        ])
        .args(["-c", &a.connections.to_string()])
        .args(["-z", &format!("{}s", a.seconds)])
        .arg(url)
        .output()
        .context("running oha")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("oha's output: {}", String::from_utf8_lossy(&out.stderr)))?;
    v["summary"]["requestsPerSec"]
        .as_f64()
        .context("oha printed no requestsPerSec")
}

/// One closed-loop run, printed; the row for the summary table.
async fn measure(
    name: &str,
    url: &str,
    path: &str,
    opts: &ClientOptions,
    a: &Args,
) -> Result<(String, String, LoadResult)> {
    let r = closed_loop(url, path, opts, a.connections, a.streams, a.seconds).await?;
    println!("{}", r.line(name, path));
    Ok((name.to_string(), path.to_string(), r))
}

/// The best rate of `n` downloads of `/100m`, bytes/s.
async fn best_download(url: &str, opts: &ClientOptions, n: usize) -> Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..n {
        let (bytes, secs) = download(url, "/100m", opts).await?;
        best = best.max(bytes as f64 / secs);
    }
    Ok(best)
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(2)?.block_on(run_async(a))
}

async fn run_async(a: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let up = upstream().await?;
    println!("machine: {}", machine());
    println!(
        "closed loop, {} connections x {} stream(s), {} s per run, memory hits",
        a.connections, a.streams, a.seconds
    );
    let (edge, http, https) = start_edge(dir.path(), "tessera", up, "")?;
    let tls_url = format!("https://localhost:{https}/");
    let plain_url = format!("http://127.0.0.1:{http}/");
    for path in ["/1k", "/1m", "/100m"] {
        for _ in 0..2 {
            download(&plain_url, path, &options(Mode::Http1, http)).await?;
        }
    }
    // The same bytes as files, for Caddy.
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("1k"), vec![b'a'; 1024])?;
    std::fs::write(site.join("1m"), vec![b'b'; 1 << 20])?;
    std::fs::write(site.join("100m"), vec![b'c'; 100 << 20])?;

    let mut rows: Vec<(String, String, LoadResult)> = Vec::new();
    let runs: [(&str, Mode, &str); 4] = [
        ("tessera http/1.1", Mode::Http1, &plain_url),
        ("tessera http/1.1+tls", Mode::Http1, &tls_url),
        ("tessera h2", Mode::Http2, &tls_url),
        ("tessera h3", Mode::Http3, &tls_url),
    ];
    let mut wrk_rps = Vec::new();
    for path in ["/1k", "/1m"] {
        let w = crate::edge_hits::wrk_with(
            &format!("http://127.0.0.1:{http}{path}"),
            a.connections,
            a.seconds,
        )?;
        println!(
            "{:24} {path}: {:>9.0} req/s {:>8.1} MB/s p99 {:.2} ms",
            "tessera http/1.1 (wrk)",
            w.rps,
            w.bytes_per_sec / 1e6,
            w.p99_ms
        );
        wrk_rps.push(w.rps);
        for (name, mode, url) in runs {
            let port = if *url == plain_url { http } else { https };
            rows.push(measure(name, url, path, &options(mode, port), &a).await?);
        }
    }
    // 100 MiB over HTTP/3 with the edge's defaults, and the client's receive windows at
    // quinn's defaults (1.25 MB per stream) and at ours (16 MiB per stream, 64 MiB total).
    let mut downloads = Vec::new();
    let quinn_default = {
        let mut o = options(Mode::Http3, https);
        o.quic.stream_window_bytes = 1_250_000;
        o.quic.connection_window_bytes = u32::MAX;
        o
    };
    let ours = options(Mode::Http3, https);
    for (name, o) in [
        ("h3, client windows 1.25 MB (quinn default)", &quinn_default),
        ("h3, client windows 16/64 MiB", &ours),
        ("h2, client windows 4/16 MiB", &options(Mode::Http2, https)),
    ] {
        let best = best_download(&tls_url, o, a.downloads).await?;
        println!(
            "tessera 100 MiB, {name}: best of {} {:.0} MB/s",
            a.downloads,
            best / 1e6
        );
        downloads.push((format!("tessera, {name}"), best));
    }
    drop(edge);
    // The edge's QUIC settings, one changed at a time from the defaults, each on a fresh
    // edge: what each costs or buys a single 100 MiB download.
    let sweep: [(&str, &str); 6] = [
        ("edge defaults", ""),
        ("send_window_bytes = 4 MiB", "send_window_bytes = 4194304"),
        ("send_window_bytes = 64 MiB", "send_window_bytes = 67108864"),
        (
            "segmentation_offload = false",
            "segmentation_offload = false",
        ),
        (
            "socket_buffer_bytes = 208 KiB",
            "socket_buffer_bytes = 212992",
        ),
        ("max_mtu = 65527 (both ends)", "max_mtu = 65527"),
    ];
    for (i, (label, toml)) in sweep.iter().enumerate() {
        let (edge, _, port) = start_edge(dir.path(), &format!("tessera-sweep{i}"), up, toml)?;
        let url = format!("https://localhost:{port}/");
        download(&url, "/100m", &options(Mode::Http1, port)).await?;
        let mut o = options(Mode::Http3, port);
        if toml.starts_with("max_mtu") {
            o.quic.max_mtu = 65527;
        }
        if toml.starts_with("socket_buffer") {
            o.quic.socket_buffer_bytes = 212992;
        }
        let best = best_download(&url, &o, a.downloads).await?;
        println!(
            "tessera 100 MiB, h3, {label}: best of {} {:.0} MB/s",
            a.downloads,
            best / 1e6
        );
        downloads.push((format!("tessera, h3, {label}"), best));
        drop(edge);
    }

    let mut oha_rps = Vec::new();
    if !a.no_caddy {
        let cert = dir.path().join("tessera/tls/dev-cert.pem");
        let key = dir.path().join("tessera/tls/dev-key.pem");
        let (caddy, port) = start_site_caddy(dir.path(), &site, &cert, &key).await?;
        let url = format!("https://localhost:{port}/");
        for path in ["/1k", "/1m"] {
            for (name, mode) in [("caddy h2", Mode::Http2), ("caddy h3", Mode::Http3)] {
                rows.push(measure(name, &url, path, &options(mode, port), &a).await?);
            }
        }
        let best = best_download(&url, &options(Mode::Http3, port), a.downloads).await?;
        println!(
            "caddy 100 MiB, h3: best of {} {:.0} MB/s",
            a.downloads,
            best / 1e6
        );
        downloads.push(("caddy, h3".into(), best));
        if let Some(exe) = &a.oha {
            oha_rps.push(("caddy", oha(exe, &format!("{url}1k"), &a)?));
        }
        drop(caddy);
    }
    if let Some(exe) = &a.oha {
        let (edge, _, https) = start_edge(dir.path(), "tessera-oha", up, "")?;
        let url = format!("https://localhost:{https}/1k");
        download(&url, "/1k", &options(Mode::Http1, https)).await?;
        oha_rps.push(("tessera", oha(exe, &url, &a)?));
        drop(edge);
    }

    println!();
    println!("| server, protocol | 1 KiB req/s | 1 KiB p99 | 1 MiB MB/s | 1 MiB p99 |");
    println!("|---|---|---|---|---|");
    let find = |name: &str, path: &str| {
        rows.iter()
            .find(|(n, p, _)| n == name && p == path)
            .map(|(_, _, r)| r)
    };
    let mut names: Vec<&String> = Vec::new();
    for (n, _, _) in &rows {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    for name in names {
        let (Some(k), Some(m)) = (find(name, "/1k"), find(name, "/1m")) else {
            continue;
        };
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.0} | {:.2} ms |",
            k.rps(),
            k.ms(0.99),
            m.bytes_per_sec() / 1e6,
            m.ms(0.99)
        );
    }
    println!(
        "| tessera http/1.1 (wrk) | {:.0} | | | |",
        wrk_rps.first().copied().unwrap_or(0.0)
    );
    println!();
    println!("| 100 MiB download | MB/s |");
    println!("|---|---|");
    for (name, bps) in &downloads {
        println!("| {name} | {:.0} |", bps / 1e6);
    }
    for (name, rps) in &oha_rps {
        println!(
            "oha --http-version 3 -c {} -z {}s, {name} /1k: {rps:.0} req/s",
            a.connections, a.seconds
        );
    }
    println!();
    let ratio =
        |a: Option<&LoadResult>, b: Option<&LoadResult>, f: fn(&LoadResult) -> f64| match (a, b) {
            (Some(a), Some(b)) if f(b) > 0.0 => format!("x{:.2}", f(a) / f(b)),
            _ => "n/a".into(),
        };
    println!(
        "goal: tessera h3 1 KiB req/s >= 0.6x its http/1.1: {} (our client), {} (vs wrk)",
        ratio(
            find("tessera h3", "/1k"),
            find("tessera http/1.1", "/1k"),
            LoadResult::rps
        ),
        find("tessera h3", "/1k")
            .map(|r| format!("x{:.2}", r.rps() / wrk_rps[0]))
            .unwrap_or_default()
    );
    println!(
        "Headline: 1 KiB memory hits over HTTP/3 at {} its own HTTP/1.1 rate and {} Caddy's HTTP/3; \
         best 100 MiB download over HTTP/3 {:.0} MB/s",
        ratio(
            find("tessera h3", "/1k"),
            find("tessera http/1.1", "/1k"),
            LoadResult::rps
        ),
        ratio(
            find("tessera h3", "/1k"),
            find("caddy h3", "/1k"),
            LoadResult::rps
        ),
        downloads
            .iter()
            .filter(|(n, _)| n.contains("h3") && !n.contains("caddy"))
            .map(|(_, b)| b / 1e6)
            .fold(0.0, f64::max)
    );
    println!(
        "goal: tessera h3 >= 10x caddy h3: 1 KiB {}, 1 MiB {}",
        ratio(
            find("tessera h3", "/1k"),
            find("caddy h3", "/1k"),
            LoadResult::rps
        ),
        ratio(
            find("tessera h3", "/1m"),
            find("caddy h3", "/1m"),
            LoadResult::bytes_per_sec
        )
    );
    Ok(())
}
