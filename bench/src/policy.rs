//! `tessera-bench policy`: which of foyer's eviction policies the edge's memory tier uses,
//! chosen by hit ratio on Zipf workloads (the seed's CDN shape: a popular head, a long
//! tail), with LRU as the baseline.
//!
//! The cache here is foyer's memory cache itself, weighted by object size as the edge's is;
//! no network, so the figures are the policy's and nothing else's.

use std::time::Instant;

use anyhow::Result;
use foyer::{CacheBuilder, EvictionConfig, LfuConfig, LruConfig, S3FifoConfig};
use rand::{RngExt, SeedableRng};

/// Options of `tessera-bench policy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Distinct objects.
    #[arg(long, default_value_t = 100_000)]
    objects: usize,
    /// Requests per run.
    #[arg(long, default_value_t = 2_000_000)]
    requests: usize,
    /// Also draw the hit ratio against the cache size as an SVG chart here.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

/// Draws ranks 0..n with P(k) ∝ 1/(k+1)^alpha (inverse CDF over a precomputed table).
#[derive(Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, alpha: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut impl rand::Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Object size for id `k`: 1 KiB to 1 MiB, most small (a web asset mix), fixed per id.
fn size_of(k: usize) -> usize {
    let h = blake3::hash(&(k as u64).to_le_bytes());
    let r = u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap()) as f64 / u32::MAX as f64;
    (1024.0 * 1024f64.powf(r * r)) as usize
}

pub fn run(a: Args) -> Result<()> {
    let total: usize = (0..a.objects).map(size_of).sum();
    println!(
        "{} objects, {:.1} GiB in all, {} requests per run; hit ratio (byte hit ratio)",
        a.objects,
        total as f64 / (1u64 << 30) as f64,
        a.requests
    );
    println!("| alpha | cache / catalogue | LRU | S3-FIFO | W-TinyLFU |");
    println!("|---|---|---|---|---|");
    let mut curves: Vec<crate::plot::Series> = Vec::new();
    for alpha in [0.8, 1.0] {
        let zipf = Zipf::new(a.objects, alpha);
        let first = curves.len();
        for name in ["LRU", "S3-FIFO", "W-TinyLFU"] {
            curves.push(crate::plot::Series {
                name: format!("{name}, Zipf {alpha}"),
                points: Vec::new(),
            });
        }
        for share in [0.01, 0.05, 0.10] {
            let capacity = (total as f64 * share) as usize;
            let mut row = format!("| {alpha} | {:.0} % |", share * 100.0);
            let policies: [(&str, EvictionConfig); 3] = [
                ("lru", LruConfig::default().into()),
                ("s3fifo", S3FifoConfig::default().into()),
                ("lfu", LfuConfig::default().into()),
            ];
            for (n, (_, policy)) in policies.into_iter().enumerate() {
                let cache: foyer::Cache<usize, usize> = CacheBuilder::new(capacity)
                    .with_shards(8)
                    .with_eviction_config(policy)
                    .with_weighter(|_k: &usize, v: &usize| *v)
                    .build::<foyer::CacheProperties>();
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let (mut hits, mut hit_bytes, mut bytes) = (0usize, 0usize, 0usize);
                let started = Instant::now();
                for _ in 0..a.requests {
                    let k = zipf.sample(&mut rng);
                    let s = size_of(k);
                    bytes += s;
                    if cache.get(&k).is_some() {
                        hits += 1;
                        hit_bytes += s;
                    } else {
                        cache.insert(k, s);
                    }
                }
                let _ = started.elapsed();
                curves[first + n]
                    .points
                    .push((share * 100.0, 100.0 * hits as f64 / a.requests as f64));
                row.push_str(&format!(
                    " {:.1} % ({:.1} %) |",
                    100.0 * hits as f64 / a.requests as f64,
                    100.0 * hit_bytes as f64 / bytes as f64
                ));
            }
            println!("{row}");
        }
    }
    if let Some(p) = &a.plot {
        crate::plot::line_chart(
            p,
            "Hit ratio against cache size (foyer eviction policies)",
            "cache size, % of the catalogue's bytes",
            "hit ratio, %",
            crate::plot::XAxis::Linear,
            &curves,
        )?;
        println!("chart: {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_frequencies_follow_the_law() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0usize; 1000];
        let n = 200_000;
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        // P(rank 0) = 1/H(1000) ≈ 0.1336; P(rank 1) is half of it.
        let p0 = counts[0] as f64 / n as f64;
        assert!((p0 - 0.1336).abs() < 0.005, "{p0}");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((ratio - 2.0).abs() < 0.1, "{ratio}");
    }
}
