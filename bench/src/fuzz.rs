//! `tessera-bench fuzz`: every cargo-fuzz target of the edge (`edge/fuzz`) and the origin
//! (`origin/fuzz`), each run for a fixed number of executions (10 million by default), on a
//! nightly toolchain with cargo-fuzz (`cargo install cargo-fuzz`). Reports the executions,
//! the time and the outcome of each; any crash fails the run (libFuzzer keeps the input in
//! the target's `artifacts/` folder).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Options of `tessera-bench fuzz`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Executions per target.
    #[arg(long, default_value_t = 10_000_000)]
    runs: u64,
}

/// The repository's root (the bench crate's parent).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run(a: Args) -> Result<()> {
    println!("machine: {}", crate::edge_hits::machine());
    let mut rows = Vec::new();
    for krate in ["edge", "origin"] {
        let dir = root().join(krate).join("fuzz");
        let list = Command::new("cargo")
            .args(["+nightly", "fuzz", "list"])
            .current_dir(&dir)
            .output()
            .context("running cargo +nightly fuzz list (cargo install cargo-fuzz)")?;
        if !list.status.success() {
            bail!(
                "cargo fuzz list in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&list.stderr)
            );
        }
        for target in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            let started = Instant::now();
            let out = Command::new("cargo")
                .args(["+nightly", "fuzz", "run", "-s", "none", "--target-dir"])
                .arg(root().join("target/fuzz"))
                .args([target, "--", &format!("-runs={}", a.runs)])
                .env("TESSERA_NO_GUESTS", "1")
                .current_dir(&dir)
                .output()
                .with_context(|| format!("fuzzing {krate}/{target}"))?;
            let log = String::from_utf8_lossy(&out.stderr);
            let done = log
                .lines()
                .find(|l| l.starts_with("Done "))
                .unwrap_or("")
                .to_string();
            let secs = started.elapsed().as_secs_f64();
            let ok = out.status.success();
            println!(
                "{krate}/{target}: {} ({secs:.0} s with the build)",
                if ok { done.as_str() } else { "CRASHED" }
            );
            if !ok {
                eprintln!(
                    "{}",
                    log.lines()
                        .rev()
                        .take(40)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            rows.push((format!("{krate}/{target}"), done, secs, ok));
        }
    }
    println!();
    println!(
        "cargo-fuzz targets, {} executions each (`cargo +nightly fuzz run -s none TARGET -- -runs=N`)",
        a.runs
    );
    println!("| target | libFuzzer | time | outcome |");
    println!("|---|---|---|---|");
    for (t, done, secs, ok) in &rows {
        println!(
            "| {t} | {done} | {secs:.0} s | {} |",
            if *ok { "clean" } else { "CRASH" }
        );
    }
    let clean = rows.iter().filter(|r| r.3).count();
    println!(
        "Headline: {clean} of {} fuzz targets ran {} executions each without a crash",
        rows.len(),
        a.runs
    );
    if clean < rows.len() {
        bail!("{} fuzz targets crashed", rows.len() - clean);
    }
    Ok(())
}
