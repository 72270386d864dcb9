//! `103 Early Hints` (RFC 8297): what a client may start fetching while the edge fetches the
//! response it asked for. The edge sends them from what it learned: the `Link` fields with
//! `rel=preload` or `rel=preconnect` of the stored response it is revalidating; and it
//! passes an upstream's own `103` on, with its end-to-end fields.

use http::{HeaderMap, HeaderValue, header};

/// The early hints of a stored response's fields: each `Link` member whose `rel` names
/// `preload`, `modulepreload` or `preconnect`; `None` without any.
pub fn early_hints(stored: &HeaderMap) -> Option<HeaderMap> {
    let mut hints = HeaderMap::new();
    for v in stored.get_all(header::LINK) {
        let Ok(v) = v.to_str() else { continue };
        for member in link_members(v) {
            if hinted(member)
                && let Ok(v) = HeaderValue::from_str(member.trim())
            {
                hints.append(header::LINK, v);
            }
        }
    }
    (!hints.is_empty()).then_some(hints)
}

/// The members of a `Link` field value (RFC 8288 §3): split at commas outside `<…>` and
/// quoted strings.
fn link_members(v: &str) -> Vec<&str> {
    let (mut out, mut start, mut in_uri, mut in_quote, mut escaped) =
        (Vec::new(), 0, false, false, false);
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' if !in_uri => in_quote = !in_quote,
            '<' if !in_quote => in_uri = true,
            '>' if !in_quote => in_uri = false,
            ',' if !in_uri && !in_quote => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out.into_iter().filter(|m| !m.trim().is_empty()).collect()
}

/// Whether a `Link` member's `rel` asks for an early fetch or connection.
fn hinted(member: &str) -> bool {
    member.split(';').skip(1).any(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("rel")
            && value
                .trim()
                .trim_matches('"')
                .split_ascii_whitespace()
                .any(|r| {
                    ["preload", "modulepreload", "preconnect"]
                        .iter()
                        .any(|k| r.eq_ignore_ascii_case(k))
                })
    })
}

/// Whether an upstream's interim response is passed on to the client: `102 Processing` and
/// `103 Early Hints`. `100 Continue` answers the edge's own request (which never expects
/// one), and `101` is never passed (no upgrades through the cache).
pub fn passed_on(status: http::StatusCode) -> bool {
    status == http::StatusCode::PROCESSING || status == http::StatusCode::EARLY_HINTS
}

/// The fields of an upstream's `103` passed on: end-to-end ones only.
pub fn passed_hints(upstream: &HeaderMap) -> HeaderMap {
    crate::rules::freshness::end_to_end(upstream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_fields::h;

    #[test]
    fn preload_and_preconnect_links_are_hints() {
        let stored = h(&[
            (
                "link",
                "</style.css>; rel=preload; as=style, </a,b.js>; rel=\"modulepreload\"",
            ),
            ("link", "<https://cdn.example>; rel=preconnect"),
            (
                "link",
                "</next>; rel=next, </c.css>; title=\"a, rel=preload\"",
            ),
            ("content-type", "text/html"),
        ]);
        let hints = early_hints(&stored).unwrap();
        let links: Vec<&str> = hints
            .get_all("link")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            links,
            [
                "</style.css>; rel=preload; as=style",
                "</a,b.js>; rel=\"modulepreload\"",
                "<https://cdn.example>; rel=preconnect",
            ]
        );
        assert_eq!(hints.len(), 3, "nothing but Link");
        assert!(early_hints(&h(&[("link", "</n>; rel=next")])).is_none());
        assert!(early_hints(&h(&[])).is_none());
    }

    #[test]
    fn passed_hints_are_end_to_end() {
        let up = h(&[
            ("link", "</a.css>; rel=preload"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
        ]);
        let passed = passed_hints(&up);
        assert_eq!(passed["link"], "</a.css>; rel=preload");
        assert!(!passed.contains_key("x-secret") && !passed.contains_key("connection"));
        assert!(
            passed_on(http::StatusCode::EARLY_HINTS) && passed_on(http::StatusCode::PROCESSING)
        );
        assert!(!passed_on(http::StatusCode::CONTINUE));
        assert!(!passed_on(http::StatusCode::SWITCHING_PROTOCOLS));
    }
}
