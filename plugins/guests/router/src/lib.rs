//! `router`: routes requests by path prefix, host and header to the edge's named upstreams,
//! with percentage splits (canary releases) and redirects, as a `route` plugin.
//!
//! Rules come from the deploy configuration as `route.1`, `route.2`, … (read in order until
//! the first missing number); the first rule that matches decides, and a request no rule
//! matches takes the edge's default route. A rule is space-separated `name=value` pairs:
//!
//! Conditions (all given must hold):
//! - `prefix=/api/`: the path starts with it.
//! - `host=img.example.com`: the request's host, without port, equals it.
//! - `header=x-beta:1` (the header has this value) or `header=x-beta` (it is present).
//! - `split=10`: only 10 % of clients, chosen by a stable hash (BLAKE3) of `by`:
//!   `by=cookie:NAME` (that cookie's value; clients without it use their address) or
//!   `by=client` (the client's IP address, the default). A client stays on its side.
//!
//! Actions (one of):
//! - `upstream=NAME`: fetch from that named upstream. With `rewrite=/v2/`, the matched
//!   `prefix` is replaced by it.
//! - `redirect=301 location=https://new.example.com/`: answer with this redirect; the rest
//!   of the path after `prefix` is appended to `location`, and the query kept.
//! - `status=410`: answer with this status and a JSON body.
//!
//! Example: `--config 'route.1=prefix=/app/ split=5 by=cookie:uid upstream=canary'
//! --config 'route.2=prefix=/app/ upstream=stable'`.

use std::cell::OnceCell;
use std::sync::OnceLock;

wit_bindgen::generate!({ path: "../../../wit", world: "route" });

use exports::tessera::policy::router::{Decision, Forward, Guest};
use tessera::policy::host::{self, Level};
use tessera::policy::types::{Request, Response};

#[derive(Debug, Default)]
struct Rule {
    prefix: Option<String>,
    host: Option<String>,
    header: Option<(String, Option<String>)>,
    split: Option<(u64, Option<String>)>,
    action: Action,
}

#[derive(Debug, Default)]
enum Action {
    #[default]
    None,
    Upstream {
        name: String,
        rewrite: Option<String>,
    },
    Redirect {
        status: u16,
        location: String,
    },
    Status(u16),
}

fn parse_rule(n: u32, text: &str) -> Result<Rule, String> {
    let mut r = Rule::default();
    let (mut upstream, mut rewrite, mut redirect, mut location, mut status, mut by) =
        (None, None, None, None, None, None);
    let mut split = None;
    for pair in text.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("route.{n}: {pair:?} is not name=value"))?;
        let v = v.to_string();
        match k {
            "prefix" => r.prefix = Some(v),
            "host" => r.host = Some(v.to_ascii_lowercase()),
            "header" => {
                r.header = Some(match v.split_once(':') {
                    Some((name, value)) => (name.to_ascii_lowercase(), Some(value.to_string())),
                    None => (v.to_ascii_lowercase(), None),
                })
            }
            "split" => {
                let pct: u64 = v
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| format!("route.{n}: split={v} is not a percentage 0-100"))?;
                split = Some(pct);
            }
            "by" => {
                if v != "client" && !v.starts_with("cookie:") {
                    return Err(format!("route.{n}: by={v} is not client or cookie:NAME"));
                }
                by = Some(v)
            }
            "upstream" => upstream = Some(v),
            "rewrite" => rewrite = Some(v),
            "redirect" => redirect = Some(v),
            "location" => location = Some(v),
            "status" => status = Some(v),
            other => return Err(format!("route.{n}: unknown name {other:?}")),
        }
    }
    if let Some(pct) = split {
        r.split = Some((
            pct,
            by.and_then(|b| b.strip_prefix("cookie:").map(str::to_string)),
        ));
    }
    let code = |s: &str, lo: u16, hi: u16| {
        s.parse::<u16>()
            .ok()
            .filter(|c| (lo..=hi).contains(c))
            .ok_or_else(|| format!("route.{n}: status {s} is not in {lo}-{hi}"))
    };
    r.action = match (upstream, redirect, status) {
        (Some(name), None, None) => Action::Upstream { name, rewrite },
        (None, Some(s), None) => Action::Redirect {
            status: code(&s, 300, 399)?,
            location: location.ok_or_else(|| format!("route.{n}: redirect needs location="))?,
        },
        (None, None, Some(s)) => Action::Status(code(&s, 200, 599)?),
        _ => {
            return Err(format!(
                "route.{n}: give exactly one of upstream=, redirect= or status="
            ));
        }
    };
    Ok(r)
}

/// Parsed once per instance: a deployed version's configuration never changes.
static RULES: OnceLock<Result<Vec<Rule>, String>> = OnceLock::new();

fn rules() -> &'static Result<Vec<Rule>, String> {
    RULES.get_or_init(|| {
        let mut rules = Vec::new();
        for n in 1.. {
            match host::config(&format!("route.{n}")) {
                Some(text) => rules.push(parse_rule(n, &text)?),
                None => break,
            }
        }
        // The edge names its upstreams: a rule sending requests to one it lacks is refused
        // at deploy rather than falling back to the default route on every request.
        if let Some(known) = host::config("tessera.upstreams") {
            let known: Vec<&str> = known.split(',').filter(|s| !s.is_empty()).collect();
            for (i, r) in rules.iter().enumerate() {
                if let Action::Upstream { name, .. } = &r.action
                    && !known.contains(&name.as_str())
                {
                    return Err(format!(
                        "route.{}: no upstream named {name:?} on this edge (it has {})",
                        i + 1,
                        if known.is_empty() {
                            "none: add [upstreams] to its configuration".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            }
        }
        Ok(rules)
    })
}

/// The request, read from the edge as the rules need it: the path always, the rest when a
/// rule asks (each read is a call into the edge and a copy).
struct View<'a> {
    req: &'a Request,
    path: String,
    authority: OnceCell<String>,
}

impl View<'_> {
    fn authority(&self) -> &str {
        self.authority.get_or_init(|| self.req.authority())
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.req
            .header_values("cookie")
            .iter()
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| v.to_string())
            })
    }
}

fn matches(rule: &Rule, req: &View<'_>) -> bool {
    if let Some(p) = &rule.prefix
        && !req.path.starts_with(p.as_str())
    {
        return false;
    }
    if let Some(h) = &rule.host {
        let authority = req.authority();
        let host = authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        });
        if !host.eq_ignore_ascii_case(h) {
            return false;
        }
    }
    if let Some((name, want)) = &rule.header {
        let ok = match want {
            Some(w) => req.req.header_values(name).iter().any(|v| v == w),
            None => req.req.header(name).is_some(),
        };
        if !ok {
            return false;
        }
    }
    if let Some((pct, cookie_name)) = &rule.split {
        let who = cookie_name
            .as_deref()
            .and_then(|c| req.cookie(c))
            .unwrap_or_else(|| req.req.client());
        let h = host::blake3(who.as_bytes());
        let bucket = u64::from_le_bytes(h[..8].try_into().unwrap()) % 100;
        if bucket >= *pct {
            return false;
        }
    }
    true
}

fn json(status: u16, message: &str, extra: Vec<(String, String)>) -> Decision {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(extra);
    Decision::Respond(Response {
        status,
        headers,
        body: format!("{{\"error\":{message:?}}}\n").into_bytes(),
    })
}

struct Router;

impl Guest for Router {
    fn route(req: &Request) -> Decision {
        let rules = match rules() {
            Ok(r) => r,
            Err(e) => {
                host::log(Level::Error, e);
                // The edge counts the failure and takes the default route.
                panic!("{e}");
            }
        };
        let view = View {
            req,
            path: req.path(),
            authority: OnceCell::new(),
        };
        let Some(rule) = rules.iter().find(|r| matches(r, &view)) else {
            return Decision::Default;
        };
        let rest = rule
            .prefix
            .as_deref()
            .and_then(|p| view.path.strip_prefix(p))
            .unwrap_or(&view.path);
        let query = req.query().map(|q| format!("?{q}")).unwrap_or_default();
        match &rule.action {
            Action::None => Decision::Default,
            Action::Upstream { name, rewrite } => Decision::Forward(Forward {
                upstream: Some(name.clone()),
                path: rewrite.as_ref().map(|r| format!("{r}{rest}{query}")),
                set_headers: Vec::new(),
                remove_headers: Vec::new(),
            }),
            Action::Redirect { status, location } => {
                let to = if rule.prefix.is_some() {
                    format!("{location}{rest}{query}")
                } else {
                    location.clone()
                };
                json(
                    *status,
                    &format!("moved to {to}"),
                    vec![("location".into(), to)],
                )
            }
            Action::Status(s) => json(*s, "refused by a routing rule", Vec::new()),
        }
    }
}

export!(Router);
