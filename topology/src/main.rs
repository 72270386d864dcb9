//! `tessera`: one binary for every role of a Tessera network.
//!
//! Subcommands: `up` runs a whole network from a topology file, `origin` runs a storage
//! node, `edge` a caching edge node, `push` publishes files to an origin, `get` fetches a
//! URL over HTTP/1.1, HTTP/2 or HTTP/3, `plugin` deploys an edge's WebAssembly plugins,
//! `cluster` adds and removes origin cluster members.
//! The roles themselves live in their own library crates; this binary only wires them
//! together (and holds the topology file, `file`).

mod cmd;
mod file;
#[cfg(test)]
mod reference;

use clap::{Parser, Subcommand};

/// Tessera: a content delivery network you can run yourself.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, propagate_version = true)]
struct Cli {
    /// Log lines (stderr) as `text` or as one JSON object per line (`json`), access-log
    /// lines included.
    #[arg(long, global = true, env = "TESSERA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], display_order = 1000)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole network on this machine: every node of a topology file (default: three
    /// origins and two edges on loopback), with a demo site published.
    Up(cmd::up::Args),
    /// Run an origin storage node: publishers push files to it; edges read from it.
    Origin(cmd::origin::Args),
    /// Run an edge node: a caching proxy in front of origins or any HTTP server.
    Edge(cmd::edge::Args),
    /// Publish a file or a folder to an origin.
    Push(cmd::push::Args),
    /// Delete published files from an origin.
    Delete(cmd::push::DeleteArgs),
    /// Fetch a URL over HTTP/1.1, HTTP/2 or HTTP/3 (`--http3`).
    Get(cmd::get::Args),
    /// Deploy, list, roll back or remove an edge's WebAssembly plugins; sign URLs.
    Plugin(cmd::plugin::Args),
    /// Add or remove an origin cluster's members while it runs; show its state.
    Cluster(cmd::cluster::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process, installed before anything uses rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // foyer's own information lines (its recovery steps, "mock mode" with no SSD tier) are
    // not the operator's business; its warnings are.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| "info,foyer=warn,foyer_storage=warn,foyer_memory=warn".into());
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        cmd::announce_as_json(true);
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Up(a) => {
                cmd::origin::ignore_hangups();
                cmd::up::run(a).await
            }
            Command::Origin(a) => {
                cmd::origin::ignore_hangups();
                cmd::origin::run(a).await
            }
            Command::Edge(a) => {
                cmd::origin::ignore_hangups();
                cmd::edge::run(a).await
            }
            Command::Push(a) => cmd::push::run(a).await,
            Command::Delete(a) => cmd::push::delete(a).await,
            Command::Get(a) => cmd::get::run(a).await,
            Command::Plugin(a) => cmd::plugin::run(a).await,
            Command::Cluster(a) => cmd::cluster::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cmd::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
