//! A closed-loop load client over HTTP/1.1, HTTP/2 or HTTP/3 (the edge's own client:
//! hyper, and quinn + h3): `connections` connections, each with `streams` requests in flight
//! (1 for HTTP/1.1), for a fixed time. Every response is read to its end and counted; a
//! non-2xx status or a failed request is an error. Latency per request in an HDR histogram.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::BodyExt;
use tessera_edge::client::{ClientOptions, Connection, Mode};

/// What one run measured.
#[derive(Debug)]
pub struct LoadResult {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub secs: f64,
    pub hist: hdrhistogram::Histogram<u64>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs
    }

    /// Latency at quantile `q`, milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// One line, the same for every protocol and server.
    pub fn line(&self, name: &str, path: &str) -> String {
        let [p50, p95, p99, p999] = percentiles(&self.hist);
        format!(
            "{name:24} {path}: {:>9.0} req/s {:>8.1} MB/s p50 {p50:.2} p95 {p95:.2} p99 {p99:.2} p99.9 {p999:.2} ms ({} errors)",
            self.rps(),
            self.bytes_per_sec() / 1e6,
            self.errors
        )
    }
}

/// Loads `url` (its host and port; `path` is requested) with `connections` × `streams`
/// requests in flight for `secs` seconds.
pub async fn closed_loop(
    url: &str,
    path: &str,
    opts: &ClientOptions,
    connections: usize,
    streams: usize,
    secs: u64,
) -> Result<LoadResult> {
    let streams = if opts.mode == Mode::Http1 {
        1
    } else {
        streams.max(1)
    };
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Connection::connect(url, opts).await?);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for conn in conns {
        let mut shared = Some(conn);
        for s in 0..streams {
            // HTTP/1.1 connections cannot be cloned; the others multiplex.
            let mut c = if s + 1 == streams {
                shared.take().unwrap()
            } else {
                shared.as_ref().unwrap().clone()
            };
            let path = path.to_string();
            tasks.push(tokio::spawn(async move {
                let mut hist =
                    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut n, mut bytes, mut errors) = (0u64, 0u64, 0u64);
                while Instant::now() < end {
                    let t = Instant::now();
                    let req = http::Request::get(&path).body(Bytes::new()).unwrap();
                    match c.send(req).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            let mut body = resp.into_body();
                            let mut got = 0u64;
                            let mut failed = false;
                            while let Some(f) = body.frame().await {
                                match f {
                                    Ok(f) => {
                                        if let Some(d) = f.data_ref() {
                                            got += d.len() as u64;
                                        }
                                    }
                                    Err(_) => {
                                        failed = true;
                                        break;
                                    }
                                }
                            }
                            if ok && !failed {
                                n += 1;
                                bytes += got;
                                hist.record((t.elapsed().as_micros() as u64).max(1)).ok();
                            } else {
                                errors += 1;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            // A broken connection: do not spin on it.
                            if errors > 1000 {
                                break;
                            }
                        }
                    }
                }
                (hist, n, bytes, errors)
            }));
        }
    }
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut requests, mut bytes, mut errors) = (0, 0, 0);
    for t in tasks {
        let (h, n, b, e) = t.await?;
        all.add(h).ok();
        requests += n;
        bytes += b;
        errors += e;
    }
    Ok(LoadResult {
        requests,
        bytes,
        errors,
        secs: start.elapsed().as_secs_f64(),
        hist: all,
    })
}

/// One download of `path` on a new connection: (bytes, seconds from request to last byte).
pub async fn download(url: &str, path: &str, opts: &ClientOptions) -> Result<(u64, f64)> {
    let mut c = Connection::connect(url, opts).await?;
    let t = Instant::now();
    let resp = c.get(path).await?;
    anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| anyhow::anyhow!("{path}: body failed: {e}"))?;
        if let Some(d) = f.data_ref() {
            got += d.len() as u64;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    c.close().await;
    Ok((got, secs))
}

/// Latency percentiles of a histogram of microseconds, in milliseconds: p50, p95, p99, p99.9.
pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> [f64; 4] {
    [0.5, 0.95, 0.99, 0.999].map(|q| h.value_at_quantile(q) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_data() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1 ms .. 1000 ms, once each
        }
        let got = percentiles(&h);
        for (g, want) in got.iter().zip([500.0, 950.0, 990.0, 999.0]) {
            assert!((g - want).abs() <= 1.0, "{got:?}");
        }
        // A skewed set: 99 fast, 1 slow; p99 is fast, p99.9 slow.
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        h.record_n(100, 99).unwrap();
        h.record(500_000).unwrap();
        let [p50, _, p99, p999] = percentiles(&h);
        assert!(
            (p50 - 0.1).abs() < 0.001 && (p99 - 0.1).abs() < 0.001,
            "{p50} {p99}"
        );
        assert!((p999 - 500.0).abs() < 1.0, "{p999}");
    }
}
