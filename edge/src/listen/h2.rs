//! HTTP/2 content connections (TLS with ALPN `h2`, and h2c with prior knowledge), served
//! with the h2 crate directly rather than through hyper, whose HTTP/2 server cannot send an
//! interim response (`103 Early Hints`; hyperium/hyper#4114). What hyper's server did is
//! done here the same way and with its settings: `Date` added, `Content-Length` from an
//! exact body size, connection-specific fields dropped (RFC 9113 §8.2.2), request bodies'
//! flow-control window released as they are read, a body sent as the peer's window allows
//! (at most 400 KiB buffered per stream), a client's `RST_STREAM` noticed while its
//! response is prepared, and a PING every 30 s that must be answered within 20 s. On top: a
//! response the client stops taking for `send_stall_secs` is reset, as on HTTP/3.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::interim::{Sink, channel, relay};
use super::tcp::{Idle, Service};
use crate::basics::body::{BoxError, EdgeBody};
use crate::basics::protocol::Protocol;

/// How often an idle-or-not connection is pinged, and how long its answer may take.
const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_WITHIN: Duration = Duration::from_secs(20);

/// Serves one HTTP/2 connection until it ends, or until `stop` or its idle limit (then
/// GOAWAY, and the requests in flight finish).
pub(super) async fn serve<S>(
    io: S,
    svc: Service,
    mut stop: tokio::sync::watch::Receiver<bool>,
    idle: Idle,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = svc.edge.config();
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .max_local_error_reset_streams(Some(1024))
        .max_send_buffer_size(400 << 10);
    let ending = async {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => {}
            _ = idle.expired() => {}
        }
    };
    let mut ending = std::pin::pin!(ending);
    let mut conn = tokio::select! {
        c = builder.handshake::<_, Bytes>(io) => match c {
            Ok(c) => c,
            Err(e) => return debug!(peer = %svc.peer, error = %e, "HTTP/2 handshake failed"),
        },
        () = &mut ending => return,
    };
    let mut pings = conn.ping_pong().expect("taken once");
    let keepalive = async move {
        loop {
            tokio::time::sleep(PING_EVERY).await;
            match tokio::time::timeout(PONG_WITHIN, pings.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    };
    let mut keepalive = std::pin::pin!(keepalive);
    let mut closing = false;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    svc.touched.touch();
                    tokio::spawn(stream(svc.clone(), req, respond));
                }
                Some(Err(e)) => {
                    return debug!(peer = %svc.peer, error = %e, "connection ended with an error");
                }
                None => return,
            },
            () = &mut ending, if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            () = &mut keepalive => {
                debug!(peer = %svc.peer, "no answer to an HTTP/2 PING: closing");
                conn.abrupt_shutdown(Reason::NO_ERROR);
                // Sends the GOAWAY, if the peer takes it within a second, then closes.
                let goaway = async { while let Some(Ok(_)) = conn.accept().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), goaway).await;
                return;
            }
        }
    }
}

/// Interim responses of an HTTP/2 request, sent on its stream.
impl Sink for SendResponse<Bytes> {
    async fn send(&mut self, status: StatusCode, fields: HeaderMap) -> bool {
        let mut r = Response::new(());
        *r.status_mut() = status;
        *r.headers_mut() = fields;
        self.send_informational(r).is_ok()
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_reset(cx).map(|_| ())
    }
}

/// Answers one request.
async fn stream(svc: Service, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (parts, recv) = req.into_parts();
    let left = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut req = Request::from_parts(
        parts,
        RecvBody {
            recv,
            data_done: false,
            left,
        }
        .boxed_unsync(),
    );
    let (interim, interims) = channel();
    req.extensions_mut().insert(interim);
    let handling = svc.content(req, Protocol::Http2);
    let Some(resp) = relay(&svc.edge, handling, interims, &mut respond).await else {
        return;
    };
    let (mut head, body) = resp.into_parts();
    connection_specific_out(&mut head.headers);
    head.headers
        .entry(header::DATE)
        .or_insert_with(super::date_now);
    if body.is_end_stream() {
        let _ = respond.send_response(Response::from_parts(head, ()), true);
        return;
    }
    if let Some(len) = body.size_hint().exact() {
        head.headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    let send = match respond.send_response(Response::from_parts(head, ()), false) {
        Ok(s) => s,
        Err(e) => return debug!(error = %e, "HTTP/2 response not sent"),
    };
    let stall = Duration::from_secs(svc.edge.config().send_stall_secs.max(1));
    if let Err(e) = pump(body, send, stall).await {
        debug!(peer = %svc.peer, error = %e, "HTTP/2 response body not sent");
    }
}

/// Drops the fields RFC 9113 §8.2.2 forbids in HTTP/2 (and those a `Connection` names).
fn connection_specific_out(headers: &mut HeaderMap) {
    if let Some(named) = headers.remove(header::CONNECTION)
        && let Ok(named) = named.to_str()
    {
        for name in named.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// Sends `body` on `send` as the client's flow-control window allows. A body that fails is
/// reset (the client must not take it for complete), and so is one the client stops taking
/// for `stall`.
async fn pump(
    mut body: EdgeBody,
    mut send: SendStream<Bytes>,
    stall: Duration,
) -> Result<(), BoxError> {
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            reason = poll_fn(|cx| send.poll_reset(cx)) => {
                return Err(format!("the client reset the stream: {:?}", reason?).into());
            }
        };
        let frame = match frame {
            None => {
                send.send_data(Bytes::new(), true)?;
                return Ok(());
            }
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                send.send_reset(Reason::INTERNAL_ERROR);
                return Err(e);
            }
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers)?;
                    return Ok(());
                }
                continue;
            }
        };
        let end = body.is_end_stream();
        if !data.is_empty() {
            // As hyper: claim one byte of window, then hand h2 the whole chunk once there
            // is some (h2 buffers what the window does not yet allow, up to its limit).
            // The stall timer only when there is no window at once.
            send.reserve_capacity(1);
            if send.capacity() == 0 {
                let room = tokio::time::timeout(stall, poll_fn(|cx| capacity(&mut send, cx))).await;
                match room {
                    Ok(r) => r?,
                    Err(_) => {
                        send.send_reset(Reason::CANCEL);
                        return Err("the client took nothing for send_stall_secs".into());
                    }
                }
            }
        }
        send.send_data(data, end)?;
        if end {
            return Ok(());
        }
    }
}

/// Ready once `send` has window for at least a byte.
fn capacity(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
    while send.capacity() == 0 {
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            None => return Poll::Ready(Err("the stream closed".into())),
        }
    }
    Poll::Ready(Ok(()))
}

/// A request body arriving on an HTTP/2 stream, its window released as it is read.
struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// What its `Content-Length` says is left (h2 checks the body against it).
    left: Option<u64>,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(e.into())),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.left.map(SizeHint::with_exact).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::CACHE_CONTROL, "max-age=60".parse().unwrap());
        connection_specific_out(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CACHE_CONTROL));
    }
}
