//! `signed-url`: CloudFront-style signed URLs, as an `authorize` plugin.
//!
//! A request under a protected prefix must carry `expires` (Unix seconds) and `sig` in its
//! query. `sig` is the lower-case hex MAC of the message `PATH?expires=EXPIRES` under the
//! deploy-time key, PATH as the edge normalises it before any plugin sees it (escapes of
//! unreserved characters decoded, `%2F` and `//` as `/`: `/%70rivate//a%7Eb` is
//! `/private/a~b`; `tessera plugin sign-url` signs that form). Expired, forged or missing
//! signatures get `403` with a JSON body naming the problem; paths outside the protected
//! prefixes pass untouched.
//!
//! Configuration (`tessera plugin deploy --config key=value`):
//! - `key` (required): the secret.
//! - `algorithm`: `hmac-sha256` (default) or `blake3` (keyed BLAKE3).
//! - `prefixes`: comma-separated protected path prefixes (default `/`: everything).
//!
//! Signing a URL: `tessera plugin sign-url --key K --expires-in 3600 /path`, or in any
//! language, `hex(hmac_sha256(key, "/path?expires=1767225600"))`.

use std::sync::OnceLock;

wit_bindgen::generate!({ path: "../../../wit", world: "authorize" });

use exports::tessera::policy::authorizer::{Guest, Verdict};
use tessera::policy::host::{self, Level};
use tessera::policy::types::{Request, Response};

struct Settings {
    key: Vec<u8>,
    blake3: bool,
    prefixes: Vec<String>,
}

/// Read once per instance: the configuration of a deployed version never changes.
static SETTINGS: OnceLock<Result<Settings, String>> = OnceLock::new();

fn settings() -> &'static Result<Settings, String> {
    SETTINGS.get_or_init(|| {
        let key = host::config("key").ok_or("signed-url needs --config key=SECRET")?;
        if key.is_empty() {
            return Err("signed-url: the key is empty".into());
        }
        let blake3 = match host::config("algorithm").as_deref() {
            None | Some("hmac-sha256") => false,
            Some("blake3") => true,
            Some(other) => {
                return Err(format!(
                    "signed-url: algorithm {other:?} is not hmac-sha256 or blake3"
                ));
            }
        };
        let prefixes = host::config("prefixes")
            .unwrap_or_else(|| "/".into())
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        Ok(Settings {
            key: key.into_bytes(),
            blake3,
            prefixes,
        })
    })
}

fn deny(status: u16, message: &str) -> Verdict {
    let body = format!("{{\"error\":{message:?}}}\n").into_bytes();
    Verdict::Deny(Response {
        status,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
        ],
        body,
    })
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Equality without an early exit, so timing does not reveal how much of a forgery matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct SignedUrl;

impl Guest for SignedUrl {
    fn authorize(req: &Request) -> Verdict {
        let s = match settings() {
            Ok(s) => s,
            Err(e) => {
                host::log(Level::Error, e);
                // Fails closed: the edge answers 503 and counts the failure.
                panic!("{e}");
            }
        };
        // Read from the edge only what the verdict needs: the path, then (protected) the
        // query.
        let path = req.path();
        if !s.prefixes.iter().any(|p| path.starts_with(p.as_str())) {
            return Verdict::Allow;
        }
        let query = req.query().unwrap_or_default();
        let query = query.as_str();
        let (Some(expires), Some(sig)) = (query_param(query, "expires"), query_param(query, "sig"))
        else {
            return deny(403, "this URL needs a signature: ?expires=…&sig=…");
        };
        let Ok(expires_at) = expires.parse::<u64>() else {
            return deny(403, "expires must be Unix seconds");
        };
        if host::expired(expires_at.saturating_mul(1000)) {
            return deny(403, "this signed URL has expired");
        }
        let message = format!("{path}?expires={expires}");
        let mac = if s.blake3 {
            host::blake3_keyed(&s.key, message.as_bytes())
        } else {
            host::hmac_sha256(&s.key, message.as_bytes())
        };
        if same(hex(&mac).as_bytes(), sig.to_ascii_lowercase().as_bytes()) {
            Verdict::Allow
        } else {
            deny(403, "the signature does not match this URL")
        }
    }
}

export!(SignedUrl);
