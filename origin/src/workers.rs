//! Where the origin's CPU work runs, so that reads come first.
//!
//! Publishing is CPU-bound (FastCDC, blake3, brotli) and a large push can keep every core
//! busy for minutes. Reads need little CPU (a decode and a blake3 per chunk) but wait on it:
//! on one shared pool, a read's chunks would queue behind a publish's compression. So
//! ingest runs on a pool of its own ([`ingest`]) whose threads lower their scheduling
//! priority (nice 10: the kernel then gives a normal-priority thread about nine times their
//! share of a busy core), and reads run on rayon's global pool at normal priority. The
//! ingest still gets every idle cycle; it only yields when reads want the CPU.

use std::sync::OnceLock;

/// The nice value of ingest threads.
pub const INGEST_NICE: i32 = 10;

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tessera-ingest-{i}"))
            .start_handler(|_| {
                // Linux keeps a nice value per thread: this lowers only the calling one.
                if let Err(e) = rustix::process::setpriority_process(None, INGEST_NICE) {
                    tracing::warn!(error = %e, "cannot lower an ingest thread's priority");
                }
            })
            .build()
            .expect("the ingest thread pool starts")
    })
}

/// Runs `f` on the ingest pool (and rayon's parallel iterators inside it too), blocking the
/// caller until it returns. Call it from a blocking thread, never from an async task.
pub fn ingest<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    pool().install(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn ingest_runs_at_a_lower_priority_and_reads_do_not() {
        let nice = || rustix::process::getpriority_process(None).unwrap();
        let base = nice();
        let inside: Vec<i32> = ingest(|| (0..64).into_par_iter().map(|_| nice()).collect());
        assert!(
            inside.iter().all(|&n| n == base.max(INGEST_NICE)),
            "{inside:?}"
        );
        let reads: Vec<i32> = (0..64).into_par_iter().map(|_| nice()).collect();
        assert!(reads.iter().all(|&n| n == base), "{reads:?}");
    }
}
