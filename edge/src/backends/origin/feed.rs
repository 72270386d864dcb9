//! Following the origin's change feed (origin mode): a publish or delete at the origin
//! removes the edge's copy of that file's manifest within a long-poll round trip, without
//! the origin knowing its edges.
//!
//! The position is saved in `feed.json` in the data folder after each batch, so a restarted
//! edge resumes where it stopped; when the origin says changes were dropped from its history
//! since then (`truncated`), every stored manifest is marked stale (a soft purge of all),
//! so each is revalidated by `ETag` on its next use. An edge without a saved position starts
//! at the head of the feed.
//!
//! A manifest fetch in flight while its file changes could store the old version after the
//! change removed it: [`Recent`] remembers recently changed paths so such a fetch is served
//! but not stored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tessera_origin_proto::ChunkHash;

use crate::backends::origin::OriginBackend;
use crate::backends::origin::manifest::manifest_key;
use crate::basics::clock::now_ms;
use crate::store::bans::{Ban, Selector};
use crate::store::entry::Value;

/// Seconds the origin holds a long poll.
const WAIT_SECS: u64 = 20;

/// `feed.json`, format version 1.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Position {
    version: u32,
    /// The `since` of the next call.
    next: u64,
}

/// Paths changed recently: the feed position of the change and the new version's hash
/// (`None` for a delete).
#[derive(Debug, Default)]
pub struct Recent {
    /// A std mutex: map operations only, no `.await` while held.
    map: Mutex<HashMap<String, (u64, Option<ChunkHash>, Instant)>>,
    /// Changes noted so far: the edge's own count, comparable whichever origin's feed (a
    /// cluster has one per node) reported them.
    noted: std::sync::atomic::AtomicU64,
    /// Size of `map` at which old changes are next swept out (under `map`'s lock).
    sweep_at: Mutex<usize>,
}

/// How long a change is remembered: longer than any manifest fetch may take.
const REMEMBER: Duration = Duration::from_secs(120);
/// Changes remembered before the first sweep.
const SWEEP_MIN: usize = 10_000;

impl Recent {
    fn note(&self, path: &str, version: Option<ChunkHash>) {
        let mut m = self.map.lock().unwrap();
        let seq = self.noted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        // Swept when it has grown past twice what the last sweep kept (at least 10,000): a
        // burst of changes all younger than `REMEMBER` costs one pass per doubling, not a
        // pass over the whole map per change while readers wait on this lock.
        let mut sweep_at = self.sweep_at.lock().unwrap();
        if m.len() >= (*sweep_at).max(SWEEP_MIN) {
            m.retain(|_, (_, _, at)| at.elapsed() < REMEMBER);
            *sweep_at = 2 * m.len();
        }
        m.insert(path.to_string(), (seq, version, Instant::now()));
    }

    /// The position to pass to [`Recent::superseded`] for a fetch starting now.
    pub fn position(&self) -> u64 {
        self.noted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `path` changed after feed position `position` to something other than
    /// `version` (a fetch that started at `position` and returned `version` is then stale).
    pub fn superseded(&self, path: &str, position: u64, version: &ChunkHash) -> bool {
        self.map
            .lock()
            .unwrap()
            .get(path)
            .is_some_and(|(seq, v, _)| *seq > position && v.as_ref() != Some(version))
    }
}

/// Starts following the feeds when the edge is configured to: the one feed of a standalone
/// origin (the URLs a failover list), or every node's feed of a cluster. The task runs until
/// aborted.
pub fn spawn(backend: Arc<OriginBackend>) -> Option<tokio::task::JoinHandle<()>> {
    if backend.feeds.is_empty() {
        return None;
    }
    let positions = Arc::new(
        (0..backend.feeds.len())
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect::<Vec<_>>(),
    );
    Some(tokio::spawn(async move {
        let runs = backend
            .feeds
            .iter()
            .enumerate()
            .map(|(slot, (origins, file))| {
                follow(&backend, origins, file.clone(), positions.clone(), slot)
            });
        futures_util::future::join_all(runs).await;
    }))
}

/// Follows one feed, read from `origins` in turn (a failover list), saving its position in
/// `file`; the position is also published in `positions[slot]` (the metric sums them).
async fn follow(
    backend: &OriginBackend,
    origins: &[usize],
    file: PathBuf,
    positions: Arc<Vec<std::sync::atomic::AtomicU64>>,
    slot: usize,
) {
    let saved = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Position>(&b).ok())
        .map(|p| p.next);
    // Without a saved position, start at the feed's head: replaying old history would only
    // remove what this edge fetched since it started. `since = MAX` asks for the head (the
    // origin answers "restarted" with its latest number), which is saved at once.
    let mut since = saved.unwrap_or(u64::MAX);
    let mut origin = 0usize;
    let mut backoff = Duration::from_millis(200);
    loop {
        let client = backend.origins.client(origins[origin % origins.len()]);
        let (store, metrics) = (&backend.ctx.store, &backend.ctx.metrics);
        // The origin holds the poll WAIT_SECS at most; one that holds it longer hangs.
        let limit = Duration::from_secs(WAIT_SECS) + backend.ctx.timeouts.first_byte();
        let polled = match tokio::time::timeout(limit, client.changes(since, WAIT_SECS)).await {
            Ok(polled) => polled.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
        };
        match polled {
            Ok(reply) => {
                backoff = Duration::from_millis(200);
                if since == u64::MAX {
                    // First contact: nothing was missed that this edge holds.
                } else if reply.truncated || reply.next < since {
                    // Missed changes (or the origin's history restarted): revalidate all.
                    tracing::warn!(
                        since,
                        next = reply.next,
                        "change feed gap; marking every manifest stale"
                    );
                    let ban = Ban {
                        selector: Selector::All,
                        at_ms: now_ms() + 1,
                        soft: true,
                    };
                    // The ban applies at once; only saving it can fail, and then a restart
                    // forgets it (the saved position is then behind too, so the gap is seen
                    // again and the ban made again).
                    if let Err(e) = store.bans.add(ban).await {
                        tracing::error!(error = %e, "cannot save the purge that marks every manifest stale");
                    }
                    metrics.purges.with_label_values(&["all", "soft"]).inc();
                }
                for c in &reply.changes {
                    // Noted first: a manifest fetch that returns after this sees the change
                    // (see `Recent::superseded`, checked in `manifest`).
                    backend.recent.note(&c.path, c.blake3);
                    let key = manifest_key(&c.path);
                    // Most changes in a burst are of files this edge never fetched: an index
                    // check, with no read of either tier, settles those.
                    if !store.cache.contains(&key) {
                        continue;
                    }
                    // A manifest already of the published version (fetched after the publish,
                    // before its change arrived here) stays.
                    let stale = match store.cache.get(&key).await {
                        Some((Value::Meta(m), _)) => c.blake3.is_none_or(|h| {
                            m.headers
                                .get(http::header::ETAG)
                                .as_ref()
                                .map(|v| v.as_bytes())
                                != Some(h.etag().as_bytes())
                        }),
                        Some(_) => true,
                        None => false,
                    };
                    if stale {
                        store.cache.remove(&key);
                    }
                }
                if reply.next != since {
                    since = reply.next;
                    positions[slot].store(since, std::sync::atomic::Ordering::SeqCst);
                    let sum: u64 = positions
                        .iter()
                        .map(|p| p.load(std::sync::atomic::Ordering::SeqCst))
                        .sum();
                    metrics.feed_position.set(sum as i64);
                    let json = serde_json::to_vec(&Position {
                        version: 1,
                        next: since,
                    })
                    .unwrap();
                    let (tmp, f) = (file.with_extension("json.tmp"), file.clone());
                    let saved = tokio::task::spawn_blocking(move || {
                        std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &f))
                    })
                    .await;
                    // Not fatal: a restart resumes from an older position and replays.
                    if let Ok(Err(e)) = saved {
                        tracing::warn!(file = %file.display(), error = %e, "cannot save the change feed position");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(origin = client.base(), error = %e, "change feed unavailable; retrying");
                origin += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_changes_is_swept_once_per_doubling_and_still_answers() {
        let r = Recent::default();
        let h = ChunkHash::of(b"v");
        for i in 0..50_000 {
            r.note(&format!("p{i}"), Some(h));
        }
        // Nothing is older than REMEMBER: all kept, and the next sweep waits for 2x.
        assert_eq!(r.map.lock().unwrap().len(), 50_000);
        assert!(*r.sweep_at.lock().unwrap() >= 2 * 40_000);
        assert!(r.superseded("p7", 0, &ChunkHash::of(b"other")));
        assert!(!r.superseded("p7", 0, &h));
        assert!(!r.superseded("p7", r.position(), &ChunkHash::of(b"other")));
    }
}
