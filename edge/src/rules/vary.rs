//! `Vary` (RFC 9110 §12.5.5): which request fields select among a URL's stored variants.

use http::{HeaderMap, HeaderValue, header};

/// The field names listed in every `name` field of `headers` (comma-separated, over any
/// number of lines), in lower case: `Vary`, `Connection`.
pub fn listed_names(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The header names a response varies by (lowercase, deduplicated, sorted).
pub fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names = listed_names(headers, header::VARY);
    names.sort();
    names.dedup();
    names
}

/// Adds `name` to `Vary` unless it is already listed.
pub fn add_vary(headers: &mut HeaderMap, name: &str) {
    if vary_names(headers).iter().any(|n| n == name) {
        return;
    }
    headers.append(header::VARY, HeaderValue::from_str(name).unwrap());
}

/// The values of the request fields `names`, as a request sent them: a response filled for
/// one request is shared with another only when these are equal.
pub fn selecting_values(names: &[String], req: &HeaderMap) -> Vec<(String, Option<HeaderValue>)> {
    names
        .iter()
        .map(|n| (n.clone(), req.get(n.as_str()).cloned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_added_once() {
        let mut h = HeaderMap::new();
        h.append("vary", HeaderValue::from_static("Accept-Encoding, Origin"));
        h.append("vary", HeaderValue::from_static("origin"));
        assert_eq!(vary_names(&h), ["accept-encoding", "origin"]);
        add_vary(&mut h, "accept-encoding");
        assert_eq!(h.get_all("vary").iter().count(), 2);
        add_vary(&mut h, "user-agent");
        assert_eq!(vary_names(&h), ["accept-encoding", "origin", "user-agent"]);
    }
}
