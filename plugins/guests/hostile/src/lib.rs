//! `hostile`: a plugin that misbehaves on purpose, for the edge's tests. It exports all three
//! hooks; the deploy configuration's `mode` says how it fails on every call:
//! - `loop`: never returns (the CPU deadline must stop it);
//! - `memory`: allocates until memory runs out (the memory cap must stop it);
//! - `trap`: traps (the instance must be replaced);
//! - `huge`: answers with a 4 MiB body (the limit is 1 MiB), or 10,000 pieces of advice;
//! - `bad-header`: answers with a header name no HTTP version allows;
//! - `ok`: behaves (allow, default route, built-in advice), for checks that it still can;
//! - `echo`: behaves, except that `route` answers 200 with what each accessor of the
//!   request returned, one `name=value` line each (the host's accessors under test).
//!
//! It misbehaves only for paths under the `prefix` setting (default `/`, every path): with
//! `prefix=/bad/` it passes the deploy's check call and fails on the requests the test
//! aims at it.
//!
//! Not shipped: the edge's tests deploy it; a trap in `mode` parsing is itself a failure the
//! edge must contain.

wit_bindgen::generate!({
    inline: r#"
        package tessera:hostile;
        world hostile {
            include tessera:policy/route@0.2.0;
            include tessera:policy/authorize@0.2.0;
            include tessera:policy/eviction@0.2.0;
        }
    "#,
    path: "../../../wit",
    world: "tessera:hostile/hostile",
    generate_all,
});

use exports::tessera::policy::advisor::{self, Advice, Object};
use exports::tessera::policy::authorizer::{self, Verdict};
use exports::tessera::policy::router::{self, Decision};
use tessera::policy::host;
use tessera::policy::types::{self, Request, Response};

#[derive(PartialEq)]
enum Mode {
    Loop,
    Memory,
    Trap,
    Huge,
    BadHeader,
    Ok,
    Echo,
}

fn mode() -> Mode {
    match host::config("mode").as_deref() {
        Some("loop") => Mode::Loop,
        Some("memory") => Mode::Memory,
        Some("trap") => Mode::Trap,
        Some("huge") => Mode::Huge,
        Some("bad-header") => Mode::BadHeader,
        Some("ok") => Mode::Ok,
        Some("echo") => Mode::Echo,
        other => panic!("hostile: unknown mode {other:?}"),
    }
}

/// Misbehaves as configured when `path` is under the prefix; returns only in the modes that
/// answer something.
fn misbehave(path: &str) -> Mode {
    // Both settings are read on every call (the host refuses a key a plugin's first call
    // never asked for).
    let (prefix, mode) = (host::config("prefix").unwrap_or_else(|| "/".into()), mode());
    if !path.starts_with(&prefix) {
        return Mode::Ok;
    }
    match mode {
        Mode::Loop => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Mode::Memory => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch every page so the memory is really used.
                hoard.push(vec![0xA5; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Mode::Trap => core::arch::wasm32::unreachable(),
        m => m,
    }
}

fn bad_response(m: Mode) -> Response {
    if m == Mode::Huge {
        Response {
            status: 200,
            headers: Vec::new(),
            body: vec![b'x'; 4 << 20],
        }
    } else {
        Response {
            status: 200,
            headers: vec![("bad header\r\n".into(), "x".into())],
            body: b"leaked?".to_vec(),
        }
    }
}

/// What the request's accessors return, a `name=value` line each.
fn echo(req: &Request) -> Response {
    let protocol = match req.protocol() {
        types::Protocol::Http1 => "http1",
        types::Protocol::Http2 => "http2",
        types::Protocol::Http3 => "http3",
    };
    let x_test = req
        .headers()
        .into_iter()
        .filter(|(k, _)| k == "x-test")
        .map(|(_, v)| v)
        .collect::<Vec<_>>()
        .join("|");
    let lines = [
        ("method", req.method()),
        ("scheme", req.scheme()),
        ("authority", req.authority()),
        ("path", req.path()),
        ("query", req.query().unwrap_or_else(|| "(none)".into())),
        (
            "header",
            req.header("X-Test").unwrap_or_else(|| "(none)".into()),
        ),
        ("header-values", req.header_values("x-test").join("|")),
        ("headers", x_test),
        (
            "missing",
            req.header("x-missing").unwrap_or_else(|| "(none)".into()),
        ),
        ("client", req.client()),
        ("protocol", protocol.into()),
    ];
    let body: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    Response {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: body.into_bytes(),
    }
}

struct Hostile;

impl authorizer::Guest for Hostile {
    fn authorize(req: &Request) -> Verdict {
        match misbehave(&req.path()) {
            Mode::Ok | Mode::Echo => Verdict::Allow,
            m => Verdict::Deny(bad_response(m)),
        }
    }
}

impl router::Guest for Hostile {
    fn route(req: &Request) -> Decision {
        match misbehave(&req.path()) {
            Mode::Ok => Decision::Default,
            Mode::Echo => Decision::Respond(echo(req)),
            m => Decision::Respond(bad_response(m)),
        }
    }
}

impl advisor::Guest for Hostile {
    fn advise(objects: Vec<Object>) -> Vec<Advice> {
        let m = objects
            .iter()
            .map(|o| misbehave(&o.path))
            .find(|m| *m != Mode::Ok)
            .unwrap_or(Mode::Ok);
        let n = if m == Mode::Ok || m == Mode::Echo {
            objects.len()
        } else {
            10_000
        };
        (0..n)
            .map(|_| Advice {
                admit: true,
                tier: advisor::Tier::Both,
                ttl_secs: None,
                priority: advisor::Priority::Normal,
            })
            .collect()
    }
}

export!(Hostile);
