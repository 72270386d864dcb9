//! The change feed edges follow: every publish and delete, in order, long-polled.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Node, get, send};
use http::{Method, StatusCode};
use tessera_origin_proto::ChunkHash;
use tessera_origin_proto::changes::ChangeOp;

#[tokio::test]
async fn publishes_and_deletes_appear_in_order() {
    let node = Node::start(|_| {}).await;
    node.client.put_bytes("a.txt", "A").await.unwrap();
    node.client.put_bytes("b.txt", "B").await.unwrap();
    node.client.put_bytes("a.txt", "A2").await.unwrap();
    let r = send(
        Method::DELETE,
        &node.url("/api/v1/files/b.txt"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let feed = node.client.changes(0, 0).await.unwrap();
    let seen: Vec<(u64, ChangeOp, &str)> = feed
        .changes
        .iter()
        .map(|c| (c.seq, c.op, c.path.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, ChangeOp::Put, "a.txt"),
            (2, ChangeOp::Put, "b.txt"),
            (3, ChangeOp::Put, "a.txt"),
            (4, ChangeOp::Delete, "b.txt")
        ]
    );
    assert_eq!(feed.changes[2].blake3, Some(ChunkHash::of(b"A2")));
    assert_eq!(feed.changes[3].blake3, None);
    assert_eq!((feed.next, feed.truncated), (4, false));

    let tail = node.client.changes(2, 0).await.unwrap();
    assert_eq!(
        tail.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [3, 4]
    );
    let none = node.client.changes(4, 0).await.unwrap();
    assert!(none.changes.is_empty());
    assert_eq!((none.next, none.truncated), (4, false));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_when_a_change_is_committed() {
    let node = Node::start(|_| {}).await;
    node.client.put_bytes("x", "1").await.unwrap();
    let client = node.client.clone();
    // Waits up to 60 s on the origin; the test allows 20 s, so only a wake-up passes.
    let poll = tokio::spawn(async move { client.changes(1, 60).await });
    node.client.put_bytes("y", "2").await.unwrap();
    let feed = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("long poll not woken")
        .unwrap()
        .unwrap();
    assert_eq!(feed.changes.len(), 1);
    assert_eq!(feed.changes[0].path, "y");
    assert_eq!(feed.next, 2);
    node.stop().await;
}

#[tokio::test]
async fn a_reader_that_fell_behind_is_told_to_revalidate() {
    let node = Node::start(|c| c.store.change_retention = 3).await;
    for i in 0..6 {
        node.client
            .put_bytes(&format!("f{i}"), vec![i as u8; 10])
            .await
            .unwrap();
    }
    let feed = node.client.changes(0, 0).await.unwrap();
    assert!(feed.truncated);
    assert_eq!(
        feed.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    let ok = node.client.changes(3, 0).await.unwrap();
    assert!(!ok.truncated);
    // A position past the end (the origin's data was replaced): start over.
    let ahead = node.client.changes(100, 0).await.unwrap();
    assert!(ahead.truncated);
    assert_eq!(ahead.next, 6);

    let r = get(&node.url("/api/v1/changes?since=abc")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("since"));
    node.stop().await;
}
