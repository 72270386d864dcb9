//! Layer 1, the rules: every decision that can be made without a socket or a clock, each
//! tested case by case with made-up times — RFC 9111 freshness and directives
//! ([`freshness`]), `Vary` ([`vary`]), the representation plan for hits and fills alike
//! ([`representation`]: preconditions, ranges, brotli), the `304` merge ([`not_modified`]),
//! the store plan of a fetched response ([`store_plan`]), request paths ([`path`]), partial
//! content kept in slices ([`partial`]) and early hints ([`hints`]).

pub mod freshness;
pub mod hints;
pub mod not_modified;
pub mod partial;
pub mod path;
pub mod representation;
pub mod store_plan;
pub mod vary;

/// Helpers for the rules' tests: header maps and times.
#[cfg(test)]
mod test_fields {
    use http::{HeaderMap, HeaderValue};

    /// A time to test with, seconds since the epoch.
    pub const T: u64 = 1_700_000_000;

    /// A header map of `pairs`, repeated names appended.
    pub fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    /// The HTTP date of `t`.
    pub fn date(t: u64) -> String {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
    }
}
