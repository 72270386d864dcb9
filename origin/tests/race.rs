//! The delete/upload race: a chunk that an upload in flight is about to reference must never
//! be collected.

mod common;

use bytes::Bytes;
use common::{Node, get, noise, send};
use http::{Method, StatusCode};
use tessera_origin::{Store, StoreConfig};

/// Nothing is indexed, and at most the committer's open shared pack remains on disk.
fn assert_nothing_stored(store: &Store) {
    let s = store.stats().unwrap();
    assert_eq!((s.objects, s.unique_bytes), (0, 0));
    let packs = std::fs::read_dir(store.packs_dir()).unwrap().count();
    assert!(
        packs <= 1,
        "{packs} packs left after everything was deleted"
    );
}

/// Deterministic interleaving on the store itself: the upload has seen (and pinned) the
/// chunks of `a`; then `a` is deleted and garbage is collected; then the upload commits.
#[test]
fn collection_spares_chunks_pinned_by_an_upload_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        batch_bytes: 64 * 1024,
        ..Default::default()
    };
    let store = Store::open(dir.path(), cfg).unwrap();
    let x = noise(4 << 20, 3);

    let mut up = store.upload();
    up.write(&x).unwrap();
    up.finish("a", "application/octet-stream").unwrap();

    let a = store.manifest("a").unwrap().unwrap();
    let mut up_b = store.upload();
    up_b.write(&x[..3 << 20]).unwrap(); // batches processed: a's chunks are found and pinned
    // After one push larger than `Chunker::FILL`, the chunker holds back less than one
    // maximum-size chunk; everything before it was seen.
    let seen: Vec<_> = a
        .chunks
        .iter()
        .filter(|c| c.offset + u64::from(c.size) + 65536 <= 3 << 20)
        .collect();

    assert!(store.delete("a").unwrap());
    let gc = store.collect_garbage().unwrap();
    // Only chunks the upload has not reached yet may go.
    assert!(gc.chunks <= (a.chunks.len() - seen.len()) as u64, "{gc:?}");
    for c in &seen {
        assert!(
            store.read_chunk(&c.hash).unwrap().is_some(),
            "pinned chunk {} was collected",
            c.hash
        );
    }

    up_b.write(&x[3 << 20..]).unwrap();
    let (rep, _) = up_b.finish("b", "application/octet-stream").unwrap();
    // b reused a's chunks rather than storing them again...
    assert!(rep.new_chunks <= rep.chunks - seen.len() as u64, "{rep:?}");
    // ...and every one of them is still there and verifies.
    let m = store.manifest("b").unwrap().unwrap();
    let mut joined = Vec::new();
    for c in &m.chunks {
        joined.extend_from_slice(
            &store
                .read_chunk(&c.hash)
                .unwrap()
                .expect("chunk collected under an upload"),
        );
    }
    assert!(joined == x);
    // Once nothing references them, the same chunks are collected.
    assert!(store.delete("b").unwrap());
    let gc = store.collect_garbage().unwrap();
    assert_eq!(gc.chunks, m.chunks.len() as u64);
    assert!(
        std::fs::read_dir(store.packs_dir())
            .unwrap()
            .next()
            .is_none(),
        "packs left after everything was deleted"
    );
}

/// An abandoned upload unpins what it pinned, so the chunks can be collected later.
#[test]
fn an_abandoned_upload_releases_its_pins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            batch_bytes: 64 * 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let x = noise(1 << 20, 4);
    let mut up = store.upload();
    up.write(&x).unwrap();
    up.finish("a", "application/octet-stream").unwrap();
    let mut half = store.upload();
    half.write(&x).unwrap();
    // Enough more that the chunker has cut (and the upload seen) all of x.
    half.write(&noise(2 << 20, 5)).unwrap();
    let total = store.manifest("a").unwrap().unwrap().chunks.len() as u64;
    assert!(store.delete("a").unwrap());
    // Only x's last chunk, which the upload saw merged with what followed, is unpinned.
    assert!(store.collect_garbage().unwrap().chunks <= 1);
    drop(half);
    assert!(store.collect_garbage().unwrap().chunks >= total - 1);
    assert_nothing_stored(&store);
}

/// The same race through HTTP, many times with real concurrency: DELETE of `a` and PUT of
/// `b` with the same content run at once; `b` must always read back whole.
#[tokio::test]
async fn concurrent_delete_and_upload_over_http() {
    let node = Node::start(|_| {}).await;
    for round in 0..15u64 {
        let x = noise(1 << 20, 100 + round);
        node.client.put_bytes("a", x.clone()).await.unwrap();
        let a_url = node.url("/api/v1/files/a");
        let del = send(Method::DELETE, &a_url, &[], Bytes::new());
        let put = node.client.put_bytes("b", x.clone());
        let (d, p) = tokio::join!(del, put);
        assert_eq!(d.status, StatusCode::NO_CONTENT);
        p.unwrap();
        let r = get(&node.url("/api/v1/files/b")).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {:?}", r.body);
        assert!(r.body == x, "round {round}: b differs");
    }
    node.stop().await;
}

/// Bytes past a pack's registered extent (a group commit torn by a crash after its append)
/// are cut off at the next start, and what was committed still reads back.
#[test]
fn restart_truncates_a_torn_shared_pack() {
    let dir = tempfile::tempdir().unwrap();
    let x = noise(200_000, 8);
    let pack = {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let mut up = store.upload();
        up.write(&x).unwrap();
        up.finish("small", "application/octet-stream").unwrap();
        let mut packs: Vec<_> = std::fs::read_dir(store.packs_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            packs.len(),
            1,
            "a small publish goes to the one shared pack"
        );
        packs.pop().unwrap()
    };
    let committed = std::fs::metadata(&pack).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&pack)
            .unwrap();
        f.write_all(&noise(5000, 9)).unwrap();
    }
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(std::fs::metadata(&pack).unwrap().len(), committed);
    let m = store.manifest("small").unwrap().unwrap();
    let mut joined = Vec::new();
    for c in &m.chunks {
        joined.extend_from_slice(&store.read_chunk(&c.hash).unwrap().unwrap());
    }
    assert!(joined == x);
}

/// Many small publishes at once, half of them with the same content: the group commit
/// stores each distinct chunk once and every file reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_small_publishes_share_commits_and_chunks() {
    let node = Node::start(|_| {}).await;
    let shared = noise(20_000, 77);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let client = node.client.clone();
        let body = if i % 2 == 0 {
            shared.clone()
        } else {
            noise(3000 + i as usize * 7, 1000 + i)
        };
        tasks.push(tokio::spawn(async move {
            (
                i,
                body.clone(),
                client.put_bytes(&format!("many/{i}"), body).await,
            )
        }));
    }
    let mut new_bytes = 0;
    let mut expected_unique = shared.len() as u64;
    for t in tasks {
        let (i, body, r) = t.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("publish {i}: {e}"));
        new_bytes += r.stored_bytes_added;
        if i % 2 == 1 {
            expected_unique += body.len() as u64;
        }
        assert!(
            get(&node.url(&format!("/api/v1/files/many/{i}")))
                .await
                .body
                == body
        );
    }
    let s = node.client.stats().await.unwrap();
    assert_eq!(s.objects, 200);
    assert_eq!(s.unique_bytes, expected_unique, "a chunk was counted twice");
    // Every stored byte is live: nothing was appended twice.
    let packs: u64 = std::fs::read_dir(node.packs_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let headers = 16 * std::fs::read_dir(node.packs_dir()).unwrap().count() as u64;
    assert_eq!(packs, new_bytes + headers);
    node.stop().await;
}

/// With room for one publish at a time, many at once all succeed: they queue, none is
/// refused or lost, and the in-flight gauge returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_concurrency_limit_wait_their_turn() {
    let node = Node::start(|c| c.max_concurrent_uploads = 1).await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let client = node.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .put_bytes(&format!("q/{i}"), noise(300_000, 500 + i))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(node.client.stats().await.unwrap().objects, 8);
    let m = get(&node.url("/metrics")).await;
    let m = std::str::from_utf8(&m.body).unwrap();
    assert!(
        m.lines().any(|l| l == "tessera_origin_uploads_in_flight 0"),
        "{m}"
    );
    node.stop().await;
}
