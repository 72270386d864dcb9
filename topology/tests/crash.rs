//! `kill -9` of a real `tessera origin` process during uploads, then a restart: what was
//! acknowledged survives, no partial file is visible, and what torn uploads wrote is reclaimed.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::{noise, start_origin as start};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tessera_origin_proto::{ChunkHash, OriginClient};

fn pack_count(data: &Path) -> usize {
    std::fs::read_dir(data.join("packs")).unwrap().count()
}

/// Starts streaming `data` to `path`; returns after `cut` bytes were handed to the connection,
/// leaving the rest unsent (the upload stays open).
async fn start_upload(
    url: &str,
    path: &str,
    data: Vec<u8>,
    cut: usize,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let req = http::Request::put(format!("{url}/api/v1/files/{path}"))
        .body(StreamBody::new(Box::pin(stream)))
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = client.request(req).await; // the server dies under it
    });
    for piece in data[..cut].chunks(64 * 1024) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
            .await
            .unwrap();
    }
    if cut < data.len() {
        // Keep the sender alive so the body stays open until the kill.
        tokio::spawn(async move {
            tx.closed().await;
        });
    } // else the body ends here: the publish may or may not commit before the kill.
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("origin");
    let v1 = noise(2 << 20, 1);
    let v2 = noise(16 << 20, 2);
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();

    for (round, cut) in [0usize, 4 << 20, 12 << 20, 16 << 20]
        .into_iter()
        .enumerate()
    {
        let (mut child, url) = start(&data);
        let client = OriginClient::new(&url, None).unwrap();
        if round == 0 {
            client.put_bytes("keep.bin", v1.clone()).await.unwrap();
        }
        let packs_committed = pack_count(&data);
        // Torn uploads: a new version of keep.bin and two new files, cut mid-body (the last
        // round sends every byte of keep.bin's new version but does not wait for the reply).
        let mut tasks = vec![start_upload(&url, "keep.bin", v2.clone(), cut).await];
        for i in 0..2 {
            tasks.push(
                start_upload(
                    &url,
                    &format!("torn/{round}-{i}"),
                    noise(16 << 20, 10 + i),
                    cut.min(8 << 20),
                )
                .await,
            );
        }
        // One write acknowledged just before the kill.
        let name = format!("acked/{round}.bin");
        let body = noise(300_000 + round * 1000, 100 + round as u64);
        client.put_bytes(&name, body.clone()).await.unwrap();
        acked.push((name, body));
        child.kill_9(); // SIGKILL
        for t in tasks {
            t.await.unwrap();
        }

        let (mut child, url) = start(&data);
        let client = OriginClient::new(&url, None).unwrap();
        // Every acknowledged write survived, whole.
        for (name, body) in &acked {
            let m = client
                .manifest(name)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name} lost after kill -9"));
            assert_eq!(m.blake3, ChunkHash::of(body));
        }
        // keep.bin is one whole version, never a mix.
        let got = get_bytes(&url, "keep.bin").await;
        assert!(
            got == v1 || (cut == v2.len() && got == v2),
            "round {round}: keep.bin is neither version"
        );
        // No torn file is visible.
        let list: serde_json::Value =
            serde_json::from_slice(&get_raw(&format!("{url}/api/v1/files?prefix=torn")).await)
                .unwrap();
        assert_eq!(
            list.as_array().unwrap().len(),
            0,
            "round {round}: torn uploads visible: {list}"
        );
        // What the torn uploads wrote is gone: only packs of committed publishes remain.
        let expected = packs_committed + 1 + usize::from(got == v2 && got != v1);
        assert!(
            pack_count(&data) <= expected,
            "round {round}: {} packs, expected at most {expected}",
            pack_count(&data)
        );
        for (name, body) in &acked {
            assert!(
                get_bytes(&url, name).await == *body,
                "{name} reads back differently"
            );
        }
        child.kill_9();
    }
}

async fn get_raw(url: &str) -> Bytes {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let r = client.get(url.parse().unwrap()).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.into_body().collect().await.unwrap().to_bytes()
}

async fn get_bytes(base: &str, path: &str) -> Bytes {
    get_raw(&format!("{base}/api/v1/files/{path}")).await
}
