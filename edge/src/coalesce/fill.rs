//! A streaming fill: one upstream response being fetched, shared by every request waiting
//! for it. The leader (a task of its own, so a client that goes away does not cancel it)
//! publishes the head, then appends the body as it arrives; followers stream the body from
//! its first byte as it arrives.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::watch;

use crate::basics::error::FetchError;
use crate::coalesce::Flight;
use crate::store::entry::{Key, Meta};

/// The head of a response being filled.
#[derive(Debug, Clone)]
pub struct FillHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Whether the body will be stored (else followers fetch on their own).
    pub storable: bool,
    /// The request header values the response varies by, as the leader sent them: a
    /// follower whose values differ fetches on its own.
    pub vary: Vec<(String, Option<HeaderValue>)>,
    /// Set when the fill was a revalidation that the upstream answered `304`: the refreshed
    /// stored response, under `key`.
    pub revalidated: Option<Arc<Meta>>,
    /// The key the fill is for (or of the revalidated variant).
    pub key: Key,
}

#[derive(Debug, Default)]
struct State {
    head: Option<Result<Arc<FillHead>, FetchError>>,
    parts: Vec<Bytes>,
    /// `Some(Ok)` when the body is complete, `Some(Err)` when it failed.
    done: Option<Result<(), FetchError>>,
}

/// One response being fetched.
#[derive(Debug)]
pub struct Fill {
    /// A std mutex: held only to copy a few fields, never across an `.await`.
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Set when an unsafe request invalidated the key during the fill: its response must
    /// not stay in the cache.
    invalidated: std::sync::atomic::AtomicBool,
}

impl Flight for Fill {
    fn new() -> Fill {
        Fill {
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
            invalidated: Default::default(),
        }
    }

    fn abandon(&self) {
        self.set_head(Err(FetchError::abandoned()));
        self.finish(Err(FetchError::abandoned()));
    }
}

impl Fill {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
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
        self.state.lock().unwrap().parts.push(bytes);
        self.bump();
    }

    /// Marks the body complete or failed (leader only; the first call wins).
    pub fn finish(&self, result: Result<(), FetchError>) {
        self.state.lock().unwrap().done.get_or_insert(result);
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

    /// The body from its first byte, as it arrives.
    pub fn body(
        self: &Arc<Self>,
    ) -> impl Stream<Item = Result<Bytes, FetchError>> + Send + 'static {
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
                        // The fill holds the sender: `changed` cannot fail while it lives.
                        None => drop(rx.changed().await),
                    }
                }
            },
        )
    }
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
        let mut body = Box::pin(j.body());
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
    async fn a_failed_body_ends_followers_with_an_error() {
        let fills = Flights::<Key, Fill>::new(None);
        let Join::Lead(leader) = fills.join(Key([2; 32])) else {
            panic!()
        };
        let mut body = Box::pin(leader.flight().body());
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
        assert!(Box::pin(f.body()).next().await.unwrap().is_err());
    }
}
