//! Decisions reused: an `authorize` or `route` decision depends only on what the plugin read
//! (the WIT says so, and a plugin has no clock but `expired`, no randomness and no state it
//! may rely on). Each call records its reads in order with their answers; the decision is
//! filed in a tree whose inner nodes are reads and whose edges are answers. A request walks
//! the tree asking the same questions of itself; reaching a decision means the plugin,
//! called on it, would have read the same answers in the same order and decided the same.
//!
//! Never filed: a call that failed, read `now-ms` or logged (its log lines would vanish on
//! reuse), or whose reads contradict the tree (a plugin that is not a function of its
//! reads; its decisions are then not reused at all), or whose answers exceed 1 KiB (a
//! client's huge query string is not kept). The tree holds at most
//! [`crate::Limits::memo_entries`] decisions and is emptied when full. Filing costs about a
//! microsecond; when a full tree saw fewer reuses than it holds decisions (requests rarely
//! repeat what the plugin reads, say a new signed URL each time), filing pauses for eight
//! times as many calls before it tries again.

use std::borrow::Cow;

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Request;

/// Wall-clock time, Unix milliseconds (the `expired` reads compare against it; the sandbox's
/// `now-ms` host call returns it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Children by answer. foldhash: seeded per process, several times faster than SipHash on
/// paths and queries, which every reused decision hashes.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One question a plugin asked during a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    Method,
    Scheme,
    Authority,
    Path,
    Query,
    Header(String),
    HeaderValues(String),
    Headers,
    Client,
    Protocol,
    /// `expired(unix-ms)`: asked of the clock again at every reuse.
    Expired(u64),
}

impl Read {
    /// The answer `req` gives (now), as the string the tree files it under; `None` for an
    /// absent query or header. Lists are joined by newlines, which no header value holds.
    pub(crate) fn answer<'a>(&self, req: &'a Request) -> Option<Cow<'a, str>> {
        Some(match self {
            Read::Method => Cow::Borrowed(req.method.as_str()),
            Read::Scheme => Cow::Borrowed(if req.tls { "https" } else { "http" }),
            Read::Authority => req.authority(),
            Read::Path => Cow::Borrowed(req.uri.path()),
            Read::Query => Cow::Borrowed(req.uri.query()?),
            Read::Header(name) => Cow::Borrowed(req.header(name)?),
            Read::HeaderValues(name) => {
                let values: Vec<&str> = req.header_values(name).collect();
                // None for no values, so that one empty value is not mistaken for none.
                if values.is_empty() {
                    return None;
                }
                Cow::Owned(values.join("\n"))
            }
            Read::Headers => Cow::Owned(
                req.header_pairs()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Read::Client => Cow::Owned(req.client.to_string()),
            Read::Protocol => Cow::Borrowed(match req.protocol {
                crate::Protocol::Http1 => "http1",
                crate::Protocol::Http2 => "http2",
                crate::Protocol::Http3 => "http3",
            }),
            Read::Expired(at) => Cow::Borrowed(if now_ms() >= *at { "1" } else { "0" }),
        })
    }
}

/// What one call read, in order, and whether its decision may be filed.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub reads: Vec<(Read, Option<String>)>,
    /// It read `now-ms`, logged or made too many reads.
    pub unfileable: bool,
}

/// Longest trace filed, counting the answers' bytes: a full tree holds at most
/// `memo_entries` times this in answers (16 MiB at the default), whatever clients send.
pub(crate) const TRACE_BYTES_MAX: usize = 1024;

impl Trace {
    pub(crate) fn bytes(&self) -> usize {
        self.reads
            .iter()
            .map(|(_, a)| a.as_ref().map_or(0, String::len))
            .sum()
    }

    pub fn clear(&mut self) {
        self.reads.clear();
        self.unfileable = false;
    }
}

enum Node<R> {
    /// The plugin's next question, and where each answer leads.
    Ask {
        read: Read,
        some: HashMap<Box<str>, Node<R>>,
        none: Option<Box<Node<R>>>,
    },
    /// The decision reached.
    Decided(R),
}

struct Tree<R> {
    root: Option<Node<R>>,
    entries: usize,
    /// Set when a trace contradicted the tree: nothing is reused for this version.
    broken: bool,
}

impl<R> Tree<R> {
    /// Empties the tree; the caller drops what it returns after releasing the lock, so
    /// other requests' lookups do not wait for the freeing.
    fn take(&mut self) -> Option<Node<R>> {
        self.entries = 0;
        self.root.take()
    }
}

/// The decisions of one deployed version.
pub(crate) struct Memo<R> {
    tree: RwLock<Tree<R>>,
    max: usize,
    /// Reuses counted when the tree was last emptied (the plugin's reuse counter's value).
    reused_at_clear: AtomicU64,
    /// Decisions left to not file before filing again.
    paused: AtomicU64,
}

impl<R: Clone> Memo<R> {
    pub fn new(max: usize) -> Memo<R> {
        Memo {
            tree: RwLock::new(Tree {
                root: None,
                entries: 0,
                broken: false,
            }),
            max,
            reused_at_clear: AtomicU64::new(0),
            paused: AtomicU64::new(0),
        }
    }

    /// The decision the plugin would make on `req`, if one was filed for its answers.
    pub fn lookup(&self, req: &Request) -> Option<R> {
        if self.max == 0 {
            return None;
        }
        let tree = self.tree.read().unwrap_or_else(|e| e.into_inner());
        let mut node = tree.root.as_ref()?;
        loop {
            match node {
                Node::Decided(r) => return Some(r.clone()),
                Node::Ask { read, some, none } => {
                    node = match read.answer(req) {
                        Some(a) => some.get(a.as_ref())?,
                        None => none.as_deref()?,
                    };
                }
            }
        }
    }

    /// Files `decision`, reached by a call that read `trace`; `reused` is how many
    /// decisions of this memo were reused so far.
    pub fn file(&self, trace: &Trace, decision: &R, reused: u64) {
        if self.max == 0 || trace.unfileable || trace.bytes() > TRACE_BYTES_MAX {
            return;
        }
        if self
            .paused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1))
            .is_ok()
        {
            return;
        }
        let mut tree = self.tree.write().unwrap_or_else(|e| e.into_inner());
        if tree.broken {
            return;
        }
        if tree.entries >= self.max {
            let full = tree.take();
            let since = reused.saturating_sub(self.reused_at_clear.swap(reused, Ordering::Relaxed));
            if since < self.max as u64 {
                self.paused.store(self.max as u64 * 8, Ordering::Relaxed);
            }
            drop(tree);
            drop(full);
            return;
        }
        let tree = &mut *tree;
        match file_into(&mut tree.root, &trace.reads, decision) {
            Filed::New => tree.entries += 1,
            Filed::Known => {}
            Filed::Contradicts => {
                tree.broken = true;
                tree.take();
            }
        }
    }

    /// Forgets every decision (a version kept only for rollback holds no memory).
    pub fn clear(&self) {
        let mut tree = self.tree.write().unwrap_or_else(|e| e.into_inner());
        let old = tree.take();
        drop(tree);
        drop(old);
    }

    /// Decisions filed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tree.read().unwrap().entries
    }
}

enum Filed {
    New,
    Known,
    Contradicts,
}

fn file_into<R: Clone>(
    slot: &mut Option<Node<R>>,
    reads: &[(Read, Option<String>)],
    decision: &R,
) -> Filed {
    let Some(node) = slot else {
        *slot = Some(chain(reads, decision));
        return Filed::New;
    };
    let mut node = node;
    let mut reads = reads;
    loop {
        match (node, reads.split_first()) {
            (Node::Decided(_), None) => return Filed::Known,
            (Node::Ask { read, some, none }, Some(((r, answer), rest))) if read == r => {
                let next = match answer {
                    Some(a) => {
                        if !some.contains_key(a.as_str()) {
                            some.insert(a.as_str().into(), chain(rest, decision));
                            return Filed::New;
                        }
                        some.get_mut(a.as_str()).expect("just checked")
                    }
                    None => match none {
                        Some(n) => n.as_mut(),
                        None => {
                            *none = Some(Box::new(chain(rest, decision)));
                            return Filed::New;
                        }
                    },
                };
                node = next;
                reads = rest;
            }
            // Another question after the same answers, or a decision where the tree asks
            // on (or the reverse): the plugin is not a function of its reads.
            _ => return Filed::Contradicts,
        }
    }
}

/// The nodes for `reads` leading to `decision`.
fn chain<R>(reads: &[(Read, Option<String>)], decision: &R) -> Node<R>
where
    R: Clone,
{
    let mut node = Node::Decided(decision.clone());
    for (read, answer) in reads.iter().rev() {
        let (mut some, mut none) = (HashMap::default(), None);
        match answer {
            Some(a) => {
                some.insert(a.as_str().into(), node);
            }
            None => none = Some(Box::new(node)),
        }
        node = Node::Ask {
            read: read.clone(),
            some,
            none,
        };
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, header: Option<&str>) -> Request {
        let mut r = Request {
            uri: path.parse().unwrap(),
            ..Request::default()
        };
        if let Some(v) = header {
            r.headers.insert("x-a", v.parse().unwrap());
        }
        r
    }

    fn trace(reads: &[(Read, Option<&str>)]) -> Trace {
        Trace {
            reads: reads
                .iter()
                .map(|(r, a)| (r.clone(), a.map(str::to_string)))
                .collect(),
            unfileable: false,
        }
    }

    #[test]
    fn a_decision_is_reused_only_where_every_read_answers_the_same() {
        let m = Memo::<u32>::new(100);
        let h = || Read::Header("x-a".into());
        m.file(&trace(&[(Read::Path, Some("/a")), (h(), Some("1"))]), &1, 0);
        m.file(&trace(&[(Read::Path, Some("/a")), (h(), None)]), &2, 0);
        m.file(&trace(&[(Read::Path, Some("/b"))]), &3, 0);
        assert_eq!(m.len(), 3);
        assert_eq!(m.lookup(&req("/a", Some("1"))), Some(1));
        assert_eq!(m.lookup(&req("/a", None)), Some(2));
        assert_eq!(
            m.lookup(&req("/a", Some("2"))),
            None,
            "an answer never seen"
        );
        assert_eq!(
            m.lookup(&req("/b", Some("9"))),
            Some(3),
            "x-a was not read for /b"
        );
        assert_eq!(m.lookup(&req("/c", None)), None);
        // Filing the same again adds nothing.
        m.file(&trace(&[(Read::Path, Some("/b"))]), &3, 0);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn expiry_is_asked_of_the_clock_at_every_reuse() {
        let m = Memo::<&str>::new(100);
        let past = now_ms() - 1;
        let future = now_ms() + 3_600_000;
        m.file(&trace(&[(Read::Expired(past), Some("1"))]), &"deny", 0);
        assert_eq!(m.lookup(&req("/", None)), Some("deny"));
        let m = Memo::<&str>::new(100);
        m.file(&trace(&[(Read::Expired(past), Some("0"))]), &"allow", 0);
        assert_eq!(
            m.lookup(&req("/", None)),
            None,
            "filed before expiry, now expired"
        );
        m.file(&trace(&[(Read::Expired(future), Some("0"))]), &"allow", 0);
        assert_eq!(
            m.lookup(&req("/", None)),
            None,
            "another question at the root"
        );
    }

    #[test]
    fn unfileable_contradicting_and_overfull_traces() {
        let m = Memo::<u32>::new(2);
        let mut t = trace(&[(Read::Path, Some("/a"))]);
        t.unfileable = true;
        m.file(&t, &1, 0);
        assert_eq!(m.lookup(&req("/a", None)), None, "read now-ms or logged");
        m.file(&trace(&[(Read::Path, Some("/a"))]), &1, 0);
        m.file(&trace(&[(Read::Path, Some("/b"))]), &2, 0);
        for _ in 0..2 {
            assert_eq!(m.lookup(&req("/a", None)), Some(1));
        }
        m.file(&trace(&[(Read::Path, Some("/c"))]), &3, 2);
        assert_eq!(m.len(), 0, "emptied when full");
        m.file(&trace(&[(Read::Path, Some("/c"))]), &3, 2);
        assert_eq!(
            m.lookup(&req("/c", None)),
            Some(3),
            "reused enough: filing goes on"
        );
        m.file(&trace(&[(Read::Path, Some("/d"))]), &4, 3);
        m.file(&trace(&[(Read::Path, Some("/e"))]), &5, 3);
        assert_eq!(m.len(), 0, "full again, after one reuse for two decisions");
        for _ in 0..16 {
            m.file(&trace(&[(Read::Path, Some("/f"))]), &6, 3);
            assert_eq!(m.len(), 0, "paused for 8 x 2 decisions");
        }
        m.file(&trace(&[(Read::Path, Some("/f"))]), &6, 0);
        assert_eq!(m.lookup(&req("/f", None)), Some(6), "filing again");
        m.file(&trace(&[(Read::Query, None)]), &4, 0);
        assert_eq!(
            m.lookup(&req("/c", None)),
            None,
            "a contradiction stops reuse"
        );
        m.file(&trace(&[(Read::Path, Some("/c"))]), &3, 0);
        assert_eq!(m.len(), 0);
        let m = Memo::<u32>::new(10);
        let long = "/".repeat(TRACE_BYTES_MAX + 1);
        m.file(&trace(&[(Read::Path, Some(&long))]), &1, 0);
        assert_eq!(m.len(), 0, "answers too long to keep");
        let off = Memo::<u32>::new(0);
        off.file(&trace(&[(Read::Path, Some("/a"))]), &1, 0);
        assert_eq!(off.lookup(&req("/a", None)), None);
    }
}
