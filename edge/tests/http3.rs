//! HTTP/3 specifics (the behaviour shared with HTTP/1.1 and HTTP/2 is tested over all three
//! in `origin_mode.rs` and `upstream_mode.rs`): graceful shutdown, and what clients send that
//! they should not: garbage datagrams, invalid frames, header sections over the limit,
//! streams opened without end, clients that never read. Each is refused or cut off by
//! QUIC's or HTTP/3's own errors and limits, counted, and the edge keeps serving everyone
//! else (each test ends with a normal request that must succeed).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures_util::FutureExt;
use tessera_edge::Backend;
use tessera_edge::client::{ClientOptions, Connection, Mode};

async fn origin_and_edge(
    tweak: impl FnOnce(&mut tessera_edge::EdgeConfig),
) -> (Origin, EdgeNode, tempfile::TempDir) {
    let origin = Origin::start().await;
    origin.publish("ok.txt", "still serving").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![origin.url()]), dir.path());
    tweak(&mut cfg);
    let edge = EdgeNode::start(cfg).await;
    (origin, edge, dir)
}

/// A normal HTTP/3 request on a new connection succeeds.
async fn still_serves(edge: &EdgeNode) {
    let mut c = edge.connect(Proto::Http3).await;
    let r = Reply::read(c.get("/ok.txt").await.unwrap()).await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (200, &b"still serving"[..])
    );
    c.close().await;
}

/// Whether the raw bytes of a response stream carry the body `still serving` (they also
/// hold frame headers and perhaps GREASE frames).
fn served(raw: &[u8]) -> bool {
    raw.windows(13).any(|w| w == b"still serving")
}

/// An HTTP/3 connection whose receive windows are `window` bytes per stream and twice that
/// per connection, so the edge can only send as fast as the test reads.
async fn slow_reader(edge: &EdgeNode, window: u32) -> Connection {
    let mut opts = ClientOptions::new(Mode::Http3)
        .trust_file(edge.cert.as_ref().unwrap())
        .unwrap();
    opts.connect_to = edge.https;
    opts.quic.stream_window_bytes = window;
    opts.quic.connection_window_bytes = 2 * window;
    let url = format!("https://localhost:{}/", edge.https.unwrap().port());
    Connection::connect(&url, &opts).await.unwrap()
}

/// A bare QUIC connection offering ALPN `h3`, for speaking (broken) HTTP/3 by hand.
async fn raw_quic(edge: &EdgeNode) -> (quinn::Endpoint, quinn::Connection) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(edge.cert.as_ref().unwrap()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            edge.https.unwrap(),
            "localhost",
        )
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// QUIC variable-length integer (RFC 9000 §16).
fn varint(v: u64, out: &mut Vec<u8>) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16383 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        _ => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
    }
}

/// QPACK prefixed integer (RFC 7541 §5.1) with `prefix` bits, `flags` in the first byte.
fn prefixed(v: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut v = v - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A HEADERS frame for `GET /ok.txt` with one extra header `x-big` of `big` bytes, QPACK
/// encoded without the dynamic table (static references and literals only).
fn headers_frame(big: usize) -> Vec<u8> {
    let mut block = vec![0x00, 0x00]; // Required Insert Count 0, Base 0.
    block.push(0xC0 | 17); // :method GET (static 17)
    block.push(0xC0 | 23); // :scheme https (static 23)
    // :authority (static 0) with a literal value.
    block.push(0x50);
    prefixed(b"localhost".len(), 7, 0, &mut block);
    block.extend_from_slice(b"localhost");
    // :path (static 1) with a literal value.
    block.push(0x51);
    prefixed(b"/ok.txt".len(), 7, 0, &mut block);
    block.extend_from_slice(b"/ok.txt");
    if big > 0 {
        // Literal field line with a literal name: 001N H LLL.
        prefixed(b"x-big".len(), 3, 0x20, &mut block);
        block.extend_from_slice(b"x-big");
        prefixed(big, 7, 0, &mut block);
        block.extend(std::iter::repeat_n(b'a', big));
    }
    let mut frame = Vec::new();
    varint(0x01, &mut frame);
    varint(block.len() as u64, &mut frame);
    frame.extend_from_slice(&block);
    frame
}

async fn read_all(mut recv: quinn::RecvStream) -> Result<Vec<u8>, quinn::ReadToEndError> {
    recv.read_to_end(1 << 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_dropped() {
    let (_origin, edge, _d) = origin_and_edge(|_| {}).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = edge.https.unwrap();
    for i in 0..2000usize {
        let len = 1 + (i * 7919) % 1400;
        let mut d = noise(len, i as u64);
        if i % 2 == 0 {
            // Shaped like a QUIC v1 long-header Initial, with garbage after the header.
            d[0] = 0xC0 | (d[0] & 0x0F);
            if len > 6 {
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
                d[5] = 8;
            }
        }
        sock.send_to(&d, target).await.unwrap();
    }
    still_serves(&edge).await;
    // The one real connection came and went; the garbage made no connection and no error.
    edge.until("the connection closed", |e| {
        e.metric("tessera_edge_quic_connections", &[]) == 0.0
    })
    .await;
    for event in ["connection_error", "handshake_failed"] {
        assert_eq!(
            edge.metric("tessera_edge_quic_events_total", &[("event", event)]),
            0.0,
            "{event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_frame_closes_that_connection_with_an_h3_error() {
    let (_origin, edge, _d) = origin_and_edge(|_| {}).await;
    let (_ep, conn) = raw_quic(&edge).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    // A DATA frame before any HEADERS: H3_FRAME_UNEXPECTED (RFC 9114 §4.1).
    let mut frame = Vec::new();
    varint(0x00, &mut frame);
    varint(5, &mut frame);
    frame.extend_from_slice(b"hello");
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    drop(recv);
    let reason = conn.closed().await;
    match &reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code,
                0x105u32.into(),
                "H3_FRAME_UNEXPECTED: {reason}"
            )
        }
        other => panic!("expected an HTTP/3 application close, got {other}"),
    }
    edge.until("the error counted", |e| {
        e.metric(
            "tessera_edge_quic_events_total",
            &[("event", "connection_error")],
        ) >= 1.0
    })
    .await;
    still_serves(&edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_section_over_the_limit_gets_431() {
    let (_origin, edge, _d) = origin_and_edge(|c| c.max_header_bytes = 8 << 10).await;
    let (_ep, conn) = raw_quic(&edge).await;
    // The same request shape, first within the limit: it is a valid request.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&headers_frame(100)).await.unwrap();
    send.finish().unwrap();
    let ok = read_all(recv).await.unwrap();
    assert!(served(&ok), "{ok:?}");
    // Then with a 16 KiB header.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&headers_frame(16 << 10)).await.unwrap();
    send.finish().unwrap();
    let _ = read_all(recv).await;
    edge.until("the refusal counted", |e| {
        e.metric(
            "tessera_edge_quic_events_total",
            &[("event", "header_too_big")],
        ) == 1.0
    })
    .await;
    // Through a real client the refusal is a 431 status.
    let mut c = edge.connect(Proto::Http3).await;
    let big = "b".repeat(16 << 10);
    let req = http::Request::get("/ok.txt")
        .header("x-big", big.as_str())
        .body(Bytes::new())
        .unwrap();
    match c.send(req).await {
        Ok(r) => assert_eq!(r.status(), 431),
        // h3's client refuses to send a header section the server's SETTINGS forbid.
        Err(e) => assert!(
            e.to_string().contains("too big") || e.to_string().contains("HeaderTooBig"),
            "{e}"
        ),
    }
    still_serves(&edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_without_end_are_limited_and_timed_out() {
    let (_origin, edge, _d) = origin_and_edge(|c| {
        c.quic.max_streams = 8;
        c.header_timeout_secs = 1;
    })
    .await;
    let (_ep, conn) = raw_quic(&edge).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        // A stream only exists for the server once something is sent on it: one byte of a
        // frame type, and then nothing.
        send.write_all(&[0x01]).await.unwrap();
        open.push((send, recv));
    }
    assert!(
        conn.open_bi().now_or_never().is_none(),
        "a ninth concurrent stream must wait for credit"
    );
    still_serves(&edge).await;
    edge.until("the idle streams cut off", |e| {
        e.metric(
            "tessera_edge_quic_events_total",
            &[("event", "request_timeout")],
        ) == 8.0
    })
    .await;
    // The edge stopped reading them; once this client lets go of them too, their credit
    // comes back and a new stream opens.
    drop(open);
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&headers_frame(0)).await.unwrap();
    send.finish().unwrap();
    assert!(served(&read_all(recv).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off() {
    let (origin, edge, _d) = origin_and_edge(|c| c.send_stall_secs = 1).await;
    origin.publish("big.bin", noise(8 << 20, 3)).await;
    // Small receive windows, so the edge runs out of credit quickly.
    let mut lazy = slow_reader(&edge, 64 << 10).await;
    let resp = lazy.get("/big.bin").await.unwrap();
    assert_eq!(resp.status(), 200);
    // … and never read the body.
    edge.until("the stalled response cut off", |e| {
        e.metric(
            "tessera_edge_quic_events_total",
            &[("event", "send_stalled")],
        ) == 1.0
    })
    .await;
    still_serves(&edge).await;
    drop(resp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_and_finishes_requests_in_flight() {
    use http_body_util::BodyExt;
    let (origin, edge, _d) = origin_and_edge(|_| {}).await;
    let data = noise(16 << 20, 9);
    origin.publish("big.bin", data.clone()).await;
    // Small windows: the transfer advances only as this test reads.
    let mut conn = slow_reader(&edge, 256 << 10).await;
    let resp = conn.get("/big.bin").await.unwrap();
    let mut body = resp.into_body();
    let mut got = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .to_vec();
    // Shut down with most of the body still to send.
    assert!(got.len() < data.len() / 2);
    let stopping = tokio::spawn(edge.stop());
    while let Some(f) = body.frame().await {
        got.extend_from_slice(
            &f.expect("the request in flight completes")
                .into_data()
                .unwrap(),
        );
    }
    assert!(got == data, "the whole body arrived intact");
    // GOAWAY: no new request is taken on this connection.
    assert!(conn.get("/ok.txt").await.is_err());
    conn.close().await;
    tokio::time::timeout(std::time::Duration::from_secs(20), stopping)
        .await
        .expect("shutdown finished")
        .unwrap();
}

/// Past `retry_after_handshakes` handshakes in progress a client proves its address with a
/// Retry first (a real client follows it and is served); past `max_handshakes` new clients
/// are refused, and both are counted. Thresholds of 0 put every client past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_limits_are_retried_then_refused() {
    let (_o, edge, _d) = origin_and_edge(|c| c.quic.retry_after_handshakes = 0).await;
    still_serves(&edge).await;
    still_serves(&edge).await;
    let retried = edge.metric("tessera_edge_quic_events_total", &[("event", "retry")]);
    assert_eq!(retried, 2.0, "each new client was sent a Retry");

    let (_o, edge, _d) = origin_and_edge(|c| c.quic.max_handshakes = 0).await;
    let mut opts = tessera_edge::client::ClientOptions::new(tessera_edge::client::Mode::Http3)
        .trust_file(edge.cert.as_ref().unwrap())
        .unwrap();
    let https = edge.https.unwrap();
    opts.connect_to = Some(https);
    let refused = tessera_edge::client::Connection::connect(
        &format!("https://localhost:{}/", https.port()),
        &opts,
    )
    .await;
    assert!(refused.is_err(), "a client past max_handshakes is refused");
    let n = edge.metric("tessera_edge_quic_events_total", &[("event", "refused")]);
    assert!(n >= 1.0, "refusals are counted: {n}");
}

/// A flood of forged Initial packets (each a real client's first datagram, with its own
/// random connection ids, from its own source port, never followed up): past
/// `retry_after_handshakes` each costs the edge one stateless Retry, so at most that many
/// handshakes hold state; a real client in the middle of it follows its Retry and is served.
#[tokio::test]
async fn a_flood_of_forged_initials_costs_a_retry_each() {
    let (_o, edge, _d) = origin_and_edge(|_| {}).await;
    let limit = tessera_edge::EdgeConfig::default()
        .quic
        .retry_after_handshakes;
    let server = edge.https.unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap());
    let mut forger = quinn_proto::Endpoint::new(Default::default(), None, false, None);
    let mut flood = async |n: usize| {
        for _ in 0..n {
            let now = std::time::Instant::now();
            let cfg = quinn::ClientConfig::new(crypto.clone());
            let (_, mut conn) = forger.connect(now, cfg, server, "localhost").unwrap();
            let mut datagram = Vec::new();
            let sent = conn.poll_transmit(now, 1, &mut datagram).unwrap();
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket
                .send_to(&datagram[..sent.size], server)
                .await
                .unwrap();
        }
    };
    let retries = || edge.metric("tessera_edge_quic_events_total", &[("event", "retry")]);
    flood(1_500).await;
    still_serves(&edge).await;
    flood(1_500).await;
    // Every Initial is handled (a handshake, a Retry or a refusal) before this counts.
    edge.until("the flood is handled", |e| {
        let events = |ev| e.metric("tessera_edge_quic_events_total", &[("event", ev)]);
        events("retry") + events("refused") >= (3_000 - limit) as f64
    })
    .await;
    assert!(
        retries() >= (3_000 - limit) as f64,
        "{} Retries for 3,000 forged Initials (limit {limit})",
        retries()
    );
    still_serves(&edge).await;
}

/// One client address holds at most `max_connections_per_client` connections, TCP and QUIC
/// together: past it a TCP connection's request gets a `503` naming the limit, a QUIC one is
/// refused; each counted. A place frees when a connection closes.
#[tokio::test]
async fn a_clients_connections_past_its_limit_are_refused() {
    let (_o, edge, _d) = origin_and_edge(|c| c.max_connections_per_client = 2).await;
    let (http_url, http_opts) = (
        edge.url("/"),
        tessera_edge::client::ClientOptions::new(tessera_edge::client::Mode::Http1),
    );
    let plain = || tessera_edge::client::Connection::connect(&http_url, &http_opts);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = plain().await.unwrap();
        let r = Reply::read(c.get("/ok.txt").await.unwrap()).await;
        assert_eq!(r.status, 200);
        held.push(c);
    }
    let mut third = plain().await.unwrap();
    let r = Reply::read(third.get("/ok.txt").await.unwrap()).await;
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("max_connections_per_client 2"),
        "{:?}",
        r.json()
    );
    let refused = |proto: &str| {
        edge.metric(
            "tessera_edge_connections_refused_total",
            &[("protocol", proto)],
        )
    };
    assert_eq!(refused("tcp"), 1.0);

    let mut opts = tessera_edge::client::ClientOptions::new(tessera_edge::client::Mode::Http3)
        .trust_file(edge.cert.as_ref().unwrap())
        .unwrap();
    let https = edge.https.unwrap();
    opts.connect_to = Some(https);
    let url = format!("https://localhost:{}/", https.port());
    assert!(
        tessera_edge::client::Connection::connect(&url, &opts)
            .await
            .is_err(),
        "a QUIC client past its address's limit is refused"
    );
    assert_eq!(refused("quic"), 1.0);

    // One closes: its place is free once the edge sees it go.
    held.pop().unwrap().close().await;
    drop(third);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(mut c) = tessera_edge::client::Connection::connect(&url, &opts).await {
            let r = Reply::read(c.get("/ok.txt").await.unwrap()).await;
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection's place never freed"
        );
    }
}

/// The interim responses' statuses before a response (the client keeps them in its
/// extensions).
fn interim(resp: &http::Response<tessera_edge::client::ClientBody>) -> Vec<u16> {
    resp.extensions()
        .get::<tessera_edge::client::Interim>()
        .map(|i| i.0.iter().map(|(s, _)| s.as_u16()).collect())
        .unwrap_or_default()
}

/// The `Link` fields of the `103 Early Hints` before a response.
fn early_hints(resp: &http::Response<tessera_edge::client::ClientBody>) -> Vec<String> {
    resp.extensions()
        .get::<tessera_edge::client::Interim>()
        .map(|i| {
            i.0.iter()
                .filter(|(status, _)| *status == 103)
                .flat_map(|(_, fields)| fields.get_all("link").iter())
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// An upstream's `102 Processing` and `103 Early Hints` reach the client before the
/// response, over HTTP/3 and (to curl) over HTTP/1.1 and HTTP/2, plain and over TLS, and are
/// not stored: the hit that follows has none. HTTP/1.0 clients get none (RFC 9110 §15.2).
/// (The upstream writes on a raw socket: hyper's server cannot send a 1xx.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_early_hints_are_passed_on_and_never_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // `/slow` gets its `103` at once and its final response only once the gate opens.
    let gate = Arc::new(tokio::sync::Notify::new());
    let opened = gate.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let gate = opened.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let slow = buf.starts_with(b"GET /slow ");
                        buf.drain(..end + 4);
                        let hints = "HTTP/1.1 102 Processing\r\n\r\n\
                            HTTP/1.1 103 Early Hints\r\n\
                            Link: </style.css>; rel=preload; as=style\r\n\r\n";
                        let last = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\
                            Content-Length: 5\r\n\r\nhello";
                        if s.write_all(hints.as_bytes()).await.is_err() {
                            return;
                        }
                        if slow {
                            gate.notified().await;
                        }
                        if s.write_all(last.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(
        Backend::Upstream(format!("http://{addr}")),
        dir.path(),
    ))
    .await;
    let mut conn = edge.connect(Proto::Http3).await;
    let resp = conn.get("/page").await.unwrap();
    assert_eq!(
        interim(&resp),
        [102, 103],
        "in the order the upstream sent them"
    );
    assert_eq!(early_hints(&resp), ["</style.css>; rel=preload; as=style"]);
    let r = Reply::read(resp).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello"[..]));
    let resp = conn.get("/page").await.unwrap();
    assert!(
        interim(&resp).is_empty(),
        "a hit has no interim responses of the fetch"
    );
    let r = Reply::read(resp).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(edge.metric("tessera_edge_early_hints_total", &[]), 1.0);
    let https = format!("https://localhost:{}", edge.https.unwrap().port());
    let plain = format!("http://{}", edge.http);
    let hinted = [
        (102, vec![]),
        (103, vec!["</style.css>; rel=preload; as=style".to_string()]),
        (200, vec![]),
    ];
    for (i, (args, base)) in [
        (["--http1.1"], &plain),
        (["--http1.1"], &https),
        (["--http2"], &https),
        (["--http2-prior-knowledge"], &plain),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/page-{i}");
        let heads = curl_heads(&args, &format!("{base}{path}")).await;
        assert_eq!(heads, hinted, "{args:?} {base}");
        let heads = curl_heads(&args, &format!("{base}{path}")).await;
        assert_eq!(heads, [(200, vec![])], "a hit, {args:?} {base}");
    }
    assert_eq!(edge.metric("tessera_edge_early_hints_total", &[]), 5.0);
    let heads = curl_heads(&["--http1.0"], &format!("{plain}/page-http10")).await;
    assert_eq!(heads, [(200, vec![])], "nothing interim for HTTP/1.0");
    // As they arrive: an HTTP/1.1 client has the hints while the upstream still holds back
    // the response.
    let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let has = |what: &'static [u8]| move |got: &[u8]| got.windows(what.len()).any(|w| w == what);
    let early = read_until(&mut s, &mut got, has(b"rel=preload; as=style\r\n\r\n")).await;
    assert!(
        early.starts_with("HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n"),
        "{early}"
    );
    gate.notify_one();
    let all = read_until(&mut s, &mut got, has(b"hello")).await;
    assert!(all.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"), "{all}");
    conn.close().await;
    server.abort();
}

/// Reads from `s` into `got` until `done(got)`, each read within 10 s: the text so far.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    got: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> String {
    use tokio::io::AsyncReadExt;
    while !done(got) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("within 10 s")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(got).to_string()
}

/// What curl (a real HTTP/1.1 and HTTP/2 client, trusting any certificate) receives for
/// `url` with `args`: each response head's status and `Link` fields, interim ones first.
async fn curl_heads(args: &[&str], url: &str) -> Vec<(u16, Vec<String>)> {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--max-time",
            "20",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs (README: apt-get install curl)");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut heads: Vec<(u16, Vec<String>)> = Vec::new();
    for line in text.lines().map(str::trim_end) {
        if line.starts_with("HTTP/") {
            let status = line.split(' ').nth(1).unwrap().parse().unwrap();
            heads.push((status, Vec::new()));
        } else if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("link")
        {
            heads.last_mut().unwrap().1.push(value.trim().to_string());
        }
    }
    heads
}

/// While a stored response is revalidated, the edge sends its `Link: rel=preload` fields as
/// early hints of its own to an HTTP/3 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_hints_what_a_stored_response_preloads_while_revalidating_it() {
    let up = Upstream::start(|_, _| {
        // Stale as soon as stored: every later request revalidates.
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("age", "60"),
                ("etag", "\"p\""),
                ("link", "</app.js>; rel=modulepreload, </about>; rel=next"),
            ],
            b"<html>",
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
    let mut conn = edge.connect(Proto::Http3).await;
    let first = conn.get("/index.html").await.unwrap();
    assert!(early_hints(&first).is_empty(), "nothing learned yet");
    Reply::read(first).await;
    let again = conn.get("/index.html").await.unwrap();
    assert_eq!(early_hints(&again), ["</app.js>; rel=modulepreload"]);
    let r = Reply::read(again).await;
    assert_eq!(&r.body[..], b"<html>");
    assert_eq!(up.count("/index.html"), 2, "the second request revalidated");
    // The same over HTTP/1.1 and HTTP/2, plain and over TLS (curl). The plain listener's
    // authority keys its own stored response: its first request learns it.
    let https = format!("https://localhost:{}", edge.https.unwrap().port());
    let plain = format!("http://{}", edge.http);
    let first = curl_heads(&["--http1.1"], &format!("{plain}/index.html")).await;
    assert_eq!(first.len(), 1, "nothing learned yet: {first:?}");
    for (args, base) in [
        (["--http1.1"], &plain),
        (["--http1.1"], &https),
        (["--http2"], &https),
        (["--http2-prior-knowledge"], &plain),
    ] {
        let heads = curl_heads(&args, &format!("{base}/index.html")).await;
        assert_eq!(
            heads,
            [
                (103, vec!["</app.js>; rel=modulepreload".to_string()]),
                (
                    200,
                    vec!["</app.js>; rel=modulepreload, </about>; rel=next".to_string()]
                )
            ],
            "{args:?} {base}"
        );
    }
    assert_eq!(up.count("/index.html"), 7, "each revalidated");
    // Two requests pipelined on one HTTP/1.1 connection: each response has its own hint
    // before it, never inside the response before.
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let req = format!("GET /index.html HTTP/1.1\r\nHost: {}\r\n\r\n", edge.http);
    s.write_all(format!("{req}{req}").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let text = read_until(&mut s, &mut got, |got| {
        got.windows(6).filter(|w| w == b"<html>").count() == 2
    })
    .await;
    let heads: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    let statuses: Vec<&str> = heads.iter().map(|h| &h[..3]).collect();
    assert_eq!(statuses, ["103", "200", "103", "200"], "{text}");
    assert!(heads[0].contains("link: </app.js>; rel=modulepreload\r\n\r\n"));
    assert!(
        heads[1].ends_with("<html>") && heads[3].ends_with("<html>"),
        "{text}"
    );
    assert_eq!(up.count("/index.html"), 9);
    conn.close().await;
}
