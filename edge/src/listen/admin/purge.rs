//! `POST /api/v1/purge`: a purge by path, prefix, `Surrogate-Key` or all, hard or soft,
//! saved before it is acknowledged.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;

use crate::basics::body::{EdgeBody, json_response};
use crate::basics::clock::now_ms;
use crate::basics::error::Refusal;
use crate::pipeline::Edge;
use crate::rules::path::{file_path, normalize_path};
use crate::store::bans::{Ban, Selector};

/// The body of `POST /api/v1/purge`: exactly one of `path`, `prefix`, `key`, `all`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    path: Option<String>,
    prefix: Option<String>,
    key: Option<String>,
    #[serde(default)]
    all: bool,
    /// Mark stale (revalidate on next use) instead of removing.
    #[serde(default)]
    soft: bool,
}

pub async fn handle(edge: &Edge, body: Bytes) -> Result<Response<EdgeBody>, Refusal> {
    let ask: PurgeRequest = serde_json::from_slice(&body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("purge body must be JSON like {{\"path\":\"/a.js\",\"soft\":false}}: {e}"),
        )
    })?;
    let selector = match (ask.path, ask.prefix, ask.key, ask.all) {
        (Some(p), None, None, false) => Selector::Path(purge_path(edge, &request_path(&p)?)),
        (None, Some(p), None, false) => Selector::Prefix(request_path(&p)?),
        (None, None, Some(k), false) => Selector::Key(k),
        (None, None, None, true) => Selector::All,
        _ => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"path\", \"prefix\", \"key\" or \"all\": true",
            ));
        }
    };
    let ban = Ban {
        selector: selector.clone(),
        at_ms: now_ms() + 1,
        soft: ask.soft,
    };
    edge.bans().add(ban.clone()).await.map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot save the purge: {e}"),
        )
    })?;
    edge.metrics()
        .purges
        .with_label_values(&[selector.kind(), if ask.soft { "soft" } else { "hard" }])
        .inc();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"purged": ban.selector, "soft": ban.soft, "at_ms": ban.at_ms}),
    ))
}

/// A purge's path or prefix as requests' paths are kept: normalised as every request's
/// path is ([`normalize_path`]), with the leading `/` added when it was left out
/// (`css/a.css` is `/css/a.css`); what no request path can be is refused.
fn request_path(p: &str) -> Result<String, Refusal> {
    let rooted = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    normalize_path(&rooted)
        .map(|n| n.into_owned())
        .map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("purge {p:?}: {}", e.message),
            )
        })
}

/// Purge paths are request paths; in origin mode `/` and `…/` name their `index.html`.
fn purge_path(edge: &Edge, p: &str) -> String {
    if edge.config().backend.is_origin() && p.ends_with('/') {
        format!("/{}", file_path(p))
    } else {
        p.to_string()
    }
}
