//! The edge's side of the plugin hooks ([`tessera_plugins`]): requests handed to
//! `authorize` and `route`, their answers applied, the failure policy of each hook, the
//! eviction advice applied to what the cache stores, and the admin API's deploy, list,
//! rollback and remove.
//!
//! Failure policy: `authorize` fails closed (503, nothing of the content); `route` falls
//! back to the default route; `eviction` falls back to the built-in policy. The host has
//! already counted and logged the failure with the plugin's name and version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tessera_plugins::{Decision, Hook, PluginHost, Verdict};

use crate::cache::{Key, Placement};
use crate::proxy::{Edge, EdgeBody, Protocol, Refusal, full_body};
use crate::upstream::Upstream;

/// What the hooks decided for a request.
pub(crate) enum Plan {
    /// Serve it, from this upstream (`None`: the default backend).
    Serve(Option<Arc<Upstream>>),
    /// Answer with this (a denial, a redirect…).
    Answer(Response<EdgeBody>),
}

fn protocol(p: Protocol) -> tessera_plugins::Protocol {
    match p {
        Protocol::Http1 => tessera_plugins::Protocol::Http1,
        Protocol::Http2 => tessera_plugins::Protocol::Http2,
        Protocol::Http3 => tessera_plugins::Protocol::Http3,
    }
}

/// The request as plugins see it: the method cloned (no allocation for the standard ones),
/// the URI and headers moved out of `req` (no copy); [`give_back`] returns them.
fn plugin_request<B>(
    req: &mut Request<B>,
    proto: Protocol,
    client: SocketAddr,
) -> tessera_plugins::Request {
    // HTTP/2 and HTTP/3 carry `:scheme`; HTTP/1.1 over TLS is marked by the listener.
    let tls = proto == Protocol::Http3
        || req.uri().scheme() == Some(&http::uri::Scheme::HTTPS)
        || req.extensions().get::<crate::server::Tls>().is_some();
    tessera_plugins::Request {
        method: req.method().clone(),
        tls,
        uri: std::mem::take(req.uri_mut()),
        headers: std::mem::take(req.headers_mut()),
        client: client.ip(),
        protocol: protocol(proto),
    }
}

/// Puts the parts [`plugin_request`] took back into `req`.
fn give_back<B>(req: &mut Request<B>, p: tessera_plugins::Request) {
    *req.uri_mut() = p.uri;
    *req.headers_mut() = p.headers;
}

/// A plugin's response as an HTTP response (the host checked its status, headers and size).
fn answer(r: tessera_plugins::Response) -> Response<EdgeBody> {
    let mut resp = Response::new(full_body(Bytes::from(r.body)));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// Runs `authorize` then `route` on `req` (rewriting it as the route says).
pub(crate) fn plan<B>(
    edge: &Edge,
    host: &PluginHost,
    req: &mut Request<B>,
    proto: Protocol,
    client: SocketAddr,
) -> Plan {
    let mut preq = plugin_request(req, proto, client);
    let verdict = host.authorize(&mut preq);
    let upstreams = &edge.named_upstreams;
    let decision = match verdict {
        None | Some(Ok(Verdict::Allow)) => {
            host.route(&mut preq, &|name| upstreams.contains_key(name))
        }
        _ => None,
    };
    give_back(req, preq);
    match verdict {
        None | Some(Ok(Verdict::Allow)) => {}
        Some(Ok(Verdict::Deny(r))) => return Plan::Answer(answer(r)),
        Some(Err(_)) => {
            return Plan::Answer(
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the authorize plugin failed, so this request is refused (authorization \
                     fails closed); the edge's log names the plugin and the failure",
                )
                .response(),
            );
        }
    }
    match decision {
        None | Some(Ok(Decision::Default)) | Some(Err(_)) => Plan::Serve(None),
        Some(Ok(Decision::Respond(r))) => Plan::Answer(answer(r)),
        Some(Ok(Decision::Forward(f))) => {
            for name in &f.remove_headers {
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    req.headers_mut().remove(n);
                }
            }
            for (k, v) in &f.set_headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    req.headers_mut().insert(k, v);
                }
            }
            if let Some(p) = &f.path {
                let mut parts = req.uri().clone().into_parts();
                if let Ok(pq) = p.parse() {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
            Plan::Serve(f.upstream.and_then(|u| upstreams.get(&u).cloned()))
        }
    }
}

/// What the edge knows of a response it is about to store, for the eviction hook.
#[derive(Debug)]
pub(crate) struct Candidate<'a> {
    pub key: &'a Key,
    pub path: &'a str,
    pub size: u64,
    pub content_type: Option<&'a HeaderValue>,
    pub status: u16,
    pub ttl_secs: u64,
    pub hits: u32,
    pub last_hit_secs: Option<u64>,
}

/// The eviction advice for one response about to be stored: `None` when no plugin is
/// bound or it failed (the built-in policy then decides: store in both tiers).
pub(crate) fn advise(edge: &Edge, c: Candidate<'_>) -> Option<Placement> {
    let host = edge.plugins.get()?;
    if !host.is_bound(Hook::Eviction) {
        return None;
    }
    let object = tessera_plugins::Object {
        key: c.key.to_hex(),
        path: c.path.to_string(),
        size: c.size,
        content_type: c
            .content_type
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: c.status,
        hits: c.hits,
        last_hit_secs: c.last_hit_secs,
        ttl_secs: c.ttl_secs,
    };
    let advice = host.advise(std::slice::from_ref(&object))?.ok()?;
    let a = advice.into_iter().next()?;
    Some(Placement {
        admit: a.admit,
        tier: match a.tier {
            tessera_plugins::Tier::Memory => crate::cache::Where::Memory,
            tessera_plugins::Tier::Disk => crate::cache::Where::Disk,
            tessera_plugins::Tier::Both => crate::cache::Where::Both,
        },
        ttl_secs: a.ttl_secs,
        low_priority: a.priority == tessera_plugins::Priority::Low,
    })
}

/// The plugin host of `edge`, made on first use (an edge with no plugins has no engine).
pub(crate) fn host(edge: &Edge) -> Result<&PluginHost, Refusal> {
    if let Some(h) = edge.plugins.get() {
        return Ok(h);
    }
    // Two first deploys at once must not both make a host (the second would fail to
    // register its metrics): made under a lock, checked again inside it.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = edge.plugins.get() {
        return Ok(h);
    }
    let made = PluginHost::new(edge.cfg.plugins.limits, &edge.metrics.registry).map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start the plugin host: {e:#}"),
        )
    })?;
    Ok(edge.plugins.get_or_init(|| made))
}

/// Binds the plugins of the edge's configuration (at start-up); the first that cannot be
/// loaded or fails its check stops the start with its reason.
pub(crate) fn bind_configured(edge: &Edge) -> anyhow::Result<()> {
    for (i, b) in edge.cfg.plugins.bind.iter().enumerate() {
        let (bytes, name) = b.load()?;
        let host = host(edge).map_err(|r| anyhow::anyhow!("{}", r.message))?;
        host.deploy(b.hook, &name, &bytes, b.config.clone())
            .map_err(|e| {
                anyhow::anyhow!(
                    "plugins.bind[{i}] ({} on the {} hook): {e}",
                    b.plugin,
                    b.hook.as_str()
                )
            })?;
    }
    Ok(())
}

/// `POST /api/v1/plugins/{hook}?name=N&config=k=v…` with the component as the body.
pub(crate) async fn deploy(
    edge: &Arc<Edge>,
    hook: Hook,
    query: Option<&str>,
    wasm: Bytes,
) -> Result<serde_json::Value, Refusal> {
    let mut name = None;
    let mut config = BTreeMap::new();
    for (k, v) in form_pairs(query.unwrap_or(""))? {
        match k.as_str() {
            "name" => name = Some(v),
            "config" => {
                let Some((ck, cv)) = v.split_once('=') else {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        format!("config {v:?} is not key=value"),
                    ));
                };
                config.insert(ck.to_string(), cv.to_string());
            }
            other => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: expected name and config"),
                ));
            }
        }
    }
    let name = name
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "give the plugin a name: ?name=…"))?;
    let host = host(edge)?.clone();
    let info = tokio::task::spawn_blocking(move || host.deploy(hook, &name, &wasm, config))
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(serde_json::json!({ "deployed": info }))
}

/// `GET /api/v1/plugins`.
pub(crate) fn list(edge: &Edge) -> serde_json::Value {
    let slots = edge.plugins.get().map(|h| h.list()).unwrap_or_else(|| {
        Hook::ALL
            .iter()
            .map(|&hook| tessera_plugins::SlotInfo {
                hook,
                current: None,
                previous: None,
            })
            .collect()
    });
    serde_json::json!({
        "hooks": slots,
        "limits": edge.cfg.plugins.limits,
        "upstreams": edge.named_upstreams.keys().collect::<std::collections::BTreeSet<_>>(),
    })
}

/// `POST /api/v1/plugins/{hook}/rollback`.
pub(crate) fn rollback(edge: &Edge, hook: Hook) -> Result<serde_json::Value, Refusal> {
    let host = edge.plugins.get().ok_or_else(|| {
        Refusal::new(
            StatusCode::CONFLICT,
            format!(
                "the {} hook has no previous version to roll back to",
                hook.as_str()
            ),
        )
    })?;
    let info = host
        .rollback(hook)
        .map_err(|e| Refusal::new(StatusCode::CONFLICT, e.to_string()))?;
    Ok(serde_json::json!({ "bound": info }))
}

/// `DELETE /api/v1/plugins/{hook}`.
pub(crate) fn remove(edge: &Edge, hook: Hook) -> Result<serde_json::Value, Refusal> {
    match edge.plugins.get().and_then(|h| h.remove(hook)) {
        Some(info) => Ok(serde_json::json!({ "removed": info })),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no plugin is bound to the {} hook", hook.as_str()),
        )),
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded.
fn form_pairs(q: &str) -> Result<Vec<(String, String)>, Refusal> {
    let decode = |s: &str| {
        crate::proxy::percent_decode(&s.replace('+', " ")).ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("{s:?} is not valid percent-encoded UTF-8"),
            )
        })
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}
