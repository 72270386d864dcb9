//! Plain HTTP/1.1 connections parked between requests, as nginx keeps an idle keep-alive
//! connection in a few hundred bytes.
//!
//! hyper holds an 8 KiB read buffer and an 8 KiB header buffer for as long as it serves a
//! connection. So a plain-TCP HTTP/1.1 connection is handed to hyper for one exchange at a
//! time. Once a request that allows it (HTTP/1.1, no request body, no `Connection: close`
//! either way) has its answer, the socket under hyper answers hyper's next read with
//! `Pending` and says so ([`Parking`]). hyper only reads again once that answer is written
//! and flushed and it waits for the next request (its `half_close` is on, so it does not
//! read for an end of stream while it answers). Then hyper's connection is told to finish
//! ([`hyper::server::conn::http1::Connection::graceful_shutdown`]: hyper is idle, so this
//! closes nothing and writes nothing) and gives back the socket and any bytes it read ahead
//! (a pipelined request). The connection waits for its next request's first byte with
//! nothing but the socket, and that request starts a new hyper connection over those bytes
//! and the socket.
//!
//! Requests with a body, HTTP/1.0 and `Connection: close` stay with hyper as before, and h2c
//! (prior knowledge) goes to the auto-detecting builder. TLS connections are not parked:
//! rustls keeps its own buffers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, Version, header};
use hyper::body::Body;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::interim::{Informing, Interims};
use super::tcp::{Idle, Service};
use crate::pipeline::Edge;

/// hyper's HTTP/1 settings for the plain listener (as the auto builder's in `tcp`).
pub(super) fn builder(edge: &Edge) -> http1::Builder {
    let cfg = edge.config();
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        // hyper reads during an answer only to notice a client going away; the socket's
        // `Pending` after an answer must come only once hyper waits for the next request.
        // A client gone away is still noticed when the answer's next bytes are written.
        .half_close(true)
        .header_read_timeout(Duration::from_secs(cfg.header_timeout_secs.max(1)))
        .max_buf_size(cfg.max_header_bytes.max(8192));
    b
}

/// The HTTP/2 connection preface a client with prior knowledge opens with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plain connection's first bytes are.
pub(super) enum Opening {
    /// Not the start of an HTTP/2 preface: HTTP/1.
    Http1,
    /// The whole HTTP/2 preface (h2c with prior knowledge).
    Http2,
    /// A part of it so far: the auto-detecting builder waits for more and serves either.
    Unsure,
}

/// What the bytes waiting on `stream` begin.
pub(super) async fn opening(stream: &TcpStream) -> Opening {
    let mut head = [0u8; PREFACE.len()];
    match stream.peek(&mut head).await {
        Ok(n) if n == PREFACE.len() && head == PREFACE => Opening::Http2,
        Ok(n) if !PREFACE.starts_with(&head[..n]) => Opening::Http1,
        _ => Opening::Unsure,
    }
}

fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

/// Whether a request lets its connection leave hyper once answered.
pub(super) fn request_allows<B: Body>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && req.body().is_end_stream() && !says_close(req.headers())
}

/// Whether a response does.
fn response_allows<B>(resp: &Response<B>) -> bool {
    !says_close(resp.headers()) && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
}

/// What one exchange's service and socket tell each other.
#[derive(Debug, Default)]
pub(super) struct Parking {
    /// A request that allows parking has its answer: hyper's next read is for the next
    /// request, and leaves hyper.
    answered: AtomicBool,
    /// Told when hyper, after that answer, reads for the next request.
    wants_next: tokio::sync::Notify,
}

impl Parking {
    /// Called by the service as hyper hands it a request: hyper may read that request's
    /// body (a pipelined request behind a parkable one), so reads go to the socket again.
    pub(super) fn asked(&self) {
        self.answered.store(false, Ordering::Release);
    }

    /// Called by the service with a request's answer, before hyper writes it.
    pub(super) fn answered<R>(&self, req_allows: bool, resp: &Response<R>) {
        if req_allows && response_allows(resp) {
            self.answered.store(true, Ordering::Release);
        }
    }
}

/// A socket with bytes already read from it in front.
struct Rewind {
    ahead: Bytes,
    socket: TcpStream,
    park: Arc<Parking>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.park.answered.load(Ordering::Acquire) {
            // hyper has written the answer and waits for the next request: it leaves hyper
            // (`exchange` shuts hyper's connection down and polls it again at once).
            self.park.wants_next.notify_one();
            return Poll::Pending;
        }
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// How one hyper connection over the socket ended.
enum Ended {
    /// Answered a request that allows parking: the socket and the bytes read ahead.
    Parked(TcpStream, Bytes),
    /// Closed (by the client, an error, `Connection: close`, the idle limit or `stop`).
    Closed,
}

/// Serves `socket` (which has sent a byte that does not begin an HTTP/2 preface) until it
/// closes, the idle limit passes without a request, or `stop`.
pub(super) async fn serve(
    mut socket: TcpStream,
    svc: Service,
    h1: &http1::Builder,
    mut stop: tokio::sync::watch::Receiver<bool>,
    idle: Idle,
) {
    let mut ahead = Bytes::new();
    loop {
        match Box::pin(exchange(socket, ahead, svc.clone(), h1, &mut stop, &idle)).await {
            Ended::Closed => return,
            Ended::Parked(s, a) => (socket, ahead) = (s, a),
        }
        if ahead.is_empty() {
            // Parked: wait for the next request's first byte with nothing but the socket.
            // `peek` (not `readable`, whose readiness may be left over from hyper's last
            // read) returns once a byte is there, or 0 at the end of the stream.
            let parked = &svc.edge.metrics().connections_parked;
            parked.inc();
            let woken = tokio::select! {
                r = async { socket.peek(&mut [0u8; 1]).await } => matches!(r, Ok(n) if n > 0),
                _ = tokio::time::sleep(idle.limit()) => {
                    debug!("closed a parked keep-alive connection after the idle limit");
                    false
                }
                _ = stop.wait_for(|stopped| *stopped) => false,
            };
            parked.dec();
            if !woken {
                return;
            }
        }
        // The idle limit counts from here again, not from the last request's start.
        idle.touch();
    }
}

/// One hyper connection over the socket, until it parks or closes. Boxed, so a parked
/// connection holds none of it.
async fn exchange(
    socket: TcpStream,
    ahead: Bytes,
    mut svc: Service,
    h1: &http1::Builder,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    idle: &Idle,
) -> Ended {
    let park = Arc::new(Parking::default());
    svc.park = Some(park.clone());
    let interims = Arc::new(Interims::new(&svc.edge));
    if svc.is_content() {
        svc.interims = Some(interims.clone());
    }
    let io = Rewind {
        ahead,
        socket,
        park: park.clone(),
    };
    let io = Informing::new(io, interims);
    let mut conn = Box::new(h1.serve_connection(TokioIo::new(io), svc));
    let mut parking = false;
    let mut closing = false;
    let done = loop {
        tokio::select! {
            biased;
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = park.wants_next.notified(), if !parking && !closing => {
                parking = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            _ = async {
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => {}
                    _ = idle.expired() => {}
                }
            }, if !closing => {
                closing = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
        }
    };
    if let Err(e) = done {
        debug!(error = %e, "connection ended with an error");
        return Ended::Closed;
    }
    if !parking || closing {
        return Ended::Closed;
    }
    let parts = conn.into_parts();
    // What hyper read and did not parse comes first, then what it had not read yet of the
    // bytes this exchange began with.
    let Rewind { ahead, socket, .. } = parts.io.into_inner().into_inner();
    let ahead = if ahead.is_empty() {
        parts.read_buf
    } else {
        let mut all = BytesMut::from(&parts.read_buf[..]);
        all.extend_from_slice(&ahead);
        all.freeze()
    };
    Ended::Parked(socket, ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bodiless_http11_exchange_without_close_parks() {
        let get = |v: Version, conn: Option<&str>| {
            let mut b = Request::builder().version(v).uri("/x");
            if let Some(c) = conn {
                b = b.header(header::CONNECTION, c);
            }
            b.body(http_body_util::Empty::<Bytes>::new()).unwrap()
        };
        assert!(request_allows(&get(Version::HTTP_11, None)));
        assert!(request_allows(&get(Version::HTTP_11, Some("keep-alive"))));
        assert!(!request_allows(&get(Version::HTTP_11, Some("te, Close"))));
        assert!(!request_allows(&get(Version::HTTP_10, Some("keep-alive"))));
        let post = Request::builder()
            .uri("/x")
            .body(http_body_util::Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        assert!(!request_allows(&post));
        let closing = Response::builder()
            .header(header::CONNECTION, "close")
            .body(())
            .unwrap();
        assert!(!response_allows(&closing));
        assert!(response_allows(&Response::new(())));
    }
}
