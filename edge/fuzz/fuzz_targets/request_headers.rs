//! A request's and a stored response's header fields, as clients and origins send them,
//! through every rule that reads them: Cache-Control (and CDN-Cache-Control) parsing,
//! storability, freshness and its judgement, `Vary`, and the representation plan
//! (conditionals, `Range`, `If-Range`), the partial-content rules (a slice asked for, a
//! `Content-Range` checked against it) and early hints from `Link`. Never a panic; a planned
//! range lies within the body; a slice accepted is the one asked for.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use tessera_edge::rules::freshness::{
    Freshness, not_storable, request_directives, response_directives,
};
use tessera_edge::rules::hints::early_hints;
use tessera_edge::rules::partial::{
    check_slice, content_range, first_slice, same_representation, slice_bounds, slice_range,
};
use tessera_edge::rules::representation::{Plan, plan};
use tessera_edge::rules::vary::{selecting_values, vary_names};

/// Header fields from `name: value` lines (those that are valid fields).
fn fields(text: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            h.append(n, v);
        }
    }
    h
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let size = u64::from_le_bytes(data[2..10].try_into().unwrap()) >> (data[10] % 64);
    let rest = &data[12..];
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let req = fields(&rest[..split]);
    let resp = fields(rest.get(split + 1..).unwrap_or_default());

    let now = 1_700_000_000;
    let rcc = request_directives(&req);
    let _ = response_directives(&resp);
    let _ = not_storable(&http::Method::GET, &req, status, &resp);
    let f = Freshness::of(status, &resp, now - 5, now, 86_400);
    for t in [now, now + 1, now + 86_400 * 365] {
        let _ = f.judge(t, &rcc);
        let _ = f.usable_on_error(t, &rcc);
        let _ = f.ttl(t);
        let _ = f.age(t);
    }
    let _ = f.keep_for();
    let names = vary_names(&resp);
    let _ = selecting_values(&names, &req);

    let mut headers = resp.clone();
    if let Plan::Send { start, end, .. } = plan(&req, status, &mut headers, Some(size)) {
        assert!(
            start <= end && end <= size,
            "range {start}..{end} outside a body of {size}"
        );
    }
    let mut headers = resp.clone();
    let _ = plan(&req, status, &mut headers, None);

    if let Some(r) = content_range(&resp) {
        assert!(r.first <= r.last && r.last < r.total, "{r:?}");
    }
    let _ = early_hints(&resp);
    let _ = same_representation(&req, &resp);
    for slice in [64 << 10, 1 << 20] {
        let Some(i) = first_slice(&req, slice) else {
            continue;
        };
        let _ = slice_range(i, slice);
        for total in [None, Some(size)] {
            if let Ok(r) = check_slice(status, &resp, i, slice, total) {
                let (start, end) = slice_bounds(i, slice, r.total);
                assert_eq!(
                    (r.first, r.last + 1),
                    (start, end),
                    "not the slice asked for"
                );
                assert!(total.is_none_or(|t| t == r.total));
            }
        }
    }
});
