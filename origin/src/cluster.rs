//! An origin cluster: files and chunks placed on several nodes by a consistent-hash ring
//! ([`tessera_origin_proto::ring`]) with a replication factor.
//!
//! # Placement and the write rule
//! Each chunk lives on the first `replication` nodes of its preference list, each file
//! record (manifest or tombstone) on the first `replication` nodes of its path's. A node
//! that is down is skipped and the next node of the list stands in (hinted handoff), so a
//! publish still makes `replication` copies of everything; repair later moves the copies to
//! the owners. **Write rule:** a publish (or delete) succeeds when every chunk is durable
//! (fsynced and committed) on `replication` distinct live nodes and the file record on
//! `replication` distinct live nodes; with fewer live nodes than that it fails with `503`
//! before writing anything. A publish that fails part-way is never visible: the record is
//! written last, and the fragments it left are dropped (at once, or by repair).
//!
//! # Versions
//! A file version is `(stamp, upload id)`, newest wins. Stamps come from a hybrid logical
//! clock ([`Cluster::stamp`]): a node's wall clock, pushed past every stamp it issued or saw;
//! every request between nodes and every answer carries the sender's clock
//! ([`tessera_origin_proto::client::CLOCK_HEADER`]), and a publish or delete reads the
//! path's record from its owners before it stamps. A write that follows another is ordered
//! after it whatever the wall clocks say.
//!
//! # What each node keeps
//! Chunks, fragments (which chunks of which file version this node holds, see
//! [`crate::store::cluster`]) and the file records it owns. Garbage collection is local and
//! exact: a chunk goes when no fragment on its node names it.
//!
//! # Reads
//! Any node answers any read: the file record from its owners (the newest of them wins),
//! chunks from the node itself or from the nodes of the chunk's preference list in order.
//! Requests between nodes carry [`HOP_HEADER`] and are answered locally, never forwarded.
//!
//! # Membership
//! The members are a [`Membership`] at an epoch: the configured nodes are epoch 0, each
//! live change ([`Cluster::change_members`], `tessera cluster add|remove`) the next one.
//! The node asked coordinates: it adopts the new epoch and sends it to every node, old and
//! new; each node's peer checks read the others' membership and adopt a newer one, so a
//! node that missed the change catches up. Each node keeps the membership in its store.
//! Adopting rebuilds the ring (nodes keep their indexes: a removed one is absent, see
//! [`Ring::without`]) and the digests, and starts a full repair pass: it moves what the
//! node holds to the new owners (paced by [`ClusterConfig::repair_bytes_per_sec`]), and
//! once it left nothing waiting the node has *moved* its data for that epoch. Until every
//! member (and every removed node still reachable) has, the membership keeps the previous
//! members and reads also ask the previous owners; then it *settles*, and a next change
//! may start (one at a time: a change while data moves is refused).
//!
//! # Repair and scrub
//! [`Cluster::repair`] (every `repair_interval_secs`, and on `POST /api/v1/cluster/repair`)
//! costs what changed. It compares this node's anti-entropy digests with each live peer's
//! ([`crate::digest`]: XOR digests per bucket of paths over what both should hold, kept up
//! to date from the store's change events), lists the items of the buckets that differ,
//! and looks only at the paths whose items differ and at the paths changed here since the
//! last pass (fragments received, hinted copies, versions a publish or delete superseded).
//! For those it pushes records and chunks to owners that lack them, drops what this node
//! holds but no longer owns once its owners have it, and drops fragments of versions
//! superseded or deleted longer ago than [`ClusterConfig::superseded_grace_secs`] (or of
//! failed publishes). So a pass over an unchanged cluster exchanges digests and nothing
//! else. A full pass (every [`ClusterConfig::full_repair_secs`], or `?full=1`) also looks
//! at every record and fragment this node holds, for what no digest shows: expired
//! tombstones, and versions superseded while every holder of their fragments missed the
//! news. [`Cluster::scrub`] reads every chunk at a bounded rate, checks it against its
//! blake3 and replaces a corrupt one with a replica's copy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::{Deserialize, Serialize};
pub use tessera_origin_proto::client::HOP_HEADER;
use tessera_origin_proto::client::{UploadBody, encode_path, full};
use tessera_origin_proto::ring::{Ring, RingNode};
use tessera_origin_proto::{ChunkHash, Manifest, ManifestChunk, OriginClient, PublishReply};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chunker::Chunker;
use crate::digest::{Digests, Listed, SyncEvent, SyncItem};
use crate::metrics::Metrics;
use crate::store::cluster::{FileRecord, Fragment, fragment_key};
use crate::store::{Store, StoreError};

/// One node of the cluster as the others reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddr {
    /// The node's id (`o1`): what the ring hashes.
    pub id: String,
    /// Its origin API, `http://HOST:PORT`.
    pub url: String,
    /// Relative capacity (virtual nodes × weight).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// The cluster part of an origin node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id; must be one of `nodes`.
    pub me: String,
    /// Every origin node, this one included.
    pub nodes: Vec<NodeAddr>,
    /// Copies of each chunk and file record.
    pub replication: usize,
    /// Ring points per node and unit of weight.
    pub vnodes: u32,
    /// Seconds between background repair passes (0: only on request).
    pub repair_interval_secs: u64,
    /// Bytes per second the background scrub reads and verifies (0: no scrub).
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub scrub_bytes_per_sec: u64,
    /// How long a delete's tombstone is kept, so that a node that was down during the
    /// delete cannot bring the file back.
    pub tombstone_secs: u64,
    /// Fragments of a version with no file record yet (a publish in flight) are kept this
    /// long before repair treats them as left by a failed publish.
    pub fragment_grace_secs: u64,
    /// A version replaced by a newer one, or deleted, keeps its fragments (and so its
    /// chunks) this long after it was, so reads that started on it finish (as a file
    /// unlinked on a filesystem stays readable while it is open); repair drops them
    /// afterwards. 0: they are dropped at once, everywhere.
    pub superseded_grace_secs: u64,
    /// Seconds a node call may take before the node is treated as down for that call.
    pub call_timeout_secs: u64,
    /// Seconds between full repair passes, which also look at what the digests vouch for
    /// (expired tombstones, versions whose supersession every holder missed); 0: never.
    pub full_repair_secs: u64,
    /// Bytes per second repair copies to other nodes (chunks handed to their owners, and
    /// all the data a membership change moves), so that reads and publishes go on at
    /// speed meanwhile; 0: unbounded.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub repair_bytes_per_sec: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            me: String::new(),
            nodes: Vec::new(),
            replication: 2,
            vnodes: 1024,
            repair_interval_secs: 30,
            scrub_bytes_per_sec: 32 << 20,
            tombstone_secs: 7 * 24 * 3600,
            fragment_grace_secs: 600,
            superseded_grace_secs: 600,
            call_timeout_secs: 10,
            full_repair_secs: 24 * 3600,
            repair_bytes_per_sec: 64 << 20,
        }
    }
}

/// Why a cluster operation failed; the server maps these to statuses.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not enough live nodes for the write rule.
    #[error("only {live} of {nodes} origin nodes are reachable; writes need {needed}")]
    TooFewNodes {
        live: usize,
        nodes: usize,
        needed: usize,
    },
    /// A node failed during an operation.
    #[error("origin node {node} failed: {why}")]
    Node { node: String, why: String },
    /// A node the write needs has no disk space left: nothing of it is visible.
    #[error("origin node {node} has no disk space left, nothing was published: {why}")]
    DiskFull { node: String, why: String },
    /// No node could serve a chunk the manifest names.
    #[error("no origin node could serve chunk {0}")]
    ChunkUnavailable(ChunkHash),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client sent something wrong.
    #[error("{0}")]
    BadInput(String),
    /// The request conflicts with the cluster's state (a membership change in progress).
    #[error("{0}")]
    Conflict(String),
}

/// A record write that reached fewer nodes than the write rule asks.
#[derive(Debug)]
struct RecordError {
    /// Nodes that did store it.
    written: usize,
    error: ClusterError,
}

/// Paths a repair pass works on at once.
const REPAIR_CONCURRENCY: usize = 16;

/// What the last repair pass found and did, for `GET /api/v1/cluster` and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Unix seconds when the pass finished (0: none yet).
    pub finished: u64,
    /// Records checked, and copies pushed to owners that lacked them.
    pub records: u64,
    pub records_copied: u64,
    /// Fragments checked.
    pub fragments: u64,
    /// Chunk copies an owner lacked (under-replication found), copies pushed, and copies
    /// that could not be pushed because the owner was down.
    pub chunks_missing: u64,
    pub chunks_copied: u64,
    pub chunks_waiting: u64,
    /// Chunk references dropped here because this node no longer owns them.
    pub chunks_moved_off: u64,
    /// Fragments of superseded or failed versions dropped.
    pub fragments_dropped: u64,
    /// Errors met (each also logged).
    pub errors: u64,
    /// Whether the pass looked at everything this node holds, not only what changed.
    pub full: bool,
    /// Peers whose digests were compared, and digest buckets found differing.
    pub peers_compared: u64,
    pub buckets_differing: u64,
    /// Paths looked at: changed here since the last pass, or differing from a peer.
    pub paths: u64,
    /// Whether the pass was a resynchronisation ([`Cluster::resync`]), and the records it
    /// dropped as deleted while this node was away.
    pub resynchronising: bool,
    pub records_dropped: u64,
}

impl RepairReport {
    /// Adds the counts of `o`, the part of a pass that looked at one path.
    fn add(&mut self, o: &RepairReport) {
        self.records += o.records;
        self.records_copied += o.records_copied;
        self.fragments += o.fragments;
        self.chunks_missing += o.chunks_missing;
        self.chunks_copied += o.chunks_copied;
        self.chunks_waiting += o.chunks_waiting;
        self.chunks_moved_off += o.chunks_moved_off;
        self.fragments_dropped += o.fragments_dropped;
        self.errors += o.errors;
    }
}

#[derive(Debug)]
struct Peer {
    id: String,
    client: OriginClient,
    alive: AtomicBool,
    /// The membership epoch it last reported, and the epoch whose data it has moved
    /// ([`Membership`]), from its answers to the peer checks.
    epoch: AtomicU64,
    moved: AtomicU64,
}

/// The members of a cluster at one epoch. The configured nodes are epoch 0; each live
/// change (`tessera cluster add|remove`, [`Cluster::change_members`]) makes the next epoch,
/// which every node keeps in its store and passes on to the others: the newest epoch wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    pub epoch: u64,
    /// The members, in the order they joined.
    pub nodes: Vec<NodeAddr>,
    /// The members before the last change, while its data is moving: reads also ask
    /// their owners under it. `None` once every node has moved its data.
    #[serde(default)]
    pub previous: Option<Vec<NodeAddr>>,
}

impl Membership {
    /// Every node it names: the members, then the previous members.
    fn named(&self) -> impl Iterator<Item = &NodeAddr> {
        self.nodes.iter().chain(self.previous.iter().flatten())
    }

    /// Whether it names node `id`, as a member or a previous one.
    fn names(&self, id: &str) -> bool {
        self.named().any(|n| n.id == id)
    }
}

/// A membership change asked of `POST /api/v1/cluster/members`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum MemberChange {
    /// A new node (started, reachable, empty or not).
    Add(NodeAddr),
    /// A member to take out: its data moves to the others; it can be stopped once
    /// `tessera cluster status` shows the change settled.
    Remove(String),
}

/// What this node keeps of the membership across restarts.
#[derive(Debug, Serialize, Deserialize)]
struct SavedMembership {
    membership: Membership,
    moved: u64,
}

/// Where the membership is kept in the store.
const MEMBERSHIP_KEY: &str = "membership";

/// The cluster as this node sees it at one epoch. Nodes are never renumbered: one that
/// joins is appended, one that leaves stays absent from the ring ([`Ring::without`]), so
/// an index taken from one view is valid in every later one.
#[derive(Debug)]
struct View {
    membership: Membership,
    /// Every node this process has known, members or not.
    peers: Vec<Arc<Peer>>,
    ring: Arc<Ring>,
    /// The ring of `membership.previous`, while data moves.
    previous: Option<Arc<Ring>>,
}

impl View {
    /// Indexes of the members, and of the previous members while data moves.
    fn in_play(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&i| {
                self.ring.contains(i) || self.previous.as_ref().is_some_and(|r| r.contains(i))
            })
            .collect()
    }
}

/// The cluster state of one origin node.
#[derive(Debug)]
pub struct Cluster {
    /// This node's index (stable, see [`View`]) and id.
    me: usize,
    me_id: String,
    /// The current membership, ring and peers.
    view: RwLock<Arc<View>>,
    /// One membership change at a time on this node.
    changing: tokio::sync::Mutex<()>,
    /// The newest epoch whose data this node has moved: a full repair pass at that epoch
    /// left nothing waiting.
    moved: AtomicU64,
    /// Wakes the repair loop (a membership change wants a pass now).
    kick: tokio::sync::Notify,
    /// Paces repair's copies to other nodes ([`ClusterConfig::repair_bytes_per_sec`]).
    pacer: tokio::sync::Mutex<tokio::time::Instant>,
    token: Option<String>,
    cfg: ClusterConfig,
    store: Arc<Store>,
    metrics: Metrics,
    /// The hybrid logical clock: the newest stamp this node issued or saw ([`Self::stamp`]).
    clock: Hlc,
    report: Mutex<RepairReport>,
    /// One repair pass at a time.
    repairing: tokio::sync::Mutex<()>,
    /// Anti-entropy digests against each peer ([`crate::digest`]), rebuilt when the ring
    /// changes.
    digests: Arc<RwLock<Arc<Digests>>>,
    /// Paths the next repair pass looks at.
    dirty: Arc<Mutex<Dirty>>,
    /// Unix seconds of the last full repair pass (0: none).
    last_full: AtomicU64,
    /// When a peer last answered (Unix ms): this node was in contact with its cluster.
    contact: AtomicU64,
    /// Away longer than the tombstone horizon: its records are not trusted until a
    /// resynchronisation (see [`Cluster::resync`]).
    resyncing: AtomicBool,
}

/// Paths changed on this node since the last repair pass: fragments that arrived, hinted
/// copies, versions superseded elsewhere. Bounded: past [`Dirty::MAX`] paths the set is
/// dropped and the next pass is full.
#[derive(Debug, Default)]
struct Dirty {
    paths: HashSet<String>,
    overflow: bool,
}

impl Dirty {
    const MAX: usize = 1 << 20;

    fn insert(&mut self, path: &str) {
        if self.overflow || self.paths.contains(path) {
            return;
        }
        if self.paths.len() >= Self::MAX {
            self.paths = HashSet::new();
            self.overflow = true;
            return;
        }
        self.paths.insert(path.to_string());
    }
}

/// A hybrid logical clock whose logical counter is folded into the milliseconds: the newest
/// stamp issued or seen, shared with the node's clients to its peers (which send it and
/// advance it to their answers').
#[derive(Debug, Clone, Default)]
struct Hlc(Arc<AtomicU64>);

impl Hlc {
    /// A stamp after every one issued or seen: `now`, or one more than the newest.
    fn next(&self, now: u64) -> u64 {
        let mut prev = self.0.load(Ordering::SeqCst);
        loop {
            let next = now.max(prev.saturating_add(1));
            match self
                .0
                .compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Sees `stamp`; returns the clock before.
    fn observe(&self, stamp: u64) -> u64 {
        self.0.fetch_max(stamp, Ordering::SeqCst)
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn shared(&self) -> Arc<AtomicU64> {
        self.0.clone()
    }
}

/// A stamp or peer clock this far ahead of the wall clock is logged (it is still followed:
/// ignoring it could order a later write before an earlier one).
const CLOCK_AHEAD_WARNING_MS: u64 = 3600 * 1000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Frame of a fragment stream: `blake3 [32] | length u32 BE | bytes` for a chunk sent, or
/// `blake3 [32] | (HELD | length) u32 BE` with no bytes for a chunk the receiving node said
/// it already holds (it checks that it does).
const FRAME_HEAD: usize = 36;
/// Largest chunk a fragment stream accepts.
const MAX_FRAME: usize = 16 << 20;
/// The length bit of a frame naming a chunk the receiver holds.
const HELD: u32 = 1 << 31;

fn frame(hash: &ChunkHash, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(FRAME_HEAD + data.len());
    b.put_slice(hash.as_bytes());
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.freeze()
}

fn held_frame(hash: &ChunkHash, size: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(FRAME_HEAD);
    b.put_slice(hash.as_bytes());
    b.put_u32(HELD | size);
    b.freeze()
}

/// What a fragment's chunk list gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A chunk's bytes, checked against its address.
    Chunk(ChunkHash, Bytes),
    /// A chunk of this size the node already holds, named without its bytes.
    Held(ChunkHash, u32),
}

/// Splits a fragment stream into verified chunks as its bytes arrive.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// Adds received bytes; returns the pieces now complete, each chunk checked against its
    /// address.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Piece>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while self.buf.len() >= FRAME_HEAD {
            let word = u32::from_be_bytes(self.buf[32..36].try_into().unwrap());
            let (held, len) = (word & HELD != 0, (word & !HELD) as usize);
            if len == 0 || len > MAX_FRAME {
                return Err(format!("chunk frame of {len} bytes (1 to {MAX_FRAME})"));
            }
            let body = if held { 0 } else { len };
            if self.buf.len() < FRAME_HEAD + body {
                break;
            }
            let mut head = self.buf.split_to(FRAME_HEAD);
            let mut h = [0u8; 32];
            head.copy_to_slice(&mut h);
            let hash = ChunkHash(h);
            if held {
                out.push(Piece::Held(hash, len as u32));
                continue;
            }
            let data = self.buf.split_to(len).freeze();
            if ChunkHash::of(&data) != hash {
                return Err(format!("chunk {hash} does not match its bytes"));
            }
            out.push(Piece::Chunk(hash, data));
        }
        Ok(out)
    }

    /// Whether the stream ended on a frame boundary.
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A fragment being written on this node by [`fragment_writer`].
pub type FragmentWriter = (
    mpsc::Sender<Option<Piece>>,
    tokio::task::JoinHandle<Result<Option<PublishReply>, StoreError>>,
);

/// Writes the pieces sent on the returned channel into this node's fragment of version
/// `(stamp, upload)` of `path`, on a blocking thread: `None` commits it (the task returns
/// the reply), closing the channel first abandons it (`None`, nothing kept). A piece naming
/// a held chunk this node lacks fails the fragment. With `merge` the fragment keeps the
/// chunks it already had. Used for the publish's own share and for fragments other nodes
/// send.
pub fn fragment_writer(
    store: Arc<Store>,
    path: &str,
    stamp: u64,
    upload: &str,
    merge: bool,
) -> FragmentWriter {
    let (tx, mut rx) = mpsc::channel::<Option<Piece>>(16);
    let key = fragment_key(path, stamp, upload);
    let (p, u) = (path.to_string(), upload.to_string());
    let done = tokio::task::spawn_blocking(move || {
        let mut up = store.upload();
        let mut sent = HashSet::new();
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                None => {
                    if !merge {
                        return up.finish_fragment(&key).map(|(r, _)| Some(r));
                    }
                    // The chunks the fragment holds now are kept: read and committed under
                    // the fragment guard, so a concurrent merge or drop is not undone.
                    let _guard = store.fragment_guard(&key);
                    if let Some(old) = store.fragment(&p, stamp, &u)? {
                        for (h, size) in old.chunks {
                            if sent.insert(h) && !up.reference_chunk(h, size)? {
                                return Err(StoreError::MissingChunk(h));
                            }
                        }
                    }
                    return up.finish_fragment(&key).map(|(r, _)| Some(r));
                }
                Some(Piece::Chunk(h, c)) => {
                    if sent.insert(h) {
                        up.push_chunk(c)?;
                    }
                }
                Some(Piece::Held(h, size)) => {
                    if sent.insert(h) && !up.reference_chunk(h, size)? {
                        return Err(StoreError::MissingChunk(h));
                    }
                }
            }
        }
        Ok(None)
    });
    (tx, done)
}

/// Where a publish sends the chunks one node will hold.
enum Sink {
    Local {
        tx: mpsc::Sender<Option<Piece>>,
        done: tokio::task::JoinHandle<Result<Option<PublishReply>, StoreError>>,
    },
    /// Chunks go through a task that asks the node which it holds, a batch at a time, and
    /// frames those it lacks with their bytes, the others by address only ([`HELD`]).
    Remote {
        tx: mpsc::Sender<(ChunkHash, Bytes)>,
        done: tokio::task::JoinHandle<Result<PublishReply, SinkError>>,
    },
}

/// Chunks a remote sink asks about at once (at most: it asks about those waiting), and
/// holds while it asks: with the default largest chunk (64 KiB), 4 MiB per node a publish
/// writes to.
const HELD_QUERY: usize = 64;

/// Why a node did not take its fragment of a publish: `full` when its disk is.
#[derive(Debug)]
struct SinkError {
    full: bool,
    why: String,
}

impl From<String> for SinkError {
    fn from(why: String) -> Self {
        SinkError { full: false, why }
    }
}

/// What a publish reports beyond the single-node reply.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    /// Copies of each chunk and of the file record.
    pub replication: usize,
    /// The nodes holding the file record.
    pub record_nodes: Vec<String>,
    /// Chunk copies written per node.
    pub chunk_copies: HashMap<String, u64>,
    /// The version's stamp (hybrid logical clock, Unix ms) and id.
    pub stamp: u64,
    pub upload: String,
    /// Whether a newer version (a concurrent publish) already superseded this one.
    pub superseded: bool,
}

/// Checks a member list: at least `replication` members, distinct ids, valid addresses.
fn check_members(nodes: &[NodeAddr], replication: usize) -> Result<(), ClusterError> {
    if nodes.len() < replication.max(1) {
        return Err(ClusterError::BadInput(format!(
            "a cluster with replication {replication} needs at least {replication} members; this change leaves {}",
            nodes.len()
        )));
    }
    let mut ids = HashSet::new();
    for n in nodes {
        if n.id.is_empty() || !ids.insert(n.id.as_str()) {
            return Err(ClusterError::BadInput(format!(
                "member ids must be distinct and not empty: {:?}",
                n.id
            )));
        }
        OriginClient::new(&n.url, None)
            .map_err(|e| ClusterError::BadInput(format!("node {}: {e}", n.id)))?;
    }
    Ok(())
}

/// A peer for node `n`, reached with `token`, its calls carrying `clock`.
fn new_peer(n: &NodeAddr, token: &Option<String>, clock: &Hlc) -> Result<Peer, String> {
    let client = OriginClient::new(&n.url, token.clone())
        .map_err(|e| format!("origin node {}: {e}", n.id))?
        .hop_with_clock(clock.shared());
    Ok(Peer {
        id: n.id.clone(),
        client,
        alive: AtomicBool::new(true),
        epoch: AtomicU64::new(0),
        moved: AtomicU64::new(0),
    })
}

/// The view of membership `m`, keeping the indexes of `known` (a node whose address
/// changed gets a new client at its index; a new node is appended).
fn build_view(
    known: &[Arc<Peer>],
    m: Membership,
    cfg: &ClusterConfig,
    token: &Option<String>,
    clock: &Hlc,
) -> Result<View, String> {
    let mut peers = known.to_vec();
    let mut weights: HashMap<String, u32> = HashMap::new();
    for n in m.named() {
        weights.entry(n.id.clone()).or_insert(n.weight);
        match peers.iter().position(|p| p.id == n.id) {
            Some(i) if peers[i].client.base() == n.url.trim_end_matches('/') => {}
            Some(i) => peers[i] = Arc::new(new_peer(n, token, clock)?),
            None => peers.push(Arc::new(new_peer(n, token, clock)?)),
        }
    }
    let ring_of = |members: &[NodeAddr]| {
        let nodes = peers
            .iter()
            .map(|p| RingNode {
                id: p.id.clone(),
                weight: weights.get(&p.id).copied().unwrap_or(1),
            })
            .collect();
        let absent = peers
            .iter()
            .map(|p| !members.iter().any(|n| n.id == p.id))
            .collect();
        Arc::new(Ring::without(nodes, absent, cfg.vnodes, cfg.replication))
    };
    Ok(View {
        ring: ring_of(&m.nodes),
        previous: m.previous.as_deref().map(ring_of),
        peers,
        membership: m,
    })
}

impl Cluster {
    /// The cluster of `cfg`, this node's store being `store`.
    pub fn new(
        cfg: ClusterConfig,
        store: Arc<Store>,
        metrics: Metrics,
        token: Option<String>,
    ) -> Result<Self, String> {
        let me = cfg
            .nodes
            .iter()
            .position(|n| n.id == cfg.me)
            .ok_or_else(|| {
                format!(
                    "this node's id {:?} is not among the cluster's nodes",
                    cfg.me
                )
            })?;
        let clock = Hlc::default();
        let configured = Membership {
            epoch: 0,
            nodes: cfg.nodes.clone(),
            previous: None,
        };
        // A live change since the configured nodes (a larger epoch) wins over them.
        let saved: Option<SavedMembership> = match store
            .cluster_state(MEMBERSHIP_KEY)
            .map_err(|e| format!("reading the cluster membership: {e}"))?
        {
            Some(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|e| format!("the saved cluster membership is unreadable: {e}"))?,
            ),
            None => None,
        };
        let (membership, moved) = match saved {
            Some(s) if s.membership.epoch > 0 => {
                info!(
                    epoch = s.membership.epoch,
                    nodes = s.membership.nodes.len(),
                    "using the cluster membership of a live change, not the configured nodes"
                );
                (s.membership, s.moved)
            }
            _ => (configured, 0),
        };
        let mut peers = Vec::new();
        for n in &cfg.nodes {
            peers.push(Arc::new(new_peer(n, &token, &clock)?));
        }
        let view = build_view(&peers, membership, &cfg, &token, &clock)?;
        let ring = view.ring.clone();
        // The digests start from what the store holds; from then on the store reports each
        // change. Nothing writes before the node serves, so none is missed or counted twice.
        let digests = Arc::new(Digests::new(me, ring.clone()));
        let dirty = Arc::new(Mutex::new(Dirty::default()));
        {
            let mut d = dirty.lock().unwrap();
            let mut last_fragment = String::new();
            store
                .sync_scan(|item| {
                    let hinted = digests.apply(&item, true);
                    // Two versions of one path: one of them is on its way out.
                    let again = matches!(item, SyncItem::Fragment { .. })
                        && std::mem::replace(&mut last_fragment, item.path().to_string())
                            == item.path();
                    if hinted || again {
                        d.insert(item.path());
                    }
                })
                .map_err(|e| format!("reading the sync index: {e}"))?;
        }
        let digests = Arc::new(RwLock::new(digests));
        {
            let (digests, dirty) = (digests.clone(), dirty.clone());
            store.observe_sync(Arc::new(move |events: &[SyncEvent]| {
                // Held while the events apply: a rebuild (a new ring) waits for them and
                // they for it, so none is lost or counted twice.
                let digests = digests.read().unwrap();
                let mut d = dirty.lock().unwrap();
                for ev in events {
                    // A hinted copy is handed to its owners by the next pass.
                    if digests.apply(&ev.item, ev.added) && ev.added {
                        d.insert(ev.item.path());
                    }
                }
            }));
        }
        let now = now_ms();
        let contact = match store
            .cluster_contact()
            .map_err(|e| format!("reading the last cluster contact: {e}"))?
        {
            Some(t) => t,
            None => {
                // A new node (or one from before this was kept): in contact from now.
                store
                    .set_cluster_contact(now)
                    .map_err(|e| format!("saving the cluster contact: {e}"))?;
                now
            }
        };
        let away = now.saturating_sub(contact);
        let resyncing = away > cfg.tombstone_secs.saturating_mul(1000);
        if resyncing {
            warn!(
                away_secs = away / 1000,
                tombstone_secs = cfg.tombstone_secs,
                "this node was out of contact with its cluster for longer than tombstones are kept: it serves none of its file records until it has resynchronised"
            );
        }
        metrics.cluster_resyncing.set(resyncing as i64);
        Ok(Self {
            me,
            me_id: cfg.me.clone(),
            view: RwLock::new(Arc::new(view)),
            changing: tokio::sync::Mutex::new(()),
            moved: AtomicU64::new(moved),
            kick: tokio::sync::Notify::new(),
            pacer: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            token,
            cfg,
            store,
            metrics,
            clock,
            report: Mutex::new(RepairReport::default()),
            repairing: tokio::sync::Mutex::new(()),
            digests,
            dirty,
            last_full: AtomicU64::new(now / 1000),
            contact: AtomicU64::new(contact),
            resyncing: AtomicBool::new(resyncing),
        })
    }

    /// The current view: membership, ring, peers.
    fn view(&self) -> Arc<View> {
        self.view.read().unwrap().clone()
    }

    /// The placement ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.view().ring.clone()
    }

    /// Node `i` (an index from any view: indexes are never reused).
    fn peer(&self, i: usize) -> Arc<Peer> {
        self.view().peers[i].clone()
    }

    /// Node `i`'s id.
    fn id(&self, i: usize) -> String {
        self.peer(i).id.clone()
    }

    fn digests(&self) -> Arc<Digests> {
        self.digests.read().unwrap().clone()
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me_id
    }

    fn alive(&self, i: usize) -> bool {
        i == self.me || self.peer(i).alive.load(Ordering::Relaxed)
    }

    fn mark(&self, i: usize, up: bool) {
        if i != self.me && self.peer(i).alive.swap(up, Ordering::Relaxed) != up {
            if up {
                info!(node = %self.peer(i).id, "origin node is reachable again");
            } else {
                warn!(node = %self.peer(i).id, "origin node is unreachable");
            }
        }
    }

    /// Live members.
    fn live_count(&self) -> usize {
        self.ring().members().filter(|&i| self.alive(i)).count()
    }

    /// How many members the cluster has.
    fn member_count(&self) -> usize {
        self.ring().members().count()
    }

    /// The first `replication` live nodes of a preference list.
    fn targets(&self, preference: impl IntoIterator<Item = usize>) -> Vec<usize> {
        preference
            .into_iter()
            .filter(|&i| self.alive(i))
            .take(self.ring().replication())
            .collect()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.call_timeout_secs.max(1))
    }

    /// Calls node `i`; a transport error or timeout marks it down.
    async fn call(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: UploadBody,
    ) -> Result<(StatusCode, Bytes), ClusterError> {
        let peer = &self.peer(i);
        let fail = |why: String| ClusterError::Node {
            node: peer.id.clone(),
            why,
        };
        match tokio::time::timeout(self.timeout(), peer.client.call(method, path, body)).await {
            Ok(Ok((parts, bytes))) => {
                self.mark(i, true);
                Ok((parts.status, bytes))
            }
            Ok(Err(e)) => {
                self.mark(i, false);
                Err(fail(e.to_string()))
            }
            Err(_) => {
                self.mark(i, false);
                Err(fail(format!("no answer within {:?}", self.timeout())))
            }
        }
    }

    /// Checks every other node every second, forever: whether it answers, and which
    /// membership it has (a newer one is adopted, see [`Membership`]); settles a
    /// membership change once every node has moved its data.
    pub async fn watch_peers(self: Arc<Self>) {
        loop {
            let v = self.view();
            self.metrics.cluster_nodes.set(self.member_count() as i64);
            let checks = v
                .in_play()
                .into_iter()
                .filter(|&i| i != self.me)
                .map(|i| self.probe(i));
            let newest = futures_util::future::join_all(checks)
                .await
                .into_iter()
                .flatten()
                .max_by_key(|m| m.epoch);
            // A removed node goes on hearing of later changes, which no longer name it.
            if let Some(m) = newest.filter(|m| m.names(&self.me_id)) {
                let epoch = m.epoch;
                match self.adopt(m).await {
                    Ok(_) => {}
                    Err(e) => {
                        warn!(epoch, error = %e, "a peer's newer cluster membership was refused")
                    }
                }
            }
            if let Err(e) = self.settle().await {
                warn!(error = %e, "settling a membership change");
            }
            self.metrics
                .cluster_nodes_live
                .set(self.live_count() as i64);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Checks node `i` (its membership document) and marks it; returns its membership
    /// when that is newer than this node's.
    async fn probe(&self, i: usize) -> Option<Membership> {
        let peer = self.peer(i);
        let answer = tokio::time::timeout(
            Duration::from_millis(800),
            peer.client
                .call(Method::GET, "/api/v1/cluster/members", full(Bytes::new())),
        )
        .await;
        let doc = match answer {
            Ok(Ok((p, body))) if p.status.is_success() => {
                serde_json::from_slice::<serde_json::Value>(&body).ok()
            }
            _ => None,
        };
        let ok = doc.is_some();
        if ok {
            self.contact.fetch_max(now_ms(), Ordering::Relaxed);
        }
        self.mark(i, ok);
        let doc = doc?;
        let m: Membership = serde_json::from_value(doc["membership"].clone()).ok()?;
        peer.epoch.store(m.epoch, Ordering::Relaxed);
        peer.moved
            .store(doc["moved"].as_u64().unwrap_or(0), Ordering::Relaxed);
        (m.epoch > self.view().membership.epoch).then_some(m)
    }

    /// The membership document of `GET /api/v1/cluster/members`.
    pub fn members_doc(&self) -> serde_json::Value {
        let v = self.view();
        serde_json::json!({
            "me": self.me_id,
            "membership": v.membership,
            "moved": self.moved.load(Ordering::Relaxed),
            "settled": v.previous.is_none(),
        })
    }

    /// Adopts membership `m` if it is newer than this node's: kept in the store, the ring
    /// and digests rebuilt, and a full repair pass started to move the data. Returns
    /// whether it was adopted.
    pub async fn adopt(self: &Arc<Self>, m: Membership) -> Result<bool, ClusterError> {
        let _one = self.changing.lock().await;
        let cur = self.view();
        if m.epoch <= cur.membership.epoch {
            return Ok(false);
        }
        check_members(&m.nodes, self.cfg.replication)?;
        if !m.names(&self.me_id) {
            return Err(ClusterError::BadInput(format!(
                "membership epoch {} does not name this node ({})",
                m.epoch, self.me_id
            )));
        }
        let view = build_view(&cur.peers, m.clone(), &self.cfg, &self.token, &self.clock)
            .map_err(ClusterError::BadInput)?;
        self.save_membership(&m).await?;
        let ring = view.ring.clone();
        *self.view.write().unwrap() = Arc::new(view);
        // The digests compare what both nodes should hold: that follows the ring.
        let (digests, store, me) = (self.digests.clone(), self.store.clone(), self.me);
        blocking(move || -> Result<(), StoreError> {
            let mut held = digests.write().unwrap();
            let fresh = Digests::new(me, ring);
            store.sync_scan(|item| {
                fresh.apply(&item, true);
            })?;
            *held = Arc::new(fresh);
            Ok(())
        })
        .await??;
        let me_member = m.nodes.iter().any(|n| n.id == self.me_id);
        info!(
            epoch = m.epoch,
            nodes = ?m.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            member = me_member,
            "new cluster membership: moving data to the new owners"
        );
        // The repair pass that moves the data (full: see `repair_pass`) starts now.
        self.kick.notify_one();
        Ok(true)
    }

    /// Keeps membership `m` and the moved epoch in the store.
    async fn save_membership(&self, m: &Membership) -> Result<(), ClusterError> {
        let saved = SavedMembership {
            membership: m.clone(),
            moved: self.moved.load(Ordering::Relaxed),
        };
        let bytes = serde_json::to_vec(&saved).expect("a membership serialises");
        let store = self.store.clone();
        blocking(move || store.set_cluster_state(MEMBERSHIP_KEY, &bytes)).await??;
        Ok(())
    }

    /// Ends a membership change once this node and every member (and every previous
    /// member still reachable) has moved its data: reads stop asking the previous owners.
    async fn settle(&self) -> Result<(), ClusterError> {
        let _one = self.changing.lock().await;
        let v = self.view();
        if v.previous.is_none() {
            return Ok(());
        }
        let epoch = v.membership.epoch;
        if self.moved.load(Ordering::Relaxed) < epoch {
            return Ok(());
        }
        for i in v.in_play() {
            if i == self.me {
                continue;
            }
            let p = &v.peers[i];
            let done = p.epoch.load(Ordering::Relaxed) >= epoch
                && p.moved.load(Ordering::Relaxed) >= epoch;
            // A removed node that is gone is not waited for: its data has other copies.
            if !done && (v.ring.contains(i) || self.alive(i)) {
                return Ok(());
            }
        }
        let m = Membership {
            previous: None,
            ..v.membership.clone()
        };
        self.save_membership(&m).await?;
        // Same members, same ring: only the previous one goes.
        *self.view.write().unwrap() = Arc::new(View {
            membership: m,
            peers: v.peers.clone(),
            ring: v.ring.clone(),
            previous: None,
        });
        info!(
            epoch,
            "membership change settled: every node has moved its data"
        );
        Ok(())
    }

    /// Adds or removes a member (`POST /api/v1/cluster/members`): the next epoch is adopted
    /// here and sent to every node, old and new. One change at a time: a change whose data
    /// is still moving is refused. Returns the membership and each node's answer.
    pub async fn change_members(
        self: &Arc<Self>,
        change: MemberChange,
    ) -> Result<serde_json::Value, ClusterError> {
        let cur = self.view();
        let epoch = cur.membership.epoch;
        if cur.previous.is_some() {
            return Err(ClusterError::Conflict(format!(
                "the membership change to epoch {epoch} is still moving data; try again once `tessera cluster status` shows it settled"
            )));
        }
        let mut nodes = cur.membership.nodes.clone();
        match change {
            MemberChange::Add(n) => {
                if nodes.iter().any(|m| m.id == n.id) {
                    return Err(ClusterError::BadInput(format!(
                        "{} is already a member",
                        n.id
                    )));
                }
                // The new node must answer, as the node it is said to be.
                let client = OriginClient::new(&n.url, self.token.clone())
                    .map_err(|e| ClusterError::BadInput(format!("node {}: {e}", n.id)))?;
                let asked = tokio::time::timeout(
                    self.timeout(),
                    client.call(Method::GET, "/api/v1/cluster/members", full(Bytes::new())),
                )
                .await;
                let unreachable = |why: String| ClusterError::Node {
                    node: n.id.clone(),
                    why: format!("cannot add it: {why}"),
                };
                let said = match asked {
                    Ok(Ok((p, body))) if p.status.is_success() => {
                        serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["me"].as_str().map(str::to_string))
                    }
                    Ok(Ok((p, body))) => {
                        return Err(unreachable(format!(
                            "{} answered {}: {}",
                            n.url,
                            p.status,
                            String::from_utf8_lossy(&body)
                        )));
                    }
                    Ok(Err(e)) => return Err(unreachable(e.to_string())),
                    Err(_) => return Err(unreachable(format!("{} does not answer", n.url))),
                };
                if said.as_deref() != Some(n.id.as_str()) {
                    return Err(ClusterError::BadInput(format!(
                        "the origin at {} is {}, not {} (start it with --id {})",
                        n.url,
                        said.unwrap_or_else(|| "not a cluster node".into()),
                        n.id,
                        n.id
                    )));
                }
                nodes.push(n);
            }
            MemberChange::Remove(id) => {
                let Some(at) = nodes.iter().position(|m| m.id == id) else {
                    return Err(ClusterError::BadInput(format!("{id} is not a member")));
                };
                nodes.remove(at);
            }
        }
        let m = Membership {
            epoch: epoch + 1,
            nodes,
            previous: Some(cur.membership.nodes.clone()),
        };
        check_members(&m.nodes, self.cfg.replication)?;
        self.adopt(m.clone()).await?;
        // Every node hears of it now; one that misses it learns it from the others' answers
        // to its peer checks.
        let v = self.view();
        let body = Bytes::from(serde_json::to_vec(&m).expect("a membership serialises"));
        let pushes = v.in_play().into_iter().filter(|&i| i != self.me).map(|i| {
            let body = body.clone();
            async move {
                let r = self
                    .call(i, Method::PUT, "/api/v1/cluster/members", full(body))
                    .await;
                let answer = match r {
                    Ok((s, _)) if s.is_success() => "adopted".to_string(),
                    Ok((s, b)) => format!("{s}: {}", String::from_utf8_lossy(&b)),
                    Err(e) => format!("{e} (it will learn the change from the others)"),
                };
                (self.id(i), answer)
            }
        });
        let mut answers: serde_json::Map<String, serde_json::Value> =
            futures_util::future::join_all(pushes)
                .await
                .into_iter()
                .map(|(id, a)| (id, a.into()))
                .collect();
        answers.insert(self.me_id.clone(), "adopted".into());
        Ok(serde_json::json!({"membership": m, "nodes": answers}))
    }

    /// Probes every node marked down once, now (a node that just started or returned
    /// should not wait for the next periodic check).
    async fn probe_down(&self) {
        let probes = self
            .view()
            .in_play()
            .into_iter()
            .filter(|&i| !self.alive(i))
            .map(|i| self.probe(i));
        futures_util::future::join_all(probes).await;
    }

    /// [`Cluster::check_quorum`], after probing the nodes marked down if there are too few.
    async fn ensure_quorum(&self) -> Result<(), ClusterError> {
        if self.check_quorum().is_err() {
            self.probe_down().await;
        }
        self.check_quorum()
    }

    fn check_quorum(&self) -> Result<(), ClusterError> {
        let live = self.live_count();
        let needed = self.ring().replication();
        if live < needed {
            return Err(ClusterError::TooFewNodes {
                live,
                nodes: self.member_count(),
                needed,
            });
        }
        Ok(())
    }

    /// A new version stamp: this node's wall clock (Unix ms), or one more than the newest
    /// stamp it issued or saw when that is later (a hybrid logical clock, with the logical
    /// counter folded into the milliseconds). Every request between nodes and every answer
    /// carries the clock ([`tessera_origin_proto::client::CLOCK_HEADER`]) and every
    /// record read is seen, and a publish or delete first reads the path's current record
    /// from its owners: so a write that follows another (acknowledged, or read) is stamped
    /// after it even when its node's clock is behind.
    fn stamp(&self) -> u64 {
        self.clock.next(now_ms())
    }

    /// Advances the clock to `stamp`, a stamp or clock seen in a record or a message.
    pub fn observe(&self, stamp: u64) {
        let before = self.clock.observe(stamp);
        let ahead = stamp.saturating_sub(now_ms());
        if stamp > before && ahead > CLOCK_AHEAD_WARNING_MS {
            warn!(
                ahead_secs = ahead / 1000,
                "a peer's clock or a record's stamp is far ahead of this node's wall clock; versions follow it (check the nodes' time)"
            );
        }
    }

    /// The clock, for the answer to a peer's request.
    pub fn clock(&self) -> u64 {
        self.clock.get()
    }

    /// Opens the fragment stream of version `key` on node `i`.
    fn open_sink(self: &Arc<Self>, i: usize, path: &str, stamp: u64, upload: &str) -> Sink {
        if i == self.me {
            let (tx, done) = fragment_writer(self.store.clone(), path, stamp, upload, false);
            return Sink::Local { tx, done };
        }
        let (chunks_tx, chunks_rx) = mpsc::channel::<(ChunkHash, Bytes)>(HELD_QUERY);
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(self.clone().frame_for(i, chunks_rx, tx));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| {
                (
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)),
                    rx,
                )
            })
        });
        let body: UploadBody = StreamBody::new(stream).boxed();
        let url = format!(
            "/api/v1/cluster/fragments/{stamp}.{upload}/{}",
            encode_path(path)
        );
        let me = self.clone();
        let done = tokio::spawn(async move {
            // No overall timeout: the stream lasts as long as the upload; the node's own
            // limits cut a stalled one.
            match me.peer(i).client.call(Method::PUT, &url, body).await {
                Ok((p, b)) if p.status.is_success() => {
                    serde_json::from_slice(&b).map_err(|e| format!("bad reply: {e}").into())
                }
                Ok((p, b)) => Err(SinkError {
                    full: p.status == StatusCode::INSUFFICIENT_STORAGE,
                    why: format!("{}: {}", p.status, String::from_utf8_lossy(&b)),
                }),
                Err(e) => {
                    me.mark(i, false);
                    Err(e.to_string().into())
                }
            }
        });
        Sink::Remote {
            tx: chunks_tx,
            done,
        }
    }

    /// Frames the chunks of a publish for node `i`: each batch of those waiting (at most
    /// [`HELD_QUERY`]) is first checked with the node (`POST /api/v1/chunks/known`), and a
    /// chunk it holds goes as its address alone. If the question fails or gets no answer
    /// within the call timeout (an older node, a slow one), the bytes go. Counts the bytes
    /// sent and spared.
    async fn frame_for(
        self: Arc<Self>,
        i: usize,
        mut chunks: mpsc::Receiver<(ChunkHash, Bytes)>,
        body: mpsc::Sender<Bytes>,
    ) {
        let mut batch = Vec::with_capacity(HELD_QUERY);
        while chunks.recv_many(&mut batch, HELD_QUERY).await > 0 {
            let hashes: Vec<ChunkHash> = batch.iter().map(|(h, _)| *h).collect();
            let peer = self.peer(i);
            let asked = peer.client.known_chunks(&hashes);
            let held = match tokio::time::timeout(self.timeout(), asked).await {
                Ok(Ok(k)) => k,
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout()),
                    };
                    debug!(node = %self.peer(i).id, %error, "asking which chunks a node holds failed; sending them all");
                    vec![false; hashes.len()]
                }
            };
            for ((hash, data), held) in batch.drain(..).zip(held) {
                let f = if held {
                    self.metrics
                        .cluster_chunk_bytes_spared
                        .inc_by(data.len() as u64);
                    held_frame(&hash, data.len() as u32)
                } else {
                    self.metrics
                        .cluster_chunk_bytes_sent
                        .inc_by(data.len() as u64);
                    frame(&hash, &data)
                };
                if body.send(f).await.is_err() {
                    return; // the stream was abandoned
                }
            }
        }
    }

    /// Publishes the stream of `pieces` at `path`: chunks to their nodes, then the record.
    /// `pieces` yields the body's bytes and ends with `Ok(None)`; an `Err` abandons.
    pub async fn publish(
        self: &Arc<Self>,
        path: &str,
        content_type: &str,
        mut pieces: mpsc::Receiver<Result<Bytes, ()>>,
    ) -> Result<(PublishReply, Placement), ClusterError> {
        self.ensure_quorum().await?;
        let previous = self.see_current(path).await;
        let stamp = self.stamp();
        let upload = new_id();
        // The chunker runs on a blocking thread; chunks come back with their hashes.
        let (ctx, mut crx) = mpsc::channel::<(ChunkHash, Bytes)>(64);
        let params = self.store.config().chunking;
        let (btx, brx) = std::sync::mpsc::sync_channel::<Option<Bytes>>(8);
        let cutter = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::new(params);
            let mut file = blake3::Hasher::new();
            let mut out = Vec::new();
            let mut size = 0u64;
            // Cutting and hashing run on the ingest pool, behind reads ([`crate::workers`]).
            let mut emit = |out: &mut Vec<Bytes>| -> bool {
                let hashed: Vec<(ChunkHash, Bytes)> = crate::workers::ingest(|| {
                    out.drain(..)
                        .map(|c| {
                            file.update(&c);
                            (ChunkHash::of(&c), c)
                        })
                        .collect()
                });
                hashed.into_iter().all(|h| ctx.blocking_send(h).is_ok())
            };
            while let Ok(piece) = brx.recv() {
                match piece {
                    Some(b) => {
                        size += b.len() as u64;
                        crate::workers::ingest(|| chunker.push(&b, &mut out));
                        if !emit(&mut out) {
                            return None;
                        }
                    }
                    None => {
                        chunker.finish(&mut out);
                        if !emit(&mut out) {
                            return None;
                        }
                        return Some((size, ChunkHash::from(file.finalize())));
                    }
                }
            }
            None
        });
        let feeder = tokio::task::spawn_blocking(move || {
            while let Some(p) = pieces.blocking_recv() {
                match p {
                    Ok(b) if b.is_empty() => {
                        let _ = btx.send(None);
                        return true;
                    }
                    Ok(b) => {
                        if btx.send(Some(b)).is_err() {
                            return false;
                        }
                    }
                    Err(()) => return false,
                }
            }
            false
        });
        let mut sinks: HashMap<usize, Sink> = HashMap::new();
        let mut chunks: Vec<ManifestChunk> = Vec::new();
        let mut offset = 0u64;
        let mut copies: HashMap<usize, u64> = HashMap::new();
        let mut failed: Option<ClusterError> = None;
        while let Some((hash, data)) = crx.recv().await {
            chunks.push(ManifestChunk {
                hash,
                offset,
                size: data.len() as u32,
            });
            offset += data.len() as u64;
            if failed.is_some() {
                continue; // drain, so the chunker finishes
            }
            let targets = self.targets(self.ring().chunk_preference(&hash));
            if targets.len() < self.ring().replication() {
                failed = Some(self.check_quorum().err().unwrap_or(ClusterError::Node {
                    node: "?".into(),
                    why: "too few live nodes".into(),
                }));
                continue;
            }
            for t in targets {
                let sink = sinks
                    .entry(t)
                    .or_insert_with(|| self.open_sink(t, path, stamp, &upload));
                *copies.entry(t).or_default() += 1;
                let sent = match sink {
                    Sink::Local { tx, .. } => tx
                        .send(Some(Piece::Chunk(hash, data.clone())))
                        .await
                        .is_ok(),
                    Sink::Remote { tx, .. } => tx.send((hash, data.clone())).await.is_ok(),
                };
                if !sent {
                    failed = Some(ClusterError::Node {
                        node: self.id(t),
                        why: "the fragment stream stopped".into(),
                    });
                }
            }
        }
        let complete = feeder.await.unwrap_or(false);
        let whole = cutter.await.ok().flatten();
        // Close every stream: an empty chunk tells the local writer to commit; dropping a
        // remote stream's sender ends its body.
        let mut results = Vec::new();
        for (t, sink) in sinks {
            let ok = failed.is_none() && complete;
            let r = match sink {
                Sink::Local { tx, done } => {
                    if ok {
                        let _ = tx.send(None).await;
                    }
                    drop(tx);
                    match done.await {
                        Ok(Ok(Some(reply))) => Ok(reply),
                        Ok(Ok(None)) => Err("the publish was abandoned".to_string().into()),
                        Ok(Err(e)) => Err(SinkError {
                            full: e.is_disk_full(),
                            why: e.to_string(),
                        }),
                        Err(e) => Err(e.to_string().into()),
                    }
                }
                Sink::Remote { tx, done } => {
                    if !ok {
                        done.abort();
                        drop(tx);
                        continue;
                    }
                    drop(tx);
                    done.await
                        .map_err(|e| SinkError::from(e.to_string()))
                        .and_then(|r| r)
                }
            };
            results.push((t, r));
        }
        let cleanup = |me: &Arc<Self>| {
            let me = me.clone();
            let (p, u) = (path.to_string(), upload.clone());
            tokio::spawn(async move { me.drop_version(&p, stamp, &u).await });
        };
        if let Some(e) = failed {
            cleanup(self);
            return Err(e);
        }
        let Some((size, blake3)) = whole.filter(|_| complete) else {
            cleanup(self);
            return Err(ClusterError::BadInput(
                "the request body ended early".into(),
            ));
        };
        let mut new_chunks = 0;
        let mut stored = 0;
        for (t, r) in &results {
            match r {
                Ok(rep) => {
                    new_chunks += rep.new_chunks;
                    stored += rep.stored_bytes_added;
                }
                Err(e) => {
                    cleanup(self);
                    let (node, why) = (self.id(*t), e.why.clone());
                    return Err(if e.full {
                        ClusterError::DiskFull { node, why }
                    } else {
                        ClusterError::Node { node, why }
                    });
                }
            }
        }
        let manifest = Manifest {
            format: tessera_origin_proto::manifest::MANIFEST_FORMAT,
            path: path.to_string(),
            size,
            blake3,
            content_type: content_type.to_string(),
            modified: stamp / 1000,
            chunks,
        };
        let rec = FileRecord {
            path: path.to_string(),
            stamp,
            upload: upload.clone(),
            manifest: Some(manifest),
        };
        let (nodes, current) = match self.put_record(&rec).await {
            Ok(x) => x,
            Err(RecordError { written: 0, error }) => {
                cleanup(self);
                return Err(error);
            }
            Err(RecordError { written, error }) => {
                // Some owner has the record: the version is visible and complete (its
                // fragments stay), with fewer record copies than the rule asks; repair
                // adds them. Say so rather than pretend it failed.
                return Err(ClusterError::Node {
                    node: "-".into(),
                    why: format!(
                        "the file is published but only {written} of {} copies of its record were written ({error}); repair adds the others",
                        self.ring().replication()
                    ),
                });
            }
        };
        let superseded = current.newer_than(&rec);
        // Nodes holding fragments of the version replaced (which may receive none of this
        // one) drop them now, or note the path for repair after the grace period.
        if previous || superseded || self.cfg.superseded_grace_secs == 0 {
            self.spawn_drop_older(&current);
        }
        let reply = PublishReply {
            path: path.to_string(),
            size,
            blake3,
            chunks: rec.manifest.as_ref().map_or(0, |m| m.chunks.len() as u64),
            new_chunks,
            stored_bytes_added: stored,
        };
        let placement = Placement {
            replication: self.ring().replication(),
            record_nodes: nodes.iter().map(|&i| self.id(i)).collect(),
            chunk_copies: copies.into_iter().map(|(i, n)| (self.id(i), n)).collect(),
            stamp,
            upload,
            superseded,
        };
        Ok((reply, placement))
    }

    /// Writes `rec` to the first `replication` live nodes of its path's preference list;
    /// returns them and the newest record they hold afterwards.
    async fn put_record(&self, rec: &FileRecord) -> Result<(Vec<usize>, FileRecord), RecordError> {
        let ring = self.ring();
        let want = ring.replication();
        let mut pref = ring.file_preference(&rec.path).filter(|&i| self.alive(i));
        let mut targets: Vec<usize> = pref.by_ref().take(want).collect();
        if targets.len() < want
            && let Err(e) = self.check_quorum()
        {
            return Err(RecordError {
                written: 0,
                error: e,
            });
        }
        let body = Bytes::from(serde_json::to_vec(rec).expect("records serialise"));
        let mut written = Vec::new();
        let mut newest = rec.clone();
        let mut last_error = None;
        // A node that fails is replaced by the next live one of the list (hinted handoff),
        // until `replication` copies are written or the list runs out.
        while !targets.is_empty() {
            let calls = targets.iter().map(|&t| {
                let body = body.clone();
                async move { (t, self.put_record_on(t, rec, body).await) }
            });
            let mut failed = 0;
            for (t, r) in futures_util::future::join_all(calls).await {
                match r {
                    Ok(cur) => {
                        written.push(t);
                        if cur.newer_than(&newest) {
                            newest = cur;
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        last_error = Some(ClusterError::Node {
                            node: self.id(t),
                            why: format!("could not store the file record: {e}"),
                        });
                    }
                }
            }
            targets = pref.by_ref().take(failed).collect();
        }
        if written.len() < want {
            return Err(RecordError {
                written: written.len(),
                error: last_error.unwrap_or(ClusterError::TooFewNodes {
                    live: self.live_count(),
                    nodes: self.member_count(),
                    needed: want,
                }),
            });
        }
        self.observe(newest.stamp);
        Ok((written, newest))
    }

    async fn put_record_on(
        &self,
        t: usize,
        rec: &FileRecord,
        body: Bytes,
    ) -> Result<FileRecord, ClusterError> {
        if t == self.me {
            let store = self.store.clone();
            let rec = rec.clone();
            return Ok(blocking(move || store.put_file(&rec)).await??);
        }
        let url = format!("/api/v1/cluster/files/{}", encode_path(&rec.path));
        let (status, bytes) = self.call(t, Method::PUT, &url, full(body)).await?;
        if !status.is_success() {
            return Err(self.node_error(t, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClusterError::Node {
            node: self.id(t),
            why: format!("bad record reply: {e}"),
        })
    }

    fn node_error(&self, t: usize, status: StatusCode, body: &[u8]) -> ClusterError {
        let (node, why) = (
            self.id(t),
            format!("{status}: {}", String::from_utf8_lossy(body)),
        );
        if status == StatusCode::INSUFFICIENT_STORAGE {
            ClusterError::DiskFull { node, why }
        } else {
            ClusterError::Node { node, why }
        }
    }

    /// In the background, drops on every live node the fragments of versions older than
    /// `current`.
    fn spawn_drop_older(self: &Arc<Self>, current: &FileRecord) {
        let me = self.clone();
        let cur = current.clone();
        tokio::spawn(async move { me.drop_older(&cur).await });
    }

    /// Drops on every live node the fragments of versions older than `current`.
    async fn drop_older(&self, current: &FileRecord) {
        let body = serde_json::json!({"path": current.path, "stamp": current.stamp, "upload": current.upload, "older": true});
        self.broadcast_drop(body).await;
    }

    /// Drops the fragments of one failed version everywhere.
    async fn drop_version(&self, path: &str, stamp: u64, upload: &str) {
        let body =
            serde_json::json!({"path": path, "stamp": stamp, "upload": upload, "older": false});
        self.broadcast_drop(body).await;
    }

    async fn broadcast_drop(&self, body: serde_json::Value) {
        let bytes = Bytes::from(body.to_string());
        for i in self.view().in_play() {
            if !self.alive(i) {
                continue; // repair drops it there later
            }
            let r = if i == self.me {
                self.apply_drop(&body).await.map(|_| ())
            } else {
                self.call(
                    i,
                    Method::POST,
                    "/api/v1/cluster/fragments/drop",
                    full(bytes.clone()),
                )
                .await
                .map(|_| ())
            };
            if let Err(e) = r {
                debug!(error = %e, "dropping old fragments failed; repair will");
            }
        }
    }

    /// Applies a drop request (`{"path", "stamp", "upload", "older"}`) to this node: with
    /// `older`, every fragment of the path older than that version, else exactly that one.
    pub async fn apply_drop(&self, body: &serde_json::Value) -> Result<usize, ClusterError> {
        let path = body["path"]
            .as_str()
            .ok_or_else(|| ClusterError::BadInput("\"path\" is missing".into()))?
            .to_string();
        let stamp = body["stamp"]
            .as_u64()
            .ok_or_else(|| ClusterError::BadInput("\"stamp\" is missing".into()))?;
        let upload = body["upload"]
            .as_str()
            .ok_or_else(|| ClusterError::BadInput("\"upload\" is missing".into()))?
            .to_string();
        let older = body["older"].as_bool().unwrap_or(true);
        if older && self.cfg.superseded_grace_secs > 0 {
            // Reads of the older versions may still be going: repair drops them later.
            self.dirty.lock().unwrap().insert(&path);
            return Ok(0);
        }
        let store = self.store.clone();
        let n = blocking(move || -> Result<usize, StoreError> {
            let n = if older {
                store.drop_fragments(&path, Some((stamp, &upload)))?
            } else {
                // Exactly one version: everything older than the next possible key.
                match store.fragment(&path, stamp, &upload)? {
                    Some(_) => store.drop_one_fragment(&path, stamp, &upload)?,
                    None => 0,
                }
            };
            if n > 0 {
                store.collect_garbage()?;
            }
            Ok(n)
        })
        .await??;
        Ok(n)
    }

    /// Read before write: sees the stamps of `path`'s records on its live owners (and
    /// their clocks), so the version stamped next is ordered after them. Errors are left
    /// to the write that follows.
    /// Returns whether some owner has a record of the path.
    async fn see_current(&self, path: &str) -> bool {
        let v = self.view();
        let mut owners = self.targets(v.ring.file_preference(path));
        // During a move the record may still be only on its owners before the change.
        for i in v.previous.iter().flat_map(|r| r.file_owners(path)) {
            if !owners.contains(&i) && self.alive(i) {
                owners.push(i);
            }
        }
        let calls = owners.iter().map(|&i| self.record_on(i, path));
        futures_util::future::join_all(calls)
            .await
            .iter()
            .any(|r| matches!(r, Ok(Some(_))))
    }

    /// The current record of `path`: the newest among its live owners, or further down its
    /// preference list when no owner has one. Tombstones are returned too.
    pub async fn record(&self, path: &str) -> Result<Option<FileRecord>, ClusterError> {
        // A node resynchronising does not trust its own records: they may name files
        // deleted while it was away.
        let trusted = |i: &usize| *i != self.me || !self.resyncing();
        let v = self.view();
        let ring = &v.ring;
        let mut owners: Vec<usize> = self
            .targets(ring.file_preference(path))
            .into_iter()
            .filter(trusted)
            .collect();
        // While a membership change moves data, the owners before it are asked too: the
        // record may not have reached its new owners yet.
        let previous_owners = v
            .previous
            .as_ref()
            .map(|r| r.file_owners(path))
            .unwrap_or_default();
        for &i in &previous_owners {
            if !owners.contains(&i) && self.alive(i) && trusted(&i) {
                owners.push(i);
            }
        }
        let mut best: Option<FileRecord> = None;
        let mut errors = 0;
        // The path's owners that answered: "no such file" needs one of them (a stand-in
        // alone may just not have heard of it), and during a move one of the owners
        // before it as well.
        let real_owners = ring.file_owners(path);
        let (mut heard, mut heard_before) = (0, 0);
        let calls = owners.iter().map(|&i| self.record_on(i, path));
        let answers = futures_util::future::join_all(calls).await;
        for (i, r) in owners.iter().zip(answers) {
            if r.is_ok() && real_owners.contains(i) {
                heard += 1;
            }
            if r.is_ok() && previous_owners.contains(i) {
                heard_before += 1;
            }
            match r {
                Ok(Some(rec)) => {
                    if best.as_ref().is_none_or(|b| rec.newer_than(b)) {
                        best = Some(rec);
                    }
                }
                Ok(None) => {}
                Err(_) => errors += 1,
            }
        }
        if best.is_some() {
            return Ok(best);
        }
        for i in ring
            .file_preference(path)
            .filter(|i| !owners.contains(i) && trusted(i))
        {
            if !self.alive(i) {
                continue;
            }
            match self.record_on(i, path).await {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => {}
                Err(_) => errors += 1,
            }
        }
        // Nor does a node that cannot reach as many nodes as a write needs, unless every
        // owner answered: those nodes, together, may have taken a publish of it (as on the
        // other side of a partition).
        let unreachable = self.member_count() - self.live_count();
        let cut_off = heard < real_owners.len() && unreachable >= ring.replication();
        let moving_unheard = !previous_owners.is_empty() && heard_before == 0;
        if heard == 0 || cut_off || moving_unheard || (errors > 0 && errors >= owners.len()) {
            return Err(ClusterError::TooFewNodes {
                live: self.live_count(),
                nodes: self.member_count(),
                needed: 1,
            });
        }
        Ok(None)
    }

    /// The record of `path` on node `i`; its stamp is seen by the clock ([`Self::observe`]).
    async fn record_on(&self, i: usize, path: &str) -> Result<Option<FileRecord>, ClusterError> {
        let rec = self.fetch_record(i, path).await;
        if let Ok(Some(r)) = &rec {
            self.observe(r.stamp);
        }
        rec
    }

    async fn fetch_record(&self, i: usize, path: &str) -> Result<Option<FileRecord>, ClusterError> {
        if i == self.me {
            let store = self.store.clone();
            let p = path.to_string();
            return Ok(blocking(move || store.file(&p)).await??);
        }
        let url = format!("/api/v1/cluster/files/{}", encode_path(path));
        let (status, bytes) = self.call(i, Method::GET, &url, full(Bytes::new())).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ClusterError::Node {
                        node: self.id(i),
                        why: format!("bad record: {e}"),
                    })
            }
            s => Err(self.node_error(i, s, &bytes)),
        }
    }

    /// The manifest published at `path`, from its owners.
    pub async fn manifest(&self, path: &str) -> Result<Option<Manifest>, ClusterError> {
        Ok(self.record(path).await?.and_then(|r| r.manifest))
    }

    /// Chunk `hash`, from this node or from the nodes of its preference list in order,
    /// verified against its address.
    pub async fn chunk(&self, hash: ChunkHash) -> Result<Bytes, ClusterError> {
        let store = self.store.clone();
        match blocking(move || store.read_chunk(&hash)).await? {
            Ok(Some(b)) => return Ok(b),
            Ok(None) => {}
            Err(e @ StoreError::Corrupt { .. }) => {
                self.metrics.corrupt_chunks.inc();
                warn!(error = %e, "serving a replica's copy instead");
            }
            Err(e) => return Err(e.into()),
        }
        self.remote_chunk(hash).await
    }

    /// Chunk `hash` from another node.
    async fn remote_chunk(&self, hash: ChunkHash) -> Result<Bytes, ClusterError> {
        let v = self.view();
        let mut pref = v.ring.chunk_nodes(&hash);
        if let Some(before) = &v.previous {
            // During a move, its owners before the change come right after its owners.
            let at = v.ring.replication().min(pref.len());
            let extra: Vec<usize> = before
                .chunk_owners(&hash)
                .into_iter()
                .filter(|i| !pref[..at].contains(i))
                .collect();
            pref.retain(|i| !extra.contains(i));
            pref.splice(at..at, extra);
        }
        // Live nodes first, in preference order; then the others, in case the marks lag.
        let order = pref
            .iter()
            .filter(|&&i| i != self.me && self.alive(i))
            .chain(pref.iter().filter(|&&i| i != self.me && !self.alive(i)));
        for &i in order {
            let peer = self.peer(i);
            match tokio::time::timeout(self.timeout(), peer.client.chunk(hash)).await {
                Ok(Ok(b)) => {
                    self.mark(i, true);
                    return Ok(b);
                }
                Ok(Err(e)) => {
                    if !matches!(e, tessera_origin_proto::ClientError::Status { .. }) {
                        self.mark(i, false);
                    }
                    debug!(node = %self.peer(i).id, error = %e, "chunk not served by this node");
                }
                Err(_) => self.mark(i, false),
            }
        }
        Err(ClusterError::ChunkUnavailable(hash))
    }

    /// Deletes `path` cluster-wide: a tombstone on its owners; its fragments are dropped at
    /// once with no [`ClusterConfig::superseded_grace_secs`], else by repair after it.
    /// Returns `false` if nothing was published there.
    pub async fn delete(self: &Arc<Self>, path: &str) -> Result<bool, ClusterError> {
        self.ensure_quorum().await?;
        match self.record(path).await? {
            Some(r) if r.manifest.is_some() => {}
            _ => return Ok(false),
        }
        let rec = FileRecord {
            path: path.to_string(),
            stamp: self.stamp(),
            upload: new_id(),
            manifest: None,
        };
        let (_, current) = self.put_record(&rec).await.map_err(|e| e.error)?;
        self.drop_older(&current).await;
        Ok(true)
    }

    /// Published files under `prefix`, merged from every live node.
    pub async fn list(&self, prefix: &str) -> Result<Vec<FileRecord>, ClusterError> {
        let mut merged: HashMap<String, FileRecord> = HashMap::new();
        for i in self.view().in_play() {
            if !self.alive(i) {
                continue;
            }
            let recs = match self.records_on(i, prefix).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "listing skipped a node");
                    continue;
                }
            };
            for r in recs {
                match merged.get(&r.path) {
                    Some(cur) if !r.newer_than(cur) => {}
                    _ => {
                        merged.insert(r.path.clone(), r);
                    }
                }
            }
        }
        let mut out: Vec<FileRecord> = merged
            .into_values()
            .filter(|r| r.manifest.is_some())
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn records_on(&self, i: usize, prefix: &str) -> Result<Vec<FileRecord>, ClusterError> {
        if i == self.me {
            let store = self.store.clone();
            let p = prefix.to_string();
            return Ok(blocking(move || store.files(&p)).await??);
        }
        let url = format!(
            "/api/v1/cluster/files?prefix={}",
            percent_encoding::utf8_percent_encode(prefix, percent_encoding::NON_ALPHANUMERIC)
        );
        let (status, bytes) = self.call(i, Method::GET, &url, full(Bytes::new())).await?;
        if !status.is_success() {
            return Err(self.node_error(i, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClusterError::Node {
            node: self.id(i),
            why: format!("bad listing: {e}"),
        })
    }

    /// The fragment of one version on node `i`, as its chunk list.
    async fn fragment_on(
        &self,
        i: usize,
        path: &str,
        stamp: u64,
        upload: &str,
    ) -> Result<Option<Vec<(ChunkHash, u32)>>, ClusterError> {
        let url = format!(
            "/api/v1/cluster/fragments/{stamp}.{upload}/{}",
            encode_path(path)
        );
        let (status, bytes) = self.call(i, Method::GET, &url, full(Bytes::new())).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let list: Vec<ManifestChunk> =
                    serde_json::from_slice(&bytes).map_err(|e| ClusterError::Node {
                        node: self.id(i),
                        why: format!("bad fragment: {e}"),
                    })?;
                Ok(Some(list.into_iter().map(|c| (c.hash, c.size)).collect()))
            }
            s => Err(self.node_error(i, s, &bytes)),
        }
    }

    /// Storage figures of the whole cluster (`GET /api/v1/cluster/stats`), shaped like a
    /// node's `/api/v1/stats`: `objects` and `logical_bytes` count each published file once;
    /// `unique_bytes` is the chunk bytes of every node divided by the replication factor
    /// (each chunk is stored that many times); `stored_bytes` is every node's disk use, all
    /// copies; so `dedup_ratio` is per copy and `efficiency` includes replication
    /// (`efficiency_per_copy` does not). Per-node figures are under `nodes`. Every node
    /// must answer: a missing node would make the sums wrong.
    pub async fn stats(&self) -> Result<serde_json::Value, ClusterError> {
        let mut nodes = serde_json::Map::new();
        let (mut unique, mut stored) = (0u64, 0u64);
        for i in self.view().in_play() {
            let st = if i == self.me {
                let store = self.store.clone();
                blocking(move || store.stats()).await??
            } else {
                let (status, bytes) = self
                    .call(i, Method::GET, "/api/v1/stats", full(Bytes::new()))
                    .await?;
                if !status.is_success() {
                    return Err(self.node_error(i, status, &bytes));
                }
                serde_json::from_slice::<tessera_origin_proto::client::Stats>(&bytes).map_err(
                    |e| ClusterError::Node {
                        node: self.id(i),
                        why: format!("bad stats: {e}"),
                    },
                )?
            };
            unique += st.unique_bytes;
            stored += st.stored_bytes;
            nodes.insert(self.id(i), serde_json::to_value(&st).unwrap());
        }
        let files = self.list("").await?;
        let logical: u64 = files
            .iter()
            .filter_map(|r| r.manifest.as_ref())
            .map(|m| m.size)
            .sum();
        let r = self.ring().replication() as u64;
        let unique = unique / r.max(1);
        let ratio = |a: f64, b: f64| if b == 0.0 { 1.0 } else { a / b };
        Ok(serde_json::json!({
            "objects": files.len(),
            "logical_bytes": logical,
            "unique_bytes": unique,
            "stored_bytes": stored,
            "dedup_ratio": ratio(logical as f64, unique as f64),
            "compression_ratio": ratio((unique * r) as f64, stored as f64),
            "efficiency": ratio(logical as f64, stored as f64),
            "efficiency_per_copy": ratio((logical * r) as f64, stored as f64),
            "replication": r,
            "nodes": nodes,
        }))
    }

    /// The status document of `GET /api/v1/cluster`.
    pub fn status(&self) -> serde_json::Value {
        let v = self.view();
        let nodes: Vec<_> = v
            .in_play()
            .into_iter()
            .map(|i| {
                let p = &v.peers[i];
                let member = v.membership.nodes.iter().find(|n| n.id == p.id);
                serde_json::json!({
                    "id": p.id,
                    "url": p.client.base(),
                    "weight": member.map_or(0, |n| n.weight),
                    "member": member.is_some(),
                    "epoch": if i == self.me { v.membership.epoch } else { p.epoch.load(Ordering::Relaxed) },
                    "moved": if i == self.me { self.moved.load(Ordering::Relaxed) } else { p.moved.load(Ordering::Relaxed) },
                    "live": self.alive(i),
                    "me": i == self.me,
                })
            })
            .collect();
        serde_json::json!({
            "me": self.me(),
            "replication": self.ring().replication(),
            "vnodes": self.cfg.vnodes,
            "write_rule": format!(
                "every chunk and the file record durable on {} distinct live nodes (owners first, then stand-ins)",
                self.ring().replication()
            ),
            "nodes": nodes,
            "repair_running": self.metrics.cluster_repair_running.get() == 1,
            "repair_checked": self.metrics.cluster_repair_checked.get(),
            "repair": *self.report.lock().unwrap(),
            "resynchronising": self.resyncing(),
            "epoch": v.membership.epoch,
            "settled": v.previous.is_none(),
            "moved": self.moved.load(Ordering::Relaxed),
        })
    }

    /// Whether this node is resynchronising after being away longer than the tombstone
    /// horizon: it answers no peer's question about its records meanwhile.
    pub fn resyncing(&self) -> bool {
        self.resyncing.load(Ordering::Relaxed)
    }

    /// Runs repair passes every `repair_interval_secs` and after a membership change,
    /// forever.
    pub async fn repair_loop(self: Arc<Self>) {
        let every = self.cfg.repair_interval_secs;
        loop {
            // A membership change wants a pass now, not at the next tick (and even when
            // passes run only on request: its data must move).
            if every == 0 {
                self.kick.notified().await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(every)) => {}
                    _ = self.kick.notified() => {}
                }
            }
            if let Err(e) = self.repair().await {
                warn!(error = %e, "repair pass failed");
            }
        }
    }

    /// One repair pass (see the module docs): full when due.
    pub async fn repair(self: &Arc<Self>) -> Result<RepairReport, ClusterError> {
        self.repair_pass(false).await
    }

    /// One repair pass. It compares digests with every live peer and looks at the paths
    /// that differ and at those changed here since the last pass; a full pass (`full`, every
    /// `full_repair_secs`, or after the changed set overflowed) looks at everything this
    /// node holds as well.
    pub async fn repair_pass(self: &Arc<Self>, full: bool) -> Result<RepairReport, ClusterError> {
        let _one = self.repairing.lock().await;
        let epoch = self.view().membership.epoch;
        let m = &self.metrics;
        m.cluster_repair_running.set(1);
        m.cluster_repair_checked.set(0);
        let mut rep = RepairReport::default();
        let horizon = self.cfg.tombstone_secs.saturating_mul(1000);
        if self.member_count() == 1 {
            // A cluster of one is never out of contact with itself.
            self.contact.store(now_ms(), Ordering::Relaxed);
        }
        let away = now_ms().saturating_sub(self.contact.load(Ordering::Relaxed));
        if away > horizon && !self.resyncing.swap(true, Ordering::Relaxed) {
            warn!(
                away_secs = away / 1000,
                "no peer answered for longer than tombstones are kept: resynchronising"
            );
        }
        if self.resyncing() {
            m.cluster_resyncing.set(1);
            let done = self.resync(&mut rep).await;
            m.cluster_repair_running.set(0);
            if done? {
                self.resyncing.store(false, Ordering::Relaxed);
                m.cluster_resyncing.set(0);
                self.save_contact().await?;
                info!(
                    records_dropped = rep.records_dropped,
                    "resynchronised with the cluster: serving records again"
                );
            }
            rep.finished = now_ms() / 1000;
            *self.report.lock().unwrap() = rep.clone();
            return Ok(rep);
        }
        let now = now_ms() / 1000;
        let (mut paths, overflow) = {
            let mut d = self.dirty.lock().unwrap();
            let taken = std::mem::take(&mut *d);
            (taken.paths, taken.overflow)
        };
        let due = self.cfg.full_repair_secs > 0
            && now.saturating_sub(self.last_full.load(Ordering::Relaxed))
                >= self.cfg.full_repair_secs;
        // Until this node has moved its data for the membership, every pass is full.
        let unmoved = self.moved.load(Ordering::Relaxed) < epoch;
        rep.full = full || overflow || due || unmoved;
        let mut redo = HashSet::new();
        let done = async {
            let v = self.view();
            for o in v.ring.members() {
                if o == self.me {
                    continue;
                }
                if v.peers[o].epoch.load(Ordering::Relaxed) != v.membership.epoch {
                    // Digests follow the ring: a node on another membership differs
                    // everywhere. Its data moves in the full pass of the change.
                    rep.chunks_waiting += self.digests().shared_chunks(o);
                    continue;
                }
                if !self.alive(o) {
                    rep.chunks_waiting += self.digests().shared_chunks(o);
                    continue;
                }
                match self.sync_with(o, &mut rep).await {
                    Ok(differ) => paths.extend(differ),
                    Err(e) => {
                        rep.errors += 1;
                        rep.chunks_waiting += self.digests().shared_chunks(o);
                        debug!(node = %self.peer(o).id, error = %e, "digest exchange");
                    }
                }
            }
            rep.paths = paths.len() as u64;
            self.repair_paths(rep.full, &paths, &mut rep, &mut redo)
                .await
        }
        .await;
        m.cluster_repair_running.set(0);
        {
            // What could not be settled (and, after an error, everything) is looked at again.
            let mut d = self.dirty.lock().unwrap();
            let again = if done.is_err() { &paths } else { &redo };
            for p in again {
                d.insert(p);
            }
            if done.is_err() && rep.full {
                d.overflow = true;
            }
        }
        done?;
        if rep.full {
            self.last_full.store(now, Ordering::Relaxed);
            // Everything this node holds is where the membership of this pass puts it.
            let moved = rep.errors == 0 && rep.chunks_waiting == 0 && redo.is_empty();
            let v = self.view();
            if moved
                && v.membership.epoch == epoch
                && self.moved.fetch_max(epoch, Ordering::Relaxed) < epoch
            {
                self.save_membership(&v.membership).await?;
                info!(
                    epoch,
                    "this node has moved its data for the current membership"
                );
            }
        }
        self.save_contact().await?;
        let store = self.store.clone();
        blocking(move || store.collect_garbage()).await??;
        rep.finished = now_ms() / 1000;
        m.cluster_under_replicated.set(rep.chunks_waiting as i64);
        m.cluster_repair_copies
            .inc_by(rep.chunks_copied + rep.records_copied);
        m.cluster_repair_passes.inc();
        m.cluster_repair_buckets_differing
            .inc_by(rep.buckets_differing);
        m.cluster_repair_paths.inc_by(rep.paths);
        *self.report.lock().unwrap() = rep.clone();
        Ok(rep)
    }

    /// Whether every other node answers that it is resynchronising too.
    async fn all_peers_resyncing(&self) -> bool {
        let asks = self
            .ring()
            .members()
            .collect::<Vec<_>>()
            .into_iter()
            .filter(|&o| o != self.me)
            .map(|o| async move {
                match self
                    .call(o, Method::GET, "/api/v1/cluster", full(Bytes::new()))
                    .await
                {
                    Ok((s, body)) if s.is_success() => {
                        serde_json::from_slice::<serde_json::Value>(&body)
                            .is_ok_and(|v| v["resynchronising"] == true)
                    }
                    _ => false,
                }
            });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .all(|r| r)
    }

    /// Saves when a peer last answered, for the check at the next start.
    async fn save_contact(&self) -> Result<(), ClusterError> {
        let (store, ms) = (self.store.clone(), self.contact.load(Ordering::Relaxed));
        blocking(move || store.set_cluster_contact(ms)).await??;
        Ok(())
    }

    /// Resynchronises a node back after longer than the tombstone horizon: a file deleted
    /// meanwhile has no tombstone left anywhere, so this node's record of it would bring
    /// it back. Each record it holds is compared with the path's other owners: one they
    /// have newer is taken, one none of them has is dropped (deleted while away, its
    /// tombstone expired), one they have older stays for repair to push. Returns whether
    /// every record was settled (every other owner answered).
    async fn resync(&self, rep: &mut RepairReport) -> Result<bool, ClusterError> {
        rep.resynchronising = true;
        if self.all_peers_resyncing().await {
            // The whole cluster was away together: nothing was deleted meanwhile.
            info!("every other node is resynchronising too: the cluster was down as a whole");
            return Ok(true);
        }
        let store = self.store.clone();
        let records = blocking(move || store.files("")).await??;
        let jobs = records.into_iter().map(|rec| async move {
            let others: Vec<usize> = self
                .ring()
                .file_owners(&rec.path)
                .into_iter()
                .filter(|&o| o != self.me)
                .collect();
            if others.iter().any(|&o| !self.alive(o)) {
                return Ok::<_, ClusterError>((rec.path, false, false));
            }
            let answers = futures_util::future::join_all(
                others.iter().map(|&o| self.record_on(o, &rec.path)),
            )
            .await;
            let mut newest: Option<FileRecord> = None;
            for a in answers {
                match a {
                    Ok(Some(r)) => {
                        if newest.as_ref().is_none_or(|n| r.newer_than(n)) {
                            newest = Some(r);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => return Ok((rec.path, false, false)),
                }
            }
            let store = self.store.clone();
            let dropped = match newest {
                None => {
                    let (p, s, u) = (rec.path.clone(), rec.stamp, rec.upload.clone());
                    blocking(move || store.forget_file(&p, s, &u)).await??
                }
                Some(n) if n.newer_than(&rec) => {
                    if self.ring().file_owners(&rec.path).contains(&self.me) {
                        blocking(move || store.put_file(&n)).await??;
                    }
                    false
                }
                Some(_) => false,
            };
            Ok((rec.path, true, dropped))
        });
        use futures_util::StreamExt as _;
        let mut results = futures_util::stream::iter(jobs).buffer_unordered(REPAIR_CONCURRENCY);
        let mut settled = true;
        while let Some(r) = results.next().await {
            let (path, ok, dropped) = r?;
            rep.records += 1;
            settled &= ok;
            if dropped {
                rep.records_dropped += 1;
            }
            // Its fragments are looked at by the next pass.
            self.dirty.lock().unwrap().insert(&path);
        }
        Ok(settled)
    }

    /// The top level of this node's digests toward `peer` ([`Digests::encoded_top`]).
    pub fn digest_for(&self, peer: &str) -> Result<Vec<u8>, ClusterError> {
        Ok(self.digests().encoded_top(self.peer_index(peer)?))
    }

    /// The bucket digests of `groups` toward `peer` ([`Digests::encoded_buckets`]).
    pub fn bucket_digests_for(&self, peer: &str, groups: &[u16]) -> Result<Vec<u8>, ClusterError> {
        let o = self.peer_index(peer)?;
        if let Some(g) = groups.iter().find(|&&g| g as usize >= crate::digest::TOP) {
            return Err(ClusterError::BadInput(format!(
                "group {g} is out of range (0..{})",
                crate::digest::TOP
            )));
        }
        Ok(self.digests().encoded_buckets(o, groups))
    }

    /// This node's items of `buckets` as listed toward `peer`.
    pub async fn items_for(
        &self,
        peer: &str,
        buckets: Vec<u16>,
    ) -> Result<Vec<Listed>, ClusterError> {
        let o = self.peer_index(peer)?;
        let store = self.store.clone();
        let items = blocking(move || store.sync_items(&buckets)).await??;
        Ok(self.digests().listed(&items, o))
    }

    fn peer_index(&self, peer: &str) -> Result<usize, ClusterError> {
        match self.view().peers.iter().position(|p| p.id == peer) {
            Some(i) if i != self.me => Ok(i),
            _ => Err(ClusterError::BadInput(format!(
                "{peer:?} is not another node of this cluster"
            ))),
        }
    }

    /// Compares digests with node `o`, top level, then the buckets of the groups that
    /// differ, then the items of the buckets that differ; returns the paths whose items
    /// differ.
    async fn sync_with(
        &self,
        o: usize,
        rep: &mut RepairReport,
    ) -> Result<HashSet<String>, ClusterError> {
        let me = encode_path(&self.me_id);
        let digest_url = format!("/api/v1/cluster/sync/digest?peer={me}");
        let bad = |why: String| ClusterError::Node {
            node: self.id(o),
            why,
        };
        let top = self
            .sync_call(o, Method::GET, &digest_url, Bytes::new())
            .await?;
        let digests = self.digests();
        let groups = digests
            .differing_top(o, &top)
            .ok_or_else(|| bad(format!("a top digest of {} bytes", top.len())))?;
        rep.peers_compared += 1;
        let mut buckets = Vec::new();
        for part in groups.chunks(1024) {
            let body = Bytes::from(serde_json::json!({ "groups": part }).to_string());
            let theirs = self.sync_call(o, Method::POST, &digest_url, body).await?;
            buckets.extend(
                digests
                    .differing_buckets(o, part, &theirs)
                    .ok_or_else(|| bad(format!("bucket digests of {} bytes", theirs.len())))?,
            );
        }
        rep.buckets_differing += buckets.len() as u64;
        let mut paths = HashSet::new();
        for part in buckets.chunks(1024) {
            let body = Bytes::from(serde_json::json!({ "buckets": part }).to_string());
            let url = format!("/api/v1/cluster/sync/items?peer={me}");
            let bytes = self.sync_call(o, Method::POST, &url, body).await?;
            let theirs: HashSet<Listed> = serde_json::from_slice::<Vec<Listed>>(&bytes)
                .map_err(|e| bad(format!("bad item list: {e}")))?
                .into_iter()
                .collect();
            let store = self.store.clone();
            let part = part.to_vec();
            let items = blocking(move || store.sync_items(&part)).await??;
            let mine: HashSet<Listed> = self.digests().listed(&items, o).into_iter().collect();
            for l in mine.symmetric_difference(&theirs) {
                paths.insert(l.path.clone());
            }
        }
        Ok(paths)
    }

    /// One anti-entropy call to node `o`: the body of a success, else the node's error.
    async fn sync_call(
        &self,
        o: usize,
        method: Method,
        url: &str,
        body: Bytes,
    ) -> Result<Bytes, ClusterError> {
        let (status, bytes) = self.call(o, method, url, full(body)).await?;
        if !status.is_success() {
            return Err(self.node_error(o, status, &bytes));
        }
        Ok(bytes)
    }

    /// Repairs the records and fragments this node holds of `paths` (of everything with
    /// `full`), [`REPAIR_CONCURRENCY`] paths at a time. Paths left unsettled go to `redo`.
    async fn repair_paths(
        &self,
        full: bool,
        paths: &HashSet<String>,
        rep: &mut RepairReport,
        redo: &mut HashSet<String>,
    ) -> Result<(), ClusterError> {
        let store = self.store.clone();
        let (records, fragments) = if full {
            blocking(move || Ok::<_, StoreError>((store.files("")?, store.fragments()?))).await??
        } else {
            let list: Vec<String> = paths.iter().cloned().collect();
            blocking(move || {
                Ok::<_, StoreError>((store.files_of(&list)?, store.fragments_of(&list)?))
            })
            .await??
        };
        let mut by_path: HashMap<String, (Option<FileRecord>, Vec<Fragment>)> = HashMap::new();
        for r in records {
            let path = r.path.clone();
            by_path.entry(path).or_default().0 = Some(r);
        }
        for f in fragments {
            by_path.entry(f.path.clone()).or_default().1.push(f);
        }
        let jobs = by_path.into_iter().map(|(path, (rec, frags))| {
            let flagged = paths.contains(&path);
            async move {
                let mut r = RepairReport::default();
                let mut again = false;
                if let Some(rec) = rec {
                    self.repair_record(rec, flagged, &mut r, &mut again).await?;
                }
                if !frags.is_empty() {
                    self.repair_fragments(&path, frags, flagged, &mut r, &mut again)
                        .await?;
                }
                Ok::<_, ClusterError>((path, r, again))
            }
        });
        use futures_util::StreamExt as _;
        let mut results = futures_util::stream::iter(jobs).buffer_unordered(REPAIR_CONCURRENCY);
        while let Some(done) = results.next().await {
            let (path, r, again) = done?;
            rep.add(&r);
            if again {
                redo.insert(path);
            }
        }
        Ok(())
    }

    /// A record this node holds: pushed to owners that lack it, dropped here once its
    /// owners have it if this node is not one, or once an old tombstone expires. An owned
    /// record no digest flagged (`flagged`) is where its co-owners have it and is skipped.
    async fn repair_record(
        &self,
        rec: FileRecord,
        flagged: bool,
        rep: &mut RepairReport,
        again: &mut bool,
    ) -> Result<(), ClusterError> {
        let owners = self.ring().file_owners(&rec.path);
        let expired = rec.manifest.is_none()
            && now_ms().saturating_sub(rec.stamp) > self.cfg.tombstone_secs * 1000;
        if owners.contains(&self.me) && !expired && !flagged {
            return Ok(());
        }
        rep.records += 1;
        self.metrics.cluster_repair_checked.inc();
        let body = Bytes::from(serde_json::to_vec(&rec).expect("records serialise"));
        let mut confirmed = 0;
        for &o in &owners {
            if o == self.me {
                confirmed += 1;
                continue;
            }
            if !self.alive(o) {
                *again = true;
                continue;
            }
            // Ask first: a path flagged for its fragments often has its record in place.
            let cur = match self.record_on(o, &rec.path).await {
                Ok(Some(b)) if !rec.newer_than(&b) => Ok(b),
                Ok(_) => {
                    let pushed = self.put_record_on(o, &rec, body.clone()).await;
                    if pushed.is_ok() {
                        rep.records_copied += 1;
                    }
                    pushed
                }
                Err(e) => Err(e),
            };
            match cur {
                Ok(cur) => {
                    confirmed += 1;
                    if cur.newer_than(&rec) && owners.contains(&self.me) {
                        let store = self.store.clone();
                        blocking(move || store.put_file(&cur)).await??;
                    }
                }
                Err(e) => {
                    rep.errors += 1;
                    *again = true;
                    debug!(error = %e, "record repair");
                }
            }
        }
        let moved = !owners.contains(&self.me) && confirmed == owners.len();
        if expired || moved {
            let store = self.store.clone();
            let (p, s, u) = (rec.path.clone(), rec.stamp, rec.upload.clone());
            blocking(move || store.forget_file(&p, s, &u)).await??;
        }
        Ok(())
    }

    /// The fragments this node holds of `path`: dropped once superseded (or failed) long
    /// enough ago, else their chunks pushed to owners that lack them (for a current
    /// version no digest flagged, only if this node holds chunks it does not own).
    async fn repair_fragments(
        &self,
        path: &str,
        frags: Vec<Fragment>,
        flagged: bool,
        rep: &mut RepairReport,
        again: &mut bool,
    ) -> Result<(), ClusterError> {
        let cur = match self.record(path).await {
            Ok(r) => r,
            Err(e) => {
                rep.errors += 1;
                *again = true;
                debug!(error = %e, "fragment repair: no record");
                return Ok(());
            }
        };
        let now = now_ms();
        for f in frags {
            rep.fragments += 1;
            self.metrics.cluster_repair_checked.inc();
            let version = (f.stamp, f.upload.as_str());
            let is_current = cur
                .as_ref()
                .is_some_and(|c| c.manifest.is_some() && c.version() == version);
            if !is_current {
                let stale = match &cur {
                    // Superseded (or deleted) long enough ago that reads of it are over.
                    Some(c) => {
                        c.version() > version
                            && now.saturating_sub(c.stamp) >= self.cfg.superseded_grace_secs * 1000
                    }
                    // No record yet: a publish in flight, or a failed one once old enough.
                    None => now.saturating_sub(f.stamp) > self.cfg.fragment_grace_secs * 1000,
                };
                if stale {
                    let store = self.store.clone();
                    let (p, s, u) = (f.path.clone(), f.stamp, f.upload.clone());
                    rep.fragments_dropped +=
                        blocking(move || store.drop_one_fragment(&p, s, &u)).await?? as u64;
                } else {
                    *again = true;
                }
                continue;
            }
            let hinted = f
                .chunks
                .iter()
                .any(|(h, _)| !self.ring().chunk_owners(h).contains(&self.me));
            if !hinted && !flagged {
                continue; // the digests vouch for its owners' copies
            }
            let before = (rep.errors, rep.chunks_waiting);
            self.repair_fragment(&f, rep).await?;
            if (rep.errors, rep.chunks_waiting) != before {
                *again = true;
            }
        }
        Ok(())
    }

    /// Makes every owner of this fragment's chunks hold them in its own fragment of the same
    /// version; then drops from this node's fragment the chunks it does not own.
    async fn repair_fragment(
        &self,
        f: &Fragment,
        rep: &mut RepairReport,
    ) -> Result<(), ClusterError> {
        let mut by_owner: HashMap<usize, Vec<(ChunkHash, u32)>> = HashMap::new();
        let mut mine_owned = HashSet::new();
        for &(h, size) in &f.chunks {
            for o in self.ring().chunk_owners(&h) {
                if o == self.me {
                    mine_owned.insert(h);
                } else {
                    by_owner.entry(o).or_default().push((h, size));
                }
            }
        }
        let mut confirmed: HashMap<ChunkHash, usize> = HashMap::new();
        for (o, want) in by_owner {
            if !self.alive(o) {
                rep.chunks_waiting += want.len() as u64;
                continue;
            }
            let have: HashSet<ChunkHash> =
                match self.fragment_on(o, &f.path, f.stamp, &f.upload).await {
                    Ok(l) => l.unwrap_or_default().into_iter().map(|(h, _)| h).collect(),
                    Err(e) => {
                        rep.errors += 1;
                        rep.chunks_waiting += want.len() as u64;
                        debug!(error = %e, "fragment repair");
                        continue;
                    }
                };
            let missing: Vec<(ChunkHash, u32)> = want
                .iter()
                .filter(|(h, _)| !have.contains(h))
                .copied()
                .collect();
            rep.chunks_missing += missing.len() as u64;
            if !missing.is_empty() {
                match self.send_chunks(o, f, &missing).await {
                    Ok(()) => rep.chunks_copied += missing.len() as u64,
                    Err(e) => {
                        rep.errors += 1;
                        rep.chunks_waiting += missing.len() as u64;
                        warn!(node = %self.peer(o).id, error = %e, "could not copy chunks to their owner");
                        continue;
                    }
                }
            }
            for (h, _) in want {
                *confirmed.entry(h).or_default() += 1;
            }
        }
        // Chunks this node holds for owners that now all have them can go from here.
        let keep: Vec<(ChunkHash, u32)> = f
            .chunks
            .iter()
            .filter(|(h, _)| {
                mine_owned.contains(h)
                    || confirmed.get(h).copied().unwrap_or(0) < self.ring().replication()
            })
            .copied()
            .collect();
        if keep.len() < f.chunks.len() {
            rep.chunks_moved_off += (f.chunks.len() - keep.len()) as u64;
            let gone: HashSet<ChunkHash> = f
                .chunks
                .iter()
                .map(|(h, _)| *h)
                .filter(|h| !keep.iter().any(|(k, _)| k == h))
                .collect();
            let store = self.store.clone();
            let key = fragment_key(&f.path, f.stamp, &f.upload);
            let (p, s, u) = (f.path.clone(), f.stamp, f.upload.clone());
            blocking(move || -> Result<(), StoreError> {
                // What the fragment holds now, less what its owners confirmed: chunks
                // merged in since `f` was read stay.
                let _guard = store.fragment_guard(&key);
                let Some(now) = store.fragment(&p, s, &u)? else {
                    return Ok(());
                };
                let keep: Vec<(ChunkHash, u32)> = now
                    .chunks
                    .into_iter()
                    .filter(|(h, _)| !gone.contains(h))
                    .collect();
                if keep.is_empty() {
                    store.drop_one_fragment(&p, s, &u)?;
                    return Ok(());
                }
                let mut up = store.upload();
                for (h, size) in keep {
                    if !up.reference_chunk(h, size)? {
                        return Err(StoreError::MissingChunk(h));
                    }
                }
                up.finish_fragment(&key)?;
                Ok(())
            })
            .await??;
        }
        Ok(())
    }

    /// Sends `chunks` (read from this node) to node `o`, merged into its fragment of `f`'s
    /// version.
    async fn send_chunks(
        &self,
        o: usize,
        f: &Fragment,
        chunks: &[(ChunkHash, u32)],
    ) -> Result<(), ClusterError> {
        let mut body = BytesMut::new();
        for &(h, _) in chunks {
            let data = self.chunk(h).await?;
            body.extend_from_slice(&frame(&h, &data));
        }
        let bytes = body.len() as u64;
        self.pace(bytes).await;
        let url = format!(
            "/api/v1/cluster/fragments/{}.{}/{}?merge=1",
            f.stamp,
            f.upload,
            encode_path(&f.path)
        );
        let (status, reply) = self.call(o, Method::PUT, &url, full(body.freeze())).await?;
        if !status.is_success() {
            return Err(self.node_error(o, status, &reply));
        }
        self.metrics.cluster_repair_bytes_sent.inc_by(bytes);
        Ok(())
    }

    /// Waits for `bytes` more of repair copies to fit [`ClusterConfig::repair_bytes_per_sec`].
    async fn pace(&self, bytes: u64) {
        let rate = self.cfg.repair_bytes_per_sec;
        if rate == 0 {
            return;
        }
        let start = {
            let mut next = self.pacer.lock().await;
            let now = tokio::time::Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// Reads and verifies every chunk of this node at `scrub_bytes_per_sec`, forever,
    /// replacing corrupt ones from replicas.
    pub async fn scrub_loop(self: Arc<Self>) {
        let rate = self.cfg.scrub_bytes_per_sec;
        if rate == 0 {
            return;
        }
        loop {
            match self.scrub(rate).await {
                Ok((checked, repaired)) => debug!(checked, repaired, "scrub pass done"),
                Err(e) => warn!(error = %e, "scrub pass failed"),
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }

    /// One scrub pass at `rate` bytes per second; returns chunks checked and repaired.
    pub async fn scrub(&self, rate: u64) -> Result<(u64, u64), ClusterError> {
        let store = self.store.clone();
        let all = blocking(move || store.chunk_addresses()).await??;
        let (mut checked, mut repaired) = (0, 0);
        let started = tokio::time::Instant::now();
        let mut bytes = 0u64;
        for h in all {
            let store = self.store.clone();
            let r = blocking(move || store.load_chunk(&h)).await?;
            checked += 1;
            self.metrics.scrub_chunks.inc();
            match r {
                Ok(Some(c)) => bytes += c.stored.len() as u64,
                Ok(None) => continue, // collected meanwhile
                Err(StoreError::Corrupt { .. }) => {
                    self.metrics.corrupt_chunks.inc();
                    self.metrics.scrub_corrupt.inc();
                    warn!(chunk = %h, "scrub found a corrupt chunk; fetching a replica");
                    match self.remote_chunk(h).await {
                        Ok(data) => {
                            let store = self.store.clone();
                            blocking(move || store.rewrite_chunk(&h, &data)).await??;
                            self.metrics.scrub_repaired.inc();
                            repaired += 1;
                            info!(chunk = %h, "corrupt chunk replaced from a replica");
                        }
                        Err(e) => warn!(chunk = %h, error = %e, "no replica to repair from"),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            // Bounded rate: sleep until the bytes read so far fit the budget.
            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
            let spent = started.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
        Ok((checked, repaired))
    }
}

/// Runs blocking store code off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClusterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClusterError::Store(StoreError::Commit(format!("task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_orders_stamps_after_everything_seen_whatever_the_wall_clock() {
        let c = Hlc::default();
        assert_eq!(c.next(1_000), 1_000);
        assert_eq!(c.next(1_000), 1_001, "the same millisecond: one more");
        assert_eq!(c.next(900), 1_002, "the wall clock went back: still later");
        c.observe(600_000); // a peer ten minutes ahead
        assert_eq!(c.next(1_003), 600_001);
        c.observe(5); // an older stamp changes nothing
        assert_eq!(c.next(1_004), 600_002);
        assert_eq!(c.next(700_000), 700_000, "the wall clock caught up");
        // A peer's clock is also what its client sends and takes from answers.
        c.shared().fetch_max(800_000, Ordering::SeqCst);
        assert_eq!(c.get(), 800_000);
        c.observe(u64::MAX);
        assert_eq!(c.next(1), u64::MAX, "saturates, never wraps to the past");
    }

    #[test]
    fn frames_round_trip_in_any_split_and_are_checked() {
        let a = Bytes::from(vec![7u8; 1000]);
        let b = Bytes::from_static(b"hello");
        let (ha, hb) = (ChunkHash::of(&a), ChunkHash::of(&b));
        let mut wire = frame(&ha, &a).to_vec();
        wire.extend_from_slice(&held_frame(&hb, 5));
        wire.extend_from_slice(&frame(&hb, &b));
        for split in [1, 7, 36, 500, wire.len()] {
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            for part in wire.chunks(split) {
                got.extend(r.push(part).unwrap());
            }
            assert!(r.is_clean());
            assert_eq!(
                got,
                vec![
                    Piece::Chunk(ha, a.clone()),
                    Piece::Held(hb, 5),
                    Piece::Chunk(hb, b.clone())
                ]
            );
        }
        let mut bad = frame(&ha, &a).to_vec();
        bad[40] ^= 1;
        assert!(FrameReader::default().push(&bad).is_err());
        let mut huge = vec![0u8; 32];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(FrameReader::default().push(&huge).is_err());
        let mut empty = vec![0u8; 32];
        empty.extend_from_slice(&HELD.to_be_bytes());
        assert!(
            FrameReader::default().push(&empty).is_err(),
            "a held chunk of 0 bytes"
        );
    }
}
