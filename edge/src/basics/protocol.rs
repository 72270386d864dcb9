//! Names and encodings of the protocols the edge speaks.

/// The protocol a request arrived over (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::Http3 => "h3",
        }
    }
}

/// Where a request's interim responses go (`103 Early Hints`, `102 Processing`: status and
/// fields), put in its extensions by a listener that can send them before the final
/// response (every content listener, for HTTP/1.1, HTTP/2 and HTTP/3 requests: see
/// `listen/interim.rs`).
#[derive(Clone)]
pub struct Interim(pub std::sync::Arc<dyn InterimSink>);

/// What takes a request's interim responses (each protocol has its own).
pub trait InterimSink: Send + Sync {
    /// Takes one to send, or drops it: when too many wait, or the request's final response
    /// has gone (they are only hints).
    fn give(&self, status: http::StatusCode, fields: http::HeaderMap);
}

impl Interim {
    /// Sends an interim response `status` with `fields`, if the request can take one.
    pub fn send(extensions: &http::Extensions, status: http::StatusCode, fields: http::HeaderMap) {
        if let Some(i) = extensions.get::<Interim>() {
            i.0.give(status, fields);
        }
    }
}

impl std::fmt::Debug for Interim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interim")
    }
}

/// Decodes every `%XX` of `s`; `None` when an escape is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    String::from_utf8(percent_decode_bytes(s)?).ok()
}

/// Decodes every `%XX` of `s` into bytes; `None` when a `%` is not followed by two hex digits.
pub fn percent_decode_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits (`from_str_radix` would also take a sign).
            let hi = (*b.get(i + 1)? as char).to_digit(16)?;
            let lo = (*b.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Marks a request that arrived over TLS on a TCP listener (HTTP/1.1 has no `:scheme`; the
/// plugins' `request.scheme` and the forwarded headers read it).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Whether `req`, which came over `proto`, came over TLS: HTTP/2 and HTTP/3 carry
/// `:scheme`; HTTP/1.1 over TLS is marked by the listener ([`OverTls`]).
pub fn over_tls<B>(req: &http::Request<B>, proto: Protocol) -> bool {
    proto == Protocol::Http3
        || req.uri().scheme() == Some(&http::uri::Scheme::HTTPS)
        || req.extensions().get::<OverTls>().is_some()
}
