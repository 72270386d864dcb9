//! `tessera-bench`: Tessera's benchmarks. Every figure it prints comes with a peer measured
//! in the same run where one exists.
//!
//! - `ingest`: chunking, hashing and compression rates per core, the choice of chunk sizes
//!   and brotli quality, a full ingest through a real origin side by side with
//!   `restic backup` of the same data, and reads of a stored 100 MiB file.
//! - `edge-hits`: memory hits of the edge against nginx `proxy_cache` and Varnish (wrk).
//! - `policy`: hit ratios of foyer's eviction policies on Zipf workloads.
//! - `hit-ratio`: the hit ratio against cache size through a real edge, nginx and Varnish.
//! - `run`: one of the seed's workloads against a running origin and edge.
//! - `compare`: one workload against Tessera and nginx, Varnish and Caddy, side by side.
//! - `cluster`: ring balance, origin cluster throughput with 1–3 nodes, a scale model.
//! - `report`: runs all of them and writes `bench/RESULTS.md` and the README's headlines.
//! - `workloads`: the seed's workload generators (`workload.rs`), described without sending.
//! - `http3`: memory hits over HTTP/1.1, HTTP/2 and HTTP/3 against Caddy, and 100 MiB
//!   downloads over HTTP/3 with the QUIC settings the edge could use.

mod chaos;
mod cluster;
mod cold_miss;
mod compare;
mod connections;
mod edge_hits;
mod faults;
mod fuzz;
mod hit_ratio;
mod http3;
mod ingest;
mod load;
mod plot;
mod plugins;
mod policy;
mod report;
mod run;
mod seeks;
mod slow_readers;
#[cfg(test)]
mod testing;
mod trace_ratio;
mod workload;

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
    /// Memory hits over HTTP/1.1 against nginx proxy_cache and Varnish (wrk).
    EdgeHits(edge_hits::Args),
    /// Hit ratios of foyer's eviction policies on Zipf workloads (the edge's choice).
    Policy(policy::Args),
    /// Hit ratio against cache size through a real edge, nginx and Varnish (cdn workload).
    HitRatio(hit_ratio::Args),
    /// Memory hits over HTTP/1.1, HTTP/2 and HTTP/3 against Caddy; 100 MiB over HTTP/3.
    Http3(http3::Args),
    /// Run one of the seed's workloads against an origin (writes) and an edge (reads).
    Run(run::Args),
    /// Time to the last byte of a cold large object through Tessera's edge in origin mode,
    /// nginx and Varnish in front of the same origin, and the origin's own GET.
    ColdMiss(cold_miss::Args),
    /// Cold misses through an edge whose first of two origins is healthy, hung, resetting or
    /// slow (the fault proxy between them): failures, latency, hedges, ejections.
    Faults(faults::Args),
    /// Seeks into a cold large object (random ranges) through an upstream-mode edge, which
    /// fetches slices, against nginx with its slice module, same upstream.
    Seeks(seeks::Args),
    /// Many slow clients on cold large objects through an upstream-mode edge: its RSS, and a
    /// fast client's throughput beside them.
    SlowReaders(slow_readers::Args),
    /// Idle HTTP/1.1 and QUIC connections and slowloris against one edge: its RSS per
    /// connection, and a normal client's p99 beside them.
    Connections(connections::Args),
    /// Every cargo-fuzz target of the edge and the origin for a fixed number of executions
    /// (nightly and cargo-fuzz needed).
    Fuzz(fuzz::Args),
    /// A workload through an origin cluster and an edge while faults and kills come and go:
    /// failed reads, corrupt bodies, lost writes, RSS and open files.
    Chaos(chaos::Args),
    /// One workload against Tessera's edge and nginx, Varnish and Caddy in front of the
    /// same origin, in one run.
    Compare(compare::Args),
    /// The origin cluster: ring balance, publish and read throughput with 1, 2 and 3
    /// origin nodes, and a scale model for the seed's cluster targets.
    Cluster(cluster::Args),
    /// What the WebAssembly plugin hooks cost: per call, and edge requests/s with and without
    /// signed-url + router bound.
    Plugins(plugins::Args),
    /// Run every benchmark and write bench/RESULTS.md (machine, date, commands, figures,
    /// charts) and the README's headline figures.
    Report(report::Args),
    /// Generate the seed's workloads (read-heavy, write-heavy, cdn, backup, trace) and print
    /// their shape, sending nothing.
    Workloads(workload::Args),
}

/// A multi-threaded runtime with `workers` threads, for the client side of a benchmark
/// (the servers it measures run in their own processes).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(a) => ingest::run(a),
        Command::Policy(a) => policy::run(a),
        // `--trace`: the trace through an origin-mode edge (trace_ratio) instead.
        Command::HitRatio(a) => match a.trace.clone() {
            Some(trace) => runtime(1)?.block_on(trace_ratio::run(&a, &trace)),
            None => hit_ratio::run(a),
        },
        Command::EdgeHits(a) => edge_hits::run(a),
        Command::Workloads(a) => workload::run(a),
        Command::Compare(a) => compare::run(a),
        Command::ColdMiss(a) => cold_miss::run(a),
        Command::Faults(a) => faults::run(a),
        Command::Chaos(a) => chaos::run(a),
        Command::Fuzz(a) => fuzz::run(a),
        Command::Connections(a) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            connections::run(a)
        }
        Command::SlowReaders(a) => slow_readers::run(a),
        Command::Seeks(a) => seeks::run(a),
        Command::Cluster(a) => cluster::run(a),
        Command::Plugins(a) => plugins::run(a),
        Command::Report(a) => report::run(a),
        Command::Run(a) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            run::run(a)
        }
        Command::Http3(a) => {
            // One TLS provider for the process (the edge's client also passes it explicitly).
            let _ = rustls::crypto::ring::default_provider().install_default();
            http3::run(a)
        }
    }
}
