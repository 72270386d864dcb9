//! `tessera cluster`: an origin cluster's members, changed while it runs.
//!
//! `add` and `remove` ask one member to coordinate the change (`POST
//! /api/v1/cluster/members`): it makes the next membership epoch and sends it to every node;
//! each node then moves its data to the new owners by repair, at its
//! `repair_bytes_per_sec`, while reads and publishes go on. `status` shows each node's
//! epoch and whether it has moved its data; `--wait` waits until the change has settled
//! everywhere (a removed node can be stopped then).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use tessera_origin_proto::OriginClient;
use tessera_origin_proto::client::full;

/// Options of `tessera cluster`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

/// Which cluster: one of its members.
#[derive(Debug, clap::Args)]
struct Target {
    /// URL of any member of the cluster, e.g. http://127.0.0.1:7071.
    #[arg(long)]
    origin: String,
    /// The cluster's write token.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Add a running origin node (started with its own --id) as a member; data moves to it.
    Add {
        #[command(flatten)]
        target: Target,
        /// The new node as ID=URL, e.g. o4=http://10.0.0.4:7070.
        node: String,
        /// Its relative capacity.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Take a member out: its data moves to the others; stop it once `status` says settled.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The member's id.
        id: String,
    },
    /// Each node's membership epoch, whether it has moved its data, and what it holds.
    Status {
        #[command(flatten)]
        target: Target,
        /// Wait up to SECS for the last change to settle on every node (exit 1 if not).
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Print the nodes' documents as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(a: Args) -> Result<()> {
    match a.command {
        Sub::Add {
            target,
            node,
            weight,
        } => {
            let Some((id, url)) = node.split_once('=') else {
                bail!("the node is given as ID=URL (o4=http://127.0.0.1:7074), not {node:?}");
            };
            let body = serde_json::json!({"add": {"id": id, "url": url, "weight": weight}});
            change(&target, body).await
        }
        Sub::Remove { target, id } => change(&target, serde_json::json!({"remove": id})).await,
        Sub::Status { target, wait, json } => status(&target, wait, json).await,
    }
}

fn client(url: &str, token: &Option<String>) -> Result<OriginClient> {
    OriginClient::new(url, token.clone()).context("the --origin URL")
}

/// GETs `path` of `c` as JSON.
async fn get_json(c: &OriginClient, path: &str) -> Result<serde_json::Value> {
    let (parts, body) = c
        .call(Method::GET, path, full(Bytes::new()))
        .await
        .with_context(|| format!("asking {}", c.base()))?;
    if !parts.status.is_success() {
        bail!(
            "{} answered {}: {}",
            c.base(),
            parts.status,
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("the answer of {}{path}", c.base()))
}

async fn change(target: &Target, body: serde_json::Value) -> Result<()> {
    let c = client(&target.origin, &target.token)?;
    let (parts, reply) = c
        .call(
            Method::POST,
            "/api/v1/cluster/members",
            full(Bytes::from(body.to_string())),
        )
        .await
        .with_context(|| format!("asking {}", c.base()))?;
    if !parts.status.is_success() {
        let why = serde_json::from_slice::<serde_json::Value>(&reply)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&reply).into_owned());
        bail!("the change was refused ({}): {why}", parts.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&reply).context("the answer")?;
    let m = &v["membership"];
    let ids: Vec<&str> = m["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str())
        .collect();
    println!(
        "membership epoch {}: {} (data is moving; `tessera cluster status --origin {} --wait 600` waits until it has)",
        m["epoch"],
        ids.join(", "),
        target.origin
    );
    for (id, answer) in v["nodes"].as_object().into_iter().flatten() {
        println!("  {id}: {}", answer.as_str().unwrap_or_default());
    }
    Ok(())
}

/// One node's line of `status`.
struct Line {
    id: String,
    url: String,
    member: bool,
    doc: Result<serde_json::Value>,
    stats: Option<serde_json::Value>,
}

async fn status(target: &Target, wait: Option<u64>, json: bool) -> Result<()> {
    let deadline = wait.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let (epoch, lines) = gather(target).await?;
        let settled = lines.iter().all(|l| match &l.doc {
            Ok(d) => d["membership"]["epoch"] == epoch && d["settled"] == true,
            // A removed node that is gone does not hold the change up.
            Err(_) => !l.member,
        });
        let done = deadline.is_none_or(|d| settled || Instant::now() >= d);
        if done {
            print_status(epoch, settled, &lines, json);
            if deadline.is_some() && !settled {
                bail!("the membership change to epoch {epoch} has not settled on every node");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The membership epoch of `target` and each node's documents.
async fn gather(target: &Target) -> Result<(u64, Vec<Line>)> {
    let c = client(&target.origin, &target.token)?;
    let cluster = get_json(&c, "/api/v1/cluster").await?;
    let epoch = cluster["epoch"].as_u64().unwrap_or(0);
    let mut lines = Vec::new();
    for n in cluster["nodes"].as_array().into_iter().flatten() {
        let url = n["url"].as_str().unwrap_or_default().to_string();
        let nc = client(&url, &target.token)?;
        let doc = get_json(&nc, "/api/v1/cluster/members").await;
        let stats = get_json(&nc, "/api/v1/stats").await.ok();
        lines.push(Line {
            id: n["id"].as_str().unwrap_or_default().to_string(),
            url,
            member: n["member"] == true,
            doc,
            stats,
        });
    }
    Ok((epoch, lines))
}

fn print_status(epoch: u64, settled: bool, lines: &[Line], json: bool) {
    if json {
        let v: Vec<_> = lines
            .iter()
            .map(|l| {
                serde_json::json!({
                    "id": l.id,
                    "url": l.url,
                    "member": l.member,
                    "members": l.doc.as_ref().ok(),
                    "error": l.doc.as_ref().err().map(|e| format!("{e:#}")),
                    "stats": l.stats,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"epoch": epoch, "settled": settled, "nodes": v})
        );
        return;
    }
    println!(
        "membership epoch {epoch}: {}",
        if settled {
            "settled (every node has moved its data)"
        } else {
            "data moving"
        }
    );
    println!(
        "{:<8} {:<28} {:<7} {:<6} {:>5} {:>5} {:>9} {:>12}",
        "NODE", "URL", "MEMBER", "LIVE", "EPOCH", "MOVED", "FILES", "STORED"
    );
    for l in lines {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let (live, e, moved) = match &l.doc {
            Ok(d) => (
                true,
                d["membership"]["epoch"].to_string(),
                d["moved"].to_string(),
            ),
            Err(_) => (false, "-".into(), "-".into()),
        };
        let (files, stored) = match &l.stats {
            Some(s) => (
                s["objects"].to_string(),
                indicatif::HumanBytes(s["stored_bytes"].as_u64().unwrap_or(0)).to_string(),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<8} {:<28} {:<7} {:<6} {:>5} {:>5} {:>9} {:>12}",
            l.id,
            l.url,
            yes(l.member),
            yes(live),
            e,
            moved,
            files,
            stored
        );
    }
}
