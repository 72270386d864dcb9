//! HTTP caching rules (RFC 9111, RFC 9213 `CDN-Cache-Control`, RFC 5861 stale extensions) for
//! a shared cache. No I/O and no clock: every function takes the times it needs, so the rules
//! are tested with made-up times.

use http::{HeaderMap, Method, StatusCode, header};

/// The directives of one `Cache-Control` (or `CDN-Cache-Control`) field that a shared cache
/// acts on. Unknown directives are ignored, as RFC 9111 §5.2.3 requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `must-understand`: store only if the cache understands the status code's caching
    /// requirements, and then ignore `no-store` (RFC 9111 §5.2.2.3).
    pub must_understand: bool,
    /// `no-cache` without field names: the response may be stored but must be revalidated
    /// before every use. With field names (`no-cache="Set-Cookie"`) those fields are not
    /// reused, which this cache does by dropping them when storing.
    pub no_cache: bool,
    pub no_cache_fields: Vec<String>,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Request directives.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
    /// Whether any directive was present at all.
    pub present: bool,
}

fn seconds(v: Option<&str>) -> Option<u64> {
    let v = v?.trim().trim_matches('"');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // RFC 9111 §1.2.2: a delta-seconds too large to hold is taken as 2^31.
    Some(v.parse::<u64>().unwrap_or(1 << 31).min(1 << 31))
}

impl CacheControl {
    /// Parses every value of `name` in `headers` (directives may be split over several lines).
    pub fn parse(headers: &HeaderMap, name: impl header::AsHeaderName) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            for item in split_list(value) {
                cc.present = true;
                let (k, v) = match item.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim())),
                    None => (item.trim(), None),
                };
                match k.to_ascii_lowercase().as_str() {
                    "max-age" => cc.max_age = seconds(v).or(Some(0)),
                    "s-maxage" => cc.s_maxage = seconds(v).or(Some(0)),
                    "no-store" => cc.no_store = true,
                    "must-understand" => cc.must_understand = true,
                    "no-cache" => match v {
                        Some(fields) => cc.no_cache_fields.extend(
                            fields
                                .trim_matches('"')
                                .split(',')
                                .map(|f| f.trim().to_ascii_lowercase())
                                .filter(|f| !f.is_empty()),
                        ),
                        None => cc.no_cache = true,
                    },
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "immutable" => cc.immutable = true,
                    "stale-while-revalidate" => cc.stale_while_revalidate = seconds(v),
                    "stale-if-error" => cc.stale_if_error = seconds(v),
                    "max-stale" => cc.max_stale = Some(seconds(v)),
                    "min-fresh" => cc.min_fresh = seconds(v),
                    "only-if-cached" => cc.only_if_cached = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits a comma-separated list, keeping commas inside quoted strings.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

impl CacheControl {
    /// Reads a `CDN-Cache-Control` field (every line of it): a Structured Field Dictionary
    /// (RFC 9213 §2, RFC 8941). `None` when it is not one, or a directive this cache knows
    /// has a value of the wrong type (a lifetime that is not a non-negative Integer, a flag
    /// that is not a Boolean): such a field is ignored as a whole.
    pub fn parse_cdn(headers: &HeaderMap) -> Option<CacheControl> {
        let lines: Vec<&str> = headers
            .get_all("cdn-cache-control")
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<_>>()?;
        let joined = lines.join(", ");
        let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
        let mut cc = CacheControl {
            present: true,
            ..CacheControl::default()
        };
        for (key, entry) in &dict {
            let item = match entry {
                sfv::ListEntry::Item(i) => Some(&i.bare_item),
                sfv::ListEntry::InnerList(_) => None,
            };
            let secs = || {
                let n = i64::from(item?.as_integer()?);
                (n >= 0).then(|| (n as u64).min(1 << 31))
            };
            let flag = || item.and_then(|i| i.as_boolean());
            match key.as_str() {
                "max-age" => cc.max_age = Some(secs()?),
                "s-maxage" => cc.s_maxage = Some(secs()?),
                "stale-while-revalidate" => cc.stale_while_revalidate = Some(secs()?),
                "stale-if-error" => cc.stale_if_error = Some(secs()?),
                "no-store" => cc.no_store = flag()?,
                "public" => cc.public = flag()?,
                "must-revalidate" => cc.must_revalidate = flag()?,
                "proxy-revalidate" => cc.proxy_revalidate = flag()?,
                "immutable" => cc.immutable = flag()?,
                "must-understand" => cc.must_understand = flag()?,
                // `no-cache` and `private` are flags, or list the fields they concern
                // (`no-cache=("set-cookie")`, as Cache-Control's quoted lists).
                "no-cache" | "private" => {
                    let fields: Vec<String> = match entry {
                        sfv::ListEntry::InnerList(l) => l
                            .items
                            .iter()
                            .map(|i| {
                                i.bare_item
                                    .as_string()
                                    .map(|s| s.as_str().to_ascii_lowercase())
                            })
                            .collect::<Option<_>>()?,
                        sfv::ListEntry::Item(_) => {
                            if !flag()? {
                                continue;
                            }
                            Vec::new()
                        }
                    };
                    match (key.as_str(), fields.is_empty()) {
                        ("no-cache", true) => cc.no_cache = true,
                        ("no-cache", false) => cc.no_cache_fields.extend(fields),
                        // A private field list: those fields are not stored, as with
                        // `no-cache="…"`; without one, the response is not stored.
                        (_, true) => cc.private = true,
                        (_, false) => cc.no_cache_fields.extend(fields),
                    }
                }
                _ => {}
            }
        }
        Some(cc)
    }
}

/// The caching directives that apply to this cache: `CDN-Cache-Control` when the response
/// has a valid one (RFC 9213 §2.1: it then replaces `Cache-Control` for CDNs), else
/// `Cache-Control`.
pub fn response_directives(headers: &HeaderMap) -> CacheControl {
    if headers.contains_key("cdn-cache-control")
        && let Some(cdn) = CacheControl::parse_cdn(headers)
    {
        return cdn;
    }
    CacheControl::parse(headers, header::CACHE_CONTROL)
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Reads a request's `Cache-Control` directives.
pub fn request_directives(h: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::parse(h, header::CACHE_CONTROL);
    // `Pragma: no-cache` without Cache-Control means no-cache (RFC 9111 §5.4, deprecated
    // but still sent by browsers on reload).
    if !cc.present
        && h.get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"))
    {
        cc.no_cache = true;
    }
    cc
}

/// Why a response may not be stored, or `None` when it may (RFC 9111 §3).
pub fn not_storable(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
) -> Option<&'static str> {
    if method != Method::GET && method != Method::HEAD {
        return Some("method");
    }
    // A 304 or 206 is not a whole representation: never stored as one.
    if status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        return Some("status");
    }
    let req_cc = CacheControl::parse(req, header::CACHE_CONTROL);
    if req_cc.no_store {
        return Some("request no-store");
    }
    let cc = response_directives(resp);
    // `must-understand` stands in for `no-store` where this cache knows the status code's
    // caching rules (those it may cache heuristically); elsewhere it is not stored at all.
    if cc.must_understand {
        if !heuristically_cacheable(status) {
            return Some("must-understand");
        }
    } else if cc.no_store {
        return Some("no-store");
    }
    if cc.private {
        return Some("private");
    }
    if req.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return Some("authorization");
    }
    if resp.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Some("vary *");
    }
    let explicit = cc.max_age.is_some()
        || cc.s_maxage.is_some()
        || cc.public
        || resp.contains_key(header::EXPIRES)
        || cc.no_cache;
    if !explicit && !heuristically_cacheable(status) {
        return Some("status without explicit freshness");
    }
    None
}

/// What a cache needs to know of a stored response to judge its freshness: the parsed
/// directives and the times of RFC 9111 §4.2.3, in seconds since the Unix epoch. The
/// default is a response with no lifetime: stale at once, with no directive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness lifetime in seconds (§4.2.1), including heuristic freshness.
    pub lifetime: u64,
    /// `corrected_initial_age` at the time the response was received.
    pub initial_age: u64,
    /// When the response was received.
    pub response_time: u64,
    pub must_revalidate: bool,
    pub no_cache: bool,
    pub immutable: bool,
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
}

/// Parses an HTTP date header into seconds since the epoch (see [`parse_date`]).
pub fn date_header(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    parse_date(headers.get(name)?.to_str().ok()?)
}

/// An HTTP date in any of the three formats a recipient must accept (RFC 9110 §5.6.7:
/// IMF-fixdate, the obsolete RFC 850 form and asctime), day and month names in any case, as
/// seconds since the epoch.
pub fn parse_date(v: &str) -> Option<u64> {
    let v = v.trim();
    let parsed = httpdate::parse_http_date(v).or_else(|_| {
        // Names as the grammar spells them: each run of letters (`sun`, `NOV` in
        // `06-NOV-94`) with its first letter upper and the rest lower; `GMT` upper.
        let mut canonical = String::with_capacity(v.len());
        let mut in_word = false;
        for c in v.chars() {
            canonical.push(if in_word {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            });
            in_word = c.is_ascii_alphabetic();
        }
        httpdate::parse_http_date(&canonical.replace("Gmt", "GMT"))
    });
    parsed
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

impl Freshness {
    /// Computes freshness for a response received at `response_time` for a request sent at
    /// `request_time`. `heuristic_percent` of the time since `Last-Modified` is used when the
    /// response has no explicit lifetime and its status allows it (10 % in RFC 9111 §4.2.2),
    /// capped at `heuristic_cap` seconds.
    pub fn of(
        status: StatusCode,
        headers: &HeaderMap,
        request_time: u64,
        response_time: u64,
        heuristic_cap: u64,
    ) -> Self {
        let cc = response_directives(headers);
        let date = date_header(headers, header::DATE).unwrap_or(response_time);
        let lifetime = if let Some(s) = cc.s_maxage {
            s
        } else if let Some(m) = cc.max_age {
            m
        } else if headers.contains_key(header::EXPIRES) {
            // An invalid Expires (for example "0") means already expired (§5.3).
            date_header(headers, header::EXPIRES)
                .map(|e| e.saturating_sub(date))
                .unwrap_or(0)
        } else if heuristically_cacheable(status) {
            date_header(headers, header::LAST_MODIFIED)
                .map(|lm| (date.saturating_sub(lm) / 10).min(heuristic_cap))
                .unwrap_or(0)
        } else {
            0
        };
        // §4.2.3
        // A list-valued `Age` (two caches each added one) counts by its first member
        // (§5.1); one that is not a number is ignored.
        let age_value = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| seconds(v.split(',').next()))
            .unwrap_or(0);
        let apparent_age = response_time.saturating_sub(date);
        let response_delay = response_time.saturating_sub(request_time);
        let corrected_age_value = age_value + response_delay;
        let initial_age = apparent_age.max(corrected_age_value);
        Freshness {
            lifetime,
            initial_age,
            response_time,
            // s-maxage also implies proxy-revalidate for shared caches (§5.2.2.10).
            must_revalidate: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
            no_cache: cc.no_cache,
            immutable: cc.immutable,
            stale_while_revalidate: cc.stale_while_revalidate.unwrap_or(0),
            stale_if_error: cc.stale_if_error.unwrap_or(0),
        }
    }

    /// Seconds it stays fresh at `now` (negative once stale): the `ttl` of `Cache-Status`.
    pub fn ttl(&self, now: u64) -> i64 {
        self.lifetime as i64 - self.age(now) as i64
    }

    /// The response's current age at `now` (§4.2.3).
    pub fn age(&self, now: u64) -> u64 {
        self.initial_age + now.saturating_sub(self.response_time)
    }

    /// How a request with directives `req` may use this stored response at `now`.
    pub fn judge(&self, now: u64, req: &CacheControl) -> Use {
        let age = self.age(now);
        if self.no_cache || req.no_cache {
            return Use::Revalidate;
        }
        // Request max-age and min-fresh narrow what counts as fresh (§5.2.1).
        let mut lifetime = self.lifetime;
        if let Some(ma) = req.max_age {
            lifetime = lifetime.min(ma);
        }
        let needed = age + req.min_fresh.unwrap_or(0);
        if needed < lifetime {
            return Use::Fresh;
        }
        if self.must_revalidate {
            return Use::Revalidate;
        }
        let stale_by = age.saturating_sub(lifetime);
        match req.max_stale {
            Some(None) => return Use::StaleAllowed,
            Some(Some(s)) if stale_by <= s => return Use::StaleAllowed,
            _ => {}
        }
        if stale_by < self.stale_while_revalidate && req.max_age.is_none() {
            return Use::StaleWhileRevalidate;
        }
        Use::Revalidate
    }

    /// Whether a stale response may be served at `now` because the origin failed.
    pub fn usable_on_error(&self, now: u64, req: &CacheControl) -> bool {
        if self.must_revalidate {
            return false;
        }
        let stale_by = self.age(now).saturating_sub(self.lifetime);
        stale_by < self.stale_if_error
            || req
                .max_stale
                .is_some_and(|s| s.is_none_or(|s| stale_by <= s))
    }

    /// Seconds this response stays useful in cache (fresh or usable stale); a bound for the
    /// storage TTL.
    pub fn keep_for(&self) -> u64 {
        self.lifetime + self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// How a stored response may be used for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Fresh: serve it.
    Fresh,
    /// Stale, and the request's `max-stale` accepts that: serve it.
    StaleAllowed,
    /// Stale within `stale-while-revalidate`: serve it and revalidate in the background.
    StaleWhileRevalidate,
    /// Must be revalidated with the origin before use.
    Revalidate,
}

/// The field names a message's `Connection` lists (lower case): connection options, which a
/// proxy removes with `Connection` itself (RFC 9110 §7.6.1).
pub fn connection_options(headers: &HeaderMap) -> Vec<String> {
    crate::rules::vary::listed_names(headers, header::CONNECTION)
}

/// A response's end-to-end fields, the ones a cache stores and sends: without hop-by-hop
/// fields by name ([`is_hop_by_hop`]) and without those its `Connection` names.
pub fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let listed = connection_options(from);
    let mut h = HeaderMap::new();
    for (k, v) in from {
        if !is_hop_by_hop(k) && !listed.iter().any(|c| c == k.as_str()) {
            h.append(k.clone(), v.clone());
        }
    }
    h
}

/// Headers a cache does not store or forward (RFC 9110 §7.6.1 hop-by-hop, plus those only
/// meaningful on one connection).
pub fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_fields::{T, date, h};

    #[test]
    fn parses_directives_split_over_lines_and_quoted_lists() {
        let cc = CacheControl::parse(
            &h(&[
                ("cache-control", "public, max-age=60"),
                (
                    "cache-control",
                    "no-cache=\"set-cookie, x-a\", s-maxage=\"120\"",
                ),
            ]),
            header::CACHE_CONTROL,
        );
        assert!(cc.public);
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(120));
        assert!(!cc.no_cache);
        assert_eq!(cc.no_cache_fields, vec!["set-cookie", "x-a"]);
    }

    #[test]
    fn cdn_cache_control_takes_precedence() {
        let hs = h(&[
            ("cache-control", "max-age=10"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        let f = Freshness::of(StatusCode::OK, &hs, T, T, 3600);
        assert_eq!(f.lifetime, 600);
    }

    #[test]
    fn an_invalid_cdn_cache_control_is_ignored_as_a_whole() {
        let lifetime = |cdn: &str| {
            let hs = h(&[("cache-control", "max-age=10"), ("cdn-cache-control", cdn)]);
            Freshness::of(StatusCode::OK, &hs, T, T, 3600).lifetime
        };
        // Valid dictionaries govern the edge.
        assert_eq!(lifetime("max-age=600"), 600);
        assert_eq!(
            lifetime("max-age=600, stale-if-error=30, x-new=\"any\""),
            600
        );
        assert_eq!(lifetime("public, max-age=600;x=1"), 600);
        // Not a dictionary, or a known directive of the wrong type: Cache-Control applies.
        for cdn in [
            "max-age=\"600\"",
            "max-age=600.5",
            "max-age=-1",
            "max-age=600, no-store=1",
            "max-age=600, public=yes",
            "max-age=600 600",
            "max-age=(1 2)",
            "MAX-AGE=600",
            "max-age=600,",
        ] {
            assert_eq!(lifetime(cdn), 10, "{cdn}");
        }
        let cc = CacheControl::parse_cdn(&h(&[
            ("cdn-cache-control", "no-cache=(\"Set-Cookie\"), max-age=60"),
            ("cdn-cache-control", "private=?0"),
        ]))
        .unwrap();
        assert_eq!(cc.no_cache_fields, ["set-cookie"]);
        assert!(!cc.no_cache && !cc.private);
        assert_eq!(cc.max_age, Some(60));
    }

    #[test]
    fn s_maxage_beats_max_age_which_beats_expires() {
        let hs = h(&[
            ("cache-control", "max-age=10, s-maxage=20"),
            ("expires", &date(T + 1000)),
            ("date", &date(T)),
        ]);
        assert_eq!(Freshness::of(StatusCode::OK, &hs, T, T, 3600).lifetime, 20);
        let hs = h(&[("expires", &date(T + 1000)), ("date", &date(T))]);
        assert_eq!(
            Freshness::of(StatusCode::OK, &hs, T, T, 3600).lifetime,
            1000
        );
        let hs = h(&[("expires", "0"), ("date", &date(T))]);
        assert_eq!(Freshness::of(StatusCode::OK, &hs, T, T, 3600).lifetime, 0);
    }

    #[test]
    fn heuristic_is_a_tenth_of_last_modified_age_and_capped() {
        let hs = h(&[("date", &date(T)), ("last-modified", &date(T - 1000))]);
        assert_eq!(Freshness::of(StatusCode::OK, &hs, T, T, 3600).lifetime, 100);
        assert_eq!(Freshness::of(StatusCode::OK, &hs, T, T, 50).lifetime, 50);
        // Not for statuses that are not heuristically cacheable.
        assert_eq!(
            Freshness::of(StatusCode::FOUND, &hs, T, T, 3600).lifetime,
            0
        );
    }

    #[test]
    fn age_counts_upstream_age_and_delay() {
        let hs = h(&[
            ("cache-control", "max-age=100"),
            ("age", "30"),
            ("date", &date(T)),
        ]);
        let f = Freshness::of(StatusCode::OK, &hs, T, T + 2, 3600);
        assert_eq!(f.age(T + 2), 32);
        assert_eq!(f.age(T + 12), 42);
        assert_eq!(f.judge(T + 60, &CacheControl::default()), Use::Fresh);
        assert_eq!(f.judge(T + 80, &CacheControl::default()), Use::Revalidate);
    }

    #[test]
    fn dates_in_every_format_a_recipient_must_accept() {
        // RFC 9110 §5.6.7's example instant in its three formats, and in other cases.
        let t = 784_111_777;
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "sunday, 06-nov-94 08:49:37 GMT",
            "sun nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_date(v), Some(t), "{v}");
        }
        for v in ["0", "", "yesterday", "Sun, 32 Nov 1994 08:49:37 GMT"] {
            assert_eq!(parse_date(v), None, "{v}");
        }
        // An `Expires` in the obsolete form sets the lifetime like any other.
        let hs = h(&[
            ("expires", "sunday, 06-nov-94 08:59:37 gmt"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert_eq!(Freshness::of(StatusCode::OK, &hs, t, t, 0).lifetime, 600);
    }

    #[test]
    fn a_list_valued_age_counts_by_its_first_member() {
        let hs = h(&[
            ("cache-control", "max-age=3600"),
            ("age", "7200, 0"),
            ("date", &date(T)),
        ]);
        let f = Freshness::of(StatusCode::OK, &hs, T, T, 3600);
        assert_eq!(f.age(T), 7200);
        assert_eq!(f.judge(T, &CacheControl::default()), Use::Revalidate);
        // Two `Age` lines: the first.
        let hs = h(&[
            ("cache-control", "max-age=3600"),
            ("age", "10"),
            ("age", "9000"),
        ]);
        assert_eq!(Freshness::of(StatusCode::OK, &hs, T, T, 3600).age(T), 10);
    }

    #[test]
    fn fields_named_in_connection_are_not_end_to_end() {
        let hs = h(&[
            ("connection", "close, X-Trace"),
            ("connection", "x-debug"),
            ("x-trace", "1"),
            ("x-debug", "2"),
            ("keep-alive", "timeout=5"),
            ("etag", "\"e\""),
        ]);
        let kept = end_to_end(&hs);
        let names: Vec<&str> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["etag"]);
    }

    #[test]
    fn request_directives_narrow_or_widen() {
        let hs = h(&[("cache-control", "max-age=100"), ("date", &date(T))]);
        let f = Freshness::of(StatusCode::OK, &hs, T, T, 3600);
        let req = |v: &str| CacheControl::parse(&h(&[("cache-control", v)]), header::CACHE_CONTROL);
        assert_eq!(f.judge(T + 50, &req("max-age=10")), Use::Revalidate);
        assert_eq!(f.judge(T + 50, &req("min-fresh=60")), Use::Revalidate);
        assert_eq!(f.judge(T + 50, &req("no-cache")), Use::Revalidate);
        assert_eq!(f.judge(T + 150, &req("max-stale=60")), Use::StaleAllowed);
        assert_eq!(f.judge(T + 150, &req("max-stale=10")), Use::Revalidate);
        assert_eq!(f.judge(T + 5000, &req("max-stale")), Use::StaleAllowed);
    }

    #[test]
    fn stale_extensions_and_must_revalidate() {
        let hs = h(&[(
            "cache-control",
            "max-age=10, stale-while-revalidate=30, stale-if-error=300",
        )]);
        let f = Freshness::of(StatusCode::OK, &hs, T, T, 3600);
        let none = CacheControl::default();
        assert_eq!(f.judge(T + 20, &none), Use::StaleWhileRevalidate);
        assert_eq!(f.judge(T + 50, &none), Use::Revalidate);
        assert!(f.usable_on_error(T + 200, &none));
        assert!(!f.usable_on_error(T + 400, &none));
        let hs = h(&[(
            "cache-control",
            "max-age=10, must-revalidate, stale-while-revalidate=30, stale-if-error=300",
        )]);
        let f = Freshness::of(StatusCode::OK, &hs, T, T, 3600);
        let stale =
            CacheControl::parse(&h(&[("cache-control", "max-stale")]), header::CACHE_CONTROL);
        assert_eq!(f.judge(T + 20, &stale), Use::Revalidate);
        assert!(!f.usable_on_error(T + 20, &none));
    }

    #[test]
    fn storability() {
        let get = Method::GET;
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        assert_eq!(
            not_storable(&get, &none, ok, &h(&[("cache-control", "max-age=1")])),
            None
        );
        assert_eq!(
            not_storable(&get, &none, ok, &h(&[("cache-control", "no-store")])),
            Some("no-store")
        );
        // `no-store, must-understand`: stored where the status is understood.
        let mu = h(&[("cache-control", "no-store, must-understand, max-age=60")]);
        assert_eq!(not_storable(&get, &none, ok, &mu), None);
        assert_eq!(
            not_storable(&get, &none, StatusCode::from_u16(299).unwrap(), &mu),
            Some("must-understand")
        );
        assert_eq!(
            not_storable(
                &get,
                &none,
                ok,
                &h(&[("cache-control", "private, max-age=60")])
            ),
            Some("private")
        );
        assert_eq!(
            not_storable(
                &Method::POST,
                &none,
                ok,
                &h(&[("cache-control", "max-age=60")])
            ),
            Some("method")
        );
        let auth = h(&[("authorization", "Bearer x")]);
        assert_eq!(
            not_storable(&get, &auth, ok, &h(&[("cache-control", "max-age=60")])),
            Some("authorization")
        );
        assert_eq!(
            not_storable(&get, &auth, ok, &h(&[("cache-control", "s-maxage=60")])),
            None
        );
        assert_eq!(
            not_storable(&get, &none, ok, &h(&[("vary", "accept, *")])),
            Some("vary *")
        );
        assert_eq!(
            not_storable(&get, &none, StatusCode::FOUND, &none),
            Some("status without explicit freshness")
        );
        assert_eq!(
            not_storable(&get, &h(&[("cache-control", "no-store")]), ok, &none),
            Some("request no-store")
        );
        assert_eq!(
            not_storable(
                &get,
                &none,
                StatusCode::NOT_MODIFIED,
                &h(&[("cache-control", "max-age=60")])
            ),
            Some("status")
        );
    }
}
