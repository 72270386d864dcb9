//! `tessera-bench edge-hits`: memory hits of a 1 KiB and a 1 MiB object over HTTP/1.1,
//! Tessera's edge side by side with nginx `proxy_cache` and Varnish, in one run.
//!
//! All three front the same upstream (a small HTTP server inside this process that answers
//! with `Cache-Control: public, max-age=3600`), are warmed so every measured request is a
//! hit, and are loaded by `wrk -t2 -c64 -d10s` (peak throughput) and then by an open-loop
//! generator at half of each one's own peak, whose latencies count from the intended send
//! time (so queueing is not hidden). Peers' configurations are in `bench/peers/`.
//!
//! Needs `wrk`, `nginx` and `varnishd` (Debian packages `wrk`, `nginx-light`, `varnish`,
//! installed with apt-get when missing, as root) and the release `tessera` binary next to this one
//! (`cargo build --release -p tessera-topology -p tessera-bench`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;

/// Options of `tessera-bench edge-hits`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Cache size given to every server, MiB.
    #[arg(long, default_value_t = 256)]
    cache_mib: usize,
    /// Skip the open-loop latency runs.
    #[arg(long)]
    no_latency: bool,
}

pub(crate) struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub child: Child,
}

impl Drop for Server {
    /// SIGTERM first, so a master process (nginx, varnishd) stops its workers; SIGKILL after
    /// 5 s. A bare SIGKILL of nginx's master leaves its workers running.
    fn drop(&mut self) {
        // The shell's own `kill` (procps may be missing).
        sh_ok(&format!("kill -TERM {}", self.child.id()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set of process `pid`, bytes (from `/proc`).
pub(crate) fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves HTTP/1.1 on a new port of 127.0.0.1, answering every request with `answer`,
/// until the runtime ends.
pub(crate) async fn serve_http1<F>(answer: F) -> Result<SocketAddr>
where
    F: Fn(&hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>>
        + Send
        + Sync
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        std::future::ready(Ok::<_, Infallible>(answer(&req)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The upstream every server fronts: `/1k`, `/1m` and `/100m`, cacheable for an hour.
pub(crate) async fn upstream() -> Result<SocketAddr> {
    // Incompressible bytes, as real media is: a file of one repeated byte is one chunk
    // repeated, which flatters origin mode (and any server that compresses).
    let small = crate::run::content("1k", 1024);
    let big = crate::run::content("1m", 1 << 20);
    let huge = crate::run::content("100m", 100 << 20);
    serve_http1(move |req| {
        let body = match req.uri().path() {
            "/1m" => big.clone(),
            "/100m" => huge.clone(),
            _ => small.clone(),
        };
        hyper::Response::builder()
            .header("cache-control", "public, max-age=3600")
            .header("content-type", "application/octet-stream")
            .header("etag", "\"v1\"")
            .body(Full::new(body))
            .unwrap()
    })
    .await
}

pub(crate) fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

pub(crate) fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

pub(crate) async fn wait_listening(addr: SocketAddr, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("{name} did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The `tessera` binary built next to this one.
pub(crate) fn tessera_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("tessera");
    if !exe.exists() {
        bail!(
            "{} is missing: build it with cargo build --release -p tessera-topology",
            exe.display()
        );
    }
    Ok(exe)
}

/// A `tessera edge` with `backend` (`--upstream URL` or `--origin URL`), its data in
/// `data`, on a free port; with `admin`, its admin listener there.
pub(crate) async fn spawn_edge(
    name: &'static str,
    backend: [&str; 2],
    data: PathBuf,
    cache_mib: usize,
    admin: Option<SocketAddr>,
) -> Result<Server> {
    spawn_edge_on(name, backend, data, cache_mib, admin, false).await
}

/// [`spawn_edge`], listening with TLS (HTTP/1.1, HTTP/2 and HTTP/3 on the port, the
/// development certificate in `data/tls`) when `tls`, else plain HTTP.
pub(crate) async fn spawn_edge_on(
    name: &'static str,
    backend: [&str; 2],
    data: PathBuf,
    cache_mib: usize,
    admin: Option<SocketAddr>,
    tls: bool,
) -> Result<Server> {
    spawn_edge_with(name, backend, data, [cache_mib, 1024], admin, tls, None).await
}

/// [`spawn_edge_on`] with `[memory, disk]` MiB (disk 0: memory only) and, when given, the
/// settings of the TOML file `config`.
pub(crate) async fn spawn_edge_with(
    name: &'static str,
    backend: [&str; 2],
    data: PathBuf,
    [memory_mib, disk_mib]: [usize; 2],
    admin: Option<SocketAddr>,
    tls: bool,
    config: Option<&Path>,
) -> Result<Server> {
    let port = free_port();
    let mut cmd = Command::new(tessera_exe()?);
    cmd.arg("edge");
    if let Some(a) = admin {
        cmd.args(["--admin", &a.to_string()]);
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let child = cmd
        .args(backend)
        .arg(if tls { "--https" } else { "--http" })
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "--memory",
            &format!("{memory_mib}MiB"),
            "--disk",
            &format!("{disk_mib}MiB"),
            "--data",
        ])
        .arg(data)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting tessera edge")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let server = Server { name, addr, child };
    wait_listening(addr, name).await?;
    Ok(server)
}

async fn start_tessera(dir: &Path, up: SocketAddr, cache_mib: usize) -> Result<Server> {
    let upstream = format!("http://{up}");
    spawn_edge(
        "tessera",
        ["--upstream", &upstream],
        dir.join("tessera"),
        cache_mib,
        None,
    )
    .await
}

/// A `tessera origin` with its data in `dir/origin` and write token `bench`, on a free port.
pub(crate) async fn spawn_origin(dir: &Path) -> Result<Server> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let child = Command::new(tessera_exe()?)
        .args([
            "origin",
            "--listen",
            &addr.to_string(),
            "--token",
            "bench",
            "--data",
        ])
        .arg(dir.join("origin"))
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting tessera origin")?;
    let server = Server {
        name: "origin",
        addr,
        child,
    };
    wait_listening(addr, "tessera origin").await?;
    Ok(server)
}

/// Tessera in origin mode: a `tessera origin` with `/1k` and `/1m` published, and an edge
/// in front of it (hits cost a manifest and a chunk lookup instead of one entry).
async fn start_tessera_origin_mode(
    dir: &Path,
    cache_mib: usize,
    keep: &mut Vec<Server>,
) -> Result<Server> {
    let origin = spawn_origin(dir).await?;
    let origin_url = format!("http://{}", origin.addr);
    // Killed when `keep` is dropped, at the end of the run.
    keep.push(origin);
    let client = tessera_origin_proto::OriginClient::new(&origin_url, Some("bench".into()))?;
    // The same bytes as the upstream's (about 64 distinct chunks for `/1m`).
    client
        .put_bytes("1k", crate::run::content("1k", 1024))
        .await?;
    client
        .put_bytes("1m", crate::run::content("1m", 1 << 20))
        .await?;
    spawn_edge(
        "tessera-origin",
        ["--origin", &origin_url],
        dir.join("tessera-origin-mode"),
        cache_mib,
        None,
    )
    .await
}

/// Writes the peer configuration `bench/peers/{template}` into `dir`, filled with `vars` and
/// `DIR` (= `dir`), `PORT`, `CACHE_MB`.
fn peer_config(
    dir: &Path,
    template: &str,
    port: u16,
    cache_mib: usize,
    vars: &[(&str, String)],
) -> Result<PathBuf> {
    let mut all = vec![
        ("DIR", dir.display().to_string()),
        ("PORT", port.to_string()),
        ("CACHE_MB", cache_mib.to_string()),
    ];
    all.extend(vars.iter().cloned());
    let text = fill(&std::fs::read_to_string(peers_dir().join(template))?, &all);
    let path = dir.join(template);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts `cmd` (output discarded) as the server `name` and waits until it listens on
/// `127.0.0.1:port`; `package` names the Debian package for the error.
async fn launch(name: &'static str, cmd: &mut Command, port: u16, package: &str) -> Result<Server> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    ensure_installed(&program, package)?;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name} (Debian package {package})"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let server = Server { name, addr, child };
    wait_listening(addr, name).await?;
    Ok(server)
}

/// Runs `cmd` with `sh -c`, its output discarded; whether it succeeded.
pub(crate) fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian package `package` (as root, with apt-get) when `program` is not on the
/// PATH; the peers are Debian's own builds, so anyone reruns the same comparison.
pub(crate) fn ensure_installed(program: &str, package: &str) -> Result<()> {
    let found = |p: &str| sh_ok(&format!("command -v {p}"));
    if found(program) {
        return Ok(());
    }
    eprintln!("{program} is missing: installing the Debian package {package}");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "-qq", "--no-install-recommends", package];
    let installed = apt(&install) || (apt(&["update", "-qq"]) && apt(&install));
    if !installed {
        bail!(
            "{program} is missing and `apt-get install {package}` failed (run as root on Debian, or install it)"
        );
    }
    if !found(program) {
        bail!("{package} is installed but {program} is still not on the PATH");
    }
    Ok(())
}

/// nginx with the configuration `bench/peers/{template}` filled with `vars`, in `dir`.
pub(crate) async fn start_nginx(
    dir: &Path,
    template: &str,
    vars: &[(&str, String)],
    cache_mib: usize,
) -> Result<Server> {
    let port = free_port();
    let conf = peer_config(dir, template, port, cache_mib, vars)?;
    launch(
        "nginx",
        Command::new("nginx")
            .arg("-c")
            .arg(conf)
            .args(["-g", "daemon off;"]),
        port,
        "nginx-light",
    )
    .await
}

/// Varnish with the VCL `bench/peers/{template}` filled with `vars`, `cache_mib` of memory
/// storage, its state in `dir`.
pub(crate) async fn start_varnish(
    dir: &Path,
    template: &str,
    vars: &[(&str, String)],
    cache_mib: usize,
) -> Result<Server> {
    let port = free_port();
    let vcl = peer_config(dir, template, port, cache_mib, vars)?;
    launch(
        "varnish",
        Command::new("varnishd")
            .args(["-F", "-a", &format!("127.0.0.1:{port}"), "-f"])
            .arg(vcl)
            .args(["-s", &format!("malloc,{cache_mib}m"), "-n"])
            .arg(dir.join("varnish"))
            .args(["-T", "none"]),
        port,
        "varnish",
    )
    .await
}

/// Caddy with the Caddyfile `bench/peers/{template}` filled with `vars`, on `port`, its
/// state in `dir`.
pub(crate) async fn start_caddy(
    dir: &Path,
    template: &str,
    vars: &[(&str, String)],
    port: u16,
) -> Result<Server> {
    let conf = peer_config(dir, template, port, 0, vars)?;
    launch(
        "caddy",
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(conf)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir)
            .env("XDG_CONFIG_HOME", dir),
        port,
        "caddy",
    )
    .await
}

/// Peak figures from one wrk run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peak {
    pub rps: f64,
    pub bytes_per_sec: f64,
    pub p99_ms: f64,
}

fn unit(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("GB") {
        (n, 1e9_f64.max((1u64 << 30) as f64))
    } else if let Some(n) = v.strip_suffix("MB") {
        (n, (1u64 << 20) as f64)
    } else if let Some(n) = v.strip_suffix("KB") {
        (n, 1024.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('B') {
        (n, 1.0)
    } else {
        (v, 1.0)
    };
    num.trim().parse::<f64>().ok().map(|n| n * mult)
}

pub(crate) fn wrk(url: &str, a: &Args) -> Result<Peak> {
    wrk_with(url, a.connections, a.seconds)
}

/// `wrk -t2 -cN -dSs --latency url`.
pub(crate) fn wrk_with(url: &str, connections: usize, seconds: u64) -> Result<Peak> {
    ensure_installed("wrk", "wrk")?;
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
    };
    let rps = find("Requests/sec:").and_then(|v| v.trim().parse().ok());
    let bps = find("Transfer/sec:").and_then(|v| unit(&v));
    let p99 = find("99%").and_then(|v| unit(&v));
    let errors = find("Non-2xx or 3xx responses:");
    if let Some(e) = errors {
        bail!("{url}: wrk saw errors ({e}):\n{text}");
    }
    match (rps, bps, p99) {
        (Some(rps), Some(bytes_per_sec), Some(p99_ms)) => Ok(Peak {
            rps,
            bytes_per_sec,
            p99_ms,
        }),
        _ => bail!("cannot read wrk's output for {url}:\n{text}"),
    }
}

/// Open loop at `rate` requests/s for `secs`: latencies from the intended send time.
async fn open_loop(
    addr: SocketAddr,
    path: &str,
    rate: f64,
    secs: u64,
    conns: usize,
) -> Result<(f64, f64, u64)> {
    let per_conn = rate / conns as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            // Spread connections over the interval so they do not fire in step.
            let mut next = start + interval.mul_f64(c as f64 / conns as f64);
            let mut errors = 0u64;
            while next < end {
                tokio::time::sleep_until(next).await;
                let req = hyper::Request::get(&path)
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                match send.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if !ok {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
                let micros = (tokio::time::Instant::now() - next).as_micros() as u64;
                hist.record(micros.max(1)).ok();
                next += interval;
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        all.add(h).ok();
        errors += e;
    }
    Ok((
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    ))
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{} cores, {cpu}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

pub fn run(a: Args) -> Result<()> {
    crate::runtime(1)?.block_on(run_async(a))
}

async fn run_async(a: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let up = upstream().await?;
    println!("machine: {}", machine());
    println!(
        "wrk -t2 -c{} -d{}s --latency (memory hits, HTTP/1.1)",
        a.connections, a.seconds
    );
    let mut results: Vec<(&'static str, [Peak; 2], [(f64, f64, u64); 2])> = Vec::new();
    let mut keep = Vec::new();
    for name in ["tessera", "nginx", "varnish", "tessera-origin"] {
        let server = match name {
            "tessera" => start_tessera(dir.path(), up, a.cache_mib).await?,
            "tessera-origin" => {
                start_tessera_origin_mode(dir.path(), a.cache_mib, &mut keep).await?
            }
            "nginx" => {
                let vars = [("UPSTREAM", up.to_string())];
                start_nginx(dir.path(), "nginx.conf", &vars, a.cache_mib).await?
            }
            _ => {
                let vars = [
                    ("UPSTREAM_HOST", up.ip().to_string()),
                    ("UPSTREAM_PORT", up.port().to_string()),
                ];
                start_varnish(dir.path(), "varnish.vcl", &vars, a.cache_mib).await?
            }
        };
        let mut peaks = [Peak {
            rps: 0.0,
            bytes_per_sec: 0.0,
            p99_ms: 0.0,
        }; 2];
        let mut lat = [(0.0, 0.0, 0); 2];
        for (i, path) in ["/1k", "/1m"].iter().enumerate() {
            let url = format!("http://{}{path}", server.addr);
            // Warm: the first request fills, the next ones must hit.
            for _ in 0..3 {
                let _ = Command::new("wrk")
                    .args(["-t1", "-c1", "-d1s", &url])
                    .output();
            }
            peaks[i] = wrk(&url, &a)?;
            if !a.no_latency {
                lat[i] = open_loop(
                    server.addr,
                    path,
                    peaks[i].rps / 2.0,
                    a.seconds,
                    a.connections,
                )
                .await?;
            }
            println!(
                "{:8} {path}: {:>9.0} req/s {:>8.1} MB/s p99 {:.2} ms | at half peak: p50 {:.3} ms p99 {:.3} ms ({} errors)",
                server.name,
                peaks[i].rps,
                peaks[i].bytes_per_sec / 1e6,
                peaks[i].p99_ms,
                lat[i].0,
                lat[i].1,
                lat[i].2
            );
        }
        results.push((name, peaks, lat));
        drop(server);
    }
    println!();
    println!(
        "| server | 1 KiB req/s | 1 KiB p99 (wrk) | 1 KiB p99 at half peak | 1 MiB MB/s | 1 MiB p99 at half peak |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, p, l) in &results {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.3} ms | {:.0} | {:.3} ms |",
            p[0].rps,
            p[0].p99_ms,
            l[0].1,
            p[1].bytes_per_sec / 1e6,
            l[1].1
        );
    }
    let t = &results[0].1;
    let mut ratios = Vec::new();
    for (name, p, _) in &results[1..3] {
        println!(
            "tessera/{name}: 1 KiB req/s x{:.2}, 1 MiB bytes/s x{:.2}",
            t[0].rps / p[0].rps,
            t[1].bytes_per_sec / p[1].bytes_per_sec
        );
        ratios.push(format!(
            "x{:.2} {name} at 1 KiB, x{:.2} at 1 MiB",
            t[0].rps / p[0].rps,
            t[1].bytes_per_sec / p[1].bytes_per_sec
        ));
    }
    println!(
        "Headline: memory hits over HTTP/1.1, {:.0} req/s at 1 KiB and {:.0} MB/s at 1 MiB: {}",
        t[0].rps,
        t[1].bytes_per_sec / 1e6,
        ratios.join("; ")
    );
    Ok(())
}
