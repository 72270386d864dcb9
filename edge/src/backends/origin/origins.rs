//! The origin nodes an edge reads from: a client for each, the cluster's ring when they
//! form one, and which of them failed lately.

use std::sync::atomic::{AtomicU64, Ordering};

use tessera_origin_proto::ring::Ring;
use tessera_origin_proto::{ChunkHash, OriginClient};

use crate::basics::clock::now_ms;
use crate::basics::config::OriginRing;

/// How long an origin that could not be reached is tried last, ms.
const DOWN_MS: u64 = 3000;

#[derive(Debug)]
pub struct Origins {
    clients: Vec<OriginClient>,
    /// Placement of the origin cluster, when the origins are one.
    ring: Option<Ring>,
    /// Per origin: until when (Unix ms) it is tried last, after a failure to reach it.
    down: Vec<AtomicU64>,
}

impl Origins {
    /// Clients for `urls`, placed by `ring` when they are a cluster (one ring node per URL,
    /// in order).
    pub fn new(urls: &[String], ring: Option<&OriginRing>) -> anyhow::Result<Origins> {
        anyhow::ensure!(
            !urls.is_empty(),
            "origin mode needs at least one origin URL"
        );
        let clients = urls
            .iter()
            .map(|u| OriginClient::new(u, None))
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
            down: (0..clients.len()).map(|_| Default::default()).collect(),
            clients,
            ring,
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

    /// Origin `i` could not be reached: try it last for a few seconds.
    pub fn failed(&self, i: usize) {
        self.down[i].store(now_ms() + DOWN_MS, Ordering::Relaxed);
    }

    /// Origins to try, in order: the preference list (all origins without a ring), those
    /// that failed in the last seconds moved to the end.
    fn order(&self, preference: Option<Vec<usize>>) -> Vec<usize> {
        let list = preference.unwrap_or_else(|| (0..self.clients.len()).collect());
        let now = now_ms();
        let down = |i: &usize| self.down[*i].load(Ordering::Relaxed) > now;
        let (mut up, rest): (Vec<usize>, Vec<usize>) = list.into_iter().partition(|i| !down(i));
        up.extend(rest);
        up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_origin_is_tried_last() {
        let urls = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ]
        .map(String::from);
        let o = Origins::new(&urls, None).unwrap();
        assert_eq!(o.for_file("a"), [0, 1, 2]);
        o.failed(0);
        assert_eq!(o.for_file("a"), [1, 2, 0]);
        assert!(Origins::new(&[], None).is_err());
    }
}
