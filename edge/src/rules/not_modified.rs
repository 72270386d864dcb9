//! Refreshing a stored response from a `304 Not Modified` (RFC 9111 §4.3.4), decided once for
//! both backends: an upstream's `304` to a conditional `GET`, and an origin's `304` to a
//! manifest revalidated by `ETag`.
//!
//! The rule: every field of the `304` replaces the stored field of that name, except framing
//! (`Content-Length`, `Content-Encoding`, `Content-Range`) and hop-by-hop fields; the stored
//! `Age` is dropped (it described the old response); freshness is then computed from the
//! merged fields as for a response received now, with the `304`'s own `Age`. So a `304`
//! that carries new caching fields (`Cache-Control`, `Expires`, `Date`) sets the new
//! lifetime, and one that carries none keeps the stored ones. (Before this module the two
//! backends differed: the upstream backend kept the stored fields for freshness, the origin
//! backend used only the `304`'s fields, falling back to the stored `Cache-Control`; for an
//! origin, whose `304`s carry `Cache-Control`, both give the same lifetime.)

use http::{HeaderMap, StatusCode, header};

use crate::rules::freshness::{Freshness, end_to_end};

/// The stored `headers` refreshed by a `304` whose fields are `not_modified`, for a request
/// sent at `request_time` and answered at `response_time`: the headers to keep and their
/// freshness.
pub fn merge_304(
    stored: &HeaderMap,
    not_modified: &HeaderMap,
    request_time: u64,
    response_time: u64,
    heuristic_cap: u64,
) -> (HeaderMap, Freshness) {
    let mut headers = stored.clone();
    update_from_304(&mut headers, not_modified);
    headers.remove(header::AGE);
    let mut judged = headers.clone();
    if let Some(age) = not_modified.get(header::AGE) {
        judged.insert(header::AGE, age.clone());
    }
    let freshness = Freshness::of(
        StatusCode::OK,
        &judged,
        request_time,
        response_time,
        heuristic_cap,
    );
    (headers, freshness)
}

/// Updates stored headers from a `304` (RFC 9111 §4.3.4): every header of the `304` replaces
/// the stored one of that name, except framing headers.
fn update_from_304(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    let fields = end_to_end(not_modified);
    for name in fields.keys() {
        if name == header::CONTENT_LENGTH
            || name == header::CONTENT_ENCODING
            || name == header::CONTENT_RANGE
        {
            continue;
        }
        stored.remove(name);
        for v in fields.get_all(name) {
            stored.append(name.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_fields::{T, date, h};

    #[test]
    fn a_304_updates_headers_but_not_framing() {
        let mut stored = h(&[
            ("etag", "\"a\""),
            ("cache-control", "max-age=1"),
            ("content-length", "10"),
        ]);
        update_from_304(
            &mut stored,
            &h(&[
                ("cache-control", "max-age=99"),
                ("content-length", "0"),
                ("x-new", "1"),
            ]),
        );
        assert_eq!(stored["cache-control"], "max-age=99");
        assert_eq!(stored["content-length"], "10");
        assert_eq!(stored["x-new"], "1");
        assert_eq!(stored["etag"], "\"a\"");
    }

    /// An upstream's `304`: validators only, with an `Age` from a cache in front of it. The
    /// stored `Cache-Control` still governs, the stored `Age` is gone, the new one counts.
    #[test]
    fn an_upstream_304_without_caching_fields_keeps_the_stored_lifetime() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=100"),
            ("age", "90"),
            ("content-type", "text/css"),
        ]);
        let (headers, f) = merge_304(&stored, &h(&[("etag", "\"v1\""), ("age", "5")]), T, T, 3600);
        assert_eq!(f.lifetime, 100);
        assert_eq!(f.age(T), 5, "the 304's Age, not the stored 90");
        assert!(!headers.contains_key("age"), "Age is computed when served");
        assert_eq!(headers["content-type"], "text/css");
        assert_eq!(headers["cache-control"], "max-age=100");
    }

    /// An origin's `304` to a manifest revalidation: it carries the current `Cache-Control`,
    /// which replaces the stored one and sets the lifetime; the file's own fields stay.
    #[test]
    fn an_origin_304_with_new_caching_fields_sets_the_new_lifetime() {
        let stored = h(&[
            ("etag", "\"b3\""),
            ("cache-control", "max-age=1"),
            ("content-type", "image/png"),
            ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ]);
        let (headers, f) = merge_304(
            &stored,
            &h(&[
                ("etag", "\"b3\""),
                ("cache-control", "max-age=60, stale-if-error=30"),
            ]),
            T,
            T + 1,
            3600,
        );
        assert_eq!(f.lifetime, 60);
        assert_eq!(f.stale_if_error, 30);
        assert_eq!(f.age(T + 1), 1, "the request's round trip counts as age");
        assert_eq!(headers["cache-control"], "max-age=60, stale-if-error=30");
        assert_eq!(headers["content-type"], "image/png");
    }

    #[test]
    fn a_304_with_a_new_date_and_expires_moves_the_lifetime() {
        let stored = h(&[("expires", &date(T - 10)), ("date", &date(T - 20))]);
        let (_, stale) = merge_304(&stored, &HeaderMap::new(), T, T, 3600);
        assert_eq!(stale.lifetime, 10);
        let (headers, f) = merge_304(
            &stored,
            &h(&[("expires", &date(T + 300)), ("date", &date(T))]),
            T,
            T,
            3600,
        );
        assert_eq!(f.lifetime, 300);
        assert_eq!(headers["expires"], date(T + 300).as_str());
    }
}
