//! Response and request bodies: one boxed body type for every protocol, and the helpers that
//! make one.

use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

/// Errors of a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the edge sends (and of requests it hands on).
pub type EdgeBody = UnsyncBoxBody<Bytes, BoxError>;
/// Body bytes as they are read or fetched.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

pub fn full_body(b: impl Into<Bytes>) -> EdgeBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty_body() -> EdgeBody {
    full_body(Bytes::new())
}

pub fn stream_body<S>(s: S) -> EdgeBody
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

/// A JSON response that is never stored (`Cache-Control: no-store`).
pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<EdgeBody> {
    let body = serde_json::to_vec(v).expect("JSON serialises");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(full_body(body))
        .unwrap()
}

/// An h3 `poll_recv_data` result as an `http_body` frame, and whether the body ended (request
/// bodies in the HTTP/3 listener, response bodies in the client).
pub fn data_frame<B: Buf>(
    polled: Poll<Result<Option<B>, h3::error::StreamError>>,
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
