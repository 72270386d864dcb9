//! Layer 4, the backends: where misses go. [`origin`] reads Tessera origins (manifests and
//! chunks by content address, the change feed), [`upstream`] any HTTP server (whole
//! responses, RFC 9111). A backend never sees the edge and never builds a response for a
//! client: it gets a [`Context`] (the store, the metrics, an eviction [`Advisor`] and the
//! limits of a fetch) and returns typed results and [`FetchError`]s, which the pipeline
//! turns into responses.
//!
//! [`FetchError`]: crate::basics::error::FetchError

pub mod origin;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::basics::error::FetchFailure;
use crate::basics::metrics::{FetchKind, Metrics};
use crate::store::Store;
use crate::store::advice::Advisor;

/// What a backend works with.
#[derive(Debug, Clone)]
pub struct Context {
    pub store: Store,
    pub metrics: Metrics,
    /// Eviction advice for what the backend stores.
    pub advisor: Arc<dyn Advisor>,
    /// Time to wait for an origin's or upstream's response head.
    pub origin_timeout: Duration,
    /// Cap on heuristic freshness, seconds.
    pub heuristic_cap_secs: u64,
    /// Largest body stored, bytes.
    pub max_object_bytes: u64,
    /// Body bytes one fill holds at most ([`crate::coalesce::fill`]).
    pub fill_window_bytes: usize,
}

impl Context {
    /// One request to an origin or upstream: counted by `kind`, timed to its answer, and cut
    /// off after the origin timeout, which is counted as a `timeout` failure and gives
    /// `None`.
    pub async fn call<T>(
        &self,
        kind: FetchKind,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        self.metrics
            .origin_fetches
            .with_label_values(&[kind.as_str()])
            .inc();
        let started = Instant::now();
        match tokio::time::timeout(self.origin_timeout, f).await {
            Ok(answer) => {
                self.metrics
                    .origin_latency
                    .observe(started.elapsed().as_secs_f64());
                Some(answer)
            }
            Err(_) => {
                self.failed(FetchFailure::Timeout);
                None
            }
        }
    }

    /// Counts a failure to fetch from an origin or upstream.
    pub fn failed(&self, failure: FetchFailure) {
        self.metrics
            .origin_errors
            .with_label_values(&[failure.as_str()])
            .inc();
    }
}
