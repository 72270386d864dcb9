//! `size-eviction`: size-aware cache advice, as an `eviction` plugin.
//!
//! - Objects larger than `memory-max-bytes` (default 1 MiB) go to the SSD tier only, so a
//!   few large downloads do not push thousands of small hot objects out of memory.
//! - Responses whose `Content-Type` starts with one of `never-cache-types` (comma-separated,
//!   for example `text/event-stream,application/x-ndjson`) are never stored.
//! - Paths under one of `long-ttl-prefixes` (comma-separated) get `long-ttl-secs` (default
//!   one day) as their freshness lifetime.
//! - Objects over `low-priority-bytes` (default: never) are marked low priority.

use std::sync::OnceLock;

wit_bindgen::generate!({ path: "../../../wit", world: "eviction" });

use exports::tessera::policy::advisor::{Advice, Guest, Object, Priority, Tier};
use tessera::policy::host;

struct Settings {
    memory_max: u64,
    never: Vec<String>,
    long_prefixes: Vec<String>,
    long_ttl: u64,
    low_priority: u64,
}

static SETTINGS: OnceLock<Result<Settings, String>> = OnceLock::new();

fn list(key: &str) -> Vec<String> {
    host::config(key)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn number(key: &str, default: u64) -> Result<u64, String> {
    match host::config(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("size-eviction: {key}={v} is not a whole number")),
    }
}

fn settings() -> &'static Result<Settings, String> {
    SETTINGS.get_or_init(|| {
        Ok(Settings {
            memory_max: number("memory-max-bytes", 1 << 20)?,
            never: list("never-cache-types"),
            long_prefixes: host::config("long-ttl-prefixes")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            long_ttl: number("long-ttl-secs", 86_400)?,
            low_priority: number("low-priority-bytes", u64::MAX)?,
        })
    })
}

fn advise(s: &Settings, o: &Object) -> Advice {
    let ct = o.content_type.as_deref().unwrap_or("").to_ascii_lowercase();
    let admit = !s.never.iter().any(|t| ct.starts_with(t.as_str()));
    let tier = if o.size > s.memory_max {
        Tier::Disk
    } else {
        Tier::Both
    };
    let ttl_secs = s
        .long_prefixes
        .iter()
        .any(|p| o.path.starts_with(p.as_str()))
        .then_some(s.long_ttl);
    let priority = if o.size > s.low_priority {
        Priority::Low
    } else {
        Priority::Normal
    };
    Advice {
        admit,
        tier,
        ttl_secs,
        priority,
    }
}

struct SizeEviction;

impl Guest for SizeEviction {
    fn advise(objects: Vec<Object>) -> Vec<Advice> {
        let s = match settings() {
            Ok(s) => s,
            Err(e) => {
                host::log(host::Level::Error, e);
                panic!("{e}");
            }
        };
        objects.iter().map(|o| advise(s, o)).collect()
    }
}

export!(SizeEviction);
