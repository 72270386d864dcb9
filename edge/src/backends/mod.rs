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
use std::time::Instant;

use crate::basics::config::Timeouts;
use crate::basics::error::{FetchError, FetchFailure};
use crate::basics::metrics::{FetchKind, Metrics};
use crate::coalesce::fill::Background;
use crate::store::Store;
use crate::store::advice::Advisor;

/// What a backend works with.
#[derive(Debug, Clone)]
pub struct Context {
    pub store: Store,
    pub metrics: Metrics,
    /// Eviction advice for what the backend stores.
    pub advisor: Arc<dyn Advisor>,
    /// How long to wait on origins and upstreams, and when to hedge.
    pub timeouts: Timeouts,
    /// Cap on heuristic freshness, seconds.
    pub heuristic_cap_secs: u64,
    /// Largest body stored, bytes.
    pub max_object_bytes: u64,
    /// Whether a response with `Set-Cookie` may be stored (without it).
    pub store_set_cookie: bool,
    /// Body bytes one fill holds at most ([`crate::coalesce::fill`]).
    pub fill_window_bytes: usize,
    /// Whether partial objects are kept in slices (upstream mode; `slice_bytes` not 0).
    pub slices: bool,
    /// The stored fills that may go on with no reader left.
    pub background_fills: Background,
}

impl Context {
    /// One request to an origin or upstream: counted by `kind`, timed to its answer, and cut
    /// off after the first-byte timeout, which is counted as a `timeout` failure and gives
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
        match tokio::time::timeout(self.timeouts.first_byte(), f).await {
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

    /// The next piece of a response body, or a `timeout` failure (counted) when none came
    /// within the between-bytes timeout. `from` names the origin in the error.
    pub async fn next_piece<T>(
        &self,
        piece: impl std::future::Future<Output = T>,
        from: &str,
    ) -> Result<T, FetchError> {
        tokio::time::timeout(self.timeouts.between_bytes(), piece)
            .await
            .map_err(|_| {
                self.failed(FetchFailure::Timeout);
                FetchError::new(
                    FetchFailure::Timeout,
                    format!(
                        "{from} sent nothing for {} ms in the middle of a body",
                        self.timeouts.between_bytes_ms
                    ),
                )
            })
    }

    /// Runs `first`; when it has not answered within the hedge delay and there is a
    /// `second`, runs that too. The first good answer (`good`) wins and the other request is
    /// dropped, which cancels it; when one fails, the other's answer is taken. Returns the
    /// answer and whether it came from `second`. Each race is counted in
    /// `tessera_edge_origin_hedges_total` by its winner.
    pub async fn hedged<T>(
        &self,
        first: impl std::future::Future<Output = T>,
        second: Option<impl std::future::Future<Output = T>>,
        good: impl Fn(&T) -> bool,
    ) -> (T, bool) {
        let mut first = std::pin::pin!(first);
        let (Some(delay), Some(second)) = (self.timeouts.hedge_after(), second) else {
            return (first.await, false);
        };
        tokio::select! {
            t = &mut first => return (t, false),
            _ = tokio::time::sleep(delay) => {}
        }
        let mut second = std::pin::pin!(second);
        let count = |winner: &str| {
            self.metrics
                .origin_hedges
                .with_label_values(&[winner])
                .inc()
        };
        let (answer, from_second) = tokio::select! {
            t = &mut first => if good(&t) { (t, false) } else { (second.await, true) },
            t = &mut second => if good(&t) { (t, true) } else { (first.await, false) },
        };
        count(match (good(&answer), from_second) {
            (false, _) => "none",
            (true, false) => "first",
            (true, true) => "second",
        });
        (answer, from_second)
    }

    /// Counts a failure to fetch from an origin or upstream.
    pub fn failed(&self, failure: FetchFailure) {
        self.metrics
            .origin_errors
            .with_label_values(&[failure.as_str()])
            .inc();
    }
}
