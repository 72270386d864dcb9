//! A real browser over HTTP/3: headless Chromium (Debian package `chromium`) loads a page
//! published through the origin, whose stylesheet, script and image come from the edge over
//! QUIC. The script writes what it saw (the image's width, the stylesheet's colour) into the
//! page; the test reads the DOM back and checks the edge counted every request as HTTP/3.

mod common;

use base64::Engine;
use common::*;
use tessera_edge::Backend;

const PAGE: &str = r#"<!doctype html><html><head><link rel="stylesheet" href="/style.css"><script src="/app.js" defer></script></head>
<body><img id="logo" src="/img/logo.svg"><p id="out">not rendered</p></body></html>"#;
const CSS: &str = "body { color: rgb(1, 2, 3); }\n";
const JS: &str = r#"window.addEventListener('load', () => {
  const img = document.getElementById('logo');
  const color = getComputedStyle(document.body).color;
  document.getElementById('out').textContent = 'rendered img=' + img.naturalWidth + ' color=' + color;
});"#;
const SVG: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="red"/></svg>"#;

/// base64 of the SHA-256 of the certificate's public key (SPKI), as Chromium's
/// `--ignore-certificate-errors-spki-list` wants it; the only switch that covers QUIC.
fn spki_hash(key_pem: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(key_pem).unwrap();
    let key = rcgen::KeyPair::from_pem(&pem).unwrap();
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &rcgen::PublicKeyData::subject_public_key_info(&key),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_a_page_over_http3() {
    let origin = Origin::start().await;
    for (path, body) in [
        ("index.html", PAGE),
        ("style.css", CSS),
        ("app.js", JS),
        ("img/logo.svg", SVG),
    ] {
        origin.publish(path, body.to_string()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Origin(vec![origin.url()]), dir.path())).await;
    let port = edge.https.unwrap().port();
    let spki = spki_hash(&edge.data.join("tls/dev-key.pem"));
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--origin-to-force-quic-on=localhost:{port}"),
            &format!("--ignore-certificate-errors-spki-list={spki}"),
            // localhost to the IPv4 loopback the edge listens on; every other name fails
            // here, so nothing leaves the machine.
            "--host-resolver-rules=MAP localhost 127.0.0.1, MAP * ~NOTFOUND",
            "--virtual-time-budget=10000",
            "--dump-dom",
            &format!("https://localhost:{port}/"),
        ])
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(std::time::Duration::from_secs(90), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!(
            "cannot run chromium ({e}): install the Debian package `chromium` (.ci/run does)"
        ),
        Err(_) => panic!("chromium did not finish in 90 s"),
    };
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("rendered img=40 color=rgb(1, 2, 3)"),
        "the page did not render from the edge:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page, its stylesheet, script and image: all four over HTTP/3, none over TCP.
    let h3 = edge.metric(
        "tessera_edge_requests_total",
        &[("protocol", "h3"), ("status", "200")],
    );
    assert_eq!(h3, 4.0, "{}", edge.edge.metrics().render());
    for proto in ["http/1.1", "h2"] {
        let tcp = edge.metric("tessera_edge_requests_total", &[("protocol", proto)]);
        assert_eq!(
            tcp,
            0.0,
            "{proto} requests: {}",
            edge.edge.metrics().render()
        );
    }
    assert_eq!(
        edge.metric(
            "tessera_edge_quic_events_total",
            &[("event", "connection_error")]
        ),
        0.0
    );
    edge.stop().await;
}
