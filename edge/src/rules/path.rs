//! Request paths: what the edge accepts, and the file an origin-mode path names.

use http::StatusCode;

use crate::basics::error::Refusal;
use crate::basics::protocol::percent_decode;

/// Checks a request path: absolute, no dot segments (raw or percent-encoded), no NUL or
/// backslash. Returns it percent-decoded.
pub fn check_path(raw: &str) -> Result<String, Refusal> {
    let bad = |why: &str| Refusal::new(StatusCode::BAD_REQUEST, format!("bad path {raw:?}: {why}"));
    if !raw.starts_with('/') {
        return Err(bad("must start with /"));
    }
    let decoded = percent_decode(raw).ok_or_else(|| bad("invalid percent-encoding or UTF-8"))?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(bad("NUL and backslash are not allowed"));
    }
    if decoded.split('/').any(|s| s == ".." || s == ".") {
        return Err(bad("dot segments are not allowed"));
    }
    Ok(decoded)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape() {
        assert_eq!(check_path("/a/b.js").unwrap(), "/a/b.js");
        assert_eq!(check_path("/a%20b").unwrap(), "/a b");
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/b",
            "/a/./b",
            "/a%00",
            "/a%5cb",
            "/%zz",
            "x",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_paths_name_published_files() {
        assert_eq!(file_path("/"), "index.html");
        assert_eq!(file_path("/docs/"), "docs/index.html");
        assert_eq!(file_path("/assets/app.js"), "assets/app.js");
    }
}
