//! `tessera-bench`: Tessera's benchmarks. Every figure it prints comes with a peer measured
//! in the same run where one exists.
//!
//! This part is `ingest`: chunking, hashing and compression rates per core, the
//! choice of chunk sizes and brotli quality, a full ingest through a real origin side by
//! side with `restic backup` of the same data, and reads of a stored 100 MiB file.

mod ingest;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tessera-bench", about = "Tessera's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest and read benchmarks of the origin, against restic.
    Ingest(ingest::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(a) => ingest::run(a),
    }
}
