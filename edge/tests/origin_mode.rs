//! The edge in front of a real Tessera origin: tiers, restart, content addressing, ranges,
//! coalescing, the change feed, purges, corrupt chunks; each over HTTP/1.1, HTTP/2 and
//! HTTP/3 (`over_protocols!`). Also HTTP/2 by ALPN, h2c, and shutdown with idle connections.

mod common;

use bytes::Bytes;
use common::*;
use tessera_edge::Backend;
use tessera_edge::store::entry::INLINE_MAX;

async fn origin_and_edge(
    tweak: impl FnOnce(&mut tessera_edge::EdgeConfig),
) -> (Origin, EdgeNode, tempfile::TempDir) {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![origin.url()]), dir.path());
    tweak(&mut cfg);
    let edge = EdgeNode::start(cfg).await;
    (origin, edge, dir)
}

async fn origin_and_tls_edge() -> (Origin, EdgeNode, tempfile::TempDir) {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Backend::Origin(vec![origin.url()]), dir.path());
    let edge = EdgeNode::start_with(cfg, true).await;
    (origin, edge, dir)
}

#[tokio::test]
async fn http2_over_tls_by_alpn() {
    let (origin, edge, _d) = origin_and_tls_edge().await;
    origin.publish("index.html", "<p>tls</p>").await;
    let (r, alpn) = h2_tls_get(edge.https.unwrap(), edge.cert.as_ref().unwrap(), "/").await;
    assert_eq!(alpn, "h2");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"<p>tls</p>");
    assert_eq!(
        edge.metric(
            "tessera_edge_requests_total",
            &[("protocol", "h2"), ("status", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn h2c_with_prior_knowledge_on_the_plain_listener() {
    let (origin, edge, _d) = origin_and_edge(|_| {}).await;
    origin.publish("a.txt", "plain h2").await;
    let tcp = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/a.txt", edge.http))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"plain h2");
}

#[tokio::test]
async fn shutdown_completes_with_an_idle_tls_connection_open() {
    let (origin, edge, _d) = origin_and_tls_edge().await;
    origin.publish("index.html", "x").await;
    let (r, _) = h2_tls_get(edge.https.unwrap(), edge.cert.as_ref().unwrap(), "/").await;
    assert_eq!(r.status, 200);
    // A second client that completes a TLS handshake and then sits idle.
    let _idle = tls_connect(edge.https.unwrap(), edge.cert.as_ref().unwrap()).await;
    // Stops (and panics inside if `run` failed) while that connection is still open.
    tokio::time::timeout(std::time::Duration::from_secs(20), edge.stop())
        .await
        .expect("shutdown finished");
}

over_protocols! {
    async fn serves_published_files_then_hits_memory() {
        let (origin, edge, _d) = origin_and_edge(|_| {}).await;
        origin.publish("index.html", "<h1>home</h1>").await;
        origin.publish("assets/app.js", "console.log(1)").await;

        let r = edge.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"<h1>home</h1>");
        assert_eq!(r.header("content-type"), "text/html");
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{}",
            r.cache_status()
        );

        let r = edge.get("/assets/app.js").await;
        assert_eq!(&r.body[..], b"console.log(1)");
        let r = edge.get("/assets/app.js").await;
        assert!(
            r.cache_status().contains("hit") && r.cache_status().contains("memory"),
            "{}",
            r.cache_status()
        );
        assert_eq!(
            r.header("etag"),
            format!("\"{}\"", blake3::hash(b"console.log(1)").to_hex())
        );
        assert_eq!(
            edge.metric(
                "tessera_edge_cache_lookups_total",
                &[("result", "hit"), ("tier", "memory")]
            ),
            1.0
        );

        let r = edge.get("/missing.css").await;
        assert_eq!(r.status, 404);
        assert!(r.json()["error"].as_str().unwrap().contains("missing.css"));
        // An ordinary 404 of the origin is a miss, not an error.
        assert_eq!(r.cache_status(), "tessera; fwd=miss; fwd-status=404");

        // A folder asked for without its slash is sent to the folder when it has an index.
        origin.publish("app/index.html", "<p>app</p>").await;
        for (asked, location) in [("/app", "/app/"), ("/app?v=2", "/app/?v=2")] {
            let r = edge.get(asked).await;
            assert_eq!((r.status.as_u16(), r.header("location")), (301, location), "{asked}");
        }
        assert_eq!(&edge.get("/app/").await.body[..], b"<p>app</p>");
        assert_eq!(edge.get("/nope").await.status, 404, "no index, no redirect");
    }
async fn ssd_tier_serves_what_memory_evicted_and_promotes_it() {
        // A memory tier far smaller than the files: early files leave memory but stay on SSD.
        let (origin, edge, _d) = origin_and_edge(|c| c.memory_bytes = 1 << 20).await;
        for i in 0..8 {
            origin
                .publish(&format!("f{i}.bin"), noise(512 << 10, i))
                .await;
        }
        for i in 0..8 {
            assert_eq!(edge.get(&format!("/f{i}.bin")).await.body.len(), 512 << 10);
        }
        let chunk_fetches = edge.origin_chunks();
        // HEAD reads only the stored response (no chunks), so nothing else passes through the
        // memory tier between the two lookups.
        let r = edge.request("HEAD", "/f0.bin", &[]).await;
        assert!(r.cache_status().contains("disk"), "{}", r.cache_status());
        let r = edge.request("HEAD", "/f0.bin", &[]).await;
        assert!(
            r.cache_status().contains("memory"),
            "promoted: {}",
            r.cache_status()
        );
        let r = edge.get("/f0.bin").await;
        assert_eq!(&r.body[..], &noise(512 << 10, 0)[..]);
        assert_eq!(
            edge.origin_chunks(),
            chunk_fetches,
            "served without the origin"
        );
    }
async fn a_restarted_edge_serves_its_ssd_tier_without_the_origin() {
        let origin = Origin::start().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(Backend::Origin(vec![origin.url()]), dir.path());
        origin.publish("page.html", "<p>kept</p>").await;
        origin.publish("big.bin", noise(300_000, 9)).await;
        let edge = EdgeNode::start(cfg.clone()).await;
        assert_eq!(edge.get("/page.html").await.status, 200);
        assert_eq!(edge.get("/big.bin").await.status, 200);
        edge.stop().await;
        origin.stop().await;

        let edge = EdgeNode::start(cfg).await;
        let r = edge.get("/page.html").await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"<p>kept</p>");
        assert!(r.cache_status().contains("hit; "), "{}", r.cache_status());
        let r = edge.get("/big.bin").await;
        assert_eq!(&r.body[..], &noise(300_000, 9)[..]);
        assert_eq!(
            edge.origin_fetches("manifest") + edge.origin_fetches("chunks"),
            0
        );
    }
async fn an_origin_outage_is_ridden_out_on_stale_files_by_default() {
        // Files the origin says are stale at once, without a stale-if-error of its own (its
        // default Cache-Control has none either).
        let origin = Origin::start_with(|c| c.file_cache_control = "public, max-age=0".into()).await;
        origin.publish("page.html", "<p>up</p>").await;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let edge_config = |i: usize, grace: u64| {
            let mut cfg = config(Backend::Origin(vec![origin.url()]), dirs[i].path());
            // No change-feed long poll holding the origin's shutdown up.
            cfg.follow_changes = false;
            cfg.origin_stale_if_error_secs = grace;
            cfg
        };
        let graced = EdgeNode::start(edge_config(0, tessera_edge::EdgeConfig::default().origin_stale_if_error_secs)).await;
        let strict = EdgeNode::start(edge_config(1, 0)).await;
        for edge in [&graced, &strict] {
            assert_eq!(edge.get("/page.html").await.status, 200);
        }
        origin.stop().await;
        // The default grace serves the stale copy through the outage, and says so.
        let r = graced.get("/page.html").await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"<p>up</p>"[..]));
        assert!(r.cache_status().contains("detail=stale-if-error"), "{}", r.cache_status());
        // Without it, only the origin's headers count: none allows a stale copy.
        let r = strict.get("/page.html").await;
        assert_eq!(r.status, 502, "{}", r.cache_status());
    }
async fn a_new_version_pulls_only_its_changed_chunks() {
        let (origin, edge, _d) = origin_and_edge(|_| {}).await;
        let v1 = noise(4 << 20, 1);
        origin.publish("app.bin", v1.clone()).await;
        assert_eq!(&edge.get("/app.bin").await.body[..], &v1[..]);
        let first = edge.origin_chunks();
        assert!(first > 20, "4 MiB is many chunks: {first}");
        assert_eq!(edge.origin_fetches("chunks"), 1, "one batch for a cold 4 MiB file");

        let mut v2 = v1.clone();
        v2[2_000_000..2_001_000].copy_from_slice(&noise(1000, 2));
        let seq = origin.publish("app.bin", v2.clone()).await;
        edge.until("the feed to report the publish", |e| {
            e.metric("tessera_edge_feed_position", &[]) >= seq as f64
        })
        .await;
        let r = edge.get("/app.bin").await;
        assert_eq!(&r.body[..], &v2[..]);
        let more = edge.origin_chunks() - first;
        assert!((1..=3).contains(&more), "only the changed chunks: {more}");

        // A second file sharing the content costs no chunk fetch at all.
        origin.publish("copy.bin", v2.clone()).await;
        assert_eq!(&edge.get("/copy.bin").await.body[..], &v2[..]);
        assert_eq!(edge.origin_chunks() - first, more);
    }
async fn a_range_fetches_only_the_chunks_it_covers() {
        let (origin, edge, _d) = origin_and_edge(|_| {}).await;
        let data = noise(3 << 20, 3);
        origin.publish("video.bin", data.clone()).await;
        let r = edge
            .get_with("/video.bin", &[("range", "bytes=1000000-1000099")])
            .await;
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), "bytes 1000000-1000099/3145728");
        assert_eq!(&r.body[..], &data[1_000_000..1_000_100]);
        assert!(edge.origin_chunks() <= 2, "{}", edge.origin_chunks());
        assert_eq!(edge.origin_fetches("chunks"), 1);

        let r = edge
            .get_with("/video.bin", &[("range", "bytes=5000000-")])
            .await;
        assert_eq!(r.status, 416);
        assert_eq!(r.header("content-range"), "bytes */3145728");
        let r = edge.get_with("/video.bin", &[("range", "bytes=-10")]).await;
        assert_eq!(&r.body[..], &data[data.len() - 10..]);
    }
async fn concurrent_misses_make_one_origin_fetch() {
        let (origin, edge, _d) = origin_and_edge(|_| {}).await;
        let data = noise(1 << 20, 4);
        origin.publish("hot.bin", data.clone()).await;
        let chunks = origin
            .client
            .manifest("hot.bin")
            .await
            .unwrap()
            .unwrap()
            .chunks
            .len() as u64;
        let edge = std::sync::Arc::new(edge);
        let gets = (0..100).map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get("/hot.bin").await })
        });
        for r in futures_util::future::join_all(gets).await {
            let r = r.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), data.len());
        }
        assert_eq!(edge.origin_fetches("manifest"), 1);
        assert_eq!(edge.origin_chunks(), chunks, "each chunk fetched once");
        assert_eq!(edge.origin_fetches("chunks"), 1, "in one batch");
        assert_eq!(edge.origin_fetches("chunk"), 0);
    }
async fn publish_and_delete_reach_the_edge_through_the_feed() {
        let (origin, edge, _d) = origin_and_edge(|_| {}).await;
        origin.publish("news.html", "old").await;
        assert_eq!(&edge.get("/news.html").await.body[..], b"old");
        assert!(edge.get("/news.html").await.cache_status().contains("hit"));

        let seq = origin.publish("news.html", "new").await;
        edge.until("the feed", |e| {
            e.metric("tessera_edge_feed_position", &[]) >= seq as f64
        })
        .await;
        assert_eq!(&edge.get("/news.html").await.body[..], b"new");

        let del = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<Bytes>>()
            .request(
                http::Request::delete(format!("{}/api/v1/files/news.html", origin.url()))
                    .header("authorization", "Bearer t")
                    .body(Default::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(del.status(), 204);
        let seq = origin.client.changes(0, 0).await.unwrap().next;
        edge.until("the feed", |e| {
            e.metric("tessera_edge_feed_position", &[]) >= seq as f64
        })
        .await;
        assert_eq!(edge.get("/news.html").await.status, 404);
    }
async fn purges_by_path_and_prefix_and_soft() {
        let (origin, edge, _d) = origin_and_edge(|c| c.follow_changes = false).await;
        for p in ["img/a.png", "img/b.png", "css/c.css"] {
            origin.publish(p, p.as_bytes().to_vec()).await;
            edge.get(&format!("/{p}")).await;
        }
        let manifests = edge.origin_fetches("manifest");
        // Paths are request paths, the leading slash added when it is left out.
        let r = edge
            .admin("POST", "/api/v1/purge", r#"{"prefix":"img/"}"#)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(
            edge.get("/img/a.png")
                .await
                .cache_status()
                .contains("fwd=miss")
        );
        assert!(
            edge.get("/img/b.png")
                .await
                .cache_status()
                .contains("fwd=miss")
        );
        assert!(edge.get("/css/c.css").await.cache_status().contains("hit"));
        assert_eq!(edge.origin_fetches("manifest"), manifests + 2);

        let r = edge
            .admin(
                "POST",
                "/api/v1/purge",
                r#"{"path":"css//c.css","soft":true}"#,
            )
            .await;
        assert_eq!(r.status, 200);
        let r = edge.get("/css/c.css").await;
        assert!(
            r.cache_status().contains("fwd=stale; fwd-status=304"),
            "{}",
            r.cache_status()
        );
        assert!(edge.get("/css/c.css").await.cache_status().contains("hit"));

        let r = edge
            .admin("POST", "/api/v1/purge", r#"{"path":"/x","prefix":"/y"}"#)
            .await;
        assert_eq!(r.status, 400);
        assert!(r.json()["error"].as_str().unwrap().contains("exactly one"));
        // What no request path can be matches nothing: refused, not reported as done.
        let r = edge
            .admin("POST", "/api/v1/purge", r#"{"path":"/a/../css/c.css"}"#)
            .await;
        assert_eq!(r.status, 400);
        assert!(r.json()["error"].as_str().unwrap().contains("a/../css"), "{:?}", r.json());
        let unauth = request("POST", &format!("http://{}/api/v1/purge", edge.admin), &[]).await;
        assert_eq!(unauth.status, 401);
    }
async fn brotli_for_clients_that_accept_it() {
        let (origin, edge, _d) = origin_and_edge(|_| {}).await;
        let css = "body { color: red; margin: 0 auto; }\n".repeat(200);
        origin.publish("site.css", css.clone()).await;
        let r = edge
            .get_with("/site.css", &[("accept-encoding", "gzip, br")])
            .await;
        assert_eq!(r.header("content-encoding"), "br");
        assert!(
            r.header("vary")
                .to_ascii_lowercase()
                .contains("accept-encoding")
        );
        assert!(r.header("etag").starts_with("W/"));
        let mut plain = Vec::new();
        brotli::BrotliDecompress(&mut &r.body[..], &mut plain).unwrap();
        assert_eq!(plain, css.as_bytes());
        // A 304 to a brotli request stands for that 200: its weak ETag and its Vary.
        let etag = r.header("etag").to_string();
        let r = edge
            .get_with("/site.css", &[("accept-encoding", "br"), ("if-none-match", &etag)])
            .await;
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), etag);
        assert!(r.header("vary").to_ascii_lowercase().contains("accept-encoding"), "{:?}", r.header("vary"));
        let r = edge.get("/site.css").await;
        assert_eq!(r.header("content-encoding"), "");
        assert_eq!(&r.body[..], css.as_bytes());
        // One copy per content: the same bytes at other paths, and many requests at once
        // for a body never compressed, each compress once. Copies are held in the memory
        // tier, within its budget.
        let compressions = || edge.metric("tessera_edge_brotli_compressions_total", &[]);
        assert_eq!(compressions(), 1.0);
        origin.publish("copy/site.css", css.clone()).await;
        let r = edge.get_with("/copy/site.css", &[("accept-encoding", "br")]).await;
        assert_eq!((r.header("content-encoding"), compressions()), ("br", 1.0));
        let js = "function f(a) { return a + 1; }\n".repeat(20_000);
        origin.publish("app.js", js.clone()).await;
        concurrent_brotli_gets(&edge, "/app.js", js.as_bytes()).await;
        assert_eq!(compressions(), 2.0);
        let cache = edge.edge.cache();
        assert!(cache.memory_usage() <= cache.memory_capacity());
    }
async fn conditional_requests_are_answered_from_cache() {
        let (origin, edge, _d) = origin_and_edge(|_| {}).await;
        origin.publish("doc.txt", "hello").await;
        let r = edge.get("/doc.txt").await;
        let etag = r.header("etag").to_string();
        let lm = r.header("last-modified").to_string();
        let r = edge.get_with("/doc.txt", &[("if-none-match", &etag)]).await;
        assert_eq!(r.status, 304);
        assert!(r.body.is_empty());
        let r = edge
            .get_with("/doc.txt", &[("if-modified-since", &lm)])
            .await;
        assert_eq!(r.status, 304);
        let r = edge
            .get_with("/doc.txt", &[("if-match", "\"other\"")])
            .await;
        assert_eq!(r.status, 412);
        let r = edge
            .get_with(
                "/doc.txt",
                &[("range", "bytes=0-1"), ("if-range", "\"other\"")],
            )
            .await;
        assert_eq!(r.status, 200, "If-Range mismatch gives the whole file");
        let r = edge
            .get_with("/doc.txt", &[("range", "bytes=0-1"), ("if-range", &etag)])
            .await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (206, &b"he"[..]));
        let r = edge.request("HEAD", "/doc.txt", &[]).await;
        assert_eq!(r.header("content-length"), "5");
        assert!(r.body.is_empty());
    }
}

/// A client that stops reading a cold large file holds at most the readahead window (plus
/// what the sockets buffer) at the edge: the edge does not fetch the whole file for it.
#[tokio::test]
async fn a_slow_reader_of_a_cold_file_is_fetched_for_a_bounded_window_ahead() {
    let (origin, edge, _d) = origin_and_edge(|c| {
        c.origin_readahead_bytes = 512 << 10;
        c.follow_changes = false;
    })
    .await;
    let data = noise(32 << 20, 31);
    origin.publish("big.bin", data.clone()).await;
    let total = origin
        .client
        .manifest("big.bin")
        .await
        .unwrap()
        .unwrap()
        .chunks
        .len() as u64;

    // A client with a small receive buffer that reads the first 64 KiB and stops.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 << 10).unwrap();
    let mut s = sock.connect(edge.http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /big.bin HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 64 << 10];
    s.read_exact(&mut first).await.unwrap();
    // Once nothing is being fetched, the edge waits for the client: what it fetched is what
    // the sockets hold plus one window, far from the 32 MiB file.
    edge.until("the fetches for the stalled client to settle", |e| {
        e.origin_chunks() > 0 && e.metric("tessera_edge_origin_chunks_in_flight", &[]) == 0.0
    })
    .await;
    let fetched = edge.origin_chunks();
    assert!(
        fetched < total / 3,
        "{fetched} of {total} chunks fetched for a client that read 64 KiB"
    );

    // Reading on, the client gets every byte, and each chunk was fetched once.
    let mut rest = Vec::new();
    let head_end = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    rest.extend_from_slice(&first[head_end..]);
    while rest.len() < data.len() {
        let mut buf = vec![0u8; 1 << 20];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the body ended early at {}", rest.len());
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(rest == data, "the bytes served are the file's");
    assert_eq!(edge.origin_chunks(), total);
    let batches = edge.origin_fetches("chunks");
    // Each batch is at most a window (512 KiB and a chunk), and many chunks.
    assert!(
        batches >= 50 && batches <= total / 4,
        "a 32 MiB file ({total} chunks) in windows of 512 KiB: {batches} batches"
    );
}

/// A file held whole that the SSD tier gives back with other bytes than the file's is not
/// served: its blake3 (the `ETag`) is checked, as a chunk's is. foyer's own checksums catch a
/// flipped bit on the device, so the wrong entry is written through the cache itself here,
/// standing in for corruption that gets past them.
#[tokio::test]
async fn a_file_held_whole_is_checked_when_read_back_from_the_ssd_tier() {
    use tessera_edge::store::entry::{BodyRef, Value};
    use tessera_edge::store::tiers::Tier;
    let (origin, edge, _d) = origin_and_edge(|c| c.follow_changes = false).await;
    let small = noise(50 << 10, 45);
    origin.publish("s.bin", small.clone()).await;
    assert_eq!(&edge.get("/s.bin").await.body[..], &small[..]);
    let cache = edge.edge.cache();
    let key = tessera_edge::backends::origin::manifest_key("s.bin");
    let Some(Value::Meta(m)) = cache.get_in_memory(&key) else {
        panic!("held whole in memory")
    };
    let mut bad = (*m).clone();
    let mut bytes = small.clone();
    bytes[100] ^= 0x01;
    bad.body = BodyRef::Inline(Bytes::from(bytes.clone()));
    cache.insert_on_disk(key, Value::Meta(std::sync::Arc::new(bad)));
    cache.forget_in_memory(&key);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some((Value::Meta(m), Tier::Disk)) = cache.get(&key).await
            && matches!(&m.body, BodyRef::Inline(b) if b[..] == bytes[..])
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the entry reached the SSD tier"
        );
        // Found while still queued for the SSD tier, it was promoted to memory: drop it
        // there, so the next lookup reads the SSD tier again.
        cache.forget_in_memory(&key);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // That lookup promoted the copy to memory: drop it there again.
    cache.forget_in_memory(&key);
    let corrupt = edge.edge.metrics().corrupt_chunks.get();

    let r = edge.get("/s.bin").await;
    assert_eq!(r.status, 200);
    assert!(r.body == small[..], "the file's bytes, fetched again");
    assert_eq!(edge.edge.metrics().corrupt_chunks.get(), corrupt + 1);
    assert_eq!(edge.origin_fetches("manifest"), 2);
}

/// A small file's miss is one round trip: its bytes come with its manifest, and it is stored
/// assembled, as one entry. A file just over the inline limit takes the chunk path.
#[tokio::test]
async fn a_small_files_miss_is_one_request_and_one_entry() {
    let (origin, edge, _d) = origin_and_edge(|c| c.follow_changes = false).await;
    let small = noise(200 << 10, 43);
    origin.publish("small.bin", small.clone()).await;
    let chunks = origin
        .client
        .manifest("small.bin")
        .await
        .unwrap()
        .unwrap()
        .chunks;
    assert!(
        chunks.len() >= 4,
        "a file of several chunks: {}",
        chunks.len()
    );
    let cache = edge.edge.cache();

    let before = cache.memory_inserts();
    assert_eq!(&edge.get("/small.bin").await.body[..], &small[..]);
    assert_eq!(edge.origin_fetches("manifest"), 1);
    assert_eq!(edge.origin_fetches("chunks"), 0, "no chunk batch");
    assert_eq!(edge.origin_chunks(), 0);
    assert_eq!(cache.memory_inserts() - before, 1, "one entry, assembled");
    for c in &chunks {
        assert!(!cache.in_memory(&tessera_edge::store::entry::Key(c.hash.0)));
    }
    // Hits and ranges come from the assembled copy.
    assert_eq!(&edge.get("/small.bin").await.body[..], &small[..]);
    let r = edge
        .get_with("/small.bin", &[("range", "bytes=100-199")])
        .await;
    assert_eq!(&r.body[..], &small[100..200]);
    assert_eq!(edge.origin_fetches("manifest"), 1);
    assert_eq!(cache.memory_inserts() - before, 1);

    let large = noise(INLINE_MAX + 1, 44);
    origin.publish("large.bin", large.clone()).await;
    assert_eq!(&edge.get("/large.bin").await.body[..], &large[..]);
    assert_eq!(
        edge.origin_fetches("chunks"),
        1,
        "over the limit: a chunk batch"
    );
}

over_protocols! {
    /// A file hit again in whole is kept assembled: a small one inline in its stored
    /// response, a large one in segments; either way its chunks leave the memory tier, so its
    /// bytes are counted there once. Without an SSD tier and with the origin gone, the
    /// assembled copies alone serve whole files and ranges across segment boundaries.
    async fn hot_files_are_kept_assembled_and_counted_once() {
        let (origin, edge, _d) = origin_and_edge(|c| {
            c.disk_bytes = 0;
            c.follow_changes = false;
        })
        .await;
        let big = noise((5 << 20) / 2, 41); // two full segments and a half
        let small = noise(100 << 10, 42);
        origin.publish("big.bin", big.clone()).await;
        origin.publish("small.bin", small.clone()).await;
        let used = || edge.edge.cache().memory_usage();

        let before = used();
        assert_eq!(&edge.get("/big.bin").await.body[..], &big[..]);
        assert_eq!(&edge.get("/small.bin").await.body[..], &small[..]);
        let cold = used() - before;
        assert!(cold >= big.len() + small.len(), "the files are held: {cold}");
        // The miss stored the small file assembled, as one entry: its chunks are not kept.
        let manifest = origin.client.manifest("small.bin").await.unwrap().unwrap();
        for c in &manifest.chunks {
            assert!(!edge.edge.cache().in_memory(&tessera_edge::store::entry::Key(c.hash.0)));
        }

        // Hits: the small file is assembled by its hit, the large one in the background.
        assert_eq!(&edge.get("/small.bin").await.body[..], &small[..]);
        assert_eq!(&edge.get("/big.bin").await.body[..], &big[..]);
        edge.until("the large file to be assembled", |e| {
            e.metric("tessera_edge_assembled_files_total", &[]) == 1.0
        })
        .await;
        let hot = used() - before;
        assert!(
            hot < cold + (64 << 10),
            "assembled copies replace the chunks in memory: {cold} bytes cold, {hot} hot"
        );

        origin.stop().await;
        let fetched = edge.origin_chunks();
        for _ in 0..2 {
            let r = edge.get("/big.bin").await;
            assert_eq!(r.status, 200);
            assert!(r.body == big[..], "the whole large file, from its segments");
            assert_eq!(&edge.get("/small.bin").await.body[..], &small[..]);
        }
        for (from, to) in [(1_048_000, 1_049_999), (0, 10), (2_000_000, big.len() - 1)] {
            let r = edge
                .get_with("/big.bin", &[("range", &format!("bytes={from}-{to}"))])
                .await;
            assert_eq!(r.status, 206, "range {from}-{to}");
            assert!(r.body == big[from..=to], "range {from}-{to}");
        }
        let r = edge
            .get_with("/small.bin", &[("range", "bytes=1000-1999")])
            .await;
        assert_eq!(&r.body[..], &small[1000..2000]);
        assert_eq!(edge.origin_chunks(), fetched, "no chunk was fetched again");
        assert_eq!(edge.metric("tessera_edge_assembled_files_total", &[]), 1.0);
    }
}

/// Two origins holding the same files, the first of them hung (a fault proxy that accepts
/// and never answers). Misses are hedged to the second after the hedge delay, never wait for
/// the first-byte timeout and never fail; after `consecutive_failures` lost races the hung
/// one is ejected and misses go straight to the healthy one. A body that stalls midway is
/// cut off by the between-bytes timeout and fetched from the next origin.
#[tokio::test]
async fn a_hung_origin_is_hedged_around_then_ejected() {
    use tessera_faults::{Fault, FaultProxy};
    let origin = Origin::start().await;
    let hung = FaultProxy::start(origin.addr).await.unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("f{i}.bin"),
                noise(if i % 2 == 0 { 1000 } else { 3 << 20 }, i),
            )
        })
        .collect();
    for (path, data) in &files {
        origin.publish(path, data.clone()).await;
    }
    hung.set(Fault::Blackhole);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![hung.url(), origin.url()]), dir.path());
    cfg.follow_changes = false;
    // Without hedging each miss would wait a minute for the hung origin.
    cfg.timeouts.first_byte_ms = 60_000;
    cfg.timeouts.hedge_after_ms = 100;
    cfg.outliers.consecutive_failures = 3;
    let edge = EdgeNode::start_with(cfg, false).await;
    let hedges =
        |winner: &str| edge.metric("tessera_edge_origin_hedges_total", &[("winner", winner)]);

    for (i, (path, data)) in files.iter().enumerate() {
        let started = std::time::Instant::now();
        let r = edge.get(&format!("/{path}")).await;
        assert_eq!(
            (r.status.as_u16(), r.body.len()),
            (200, data.len()),
            "{path}"
        );
        assert!(r.body == data[..], "{path}: wrong bytes");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{path} waited for the hung origin: {:?}",
            started.elapsed()
        );
        if i == 0 {
            // The small file: its manifest (with the file inline) was hedged.
            assert_eq!(hedges("second"), 1.0);
        }
    }
    // f0 (1 race), f1 (manifest and batch: 2 races) ejected the hung origin; later misses
    // asked the healthy origin first.
    let ejections = edge.metric(
        "tessera_edge_origin_ejections_total",
        &[("origin", &hung.url())],
    );
    assert_eq!(ejections, 1.0);
    assert_eq!(hedges("second"), 3.0);
    assert_eq!(hedges("first") + hedges("none"), 0.0);
    assert_eq!(
        edge.metric("tessera_edge_origin_errors_total", &[("kind", "timeout")]),
        0.0
    );
    edge.stop().await;

    // A body that stalls after its head: cut off after the between-bytes timeout, and the
    // chunks it did not give come from the next origin.
    hung.set(Fault::Stall { after: 200_000 });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![hung.url(), origin.url()]), dir.path());
    cfg.follow_changes = false;
    cfg.timeouts.hedge_after_ms = 0;
    cfg.timeouts.between_bytes_ms = 300;
    let edge = EdgeNode::start_with(cfg, false).await;
    let (path, data) = &files[1];
    let r = edge.get(&format!("/{path}")).await;
    assert_eq!(r.status, 200);
    assert!(r.body == data[..], "wrong bytes after a stalled batch");
    assert_eq!(
        edge.metric("tessera_edge_origin_errors_total", &[("kind", "timeout")]),
        1.0
    );
    assert_eq!(
        edge.origin_fetches("chunks"),
        2,
        "the stalled batch, then the next origin's"
    );
    edge.stop().await;
}
