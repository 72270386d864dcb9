//! A fuzzing entry point for the request accessors and the decision memo (the edge's
//! `plugin_request` fuzz target calls [`request_reads`]; a unit test feeds it random inputs).
//! Not an API.
//!
//! Two requests are built from the input, as the edge would hand them to the `authorize` or
//! `route` hook, and a made-up plugin reads them through the accessors' answers: which read
//! comes next depends on the answers so far, and its decision is a digest of every answer.
//! Checked:
//! - each accessor's answer, after the encoding the memo files it under, is exactly what the
//!   request holds (header lists and pairs included);
//! - the memo, holding the decision made on the first request, gives the second request a
//!   decision only if the plugin would have made that same decision on it (a reused
//!   `authorize` decision is never another request's), and gives the first request its own.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::memo::{Memo, Read, TRACE_BYTES_MAX, Trace};
use crate::request::{pairs_of, values_of};
use crate::{Protocol, Request};

/// Runs the checks on `input`; panics when one fails. Returns whether the memo reused the
/// first request's decision for the second (`None`: the input made no two requests).
pub fn request_reads(input: &[u8]) -> Option<bool> {
    let mut parts = input.split(|b| *b == 0xff);
    let (Some(first), Some(second), Some(script)) = (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (Some(a), Some(b)) = (request(first), request(second)) else {
        return None;
    };
    let names: Vec<String> = a
        .headers
        .keys()
        .chain(b.headers.keys())
        .map(|k| k.as_str().to_string())
        .chain(["x-absent".to_string()])
        .collect();
    let reads: Vec<Read> = script
        .iter()
        .map(|op| {
            let name = names[(*op as usize >> 4) % names.len()].clone();
            match op % 10 {
                0 => Read::Method,
                1 => Read::Scheme,
                2 => Read::Authority,
                3 => Read::Path,
                4 => Read::Query,
                5 => Read::Header(name),
                6 => Read::HeaderValues(name),
                7 => Read::Headers,
                8 => Read::Client,
                _ => Read::Protocol,
            }
        })
        .collect();

    let (trace, decided_a) = run(&reads, &a);
    let (_, decided_b) = run(&reads, &b);
    let memo = Memo::<u64>::new(16);
    memo.file(&trace, &decided_a, 0);
    let reused = memo.lookup(&b);
    if let Some(d) = reused {
        assert_eq!(
            d, decided_b,
            "a decision reused for a request it was not made for"
        );
    }
    if trace.bytes() <= TRACE_BYTES_MAX {
        assert_eq!(
            memo.lookup(&a),
            Some(decided_a),
            "a filed decision not found again"
        );
    }
    Some(reused.is_some())
}

/// The made-up plugin: reads as `reads` says, skipping the next read after an answer of odd
/// length (so its questions depend on its answers); decides a digest of what it saw.
fn run(reads: &[Read], req: &Request) -> (Trace, u64) {
    let mut trace = Trace::default();
    let mut seen = blake3::Hasher::new();
    let mut skip = false;
    for read in reads {
        if std::mem::take(&mut skip) {
            continue;
        }
        let answer = read.answer(req).map(|a| a.into_owned());
        check_accessor(read, answer.as_deref(), req);
        match &answer {
            Some(a) => {
                seen.update(&[1]);
                seen.update(&(a.len() as u64).to_le_bytes());
                seen.update(a.as_bytes());
                skip = !a.len().is_multiple_of(2);
            }
            None => {
                seen.update(&[0]);
            }
        }
        trace.reads.push((read.clone(), answer));
    }
    let digest = seen.finalize();
    let decided = u64::from_le_bytes(digest.as_bytes()[..8].try_into().unwrap());
    (trace, decided)
}

/// What the plugin gets from an accessor is what the request holds.
fn check_accessor(read: &Read, answer: Option<&str>, req: &Request) {
    match read {
        Read::Path => assert_eq!(answer, Some(req.uri.path())),
        Read::Query => assert_eq!(answer, req.uri.query()),
        Read::Method => assert_eq!(answer, Some(req.method.as_str())),
        Read::Header(name) => assert_eq!(answer, req.header(name)),
        Read::HeaderValues(name) => {
            let got = values_of(answer.map(str::to_string));
            let want: Vec<&str> = req.header_values(name).collect();
            assert_eq!(got, want, "header-values({name})");
        }
        Read::Headers => {
            let got = pairs_of(answer.unwrap_or(""));
            let want: Vec<(&str, &str)> = req.header_pairs().collect();
            let got: Vec<(&str, &str)> =
                got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(got, want, "headers()");
        }
        _ => {}
    }
}

/// A request from `bytes`: lines `METHOD TARGET`, then `name:value` headers; `None` where
/// the edge would have refused it (hyper and `http` refuse what they cannot hold).
fn request(bytes: &[u8]) -> Option<Request> {
    let mut lines = bytes.split(|b| *b == b'\n');
    let start = lines.next()?;
    let space = start.iter().position(|b| *b == b' ')?;
    let method = Method::from_bytes(&start[..space]).ok()?;
    let uri = Uri::try_from(&start[space + 1..]).ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let colon = line.iter().position(|b| *b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(&line[colon + 1..]).ok()?;
        headers.append(name, value);
    }
    Some(Request {
        method,
        tls: bytes.len().is_multiple_of(2),
        uri,
        headers,
        client: std::net::IpAddr::from([127, 0, 0, bytes.len() as u8]),
        protocol: Protocol::Http1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_and_random_inputs_pass_the_checks() {
        // Requests that differ only in what a plugin might read: a second value of a header,
        // a non-UTF-8 value, a value with ": " in it, the query.
        let cases: &[&[u8]] = &[
            b"GET /a?x=1\nx-k:1\nx-k:2\xffGET /a?x=1\nx-k:1\xff\x56\x66\x07\x03\x04",
            b"GET /a\nx-k:\xfe\xffGET /a\nx-k:v\xff\x05\x15\x25\x06\x07",
            b"GET /a\nx-k:a: b\xffGET /a\nx-k:a\xff\x07\x07\x05\x15",
            b"GET /a?q\xffGET /a?r\xff\x04\x03",
        ];
        for c in cases {
            assert_eq!(
                request_reads(c),
                Some(false),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
        // A seeded stream of inputs built from few parts, so the two requests often share
        // answers and often do not.
        let targets: &[&[u8]] = &[b"GET /a", b"GET /a?x=1", b"GET /b?x=1", b"HEAD /a"];
        let lines: &[&[u8]] = &[
            b"x-k:1",
            b"x-k:2",
            b"x-a:v",
            b"x-k:\xfe",
            b"host:A",
            b"host:a",
            b"x-k:a: b",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut outcomes = [0usize; 3];
        for _ in 0..5_000 {
            let mut input = Vec::new();
            for _ in 0..2 {
                input.extend_from_slice(targets[next(targets.len())]);
                for _ in 0..next(4) {
                    input.push(b'\n');
                    input.extend_from_slice(lines[next(lines.len())]);
                }
                input.push(0xff);
            }
            for _ in 0..next(8) {
                input.push(next(256) as u8);
            }
            outcomes[match request_reads(&input) {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            }] += 1;
        }
        // The inputs reach both outcomes often: decisions reused, and refused.
        assert!(outcomes[1] > 200 && outcomes[2] > 200, "{outcomes:?}");
    }
}
