//! Purges as bans (as Varnish calls them): a purge is a rule "entries matching X stored
//! before time T are gone (hard) or stale (soft)", checked when an entry is looked up. That
//! reaches entries in both tiers, including those written by an earlier run, without an
//! index of keys, and it costs nothing while no ban is active.
//!
//! # State file format (version 1)
//! `bans.json` in the edge's data folder: `{"version":1,"floor_ms":N,"bans":[Ban...]}`,
//! rewritten whole (write to a temporary file, fsync, rename) on every purge. `floor_ms`:
//! entries stored before it are stale (it grows when old bans are dropped to keep the list
//! short, so a dropped ban can never resurrect what it purged).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::basics::clock::now_ms;
use crate::basics::durable::write_atomic;
use crate::store::entry::Meta;

/// What a purge selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// Exactly this request path.
    Path(String),
    /// Every path starting with this.
    Prefix(String),
    /// Every response that carried this `Surrogate-Key`.
    Key(String),
    /// Everything.
    All,
}

impl Selector {
    pub fn kind(&self) -> &'static str {
        match self {
            Selector::Path(_) => "path",
            Selector::Prefix(_) => "prefix",
            Selector::Key(_) => "key",
            Selector::All => "all",
        }
    }

    fn matches(&self, m: &Meta) -> bool {
        match self {
            Selector::Path(p) => &m.path == p,
            Selector::Prefix(p) => m.path.starts_with(p.as_str()),
            Selector::Key(k) => m.surrogate_keys.iter().any(|s| s == k),
            Selector::All => true,
        }
    }
}

/// One purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub selector: Selector,
    /// Entries stored before this instant (ms since the epoch) are affected.
    pub at_ms: u64,
    /// Soft: affected entries are stale (revalidated on next use); hard: they are gone.
    pub soft: bool,
}

/// What the bans say of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanVerdict {
    Keep,
    Stale,
    Gone,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    floor_ms: u64,
    bans: Vec<Ban>,
}

/// Bans kept at most; older ones fold into the floor.
const MAX_BANS: usize = 1000;

/// The active bans, shared by all requests.
#[derive(Debug, Clone)]
pub struct Bans {
    /// A std `RwLock`: lookups only read, never across an `.await`, and purges are rare.
    state: Arc<RwLock<State>>,
    file: PathBuf,
}

impl Bans {
    /// Loads the bans saved in `dir`, or starts with none.
    pub fn load(dir: &Path) -> std::io::Result<Bans> {
        let file = dir.join("bans.json");
        match std::fs::read(&file) {
            Ok(bytes) => Bans::parse(&bytes, file.clone()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", file.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Bans {
                state: Arc::new(RwLock::new(State {
                    version: 1,
                    ..State::default()
                })),
                file,
            }),
            Err(e) => Err(e),
        }
    }

    /// The bans of a `bans.json` file's `bytes`, to be saved back to `file`.
    pub fn parse(bytes: &[u8], file: PathBuf) -> Result<Bans, serde_json::Error> {
        let state: State = serde_json::from_slice(bytes)?;
        Ok(Bans {
            state: Arc::new(RwLock::new(state)),
            file,
        })
    }

    /// The time to stamp on a response stored now: the clock, but never before the newest
    /// ban, so a response stored in the same millisecond as a purge, after it, is not
    /// covered by it (a ban covers what was stored before its `at_ms`).
    pub fn stamp_ms(&self) -> u64 {
        let now = now_ms();
        let s = self.state.read().unwrap();
        s.bans.last().map_or(now, |b| now.max(b.at_ms))
    }

    /// What the bans say of `meta`.
    pub fn verdict(&self, meta: &Meta) -> BanVerdict {
        let s = self.state.read().unwrap();
        let mut v = if meta.stored_at_ms < s.floor_ms {
            BanVerdict::Stale
        } else {
            BanVerdict::Keep
        };
        for b in s.bans.iter().rev() {
            if meta.stored_at_ms < b.at_ms && b.selector.matches(meta) {
                if !b.soft {
                    return BanVerdict::Gone;
                }
                v = BanVerdict::Stale;
            }
        }
        v
    }

    /// Adds a ban and saves the list durably before returning.
    pub async fn add(&self, ban: Ban) -> std::io::Result<()> {
        let json = {
            let mut s = self.state.write().unwrap();
            s.bans.push(ban);
            if s.bans.len() > MAX_BANS {
                let excess = s.bans.len() - MAX_BANS;
                let dropped: Vec<Ban> = s.bans.drain(..excess).collect();
                let newest = dropped.iter().map(|b| b.at_ms).max().unwrap_or(0);
                s.floor_ms = s.floor_ms.max(newest);
            }
            serde_json::to_vec(&*s).expect("bans serialise")
        };
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || write_atomic(&file, &json, false))
            .await
            .expect("ban writer does not panic")
    }

    /// Number of active bans.
    pub fn len(&self) -> usize {
        self.state.read().unwrap().bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::freshness::Freshness;
    use crate::store::entry::BodyRef;

    fn meta(path: &str, keys: &[&str], at: u64) -> Meta {
        Meta {
            status: 200,
            headers: Default::default(),
            freshness: Freshness::default(),
            stored_at_ms: at,
            path: path.into(),
            surrogate_keys: keys.iter().map(|s| s.to_string()).collect(),
            size: 0,
            body: BodyRef::Inline(Default::default()),
            placement: Default::default(),
        }
    }

    #[tokio::test]
    async fn bans_select_by_path_prefix_key_and_time_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let bans = Bans::load(dir.path()).unwrap();
        let old_a = meta("/img/a.png", &["team-x"], 10);
        let new_a = meta("/img/a.png", &["team-x"], 30);
        let b = meta("/css/b.css", &["team-y"], 10);
        assert_eq!(bans.verdict(&old_a), BanVerdict::Keep);
        let ban = |selector, soft| Ban {
            selector,
            at_ms: 20,
            soft,
        };
        bans.add(ban(Selector::Prefix("/img/".into()), true))
            .await
            .unwrap();
        assert_eq!(bans.verdict(&old_a), BanVerdict::Stale);
        assert_eq!(bans.verdict(&new_a), BanVerdict::Keep);
        assert_eq!(bans.verdict(&b), BanVerdict::Keep);
        bans.add(ban(Selector::Key("team-y".into()), false))
            .await
            .unwrap();
        assert_eq!(bans.verdict(&b), BanVerdict::Gone);
        bans.add(ban(Selector::Path("/img/a.png".into()), false))
            .await
            .unwrap();
        assert_eq!(bans.verdict(&old_a), BanVerdict::Gone);

        let again = Bans::load(dir.path()).unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(again.verdict(&old_a), BanVerdict::Gone);
        assert_eq!(again.verdict(&new_a), BanVerdict::Keep);
    }

    #[tokio::test]
    async fn dropping_old_bans_raises_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let bans = Bans::load(dir.path()).unwrap();
        for i in 0..(MAX_BANS as u64 + 5) {
            bans.add(Ban {
                selector: Selector::Path(format!("/p{i}")),
                at_ms: 100 + i,
                soft: false,
            })
            .await
            .unwrap();
        }
        assert_eq!(bans.len(), MAX_BANS);
        // "/p0" was purged by a dropped ban: the floor keeps it from coming back fresh.
        assert_eq!(bans.verdict(&meta("/p0", &[], 50)), BanVerdict::Stale);
        assert_eq!(bans.verdict(&meta("/p0", &[], 5000)), BanVerdict::Keep);
    }
}
