//! The admin API: `/healthz` and `/metrics` open, everything else behind the admin token —
//! stats ([`stats`]), purges ([`purge`]), plugin deploys ([`plugins`]) and the last failures
//! with their details (`/api/v1/errors`, `crate::pipeline::incidents`).

pub mod plugins;
pub mod purge;
pub mod stats;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::basics::body::{EdgeBody, full_body, json_response};
use crate::basics::error::Refusal;
use crate::pipeline::Edge;

/// Largest admin request body but a plugin's.
const MAX_ADMIN_BODY: usize = 64 << 10;

/// Answers one admin request.
pub async fn handle(edge: &Arc<Edge>, req: Request<Incoming>) -> Response<EdgeBody> {
    match route(edge, req).await {
        Ok(r) => r,
        Err(refusal) => refusal.response(),
    }
}

async fn route(edge: &Arc<Edge>, req: Request<Incoming>) -> Result<Response<EdgeBody>, Refusal> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ok"}),
            ));
        }
        (&Method::GET, "/metrics") => {
            edge.metrics()
                .cache_bytes
                .with_label_values(&["memory"])
                .set(edge.cache().memory_usage() as i64);
            return Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(full_body(edge.metrics().render()))
                .unwrap());
        }
        _ => {}
    }
    authorize(edge, req.headers())?;
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/api/v1/stats") => Ok(json_response(StatusCode::OK, &stats::stats(edge))),
        (Method::GET, "/api/v1/plugins") => Ok(json_response(StatusCode::OK, &plugins::list(edge))),
        (Method::GET, "/api/v1/errors") => {
            let id = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|p| p.strip_prefix("id="))
                    .map(str::to_string)
            });
            let errors = edge.incidents().list(id.as_deref());
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "errors": errors }),
            ))
        }
        (_, p) if p.starts_with("/api/v1/plugins/") => plugins::handle(edge, req).await,
        (Method::POST, "/api/v1/purge") => purge::handle(edge, read_body(req).await?).await,
        (m, p) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no admin route {m} {p}"),
        )),
    }
}

fn authorize(edge: &Edge, headers: &http::HeaderMap) -> Result<(), Refusal> {
    let Some(token) = &edge.config().admin_token else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "this edge has no admin token configured; start it with --admin-token",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| tessera_origin_proto::token_matches(g, token));
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "admin requests need Authorization: Bearer <admin token>",
        ))
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )
    })
}
