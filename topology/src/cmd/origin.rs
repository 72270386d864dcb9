//! `tessera origin`: one origin storage node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tessera_origin::OriginConfig;

/// Options of `tessera origin`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve the origin API on [default: 127.0.0.1:7070, or `listen` of --config or
    /// --topology].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Folder for the node's chunks and metadata (created if missing) [default:
    /// tessera-data/origin, or the topology's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Bearer token that writes must carry; reads stay open.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Largest accepted upload, e.g. 10GiB [default: 64GiB].
    #[arg(long, value_parser = tessera_origin_proto::size::parse_size)]
    max_body: Option<u64>,
    /// TOML file of origin settings (README "Configuration files"); command-line options
    /// override it.
    #[arg(long, conflicts_with = "topology")]
    config: Option<PathBuf>,
    /// Run the origin `--id` of this topology file as a member of its cluster (address,
    /// data folder, token and ring from the file; options given here override it).
    #[arg(long, requires = "id")]
    topology: Option<PathBuf>,
    /// The origin's id in `--topology`.
    #[arg(long, requires = "topology")]
    id: Option<String>,
}

pub async fn run(a: Args) -> Result<()> {
    let mut config = match (&a.topology, &a.id) {
        (Some(t), Some(id)) => crate::file::load(t)?.origin_config(id)?,
        _ => super::load_config::<OriginConfig>(a.config.as_deref())?,
    };
    let listen = a.listen.unwrap_or(config.listen);
    if let Some(d) = a.data {
        config.data = d;
    }
    if a.token.is_some() {
        config.token = a.token;
    }
    if let Some(m) = a.max_body {
        config.max_body_bytes = m;
    }
    let _lock = super::lock_data_folder(&config.data, "origin", "another --data")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if config.token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            target: "tessera",
            %addr,
            "no write token: anyone who can reach this address can publish and delete files \
             (give --token or TESSERA_TOKEN)"
        );
    }
    // The line tests and scripts wait for: the bound address (the port may have been 0).
    super::announce(&format!(
        "tessera origin listening on http://{addr} (data in {})",
        config.data.display()
    ));
    tessera_origin::run(listener, config, shutdown_signal("origin")).await?;
    Ok(())
}

/// Servers (origin, edge, `up`) no longer end on SIGHUP (what `systemctl reload` and many
/// scripts send): reloading is not supported yet, so each one is logged and ignored. Called
/// first thing, before anything is bound, so no SIGHUP finds the default action.
pub fn ignore_hangups() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!(
                        target: "tessera",
                        "SIGHUP received: reloading the configuration is not supported; \
                         ignored (restart the process to apply changes)"
                    );
                }
            });
        }
        Err(e) => {
            tracing::warn!(target: "tessera", error = %e, "cannot catch SIGHUP; it will end the process")
        }
    }
}

/// Completes on Ctrl-C or SIGTERM, saying that `role` (`origin`, `edge`, `up`) stops.
pub async fn shutdown_signal(role: &'static str) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!(target: "tessera", role, "shutting down");
}
