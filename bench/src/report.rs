//! `tessera-bench report`: runs every benchmark and writes `bench/RESULTS.md` from what they
//! print, with the machine description, the date and the exact command of each section, and
//! the charts they draw into `bench/plots/`. The headline figure of each section (the lines
//! a benchmark prints as `Headline: …`) also goes into the README between
//! `<!-- bench:begin -->` and `<!-- bench:end -->`, so the README's numbers come from the
//! same run.
//!
//! Each benchmark runs as a child process of this binary (`tessera-bench ARGS`), in turn, so
//! one cannot disturb the next; its standard error (progress) passes through, its standard
//! output becomes the section. A benchmark that fails or runs past `--section-minutes` is
//! recorded as failed with its last output, and the report goes on; the command then exits
//! non-zero. `--only` reruns some sections and keeps the others as they are in the file
//! (each section carries its own date).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Options of `tessera-bench report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The results file to (re)write.
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
    /// The README whose headline block is rewritten ("" to leave it alone).
    #[arg(long, default_value = "README.md")]
    pub readme: PathBuf,
    /// Where the charts go (linked from the results file).
    #[arg(long, default_value = "bench/plots")]
    pub plots: PathBuf,
    /// Run only these sections (names as in `--list`); the others stay as they are.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Shorter runs (a few seconds each): a check that everything works, not figures to
    /// quote. The file says so.
    #[arg(long)]
    pub quick: bool,
    /// List the sections and their commands, and run nothing.
    #[arg(long)]
    pub list: bool,
    /// A section still running after this many minutes is stopped and recorded as failed.
    #[arg(long, default_value_t = 20)]
    pub section_minutes: u64,
}

/// One benchmark of the report.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: &'static str,
    pub title: &'static str,
    /// Arguments of `tessera-bench`.
    pub args: Vec<String>,
}

/// The sections, in the order they run and appear.
pub fn sections(plots: &Path, quick: bool) -> Vec<Section> {
    let p = |f: &str| plots.join(f).display().to_string();
    let q = |full: &[&str], short: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = full.iter().map(|s| s.to_string()).collect();
        if quick {
            v.extend(short.iter().map(|s| s.to_string()));
        }
        v
    };
    let compare = |workload: &str, protocol: &str, plot: Option<&str>| {
        let mut v = vec![
            "compare",
            "--workload",
            workload,
            "--protocol",
            protocol,
            "--seconds",
            if quick { "2" } else { "5" },
            "--rounds",
            if quick { "1" } else { "3" },
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some(dir) = plot {
            v.extend(["--plot".to_string(), p(dir)]);
        }
        v
    };
    vec![
        Section {
            name: "ingest",
            title: "Ingest: chunking, hashing, compression, and a full ingest against restic",
            args: q(&["ingest"], &["--mib", "32"]),
        },
        Section {
            name: "edge-hits",
            title: "Edge memory hits against nginx proxy_cache and Varnish (wrk)",
            args: q(&["edge-hits"], &["--seconds", "2"]),
        },
        Section {
            name: "hit-ratio",
            title: "Hit ratio against cache size, through the edge, nginx and Varnish",
            args: q(
                &["hit-ratio", "--plot", &p("hit-ratio.svg")],
                &["--requests", "20000", "--sizes", "4,16,64"],
            ),
        },
        Section {
            name: "hit-ratio-trace",
            title: "Object hit ratio of a CDN trace at fixed memory budgets, origin mode",
            args: q(
                &[
                    "hit-ratio",
                    "--trace",
                    "bench/traces/cdn-2000rps-25s-x0.1.csv",
                    "--peers",
                    "varnish",
                ],
                &["--sizes", "4"],
            ),
        },
        Section {
            name: "policy",
            title: "Eviction policies of the memory tier (foyer, simulated)",
            args: q(
                &["policy", "--plot", &p("policy-hit-ratio.svg")],
                &["--requests", "200000"],
            ),
        },
        Section {
            name: "compare-cdn",
            title: "The cdn workload through Tessera, nginx, Varnish and Caddy (HTTP/1.1)",
            args: compare("cdn", "http1", Some("cdn")),
        },
        Section {
            name: "compare-cdn-http2",
            title: "The cdn workload over HTTP/2",
            args: compare("cdn", "http2", None),
        },
        Section {
            name: "compare-cdn-http3",
            title: "The cdn workload over HTTP/3",
            args: compare("cdn", "http3", None),
        },
        Section {
            name: "compare-read-heavy",
            title: "The read-heavy workload (80 % reads of 1 KB–1 GB objects, scaled)",
            args: compare("read-heavy", "http1", Some("read-heavy")),
        },
        Section {
            name: "compare-write-heavy",
            title: "The write-heavy workload (80 % writes in batches of 10)",
            args: compare("write-heavy", "http1", Some("write-heavy")),
        },
        Section {
            name: "compare-read-heavy-http2",
            title: "The read-heavy workload over HTTP/2",
            args: compare("read-heavy", "http2", None),
        },
        Section {
            name: "compare-write-heavy-http2",
            title: "The write-heavy workload over HTTP/2",
            args: compare("write-heavy", "http2", None),
        },
        Section {
            name: "compare-backup",
            title: "The backup workload (successive versions, restores)",
            args: compare("backup", "http1", Some("backup")),
        },
        Section {
            name: "cold-miss",
            title: "Cold misses of a 64 MiB object: Tessera's edge, nginx, Varnish, the origin",
            args: q(&["cold-miss"], &["--mib", "16", "--rounds", "1"]),
        },
        Section {
            name: "seeks",
            title: "Seeks into a cold 1 GiB object: Tessera's slices against nginx's slice module",
            args: q(&["seeks", "--no-slices"], &["--mib", "64", "--seeks", "20"]),
        },
        Section {
            name: "faults",
            title: "Cold misses with one of two origins hung, resetting or slow (hedging, ejection)",
            args: q(&["faults"], &["--misses", "60"]),
        },
        Section {
            name: "slow-readers",
            title: "Slow readers of cold 1 GiB objects: the edge's memory, a fast client beside them",
            args: q(&["slow-readers"], &["--readers", "10", "--seconds", "12"]),
        },
        Section {
            name: "connections",
            title: "Idle HTTP/1.1 and QUIC connections and slowloris: RSS per connection, a normal client beside them",
            args: q(
                &["connections"],
                &["--tcp", "2000", "--quic", "500", "--slowloris", "1000"],
            ),
        },
        Section {
            name: "fuzz",
            title: "Fuzzing: every cargo-fuzz target of the edge and the origin",
            args: q(&["fuzz"], &["--runs", "100000"]),
        },
        Section {
            name: "chaos",
            title: "Chaos: faults and kills under a workload (30 minutes)",
            args: [
                "chaos",
                "--minutes",
                if quick { "2" } else { "30" },
                "--plots",
                &p(""),
            ]
            .map(String::from)
            .to_vec(),
        },
        Section {
            name: "compare-trace",
            title: "A CSV trace replayed at its own times (open loop)",
            args: {
                let mut v = compare("trace", "http1", None);
                v.extend(["--trace".into(), "bench/traces/cdn-2000rps-5s.csv".into()]);
                v
            },
        },
        Section {
            name: "compare-trace-publishing",
            title: "The same trace while 20,000 small files are pushed to the origin",
            args: {
                let mut v = compare("trace", "http1", None);
                v.extend([
                    "--trace".into(),
                    "bench/traces/cdn-2000rps-5s.csv".into(),
                    "--publish-files".into(),
                    "20000".into(),
                ]);
                v
            },
        },
        Section {
            name: "compare-trace-backlog",
            title: "The same trace through an edge started behind a feed backlog of 40,000 changes",
            args: {
                let mut v = compare("trace", "http1", None);
                // One round: later rounds would find the backlog long applied.
                let r = v.iter().position(|a| a == "--rounds").unwrap();
                v[r + 1] = "1".into();
                v.extend([
                    "--trace".into(),
                    "bench/traces/cdn-2000rps-5s.csv".into(),
                    "--backlog-files".into(),
                    "40000".into(),
                ]);
                v
            },
        },
        Section {
            name: "http3",
            title: "HTTP/1.1, HTTP/2 and HTTP/3 memory hits against Caddy; 100 MiB downloads",
            args: q(&["http3"], &["--seconds", "2", "--downloads", "1"]),
        },
        Section {
            name: "cluster",
            title: "The origin cluster: ring balance, 1–3 nodes, scale model, anti-entropy",
            args: q(
                &["cluster"],
                &[
                    "--publish-mib",
                    "64",
                    "--metadata-secs",
                    "1",
                    "--repair-files",
                    "20000",
                    "--missed",
                    "2000",
                ],
            ),
        },
        Section {
            name: "plugins",
            title: "WebAssembly plugins: cost per hook call and at the edge",
            args: q(
                &["plugins", "--rounds", if quick { "1" } else { "6" }],
                &["--seconds", "2", "--calls", "20000"],
            ),
        },
    ]
}

/// What one section printed, ready for the file.
#[derive(Debug)]
struct Ran {
    body: String,
    headlines: Vec<String>,
    ok: bool,
}

/// The process group of the benchmark running now (0: none).
static RUNNING: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Stops process group `pgid` (a benchmark and the servers it started): SIGTERM, so they
/// stop their own children, then SIGKILL after 5 s.
fn stop_group(pgid: u32) {
    // The shell's own `kill` (procps may be missing).
    let signal = |s: &str| crate::edge_hits::sh_ok(&format!("kill {s} -{pgid}"));
    if !signal("-TERM") {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && signal("-0") {
        std::thread::sleep(Duration::from_millis(100));
    }
    signal("-KILL");
}

/// On Ctrl-C or SIGTERM, stops the running benchmark's process group before exiting (each
/// benchmark runs in a group of its own, which the terminal's signal does not reach).
fn stop_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let pgid = RUNNING.load(std::sync::atomic::Ordering::SeqCst);
        if pgid != 0 {
            eprintln!("report: stopping the running benchmark");
            stop_group(pgid);
        }
        std::process::exit(130);
    });
}

/// Runs `tessera-bench ARGS` in a process group of its own, with a deadline; stderr passes
/// through.
fn run_section(s: &Section, deadline: Duration) -> Result<Ran> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(&s.args)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting section {}", s.name))?;
    RUNNING.store(child.id(), std::sync::atomic::Ordering::SeqCst);
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if started.elapsed() > deadline {
            stop_group(child.id());
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    RUNNING.store(0, std::sync::atomic::Ordering::SeqCst);
    let text = reader.join().unwrap_or_default();
    let (mut body, headlines) = markdown(&text);
    let ok = status.is_some_and(|st| st.success());
    if !ok {
        let why = match status {
            Some(st) => format!("exited with {st}"),
            None => format!("was stopped after {} minutes", deadline.as_secs() / 60),
        };
        body.push_str(&format!(
            "\n**FAILED: this benchmark {why}; its standard error above the report's \
             progress tells why. The figures above, if any, are partial.**\n"
        ));
    }
    Ok(Ran {
        body,
        headlines,
        ok,
    })
}

/// Turns a benchmark's output into Markdown that renders as it reads: headings nest under
/// the section's, tables and lists are kept apart from plain lines by blank lines, and
/// plain lines keep their line breaks. `Headline: …` lines are taken out and returned.
pub fn markdown(text: &str) -> (String, Vec<String>) {
    #[derive(PartialEq, Clone, Copy)]
    enum Block {
        None,
        Table,
        List,
        Plain,
    }
    let mut out = String::new();
    let mut headlines = Vec::new();
    let mut last = Block::None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(h) = line.strip_prefix("Headline: ") {
            headlines.push(h.to_string());
            continue;
        }
        let kind = if line.is_empty() {
            Block::None
        } else if line.starts_with('|') {
            Block::Table
        } else if line.starts_with("- ") || line.starts_with("* ") {
            Block::List
        } else {
            Block::Plain
        };
        if let Some(rest) = line.strip_prefix('#') {
            // "# x" → "### x": the section's own heading is "##".
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(&format!("###{rest}\n\n"));
            last = Block::None;
            continue;
        }
        if kind != last && kind != Block::None && last != Block::None {
            out.push('\n');
        }
        out.push_str(line);
        if kind == Block::Plain {
            // A hard line break, so the lines of a log stay lines.
            out.push('\\');
        }
        out.push('\n');
        last = kind;
    }
    // A hard break at the very end of a paragraph shows as a stray backslash.
    let mut fixed = out.replace("\\\n\n", "\n\n");
    while fixed.contains("\n\n\n") {
        fixed = fixed.replace("\n\n\n", "\n\n");
    }
    let fixed = fixed
        .strip_suffix("\\\n")
        .map_or(fixed.clone(), |s| format!("{s}\n"));
    (fixed, headlines)
}

/// The machine the benchmarks ran on, as a Markdown list.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once([':', '=']))
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let mem_kib: f64 = field(&read("/proc/meminfo"), "MemTotal")
        .trim_end_matches(" kB")
        .parse()
        .unwrap_or(0.0);
    let run = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .ok()
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "not installed".into())
    };
    let mut m = vec![
        format!(
            "CPU: {} ({})",
            crate::edge_hits::machine(),
            run("systemd-detect-virt 2>/dev/null || echo unknown virtualisation")
        ),
        format!("Memory: {:.1} GiB", mem_kib / (1 << 20) as f64),
        format!(
            "System: {}, Linux {}",
            field(&read("/etc/os-release"), "PRETTY_NAME"),
            read("/proc/sys/kernel/osrelease").trim()
        ),
        format!(
            "Disk of the working folder: {}",
            run("df -hT . | awk 'NR==2 {print $1\", \"$2\", \"$3\" total\"}'")
        ),
        format!("Rust: {}", run("rustc --version")),
        format!(
            "Tessera: commit {}{}",
            run("git rev-parse --short HEAD"),
            if Command::new("git")
                .args(["diff", "--quiet", "HEAD"])
                .status()
                .is_ok_and(|s| s.code() == Some(1))
            {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
    ];
    let peers = [
        ("nginx", "nginx -v"),
        ("Varnish", "varnishd -V"),
        ("Caddy", "caddy version"),
        ("wrk", "wrk -v"),
        ("restic", "restic version"),
    ];
    let versions: Vec<String> = peers
        .iter()
        .map(|(n, c)| format!("{n} `{}`", run(&format!("{c} 2>&1 | head -1"))))
        .collect();
    m.push(format!("Peers (Debian packages): {}", versions.join(", ")));
    m.iter().map(|l| format!("- {l}\n")).collect()
}

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

fn section_marks(name: &str) -> (String, String) {
    (
        format!("<!-- section {name} -->"),
        format!("<!-- end {name} -->"),
    )
}

/// The text of section `name` in an earlier results file, markers included.
fn old_section(old: &str, name: &str) -> Option<String> {
    let (b, e) = section_marks(name);
    let start = old.find(&b)?;
    let end = old[start..].find(&e)? + start + e.len();
    Some(old[start..end].to_string())
}

/// The headlines recorded in an earlier section.
fn old_headlines(section: &str) -> Vec<String> {
    section
        .lines()
        .filter_map(|l| l.strip_prefix("<!-- headline "))
        .filter_map(|l| l.strip_suffix(" -->"))
        .map(str::to_string)
        .collect()
}

/// Replaces the text between the README's markers with `block`.
pub fn replace_block(readme: &str, block: &str) -> Result<String> {
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        bail!("the README has no {BEGIN} … {END} block to write the headlines into");
    };
    if e < b {
        bail!("the README's {END} comes before its {BEGIN}");
    }
    Ok(format!(
        "{}{BEGIN}\n{block}{END}{}",
        &readme[..b],
        &readme[e + END.len()..]
    ))
}

fn now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn run(a: Args) -> Result<()> {
    let all = sections(&a.plots, a.quick);
    if a.list {
        for s in &all {
            println!("{:20} tessera-bench {}", s.name, s.args.join(" "));
        }
        return Ok(());
    }
    for o in &a.only {
        if !all.iter().any(|s| s.name == o) {
            bail!("no section {o:?} (see `tessera-bench report --list`)");
        }
    }
    crate::edge_hits::tessera_exe()?;
    stop_on_signal();
    std::fs::create_dir_all(&a.plots).with_context(|| format!("creating {}", a.plots.display()))?;
    let old = std::fs::read_to_string(&a.out).unwrap_or_default();
    let machine = machine();
    let short = crate::edge_hits::machine();
    let mut command = "./target/release/tessera-bench report".to_string();
    if a.quick {
        command.push_str(" --quick");
    }
    if !a.only.is_empty() {
        command.push_str(&format!(" --only {}", a.only.join(",")));
    }
    let mut body = String::new();
    let mut headlines: Vec<(String, String)> = Vec::new();
    let mut failed = Vec::new();
    for s in &all {
        let rerun = a.only.is_empty() || a.only.iter().any(|o| o == s.name);
        if !rerun {
            if let Some(text) = old_section(&old, s.name) {
                for h in old_headlines(&text) {
                    headlines.push((s.title.to_string(), h));
                }
                body.push_str(&text);
                body.push_str("\n\n");
            }
            continue;
        }
        eprintln!("== report: {} (tessera-bench {})", s.name, s.args.join(" "));
        let started = Instant::now();
        let date = now();
        // The chaos run lasts 30 minutes by design; the fuzz campaigns (10 million runs of
        // each target) took 41 minutes on a quiet machine (plugin_request alone 16), more on
        // a busy one.
        let minutes = match s.name {
            "chaos" if !a.quick => a.section_minutes.max(40),
            "fuzz" if !a.quick => a.section_minutes.max(60),
            _ => a.section_minutes,
        };
        let ran = run_section(s, Duration::from_secs(minutes * 60))?;
        if !ran.ok {
            failed.push(s.name);
        }
        let (b, e) = section_marks(s.name);
        body.push_str(&format!("{b}\n## {}\n\n", s.title));
        body.push_str(&format!(
            "`./target/release/tessera-bench {}` — {date}, {:.0} s, {short}{}\n\n",
            s.args.join(" "),
            started.elapsed().as_secs_f64(),
            if a.quick { ", **quick run**" } else { "" }
        ));
        for h in &ran.headlines {
            body.push_str(&format!("<!-- headline {h} -->\n"));
            headlines.push((s.title.to_string(), h.clone()));
        }
        if !ran.headlines.is_empty() {
            body.push_str(&format!("**{}**\n\n", ran.headlines.join(" · ")));
        }
        body.push_str(&ran.body);
        body.push_str(&format!("\n{e}\n\n"));
    }
    let charts: Vec<String> = walk_svgs(&a.plots)
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(a.out.parent()?).ok()?.display().to_string();
            Some(format!("- [{rel}]({rel})\n"))
        })
        .collect();
    let head = format!(
        "# Benchmark results\n\n\
         Written by `{command}` (after `cargo build --release -p tessera-topology -p tessera-bench`, \
         from the repository root) on {}{}. Every section below is one `tessera-bench` command, \
         given with its date; rerun one with `tessera-bench report --only NAME`. Peers run on the \
         same machine in the same command, one after another, so read the ratios: these shared \
         vCPUs move absolute rates by 10–20 % from run to run. The analysis written when each \
         figure was first measured, and older runs, are in [HISTORY.md](HISTORY.md).\n\n\
         ## Machine\n\n{machine}\n## Charts\n\n{}\n",
        now(),
        if a.quick {
            " — **a quick run: short durations, a check that everything works, not figures to quote**"
        } else {
            ""
        },
        charts.concat()
    );
    // What follows the last section in the old file (notes written by hand) stays.
    let trailing = all
        .iter()
        .filter_map(|s| {
            let (_, e) = section_marks(s.name);
            old.find(&e).map(|i| i + e.len())
        })
        .max()
        .map_or("", |end| old[end..].trim());
    if !trailing.is_empty() {
        body = format!("{}\n\n{trailing}", body.trim_end());
    }
    std::fs::write(&a.out, format!("{head}{}", body.trim_end()) + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("report: wrote {}", a.out.display());
    if !a.readme.as_os_str().is_empty() {
        let readme = std::fs::read_to_string(&a.readme)
            .with_context(|| format!("reading {}", a.readme.display()))?;
        let mut block = format!(
            "Headline figures of the last `{command}` ({}, {short}; the whole report with \
             every command: [bench/RESULTS.md](bench/RESULTS.md)):\n\n",
            now()
        );
        for (title, h) in &headlines {
            block.push_str(&format!("- {title}: {h}\n"));
        }
        block.push('\n');
        std::fs::write(&a.readme, replace_block(&readme, &block)?)?;
        eprintln!(
            "report: updated the headline block of {}",
            a.readme.display()
        );
    }
    if !failed.is_empty() {
        bail!("sections that failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The SVG files under `dir`, sorted.
fn walk_svgs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_svgs(&p));
            } else if p.extension().is_some_and(|x| x == "svg") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_output_becomes_markdown_that_renders_as_printed() {
        let text = "machine: 2 cores\nline two\n| a | b |\n|---|---|\n| 1 | 2 |\nafter\n\
                    Headline: x1.5 nginx\n# sub\n- item\nplain\n";
        let (md, heads) = markdown(text);
        assert_eq!(heads, ["x1.5 nginx"]);
        assert_eq!(
            md,
            "machine: 2 cores\\\nline two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter\n\n\
             ### sub\n\n- item\n\nplain\n"
        );
    }

    #[test]
    fn the_readme_block_is_replaced_and_a_missing_one_is_an_error() {
        let r = format!("top\n{BEGIN}\nold\n{END}\nbottom\n");
        assert_eq!(
            replace_block(&r, "new\n").unwrap(),
            format!("top\n{BEGIN}\nnew\n{END}\nbottom\n")
        );
        assert!(replace_block("no block", "x").is_err());
        assert!(replace_block(&format!("{END}{BEGIN}"), "x").is_err());
    }

    #[test]
    fn a_kept_section_keeps_its_text_and_headlines() {
        let (b, e) = section_marks("cluster");
        let old = format!("# head\n{b}\n## t\n<!-- headline 3 nodes -->\nfigures\n{e}\n\nmore");
        let s = old_section(&old, "cluster").unwrap();
        assert!(s.starts_with(&b) && s.ends_with(&e) && s.contains("figures"));
        assert_eq!(old_headlines(&s), ["3 nodes"]);
        assert!(old_section(&old, "ingest").is_none());
    }

    #[test]
    fn every_section_parses_as_a_command() {
        use clap::Parser;
        for quick in [false, true] {
            for s in sections(Path::new("bench/plots"), quick) {
                let argv = std::iter::once("tessera-bench".to_string()).chain(s.args.clone());
                crate::Cli::try_parse_from(argv)
                    .unwrap_or_else(|e| panic!("{} ({quick}): {e}", s.name));
            }
        }
    }

    #[test]
    fn the_machine_is_described() {
        let m = machine();
        assert!(
            m.contains("CPU: ") && m.contains("Memory: ") && m.contains("Rust: "),
            "{m}"
        );
        assert!(!m.contains("Memory: 0.0 GiB"), "{m}");
        // Run inside the repository: the commit is a hash, with or without the dirty mark.
        let commit = m
            .lines()
            .find_map(|l| l.strip_prefix("- Tessera: commit "))
            .unwrap();
        let hash = commit.split(' ').next().unwrap();
        assert!(
            hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{m}"
        );
    }

    #[test]
    fn stopping_a_benchmark_stops_what_it_started() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut child = Command::new("sh")
            .args([
                "-c",
                &format!("sleep 60 & echo $! > {}; wait", pidfile.display()),
            ])
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the shell never started its child"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // Running (or a zombie not yet reaped) means /proc has it in a state other than Z.
        let running = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        };
        assert!(running(grandchild));
        stop_group(child.id());
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(grandchild) {
            assert!(
                Instant::now() < deadline,
                "the group's other process still runs"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
