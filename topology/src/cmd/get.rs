//! `tessera get`: fetch one URL over HTTP/1.1, HTTP/2 or HTTP/3, like a small curl.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use tessera_edge::client::{ClientOptions, Connection, Mode};
use tokio::io::AsyncWriteExt;

/// Options of `tessera get`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The URL to fetch (http:// or https://).
    url: String,
    /// Use HTTP/3 (QUIC); the URL must be https://.
    #[arg(long, conflicts_with_all = ["http2", "http1"])]
    http3: bool,
    /// Use HTTP/2 (ALPN h2 over TLS, prior knowledge over cleartext).
    #[arg(long, conflicts_with = "http1")]
    http2: bool,
    /// Use HTTP/1.1.
    #[arg(long)]
    http1: bool,
    /// Print the status line and the response headers before the body.
    #[arg(short = 'i', long)]
    include: bool,
    /// Send HEAD instead of GET, and print the status line and the headers (as curl -I).
    #[arg(short = 'I', long)]
    head: bool,
    /// Exit with status 22 (as curl -f) when the server answers 400 or more, without the body.
    #[arg(short = 'f', long)]
    fail: bool,
    /// Write the body to FILE instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Add a request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Accept any server certificate (development certificates).
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Trust the certificate(s) in this PEM file.
    #[arg(long)]
    cacert: Option<PathBuf>,
}

pub async fn run(a: Args) -> Result<()> {
    let mode = if a.http3 {
        Mode::Http3
    } else if a.http2 {
        Mode::Http2
    } else if a.http1 {
        Mode::Http1
    } else {
        Mode::Auto
    };
    let mut opts = ClientOptions::new(mode);
    opts.insecure = a.insecure;
    if let Some(ca) = &a.cacert {
        opts = opts.trust_file(ca)?;
    }
    let path = tessera_edge::client::path_of(&a.url)?;
    let mut req = http::Request::builder()
        .method(if a.head { "HEAD" } else { "GET" })
        .uri(&path);
    for h in &a.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header {h:?}: expected `Name: value`"))?;
        req = req.header(name.trim(), value.trim());
    }
    let req = req.body(Bytes::new()).context("bad request header")?;
    let mut conn = Connection::connect(&a.url, &opts)
        .await
        .map_err(|e| match e {
            tessera_edge::client::ClientError::Tls(..) if !a.insecure && a.cacert.is_none() => {
                anyhow::anyhow!(
                    "{e}\n(a development or self-signed certificate? -k accepts any certificate, \
                     --cacert FILE trusts the one in FILE)"
                )
            }
            e => e.into(),
        })?;
    let protocol = conn.protocol;
    let resp = conn.send(req).await?;
    if a.fail && resp.status().as_u16() >= 400 {
        conn.close().await;
        eprintln!("tessera get: the server answered {}", resp.status());
        std::process::exit(22);
    }
    if a.include || a.head {
        let mut head = format!("{protocol} {}\n", resp.status());
        for (k, v) in resp.headers() {
            head.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        head.push('\n');
        std::io::stdout().write_all(head.as_bytes())?;
    }
    let mut body = resp.into_body();
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = match &a.output {
        Some(p) => Box::new(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("the response body failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await?;
        }
    }
    out.flush().await?;
    drop(out);
    conn.close().await;
    Ok(())
}
