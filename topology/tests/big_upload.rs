//! A 2 GiB upload streams through a real `tessera origin` process: it is never held whole in
//! memory (peak resident set under 256 MiB) and reads back with the right hash.

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tessera_origin_proto::ChunkHash;

/// Peak resident set of `pid` in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("no VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gib_upload_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = common::start_origin(&dir.path().join("origin"));

    // 2 GiB of incompressible bytes made on the fly (blake3 in XOF mode), hashed as sent.
    const SIZE: u64 = 2 << 30;
    const PIECE: usize = 1 << 20;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut xof = blake3::Hasher::new()
            .update(b"tessera 2 GiB")
            .finalize_xof();
        let mut whole = blake3::Hasher::new();
        for _ in 0..SIZE / PIECE as u64 {
            let mut buf = vec![0u8; PIECE];
            xof.fill(&mut buf);
            whole.update(&buf);
            if tx.blocking_send(Ok(Frame::data(Bytes::from(buf)))).is_err() {
                break;
            }
        }
        ChunkHash::from(whole.finalize())
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::put(format!("{url}/api/v1/files/big.bin"))
        .body(StreamBody::new(Box::pin(stream)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 201, "{body:?}");
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let sent_hash = producer.await.unwrap();
    assert_eq!(reply["size"], SIZE);
    assert_eq!(reply["blake3"], sent_hash.to_string());

    let peak = peak_rss_kib(child.id());
    assert!(
        peak < 256 * 1024,
        "origin peak RSS {peak} KiB during a 2 GiB upload"
    );

    // Read it back (streamed, hashed on the fly).
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .get(format!("{url}/api/v1/files/big.bin").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        let d = f.unwrap().into_data().unwrap_or_default();
        n += d.len() as u64;
        h.update(&d);
    }
    assert_eq!(n, SIZE);
    assert_eq!(ChunkHash::from(h.finalize()), sent_hash);
    println!(
        "origin peak RSS during a 2 GiB upload and read: {} MiB",
        peak_rss_kib(child.id()) / 1024
    );
    child.kill_9();
}
