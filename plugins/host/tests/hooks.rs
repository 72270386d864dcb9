//! The plugin host with real components: the shipped plugins built from `plugins/guests/`,
//! and the hostile one. Through a real edge and HTTP: `edge/tests/plugins.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tessera_plugins::shipped;
use tessera_plugins::{
    Advice, Decision, DeployError, Failure, Hook, Limits, Object, PluginHost, Priority, Protocol,
    Request, Tier, Verdict,
};

fn host() -> PluginHost {
    PluginHost::new(Limits::default(), &prometheus::Registry::new()).unwrap()
}

fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn request(path: &str, query: Option<&str>) -> Request {
    let target = match query {
        Some(q) => format!("https://cdn.example.com{path}?{q}"),
        None => format!("https://cdn.example.com{path}"),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("accept", http::HeaderValue::from_static("*/*"));
    Request {
        method: http::Method::GET,
        tls: true,
        uri: target.parse().unwrap(),
        headers,
        client: [192, 0, 2, 7].into(),
        protocol: Protocol::Http2,
    }
}

fn add_header(req: &mut Request, name: &'static str, value: &str) {
    req.headers
        .append(name, http::HeaderValue::from_str(value).unwrap());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac(key: &str, msg: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    hex(ring::hmac::sign(&k, msg.as_bytes()).as_ref())
}

fn denied(v: Option<Result<Verdict, Failure>>) -> (u16, String) {
    match v.expect("bound").expect("no failure") {
        Verdict::Allow => panic!("allowed"),
        Verdict::Deny(r) => (r.status, String::from_utf8(r.body).unwrap()),
    }
}

fn allowed(v: Option<Result<Verdict, Failure>>) -> bool {
    matches!(v, Some(Ok(Verdict::Allow)))
}

#[test]
fn signed_url_allows_good_signatures_and_refuses_the_rest() {
    let h = host();
    h.deploy(
        Hook::Authorize,
        "signed-url",
        shipped::SIGNED_URL,
        config(&[("key", "s3cret"), ("prefixes", "/private/,/paid/")]),
    )
    .unwrap();
    let exp = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600)
        .to_string();
    let sig = hmac("s3cret", &format!("/private/a.mp4?expires={exp}"));
    let good = format!("expires={exp}&sig={sig}");
    assert!(allowed(
        h.authorize(&mut request("/private/a.mp4", Some(&good)))
    ));
    assert!(allowed(h.authorize(&mut request("/public/a.mp4", None))));
    let (s, body) = denied(h.authorize(&mut request("/private/a.mp4", None)));
    assert_eq!(s, 403);
    assert!(body.contains("needs a signature"), "{body}");
    // The signature covers the path: moved to another file, it is a forgery.
    let (s, body) = denied(h.authorize(&mut request("/private/b.mp4", Some(&good))));
    assert_eq!((s, body.contains("does not match")), (403, true), "{body}");
    let forged = format!(
        "expires={exp}&sig={}",
        hmac("guess", &format!("/private/a.mp4?expires={exp}"))
    );
    assert_eq!(
        denied(h.authorize(&mut request("/private/a.mp4", Some(&forged)))).0,
        403
    );
    let old = "1600000000";
    let sig_old = hmac("s3cret", &format!("/paid/x?expires={old}"));
    let (s, body) = denied(h.authorize(&mut request(
        "/paid/x",
        Some(&format!("expires={old}&sig={sig_old}")),
    )));
    assert_eq!((s, body.contains("expired")), (403, true), "{body}");

    // Keyed BLAKE3 instead of HMAC.
    h.deploy(
        Hook::Authorize,
        "signed-url-b3",
        shipped::SIGNED_URL,
        config(&[("key", "k"), ("algorithm", "blake3")]),
    )
    .unwrap();
    let key = blake3::hash(b"k");
    let mac = blake3::keyed_hash(key.as_bytes(), format!("/a?expires={exp}").as_bytes());
    let q = format!("expires={exp}&sig={}", mac.to_hex());
    assert!(allowed(h.authorize(&mut request("/a", Some(&q)))));
    assert_eq!(denied(h.authorize(&mut request("/a", Some(&good)))).0, 403);
}

#[test]
fn signed_url_without_a_key_is_refused_at_deploy_with_its_reason() {
    let h = host();
    let e = h
        .deploy(
            Hook::Authorize,
            "signed-url",
            shipped::SIGNED_URL,
            config(&[]),
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DeployError::BadConfig(_)), "{msg}");
    assert_eq!(
        msg,
        "the plugin refused its configuration: signed-url needs --config key=SECRET"
    );
    assert!(!h.is_bound(Hook::Authorize));
}

fn forward_to(d: Option<Result<Decision, Failure>>) -> (Option<String>, Option<String>) {
    match d.expect("bound").expect("no failure") {
        Decision::Forward(f) => (f.upstream, f.path),
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn router_routes_by_prefix_host_and_header_splits_and_redirects() {
    let h = host();
    h.deploy(
        Hook::Route,
        "router",
        shipped::ROUTER,
        config(&[
            ("route.1", "header=x-beta:1 upstream=beta"),
            ("route.2", "host=img.example.com upstream=images"),
            ("route.3", "prefix=/api/ rewrite=/v2/ upstream=api"),
            (
                "route.4",
                "prefix=/app/ split=20 by=cookie:uid upstream=canary",
            ),
            (
                "route.5",
                "prefix=/old/ redirect=301 location=https://cdn.example.com/new/",
            ),
        ]),
    )
    .unwrap();
    let known = |u: &str| ["beta", "images", "api", "canary"].contains(&u);
    let mut req = request("/api/users", Some("page=2"));
    assert_eq!(
        forward_to(h.route(&mut req, &known)),
        (Some("api".into()), Some("/v2/users?page=2".into()))
    );
    add_header(&mut req, "x-beta", "1");
    assert_eq!(
        forward_to(h.route(&mut req, &known)).0.as_deref(),
        Some("beta")
    );
    let mut img = request("/a.png", None);
    add_header(&mut img, "host", "img.example.com:8443");
    assert_eq!(
        forward_to(h.route(&mut img, &known)).0.as_deref(),
        Some("images")
    );
    match h
        .route(&mut request("/old/a/b.css", Some("v=1")), &known)
        .unwrap()
        .unwrap()
    {
        Decision::Respond(r) => {
            assert_eq!(r.status, 301);
            assert!(r.headers.contains(&(
                "location".into(),
                "https://cdn.example.com/new/a/b.css?v=1".into()
            )));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.route(&mut request("/other", None), &known),
        Some(Ok(Decision::Default))
    ));
    // The canary split: about 20 % of users, each always on the same side.
    let mut canary = 0;
    for user in 0..1000 {
        let mut r = request("/app/index.html", None);
        add_header(&mut r, "cookie", &format!("theme=dark; uid=user{user}"));
        let first = h.route(&mut r, &known).unwrap().unwrap();
        let again = h.route(&mut r, &known).unwrap().unwrap();
        assert_eq!(format!("{first:?}"), format!("{again:?}"));
        if matches!(first, Decision::Forward(_)) {
            canary += 1;
        }
    }
    assert!(
        (150..=250).contains(&canary),
        "{canary} of 1000 on the canary"
    );
}

#[test]
fn router_naming_an_unknown_upstream_is_a_failure() {
    let h = host();
    h.deploy(
        Hook::Route,
        "router",
        shipped::ROUTER,
        config(&[("route.1", "upstream=nowhere")]),
    )
    .unwrap();
    let r = h.route(&mut request("/", None), &|_| false).unwrap();
    assert!(
        matches!(r, Err(Failure::Invalid(ref m)) if m.contains("nowhere")),
        "{r:?}"
    );
    let e = h
        .deploy(
            Hook::Route,
            "router",
            shipped::ROUTER,
            config(&[("route.1", "prefix=/ split=x")]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("route.1: split=x"), "{e}");
}

fn object(path: &str, size: u64, ct: &str) -> Object {
    Object {
        key: "ab".repeat(32),
        path: path.into(),
        size,
        content_type: Some(ct.into()),
        status: 200,
        hits: 0,
        last_hit_secs: None,
        ttl_secs: 60,
    }
}

#[test]
fn size_eviction_advises_by_size_type_and_prefix_in_batches() {
    let h = host();
    h.deploy(
        Hook::Eviction,
        "size-eviction",
        shipped::SIZE_EVICTION,
        config(&[
            ("memory-max-bytes", "65536"),
            ("never-cache-types", "text/event-stream"),
            ("long-ttl-prefixes", "/static/"),
            ("long-ttl-secs", "604800"),
        ]),
    )
    .unwrap();
    let advice: Vec<Advice> = h
        .advise(&[
            object("/a.js", 1000, "text/javascript"),
            object("/video.mp4", 10 << 20, "video/mp4"),
            object("/events", 10, "text/event-stream; charset=utf-8"),
            object("/static/logo.svg", 500, "image/svg+xml"),
        ])
        .unwrap()
        .unwrap();
    assert_eq!(advice.len(), 4);
    assert!(advice[0].admit && advice[0].tier == Tier::Both && advice[0].ttl_secs.is_none());
    assert!(advice[1].admit && advice[1].tier == Tier::Disk);
    assert!(!advice[2].admit);
    assert_eq!(advice[3].ttl_secs, Some(604_800));
    assert!(advice.iter().all(|a| a.priority == Priority::Normal));
}

fn hostile(h: &PluginHost, hook: Hook, mode: &str) {
    h.deploy(
        hook,
        &format!("hostile-{mode}"),
        shipped::HOSTILE,
        config(&[("mode", mode), ("prefix", "/bad/")]),
    )
    .unwrap();
}

#[test]
fn a_looping_plugin_is_stopped_at_its_deadline_and_replaced() {
    let h = host();
    hostile(&h, Hook::Authorize, "loop");
    for _ in 0..3 {
        let t = Instant::now();
        let r = h.authorize(&mut request("/bad/x", None)).unwrap();
        assert_eq!(r.unwrap_err(), Failure::Deadline(5));
        // 5 ms deadline, 1 ms ticks: stopped well before anything a client would notice.
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(allowed(h.authorize(&mut request("/good", None))));
    }
    // With every path hostile, the deploy's check call catches it.
    let e = h
        .deploy(
            Hook::Route,
            "loop",
            shipped::HOSTILE,
            config(&[("mode", "loop")]),
        )
        .unwrap_err();
    assert!(
        matches!(e, DeployError::CheckFailed(Failure::Deadline(_))),
        "{e}"
    );
}

#[test]
fn a_memory_bomb_hits_its_cap_and_traps_and_other_calls_go_on() {
    // A small cap and a long deadline, so the cap (not the deadline) is what stops it.
    let limits = Limits {
        memory_bytes: 4 << 20,
        deadline_ms: 500,
        ..Limits::default()
    };
    let h = PluginHost::new(limits, &prometheus::Registry::new()).unwrap();
    hostile(&h, Hook::Route, "memory");
    for _ in 0..3 {
        let r = h.route(&mut request("/bad/x", None), &|_| true).unwrap();
        assert_eq!(r.unwrap_err(), Failure::Memory(4 << 20));
        assert!(matches!(
            h.route(&mut request("/fine", None), &|_| true),
            Some(Ok(Decision::Default))
        ));
    }
}

#[test]
fn trapping_huge_and_malformed_answers_are_failures_not_answers() {
    let h = host();
    hostile(&h, Hook::Authorize, "trap");
    for _ in 0..5 {
        let r = h.authorize(&mut request("/bad/", None)).unwrap();
        assert!(matches!(r, Err(Failure::Trap(_))), "{r:?}");
    }
    assert!(allowed(h.authorize(&mut request("/ok", None))));
    hostile(&h, Hook::Authorize, "huge");
    let r = h.authorize(&mut request("/bad/", None)).unwrap();
    assert!(
        matches!(r, Err(Failure::Invalid(ref m)) if m.contains("body of 4194304 bytes")),
        "{r:?}"
    );
    hostile(&h, Hook::Authorize, "bad-header");
    let r = h.authorize(&mut request("/bad/", None)).unwrap();
    assert!(
        matches!(r, Err(Failure::Invalid(ref m)) if m.contains("invalid header name")),
        "{r:?}"
    );
    hostile(&h, Hook::Eviction, "huge");
    let r = h.advise(&[object("/bad/a", 1, "text/plain")]).unwrap();
    assert!(
        matches!(r, Err(Failure::Invalid(ref m)) if m.contains("for 1 objects")),
        "{r:?}"
    );
}

#[test]
fn deploys_check_the_world_and_the_bytes() {
    let h = host();
    let e = h
        .deploy(
            Hook::Route,
            "x",
            shipped::SIGNED_URL,
            config(&[("key", "k")]),
        )
        .unwrap_err();
    assert!(matches!(e, DeployError::WrongWorld { .. }), "{e}");
    assert!(e.to_string().contains("tessera:policy/router@0.2.0"), "{e}");
    let e = h
        .deploy(Hook::Authorize, "x", b"not wasm at all", config(&[]))
        .unwrap_err();
    assert!(matches!(e, DeployError::NotAComponent(_)), "{e}");
    // A core module (no component wrapper) is not a component either.
    let e = h
        .deploy(Hook::Authorize, "x", b"\0asm\x01\0\0\0", config(&[]))
        .unwrap_err();
    assert!(matches!(e, DeployError::NotAComponent(_)), "{e}");
    let e = h
        .deploy(
            Hook::Authorize,
            "no spaces",
            shipped::SIGNED_URL,
            config(&[("key", "k")]),
        )
        .unwrap_err();
    assert!(matches!(e, DeployError::BadInput(_)), "{e}");
    assert!(
        h.list()
            .iter()
            .all(|s| s.current.is_none() && s.previous.is_none())
    );
}

#[test]
fn rollback_restores_the_previous_version() {
    let h = host();
    assert!(matches!(
        h.rollback(Hook::Authorize),
        Err(DeployError::NoPrevious(_))
    ));
    let a = h
        .deploy(
            Hook::Authorize,
            "strict",
            shipped::SIGNED_URL,
            config(&[("key", "k")]),
        )
        .unwrap();
    let b = h
        .deploy(
            Hook::Authorize,
            "open",
            shipped::HOSTILE,
            config(&[("mode", "ok")]),
        )
        .unwrap();
    assert!(b.version > a.version);
    assert!(allowed(h.authorize(&mut request("/x", None))));
    let back = h.rollback(Hook::Authorize).unwrap();
    assert_eq!(back, a);
    assert_eq!(denied(h.authorize(&mut request("/x", None))).0, 403);
    let slot = &h.list()[0];
    assert_eq!(slot.current.as_ref(), Some(&a));
    assert_eq!(slot.previous.as_ref(), Some(&b));
    assert_eq!(h.remove(Hook::Authorize), Some(a));
    assert!(h.authorize(&mut request("/x", None)).is_none());
}

#[test]
fn calls_during_deploys_never_fail() {
    let h = host();
    h.deploy(
        Hook::Route,
        "r1",
        shipped::ROUTER,
        config(&[("route.1", "prefix=/a upstream=x")]),
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let d = h.route(&mut request("/a", None), &|_| true).unwrap();
                    assert!(matches!(d, Ok(Decision::Forward(_))), "{d:?}");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for i in 0..10 {
        let rule = format!("prefix=/a upstream=u{i}");
        h.deploy(
            Hook::Route,
            "r",
            shipped::ROUTER,
            config(&[("route.1", &rule)]),
        )
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(calls > 0);
}

/// `tessera_edge_plugin_{calls,reused}_total` of a hook, from `registry`.
fn calls_and_reuses(registry: &prometheus::Registry, hook: &str) -> (u64, u64) {
    let (mut calls, mut reused) = (0, 0);
    for family in registry.gather() {
        for m in family.get_metric() {
            let on_hook = m
                .get_label()
                .iter()
                .any(|l| l.name() == "hook" && l.value() == hook);
            if !on_hook {
                continue;
            }
            let v = m.get_counter().get_value() as u64;
            match family.name() {
                "tessera_edge_plugin_calls_total" => calls += v,
                "tessera_edge_plugin_reused_total" => reused += v,
                _ => {}
            }
        }
    }
    (calls, reused)
}

#[test]
fn decisions_are_reused_only_for_the_same_reads_and_expire_on_time() {
    let registry = prometheus::Registry::new();
    let h = PluginHost::new(Limits::default(), &registry).unwrap();
    h.deploy(
        Hook::Authorize,
        "signed-url",
        shipped::SIGNED_URL,
        config(&[("key", "k"), ("prefixes", "/p/")]),
    )
    .unwrap();
    let before = calls_and_reuses(&registry, "authorize");
    // Expires at the start of the next second but one: allowed now, refused after.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let good = format!(
        "expires={exp}&sig={}",
        hmac("k", &format!("/p/a?expires={exp}"))
    );
    for _ in 0..3 {
        assert!(allowed(h.authorize(&mut request("/p/a", Some(&good)))));
    }
    let forged = good.replace("sig=", "sig=0");
    assert_eq!(
        denied(h.authorize(&mut request("/p/a", Some(&forged)))).0,
        403
    );
    let after = calls_and_reuses(&registry, "authorize");
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (2, 2),
        "one call per distinct URL, the repeats reused"
    );
    // The reused allow asks the clock again: once the URL has expired it is refused.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        < exp
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, body) = denied(h.authorize(&mut request("/p/a", Some(&good))));
    assert_eq!(s, 403);
    assert!(body.contains("expired"), "{body}");

    // A route decision depends on the headers the router read, and only on those.
    h.deploy(
        Hook::Route,
        "router",
        shipped::ROUTER,
        config(&[("route.1", "header=x-beta:1 upstream=beta")]),
    )
    .unwrap();
    let known = |_: &str| true;
    let mut beta = request("/x", None);
    add_header(&mut beta, "x-beta", "1");
    for _ in 0..2 {
        assert_eq!(
            forward_to(h.route(&mut beta, &known)).0.as_deref(),
            Some("beta")
        );
        assert!(matches!(
            h.route(&mut request("/x", None), &known),
            Some(Ok(Decision::Default))
        ));
    }
    let mut other = request("/x", None);
    add_header(&mut other, "accept-language", "fr");
    assert!(matches!(
        h.route(&mut other, &known),
        Some(Ok(Decision::Default))
    ));
    let (calls, reused) = calls_and_reuses(&registry, "route");
    assert_eq!(
        (calls, reused),
        (3, 3),
        "check call, beta, none; then reused"
    );

    // A failure is never reused: the plugin is called again.
    hostile(&h, Hook::Route, "trap");
    let before = calls_and_reuses(&registry, "route");
    for _ in 0..3 {
        let r = h.route(&mut request("/bad/x", None), &known);
        assert!(matches!(r, Some(Err(Failure::Trap(_)))), "{r:?}");
    }
    let after = calls_and_reuses(&registry, "route");
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (3, 0),
        "failures are never reused"
    );
}
