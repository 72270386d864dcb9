//! `tessera-bench plugins`: what the WebAssembly hooks cost.
//!
//! 1. Per call, in process: each shipped plugin's hook called on a real request (or object),
//!    p50/p99/mean in nanoseconds (HDR histogram), with the pooling allocator and with
//!    on-demand allocation. (`concurrency_support(true)` cannot be measured here: it needs
//!    wasmtime's `component-model-async` feature, which Tessera does not compile in, so
//!    stores never carry the concurrent-call state.)
//! 2. Through a real edge: wrk on a 1 KiB memory hit, an edge with no plugins against one
//!    with `signed-url` (every path protected, the URL signed) and `router` (four rules, none
//!    matching, so the default route) bound, and the same with decision reuse off (every
//!    request calls both plugins), alternated in the same run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tessera_plugins::{
    EngineOptions, Hook, Limits, Object, PluginHost, Protocol, Request, shipped,
};

use crate::edge_hits::{Server, free_port, tessera_exe, upstream, wait_listening, wrk_with};

/// Options of `tessera-bench plugins`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Calls per hook and setting.
    #[arg(long, default_value_t = 200_000)]
    calls: u64,
    /// Seconds per wrk run (each edge is run `--rounds` times, alternating).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the edge comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Only the per-call figures.
    #[arg(long)]
    no_edge: bool,
}

fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const ROUTES: [(&str, &str); 4] = [
    ("route.1", "header=x-canary:1 upstream=api"),
    ("route.2", "host=img.example.com upstream=api"),
    ("route.3", "prefix=/api/ rewrite=/v2/ upstream=api"),
    ("route.4", "prefix=/old/ redirect=301 location=/new/"),
];

fn request(path: &str, query: Option<String>) -> Request {
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("host", "cdn.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, br"),
        ("cookie", "uid=12345; theme=dark"),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    Request {
        uri: target.parse().expect("a valid target"),
        headers,
        client: [192, 0, 2, 7].into(),
        protocol: Protocol::Http1,
        ..Request::default()
    }
}

fn object(i: usize) -> Object {
    Object {
        key: format!("{i:064x}"),
        path: format!("/static/{i}.js"),
        size: 1000 + i as u64 * 5000,
        content_type: Some("text/javascript".into()),
        status: 200,
        hits: 0,
        last_hit_secs: None,
        ttl_secs: 3600,
    }
}

struct Figures {
    p50: u64,
    p99: u64,
    mean: f64,
}

fn measure(calls: u64, mut f: impl FnMut()) -> Figures {
    for _ in 0..calls / 20 {
        f();
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for _ in 0..calls {
        let t = Instant::now();
        f();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    Figures {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        mean: h.mean(),
    }
}

fn per_call(calls: u64) -> Result<()> {
    println!("## Per hook call (in process, one thread, {calls} calls each)\n");
    println!("| hook (plugin) | engine | p50 ns | p99 ns | mean ns |");
    println!("|---|---|---:|---:|---:|");
    let called = Limits {
        memo_entries: 0,
        ..Limits::default()
    };
    let settings = [
        (
            "pooling, every call into the plugin (memo_entries 0)",
            EngineOptions::default(),
            called,
        ),
        (
            "on-demand, every call into the plugin (memo_entries 0)",
            EngineOptions {
                concurrency_support: false,
                pooling: false,
            },
            called,
        ),
        (
            "pooling, decisions reused (default)",
            EngineOptions::default(),
            Limits::default(),
        ),
    ];
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let mut signed = request(
        "/private/video.mp4",
        shipped::sign_url(b"bench-key", "hmac-sha256", "/private/video.mp4", exp),
    );
    let mut unsigned_path = request("/public/app.js", None);
    let mut routed = request("/index.html", None);
    let batch: Vec<Object> = (0..16).map(object).collect();
    // A different signed URL for every call: a decision is never reused.
    let mut distinct: Vec<Request> = (0..calls + calls / 20)
        .map(|i| {
            let path = format!("/private/{i}.mp4");
            let q = shipped::sign_url(b"bench-key", "hmac-sha256", &path, exp);
            request(&path, q)
        })
        .collect();
    for (label, opts, limits) in settings {
        let host = PluginHost::with_options(limits, &prometheus::Registry::new(), opts)?;
        host.deploy(
            Hook::Authorize,
            "signed-url",
            shipped::SIGNED_URL,
            config(&[("key", "bench-key"), ("prefixes", "/private/")]),
        )?;
        host.deploy(Hook::Route, "router", shipped::ROUTER, config(&ROUTES))?;
        host.deploy(
            Hook::Eviction,
            "size-eviction",
            shipped::SIZE_EVICTION,
            config(&[
                ("memory-max-bytes", "65536"),
                ("long-ttl-prefixes", "/static/"),
            ]),
        )?;
        let known = |_: &str| true;
        let rows: Vec<(&str, Figures)> = vec![
            (
                "authorize (signed-url, HMAC check)",
                measure(calls, || {
                    assert!(matches!(
                        host.authorize(&mut signed),
                        Some(Ok(tessera_plugins::Verdict::Allow))
                    ))
                }),
            ),
            (
                "authorize (signed-url, unprotected path)",
                measure(calls, || {
                    assert!(matches!(host.authorize(&mut unsigned_path), Some(Ok(_))))
                }),
            ),
            (
                "route (router, 4 rules, none match)",
                measure(calls, || {
                    assert!(matches!(host.route(&mut routed, &known), Some(Ok(_))))
                }),
            ),
            (
                "eviction (size-eviction, batch of 1)",
                measure(calls, || {
                    assert!(matches!(host.advise(&batch[..1]), Some(Ok(_))))
                }),
            ),
            (
                "eviction (size-eviction, batch of 16)",
                measure(calls / 4, || {
                    assert!(matches!(host.advise(&batch), Some(Ok(_))))
                }),
            ),
        ];
        let mut next = distinct.iter_mut();
        let mut rows = rows;
        rows.push((
            "authorize (signed-url, HMAC check, a new URL each call)",
            measure(calls, || {
                let r = next.next().expect("a URL per call");
                assert!(matches!(
                    host.authorize(r),
                    Some(Ok(tessera_plugins::Verdict::Allow))
                ))
            }),
        ));
        for (hook, f) in rows {
            println!(
                "| {hook} | {label} | {} | {} | {:.0} |",
                f.p50, f.p99, f.mean
            );
        }
    }
    println!();
    Ok(())
}

fn spawn_edge(
    name: &'static str,
    dir: &Path,
    up: std::net::SocketAddr,
    plugins: Option<usize>,
) -> Result<(Server, u16)> {
    let port = free_port();
    let mut toml = format!(
        "backend = {{ upstream = \"http://{up}\" }}\nmemory_bytes = 268435456\ndisk_bytes = 1073741824\ndata = \"{}\"\n",
        dir.join(name).display()
    );
    if let Some(memo_entries) = plugins {
        toml.push_str(&format!("upstreams = {{ api = \"http://{up}\" }}\n"));
        toml.push_str(&format!("plugins.limits.memo_entries = {memo_entries}\n"));
        toml.push_str("[[plugins.bind]]\nhook = \"authorize\"\nplugin = \"signed-url\"\nconfig = { key = \"bench-key\", prefixes = \"/\" }\n");
        toml.push_str("[[plugins.bind]]\nhook = \"route\"\nplugin = \"router\"\nconfig = { ");
        let rules: Vec<String> = ROUTES
            .iter()
            .map(|(k, v)| format!("\"{k}\" = \"{v}\""))
            .collect();
        toml.push_str(&rules.join(", "));
        toml.push_str(" }\n");
    }
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, toml)?;
    let child = Command::new(tessera_exe()?)
        .args(["edge", "--config"])
        .arg(&file)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting tessera edge")?;
    Ok((
        Server {
            name,
            addr: format!("127.0.0.1:{port}").parse()?,
            child,
        },
        port,
    ))
}

/// The status a GET of `url` gets (the edge's own client; no curl needed).
async fn status(url: &str) -> Result<u16> {
    use tessera_edge::client::{ClientOptions, Connection, Mode, path_of};
    let mut c = Connection::connect(url, &ClientOptions::new(Mode::Http1)).await?;
    Ok(c.get(&path_of(url)?).await?.status().as_u16())
}

pub fn run(a: Args) -> Result<()> {
    per_call(a.calls)?;
    if a.no_edge {
        return Ok(());
    }
    let rt = crate::runtime(1)?;
    let dir = tempfile::tempdir()?;
    rt.block_on(async {
        let up = upstream().await?;
        let (plain, _) = spawn_edge("no-plugins", dir.path(), up, None)?;
        let (reused, _) = spawn_edge("signed-url+router", dir.path(), up, Some(16_384))?;
        let (called, _) = spawn_edge("signed-url+router-memo-off", dir.path(), up, Some(0))?;
        let edges = [&plain, &reused, &called];
        for e in edges {
            wait_listening(e.addr, e.name).await?;
        }
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 86_400;
        let q = shipped::sign_url(b"bench-key", "hmac-sha256", "/1k", exp).unwrap();
        let urls: Vec<String> = edges
            .iter()
            .map(|e| format!("http://{}/1k?{q}", e.addr))
            .collect();
        // Warm the caches, and check the signed edges serve the URL and refuse it unsigned.
        for (e, url) in edges.iter().zip(&urls) {
            anyhow::ensure!(
                status(url).await? == 200,
                "{} answered no 200 for {url}",
                e.name
            );
        }
        for e in &edges[1..] {
            anyhow::ensure!(
                status(&format!("http://{}/1k", e.addr)).await? == 403,
                "{} served an unsigned URL",
                e.name
            );
        }
        println!(
            "## Edge, 1 KiB memory hits (wrk -t2 -c{} -d{}s, {} rounds alternating)\n",
            a.connections, a.seconds, a.rounds
        );
        println!(
            "| round | no plugins req/s | signed-url + router req/s | ratio | same, every request calls both plugins (memo_entries 0) req/s | ratio |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let mut sums = [0.0; 3];
        for round in 1..=a.rounds {
            let mut rps = [0.0; 3];
            for (i, url) in urls.iter().enumerate() {
                rps[i] = wrk_with(url, a.connections, a.seconds)?.rps;
                sums[i] += rps[i];
            }
            println!(
                "| {round} | {:.0} | {:.0} | {:.3} | {:.0} | {:.3} |",
                rps[0],
                rps[1],
                rps[1] / rps[0],
                rps[2],
                rps[2] / rps[0]
            );
        }
        let n = a.rounds as f64;
        println!(
            "| all | {:.0} | {:.0} | {:.3} (lost {:.1} %) | {:.0} | {:.3} (lost {:.1} %) |\n",
            sums[0] / n,
            sums[1] / n,
            sums[1] / sums[0],
            100.0 * (1.0 - sums[1] / sums[0]),
            sums[2] / n,
            sums[2] / sums[0],
            100.0 * (1.0 - sums[2] / sums[0])
        );
        println!(
            "Headline: signed-url + router bound cost the edge {:.1} % of its 1 KiB memory-hit \
             rate with decisions reused, {:.1} % when every request calls both",
            100.0 * (1.0 - sums[1] / sums[0]),
            100.0 * (1.0 - sums[2] / sums[0])
        );
        drop((plain, reused, called));
        Ok::<_, anyhow::Error>(())
    })
}
