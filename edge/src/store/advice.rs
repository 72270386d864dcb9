//! Eviction advice: how a response about to be stored is kept. Policy stays apart from
//! storage (as foyer and pingora keep them): the tiers apply an [`Advice`] and never ask for
//! one; a backend asks its [`Advisor`] (the pipeline's plugin hooks, or none) before storing.

use http::HeaderValue;

use crate::store::entry::Key;

/// Which tiers an entry is stored in (the built-in policy is `Both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Memory only: never written to SSD.
    Memory,
    /// SSD only: never kept in memory (read back without being brought into memory).
    Disk,
    /// Memory, written behind to SSD.
    #[default]
    Both,
}

/// How a response is stored, as an eviction plugin advised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    /// Store it at all.
    pub admit: bool,
    pub target: Target,
    /// A freshness lifetime replacing the computed one, seconds.
    pub ttl_secs: Option<u64>,
    /// Evicted from memory before normal entries (where the policy supports hints).
    pub low_priority: bool,
}

/// What the edge knows of a response it is about to store.
#[derive(Debug)]
pub struct Candidate<'a> {
    pub key: &'a Key,
    pub path: &'a str,
    pub size: u64,
    pub content_type: Option<&'a HeaderValue>,
    pub status: u16,
    pub ttl_secs: u64,
}

/// Gives eviction advice for responses about to be stored.
///
/// Contract: called from any task, concurrently, before a store and never while a lock of
/// the cache is held; must not block for long (the plugin host bounds a call by its
/// deadline). `None` means "no advice": the built-in policy stores the response in both
/// tiers with its computed lifetime.
pub trait Advisor: Send + Sync + std::fmt::Debug {
    fn advise(&self, candidate: Candidate<'_>) -> Option<Advice>;
}

/// No advice: the built-in policy decides everything.
#[derive(Debug, Default)]
pub struct BuiltIn;

impl Advisor for BuiltIn {
    fn advise(&self, _: Candidate<'_>) -> Option<Advice> {
        None
    }
}
