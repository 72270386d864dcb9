//! HTTP/3: the QUIC listener (quinn + h3) that shares the HTTPS listener's address and
//! certificate, and hands every request to the same pipeline as HTTP/1.1 and HTTP/2.
//!
//! Each connection runs on its own task and each request on another. A response body is
//! sent as the pipeline yields it: `send_data` waits while QUIC flow control is exhausted, so
//! a slow reader holds back the cache or origin read behind it rather than filling memory.
//! A client that stops reading altogether is cut off after `send_stall_secs`.
//!
//! Limits: request heads must arrive within `header_timeout_secs`; a header section over
//! `max_header_bytes` gets `431` (h3's own answer); at most `max_streams` requests at once per
//! connection (QUIC stream credit, so a client that opens streams without end is held to it);
//! malformed frames are H3 connection or stream errors, and malformed packets are dropped by
//! quinn. Every early end is counted in `tessera_edge_quic_events_total`.
//!
//! Shutdown sends GOAWAY, lets requests in flight finish, waits briefly for the client to
//! close (so the last bytes are delivered), then closes with `H3_NO_ERROR`.
//!
//! 0-RTT is not offered: a replayable early request buys one round trip on reconnection,
//! and h3 0.0.8 does not tell the server which requests arrived early, so the edge could not
//! limit it to safe methods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h3::error::{ConnectionError, StreamError};
use h3::server::RequestStream;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tracing::debug;

use tokio_util::task::TaskTracker;

use super::interim::{Sink, relay};
use crate::basics::body::{BoxError, data_frame};
use crate::basics::config::EdgeConfig;
use crate::basics::protocol::Protocol;
use crate::basics::tls::{Identity, TlsError};
use crate::pipeline::Edge;

/// The QUIC server configuration: TLS 1.3 with ALPN `h3`, and the edge's transport settings.
pub fn server_config(id: &Identity, cfg: &EdgeConfig) -> Result<quinn::ServerConfig, TlsError> {
    let tls = crate::basics::tls::server_config(id, &[b"h3"])?;
    let tls = Arc::try_unwrap(tls).unwrap_or_else(|a| (*a).clone());
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Generate(format!("QUIC needs TLS 1.3: {e}")))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(Arc::new(cfg.quic.transport()));
    Ok(sc)
}

/// A TCP listener for HTTPS and a UDP socket for HTTP/3 on the same address and port. With
/// port 0, the TCP bind picks the port and the UDP socket follows; when that UDP port is
/// taken, another TCP port is tried (up to 50 times).
pub async fn bind_https_and_quic(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::TcpListener, std::net::UdpSocket)> {
    let mut tries = 0;
    loop {
        let tcp = tokio::net::TcpListener::bind(addr).await?;
        match std::net::UdpSocket::bind(tcp.local_addr()?) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(_) if addr.port() == 0 && tries < 50 => tries += 1,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("UDP {} for HTTP/3: {e}", tcp.local_addr()?),
                ));
            }
        }
    }
}

/// The `Alt-Svc` value advertising HTTP/3 on `port`.
pub fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).expect("ASCII")
}

/// Accepts QUIC connections on `endpoint` until `stop`, then refuses new ones; open
/// connections, tasks of `connections`, finish on their own.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    edge: Arc<Edge>,
    connections: TaskTracker,
    mut stop: tokio::sync::watch::Receiver<bool>,
    per_client: Arc<crate::listen::PerClient>,
) {
    let handshaking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let event = |e: &str| edge.metrics().quic_events.with_label_values(&[e]).inc();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = stop.changed() => break,
        };
        // Address validation under load (RFC 9000 §8.1): past `retry_after_handshakes`
        // handshakes in progress, a client must first prove its address with a stateless
        // Retry (a spoofed flood then costs a packet each, no state); past
        // `max_handshakes` even validated ones are refused until some finish.
        let limits = &edge.config().quic;
        let now = handshaking.load(std::sync::atomic::Ordering::Relaxed);
        if now >= limits.max_handshakes {
            event("refused");
            incoming.refuse();
            continue;
        }
        if now >= limits.retry_after_handshakes
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            event("retry");
            let _ = incoming.retry();
            continue;
        }
        let Some(slot) = per_client.admit(incoming.remote_address().ip()) else {
            edge.metrics()
                .connections_refused
                .with_label_values(&["quic"])
                .inc();
            incoming.refuse();
            continue;
        };
        handshaking.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done = handshaking.clone();
        let handshake_over = scopeguard(move || {
            done.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
        connections.spawn(connection(
            incoming,
            edge.clone(),
            stop.clone(),
            handshake_over,
            slot,
        ));
    }
    endpoint.set_server_config(None);
}

async fn connection(
    incoming: quinn::Incoming,
    edge: Arc<Edge>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handshake_over: impl Send,
    // Counted against the client's address while the connection lives.
    _slot: crate::listen::ClientSlot,
) {
    let m = edge.metrics().clone();
    let event = |e: &str| m.quic_events.with_label_values(&[e]).inc();
    let timeout = Duration::from_secs(edge.config().header_timeout_secs.max(1));
    let handshake = tokio::time::timeout(timeout, incoming).await;
    // No longer in progress (a guard: also when this task is cut short).
    drop(handshake_over);
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(error = %e, "QUIC handshake failed");
            event("handshake_failed");
            return;
        }
        Err(_) => {
            event("handshake_timeout");
            return;
        }
    };
    let peer = canonical(conn.remote_address());
    m.quic_connections.inc();
    let _open = scopeguard(|| m.quic_connections.dec());
    let quic = conn.clone();
    let built = h3::server::builder()
        .max_field_section_size(edge.config().max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await;
    let mut h3conn = match built {
        Ok(c) => c,
        Err(e) => {
            debug!(%peer, error = %e, "HTTP/3 setup failed");
            event("connection_error");
            return;
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = h3conn.accept() => match r {
                Ok(Some(resolver)) => {
                    let edge = edge.clone();
                    requests.spawn(async move {
                        let resolved = tokio::time::timeout(timeout, resolver.resolve_request()).await;
                        match resolved {
                            Ok(Ok((req, stream))) => request(&edge, req, stream, peer).await,
                            Ok(Err(e)) => stream_error(&edge, &e),
                            Err(_) => edge.metrics().quic_events.with_label_values(&["request_timeout"]).inc(),
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    connection_error(&edge, peer, &e);
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            _ = async { drop(stop.wait_for(|s| *s).await) } => {
                // GOAWAY naming the last request accepted; requests in flight finish.
                let _ = h3conn.shutdown(0).await;
                while requests.join_next().await.is_some() {}
                // The client closes once it has read everything; do not cut it off.
                let _ = tokio::time::timeout(Duration::from_secs(5), quic.closed()).await;
                break;
            }
        }
    }
    while requests.join_next().await.is_some() {}
}

/// A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`; logs and `X-Forwarded-For`
/// want `a.b.c.d`.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn connection_error(edge: &Edge, peer: SocketAddr, e: &ConnectionError) {
    if e.is_h3_no_error() {
        return;
    }
    use h3::quic::ConnectionErrorIncoming as Incoming;
    let kind = match e {
        ConnectionError::Timeout { .. } => "idle_timeout",
        ConnectionError::Remote {
            0: Incoming::Timeout,
            ..
        } => "idle_timeout",
        ConnectionError::Remote {
            0: Incoming::Undefined(q),
            ..
        } => {
            let q: &(dyn std::error::Error + 'static) = &**q;
            match q.downcast_ref::<quinn::ConnectionError>() {
                // Browsers close with QUIC's NO_ERROR rather than H3_NO_ERROR.
                Some(quinn::ConnectionError::ConnectionClosed(c))
                    if c.error_code == quinn::TransportErrorCode::NO_ERROR =>
                {
                    return;
                }
                Some(quinn::ConnectionError::TimedOut) => "idle_timeout",
                _ => "connection_error",
            }
        }
        _ => "connection_error",
    };
    debug!(%peer, error = %e, "HTTP/3 connection ended");
    edge.metrics().quic_events.with_label_values(&[kind]).inc();
}

fn stream_error(edge: &Edge, e: &StreamError) {
    let kind = match e {
        StreamError::HeaderTooBig { .. } => "header_too_big",
        StreamError::RemoteTerminate { .. } => "client_reset",
        StreamError::ConnectionError { .. } => "connection_error",
        _ => "request_error",
    };
    debug!(error = %e, "HTTP/3 request failed");
    edge.metrics().quic_events.with_label_values(&[kind]).inc();
}

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type SendStream = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Interim responses of an HTTP/3 request, sent on its stream.
struct StreamInterims<'a> {
    send: &'a mut SendStream,
    failed: Option<StreamError>,
}

impl Sink for StreamInterims<'_> {
    async fn send(&mut self, status: http::StatusCode, fields: http::HeaderMap) -> bool {
        let mut early = Response::new(());
        *early.status_mut() = status;
        *early.headers_mut() = fields;
        match self.send.send_response(early).await {
            Ok(()) => true,
            Err(e) => {
                self.failed = Some(e);
                false
            }
        }
    }
}

type RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

async fn request(edge: &Arc<Edge>, req: Request<()>, stream: Stream, peer: SocketAddr) {
    let (mut send, recv) = stream.split();
    let mut req = req.map(|()| RecvBody::new(recv).boxed_unsync());
    // Interim responses the request's handling gives (`103`, `102`) are sent while it goes
    // on; none after the final response.
    let (interim, interims) = super::interim::channel();
    req.extensions_mut().insert(interim);
    let handling = edge.handle(req, Protocol::Http3, peer);
    let mut sink = StreamInterims {
        send: &mut send,
        failed: None,
    };
    let resp = relay(edge, handling, interims, &mut sink).await;
    if let Some(e) = sink.failed {
        return stream_error(edge, &e);
    }
    let Some(resp) = resp else { return };
    let (mut parts, body) = resp.into_parts();
    // hyper adds Date on HTTP/1.1 (RFC 9110 §6.6.1); h3 does not.
    parts
        .headers
        .entry(http::header::DATE)
        .or_insert_with(super::date_now);
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        return stream_error(edge, &e);
    }
    let stall = Duration::from_secs(edge.config().send_stall_secs.max(1));
    let mut body = std::pin::pin!(body);
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                // The response is cut off: the client must not take it for complete.
                debug!(%peer, error = %e, "response body failed");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let sent = match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) => tokio::time::timeout(stall, send.send_data(data)).await,
            Err(frame) => match frame.into_trailers() {
                Ok(t) => tokio::time::timeout(stall, send.send_trailers(t)).await,
                Err(_) => continue,
            },
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return stream_error(edge, &e),
            Err(_) => {
                edge.metrics()
                    .quic_events
                    .with_label_values(&["send_stalled"])
                    .inc();
                send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                return;
            }
        }
    }
    if let Err(e) = send.finish().await {
        stream_error(edge, &e);
    }
}

/// A request body arriving on an HTTP/3 stream, as an `http_body::Body`.
pub struct RecvBody {
    recv: RecvStream,
    done: bool,
    /// The last read returned `Pending` (h3-quinn then holds the stream inside its read).
    reading: bool,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("done", &self.done)
            .finish()
    }
}

impl RecvBody {
    fn new(recv: RecvStream) -> RecvBody {
        RecvBody {
            recv,
            done: false,
            reading: false,
        }
    }
}

impl Drop for RecvBody {
    /// A request body the pipeline did not read (a GET whose end of stream it never
    /// polled): tell the client to stop sending with `H3_NO_ERROR`, which RFC 9114 §4.1
    /// allows once the response does not depend on the rest. quinn sends nothing when the
    /// end has already arrived, and otherwise would send STOP_SENDING with code 0 on drop,
    /// which clients read as an error. (Not polled here first: h3-quinn's `stop_sending`
    /// panics after a read that returned `Pending`.)
    fn drop(&mut self) {
        // With a read pending, h3-quinn cannot stop the stream: quinn's own STOP_SENDING on
        // drop has to do (a body abandoned mid-upload, an error case anyway).
        if !self.done && !self.reading {
            self.recv.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.recv.poll_recv_data(cx);
        self.reading = polled.is_pending();
        let (frame, done) = data_frame(polled);
        self.done = done;
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
