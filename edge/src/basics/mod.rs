//! Layer 0, the basics: what every other layer uses and which uses nothing of the edge's own.
//! Bodies and their helpers, the clock, errors (client-facing [`error::Refusal`] and
//! [`error::FetchError`] from origins and upstreams), protocol names and decoding, QUIC
//! settings, the configuration, durable state files, TLS and the metrics.

pub mod body;
pub mod clock;
pub mod config;
pub mod durable;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod quic;
pub mod tls;
