//! A TCP proxy that injects network faults between a client and a server on loopback, for
//! Tessera's tests and `tessera-bench chaos` (`tc netem` is not available on the machines
//! Tessera is tested on).
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards each connection to a target.
//! [`FaultProxy::set`] changes the [`Fault`] at any time: new connections take it at once,
//! open ones at their next byte, so a pooled keep-alive connection is affected as a new one
//! is. Faults act on what the target sends back (the response direction); a blackhole also
//! swallows what the client sends, and a reset cuts both ways.
//!
//! ```no_run
//! # async fn demo(origin: std::net::SocketAddr) -> std::io::Result<()> {
//! use tessera_faults::{Fault, FaultProxy};
//! let proxy = FaultProxy::start(origin).await?;
//! proxy.set(Fault::Blackhole); // accepts, reads, never answers
//! // … point the client at proxy.url() …
//! proxy.set(Fault::None);
//! # Ok(()) }
//! ```

pub mod netns;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What the proxy does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Bytes pass as they come.
    #[default]
    None,
    /// Every byte from the target reaches the client this much later (a one-way delay:
    /// throughput is unchanged).
    Latency(Duration),
    /// Bytes from the target reach the client at this many bytes per second at most.
    Bandwidth(u64),
    /// Connections are reset (RST): new ones at once, open ones at their next byte.
    Reset,
    /// Connections are accepted and read, and nothing is ever answered (a hung server);
    /// open ones stop answering too.
    Blackhole,
    /// Each connection forwards this many bytes from the target, then nothing more while it
    /// stays open (a server that hangs mid-body). Counted from when the connection met the
    /// fault.
    Stall { after: u64 },
    /// Each connection forwards this many bytes from the target, then closes (FIN): a body
    /// cut short. Counted from when the connection met the fault.
    Truncate { after: u64 },
}

/// What the proxy counts.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    bytes_down: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    fault: Mutex<Fault>,
    counters: Counters,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    fn forwarded(&self, n: usize) {
        self.counters
            .bytes_down
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A running fault proxy. Dropping it stops it and closes every connection it holds.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on `127.0.0.1:0` to `target`, passing bytes unchanged until [`Self::set`].
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        Self::start_on("127.0.0.1:0".parse().unwrap(), target).await
    }

    /// A proxy on `listen` to `target`.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Ok(FaultProxy { addr, shared, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the fault, for new connections and open ones alike.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.counters.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded from the target to clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.counters.bytes_down.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    // Owned here: aborting this task drops the set, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve(client, target, shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Closes a connection with a reset instead of a FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn serve(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    match shared.fault() {
        Fault::Reset => return reset(&client),
        Fault::Blackhole => return swallow(client).await,
        _ => {}
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return reset(&client);
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let client_gone = Arc::new(Notify::new());
    let up = requests(client_read, server_write, &shared, client_gone.clone());
    let down = responses(server_read, client_write, &shared, client_gone);
    tokio::join!(up, down);
}

/// Reads and drops everything a client sends until it goes away.
async fn swallow(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 << 10];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Client to target: passed on, swallowed under a blackhole.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    client_gone: Arc<Notify>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        match shared.fault() {
            Fault::Blackhole => continue,
            Fault::Reset => {
                reset(to.as_ref());
                break;
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    client_gone.notify_one();
}

/// Target to client, through the fault in force. A reader task stamps each piece as it
/// arrives, so a latency delays every byte by the same amount without slowing the stream.
async fn responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    client_gone: Arc<Notify>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; 16 << 10];
            match from.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    buf.truncate(n);
                    if tx.send((Instant::now(), buf)).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    };
    let hang = async {
        // A hung server holds the connection until the client goes away.
        client_gone.notified().await;
    };
    let writer = async move {
        // The fault this connection last met, and the bytes it forwarded since.
        let (mut met, mut sent) = (Fault::None, 0u64);
        let mut ready_at = Instant::now();
        while let Some((stamp, bytes)) = rx.recv().await {
            let mut piece = &bytes[..];
            let fault = shared.fault();
            if fault != met {
                // Stalls and truncations count from here.
                (met, sent) = (fault, 0);
            }
            match fault {
                Fault::None => {}
                Fault::Latency(d) => tokio::time::sleep_until(stamp + d).await,
                Fault::Bandwidth(rate) => {
                    let rate = rate.max(1);
                    ready_at = ready_at.max(Instant::now());
                    // Pieces of at most 1/20 s worth, each followed by its time on the wire.
                    let step = (rate / 20).max(1) as usize;
                    while !piece.is_empty() {
                        let n = step.min(piece.len());
                        if to.write_all(&piece[..n]).await.is_err() {
                            return;
                        }
                        shared.forwarded(n);
                        piece = &piece[n..];
                        ready_at += Duration::from_secs_f64(n as f64 / rate as f64);
                        tokio::time::sleep_until(ready_at).await;
                    }
                    sent += bytes.len() as u64;
                    continue;
                }
                Fault::Reset => {
                    reset(to.as_ref());
                    to.forget();
                    return;
                }
                Fault::Blackhole => return hang.await,
                Fault::Stall { after } | Fault::Truncate { after } => {
                    let room = after.saturating_sub(sent).min(piece.len() as u64) as usize;
                    if room < piece.len() {
                        let _ = to.write_all(&piece[..room]).await;
                        shared.forwarded(room);
                        if matches!(fault, Fault::Truncate { .. }) {
                            let _ = to.shutdown().await;
                            return;
                        }
                        return hang.await;
                    }
                }
            }
            if to.write_all(piece).await.is_err() {
                return;
            }
            sent += piece.len() as u64;
            shared.forwarded(piece.len());
        }
        let _ = to.shutdown().await;
    };
    // The writer ends the exchange; the reader stops with it.
    tokio::select! {
        _ = writer => {}
        _ = async { reader.await; std::future::pending::<()>().await } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each connection with `reply` once it read a line, then closes.
    async fn echo_server(reply: Vec<u8>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    let _ = s.read(&mut b).await;
                    let _ = s.write_all(&reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    /// Sends a line through the proxy and reads to the end: the bytes, or the error.
    async fn exchange(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"hello\n").await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says() {
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let proxy = FaultProxy::start(echo_server(body.clone()).await)
            .await
            .unwrap();
        assert_eq!(exchange(proxy.addr()).await.unwrap(), body);

        proxy.set(Fault::Truncate { after: 1000 });
        assert_eq!(exchange(proxy.addr()).await.unwrap(), body[..1000]);

        proxy.set(Fault::Reset);
        let e = exchange(proxy.addr()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");

        proxy.set(Fault::Latency(Duration::from_millis(200)));
        let t = Instant::now();
        assert_eq!(exchange(proxy.addr()).await.unwrap(), body);
        assert!(t.elapsed() >= Duration::from_millis(200));

        proxy.set(Fault::Bandwidth(400_000));
        let t = Instant::now();
        assert_eq!(exchange(proxy.addr()).await.unwrap(), body);
        // 200 kB at 400 kB/s: half a second at least.
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );

        for fault in [Fault::Blackhole, Fault::Stall { after: 10 }] {
            proxy.set(fault);
            let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
            s.write_all(b"hello\n").await.unwrap();
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut got));
            assert!(read.await.is_err(), "{fault:?} answered: {got:?}");
            let expect = if fault == Fault::Blackhole { 0 } else { 10 };
            assert_eq!(got.len(), expect, "{fault:?}");
        }
        assert_eq!(proxy.accepted(), 7);
    }
}
