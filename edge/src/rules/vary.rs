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

/// The values of the request fields `names`, normalised ([`selecting_value`]): a response
/// filled for one request is shared with another only when these are equal.
pub fn selecting_values(names: &[String], req: &HeaderMap) -> Vec<(String, Option<String>)> {
    names
        .iter()
        .map(|n| (n.clone(), selecting_value(n, req)))
        .collect()
}

/// Fields whose value is a list of case-insensitive tokens with optional weights (`q=`):
/// equivalent values differ only in order, case, whitespace and how a weight is written.
const WEIGHTED_LISTS: [&str; 4] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
];

/// The value of request field `name` (lower case) as it selects a variant, `None` when the
/// request lacks it. Repeated lines are joined and whitespace around list members and
/// parameters dropped (RFC 9111 §4.1); the `Accept*` fields (RFC 9110 §12.5) are also
/// lower-cased, their weights written one way (`q=0.5`, none for 1) and their members
/// sorted by weight then name, so `br, gzip` and `GZIP;q=1.0,br` select the same stored
/// response. Other fields keep their case and order: what they mean is theirs.
pub fn selecting_value(name: &str, req: &HeaderMap) -> Option<String> {
    let lines: Vec<String> = req
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let members: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split(','))
        .map(|m| {
            m.split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(";")
        })
        .filter(|m| !m.is_empty())
        .collect();
    if !WEIGHTED_LISTS.contains(&name) {
        return Some(members.join(","));
    }
    let mut weighted: Vec<(u16, String)> = members
        .iter()
        .map(|m| {
            let mut q = 1000u16;
            let mut kept = Vec::new();
            for (i, p) in m.split(';').enumerate() {
                let p = p.to_ascii_lowercase();
                match p.strip_prefix("q=").map(|v| v.trim().parse::<f32>()) {
                    Some(Ok(v)) if i > 0 => q = (v.clamp(0.0, 1.0) * 1000.0).round() as u16,
                    _ => kept.push(p.replace(' ', "")),
                }
            }
            (q, kept.join(";"))
        })
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    weighted.dedup();
    Some(
        weighted
            .into_iter()
            .map(|(q, m)| match q {
                1000 => m,
                q => format!("{m};q={}", f32::from(q) / 1000.0),
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_selecting_values_are_one_variant() {
        let value = |name: &str, lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(l).unwrap(),
                );
            }
            selecting_value(name, &h)
        };
        let same = |name: &str, a: &[&str], b: &[&str]| {
            assert_eq!(value(name, a), value(name, b), "{name}: {a:?} vs {b:?}");
        };
        same("accept-encoding", &["br, gzip"], &["GZIP;q=1.0,br"]);
        same("accept-encoding", &["gzip", "br"], &["br,gzip"]);
        same(
            "accept-encoding",
            &["gzip;q=0.50, br"],
            &["br , gzip; Q=0.5"],
        );
        same(
            "accept-language",
            &["en-US,fr;q=0.8, de;q=0.8"],
            &["de;q=0.8,FR;q=0.8,en-us"],
        );
        same(
            "accept",
            &["text/html, */*;q=0.1"],
            &["*/*; q=0.1, text/HTML"],
        );
        // Different weights, different members: different variants.
        let differ = |name: &str, a: &str, b: &str| {
            assert_ne!(value(name, &[a]), value(name, &[b]), "{name}: {a} vs {b}");
        };
        differ("accept-encoding", "br", "gzip");
        differ("accept-language", "en;q=0.8, fr", "en, fr;q=0.8");
        differ("accept-encoding", "br;q=0", "br");
        // Unknown fields: whitespace only; their case and order mean what they mean.
        same("x-country", &["us , ca"], &["us,ca"]);
        differ("x-country", "US", "us");
        differ("x-country", "us,ca", "ca,us");
        assert_eq!(value("x-country", &[]), None);
        assert_eq!(value("accept-encoding", &["br;q=0.8"]).unwrap(), "br;q=0.8");
    }

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
