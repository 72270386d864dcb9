//! The access log: one line per request, written when its response body ends (or is cut
//! off), with what an operator greps for: protocol, method, path, status, cache result and
//! tier, body bytes actually sent and the time from request to last byte.
//!
//! Lines are `tracing` events at `info` with target `tessera::access`; the binary's
//! `--log-format json` turns them (and every other log line) into JSON objects. Off unless
//! `access_log` is set: at tens of thousands of requests a second a line each is a cost an
//! operator chooses.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::basics::body::{BoxError, EdgeBody};

/// What is known about a request when its response head is ready.
#[derive(Debug)]
pub struct Entry {
    pub proto: &'static str,
    pub asked: Asked,
    pub status: u16,
    pub cache: &'static str,
    pub tier: &'static str,
    pub client: std::net::SocketAddr,
    pub start: Instant,
}

/// What the request asked for, taken before it is answered.
#[derive(Debug)]
pub struct Asked {
    pub method: String,
    pub path: String,
    /// The query (empty: none), the host asked for, `User-Agent` and `Referer` (empty: not
    /// sent; at most 1 KiB each): with the rest, the fields of nginx's combined format.
    pub query: String,
    pub host: String,
    pub user_agent: String,
    pub referer: String,
}

/// A response body that counts what it sends and logs the entry when it is done.
#[derive(Debug)]
pub struct Logged {
    inner: EdgeBody,
    bytes: u64,
    /// The body's length when it is known up front: sending that much completes it (hyper
    /// stops polling a body with a `Content-Length` once it has all of it).
    expected: Option<u64>,
    ended: bool,
    entry: Entry,
}

impl Logged {
    /// Wraps `inner`, whose length is `length` when the response declares it.
    pub fn wrap(inner: EdgeBody, entry: Entry, length: Option<u64>) -> EdgeBody {
        http_body_util::BodyExt::boxed_unsync(Logged {
            expected: inner.size_hint().exact().or(length),
            inner,
            bytes: 0,
            ended: false,
            entry,
        })
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let e = &self.entry;
        // A body with nothing to send (HEAD, 304) may be dropped without being polled.
        let complete =
            self.ended || self.inner.is_end_stream() || self.expected == Some(self.bytes);
        tracing::info!(
            target: "tessera::access",
            proto = e.proto,
            method = %e.asked.method,
            path = %e.asked.path,
            query = %e.asked.query,
            host = %e.asked.host,
            status = e.status,
            cache = e.cache,
            tier = e.tier,
            bytes = self.bytes,
            complete,
            duration_ms = e.start.elapsed().as_secs_f64() * 1000.0,
            client = %e.client.ip(),
            user_agent = %e.asked.user_agent,
            referer = %e.asked.referer,
            "request"
        );
    }
}
