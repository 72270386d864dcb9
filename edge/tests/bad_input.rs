//! What clients and origins send that they should not: every case gets a clear refusal or
//! is cut off, nothing bad is cached, and the edge keeps serving.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tessera_edge::Backend;
use tessera_origin_proto::{ChunkHash, Manifest, ManifestChunk, batch, inline};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes and reads until the edge closes the connection (or 5 s pass).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(reply: &str) -> u16 {
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let up = Upstream::start(|_, _| response(200, &[("cache-control", "max-age=60")], b"ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    cfg.header_timeout_secs = 1;
    let edge = EdgeNode::start(cfg).await;
    let a = edge.http;

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "differing Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"
                .to_vec(),
            400,
        ),
        (
            "oversized header section",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(100 << 10)
            )
            .into_bytes(),
            431,
        ),
        (
            "dot segments",
            b"GET /a/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "encoded dot segments",
            b"GET /%2e%2e/secret HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "NUL in path",
            b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, bytes, want) in cases {
        let reply = raw(a, &bytes).await;
        assert_eq!(status_of(&reply), want, "{what}: {reply:.200}");
    }
    assert_eq!(up.count("/etc/passwd") + up.count("/secret"), 0);

    // A request head that never ends is cut off by the header timeout.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "slow client still connected after 5 s");

    // Still serving everyone else.
    assert_eq!(edge.get("/fine").await.status, 200);
    assert!(edge.metric("tessera_edge_bad_requests_total", &[]) >= 3.0);
}

/// The HTTP/1.1 smuggling shapes (RFC 9112 §6.3, §11.2): whatever the edge answers, a
/// request hidden in another's body never reaches the upstream, and the connection ends
/// after at most one answer.
#[tokio::test]
async fn smuggled_requests_are_never_processed() {
    let up = Upstream::start(|_, _| response(200, &[], b"ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let shapes = [
        (
            "CL.TE",
            "Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE.CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n30\r\n",
        ),
        (
            "TE.TE, a second coding",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE not chunked",
            "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before the colon",
            "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "folded TE",
            "X-A: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunk size overflow",
            "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff1\r\n",
        ),
        ("negative length", "Content-Length: -1\r\n\r\n"),
        ("length with a sign", "Content-Length: +3\r\n\r\nabc"),
    ];
    for (what, head_and_body) in shapes {
        let reply = raw(
            edge.http,
            format!("POST /form HTTP/1.1\r\nHost: x\r\n{head_and_body}{hidden}").as_bytes(),
        )
        .await;
        assert!(
            reply.matches("HTTP/1.1 ").count() <= 1,
            "{what}: one answer at most, then close: {reply}"
        );
        assert_eq!(
            up.count("/smuggled"),
            0,
            "{what}: the hidden request arrived"
        );
    }
    // The edge still serves a clean client.
    assert_eq!(edge.get("/after").await.status, 200);
}

/// A client's malformed chunked body is the client's fault: a 400, and the upstream is
/// not counted as failing (clients could otherwise fire origin alerts).
#[tokio::test]
async fn a_malformed_request_body_is_the_clients_error_not_the_upstreams() {
    let up = Upstream::start(|_, _| response(200, &[], b"ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
    let reply = raw(
        edge.http,
        b"POST /form HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nZZ\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert!(reply.contains("request body"), "{reply}");
    let errors = |kind| edge.metric("tessera_edge_origin_errors_total", &[("kind", kind)]);
    assert_eq!(errors("connect"), 0.0);
    assert_eq!(errors("timeout"), 0.0);
    // A well-formed body still passes.
    let reply = raw(
        edge.http,
        b"POST /form HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
}

/// A raw upstream that announces `Content-Length: 100` and sends 50 bytes.
async fn lying_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=600\r\n\r\n")
                    .await;
                let _ = s.write_all(&[b'x'; 50]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, n)
}

#[tokio::test]
async fn an_upstream_that_breaks_its_content_length_poisons_nothing() {
    let (addr, count) = lying_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(
        Backend::Upstream(format!("http://{addr}")),
        dir.path(),
    ))
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    for _ in 0..2 {
        let resp = client
            .get(edge.url("/short").parse().unwrap())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        assert!(body.is_err(), "a body cut short must not look complete");
    }
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "nothing was cached"
    );
}

/// A fake origin serving a manifest whose chunk it then corrupts. A real origin checks its
/// chunks before serving them, so this fault cannot be caused with one: this stands in for
/// a disk or network that flips bits.
async fn corrupting_origin(data: &'static [u8]) -> std::net::SocketAddr {
    let hash = ChunkHash::of(data);
    let manifest = Manifest {
        format: 1,
        path: "f.bin".into(),
        size: data.len() as u64,
        blake3: hash,
        content_type: "application/octet-stream".into(),
        modified: 1_700_000_000,
        chunks: vec![ManifestChunk {
            hash,
            offset: 0,
            size: data.len() as u32,
        }],
    };
    let json: &'static [u8] = Box::leak(serde_json::to_vec(&manifest).unwrap().into_boxed_slice());
    let mut bad = data.to_vec();
    bad[7] ^= 0x40;
    let bad: &'static [u8] = Box::leak(bad.into_boxed_slice());
    let up = Upstream::start(move |req, _| {
        if req.uri().path().starts_with("/api/v1/manifests/") {
            response(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"m\"")],
                json,
            )
        } else if req.uri().path() == "/api/v1/chunks" {
            // An origin from before chunk batches: the edge falls back to one GET per chunk.
            response(404, &[], b"{\"error\":\"no such endpoint\"}")
        } else {
            response(200, &[], bad)
        }
    })
    .await;
    let addr = up.addr;
    std::mem::forget(up);
    addr
}

#[tokio::test]
async fn a_corrupt_chunk_from_the_origin_is_refused_and_not_cached() {
    let data: &'static [u8] = Box::leak(noise(10_000, 8).into_boxed_slice());
    let addr = corrupting_origin(data).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![format!("http://{addr}")]), dir.path());
    cfg.follow_changes = false;
    let edge = EdgeNode::start(cfg).await;
    for attempt in 1..=2 {
        let r = edge.get("/f.bin").await;
        assert_eq!(r.status, 502, "attempt {attempt}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("failed its integrity check"),
            "{:?}",
            r.body
        );
        let id = r.json()["request_id"].as_str().unwrap().to_string();
        let kept = edge
            .admin("GET", &format!("/api/v1/errors?id={id}"), "")
            .await
            .json();
        assert!(
            kept["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("blake3"),
            "{kept}"
        );
        assert_eq!(edge.edge.metrics().corrupt_chunks.get(), attempt);
    }
    assert_eq!(
        edge.origin_fetches("chunk"),
        2,
        "a corrupt chunk is never cached"
    );
    assert_eq!(edge.origin_fetches("chunks"), 2, "a batch was tried first");
}

/// What [`faulty_origin`] does to the batches it serves.
#[derive(Clone, Copy)]
enum BatchFault {
    /// Flips a bit in the payload of the frame at this position.
    Corrupt(usize),
    /// Ends the body cleanly after this many frames, as a node that died mid-batch.
    CutAfter(usize),
    /// Serves batches intact, but sends the file's bytes with its manifest with a bit
    /// flipped.
    BadInline,
}

/// An origin in front of `real`'s data that serves its manifest and answers chunk batches
/// with a fault. A real origin checks every chunk before sending it and a real node cannot
/// be made to die after exactly k frames, so this stands in for a network that flips bits
/// and for a node that dies mid-stream. Returns its address and the number of batches it
/// was asked.
async fn faulty_origin(
    real: &Origin,
    path: &str,
    data: &[u8],
    fault: BatchFault,
) -> (Upstream, Manifest) {
    let m = real.client.manifest(path).await.unwrap().unwrap();
    let chunks: std::collections::HashMap<ChunkHash, Bytes> = m
        .chunks
        .iter()
        .map(|c| {
            let at = c.offset as usize;
            (
                c.hash,
                Bytes::copy_from_slice(&data[at..at + c.size as usize]),
            )
        })
        .collect();
    let json = Bytes::from(serde_json::to_vec(&m).unwrap());
    let mut bad = data.to_vec();
    bad[data.len() / 2] ^= 0x01;
    let up = Upstream::start(move |req, _| {
        let mut r = http::Response::builder().status(200);
        let body = if req.uri().path().starts_with("/api/v1/manifests/") {
            r = r
                .header("cache-control", "max-age=60")
                .header("etag", "\"m\"");
            if matches!(fault, BatchFault::BadInline) {
                assert!(
                    req.headers().contains_key(inline::INLINE_HEADER),
                    "the edge asks"
                );
                r = r.header("content-type", inline::CONTENT_TYPE);
                inline::encode(&json, &bad)
            } else {
                json.clone()
            }
        } else if req.uri().path() == "/api/v1/chunks" {
            let asked = batch::decode_request(req.body()).unwrap();
            let mut out = batch::MAGIC.to_vec();
            for (i, h) in asked.iter().enumerate() {
                if matches!(fault, BatchFault::CutAfter(k) if i == k) {
                    break;
                }
                let mut payload = chunks[h].to_vec();
                if matches!(fault, BatchFault::Corrupt(k) if i == k) {
                    payload[3] ^= 0x10;
                }
                out.extend_from_slice(&batch::frame_header(
                    Some(batch::Encoding::Identity),
                    h,
                    payload.len(),
                ));
                out.extend_from_slice(&payload);
            }
            Bytes::from(out)
        } else {
            r = r.status(404);
            Bytes::from_static(b"{}")
        };
        r.body(http_body_util::Full::new(body)).unwrap()
    })
    .await;
    (up, m)
}

/// A small file's bytes that come with its manifest but fail the check are never served:
/// the edge fetches the chunks instead, and they go to the SSD tier only, the memory tier
/// taking just the stored response and its assembled copy.
#[tokio::test]
async fn corrupt_inline_bytes_are_dropped_for_the_chunks() {
    let real = Origin::start().await;
    let data = noise(150 << 10, 61);
    real.publish("s.bin", data.clone()).await;
    let (fake, m) = faulty_origin(&real, "s.bin", &data, BatchFault::BadInline).await;
    assert!(m.chunks.len() >= 4, "several chunks: {}", m.chunks.len());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        Backend::Origin(vec![format!("http://{}", fake.addr)]),
        dir.path(),
    );
    cfg.follow_changes = false;
    let edge = EdgeNode::start(cfg).await;
    let cache = edge.edge.cache();
    let before = cache.memory_inserts();

    let r = edge.get("/s.bin").await;
    assert_eq!(r.status, 200);
    assert!(r.body == data[..], "the file's bytes, not the corrupt ones");
    assert_eq!(fake.count("/api/v1/chunks"), 1, "its chunks in one batch");
    assert_eq!(edge.origin_chunks(), m.chunks.len() as u64);
    assert_eq!(
        cache.memory_inserts() - before,
        2,
        "no chunk passed through memory"
    );
    assert!(edge.get("/s.bin").await.body == data[..]);
    assert_eq!(fake.count("/api/v1/chunks"), 1);
}

/// An edge whose origins are `first` then the real origin `real` (a failover list).
async fn edge_before(first: &Upstream, real: &Origin, dir: &std::path::Path) -> EdgeNode {
    let mut cfg = config(Backend::Origin(vec![first.url(), real.url()]), dir);
    cfg.follow_changes = false;
    EdgeNode::start(cfg).await
}

#[tokio::test]
async fn a_corrupt_chunk_mid_batch_is_refetched_and_the_rest_of_the_batch_kept() {
    let real = Origin::start().await;
    let data = noise(1 << 20, 21);
    real.publish("f.bin", data.clone()).await;
    let (fake, m) = faulty_origin(&real, "f.bin", &data, BatchFault::Corrupt(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_before(&fake, &real, dir.path()).await;
    let r = edge.get("/f.bin").await;
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the bytes served are the file's");
    assert_eq!(edge.edge.metrics().corrupt_chunks.get(), 1);
    // Every chunk checked and kept once: the corrupt one came from the second origin, in a
    // batch of its own; the chunks after it in the first batch were still taken.
    assert_eq!(edge.origin_chunks(), m.chunks.len() as u64);
    assert_eq!(edge.origin_fetches("chunks"), 2);
    assert_eq!(fake.count("/api/v1/chunks"), 1);
    // All of it is cached now: served again without any origin.
    let r = edge.get("/f.bin").await;
    assert!(r.body == data);
    assert_eq!(edge.origin_fetches("chunks"), 2);
}

#[tokio::test]
async fn an_origin_that_dies_mid_batch_leaves_the_rest_to_the_next() {
    let real = Origin::start().await;
    let data = noise(1 << 20, 22);
    real.publish("f.bin", data.clone()).await;
    let (fake, m) = faulty_origin(&real, "f.bin", &data, BatchFault::CutAfter(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_before(&fake, &real, dir.path()).await;
    let r = edge.get("/f.bin").await;
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the bytes served are the file's");
    assert_eq!(edge.origin_chunks(), m.chunks.len() as u64);
    assert_eq!(
        edge.origin_fetches("chunks"),
        2,
        "the rest in one batch from the next"
    );
    assert_eq!(
        edge.metric("tessera_edge_origin_errors_total", &[("kind", "malformed")]),
        1.0
    );
}

#[tokio::test]
async fn a_chunk_no_origin_can_give_before_the_first_byte_is_a_json_502() {
    let real = Origin::start().await;
    // Larger than a small file, which a miss reads whole before answering.
    let data = noise(400_000, 23);
    real.publish("f.bin", data.clone()).await;
    let (fake, _) = faulty_origin(&real, "f.bin", &data, BatchFault::Corrupt(0)).await;
    let dir = tempfile::tempdir().unwrap();
    // The faulty origin alone: nobody else has the chunk.
    let mut cfg = config(Backend::Origin(vec![fake.url()]), dir.path());
    cfg.follow_changes = false;
    let edge = EdgeNode::start(cfg).await;
    let r = edge.get("/f.bin").await;
    assert_eq!(r.status, 502);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("integrity check"),
        "{:?}",
        r.body
    );
    // Later in the file, a corrupt chunk cuts the body off: never wrong bytes.
    let (fake, _) = faulty_origin(&real, "f.bin", &data, BatchFault::Corrupt(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![fake.url()]), dir.path());
    cfg.follow_changes = false;
    let edge = EdgeNode::start(cfg).await;
    let resp = edge
        .send_streaming("GET", "/f.bin", &[], Bytes::new())
        .await;
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "a body with a corrupt chunk must not look complete"
    );

    // A small file is read whole on a miss: a corrupt chunk anywhere in it is a clean 502.
    let small = noise(100_000, 24);
    real.publish("small.bin", small.clone()).await;
    let (fake, _) = faulty_origin(&real, "small.bin", &small, BatchFault::Corrupt(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![fake.url()]), dir.path());
    cfg.follow_changes = false;
    let edge = EdgeNode::start(cfg).await;
    let r = edge.get("/small.bin").await;
    assert_eq!(r.status, 502);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("integrity check")
    );
}

/// A raw HTTP/1.1 upstream, keep-alive, that honours a request's declared `Content-Length`:
/// it reads that body before answering (`body_first`), or answers at once and then drains
/// what was declared, as servers of both kinds do. Records each request's target and
/// declared length.
async fn framing_upstream(
    body_first: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Option<usize>)>>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Reads until `buf` holds `n` bytes; false when the connection ended.
                macro_rules! fill_to {
                    ($n:expr) => {{
                        let (want, mut ok) = ($n, true);
                        while buf.len() < want {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    ok = false;
                                    break;
                                }
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        ok
                    }};
                }
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break Some(i + 4);
                        }
                        if !fill_to!(buf.len() + 1) {
                            break None;
                        }
                    };
                    let Some(end) = end else { return };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let declared = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    });
                    seen.lock().unwrap().push((target.clone(), declared));
                    let len = declared.unwrap_or(0);
                    if body_first && !fill_to!(end + len) {
                        return;
                    }
                    let body = format!("served {target}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() || !fill_to!(end + len) {
                        return;
                    }
                    buf.drain(..end + len);
                }
            });
        }
    });
    (addr, seen)
}

over_protocols! {
    /// A `GET` with a body: the edge's fill sends no body, so it must not send the client's
    /// `Content-Length` either; else the upstream reads the next request on the connection
    /// as that body (answering a smuggled request, cached as the next URL), or waits for a
    /// body that never comes.
    async fn a_get_with_a_body_never_desyncs_the_upstream_connection() {
        for body_first in [true, false] {
            let (addr, seen) = framing_upstream(body_first).await;
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = config(Backend::Upstream(format!("http://{addr}")), dir.path());
            cfg.timeouts.first_byte_ms = 5000;
            let edge = EdgeNode::start(cfg).await;
            let r = edge
                .send("GET", "/a", &[], Bytes::from_static(b"0123456789abcdefghijklmnopq"))
                .await;
            assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"served /a"[..]), "body first: {body_first} {:?}", seen.lock().unwrap());
            let r = edge.get_with("/victim", &[("x-a", "GET /poison HTTP/1.1")]).await;
            assert_eq!(&r.body[..], b"served /victim", "body first: {body_first}");
            let r = edge.get("/victim").await;
            assert_eq!(&r.body[..], b"served /victim", "body first: {body_first}");
            assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
            assert_eq!(
                *seen.lock().unwrap(),
                vec![("/a".to_string(), None), ("/victim".to_string(), None)],
                "body first: {body_first}"
            );
            edge.stop().await;
        }
    }
}

/// Byte `i` of the big bodies below.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// A raw upstream answering every request with `size` bytes of [`pattern`] under
/// `cache_control`, written 64 KiB at a time. Counts requests and the body bytes it got
/// written into its sockets.
async fn big_upstream(
    size: u64,
    cache_control: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (requests, sent) = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let (r2, s2) = (requests.clone(), sent.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let (requests, sent) = (r2.clone(), s2.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let n = s.read(&mut head).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                requests.fetch_add(1, SeqCst);
                // `Range: bytes=N-` with `If-Range` its ETag (or none): the rest from N.
                let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                let field = |name: &str| {
                    head.split("\r\n")
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                };
                let from = field("range: bytes=")
                    .filter(|_| field("if-range:").is_none_or(|v| v == "\"big\""))
                    .and_then(|v| v.trim_end_matches('-').parse::<u64>().ok())
                    .filter(|&n| n < size);
                let h = match from {
                    Some(n) => format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{size}\r\nContent-Length: {}\r\n",
                        size - 1,
                        size - n
                    ),
                    None => format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"),
                };
                let h = format!(
                    "{h}Cache-Control: {cache_control}\r\nETag: \"big\"\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(h.as_bytes()).await.is_err() {
                    return;
                }
                // `/hang…`: 24 MiB, then nothing more (the connection held open).
                let hang = head.starts_with("get /hang");
                let mut off = from.unwrap_or(0);
                while off < size {
                    if hang && off >= 24 << 20 {
                        std::future::pending::<()>().await;
                    }
                    let n = (64 << 10).min(size - off);
                    let piece: Vec<u8> = (off..off + n).map(pattern).collect();
                    if s.write_all(&piece).await.is_err() {
                        return;
                    }
                    off += n;
                    sent.fetch_add(n, SeqCst);
                }
            });
        }
    });
    (addr, requests, sent)
}

/// A raw HTTP/1.1 `GET` of `path` that reads the response head and the first bytes of the
/// body, then stops reading; returns the connection and the body bytes read so far.
async fn stalled_get(addr: std::net::SocketAddr, path: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let body_at = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the edge closed the connection");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    (s, got.split_off(body_at))
}

/// Reads the rest of a body of `size` bytes (`read` of them already) and checks every byte.
async fn finish_reading(mut s: tokio::net::TcpStream, mut read: Vec<u8>, size: u64) {
    let mut buf = vec![0u8; 1 << 20];
    while (read.len() as u64) < size {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no byte for 20 s at {} of {size}", read.len()))
            .unwrap();
        assert!(n > 0, "body cut at {} of {size}", read.len());
        read.extend_from_slice(&buf[..n]);
    }
    assert_whole(&read, size);
}

const WINDOW: usize = 4 << 20;

/// One client reading a few bytes of a large uncacheable response and stalling holds the
/// edge to its fill window: the fill waits, the upstream's bytes stay in the sockets, and
/// memory stays bounded (it was the whole body before). The rest flows when it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_of_an_uncached_body_holds_its_fill_to_the_window() {
    use std::sync::atomic::Ordering::SeqCst;
    let size = 64u64 << 20;
    let (addr, requests, sent) = big_upstream(size, "no-store").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(format!("http://{addr}")), dir.path());
    cfg.fill_window_bytes = WINDOW;
    let edge = EdgeNode::start(cfg).await;
    let (s, read) = stalled_get(edge.http, "/big").await;
    edge.until("the fill waits for its reader", |e| {
        e.metric("tessera_edge_fills_waiting", &[]) == 1.0
    })
    .await;
    // The window, and at most one more frame (hyper reads up to ~400 KiB at a time).
    let held = edge.metric("tessera_edge_fill_bytes", &[]);
    assert!(held <= (WINDOW + (512 << 10)) as f64, "held {held}");
    // What the upstream could write: the window, plus what the sockets and hyper buffer.
    let sent_now = sent.load(SeqCst);
    assert!(
        sent_now < 32 << 20,
        "the upstream sent {sent_now} of {size} bytes"
    );
    finish_reading(s, read, size).await;
    assert_eq!(requests.load(SeqCst), 1);
    edge.until("the fill let go of its bytes", |e| {
        e.metric("tessera_edge_fill_bytes", &[]) == 0.0
    })
    .await;
    // A reader that goes away stops the fetch of a body nobody else wants.
    let (s, _) = stalled_get(edge.http, "/big").await;
    edge.until("the second fill waits", |e| {
        e.metric("tessera_edge_fills_waiting", &[]) == 1.0
    })
    .await;
    drop(s);
    edge.until("the abandoned fill ends", |e| {
        e.metric("tessera_edge_fills_waiting", &[]) == 0.0
            && e.metric("tessera_edge_fill_bytes", &[]) == 0.0
    })
    .await;
    edge.stop().await;
}

/// A stored body whose only reader stalls waits for it (slow readers of many cold objects
/// must not pull them all into the cache at the upstream's pace); once a second, fast
/// reader waits at its end it goes on at that reader's pace, keeping only its window, and
/// the slow reader, fallen behind, reads what the fill let go of from the cache,
/// byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_of_a_stored_body_reads_back_from_the_cache() {
    use std::sync::atomic::Ordering::SeqCst;
    let size = 64u64 << 20;
    let (addr, requests, sent) = big_upstream(size, "max-age=600").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(format!("http://{addr}")), dir.path());
    cfg.fill_window_bytes = WINDOW;
    let edge = EdgeNode::start(cfg).await;
    let (slow, read) = stalled_get(edge.http, "/stored").await;
    edge.until("the fill waits for its only reader", |e| {
        e.metric("tessera_edge_fills_waiting", &[]) == 1.0
    })
    .await;
    let sent_now = sent.load(SeqCst);
    assert!(
        sent_now < 32 << 20,
        "the upstream sent {sent_now} of {size} bytes for one stalled reader"
    );
    let (fast, early) = stalled_get(edge.http, "/stored").await;
    finish_reading(fast, early, size).await;
    assert_eq!(edge.metric("tessera_edge_fills_waiting", &[]), 0.0);
    let held = edge.metric("tessera_edge_fill_bytes", &[]);
    assert!(
        held <= (WINDOW + (1 << 20)) as f64,
        "held {held} while a reader stalls"
    );
    finish_reading(slow, read, size).await;
    assert_eq!(requests.load(SeqCst), 1, "one upstream fetch for both");
    let r = edge.get("/stored").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    edge.stop().await;
}

/// A stored body whose readers all went away is fetched to its end into the cache (as
/// nginx and Varnish finish a cacheable fetch whose client left), but only
/// `max_background_fills` at once: each holds up to its window and the upstream's pace of
/// CPU, so clients that start and drop many cold downloads cannot grow the edge without
/// bound. A fill left alone past the limit stops, and a later request fetches anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_fills_left_by_their_readers_go_on_only_up_to_the_background_limit() {
    use std::sync::atomic::Ordering::SeqCst;
    let size = 32u64 << 20;
    let (addr, requests, sent) = big_upstream(size, "max-age=600").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(format!("http://{addr}")), dir.path());
    cfg.fill_window_bytes = WINDOW;
    cfg.max_background_fills = 1;
    // The stalled upstream below must outlast the test.
    cfg.timeouts.between_bytes_ms = 600_000;
    let edge = EdgeNode::start(cfg).await;

    // A reader stalls until its fill waits for it, then leaves.
    let leave = async |path: &str| {
        let (s, _) = stalled_get(edge.http, path).await;
        edge.until("the fill waits for its reader", |e| {
            e.metric("tessera_edge_fills_waiting", &[]) == 1.0
        })
        .await;
        drop(s);
    };

    // Its only reader leaves: the fill goes on alone to the end, and the body is a hit.
    leave("/done").await;
    edge.until("the upstream sent the whole body", |_| {
        sent.load(SeqCst) == size
    })
    .await;
    edge.until("the fill ended", |e| {
        e.metric("tessera_edge_fills_background", &[]) == 0.0
            && e.metric("tessera_edge_fill_bytes", &[]) == 0.0
    })
    .await;
    let r = edge.get("/done").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_whole(&r.body, size);
    assert_eq!(requests.load(SeqCst), 1);

    // One left alone whose upstream stalls mid-body holds the only permit...
    leave("/hang").await;
    edge.until("it goes on without readers", |e| {
        e.metric("tessera_edge_fills_background", &[]) == 1.0
    })
    .await;
    // ...so the next one left alone stops.
    leave("/stop").await;
    edge.until("the third fill stops", |e| {
        e.metric("tessera_edge_fills_stopped_total", &[]) == 1.0
            && e.metric("tessera_edge_fills_waiting", &[]) == 0.0
    })
    .await;
    assert_eq!(edge.metric("tessera_edge_fills_background", &[]), 1.0);
    // What it held went with it; the stalled one holds at most its window.
    edge.until("the stopped fill let go of its bytes", |e| {
        e.metric("tessera_edge_fill_bytes", &[]) <= (WINDOW + (512 << 10)) as f64
    })
    .await;
    // Nothing of it was kept as a whole response: the next request fetches it anew.
    let r = edge.get("/stop").await;
    assert!(r.cache_status().contains("miss"), "{}", r.cache_status());
    assert_whole(&r.body, size);
    assert_eq!(requests.load(SeqCst), 4, "/done, /hang, /stop twice");
    edge.stop().await;
}

/// Asserts that `body` is the whole pattern body of `size` bytes.
fn assert_whole(body: &[u8], size: u64) {
    assert_eq!(body.len() as u64, size);
    let bad = body
        .iter()
        .enumerate()
        .find(|(i, b)| **b != pattern(*i as u64));
    assert!(bad.is_none(), "wrong byte at {:?}", bad.map(|b| b.0));
}

/// A reader that fell behind a stored fill's window, whose segments the cache no longer
/// holds, gets the rest of the body on its own (a `Range` request, `If-Range` the ETag)
/// instead of an error, byte-exact, and the fill does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_an_evicted_stored_body_fetches_the_rest_on_its_own() {
    use std::sync::atomic::Ordering::SeqCst;
    let size = 64u64 << 20;
    let (addr, requests, _) = big_upstream(size, "max-age=600").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(format!("http://{addr}")), dir.path());
    cfg.fill_window_bytes = WINDOW;
    // A memory tier far smaller than the body and no SSD tier: segments go soon.
    cfg.memory_bytes = 8 << 20;
    cfg.disk_bytes = 0;
    let edge = EdgeNode::start(cfg).await;
    let (mut slow, mut read) = stalled_get(edge.http, "/evicted").await;
    // The slow reader takes its first MiB from the fill, then stalls; a fast reader joins
    // and takes the fill to the end, past segments the cache lets go of.
    let mut buf = vec![0u8; 64 << 10];
    while read.len() < 1 << 20 {
        let n = slow.read(&mut buf).await.unwrap();
        assert!(n > 0, "body cut at {}", read.len());
        read.extend_from_slice(&buf[..n]);
    }
    let (fast, early) = stalled_get(edge.http, "/evicted").await;
    finish_reading(fast, early, size).await;
    finish_reading(slow, read, size).await;
    assert_eq!(
        requests.load(SeqCst),
        2,
        "the fill, and the rest for the reader left behind"
    );
    edge.stop().await;
}

/// Connections that say nothing, or nothing more, are closed; at the connection cap new
/// clients wait while the admin listener still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_and_surplus_connections_are_contained() {
    let up = Upstream::start(|_, _| response(200, &[("cache-control", "max-age=60")], b"ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    cfg.header_timeout_secs = 1;
    cfg.idle_timeout_secs = 1;
    cfg.max_connections = Some(2);
    let edge = EdgeNode::start(cfg).await;

    // Silent from accept: closed after the header timeout (it used to stay open).
    let mut silent = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("a silent connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(silent);

    // HTTP/2 (h2c) that answers the edge's PINGs but asks for nothing more: GOAWAY after
    // the idle time, and the connection ends.
    let tcp = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(edge.url("/a"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap()
        .unwrap();

    // Two connections in use (each sent part of a head): the third client waits; the
    // admin listener answers all the same; when one closes the third is served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    edge.until("the connection cap is reached", |e| {
        e.metric("tessera_edge_connection_limit_hits_total", &[]) >= 1.0
    })
    .await;
    let url = edge.url("/third");
    let third = tokio::spawn(async move { get(&url, &[]).await });
    assert_eq!(edge.admin("GET", "/healthz", "").await.status, 200);
    // The held connections time out on their heads (1 s), freeing their places.
    let r = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the waiting client is served once a place frees")
        .unwrap();
    assert_eq!(r.status, 200);
    drop(held);
    edge.stop().await;
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `s`, keeping what follows it in
/// `buf`: its status, head and body; status 0 when the connection closes first.
async fn next_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    let deadline = Duration::from_secs(10);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut more = [0u8; 4096];
        let n = tokio::time::timeout(deadline, s.read(&mut more))
            .await
            .expect("a response in time")
            .unwrap_or(0);
        if n == 0 {
            return (0, String::new(), Vec::new());
        }
        buf.extend_from_slice(&more[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    while buf.len() < end + len {
        let mut more = [0u8; 4096];
        let n = tokio::time::timeout(deadline, s.read(&mut more))
            .await
            .expect("a body in time")
            .unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&more[..n]);
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    (status_of(&head), head, body)
}

#[tokio::test]
async fn keep_alive_connections_park_between_requests_and_keep_their_order() {
    // Each body is its path, so a response can be matched to its request.
    let up = Upstream::start(|req, _| {
        http::Response::builder()
            .header("cache-control", "max-age=60")
            .body(http_body_util::Full::new(Bytes::from(
                req.uri().path().to_owned(),
            )))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    cfg.idle_timeout_secs = 4;
    cfg.header_timeout_secs = 1;
    let edge = EdgeNode::start(cfg).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

    // Three connections, one request each: all three park.
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(get(&format!("/c{i}")).as_bytes())
            .await
            .unwrap();
        let (status, head, body) = next_response(&mut s, &mut buf).await;
        assert_eq!(status, 200);
        assert!(!head.to_ascii_lowercase().contains("connection: close"));
        assert_eq!(body, format!("/c{i}").as_bytes());
        conns.push((s, buf));
    }
    edge.until("three parked connections", |e| {
        e.metric("tessera_edge_connections_parked", &[]) == 3.0
    })
    .await;

    // Pipelined on a parked connection, in one write and across writes: every answer, in
    // order, on the same connection.
    let (s, buf) = &mut conns[0];
    let batch = format!("{}{}{}", get("/p1"), get("/p2"), get("/p3"));
    s.write_all(batch.as_bytes()).await.unwrap();
    for p in ["/p1", "/p2", "/p3"] {
        let (status, _, body) = next_response(s, buf).await;
        assert_eq!((status, body.as_slice()), (200, p.as_bytes()));
    }
    // A batch larger than hyper's first read of a connection (8 KiB): what one exchange
    // read ahead is handed to the next in order, whatever is left of it.
    // The first head grows hyper's reads (8 KiB, then 16 KiB), so more than 8 KiB of the
    // next heads are read ahead.
    let mut batch = String::new();
    let paths: Vec<String> = (0..12).map(|i| format!("/big{i}")).collect();
    for (i, p) in paths.iter().enumerate() {
        let pad = "p".repeat(if i == 0 { 12_000 } else { 3_000 });
        batch.push_str(&format!(
            "GET {p} HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n"
        ));
    }
    s.write_all(batch.as_bytes()).await.unwrap();
    for p in &paths {
        let (status, _, body) = next_response(s, buf).await;
        assert_eq!((status, body.as_slice()), (200, p.as_bytes()));
    }
    // A request split mid-head and a request with a body (which hyper finishes before the
    // connection parks again) are answered too.
    s.write_all(b"GET /sp").await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(b"lit HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = next_response(s, buf).await;
    assert_eq!((status, body.as_slice()), (200, b"/split".as_slice()));
    s.write_all(b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (status, _, _) = next_response(s, buf).await;
    assert_ne!(status, 0, "the POST is answered");
    // A request with a body pipelined behind one without, its body sent after the first
    // answer: hyper reads that body from the socket within the same exchange.
    s.write_all(
        format!(
            "{}POST /form2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            get("/before")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = next_response(s, buf).await;
    assert_eq!((status, body.as_slice()), (200, b"/before".as_slice()));
    s.write_all(b"hello").await.unwrap();
    let (status, head, _) = next_response(s, buf).await;
    assert_ne!(status, 0, "the pipelined POST is answered");
    assert!(!head.to_ascii_lowercase().contains("connection: close"));
    s.write_all(get("/after").as_bytes()).await.unwrap();
    let (status, _, body) = next_response(s, buf).await;
    assert_eq!((status, body.as_slice()), (200, b"/after".as_slice()));

    // `Connection: close` is answered, then the connection closes (it does not park).
    let (s, buf) = &mut conns[1];
    s.write_all(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = next_response(s, buf).await;
    assert_eq!((status, body.as_slice()), (200, b"/last".as_slice()));
    assert_eq!(
        next_response(s, buf).await.0,
        0,
        "closed after Connection: close"
    );

    // hyper's client (as the bench's) on one connection, which it never replaces: 200
    // requests in a row, and a pause longer than the header timeout (1 s) halfway. A parked
    // connection waits for its next request under the idle limit, not the header timeout,
    // and sends nothing between answers.
    let mut client = edge.connection().await;
    for i in 0..200 {
        let path = format!("/k{}", i % 5);
        let resp = client
            .send(http::Request::get(&path).body(Bytes::new()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("request {i} on one kept-alive connection: {e}"));
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, path.as_bytes());
        if i == 100 {
            // The pause under test, not a wait for something.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        }
    }
    drop(client);

    // Parked connections are closed after the idle limit.
    for (s, buf) in &mut conns {
        assert_eq!(next_response(s, buf).await.0, 0, "closed once idle");
    }
    edge.until("no parked connection", |e| {
        e.metric("tessera_edge_connections_parked", &[]) == 0.0
    })
    .await;
    edge.stop().await;
}

/// A raw HTTP/2 (h2c, prior knowledge) connection for the frame-level attacks: frames are
/// written as an attacker writes them, and what the edge sends back is read frame by frame.
mod raw_h2 {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK block for `GET path` (static-table method, scheme and path name; literal
    /// path and authority, never indexed).
    pub fn get_block(path: &str) -> Vec<u8> {
        let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
        for (index, value) in [(4u8, path), (1, "127.0.0.1")] {
            b.push(index); // literal without indexing, indexed name
            b.push(value.len() as u8);
            b.extend_from_slice(value.as_bytes());
        }
        b
    }

    /// A connection that has sent the preface and its (empty) SETTINGS.
    pub async fn open(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(4, 0, 0, &[]));
        s.write_all(&hello).await.unwrap();
        s
    }

    /// Frames the edge sent (kind, flags, stream), read until it closes the connection or
    /// sends nothing for 5 s.
    pub async fn read_all(s: &mut TcpStream) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 9 <= data.len() {
            let len = u32::from_be_bytes([0, data[at], data[at + 1], data[at + 2]]) as usize;
            let stream = u32::from_be_bytes(data[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
            let end = (at + 9 + len).min(data.len());
            frames.push((
                data[at + 3],
                data[at + 4],
                stream,
                data[at + 9..end].to_vec(),
            ));
            at += 9 + len;
        }
        frames
    }
}

/// HTTP/2 attacks that must keep failing (CVE-2023-44487 rapid reset, CONTINUATION floods,
/// HPACK bombs): each ends in a refusal or a closed connection within bounds, never reaches
/// the upstream for what it smuggles in, and the edge keeps serving others.
#[tokio::test]
async fn http2_rapid_reset_continuation_flood_and_hpack_bomb_are_contained() {
    use raw_h2::*;
    let up = Upstream::start(|_, _| response(200, &[("cache-control", "no-store")], b"ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;

    // The raw requests are well formed: one is answered.
    let mut s = open(edge.http).await;
    s.write_all(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/plain"),
    ))
    .await
    .unwrap();
    let frames = read_all(&mut s).await;
    assert!(
        frames.iter().any(|f| f.0 == HEADERS && f.2 == 1),
        "{frames:?}"
    );
    assert_eq!(up.count("/plain"), 1);

    // Rapid reset: streams opened and cancelled at once, 5,000 of them. The edge answers
    // with GOAWAY long before the end, and only a few of them reach the upstream.
    let mut s = open(edge.http).await;
    let mut sent = 0;
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block("/reset"));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        if s.write_all(&burst).await.is_err() {
            break;
        }
        sent += 1;
    }
    let frames = read_all(&mut s).await;
    // GOAWAY with ENHANCE_YOUR_CALM (0xb), not a protocol error of ours.
    assert!(
        frames
            .iter()
            .any(|f| f.0 == GOAWAY && f.3.get(4..8) == Some(&[0, 0, 0, 11][..])),
        "no GOAWAY(ENHANCE_YOUR_CALM) after {sent} reset streams: {frames:?}"
    );
    let reached = up.count("/reset");
    assert!(
        reached < 1_000,
        "{reached} of {sent} reset streams reached the upstream"
    );

    // CONTINUATION flood: a header block that never ends, 16 KiB at a time. The edge stops
    // it at its header limit (32 KiB) instead of buffering it: the connection is ended
    // before 64 MiB are sent.
    let mut s = open(edge.http).await;
    let mut block = get_block("/flood");
    block.extend_from_slice(&[0x40, 1, b'x', 0x7f, 0]); // a literal header x: ...
    let mut sent = 0usize;
    let _ = s.write_all(&frame(HEADERS, 0, 1, &block)).await;
    let junk = vec![b'a'; 16 << 10];
    while sent < 64 << 20 {
        if s.write_all(&frame(CONTINUATION, 0, 1, &junk))
            .await
            .is_err()
        {
            break;
        }
        sent += junk.len();
    }
    assert!(
        sent < 64 << 20,
        "the edge took 64 MiB of CONTINUATION frames"
    );
    assert_eq!(up.count("/flood"), 0);

    // HPACK bomb: one 4 KiB header into the dynamic table, then 4,000 one-byte references
    // to it (16 MiB decoded from 4 KiB sent). Refused (a 431, a reset or GOAWAY), never
    // forwarded.
    let mut s = open(edge.http).await;
    let mut block = get_block("/bomb");
    let value = vec![b'v'; 4000];
    block.extend_from_slice(&[0x40, 1, b'b']); // literal with incremental indexing, name b
    block.extend_from_slice(&[
        0x7f,
        (4000u32 - 127) as u8 & 0x7f | 0x80,
        ((4000 - 127) >> 7) as u8,
    ]);
    block.extend_from_slice(&value);
    block.extend(std::iter::repeat_n(0xbe, 4_000)); // indexed: dynamic entry 62
    let _ = s
        .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let frames = read_all(&mut s).await;
    assert!(
        frames
            .iter()
            .any(|f| f.0 == GOAWAY || (f.2 == 1 && (f.0 == RST_STREAM || f.0 == HEADERS))),
        "the bomb got no refusal: {frames:?}"
    );
    assert_eq!(up.count("/bomb"), 0, "the bomb reached the upstream");

    // Everyone else is still served.
    assert_eq!(edge.get("/after").await.status, 200);
}

/// Not an open proxy: a request in absolute form, or a `CONNECT`, for another server
/// never reaches that server; the edge answers from its own backend or refuses.
#[tokio::test]
async fn the_edge_is_not_an_open_proxy() {
    let up = Upstream::start(|_, _| response(200, &[], b"mine")).await;
    let other = Upstream::start(|_, _| response(200, &[], b"other")).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
    let target = other.addr;
    for request in [
        format!("GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
    ] {
        let reply = raw(edge.http, request.as_bytes()).await;
        assert!(!reply.contains("other"), "{request}: {reply}");
    }
    assert_eq!(other.count("/x"), 0, "the other server was reached");
}

/// BREACH needs a compressed response that mixes a secret with what the attacker sent;
/// the edge compresses only stored, shared responses: a private or uncacheable page, or
/// one asked with credentials, goes out as the upstream sent it.
#[tokio::test]
async fn private_pages_are_never_compressed() {
    let page: &'static [u8] = "<html>csrf=SECRET-TOKEN; you searched for ... </html>\n"
        .repeat(200)
        .leak()
        .as_bytes();
    let up = Upstream::start(move |req, _| {
        let cc = match req.uri().path() {
            "/private" => "private, max-age=60",
            "/no-store" => "no-store",
            _ => "max-age=60",
        };
        response(
            200,
            &[("cache-control", cc), ("content-type", "text/html")],
            page,
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
    let br = ("accept-encoding", "br");
    for (path, extra) in [
        ("/private", None),
        ("/no-store", None),
        ("/shared", Some(("authorization", "Bearer user-token"))),
    ] {
        let headers: Vec<_> = [br].into_iter().chain(extra).collect();
        for _ in 0..2 {
            let r = edge.get_with(path, &headers).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-encoding"), "", "{path} was compressed");
            assert_eq!(&r.body[..], page);
        }
    }
    // A shared page without credentials is (the control: compression is on).
    edge.get("/public").await;
    assert_eq!(
        edge.get_with("/public", &[br])
            .await
            .header("content-encoding"),
        "br"
    );
}

/// TLS 1.0 and 1.1 are refused: a ClientHello offering at most TLS 1.1 gets an alert and
/// no handshake, where the same ClientHello offering TLS 1.2 gets a ServerHello.
#[tokio::test]
async fn tls_before_1_2_is_refused() {
    let up = Upstream::start(|_, _| response(200, &[], b"ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
    for (version, name, handshake_expected) in [
        ([3u8, 3u8], "TLS 1.2", true),
        ([3, 1], "TLS 1.0", false),
        ([3, 2], "TLS 1.1", false),
    ] {
        // ClientHello: version, 32 random bytes, no session id, ECDHE suites with AES-128
        // (GCM for TLS 1.2, CBC for older), no compression; extensions: x25519, the
        // uncompressed point format, ECDSA/RSA signature schemes.
        let mut hello = version.to_vec();
        hello.extend_from_slice(&[7u8; 32]);
        hello.extend_from_slice(&[
            0, 0, 8, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x09, 0xc0, 0x13, 1, 0,
        ]);
        let extensions = [
            &[0x00, 0x0a, 0, 4, 0, 2, 0x00, 0x1d][..],
            &[0x00, 0x0b, 0, 2, 1, 0],
            &[0x00, 0x0d, 0, 8, 0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
        ]
        .concat();
        hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        hello.extend(extensions);
        let mut handshake = vec![1, 0];
        handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        handshake.extend(hello);
        let mut record = vec![0x16, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        let mut s = tokio::net::TcpStream::connect(edge.https.unwrap())
            .await
            .unwrap();
        s.write_all(&record).await.unwrap();
        let mut reply = vec![0u8; 16 << 10];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut reply))
            .await
            .expect("the edge answers a ClientHello")
            .unwrap_or(0);
        let reply = &reply[..n];
        if handshake_expected {
            // A handshake record (22) holding a ServerHello (2).
            assert_eq!(
                (reply.first(), reply.get(5)),
                (Some(&22), Some(&2)),
                "{name}: {reply:?}"
            );
        } else {
            // An alert record (21), fatal (2).
            assert_eq!(
                (reply.first(), reply.get(5)),
                (Some(&21), Some(&2)),
                "{name}: {reply:?}"
            );
        }
    }
}
