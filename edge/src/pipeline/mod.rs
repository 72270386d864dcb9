//! Layer 5, the request pipeline every protocol shares. A request goes through named phases,
//! in order (as pingora's `ProxyHttp` phases):
//! 1. **admit** ([`hooks`]): the `authorize` and `route` plugins, which may answer or pick
//!    a named upstream (bound at start and kept across restarts: [`deployed`]);
//! 2. **check**: the path, and the backend's own request rules (methods, `no-store`,
//!    forwarded headers);
//! 3. **through the cache** ([`drive`]): the one lookup → judge → hit / stale / revalidate /
//!    miss driver both backends share, answering from the store or from what the backend
//!    fetched ([`respond`]);
//! 4. **log**: `Cache-Status`, metrics and the access log ([`access`]) from the request's
//!    [`outcome::Outcome`].
//!
//! Every problem becomes a response here: backends return typed errors, mapped to a status
//! in one place ([`outcome::refusal_of`]).

pub mod access;
pub mod deployed;
pub mod drive;
pub mod hooks;
pub mod incidents;
pub mod outcome;
pub mod respond;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tessera_origin_proto::validate_path;

use crate::backends::Context;
use crate::backends::origin::{OriginBackend, manifest_key};
use crate::backends::upstream::{Upstream, host_of, set_forwarded};
use crate::basics::body::EdgeBody;
use crate::basics::config::{Backend, EdgeConfig};
use crate::basics::error::{FetchError, Incident, Refusal};
use crate::basics::metrics::Metrics;
use crate::basics::protocol::{Protocol, over_tls};
use crate::coalesce::fill::Background;
use crate::coalesce::{Flights, Once};
use crate::pipeline::drive::Via;
use crate::pipeline::hooks::{Admission, Plugins};
use crate::pipeline::incidents::Incidents;
use crate::pipeline::outcome::{CacheResult, Outcome, PassReason, refusal_of};
use crate::rules::freshness::request_directives;
use crate::rules::path::{check_path, file_path, normalize_target};
use crate::store::Store;
use crate::store::bans::Bans;
use crate::store::entry::{Key, SEGMENT};
use crate::store::tiers::Cache;

/// One edge node: its store, its backends and its plugins, wired together.
#[derive(Debug)]
pub struct Edge {
    cfg: EdgeConfig,
    store: Store,
    metrics: Metrics,
    /// The origin backend (origin mode).
    origin: Option<Arc<OriginBackend>>,
    /// The default upstream (upstream mode).
    upstream: Option<Arc<Upstream>>,
    /// Upstreams a `route` plugin may name ([`EdgeConfig::upstreams`]).
    named_upstreams: HashMap<String, Arc<Upstream>>,
    plugins: Arc<Plugins>,
    /// Brotli copies being made ([`Edge::brotli_copy`]), so each is made once.
    compressing: Flights<Key, Once<Result<Bytes, FetchError>>>,
    /// Failures whose details stay inside ([`incidents`]).
    incidents: Incidents,
}

impl Edge {
    /// Opens the cache and state in `cfg.data` and prepares the backend.
    pub async fn open(cfg: EdgeConfig, metrics: Metrics) -> anyhow::Result<Arc<Edge>> {
        anyhow::ensure!(
            cfg.slice_bytes == 0 || (64 << 10..=64 << 20).contains(&cfg.slice_bytes),
            "slice_bytes: {} is outside 64KiB..=64MiB (0 turns slices off)",
            cfg.slice_bytes
        );
        std::fs::create_dir_all(&cfg.data).map_err(|e| {
            anyhow::anyhow!("cannot create the data folder {}: {e}", cfg.data.display())
        })?;
        let cache = Cache::open(
            &cfg.data.join("cache"),
            cfg.memory_bytes,
            cfg.disk_bytes,
            cfg.policy,
            &metrics,
        )
        .await?;
        let store = Store {
            cache,
            bans: Bans::load(&cfg.data)?,
        };
        let plugins = Arc::new(Plugins::new(
            cfg.plugins.limits,
            metrics.registry.clone(),
            &cfg.data,
            cfg.upstreams.keys().cloned().collect(),
        )?);
        let ctx = Context {
            store: store.clone(),
            metrics: metrics.clone(),
            advisor: plugins.clone(),
            timeouts: cfg.timeouts,
            heuristic_cap_secs: cfg.heuristic_cap_secs,
            max_object_bytes: cfg.max_object_bytes,
            store_set_cookie: cfg.store_set_cookie_responses,
            fill_window_bytes: cfg.fill_window_bytes.max(2 * SEGMENT),
            slices: cfg.slice_bytes > 0,
            background_fills: Background::new(
                cfg.max_background_fills,
                metrics.fills_background.clone(),
                metrics.fills_stopped.clone(),
            ),
        };
        let connect = cfg.timeouts.connect();
        let (origin, upstream) = match &cfg.backend {
            Backend::Origin(urls) => (
                Some(Arc::new(OriginBackend::new(urls, &cfg, ctx.clone())?)),
                None,
            ),
            Backend::Upstream(url) => (
                None,
                Some(Arc::new(Upstream::new(url, None, connect, ctx.clone())?)),
            ),
        };
        let named_upstreams = cfg
            .upstreams
            .iter()
            .map(|(name, url)| {
                let up = Upstream::new(url, Some(name), connect, ctx.clone())?;
                Ok((name.clone(), Arc::new(up)))
            })
            .collect::<anyhow::Result<HashMap<_, _>>>()?;
        plugins.start(&cfg.plugins)?;
        Ok(Arc::new(Edge {
            compressing: Flights::new(None),
            incidents: Incidents::default(),
            cfg,
            store,
            metrics,
            origin,
            upstream,
            named_upstreams,
            plugins,
        }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn bans(&self) -> &Bans {
        &self.store.bans
    }

    pub fn cache(&self) -> &Cache {
        &self.store.cache
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }

    /// The last failures whose details stay inside.
    pub fn incidents(&self) -> &Incidents {
        &self.incidents
    }

    /// The edge's plugins.
    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// The names of the upstreams a `route` plugin may send requests to.
    pub fn upstream_names(&self) -> impl Iterator<Item = &String> {
        self.named_upstreams.keys()
    }

    /// Starts what the edge runs beside its requests: following the origins' change feeds
    /// (origin mode). The task runs until aborted.
    pub fn start_background(&self) -> Option<tokio::task::JoinHandle<()>> {
        crate::backends::origin::feed::spawn(self.origin.clone()?)
    }

    /// Answers one request, whatever protocol it came over. Never fails: every problem is a
    /// response.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<EdgeBody>,
        proto: Protocol,
        client: SocketAddr,
    ) -> Response<EdgeBody> {
        let start = Instant::now();
        let logged = self.cfg.access_log.then(|| {
            let field = |name: header::HeaderName| {
                let v = req.headers().get(name).map(|v| v.as_bytes()).unwrap_or(b"");
                String::from_utf8_lossy(&v[..v.len().min(1024)]).into_owned()
            };
            access::Asked {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
                query: req.uri().query().unwrap_or("").to_string(),
                host: asked_host(&req).unwrap_or("").to_string(),
                user_agent: field(header::USER_AGENT),
                referer: field(header::REFERER),
            }
        });
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let (mut resp, outcome) = match self.answer(req, proto, client).await {
            Ok(r) => r,
            Err(refusal) => {
                if refusal.status == StatusCode::BAD_REQUEST {
                    self.metrics.bad_requests.inc();
                }
                (refusal.response(), Outcome::pass(PassReason::Error))
            }
        };
        if let Some(incident) = resp.extensions_mut().remove::<Incident>() {
            resp = self
                .incidents
                .answer(resp.status(), &method, &uri, incident);
        }
        // Phase 4: log.
        if let Ok(v) = HeaderValue::from_str(&format!("tessera; {}", outcome.cache_status())) {
            resp.headers_mut().append("cache-status", v);
        }
        let result = outcome.result();
        self.metrics
            .requests
            .with_label_values(&[proto.as_str(), resp.status().as_str()])
            .inc();
        self.metrics
            .cache
            .with_label_values(&[result.as_str(), outcome.tier_label()])
            .inc();
        let kind = if result == CacheResult::Hit {
            "hit"
        } else {
            "miss"
        };
        self.metrics
            .latency
            .with_label_values(&[proto.as_str(), kind])
            .observe(start.elapsed().as_secs_f64());
        match logged {
            Some(asked) => {
                let (parts, body) = resp.into_parts();
                let entry = access::Entry {
                    proto: proto.as_str(),
                    asked,
                    status: parts.status.as_u16(),
                    cache: result.as_str(),
                    tier: outcome.tier_label(),
                    client,
                    start,
                };
                let length = parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                Response::from_parts(parts, access::Logged::wrap(body, entry, length))
            }
            None => resp,
        }
    }

    /// Phases 1 to 3.
    async fn answer(
        self: &Arc<Self>,
        mut req: Request<EdgeBody>,
        proto: Protocol,
        client: SocketAddr,
    ) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
        // RFC 9112 §3.2: a request with more than one `Host` is refused.
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "the request has more than one Host header",
            ));
        }
        // Hosts this edge does not serve go no further (RFC 9110 §15.5.20).
        if !self.cfg.hosts.is_empty() {
            let host = asked_host(&req).unwrap_or("");
            if !self.cfg.hosts.iter().any(|p| p.matches(host)) {
                self.metrics.misdirected.inc();
                return Err(Refusal::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("this edge does not serve the host {host:?}"),
                ));
            }
        }
        // The one normalisation of the path ([`crate::rules::path`]): plugins, the cache key
        // and the backend all see what it gives.
        normalize_target(&mut req)?;
        // Phase 1: admit.
        let mut upstream = self.upstream.clone();
        if self.plugins.has_request_hooks()
            && let Some(host) = self.plugins.get()
        {
            match hooks::admit(host, &self.named_upstreams, &mut req, proto, client) {
                Admission::Answer(r) => return Ok((r, Outcome::pass(PassReason::Plugin))),
                Admission::Serve(Some(named)) => upstream = Some(named),
                Admission::Serve(None) => {}
            }
            // A route plugin may have rewritten the path.
            normalize_target(&mut req)?;
        }
        // Phase 2: check.
        match (upstream, &self.origin) {
            (Some(up), _) => {
                let tls = over_tls(&req, proto);
                let trusted = self
                    .cfg
                    .trusted_proxies
                    .iter()
                    .any(|n| n.contains(&client.ip()));
                let host = asked_host(&req).map(str::to_string);
                set_forwarded(req.headers_mut(), client.ip(), tls, host, trusted);
                self.via_upstream(req, up).await
            }
            (None, Some(origin)) => {
                let path = check_path(req.uri().path())?;
                self.via_origin(req, path, origin).await
            }
            (None, None) => Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this edge has no backend for the request",
            )),
        }
    }

    /// Origin mode's request rules, then the cache.
    async fn via_origin(
        self: &Arc<Self>,
        req: Request<EdgeBody>,
        path: String,
        origin: &Arc<OriginBackend>,
    ) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            let mut r = Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not served by an edge; publish to the origin"),
            )
            .response();
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok((r, Outcome::pass(PassReason::Method)));
        }
        let file = file_path(&path);
        validate_path(&file).map_err(|e| {
            Refusal::new(StatusCode::BAD_REQUEST, format!("bad path {path:?}: {e}"))
        })?;
        let (parts, _) = req.into_parts();
        let key = manifest_key(&file);
        let via = Via::Origin {
            origin: origin.clone(),
            file,
        };
        let req_cc = request_directives(&parts.headers);
        self.through_cache(&parts, &req_cc, key, via, true).await
    }

    /// Upstream mode's request rules, then the cache.
    async fn via_upstream(
        self: &Arc<Self>,
        req: Request<EdgeBody>,
        up: Arc<Upstream>,
    ) -> Result<(Response<EdgeBody>, Outcome), Refusal> {
        let (parts, body) = req.into_parts();
        let host = host_of(&parts);
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let key = up.key(&host, &pq);
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let r = up
                .pass(&parts, &pq, Some(body))
                .await
                .map_err(|e| refusal_of(&e))?;
            // RFC 9111 §4.4: a successful unsafe request invalidates its target.
            if r.status().is_success() || r.status().is_redirection() {
                up.invalidate_after(&key, &host, r.headers());
            }
            return Ok((r, Outcome::pass(PassReason::Method)));
        }
        let req_cc = request_directives(&parts.headers);
        if req_cc.no_store {
            let r = up
                .pass(&parts, &pq, Some(body))
                .await
                .map_err(|e| refusal_of(&e))?;
            return Ok((r, Outcome::pass(PassReason::Request)));
        }
        // A request with credentials is answered by the upstream, never from the store.
        let use_stored = !parts.headers.contains_key(header::AUTHORIZATION);
        self.through_cache(&parts, &req_cc, key, Via::Upstream { up, pq }, use_stored)
            .await
    }
}

/// The host a request asks for: its `Host` field, else its URI's authority (HTTP/2 and
/// HTTP/3 `:authority`), as sent.
fn asked_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}
