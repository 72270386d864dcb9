//! Request paths: the one normalisation every request's path gets before anything looks at
//! it, and the file an origin-mode path names.
//!
//! Plugins (`authorize`, `route`), the cache key and the backend all see the same path: the
//! normalised one. A path that cannot be normalised is refused (400). The rules, as RFC 3986
//! §6.2.2 and nginx's `merge_slashes` do:
//! - every `%XX` is decoded, then only what a path segment cannot hold as it is gets
//!   encoded again, in upper-case hex: `/%70rivate` is `/private`, `/a%7eb` is `/a~b`,
//!   `/a b` is `/a%20b`. A `%` not followed by two hex digits is refused.
//! - an encoded slash (`%2F`) is a slash: `/private%2Fr.txt` is `/private/r.txt` (a
//!   published file's name cannot hold one, and an upstream that decodes it would serve
//!   the same file a plugin was asked about under another name).
//! - empty segments are merged (`//private//r.txt` is `/private/r.txt`); a trailing slash
//!   is kept (it names a folder's `index.html` in origin mode).
//! - dot segments (`.`, `..`, raw or encoded), NUL, other control characters and
//!   backslashes are refused.
//! - letter case is kept: Tessera's origins are case-sensitive, and an upstream that is not
//!   must be guarded by plugins that compare without case.
//!
//! The query is left as it came. A `route` plugin's rewritten path is normalised again.

use std::borrow::Cow;

use http::StatusCode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

use crate::basics::error::Refusal;
use crate::basics::protocol::{percent_decode, percent_decode_bytes};

/// What a normalised segment keeps as it is: RFC 3986's `pchar` less percent-encoding
/// (unreserved characters, sub-delims, `:` and `@`). Everything else is encoded.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// Whether `b` is kept as it is (the bytes [`ENCODED`] leaves out).
fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// The request path `raw` normalised (see the module's rules); borrowed when it already was.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, Refusal> {
    let bad = |why: &str| Refusal::new(StatusCode::BAD_REQUEST, format!("bad path {raw:?}: {why}"));
    if !raw.starts_with('/') {
        return Err(bad("must start with /"));
    }
    if is_normal(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    normalized(raw).map(Cow::Owned).map_err(bad)
}

/// [`normalize_path`] the long way (`raw` starts with `/`), or why it cannot be.
fn normalized(raw: &str) -> Result<String, &'static str> {
    let decoded = percent_decode_bytes(raw).ok_or("invalid percent-encoding")?;
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("NUL and control characters are not allowed");
    }
    if decoded.contains(&b'\\') {
        return Err("backslashes are not allowed");
    }
    let mut out = String::with_capacity(raw.len());
    for seg in decoded.split(|&b| b == b'/').filter(|s| !s.is_empty()) {
        if seg == b"." || seg == b".." {
            return Err("dot segments are not allowed");
        }
        out.push('/');
        out.extend(percent_encode(seg, ENCODED));
    }
    if out.is_empty() || decoded.ends_with(b"/") {
        out.push('/');
    }
    Ok(out)
}

/// Whether `p` is already normalised: kept bytes, single slashes, upper-case escapes of
/// bytes that must be escaped, no dot segment (the common case, checked without allocating).
fn is_normal(p: &str) -> bool {
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => return false,
            b'/' => {}
            b'%' => {
                let digit = |j: usize| match b.get(j) {
                    Some(c @ b'0'..=b'9') => Some(c - b'0'),
                    Some(c @ b'A'..=b'F') => Some(c - b'A' + 10),
                    _ => None,
                };
                let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) else {
                    return false;
                };
                let v = hi * 16 + lo;
                if kept(v) || v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                    return false;
                }
                i += 2;
            }
            c if !kept(c) => return false,
            _ => {}
        }
        i += 1;
    }
    p[1..].split('/').all(|seg| seg != "." && seg != "..")
}

/// The text of a normalised path (origin mode, whose files are named in UTF-8).
pub fn check_path(normal: &str) -> Result<String, Refusal> {
    percent_decode(normal).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("bad path {normal:?}: not UTF-8 once decoded"),
        )
    })
}

/// The published path a request path names (`/` and `…/` name `index.html`).
pub fn file_path(request_path: &str) -> String {
    let p = request_path.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        format!("{p}index.html")
    } else {
        p.to_string()
    }
}

/// Normalises the path of `req`'s target in place (the query stays as it came).
pub fn normalize_target<B>(req: &mut http::Request<B>) -> Result<(), Refusal> {
    let Cow::Owned(path) = normalize_path(req.uri().path())? else {
        return Ok(());
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("bad request target {pq:?}: {e}"),
        )
    })?);
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad request target: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn one_spelling_per_path() {
        for (raw, normal) in [
            ("/", "/"),
            ("/a/b.js", "/a/b.js"),
            ("/%70rivate/r.txt", "/private/r.txt"),
            ("/private%2Fr.txt", "/private/r.txt"),
            ("/private%2fr.txt", "/private/r.txt"),
            ("//private/r.txt", "/private/r.txt"),
            ("/private//r.txt", "/private/r.txt"),
            ("///", "/"),
            ("/docs//", "/docs/"),
            ("/a%7eb", "/a~b"),
            ("/a%7Eb", "/a~b"),
            ("/a b", "/a%20b"),
            ("/a%20b", "/a%20b"),
            ("/100%25", "/100%25"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
            ("/%41%2B", "/A+"),
            ("/a..b/.c", "/a..b/.c"),
        ] {
            assert_eq!(norm(raw), normal, "{raw}");
        }
        assert!(matches!(normalize_path("/a/b.js"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn what_cannot_be_normalised_is_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a/./b",
            "/a/..",
            "/a%2F..%2Fb",
            "/a%00",
            "/a%0a",
            "/a%7f",
            "/a%5cb",
            "/a\\b",
            "/%zz",
            "/%+5",
            "/%4",
            "x",
            "",
            "*",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalised_paths_decode_to_their_files() {
        assert_eq!(check_path("/a%20b").unwrap(), "/a b");
        assert!(check_path("/%FF").is_err(), "not UTF-8");
    }

    /// Path-like text built from the pieces encoding tricks are made of.
    fn tricky_path() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/", "//", "a", "B", "p", "%70", "%2F", "%2f", "%25", "%2e", ".", "..", "%7e", "~",
            " ", "%20", "é", "%C3%A9", "?", "%3F", "#", "%23", "+", "%2B", ";", "%3b", ":", "@",
            "%", "%4", "%zz", "%00", "\\", "%5C", "!", "'", "[", "%5B",
        ]);
        prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// What a plugin sees (the normalised path) names exactly one served path, and every
        /// spelling of that served path normalises to it: a rule on the normalised path
        /// cannot be bypassed by another spelling.
        #[test]
        fn the_path_plugins_see_is_the_path_served(raw in tricky_path()) {
            // The shortcut for normal paths agrees with the long way.
            if is_normal(&raw) {
                prop_assert_eq!(normalized(&raw), Ok(raw.clone()));
            }
            let Ok(n) = normalize_path(&raw) else { return Ok(()) };
            let n = n.into_owned();
            // Idempotent, and recognised as normal without allocating.
            prop_assert!(matches!(normalize_path(&n), Ok(Cow::Borrowed(p)) if p == n));
            // The served path: decoded, clean.
            let served = percent_decode_bytes(&n).unwrap();
            let text = String::from_utf8_lossy(&served);
            prop_assert!(!text.contains("//"));
            prop_assert!(!text.split('/').any(|s| s == "." || s == ".."));
            // Every byte encoded (but slashes): the same normalised path.
            let spelled: String = served
                .iter()
                .map(|&b| if b == b'/' { "/".to_string() } else { format!("%{b:02x}") })
                .collect();
            prop_assert_eq!(norm(&spelled), n);
        }
    }
}
