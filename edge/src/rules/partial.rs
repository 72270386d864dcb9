//! Partial content in upstream mode (RFC 9110 §14, RFC 9111 §3.3–3.4): a representation kept
//! as fixed-size slices, each fetched from the upstream with its own `Range` request and
//! stored on its own entry, as nginx's slice module and Traffic Server's partial objects do.
//! A seek into a 4 GiB video costs one slice, not the file; a range over slices already held
//! is served from them (adjacent parts join by construction: slice `i` covers the bytes
//! `i × slice .. (i + 1) × slice`); a partial object is completed by fetching only the
//! slices it lacks.
//!
//! The rules here: which slice a request's range starts in, what bytes a slice covers, whether
//! an upstream's `206` is exactly the slice asked for, and whether two responses describe the
//! same representation (so that slices fetched at different times may be joined).

use http::{HeaderMap, StatusCode, header};
use tessera_origin_proto::range::{RangeAsk, parse_range};

/// A `Content-Range: bytes FIRST-LAST/TOTAL` (RFC 9110 §14.4), `last` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub total: u64,
}

/// The `Content-Range` of a `206` with a known complete length; `None` for anything else
/// (`*` as the length, another unit, a malformed or inverted range).
pub fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let (unit, rest) = v.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, total) = rest.trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let num = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let r = ContentRange {
        first: num(first)?,
        last: num(last)?,
        total: num(total)?,
    };
    (r.first <= r.last && r.last < r.total).then_some(r)
}

/// The complete length a `416` names (`Content-Range: bytes */TOTAL`).
pub fn unsatisfied_length(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes */")?;
    rest.trim().parse().ok()
}

/// How many slices of `slice` bytes a representation of `total` bytes takes.
pub fn slice_count(total: u64, slice: u64) -> u64 {
    total.div_ceil(slice)
}

/// The bytes slice `i` covers of a representation of `total` bytes: `start..end` (empty
/// past the end).
pub fn slice_bounds(i: u64, slice: u64, total: u64) -> (u64, u64) {
    let start = i.saturating_mul(slice).min(total);
    (start, start.saturating_add(slice).min(total))
}

/// The `Range` that asks for slice `i` of `slice` bytes, the length not known yet.
pub fn slice_range(i: u64, slice: u64) -> String {
    let start = i.saturating_mul(slice);
    format!("bytes={start}-{}", start.saturating_add(slice - 1))
}

/// The first and last byte a request asks of a representation of `size` bytes: its one
/// byte range, else the whole (`(0, 0)` for an empty one).
pub fn asked_bytes(req: &HeaderMap, size: u64) -> (u64, u64) {
    match req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) => match parse_range(r, size) {
            RangeAsk::Part { start, end } => (start, end),
            _ => (0, size.saturating_sub(1)),
        },
        None => (0, size.saturating_sub(1)),
    }
}

/// The slice a request's `Range` starts in, for a representation whose length is not known
/// yet; `None` when the request is not for one byte range (no `Range`, another unit, several
/// ranges, a malformed one): such a request is answered from the whole response. A suffix
/// range (`bytes=-N`) starts in slice 0, which also says the length.
pub fn first_slice(req: &HeaderMap, slice: u64) -> Option<u64> {
    let v = req.get(header::RANGE)?.to_str().ok()?.trim();
    let (unit, spec) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        return digits(b).then_some(0);
    }
    let start: u64 = a.parse().ok().filter(|_| digits(a))?;
    if !b.is_empty() && b.parse::<u64>().ok().filter(|_| digits(b))? < start {
        return None;
    }
    Some(start / slice)
}

/// Whether the upstream's answer `status`, `headers` is slice `i` of `slice` bytes: a `206`
/// whose `Content-Range` starts where the slice starts and ends where it ends for the length
/// it names (or, when `total` is known, that length). Gives the range on success, else why
/// not.
pub fn check_slice(
    status: StatusCode,
    headers: &HeaderMap,
    i: u64,
    slice: u64,
    total: Option<u64>,
) -> Result<ContentRange, String> {
    if status != StatusCode::PARTIAL_CONTENT {
        return Err(format!("the upstream answered {status} to a slice's range"));
    }
    let Some(r) = content_range(headers) else {
        return Err("the upstream's 206 has no usable Content-Range".into());
    };
    if let Some(t) = total
        && t != r.total
    {
        return Err(format!(
            "the upstream's length changed from {t} to {} bytes",
            r.total
        ));
    }
    let (start, end) = slice_bounds(i, slice, r.total);
    if (r.first, r.last + 1) != (start, end) {
        return Err(format!(
            "the upstream sent bytes {}-{} for the slice {start}-{}",
            r.first,
            r.last,
            end.saturating_sub(1)
        ));
    }
    Ok(r)
}

/// The validator a slice request sends as `If-Range`, so that a representation changed since
/// the first slice is answered whole (`200`) instead of mixed in: the strong `ETag`, else
/// `Last-Modified` (RFC 9110 §13.1.5).
pub fn if_range_validator(stored: &HeaderMap) -> Option<http::HeaderValue> {
    stored
        .get(header::ETAG)
        .filter(|e| !e.as_bytes().starts_with(b"W/"))
        .or_else(|| stored.get(header::LAST_MODIFIED))
        .cloned()
}

/// Whether a stored representation with fields `stored` can be completed in parts later: it
/// says the upstream takes byte ranges (`Accept-Ranges: bytes`) and has a validator to send
/// as `If-Range`.
pub fn in_parts(stored: &HeaderMap) -> bool {
    let ranges = stored
        .get_all(header::ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|u| u.trim().eq_ignore_ascii_case("bytes"));
    ranges && if_range_validator(stored).is_some()
}

/// Whether a slice's response `fresh` comes from the same representation as the stored
/// one `stored` (RFC 9110 §14.3's rule for combining parts): the same strong `ETag` when
/// either has one, else the same `Last-Modified` when either has one. Without any validator
/// parts are combined on the length alone (checked by [`check_slice`]), as nginx's slice
/// module does.
pub fn same_representation(stored: &HeaderMap, fresh: &HeaderMap) -> bool {
    let etag = |h: &HeaderMap| h.get(header::ETAG).map(|v| v.as_bytes().to_vec());
    let (a, b) = (etag(stored), etag(fresh));
    if a.is_some() || b.is_some() {
        return a == b && a.as_ref().is_some_and(|e| !e.starts_with(b"W/"));
    }
    let lm = |h: &HeaderMap| h.get(header::LAST_MODIFIED).map(|v| v.as_bytes().to_vec());
    lm(stored) == lm(fresh)
}

/// The fields of the whole representation, from a `206`'s: without `Content-Range`, with
/// the complete length as `Content-Length`.
pub fn whole_fields(mut headers: HeaderMap, total: u64) -> HeaderMap {
    headers.remove(header::CONTENT_RANGE);
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(total));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_fields::h;

    #[test]
    fn content_ranges_are_read_strictly() {
        let r = |v: &str| content_range(&h(&[("content-range", v)]));
        assert_eq!(
            r("bytes 0-9/100"),
            Some(ContentRange {
                first: 0,
                last: 9,
                total: 100
            })
        );
        assert_eq!(r("BYTES  10-19/20").map(|r| r.last), Some(19));
        for bad in [
            "bytes 0-9/*",
            "bytes */100",
            "items 0-9/100",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "bytes +1-9/100",
            "bytes 0-9",
            "bytes a-9/100",
        ] {
            assert_eq!(r(bad), None, "{bad}");
        }
        assert_eq!(
            unsatisfied_length(&h(&[("content-range", "bytes */1234")])),
            Some(1234)
        );
        assert_eq!(unsatisfied_length(&h(&[])), None);
    }

    #[test]
    fn slices_cover_the_representation_once() {
        const S: u64 = 1 << 20;
        assert_eq!(slice_count(0, S), 0);
        assert_eq!(slice_count(1, S), 1);
        assert_eq!(slice_count(S, S), 1);
        assert_eq!(slice_count(S + 1, S), 2);
        assert_eq!(slice_bounds(0, S, 10), (0, 10));
        assert_eq!(slice_bounds(1, S, S + 5), (S, S + 5));
        assert_eq!(slice_bounds(2, S, 5 * S), (2 * S, 3 * S));
        assert_eq!(
            slice_bounds(9, S, 5 * S),
            (5 * S, 5 * S),
            "past the end: empty"
        );
        assert_eq!(slice_range(2, S), format!("bytes={}-{}", 2 * S, 3 * S - 1));
        // A range a client may send, at the end of u64: no overflow.
        let i = first_slice(&h(&[("range", "bytes=18446744073709551615-")]), S).unwrap();
        assert_eq!(slice_range(i, S), format!("bytes={}-{}", i * S, u64::MAX));
        assert_eq!(slice_bounds(i, S, 10), (10, 10));
    }

    #[test]
    fn a_range_names_its_first_slice() {
        const S: u64 = 100;
        let f = |v: &str| first_slice(&h(&[("range", v)]), S);
        assert_eq!(f("bytes=0-"), Some(0));
        assert_eq!(f("bytes=250-260"), Some(2));
        assert_eq!(f("bytes = 99-99"), Some(0));
        assert_eq!(f("bytes=-500"), Some(0));
        for whole in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-2",
            "bytes=x-",
            "bytes=-",
            "bytes",
        ] {
            assert_eq!(f(whole), None, "{whole}");
        }
        assert_eq!(first_slice(&h(&[]), S), None);
    }

    #[test]
    fn the_bytes_asked_are_the_range_or_the_whole() {
        assert_eq!(asked_bytes(&h(&[("range", "bytes=5-9")]), 100), (5, 9));
        assert_eq!(asked_bytes(&h(&[("range", "bytes=-10")]), 100), (90, 99));
        assert_eq!(asked_bytes(&h(&[("range", "bytes=0-1,5-6")]), 100), (0, 99));
        assert_eq!(asked_bytes(&h(&[]), 100), (0, 99));
        assert_eq!(asked_bytes(&h(&[]), 0), (0, 0));
    }

    #[test]
    fn a_slice_answer_must_be_that_slice() {
        let cr = |v: &str| h(&[("content-range", v)]);
        let ok = check_slice(
            StatusCode::PARTIAL_CONTENT,
            &cr("bytes 100-199/250"),
            1,
            100,
            None,
        );
        assert_eq!(ok.unwrap().total, 250);
        // The last slice is short.
        assert!(
            check_slice(
                StatusCode::PARTIAL_CONTENT,
                &cr("bytes 200-249/250"),
                2,
                100,
                Some(250)
            )
            .is_ok()
        );
        // A 200 (the upstream ignores ranges, or If-Range failed).
        assert!(check_slice(StatusCode::OK, &cr("bytes 100-199/250"), 1, 100, None).is_err());
        // Not the bytes asked for.
        let e = check_slice(
            StatusCode::PARTIAL_CONTENT,
            &cr("bytes 100-150/250"),
            1,
            100,
            None,
        )
        .unwrap_err();
        assert!(e.contains("100-150"), "{e}");
        // The length changed.
        let e = check_slice(
            StatusCode::PARTIAL_CONTENT,
            &cr("bytes 100-199/300"),
            1,
            100,
            Some(250),
        )
        .unwrap_err();
        assert!(e.contains("250 to 300"), "{e}");
        assert!(check_slice(StatusCode::PARTIAL_CONTENT, &h(&[]), 0, 100, None).is_err());
    }

    #[test]
    fn parts_join_only_within_one_representation() {
        let a = h(&[("etag", "\"v1\""), ("last-modified", "x")]);
        assert!(same_representation(&a, &h(&[("etag", "\"v1\"")])));
        assert!(!same_representation(&a, &h(&[("etag", "\"v2\"")])));
        assert!(!same_representation(&a, &h(&[])));
        // A weak validator never joins parts (RFC 9110 §14.3).
        let w = h(&[("etag", "W/\"v1\"")]);
        assert!(!same_representation(&w, &w.clone()));
        let lm = h(&[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]);
        assert!(same_representation(&lm, &lm.clone()));
        assert!(!same_representation(
            &lm,
            &h(&[("last-modified", "Tue, 02 Jan 2024 00:00:00 GMT")])
        ));
        assert!(same_representation(&h(&[]), &h(&[])));
        assert_eq!(if_range_validator(&a).unwrap(), "\"v1\"");
        assert_eq!(if_range_validator(&w), None);
        assert_eq!(
            if_range_validator(&h(&[("etag", "W/\"v1\""), ("last-modified", "x")])).unwrap(),
            "x"
        );
    }

    #[test]
    fn a_whole_response_is_kept_in_parts_when_it_can_be_fetched_in_parts() {
        assert!(in_parts(&h(&[
            ("accept-ranges", "bytes"),
            ("etag", "\"a\"")
        ])));
        assert!(in_parts(&h(&[
            ("accept-ranges", "none, Bytes"),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        ])));
        assert!(!in_parts(&h(&[("etag", "\"a\"")])), "no Accept-Ranges");
        assert!(!in_parts(&h(&[
            ("accept-ranges", "none"),
            ("etag", "\"a\"")
        ])));
        assert!(!in_parts(&h(&[
            ("accept-ranges", "bytes"),
            ("etag", "W/\"a\"")
        ])));
    }

    #[test]
    fn the_whole_representation_has_its_length() {
        let f = whole_fields(
            h(&[("content-range", "bytes 0-9/100"), ("content-length", "10")]),
            100,
        );
        assert!(!f.contains_key("content-range"));
        assert_eq!(f["content-length"], "100");
    }
}
