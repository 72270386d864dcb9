//! The origin nodes an edge reads from: a client for each, the cluster's ring when they
//! form one, and outlier detection: which of them to ask last for a while.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounterVec;
use tessera_origin_proto::ring::Ring;
use tessera_origin_proto::{ChunkHash, OriginClient};

use crate::basics::clock::now_ms;
use crate::basics::config::{OriginRing, Outliers};

/// Ejections in a row past which the ejection time stops growing.
const MAX_EJECTION_FACTOR: u64 = 10;

#[derive(Debug)]
pub struct Origins {
    clients: Vec<OriginClient>,
    /// Placement of the origin cluster, when the origins are one.
    ring: Option<Ring>,
    /// Per origin, its record for outlier detection.
    health: Vec<Health>,
    outliers: Outliers,
    ejections: IntCounterVec,
}

/// What outlier detection knows of one origin.
#[derive(Debug, Default)]
struct Health {
    /// Failures since its last success.
    failures: AtomicU32,
    /// Ejections in a row (cleared by a success after the last one ended).
    ejections: AtomicU32,
    /// Until when (Unix ms) it is asked last.
    ejected_until: AtomicU64,
}

impl Origins {
    /// Clients for `urls`, connecting within `connect_timeout`, placed by `ring` when they
    /// are a cluster (one ring node per URL, in order); `outliers` says when one is ejected,
    /// counted in `ejections` by URL.
    pub fn new(
        urls: &[String],
        ring: Option<&OriginRing>,
        connect_timeout: Duration,
        outliers: Outliers,
        ejections: IntCounterVec,
    ) -> anyhow::Result<Origins> {
        anyhow::ensure!(
            !urls.is_empty(),
            "origin mode needs at least one origin URL"
        );
        let clients = urls
            .iter()
            .map(|u| OriginClient::new(u, None).map(|c| c.connect_timeout(connect_timeout)))
            .collect::<Result<Vec<_>, _>>()?;
        let ring = match ring {
            Some(r) => {
                anyhow::ensure!(
                    r.nodes.len() == clients.len(),
                    "the origin ring names {} nodes but {} origin URLs are given",
                    r.nodes.len(),
                    clients.len()
                );
                Some(Ring::new(r.nodes.clone(), r.vnodes, r.replication))
            }
            None => None,
        };
        Ok(Origins {
            health: (0..clients.len()).map(|_| Health::default()).collect(),
            clients,
            ring,
            outliers,
            ejections,
        })
    }

    /// The client of origin `i`.
    pub fn client(&self, i: usize) -> &OriginClient {
        &self.clients[i]
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Whether the origins form a cluster with a ring (each has its own change feed).
    pub fn is_cluster(&self) -> bool {
        self.ring.is_some()
    }

    /// Origins to ask for the manifest of `path`: its owners first.
    pub fn for_file(&self, path: &str) -> Vec<usize> {
        self.order(self.ring.as_ref().map(|r| r.file_nodes(path)))
    }

    /// Origins to ask for chunk `hash`: its owners first.
    pub fn for_chunk(&self, hash: &ChunkHash) -> Vec<usize> {
        self.order(self.ring.as_ref().map(|r| r.chunk_nodes(hash)))
    }

    /// Origin `i` failed (no connection, no answer in time, an error status, a broken or
    /// corrupt body, or it lost a hedge): ejected when that makes enough failures in a row,
    /// or when it is on probation after an ejection.
    pub fn failed(&self, i: usize) {
        let limit = self.outliers.consecutive_failures;
        let h = &self.health[i];
        let failures = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        if limit == 0 || failures < limit || h.ejected_until.load(Ordering::Relaxed) > now {
            return;
        }
        let times = h.ejections.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        let for_ms = self.outliers.eject_secs * 1000 * times.min(MAX_EJECTION_FACTOR);
        h.ejected_until.store(now + for_ms, Ordering::Relaxed);
        // On probation when it comes back: one more failure ejects it again.
        h.failures.store(limit - 1, Ordering::Relaxed);
        let url = self.clients[i].base();
        self.ejections.with_label_values(&[url]).inc();
        tracing::warn!(
            origin = url,
            failures,
            seconds = for_ms / 1000,
            "origin ejected: asked last until it is back"
        );
    }

    /// Origin `i` answered: its failures in a row are cleared, and so are its ejections
    /// once it is back.
    pub fn succeeded(&self, i: usize) {
        let h = &self.health[i];
        if h.failures.load(Ordering::Relaxed) != 0 {
            h.failures.store(0, Ordering::Relaxed);
        }
        if h.ejections.load(Ordering::Relaxed) != 0
            && h.ejected_until.load(Ordering::Relaxed) <= now_ms()
        {
            h.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Whether origin `i` is ejected now.
    pub fn is_ejected(&self, i: usize) -> bool {
        self.health[i].ejected_until.load(Ordering::Relaxed) > now_ms()
    }

    /// Origins to try, in order: the preference list (all origins without a ring), those
    /// ejected moved to the end.
    fn order(&self, preference: Option<Vec<usize>>) -> Vec<usize> {
        let list = preference.unwrap_or_else(|| (0..self.clients.len()).collect());
        let (mut up, rest): (Vec<usize>, Vec<usize>) =
            list.into_iter().partition(|&i| !self.is_ejected(i));
        up.extend(rest);
        up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(urls: &[String], outliers: Outliers) -> anyhow::Result<Origins> {
        let metrics = crate::basics::metrics::Metrics::default();
        let d = Duration::from_secs(1);
        Origins::new(urls, None, d, outliers, metrics.origin_ejections)
    }

    #[test]
    fn an_origin_that_keeps_failing_is_asked_last_then_on_probation() {
        let urls = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ]
        .map(String::from);
        let outliers = Outliers {
            consecutive_failures: 3,
            eject_secs: 30,
        };
        let o = origins(&urls, outliers).unwrap();
        assert_eq!(o.for_file("a"), [0, 1, 2]);
        // Failures broken by a success do not add up.
        o.failed(0);
        o.failed(0);
        o.succeeded(0);
        o.failed(0);
        o.failed(0);
        assert_eq!(o.for_file("a"), [0, 1, 2]);
        o.failed(0);
        assert_eq!(o.for_file("a"), [1, 2, 0]);
        assert!(o.is_ejected(0));
        assert_eq!(
            o.ejections.with_label_values(&[o.client(0).base()]).get(),
            1
        );
        // Back (its time forced over): on probation, one failure ejects it for twice as long.
        o.health[0].ejected_until.store(0, Ordering::Relaxed);
        assert_eq!(o.for_file("a"), [0, 1, 2]);
        o.failed(0);
        let until = o.health[0].ejected_until.load(Ordering::Relaxed);
        assert!(until > now_ms() + 59_000, "ejected for 60 s");
        // Back again, a success clears it.
        o.health[0].ejected_until.store(0, Ordering::Relaxed);
        o.succeeded(0);
        o.failed(0);
        assert!(!o.is_ejected(0));
        assert!(origins(&[], outliers).is_err());
        let never = Outliers {
            consecutive_failures: 0,
            eject_secs: 30,
        };
        let o = origins(&urls, never).unwrap();
        (0..100).for_each(|_| o.failed(0));
        assert!(!o.is_ejected(0));
    }
}
