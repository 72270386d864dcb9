//! Layer 3, coalescing: one fetch per key however many requests miss on it at once.
//!
//! One primitive, [`Flights`]: [`Flights::join`] makes the caller the leader of the flight
//! for a key, holding its [`Permit`], or a follower holding the flight's shared state. The
//! leader fills the state; dropping the permit ends the flight — followers still waiting are
//! told it was abandoned, and the next miss starts a new one — so a leader that fails,
//! panics or is cancelled can never leave followers waiting (pingora's `CacheLock` write
//! permit works the same way). The state is a [`Once`] for a value (a manifest, a chunk) or
//! a streaming [`fill::Fill`] (an upstream response, whose body followers read as it arrives).
//! Followers are counted in `tessera_edge_coalesced_total` here, for the flights that
//! stand for requests.

pub mod fill;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use tokio::sync::watch;

use crate::basics::error::FetchError;

/// The state a flight's leader fills and its followers read.
pub trait Flight: Send + Sync + 'static {
    fn new() -> Self;
    /// The leader went away before finishing: what followers still wait for fails.
    fn abandon(&self);
}

/// The flights in progress, by key. Cheap to clone (clones share the flights).
#[derive(Debug)]
pub struct Flights<K, S> {
    /// A std mutex: a map lookup, insert or remove, never held across an `.await`.
    map: Arc<Mutex<HashMap<K, Arc<S>>>>,
    /// Counts followers (`None`: flights that are not requests, such as chunk fetches).
    coalesced: Option<IntCounter>,
}

impl<K, S> Clone for Flights<K, S> {
    fn clone(&self) -> Self {
        Flights {
            map: self.map.clone(),
            coalesced: self.coalesced.clone(),
        }
    }
}

/// The caller's part in a flight.
#[derive(Debug)]
pub enum Join<K: Hash + Eq + Clone, S: Flight> {
    /// Nobody is fetching this key: fetch it, fill the flight, then drop the permit.
    Lead(Permit<K, S>),
    /// Another request is fetching it: read its flight.
    Follow(Arc<S>),
}

/// The leader's right to fill a flight; dropping it ends the flight.
#[derive(Debug)]
pub struct Permit<K: Hash + Eq + Clone, S: Flight> {
    map: Arc<Mutex<HashMap<K, Arc<S>>>>,
    key: K,
    flight: Arc<S>,
}

impl<K: Hash + Eq + Clone, S: Flight> Permit<K, S> {
    /// The flight this permit fills.
    pub fn flight(&self) -> &Arc<S> {
        &self.flight
    }

    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Hash + Eq + Clone, S: Flight> Drop for Permit<K, S> {
    fn drop(&mut self) {
        // A no-op for a flight already filled (the first result wins).
        self.flight.abandon();
        let mut map = self.map.lock().unwrap();
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq + Clone, S: Flight> Flights<K, S> {
    /// No flights yet; followers counted in `coalesced`, when given.
    pub fn new(coalesced: Option<IntCounter>) -> Self {
        Flights {
            map: Default::default(),
            coalesced,
        }
    }

    /// Joins the flight for `key`, or starts one.
    pub fn join(&self, key: K) -> Join<K, S> {
        let mut map = self.map.lock().unwrap();
        if let Some(f) = map.get(&key) {
            if let Some(c) = &self.coalesced {
                c.inc();
            }
            return Join::Follow(f.clone());
        }
        let flight = Arc::new(S::new());
        map.insert(key.clone(), flight.clone());
        Join::Lead(Permit {
            map: self.map.clone(),
            key,
            flight,
        })
    }

    /// The flight in progress for `key`, if any.
    pub fn get(&self, key: &K) -> Option<Arc<S>> {
        self.map.lock().unwrap().get(key).cloned()
    }
}

impl<K, V> Flights<K, Once<Result<V, FetchError>>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The value of the flight for `key`: joined, or led by running `fetch` on a task of its
    /// own, so that a caller that goes away does not cancel it for the others.
    pub async fn shared(
        &self,
        key: K,
        fetch: impl std::future::Future<Output = Result<V, FetchError>> + Send + 'static,
    ) -> Result<V, FetchError> {
        let once = match self.join(key) {
            Join::Follow(once) => once,
            Join::Lead(permit) => {
                let once = permit.flight().clone();
                tokio::spawn(async move { permit.flight().set(fetch.await) });
                once
            }
        };
        once.wait().await
    }
}

/// A value set once by a flight's leader and read by any number of followers.
#[derive(Debug)]
pub struct Once<T> {
    value: watch::Sender<Option<T>>,
}

impl<T: Clone + Send + Sync> Once<T> {
    /// Sets the value (the first call wins).
    pub fn set(&self, v: T) {
        self.value.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(v);
            true
        });
    }

    /// Waits for the value.
    pub async fn wait(&self) -> T {
        let mut rx = self.value.subscribe();
        loop {
            if let Some(v) = rx.borrow_and_update().clone() {
                return v;
            }
            // The sender is `self`, alive while this borrows it: `changed` cannot fail.
            let _ = rx.changed().await;
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Flight for Once<Result<V, FetchError>> {
    fn new() -> Self {
        Once {
            value: watch::channel(None).0,
        }
    }

    fn abandon(&self) {
        self.set(Err(FetchError::abandoned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type ValueFlights = Flights<u32, Once<Result<u32, FetchError>>>;

    #[tokio::test]
    async fn followers_get_the_leaders_value_and_are_counted() {
        let counter = IntCounter::new("c", "c").unwrap();
        let flights = ValueFlights::new(Some(counter.clone()));
        let Join::Lead(permit) = flights.join(1) else {
            panic!("the first is the leader")
        };
        let Join::Follow(f) = flights.join(1) else {
            panic!("the second follows")
        };
        let waiting = tokio::spawn(async move { f.wait().await });
        permit.flight().set(Ok(7));
        drop(permit);
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        assert_eq!(counter.get(), 1);
        assert!(
            matches!(flights.join(1), Join::Lead(_)),
            "a dropped permit ends the flight"
        );
    }

    #[tokio::test]
    async fn a_dropped_permit_abandons_what_followers_wait_for() {
        let flights = ValueFlights::new(None);
        let Join::Lead(permit) = flights.join(2) else {
            panic!()
        };
        let Join::Follow(f) = flights.join(2) else {
            panic!()
        };
        drop(permit);
        let e = f.wait().await.unwrap_err();
        assert_eq!(e.failure, crate::basics::error::FetchFailure::Abandoned);
        assert!(flights.get(&2).is_none());
    }
}
