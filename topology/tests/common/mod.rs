//! Helpers for tests that run the real `tessera` binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `tessera origin` process, killed when dropped so a failing test leaves none
/// behind.
pub struct OriginProcess(Child);

impl OriginProcess {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether it is still running (not exited).
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// `kill -9`, and reaps it.
    pub fn kill_9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tessera origin` on 127.0.0.1:0 with `data` and returns it with its URL, read
/// from the line it prints once it listens.
pub fn start_origin(data: &Path) -> (OriginProcess, String) {
    start_origin_with(data, &[])
}

/// [`start_origin`] with more options.
pub fn start_origin_with(data: &Path, extra: &[&str]) -> (OriginProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["origin", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("no URL in the origin's first line");
    (OriginProcess(child), url.to_string())
}

/// Starts `tessera edge` with `args` (plus `--data data`) and returns it with the lines it
/// printed up to and including the one containing `last`.
pub fn start_edge(data: &Path, args: &[&str], last: &str) -> (OriginProcess, Vec<String>) {
    let mut all = vec!["edge"];
    all.extend_from_slice(args);
    all.push("--data");
    all.push(data.to_str().unwrap());
    start_tessera(&all, last)
}

/// Starts `tessera ARGS` and returns it with the lines it printed up to and including the
/// one containing `last` (its stderr is discarded).
pub fn start_tessera(args: &[&str], last: &str) -> (OriginProcess, Vec<String>) {
    start_tessera_with(args, last, Stdio::null())
}

/// [`start_tessera`] with its stderr (the logs) going to `stderr`.
pub fn start_tessera_with(
    args: &[&str],
    last: &str,
    stderr: Stdio,
) -> (OriginProcess, Vec<String>) {
    start_tessera_env(&[], args, last, stderr)
}

/// [`start_tessera_with`] with the environment variables `env` added (as libfaketime's
/// `LD_PRELOAD` and `FAKETIME`).
pub fn start_tessera_env(
    env: &[(&str, &str)],
    args: &[&str],
    last: &str,
    stderr: Stdio,
) -> (OriginProcess, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.envs(env.iter().copied()).args(args).stderr(stderr);
    spawn_until(cmd, last)
}

/// Spawns `cmd` (a `tessera` command) with its stdout piped and returns it with the lines
/// it printed up to and including the one containing `last`.
fn spawn_until(mut cmd: Command, last: &str) -> (OriginProcess, Vec<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "{cmd:?} exited: {lines:?}"
        );
        let done = line.contains(last);
        lines.push(line.trim_end().to_string());
        if done {
            break;
        }
    }
    (OriginProcess(child), lines)
}

/// Sends SIGTERM to the process and waits (bounded) for it; returns whether it exited 0.
pub fn terminate(p: &mut OriginProcess) -> bool {
    let pid = p.id().to_string();
    // The shell's own `kill` (procps, which has /bin/kill, may be missing on a bare system).
    assert!(
        Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
            .status()
            .unwrap()
            .success()
    );
    for _ in 0..600 {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("tessera did not stop within 30 s of SIGTERM");
}

/// A TCP port free on 127.0.0.1 right now (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Starts `tessera ARGS` inside node `i`'s namespace of `net`, as [`start_tessera_env`]
/// does.
pub fn start_in(
    net: &tessera_faults::netns::Netns,
    i: usize,
    args: &[&str],
    last: &str,
) -> (OriginProcess, Vec<String>) {
    let mut cmd = net.command(i, env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args).stderr(Stdio::null());
    spawn_until(cmd, last)
}
