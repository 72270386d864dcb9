//! WebAssembly plugins in a real edge, over real HTTP: the shipped plugins (signed-url,
//! router, size-eviction) bound at start-up or deployed through the admin API, the hostile
//! test plugin contained by each hook's failure policy, deploys under load, rollback.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use common::*;
use tessera_edge::Backend;
use tessera_edge::config::PluginBinding;
use tessera_plugins::{Hook, shipped};

fn bind(hook: Hook, plugin: &str, config: &[(&str, &str)]) -> PluginBinding {
    PluginBinding {
        hook,
        plugin: plugin.into(),
        name: None,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An upstream answering every path with its own path, cacheable for a minute.
async fn echo_upstream(tag: &'static str) -> Upstream {
    Upstream::start(move |req, _| {
        let body = format!("{tag} {}", req.uri());
        let mut r = response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain"),
            ],
            b"",
        );
        *r.body_mut() = http_body_util::Full::new(Bytes::from(body));
        r
    })
    .await
}

/// Deploys `wasm` on `hook` through the admin API.
async fn deploy(
    edge: &EdgeNode,
    hook: &str,
    name: &str,
    wasm: &'static [u8],
    config: &[(&str, &str)],
) -> Reply {
    let mut q = format!("name={name}");
    for (k, v) in config {
        let kv = format!("{k}={v}")
            .replace('%', "%25")
            .replace(' ', "%20")
            .replace('&', "%26")
            .replace('=', "%3D");
        q.push_str(&format!("&config={kv}"));
    }
    edge.admin_bytes(
        "POST",
        &format!("/api/v1/plugins/{hook}?{q}"),
        Bytes::from_static(wasm),
    )
    .await
}

async fn metrics(edge: &EdgeNode) -> String {
    String::from_utf8(edge.admin("GET", "/metrics", "").await.body.to_vec()).unwrap()
}

over_protocols! {
    async fn signed_urls_gate_a_prefix_on_hits_and_misses() {
        let up = echo_upstream("origin").await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(Backend::Upstream(up.url()), dir.path());
        cfg.plugins.bind = vec![bind(
            Hook::Authorize,
            "signed-url",
            &[("key", "k3y"), ("prefixes", "/private/")],
        )];
        let edge = EdgeNode::start(cfg).await;
        let q = shipped::sign_url(b"k3y", "hmac-sha256", "/private/a.txt", now() + 300).unwrap();
        for _ in 0..2 {
            let r = edge.get(&format!("/private/a.txt?{q}")).await;
            assert_eq!(r.status, 200);
            assert!(r.body.starts_with(b"origin /private/a.txt"));
        }
        // The second was a cache hit, authorised all the same.
        assert_eq!(up.count(&format!("/private/a.txt?{q}")), 1);
        let r = edge.get("/private/a.txt").await;
        assert_eq!(r.status, 403);
        assert!(r.json()["error"].as_str().unwrap().contains("needs a signature"));
        let moved = edge.get(&format!("/private/b.txt?{q}")).await;
        assert_eq!(moved.status, 403);
        let old = shipped::sign_url(b"k3y", "hmac-sha256", "/private/a.txt", now() - 1).unwrap();
        let r = edge.get(&format!("/private/a.txt?{old}")).await;
        assert_eq!((r.status.as_u16(), r.json()["error"].as_str().unwrap().contains("expired")), (403, true));
        assert_eq!(up.count("/private/a.txt"), 0, "a refused request never reaches the upstream");
        assert_eq!(up.count("/private/b.txt"), 0);
        assert_eq!(edge.get("/public/c.txt").await.status, 200);
        let m = metrics(&edge).await;
        let calls = metric(&m, "tessera_edge_plugin_calls_total", &[("hook", "authorize"), ("plugin", "signed-url"), ("result", "ok")]);
        let reused = metric(&m, "tessera_edge_plugin_reused_total", &[("hook", "authorize"), ("plugin", "signed-url")]);
        // Seven requests, five distinct (the check call at deploy is one more call): the
        // repeated signed URL was decided once.
        assert_eq!((calls, reused), (6.0, 1.0));
        // The reused allow of a URL that has since expired is not reused: asked again.
        let soon = now() + 1;
        let q = shipped::sign_url(b"k3y", "hmac-sha256", "/private/s.txt", soon).unwrap();
        assert_eq!(edge.get(&format!("/private/s.txt?{q}")).await.status, 200);
        while now() < soon {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(edge.get(&format!("/private/s.txt?{q}")).await.status, 403);
    }
}

/// Spellings of `/private/r.txt` (the raw target a client may send).
const SAME_PATH: [&str; 8] = [
    "/private/r.txt",
    "/%70rivate/r.txt",
    "/%70%72%69%76%61%74%65/r.txt",
    "/private%2Fr.txt",
    "/private%2fr.txt",
    "//private/r.txt",
    "/private//r.txt",
    "/%2Fprivate/r.txt",
];

/// Spellings that step out of a folder into `/private/`: refused whatever a plugin says.
const DOT_SEGMENTS: [&str; 4] = [
    "/public/../private/r.txt",
    "/public/%2e%2e/private/r.txt",
    "/public%2F..%2Fprivate/r.txt",
    "/./private/r.txt",
];

over_protocols! {
    /// Plugins see the path the edge serves, after its one normalisation, in both modes:
    /// no spelling of a protected path gets past `authorize`, every spelling reaches
    /// `route` as the same path, and a URL signed for the path is good for every spelling.
    async fn every_spelling_of_a_path_meets_the_same_plugins() {
        let up = echo_upstream("upstream").await;
        let origin = Origin::start().await;
        origin.publish("private/r.txt", &b"the protected file"[..]).await;
        let dir = tempfile::tempdir().unwrap();
        for (mode, backend) in [
            ("origin", Backend::Origin(vec![origin.url()])),
            ("upstream", Backend::Upstream(up.url())),
        ] {
            let mut cfg = config(backend, &dir.path().join(mode));
            cfg.plugins.bind = vec![bind(
                Hook::Authorize,
                "signed-url",
                &[("key", "k3y"), ("prefixes", "/private/")],
            )];
            let edge = EdgeNode::start(cfg).await;
            let q = shipped::sign_url(b"k3y", "hmac-sha256", "/private/r.txt", now() + 300).unwrap();
            for raw in SAME_PATH {
                let r = edge.get(raw).await;
                assert_eq!(r.status, 403, "{mode} {raw}: {:?}", r.body);
                let r = edge.get(&format!("{raw}?{q}")).await;
                assert_eq!(r.status, 200, "{mode} {raw} signed: {:?}", r.body);
                let served = match mode {
                    "origin" => &b"the protected file"[..],
                    _ => b"upstream /private/r.txt?",
                };
                assert!(r.body.starts_with(served), "{mode} {raw}: {:?}", r.body);
            }
            for raw in DOT_SEGMENTS {
                let r = edge.get(raw).await;
                assert_eq!(r.status, 400, "{mode} {raw}: {:?}", r.body);
                assert!(r.json()["error"].as_str().unwrap().contains("dot segments"), "{mode} {raw}");
            }
            // The upstream was only ever asked for the one spelling, and once: one cache
            // entry for every spelling.
            if mode == "upstream" {
                assert_eq!(up.count(&format!("/private/r.txt?{q}")), 1);
                assert_eq!(up.count("/private/r.txt"), 0);
            }
            // `authorize` failing closed on the prefix (a trapping plugin) and `route`
            // answering what it saw: the same path for every spelling.
            for (hook, m) in [("authorize", "trap"), ("route", "echo")] {
                let r = deploy(&edge, hook, "hostile", shipped::HOSTILE, &[("mode", m), ("prefix", "/private/")]).await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                for raw in SAME_PATH {
                    let r = edge.get(raw).await;
                    if hook == "authorize" {
                        assert_eq!(r.status, 503, "{mode} {raw}: {:?}", r.body);
                    } else {
                        assert_eq!((r.status.as_u16(), echoed(&r)["path"].as_str()), (200, "/private/r.txt"), "{mode} {raw}");
                    }
                }
                let r = edge.admin("DELETE", &format!("/api/v1/plugins/{hook}"), "").await;
                assert_eq!(r.status, 200, "{:?}", r.body);
            }
            edge.stop().await;
        }
    }
}

/// The `name=value` lines the hostile plugin's `echo` mode answers.
fn echoed(r: &Reply) -> BTreeMap<String, String> {
    String::from_utf8(r.body.to_vec())
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

over_protocols! {
    async fn a_plugin_reads_the_request_through_its_accessors() {
        let up = echo_upstream("origin").await;
        let dir = tempfile::tempdir().unwrap();
        let edge = EdgeNode::start(config(Backend::Upstream(up.url()), dir.path())).await;
        assert_eq!(deploy(&edge, "route", "echo", shipped::HOSTILE, &[("mode", "echo")]).await.status, 200);
        let r = edge
            .get_with("/echo/a%20b?x=1&y=2", &[("x-test", "one"), ("x-test", "two")])
            .await;
        assert_eq!(r.status, 200);
        let e = echoed(&r);
        let (scheme, protocol) = match proto() {
            Proto::Http1 => ("http", "http1"),
            Proto::Http2 => ("https", "http2"),
            Proto::Http3 => ("https", "http3"),
        };
        assert_eq!(e["method"], "GET");
        assert_eq!(e["scheme"], scheme);
        assert_eq!(e["protocol"], protocol);
        assert_eq!(e["path"], "/echo/a%20b");
        assert_eq!(e["query"], "x=1&y=2");
        assert!(e["authority"].starts_with("127.0.0.1:") || e["authority"].starts_with("localhost:"), "{e:?}");
        assert_eq!(e["header"], "one", "the first value, whatever the name's case");
        assert_eq!(e["header-values"], "one|two");
        assert_eq!(e["headers"], "one|two");
        assert_eq!(e["missing"], "(none)");
        assert_eq!(e["client"], "127.0.0.1");
        assert_eq!(up.count("/echo/a%20b?x=1&y=2"), 0, "the plugin answered");
        // HTTP/1.1 over TLS is https too (hyper leaves its URI without a scheme).
        if proto() == Proto::Http1 {
            let mut tls = edge.connect(Proto::Http1).await;
            let req = http::Request::get("/tls").body(Bytes::new()).unwrap();
            let r = Reply::read(tls.send(req).await.unwrap()).await;
            assert_eq!((echoed(&r)["scheme"].as_str(), echoed(&r)["protocol"].as_str()), ("https", "http1"));
        }
        // The request the upstream gets is whole again after the plugins had it.
        assert_eq!(deploy(&edge, "route", "ok", shipped::HOSTILE, &[("mode", "ok")]).await.status, 200);
        let r = edge.get_with("/whole?q=1", &[("x-test", "kept")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_ref(), b"origin /whole?q=1");
        assert_eq!(up.request_headers("/whole?q=1", 0)["x-test"], "kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_sends_requests_to_named_upstreams_rewrites_and_redirects() {
    let (main, api, beta) = (
        echo_upstream("main").await,
        echo_upstream("api").await,
        echo_upstream("beta").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(main.url()), dir.path());
    cfg.upstreams.insert("api".into(), api.url());
    cfg.upstreams.insert("beta".into(), beta.url());
    let edge = EdgeNode::start_with(cfg, false).await;
    let r = deploy(
        &edge,
        "route",
        "router",
        shipped::ROUTER,
        &[
            ("route.1", "header=x-beta:1 upstream=beta"),
            ("route.2", "prefix=/api/ rewrite=/v2/ upstream=api"),
            ("route.3", "prefix=/old/ redirect=308 location=/new/"),
            ("route.4", "prefix=/gone/ status=410"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["deployed"]["name"], "router");
    let r = edge.get("/api/users?page=2").await;
    assert_eq!(&r.body[..], b"api /v2/users?page=2");
    assert_eq!(&edge.get("/index.html").await.body[..], b"main /index.html");
    // The same URL from two upstreams is two cache entries.
    assert_eq!(
        &edge.get_with("/index.html", &[("x-beta", "1")]).await.body[..],
        b"beta /index.html"
    );
    assert_eq!(&edge.get("/index.html").await.body[..], b"main /index.html");
    assert_eq!(main.count("/index.html"), 1);
    let r = edge.get("/old/a/b.css?v=3").await;
    assert_eq!(
        (r.status.as_u16(), r.header("location")),
        (308, "/new/a/b.css?v=3")
    );
    assert_eq!(edge.get("/gone/x").await.status, 410);
    assert_eq!(main.count("/old/a/b.css?v=3") + main.count("/gone/x"), 0);
    // Listed, with the named upstreams.
    let l = edge.admin("GET", "/api/v1/plugins", "").await.json();
    let route = l["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "route")
        .unwrap();
    assert_eq!(route["current"]["name"], "router");
    assert_eq!(l["upstreams"], serde_json::json!(["api", "beta"]));
}

static BIG: [u8; 300_000] = [b'b'; 300_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_eviction_advice_keeps_big_objects_out_of_memory_and_sets_ttls() {
    let up = Upstream::start(|req, _| match req.uri().path() {
        "/big.bin" => response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "application/octet-stream"),
            ],
            &BIG,
        ),
        "/events" => response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "text/event-stream"),
            ],
            b"data: 1\n\n",
        ),
        "/static/app.css" => response(
            200,
            &[("cache-control", "max-age=0"), ("content-type", "text/css")],
            b"body{}",
        ),
        _ => response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain"),
            ],
            b"small",
        ),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    cfg.plugins.bind = vec![bind(
        Hook::Eviction,
        "size-eviction",
        &[
            ("memory-max-bytes", "100000"),
            ("never-cache-types", "text/event-stream"),
            ("long-ttl-prefixes", "/static/"),
            ("long-ttl-secs", "3600"),
        ],
    )];
    let edge = EdgeNode::start_with(cfg, false).await;
    let before = edge.edge.cache().memory_usage();
    // Hits read it from the SSD tier without bringing it into memory.
    for i in 0..3 {
        let r = edge.get("/big.bin").await;
        assert_eq!(r.body.len(), BIG.len());
        if i > 0 {
            assert!(
                r.cache_status().contains("detail=disk"),
                "read {i}: {}",
                r.cache_status()
            );
        }
    }
    assert_eq!(up.count("/big.bin"), 1);
    let grown = edge.edge.cache().memory_usage() - before;
    assert!(
        grown < 100_000,
        "a 300 kB object went to memory: +{grown} bytes"
    );
    for _ in 0..2 {
        assert_eq!(edge.get("/events").await.status, 200);
        assert_eq!(edge.get("/static/app.css").await.status, 200);
        assert_eq!(edge.get("/small.txt").await.status, 200);
    }
    assert_eq!(up.count("/events"), 2, "never-cache-types are not stored");
    assert_eq!(
        up.count("/static/app.css"),
        1,
        "max-age=0, but the plugin gave /static/ an hour"
    );
    assert_eq!(up.count("/small.txt"), 1);
    let r = edge.get("/static/app.css").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_by_each_hooks_failure_policy() {
    let up = echo_upstream("origin").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(up.url()), dir.path());
    // A small memory cap and a roomier deadline, so the memory bomb meets the cap first.
    cfg.plugins.limits.memory_bytes = 8 << 20;
    cfg.plugins.limits.deadline_ms = 20;
    let edge = EdgeNode::start_with(cfg, false).await;
    // authorize: a loop, a trap, a huge or malformed answer all fail closed (503, nothing
    // of the content), and only on the paths they fail on.
    for mode in ["loop", "trap", "huge", "bad-header", "memory"] {
        let r = deploy(
            &edge,
            "authorize",
            &format!("hostile-{mode}"),
            shipped::HOSTILE,
            &[("mode", mode), ("prefix", "/bad/")],
        )
        .await;
        assert_eq!(r.status, 200, "{mode}: {:?}", r.body);
        for _ in 0..2 {
            let r = edge.get(&format!("/bad/{mode}")).await;
            assert_eq!(r.status, 503, "{mode}");
            assert!(r.json()["error"].as_str().unwrap().contains("fails closed"));
            assert!(
                !String::from_utf8_lossy(&r.body).contains("origin"),
                "{mode} leaked content"
            );
            let ok = edge.get("/fine").await;
            assert_eq!(
                (ok.status.as_u16(), &ok.body[..]),
                (200, &b"origin /fine"[..]),
                "{mode}"
            );
        }
        assert_eq!(up.count(&format!("/bad/{mode}")), 0);
    }
    let m = metrics(&edge).await;
    for (mode, reason) in [
        ("loop", "deadline"),
        ("trap", "trap"),
        ("huge", "invalid"),
        ("bad-header", "invalid"),
        ("memory", "memory"),
    ] {
        let n = metric(
            &m,
            "tessera_edge_plugin_calls_total",
            &[
                ("hook", "authorize"),
                ("plugin", &format!("hostile-{mode}")),
                ("result", reason),
            ],
        );
        assert_eq!(n, 2.0, "{mode} counted as {reason}");
    }
    assert_eq!(
        edge.admin("DELETE", "/api/v1/plugins/authorize", "")
            .await
            .status,
        200
    );

    // route: a trapping router means the default route.
    deploy(
        &edge,
        "route",
        "hostile-trap",
        shipped::HOSTILE,
        &[("mode", "trap"), ("prefix", "/bad/")],
    )
    .await;
    let r = edge.get("/bad/route").await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (200, &b"origin /bad/route"[..])
    );
    // eviction: a looping advisor means the built-in policy (stored, then a hit).
    deploy(
        &edge,
        "eviction",
        "hostile-loop",
        shipped::HOSTILE,
        &[("mode", "loop"), ("prefix", "/bad/")],
    )
    .await;
    assert_eq!(edge.get("/bad/evict").await.status, 200);
    assert!(edge.get("/bad/evict").await.cache_status().contains("hit"));
    assert_eq!(up.count("/bad/evict"), 1);
    let m = metrics(&edge).await;
    // The router trapped on all three /bad/ requests (the eviction ones too), and each took
    // the default route.
    assert_eq!(
        metric(
            &m,
            "tessera_edge_plugin_calls_total",
            &[
                ("hook", "route"),
                ("plugin", "hostile-trap"),
                ("result", "trap")
            ]
        ),
        3.0
    );
    assert!(
        metric(
            &m,
            "tessera_edge_plugin_calls_total",
            &[
                ("hook", "eviction"),
                ("plugin", "hostile-loop"),
                ("result", "deadline")
            ]
        ) >= 1.0
    );

    // Refused deploys say why and change nothing.
    let r = deploy(&edge, "route", "x", shipped::SIGNED_URL, &[("key", "k")]).await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("tessera:policy/router@0.2.0")
    );
    let r = edge
        .admin_bytes(
            "POST",
            "/api/v1/plugins/route?name=x",
            Bytes::from_static(b"MZ\x90\0"),
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly component")
    );
    let r = deploy(
        &edge,
        "authorize",
        "spin",
        shipped::HOSTILE,
        &[("mode", "loop")],
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.json()["error"].as_str().unwrap().contains("deadline"));
    assert_eq!(
        edge.admin("POST", "/api/v1/plugins/nohook?name=x", "")
            .await
            .status,
        404
    );
    let l = edge.admin("GET", "/api/v1/plugins", "").await.json();
    let route = l["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "route")
        .unwrap();
    assert_eq!(route["current"]["name"], "hostile-trap");
    assert_eq!(
        get(&format!("http://{}/api/v1/plugins", edge.admin), &[])
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_under_load_fail_no_request_and_rollback_restores_the_old_behaviour() {
    let (main, canary) = (echo_upstream("main").await, echo_upstream("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream(main.url()), dir.path());
    cfg.upstreams.insert("canary".into(), canary.url());
    let edge = Arc::new(EdgeNode::start_with(cfg, false).await);
    deploy(
        &edge,
        "route",
        "v1",
        shipped::ROUTER,
        &[("route.1", "prefix=/none/ upstream=canary")],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (edge, stop, ok, failed) = (edge.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                // Bounded: stops when told, or after 20,000 requests.
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let r = edge.get(&format!("/app/{}", (n + i) % 50)).await;
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for v in 2..=6 {
        let rule = if v % 2 == 0 {
            "prefix=/app/ upstream=canary"
        } else {
            "prefix=/none/ upstream=canary"
        };
        let r = deploy(
            &edge,
            "route",
            &format!("v{v}"),
            shipped::ROUTER,
            &[("route.1", rule)],
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["deployed"]["name"], format!("v{v}"));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    // v6 sends /app/ to the canary; rolling back to v5 sends it to the main upstream again,
    // and rolling back once more returns to v6.
    assert_eq!(&edge.get("/app/x").await.body[..], b"canary /app/x");
    let r = edge
        .admin("POST", "/api/v1/plugins/route/rollback", "")
        .await;
    assert_eq!(r.json()["bound"]["name"], "v5");
    assert_eq!(&edge.get("/app/x").await.body[..], b"main /app/x");
    let r = edge
        .admin("POST", "/api/v1/plugins/route/rollback", "")
        .await;
    assert_eq!(r.json()["bound"]["name"], "v6");
    assert_eq!(&edge.get("/app/y").await.body[..], b"canary /app/y");
}

#[tokio::test]
async fn a_plugin_bound_in_the_config_that_fails_its_check_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Upstream("http://127.0.0.1:9".into()), dir.path());
    cfg.plugins.bind = vec![bind(Hook::Authorize, "signed-url", &[])];
    let e = tessera_edge::Edge::open(cfg.clone(), Default::default())
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("plugins.bind[0]") && msg.contains("--config key=SECRET"),
        "{msg}"
    );
    cfg.plugins.bind = vec![bind(Hook::Route, "/no/such/file.wasm", &[])];
    let e = tessera_edge::Edge::open(cfg, Default::default())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("/no/such/file.wasm"), "{e:#}");
}

async fn status(edge: &EdgeNode, path: &str) -> u16 {
    edge.get(path).await.status.as_u16()
}

/// The authorize slot as `GET /api/v1/plugins` lists it: (current name, version), previous.
async fn authorize_slot(edge: &EdgeNode) -> (Option<(String, u64)>, Option<(String, u64)>) {
    let list = edge.admin("GET", "/api/v1/plugins", "").await.json();
    let slot = list["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hook"] == "authorize")
        .unwrap()
        .clone();
    let one = |v: &serde_json::Value| {
        v.as_object().map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["version"].as_u64().unwrap(),
            )
        })
    };
    (one(&slot["current"]), one(&slot["previous"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_plugins_survive_restarts_and_a_changed_configuration_wins() {
    let up = echo_upstream("origin").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Backend::Upstream(up.url()), dir.path());
    let signed = shipped::sign_url(b"k3y", "hmac-sha256", "/a", now() + 300).unwrap();

    // A guard deployed at run time; a refused deploy uses up no version number.
    let edge = EdgeNode::start_with(cfg.clone(), false).await;
    let r = deploy(
        &edge,
        "route",
        "wrong",
        shipped::SIGNED_URL,
        &[("key", "k")],
    )
    .await;
    assert_eq!(r.status, 422);
    let r = deploy(
        &edge,
        "authorize",
        "guard",
        shipped::SIGNED_URL,
        &[("key", "k3y"), ("prefixes", "/")],
    )
    .await;
    assert_eq!(r.json()["deployed"]["version"], 1, "{:?}", r.body);
    assert_eq!(status(&edge, "/a").await, 403);
    edge.stop().await;

    // After a restart it guards the site before the first request, as version 1.
    let edge = EdgeNode::start_with(cfg.clone(), false).await;
    assert_eq!(status(&edge, "/a").await, 403);
    assert_eq!(status(&edge, &format!("/a?{signed}")).await, 200);
    assert_eq!(
        authorize_slot(&edge).await,
        (Some(("guard".into(), 1)), None)
    );
    // A second version, and a rollback to the first: both outlive the restart, rollback
    // included, and numbers go on from the highest given.
    deploy(
        &edge,
        "authorize",
        "open",
        shipped::SIGNED_URL,
        &[("key", "k3y"), ("prefixes", "/x/")],
    )
    .await;
    assert_eq!(status(&edge, "/a").await, 200);
    edge.admin("POST", "/api/v1/plugins/authorize/rollback", "")
        .await;
    edge.stop().await;
    let edge = EdgeNode::start_with(cfg.clone(), false).await;
    assert_eq!(status(&edge, "/a").await, 403);
    assert_eq!(
        authorize_slot(&edge).await,
        (Some(("guard".into(), 1)), Some(("open".into(), 2)))
    );
    let r = edge
        .admin("POST", "/api/v1/plugins/authorize/rollback", "")
        .await;
    assert_eq!(r.json()["bound"]["name"], "open");
    assert_eq!(status(&edge, "/a").await, 200);
    edge.stop().await;

    // The configuration now binds its own guard for the hook: it is newer than the run-time
    // deploys, so it wins, and then lasts as long as the configuration is unchanged.
    let mut with_guard = cfg.clone();
    with_guard.plugins.bind = vec![bind(
        Hook::Authorize,
        "signed-url",
        &[("key", "k3y"), ("prefixes", "/c/")],
    )];
    for _ in 0..2 {
        let edge = EdgeNode::start_with(with_guard.clone(), false).await;
        assert_eq!(
            (status(&edge, "/a").await, status(&edge, "/c/x").await),
            (200, 403)
        );
        assert_eq!(
            authorize_slot(&edge).await.0,
            Some(("signed-url".into(), 3))
        );
        edge.stop().await;
    }
    // A run-time removal of the configured guard lasts too, until the configuration changes.
    let edge = EdgeNode::start_with(with_guard.clone(), false).await;
    assert_eq!(
        edge.admin("DELETE", "/api/v1/plugins/authorize", "")
            .await
            .status,
        200
    );
    edge.stop().await;
    let edge = EdgeNode::start_with(with_guard.clone(), false).await;
    assert_eq!(status(&edge, "/c/x").await, 200);
    deploy(
        &edge,
        "authorize",
        "guard",
        shipped::SIGNED_URL,
        &[("key", "k3y"), ("prefixes", "/")],
    )
    .await;
    edge.stop().await;

    // A saved component that is damaged stops the start, naming it; nothing is served
    // unguarded.
    let plugins = dir.path().join("plugins");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plugins.join("state.json")).unwrap()).unwrap();
    let current = &state["hooks"]["authorize"]["current"];
    assert_eq!(current["config"]["key"], "k3y");
    let wasm = plugins.join(format!("{}.wasm", current["blake3"].as_str().unwrap()));
    let mut bytes = std::fs::read(&wasm).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&wasm, bytes).unwrap();
    let e = tessera_edge::Edge::open(with_guard.clone(), Default::default())
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("guard v4") && msg.contains("damaged") && msg.contains("does not start"),
        "{msg}"
    );
    // The state file holds the signing key: its owner alone reads it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(plugins.join("state.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

/// `size-eviction` in origin mode, where a file is a manifest and chunks: a file over
/// `memory-max-bytes` is kept on the SSD tier only, chunks and all (never assembled in
/// memory), and a type in `never-cache-types` is not kept at all, and is labelled so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_eviction_governs_a_files_chunks_in_origin_mode() {
    let origin = Origin::start().await;
    let big = noise(3 << 20, 41);
    origin.publish("big.bin", big.clone()).await;
    origin.publish("doc.pdf", noise(600_000, 42)).await;
    origin.publish("small.txt", "small").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Origin(vec![origin.url()]), dir.path());
    cfg.follow_changes = false;
    cfg.plugins.bind = vec![bind(
        Hook::Eviction,
        "size-eviction",
        &[
            ("memory-max-bytes", "1000000"),
            ("never-cache-types", "application/pdf"),
        ],
    )];
    let edge = EdgeNode::start_with(cfg, false).await;
    let before = edge.edge.cache().memory_usage();
    for i in 0..3 {
        let r = edge.get("/big.bin").await;
        assert!(r.body == big, "read {i}");
        assert!(
            !r.cache_status().contains("detail=memory"),
            "read {i}: {}",
            r.cache_status()
        );
    }
    let grown = edge.edge.cache().memory_usage().saturating_sub(before);
    assert!(
        grown < 1_000_000,
        "a 3 MiB file went to memory: +{grown} bytes"
    );
    let chunks = edge.origin_chunks();
    let r = edge.get("/big.bin").await;
    assert!(
        r.cache_status().contains("detail=disk"),
        "{}",
        r.cache_status()
    );
    assert_eq!(edge.origin_chunks(), chunks, "served from the SSD tier");

    for i in 0..2 {
        let r = edge.get("/doc.pdf").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.cache_status(), "tessera; fwd=miss", "read {i}");
    }
    assert_eq!(
        edge.origin_fetches("manifest"),
        3,
        "big.bin once, doc.pdf on each read"
    );
    for _ in 0..2 {
        assert_eq!(edge.get("/small.txt").await.status, 200);
    }
    assert!(
        edge.get("/small.txt")
            .await
            .cache_status()
            .contains("detail=memory")
    );
}

/// A plugin's configuration is checked at deploy: a key it never asks for (a typo), a
/// reference to an upstream the edge lacks, a missing required key; each is refused with
/// the plugin's own words, and uses up no version number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_configuration_is_checked_at_deploy() {
    let up = echo_upstream("origin").await;
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeNode::start_with(config(Backend::Upstream(up.url()), dir.path()), false).await;
    let refused = |r: Reply| {
        assert_eq!(r.status, 422, "{:?}", r.body);
        r.json()["error"].as_str().unwrap().to_string()
    };
    let e = refused(
        deploy(
            &edge,
            "authorize",
            "guard",
            shipped::SIGNED_URL,
            &[("key", "k"), ("prefix", "/private/")],
        )
        .await,
    );
    assert!(
        e.starts_with("the plugin refused its configuration: unknown key prefix: guard asked for")
            && e.contains("prefixes"),
        "{e}"
    );
    let e = refused(
        deploy(
            &edge,
            "route",
            "r",
            shipped::ROUTER,
            &[("route.1", "prefix=/app/ upstream=canary")],
        )
        .await,
    );
    assert!(
        e.contains("route.1: no upstream named \"canary\" on this edge (it has none"),
        "{e}"
    );
    let e = refused(deploy(&edge, "authorize", "guard", shipped::SIGNED_URL, &[]).await);
    assert_eq!(
        e,
        "the plugin refused its configuration: signed-url needs --config key=SECRET"
    );
    let e = refused(
        deploy(
            &edge,
            "authorize",
            "guard",
            shipped::SIGNED_URL,
            &[("key", "k"), ("tessera.upstreams", "x")],
        )
        .await,
    );
    assert!(e.contains("are the host's"), "{e}");
    // None of that was bound or numbered.
    assert_eq!(edge.get("/private/a").await.status, 200);
    let r = deploy(
        &edge,
        "authorize",
        "guard",
        shipped::SIGNED_URL,
        &[("key", "k"), ("prefixes", "/private/")],
    )
    .await;
    assert_eq!(r.json()["deployed"]["version"], 1, "{:?}", r.body);
    assert_eq!(edge.get("/private/a").await.status, 403);
}
