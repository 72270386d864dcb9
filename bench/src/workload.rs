//! The seed's workloads as deterministic generators of operations (issue 7 groundwork): what
//! to request, how big, in what mix. No I/O here; the load generator turns operations into
//! requests. Every generator is seeded, so a run can be repeated exactly.
//!
//! - **read-heavy**: 80 % reads, 20 % writes; read sizes 50 % < 1 MB, 35 % 1–100 MB,
//!   15 % > 100 MB (up to 1 GB); write sizes 60/30/10 over the same buckets.
//! - **write-heavy**: 80 % of operations are writes, issued in batches of 10.
//! - **cdn**: 80 % of requests go to a popular set of 1,000 objects (Zipf, alpha 1), 20 % to a
//!   uniform long tail of up to 1,000,000 objects.
//! - **backup**: successive versions of one data set, each a copy of the last with a few
//!   small regions changed (high dedup across versions), and occasional restores.
//! - **trace**: a CSV trace `timestamp,key,size` replayed in order.
//!
//! `scale` multiplies every size (and the tail's object count), so the shapes fit a small
//! machine: at 0.01 a "100 MB" object is 1 MB.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::policy::Zipf;

/// One thing a client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Fetch `key` (expected to be `size` bytes).
    Read { key: String, size: u64 },
    /// Publish `size` bytes at `key`.
    Write { key: String, size: u64 },
}

impl Op {
    pub fn size(&self) -> u64 {
        match self {
            Op::Read { size, .. } | Op::Write { size, .. } => *size,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(self, Op::Write { .. })
    }
}

/// Reads pick among objects written at least this many writes ago, so that with many
/// clients a read does not race the write of its own object.
pub const SETTLE: usize = 256;

/// Size buckets of the seed: < 1 MB, 1–100 MB, > 100 MB (to 1 GB).
const BUCKETS: [(f64, f64); 3] = [(1e3, 1e6), (1e6, 1e8), (1e8, 1e9)];

/// A size drawn from the buckets with weights `w` (summing to 1), log-uniform inside the
/// bucket (small files far outnumber large ones within each), times `scale`.
fn bucket_size(rng: &mut StdRng, w: [f64; 3], scale: f64) -> u64 {
    let u: f64 = rng.random();
    let i = if u < w[0] {
        0
    } else if u < w[0] + w[1] {
        1
    } else {
        2
    };
    let (lo, hi) = BUCKETS[i];
    let v: f64 = rng.random();
    let size = (lo.ln() + v * (hi.ln() - lo.ln())).exp();
    ((size * scale) as u64).max(1)
}

/// read-heavy: 80 % reads of objects already written, 20 % writes of new ones.
#[derive(Debug)]
pub struct ReadHeavy {
    rng: StdRng,
    scale: f64,
    written: Vec<(String, u64)>,
    preloaded: usize,
}

impl ReadHeavy {
    pub fn new(seed: u64, scale: f64) -> ReadHeavy {
        ReadHeavy {
            rng: StdRng::seed_from_u64(seed),
            scale,
            written: Vec::new(),
            preloaded: 0,
        }
    }

    /// The objects to publish before the run, so that reads find something: `n` objects
    /// with the read size mix.
    pub fn preload(&mut self, n: usize) -> Vec<Op> {
        self.preloaded += n;
        (0..n)
            .map(|i| {
                let size = bucket_size(&mut self.rng, [0.5, 0.35, 0.15], self.scale);
                let key = format!("rh/pre-{i}");
                self.written.push((key.clone(), size));
                Op::Write { key, size }
            })
            .collect()
    }

    pub fn next_op(&mut self) -> Op {
        if self.settled() == 0 || self.rng.random::<f64>() < 0.2 {
            let size = bucket_size(&mut self.rng, [0.6, 0.3, 0.1], self.scale);
            let key = format!("rh/w-{}", self.written.len());
            self.written.push((key.clone(), size));
            Op::Write { key, size }
        } else {
            // Reads follow the read mix: pick a bucket first, then an object of that bucket
            // when one exists, so the read sizes keep their 50/35/15 shape whatever was
            // written.
            let want = bucket_size(&mut self.rng, [0.5, 0.35, 0.15], self.scale);
            let i = self.rng.random_range(0..self.settled());
            let (key, size) = self.nearest(want, i);
            Op::Read { key, size }
        }
    }

    /// How many of the written objects reads may use: all preloaded ones, and the others
    /// once [`SETTLE`] writes have followed them.
    fn settled(&self) -> usize {
        self.written
            .len()
            .saturating_sub(SETTLE)
            .max(self.preloaded.min(self.written.len()))
    }

    /// The written object closest in size (log scale) to `want`, searching from `start`.
    fn nearest(&self, want: u64, start: usize) -> (String, u64) {
        let score = |s: u64| ((s as f64).ln() - (want as f64).ln()).abs();
        let n = self.settled();
        let mut best = start;
        // A bounded scan keeps this O(1) per operation on large histories.
        for j in 0..n.min(64) {
            let k = (start + j * 7919) % n;
            if score(self.written[k].1) < score(self.written[best].1) {
                best = k;
            }
        }
        self.written[best].clone()
    }
}

/// write-heavy: batches of 10 writes, 80 % of operations; single reads of written objects
/// for the rest.
#[derive(Debug)]
pub struct WriteHeavy {
    rng: StdRng,
    scale: f64,
    written: Vec<(String, u64)>,
}

impl WriteHeavy {
    pub fn new(seed: u64, scale: f64) -> WriteHeavy {
        WriteHeavy {
            rng: StdRng::seed_from_u64(seed),
            scale,
            written: Vec::new(),
        }
    }

    /// The next step: a batch of 10 writes, or one read (of an object written at least
    /// [`SETTLE`] writes ago; until there is one, batches only). A batch is 10 operations
    /// and a read 1, so batches are drawn with probability 2/7 to make writes 80 % of
    /// operations (10p / (10p + (1 - p)) = 0.8).
    pub fn next_batch(&mut self) -> Vec<Op> {
        let settled = self.written.len().saturating_sub(SETTLE);
        if settled == 0 || self.rng.random::<f64>() < 2.0 / 7.0 {
            (0..10)
                .map(|_| {
                    let size = bucket_size(&mut self.rng, [0.6, 0.3, 0.1], self.scale);
                    let key = format!("wh/w-{}", self.written.len());
                    self.written.push((key.clone(), size));
                    Op::Write { key, size }
                })
                .collect()
        } else {
            let (key, size) = self.written[self.rng.random_range(0..settled)].clone();
            vec![Op::Read { key, size }]
        }
    }
}

/// cdn: reads only; 80 % to a Zipf-popular head of 1,000 objects, 20 % uniform over a tail.
#[derive(Debug)]
pub struct Cdn {
    rng: StdRng,
    zipf: Zipf,
    tail: usize,
    scale: f64,
}

/// Objects in the popular head.
pub const CDN_HEAD: usize = 1000;

impl Cdn {
    /// A tail of `1_000_000 * scale` objects (at least 1,000).
    pub fn new(seed: u64, scale: f64) -> Cdn {
        Cdn {
            rng: StdRng::seed_from_u64(seed),
            zipf: Zipf::new(CDN_HEAD, 1.0),
            tail: ((1_000_000.0 * scale) as usize).max(CDN_HEAD),
            scale,
        }
    }

    /// The object behind a key index: `cdn/head-K` or `cdn/tail-K`, with a size fixed per
    /// object (web assets: 1 KiB–1 MiB, most small), times `scale`.
    pub fn object(&self, head: bool, k: usize) -> (String, u64) {
        let h = blake3::hash(&[&[head as u8][..], &(k as u64).to_le_bytes()].concat());
        let r = u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap()) as f64 / u32::MAX as f64;
        let size = ((1024.0 * 1024f64.powf(r * r) * self.scale) as u64).max(1);
        let part = if head { "head" } else { "tail" };
        (format!("cdn/{part}-{k}"), size)
    }

    /// [`Cdn::new`] with a tail of `tail` objects (at least 1) instead of `1_000_000 * scale`.
    pub fn with_tail(seed: u64, scale: f64, tail: usize) -> Cdn {
        Cdn {
            tail: tail.max(1),
            ..Cdn::new(seed, scale)
        }
    }

    pub fn tail_len(&self) -> usize {
        self.tail
    }

    pub fn next_op(&mut self) -> Op {
        let head = self.rng.random::<f64>() < 0.8;
        let k = if head {
            self.zipf.sample(&mut self.rng)
        } else {
            self.rng.random_range(0..self.tail)
        };
        let (key, size) = self.object(head, k);
        Op::Read { key, size }
    }
}

/// backup: a data set of `files` files; each version rewrites every file, changing a few
/// small regions of some; every `restore_every` versions, one older version is restored.
#[derive(Debug)]
pub struct Backup {
    rng: StdRng,
    files: Vec<Vec<u8>>,
    version: u32,
    restore_every: u32,
}

/// Restores pick versions at least this many versions old.
pub const BACKUP_SETTLE: u32 = 16;

/// One backup step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupStep {
    /// Publish every file of version `version` (`key`, bytes).
    Version {
        version: u32,
        files: Vec<(String, Vec<u8>)>,
    },
    /// Read back every file of an older version.
    Restore { version: u32 },
}

impl Backup {
    /// `files` files of `file_bytes` each (random, incompressible: the dedup is the
    /// versions' doing, not the data's).
    pub fn new(seed: u64, files: usize, file_bytes: usize, restore_every: u32) -> Backup {
        let mut rng = StdRng::seed_from_u64(seed);
        let files = (0..files)
            .map(|_| {
                let mut f = vec![0u8; file_bytes];
                rng.fill(&mut f[..]);
                f
            })
            .collect();
        Backup {
            rng,
            files,
            version: 0,
            restore_every: restore_every.max(1),
        }
    }

    /// Changes between versions: a quarter of the files get 1–4 edits of 16–4096 bytes,
    /// some in place, some inserted (shifting what follows, as edits do).
    fn mutate(&mut self) {
        let n = self.files.len();
        for _ in 0..n.div_ceil(4) {
            let f = self.rng.random_range(0..n);
            for _ in 0..self.rng.random_range(1..=4) {
                let len = self.rng.random_range(16..=4096);
                let file = &mut self.files[f];
                let at = self.rng.random_range(0..file.len().max(1));
                let mut edit = vec![0u8; len];
                self.rng.fill(&mut edit[..]);
                if self.rng.random::<bool>() {
                    let end = (at + len).min(file.len());
                    file[at..end].copy_from_slice(&edit[..end - at]);
                } else {
                    file.splice(at..at, edit);
                }
            }
        }
    }

    pub fn next_step(&mut self) -> BackupStep {
        // Restores read versions at least BACKUP_SETTLE old: with several clients, the
        // newest ones may still be being written.
        let restorable = self.version.saturating_sub(BACKUP_SETTLE);
        if restorable > 0
            && self.version.is_multiple_of(self.restore_every)
            && self.rng.random::<bool>()
        {
            let version = self.rng.random_range(1..=restorable);
            return BackupStep::Restore { version };
        }
        if self.version > 0 {
            self.mutate();
        }
        self.version += 1;
        let version = self.version;
        BackupStep::Version {
            version,
            files: self
                .files
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("backup/v{version}/file-{i}"), f.clone()))
                .collect(),
        }
    }
}

/// One line of a trace: when (from the trace's start), what, how big.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEntry {
    pub at: Duration,
    pub key: String,
    pub size: u64,
    /// The key had another size before this line: the object was updated, and the replay
    /// publishes the new version here before reading it.
    pub update: bool,
    /// The key's size changes somewhere in the trace, so a read may see either version
    /// (its size is not checked).
    pub varies: bool,
}

/// Parses a CSV trace `timestamp,key,size` (timestamps in seconds, fractional allowed,
/// non-decreasing; a first line naming the columns is skipped; blank lines and `#` comments
/// are ignored). Errors name the line.
pub fn parse_trace(text: &str) -> Result<Vec<TraceEntry>> {
    let mut out: Vec<TraceEntry> = Vec::new();
    let mut start: Option<f64> = None;
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 3 {
            bail!("trace line {n}: expected timestamp,key,size, got {line:?}");
        }
        let header = std::mem::replace(&mut first, false);
        let ts: f64 = match cols[0].parse() {
            Ok(ts) => ts,
            // The first line may name the columns.
            Err(_) if header => continue,
            Err(_) => bail!("trace line {n}: timestamp {:?} is not a number", cols[0]),
        };
        if !ts.is_finite() || ts < 0.0 {
            bail!("trace line {n}: timestamp {ts} must be a finite number >= 0");
        }
        let size: u64 = cols[2]
            .parse()
            .with_context(|| format!("trace line {n}: size {:?} is not a byte count", cols[2]))?;
        if cols[1].is_empty() {
            bail!("trace line {n}: empty key");
        }
        let t0 = *start.get_or_insert(ts);
        if ts < t0
            || out
                .last()
                .is_some_and(|p| Duration::from_secs_f64(ts - t0) < p.at)
        {
            bail!("trace line {n}: timestamps must not go backwards");
        }
        out.push(TraceEntry {
            at: Duration::from_secs_f64(ts - t0),
            key: cols[1].to_string(),
            size,
            update: false,
            varies: false,
        });
    }
    if out.is_empty() {
        bail!("the trace has no entries");
    }
    // Real traces hold objects that were updated (the same key, another size).
    let mut last: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut varying = std::collections::HashSet::new();
    let updates: Vec<bool> = out
        .iter()
        .map(|e| {
            let prev = last.insert(e.key.as_str(), e.size);
            let update = prev.is_some_and(|p| p != e.size);
            if update {
                varying.insert(e.key.clone());
            }
            update
        })
        .collect();
    for (e, update) in out.iter_mut().zip(updates) {
        e.update = update;
        e.varies = varying.contains(&e.key);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(got: f64, want: f64, tol: f64, what: &str) {
        assert!(
            (got - want).abs() <= tol,
            "{what}: {got:.4}, expected {want} ± {tol}"
        );
    }

    fn bucket_shares(sizes: &[u64], scale: f64) -> [f64; 3] {
        let mut c = [0usize; 3];
        for &s in sizes {
            let s = s as f64 / scale;
            c[if s < 1e6 {
                0
            } else if s < 1e8 {
                1
            } else {
                2
            }] += 1;
        }
        c.map(|x| x as f64 / sizes.len() as f64)
    }

    #[test]
    fn a_written_cdn_trace_parses_and_arrives_at_its_rate() {
        let text = cdn_trace(5, 0.01, 2000.0, 3.0);
        let t = parse_trace(&text).unwrap();
        // Poisson: 6,000 expected, standard deviation ~77.
        assert!((5700..=6300).contains(&t.len()), "{}", t.len());
        assert!(t.last().unwrap().at.as_secs_f64() < 3.0);
        let head = t.iter().filter(|e| e.key.starts_with("/cdn/head-")).count();
        assert!((head as f64 / t.len() as f64 - 0.8).abs() < 0.03, "{head}");
        assert_eq!(text, cdn_trace(5, 0.01, 2000.0, 3.0), "seeded");
    }

    #[test]
    fn read_heavy_mix_and_sizes() {
        let mut g = ReadHeavy::new(1, 1.0);
        g.preload(2000);
        let ops: Vec<Op> = (0..50_000).map(|_| g.next_op()).collect();
        let writes = ops.iter().filter(|o| o.is_write()).count() as f64 / ops.len() as f64;
        within(writes, 0.2, 0.01, "write share");
        let reads: Vec<u64> = ops.iter().filter(|o| !o.is_write()).map(Op::size).collect();
        let r = bucket_shares(&reads, 1.0);
        within(r[0], 0.5, 0.03, "reads < 1 MB");
        within(r[1], 0.35, 0.03, "reads 1-100 MB");
        within(r[2], 0.15, 0.03, "reads > 100 MB");
        let w: Vec<u64> = ops.iter().filter(|o| o.is_write()).map(Op::size).collect();
        let w = bucket_shares(&w, 1.0);
        within(w[0], 0.6, 0.02, "writes < 1 MB");
        within(w[1], 0.3, 0.02, "writes 1-100 MB");
        within(w[2], 0.1, 0.02, "writes > 100 MB");
        // Every read names an object that was written.
        let keys: std::collections::HashSet<&str> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Write { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let pre = ops.iter().filter(|o| match o {
            Op::Read { key, .. } => !keys.contains(key.as_str()) && !key.starts_with("rh/pre-"),
            _ => false,
        });
        assert_eq!(pre.count(), 0);
    }

    #[test]
    fn scale_shrinks_sizes_not_shape() {
        let mut g = ReadHeavy::new(2, 0.01);
        let ops = g.preload(20_000);
        let sizes: Vec<u64> = ops.iter().map(Op::size).collect();
        assert!(
            sizes.iter().all(|&s| s <= 10_000_000),
            "1 GB at 0.01 is 10 MB"
        );
        let r = bucket_shares(&sizes, 0.01);
        within(r[0], 0.5, 0.02, "scaled < 1 MB share");
    }

    #[test]
    fn write_heavy_is_80_percent_writes_in_batches_of_10() {
        let mut g = WriteHeavy::new(3, 1.0);
        let mut ops = Vec::new();
        while ops.len() < 100_000 {
            let b = g.next_batch();
            assert!(
                b.len() == 10 && b.iter().all(Op::is_write) || b.len() == 1 && !b[0].is_write()
            );
            ops.extend(b);
        }
        let writes = ops.iter().filter(|o| o.is_write()).count() as f64 / ops.len() as f64;
        within(writes, 0.8, 0.01, "write share");
    }

    #[test]
    fn cdn_sends_80_percent_to_the_head_zipf_within_it() {
        let mut g = Cdn::new(4, 1.0);
        assert_eq!(g.tail_len(), 1_000_000);
        let n = 200_000;
        let mut head = vec![0usize; CDN_HEAD];
        let mut tail = 0usize;
        for _ in 0..n {
            let Op::Read { key, .. } = g.next_op() else {
                panic!("cdn only reads")
            };
            if let Some(k) = key.strip_prefix("cdn/head-") {
                head[k.parse::<usize>().unwrap()] += 1;
            } else {
                tail += 1;
            }
        }
        within(tail as f64 / n as f64, 0.2, 0.01, "tail share");
        // Zipf(1): rank 1 is drawn twice as often as rank 2, ten times rank 10.
        let h: usize = head.iter().sum();
        let p1 = head[0] as f64 / h as f64;
        let harmonic: f64 = (1..=CDN_HEAD).map(|k| 1.0 / k as f64).sum();
        within(p1, 1.0 / harmonic, 0.01, "rank 1 share");
        within(
            head[0] as f64 / head[1] as f64,
            2.0,
            0.15,
            "rank 1 / rank 2",
        );
        within(
            head[0] as f64 / head[9] as f64,
            10.0,
            1.5,
            "rank 1 / rank 10",
        );
    }

    #[test]
    fn backup_versions_differ_a_little_and_restores_name_past_versions() {
        let mut g = Backup::new(5, 8, 64 << 10, 3);
        let mut versions: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
        let mut restores = 0;
        for _ in 0..60 {
            match g.next_step() {
                BackupStep::Version { version, files } => {
                    assert_eq!(version as usize, versions.len() + 1);
                    versions.push(files);
                }
                BackupStep::Restore { version } => {
                    assert!(version >= 1 && version as usize + 16 <= versions.len());
                    restores += 1;
                }
            }
        }
        assert!(restores > 0, "some restores");
        // Between two versions most files are identical and the changed ones stay close.
        let (a, b) = (&versions[0], &versions[1]);
        let same = a.iter().zip(b).filter(|(x, y)| x.1 == y.1).count();
        assert!(same >= 4, "{same} of 8 files unchanged");
        for (x, y) in a.iter().zip(b) {
            let grown = y.1.len() as i64 - x.1.len() as i64;
            assert!((0..=4 * 4096).contains(&grown));
        }
    }

    #[test]
    fn traces_parse_with_clear_errors() {
        let t =
            parse_trace("timestamp,key,size\n10.5,/a.js,1200\n# note\n\n11,/b.png,5\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].at, Duration::ZERO);
        assert_eq!(t[1].at, Duration::from_millis(500));
        assert_eq!((t[1].key.as_str(), t[1].size), ("/b.png", 5));
        for (bad, says) in [
            ("1,/a,1\n0.5,/b,1\n", "line 2"),
            ("1,/a\n", "line 1: expected timestamp,key,size"),
            ("1,/a,x\n", "line 1: size"),
            ("1,/a,1\nzz,/b,1\n", "line 2: timestamp"),
            ("1,,1\n", "empty key"),
            ("", "no entries"),
        ] {
            let e = parse_trace(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_key_whose_size_changes_is_an_update() {
        let t = parse_trace(
            "0,/a,10
1,/b,5
2,/a,10
3,/a,12
4,/a,12
",
        )
        .unwrap();
        let flags: Vec<(bool, bool)> = t.iter().map(|e| (e.update, e.varies)).collect();
        assert_eq!(
            flags,
            [
                (false, true),
                (false, false),
                (false, true),
                (true, true),
                (false, true)
            ]
        );
    }
}

/// Options of `tessera-bench workloads`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Operations to generate per workload.
    #[arg(long, default_value_t = 100_000)]
    ops: usize,
    /// Size scale (1.0 = the seed's sizes).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seed of every generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also parse this CSV trace (`timestamp,key,size`) and describe it.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Write a CSV trace of the cdn workload here (Poisson arrivals at `--trace-rate` per
    /// second for `--trace-seconds`, sizes at `--scale`), for `run --workload trace`.
    #[arg(long)]
    write_trace: Option<std::path::PathBuf>,
    /// Requests per second of the written trace.
    #[arg(long, default_value_t = 1000.0)]
    trace_rate: f64,
    /// Seconds the written trace spans.
    #[arg(long, default_value_t = 5.0)]
    trace_seconds: f64,
}

/// A CSV trace (`timestamp,key,size`) of the cdn workload: requests arriving as a Poisson
/// process at `rate` per second for `seconds`.
pub fn cdn_trace(seed: u64, scale: f64, rate: f64, seconds: f64) -> String {
    let mut cdn = Cdn::new(seed, scale);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0074_7261_6365);
    let mut out = format!(
        "# the cdn workload (seed {seed}, scale {scale}), Poisson arrivals at {rate}/s for {seconds} s:\n\
         # tessera-bench workloads --scale {scale} --seed {seed} --write-trace FILE --trace-rate {rate} --trace-seconds {seconds}\n\
         timestamp,key,size\n"
    );
    let mut t = 0.0f64;
    loop {
        // Exponential gaps: -ln(U) / rate.
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        t += -u.ln() / rate.max(1e-9);
        if t >= seconds {
            break;
        }
        let (Op::Read { key, size } | Op::Write { key, size }) = cdn.next_op();
        out.push_str(&format!("{t:.6},/{key},{size}\n"));
    }
    out
}

/// Shares of operations and bytes a run of `ops` would carry.
fn describe(name: &str, ops: &[Op]) {
    let n = ops.len().max(1) as f64;
    let writes = ops.iter().filter(|o| o.is_write()).count() as f64 / n;
    let bytes: u64 = ops.iter().map(Op::size).sum();
    let mut buckets = [0usize; 3];
    for o in ops {
        let s = o.size() as f64;
        buckets[if s < 1e6 {
            0
        } else if s < 1e8 {
            1
        } else {
            2
        }] += 1;
    }
    println!(
        "| {name} | {} | {:.1} % | {:.1} / {:.1} / {:.1} % | {:.2} GB |",
        ops.len(),
        writes * 100.0,
        buckets[0] as f64 / n * 100.0,
        buckets[1] as f64 / n * 100.0,
        buckets[2] as f64 / n * 100.0,
        bytes as f64 / 1e9
    );
}

/// `tessera-bench workloads`: generates each workload without sending anything and prints
/// what it holds, so its shape can be checked against the seed before a run.
pub fn run(a: Args) -> Result<()> {
    println!(
        "{} operations per workload, scale {}, seed {}",
        a.ops, a.scale, a.seed
    );
    println!("| workload | ops | writes | sizes < 1 MB / 1-100 MB / > 100 MB | bytes |");
    println!("|---|---|---|---|---|");
    let mut rh = ReadHeavy::new(a.seed, a.scale);
    rh.preload(1000);
    describe(
        "read-heavy",
        &(0..a.ops).map(|_| rh.next_op()).collect::<Vec<_>>(),
    );
    let mut wh = WriteHeavy::new(a.seed, a.scale);
    let mut ops = Vec::new();
    while ops.len() < a.ops {
        ops.extend(wh.next_batch());
    }
    describe("write-heavy", &ops);
    let mut cdn = Cdn::new(a.seed, a.scale);
    let ops: Vec<Op> = (0..a.ops).map(|_| cdn.next_op()).collect();
    let head = ops
        .iter()
        .filter(|o| matches!(o, Op::Read { key, .. } if key.starts_with("cdn/head-")))
        .count();
    describe("cdn", &ops);
    println!(
        "cdn: {:.1} % of requests to the {CDN_HEAD} popular objects, the rest over a tail of {}",
        head as f64 / a.ops.max(1) as f64 * 100.0,
        cdn.tail_len()
    );
    let mut backup = Backup::new(a.seed, 16, ((4 << 20) as f64 * a.scale) as usize, 4);
    let (mut versions, mut restores, mut bytes) = (0, 0, 0usize);
    for _ in 0..12 {
        match backup.next_step() {
            BackupStep::Version { files, .. } => {
                versions += 1;
                bytes += files.iter().map(|f| f.1.len()).sum::<usize>();
            }
            BackupStep::Restore { .. } => restores += 1,
        }
    }
    println!(
        "backup: 12 steps, {versions} versions ({:.1} MB written), {restores} restores",
        bytes as f64 / 1e6
    );
    if let Some(path) = &a.write_trace {
        let text = cdn_trace(a.seed, a.scale, a.trace_rate, a.trace_seconds);
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "wrote {} ({} requests)",
            path.display(),
            text.lines().count() - 3
        );
    }
    if let Some(path) = &a.trace {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let t = parse_trace(&text)?;
        let span = t.last().map(|e| e.at).unwrap_or_default();
        println!(
            "trace {}: {} requests over {:.1} s, {} distinct keys",
            path.display(),
            t.len(),
            span.as_secs_f64(),
            t.iter()
                .map(|e| e.key.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
    }
    Ok(())
}
