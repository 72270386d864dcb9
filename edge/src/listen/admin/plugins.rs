//! `/api/v1/plugins`: deploy a component to a hook, list what is bound, roll a hook back to
//! its previous version, remove a hook's plugin.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tessera_plugins::Hook;

use crate::basics::body::{EdgeBody, json_response};
use crate::basics::error::Refusal;
use crate::basics::protocol::percent_decode;
use crate::pipeline::Edge;

/// Largest plugin component the admin API accepts.
const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// `/api/v1/plugins/{hook}[/rollback]`.
pub async fn handle(
    edge: &Arc<Edge>,
    req: Request<Incoming>,
) -> Result<Response<EdgeBody>, Refusal> {
    let p = req.uri().path().to_string();
    let rest = &p["/api/v1/plugins/".len()..];
    let (hook, action) = rest.split_once('/').unwrap_or((rest, ""));
    let hook: Hook = hook
        .parse()
        .map_err(|e: String| Refusal::new(StatusCode::NOT_FOUND, e))?;
    let v = match (req.method().clone(), action) {
        (Method::POST, "") => {
            let query = req.uri().query().map(str::to_string);
            let limited = http_body_util::Limited::new(req.into_body(), MAX_PLUGIN_BYTES);
            let wasm = limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
                Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read the component (at most {MAX_PLUGIN_BYTES} bytes): {e}"),
                )
            })?;
            deploy(edge, hook, query.as_deref(), wasm).await?
        }
        (Method::POST, "rollback") => rollback(edge, hook).await?,
        (Method::DELETE, "") => remove(edge, hook).await?,
        (m, _) => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no admin route {m} {p}"),
            ));
        }
    };
    Ok(json_response(StatusCode::OK, &v))
}

/// `POST /api/v1/plugins/{hook}?name=N&config=k=v…` with the component as the body.
async fn deploy(
    edge: &Arc<Edge>,
    hook: Hook,
    query: Option<&str>,
    wasm: Bytes,
) -> Result<serde_json::Value, Refusal> {
    let mut name = None;
    let mut config = BTreeMap::new();
    for (k, v) in form_pairs(query.unwrap_or(""))? {
        match k.as_str() {
            "name" => name = Some(v),
            "config" => {
                let Some((ck, cv)) = v.split_once('=') else {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        format!("config {v:?} is not key=value"),
                    ));
                };
                config.insert(ck.to_string(), cv.to_string());
            }
            other => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: expected name and config"),
                ));
            }
        }
    }
    let name = name
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "give the plugin a name: ?name=…"))?;
    let e = edge.clone();
    let info = blocking(move || e.plugins().deploy(hook, &name, &wasm, config)).await?;
    Ok(serde_json::json!({ "deployed": info }))
}

/// `GET /api/v1/plugins`.
pub fn list(edge: &Edge) -> serde_json::Value {
    let slots = edge.plugins().get().map(|h| h.list()).unwrap_or_else(|| {
        Hook::ALL
            .iter()
            .map(|&hook| tessera_plugins::SlotInfo {
                hook,
                current: None,
                previous: None,
            })
            .collect()
    });
    serde_json::json!({
        "hooks": slots,
        "limits": edge.plugins().limits(),
        "upstreams": edge.upstream_names().collect::<std::collections::BTreeSet<_>>(),
    })
}

/// `POST /api/v1/plugins/{hook}/rollback`.
async fn rollback(edge: &Arc<Edge>, hook: Hook) -> Result<serde_json::Value, Refusal> {
    let e = edge.clone();
    let info = blocking(move || e.plugins().rollback(hook)).await?;
    Ok(serde_json::json!({ "bound": info }))
}

/// `DELETE /api/v1/plugins/{hook}`.
async fn remove(edge: &Arc<Edge>, hook: Hook) -> Result<serde_json::Value, Refusal> {
    let e = edge.clone();
    match blocking(move || e.plugins().remove(hook)).await? {
        Some(info) => Ok(serde_json::json!({ "removed": info })),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no plugin is bound to the {} hook", hook.as_str()),
        )),
    }
}

/// Runs a plugin change (compilation, synced writes) on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// `application/x-www-form-urlencoded` pairs, decoded.
fn form_pairs(q: &str) -> Result<Vec<(String, String)>, Refusal> {
    let decode = |s: &str| {
        percent_decode(&s.replace('+', " ")).ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("{s:?} is not valid percent-encoded UTF-8"),
            )
        })
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}
