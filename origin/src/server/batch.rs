//! `POST /api/v1/chunks`: many chunks in one streamed response, the edges' misses (wire
//! format: [`tessera_origin_proto::batch`]).
//!
//! Chunks are read and verified a group at a time on the blocking pool, in parallel, while
//! the previous group is being sent; a bounded channel between the two holds the body back
//! when the client reads slowly, so one batch holds at most about two groups in memory.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tessera_origin_proto::ChunkHash;
use tessera_origin_proto::batch::{self, Encoding};
use tessera_origin_proto::range::accepts_encoding;
use tokio::sync::mpsc;
use tracing::warn;

use super::{ApiError, App, Reply, blocking};
use crate::cluster::HOP_HEADER;
use crate::codec::Codec;
use crate::store::{LoadedChunk, StoreError};

/// Chunks read and verified at once, in parallel.
const GROUP: usize = 16;

/// Answers a batch request whose body is `body` (taken when it is read; a list declared
/// too long is refused unread, and the caller drains it).
pub(super) async fn chunks(
    app: &Arc<App>,
    headers: &HeaderMap,
    body: &mut Option<Incoming>,
) -> Reply {
    let limit = batch::MAX_BATCH_CHUNKS * 32;
    let too_long = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a batch holds at most {} chunks ({limit} bytes of addresses)",
                batch::MAX_BATCH_CHUNKS
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_long());
    }
    let Some(body) = body.take() else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no chunk list"));
    };
    let list = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_long()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the chunk list: {e}"),
                )
            }
        })?
        .to_bytes();
    let hashes =
        batch::decode_request(&list).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let brotli = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| accepts_encoding(v, "br"));
    // A hop is answered from this node's store only, so requests cannot loop.
    let cluster = app
        .cluster
        .clone()
        .filter(|_| !headers.contains_key(HOP_HEADER));
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4 * GROUP);
    let app = app.clone();
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(&batch::MAGIC))))
            .await;
        for group in hashes.chunks(GROUP) {
            let store = app.store.clone();
            let group = group.to_vec();
            let loaded = match blocking(move || {
                use rayon::prelude::*;
                group
                    .par_iter()
                    .map(|h| (*h, store.load_chunk(h)))
                    .collect::<Vec<_>>()
            })
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.message))).await;
                    return;
                }
            };
            for (hash, got) in loaded {
                let (head, payload) = frame(&app, cluster.as_deref(), hash, got, brotli).await;
                if tx.send(Ok(Frame::data(head))).await.is_err() {
                    return; // the client went away
                }
                if !payload.is_empty() && tx.send(Ok(Frame::data(payload))).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, batch::RESPONSE_TYPE)
        .header(header::CACHE_CONTROL, "no-store")
        .body(StreamBody::new(stream).boxed())
        .unwrap())
}

/// The frame for one chunk as the store gave it: its bytes, or in a cluster a replica's
/// copy when this node lacks one it can verify, or "unavailable".
async fn frame(
    app: &App,
    cluster: Option<&crate::cluster::Cluster>,
    hash: ChunkHash,
    got: Result<Option<LoadedChunk>, StoreError>,
    brotli: bool,
) -> (Bytes, Bytes) {
    let unavailable = || (batch::frame_header(None, &hash, 0), Bytes::new());
    let local = match got {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, StoreError::Corrupt { .. }) {
                app.metrics.corrupt_chunks.inc();
            }
            warn!(chunk = %hash, error = %e, "chunk not served in a batch");
            None
        }
    };
    let (encoding, payload) = match local {
        Some(c) if brotli && c.codec == Codec::Brotli => (Encoding::Brotli, c.stored),
        Some(c) => (Encoding::Identity, c.data),
        None => match cluster {
            Some(cl) => match cl.chunk(hash).await {
                Ok(data) => (Encoding::Identity, data),
                Err(_) => return unavailable(),
            },
            None => return unavailable(),
        },
    };
    if payload.len() > batch::MAX_PAYLOAD {
        return unavailable();
    }
    (
        batch::frame_header(Some(encoding), &hash, payload.len()),
        payload,
    )
}
