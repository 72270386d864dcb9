//! One deployed version of a plugin: its pre-instantiated component, a pool of ready
//! instances, and the guarded call every hook goes through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use wasmtime::Store;

use crate::generated::authorize::{Authorize, AuthorizePre};
use crate::generated::eviction::{Eviction, EvictionPre};
use crate::generated::route::{Route, RoutePre};
use crate::memo::Memo;
use crate::metrics::Metrics;
use crate::sandbox::{Config, Identity, State};
use crate::{Decision, Verdict};
use crate::{Hook, Limits};

/// Ready instances kept per version; more are dropped after use.
const IDLE_MAX: usize = 64;

/// What `list` shows of a deployed version. Configuration values are not shown: they may
/// be secrets (a signing key).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginInfo {
    /// The hook it serves.
    pub hook: Hook,
    /// The operator's name for it.
    pub name: String,
    /// This edge's deploy number (increases with every deploy, on any hook; kept across
    /// restarts by an edge that saves its plugins; 0 until bound).
    pub version: u64,
    /// BLAKE3 of the component, hex.
    pub blake3: String,
    /// Size of the component, bytes.
    pub size: usize,
    /// Configuration keys set at deploy.
    pub config_keys: Vec<String>,
    /// When it was deployed, Unix milliseconds.
    pub deployed_at_ms: u64,
}

/// Why a call failed. The caller applies the hook's failure policy; the failure is already
/// counted and logged.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Failure {
    /// The call ran past its CPU deadline.
    #[error("ran past its {0} ms deadline")]
    Deadline(u64),
    /// The instance reached its memory cap.
    #[error("exceeded its memory cap of {0} bytes")]
    Memory(usize),
    /// The guest trapped (`unreachable`, a stack overflow…).
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest panicked, after logging this line (its message, for a plugin that logs
    /// before it panics, as the shipped ones do).
    #[error("panicked: {0}")]
    Panic(String),
    /// The answer cannot be used (an invalid header, a body over 1 MiB, an unknown
    /// upstream…).
    #[error("answered something unusable: {0}")]
    Invalid(String),
    /// No instance could be made (the instance pool is exhausted).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Deadline(_) => "deadline",
            Failure::Memory(_) => "memory",
            Failure::Trap(_) | Failure::Panic(_) => "trap",
            Failure::Invalid(_) => "invalid",
            Failure::Instantiate(_) => "instantiate",
        }
    }
}

pub(crate) enum Pre {
    Route(RoutePre<State>),
    Authorize(AuthorizePre<State>),
    Eviction(EvictionPre<State>),
}

pub(crate) enum Bound {
    Route(Route),
    Authorize(Authorize),
    Eviction(Eviction),
}

pub(crate) struct Instance {
    store: Store<State>,
    bound: Bound,
}

/// A deployed version. Shared by the requests using it; an in-flight request keeps its
/// version alive after a swap.
pub struct Plugin {
    pub(crate) info: PluginInfo,
    id: Arc<Identity>,
    config: Arc<Config>,
    pre: Pre,
    engine: wasmtime::Engine,
    limits: Limits,
    metrics: Metrics,
    /// The counters and histogram every call touches, looked up once (a labelled lookup
    /// hashes the labels under a lock: a tenth of a small call).
    ok_calls: prometheus::IntCounter,
    seconds: prometheus::Histogram,
    /// Ready instances. A std mutex: a push or a pop, nothing else while held.
    idle: Mutex<Vec<Instance>>,
    /// Decisions reused ([`crate::memo`]); the hook's own, the other stays empty.
    pub(crate) verdicts: Memo<Verdict>,
    pub(crate) decisions: Memo<Decision>,
    reused: prometheus::IntCounter,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn new(
        info: PluginInfo,
        config: BTreeMap<String, String>,
        pre: Pre,
        engine: wasmtime::Engine,
        limits: Limits,
        metrics: Metrics,
    ) -> Plugin {
        let id = Arc::new(Identity {
            name: info.name.clone(),
            version: info.version,
            hook: info.hook.as_str(),
        });
        let hook = info.hook.as_str();
        let ok_calls = metrics.calls.with_label_values(&[hook, &info.name, "ok"]);
        let seconds = metrics.call_seconds.with_label_values(&[hook]);
        let reused = metrics.reused.with_label_values(&[hook, &info.name]);
        Plugin {
            verdicts: Memo::new(limits.memo_entries),
            decisions: Memo::new(limits.memo_entries),
            reused,
            ok_calls,
            seconds,
            info,
            id,
            config: Arc::new(Config {
                values: config,
                asked: Default::default(),
            }),
            pre,
            engine,
            limits,
            metrics,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The version number and deploy time it is bound under (set when it is bound, or
    /// kept from before a restart). Drops the instances made so far: they carry the old
    /// identity in their logs.
    pub fn stamp(mut self, version: u64, deployed_at_ms: u64) -> Plugin {
        self.info.version = version;
        self.info.deployed_at_ms = deployed_at_ms;
        self.id = Arc::new(Identity {
            name: self.info.name.clone(),
            version,
            hook: self.info.hook.as_str(),
        });
        self.park();
        self
    }

    /// The configuration keys no instance asked for, but those in `except`.
    pub(crate) fn unasked_keys(&self, except: &BTreeMap<String, String>) -> Vec<String> {
        let asked = self.config.asked.lock().unwrap_or_else(|e| e.into_inner());
        self.config
            .values
            .keys()
            .filter(|k| !asked.contains(*k) && !except.contains_key(*k))
            .cloned()
            .collect()
    }

    /// The configuration keys instances asked for.
    pub(crate) fn asked_keys(&self) -> Vec<String> {
        let asked = self.config.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked
            .iter()
            .filter(|k| !k.starts_with("tessera."))
            .cloned()
            .collect()
    }

    /// Drops the ready instances (a version kept only for rollback holds no memory slots).
    pub(crate) fn park(&self) {
        self.idle.lock().unwrap().clear();
        self.verdicts.clear();
        self.decisions.clear();
    }

    /// Counts a decision reused without a call.
    pub(crate) fn count_reuse(&self) {
        self.reused.inc();
    }

    /// Decisions reused so far.
    pub(crate) fn reuses(&self) -> u64 {
        self.reused.get()
    }

    fn instantiate(&self) -> Result<Instance, Failure> {
        let state = State::new(
            self.id.clone(),
            self.config.clone(),
            self.limits.memory_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        let limit = self.limits.deadline_ms.max(1);
        store.epoch_deadline_callback(move |mut cx| cx.data_mut().tick(limit));
        // Instantiation runs the guest's start code: it has a deadline too.
        store.data_mut().before_call();
        store.set_epoch_deadline(1);
        let bound = match &self.pre {
            Pre::Route(p) => p.instantiate(&mut store).map(Bound::Route),
            Pre::Authorize(p) => p.instantiate(&mut store).map(Bound::Authorize),
            Pre::Eviction(p) => p.instantiate(&mut store).map(Bound::Eviction),
        }
        .map_err(|e| Failure::Instantiate(format!("{e:#}")))?;
        Ok(Instance { store, bound })
    }

    /// Runs `f` on a ready instance with the deadline armed; an instance that failed is
    /// dropped (a trapped instance cannot be entered again), a good one goes back to the
    /// pool. Counts and logs every failure.
    pub(crate) fn call<R>(
        &self,
        f: impl FnOnce(&Bound, &mut Store<State>) -> wasmtime::Result<R>,
        check: impl FnOnce(&R) -> Result<(), String>,
    ) -> Result<R, Failure> {
        let start = Instant::now();
        let pooled = self.idle.lock().unwrap().pop();
        let result = match pooled.map_or_else(|| self.instantiate(), Ok) {
            Ok(mut inst) => {
                inst.store.data_mut().before_call();
                inst.store.set_epoch_deadline(1);
                match f(&inst.bound, &mut inst.store) {
                    Ok(r) => {
                        let mut idle = self.idle.lock().unwrap();
                        if idle.len() < IDLE_MAX {
                            idle.push(inst);
                        }
                        drop(idle);
                        check(&r).map(|()| r).map_err(Failure::Invalid)
                    }
                    Err(e) => Err(self.classify(&e, inst.store.data())),
                }
            }
            Err(f) => Err(f),
        };
        self.seconds.observe(start.elapsed().as_secs_f64());
        let hook = self.info.hook.as_str();
        match &result {
            Ok(_) => self.ok_calls.inc(),
            Err(f) => self
                .metrics
                .calls
                .with_label_values(&[hook, &self.info.name, f.reason()])
                .inc(),
        }
        if let Err(f) = &result {
            tracing::warn!(
                target: "tessera::plugin",
                plugin = %self.info.name,
                version = self.info.version,
                hook,
                reason = f.reason(),
                "plugin call failed: {f}"
            );
        }
        result
    }

    fn classify(&self, e: &wasmtime::Error, state: &State) -> Failure {
        if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            if *trap == wasmtime::Trap::Interrupt {
                return Failure::Deadline(self.limits.deadline_ms);
            }
            if state.memory_denied {
                return Failure::Memory(self.limits.memory_bytes);
            }
            return Failure::Trap(said(trap.to_string(), state));
        }
        if state.memory_denied {
            return Failure::Memory(self.limits.memory_bytes);
        }
        let msg = format!("{e:#}");
        let msg = match msg.split_once("unknown import: `") {
            // A stubbed WASI import: a Rust guest prints its panic message to stderr; what
            // it logged last is that message, when it logs before it panics.
            Some(_) if let Some(line) = &state.last_log => return Failure::Panic(line.clone()),
            Some((_, rest)) => format!(
                "it called {}, which the sandbox does not offer (a panic printing its message?)",
                rest.split('`').next().unwrap_or(rest)
            ),
            None => msg,
        };
        Failure::Trap(said(msg, state))
    }
}

/// `what`, with the last line the plugin logged before it failed.
fn said(what: String, state: &State) -> String {
    match &state.last_log {
        Some(line) => format!("{what}; its last log line: {line}"),
        None => what,
    }
}
