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

use bytes::{Buf, Bytes};
use h3::error::{ConnectionError, StreamError};
use h3::server::RequestStream;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::config::EdgeConfig;
use crate::proxy::{BoxError, Edge, Protocol};
use crate::tls::{Identity, TlsError};

/// QUIC transport settings of the HTTP/3 listener (`[quic]` in the edge's TOML).
///
/// The defaults were chosen by measurement on loopback (`bench/HISTORY.md`, "HTTP/3"):
/// flow-control windows large enough that a single 100 MiB download is limited by CPU, not
/// by credit; MTU discovery up to 1452 bytes as on real networks; GSO on (quinn's default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicSettings {
    /// Bytes a client may send on one request stream before the edge reads them (uploads).
    pub stream_window_bytes: u32,
    /// Bytes a client may send on all streams of a connection before the edge reads them.
    pub connection_window_bytes: u32,
    /// Bytes of response data queued per connection ahead of the client's acknowledgements.
    pub send_window_bytes: u64,
    /// Requests a client may have open at once on one connection.
    pub max_streams: u32,
    /// A connection with no traffic for this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// Largest UDP payload probed by path MTU discovery, bytes (1200 to 65527).
    pub max_mtu: u16,
    /// Hand the kernel batches of packets in one system call (UDP GSO) where it supports it.
    pub segmentation_offload: bool,
    /// UDP socket send and receive buffers, bytes (the kernel caps them at
    /// `net.core.wmem_max` / `rmem_max`): a burst larger than the receive buffer is lost.
    pub socket_buffer_bytes: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            stream_window_bytes: 4 << 20,
            connection_window_bytes: 16 << 20,
            send_window_bytes: 16 << 20,
            max_streams: 256,
            idle_timeout_secs: 30,
            max_mtu: 1452,
            segmentation_offload: true,
            socket_buffer_bytes: 4 << 20,
        }
    }
}

impl QuicSettings {
    /// quinn's transport configuration for these settings.
    pub fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(self.stream_window_bytes.into())
            .receive_window(self.connection_window_bytes.into())
            .send_window(self.send_window_bytes)
            .max_concurrent_bidi_streams(self.max_streams.into())
            // HTTP/3 needs three unidirectional streams each way (control, QPACK encoder
            // and decoder); a few more for extensions that may be unknown to us.
            .max_concurrent_uni_streams(8u32.into())
            .max_idle_timeout(
                quinn::IdleTimeout::try_from(Duration::from_secs(self.idle_timeout_secs.max(1)))
                    .ok(),
            )
            .enable_segmentation_offload(self.segmentation_offload);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_mtu.clamp(1200, 65527));
        t.mtu_discovery_config(Some(mtu));
        t
    }
}

/// A quinn endpoint on `socket` with these settings: its largest datagram (`max_mtu`) and
/// socket buffers. `server` makes it accept connections.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    settings: &QuicSettings,
) -> std::io::Result<quinn::Endpoint> {
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: the kernel may cap these; quinn works with whatever it gets.
    let _ = state.set_recv_buffer_size((&socket).into(), settings.socket_buffer_bytes);
    let _ = state.set_send_buffer_size((&socket).into(), settings.socket_buffer_bytes);
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(settings.max_mtu.clamp(1200, 65527))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    quinn::Endpoint::new(cfg, server, socket, Arc::new(quinn::TokioRuntime))
}

/// The QUIC server configuration: TLS 1.3 with ALPN `h3`, and the edge's transport settings.
pub fn server_config(id: &Identity, cfg: &EdgeConfig) -> Result<quinn::ServerConfig, TlsError> {
    let tls = crate::tls::server_config(id, &[b"h3"])?;
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

/// Accepts QUIC connections on `endpoint` until `stop`, then refuses new ones and lets open
/// connections finish (each holds a clone of `live`).
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    edge: Arc<Edge>,
    live: Arc<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = stop.changed() => break,
        };
        tokio::spawn(connection(
            incoming,
            edge.clone(),
            stop.clone(),
            live.clone(),
        ));
    }
    endpoint.set_server_config(None);
}

async fn connection(
    incoming: quinn::Incoming,
    edge: Arc<Edge>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    live: Arc<()>,
) {
    let m = edge.metrics().clone();
    let event = |e: &str| m.quic_events.with_label_values(&[e]).inc();
    let timeout = Duration::from_secs(edge.config().header_timeout_secs.max(1));
    let conn = match tokio::time::timeout(timeout, incoming).await {
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
    drop(h3conn);
    drop(live);
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
type RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

async fn request(edge: &Arc<Edge>, req: Request<()>, stream: Stream, peer: SocketAddr) {
    let (mut send, recv) = stream.split();
    let req = req.map(|()| RecvBody::new(recv).boxed_unsync());
    let resp = edge.handle(req, Protocol::Http3, peer).await;
    let (mut parts, body) = resp.into_parts();
    if !parts.headers.contains_key(http::header::DATE) {
        // hyper adds Date on HTTP/1.1 and HTTP/2 (RFC 9110 §6.6.1); h3 does not.
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(v) = http::HeaderValue::from_str(&now) {
            parts.headers.insert(http::header::DATE, v);
        }
    }
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

/// An h3 `poll_recv_data` result as an `http_body` frame, and whether the body ended
/// (for request bodies here and response bodies in [`crate::client`]).
pub(crate) fn data_frame<B: Buf>(
    polled: Poll<Result<Option<B>, StreamError>>,
) -> (Poll<Option<Result<Frame<Bytes>, BoxError>>>, bool) {
    match polled {
        Poll::Pending => (Poll::Pending, false),
        Poll::Ready(Ok(Some(mut buf))) => (
            Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(buf.remaining()))))),
            false,
        ),
        Poll::Ready(Ok(None)) => (Poll::Ready(None), true),
        Poll::Ready(Err(e)) => (Poll::Ready(Some(Err(Box::new(e)))), true),
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
