//! Interim responses (`103 Early Hints`, `102 Processing`) on every protocol.
//!
//! A request's handling gives them through the [`Interim`] a listener puts in its
//! extensions. On HTTP/2 and HTTP/3, [`relay`] passes each on as it comes, and those given
//! just before the final response still ahead of it. How each protocol sends one:
//! - HTTP/3: the h3 crate's `send_response` with a 1xx status (`h3.rs`).
//! - HTTP/2: served with the h2 crate directly (`h2.rs`), whose `send_informational` sends
//!   a HEADERS frame with a 1xx status (hyper 1.x's server has no way to, hyperium/hyper#4114).
//! - HTTP/1.1: hyper 1.x answers a 1xx status from a service with a 500, so the interim
//!   response is written into the connection's byte stream under hyper, by [`Informing`],
//!   at a moment its place in the stream is certain: when hyper flushes with nothing of its
//!   own left to write (everything of the responses before is out), and while the request's
//!   final response is not yet handed to hyper (the service closes the request's queue and
//!   waits for what it holds to be written before it returns). No channel per request:
//!   [`Interims::open`] gives the request a ticket into its connection's queue, which wakes
//!   the connection so that hyper flushes. This rests on two facts of
//!   hyper's HTTP/1 server (1.12, `proto/h1`): it flushes the socket only once its write
//!   buffer is empty (`Buffered::poll_flush`), and it reads a pipelined request's head only
//!   once the response before is wholly in that buffer (`Conn::can_read_head` after
//!   `try_keep_alive`), and its dispatcher flushes after every poll of the service. The
//!   tests in `edge/tests/http3.rs` check the bytes a real client (curl) reads. Never to an
//!   HTTP/1.0 client (RFC 9110 §15.2).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};

use crate::basics::body::EdgeBody;
use crate::basics::protocol::{Interim, InterimSink};
use crate::pipeline::Edge;

/// How a protocol sends a request's interim responses.
pub(super) trait Sink {
    /// Sends one; `false` when the request is gone (nothing more is sent).
    async fn send(&mut self, status: StatusCode, fields: HeaderMap) -> bool;

    /// Ready once the client has given up the request (HTTP/2: reset its stream).
    fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// A channel for a request's interim responses: the sender for its extensions, the
/// receiver for [`relay`]. Bounded: hints that do not fit are dropped (they are only hints).
pub(super) fn channel() -> (Interim, mpsc::Receiver<(StatusCode, HeaderMap)>) {
    let (tx, rx) = mpsc::channel(4);
    (Interim(Arc::new(tx)), rx)
}

impl InterimSink for mpsc::Sender<(StatusCode, HeaderMap)> {
    fn give(&self, status: StatusCode, fields: HeaderMap) {
        let _ = self.try_send((status, fields));
    }
}

/// Runs `handling` to its final response, sending each interim response it gives on
/// `interims` through `sink` as it comes, and those given just before the final response
/// ahead of it. `None` when the client is gone.
pub(super) async fn relay<S: Sink>(
    edge: &Edge,
    handling: impl Future<Output = Response<EdgeBody>>,
    mut interims: mpsc::Receiver<(StatusCode, HeaderMap)>,
    sink: &mut S,
) -> Option<Response<EdgeBody>> {
    let mut handling = std::pin::pin!(handling);
    let count = |status: StatusCode| {
        if status == StatusCode::EARLY_HINTS {
            edge.metrics().early_hints.inc();
        }
    };
    let resp = loop {
        tokio::select! {
            resp = &mut handling => break resp,
            Some((status, fields)) = interims.recv() => {
                count(status);
                if !sink.send(status, fields).await {
                    return None;
                }
            }
            () = std::future::poll_fn(|cx| sink.poll_gone(cx)) => return None,
        }
    };
    while let Ok((status, fields)) = interims.try_recv() {
        count(status);
        if !sink.send(status, fields).await {
            return None;
        }
    }
    Some(resp)
}

/// The interim responses of an HTTP/1.1 connection's current request, as bytes on the
/// wire, waiting for [`Informing`] to write them.
#[derive(Debug)]
pub(super) struct Interims {
    queue: Mutex<Queue>,
    /// Told when the queue has been written out.
    written: Notify,
    early_hints: prometheus::IntCounter,
}

#[derive(Debug, Default)]
struct Queue {
    /// Whole interim responses not begun.
    waiting: VecDeque<Bytes>,
    /// What is left of the one being written.
    writing: Bytes,
    /// The request whose interim responses the queue takes (counted from 1), while `open`.
    request: u64,
    open: bool,
    /// The connection's task, woken when an interim response arrives so that hyper flushes.
    waker: Option<Waker>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.writing.is_empty()
    }
}

/// A request's way into its connection's [`Interims`].
struct Ticket {
    interims: Arc<Interims>,
    request: u64,
}

impl InterimSink for Ticket {
    fn give(&self, status: StatusCode, fields: HeaderMap) {
        let mut queue = self.interims.queue.lock().unwrap();
        if !queue.open || queue.request != self.request || queue.waiting.len() >= 4 {
            return;
        }
        queue.waiting.push_back(http1_head(status, &fields));
        if status == StatusCode::EARLY_HINTS {
            self.interims.early_hints.inc();
        }
        if let Some(w) = queue.waker.take() {
            w.wake();
        }
    }
}

impl Interims {
    pub(super) fn new(edge: &Edge) -> Interims {
        Interims {
            queue: Mutex::default(),
            written: Notify::new(),
            early_hints: edge.metrics().early_hints.clone(),
        }
    }

    /// A request begins: what its extensions carry for its interim responses.
    pub(super) fn open(self: &Arc<Self>) -> Interim {
        let mut queue = self.queue.lock().unwrap();
        queue.request += 1;
        queue.open = true;
        Interim(Arc::new(Ticket {
            interims: self.clone(),
            request: queue.request,
        }))
    }

    /// The request's final response is ready: it takes no more interim responses. Resolves
    /// once those it gave are written (to the socket, or to TLS).
    pub(super) async fn close(&self) {
        self.queue.lock().unwrap().open = false;
        loop {
            let told = self.written.notified();
            let mut told = std::pin::pin!(told);
            told.as_mut().enable();
            if self.queue.lock().unwrap().is_empty() {
                return;
            }
            told.await;
        }
    }
}

/// An HTTP/1.1 interim response: status line and fields.
fn http1_head(status: StatusCode, fields: &HeaderMap) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_slice(b"HTTP/1.1 ");
    b.put_slice(status.as_str().as_bytes());
    b.put_u8(b' ');
    b.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    b.put_slice(b"\r\n");
    for (name, value) in fields {
        b.put_slice(name.as_str().as_bytes());
        b.put_slice(b": ");
        b.put_slice(value.as_bytes());
        b.put_slice(b"\r\n");
    }
    b.put_slice(b"\r\n");
    b.freeze()
}

/// An HTTP/1.1 connection's socket as hyper sees it, which writes the current request's
/// interim responses ([`Interims`]) when hyper flushes with its own buffer empty (hyper
/// only flushes the socket once it has written out everything it holds).
pub(super) struct Informing<S> {
    io: S,
    interims: Arc<Interims>,
}

impl<S> Informing<S> {
    pub(super) fn new(io: S, interims: Arc<Interims>) -> Informing<S> {
        Informing { io, interims }
    }

    pub(super) fn into_inner(self) -> S {
        self.io
    }
}

impl<S: AsyncWrite + Unpin> Informing<S> {
    /// Writes what is left of an interim response begun and, with `all`, every one waiting.
    fn poll_interims(&mut self, cx: &mut Context<'_>, all: bool) -> Poll<io::Result<()>> {
        let mut queue = self.interims.queue.lock().unwrap();
        if queue.is_empty() {
            return Poll::Ready(Ok(()));
        }
        loop {
            if queue.writing.is_empty() {
                match queue.waiting.pop_front() {
                    Some(next) if all => queue.writing = next,
                    Some(next) => {
                        queue.waiting.push_front(next);
                        return Poll::Ready(Ok(()));
                    }
                    None => {
                        drop(queue);
                        self.interims.written.notify_one();
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &queue.writing))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            queue.writing.advance(n);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Informing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Informing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // An interim response begun is finished before anything else.
        ready!(self.poll_interims(cx, false))?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_interims(cx, false))?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut queue = self.interims.queue.lock().unwrap();
            if queue.open
                && !queue
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
            {
                queue.waker = Some(cx.waker().clone());
            }
        }
        ready!(self.poll_interims(cx, true))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http1_interim_response_is_a_status_line_and_fields() {
        let mut fields = HeaderMap::new();
        fields.append("link", "</a.css>; rel=preload".parse().unwrap());
        fields.append("link", "</b.js>; rel=modulepreload".parse().unwrap());
        assert_eq!(
            &http1_head(StatusCode::EARLY_HINTS, &fields)[..],
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\
              link: </b.js>; rel=modulepreload\r\n\r\n"
        );
        assert_eq!(
            &http1_head(StatusCode::PROCESSING, &HeaderMap::new())[..],
            b"HTTP/1.1 102 Processing\r\n\r\n"
        );
    }

    /// Interim responses go out at a flush, before what is written next; one begun is
    /// finished before hyper's next bytes; the waiter is told once all are out.
    #[tokio::test]
    async fn interim_responses_go_out_at_a_flush_and_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(8);
        let interims = Arc::new(Interims {
            queue: Mutex::default(),
            written: Notify::new(),
            early_hints: prometheus::IntCounter::new("hints", "hints").unwrap(),
        });
        let mut io = Informing::new(server, interims.clone());
        let first = interims.open();
        first.0.give(StatusCode::PROCESSING, HeaderMap::new());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut client = client;
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        // A flush writes the interim response (through an 8-byte pipe: many writes).
        io.flush().await.unwrap();
        interims.close().await;
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // Given after its request's final response, or for an earlier request: dropped.
        first.0.give(StatusCode::EARLY_HINTS, HeaderMap::new());
        let second = interims.open();
        first.0.give(StatusCode::EARLY_HINTS, HeaderMap::new());
        io.flush().await.unwrap();
        second.0.give(StatusCode::PROCESSING, HeaderMap::new());
        io.flush().await.unwrap();
        interims.close().await;
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(
            reader.await.unwrap(),
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\
              HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
        );
    }
}
