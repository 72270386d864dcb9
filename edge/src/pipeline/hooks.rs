//! The plugin hooks ([`tessera_plugins`]) in the pipeline: requests handed to `authorize` and
//! `route` and their answers applied, and the eviction advice given to the backends.
//!
//! Failure policy: `authorize` fails closed (503, nothing of the content); `route` falls
//! back to the default route; `eviction` falls back to the built-in policy. The host has
//! already counted and logged the failure with the plugin's name and version.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use prometheus::Registry;
use tessera_plugins::{Decision, Hook, Limits, PluginHost, PluginInfo, Verdict};

use crate::backends::upstream::Upstream;
use crate::basics::body::{EdgeBody, full_body};
use crate::basics::config::PluginsConfig;
use crate::basics::error::Refusal;
use crate::basics::protocol::{Protocol, over_tls};
use crate::pipeline::deployed::Deployed;
use crate::store::advice::{Advice, Advisor, Candidate, Target};

/// An edge's plugins: the host, made when the first plugin is bound (an edge without
/// plugins runs no wasmtime engine), and what is saved of them in the data folder
/// ([`Deployed`]).
#[derive(Debug)]
pub struct Plugins {
    host: OnceLock<PluginHost>,
    /// Held while the host is made, so two first deploys at once make one host (the second
    /// would fail to register its metrics). A std mutex: nothing async happens under it.
    making: Mutex<()>,
    limits: Limits,
    registry: Registry,
    deployed: Deployed,
    /// The names of the edge's upstreams, given to plugins as `tessera.upstreams`.
    upstreams: Vec<String>,
}

impl Plugins {
    /// The plugins of the edge whose data folder is `data` (nothing bound yet: see
    /// [`Plugins::start`]).
    pub fn new(
        limits: Limits,
        registry: Registry,
        data: &Path,
        upstreams: Vec<String>,
    ) -> anyhow::Result<Plugins> {
        Ok(Plugins {
            host: OnceLock::new(),
            making: Mutex::new(()),
            limits,
            registry,
            deployed: Deployed::open(data)?,
            upstreams,
        })
    }

    /// The host, when a plugin was ever bound.
    pub fn get(&self) -> Option<&PluginHost> {
        self.host.get()
    }

    /// The sandbox's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The host, made on first use.
    fn host(&self) -> Result<&PluginHost, Refusal> {
        if let Some(h) = self.host.get() {
            return Ok(h);
        }
        let _one = self.making.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = self.host.get() {
            return Ok(h);
        }
        let made = PluginHost::new(self.limits, &self.registry).map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start the plugin host: {e:#}"),
            )
        })?;
        made.set_reserved("tessera.upstreams", self.upstreams.join(","));
        Ok(self.host.get_or_init(|| made))
    }

    /// Binds what the edge starts with, before its listeners open: the plugins saved in the
    /// data folder and those of the configuration, reconciled as [`Deployed::start`] says.
    /// A plugin that cannot be bound stops the start with its reason.
    pub fn start(&self, cfg: &PluginsConfig) -> anyhow::Result<()> {
        self.deployed.start(cfg, || {
            self.host().map_err(|r| anyhow::anyhow!("{}", r.message))
        })
    }

    /// Checks `wasm` and binds it to `hook`; saved first, so it outlives restarts.
    /// Blocking (compilation).
    pub fn deploy(
        &self,
        hook: Hook,
        name: &str,
        wasm: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<PluginInfo, Refusal> {
        self.deployed.deploy(self.host()?, hook, name, wasm, config)
    }

    /// Binds the previous version of `hook` again (saved first). Blocking.
    pub fn rollback(&self, hook: Hook) -> Result<PluginInfo, Refusal> {
        let host = self
            .host
            .get()
            .ok_or_else(|| crate::pipeline::deployed::no_previous(hook))?;
        self.deployed.rollback(host, hook)
    }

    /// Unbinds `hook` (saved first); `None` when nothing is bound. Blocking.
    pub fn remove(&self, hook: Hook) -> Result<Option<PluginInfo>, Refusal> {
        match self.host.get() {
            Some(host) => self.deployed.remove(host, hook),
            None => Ok(None),
        }
    }

    /// Whether `authorize` or `route` has a plugin bound.
    pub fn has_request_hooks(&self) -> bool {
        self.host
            .get()
            .is_some_and(|h| h.is_bound(Hook::Authorize) || h.is_bound(Hook::Route))
    }
}

impl Advisor for Plugins {
    /// The `eviction` plugin's advice for one response; `None` when none is bound or it
    /// failed.
    fn advise(&self, c: Candidate<'_>) -> Option<Advice> {
        let host = self.host.get()?;
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
            hits: 0,
            last_hit_secs: None,
            ttl_secs: c.ttl_secs,
        };
        let advice = host.advise(std::slice::from_ref(&object))?.ok()?;
        let a = advice.into_iter().next()?;
        Some(Advice {
            admit: a.admit,
            target: match a.tier {
                tessera_plugins::Tier::Memory => Target::Memory,
                tessera_plugins::Tier::Disk => Target::Disk,
                tessera_plugins::Tier::Both => Target::Both,
            },
            ttl_secs: a.ttl_secs,
            low_priority: a.priority == tessera_plugins::Priority::Low,
        })
    }
}

/// What the request hooks decided.
#[derive(Debug)]
pub enum Admission {
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
    let tls = over_tls(req, proto);
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

/// Runs `authorize` then `route` on `req` (rewriting it as the route says); `upstreams` are
/// the ones a route may name.
pub fn admit<B>(
    host: &PluginHost,
    upstreams: &HashMap<String, Arc<Upstream>>,
    req: &mut Request<B>,
    proto: Protocol,
    client: SocketAddr,
) -> Admission {
    let mut preq = plugin_request(req, proto, client);
    let verdict = host.authorize(&mut preq);
    let decision = match verdict {
        None | Some(Ok(Verdict::Allow)) => {
            host.route(&mut preq, &|name| upstreams.contains_key(name))
        }
        _ => None,
    };
    give_back(req, preq);
    match verdict {
        None | Some(Ok(Verdict::Allow)) => {}
        Some(Ok(Verdict::Deny(r))) => return Admission::Answer(answer(r)),
        Some(Err(_)) => {
            return Admission::Answer(
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
        None | Some(Ok(Decision::Default)) | Some(Err(_)) => Admission::Serve(None),
        Some(Ok(Decision::Respond(r))) => Admission::Answer(answer(r)),
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
            Admission::Serve(f.upstream.and_then(|u| upstreams.get(&u).cloned()))
        }
    }
}
