//! A streaming fill: one upstream response being fetched, shared by every request waiting
//! for it. The leader (a task of its own, so a client that goes away does not cancel it)
//! publishes the head, then appends the body as it arrives; readers stream the body from
//! its first byte.
//!
//! Memory is bounded per fill: it holds at most its window ([`FillLimits::window`]) of body
//! bytes, whatever its readers' pace (as nginx's `proxy_buffers` and a busy-buffers cap).
//! - A body being stored goes on at the pace of its fastest reader: bytes already in the
//!   cache (its full segments) leave the fill once a reader waits at its end, and a reader
//!   that fell behind them, or joined late, reads them back from the cache. A fill whose
//!   readers are all behind waits for them. When no reader is left it goes on at the
//!   upstream's pace to complete the cached body, if fewer than [`Background`]'s limit do
//!   so already; else it stops.
//! - A body not stored (`no-store`, too large, refused by the eviction plugin) waits for its
//!   slowest reader once the window is full, and stops when no reader is left.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, StatusCode};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::basics::error::{FetchError, FetchFailure};
use crate::coalesce::Flight;
use crate::store::entry::{Key, Meta, SEGMENT, Value, segment_key};
use crate::store::tiers::Cache;

/// The head of a response being filled.
#[derive(Debug, Clone)]
pub struct FillHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Whether the body will be stored (else followers fetch on their own).
    pub storable: bool,
    /// The request header values the response varies by, as the leader sent them
    /// (normalised, `rules::vary::selecting_value`): a follower whose values differ fetches
    /// on its own.
    pub vary: Vec<(String, Option<String>)>,
    /// Set when the fill was a revalidation that the upstream answered `304`: the refreshed
    /// stored response, under `key`.
    pub revalidated: Option<Arc<Meta>>,
    /// The key the fill is for (or of the revalidated variant).
    pub key: Key,
}

/// How much a fill may hold, and where its stored segments are.
#[derive(Debug, Clone)]
pub struct FillLimits {
    /// Body bytes held at most (plus one frame).
    pub window: usize,
    /// Bytes held by every fill, counted here.
    pub gauge: IntGauge,
    /// Fills waiting for a slow reader, counted here.
    pub waiting: IntGauge,
    /// The cache, and the id of the segments the body is stored in.
    pub segments: Option<(Cache, [u8; 16])>,
    /// How a reader that fell behind both the window and the cache gets the rest of the
    /// body on its own; without it such a reader fails.
    pub rest: Option<Rest>,
    /// Whether a stored body may go on once no reader is left.
    pub background: Background,
}

/// The stored fills that go on with no reader left, to complete their body in the cache
/// (as nginx and Varnish finish a cacheable fetch whose client went away): at most as many
/// as it has permits, since each holds up to its window of memory and takes the upstream's
/// pace of CPU. A fill left alone when they are all taken stops. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Background {
    permits: Arc<Semaphore>,
    /// Fills going on with no reader now.
    going: IntGauge,
    /// Fills stopped for want of a permit.
    stopped: IntCounter,
}

impl Background {
    /// At most `max` fills going on with no reader, counted in `going` (while they do) and
    /// `stopped` (each one stopped).
    pub fn new(max: usize, going: IntGauge, stopped: IntCounter) -> Background {
        Background {
            permits: Arc::new(Semaphore::new(max)),
            going,
            stopped,
        }
    }

    /// A permit to go on, if one is left.
    fn permit(&self) -> Option<Going> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.going.inc();
        Some(Going {
            _permit: permit,
            going: self.going.clone(),
        })
    }
}

/// A fill's permit to go on with no reader, held until the fill ends.
#[derive(Debug)]
struct Going {
    _permit: OwnedSemaphorePermit,
    going: IntGauge,
}

impl Drop for Going {
    fn drop(&mut self) {
        self.going.dec();
    }
}

/// The body from an offset to its end, fetched on its own (upstream: a `Range` request
/// with `If-Range`), for a reader that fell behind what the fill holds and the cache
/// keeps. The stream fails if the upstream cannot give exactly that.
#[derive(Clone)]
pub struct Rest(pub Arc<dyn Fn(u64) -> BodyStream + Send + Sync>);

/// A body's bytes, as a stream.
pub type BodyStream = futures_util::stream::BoxStream<'static, Result<Bytes, FetchError>>;

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rest")
    }
}

#[derive(Debug, Default)]
struct State {
    head: Option<Result<Arc<FillHead>, FetchError>>,
    limits: Option<FillLimits>,
    /// Body bytes not yet let go, from offset `start`, each part with its body offset.
    parts: VecDeque<(u64, Bytes)>,
    start: u64,
    /// Offset of the end of what arrived.
    end: u64,
    /// The body below this offset is in the cache (full segments).
    stored_upto: u64,
    /// Readers (id, offset of their next byte).
    readers: Vec<(u64, u64)>,
    next_reader: u64,
    /// `Some(Ok)` when the body is complete, `Some(Err)` when it failed.
    done: Option<Result<(), FetchError>>,
    /// Held while the fill goes on with no reader left.
    background: Option<Going>,
    /// Set when the fill stopped because no reader was left: a request that comes later
    /// fetches on its own.
    stopped: bool,
}

impl State {
    fn held(&self) -> u64 {
        self.end - self.start
    }

    /// Lets go of the oldest bytes while the window is full and nobody needs them from here:
    /// every reader is past them; or the cache has them and a reader waits at the end for
    /// more (the readers behind it then read the cache: a slow reader does not hold back a
    /// fast one, but a fill whose readers are all behind goes at their pace, so slow
    /// readers of many cold objects do not pull them all into the cache at the upstream's
    /// pace, evicting one another's bytes before they are read).
    fn trim(&mut self) {
        let Some(limits) = &self.limits else { return };
        let slowest = self.readers.iter().map(|r| r.1).min().unwrap_or(u64::MAX);
        let waiting_at_end = self.readers.iter().any(|r| r.1 >= self.end);
        let before = self.held();
        while self.held() >= limits.window as u64 {
            let Some((_, first)) = self.parts.front() else {
                break;
            };
            let first_end = self.start + first.len() as u64;
            let stored =
                first_end <= self.stored_upto && (waiting_at_end || self.readers.is_empty());
            if !stored && first_end > slowest {
                break;
            }
            self.parts.pop_front();
            self.start = first_end;
        }
        limits.gauge.sub((before - self.held()) as i64);
    }
}

/// One response being fetched.
#[derive(Debug)]
pub struct Fill {
    /// A std mutex: held only to copy a few fields, never across an `.await`.
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Wakes a leader waiting for its slowest reader.
    room: Notify,
    /// Set when an unsafe request invalidated the key during the fill: its response must
    /// not stay in the cache.
    invalidated: std::sync::atomic::AtomicBool,
}

impl Flight for Fill {
    fn new() -> Fill {
        Fill {
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
            room: Notify::new(),
            invalidated: Default::default(),
        }
    }

    fn abandon(&self) {
        self.set_head(Err(FetchError::abandoned()));
        self.finish(Err(FetchError::abandoned()));
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &s.limits {
            l.gauge.sub(s.held() as i64);
        }
    }
}

/// What the leader does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Room {
    /// Read on.
    Go,
    /// Nobody will read the body: stop fetching it.
    Stop,
}

impl Fill {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Sets the fill's limits (leader only, before the body).
    pub fn limit(&self, limits: FillLimits) {
        self.state.lock().unwrap().limits = Some(limits);
    }

    /// Publishes the response head (leader only; the first call wins).
    pub fn set_head(&self, head: Result<FillHead, FetchError>) {
        self.state
            .lock()
            .unwrap()
            .head
            .get_or_insert(head.map(Arc::new));
        self.bump();
    }

    /// Marks the fill invalidated by an unsafe request to its key.
    pub fn invalidate(&self) {
        self.invalidated
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether an unsafe request invalidated the key during this fill.
    pub fn is_invalidated(&self) -> bool {
        self.invalidated.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Appends body bytes (leader only).
    pub fn push(&self, bytes: Bytes) {
        {
            let mut s = self.state.lock().unwrap();
            let n = bytes.len() as u64;
            let end = s.end;
            s.parts.push_back((end, bytes));
            s.end += n;
            if let Some(l) = &s.limits {
                l.gauge.add(n as i64);
            }
            s.trim();
        }
        self.bump();
    }

    /// The segment `seg`, at body offset `at`, is in the cache (leader only). The parts
    /// of the window it covers whole become slices of it, so the window and the memory
    /// tier hold those bytes once, and the upstream's read buffers behind them go.
    pub fn stored(&self, at: u64, seg: &Bytes) {
        let mut s = self.state.lock().unwrap();
        let end = at + seg.len() as u64;
        s.stored_upto = s.stored_upto.max(end);
        for (off, part) in s.parts.iter_mut() {
            let part_end = *off + part.len() as u64;
            if *off >= at && part_end <= end && !part.is_empty() {
                *part = seg.slice((*off - at) as usize..(part_end - at) as usize);
            }
        }
        s.trim();
    }

    /// Waits until the fill may take more of the body (leader only). `storing`: whether the
    /// body is still being stored (else bytes leave only as readers pass them). With no
    /// reader left, a body not stored stops, and so does a stored one that finds no
    /// [`Background`] permit.
    pub async fn room(&self, storing: bool) -> Room {
        let mut waited = None;
        let room = loop {
            let notified = self.room.notified();
            {
                let mut s = self.state.lock().unwrap();
                s.trim();
                if s.readers.is_empty() && s.background.is_none() {
                    let budget = s.limits.as_ref().map(|l| l.background.clone());
                    match (storing, budget) {
                        (false, _) => {
                            s.stopped = true;
                            break Room::Stop;
                        }
                        (true, Some(b)) => match b.permit() {
                            Some(going) => s.background = Some(going),
                            None => {
                                b.stopped.inc();
                                s.stopped = true;
                                break Room::Stop;
                            }
                        },
                        // Without limits nothing bounds the fill.
                        (true, None) => {}
                    }
                }
                match &s.limits {
                    Some(l) if s.held() >= l.window as u64 => {
                        if waited.is_none() {
                            l.waiting.inc();
                            waited = Some(l.waiting.clone());
                        }
                    }
                    _ => break Room::Go,
                }
            }
            notified.await;
        };
        if let Some(w) = waited {
            w.dec();
        }
        room
    }

    /// Marks the body complete or failed (leader only; the first call wins).
    pub fn finish(&self, result: Result<(), FetchError>) {
        let going = {
            let mut s = self.state.lock().unwrap();
            s.done.get_or_insert(result);
            s.background.take()
        };
        drop(going);
        self.bump();
    }

    /// Waits for the response head.
    pub async fn head(&self) -> Result<Arc<FillHead>, FetchError> {
        let mut rx = self.version.subscribe();
        loop {
            if let Some(h) = self.state.lock().unwrap().head.clone() {
                return h;
            }
            // The sender is `self`, alive while this borrows it: `changed` cannot fail.
            let _ = rx.changed().await;
        }
    }

    /// A reader of the body from its first byte; `None` when that byte is gone (neither
    /// held nor stored: the caller fetches on its own). The leader's own request takes its
    /// reader before the body starts.
    pub fn reader(self: &Arc<Self>) -> Option<FillReader> {
        let mut s = self.state.lock().unwrap();
        if s.stopped || s.start > 0 && s.stored_upto < s.start {
            return None;
        }
        let id = s.next_reader;
        s.next_reader += 1;
        s.readers.push((id, 0));
        Some(FillReader {
            fill: self.clone(),
            id,
        })
    }
}

/// One reader's place in a fill; dropping it (or its body) lets the fill go on without it.
#[derive(Debug)]
pub struct FillReader {
    fill: Arc<Fill>,
    id: u64,
}

impl FillReader {
    /// The fill goes on without this reader.
    fn leave(&self) {
        self.fill
            .state
            .lock()
            .unwrap()
            .readers
            .retain(|r| r.0 != self.id);
        self.fill.room.notify_one();
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Where a reader's body stream is.
struct Reading {
    me: FillReader,
    rx: watch::Receiver<u64>,
    /// Body offset of the next byte (until detached).
    pos: u64,
    ended: bool,
    /// Set once the reader fell behind the window and the cache: the rest of the body,
    /// fetched on its own.
    detached: Option<BodyStream>,
}

/// What a reader takes next.
enum Next {
    Bytes(Bytes),
    /// From the cache: segment `i` of the segments `id`, up to body offset `end` (what was
    /// released: the last byte waits until the response is stored).
    Stored(Cache, [u8; 16], u32, u64, Option<Rest>),
    Failed(FetchError),
    End,
    Wait,
}

impl FillReader {
    /// The body from its first byte, as it arrives.
    pub fn body(self) -> impl Stream<Item = Result<Bytes, FetchError>> + Send + 'static {
        let start = Reading {
            rx: self.fill.version.subscribe(),
            me: self,
            pos: 0,
            ended: false,
            detached: None,
        };
        futures_util::stream::unfold(start, |mut r| async move {
            if r.ended {
                return None;
            }
            loop {
                if let Some(rest) = &mut r.detached {
                    use futures_util::StreamExt;
                    return match rest.next().await {
                        Some(Ok(b)) => Some((Ok(b), r)),
                        Some(Err(e)) => {
                            r.ended = true;
                            Some((Err(e), r))
                        }
                        None => None,
                    };
                }
                let pos = r.pos;
                let next = {
                    let s = r.me.fill.state.lock().unwrap();
                    if pos < s.start {
                        match &s.limits {
                            Some(FillLimits {
                                segments: Some((cache, id)),
                                rest,
                                ..
                            }) => {
                                let i = (pos / SEGMENT as u64) as u32;
                                Next::Stored(cache.clone(), *id, i, s.end, rest.clone())
                            }
                            _ => Next::Failed(fell_behind()),
                        }
                    } else if pos < s.end {
                        let i = s.parts.partition_point(|(o, _)| *o <= pos) - 1;
                        let (at, b) = &s.parts[i];
                        Next::Bytes(b.slice((pos - at) as usize..))
                    } else {
                        match &s.done {
                            Some(Ok(())) => Next::End,
                            Some(Err(e)) => Next::Failed(e.clone()),
                            None => Next::Wait,
                        }
                    }
                };
                let bytes = match next {
                    Next::Bytes(b) => b,
                    Next::Stored(cache, id, i, end, rest) => {
                        let first = i as u64 * SEGMENT as u64;
                        match cache.get(&segment_key(&id, i)).await {
                            Some((Value::Bytes(seg), _)) if first + seg.len() as u64 > pos => {
                                let to = seg.len().min((end - first) as usize);
                                seg.slice((pos - first) as usize..to)
                            }
                            _ => match rest {
                                // Evicted: the rest of the body on its own, and the fill
                                // goes on without this reader.
                                Some(Rest(fetch)) => {
                                    r.me.leave();
                                    r.detached = Some(fetch(pos));
                                    continue;
                                }
                                None => {
                                    r.ended = true;
                                    return Some((Err(fell_behind()), r));
                                }
                            },
                        }
                    }
                    Next::Failed(e) => {
                        r.ended = true;
                        return Some((Err(e), r));
                    }
                    Next::End => return None,
                    // The fill holds the sender: `changed` cannot fail while it lives.
                    Next::Wait => {
                        drop(r.rx.changed().await);
                        continue;
                    }
                };
                r.pos += bytes.len() as u64;
                {
                    let mut s = r.me.fill.state.lock().unwrap();
                    if let Some(x) = s.readers.iter_mut().find(|x| x.0 == r.me.id) {
                        x.1 = r.pos;
                    }
                }
                r.me.fill.room.notify_one();
                return Some((Ok(bytes), r));
            }
        })
    }
}

/// A reader that fell behind what the fill holds, whose bytes the cache no longer has.
fn fell_behind() -> FetchError {
    FetchError::new(
        FetchFailure::Body,
        "this reader fell behind the fill's window and the stored copy is gone",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalesce::{Flights, Join};
    use futures_util::StreamExt;

    #[tokio::test]
    async fn followers_see_every_byte_from_the_start_as_it_arrives() {
        let fills = Flights::<Key, Fill>::new(None);
        let key = Key([1; 32]);
        let Join::Lead(leader) = fills.join(key) else {
            panic!("first is the leader")
        };
        leader.flight().push(Bytes::from_static(b"ab"));
        let Join::Follow(j) = fills.join(key) else {
            panic!("second follows")
        };
        let mut body = Box::pin(j.reader().unwrap().body());
        assert_eq!(body.next().await.unwrap().unwrap(), "ab");
        let next = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(b) = body.next().await {
                all.extend_from_slice(&b.unwrap());
            }
            all
        });
        leader.flight().push(Bytes::from_static(b"cd"));
        leader.flight().finish(Ok(()));
        assert_eq!(next.await.unwrap(), b"cd");
        drop(leader);
        assert!(matches!(fills.join(key), Join::Lead(_)));
    }

    #[tokio::test]
    async fn a_stored_segment_takes_the_place_of_the_parts_it_covers_whole() {
        let fills = Flights::<Key, Fill>::new(None);
        let Join::Lead(leader) = fills.join(Key([4; 32])) else {
            panic!()
        };
        let frames: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 10])).collect();
        for f in &frames {
            leader.flight().push(f.clone());
        }
        // A segment of 25 bytes: the first two parts whole, the third in part.
        let seg = Bytes::from(frames.concat()).slice(..25);
        leader.flight().stored(0, &seg);
        let s = leader.flight().state.lock().unwrap();
        assert_eq!(s.stored_upto, 25);
        let inside = seg.as_ptr_range();
        for (i, (off, part)) in s.parts.iter().enumerate() {
            assert_eq!(*off, 10 * i as u64);
            assert_eq!(part[..], frames[i][..], "part {i} keeps its bytes");
            assert_eq!(inside.contains(&part.as_ptr()), i < 2, "part {i}");
        }
    }

    #[tokio::test]
    async fn a_failed_body_ends_followers_with_an_error() {
        let fills = Flights::<Key, Fill>::new(None);
        let Join::Lead(leader) = fills.join(Key([2; 32])) else {
            panic!()
        };
        let mut body = Box::pin(leader.flight().reader().unwrap().body());
        leader.flight().push(Bytes::from_static(b"x"));
        leader.flight().finish(Err(FetchError::new(
            crate::basics::error::FetchFailure::Body,
            "cut",
        )));
        assert!(body.next().await.unwrap().is_ok());
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_leader_dropped_before_its_head_fails_the_followers() {
        let fills = Flights::<Key, Fill>::new(None);
        let Join::Lead(leader) = fills.join(Key([3; 32])) else {
            panic!()
        };
        let Join::Follow(f) = fills.join(Key([3; 32])) else {
            panic!()
        };
        drop(leader);
        assert!(f.head().await.is_err());
        assert!(
            Box::pin(f.reader().unwrap().body())
                .next()
                .await
                .unwrap()
                .is_err()
        );
    }
}
