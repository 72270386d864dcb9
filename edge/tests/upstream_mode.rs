//! The edge in front of a scripted HTTP server: RFC 9111 directives one by one, `Vary`,
//! revalidation, stale serving, invalidation, coalescing, streaming, purge by surrogate key.
//!
//! Staleness without waiting: the upstream sends `Age` equal to or past `max-age`, so a
//! response is stale as soon as it is stored.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use tessera_edge::Backend;

async fn edge_for(up: &Upstream) -> (EdgeNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
    (edge, dir)
}

/// Two GETs of `path`: how many reached the upstream, and the second reply.
async fn twice(edge: &EdgeNode, up: &Upstream, path: &str) -> (usize, Reply) {
    let first = edge.get(path).await;
    assert!(
        !first.cache_status().is_empty(),
        "Cache-Status on every response"
    );
    let second = edge.get(path).await;
    (up.count(path), second)
}

over_protocols! {
    /// A response with `Set-Cookie` is passed and never stored, unless the operator allows
    /// storing it: then the cookie goes to no client and the response is reused.
    async fn set_cookie_responses_are_stored_only_when_allowed_and_without_the_cookie() {
        let up = Upstream::start(|_, _| {
            response(
                200,
                &[("cache-control", "max-age=600"), ("set-cookie", "session=alice")],
                b"page",
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let (n, r) = twice(&edge, &up, "/default").await;
        assert_eq!(n, 2, "{}", r.cache_status());
        assert_eq!(r.header("set-cookie"), "session=alice");

        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(Backend::Upstream(up.url()), dir.path());
        cfg.store_set_cookie_responses = true;
        let edge = EdgeNode::start(cfg).await;
        let first = edge.get("/allowed").await;
        let (n, second) = twice(&edge, &up, "/allowed").await;
        assert_eq!(n, 1, "{}", second.cache_status());
        assert!(second.cache_status().contains("hit"), "{}", second.cache_status());
        for r in [&first, &second] {
            assert_eq!(&r.body[..], b"page");
            assert!(r.headers.get("set-cookie").is_none(), "{:?}", r.headers);
        }
    }
}

over_protocols! {
    /// RFC 9111's finer points through a real edge: a list-valued `Age` counts by its first
    /// member, fields a response's `Connection` names are neither stored nor sent, weak
    /// ETags match `If-None-Match` from the cache, `If-Modified-Since` compares with `Date`
    /// when there is no `Last-Modified`, `Expires` is read whatever the case, and a
    /// `CDN-Cache-Control` that is not a valid Structured Field is ignored as a whole.
    async fn age_lists_connection_fields_weak_etags_and_dates() {
        let now = std::time::SystemTime::now();
        let tomorrow = httpdate::fmt_http_date(now + Duration::from_secs(86_400)).to_lowercase();
        let up = Upstream::start(move |req, _| {
            let mut h: Vec<(&str, &str)> = vec![("content-type", "text/plain")];
            match req.uri().path() {
                "/age-list" => h.extend([("cache-control", "max-age=3600"), ("age", "7200, 0")]),
                "/conn" => h.extend([
                    ("cache-control", "max-age=600"),
                    ("connection", "x-trace"),
                    ("x-trace", "upstream-internal"),
                ]),
                "/weak" => h.extend([("cache-control", "max-age=600"), ("etag", "W/\"v1\"")]),
                "/dated" => h.push(("cache-control", "max-age=600")),
                "/expires" => h.push(("expires", tomorrow.as_str())),
                // Not a valid Dictionary member: the whole field is ignored.
                "/cdn-invalid" => h.extend([
                    ("cache-control", "max-age=600"),
                    ("cdn-cache-control", "no-store=1"),
                ]),
                _ => {}
            }
            response(200, &h, b"body")
        })
        .await;
        let (edge, _d) = edge_for(&up).await;

        // Stale on arrival: the second request goes to the upstream again.
        let (n, _) = twice(&edge, &up, "/age-list").await;
        assert_eq!(n, 2, "an Age of 7200 (first member) is past max-age=3600");

        let first = edge.get("/conn").await;
        let (n, second) = twice(&edge, &up, "/conn").await;
        assert_eq!(n, 1, "{}", second.cache_status());
        for r in [&first, &second] {
            assert!(r.headers.get("x-trace").is_none(), "{:?}", r.headers);
        }

        edge.get("/weak").await;
        for asked in ["W/\"v1\"", "\"v1\""] {
            let r = edge.get_with("/weak", &[("if-none-match", asked)]).await;
            assert_eq!(r.status, 304, "{asked}: {}", r.cache_status());
            assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
        }
        assert_eq!(up.count("/weak"), 1);

        edge.get("/dated").await;
        let later = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        let r = edge.get_with("/dated", &[("if-modified-since", &later)]).await;
        assert_eq!(r.status, 304, "{}", r.cache_status());
        let r = edge
            .get_with("/dated", &[("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")])
            .await;
        assert_eq!(r.status, 200);

        let (n, r) = twice(&edge, &up, "/expires").await;
        assert_eq!(n, 1, "a lower-case Expires of tomorrow: {}", r.cache_status());

        let (n, r) = twice(&edge, &up, "/cdn-invalid").await;
        assert_eq!(n, 1, "an invalid CDN-Cache-Control: {}", r.cache_status());
    }
}

over_protocols! {
    async fn response_directives_decide_what_is_stored() {
        let up = Upstream::start(|req, _| {
            let cc: &str = match req.uri().path() {
                "/max-age" => "max-age=60",
                "/s-maxage" => "max-age=0, s-maxage=60",
                "/no-store" => "no-store, max-age=60",
                "/must-understand" => "no-store, must-understand, max-age=60",
                "/private" => "private, max-age=60",
                "/expires-past" => "",
                "/immutable" => "public, max-age=31536000, immutable",
                _ => "",
            };
            let mut h = vec![("content-type", "text/plain")];
            if !cc.is_empty() {
                h.push(("cache-control", cc));
            }
            if req.uri().path() == "/expires-past" {
                h.push(("expires", "0"));
            }
            if req.uri().path() == "/heuristic" {
                h.push(("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"));
            }
            response(200, &h, b"body")
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        for (path, upstream_requests, status_has) in [
            ("/max-age", 1, "hit"),
            ("/s-maxage", 1, "hit"),
            ("/immutable", 1, "hit"),
            ("/heuristic", 1, "hit"),
            ("/no-store", 2, "fwd=miss"),
            ("/must-understand", 1, "hit"),
            ("/private", 2, "fwd=miss"),
            ("/expires-past", 2, "fwd=miss"),
            ("/none", 2, "fwd="),
        ] {
            let (n, r) = twice(&edge, &up, path).await;
            assert_eq!(&r.body[..], b"body", "{path}");
            assert_eq!(n, upstream_requests, "{path}: {}", r.cache_status());
            assert!(
                r.cache_status().contains(status_has),
                "{path}: {}",
                r.cache_status()
            );
        }
    }
async fn cdn_cache_control_governs_the_edge_but_clients_see_cache_control() {
        let up = Upstream::start(|_, _| {
            response(
                200,
                &[
                    ("cache-control", "no-cache"),
                    ("cdn-cache-control", "max-age=60"),
                ],
                b"x",
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let (n, r) = twice(&edge, &up, "/a").await;
        assert_eq!(n, 1);
        assert_eq!(r.header("cache-control"), "no-cache");
    }
async fn stale_responses_revalidate_with_etag_and_take_the_304s_headers() {
        let up = Upstream::start(|req, n| {
            if n > 0 {
                assert_eq!(req.headers()["if-none-match"], "\"v1\"");
                return response(
                    304,
                    &[
                        ("cache-control", "max-age=60"),
                        ("etag", "\"v1\""),
                        ("x-version", "2"),
                    ],
                    b"",
                );
            }
            response(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("age", "10"),
                    ("etag", "\"v1\""),
                    ("x-version", "1"),
                ],
                b"original",
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let (n, r) = twice(&edge, &up, "/doc").await;
        assert_eq!(n, 2);
        assert_eq!(&r.body[..], b"original");
        assert_eq!(r.header("x-version"), "2");
        assert!(
            r.cache_status().contains("fwd=stale; fwd-status=304"),
            "{}",
            r.cache_status()
        );
        let r = edge.get("/doc").await;
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
        assert_eq!(up.count("/doc"), 2);
    }
async fn last_modified_revalidation_and_no_cache() {
        let up = Upstream::start(|req, n| {
            let lm = "Mon, 01 Jan 2024 00:00:00 GMT";
            if n > 0
                && req
                    .headers()
                    .get("if-modified-since")
                    .is_some_and(|v| v == lm)
            {
                return response(304, &[], b"");
            }
            let cc = if req.uri().path() == "/nc" {
                "no-cache"
            } else {
                "max-age=5"
            };
            response(
                200,
                &[("cache-control", cc), ("age", "9"), ("last-modified", lm)],
                b"lm",
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let (n, r) = twice(&edge, &up, "/lm").await;
        assert_eq!((n, &r.body[..]), (2, &b"lm"[..]));
        assert!(r.cache_status().contains("fwd-status=304"));
        // no-cache: stored, but every use asks the upstream first.
        for i in 1..=3 {
            let r = edge.get("/nc").await;
            assert_eq!(&r.body[..], b"lm");
            assert_eq!(up.count("/nc"), i);
        }
    }
async fn authorization_keeps_responses_private_unless_public() {
        let up = Upstream::start(|req, _| {
            let cc = if req.uri().path() == "/pub" {
                "public, max-age=60"
            } else {
                "max-age=60"
            };
            response(200, &[("cache-control", cc)], b"secret")
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let auth = [("authorization", "Bearer x")];
        edge.get_with("/priv", &auth).await;
        edge.get("/priv").await;
        assert_eq!(up.count("/priv"), 2, "an authorized response is not shared");
        edge.get_with("/pub", &auth).await;
        let r = edge.get("/pub").await;
        assert_eq!(up.count("/pub"), 1, "public allows sharing");
        assert!(r.cache_status().contains("hit"));
    }
async fn stale_while_revalidate_serves_at_once_and_refreshes_behind() {
        let up = Upstream::start(|_, n| {
            let body: &'static [u8] = if n == 0 { b"v1" } else { b"v2" };
            response(
                200,
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=600"),
                    ("age", "20"),
                ],
                body,
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        edge.get("/swr").await;
        let r = edge.get("/swr").await;
        assert_eq!(&r.body[..], b"v1");
        assert!(
            r.cache_status().contains("stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = edge.get("/swr").await;
            if &r.body[..] == b"v2" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "background refresh never landed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
async fn stale_if_error_but_not_must_revalidate() {
        let up = Upstream::start(|req, n| {
            if n > 0 {
                return response(503, &[], b"down");
            }
            let cc = if req.uri().path() == "/sie" {
                "max-age=10, stale-if-error=600"
            } else {
                "max-age=10, stale-if-error=600, must-revalidate"
            };
            response(200, &[("cache-control", cc), ("age", "20")], b"kept")
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let (_, r) = twice(&edge, &up, "/sie").await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"kept"[..]));
        assert!(
            r.cache_status().contains("stale-if-error"),
            "{}",
            r.cache_status()
        );
        let (_, r) = twice(&edge, &up, "/mr").await;
        assert_eq!(r.status, 503, "must-revalidate forbids serving stale");
    }
async fn an_unreachable_upstream_is_a_502_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let edge = EdgeNode::start(config(
            Backend::Upstream(format!("http://127.0.0.1:{port}")),
            dir.path(),
        ))
        .await;
        let r = edge.get("/x").await;
        assert_eq!(r.status, 502);
        // The public is told what failed in public terms and a request id; the upstream's
        // address and the library's error go to the log and the admin API under that id.
        let said = r.json();
        assert_eq!(said["error"], "the origin could not be reached", "{said}");
        assert!(!String::from_utf8_lossy(&r.body).contains(&port.to_string()), "{said}");
        let id = said["request_id"].as_str().unwrap().to_string();
        assert_eq!(r.header("x-request-id"), id);
        let kept = edge.admin("GET", &format!("/api/v1/errors?id={id}"), "").await.json();
        let kept = &kept["errors"][0];
        assert_eq!((kept["status"].as_u64(), kept["path"].as_str()), (Some(502), Some("/x")));
        let detail = kept["detail"].as_str().unwrap();
        assert!(detail.contains("unreachable") && detail.contains(&port.to_string()), "{detail}");
    }
async fn request_directives() {
        let up = Upstream::start(|_, _| {
            response(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
                b"r",
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let r = edge
            .get_with("/r", &[("cache-control", "only-if-cached")])
            .await;
        assert_eq!(r.status, 504);
        assert_eq!(up.count("/r"), 0);
        edge.get("/r").await;
        let r = edge
            .get_with("/r", &[("cache-control", "only-if-cached")])
            .await;
        assert_eq!(r.status, 200);
        for cc in ["no-cache", "max-age=0"] {
            let before = up.count("/r");
            let r = edge.get_with("/r", &[("cache-control", cc)]).await;
            assert_eq!(r.status, 200);
            assert_eq!(up.count("/r"), before + 1, "{cc} goes to the upstream");
            assert_eq!(up.request_headers("/r", before)["if-none-match"], "\"e\"");
        }
        let before = up.count("/r");
        edge.get_with("/r", &[("pragma", "no-cache")]).await;
        assert_eq!(up.count("/r"), before + 1);
        let r = edge.get_with("/r", &[("cache-control", "no-store")]).await;
        assert!(r.cache_status().contains("fwd=request"));
    }
async fn vary_stores_several_variants() {
        let up = Upstream::start(|req, _| {
            let body: &'static [u8] = match req.headers().get("accept-language").map(|v| v.as_bytes()) {
                Some(b"fr") => b"bonjour",
                _ => b"hello",
            };
            response(
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                body,
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        for lang in ["en", "fr", "en", "fr"] {
            let r = edge.get_with("/v", &[("accept-language", lang)]).await;
            assert_eq!(
                &r.body[..],
                if lang == "fr" {
                    &b"bonjour"[..]
                } else {
                    &b"hello"[..]
                }
            );
        }
        assert_eq!(up.count("/v"), 2);
        // Equivalent selecting values (order, case, whitespace, how a weight is written)
        // share one stored variant; a different weight is another one.
        for (i, lang) in [
            "en-US, fr;q=0.8",
            "FR;q=0.80,en-us",
            "fr; q=0.8 , EN-US",
            "en-US;q=1.0, fr;q=0.8",
        ]
        .into_iter()
        .enumerate()
        {
            let r = edge.get_with("/w", &[("accept-language", lang)]).await;
            assert_eq!(&r.body[..], b"hello");
            assert_eq!(up.count("/w"), 1, "{lang}: {}", r.cache_status());
            if i > 0 {
                assert!(r.cache_status().contains("hit"), "{lang}: {}", r.cache_status());
            }
        }
        edge.get_with("/w", &[("accept-language", "en-US;q=0.5, fr;q=0.8")]).await;
        assert_eq!(up.count("/w"), 2);
    }
async fn conditionals_ranges_and_head_from_cache() {
        let up = Upstream::start(|_, _| {
            response(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"abc\""),
                    ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ],
                b"0123456789",
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let r = edge.request("HEAD", "/c", &[]).await;
        assert_eq!((r.status.as_u16(), r.header("content-length")), (200, "10"));
        assert!(r.body.is_empty());
        // The HEAD's fill answers the GET: stored by then (a hit), or still arriving (the
        // GET is collapsed into it). Either way the upstream is asked once (checked below).
        let r = edge.get("/c").await;
        assert!(
            r.cache_status().contains("hit") || r.cache_status().contains("collapsed"),
            "HEAD filled the cache: {}",
            r.cache_status()
        );
        assert_eq!(&r.body[..], b"0123456789");
        assert_eq!(
            edge.get_with("/c", &[("if-none-match", "\"abc\"")])
                .await
                .status,
            304
        );
        assert_eq!(
            edge.get_with(
                "/c",
                &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]
            )
            .await
            .status,
            304
        );
        let r = edge.get_with("/c", &[("range", "bytes=2-4")]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (206, &b"234"[..]));
        assert_eq!(r.header("content-range"), "bytes 2-4/10");
        assert_eq!(
            edge.get_with("/c", &[("range", "bytes=20-")]).await.status,
            416
        );
        assert_eq!(up.count("/c"), 1);
    }
async fn unsafe_methods_pass_through_and_invalidate() {
        let up = Upstream::start(|req, _| {
            if req.method() == http::Method::POST {
                assert_eq!(&req.body()[..], b"payload");
                return response(201, &[("location", "/other")], b"created");
            }
            response(200, &[("cache-control", "max-age=60")], b"item")
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        edge.get("/item").await;
        edge.get("/other").await;
        assert!(edge.get("/item").await.cache_status().contains("hit"));
        let r = edge
            .send("POST", "/item", &[], Bytes::from_static(b"payload"))
            .await;
        assert_eq!(r.status, 201);
        assert_eq!(
            up.request_headers("/item", 1)["x-forwarded-for"],
            "127.0.0.1"
        );
        assert_eq!(up.request_headers("/item", 1)["via"], "1.1 tessera");
        assert!(edge.get("/item").await.cache_status().contains("fwd=miss"));
        let o = edge.get("/other").await;
        assert!(
            o.cache_status().contains("fwd=miss"),
            "Location invalidated too: {}",
            o.cache_status()
        );
    }
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
        let body: &'static [u8] = Box::leak(noise(2 << 20, 5).into_boxed_slice());
        let up =
            Upstream::start(move |_, _| response(200, &[("cache-control", "max-age=60")], body)).await;
        let (edge, _d) = edge_for(&up).await;
        let edge = std::sync::Arc::new(edge);
        let gets: Vec<_> = (0..100)
            .map(|_| {
                let edge = edge.clone();
                tokio::spawn(async move { edge.get("/gated/big").await })
            })
            .collect();
        // Hold the upstream until every request has joined the one fill.
        edge.until("100 requests to join the fill", |e| {
            e.edge.metrics().coalesced.get() >= 99
        })
        .await;
        up.open_gate();
        let mut collapsed = 0;
        for g in gets {
            let r = g.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(&r.body[..], body);
            collapsed += usize::from(r.cache_status().contains("fwd=miss; stored; collapsed"));
        }
        assert_eq!(up.count("/gated/big"), 1);
        // RFC 9211's `collapsed` on every response but the one that made the request.
        assert_eq!(collapsed, 99);
    }
async fn a_large_miss_streams_before_the_upstream_finishes() {
        let body: &'static [u8] = Box::leak(noise(3 << 20, 6).into_boxed_slice());
        let up =
            Upstream::start(move |_, _| response(200, &[("cache-control", "max-age=60")], body)).await;
        let (edge, _d) = edge_for(&up).await;
        let resp = edge
            .send_streaming("GET", "/stream/file", &[], Bytes::new())
            .await;
        assert_eq!(resp.status(), 200);
        let mut body_stream = resp.into_body();
        // The upstream holds back everything after the first 64 KiB until the gate opens: bytes
        // arriving now prove the edge streams instead of waiting for the whole object.
        let mut got = Vec::new();
        while got.len() < 32 << 10 {
            let frame = body_stream.frame().await.unwrap().unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(&got[..], &body[..got.len()]);
        up.open_gate();
        while let Some(f) = body_stream.frame().await {
            got.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        assert_eq!(&got[..], body);
        // Stored in segments once complete.
        let r = edge.get("/stream/file").await;
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
        assert_eq!(&r.body[..], body);
        let r = edge
            .get_with("/stream/file", &[("range", "bytes=2097150-2097160")])
            .await;
        assert_eq!(
            &r.body[..],
            &body[2_097_150..=2_097_160],
            "a range across a segment boundary"
        );
    }
async fn purge_by_surrogate_key() {
        let up = Upstream::start(|req, _| {
            let key = if req.uri().path().starts_with("/a") {
                "team-a shared"
            } else {
                "team-b"
            };
            response(
                200,
                &[("cache-control", "max-age=60"), ("surrogate-key", key)],
                b"k",
            )
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        for p in ["/a1", "/a2", "/b1"] {
            edge.get(p).await;
        }
        let r = edge
            .admin("POST", "/api/v1/purge", r#"{"key":"team-a"}"#)
            .await;
        assert_eq!(r.status, 200);
        assert!(edge.get("/a1").await.cache_status().contains("fwd=miss"));
        assert!(edge.get("/a2").await.cache_status().contains("fwd=miss"));
        assert!(edge.get("/b1").await.cache_status().contains("hit"));
        let stats = edge.admin("GET", "/api/v1/stats", "").await.json();
        assert_eq!(stats["lookups"]["hit"]["memory"], 1);
        assert_eq!(stats["purges_active"], 1);
        // Reading the stats makes no series that cannot happen (a hit from no tier).
        let m = String::from_utf8(edge.admin("GET", "/metrics", "").await.body.to_vec()).unwrap();
        assert!(!m.contains(r#"result="hit",tier="none""#), "{m}");
        assert!(m.contains(r#"tessera_edge_requests_total{protocol="#), "{m}");
        assert!(m.contains(r#"tessera_edge_response_seconds_bucket{protocol=""#));
    }
}

over_protocols! {
    /// The upstream learns who asked and how from the edge, not from what a client claims:
    /// client-sent forwarded headers are replaced (kept and extended only from a trusted
    /// proxy), routing overrides dropped, and `Connection` cannot strip the edge's own.
    async fn forwarded_headers_come_from_the_edge() {
        let up = Upstream::start(|_, _| response(200, &[("cache-control", "no-store")], b"ok")).await;
        // `Connection` exists in HTTP/1.1 only (HTTP/2 and HTTP/3 clients drop it and what
        // it names).
        let connection = if proto() == Proto::Http1 { "connection" } else { "x-ignored" };
        let claims = [
            (connection, "x-forwarded-for, forwarded"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-real-ip", "6.6.6.6"),
        ];
        for trusted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = config(Backend::Upstream(up.url()), dir.path());
            if trusted {
                cfg.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            }
            let edge = EdgeNode::start(cfg).await;
            let path = format!("/who-{trusted}");
            assert_eq!(edge.get_with(&path, &claims).await.status, 200);
            let h = up.request_headers(&path, 0);
            let tls = proto() != Proto::Http1;
            let scheme = if tls { "https" } else { "http" };
            if trusted {
                assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
                assert_eq!(h["x-forwarded-host"], "evil.example");
                assert!(h["forwarded"].to_str().unwrap().starts_with("for=6.6.6.6, for=127.0.0.1;"), "{h:?}");
            } else {
                assert_eq!(h["x-forwarded-for"], "127.0.0.1");
                assert_eq!(h["x-forwarded-proto"], scheme);
                assert_ne!(h["x-forwarded-host"], "evil.example");
                let f = h["forwarded"].to_str().unwrap();
                assert!(f.starts_with(&format!("for=127.0.0.1;proto={scheme};host=")), "{f}");
                for gone in ["x-original-url", "x-rewrite-url", "x-real-ip"] {
                    assert!(!h.contains_key(gone), "{gone} reached the upstream");
                }
            }
            edge.stop().await;
        }
    }
}

over_protocols! {
    /// With `hosts` configured, a request for any other host is a 421 that neither reaches
    /// the upstream nor takes a cache entry; the hosts listed are served.
    async fn hosts_the_edge_does_not_serve_are_misdirected() {
        let up = Upstream::start(|_, _| response(200, &[("cache-control", "max-age=60")], b"ok")).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(Backend::Upstream(up.url()), dir.path());
        cfg.hosts = ["127.0.0.1", "localhost", "*.example.com"]
            .map(|h| h.to_string().try_into().unwrap())
            .to_vec();
        let edge = EdgeNode::start(cfg).await;
        assert_eq!(edge.get("/a").await.status, 200);
        assert_eq!(edge.get_with("/a", &[("host", "www.example.com")]).await.status, 200);
        for host in ["evil.example", "example.com", "www.example.com.evil.example"] {
            let r = edge.get_with("/b", &[("host", host)]).await;
            assert_eq!(r.status, 421, "{host}");
            assert!(r.json()["error"].as_str().unwrap().contains(host), "{host}");
        }
        assert_eq!(up.count("/b"), 0, "a misdirected request reached the upstream");
        assert_eq!(edge.metric("tessera_edge_misdirected_requests_total", &[]), 3.0);
        edge.stop().await;
    }
}

over_protocols! {
    /// Brotli copies in upstream mode are made once per content: URLs that store the same
    /// bytes share one copy, and concurrent requests for a new one wait for it.
    async fn brotli_copies_are_made_once_per_content() {
        let css: &'static str = "body { color: red; margin: 0 auto; }\n".repeat(4_000).leak();
        let js: &'static str = "function f(a) { return a + 1; }\n".repeat(20_000).leak();
        let (c, j) = (css, js);
        let up = Upstream::start(move |req, _| {
            let (body, kind) = if req.uri().path().ends_with(".css") {
                (c.as_bytes(), "text/css")
            } else {
                (j.as_bytes(), "application/javascript")
            };
            response(200, &[("cache-control", "max-age=60"), ("content-type", kind)], body)
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let compressions = || edge.metric("tessera_edge_brotli_compressions_total", &[]);
        // Copies are made of stored responses: each URL is fetched (and stored) first.
        for path in ["/a.css", "/b.css", "/c.css", "/app.js"] {
            assert_eq!(edge.get(path).await.status, 200);
        }
        for path in ["/a.css", "/b.css", "/c.css"] {
            let r = edge.get_with(path, &[("accept-encoding", "br")]).await;
            assert_eq!(r.header("content-encoding"), "br", "{path}");
            let mut plain = Vec::new();
            brotli::BrotliDecompress(&mut &r.body[..], &mut plain).unwrap();
            assert_eq!(plain, css.as_bytes(), "{path}");
        }
        assert_eq!(compressions(), 1.0, "three URLs of the same bytes");
        concurrent_brotli_gets(&edge, "/app.js", js.as_bytes()).await;
        assert_eq!(compressions(), 2.0);
    }
}

/// A GET through a plain HTTP/1.1 connection to the edge: the status, and the body or the
/// error it ended with.
async fn get_raw(edge: &EdgeNode, path: &str) -> (u16, Result<Bytes, String>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let resp = client.get(edge.url(path).parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await;
    (
        status,
        body.map(|b| b.to_bytes()).map_err(|e| format!("{e:?}")),
    )
}

/// Faults between the edge and its upstream, injected by a fault proxy: a body that stalls
/// is cut off after the between-bytes timeout, a truncated one is refused, and neither is
/// stored; a hung upstream is a `504` after the first-byte timeout, a reset one a `502`, and
/// one that cannot be connected to a `502` after the connect timeout.
#[tokio::test]
async fn upstream_faults_end_in_errors_within_their_timeouts_and_store_nothing() {
    use tessera_faults::{Fault, FaultProxy};
    let body = Bytes::from(noise(1 << 20, 9));
    let b2 = body.clone();
    let up = Upstream::start(move |_, _| {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(http_body_util::Full::new(b2.clone()))
            .unwrap()
    })
    .await;
    let proxy = FaultProxy::start(up.addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(proxy.url()), dir.path());
    cfg.timeouts.first_byte_ms = 500;
    cfg.timeouts.between_bytes_ms = 500;
    let edge = EdgeNode::start_with(cfg, false).await;
    let errors = |kind: &str| edge.metric("tessera_edge_origin_errors_total", &[("kind", kind)]);

    for (path, fault, kind) in [
        ("/stalled", Fault::Stall { after: 300_000 }, "timeout"),
        ("/truncated", Fault::Truncate { after: 300_000 }, "body"),
    ] {
        proxy.set(fault);
        let before = errors(kind);
        let (status, got) = get_raw(&edge, path).await;
        assert_eq!(status, 200, "{fault:?}: the head came before the fault");
        assert!(
            got.is_err(),
            "{fault:?}: the body must end in an error, got {got:?}"
        );
        assert_eq!(errors(kind), before + 1.0, "{fault:?}");
        proxy.set(Fault::None);
        let (status, got) = get_raw(&edge, path).await;
        assert_eq!((status, got.as_ref().ok()), (200, Some(&body)), "{fault:?}");
        assert_eq!(up.count(path), 2, "{fault:?}: the broken body was stored");
    }

    proxy.set(Fault::Blackhole);
    let started = std::time::Instant::now();
    let r = edge.get("/hung").await;
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    proxy.set(Fault::Reset);
    assert_eq!(edge.get("/reset").await.status, 502);
    edge.stop().await;

    // A listener whose accept queue is full (backlog 0, one connection queued) drops SYNs:
    // connecting to it hangs until the connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let _queued = tokio::net::TcpStream::connect(addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(format!("http://{addr}")), dir.path());
    cfg.timeouts.connect_ms = 300;
    let edge = EdgeNode::start_with(cfg, false).await;
    let started = std::time::Instant::now();
    let r = edge.get("/unreachable").await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        edge.metric("tessera_edge_origin_errors_total", &[("kind", "connect")]),
        1.0
    );
    edge.stop().await;
}

/// A tmpfs of `mib` MiB mounted on a new temporary folder, unmounted when dropped (the
/// tests run as root, as CI does).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs needs root");
        SmallDisk { dir }
    }

    fn resize(&self, mib: u64) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The SSD tier on a filesystem too small for it, on one that fills up after it opened, and
/// on a folder damaged while the edge was down: every object is served with its own bytes
/// (from memory, what the SSD kept, or the upstream), and what went wrong is counted.
#[tokio::test]
async fn a_full_or_damaged_ssd_tier_serves_no_corrupt_byte() {
    const N: u64 = 200;
    let up = Upstream::start(|req, _| {
        let n: u64 = req
            .uri()
            .path()
            .trim_start_matches("/obj/")
            .parse()
            .unwrap();
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(http_body_util::Full::new(Bytes::from(noise(64 << 10, n))))
            .unwrap()
    })
    .await;
    let fetched = || {
        (0..N)
            .map(|n| up.count(&format!("/obj/{n}")))
            .sum::<usize>()
    };
    // Every object twice; the second round's SSD hits.
    let twice = async |edge: &EdgeNode| {
        let disk_hits = || {
            edge.metric(
                "tessera_edge_cache_lookups_total",
                &[("result", "hit"), ("tier", "disk")],
            )
        };
        let mut before = 0.0;
        for round in 0..2 {
            if round == 1 {
                before = disk_hits();
            }
            for n in 0..N {
                // One host whatever the edge's port: the cache key survives restarts.
                let r = edge
                    .get_with(&format!("/obj/{n}"), &[("host", "site.test")])
                    .await;
                assert_eq!(r.status, 200, "round {round}: /obj/{n}");
                assert!(
                    r.body == noise(64 << 10, n)[..],
                    "round {round}: /obj/{n} has wrong bytes"
                );
            }
        }
        disk_hits() - before
    };
    let disk = SmallDisk::mount(40);
    let mut cfg = config(Backend::Upstream(up.url()), &disk.path().join("edge"));
    cfg.memory_bytes = 2 << 20;
    cfg.disk_bytes = 128 << 20;

    // No room for 128 MiB of SSD tier: memory only, said and counted.
    let errors =
        |edge: &EdgeNode, op: &str| edge.metric("tessera_edge_ssd_errors_total", &[("op", op)]);
    let edge = EdgeNode::start_with(cfg.clone(), false).await;
    assert_eq!(errors(&edge, "allocate"), 1.0);
    assert_eq!(edge.metric("tessera_edge_ssd_bytes", &[]), 0.0);
    assert_eq!(twice(&edge).await, 0.0);
    assert_eq!(edge.metric("tessera_edge_ssd_used_bytes", &[]), 0.0);
    edge.stop().await;

    // Room at start; then the filesystem fills up. The tier has its blocks: it goes on.
    disk.resize(400);
    let edge = EdgeNode::start_with(cfg.clone(), false).await;
    assert_eq!(
        edge.metric("tessera_edge_ssd_bytes", &[]),
        (128 << 20) as f64
    );
    let filler = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", disk.path().join("filler").display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!filler.success(), "dd stops when the filesystem is full");
    let used = |edge: &EdgeNode| edge.metric("tessera_edge_ssd_used_bytes", &[]);
    assert_eq!(used(&edge), 0.0, "nothing stored yet");
    let before = fetched();
    let hits = twice(&edge).await;
    assert!(
        hits >= (N / 2) as f64,
        "the full filesystem stopped the SSD tier: {hits} SSD hits"
    );
    // What the SSD tier served it holds, in whole blocks, within its capacity; the
    // operator's view (`tessera stats`) says the same.
    let used_now = used(&edge);
    assert!(
        used_now >= hits * (64 << 10) as f64 && used_now <= (128 << 20) as f64,
        "{used_now} bytes used for {hits} SSD hits of 64 KiB"
    );
    let stats = edge.admin("GET", "/api/v1/stats", "").await.json();
    assert_eq!(stats["disk"]["capacity_bytes"], 128 << 20);
    assert!(stats["disk"]["used_bytes"].as_f64().unwrap() >= used_now);
    assert!(fetched() - before < 2 * N as usize);
    assert_eq!(errors(&edge, "read"), 0.0);
    edge.stop().await;

    // Damaged while the edge was down: garbage over parts of its files, one cut short.
    let cache = disk.path().join("edge/cache");
    let mut files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("foyer-storage-")
        })
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate().skip(1) {
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        let len = file.metadata().unwrap().len();
        if i == 2 {
            file.set_len(len / 4).unwrap();
        }
        for at in (0..len / 4).step_by(1 << 20) {
            file.seek(std::io::SeekFrom::Start(at + 100_000)).unwrap();
            file.write_all(&noise(20_000, at)).unwrap();
        }
    }
    let edge = EdgeNode::start_with(cfg.clone(), false).await;
    let before = fetched();
    let lookups = edge.metric(
        "tessera_edge_cache_lookups_total",
        &[("result", "hit"), ("tier", "disk")],
    );
    twice(&edge).await;
    let kept = edge.metric(
        "tessera_edge_cache_lookups_total",
        &[("result", "hit"), ("tier", "disk")],
    ) - lookups;
    let refetched = fetched() - before;
    eprintln!("after damage: {kept} SSD hits, {refetched} refetched");
    assert!(
        refetched > 0 && refetched < N as usize,
        "the damage dropped some, not all: {refetched}"
    );
    assert!(kept > 0.0);
    edge.stop().await;
}

/// An upstream's answer to `req` for a representation `body` with fields `fields`, as a
/// server that does ranges answers: `206` with its part for one byte range (unless an
/// `If-Range` names another validator), `416` past the end, else `200`.
fn ranged(
    req: &http::Request<Bytes>,
    body: &Bytes,
    fields: &[(&str, &str)],
) -> http::Response<http_body_util::Full<Bytes>> {
    let mut r = http::Response::builder();
    for (k, v) in fields {
        r = r.header(*k, *v);
    }
    let etag = fields.iter().find(|(k, _)| *k == "etag").map(|(_, v)| *v);
    let if_range_holds = match req.headers().get("if-range") {
        None => true,
        Some(v) => Some(v.to_str().unwrap()) == etag,
    };
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().unwrap().strip_prefix("bytes="))
        .filter(|_| if_range_holds)
        .and_then(|v| v.split_once('-'));
    let len = body.len() as u64;
    let Some((a, b)) = range else {
        return r.status(200).body(body.clone().into()).unwrap();
    };
    let a: u64 = a.parse().unwrap();
    if a >= len {
        return r
            .status(416)
            .header("content-range", format!("bytes */{len}"))
            .body(Bytes::new().into())
            .unwrap();
    }
    let b = b.parse::<u64>().map_or(len - 1, |b| b.min(len - 1));
    r.status(206)
        .header("content-range", format!("bytes {a}-{b}/{len}"))
        .body(body.slice(a as usize..=b as usize).into())
        .unwrap()
}

/// The `Range` of every request the upstream got for `path`, in order.
fn ranges_asked(up: &Upstream, path: &str) -> Vec<String> {
    (0..up.count(path))
        .map(|i| {
            let h = up.request_headers(path, i);
            h.get("range")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        })
        .collect()
}

const MIB: usize = 1 << 20;

over_protocols! {
    /// A range of a cold large object fetches the slice it lies in, not the object; ranges
    /// within held slices are hits, a range over held and missing slices fetches only the
    /// missing one, and a whole GET completes the object from what is missing.
    async fn a_range_fetches_its_slice_and_a_partial_object_is_completed() {
        let body = Bytes::from(noise(5 * MIB + 123, 40));
        let b2 = body.clone();
        let fields = [("cache-control", "max-age=600"), ("etag", "\"v1\"")];
        let up = Upstream::start(move |req, _| ranged(req, &b2, &fields)).await;
        let (edge, _d) = edge_for(&up).await;
        let (a, total) = (2 * MIB + 512 * 1024, body.len());
        let range = format!("bytes={a}-{}", a + 99);
        let r = edge.get_with("/video", &[("range", &range)]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), format!("bytes {a}-{}/{total}", a + 99));
        assert_eq!(&r.body[..], &body[a..a + 100]);
        assert!(r.cache_status().contains("fwd=miss; stored"), "{}", r.cache_status());
        assert_eq!(
            ranges_asked(&up, "/video"),
            [format!("bytes={}-{}", 2 * MIB, 3 * MIB - 1)],
            "one slice fetched, not 5 MiB"
        );
        // Again, and another range inside the same slice: hits.
        for range in [range.clone(), format!("bytes={}-{}", 2 * MIB, 2 * MIB + 10)] {
            let r = edge.get_with("/video", &[("range", &range)]).await;
            assert_eq!(r.status, 206);
            assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
        }
        assert_eq!(up.count("/video"), 1);
        // Across slices 2 and 3: only 3 is fetched, conditional on the stored validator.
        let range = format!("bytes={}-{}", 3 * MIB - 10, 3 * MIB + 9);
        let r = edge.get_with("/video", &[("range", &range)]).await;
        assert_eq!(&r.body[..], &body[3 * MIB - 10..3 * MIB + 10]);
        assert_eq!(up.count("/video"), 2);
        assert_eq!(up.request_headers("/video", 1)["if-range"], "\"v1\"");
        // A suffix range: the last slice.
        let r = edge.get_with("/video", &[("range", "bytes=-50")]).await;
        assert_eq!(&r.body[..], &body[total - 50..]);
        assert_eq!(up.count("/video"), 3);
        // The whole object: the three missing slices, then everything from the store.
        let r = edge.get("/video").await;
        assert_eq!((r.status.as_u16(), r.body.len()), (200, total));
        assert!(r.body == body, "the joined slices are the object");
        assert_eq!(r.header("etag"), "\"v1\"");
        assert_eq!(r.header("content-length"), total.to_string());
        let mut asked = ranges_asked(&up, "/video");
        asked.sort();
        let mut every: Vec<String> = (0..6)
            .map(|i| format!("bytes={}-{}", i * MIB, ((i + 1) * MIB).min(total) - 1))
            .collect();
        every.sort();
        assert_eq!(asked, every, "each slice fetched once");
        let r = edge.get("/video").await;
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
        assert!(r.body == body);
        assert_eq!(up.count("/video"), 6);
        // A range past the end of a cold object: the upstream's 416, nothing stored.
        for start in ["99999999", "18446744073709551615"] {
            let range = format!("bytes={start}-");
            let r = edge.get_with("/other", &[("range", &range)]).await;
            assert_eq!(r.status, 416, "{range}");
            assert_eq!(r.header("content-range"), format!("bytes */{total}"));
        }
    }

    /// Slices of two representations are never joined: a slice fetched after the object
    /// changed upstream fails its If-Range, the partial object is dropped, and the next
    /// request starts over on the new representation.
    async fn slices_of_a_changed_object_are_never_joined() {
        let v1 = Bytes::from(noise(3 * MIB, 41));
        let v2 = Bytes::from(noise(3 * MIB, 42));
        let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c2 = changed.clone();
        let (b1, b2) = (v1.clone(), v2.clone());
        let up = Upstream::start(move |req, _| {
            if c2.load(std::sync::atomic::Ordering::SeqCst) {
                ranged(req, &b2, &[("cache-control", "max-age=600"), ("etag", "\"v2\"")])
            } else {
                ranged(req, &b1, &[("cache-control", "max-age=600"), ("etag", "\"v1\"")])
            }
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let r = edge.get_with("/f", &[("range", "bytes=0-99")]).await;
        assert_eq!(&r.body[..], &v1[..100]);
        changed.store(true, std::sync::atomic::Ordering::SeqCst);
        // Slice 1 is asked for with If-Range "v1": the upstream answers 200 with v2. The
        // partial object of v1 is dropped, and the request is a miss of v2.
        let r = edge.get_with("/f", &[("range", &format!("bytes={}-{}", MIB, MIB + 99))]).await;
        assert_eq!(r.status, 206, "{:?}", r.body);
        assert_eq!(r.header("etag"), "\"v2\"");
        assert_eq!(&r.body[..], &v2[MIB..MIB + 100]);
        assert_eq!(up.request_headers("/f", 1)["if-range"], "\"v1\"");
        assert_eq!(edge.metric("tessera_edge_origin_errors_total", &[("kind", "changed")]), 1.0);
        // Slice 0 is v2's now, too: the whole object is v2's bytes.
        let r = edge.get("/f").await;
        assert_eq!(r.header("etag"), "\"v2\"");
        assert!(r.body == v2, "no byte of v1 joined to v2");
    }

    /// An upstream that does not do ranges (a 200 to a slice's range) gets the request
    /// the whole-response way; the stored whole response answers later ranges.
    async fn an_upstream_without_ranges_is_fetched_whole() {
        let body = Bytes::from(noise(2 * MIB, 43));
        let b2 = body.clone();
        let up = Upstream::start(move |_, _| {
            http::Response::builder()
                .header("cache-control", "max-age=600")
                .body(b2.clone().into())
                .unwrap()
        })
        .await;
        let (edge, _d) = edge_for(&up).await;
        let range = format!("bytes={}-{}", MIB + 5, MIB + 14);
        let r = edge.get_with("/plain", &[("range", &range)]).await;
        assert_eq!(r.status, 206);
        assert_eq!(&r.body[..], &body[MIB + 5..MIB + 15]);
        assert_eq!(up.count("/plain"), 2, "the slice's range, then the whole response");
        // Stored by then (a hit), or still arriving (the request joins the fill): either
        // way no third request upstream.
        let r = edge.get_with("/plain", &[("range", "bytes=0-9")]).await;
        assert!(
            r.cache_status().contains("hit") || r.cache_status().contains("collapsed"),
            "{}",
            r.cache_status()
        );
        assert_eq!(&r.body[..], &body[..10]);
        assert_eq!(up.count("/plain"), 2);
    }
}

/// Concurrent ranges in one cold slice make one upstream request; a partial object gone
/// stale is revalidated by the range of the slice a request needs first, and keeps its other
/// slices when the representation is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_are_fetched_once_and_kept_across_revalidations() {
    let body = Bytes::from(noise(3 * MIB, 44));
    let b2 = body.clone();
    let up = Upstream::start(move |req, _| {
        // Stale as soon as stored (Age = max-age), so every request revalidates.
        let fields = [
            ("cache-control", "max-age=60"),
            ("age", "60"),
            ("etag", "\"s\""),
        ];
        ranged(req, &b2, &fields)
    })
    .await;
    let (edge, _d) = edge_for(&up).await;
    let edge = std::sync::Arc::new(edge);
    let gets: Vec<_> = (0..20)
        .map(|i| {
            let edge = edge.clone();
            let range = format!("bytes={}-{}", MIB + i * 1000, MIB + i * 1000 + 99);
            tokio::spawn(async move { edge.get_with("/gated/s", &[("range", &range)]).await })
        })
        .collect();
    edge.until("20 requests to join the slice's fetch", |e| {
        e.edge.metrics().coalesced.get() >= 19
    })
    .await;
    up.open_gate();
    for (i, g) in gets.into_iter().enumerate() {
        let r = g.await.unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(&r.body[..], &body[MIB + i * 1000..MIB + i * 1000 + 100]);
    }
    assert_eq!(up.count("/gated/s"), 1, "one fetch for 20 requests");
    // Slices 1 and 2 (2 is new).
    let range = format!("bytes={}-{}", 2 * MIB - 5, 2 * MIB + 4);
    let r = edge.get_with("/gated/s", &[("range", &range)]).await;
    assert_eq!(&r.body[..], &body[2 * MIB - 5..2 * MIB + 5]);
    // Stale: slice 1 is fetched again (the revalidation), slice 2 not.
    assert_eq!(
        ranges_asked(&up, "/gated/s"),
        [
            format!("bytes={}-{}", MIB, 2 * MIB - 1),
            format!("bytes={}-{}", MIB, 2 * MIB - 1),
            format!("bytes={}-{}", 2 * MIB, 3 * MIB - 1),
        ],
        "the stale object's first slice revalidates it, then only slice 2 is missing"
    );
    let r = edge.get_with("/gated/s", &[("range", &range)]).await;
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    assert_eq!(&r.body[..], &body[2 * MIB - 5..2 * MIB + 5]);
    assert_eq!(
        up.count("/gated/s"),
        4,
        "slice 2 kept: only slice 1 revalidated"
    );
    assert_eq!(
        edge.metric("tessera_edge_origin_fetches_total", &[("kind", "slice")]),
        4.0
    );
}

/// With slices off, a range miss fetches the whole response, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_off_fetches_ranges_whole() {
    let body = Bytes::from(noise(2 * MIB, 45));
    let b2 = body.clone();
    let up =
        Upstream::start(move |req, _| ranged(req, &b2, &[("cache-control", "max-age=60")])).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    cfg.slice_bytes = 0;
    let edge = EdgeNode::start(cfg).await;
    let r = edge.get_with("/w", &[("range", "bytes=10-19")]).await;
    assert_eq!(&r.body[..], &body[10..20]);
    assert_eq!(ranges_asked(&up, "/w"), [""]);
}

/// A slice size outside 64 KiB..=64 MiB is refused at start, naming the setting.
#[tokio::test]
async fn a_slice_size_out_of_bounds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [1000, 65 << 20] {
        let mut cfg = config(Backend::Upstream("http://127.0.0.1:9".into()), dir.path());
        cfg.slice_bytes = bad;
        let e = tessera_edge::Edge::open(cfg, Default::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("slice_bytes"), "{e}");
    }
}

/// A large whole response that can be fetched in parts is stored as slices: once some of
/// them are evicted, the next request fetches only those (with `If-Range`), not the whole
/// object again. A 6 MiB memory tier cannot keep the 10 MiB object's eleven segments: some
/// are evicted as they are stored, and (first in, first out) those the second request
/// fetches again may push out others it reaches later; each is asked for once at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_that_lost_segments_is_completed_not_refetched() {
    let body = Bytes::from(noise(10 * MIB + 7, 46));
    let b2 = body.clone();
    let up = Upstream::start(move |req, _| {
        let fields = [
            ("cache-control", "max-age=600"),
            ("etag", "\"big\""),
            ("accept-ranges", "bytes"),
        ];
        ranged(req, &b2, &fields)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    (cfg.memory_bytes, cfg.disk_bytes) = (6 << 20, 0);
    let edge = EdgeNode::start(cfg).await;
    let r = edge.get("/big").await;
    assert!(r.body == body);
    let r = edge.get("/big").await;
    assert_eq!(r.status, 200);
    assert!(r.body == body, "completed byte-exact");
    let asked = ranges_asked(&up, "/big");
    assert_eq!(asked[0], "", "the first request is whole");
    assert!(
        asked.len() > 1 && asked[1..].iter().all(|r| r.starts_with("bytes=")),
        "then only evicted slices, never the whole object again: {asked:?}"
    );
    let distinct: std::collections::HashSet<_> = asked.iter().collect();
    assert!(
        asked.len() <= 12 && distinct.len() == asked.len(),
        "each of the 11 slices once at most: {asked:?}"
    );
    for i in 1..asked.len() {
        assert_eq!(up.request_headers("/big", i)["if-range"], "\"big\"");
    }
}

/// `stale-while-revalidate` on a partial object: the stale slices are served at once and the
/// object is revalidated behind with a conditional request, whose `304` keeps its slices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_object_is_revalidated_behind_and_keeps_its_slices() {
    let body = Bytes::from(noise(2 * MIB, 47));
    let b2 = body.clone();
    let up = Upstream::start(move |req, n| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"w\"")
        {
            // Fresh again: no Age.
            return http::Response::builder()
                .status(304)
                .header("cache-control", "max-age=600")
                .header("etag", "\"w\"")
                .body(Bytes::new().into())
                .unwrap();
        }
        assert_eq!(n, 0, "only the first request fetches bytes");
        let fields = [
            ("cache-control", "max-age=60, stale-while-revalidate=600"),
            ("age", "60"),
            ("etag", "\"w\""),
        ];
        ranged(req, &b2, &fields)
    })
    .await;
    let (edge, _d) = edge_for(&up).await;
    let r = edge.get_with("/swr", &[("range", "bytes=10-19")]).await;
    assert_eq!(&r.body[..], &body[10..20]);
    let r = edge.get_with("/swr", &[("range", "bytes=20-29")]).await;
    assert_eq!(&r.body[..], &body[20..30]);
    assert!(
        r.cache_status().contains("stale-while-revalidate"),
        "{}",
        r.cache_status()
    );
    edge.until("the background revalidation", |_| up.count("/swr") == 2)
        .await;
    let h = up.request_headers("/swr", 1);
    assert!(
        h.get("range").is_none(),
        "a conditional request, not a slice"
    );
    assert_eq!(h["if-none-match"], "\"w\"");
    // The 304 is merged (possibly a moment after the upstream sent it).
    let mut r = edge.get_with("/swr", &[("range", "bytes=30-39")]).await;
    for _ in 0..200 {
        if r.cache_status().contains("hit") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        r = edge.get_with("/swr", &[("range", "bytes=30-39")]).await;
    }
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(&r.body[..], &body[30..40]);
}

/// A large whole response kept in its 1 MiB segments, gone stale, is revalidated in those
/// slices whatever `slice_bytes` says, and keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_large_object_is_revalidated_in_its_own_slices() {
    let body = Bytes::from(noise(9 * MIB, 48));
    let b2 = body.clone();
    let up = Upstream::start(move |req, _| {
        // Stale as soon as stored.
        let fields = [
            ("cache-control", "max-age=60"),
            ("age", "60"),
            ("etag", "\"l\""),
            ("accept-ranges", "bytes"),
        ];
        ranged(req, &b2, &fields)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    cfg.slice_bytes = 4 << 20;
    (cfg.memory_bytes, cfg.disk_bytes) = (64 << 20, 0);
    let edge = EdgeNode::start(cfg).await;
    assert!(edge.get("/l").await.body == body);
    let at = 5 * MIB + 3;
    let r = edge
        .get_with("/l", &[("range", &format!("bytes={at}-{}", at + 9))])
        .await;
    assert_eq!(&r.body[..], &body[at..at + 10]);
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        ranges_asked(&up, "/l"),
        ["".to_string(), format!("bytes={}-{}", 5 * MIB, 6 * MIB - 1)],
        "its own 1 MiB slice revalidated it"
    );
    let r = edge.get("/l").await;
    assert!(r.body == body, "the other slices kept");
    assert_eq!(up.count("/l"), 3, "one more revalidation, no other fetch");
}
