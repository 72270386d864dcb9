//! `tessera push`: publish a file or a folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tessera_origin_proto::client::UploadBody;
use tessera_origin_proto::{ChunkHash, ClientError, OriginClient, PublishReply, validate_path};
use tokio::io::AsyncReadExt;

/// Options of `tessera push`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// File or folder to publish. A folder's files are published under their paths relative
    /// to it.
    path: PathBuf,
    /// Origin URL, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    origin: String,
    /// Path prefix to publish under (e.g. `site` puts `index.html` at `site/index.html`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// The origin's write token.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Files uploaded at once (small files are latency-bound: several at a time let the
    /// origin group their commits).
    #[arg(long, default_value_t = 16)]
    jobs: usize,
    /// Leave out what matches PATTERN (a glob; repeat for more): without a `/` it matches a
    /// file or folder name at any depth (`*.psd`, `drafts`), with one the path from the
    /// folder (`img/raw/*`); a trailing `/` matches folders only.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Also publish hidden files and folders (names starting with `.`, except `.well-known`,
    /// which is always published) and editor backups (`name~`, `#name#`). Version-control
    /// folders (.git, .hg, .svn, .bzr, CVS, _darcs) are never published.
    #[arg(long)]
    include_hidden: bool,
    /// Print what would be published, and where, without sending anything.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// After publishing, delete the files published under --prefix that are not in the
    /// folder (as rsync --delete).
    #[arg(long)]
    delete: bool,
}

/// Version-control folders: never published.
const VCS: [&str; 6] = [".git", ".hg", ".svn", ".bzr", "CVS", "_darcs"];

/// What a folder push leaves out.
struct Filter {
    include_hidden: bool,
    /// `--exclude` patterns: (matcher, matched against the whole path, folders only).
    exclude: Vec<(globset::GlobMatcher, bool, bool)>,
}

/// Why an entry was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Skip {
    Vcs,
    Hidden,
    Excluded,
}

impl Filter {
    fn new(include_hidden: bool, patterns: &[String]) -> Result<Filter> {
        let exclude = patterns
            .iter()
            .map(|p| {
                let dir_only = p.ends_with('/');
                let body = p.trim_end_matches('/');
                let anchored = body.contains('/');
                let glob = globset::GlobBuilder::new(body.trim_start_matches('/'))
                    .literal_separator(true)
                    .build()
                    .with_context(|| format!("--exclude {p:?} is not a valid pattern"))?;
                Ok((glob.compile_matcher(), anchored, dir_only))
            })
            .collect::<Result<_>>()?;
        Ok(Filter {
            include_hidden,
            exclude,
        })
    }

    /// Whether the entry `name` at `rel` (its path from the folder) is left out.
    fn skip(&self, name: &str, rel: &str, is_dir: bool) -> Option<Skip> {
        if is_dir && VCS.contains(&name) {
            return Some(Skip::Vcs);
        }
        let hidden = (name.starts_with('.') && name != ".well-known")
            || name.ends_with('~')
            || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'));
        if hidden && !self.include_hidden {
            return Some(Skip::Hidden);
        }
        let excluded = self.exclude.iter().any(|(m, anchored, dir_only)| {
            (!dir_only || is_dir) && m.is_match(if *anchored { rel } else { name })
        });
        excluded.then_some(Skip::Excluded)
    }
}

/// What a push publishes: each file with the path it gets, and what was left out.
struct Plan {
    files: Vec<(PathBuf, String)>,
    /// Paths from the folder (a folder's with a trailing `/`), and why.
    skipped: Vec<(String, Skip)>,
}

/// Lists the files to publish with the path each gets. A file named on its own is
/// published whatever its name.
fn plan(root: &Path, prefix: &str, filter: &Filter) -> Result<Plan> {
    let prefix = prefix.trim_matches('/');
    let join = |rel: &str| {
        if prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{prefix}/{rel}")
        }
    };
    let meta =
        std::fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .context("the file name is not UTF-8")?;
        out.push((root.to_path_buf(), join(name)));
    } else {
        // Links: one to a file inside the folder publishes that file's bytes under the
        // link's path; one out of the folder, or to a folder (which could loop), is skipped
        // and said so.
        let inside = std::fs::canonicalize(root)
            .with_context(|| format!("cannot read {}", root.display()))?;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in
                std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let e = e?;
                let p = e.path();
                let rel = p
                    .strip_prefix(root)?
                    .to_str()
                    .with_context(|| format!("{} is not UTF-8", p.display()))?
                    .replace(std::path::MAIN_SEPARATOR, "/");
                let name = e.file_name().to_string_lossy().into_owned();
                let is_dir = std::fs::metadata(&p).is_ok_and(|m| m.is_dir());
                if let Some(why) = filter.skip(&name, &rel, is_dir) {
                    skipped.push((if is_dir { format!("{rel}/") } else { rel }, why));
                    continue;
                }
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
                    match std::fs::canonicalize(&p) {
                        Ok(t) if !t.starts_with(&inside) => {
                            eprintln!("skipping {}: a link out of the folder", p.display());
                            continue;
                        }
                        Ok(t) if t.is_dir() => {
                            eprintln!(
                                "skipping {}: links to folders are not followed",
                                p.display()
                            );
                            continue;
                        }
                        _ => {}
                    }
                }
                let m = match std::fs::metadata(&p) {
                    Ok(m) => m,
                    // A dangling symlink has nothing to publish; say so and go on.
                    Err(e) if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) => {
                        eprintln!("skipping {}: {e}", p.display());
                        continue;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", p.display()));
                    }
                };
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() {
                    out.push((p.clone(), join(&rel)));
                }
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        skipped.sort();
    }
    for (local, path) in &out {
        validate_path(path).map_err(|e| {
            anyhow::anyhow!("{} cannot be published as {path:?}: {e}", local.display())
        })?;
    }
    Ok(Plan {
        files: out,
        skipped,
    })
}

/// Says on stderr what a push left out.
fn report_skipped(skipped: &[(String, Skip)]) {
    const SHOWN: usize = 10;
    for (why, what) in [
        (Skip::Vcs, "version-control folders (never published)"),
        (
            Skip::Hidden,
            "hidden files and editor backups (--include-hidden publishes them)",
        ),
        (Skip::Excluded, "excluded by --exclude"),
    ] {
        let paths: Vec<&str> = skipped
            .iter()
            .filter(|(_, w)| *w == why)
            .map(|(p, _)| p.as_str())
            .collect();
        if paths.is_empty() {
            continue;
        }
        let more = match paths.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        let shown = paths[..paths.len().min(SHOWN)].join(", ");
        eprintln!("skipped {what}: {shown}{more}");
    }
}

/// A request body that streams `file` and advances `bar`.
fn file_body(file: tokio::fs::File, bar: ProgressBar) -> UploadBody {
    let stream = futures_util::stream::unfold((file, bar), |(mut file, bar)| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                bar.inc(n as u64);
                Some((Ok(Frame::data(Bytes::from(buf))), (file, bar)))
            }
            Err(e) => Some((
                Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                (file, bar),
            )),
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Files at least this large that changed are sent as pieces ([`tessera_origin_proto::upload`]):
/// the chunks the origin has named, the others sent. Smaller ones are sent whole (one round
/// trip fewer).
const PIECES_FROM: u64 = 256 << 10;

/// What the origin has published: path → size and blake3.
type Published = std::collections::HashMap<String, (u64, ChunkHash)>;

/// What pushing one file did.
enum Pushed {
    /// The origin already publishes these bytes at that path: nothing sent.
    Unchanged(u64),
    /// Published; `sent` bytes of the file went over the wire (the rest was named).
    Published { reply: PublishReply, sent: u64 },
}

/// The blake3 of the file at `path`.
fn file_blake3(path: &Path) -> Result<ChunkHash> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    h.update_reader(f)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(ChunkHash(*h.finalize().as_bytes()))
}

/// Cuts the file at `path` as the origin does (FastCDC, default sizes) and calls `each` with
/// every chunk in order.
fn cut_file(path: &Path, mut each: impl FnMut(Bytes) -> Result<()>) -> Result<()> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut chunker = tessera_origin::chunker::Chunker::new(Default::default());
    let (mut buf, mut out) = (vec![0u8; 1 << 20], Vec::new());
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            chunker.finish(&mut out);
        } else {
            chunker.push(&buf[..n], &mut out);
        }
        for c in out.drain(..) {
            each(c)?;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// Publishes one file: not at all when the origin already has its bytes at `path`; as
/// pieces when it is large and the origin has some of its chunks; else whole.
async fn push_one(
    client: &OriginClient,
    local: PathBuf,
    path: &str,
    published: Option<(u64, ChunkHash)>,
    bar: ProgressBar,
) -> Result<Pushed> {
    let size = tokio::fs::metadata(&local)
        .await
        .with_context(|| format!("cannot read {}", local.display()))?
        .len();
    if let Some((s, h)) = published
        && s == size
    {
        let l = local.clone();
        if tokio::task::spawn_blocking(move || file_blake3(&l)).await?? == h {
            bar.inc(size);
            return Ok(Pushed::Unchanged(size));
        }
    }
    if size >= PIECES_FROM
        && let Some(done) = push_pieces(client, &local, path, &bar).await?
    {
        return Ok(done);
    }
    let f = tokio::fs::File::open(&local)
        .await
        .with_context(|| format!("cannot open {}", local.display()))?;
    let reply = client.put_file(path, file_body(f, bar)).await?;
    Ok(Pushed::Published { reply, sent: size })
}

/// Publishes the file as pieces: asks which of its chunks the origin has and names those
/// instead of sending them. `None` when that saves nothing (the origin has none of them,
/// or does not know the format) or the origin no longer had a named chunk: send it whole.
async fn push_pieces(
    client: &OriginClient,
    local: &Path,
    path: &str,
    bar: &ProgressBar,
) -> Result<Option<Pushed>> {
    use tessera_origin_proto::upload::Piece;
    let l = local.to_path_buf();
    let chunks: Vec<(ChunkHash, u32)> = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        cut_file(&l, |c| {
            v.push((ChunkHash(*blake3::hash(&c).as_bytes()), c.len() as u32));
            Ok(())
        })
        .map(|()| v)
    })
    .await??;
    let mut known = Vec::with_capacity(chunks.len());
    for batch in chunks.chunks(tessera_origin_proto::batch::MAX_BATCH_CHUNKS) {
        let hashes: Vec<ChunkHash> = batch.iter().map(|c| c.0).collect();
        match client.known_chunks(&hashes).await {
            Ok(k) => known.extend(k),
            // An origin without the endpoint: the bytes go whole.
            Err(ClientError::Status { status, .. })
                if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !known.iter().any(|&k| k) {
        return Ok(None);
    }
    // The second pass cuts the file again and sends each chunk or its name; a chunk whose
    // bytes changed since the first pass is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let (l, b) = (local.to_path_buf(), bar.clone());
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (c2, s2) = (counted.clone(), sent.clone());
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = bytes::BytesMut::new();
        let mut i = 0;
        cut_file(&l, |c| {
            let named = known.get(i).copied().unwrap_or(false)
                && chunks[i] == (ChunkHash(*blake3::hash(&c).as_bytes()), c.len() as u32);
            let n = c.len() as u64;
            if named {
                Piece::Chunk(chunks[i].0, chunks[i].1).encode(&mut out);
            } else {
                s2.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Piece::Data(c).encode(&mut out);
            }
            i += 1;
            b.inc(n);
            c2.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            if out.len() >= 256 << 10 {
                tx.blocking_send(out.split().freeze())
                    .map_err(|_| anyhow::anyhow!("the upload stopped"))?;
            }
            Ok(())
        })?;
        if !out.is_empty() {
            let _ = tx.blocking_send(out.freeze());
        }
        Ok::<(), anyhow::Error>(())
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| {
            (
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)),
                rx,
            )
        })
    });
    let result = client
        .put_pieces(path, BodyExt::boxed(StreamBody::new(stream)))
        .await;
    let produced = producer.await?;
    match result {
        Ok(reply) => {
            produced?;
            let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
            Ok(Some(Pushed::Published { reply, sent }))
        }
        // A named chunk went away (a garbage collection in between): send the file whole.
        Err(ClientError::Status { status, .. }) if status == StatusCode::CONFLICT => {
            bar.dec(counted.load(std::sync::atomic::Ordering::Relaxed));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn run(a: Args) -> Result<()> {
    let client = OriginClient::new(&a.origin, a.token.clone())?;
    let Plan { files, skipped } = plan(
        &a.path,
        &a.prefix,
        &Filter::new(a.include_hidden, &a.exclude)?,
    )?;
    report_skipped(&skipped);
    if files.is_empty() {
        bail!("{} holds no files to publish", a.path.display());
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let total: u64 = files.iter().map(|(p, _)| size(p)).sum();
    if a.dry_run {
        for (local, path) in &files {
            println!("{} -> /{path} ({} bytes)", local.display(), size(local));
        }
        println!(
            "would publish {} files, {total} bytes to {} (dry run: nothing was sent)",
            files.len(),
            a.origin
        );
        return Ok(());
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap(),
    );
    // Small work finishes before a bar would help; only draw one for big pushes.
    if total < 64 << 20 && files.len() < 50 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let client = Arc::new(client);
    let single = (files.len() == 1 && std::fs::metadata(&a.path).is_ok_and(|m| m.is_file()))
        .then(|| files[0].clone());
    let planned: std::collections::HashSet<String> = files.iter().map(|(_, p)| p.clone()).collect();
    // What is published already: a file whose bytes are there at its path is not sent. One
    // file: its manifest; a folder: one listing of the prefix. Unknown: everything is sent.
    let published: Arc<Published> = Arc::new(match &single {
        Some((_, path)) => match client.manifest(path).await {
            Ok(Some(m)) => [(m.path, (m.size, m.blake3))].into(),
            _ => Published::new(),
        },
        None => list(&client, &folder_of(&a.prefix))
            .await
            .map(|l| {
                l.into_iter()
                    .map(|f| (f.path, (f.size, f.blake3)))
                    .collect()
            })
            .unwrap_or_default(),
    });
    // A refused token refuses every file alike: the first refusal stops what has not started.
    let refused = Arc::new(std::sync::OnceLock::<String>::new());
    let results: Vec<(String, Result<Pushed>)> = futures_util::stream::iter(files)
        .map(|(local, path)| {
            let (client, bar, refused) = (client.clone(), bar.clone(), refused.clone());
            let before = published.get(&path).copied();
            async move {
                if refused.get().is_some() {
                    return (path, Err(anyhow::anyhow!("not sent")));
                }
                let r = push_one(&client, local, &path, before, bar).await;
                let r: Result<Pushed> = r.inspect_err(|e: &anyhow::Error| {
                    if let Some(ClientError::Status {
                        status, message, ..
                    }) = e.downcast_ref::<ClientError>()
                        && (*status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN)
                    {
                        let _ = refused.set(format!("{status}: {message}"));
                    }
                });
                (path, r)
            }
        })
        .buffer_unordered(a.jobs.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    if let Some(why) = refused.get() {
        let sent = results.iter().filter(|(_, r)| r.is_ok()).count();
        bail!(
            "the origin refused the write token ({why}); stopped after {sent} of {} files \
             (give the origin's write token with --token or TESSERA_TOKEN)",
            results.len()
        );
    }
    let (mut n, mut bytes, mut chunks, mut new_chunks, mut added, mut failed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut unchanged, mut unchanged_bytes, mut sent) = (0u64, 0u64, 0u64);
    for (path, r) in &results {
        match r {
            Ok(Pushed::Unchanged(size)) => {
                unchanged += 1;
                unchanged_bytes += size;
            }
            Ok(Pushed::Published {
                reply: rep,
                sent: s,
            }) => {
                n += 1;
                bytes += rep.size;
                chunks += rep.chunks;
                new_chunks += rep.new_chunks;
                added += rep.stored_bytes_added;
                sent += s;
            }
            Err(e) => {
                failed += 1;
                eprintln!("failed: {path}: {e:#}");
            }
        }
    }
    match &single {
        Some((local, path)) if failed == 0 && unchanged == 1 => println!(
            "/{path} already holds the bytes of {}: not sent",
            local.display()
        ),
        Some((local, path)) if failed == 0 => {
            println!("published {} as /{path}", local.display())
        }
        _ => {}
    }
    if n > 0 || unchanged == 0 {
        println!(
            "published {n} files, {} ({bytes} bytes) in {chunks} chunks ({new_chunks} new){}",
            HumanBytes(bytes),
            match a.prefix.trim_matches('/') {
                "" => String::new(),
                p => format!(" under /{p}/"),
            }
        );
    }
    if sent < bytes {
        println!(
            "sent {} of them: the origin had the other chunks",
            HumanBytes(sent)
        );
    }
    if unchanged > 0 {
        println!(
            "unchanged: {unchanged} files, {} (the origin publishes the same bytes at their \
             paths; not sent)",
            HumanBytes(unchanged_bytes)
        );
    }
    println!("{}", stored_line(bytes, added));
    if let Ok(s) = client.stats().await {
        println!(
            "origin now holds {} files, {}; dedup {:.2}x, compression {:.2}x, overall {:.2}x",
            s.objects,
            HumanBytes(s.logical_bytes),
            s.dedup_ratio,
            s.compression_ratio,
            s.efficiency
        );
    }
    if failed > 0 {
        bail!("{failed} of {} files failed to publish", results.len());
    }
    if a.delete {
        delete_unlisted(&client, &a.prefix, &planned).await?;
    }
    Ok(())
}

/// What a push added to the origin's disk, in words.
fn stored_line(bytes: u64, added: u64) -> String {
    if added == 0 {
        return "stored nothing new: the origin already had every chunk".into();
    }
    let pct = added as f64 * 100.0 / bytes.max(1) as f64;
    let share = if pct < 0.1 {
        "under 0.1 %".to_string()
    } else {
        format!("{pct:.1} %")
    };
    format!(
        "stored {} new on the origin, {share} of the files' size (after dedup and \
         compression{})",
        HumanBytes(added),
        if pct > 100.0 {
            "; copies in a cluster count"
        } else {
            ""
        }
    )
}

/// `--delete`: removes the published files under `prefix` that this push did not list.
async fn delete_unlisted(
    client: &OriginClient,
    prefix: &str,
    planned: &std::collections::HashSet<String>,
) -> Result<()> {
    let prefix = prefix.trim_matches('/');
    let listed = list(client, &folder_of(prefix)).await?;
    let gone: Vec<String> = listed
        .into_iter()
        .map(|l| l.path)
        .filter(|p| !planned.contains(p))
        .collect();
    for p in &gone {
        delete_one(client, p).await?;
        println!("deleted /{p} (not in the folder)");
    }
    if gone.is_empty() {
        println!("deleted nothing: every published file under /{prefix} is in the folder");
    }
    Ok(())
}

/// The listing prefix of the files a push under `prefix` publishes: `www/`, not `www`, so
/// the folder's files and not also those of `www2/`.
fn folder_of(prefix: &str) -> String {
    match prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    }
}

/// A published file, as the origin lists it.
#[derive(serde::Deserialize)]
struct Listed {
    path: String,
    size: u64,
    blake3: ChunkHash,
}

/// The published files whose paths start with `prefix`.
async fn list(client: &OriginClient, prefix: &str) -> Result<Vec<Listed>> {
    let q: String = url_escape(prefix);
    let (parts, body) = client
        .call(
            http::Method::GET,
            &format!("/api/v1/files?prefix={q}"),
            UploadBody::default(),
        )
        .await?;
    anyhow::ensure!(
        parts.status.is_success(),
        "cannot list the origin's files: {} {}",
        parts.status,
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).context("the origin's file list is malformed")
}

/// Deletes one published file; an error names it and what the origin said.
async fn delete_one(client: &OriginClient, path: &str) -> Result<()> {
    let (parts, body) = client
        .call(
            http::Method::DELETE,
            &format!("/api/v1/files/{}", url_escape(path).replace("%2F", "/")),
            UploadBody::default(),
        )
        .await?;
    match parts.status {
        s if s.is_success() => Ok(()),
        StatusCode::NOT_FOUND => bail!("/{path} is not published"),
        s => bail!(
            "cannot delete /{path}: {s} {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

fn url_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Options of `tessera delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Published paths to delete, e.g. /img/old.png.
    #[arg(required = true)]
    paths: Vec<String>,
    /// Origin URL, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    origin: String,
    /// The origin's write token.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `tessera delete PATH…`: each path deleted in turn; the first failure stops it.
pub async fn delete(a: DeleteArgs) -> Result<()> {
    let client = OriginClient::new(&a.origin, a.token)?;
    for p in &a.paths {
        let path = p.trim_start_matches('/');
        validate_path(path).map_err(|e| anyhow::anyhow!("{p:?} is not a published path: {e}"))?;
        delete_one(&client, path).await?;
        println!("deleted /{path}");
    }
    Ok(())
}
