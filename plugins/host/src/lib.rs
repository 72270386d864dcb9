//! Tessera's WebAssembly plugin host: the `route`, `authorize` and `eviction` hooks of
//! `wit/policy.wit`, run in wasmtime with a CPU deadline and a memory cap per call.
//!
//! This crate holds no HTTP serving code: the edge moves a request's parts into a
//! [`Request`] (no copy), asks the [`PluginHost`], takes them back, and applies the answer,
//! or the hook's failure policy, itself.
//!
//! # Layout
//! - [`PluginHost`] (here): one wasmtime `Engine` (pooling allocator, epoch interruption)
//!   and a slot per hook holding the bound version and the previous one; deploy (validate,
//!   then swap atomically), rollback, remove, list, and the three hook calls.
//! - [`plugin`]: a deployed version: pre-instantiated component, pool of ready instances,
//!   the guarded call (deadline, memory cap, a trapped instance replaced), failures.
//! - `request`: the request a call sees, read by the plugin through accessors.
//! - `memo`: decisions reused for requests on which the plugin would read the same answers.
//! - `sandbox`: what an instance can reach (the `host` interface, the WASI a Rust `std`
//!   guest imports with nothing behind it) and its memory cap.
//! - `generated`: `bindgen!` output (private; the types are re-exported below).
//! - [`shipped`]: the plugins built from `plugins/guests/`, embedded.
//!
//! # Concurrency
//! Hook calls are synchronous and take at most the deadline (default 5 ms); they may run on
//! any thread at once (each takes its own instance). Deploys are serialised.

#[doc(hidden)]
pub mod fuzzing;
mod generated;
mod memo;
mod metrics;
pub mod plugin;
mod request;
mod sandbox;
pub mod shipped;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use generated::authorize::exports::tessera::policy::authorizer::Verdict;
pub use generated::eviction::exports::tessera::policy::advisor::{Advice, Object, Priority, Tier};
pub use generated::route::exports::tessera::policy::router::{Decision, Forward};
pub use generated::route::tessera::policy::types::{Protocol, Response};
pub use plugin::{Failure, Plugin, PluginInfo};
pub use request::Request;

use memo::Memo;
use plugin::{Bound, Pre};
use sandbox::State;

/// Largest body a plugin may answer with.
pub const RESPONSE_BODY_MAX: usize = 1 << 20;

/// A hook a plugin can be bound to: one world of `wit/policy.wit` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// Where a request goes (`route` world).
    Route,
    /// Whether a request may be served (`authorize` world); fails closed.
    Authorize,
    /// What the cache keeps and where (`eviction` world).
    Eviction,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Authorize, Hook::Route, Hook::Eviction];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Route => "route",
            Hook::Authorize => "authorize",
            Hook::Eviction => "eviction",
        }
    }

    /// The interface the component must export for this hook.
    pub fn export(self) -> &'static str {
        match self {
            Hook::Route => "tessera:policy/router@0.2.0",
            Hook::Authorize => "tessera:policy/authorizer@0.2.0",
            Hook::Eviction => "tessera:policy/advisor@0.2.0",
        }
    }

    fn index(self) -> usize {
        match self {
            Hook::Authorize => 0,
            Hook::Route => 1,
            Hook::Eviction => 2,
        }
    }
}

impl std::str::FromStr for Hook {
    type Err = String;
    fn from_str(s: &str) -> Result<Hook, String> {
        match s {
            "route" => Ok(Hook::Route),
            "authorize" => Ok(Hook::Authorize),
            "eviction" => Ok(Hook::Eviction),
            other => Err(format!(
                "unknown hook {other:?}: expected route, authorize or eviction"
            )),
        }
    }
}

/// The sandbox's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Time one hook call may run, milliseconds (then it is stopped and counted as a
    /// failure). Counted in the engine's 1 ms ticks that the running guest sees, so time
    /// the thread spends descheduled on a busy machine mostly does not count.
    pub deadline_ms: u64,
    /// Linear memory one plugin instance may use, bytes.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub memory_bytes: usize,
    /// Plugin instances alive at once, all hooks and versions together.
    pub instances: u32,
    /// `authorize` and `route` decisions kept per plugin for reuse on requests that answer
    /// the plugin's reads the same (`0`: call the plugin for every request).
    pub memo_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 5,
            memory_bytes: 32 << 20,
            instances: 128,
            memo_entries: 16_384,
        }
    }
}

/// The epoch advances every millisecond.
const TICK: Duration = Duration::from_millis(1);

/// wasmtime settings a benchmark compares (`tessera-bench plugins`); the defaults are the
/// measured best.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Keep the state for concurrent (async) component calls in every store (`true` needs
    /// wasmtime's `component-model-async` feature, which this crate does not enable).
    pub concurrency_support: bool,
    /// The pooling instance allocator (else instances are allocated on demand).
    pub pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            concurrency_support: false,
            pooling: true,
        }
    }
}

/// Why a deploy or rollback was refused. The message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("not a WebAssembly component: {0} (build the plugin for wasm32-wasip2)")]
    NotAComponent(String),
    /// The component imports something the sandbox does not offer, or does not export the
    /// hook's interface.
    #[error("the component cannot serve the {hook} hook: {reason}")]
    WrongWorld { hook: &'static str, reason: String },
    /// The check call (a made-up request or object) failed.
    #[error("the plugin failed its check call: {0}")]
    CheckFailed(Failure),
    /// The plugin said its configuration is wrong (it logged this, then panicked), or was
    /// given keys it never asked for.
    #[error("the plugin refused its configuration: {0}")]
    BadConfig(String),
    /// Nothing to roll back to.
    #[error("the {0} hook has no previous version to roll back to")]
    NoPrevious(&'static str),
    /// A bad name or configuration.
    #[error("{0}")]
    BadInput(String),
}

#[derive(Debug, Default)]
struct Slot {
    current: ArcSwapOption<Plugin>,
    /// Kept for rollback; its instances are dropped.
    previous: ArcSwapOption<Plugin>,
}

/// What one hook has bound.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub hook: Hook,
    pub current: Option<PluginInfo>,
    pub previous: Option<PluginInfo>,
}

struct Inner {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    metrics: metrics::Metrics,
    slots: [Slot; 3],
    versions: AtomicU64,
    /// Serialises deploys, rollbacks and removals (calls never take it).
    deploying: std::sync::Mutex<()>,
    /// Configuration keys the host gives every plugin (`tessera.…`), beside its own.
    reserved: std::sync::RwLock<BTreeMap<String, String>>,
}

/// The plugin host of one edge. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Makes the engine (and its epoch ticker thread, which ends with the host) and
    /// registers the plugin metrics in `registry`.
    pub fn new(limits: Limits, registry: &prometheus::Registry) -> anyhow::Result<PluginHost> {
        Self::with_options(limits, registry, EngineOptions::default())
    }

    /// [`PluginHost::new`] with chosen engine settings (for benchmarks).
    pub fn with_options(
        limits: Limits,
        registry: &prometheus::Registry,
        options: EngineOptions,
    ) -> anyhow::Result<PluginHost> {
        anyhow::ensure!(
            limits.deadline_ms >= 1,
            "the plugin deadline must be at least 1 ms"
        );
        anyhow::ensure!(
            limits.memory_bytes >= 2 << 20,
            "plugin memory must be at least 2 MiB (a Rust guest's stack alone is 1 MiB)"
        );
        let mut pool = PoolingAllocationConfig::default();
        let n = limits.instances.max(4);
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 8)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Measured (`tessera-bench plugins`, bench/HISTORY.md): a store without the
            // concurrent-call state makes a small call cheaper; plugins never use async.
            .concurrency_support(options.concurrency_support);
        if options.pooling {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let linker = sandbox::linker(&engine).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        let metrics = metrics::Metrics::new(registry)?;
        for hook in Hook::ALL {
            metrics.version.with_label_values(&[hook.as_str()]).set(0);
        }
        Ok(PluginHost {
            inner: Arc::new(Inner {
                engine,
                linker,
                limits,
                metrics,
                slots: Default::default(),
                versions: AtomicU64::new(0),
                deploying: std::sync::Mutex::new(()),
                reserved: Default::default(),
            }),
        })
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Gives every plugin deployed from now on the configuration key `key` (which must
    /// start with `tessera.`), read like its own: `tessera.upstreams`, the names of the
    /// edge's upstreams, lets a `route` plugin check its rules at deploy.
    pub fn set_reserved(&self, key: &str, value: String) {
        debug_assert!(key.starts_with("tessera."));
        let mut r = self
            .inner
            .reserved
            .write()
            .unwrap_or_else(|e| e.into_inner());
        r.insert(key.to_string(), value);
    }

    /// Compiles and checks a plugin, then binds it to `hook`: requests already holding the
    /// old version finish on it, later ones get the new one. The old version is kept for
    /// [`PluginHost::rollback`]. Blocking (compilation takes milliseconds to seconds): call
    /// it from a blocking thread.
    pub fn deploy(
        &self,
        hook: Hook,
        name: &str,
        wasm: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<PluginInfo, DeployError> {
        let plugin = self.prepare(hook, name, wasm, config)?;
        Ok(self.bind(plugin))
    }

    /// Binds a plugin made by [`PluginHost::prepare`] to its hook (see
    /// [`PluginHost::deploy`]). An unstamped plugin gets the next version number; a stamped
    /// one ([`Plugin::stamp`]) keeps its own, and later numbers follow it.
    pub fn bind(&self, plugin: Plugin) -> PluginInfo {
        let _serial = self.inner.deploying.lock().unwrap();
        let plugin = self.numbered(plugin);
        let info = plugin.info.clone();
        let hook = info.hook;
        let slot = &self.inner.slots[hook.index()];
        let old = slot.current.swap(Some(Arc::new(plugin)));
        if let Some(old) = &old {
            old.park();
        }
        if old.is_some() {
            slot.previous.store(old);
        }
        self.count_deploy(hook, "deployed");
        self.set_version(hook);
        tracing::info!(target: "tessera::plugin", hook = hook.as_str(), plugin = %info.name, version = info.version, blake3 = %info.blake3, "plugin deployed");
        info
    }

    /// Puts back what `hook` had bound before a restart: its current and previous versions,
    /// stamped with their old numbers (none is counted as a deploy). Numbers given from
    /// now on are above `last_version`.
    pub fn restore(
        &self,
        hook: Hook,
        current: Option<Plugin>,
        previous: Option<Plugin>,
        last_version: u64,
    ) {
        let _serial = self.inner.deploying.lock().unwrap();
        self.inner
            .versions
            .fetch_max(last_version, Ordering::Relaxed);
        let slot = &self.inner.slots[hook.index()];
        let [current, previous] = [current, previous].map(|p| p.map(|p| self.numbered(p)));
        if let Some(p) = &previous {
            p.park();
        }
        slot.current.store(current.map(Arc::new));
        slot.previous.store(previous.map(Arc::new));
        self.set_version(hook);
    }

    /// `plugin` with a version number: its own if stamped, else the next one.
    fn numbered(&self, plugin: Plugin) -> Plugin {
        let v = plugin.info.version;
        if v == 0 {
            let at = plugin.info.deployed_at_ms;
            let next = self.inner.versions.fetch_add(1, Ordering::Relaxed) + 1;
            return plugin.stamp(next, at);
        }
        self.inner.versions.fetch_max(v, Ordering::Relaxed);
        plugin
    }

    /// Compiles `wasm` for `hook` and makes its check call, binding nothing: a refusal is
    /// counted and logged, and uses up no version number. Blocking, as
    /// [`PluginHost::deploy`].
    pub fn prepare(
        &self,
        hook: Hook,
        name: &str,
        wasm: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<Plugin, DeployError> {
        self.compile(hook, name, wasm, config).inspect_err(|e| {
            self.count_deploy(hook, "refused");
            tracing::warn!(target: "tessera::plugin", hook = hook.as_str(), plugin = name, "deploy refused: {e}");
        })
    }

    fn compile(
        &self,
        hook: Hook,
        name: &str,
        wasm: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<Plugin, DeployError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(DeployError::BadInput(format!(
                "plugin name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let component = Component::new(&self.inner.engine, wasm)
            .map_err(|e| DeployError::NotAComponent(format!("{e:#}")))?;
        let wrong = |e: wasmtime::Error| DeployError::WrongWorld {
            hook: hook.as_str(),
            reason: format!("{e:#}"),
        };
        let linker = sandbox::check_imports(&self.inner.linker, &self.inner.engine, &component)
            .map_err(|reason| DeployError::WrongWorld {
                hook: hook.as_str(),
                reason,
            })?;
        let instance_pre = linker.instantiate_pre(&component).map_err(wrong)?;
        let not_exported = |e: wasmtime::Error| DeployError::WrongWorld {
            hook: hook.as_str(),
            reason: format!("it does not export {}: {e:#}", hook.export()),
        };
        let pre = match hook {
            Hook::Route => {
                Pre::Route(generated::route::RoutePre::new(instance_pre).map_err(not_exported)?)
            }
            Hook::Authorize => Pre::Authorize(
                generated::authorize::AuthorizePre::new(instance_pre).map_err(not_exported)?,
            ),
            Hook::Eviction => Pre::Eviction(
                generated::eviction::EvictionPre::new(instance_pre).map_err(not_exported)?,
            ),
        };
        if let Some(k) = config.keys().find(|k| k.starts_with("tessera.")) {
            return Err(DeployError::BadInput(format!(
                "configuration key {k:?}: keys starting with tessera. are the host's"
            )));
        }
        let info = PluginInfo {
            hook,
            name: name.to_string(),
            version: 0,
            blake3: blake3::hash(wasm).to_hex().to_string(),
            size: wasm.len(),
            config_keys: config.keys().cloned().collect(),
            deployed_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let reserved = self
            .inner
            .reserved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut values = config;
        values.extend(reserved.clone());
        let plugin = Plugin::new(
            info,
            values,
            pre,
            self.inner.engine.clone(),
            self.inner.limits,
            self.inner.metrics.clone(),
        );
        check_call(&plugin).map_err(|f| match f {
            Failure::Panic(said) => DeployError::BadConfig(said),
            f => DeployError::CheckFailed(f),
        })?;
        // A plugin reads its configuration on its first call (the check call): a key it
        // never asked for is a typo or a setting it does not have.
        let unasked = plugin.unasked_keys(&reserved);
        if !unasked.is_empty() {
            return Err(DeployError::BadConfig(format!(
                "unknown key{} {}: {name} asked for {}",
                if unasked.len() > 1 { "s" } else { "" },
                unasked.join(", "),
                match plugin.asked_keys() {
                    a if a.is_empty() => "no configuration".to_string(),
                    a => a.join(", "),
                }
            )));
        }
        Ok(plugin)
    }

    /// Binds the previous version again (and keeps the replaced one as the previous).
    pub fn rollback(&self, hook: Hook) -> Result<PluginInfo, DeployError> {
        let _serial = self.inner.deploying.lock().unwrap();
        let slot = &self.inner.slots[hook.index()];
        let Some(prev) = slot.previous.swap(None) else {
            return Err(DeployError::NoPrevious(hook.as_str()));
        };
        let info = prev.info.clone();
        let replaced = slot.current.swap(Some(prev));
        if let Some(r) = &replaced {
            r.park();
        }
        slot.previous.store(replaced);
        self.count_deploy(hook, "rolled-back");
        self.set_version(hook);
        tracing::info!(target: "tessera::plugin", hook = hook.as_str(), plugin = %info.name, version = info.version, "plugin rolled back");
        Ok(info)
    }

    /// Unbinds `hook` (the edge's built-in behaviour again); the removed version becomes
    /// the previous one.
    pub fn remove(&self, hook: Hook) -> Option<PluginInfo> {
        let _serial = self.inner.deploying.lock().unwrap();
        let slot = &self.inner.slots[hook.index()];
        let old = slot.current.swap(None)?;
        old.park();
        let info = old.info.clone();
        slot.previous.store(Some(old));
        self.count_deploy(hook, "removed");
        self.set_version(hook);
        Some(info)
    }

    /// What every hook has bound.
    pub fn list(&self) -> Vec<SlotInfo> {
        Hook::ALL
            .iter()
            .map(|&hook| {
                let slot = &self.inner.slots[hook.index()];
                SlotInfo {
                    hook,
                    current: slot.current.load().as_ref().map(|p| p.info.clone()),
                    previous: slot.previous.load().as_ref().map(|p| p.info.clone()),
                }
            })
            .collect()
    }

    /// Whether a plugin is bound to `hook` (one atomic load).
    pub fn is_bound(&self, hook: Hook) -> bool {
        self.inner.slots[hook.index()].current.load().is_some()
    }

    fn bound(&self, hook: Hook) -> Option<Arc<Plugin>> {
        self.inner.slots[hook.index()].current.load_full()
    }

    fn count_deploy(&self, hook: Hook, result: &str) {
        self.inner
            .metrics
            .deploys
            .with_label_values(&[hook.as_str(), result])
            .inc();
    }

    fn set_version(&self, hook: Hook) {
        let v = self.bound(hook).map_or(0, |p| p.info.version);
        self.inner
            .metrics
            .version
            .with_label_values(&[hook.as_str()])
            .set(v as i64);
    }

    /// The `authorize` hook: `None` when no plugin is bound; a failure means deny (the
    /// caller answers 503).
    /// `req` is moved into the plugin's store for the call and back (it comes back as it
    /// went).
    pub fn authorize(&self, req: &mut Request) -> Option<Result<Verdict, Failure>> {
        let p = self.bound(Hook::Authorize)?;
        Some(call_authorize(&p, req))
    }

    /// The `route` hook: `None` when no plugin is bound; a failure means the default route.
    /// `upstream_known` says whether a named upstream exists (an unknown one is a failure).
    pub fn route(
        &self,
        req: &mut Request,
        upstream_known: &dyn Fn(&str) -> bool,
    ) -> Option<Result<Decision, Failure>> {
        let p = self.bound(Hook::Route)?;
        Some(call_route(&p, req, upstream_known))
    }

    /// The `eviction` hook: `None` when no plugin is bound; a failure means the built-in
    /// policy decides for the whole batch.
    pub fn advise(&self, objects: &[Object]) -> Option<Result<Vec<Advice>, Failure>> {
        let p = self.bound(Hook::Eviction)?;
        Some(call_advise(&p, objects))
    }
}

/// An `authorize` or `route` decision on `req`: reused from `memo` when one was filed for
/// the answers `req` gives, else `call` runs with `req` moved into the store (and back
/// afterwards, whatever happened) and a usable decision is filed with what the call read.
fn decide<R: Clone>(
    p: &Plugin,
    req: &mut Request,
    memo: &Memo<R>,
    check: impl Fn(&R) -> Result<(), String>,
    call: impl FnOnce(&Bound, &mut wasmtime::Store<State>) -> wasmtime::Result<R>,
) -> Result<R, Failure> {
    if let Some(d) = memo.lookup(req) {
        p.count_reuse();
        return Ok(d);
    }
    let reuses = p.reuses();
    p.call(
        |b, store| {
            std::mem::swap(&mut store.data_mut().request, req);
            let r = call(b, store);
            std::mem::swap(&mut store.data_mut().request, req);
            if let Ok(d) = &r
                && check(d).is_ok()
            {
                memo.file(&store.data().trace, d, reuses);
            }
            r
        },
        &check,
    )
}

fn check_verdict(v: &Verdict) -> Result<(), String> {
    match v {
        Verdict::Allow => Ok(()),
        Verdict::Deny(r) => check_response(r),
    }
}

fn call_authorize(p: &Plugin, req: &mut Request) -> Result<Verdict, Failure> {
    decide(p, req, &p.verdicts, check_verdict, |b, s| match b {
        Bound::Authorize(a) => a
            .tessera_policy_authorizer()
            .call_authorize(s, request::handle()),
        _ => unreachable!("an authorize plugin is bound as authorize"),
    })
}

fn call_route(
    p: &Plugin,
    req: &mut Request,
    upstream_known: &dyn Fn(&str) -> bool,
) -> Result<Decision, Failure> {
    let check = |d: &Decision| match d {
        Decision::Default => Ok(()),
        Decision::Respond(r) => check_response(r),
        Decision::Forward(f) => check_forward(f, upstream_known),
    };
    decide(p, req, &p.decisions, check, |b, s| match b {
        Bound::Route(r) => r.tessera_policy_router().call_route(s, request::handle()),
        _ => unreachable!("a route plugin is bound as route"),
    })
}

fn call_advise(p: &Plugin, objects: &[Object]) -> Result<Vec<Advice>, Failure> {
    p.call(
        |b, store| match b {
            Bound::Eviction(e) => e.tessera_policy_advisor().call_advise(store, objects),
            _ => unreachable!("an eviction plugin is bound as eviction"),
        },
        |a| {
            if a.len() == objects.len() {
                Ok(())
            } else {
                Err(format!(
                    "{} pieces of advice for {} objects",
                    a.len(),
                    objects.len()
                ))
            }
        },
    )
}

fn check_headers<'a>(
    headers: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<(), String> {
    for (name, value) in headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("invalid header name {:?}", cut(name)));
        }
        if let Some(v) = value
            && http::HeaderValue::from_str(v).is_err()
        {
            return Err(format!("invalid value for header {name}"));
        }
    }
    Ok(())
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn check_response(r: &Response) -> Result<(), String> {
    if !(200..=599).contains(&r.status) {
        return Err(format!("status {} is not 200-599", r.status));
    }
    if r.body.len() > RESPONSE_BODY_MAX {
        return Err(format!(
            "a body of {} bytes (at most {RESPONSE_BODY_MAX})",
            r.body.len()
        ));
    }
    check_headers(
        r.headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_str()))),
    )
}

fn check_forward(f: &Forward, upstream_known: &dyn Fn(&str) -> bool) -> Result<(), String> {
    if let Some(u) = &f.upstream
        && !upstream_known(u)
    {
        return Err(format!("no upstream named {:?}", cut(u)));
    }
    if let Some(p) = &f.path
        && (!p.starts_with('/') || p.parse::<http::uri::PathAndQuery>().is_err())
    {
        return Err(format!("path {:?} is not a valid /path?query", cut(p)));
    }
    check_headers(
        f.set_headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_str())))
            .chain(f.remove_headers.iter().map(|k| (k.as_str(), None))),
    )
}

/// The check call a deploy makes: a made-up request (or object) the plugin must answer
/// within its limits with something usable. What it answers does not matter.
fn check_call(p: &Plugin) -> Result<(), Failure> {
    const PATH: &str = "/.well-known/tessera/plugin-check";
    let mut req = Request {
        uri: http::Uri::from_static(PATH),
        client: std::net::Ipv4Addr::LOCALHOST.into(),
        ..Request::default()
    };
    req.headers.insert(
        http::header::HOST,
        http::HeaderValue::from_static("localhost"),
    );
    req.headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("tessera-plugin-check"),
    );
    match p.info.hook {
        Hook::Authorize => call_authorize(p, &mut req).map(drop),
        Hook::Route => call_route(p, &mut req, &|_| true).map(drop),
        Hook::Eviction => call_advise(
            p,
            &[Object {
                key: "0".repeat(64),
                path: PATH.into(),
                size: 1024,
                content_type: Some("text/plain".into()),
                status: 200,
                hits: 0,
                last_hit_secs: None,
                ttl_secs: 60,
            }],
        )
        .map(drop),
    }
}
