//! `POST /api/v1/chunks`: many chunks in one streamed response, the edges' misses (wire
//! format: [`tessera_origin_proto::batch`]).
//!
//! A blocking job reads and verifies a batch's chunks in order into a bounded channel, up to
//! [`READ_AHEAD`] ahead of the body, which sends each as the client takes it. The job stops
//! when the channel is full and the body starts another once half of it is free: a client
//! that reads slowly or not at all holds no thread, and one batch holds at most
//! [`READ_AHEAD`] chunks in memory. For a client that keeps up, one job reads the whole
//! batch on one thread, with no hand-off per group: on a small machine the edge fetching the
//! batch needs the other core, and waking a parallel pool for every 16 chunks cost the origin
//! a fifth of its CPU in sched_yield and futex waits (bench/HISTORY.md).

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

use super::{ApiError, App, Reply};
use crate::cluster::HOP_HEADER;
use crate::codec::Codec;
use crate::store::{LoadedChunk, StoreError};

/// Chunks read and verified ahead of the one being sent.
const READ_AHEAD: usize = 32;

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
    let (tx, rx) = mpsc::channel::<Loaded>(READ_AHEAD);
    let state = Body {
        hashes: hashes.into(),
        read: 0,
        reader: None,
        tx,
        rx,
        app: app.clone(),
        cluster,
        brotli,
        payload: Some(Bytes::from_static(&batch::MAGIC)),
    };
    let stream = futures_util::stream::unfold(state, |mut b| async move {
        let item = b.next().await?;
        Some((item, b))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, batch::RESPONSE_TYPE)
        .header(header::CACHE_CONTROL, "no-store")
        .body(StreamBody::new(stream).boxed())
        .unwrap())
}

/// A chunk as the store gave it.
type Loaded = (ChunkHash, Result<Option<LoadedChunk>, StoreError>);

/// The state of a batch's body: the chunks asked for, the blocking job reading them ahead
/// into a bounded channel, and what goes out before the next of them (the magic, then the
/// payload of the frame whose header went last).
struct Body {
    hashes: Arc<[ChunkHash]>,
    /// Chunks read (or being read by `reader`) so far: `hashes[..read]`.
    read: usize,
    /// The job reading `hashes[read..]`; it returns where it stopped.
    reader: Option<tokio::task::JoinHandle<usize>>,
    tx: mpsc::Sender<Loaded>,
    rx: mpsc::Receiver<Loaded>,
    app: Arc<App>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    brotli: bool,
    payload: Option<Bytes>,
}

impl Body {
    /// The next piece of the body: a frame header, its payload, or an error when a reading
    /// job failed (it panicked), so the client sees a broken batch rather than a short one.
    async fn next(&mut self) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        if let Some(p) = self.payload.take() {
            return Some(Ok(Frame::data(p)));
        }
        let (hash, got) = match self.loaded().await? {
            Ok(l) => l,
            Err(e) => {
                self.read = self.hashes.len(); // nothing more after the error
                return Some(Err(e));
            }
        };
        let (head, payload) =
            frame(&self.app, self.cluster.as_deref(), hash, got, self.brotli).await;
        self.payload = (!payload.is_empty()).then_some(payload);
        Some(Ok(Frame::data(head)))
    }

    /// The next chunk read, in order; `None` once all were sent.
    async fn loaded(&mut self) -> Option<Result<Loaded, std::io::Error>> {
        loop {
            // Read on while at least half the read-ahead is free.
            if self.reader.is_none()
                && self.read < self.hashes.len()
                && self.rx.len() <= READ_AHEAD / 2
            {
                self.reader = Some(self.spawn_reader());
            }
            if let Ok(l) = self.rx.try_recv() {
                return Some(Ok(l));
            }
            let job = self.reader.as_mut()?;
            tokio::select! {
                biased;
                Some(l) = self.rx.recv() => return Some(Ok(l)),
                done = job => {
                    self.reader = None;
                    match done {
                        Ok(stopped) => self.read = stopped,
                        Err(e) => {
                            return Some(Err(std::io::Error::other(format!(
                                "reading the batch's chunks failed: {e}"
                            ))));
                        }
                    }
                }
            }
        }
    }

    /// A blocking job that reads `hashes[read..]` in order into the channel while it has
    /// room, and returns where it stopped: it never waits for the client, so a client that
    /// stops reading holds no thread, only the chunks already read.
    fn spawn_reader(&self) -> tokio::task::JoinHandle<usize> {
        let (hashes, start, tx) = (self.hashes.clone(), self.read, self.tx.clone());
        let store = self.app.store.clone();
        tokio::task::spawn_blocking(move || {
            for (i, h) in hashes.iter().enumerate().skip(start) {
                let Ok(slot) = tx.try_reserve() else {
                    return i; // full: the body starts a new job when it has room again
                };
                slot.send((*h, store.load_chunk(h)));
            }
            hashes.len()
        })
    }
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
