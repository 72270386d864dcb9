//! Plugins deployed at run time, kept in the data folder so that a restart or a crash binds
//! them again before the listeners open: an `authorize` plugin guards content, and losing
//! it on a restart would open what it closed.
//!
//! # State (`<data>/plugins/`)
//! `state.json` (readable by its owner only: configurations hold signing keys) lists per
//! hook the bound and the previous version, each with its name, configuration, version
//! number, deploy time and the BLAKE3 of its component, kept beside it as `<blake3>.wasm`.
//! Every deploy, rollback and removal writes the component, then the state (synced,
//! renamed, folder synced), and only then takes effect: what the admin API acknowledged
//! survives `kill -9`. A failed write changes nothing and is answered 500.
//!
//! # At start, per hook: the latest change wins
//! - What was deployed, rolled back or removed at run time is bound again, with its
//!   version numbers (later deploys number on from the highest ever given).
//! - Unless the configuration's `[[plugins.bind]]` for that hook changed since the last
//!   start (another component, name or configuration, or a binding added or taken out):
//!   the configuration is then newer, and its plugins are bound instead.
//! - A saved plugin that cannot be bound again (its component missing or damaged, its check
//!   failing) stops the start with the reason; a saved previous version that cannot is
//!   dropped with a warning (nothing is served through it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_plugins::{Hook, Plugin, PluginHost, PluginInfo};

use crate::basics::config::PluginsConfig;
use crate::basics::durable::write_atomic;
use crate::basics::error::Refusal;

/// One saved version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    /// BLAKE3 of the component, hex: its file is `<blake3>.wasm`.
    blake3: String,
    config: BTreeMap<String, String>,
    version: u64,
    deployed_at_ms: u64,
}

/// What one hook has bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedHook {
    /// Fingerprint of the configuration's bindings for this hook at the last start (`None`:
    /// it had none).
    configured: Option<String>,
    current: Option<Entry>,
    previous: Option<Entry>,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    format: u32,
    /// The highest version number ever given (numbers are never given twice).
    last_version: u64,
    /// By hook name.
    hooks: BTreeMap<String, SavedHook>,
}

impl Default for Saved {
    fn default() -> Self {
        Saved {
            format: 1,
            last_version: 0,
            hooks: BTreeMap::new(),
        }
    }
}

impl Saved {
    fn hook(&mut self, hook: Hook) -> &mut SavedHook {
        self.hooks.entry(hook.as_str().to_string()).or_default()
    }
}

/// The plugins an edge saves in its data folder, and the changes that go through them.
#[derive(Debug)]
pub struct Deployed {
    dir: PathBuf,
    /// The state as last written. Held across a change and its write (changes are admin
    /// calls, made on blocking threads), so changes are serialised.
    saved: Mutex<Saved>,
}

/// A plugin of the configuration, loaded.
struct Configured {
    index: usize,
    spec: String,
    name: String,
    wasm: Vec<u8>,
    config: BTreeMap<String, String>,
}

impl Deployed {
    /// Reads `<data>/plugins/state.json` (none yet: nothing was deployed).
    pub fn open(data: &Path) -> anyhow::Result<Deployed> {
        let dir = data.join("plugins");
        let file = dir.join("state.json");
        let saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {}: {e} (it lists the plugins deployed at run time; repair it, \
                     or remove it to start with the configuration's plugins only)",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
        };
        Ok(Deployed {
            dir,
            saved: Mutex::new(saved),
        })
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Binds what the edge starts with (see the module's documentation): the saved plugins
    /// or the configuration's, hook by hook. `host` makes the plugin host (only when there
    /// is something to bind).
    pub fn start<'h>(
        &self,
        cfg: &PluginsConfig,
        host: impl Fn() -> anyhow::Result<&'h PluginHost>,
    ) -> anyhow::Result<()> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = saved.clone();
        for hook in Hook::ALL {
            let configured = cfg
                .bind
                .iter()
                .enumerate()
                .filter(|(_, b)| b.hook == hook)
                .map(|(index, b)| {
                    let (wasm, name) = b.load().map_err(|e| {
                        anyhow::anyhow!(
                            "plugins.bind[{index}] ({} on the {} hook): {e}",
                            b.plugin,
                            hook.as_str()
                        )
                    })?;
                    Ok(Configured {
                        index,
                        spec: b.plugin.clone(),
                        name,
                        wasm,
                        config: b.config.clone(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let fingerprint = fingerprint(&configured);
            let had = next.hooks.get(hook.as_str()).cloned().unwrap_or_default();
            if had.configured == fingerprint {
                if had.current.is_some() || had.previous.is_some() {
                    let kept = self.revive(host()?, hook, &had, next.last_version)?;
                    *next.hook(hook) = kept;
                }
                continue;
            }
            if had.current.is_some() {
                tracing::info!(
                    target: "tessera::plugin",
                    hook = hook.as_str(),
                    "the configuration's plugins for this hook changed since the last start: \
                     they replace what was deployed at run time"
                );
            }
            let mut now = SavedHook {
                configured: fingerprint,
                current: None,
                previous: None,
            };
            for c in configured {
                let host = host()?;
                let plugin = host
                    .prepare(hook, &c.name, &c.wasm, c.config.clone())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "plugins.bind[{}] ({} on the {} hook): {e}",
                            c.index,
                            c.spec,
                            hook.as_str()
                        )
                    })?;
                self.keep_component(&c.wasm)?;
                next.last_version += 1;
                let entry = entry_of(plugin.info(), next.last_version, c.config);
                host.bind(plugin.stamp(entry.version, entry.deployed_at_ms));
                if let Some(old) = now.current.replace(entry) {
                    now.previous = Some(old);
                }
            }
            *next.hook(hook) = now;
        }
        next.hooks.retain(|_, h| *h != SavedHook::default());
        if next != *saved {
            self.save(&next)?;
            *saved = next;
        }
        Ok(())
    }

    /// Binds a hook's saved versions again; returns what was kept.
    fn revive(
        &self,
        host: &PluginHost,
        hook: Hook,
        had: &SavedHook,
        last_version: u64,
    ) -> anyhow::Result<SavedHook> {
        let current = match &had.current {
            Some(e) => Some(self.prepare_saved(host, hook, e).map_err(|err| {
                anyhow::anyhow!(
                    "cannot bind again the {} plugin {} v{} deployed at run time: {err}. The \
                     edge does not start without it (it may guard content): repair it, or \
                     remove {} to start with the configuration's plugins only",
                    hook.as_str(),
                    e.name,
                    e.version,
                    self.state_file().display()
                )
            })?),
            None => None,
        };
        let previous = had.previous.as_ref().and_then(|e| {
            self.prepare_saved(host, hook, e)
                .inspect_err(|err| {
                    tracing::warn!(
                        target: "tessera::plugin",
                        hook = hook.as_str(),
                        plugin = %e.name,
                        version = e.version,
                        "the previous version cannot be bound again and is dropped (no \
                         rollback to it): {err}"
                    )
                })
                .ok()
        });
        let kept = SavedHook {
            configured: had.configured.clone(),
            current: had.current.clone(),
            previous: previous.as_ref().and(had.previous.clone()),
        };
        host.restore(hook, current, previous, last_version);
        Ok(kept)
    }

    /// A saved version, compiled, checked and stamped with its old number.
    fn prepare_saved(&self, host: &PluginHost, hook: Hook, e: &Entry) -> anyhow::Result<Plugin> {
        let file = self.component_file(&e.blake3)?;
        let wasm = std::fs::read(&file)
            .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", file.display()))?;
        let got = blake3::hash(&wasm).to_hex();
        anyhow::ensure!(
            got.as_str() == e.blake3,
            "{} is damaged: its BLAKE3 is {got}",
            file.display()
        );
        let plugin = host.prepare(hook, &e.name, &wasm, e.config.clone())?;
        Ok(plugin.stamp(e.version, e.deployed_at_ms))
    }

    /// Checks `wasm` and binds it to `hook` once saved. Blocking.
    pub fn deploy(
        &self,
        host: &PluginHost,
        hook: Hook,
        name: &str,
        wasm: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<PluginInfo, Refusal> {
        let plugin = host
            .prepare(hook, name, wasm, config.clone())
            .map_err(|e| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        self.keep_component(wasm).map_err(not_saved)?;
        let mut next = saved.clone();
        next.last_version += 1;
        let entry = entry_of(plugin.info(), next.last_version, config);
        let stamp = (entry.version, entry.deployed_at_ms);
        let h = next.hook(hook);
        if let Some(old) = h.current.replace(entry) {
            h.previous = Some(old);
        }
        self.save(&next).map_err(not_saved)?;
        *saved = next;
        Ok(host.bind(plugin.stamp(stamp.0, stamp.1)))
    }

    /// Binds the previous version of `hook` again, once saved. Blocking.
    pub fn rollback(&self, host: &PluginHost, hook: Hook) -> Result<PluginInfo, Refusal> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = saved.clone();
        let h = next.hook(hook);
        if h.previous.is_none() {
            return Err(no_previous(hook));
        }
        std::mem::swap(&mut h.current, &mut h.previous);
        self.save(&next).map_err(not_saved)?;
        *saved = next;
        host.rollback(hook)
            .map_err(|e| Refusal::new(StatusCode::CONFLICT, e.to_string()))
    }

    /// Unbinds `hook`, once saved; `None` when nothing is bound. Blocking.
    pub fn remove(&self, host: &PluginHost, hook: Hook) -> Result<Option<PluginInfo>, Refusal> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = saved.clone();
        let h = next.hook(hook);
        let Some(old) = h.current.take() else {
            return Ok(None);
        };
        h.previous = Some(old);
        self.save(&next).map_err(not_saved)?;
        *saved = next;
        Ok(host.remove(hook))
    }

    fn component_file(&self, blake3: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            blake3.len() == 64 && blake3.bytes().all(|b| b.is_ascii_hexdigit()),
            "{blake3:?} is not a BLAKE3 hash"
        );
        Ok(self.dir.join(format!("{blake3}.wasm")))
    }

    /// Writes a component to `<blake3>.wasm`, unless a whole copy is there. Called with
    /// `saved` locked (a save removes the components the state does not name).
    fn keep_component(&self, wasm: &[u8]) -> std::io::Result<()> {
        let hash = blake3::hash(wasm);
        let file = self.dir.join(format!("{}.wasm", hash.to_hex()));
        if std::fs::read(&file).is_ok_and(|had| blake3::hash(&had) == hash) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(&file, wasm, true)
    }

    /// Writes `state.json`, then removes the components it no longer names.
    fn save(&self, s: &Saved) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let json = serde_json::to_vec_pretty(s).expect("plugin state serialises");
        write_atomic(&self.state_file(), &json, true)?;
        let named: std::collections::HashSet<String> = s
            .hooks
            .values()
            .flat_map(|h| [&h.current, &h.previous])
            .flatten()
            .map(|e| format!("{}.wasm", e.blake3))
            .collect();
        for f in std::fs::read_dir(&self.dir)?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if (name.ends_with(".wasm") && !named.contains(&name)) || name.ends_with(".tmp") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        Ok(())
    }
}

fn entry_of(info: &PluginInfo, version: u64, config: BTreeMap<String, String>) -> Entry {
    Entry {
        name: info.name.clone(),
        blake3: info.blake3.clone(),
        config,
        version,
        deployed_at_ms: info.deployed_at_ms,
    }
}

/// What identifies a hook's configured bindings: their components, names and
/// configurations, in order (`None`: no binding).
fn fingerprint(configured: &[Configured]) -> Option<String> {
    if configured.is_empty() {
        return None;
    }
    let all: Vec<_> = configured
        .iter()
        .map(|c| {
            (
                &c.name,
                blake3::hash(&c.wasm).to_hex().to_string(),
                &c.config,
            )
        })
        .collect();
    let json = serde_json::to_vec(&all).expect("bindings serialise");
    Some(blake3::hash(&json).to_hex().to_string())
}

/// `409`: `hook` has no previous version to roll back to.
pub fn no_previous(hook: Hook) -> Refusal {
    Refusal::new(
        StatusCode::CONFLICT,
        tessera_plugins::DeployError::NoPrevious(hook.as_str()).to_string(),
    )
}

fn not_saved(e: std::io::Error) -> Refusal {
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot save the plugin state in the data folder ({e}); nothing was changed"),
    )
}
