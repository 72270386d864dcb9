//! Request coalescing: one origin fetch per key, however many requests miss on it at once.
//!
//! The first request to miss on a key becomes the fill's leader: a task (not the request, so
//! a client that goes away does not cancel it) fetches the response and appends its body to
//! the [`Fill`] as it arrives. Every request that misses on the key meanwhile joins the fill
//! and streams the body from it, from the first byte, as it arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use crate::cache::Key;

/// The head of a response being filled.
#[derive(Debug, Clone)]
pub struct FillHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Whether the body will be stored (else joiners fetch on their own).
    pub storable: bool,
    /// The request header values the response varies by, as the leader sent them: a joiner
    /// whose values differ fetches on its own.
    pub vary: Vec<(String, Option<http::HeaderValue>)>,
    /// Set when the fill was a revalidation that the upstream answered `304`: the refreshed
    /// stored response, under `key`.
    pub revalidated: Option<Arc<crate::cache::Meta>>,
    /// The key the fill is for (or of the revalidated variant).
    pub key: Key,
}

#[derive(Debug, Default)]
struct State {
    head: Option<Result<Arc<FillHead>, FillError>>,
    parts: Vec<Bytes>,
    /// `Some(Ok)` when the body is complete, `Some(Err)` when it failed.
    done: Option<Result<(), FillError>>,
}

/// Why a fill failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// The origin could not be reached or did not answer in time.
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    /// The origin did not answer in time.
    #[error("origin timed out")]
    Timeout,
    /// The body broke off or did not match its framing.
    #[error("origin body failed: {0}")]
    Body(String),
}

/// One response being fetched, shared by every request waiting for it.
#[derive(Debug)]
pub struct Fill {
    /// A std mutex: held only to copy a few fields, never across an `.await`.
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Set when an unsafe request invalidated the key during the fill: its response must
    /// not stay in the cache.
    invalidated: std::sync::atomic::AtomicBool,
}

impl Fill {
    fn new() -> Fill {
        Fill {
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
            invalidated: Default::default(),
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Publishes the response head (leader only; the first call wins).
    pub fn set_head(&self, head: Result<FillHead, FillError>) {
        self.state
            .lock()
            .unwrap()
            .head
            .get_or_insert(head.map(Arc::new));
        self.bump();
    }

    /// Whether an unsafe request invalidated the key during this fill.
    pub fn is_invalidated(&self) -> bool {
        self.invalidated.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Appends body bytes (leader only).
    pub fn push(&self, bytes: Bytes) {
        self.state.lock().unwrap().parts.push(bytes);
        self.bump();
    }

    /// Marks the body complete or failed (leader only; the first call wins).
    pub fn finish(&self, result: Result<(), FillError>) {
        self.state.lock().unwrap().done.get_or_insert(result);
        self.bump();
    }

    /// Waits for the response head.
    pub async fn head(&self) -> Result<Arc<FillHead>, FillError> {
        let mut rx = self.version.subscribe();
        loop {
            if let Some(h) = self.state.lock().unwrap().head.clone() {
                return h;
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Body("fill dropped".into()));
            }
        }
    }

    /// The body from its first byte, as it arrives.
    pub fn body(self: &Arc<Self>) -> impl Stream<Item = Result<Bytes, FillError>> + Send + 'static {
        let rx = self.version.subscribe();
        futures_util::stream::unfold(
            (self.clone(), rx, 0usize, false),
            |(fill, mut rx, i, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let next = {
                        let s = fill.state.lock().unwrap();
                        if let Some(b) = s.parts.get(i) {
                            Some(Ok(b.clone()))
                        } else {
                            match &s.done {
                                Some(Ok(())) => return None,
                                Some(Err(e)) => Some(Err(e.clone())),
                                None => None,
                            }
                        }
                    };
                    match next {
                        Some(Ok(b)) => return Some((Ok(b), (fill, rx, i + 1, false))),
                        Some(Err(e)) => return Some((Err(e), (fill, rx, i, true))),
                        None => {
                            if rx.changed().await.is_err() {
                                return Some((
                                    Err(FillError::Body("fill dropped".into())),
                                    (fill, rx, i, true),
                                ));
                            }
                        }
                    }
                }
            },
        )
    }
}

/// The fills in progress, by key.
#[derive(Debug, Default)]
pub struct Fills {
    /// A std mutex: a map lookup or insert, never held across an `.await`.
    map: Mutex<HashMap<Key, Arc<Fill>>>,
}

/// The caller's role in a fill.
#[derive(Debug)]
pub enum Role {
    /// Start the fetch, then call [`Fills::done`].
    Leader(Arc<Fill>),
    /// Another request is fetching: read from its fill.
    Joiner(Arc<Fill>),
}

impl Fills {
    /// Joins the fill for `key`, or starts one.
    pub fn join(&self, key: Key) -> Role {
        let mut map = self.map.lock().unwrap();
        if let Some(f) = map.get(&key) {
            return Role::Joiner(f.clone());
        }
        let f = Arc::new(Fill::new());
        map.insert(key, f.clone());
        Role::Leader(f)
    }

    /// Marks the fill in progress for `key`, if any, as invalidated.
    pub fn invalidate(&self, key: &Key) {
        if let Some(f) = self.map.lock().unwrap().get(key) {
            f.invalidated
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Ends the fill for `key`: later misses start a new one (by then the cache has the
    /// response, if it was storable).
    pub fn done(&self, key: &Key, fill: &Arc<Fill>) {
        let mut map = self.map.lock().unwrap();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn joiners_see_every_byte_from_the_start_as_it_arrives() {
        let fills = Fills::default();
        let key = Key([1; 32]);
        let Role::Leader(leader) = fills.join(key) else {
            panic!("first is the leader")
        };
        leader.push(Bytes::from_static(b"ab"));
        let Role::Joiner(j) = fills.join(key) else {
            panic!("second joins")
        };
        let mut body = Box::pin(j.body());
        assert_eq!(body.next().await.unwrap().unwrap(), "ab");
        let next = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(b) = body.next().await {
                all.extend_from_slice(&b.unwrap());
            }
            all
        });
        leader.push(Bytes::from_static(b"cd"));
        leader.finish(Ok(()));
        assert_eq!(next.await.unwrap(), b"cd");
        fills.done(&key, &leader);
        assert!(matches!(fills.join(key), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_failed_body_ends_joiners_with_an_error() {
        let fills = Fills::default();
        let Role::Leader(leader) = fills.join(Key([2; 32])) else {
            panic!()
        };
        let mut body = Box::pin(leader.body());
        leader.push(Bytes::from_static(b"x"));
        leader.finish(Err(FillError::Body("cut".into())));
        assert!(body.next().await.unwrap().is_ok());
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
    }
}
