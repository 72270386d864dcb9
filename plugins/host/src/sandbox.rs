//! What a plugin instance can reach: the `host` interface of `wit/policy.wit`, the request
//! of its call (`request`, in the `types` interface) and a memory cap. Nothing else: a Rust
//! `std` guest for `wasm32-wasip2` imports a few WASI interfaces (environment, exit, stdio,
//! I/O streams) that it touches only to print a panic; those are
//! linked as functions that trap, and a component importing anything else (files, sockets,
//! clocks, randomness, HTTP) is refused at deploy ([`check_imports`]).
//!
//! wasmtime-wasi's own implementations are not used on purpose: its synchronous bindings
//! enter a Tokio runtime of their own (`block_on`) on every stream call, which panics on
//! the edge's runtime threads, so a plugin printing a panic message would take down the
//! thread serving the request.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{Component, Linker};

use crate::Request;
use crate::generated::route::tessera::policy::host::{self, Level};
use crate::generated::route::tessera::policy::types;
use crate::memo::{Read, Trace, now_ms};

/// Longest log line a plugin may write; the rest is cut.
const LOG_LINE_MAX: usize = 1024;
/// Reads a call may make and still have its decision filed ([`crate::memo`]).
const READS_FILED_MAX: usize = 64;
/// Log lines a plugin may write in one call; the rest are dropped.
const LOG_LINES_PER_CALL: u32 = 16;

/// Who a store belongs to, for log lines and metrics.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub name: String,
    pub version: u64,
    pub hook: &'static str,
}

/// A deployed version's configuration, shared by its instances.
#[derive(Debug, Default)]
pub(crate) struct Config {
    pub values: BTreeMap<String, String>,
    /// The keys its instances asked for: a deploy refuses keys its check call never asked
    /// for (a typo, or a setting the plugin does not have).
    pub asked: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// The data of one plugin instance's store.
pub(crate) struct State {
    pub id: Arc<Identity>,
    config: Arc<Config>,
    memory_cap: usize,
    /// Set when the cap refused a memory growth: a trap after it is an out-of-memory.
    pub memory_denied: bool,
    /// Epoch ticks this call has seen while running (see [`State::tick`]).
    ticks: u64,
    log_budget: u32,
    /// The last line the plugin logged (shown when a call fails).
    pub last_log: Option<String>,
    /// The request of the running `authorize` or `route` call (moved in for the call).
    pub request: Request,
    /// What the running call read ([`crate::memo`]).
    pub trace: Trace,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl State {
    pub fn new(id: Arc<Identity>, config: Arc<Config>, memory_cap: usize) -> State {
        State {
            id,
            config,
            memory_cap,
            memory_denied: false,
            ticks: 0,
            log_budget: LOG_LINES_PER_CALL,
            last_log: None,
            request: Request::default(),
            trace: Trace::default(),
        }
    }

    /// Resets the per-call allowances before a call.
    pub fn before_call(&mut self) {
        self.log_budget = LOG_LINES_PER_CALL;
        self.memory_denied = false;
        self.ticks = 0;
        self.trace.clear();
    }

    /// Answers `read` from the call's request, recording the question and the answer.
    pub fn read(&mut self, read: Read) -> Option<String> {
        let answer = read.answer(&self.request).map(|a| a.into_owned());
        // A call asking more than this is not filed, and its trace stops growing.
        if self.trace.reads.len() < READS_FILED_MAX {
            self.trace.reads.push((read, answer.clone()));
        } else {
            self.trace.unfileable = true;
        }
        answer
    }

    /// Called by wasmtime when the running guest sees the epoch advance (the engine ticks
    /// every millisecond; the store's deadline is always one tick ahead). Counting the ticks
    /// the guest *sees* measures the time it ran, not wall time: a thread descheduled for
    /// 20 ms on a busy machine sees one tick when it resumes, not twenty, so a busy machine
    /// does not make good plugins miss their deadline. `limit` ticks end the call.
    pub fn tick(&mut self, limit: u64) -> wasmtime::Result<wasmtime::UpdateDeadline> {
        self.ticks += 1;
        if self.ticks >= limit {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(wasmtime::UpdateDeadline::Continue(1))
    }
}

impl wasmtime::ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        // A decision that logged is not reused: its lines would not be written again.
        self.trace.unfileable = true;
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let line = cut(&message, LOG_LINE_MAX);
        let (name, version, hook) = (&self.id.name, self.id.version, self.id.hook);
        match level {
            Level::Debug => {
                tracing::debug!(target: "tessera::plugin", plugin = %name, version, hook, "{line}")
            }
            Level::Info => {
                tracing::info!(target: "tessera::plugin", plugin = %name, version, hook, "{line}")
            }
            Level::Warn => {
                tracing::warn!(target: "tessera::plugin", plugin = %name, version, hook, "{line}")
            }
            Level::Error => {
                tracing::error!(target: "tessera::plugin", plugin = %name, version, hook, "{line}")
            }
        }
        self.last_log = Some(line.to_string());
    }

    fn now_ms(&mut self) -> u64 {
        // A decision that read the clock is not reused (`expired` is).
        self.trace.unfileable = true;
        now_ms()
    }

    fn expired(&mut self, unix_ms: u64) -> bool {
        self.read(Read::Expired(unix_ms)).as_deref() == Some("1")
    }

    fn config(&mut self, key: String) -> Option<String> {
        let value = self.config.values.get(&key).cloned();
        let mut asked = self.config.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.len() < 1024 && !asked.contains(&key) {
            asked.insert(key);
        }
        value
    }

    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        ring::hmac::sign(&key, &data).as_ref().to_vec()
    }

    fn blake3_keyed(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        let key: [u8; 32] = match key.as_slice().try_into() {
            Ok(k) => k,
            Err(_) => *blake3::hash(&key).as_bytes(),
        };
        blake3::keyed_hash(&key, &data).as_bytes().to_vec()
    }

    fn blake3(&mut self, data: Vec<u8>) -> Vec<u8> {
        blake3::hash(&data).as_bytes().to_vec()
    }
}

/// The linker every plugin shares: the `host` interface and the `request` resource only.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<State>> {
    let mut l = Linker::<State>::new(engine);
    host::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut l, |s| s)?;
    types::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut l, |s| s)?;
    Ok(l)
}

/// WASI interfaces a Rust `std` guest imports without using them outside a panic; linked as
/// traps.
const STUBBED: &[&str] = &["wasi:cli/", "wasi:io/"];

/// Refuses a component that imports more than the sandbox offers, naming the import; returns
/// the linker for it (the shared one, with its WASI imports stubbed as traps).
pub(crate) fn check_imports(
    shared: &Linker<State>,
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<Linker<State>, String> {
    for (name, _) in component.component_type().imports(engine) {
        let ours = name.starts_with("tessera:policy/");
        if !ours && !STUBBED.iter().any(|p| name.starts_with(p)) {
            return Err(format!(
                "it imports {name}, which Tessera plugins may not use (they get the \
                 tessera:policy/host interface only: no files, network, clocks or randomness; \
                 use host.now-ms for time)"
            ));
        }
    }
    let mut l = shared.clone();
    l.define_unknown_imports_as_traps(component)
        .map_err(|e| format!("{e:#}"))?;
    Ok(l)
}
