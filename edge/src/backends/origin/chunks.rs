//! Chunks: verified bytes by blake3, from memory, from the SSD tier (checked), or from the
//! chunk's owners (checked by the client); and the byte streams of files made of them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use tessera_origin_proto::batch::MAX_BATCH_CHUNKS;
use tessera_origin_proto::{BatchItem, ChunkHash, ClientError, ManifestChunk};

use crate::backends::origin::assembly::Assembled;
use crate::backends::origin::{OriginBackend, note_error};
use crate::basics::body::{BoxError, ByteStream};
use crate::basics::error::{FetchError, FetchFailure};
use crate::basics::metrics::FetchKind;
use crate::coalesce::{Join, Once, Permit};
use crate::store::entry::{Key, Placement, Value};
use crate::store::tiers::{DiskBatch, Tier};

impl OriginBackend {
    /// The bytes `start..end` of a file made of `chunks`, in order, as they are found or
    /// arrive. Chunks are looked up a window at a time ([`OriginBackend::readahead`] bytes
    /// ahead of what the client was sent, refilled when half of it was sent); the window's
    /// misses are fetched in one streamed batch per origin node ([`Self::fetch_leads`]), and
    /// each chunk is handed on as soon as it arrived and was checked. A chunk neither tier
    /// holds is cut from the file's assembled `copy` when memory has it (its chunks left
    /// memory when it was made), before it is fetched.
    /// `keep`: where the chunks it fetches are stored, and whether those it reads from the
    /// SSD tier are brought into memory (only when memory may keep them).
    pub fn chunk_stream(
        self: &Arc<Self>,
        chunks: Arc<Vec<ManifestChunk>>,
        copy: Option<Assembled>,
        start: u64,
        end: u64,
        keep: Placement,
    ) -> ByteStream {
        self.reader(chunks, copy, start, end, keep)
    }

    /// The whole file made of `chunks`, to be assembled by the caller: what it fetches goes to
    /// the SSD tier only, since memory will hold the assembled copy (its chunks would push
    /// out other entries on their way through).
    pub fn chunks_to_assemble(self: &Arc<Self>, chunks: Arc<Vec<ManifestChunk>>) -> ByteStream {
        let size = chunks.last().map_or(0, |c| c.offset + u64::from(c.size));
        self.reader(chunks, None, 0, size, Placement::Disk)
    }

    fn reader(
        self: &Arc<Self>,
        chunks: Arc<Vec<ManifestChunk>>,
        copy: Option<Assembled>,
        start: u64,
        end: u64,
        keep: Placement,
    ) -> ByteStream {
        let first = chunks.partition_point(|c| c.offset + c.size as u64 <= start);
        let last = chunks.partition_point(|c| c.offset < end);
        let reader = Reader {
            me: self.clone(),
            chunks,
            copy,
            start,
            end,
            next: first,
            last,
            queued: first,
            window: VecDeque::new(),
            window_bytes: 0,
            keep,
        };
        Box::pin(futures_util::stream::unfold(reader, Reader::step))
    }

    /// The chunk from memory, or from the SSD tier when it matches its blake3 (a corrupt copy
    /// is counted, removed and reads as a miss).
    /// `keep` says whether one read from the SSD tier may stay in memory.
    async fn cached_chunk(
        &self,
        hash: ChunkHash,
        keep: Placement,
    ) -> Result<Option<Bytes>, FetchError> {
        let key = Key(hash.0);
        let cache = &self.ctx.store.cache;
        match cache.get_as(&key, keep).await {
            Some((Value::Bytes(b), Tier::Memory)) => Ok(Some(b)),
            Some((Value::Bytes(b), Tier::Disk)) => {
                if ChunkHash::of(&b) == hash {
                    return Ok(Some(b));
                }
                self.ctx.metrics.corrupt_chunks.inc();
                tracing::error!(chunk = %hash, "SSD tier returned a corrupt chunk; refetching");
                cache.remove(&key);
                Ok(None)
            }
            Some(_) => Err(FetchError::new(
                FetchFailure::Malformed,
                format!("cache entry {hash} is not a chunk"),
            )),
            None => Ok(None),
        }
    }

    /// Fetches the chunks `leads` lead the flights of, and fills those flights: one streamed
    /// batch per origin node (each chunk's first choice), then what a node could not give
    /// (unavailable, corrupt, or the batch broke off) from the next node of that chunk's
    /// list, until every chunk arrived or its list ran out. Runs on a task of its own holding
    /// the permits, so a client that goes away does not fail the requests waiting with it.
    /// `keep`: where the chunks are stored.
    pub(crate) async fn fetch_leads(
        self: Arc<Self>,
        leads: Vec<(ChunkHash, ChunkPermit)>,
        keep: Placement,
    ) {
        let cache = &self.ctx.store.cache;
        let mut todo = Vec::with_capacity(leads.len());
        for (hash, permit) in leads {
            // A fetch that ended between this request's lookup and its join has stored the
            // chunk (before it ended its flight): take that instead of fetching again.
            if cache.contains(&Key(hash.0))
                && let Ok(Some(b)) = self.cached_chunk(hash, keep).await
            {
                permit.flight().set(Ok(b));
                continue;
            }
            self.ctx.metrics.chunks_in_flight.inc();
            todo.push(Lead {
                in_flight: self.ctx.metrics.chunks_in_flight.clone(),
                order: self.origins.for_chunk(&hash),
                hash,
                permit,
                keep,
                tried: 0,
                error: FetchError::new(FetchFailure::Connect, "no origin configured"),
            });
        }
        while !todo.is_empty() {
            // Grouped by the origin to ask and the one to hedge to, so each batch has one
            // of each.
            let mut by_origin: BTreeMap<(usize, Option<usize>), Vec<Lead>> = BTreeMap::new();
            for lead in todo.drain(..) {
                match lead.order.get(lead.tried) {
                    Some(&i) => {
                        let second = lead.order.get(lead.tried + 1).copied();
                        by_origin.entry((i, second)).or_default().push(lead)
                    }
                    None => lead.permit.flight().set(Err(lead.error.clone())),
                }
            }
            let rounds = by_origin.into_iter().flat_map(|(pair, leads)| {
                // A batch holds at most so many chunks; a window never gets near it.
                let mut parts = Vec::new();
                let mut leads = leads.into_iter().peekable();
                while leads.peek().is_some() {
                    let part = leads.by_ref().take(MAX_BATCH_CHUNKS).collect::<Vec<_>>();
                    parts.push((pair, part));
                }
                parts
            });
            let rounds = rounds.map(|((i, second), leads)| self.fetch_batch(i, second, leads));
            todo = futures_util::future::join_all(rounds)
                .await
                .into_iter()
                .flatten()
                .collect();
        }
    }

    /// One batch from origin `first`, hedged to `second` when `first` is slow to answer.
    /// Fills the flights of the chunks it gave; returns the leads it could not serve, each
    /// marked as having tried the origins asked, with the reason.
    async fn fetch_batch(
        &self,
        first: usize,
        second: Option<usize>,
        mut leads: Vec<Lead>,
    ) -> Vec<Lead> {
        let hashes: Vec<ChunkHash> = leads.iter().map(|l| l.hash).collect();
        let open = |i: usize| {
            let batch = self.origins.client(i).chunk_batch(&hashes, self.brotli);
            self.ctx.call(FetchKind::Chunks, batch)
        };
        let (opened, from_second) = self
            .ctx
            .hedged(open(first), second.map(open), |r| matches!(r, Some(Ok(_))))
            .await;
        let i = match second {
            Some(second) if from_second => {
                // It failed, or it lost the race: these chunks have tried it.
                self.origins.failed(first);
                leads.iter_mut().for_each(|l| l.tried += 1);
                second
            }
            _ => first,
        };
        let origin = self.origins.client(i);
        let mut batch = match opened {
            Some(Ok(b)) => {
                self.origins.succeeded(i);
                b
            }
            Some(Err(ClientError::Status { status, .. }))
                if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED =>
            {
                // An origin older than batches: one request per chunk.
                return self.fetch_singly(i, leads).await;
            }
            Some(Err(e)) => {
                let failure = note_error(self, i, &e);
                tracing::warn!(origin = origin.base(), error = %e, "chunk batch failed");
                let error = FetchError::new(failure, format!("origin error: {e}"));
                return leads.into_iter().map(|l| l.failed(error.clone())).collect();
            }
            None => {
                self.origins.failed(i);
                let error = timeout_error(origin.base());
                return leads.into_iter().map(|l| l.failed(error.clone())).collect();
            }
        };
        let mut leads = leads.into_iter();
        let mut left = Vec::new();
        let mut stores = self.ctx.store.cache.disk_batch();
        loop {
            // Each chunk must arrive within the between-bytes timeout of the one before it.
            let item = self.ctx.next_piece(batch.next(), origin.base()).await;
            let error = match item {
                Ok(None) => break,
                Ok(Some(Ok(item))) => {
                    let lead = leads.next().expect("the decoder checks the frame count");
                    match item {
                        BatchItem::Chunk(_, b) => self.deliver(lead, b, &mut stores),
                        BatchItem::Unavailable(h) => left.push(lead.failed(FetchError::new(
                            FetchFailure::Status,
                            format!("origin error: {} has no chunk {h}", origin.base()),
                        ))),
                        BatchItem::Corrupt(h) => {
                            self.ctx.failed(FetchFailure::Corrupt);
                            self.ctx.metrics.corrupt_chunks.inc();
                            self.origins.failed(i);
                            tracing::warn!(origin = origin.base(), chunk = %h, "corrupt chunk refused");
                            left.push(lead.failed(FetchError::new(
                                FetchFailure::Corrupt,
                                format!(
                                    "origin error: chunk {h} from {} failed its blake3 check",
                                    origin.base()
                                ),
                            )));
                        }
                    }
                    continue;
                }
                Ok(Some(Err(e))) => {
                    let failure = note_error(self, i, &e);
                    tracing::warn!(origin = origin.base(), error = %e, "chunk batch broke off");
                    FetchError::new(failure, format!("origin error: {e}"))
                }
                Err(e) => {
                    self.origins.failed(i);
                    e
                }
            };
            left.extend(leads.by_ref().map(|l| l.failed(error.clone())));
            break;
        }
        left
    }

    /// A chunk arrived and was checked: counted, stored (its SSD copy with the rest of
    /// `stores`), and handed to everyone waiting.
    fn deliver(&self, lead: Lead, b: Bytes, stores: &mut DiskBatch<'_>) {
        self.ctx.metrics.origin_chunks.inc();
        stores.insert_placed(Key(lead.hash.0), Value::Bytes(b.clone()), lead.keep);
        lead.permit.flight().set(Ok(b));
    }

    /// [`Self::fetch_batch`] from an origin that has no batch endpoint: one `GET` per chunk,
    /// a few at a time.
    async fn fetch_singly(&self, i: usize, leads: Vec<Lead>) -> Vec<Lead> {
        let origin = self.origins.client(i);
        let gets = leads.into_iter().map(|lead| async move {
            let error = match self.ctx.call(FetchKind::Chunk, origin.chunk(lead.hash)).await {
                Some(Ok(b)) => {
                    self.origins.succeeded(i);
                    self.deliver(lead, b, &mut self.ctx.store.cache.disk_batch());
                    return None;
                }
                Some(Err(e)) => {
                    let failure = note_error(self, i, &e);
                    if failure == FetchFailure::Corrupt {
                        self.ctx.metrics.corrupt_chunks.inc();
                    }
                    tracing::warn!(origin = origin.base(), chunk = %lead.hash, error = %e, "chunk fetch failed");
                    FetchError::new(failure, format!("origin error: chunk {}: {e}", lead.hash))
                }
                None => {
                    self.origins.failed(i);
                    timeout_error(origin.base())
                }
            };
            Some(lead.failed(error))
        });
        futures_util::stream::iter(gets)
            .buffered(SINGLY_AT_ONCE)
            .filter_map(std::future::ready)
            .collect()
            .await
    }
}

/// Chunk `GET`s in flight at once for one stream, from an origin without batches.
const SINGLY_AT_ONCE: usize = 8;

/// The flight of one chunk fetch.
pub(crate) type ChunkFlight = Once<Result<Bytes, FetchError>>;
/// The right to fetch one chunk for everyone waiting on it.
pub(crate) type ChunkPermit = Permit<Key, ChunkFlight>;

fn timeout_error(origin: &str) -> FetchError {
    FetchError::new(
        FetchFailure::Timeout,
        format!("origin {origin} did not answer in time"),
    )
}

/// A chunk this edge fetches for everyone waiting on it, and where it was tried.
struct Lead {
    hash: ChunkHash,
    permit: ChunkPermit,
    /// Where the chunk is stored once it arrived.
    keep: Placement,
    /// Origins to ask, in order.
    order: Vec<usize>,
    /// How many of `order` were asked.
    tried: usize,
    /// Why the last one could not give it.
    error: FetchError,
    /// `tessera_edge_origin_chunks_in_flight`, which counts this lead until it is dropped.
    in_flight: prometheus::IntGauge,
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl Lead {
    fn failed(mut self, error: FetchError) -> Lead {
        self.tried += 1;
        self.error = error;
        self
    }
}

/// One slot of a [`Reader`]'s window.
enum Slot {
    /// Found in the cache.
    Ready(Bytes),
    /// Being fetched (by this stream or another).
    Wait(Arc<ChunkFlight>),
    /// Could not be looked up.
    Failed(FetchError),
}

/// The state of a [`OriginBackend::chunk_stream`].
struct Reader {
    me: Arc<OriginBackend>,
    chunks: Arc<Vec<ManifestChunk>>,
    /// Where the file's assembled copy may be.
    copy: Option<Assembled>,
    start: u64,
    end: u64,
    /// Next chunk to hand on.
    next: usize,
    /// One past the last chunk to hand on.
    last: usize,
    /// Chunks `next..queued` are in `window`, in order.
    queued: usize,
    window: VecDeque<Slot>,
    /// Bytes of the chunks in `window`.
    window_bytes: u64,
    /// Where the chunks this reader fetches are kept.
    keep: Placement,
}

impl Reader {
    async fn step(mut self) -> Option<(Result<Bytes, BoxError>, Reader)> {
        if self.next >= self.last {
            return None;
        }
        if self.queued < self.last
            && (self.window.is_empty() || self.window_bytes < self.me.readahead / 2)
        {
            self.refill().await;
        }
        let c = self.chunks[self.next];
        self.next += 1;
        self.window_bytes -= u64::from(c.size);
        let got = match self
            .window
            .pop_front()
            .expect("refill queues the next chunk")
        {
            Slot::Ready(b) => Ok(b),
            Slot::Wait(flight) => flight.wait().await,
            Slot::Failed(e) => Err(e),
        };
        match got {
            Ok(b) => {
                let s = self.start.saturating_sub(c.offset) as usize;
                let e = ((self.end - c.offset) as usize).min(b.len());
                Some((Ok(b.slice(s.min(e)..e)), self))
            }
            Err(e) => {
                // The stream ends with this error.
                self.next = self.last;
                Some((Err(e.into()), self))
            }
        }
    }

    /// Queues chunks up to the readahead (at least one), looking them up in the cache at
    /// once and starting one fetch for those nobody is fetching yet.
    async fn refill(&mut self) {
        let from = self.queued;
        let mut to = from;
        while to < self.last && (to == from || self.window_bytes < self.me.readahead) {
            self.window_bytes += u64::from(self.chunks[to].size);
            to += 1;
        }
        self.queued = to;
        let me = &self.me;
        let found = futures_util::future::join_all(
            self.chunks[from..to]
                .iter()
                .map(|c| me.cached_chunk(c.hash, self.keep)),
        )
        .await;
        let mut leads = Vec::new();
        // One window's misses are joined under one lock, so readers of one file that look it
        // up at the same moment do not split its chunks between their batches (a window that
        // is all hits takes no lock).
        let joining = found
            .iter()
            .any(|f| matches!(f, Ok(None)))
            .then(|| me.joining.lock().unwrap());
        for (c, found) in self.chunks[from..to].iter().zip(found) {
            self.window.push_back(match found {
                Ok(Some(b)) => Slot::Ready(b),
                Err(e) => Slot::Failed(e),
                Ok(None) if let Some(b) = self.copy.and_then(|a| me.cut_from_assembled(a, c)) => {
                    Slot::Ready(b)
                }
                Ok(None) => match me.chunks.join(Key(c.hash.0)) {
                    Join::Follow(flight) => Slot::Wait(flight),
                    Join::Lead(permit) => {
                        let flight = permit.flight().clone();
                        leads.push((c.hash, permit));
                        Slot::Wait(flight)
                    }
                },
            });
        }
        drop(joining);
        if !leads.is_empty() {
            tokio::spawn(me.clone().fetch_leads(leads, self.keep));
        }
    }
}
