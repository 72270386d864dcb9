//! The representation plan: what a request gets from a response the edge holds or is
//! filling — preconditions (RFC 9110 §13), a range (§14), and the content coding (brotli for
//! clients that accept it). One plan for hits and fills alike; the pipeline turns it into a
//! response and only moves bytes.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use tessera_origin_proto::range::{
    RangeAsk, accepts_encoding, if_range_holds, parse_range, preconditions,
};

use crate::rules::freshness::date_header;
use crate::rules::vary::add_vary;

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The preconditions decided the answer: `304 Not Modified` or `412 Precondition Failed`.
    Decided(StatusCode),
    /// The range asked for lies outside the representation's `size` bytes (`416`).
    Unsatisfiable { size: u64 },
    /// Send `status` with the body bytes `start..end` (`end` is `u64::MAX` when the size is not
    /// known yet: everything).
    Send {
        status: StatusCode,
        start: u64,
        end: u64,
    },
}

/// Plans the answer to a request with fields `req` from a response of `status` with fields
/// `headers` (as they will be sent, updated here: `Accept-Ranges`, `Content-Range`,
/// `Content-Length`) and a body of `size` bytes (`None` while unknown: a fill without a
/// `Content-Length`, which is then sent whole).
pub fn plan(
    req: &HeaderMap,
    status: StatusCode,
    headers: &mut HeaderMap,
    size: Option<u64>,
) -> Plan {
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
    let modified = date_header(headers, header::LAST_MODIFIED);
    // `If-Modified-Since` against a response without `Last-Modified` compares with its
    // `Date` (RFC 9111 §4.3.2); `If-Unmodified-Since` and `If-Range` need the real one.
    let compared = match modified {
        None if !req.contains_key(header::IF_UNMODIFIED_SINCE) => {
            date_header(headers, header::DATE)
        }
        m => m,
    };
    if status == StatusCode::OK
        && let Some(decided) = preconditions(req, etag, compared)
    {
        return Plan::Decided(decided);
    }
    let Some(size) = size else {
        return Plan::Send {
            status,
            start: 0,
            end: u64::MAX,
        };
    };
    let mut ask = RangeAsk::Whole;
    if status == StatusCode::OK && !headers.contains_key(header::CONTENT_ENCODING) {
        if let Some(r) = req.get(header::RANGE).and_then(|v| v.to_str().ok())
            && if_range_holds(req, etag, modified)
        {
            ask = parse_range(r, size);
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    match ask {
        RangeAsk::Part { start, end } => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).unwrap(),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
            Plan::Send {
                status: StatusCode::PARTIAL_CONTENT,
                start,
                end: end + 1,
            }
        }
        RangeAsk::Unsatisfiable => Plan::Unsatisfiable { size },
        // A malformed range is ignored (RFC 9110 §14.2 allows it): the whole body.
        RangeAsk::Whole | RangeAsk::Malformed => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            Plan::Send {
                status,
                start: 0,
                end: size,
            }
        }
    }
}

/// Largest body compressed for a client (compressing needs every byte at once).
pub const BROTLI_MAX: u64 = 8 << 20;

/// Whether to send a whole `200` body of `size` bytes with fields `headers` brotli-compressed
/// to a request with fields `req`, when compression is `enabled`. A body that could be
/// compressed varies by `Accept-Encoding` whatever this request accepts, so that is added to
/// `Vary` here.
pub fn wants_brotli(enabled: bool, size: u64, headers: &mut HeaderMap, req: &HeaderMap) -> bool {
    if !enabled
        || size < 256
        || headers.contains_key(header::CONTENT_ENCODING)
        || !compressible(headers.get(header::CONTENT_TYPE))
    {
        return false;
    }
    add_vary(headers, "accept-encoding");
    req.get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| accepts_encoding(v, "br"))
        && size <= BROTLI_MAX
}

/// Makes `headers` describe the brotli-compressed representation of `length` bytes: a
/// different representation, so no ranges and a weak validator of its own.
pub fn mark_brotli(headers: &mut HeaderMap, length: usize) {
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.remove(header::ACCEPT_RANGES);
    weaken_etag(headers);
}

/// Makes the `ETag` of `headers` weak (`W/"…"`): the one a brotli-compressed representation
/// carries, in its `200` and in the `304`s that stand for it.
pub fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(e) = headers.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !e.starts_with("W/")
        && let Ok(w) = HeaderValue::from_str(&format!("W/{e}"))
    {
        headers.insert(header::ETAG, w);
    }
}

/// Whether a content type is worth compressing.
fn compressible(ct: Option<&HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || matches!(
            ct.as_str(),
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "application/manifest+json"
        )
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_fields::h;

    #[test]
    fn compressible_types() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(compressible(Some(&v("text/html; charset=utf-8"))));
        assert!(compressible(Some(&v("application/javascript"))));
        assert!(compressible(Some(&v("application/ld+json"))));
        assert!(!compressible(Some(&v("image/png"))));
        assert!(!compressible(None));
    }

    #[test]
    fn a_whole_body_gets_its_length_and_accepts_ranges() {
        let mut headers = h(&[("etag", "\"a\"")]);
        let p = plan(&HeaderMap::new(), StatusCode::OK, &mut headers, Some(10));
        assert_eq!(
            p,
            Plan::Send {
                status: StatusCode::OK,
                start: 0,
                end: 10
            }
        );
        assert_eq!(headers["content-length"], "10");
        assert_eq!(headers["accept-ranges"], "bytes");
    }

    #[test]
    fn conditionals_compare_weakly_and_fall_back_to_the_date() {
        use crate::rules::test_fields::{T, date};
        let plan_for = |req: &[(&'static str, &str)], stored: &[(&'static str, &str)]| {
            plan(&h(req), StatusCode::OK, &mut h(stored), Some(10))
        };
        let not_modified = Plan::Decided(StatusCode::NOT_MODIFIED);
        // A weak validator on either side: If-None-Match compares weakly.
        for (asked, stored) in [
            ("W/\"x\"", "W/\"x\""),
            ("W/\"x\"", "\"x\""),
            ("\"x\"", "W/\"x\""),
        ] {
            assert_eq!(
                plan_for(&[("if-none-match", asked)], &[("etag", stored)]),
                not_modified,
                "{asked} against {stored}"
            );
        }
        assert_ne!(
            plan_for(&[("if-none-match", "W/\"y\"")], &[("etag", "W/\"x\"")]),
            not_modified
        );
        // No Last-Modified: If-Modified-Since compares with the response's Date.
        let stored = [("date", date(T))];
        let stored: Vec<(&'static str, &str)> =
            stored.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            plan_for(&[("if-modified-since", &date(T))], &stored),
            not_modified
        );
        assert_ne!(
            plan_for(&[("if-modified-since", &date(T - 60))], &stored),
            not_modified
        );
    }

    #[test]
    fn ranges_are_cut_refused_or_ignored() {
        let mut headers = HeaderMap::new();
        let p = plan(
            &h(&[("range", "bytes=2-4")]),
            StatusCode::OK,
            &mut headers,
            Some(10),
        );
        assert_eq!(
            p,
            Plan::Send {
                status: StatusCode::PARTIAL_CONTENT,
                start: 2,
                end: 5
            }
        );
        assert_eq!(headers["content-range"], "bytes 2-4/10");
        assert_eq!(headers["content-length"], "3");
        let p = plan(
            &h(&[("range", "bytes=20-")]),
            StatusCode::OK,
            &mut HeaderMap::new(),
            Some(10),
        );
        assert_eq!(p, Plan::Unsatisfiable { size: 10 });
        // A stale If-Range: the whole representation.
        let mut headers = h(&[("etag", "\"new\"")]);
        let req = h(&[("range", "bytes=2-4"), ("if-range", "\"old\"")]);
        let p = plan(&req, StatusCode::OK, &mut headers, Some(10));
        assert!(matches!(
            p,
            Plan::Send {
                status: StatusCode::OK,
                start: 0,
                end: 10
            }
        ));
        // No ranges of a content-coded body, nor of an error.
        let mut headers = h(&[("content-encoding", "gzip")]);
        let p = plan(
            &h(&[("range", "bytes=2-4")]),
            StatusCode::OK,
            &mut headers,
            Some(10),
        );
        assert!(matches!(
            p,
            Plan::Send {
                status: StatusCode::OK,
                ..
            }
        ));
        assert!(!headers.contains_key("accept-ranges"));
        let p = plan(
            &h(&[("range", "bytes=2-4")]),
            StatusCode::NOT_FOUND,
            &mut HeaderMap::new(),
            Some(10),
        );
        assert!(matches!(
            p,
            Plan::Send {
                status: StatusCode::NOT_FOUND,
                start: 0,
                end: 10
            }
        ));
    }

    #[test]
    fn preconditions_decide_before_ranges() {
        let mut headers = h(&[("etag", "\"a\"")]);
        let req = h(&[("if-none-match", "\"a\""), ("range", "bytes=0-1")]);
        assert_eq!(
            plan(&req, StatusCode::OK, &mut headers, Some(10)),
            Plan::Decided(StatusCode::NOT_MODIFIED)
        );
        let req = h(&[("if-match", "\"b\"")]);
        assert_eq!(
            plan(&req, StatusCode::OK, &mut headers, None),
            Plan::Decided(StatusCode::PRECONDITION_FAILED)
        );
    }

    #[test]
    fn a_body_of_unknown_size_is_sent_whole() {
        let mut headers = HeaderMap::new();
        let p = plan(
            &h(&[("range", "bytes=2-4")]),
            StatusCode::OK,
            &mut headers,
            None,
        );
        assert_eq!(
            p,
            Plan::Send {
                status: StatusCode::OK,
                start: 0,
                end: u64::MAX
            }
        );
        assert!(headers.is_empty());
    }

    #[test]
    fn brotli_for_text_that_clients_accept_and_the_vary_either_way() {
        let br = h(&[("accept-encoding", "gzip, br")]);
        let mut headers = h(&[("content-type", "text/css"), ("etag", "\"e\"")]);
        assert!(wants_brotli(true, 1000, &mut headers, &br));
        assert_eq!(headers["vary"], "accept-encoding");
        mark_brotli(&mut headers, 300);
        assert_eq!(headers["etag"], "W/\"e\"");
        assert_eq!(headers["content-length"], "300");
        let mut headers = h(&[("content-type", "text/css")]);
        assert!(!wants_brotli(true, 1000, &mut headers, &HeaderMap::new()));
        assert_eq!(headers["vary"], "accept-encoding");
        let mut png = h(&[("content-type", "image/png")]);
        assert!(!wants_brotli(true, 1000, &mut png, &br));
        assert!(!png.contains_key("vary"));
        assert!(!wants_brotli(
            true,
            BROTLI_MAX + 1,
            &mut h(&[("content-type", "text/css")]),
            &br
        ));
        assert!(!wants_brotli(
            false,
            1000,
            &mut h(&[("content-type", "text/css")]),
            &br
        ));
    }
}
