//! The origin's HTTP API against a real server on 127.0.0.1:0 with a real data folder.

mod common;

use bytes::Bytes;
use common::{Node, Tmpfs, get, metric, noise, publish_until_refused, put_as_writer, send};
use http::{Method, StatusCode};
use tessera_origin_proto::{BatchItem, ChunkHash};

#[tokio::test]
async fn round_trips_of_many_sizes() {
    let node = Node::start(|_| {}).await;
    let sizes = [
        0usize,
        1,
        63,
        4095,
        4096,
        4097,
        16384,
        65535,
        65536,
        65537,
        1 << 20,
        (1 << 20) + 3,
        50 << 20,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let data = noise(n, i as u64 + 1);
        let path = format!("sizes/{n}.bin");
        let rep = node.client.put_bytes(&path, data.clone()).await.unwrap();
        assert_eq!(rep.size, n as u64);
        assert_eq!(rep.blake3, ChunkHash::of(&data));
        assert_eq!(rep.chunks == 0, n == 0, "size {n}");

        let r = get(&node.url(&format!("/api/v1/files/{path}"))).await;
        assert_eq!(r.status, StatusCode::OK, "size {n}");
        assert!(r.body == data, "size {n}: bytes differ");
        assert_eq!(r.header("etag"), format!("\"{}\"", ChunkHash::of(&data)));
        assert_eq!(r.header("content-length"), n.to_string());
        assert_eq!(r.header("content-type"), "application/octet-stream");
        assert!(httpdate::parse_http_date(r.header("last-modified")).is_ok());

        let h = send(
            Method::HEAD,
            &node.url(&format!("/api/v1/files/{path}")),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.header("content-length"), n.to_string());
        assert!(h.body.is_empty());

        // The edges' view: the manifest tiles the file and every chunk verifies.
        let m = node.client.manifest(&path).await.unwrap().unwrap();
        assert_eq!(m.size, n as u64);
        let mut joined = Vec::with_capacity(n);
        if n <= 1 << 20 {
            for c in &m.chunks {
                joined.extend_from_slice(&node.client.chunk(c.hash).await.unwrap());
            }
            assert!(joined == data, "size {n}: chunks do not assemble the file");
        }
    }
    node.stop().await;
}

#[tokio::test]
async fn content_type_comes_from_the_path_and_chunks_are_immutable() {
    let node = Node::start(|_| {}).await;
    let css = "body { color: red; }\n".repeat(2000);
    node.client
        .put_bytes("site/style.css", css.clone())
        .await
        .unwrap();
    let r = get(&node.url("/api/v1/files/site/style.css")).await;
    assert_eq!(r.header("content-type"), "text/css");
    let m = node
        .client
        .manifest("site/style.css")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.content_type, "text/css");
    // Stored brotli-compressed: sent as such to a client that accepts br, raw otherwise.
    let url = node.url(&format!("/api/v1/chunks/{}", m.chunks[0].hash));
    let br = send(
        Method::GET,
        &url,
        &[("accept-encoding", "gzip, br")],
        Bytes::new(),
    )
    .await;
    assert_eq!(br.status, StatusCode::OK);
    assert_eq!(br.header("content-encoding"), "br");
    assert_eq!(
        br.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert!(br.body.len() < m.chunks[0].size as usize / 4);
    let raw = get(&url).await;
    assert_eq!(raw.header("content-encoding"), "");
    assert_eq!(raw.body.len(), m.chunks[0].size as usize);
    assert_eq!(ChunkHash::of(&raw.body), m.chunks[0].hash);
    node.stop().await;
}

#[tokio::test]
async fn a_new_version_with_an_insertion_shares_most_chunks() {
    let node = Node::start(|_| {}).await;
    let v1 = noise(8 << 20, 42);
    let mut v2 = v1.clone();
    v2.splice(4 << 20..4 << 20, noise(1000, 7));
    let r1 = node.client.put_bytes("release.tar", v1).await.unwrap();
    assert_eq!(r1.new_chunks, r1.chunks);
    let r2 = node
        .client
        .put_bytes("release.tar", v2.clone())
        .await
        .unwrap();
    assert!(r2.chunks > 200, "{} chunks", r2.chunks);
    assert!(
        r2.new_chunks <= 3,
        "{} of {} chunks were new",
        r2.new_chunks,
        r2.chunks
    );
    assert!(
        r2.stored_bytes_added < 200_000,
        "{} bytes added",
        r2.stored_bytes_added
    );
    assert!(get(&node.url("/api/v1/files/release.tar")).await.body == v2);
    let stats = node.client.stats().await.unwrap();
    assert_eq!(stats.objects, 1);
    assert_eq!(stats.logical_bytes, v2.len() as u64);
    node.stop().await;
}

/// A publisher names the chunks the origin has instead of sending them: the origin says
/// which it has, reads the named ones back (checked) and publishes exactly the file those
/// bytes make. What it cannot check is refused and publishes nothing.
#[tokio::test]
async fn a_publish_in_pieces_names_the_chunks_the_origin_has() {
    let node = Node::start(|c| c.token = Some("t".into())).await;
    let auth = [("authorization", "Bearer t")];
    let writer = tessera_origin_proto::OriginClient::new(&node.url(""), Some("t".into())).unwrap();
    let v1 = noise(4 << 20, 42);
    writer.put_bytes("release.tar", v1.clone()).await.unwrap();
    let m1 = node.client.manifest("release.tar").await.unwrap().unwrap();
    let held: std::collections::HashSet<ChunkHash> = m1.chunks.iter().map(|c| c.hash).collect();

    // Which chunks it has: one byte each, in order; only for writers.
    let mut asked: Vec<ChunkHash> = m1.chunks.iter().take(3).map(|c| c.hash).collect();
    asked.push(ChunkHash([9; 32]));
    assert_eq!(
        writer.known_chunks(&asked).await.unwrap(),
        [true, true, true, false]
    );
    let body = tessera_origin_proto::batch::encode_request(&asked);
    let known_url = node.url("/api/v1/chunks/known");
    assert_eq!(send(Method::POST, &known_url, &[], body).await.status, 401);

    // A new version with an insertion: its unchanged chunks named, the rest sent.
    let mut v2 = v1.clone();
    v2.splice(2 << 20..2 << 20, noise(1000, 7));
    let body = common::pieces(&v2, |h| held.contains(h));
    assert!(body.len() < 200_000, "{} bytes sent", body.len());
    let typed = [
        auth[0],
        ("content-type", tessera_origin_proto::upload::CONTENT_TYPE),
    ];
    let r = send(
        Method::PUT,
        &node.url("/api/v1/files/release.tar"),
        &typed,
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["size"], v2.len());
    assert!(get(&node.url("/api/v1/files/release.tar")).await.body == v2);
    let m2 = node.client.manifest("release.tar").await.unwrap().unwrap();
    assert_eq!(m2.blake3, ChunkHash(*blake3::hash(&v2).as_bytes()));

    // A chunk it does not have: 409, and nothing is published.
    let unknown = common::pieces(&noise(300_000, 8), |_| true);
    let r = send(
        Method::PUT,
        &node.url("/api/v1/files/other.bin"),
        &typed,
        unknown,
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("send the file's bytes")
    );
    assert!(node.client.manifest("other.bin").await.unwrap().is_none());
    // A chunk named with the wrong length, a body cut inside a piece, an unknown tag: 400.
    let c = m1.chunks[0];
    let mut wrong = bytes::BytesMut::new();
    tessera_origin_proto::upload::Piece::Chunk(c.hash, c.size + 1).encode(&mut wrong);
    let cut = common::pieces(&v2, |h| held.contains(h));
    for (body, words) in [
        (wrong.freeze(), "bytes, not"),
        (cut.slice(..cut.len() - 3), "ends inside piece"),
        (Bytes::from_static(b"Zzz"), "unknown tag"),
    ] {
        let r = send(
            Method::PUT,
            &node.url("/api/v1/files/bad.bin"),
            &typed,
            body,
        )
        .await;
        assert_eq!(r.status, 400, "{words}: {:?}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains(words),
            "{:?}",
            r.body
        );
        assert!(node.client.manifest("bad.bin").await.unwrap().is_none());
    }
    node.stop().await;
}

#[tokio::test]
async fn delete_reclaims_unshared_chunks_only() {
    let node = Node::start(|_| {}).await;
    let shared = noise(2 << 20, 1);
    let mut a = shared.clone();
    a.extend(noise(6 << 20, 2)); // a = shared + 6 MiB of its own
    let b = shared.clone();
    node.client.put_bytes("a.bin", a).await.unwrap();
    node.client.put_bytes("b.bin", b.clone()).await.unwrap();
    let before = node.client.stats().await.unwrap();

    let r = send(
        Method::DELETE,
        &node.url("/api/v1/files/a.bin"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&node.url("/api/v1/files/a.bin")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = send(
        Method::DELETE,
        &node.url("/api/v1/files/a.bin"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let after = node.client.stats().await.unwrap();
    assert_eq!(after.objects, 1);
    // Roughly a's own 6 MiB are gone from the index and from the disk.
    let freed_unique = before.unique_bytes - after.unique_bytes;
    assert!(
        (5 << 20..7 << 20).contains(&freed_unique),
        "freed {freed_unique} unique bytes"
    );
    let freed_disk = before.stored_bytes - after.stored_bytes;
    assert!(
        freed_disk > 4 << 20,
        "only {freed_disk} bytes freed on disk"
    );
    // b, which shares a's first chunks, is intact.
    assert!(get(&node.url("/api/v1/files/b.bin")).await.body == b);
    node.stop().await;
}

#[tokio::test]
async fn post_stores_under_a_generated_id() {
    let node = Node::start(|_| {}).await;
    let data = noise(100_000, 5);
    let r = send(Method::POST, &node.url("/api/v1/files"), &[], data.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), format!("/api/v1/files/{id}"));
    assert!(get(&node.url(&format!("/api/v1/files/{id}"))).await.body == data);
    let r2 = send(Method::POST, &node.url("/api/v1/files"), &[], data).await;
    assert_ne!(r2.json()["id"], r.json()["id"]);
    node.stop().await;
}

#[tokio::test]
async fn list_by_prefix() {
    let node = Node::start(|_| {}).await;
    for p in ["img/a.png", "img/b.png", "imgx/c.png", "js/app.js"] {
        node.client
            .put_bytes(p, p.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let r = get(&node.url("/api/v1/files?prefix=img%2F")).await;
    let paths: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().into())
        .collect();
    assert_eq!(paths, ["img/a.png", "img/b.png"]);
    assert_eq!(r.json()[0]["size"], 9);
    // A prefix written as a URL path means the same files.
    let slashed = get(&node.url("/api/v1/files?prefix=%2Fimg%2F")).await;
    assert_eq!(slashed.json(), r.json());
    let all = get(&node.url("/api/v1/files")).await;
    assert_eq!(all.json().as_array().unwrap().len(), 4);
    node.stop().await;
}

#[tokio::test]
async fn ranges_and_conditional_requests() {
    let node = Node::start(|_| {}).await;
    let data = noise(300_000, 9);
    node.client.put_bytes("r.bin", data.clone()).await.unwrap();
    let url = node.url("/api/v1/files/r.bin");
    let n = data.len();
    let cases: &[(&str, StatusCode, Option<(usize, usize)>)] = &[
        ("bytes=0-0", StatusCode::PARTIAL_CONTENT, Some((0, 1))),
        (
            "bytes=100-199",
            StatusCode::PARTIAL_CONTENT,
            Some((100, 200)),
        ),
        (
            "bytes=16000-70000",
            StatusCode::PARTIAL_CONTENT,
            Some((16000, 70001)),
        ),
        (
            "bytes=299990-",
            StatusCode::PARTIAL_CONTENT,
            Some((299_990, n)),
        ),
        ("bytes=-10", StatusCode::PARTIAL_CONTENT, Some((n - 10, n))),
        (
            "bytes=299999-400000",
            StatusCode::PARTIAL_CONTENT,
            Some((n - 1, n)),
        ),
        ("bytes=300000-", StatusCode::RANGE_NOT_SATISFIABLE, None),
        ("bytes=-0", StatusCode::RANGE_NOT_SATISFIABLE, None),
        ("bytes=abc", StatusCode::RANGE_NOT_SATISFIABLE, None),
        ("bytes=5-1", StatusCode::RANGE_NOT_SATISFIABLE, None),
        ("bytes=0-1,5-6", StatusCode::OK, Some((0, n))),
        ("pages=1-2", StatusCode::OK, Some((0, n))),
    ];
    for &(range, status, want) in cases {
        let r = send(Method::GET, &url, &[("range", range)], Bytes::new()).await;
        assert_eq!(r.status, status, "{range}");
        match want {
            Some((a, b)) => {
                assert!(r.body[..] == data[a..b], "{range}: wrong bytes");
                if status == StatusCode::PARTIAL_CONTENT {
                    assert_eq!(
                        r.header("content-range"),
                        format!("bytes {a}-{}/{n}", b - 1),
                        "{range}"
                    );
                }
            }
            None => {
                assert_eq!(r.header("content-range"), format!("bytes */{n}"), "{range}");
                assert!(
                    r.json()["error"].as_str().unwrap().contains("Range"),
                    "{range}"
                );
            }
        }
    }
    let etag = get(&url).await.header("etag").to_string();
    let lm = get(&url).await.header("last-modified").to_string();
    let cond: &[(&str, String, StatusCode)] = &[
        ("if-none-match", etag.clone(), StatusCode::NOT_MODIFIED),
        (
            "if-none-match",
            format!("\"nope\", W/{etag}"),
            StatusCode::NOT_MODIFIED,
        ),
        ("if-none-match", "*".into(), StatusCode::NOT_MODIFIED),
        ("if-none-match", "\"other\"".into(), StatusCode::OK),
        ("if-modified-since", lm.clone(), StatusCode::NOT_MODIFIED),
        (
            "if-modified-since",
            "Sat, 01 Jan 2000 00:00:00 GMT".into(),
            StatusCode::OK,
        ),
        (
            "if-match",
            "\"other\"".into(),
            StatusCode::PRECONDITION_FAILED,
        ),
        ("if-match", etag.clone(), StatusCode::OK),
    ];
    for (name, value, status) in cond {
        let r = send(Method::GET, &url, &[(name, value)], Bytes::new()).await;
        assert_eq!(r.status, *status, "{name}: {value}");
        if *status == StatusCode::NOT_MODIFIED {
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag"), etag);
        }
    }
    // If-Range: the range applies only while the validator still matches.
    let r = send(
        Method::GET,
        &url,
        &[("range", "bytes=0-9"), ("if-range", &etag)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let r = send(
        Method::GET,
        &url,
        &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), n);
    node.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let node = Node::start(|c| {
        c.token = Some("secret".into());
        c.max_body_bytes = 1 << 20;
    })
    .await;
    let auth = ("authorization", "Bearer secret");
    let long = format!("/api/v1/files/{}", "a".repeat(1025));
    let big = vec![0u8; (1 << 20) + 1];
    let cases: Vec<(Method, String, Vec<(&str, &str)>, Vec<u8>, StatusCode, &str)> = vec![
        (
            Method::PUT,
            "/api/v1/files/a%5Cb.txt".into(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "backslash",
        ),
        (
            Method::PUT,
            "/api/v1/files/a/../b".into(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "'..'",
        ),
        (
            Method::GET,
            "/api/v1/files/a/./b".into(),
            vec![],
            vec![],
            StatusCode::BAD_REQUEST,
            "'.'",
        ),
        (
            Method::PUT,
            "/api/v1/files/a//b".into(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "empty segment",
        ),
        (
            Method::PUT,
            "/api/v1/files/a/".into(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "empty segment",
        ),
        (
            Method::PUT,
            "/api/v1/files/a%00b".into(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "control",
        ),
        (
            Method::PUT,
            "/api/v1/files/%2e%2e/x".into(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "'..'",
        ),
        (
            Method::PUT,
            "/api/v1/files/%ff".into(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            Method::PUT,
            long.clone(),
            vec![auth],
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "1025 bytes",
        ),
        (
            Method::PUT,
            "/api/v1/files/big".into(),
            vec![auth],
            big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
        ),
        (
            Method::PUT,
            "/api/v1/files/x".into(),
            vec![],
            b"x".to_vec(),
            StatusCode::UNAUTHORIZED,
            "Bearer",
        ),
        (
            Method::PUT,
            "/api/v1/files/x".into(),
            vec![("authorization", "Bearer wrong")],
            b"x".to_vec(),
            StatusCode::UNAUTHORIZED,
            "token",
        ),
        (
            Method::DELETE,
            "/api/v1/files/x".into(),
            vec![],
            vec![],
            StatusCode::UNAUTHORIZED,
            "Bearer",
        ),
        (
            Method::POST,
            "/api/v1/files".into(),
            vec![],
            b"x".to_vec(),
            StatusCode::UNAUTHORIZED,
            "Bearer",
        ),
        (
            Method::GET,
            "/api/v1/files/missing".into(),
            vec![],
            vec![],
            StatusCode::NOT_FOUND,
            "missing",
        ),
        (
            Method::GET,
            "/api/v1/manifests/missing".into(),
            vec![],
            vec![],
            StatusCode::NOT_FOUND,
            "missing",
        ),
        (
            Method::GET,
            "/api/v1/chunks/xyz".into(),
            vec![],
            vec![],
            StatusCode::BAD_REQUEST,
            "64 hex",
        ),
        (
            Method::GET,
            format!("/api/v1/chunks/{}", ChunkHash::of(b"none")),
            vec![],
            vec![],
            StatusCode::NOT_FOUND,
            "no chunk",
        ),
        (
            Method::GET,
            "/nope".into(),
            vec![],
            vec![],
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
        (
            Method::PATCH,
            "/api/v1/files/x".into(),
            vec![auth],
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "allowed",
        ),
    ];
    for (method, path, headers, body, status, mention) in cases {
        let r = send(method.clone(), &node.url(&path), &headers, body).await;
        assert_eq!(r.status, status, "{method} {path:.60}");
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains(mention),
            "{method} {path:.60}: {msg:?} does not mention {mention:?}"
        );
    }
    // A body over the limit without Content-Length is cut off while streaming.
    let stream = futures_util::stream::iter((0..20).map(|_| {
        Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![1u8; 100_000])))
    }));
    let body = http_body_util::StreamBody::new(stream);
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::put(node.url("/api/v1/files/streamed"))
        .header("authorization", "Bearer secret")
        .body(body)
        .unwrap();
    match client.request(req).await {
        Ok(r) => assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => panic!("expected a 413, got {e}"),
    }
    // Nothing refused was stored, and reads need no token.
    assert_eq!(node.client.stats().await.unwrap().objects, 0);
    let ok = send(
        Method::PUT,
        &node.url("/api/v1/files/ok"),
        &[auth],
        b"fine".to_vec(),
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(get(&node.url("/api/v1/files/ok")).await.body, "fine");
    assert_eq!(
        get(&node.url("/api/v1/files/big")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&node.url("/healthz")).await.status, StatusCode::OK);
    node.stop().await;
}

#[tokio::test]
async fn a_flipped_byte_on_disk_is_never_served() {
    let node = Node::start(|_| {}).await;
    let small = noise(100_000, 11); // a handful of chunks, stored raw (incompressible)
    node.client
        .put_bytes("small.bin", small.clone())
        .await
        .unwrap();
    let big = noise(3 << 20, 12); // ~190 chunks: corruption far from the start
    node.client.put_bytes("big.bin", big.clone()).await.unwrap();
    let flip = |pack: &std::path::Path, at: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pack)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    };
    // Each upload wrote its own pack; tell them apart by size.
    let mut packs: Vec<_> = std::fs::read_dir(node.packs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    assert_eq!(packs.len(), 2);
    flip(&packs[0], 50_000);
    flip(&packs[1], 2_900_000);

    let r = get(&node.url("/api/v1/files/small.bin")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.json()["error"].as_str().unwrap().contains("integrity"));
    let m = node.client.manifest("small.bin").await.unwrap().unwrap();
    let bad_chunk = m
        .chunks
        .iter()
        .find(|c| c.offset <= 50_000 && 50_000 < c.offset + c.size as u64);
    assert!(bad_chunk.is_some() || m.chunks.len() > 1);
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for c in &m.chunks {
            v.push(
                get(&node.url(&format!("/api/v1/chunks/{}", c.hash)))
                    .await
                    .status,
            );
        }
        v
    };
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
            .count(),
        1,
        "{statuses:?}"
    );
    // In a batch, the corrupt chunk is "unavailable" and the others are served.
    let hashes: Vec<ChunkHash> = m.chunks.iter().map(|c| c.hash).collect();
    let mut batch = node.client.chunk_batch(&hashes, false).await.unwrap();
    let mut kinds = Vec::new();
    while let Some(item) = batch.next().await {
        kinds.push(match item.unwrap() {
            BatchItem::Chunk(..) => "chunk",
            BatchItem::Unavailable(_) => "unavailable",
            BatchItem::Corrupt(_) => "corrupt",
        });
    }
    assert_eq!(kinds.len(), m.chunks.len());
    assert_eq!(
        kinds.iter().filter(|k| **k == "unavailable").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "chunk").count(),
        m.chunks.len() - 1
    );

    // Corruption deep in a big file: the reply starts, then the body is cut before the bad
    // chunk; the client never receives the whole, let alone wrong bytes.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .get(node.url("/api/v1/files/big.bin").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut failed = false;
    use http_body_util::BodyExt;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body completed although a chunk was corrupt");
    assert!(got.len() < 2_900_000, "{} bytes delivered", got.len());
    assert!(
        got[..] == big[..got.len()],
        "delivered bytes differ from the file"
    );

    let text = get(&node.url("/metrics")).await;
    assert!(
        metric(
            std::str::from_utf8(&text.body).unwrap(),
            "tessera_origin_corrupt_chunks_total"
        ) >= 3.0
    );
    node.stop().await;
}

#[tokio::test]
async fn metrics_and_stats_report_storage() {
    let node = Node::start(|_| {}).await;
    let text = "hello tessera ".repeat(20_000).into_bytes();
    node.client.put_bytes("t1.txt", text.clone()).await.unwrap();
    node.client.put_bytes("t2.txt", text.clone()).await.unwrap();
    let s = node.client.stats().await.unwrap();
    assert_eq!(s.objects, 2);
    assert_eq!(s.logical_bytes, 2 * text.len() as u64);
    assert!(s.unique_bytes <= text.len() as u64);
    assert!(s.dedup_ratio >= 2.0, "{s:?}");
    assert!(s.stored_bytes > 0 && s.stored_bytes < s.logical_bytes);
    assert!((s.efficiency - s.logical_bytes as f64 / s.stored_bytes as f64).abs() < 1e-9);
    let m = get(&node.url("/metrics")).await;
    let m = std::str::from_utf8(&m.body).unwrap();
    assert_eq!(
        metric(m, "tessera_origin_ingested_bytes_total"),
        2.0 * text.len() as f64
    );
    assert_eq!(metric(m, "tessera_origin_objects"), 2.0);
    // A standalone node is a cluster of one, live.
    assert_eq!(metric(m, "tessera_origin_cluster_nodes"), 1.0);
    assert_eq!(metric(m, "tessera_origin_cluster_nodes_live"), 1.0);
    assert!(metric(m, "tessera_origin_dedup_ratio") >= 2.0);
    assert!(m.contains("tessera_origin_request_duration_seconds_bucket{op=\"put\""));
    assert!(m.contains("tessera_origin_requests_total{op=\"put\",status=\"201\"} 2"));
    node.stop().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_works_too() {
    let node = Node::start(|_| {}).await;
    let data = noise(500_000, 21);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let put = http::Request::put(node.url("/api/v1/files/h2.bin"))
        .body(http_body_util::Full::new(Bytes::from(data.clone())))
        .unwrap();
    let r = client.request(put).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let get = http::Request::get(node.url("/api/v1/files/h2.bin"))
        .header("range", "bytes=1000-1999")
        .body(Default::default())
        .unwrap();
    let r = client.request(get).await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    use http_body_util::BodyExt;
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert!(body[..] == data[1000..2000]);
    node.stop().await;
}

#[tokio::test]
async fn chunk_batches_stream_many_chunks_in_the_order_asked() {
    let node = Node::start(|_| {}).await;
    let text = "a compressible line of text, stored brotli\n"
        .repeat(30_000)
        .into_bytes();
    let bin = noise(1 << 20, 41);
    node.client.put_bytes("t.txt", text.clone()).await.unwrap();
    node.client.put_bytes("b.bin", bin.clone()).await.unwrap();
    let mut want: Vec<(ChunkHash, Vec<u8>)> = Vec::new();
    for (path, data) in [("t.txt", &text), ("b.bin", &bin)] {
        let m = node.client.manifest(path).await.unwrap().unwrap();
        for c in &m.chunks {
            let at = c.offset as usize;
            want.push((c.hash, data[at..at + c.size as usize].to_vec()));
        }
    }
    // Interleaved, one asked twice, and one nobody published.
    want.swap(0, 5);
    want.push(want[2].clone());
    let missing = ChunkHash::of(b"never published");
    let mut hashes: Vec<ChunkHash> = want.iter().map(|(h, _)| *h).collect();
    hashes.insert(3, missing);
    for brotli in [false, true] {
        let mut batch = node.client.chunk_batch(&hashes, brotli).await.unwrap();
        let mut got = Vec::new();
        while let Some(item) = batch.next().await {
            got.push(item.unwrap());
        }
        assert_eq!(got.len(), hashes.len());
        let mut expected: Vec<BatchItem> = want
            .iter()
            .map(|(h, d)| BatchItem::Chunk(*h, Bytes::from(d.clone())))
            .collect();
        expected.insert(3, BatchItem::Unavailable(missing));
        assert!(
            got == expected,
            "brotli {brotli}: the chunks asked, in order"
        );
    }
    // The stored brotli stream is what travels when asked for: fewer bytes than the text.
    let body = tessera_origin_proto::batch::encode_request(&hashes);
    let raw = send(Method::POST, &node.url("/api/v1/chunks"), &[], body.clone()).await;
    let br = send(
        Method::POST,
        &node.url("/api/v1/chunks"),
        &[("accept-encoding", "br")],
        body,
    )
    .await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(
        raw.header("content-type"),
        tessera_origin_proto::batch::RESPONSE_TYPE
    );
    assert!(
        br.body.len() < raw.body.len() / 2,
        "{} vs {}",
        br.body.len(),
        raw.body.len()
    );

    // Bad lists are refused with a JSON reason.
    for (body, status, why) in [
        (vec![0u8; 33], StatusCode::BAD_REQUEST, "multiple of 32"),
        (
            vec![0u8; 32 * (tessera_origin_proto::batch::MAX_BATCH_CHUNKS + 1)],
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most",
        ),
    ] {
        let r = send(
            Method::POST,
            &node.url("/api/v1/chunks"),
            &[],
            Bytes::from(body),
        )
        .await;
        assert_eq!(r.status, status);
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{:?}",
            r.json()
        );
    }
    let r = get(&node.url("/api/v1/chunks")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "POST");
    node.stop().await;
}

/// A batch whose client stops reading holds no thread: its chunks are read ahead into a
/// bounded buffer by jobs that stop when it is full. On a runtime with two blocking threads,
/// four stalled batches (each asking for 64 MiB) leave room for a plain read, which would
/// wait forever if each batch's reader waited for its client on a thread.
#[test]
fn stalled_batch_clients_hold_no_thread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let node = Node::start(|_| {}).await;
        let data = noise(256 << 10, 61);
        node.client.put_bytes("s.bin", data.clone()).await.unwrap();
        let m = node.client.manifest("s.bin").await.unwrap().unwrap();
        let first = m.chunks[0].hash;
        let list = tessera_origin_proto::batch::encode_request(
            &[first; tessera_origin_proto::batch::MAX_BATCH_CHUNKS],
        );
        let mut stalled = Vec::new();
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
            let head = format!(
                "POST /api/v1/chunks HTTP/1.1\r\nhost: o\r\ncontent-length: {}\r\n\r\n",
                list.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&list).await.unwrap();
            let mut some = [0u8; 64];
            let n = s.read(&mut some).await.unwrap();
            assert!(some[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &some[..n]);
            stalled.push(s); // and never read again
        }
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            get(&node.url("/api/v1/files/s.bin")),
        )
        .await
        .expect("a plain read is served while four batch clients stall");
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body[..] == data[..]);
        drop(stalled);
        node.stop().await;
    });
}

/// A full data disk (a real 24 MiB tmpfs): publishes get `507` with a JSON reason and
/// leave nothing visible, what was published reads back byte for byte, the metrics show the
/// disk, and once files are deleted publishing works again.
#[tokio::test]
async fn a_full_disk_refuses_publishes_with_507_and_reads_go_on() {
    let disk = Tmpfs::new("24m");
    let data = disk.path().join("data");
    let node = Node::start(|c| c.data = data).await;
    let (mut published, failed, r) = publish_until_refused(&node, "f", 3_000_000, 70, 20).await;
    assert!(published.len() >= 3, "{} published first", published.len());
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{:?}", r.json());
    let why = r.json()["error"].as_str().unwrap().to_string();
    assert!(why.contains("data disk is full"), "{why}");
    // Nothing of the refused publish is visible; everything before it reads back.
    let r = get(&node.url(&format!("/api/v1/files/f{failed}.bin"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for (i, body) in &published {
        let r = get(&node.url(&format!("/api/v1/files/f{i}.bin"))).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body[..] == body[..], "f{i} reads back");
    }
    let text = get(&node.url("/metrics")).await.body;
    let text = String::from_utf8_lossy(&text);
    let (size, free) = (
        metric(&text, "tessera_origin_disk_bytes"),
        metric(&text, "tessera_origin_disk_free_bytes"),
    );
    assert_eq!(size, (24 << 20) as f64);
    assert!(free < 3e6, "{free} bytes free after the refusal");
    // Deleting files frees their chunks: publishing works again.
    for (i, _) in published.drain(..2) {
        let url = node.url(&format!("/api/v1/files/f{i}.bin"));
        let r = send(
            Method::DELETE,
            &url,
            &[("authorization", "Bearer secret")],
            "",
        )
        .await;
        assert!(r.status.is_success(), "{}", r.status);
    }
    let body = noise(3_000_000, 99);
    let url = node.url(&format!("/api/v1/files/f{failed}.bin"));
    let r = put_as_writer(&url, body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    assert!(get(&url).await.body[..] == body[..]);
    node.stop().await;
}

/// A small file's manifest comes with its bytes when the edge asks, framed as
/// `tessera_origin_proto::inline` documents; a larger file, a `HEAD` or a request without the
/// header gets the manifest alone, as before.
#[tokio::test]
async fn a_manifest_carries_a_small_files_bytes_when_asked() {
    use tessera_origin_proto::{ManifestFetch, inline};
    let node = Node::start(|_| {}).await;
    let small = noise(100 << 10, 51);
    node.client.put_bytes("s.bin", small.clone()).await.unwrap();
    let url = node.url("/api/v1/manifests/s.bin");

    let r = send(Method::GET, &url, &[(inline::INLINE_HEADER, "262144")], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], inline::CONTENT_TYPE);
    assert_eq!(r.headers["vary"], inline::INLINE_HEADER);
    let (json, data) = inline::decode(&r.body).unwrap();
    let m = tessera_origin_proto::Manifest::from_json(&json).unwrap();
    assert_eq!(m.size, small.len() as u64);
    assert!(m.chunks.len() > 1, "several chunks, read back in order");
    assert!(data == small[..], "the file's bytes follow the manifest");

    // Too large for the limit asked, a HEAD, no header: the manifest alone.
    for (method, headers) in [
        (Method::GET, vec![(inline::INLINE_HEADER, "102399")]),
        (Method::HEAD, vec![(inline::INLINE_HEADER, "262144")]),
        (Method::GET, vec![]),
    ] {
        let r = send(method.clone(), &url, &headers, "").await;
        assert_eq!(r.status, StatusCode::OK, "{method} {headers:?}");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["vary"], inline::INLINE_HEADER);
        if method == Method::GET {
            tessera_origin_proto::Manifest::from_json(&r.body).unwrap();
        }
    }

    // The client checks the bytes and hands them over.
    let Ok(ManifestFetch::Found { inline, .. }) = node
        .client
        .manifest_with("s.bin", None, Some(1 << 20))
        .await
    else {
        panic!("found")
    };
    assert!(inline.unwrap() == small[..]);
    let Ok(ManifestFetch::Found { inline, .. }) =
        node.client.manifest_with("s.bin", None, Some(1000)).await
    else {
        panic!("found")
    };
    assert!(inline.is_none());
}

/// A connection that sends nothing is closed after the header timeout, as one that never
/// finishes its head is; the node keeps serving.
#[tokio::test]
async fn a_silent_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let node = Node::start(|c| c.header_timeout_secs = 1).await;
    let mut silent = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("a silent connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(node.client.stats().await.is_ok());
}
