//! `tessera edge`: one edge node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tessera_edge::{Backend, EdgeConfig, Listeners};

/// Options of `tessera edge`. Every option may also come from `--config` (a TOML file of
/// edge settings, README "Configuration files"); options given here override the file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve plain HTTP/1.1 (and h2c with prior knowledge) here [default: 127.0.0.1:8080
    /// when neither --http nor --https is given].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) here, and HTTP/3 on the same UDP port.
    #[arg(long)]
    https: Option<SocketAddr>,
    /// Do not serve HTTP/3 (QUIC) beside --https.
    #[arg(long)]
    no_http3: bool,
    /// Certificate chain (PEM) for --https; without it a development certificate is made.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --https.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Tessera origin node(s) to serve published files from (tried in order).
    #[arg(long, num_args = 1.., conflicts_with = "upstream")]
    origin: Vec<String>,
    /// Any HTTP server to front as a caching reverse proxy.
    #[arg(long)]
    upstream: Option<String>,
    /// Folder of the SSD tier and the edge's state (created if missing) [default:
    /// tessera-edge-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Size of the memory tier, e.g. 1GiB [default: 256MiB].
    #[arg(long, value_parser = tessera_origin_proto::size::parse_size)]
    memory: Option<u64>,
    /// Size of the SSD tier, e.g. 4GiB; 0 keeps the cache in memory only [default: 1GiB].
    #[arg(long, value_parser = tessera_origin_proto::size::parse_size)]
    disk: Option<u64>,
    /// Serve the admin API (purge, stats, /metrics, /healthz) here.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Token the admin API requires.
    #[arg(long, env = "TESSERA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Log one line per request (protocol, status, cache result, bytes, duration); with
    /// `--log-format json`, as JSON.
    #[arg(long)]
    access_log: bool,
    /// TOML file of edge settings (README "Configuration files").
    #[arg(long, conflicts_with = "topology")]
    config: Option<PathBuf>,
    /// Run the edge `--id` of this topology file (listeners, caches, origins from it;
    /// options given here override it).
    #[arg(long, requires = "id")]
    topology: Option<PathBuf>,
    /// The edge's id in `--topology`.
    #[arg(long, requires = "topology")]
    id: Option<String>,
}

pub async fn run(a: Args) -> Result<()> {
    let mut config = match (&a.topology, &a.id) {
        (Some(t), Some(id)) => crate::file::load(t)?.edge_config(id)?.1,
        _ => super::load_config::<EdgeConfig>(a.config.as_deref())?,
    };
    match (a.origin.is_empty(), a.upstream) {
        (false, _) => {
            config.backend = Backend::Origin(a.origin);
            config.origin_ring = None;
        }
        (true, Some(u)) => config.backend = Backend::Upstream(u),
        (true, None) if a.config.is_some() || a.topology.is_some() => {}
        (true, None) => anyhow::bail!("say where misses go: --origin URL... or --upstream URL"),
    }
    if let Some(d) = a.data {
        config.data = d;
    }
    if let Some(m) = a.memory {
        config.memory_bytes = usize::try_from(m).context("--memory is too large")?;
    }
    if let Some(d) = a.disk {
        config.disk_bytes = usize::try_from(d).context("--disk is too large")?;
    }
    if a.admin_token.is_some() {
        config.admin_token = a.admin_token;
    }
    config.access_log |= a.access_log;
    config.http = a.http.or(config.http);
    config.https = a.https.or(config.https);
    config.admin = a.admin.or(config.admin);
    config.http3 &= !a.no_http3;
    if a.tls_cert.is_some() {
        config.tls_cert = a.tls_cert;
        config.tls_key = a.tls_key;
    }
    if config.http.is_none() && config.https.is_none() {
        config.http = Some("127.0.0.1:8080".parse()?);
    }
    let _lock = super::lock_data_folder(&config.data, "edge", "another --data")?;
    let (listeners, lines) = bind_all(&config).await?;
    let edge = tessera_edge::Edge::open(config, Default::default()).await?;
    // The lines tests and scripts wait for: the bound addresses (ports may have been 0).
    for l in lines {
        super::announce(&l);
    }
    tessera_edge::run(listeners, edge, super::origin::shutdown_signal("edge")).await
}

/// Binds every listener `config` names (`http`, `https` and HTTP/3, `admin`); returns them
/// and one line per listener saying where it is ("tessera edge listening on http://ADDR", …).
pub async fn bind_all(config: &EdgeConfig) -> Result<(Listeners, Vec<String>)> {
    let mut listeners = Listeners::default();
    let mut lines = Vec::new();
    if let Some(addr) = config.http {
        let l = bind(addr).await?;
        lines.push(format!(
            "tessera edge listening on http://{}",
            l.local_addr()?
        ));
        listeners.http = Some(l);
    }
    if let Some(addr) = config.https {
        let id = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => tessera_edge::tls::load(c, k)?,
            (Some(_), None) | (None, Some(_)) => {
                anyhow::bail!("tls_cert and tls_key go together: give both, or neither")
            }
            (None, None) => {
                let id = tessera_edge::tls::development(&config.data.join("tls"))?;
                eprintln!(
                    "no --tls-cert given: using the development certificate {} (for localhost only)",
                    id.cert_path.display()
                );
                id
            }
        };
        let tls = tessera_edge::tls::server_config(&id, &[b"h2", b"http/1.1"])?;
        let (l, udp) = if !config.http3 {
            (bind(addr).await?, None)
        } else {
            let (l, udp) = tessera_edge::h3::bind_https_and_quic(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            (l, Some(udp))
        };
        let bound = l.local_addr()?;
        lines.push(format!("tessera edge listening on https://{bound}"));
        if let Some(udp) = udp {
            let quic = tessera_edge::h3::server_config(&id, config)?;
            lines.push(format!("tessera edge HTTP/3 on udp://{bound}"));
            listeners.h3 = Some((udp, quic));
        }
        listeners.https = Some((l, tls));
    }
    if let Some(addr) = config.admin {
        let l = bind(addr).await?;
        lines.push(format!("tessera edge admin on http://{}", l.local_addr()?));
        listeners.admin = Some(l);
    }
    Ok((listeners, lines))
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
