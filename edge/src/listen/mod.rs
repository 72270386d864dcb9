//! Layer 6, the listeners: plain HTTP (HTTP/1.1 and h2c with prior knowledge) and HTTPS
//! (HTTP/1.1 and HTTP/2 by ALPN) in [`tcp`], HTTP/3 over QUIC in [`h3`], and the admin API
//! in [`admin`], one file per group of endpoints. Each hands requests to the pipeline
//! ([`crate::pipeline::Edge::handle`]). Plain HTTP/1.1 connections leave hyper between
//! requests and wait with nothing but their socket (`parked.rs`). HTTP/2 content
//! connections are served with the h2 crate (`h2.rs`), so that they, like HTTP/1.1 and
//! HTTP/3 ones, can take interim responses (`interim.rs`).
//!
//! Every connection runs as a task of one [`TaskTracker`]: shutdown stops the accept loops,
//! closes the tracker and waits (up to 30 s) for the connections to finish their requests in
//! flight.

pub mod admin;
mod h2;
pub mod h3;
mod interim;
mod parked;
pub mod tcp;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::pipeline::Edge;

/// The sockets an edge serves, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain HTTP.
    pub http: Option<TcpListener>,
    /// HTTPS, with its TLS configuration (ALPN `h2`, `http/1.1`).
    pub https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// HTTP/3: a UDP socket (normally on the HTTPS address) and its QUIC configuration
    /// ([`h3::server_config`]). HTTP/1.1 and HTTP/2 responses then advertise it in
    /// `Alt-Svc`.
    pub h3: Option<(std::net::UdpSocket, quinn::ServerConfig)>,
    /// The admin API.
    pub admin: Option<TcpListener>,
}

/// Connections open per client address, across the TCP and QUIC listeners
/// (`max_connections_per_client`).
#[derive(Debug)]
pub(crate) struct PerClient {
    limit: usize,
    /// A std mutex: map operations only.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection counted against its client address until dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    pub(crate) fn new(limit: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            limit,
            open: Default::default(),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when it holds the limit already
    /// (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap();
        let n = open.entry(ip).or_default();
        if self.limit > 0 && *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A `Date` field for a response now (hyper adds one on HTTP/1.1; the HTTP/2 and HTTP/3
/// listeners add theirs, RFC 9110 §6.6.1).
/// Formatted once a second per thread, as hyper does.
fn date_now() -> http::HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, http::HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, http::HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|(at, value)| {
        if *at != secs {
            *value = http::HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .expect("an HTTP date is a valid field value");
            *at = secs;
        }
        value.clone()
    })
}

/// How long connections may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `edge` on `listeners` until `shutdown` completes, then lets requests in flight
/// finish (up to 30 s) and closes the cache (flushing the memory tier to SSD).
pub async fn run(
    listeners: Listeners,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let connections = TaskTracker::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut loops = tokio::task::JoinSet::new();
    let mut endpoint = None;
    let mut alt_svc = None;
    let per_client = PerClient::new(edge.config().max_connections_per_client);
    if let Some((socket, config)) = listeners.h3 {
        let port = socket.local_addr()?.port();
        let ep = crate::basics::quic::endpoint(socket, Some(config), &edge.config().quic)?;
        alt_svc = Some(h3::alt_svc(port));
        loops.spawn(h3::accept_loop(
            ep.clone(),
            edge.clone(),
            connections.clone(),
            stop_rx.clone(),
            per_client.clone(),
        ));
        endpoint = Some(ep);
    }
    let tcp = [
        (
            listeners.http.map(|l| (l, None)),
            tcp::Serves::Content(alt_svc.clone()),
        ),
        (
            listeners.https.map(|(l, tls)| (l, Some(tls))),
            tcp::Serves::Content(alt_svc),
        ),
        (listeners.admin.map(|l| (l, None)), tcp::Serves::Admin),
    ];
    // One cap for every content listener; the admin listener is outside it.
    let limit = Arc::new(tokio::sync::Semaphore::new(tcp::max_connections(
        edge.config(),
    )));
    for (listener, serves) in tcp {
        if let Some((l, tls)) = listener {
            let content = matches!(serves, tcp::Serves::Content(_));
            let limits = content.then(|| (limit.clone(), per_client.clone()));
            loops.spawn(tcp::accept_loop(
                l,
                tls,
                edge.clone(),
                connections.clone(),
                stop_rx.clone(),
                serves,
                limits,
            ));
        }
    }
    let background = edge.start_background();
    shutdown.await;
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    if let Some(task) = background {
        task.abort();
    }
    // Connections were told to finish their requests in flight and close (HTTP/2 GOAWAY).
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "connections still open 30 s after shutdown; closing them"
        );
    }
    if let Some(ep) = endpoint {
        // Let the last close frames go out.
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    edge.cache().close().await;
    Ok(())
}
