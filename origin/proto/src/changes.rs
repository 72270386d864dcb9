//! The change feed: what edges follow to drop stale copies within a second of a publish.

use serde::{Deserialize, Serialize};

use crate::ChunkHash;

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// A version was published (new or replacing).
    Put,
    /// The path was deleted.
    Delete,
}

/// One change, numbered by the origin in commit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Sequence number: 1, 2, 3... in the order changes were committed.
    pub seq: u64,
    /// What happened.
    pub op: ChangeOp,
    /// The publish path.
    pub path: String,
    /// The new version's whole-file hash (its `ETag`); absent for deletes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blake3: Option<ChunkHash>,
}

/// `GET /api/v1/changes?since=N[&wait=SECONDS][&limit=L]` (JSON), format version 1.
///
/// `changes` holds the changes with `seq > since`, oldest first, at most `limit`. Pass `next`
/// as `since` in the next call. `truncated` is true when changes after `since` were already
/// dropped from the origin's bounded history: the caller missed some and must revalidate
/// everything it holds from this origin. With `wait`, the origin holds the request until a
/// change arrives or the wait ends (long poll).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesReply {
    /// The changes after `since`.
    pub changes: Vec<Change>,
    /// The `since` of the next call.
    pub next: u64,
    /// Some changes after `since` are no longer kept.
    pub truncated: bool,
}
