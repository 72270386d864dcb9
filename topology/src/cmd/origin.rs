//! `tessera origin`: one origin storage node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tessera_origin::OriginConfig;

/// Options of `tessera origin`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve the origin API on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Folder for the node's chunks and metadata (created if missing).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Bearer token that writes must carry; reads stay open.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Largest accepted upload, e.g. 10GiB.
    #[arg(long, value_parser = crate::size::parse_size)]
    max_body: Option<u64>,
    /// TOML file with any `OriginConfig` field; command-line options override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub async fn run(a: Args) -> Result<()> {
    let mut config: OriginConfig = super::load_config(a.config.as_deref())?;
    if let Some(d) = a.data {
        config.data = d;
    }
    if a.token.is_some() {
        config.token = a.token;
    }
    if let Some(m) = a.max_body {
        config.max_body_bytes = m;
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    // The line tests and scripts wait for: the bound address (the port may have been 0).
    println!(
        "tessera origin listening on http://{addr} (data in {})",
        config.data.display()
    );
    tessera_origin::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}
