//! How a request was answered, as one value: the text of its `Cache-Status` entry (RFC
//! 9211), its metric labels and its access-log fields are all made here, from enums. And the
//! one mapping from a failed fetch to what the client is told.

use http::StatusCode;

use crate::basics::error::{FetchError, FetchFailure, Refusal};
use crate::store::tiers::Tier;

/// The cache's part in an answer (the `result` label of `tessera_edge_cache_lookups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Pass,
}

impl CacheResult {
    /// Every result, in the order stats list them.
    pub const ALL: [CacheResult; 5] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Revalidated,
        CacheResult::Pass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Pass => "pass",
        }
    }
}

/// The `tier` labels: where a lookup found its answer, or `none`.
pub const TIER_LABELS: [&str; 3] = ["memory", "disk", "none"];

/// Why a request went past the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// Not a `GET` or `HEAD`.
    Method,
    /// The request said `no-store`.
    Request,
    /// The response may not be shared with this request.
    Uncacheable,
    /// A plugin answered.
    Plugin,
    /// The request failed.
    Error,
}

impl PassReason {
    fn as_str(self) -> &'static str {
        match self {
            PassReason::Method => "method",
            PassReason::Request => "request",
            PassReason::Uncacheable => "uncacheable",
            PassReason::Plugin => "plugin",
            PassReason::Error => "error",
        }
    }
}

/// Why a stale response was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The request's `max-stale` accepted it.
    MaxStale,
    /// Within `stale-while-revalidate`: revalidated in the background.
    WhileRevalidate,
    /// The origin failed, within `stale-if-error` (or the request's `max-stale`).
    IfError,
}

impl StaleReason {
    fn as_str(self) -> &'static str {
        match self {
            StaleReason::MaxStale => "max-stale",
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    Hit {
        ttl: i64,
    },
    Stale {
        ttl: i64,
        why: StaleReason,
    },
    /// A miss; whether the response is stored.
    Miss {
        stored: bool,
    },
    /// A miss the origin answered with 404 (nothing published there).
    Absent,
    /// A stale response's revalidation that got a new response of this status.
    Refetched {
        status: u16,
        stored: bool,
    },
    /// A stale response's revalidation that the origin confirmed with this status.
    Revalidated {
        status: u16,
    },
    Pass(PassReason),
}

/// How a response was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    detail: Detail,
    tier: Option<Tier>,
    /// The request waited for another request's fetch instead of making its own.
    collapsed: bool,
}

impl Outcome {
    fn new(detail: Detail, tier: Option<Tier>) -> Outcome {
        Outcome {
            detail,
            tier,
            collapsed: false,
        }
    }

    pub fn hit(tier: Tier, ttl: i64) -> Outcome {
        Outcome::new(Detail::Hit { ttl }, Some(tier))
    }

    pub fn stale(tier: Tier, ttl: i64, why: StaleReason) -> Outcome {
        Outcome::new(Detail::Stale { ttl, why }, Some(tier))
    }

    pub fn miss(stored: bool) -> Outcome {
        Outcome::new(Detail::Miss { stored }, None)
    }

    /// A miss of something the origin does not hold (its `404`).
    pub fn absent() -> Outcome {
        Outcome::new(Detail::Absent, None)
    }

    pub fn refetched(status: u16, stored: bool) -> Outcome {
        Outcome::new(Detail::Refetched { status, stored }, None)
    }

    pub fn revalidated(status: u16) -> Outcome {
        Outcome::new(Detail::Revalidated { status }, None)
    }

    pub fn pass(why: PassReason) -> Outcome {
        Outcome::new(Detail::Pass(why), None)
    }

    /// Marks the answer as collapsed into another request's fetch (when `collapsed`).
    pub fn collapsed(mut self, collapsed: bool) -> Outcome {
        self.collapsed = collapsed;
        self
    }

    pub fn result(&self) -> CacheResult {
        match self.detail {
            Detail::Hit { .. } => CacheResult::Hit,
            Detail::Stale { .. } => CacheResult::Stale,
            Detail::Miss { .. } | Detail::Absent | Detail::Refetched { .. } => CacheResult::Miss,
            Detail::Revalidated { .. } => CacheResult::Revalidated,
            Detail::Pass(_) => CacheResult::Pass,
        }
    }

    /// The `tier` label: `memory`, `disk` or `none`.
    pub fn tier_label(&self) -> &'static str {
        self.tier.map(Tier::as_str).unwrap_or("none")
    }

    /// The parameters of this cache's `Cache-Status` entry (RFC 9211).
    pub fn cache_status(&self) -> String {
        let stored = |s: bool| if s { "; stored" } else { "" };
        let mut text = match self.detail {
            Detail::Hit { ttl } => format!("hit; ttl={ttl}; detail={}", self.tier_label()),
            Detail::Stale { ttl, why } => format!("hit; ttl={ttl}; detail={}", why.as_str()),
            Detail::Miss { stored: s } => format!("fwd=miss{}", stored(s)),
            Detail::Absent => "fwd=miss; fwd-status=404".to_string(),
            Detail::Refetched { status, stored: s } => {
                format!("fwd=stale; fwd-status={status}{}", stored(s))
            }
            Detail::Revalidated { status } => format!("fwd=stale; fwd-status={status}"),
            Detail::Pass(why) => format!("fwd={}", why.as_str()),
        };
        if self.collapsed {
            text.push_str("; collapsed");
        }
        text
    }
}

/// What a client is told when a fetch failed: `504` when the origin did not answer in time,
/// else `502`, with the fetch's message.
pub fn refusal_of(e: &FetchError) -> Refusal {
    let (status, public) = match e.failure {
        FetchFailure::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "the origin did not answer in time",
        ),
        FetchFailure::Client => (
            StatusCode::BAD_REQUEST,
            "the request body is malformed or broke off",
        ),
        FetchFailure::Connect => (StatusCode::BAD_GATEWAY, "the origin could not be reached"),
        FetchFailure::Status => (StatusCode::BAD_GATEWAY, "the origin answered with an error"),
        FetchFailure::Body => (StatusCode::BAD_GATEWAY, "the origin's answer broke off"),
        FetchFailure::Malformed => (
            StatusCode::BAD_GATEWAY,
            "the origin's answer could not be understood",
        ),
        FetchFailure::Corrupt => (
            StatusCode::BAD_GATEWAY,
            "the origin's data failed its integrity check",
        ),
        FetchFailure::Changed => (
            StatusCode::BAD_GATEWAY,
            "the object changed at the origin while it was read in parts; retry",
        ),
        FetchFailure::Abandoned => (
            StatusCode::BAD_GATEWAY,
            "the fetch this request shared was abandoned; retry",
        ),
    };
    Refusal::internal(status, public, e.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_texts() {
        assert_eq!(
            Outcome::hit(Tier::Disk, 5).cache_status(),
            "hit; ttl=5; detail=disk"
        );
        assert_eq!(
            Outcome::stale(Tier::Memory, -3, StaleReason::IfError).cache_status(),
            "hit; ttl=-3; detail=stale-if-error"
        );
        assert_eq!(
            Outcome::miss(true).collapsed(true).cache_status(),
            "fwd=miss; stored; collapsed"
        );
        assert_eq!(
            Outcome::refetched(200, false).cache_status(),
            "fwd=stale; fwd-status=200"
        );
        assert_eq!(Outcome::revalidated(304).result(), CacheResult::Revalidated);
        let absent = Outcome::absent();
        assert_eq!(absent.cache_status(), "fwd=miss; fwd-status=404");
        assert_eq!(absent.result(), CacheResult::Miss);
        assert_eq!(Outcome::refetched(200, true).result(), CacheResult::Miss);
        let pass = Outcome::pass(PassReason::Plugin);
        assert_eq!(
            (pass.cache_status().as_str(), pass.tier_label()),
            ("fwd=plugin", "none")
        );
    }

    #[test]
    fn timeouts_are_504_a_client_body_400_and_other_failures_502() {
        let t = refusal_of(&FetchError::new(FetchFailure::Timeout, "slow"));
        assert_eq!(
            (t.status, t.message.as_str(), t.detail.as_deref()),
            (
                StatusCode::GATEWAY_TIMEOUT,
                "the origin did not answer in time",
                Some("slow")
            )
        );
        let c = refusal_of(&FetchError::new(FetchFailure::Client, "bad chunk"));
        assert_eq!(c.status, StatusCode::BAD_REQUEST);
        for f in [
            FetchFailure::Connect,
            FetchFailure::Corrupt,
            FetchFailure::Abandoned,
        ] {
            assert_eq!(
                refusal_of(&FetchError::new(f, "x")).status,
                StatusCode::BAD_GATEWAY
            );
        }
    }
}
