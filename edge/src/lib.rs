//! The Tessera edge node: a caching reverse proxy with a memory tier and an SSD tier, in
//! front of Tessera origin nodes (content addressed: chunks cached by blake3) or of any HTTP
//! server (an RFC 9111 shared cache).
//!
//! This crate holds no command-line code: `tessera edge` (in `topology/`) builds an
//! [`EdgeConfig`] and calls [`run`].
//!
//! # Layout
//! - [`config`]: [`EdgeConfig`], TOML with defaults.
//! - [`cache`]: the two tiers (foyer hybrid cache), keys, stored values and their disk format.
//! - [`freshness`]: RFC 9111 rules, free of I/O and clocks.
//! - [`proxy`]: the request pipeline every protocol shares, and serving from cache.
//! - [`origin_mode`]: manifests and chunks from Tessera origins.
//! - [`upstream`]: whole responses from any HTTP server.
//! - [`fill`]: request coalescing (one origin fetch per key).
//! - [`purge`]: purges as bans, persistent.
//! - [`plugins`]: the WebAssembly hooks (authorize, route, eviction advice) and their admin
//!   API, over [`tessera_plugins`].
//! - [`feed`]: following the origin's change feed.
//! - [`server`]: listeners (HTTP, HTTPS with HTTP/2) and the admin API.
//! - [`h3`]: the HTTP/3 listener (quinn + h3).
//! - [`tls`]: certificates and the rustls configuration.
//! - [`metrics`]: Prometheus metrics; [`access`]: the access log.
//! - [`client`]: an HTTP/1.1, HTTP/2 and HTTP/3 client (`tessera get`, tests, benchmarks).

pub mod access;
pub mod cache;
pub mod client;
pub mod config;
pub mod feed;
pub mod fill;
pub mod freshness;
pub mod h3;
pub mod metrics;
pub mod origin_mode;
pub mod plugins;
pub mod proxy;
pub mod purge;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::{Backend, EdgeConfig};
pub use proxy::{Edge, Protocol};
pub use server::{Listeners, run};
