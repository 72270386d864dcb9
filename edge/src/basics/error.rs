//! The two kinds of failure the edge deals in: a [`Refusal`], what a client is told (a status
//! and a JSON body naming the problem), and a [`FetchError`], what went wrong reaching an
//! origin or upstream (where it came from, whether another origin may help). The pipeline
//! turns the second into the first in one place (`pipeline::outcome::refusal_of`).

use http::{Response, StatusCode};

use crate::basics::body::{EdgeBody, json_response};

/// A request refused or failed, as the client sees it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    /// What the client is told.
    pub message: String,
    /// What only the operator is told (addresses, URLs, the library's error): the log and
    /// the admin API get it under a request id the client is given ([`Incident`]).
    pub detail: Option<String>,
}

/// A failure whose details stay inside: carried in a response's extensions from where it
/// was made to the pipeline, which gives it a request id, logs and keeps it.
#[derive(Debug, Clone)]
pub struct Incident {
    pub message: String,
    pub detail: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            detail: None,
        }
    }

    /// A failure told to the client in public terms, with its `detail` kept for the
    /// operator.
    pub fn internal(status: StatusCode, message: impl Into<String>, detail: String) -> Self {
        Refusal {
            detail: Some(detail),
            ..Refusal::new(status, message)
        }
    }

    /// The response: the status, and `{"error": message}` (and the [`Incident`], in the
    /// extensions, when there is a detail).
    pub fn response(&self) -> Response<EdgeBody> {
        let mut r = json_response(self.status, &serde_json::json!({ "error": self.message }));
        if let Some(detail) = &self.detail {
            r.extensions_mut().insert(Incident {
                message: self.message.clone(),
                detail: detail.clone(),
            });
        }
        r
    }
}

/// What went wrong in one fetch from an origin or upstream (the `kind` label of
/// `tessera_edge_origin_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// No connection, or the request failed before an answer.
    Connect,
    /// No answer within the origin timeout.
    Timeout,
    /// An error status where a result was expected.
    Status,
    /// The body broke off or did not match its framing.
    Body,
    /// An answer that does not parse (a manifest), or a `304` to an unconditional request.
    Malformed,
    /// Bytes that do not match their blake3.
    Corrupt,
    /// A slice of a partial object came from another representation than the stored one
    /// (the object changed upstream): the stored object is dropped.
    Changed,
    /// The request that led a shared fetch went away before it ended.
    Abandoned,
    /// The client's own request body, passed on, was malformed or broke off: a `400`,
    /// never counted against the origin.
    Client,
}

impl FetchFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchFailure::Connect => "connect",
            FetchFailure::Timeout => "timeout",
            FetchFailure::Status => "status",
            FetchFailure::Body => "body",
            FetchFailure::Malformed => "malformed",
            FetchFailure::Corrupt => "corrupt",
            FetchFailure::Abandoned => "abandoned",
            FetchFailure::Changed => "changed",
            FetchFailure::Client => "client",
        }
    }
}

/// A failed fetch from an origin or upstream: what failed, and a message for the client and
/// the log that names the origin.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub failure: FetchFailure,
    pub message: String,
}

impl FetchError {
    pub fn new(failure: FetchFailure, message: impl Into<String>) -> FetchError {
        FetchError {
            failure,
            message: message.into(),
        }
    }

    /// The error that ended a body stream: the fetch's own when it was one, else a body
    /// failure.
    pub fn of_stream(e: crate::basics::body::BoxError) -> FetchError {
        match e.downcast::<FetchError>() {
            Ok(e) => *e,
            Err(e) => FetchError::new(FetchFailure::Body, e.to_string()),
        }
    }

    /// The fetch this request waited for was abandoned by the request that led it.
    pub fn abandoned() -> FetchError {
        FetchError::new(FetchFailure::Abandoned, "the fetch was abandoned")
    }
}
