//! `Range` (RFC 9110 §14) and conditional request (RFC 9110 §13) evaluation, shared by the
//! origin server and the edge. No I/O.

use http::{HeaderMap, StatusCode, header};

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: send the whole representation (no header, another unit, or several
    /// ranges, which this server answers with the whole file as RFC 9110 allows).
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// A syntactically valid range that selects nothing: `416`.
    Unsatisfiable,
    /// A `bytes=` range that does not parse: `416` with a message naming it.
    Malformed,
}

fn num(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Evaluates a `Range` header value against a representation of `size` bytes.
pub fn parse_range(value: &str, size: u64) -> RangeAsk {
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeAsk::Malformed;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAsk::Whole;
    }
    let spec = spec.trim();
    if spec.contains(',') {
        // Each part must still be well-formed, or the header is malformed.
        let all_ok = spec
            .split(',')
            .all(|p| !matches!(parse_one(p.trim(), u64::MAX), RangeAsk::Malformed));
        return if all_ok {
            RangeAsk::Whole
        } else {
            RangeAsk::Malformed
        };
    }
    parse_one(spec, size)
}

fn parse_one(spec: &str, size: u64) -> RangeAsk {
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Malformed;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last `n` bytes.
        let Some(n) = num(b) else {
            return RangeAsk::Malformed;
        };
        if n == 0 || size == 0 {
            return RangeAsk::Unsatisfiable;
        }
        return RangeAsk::Part {
            start: size.saturating_sub(n),
            end: size - 1,
        };
    }
    let Some(start) = num(a) else {
        return RangeAsk::Malformed;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return RangeAsk::Malformed,
        }
    };
    if start >= size {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part {
        start,
        end: end.min(size - 1),
    }
}

/// Whether an `If-None-Match` / `If-Match` list matches `etag` (quoted, maybe `W/`). `weak`
/// selects the weak comparison (`If-None-Match`), which ignores a `W/` prefix on either side;
/// the strong one (`If-Match`) needs both strong and equal (RFC 9110 §8.8.3.2).
pub fn etag_matches(list: &str, etag: &str, weak: bool) -> bool {
    let (stored_weak, stored) = match etag.strip_prefix("W/") {
        Some(e) => (true, e),
        None => (false, etag),
    };
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        let (listed_weak, listed) = match t.strip_prefix("W/") {
            Some(e) => (true, e),
            None => (false, t),
        };
        listed == stored && (weak || !(listed_weak || stored_weak))
    })
}

/// Whether `Accept-Encoding` accepts `coding` (a listed token with a non-zero weight).
pub fn accepts_encoding(header: &str, coding: &str) -> bool {
    header.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let zero = parts.any(|p| {
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().map(|q| q == 0.0).unwrap_or(false))
        });
        name.eq_ignore_ascii_case(coding) && !zero
    })
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since` in
/// RFC 9110 §13.2.2 order for a GET or HEAD of a representation with validators `etag`
/// (quoted) and `modified` (seconds since the epoch): `Some(304)` or `Some(412)` when they
/// decide the answer, `None` to answer normally.
pub fn preconditions(
    headers: &HeaderMap,
    etag: Option<&str>,
    modified: Option<u64>,
) -> Option<StatusCode> {
    let h = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(list) = h(header::IF_MATCH) {
        let ok = match etag {
            Some(e) => etag_matches(list, e, false),
            None => list.trim() == "*",
        };
        if !ok {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(since), Some(m)) = (h(header::IF_UNMODIFIED_SINCE).and_then(date), modified)
        && m > since
    {
        return Some(StatusCode::PRECONDITION_FAILED);
    }
    if let Some(list) = h(header::IF_NONE_MATCH) {
        let hit = match etag {
            Some(e) => etag_matches(list, e, true),
            None => list.trim() == "*",
        };
        return hit.then_some(StatusCode::NOT_MODIFIED);
    }
    if let (Some(since), Some(m)) = (h(header::IF_MODIFIED_SINCE).and_then(date), modified) {
        return (m <= since).then_some(StatusCode::NOT_MODIFIED);
    }
    None
}

/// Whether a `Range` still applies under the request's `If-Range` (RFC 9110 §13.1.5): true
/// without `If-Range`, or when it names this representation exactly (a strong ETag, or the
/// exact `Last-Modified` date).
pub fn if_range_holds(headers: &HeaderMap, etag: Option<&str>, modified: Option<u64>) -> bool {
    let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if ir.starts_with('"') {
        etag.is_some_and(|e| e == ir)
    } else {
        date(ir).is_some_and(|d| Some(d) == modified)
    }
}

fn date(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAsk::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Part { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Part { start: 90, end: 99 });
        assert_eq!(
            parse_range("bytes=90-200", 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(parse_range("bytes=-10", 100), Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-200", 100), Part { start: 0, end: 99 });
        assert_eq!(
            parse_range(" bytes = 5 - 6 ", 100),
            Part { start: 5, end: 6 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=abc", 100), Malformed);
        assert_eq!(parse_range("bytes=5-4", 100), Malformed);
        assert_eq!(parse_range("bytes=-", 100), Malformed);
        assert_eq!(parse_range("bytes=1-2-3", 100), Malformed);
        assert_eq!(parse_range("bytes=+1-2", 100), Malformed);
        assert_eq!(parse_range("garbage", 100), Malformed);
        assert_eq!(parse_range("items=0-5", 100), Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("bytes=0-1,x", 100), Malformed);
    }

    #[test]
    fn etags() {
        let e = "\"abc\"";
        assert!(etag_matches("\"abc\"", e, false));
        assert!(etag_matches("\"x\", \"abc\"", e, false));
        assert!(etag_matches("*", e, false));
        assert!(etag_matches("W/\"abc\"", e, true));
        assert!(!etag_matches("W/\"abc\"", e, false));
        assert!(!etag_matches("\"abd\"", e, true));
        // A weak stored ETag: the weak comparison ignores `W/` on both sides, the strong
        // one never matches it.
        let w = "W/\"abc\"";
        assert!(etag_matches("W/\"abc\"", w, true));
        assert!(etag_matches("\"abc\"", w, true));
        assert!(!etag_matches("W/\"abc\"", w, false));
        assert!(!etag_matches("\"abc\"", w, false));
        assert!(!etag_matches("W/\"abd\"", w, true));
    }

    #[test]
    fn encodings() {
        assert!(accepts_encoding("gzip, br", "br"));
        assert!(accepts_encoding("BR;q=0.5", "br"));
        assert!(!accepts_encoding("br;q=0", "br"));
        assert!(!accepts_encoding("gzip", "br"));
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Any header text gets an answer, never a panic, and a `Part` always lies in the file.
    #[test]
    fn any_range_header_is_answered_within_bounds() {
        let pieces = [
            "bytes",
            "=",
            "-",
            ",",
            "0",
            "1",
            "99",
            "18446744073709551615",
            "18446744073709551616",
            " ",
            "x",
            "=",
        ];
        let mut seed = 42u64;
        for _ in 0..20_000 {
            let mut h = String::new();
            for _ in 0..(seed % 7) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                h.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            for size in [0u64, 1, 100, u64::MAX] {
                if let RangeAsk::Part { start, end } = parse_range(&h, size) {
                    assert!(start <= end && end < size, "{h:?} on {size}: {start}-{end}");
                }
            }
            let _ = etag_matches(&h, "\"x\"", true);
            let _ = accepts_encoding(&h, "br");
        }
    }
}
