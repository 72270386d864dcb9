//! `tessera up`: every node of a topology in this process, a demo site published, the URLs
//! printed; Ctrl-C stops them all.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tessera_origin_proto::OriginClient;
use tokio::sync::watch;

use super::edge::bind_all;
use crate::file::{self, Topology};

/// Options of `tessera up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topology file [default: the built-in `topology/local.toml`: three origin nodes with
    /// replication 2 and two edges, on loopback].
    topology: Option<PathBuf>,
    /// Do not publish the demo site.
    #[arg(long)]
    no_demo: bool,
}

/// The demo site: a page with a stylesheet, a script and two images.
const DEMO: &[(&str, &str)] = &[
    ("demo/index.html", include_str!("../../demo/index.html")),
    ("demo/style.css", include_str!("../../demo/style.css")),
    ("demo/app.js", include_str!("../../demo/app.js")),
    ("demo/img/logo.svg", include_str!("../../demo/img/logo.svg")),
    (
        "demo/img/mosaic.svg",
        include_str!("../../demo/img/mosaic.svg"),
    ),
];

pub async fn run(a: Args) -> Result<()> {
    let topo = match &a.topology {
        Some(p) => file::load(p)?,
        None => file::parse(file::LOCAL, "topology/local.toml (built in)")?,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // Every node's data folder is locked before anything is bound.
    let mut locks = Vec::new();
    for o in &topo.origins {
        locks.push(super::lock_data_folder(
            &o.config.data,
            &format!("origin {}", o.id),
            "another `data` in the topology",
        )?);
    }
    for e in &topo.edges {
        locks.push(super::lock_data_folder(
            &e.config.data,
            &format!("edge {}", e.id),
            "another `data` in the topology",
        )?);
    }
    let mut nodes = tokio::task::JoinSet::new();
    for o in &topo.origins {
        let cfg = topo.origin_config(&o.id)?;
        let addr = cfg.listen;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("origin {}: cannot listen on {addr}", o.id))?;
        let (id, stop) = (o.id.clone(), stopped());
        nodes.spawn(async move {
            tessera_origin::run(l, cfg, stop)
                .await
                .with_context(|| format!("origin {id}"))
        });
    }
    for o in &topo.origins {
        wait_healthy(&format!("http://{}", o.config.listen)).await?;
    }
    for e in &topo.edges {
        let (e, cfg) = topo.edge_config(&e.id)?;
        let (listeners, _) = bind_all(&cfg)
            .await
            .with_context(|| format!("edge {}", e.id))?;
        let edge = tessera_edge::Edge::open(cfg, Default::default())
            .await
            .with_context(|| format!("edge {}", e.id))?;
        let (id, stop) = (e.id.clone(), stopped());
        nodes.spawn(async move {
            tessera_edge::run(listeners, edge, stop)
                .await
                .with_context(|| format!("edge {id}"))
        });
    }
    if !a.no_demo {
        publish_demo(&topo).await?;
    }
    print_summary(&topo, !a.no_demo);
    let outcome = tokio::select! {
        _ = super::origin::shutdown_signal("up") => Ok(()),
        Some(r) = nodes.join_next() => match r {
            Ok(Ok(())) => Err(anyhow::anyhow!("a node stopped on its own")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a node crashed: {e}")),
        },
    };
    let _ = stop_tx.send(true);
    while let Some(r) = nodes.join_next().await {
        if let Ok(Err(e)) = r {
            eprintln!("error while stopping: {e:#}");
        }
    }
    eprintln!("every node stopped");
    outcome
}

/// Waits (up to 10 s) until the origin at `url` answers `/healthz`.
async fn wait_healthy(url: &str) -> Result<()> {
    let client = OriginClient::new(url, None)?;
    for _ in 0..100 {
        if let Ok((p, _)) = client
            .call(
                http::Method::GET,
                "/healthz",
                tessera_origin_proto::client::full(Bytes::new()),
            )
            .await
            && p.status.is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("origin {url} did not come up within 10 s")
}

/// Publishes the demo site through the first origin (it places every chunk by the ring).
async fn publish_demo(topo: &Topology) -> Result<()> {
    let url = format!("http://{}", topo.origins[0].config.listen);
    let client = OriginClient::new(&url, topo.token.clone())?;
    for (path, text) in DEMO {
        client
            .put_bytes(path, Bytes::from_static(text.as_bytes()))
            .await
            .with_context(|| format!("publishing the demo file {path}"))?;
    }
    Ok(())
}

fn print_summary(topo: &Topology, demo: bool) {
    let page = if demo { "demo/" } else { "" };
    println!(
        "Tessera is up: {} origin node(s), replication {}, and {} edge(s).",
        topo.origins.len(),
        topo.replication,
        topo.edges.len()
    );
    for e in &topo.edges {
        if let Some(h) = e.config.http {
            println!("  open   http://{h}/{page}    (edge {})", e.id);
        }
        if let Some(s) = e.config.https {
            // The address itself, not `localhost`: browsers try `::1` first for that name,
            // where a listener on 127.0.0.1 gets no QUIC.
            println!(
                "  open   https://{s}/{page}    (edge {}: HTTP/2, and HTTP/3 on UDP {}; development certificate)",
                e.id,
                s.port()
            );
        }
        if let Some(a) = e.config.admin {
            println!(
                "  admin  http://{a}/metrics   http://{a}/api/v1/stats   (edge {}, data in {})",
                e.id,
                e.config.data.display()
            );
        }
    }
    for o in &topo.origins {
        println!(
            "  origin http://{}/api/v1/cluster    ({}, data in {})",
            o.config.listen,
            o.id,
            o.config.data.display()
        );
    }
    let token = if topo.token.is_some() {
        " (token: the topology's `token`, or TESSERA_TOKEN)"
    } else {
        ""
    };
    println!(
        "  publish: tessera push ./site --origin http://{} --prefix site{token}",
        topo.origins[0].config.listen
    );
    println!("Ctrl-C stops everything.");
}
