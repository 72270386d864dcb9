//! The store plan for a response fetched from an upstream: whether it may be stored, how its
//! body is laid out as it arrives (inline when small, else in segments), when clients get
//! its last byte, and which of its fields are kept. Free of I/O: the fetch loop in
//! `backends::upstream` feeds it bytes and does what it says.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, header};

use crate::rules::freshness::{Freshness, not_storable, response_directives};

/// Size of a body segment (bodies over [`INLINE_MAX`] are stored in segments).
pub const SEGMENT: usize = 1 << 20;
/// Bodies up to this size are stored inline in their response's entry.
pub const INLINE_MAX: usize = 256 << 10;

/// Whether a response to a `GET` with request fields `req` may be stored, judged from its
/// head: RFC 9111 §3, no `Set-Cookie` unless `set_cookie_ok` (the operator's choice; the
/// stored copy never keeps it, [`stored_headers`]: a shared cache must not hand one
/// client's cookie to another), and a declared length within `max_object` bytes.
pub fn storable(
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    content_length: Option<u64>,
    max_object: u64,
    set_cookie_ok: bool,
) -> bool {
    not_storable(&Method::GET, req, status, resp).is_none()
        && (set_cookie_ok || !resp.contains_key(header::SET_COOKIE))
        && content_length.is_none_or(|n| n <= max_object)
}

/// The fields kept of a response's end-to-end fields `headers`: without the fields its
/// `no-cache="…"` names, without `Age` (computed when served) and `Set-Cookie`.
pub fn stored_headers(mut headers: HeaderMap) -> HeaderMap {
    let cc = response_directives(&headers);
    for f in &cc.no_cache_fields {
        headers.remove(f.as_str());
    }
    headers.remove(header::AGE);
    headers.remove(header::SET_COOKIE);
    headers
}

/// The `Surrogate-Key` values of a response (purge by key), space-separated over any lines.
pub fn surrogate_keys(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// Whether a stored response could ever be used: fresh for a while, or revalidatable.
pub fn worth_keeping(freshness: &Freshness, headers: &HeaderMap) -> bool {
    freshness.keep_for() > 0
        || headers.contains_key(header::ETAG)
        || headers.contains_key(header::LAST_MODIFIED)
}

/// Where a stored body ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// In the response's entry.
    Inline(Bytes),
    /// In this many segments, numbered from 0.
    Segments(u32),
}

/// A body being stored as it arrives. Bytes up to [`INLINE_MAX`] are kept inline; past that
/// they go into segments of [`SEGMENT`] bytes, each handed out to be stored as soon as it is
/// full. Past `max_object` bytes nothing is stored. Every byte but the last is released to
/// clients as it arrives; the last is held until [`BodyLayout::finish`], so no client has
/// the whole body before the cache has the response (a request right after it hits).
#[derive(Debug)]
pub struct BodyLayout {
    storing: bool,
    max_object: u64,
    inline: BytesMut,
    segment: BytesMut,
    segments: u32,
    total: u64,
    held: Option<Bytes>,
}

impl BodyLayout {
    pub fn new(storing: bool, max_object: u64) -> BodyLayout {
        BodyLayout {
            storing,
            max_object,
            inline: BytesMut::new(),
            segment: BytesMut::new(),
            segments: 0,
            total: 0,
            held: None,
        }
    }

    /// Bytes received so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the body is still being stored.
    pub fn storing(&self) -> bool {
        self.storing
    }

    /// Takes the next bytes: full segments go to `store` (with their number), the bytes
    /// clients may have now to `release`.
    pub fn push(
        &mut self,
        data: Bytes,
        mut store: impl FnMut(u32, Bytes),
        mut release: impl FnMut(Bytes),
    ) {
        self.total += data.len() as u64;
        if self.storing {
            if self.total > self.max_object {
                self.stop_storing();
            } else if self.segments == 0
                && self.segment.is_empty()
                && self.total as usize <= INLINE_MAX
            {
                self.inline.extend_from_slice(&data);
            } else {
                // Past the inline size: what was inline starts the first segment.
                let inline = std::mem::take(&mut self.inline);
                self.fill_segments(&inline, &mut store);
                self.fill_segments(&data, &mut store);
            }
        }
        if data.is_empty() {
            return;
        }
        if let Some(h) = self.held.take() {
            release(h);
        }
        if data.len() > 1 {
            release(data.slice(..data.len() - 1));
        }
        self.held = Some(data.slice(data.len() - 1..));
    }

    /// Copies `data` into segments, each its own buffer of exactly [`SEGMENT`] bytes: a
    /// segment split off a larger, grown buffer would keep all of that buffer alive in the
    /// cache (up to twice what the cache counts).
    fn fill_segments(&mut self, mut data: &[u8], store: &mut impl FnMut(u32, Bytes)) {
        while !data.is_empty() {
            if self.segment.capacity() == 0 {
                self.segment = BytesMut::with_capacity(SEGMENT);
            }
            let take = (SEGMENT - self.segment.len()).min(data.len());
            self.segment.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.segment.len() == SEGMENT {
                store(self.segments, std::mem::take(&mut self.segment).freeze());
                self.segments += 1;
            }
        }
    }

    /// Stores nothing of this body (segments already handed out are never referenced and
    /// age out of the cache).
    pub fn stop_storing(&mut self) {
        self.storing = false;
        // Their buffers go too (a segment's is 1 MiB, for the rest of a long body).
        self.inline = BytesMut::new();
        self.segment = BytesMut::new();
    }

    /// Ends the body: the last partial segment goes to `store`; returns where the body was
    /// stored (`None` when it is not) and the held last byte, to release once the response
    /// is in the cache.
    pub fn finish(mut self, store: impl FnOnce(u32, Bytes)) -> (Option<Layout>, Option<Bytes>) {
        if !self.storing {
            return (None, self.held);
        }
        let layout = if self.segments == 0 && self.segment.is_empty() {
            Layout::Inline(exact(self.inline))
        } else {
            if !self.segment.is_empty() {
                store(self.segments, exact(self.segment));
                self.segments += 1;
            }
            Layout::Segments(self.segments)
        };
        (Some(layout), self.held)
    }
}

/// `buf` as bytes that keep no more than a little spare room alive.
fn exact(buf: BytesMut) -> Bytes {
    if buf.capacity() > buf.len() + buf.len() / 8 {
        Bytes::copy_from_slice(&buf)
    } else {
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// Feeds `parts` through a layout; returns the stored segments, the released bytes before
    /// `finish`, the layout and the held byte.
    fn feed(
        storing: bool,
        max: u64,
        parts: &[usize],
    ) -> (Vec<(u32, usize)>, usize, Option<Layout>, Option<Bytes>) {
        let mut l = BodyLayout::new(storing, max);
        let mut stored = Vec::new();
        let mut released = 0;
        for &n in parts {
            l.push(
                Bytes::from(vec![7u8; n]),
                |i, b| stored.push((i, b.len())),
                |b| released += b.len(),
            );
        }
        let (layout, held) = l.finish(|i, b| stored.push((i, b.len())));
        (stored, released, layout, held)
    }

    #[test]
    fn a_small_body_is_inline_and_its_last_byte_held() {
        let (stored, released, layout, held) = feed(true, 1 << 30, &[100, 50]);
        assert!(stored.is_empty());
        assert_eq!(released, 149);
        assert!(matches!(layout, Some(Layout::Inline(b)) if b.len() == 150));
        assert_eq!(held.unwrap().len(), 1);
    }

    #[test]
    fn a_large_body_is_stored_in_segments_as_they_fill() {
        let n = 2 * SEGMENT + 10;
        let parts: Vec<usize> = std::iter::repeat_n(64 << 10, n / (64 << 10))
            .chain([n % (64 << 10)])
            .collect();
        let (stored, released, layout, _) = feed(true, 1 << 30, &parts);
        assert_eq!(stored, [(0, SEGMENT), (1, SEGMENT), (2, 10)]);
        assert_eq!(released, n - 1);
        assert_eq!(layout, Some(Layout::Segments(3)));
    }

    #[test]
    fn what_is_stored_keeps_no_more_memory_than_its_bytes() {
        // Frames of odd sizes: a segment split off a grown buffer would share (and keep
        // alive) up to twice its size.
        let capacity = |b: Bytes| b.try_into_mut().expect("owned alone").capacity();
        let mut l = BodyLayout::new(true, 1 << 30);
        let mut stored = Vec::new();
        let mut i = 0;
        while l.total() < (2 * SEGMENT + 5000) as u64 {
            let n = 7919 + i % 3;
            l.push(Bytes::from(vec![1u8; n]), |_, b| stored.push(b), |_| ());
            i += 1;
        }
        l.finish(|_, b| stored.push(b));
        assert_eq!(stored.len(), 3);
        for b in stored {
            let len = b.len();
            assert!(capacity(b) <= len + len / 8, "a segment of {len} bytes");
        }
        let mut l = BodyLayout::new(true, 1 << 30);
        for _ in 0..9 {
            l.push(Bytes::from(vec![1u8; 10_000]), |_, _| (), |_| ());
        }
        let (Some(Layout::Inline(b)), _) = l.finish(|_, _| ()) else {
            panic!("inline")
        };
        assert!(capacity(b) <= 90_000 + 90_000 / 8);
    }

    #[test]
    fn past_the_size_limit_nothing_is_stored_but_everything_flows() {
        let (stored, released, layout, held) = feed(true, 1000, &[600, 600]);
        assert!(stored.is_empty());
        assert_eq!((released, held.map(|b| b.len())), (1199, Some(1)));
        assert_eq!(layout, None);
        let (_, _, layout, _) = feed(false, 1 << 30, &[10]);
        assert_eq!(layout, None);
    }

    #[test]
    fn storable_heads_and_kept_fields() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        let public = h(&[("cache-control", "max-age=60")]);
        assert!(storable(&none, ok, &public, Some(10), 100, false));
        assert!(!storable(&none, ok, &public, Some(101), 100, false));
        let cookie = h(&[("cache-control", "max-age=60"), ("set-cookie", "a=1")]);
        assert!(!storable(&none, ok, &cookie, None, 100, false));
        // Allowed by the operator: stored, and the stored copy has no cookie.
        assert!(storable(&none, ok, &cookie, None, 100, true));
        assert!(!stored_headers(cookie).contains_key("set-cookie"));
        assert!(!storable(
            &none,
            ok,
            &h(&[("cache-control", "no-store")]),
            None,
            100,
            true
        ));
        let kept = stored_headers(h(&[
            ("cache-control", "max-age=60, no-cache=\"x-user\""),
            ("x-user", "alice"),
            ("age", "3"),
            ("etag", "\"a\""),
        ]));
        assert!(!kept.contains_key("x-user") && !kept.contains_key("age"));
        assert_eq!(kept["etag"], "\"a\"");
        assert_eq!(
            surrogate_keys(&h(&[("surrogate-key", "a b"), ("surrogate-key", " c")])),
            ["a", "b", "c"]
        );
    }
}
