//! Ingest benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tessera_origin::chunker::{ChunkParams, Chunker};
use tessera_origin::{OriginConfig, StoreConfig, codec};
use tessera_origin_proto::{ChunkHash, OriginClient};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folders whose files make the corpus (concatenated, like a release tarball).
    #[arg(long, default_values = ["/usr/share/doc", "/usr/lib/python3.11"])]
    corpus: Vec<PathBuf>,
    /// Corpus size in MiB.
    #[arg(long, default_value_t = 128)]
    mib: usize,
    /// Work folder (a temporary one on the same disk as the project by default).
    #[arg(long)]
    work: Option<PathBuf>,
    /// A folder of many small files, published file by file (4 at a time, as `tessera push`
    /// does) and backed up by restic.
    #[arg(long, default_value = "/usr/share/doc")]
    folder: PathBuf,
    /// Files published at once in the folder workload.
    #[arg(long, default_value_t = 16)]
    jobs: usize,
    /// brotli quality for the origin (default: the origin's own default).
    #[arg(long)]
    quality: Option<u32>,
    /// Skip the restic comparison.
    #[arg(long)]
    no_restic: bool,
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Reads files of `dirs` in path order until `limit` bytes.
fn corpus(dirs: &[PathBuf], limit: usize) -> Result<Vec<u8>> {
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => files.push(p),
                _ => {}
            }
        }
    }
    files.sort();
    let mut out = Vec::with_capacity(limit);
    for f in files {
        if out.len() >= limit {
            break;
        }
        if let Ok(b) = std::fs::read(&f) {
            out.extend_from_slice(f.to_string_lossy().as_bytes());
            out.extend_from_slice(&b);
        }
    }
    if out.len() < limit / 2 {
        bail!("the corpus folders hold only {} bytes", out.len());
    }
    out.truncate(limit);
    Ok(out)
}

/// A second version: `edits` small insertions, deletions and overwrites spread over the data.
fn next_version(v: &[u8], edits: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = v.to_vec();
    for _ in 0..edits {
        let at = (rnd() as usize) % out.len();
        let n = 1 + (rnd() as usize) % 200;
        match rnd() % 3 {
            0 => {
                let ins: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
                out.splice(at..at, ins);
            }
            1 => {
                out.drain(at..(at + n).min(out.len()));
            }
            _ => {
                for b in out.iter_mut().skip(at).take(n) {
                    *b = rnd() as u8;
                }
            }
        }
    }
    out
}

/// Chunks `data` fed in 256 KiB pieces, as a network body arrives, handing each chunk to
/// `f` and dropping it, as an upload does batch by batch (holding every chunk of 128 MiB
/// instead would measure page faults on fresh memory, not chunking).
fn stream_chunks(data: &[u8], p: ChunkParams, mut f: impl FnMut(&Bytes)) {
    let mut c = Chunker::new(p);
    let mut out = Vec::new();
    for piece in data.chunks(256 << 10) {
        c.push(piece, &mut out);
        out.drain(..).for_each(|b| f(&b));
    }
    c.finish(&mut out);
    out.drain(..).for_each(|b| f(&b));
}

/// Chunks `data` fed in 256 KiB pieces and keeps every chunk.
fn chunks_of(data: &[u8], p: ChunkParams) -> Vec<Bytes> {
    let mut c = Chunker::new(p);
    let mut out = Vec::new();
    for piece in data.chunks(256 << 10) {
        c.push(piece, &mut out);
    }
    c.finish(&mut out);
    out
}

/// Runs `f` until at least a second has passed; returns the mean time of one run.
fn time(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    while n == 0 || start.elapsed() < Duration::from_secs(1) {
        f();
        n += 1;
    }
    start.elapsed() / n
}

/// A real origin on 127.0.0.1:0, in this process.
struct Origin {
    url: String,
    client: OriginClient,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tessera_origin::OriginError>>,
}

impl Origin {
    async fn start(data: PathBuf, store: &StoreConfig) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let cfg = OriginConfig {
            data,
            store: store.clone(),
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tessera_origin::run(listener, cfg, async {
            let _ = stopped.await;
        }));
        let client = OriginClient::new(&url, None)?;
        Ok(Self {
            url,
            client,
            stop,
            server,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        Ok(())
    }
}

/// Regular files under `dir` (symlinks not followed) with their sizes, in path order.
fn list_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match std::fs::symlink_metadata(e.path()) {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => out.push((e.path(), m.len())),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

fn du(path: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(path)
        .output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

pub fn run(a: Args) -> Result<()> {
    let v1 = corpus(&a.corpus, a.mib << 20)?;
    let v2 = next_version(&v1, 40, 7);
    let n = v1.len();
    println!("## Ingest benchmarks\n");
    println!(
        "Corpus: {} MiB of {:?} concatenated in path order (a release tarball); version 2 has 40 random edits of 1–200 bytes.\n",
        n >> 20,
        a.corpus
    );

    // 1. Per-core rates, one thread.
    let default = ChunkParams::default();
    let t_chunk = time(|| {
        stream_chunks(&v1, default, |c| {
            std::hint::black_box(c.len());
        })
    });
    let t_chunk_hash = time(|| {
        stream_chunks(&v1, default, |c| {
            std::hint::black_box(ChunkHash::of(c));
        })
    });
    println!("### Per core (one thread)\n");
    println!("| stage | MB/s |\n|---|---|");
    println!(
        "| FastCDC chunking ({}/{}/{} B) | {:.0} |",
        default.min,
        default.avg,
        default.max,
        mbps(n, t_chunk)
    );
    println!("| chunk + blake3 | {:.0} |", mbps(n, t_chunk_hash));
    let q_default = a
        .quality
        .unwrap_or(StoreConfig::default().compression_quality);
    let store_cfg = StoreConfig {
        compression_quality: q_default,
        ..Default::default()
    };
    let sample = &v1[..(32 << 20).min(n)];
    for q in [1u32, 2, 3, 4, 5, 7] {
        let start = Instant::now();
        let mut stored = 0usize;
        stream_chunks(sample, default, |c| {
            std::hint::black_box(ChunkHash::of(c));
            stored += codec::compress(c, q).map_or(c.len(), |v| v.len());
        });
        let d = start.elapsed();
        let mark = if q == q_default { " (used below)" } else { "" };
        println!(
            "| chunk + blake3 + brotli q{q}{mark} | {:.0} (ratio {:.2}x on the first {} MiB) |",
            mbps(sample.len(), d),
            sample.len() as f64 / stored as f64,
            sample.len() >> 20
        );
    }

    // 2. Chunk sizes: dedup between versions and compression.
    println!("\n### Chunk sizes (v1 + v2 stored together, brotli q{q_default})\n");
    println!(
        "| min/avg/max | chunks in v1 | new chunks in v2 | new bytes in v2 | unique / logical | stored (compressed) | chunk+hash MB/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for p in [
        ChunkParams {
            min: 2048,
            avg: 8192,
            max: 32768,
        },
        ChunkParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        },
        ChunkParams {
            min: 8192,
            avg: 16384,
            max: 65536,
        },
        ChunkParams {
            min: 8192,
            avg: 32768,
            max: 131072,
        },
        ChunkParams {
            min: 16384,
            avg: 65536,
            max: 262144,
        },
        ChunkParams {
            min: 262144,
            avg: 1 << 20,
            max: 4 << 20,
        },
    ] {
        let c1 = chunks_of(&v1, p);
        let c2 = chunks_of(&v2, p);
        let mut seen = std::collections::HashSet::new();
        let mut unique = 0usize;
        let mut stored = 0usize;
        for c in &c1 {
            if seen.insert(ChunkHash::of(c)) {
                unique += c.len();
                stored += codec::compress(c, q_default).map_or(c.len(), |v| v.len()) + 41;
            }
        }
        let (mut new2, mut new2_bytes) = (0, 0);
        for c in &c2 {
            if seen.insert(ChunkHash::of(c)) {
                new2 += 1;
                new2_bytes += c.len();
                unique += c.len();
                stored += codec::compress(c, q_default).map_or(c.len(), |v| v.len()) + 41;
            }
        }
        let t = time(|| {
            stream_chunks(&v1, p, |c| {
                std::hint::black_box(ChunkHash::of(c));
            })
        });
        println!(
            "| {}K/{}K/{}K | {} | {} | {} KiB | {:.3} | {:.1} MiB | {:.0} |",
            p.min / 1024,
            p.avg / 1024,
            p.max / 1024,
            c1.len(),
            new2,
            new2_bytes / 1024,
            unique as f64 / (2 * n) as f64,
            stored as f64 / (1 << 20) as f64,
            mbps(n, t)
        );
    }

    // 3. Full ingest through a real origin, and restic on the same files.
    let tmp = match &a.work {
        Some(w) => tempfile::tempdir_in(w)?,
        None => tempfile::tempdir_in(std::env::current_dir()?)?,
    };
    let files = tmp.path().join("files");
    for (i, v) in [&v1, &v2].iter().enumerate() {
        let d = files.join(format!("v{}", i + 1));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("release.tar"), v)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let origin_dir = tmp.path().join("origin");
    let (t_ours, stored_ours, read_rows, folder) = rt.block_on(async {
        let origin = Origin::start(origin_dir.clone(), &store_cfg).await?;
        let (url, client) = (origin.url.clone(), origin.client.clone());
        let mut times = Vec::new();
        for i in 1..=2 {
            let data = std::fs::read(files.join(format!("v{i}/release.tar")))?;
            let start = Instant::now();
            client.put_bytes(&format!("v{i}/release.tar"), data).await?;
            times.push(start.elapsed());
        }
        let stored = client.stats().await?.stored_bytes;
        // The folder goes to an origin of its own: the corpus above holds some of its files.
        let folder_origin = Origin::start(tmp.path().join("origin-folder"), &store_cfg).await?;
        let folder_client = folder_origin.client.clone();
        let folder_files = list_files(&a.folder);
        let folder_bytes: u64 = folder_files.iter().map(|(_, n)| n).sum();
        let start = Instant::now();
        use futures_util::StreamExt;
        let results: Vec<_> = futures_util::stream::iter(folder_files.iter().enumerate())
            .map(|(i, (p, _))| {
                let client = folder_client.clone();
                async move {
                    let data = tokio::fs::read(p).await?;
                    client.put_bytes(&format!("folder/{i}"), data).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(a.jobs)
            .collect()
            .await;
        let folder_time = start.elapsed();
        results.into_iter().collect::<Result<Vec<_>>>()?;
        let folder_stored = folder_client.stats().await?.stored_bytes;
        folder_origin.stop().await?;
        // Reads of stored 100 MiB files: compressible (corpus) and incompressible (noise).
        let mut rows = Vec::new();
        let text: Vec<u8> = v1.iter().cycle().take(100 << 20).copied().collect();
        let noise: Vec<u8> = (0u64..)
            .flat_map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .take(100 << 20)
            .collect();
        let http: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        for (name, data) in [("corpus", text), ("noise", noise)] {
            client
                .put_bytes(&format!("read/{name}"), data.clone())
                .await?;
            let uri: http::Uri = format!("{url}/api/v1/files/read/{name}").parse()?;
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let start = Instant::now();
                let body = http
                    .get(uri.clone())
                    .await?
                    .into_body()
                    .collect()
                    .await?
                    .to_bytes();
                best = best.min(start.elapsed());
                anyhow::ensure!(body.len() == data.len(), "short read");
            }
            rows.push((name, mbps(data.len(), best)));
        }
        origin.stop().await?;
        anyhow::Ok((
            times,
            stored,
            rows,
            (folder_files.len(), folder_bytes, folder_time, folder_stored),
        ))
    })?;
    let (folder_n, folder_bytes, folder_time, folder_stored) = folder;

    println!("\n### Full ingest: Tessera origin vs restic, same files, same disk\n");
    println!(
        "Tessera: `PUT` of each version through a real origin on 127.0.0.1 (brotli q{q_default}, fsync before the reply)."
    );
    println!(
        "restic: `restic backup` of a folder holding the version (repository v2, zstd `auto`).\n"
    );
    println!("| step | Tessera s | Tessera MB/s | restic s | restic MB/s | Tessera/restic speed |");
    println!("|---|---|---|---|---|---|");
    let mut restic_times = Vec::new();
    let mut restic_stored = 0;
    let mut restic_folder = None;
    if !a.no_restic {
        crate::edge_hits::ensure_installed("restic", "restic")?;
        let repo = tmp.path().join("restic");
        let cache = tmp.path().join("restic-cache");
        let env = [
            ("RESTIC_PASSWORD", "bench"),
            ("RESTIC_CACHE_DIR", cache.to_str().unwrap()),
        ];
        let ok = Command::new("restic")
            .envs(env)
            .args(["init", "--repository-version", "2", "-q", "-r"])
            .arg(&repo)
            .status();
        if !ok.map(|s| s.success()).unwrap_or(false) {
            bail!(
                "`restic init` failed: install restic (apt-get install restic) or pass --no-restic"
            );
        }
        for i in 1..=2 {
            let start = Instant::now();
            let st = Command::new("restic")
                .envs(env)
                .current_dir(files.join(format!("v{i}")))
                .args(["backup", "-q", "--host", "bench", "-r"])
                .arg(&repo)
                .arg("release.tar")
                .status()?;
            anyhow::ensure!(st.success(), "restic backup failed");
            restic_times.push(start.elapsed());
        }
        restic_stored = du(&repo)?;
        let repo2 = tmp.path().join("restic-folder");
        let ok = Command::new("restic")
            .envs(env)
            .args(["init", "--repository-version", "2", "-q", "-r"])
            .arg(&repo2)
            .status()?;
        anyhow::ensure!(ok.success(), "restic init failed");
        let start = Instant::now();
        let st = Command::new("restic")
            .envs(env)
            .args(["backup", "-q", "--host", "bench", "-r"])
            .arg(&repo2)
            .arg(&a.folder)
            .status()?;
        anyhow::ensure!(st.success(), "restic backup failed");
        restic_folder = Some((start.elapsed(), du(&repo2)?));
    }
    for (i, t) in t_ours.iter().enumerate() {
        let size = if i == 0 { v1.len() } else { v2.len() };
        let (rs, rm, ratio) = match restic_times.get(i) {
            Some(r) => (
                format!("{:.2}", r.as_secs_f64()),
                format!("{:.0}", mbps(size, *r)),
                format!("{:.2}x", r.as_secs_f64() / t.as_secs_f64()),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| v{} ({} MiB) | {:.2} | {:.0} | {rs} | {rm} | {ratio} |",
            i + 1,
            size >> 20,
            t.as_secs_f64(),
            mbps(size, *t)
        );
    }
    println!(
        "\n| stored after both versions | bytes | vs logical ({} MiB) |\n|---|---|---|",
        (v1.len() + v2.len()) >> 20
    );
    let logical = (v1.len() + v2.len()) as f64;
    println!(
        "| Tessera (`stats.stored_bytes`: packs + redb, allocated blocks) | {stored_ours} | {:.2}x smaller |",
        logical / stored_ours as f64
    );
    if restic_stored > 0 {
        println!(
            "| restic repository (`du --block-size=1`) | {restic_stored} | {:.2}x smaller |",
            logical / restic_stored as f64
        );
        println!(
            "\nTessera stores {:.3}x the bytes restic does.",
            stored_ours as f64 / restic_stored as f64
        );
        if let [r1, r2] = restic_times[..] {
            println!(
                "Headline: a {} MiB release tarball ingested at {:.2}x restic's speed, its edited \
                 second version at {:.2}x; both stored in {:.2}x the bytes restic's repository takes",
                v1.len() >> 20,
                r1.as_secs_f64() / t_ours[0].as_secs_f64(),
                r2.as_secs_f64() / t_ours[1].as_secs_f64(),
                stored_ours as f64 / restic_stored as f64
            );
        }
    }
    println!(
        "\n### Many small files: {} ({folder_n} files, {} MiB)\n",
        a.folder.display(),
        folder_bytes >> 20
    );
    println!(
        "Tessera: one `PUT` per file, {} at a time (`tessera push --jobs`). restic: `restic backup` of the folder.\n",
        a.jobs
    );
    println!("| | seconds | MB/s | stored bytes |\n|---|---|---|---|");
    println!(
        "| Tessera | {:.2} | {:.0} | {folder_stored} |",
        folder_time.as_secs_f64(),
        mbps(folder_bytes as usize, folder_time)
    );
    if let Some((t, st)) = restic_folder {
        println!(
            "| restic | {:.2} | {:.0} | {st} |",
            t.as_secs_f64(),
            mbps(folder_bytes as usize, t)
        );
        println!(
            "\nTessera/restic: speed {:.2}x, stored bytes {:.3}x.",
            t.as_secs_f64() / folder_time.as_secs_f64(),
            folder_stored as f64 / st as f64
        );
    }
    println!(
        "\n### Reads of a stored 100 MiB file (GET over loopback HTTP/1.1, every chunk verified, best of 3)\n"
    );
    println!("| file | MB/s |\n|---|---|");
    for (name, r) in read_rows {
        println!("| {name} | {r:.0} |");
    }
    Ok(())
}
