//! `tessera plugin`: deploy, list, roll back and remove an edge's WebAssembly plugins over
//! its admin API, and sign URLs for the `signed-url` plugin.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tessera_plugins::Hook;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Which edge, and its admin token.
#[derive(Debug, clap::Args)]
struct Admin {
    /// The edge's admin URL, e.g. http://127.0.0.1:9090.
    #[arg(long)]
    edge: String,
    /// The edge's admin token.
    #[arg(long, env = "TESSERA_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check a plugin and bind it to a hook; the previous version is kept for rollback.
    Deploy {
        #[command(flatten)]
        admin: Admin,
        /// route, authorize or eviction.
        #[arg(long)]
        hook: Hook,
        /// A .wasm component, or a plugin Tessera ships: signed-url, router, size-eviction.
        plugin: String,
        /// The name it is listed and logged under (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// The plugin's configuration, key=value (repeat for more).
        #[arg(long = "config", value_parser = key_value)]
        config: Vec<(String, String)>,
    },
    /// Show what each hook has bound, and the previous versions.
    List {
        #[command(flatten)]
        admin: Admin,
        /// Print the edge's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Bind the previous version of a hook's plugin again.
    Rollback {
        #[command(flatten)]
        admin: Admin,
        /// The hook to roll back: route, authorize or eviction.
        #[arg(long)]
        hook: Hook,
    },
    /// Unbind a hook's plugin (the edge's built-in behaviour again).
    Remove {
        #[command(flatten)]
        admin: Admin,
        /// The hook to unbind: route, authorize or eviction.
        #[arg(long)]
        hook: Hook,
    },
    /// Print a path with the query the signed-url plugin accepts until it expires.
    SignUrl {
        /// The key the plugin was deployed with.
        #[arg(long, env = "TESSERA_SIGNING_KEY", hide_env_values = true)]
        key: String,
        /// hmac-sha256 or blake3, as deployed.
        #[arg(long, default_value = "hmac-sha256")]
        algorithm: String,
        /// Seconds from now until the URL expires.
        #[arg(long, default_value_t = 3600)]
        expires_in: u64,
        /// The path to sign, e.g. /videos/a.mp4.
        path: String,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn call(
    admin: &Admin,
    method: http::Method,
    path: &str,
    body: Bytes,
) -> Result<serde_json::Value> {
    let base = admin.edge.trim_end_matches('/');
    let uri: http::Uri = format!("{base}{path}")
        .parse()
        .with_context(|| format!("--edge {:?} is not an http://host:port URL", admin.edge))?;
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", admin.token),
        )
        .header(http::header::CONTENT_TYPE, "application/wasm")
        .body(Full::new(body))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the edge's admin API at {base}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
    if !status.is_success() {
        let msg = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        bail!("the edge refused ({status}): {msg}");
    }
    Ok(v)
}

fn describe(v: &serde_json::Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    format!(
        "{} v{} ({} bytes, blake3 {}…)",
        v["name"].as_str().unwrap_or("?"),
        v["version"],
        v["size"],
        &v["blake3"].as_str().unwrap_or("")[..12.min(v["blake3"].as_str().unwrap_or("").len())]
    )
}

pub async fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Deploy {
            admin,
            hook,
            plugin,
            name,
            config,
        } => {
            let (bytes, default_name) = tessera_plugins::shipped::load(&plugin)?;
            let name = name.unwrap_or(default_name);
            let mut q = format!("name={}", encode(&name));
            for (k, v) in &config {
                q.push_str(&format!("&config={}", encode(&format!("{k}={v}"))));
            }
            let v = call(
                &admin,
                http::Method::POST,
                &format!("/api/v1/plugins/{}?{q}", hook.as_str()),
                Bytes::from(bytes),
            )
            .await?;
            println!(
                "deployed on {}: {}",
                hook.as_str(),
                describe(&v["deployed"])
            );
        }
        Command::List { admin, json } => {
            let v = call(&admin, http::Method::GET, "/api/v1/plugins", Bytes::new()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{:<10} {:<50} previous", "hook", "bound");
            for h in v["hooks"].as_array().into_iter().flatten() {
                println!(
                    "{:<10} {:<50} {}",
                    h["hook"].as_str().unwrap_or("?"),
                    describe(&h["current"]),
                    describe(&h["previous"])
                );
            }
        }
        Command::Rollback { admin, hook } => {
            let v = call(
                &admin,
                http::Method::POST,
                &format!("/api/v1/plugins/{}/rollback", hook.as_str()),
                Bytes::new(),
            )
            .await?;
            println!("{} rolled back to {}", hook.as_str(), describe(&v["bound"]));
        }
        Command::Remove { admin, hook } => {
            let v = call(
                &admin,
                http::Method::DELETE,
                &format!("/api/v1/plugins/{}", hook.as_str()),
                Bytes::new(),
            )
            .await?;
            println!(
                "removed from {}: {}",
                hook.as_str(),
                describe(&v["removed"])
            );
        }
        Command::SignUrl {
            key,
            algorithm,
            expires_in,
            path,
        } => {
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                + expires_in;
            // Plugins see the path as the edge normalises it: sign that.
            let path = tessera_edge::rules::path::normalize_path(&path)
                .map_err(|r| anyhow::anyhow!("{}", r.message))?
                .into_owned();
            let Some(q) =
                tessera_plugins::shipped::sign_url(key.as_bytes(), &algorithm, &path, expires)
            else {
                bail!("--algorithm {algorithm:?}: expected hmac-sha256 or blake3");
            };
            println!("{path}?{q}");
        }
    }
    Ok(())
}
