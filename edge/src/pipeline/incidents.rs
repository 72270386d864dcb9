//! Failures whose details stay inside. A client of a public listener is told what failed in
//! public terms and a request id (`{"error": …, "request_id": …}` and `X-Request-Id`); the
//! details (origin addresses and URLs, the library's error) go to the log under that id,
//! and the last [`KEPT`] to the admin API (`GET /api/v1/errors[?id=…]`), as nginx keeps
//! upstream errors in its error log rather than in the page it serves.

use std::collections::VecDeque;
use std::sync::Mutex;

use http::{HeaderValue, Method, Response, StatusCode, Uri};
use serde::Serialize;

use crate::basics::body::{EdgeBody, json_response};
use crate::basics::clock::now_ms;
use crate::basics::error::Incident;

/// Failures the admin API keeps.
pub const KEPT: usize = 256;

/// One failure, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub request_id: String,
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// What the client was told.
    pub error: String,
    /// What happened.
    pub detail: String,
}

/// The last [`KEPT`] failures.
#[derive(Debug, Default)]
pub struct Incidents {
    recent: Mutex<VecDeque<Record>>,
}

impl Incidents {
    /// Gives `incident` a request id, logs and keeps it, and returns the client's response.
    pub fn answer(
        &self,
        status: StatusCode,
        method: &Method,
        uri: &Uri,
        incident: Incident,
    ) -> Response<EdgeBody> {
        let id: String = rand::random::<[u8; 8]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        tracing::warn!(
            target: "tessera::edge",
            request_id = %id,
            status = status.as_u16(),
            method = %method,
            path = uri.path(),
            detail = %incident.detail,
            "request failed: {}",
            incident.message
        );
        let mut resp = json_response(
            status,
            &serde_json::json!({ "error": incident.message, "request_id": id }),
        );
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(Record {
            request_id: id,
            at_ms: now_ms(),
            method: method.to_string(),
            path: uri.path().chars().take(1024).collect(),
            status: status.as_u16(),
            error: incident.message,
            detail: incident.detail,
        });
        resp
    }

    /// The failures kept, newest first; only the one with `id` when given.
    pub fn list(&self, id: Option<&str>) -> Vec<Record> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .rev()
            .filter(|r| id.is_none_or(|id| r.request_id == id))
            .cloned()
            .collect()
    }
}
