//! An origin cluster on loopback: real nodes in this process, each with its own store,
//! talking HTTP to each other. Placement, reads through any node, a node down, repair,
//! a node added, delete and garbage collection across nodes, scrub.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    Node, Tmpfs, cluster_config, get, noise, publish_until_refused, restart_node, send,
    start_cluster, start_cluster_each, start_cluster_with, start_member,
};
use http::{Method, StatusCode};
use tessera_origin_proto::ring::{Ring, RingNode};
use tessera_origin_proto::{ChunkHash, Manifest};

const AUTH: (&str, &str) = ("authorization", "Bearer secret");
const HOP: (&str, &str) = ("x-tessera-hop", "1");

fn ring(n: usize, r: usize) -> Ring {
    let nodes = (1..=n)
        .map(|i| RingNode {
            id: format!("o{i}"),
            weight: 1,
        })
        .collect();
    Ring::new(
        nodes,
        tessera_origin::cluster::ClusterConfig::default().vnodes,
        r,
    )
}

async fn publish(node: &Node, path: &str, data: &[u8]) -> serde_json::Value {
    let r = send(
        Method::PUT,
        &node.url(&format!("/api/v1/files/{path}")),
        &[AUTH],
        Bytes::copy_from_slice(data),
    )
    .await;
    assert!(r.status.is_success(), "{} {:?}", r.status, r.body);
    r.json()
}

async fn manifest(node: &Node, path: &str) -> Manifest {
    let r = get(&node.url(&format!("/api/v1/manifests/{path}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    Manifest::from_json(&r.body).unwrap()
}

/// Indexes of the nodes that hold chunk `h` themselves.
async fn holders(nodes: &[Node], h: &ChunkHash) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let r = send(
            Method::GET,
            &n.url(&format!("/api/v1/chunks/{h}")),
            &[HOP],
            Bytes::new(),
        )
        .await;
        if r.status == StatusCode::OK {
            out.push(i);
        }
    }
    out
}

/// Indexes of the nodes holding a record of `path`.
async fn record_holders(nodes: &[Node], path: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let url = n.url(&format!("/api/v1/cluster/files/{path}"));
        let r = send(Method::GET, &url, &[AUTH], Bytes::new()).await;
        if r.status == StatusCode::OK {
            out.push(i);
        }
    }
    out
}

/// Waits (bounded) until `node` sees node `id` as live or not.
async fn wait_live(node: &Node, id: &str, live: bool) {
    for _ in 0..200 {
        let v = get(&node.url("/api/v1/cluster")).await.json();
        let seen = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["live"] == live)
            .unwrap_or(false);
        if seen {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{} never saw {id} as live={live}", node.addr);
}

async fn repair_all(nodes: &[Node]) -> Vec<serde_json::Value> {
    let mut reports = Vec::new();
    for n in nodes {
        let r = send(
            Method::POST,
            &n.url("/api/v1/cluster/repair"),
            &[AUTH],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        reports.push(r.json());
    }
    reports
}

/// Publishes `count` files `{dir}/{i}.bin` of `size` random bytes (seeds from `seed`)
/// through the nodes in turn; returns their paths.
async fn publish_files(
    nodes: &[Node],
    dir: &str,
    count: usize,
    size: usize,
    seed: u64,
) -> Vec<String> {
    let mut paths = Vec::new();
    for i in 0..count {
        let p = format!("{dir}/{i}.bin");
        publish(&nodes[i % nodes.len()], &p, &noise(size, seed + i as u64)).await;
        paths.push(p);
    }
    paths
}

/// Stops every node and restarts it on its address and data as node `i` of a cluster of
/// `addrs` (replication 2): a topology change.
async fn restart_with(nodes: Vec<Node>, addrs: &[std::net::SocketAddr]) -> Vec<Node> {
    let mut kept = Vec::new();
    for n in nodes {
        kept.push(n.stop_keep().await);
    }
    let mut out = Vec::new();
    for (i, (addr, dir)) in kept.into_iter().enumerate() {
        out.push(restart_node(addr, dir, cluster_config(addrs, i, 2)).await);
    }
    out
}

async fn metric(node: &Node, name: &str) -> f64 {
    let text = get(&node.url("/metrics")).await.body;
    common::metric(&String::from_utf8_lossy(&text), name)
}

async fn stop_all(nodes: Vec<Node>) {
    for n in nodes {
        n.stop().await;
    }
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort();
    v
}

/// A publish in pieces through a node that holds few of the named chunks: it reads them
/// from their owners (checked), and the cluster serves the new version byte-exact.
#[tokio::test]
async fn a_publish_in_pieces_reads_named_chunks_from_their_owners() {
    let nodes = start_cluster(3, 1).await;
    let v1 = noise(2 << 20, 5);
    publish(&nodes[0], "big.bin", &v1).await;
    let held: std::collections::HashSet<ChunkHash> = manifest(&nodes[0], "big.bin")
        .await
        .chunks
        .iter()
        .map(|c| c.hash)
        .collect();
    // With one copy each, node 2 holds about a third of them itself.
    let mut local = 0;
    for h in &held {
        if holders(&nodes, h).await == [2] {
            local += 1;
        }
    }
    assert!(local < held.len(), "{local} of {}", held.len());
    let mut v2 = v1.clone();
    v2.splice(1 << 20..1 << 20, noise(500, 6));
    let body = common::pieces(&v2, |h| held.contains(h));
    let r = send(
        Method::PUT,
        &nodes[2].url("/api/v1/files/big.bin"),
        &[
            AUTH,
            ("content-type", tessera_origin_proto::upload::CONTENT_TYPE),
        ],
        body,
    )
    .await;
    assert!(r.status.is_success(), "{} {:?}", r.status, r.body);
    for n in &nodes {
        assert!(get(&n.url("/api/v1/files/big.bin")).await.body == v2);
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_chunk_and_record_lives_on_its_owners_and_any_node_serves_the_file() {
    let nodes = start_cluster(3, 2).await;
    let ring = ring(3, 2);
    let data = noise(3 << 20, 1);
    let reply = publish(&nodes[0], "site/big.bin", &data).await;
    assert_eq!(reply["size"], data.len() as u64);
    assert_eq!(reply["placement"]["replication"], 2);
    assert_eq!(
        reply["placement"]["record_nodes"].as_array().unwrap().len(),
        2
    );
    for n in &nodes {
        let r = get(&n.url("/api/v1/files/site/big.bin")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body == data, "node {} served different bytes", n.addr);
        // A range through a node that holds only some of the chunks.
        let r = send(
            Method::GET,
            &n.url("/api/v1/files/site/big.bin"),
            &[("range", "bytes=1000000-1000099")],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&r.body[..], &data[1_000_000..1_000_100]);
    }
    let m = manifest(&nodes[1], "site/big.bin").await;
    assert!(m.chunks.len() > 20);
    for c in &m.chunks {
        assert_eq!(
            holders(&nodes, &c.hash).await,
            sorted(ring.chunk_owners(&c.hash)),
            "chunk {} is not exactly on its owners",
            c.hash
        );
    }
    assert_eq!(
        record_holders(&nodes, "site/big.bin").await,
        sorted(ring.file_owners("site/big.bin"))
    );
    // Every node lists it once; the chunk API forwards to owners for non-hop requests.
    for n in &nodes {
        let l = get(&n.url("/api/v1/files?prefix=site/")).await.json();
        assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
        let c = &m.chunks[0];
        let r = get(&n.url(&format!("/api/v1/chunks/{}", c.hash))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_loses_no_read_and_no_publish_and_repair_restores_placement() {
    let mut nodes = start_cluster(3, 2).await;
    let ring = ring(3, 2);
    let old = noise(2 << 20, 2);
    publish(&nodes[0], "a/old.bin", &old).await;
    // Node o3 goes away.
    let (addr, dir) = nodes.pop().unwrap().stop_keep().await;
    wait_live(&nodes[0], "o3", false).await;
    wait_live(&nodes[1], "o3", false).await;
    for n in &nodes {
        let r = get(&n.url("/api/v1/files/a/old.bin")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body == old);
    }
    // A publish still makes two copies of everything, on the two live nodes.
    let new = noise(2 << 20, 3);
    let reply = publish(&nodes[1], "a/new.bin", &new).await;
    let copies = &reply["placement"]["chunk_copies"];
    let m = manifest(&nodes[0], "a/new.bin").await;
    assert_eq!(copies["o3"], serde_json::Value::Null, "{copies}");
    assert_eq!(
        copies["o1"].as_u64().unwrap() + copies["o2"].as_u64().unwrap(),
        2 * m.chunks.len() as u64
    );
    let statuses = repair_all(&nodes).await;
    let waiting: u64 = statuses
        .iter()
        .map(|r| r["chunks_waiting"].as_u64().unwrap())
        .sum();
    assert!(
        waiting > 0,
        "chunks owned by the down node are under-replicated: {statuses:?}"
    );
    // It comes back; repair moves every copy to its owners.
    let cfg = cluster_config(&[nodes[0].addr, nodes[1].addr, addr], 2, 2);
    nodes.push(restart_node(addr, dir, cfg).await);
    wait_live(&nodes[0], "o3", true).await;
    wait_live(&nodes[1], "o3", true).await;
    repair_all(&nodes).await;
    let last = repair_all(&nodes).await;
    for r in &last {
        assert_eq!(r["chunks_waiting"], 0, "{r}");
        assert_eq!(
            r["chunks_missing"], 0,
            "a second pass found more to copy: {r}"
        );
    }
    for path in ["a/old.bin", "a/new.bin"] {
        let m = manifest(&nodes[2], path).await;
        for c in &m.chunks {
            assert_eq!(
                holders(&nodes, &c.hash).await,
                sorted(ring.chunk_owners(&c.hash))
            );
        }
        assert_eq!(
            record_holders(&nodes, path).await,
            sorted(ring.file_owners(path))
        );
    }
    assert_eq!(
        metric(&nodes[0], "tessera_origin_cluster_under_replicated_chunks").await,
        0.0
    );
    assert_eq!(
        metric(&nodes[0], "tessera_origin_cluster_nodes_live").await,
        3.0
    );
    stop_all(nodes).await;
}

/// Repair compares digests: once the publishes are settled, a pass looks at no file and no
/// digest bucket differs; a node whose disk was replaced (back empty, so no node has
/// anything marked as changed) is refilled by the digest comparison alone, and the next
/// passes look at nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_exchanges_only_digests_when_nothing_changed_and_refills_a_replaced_disk() {
    let mut nodes = start_cluster(3, 2).await;
    let ring = ring(3, 2);
    let paths = publish_files(&nodes, "d", 40, 100 << 10, 900).await;
    let idle = |reports: Vec<serde_json::Value>| {
        for r in reports {
            for k in [
                "paths",
                "records",
                "fragments",
                "buckets_differing",
                "errors",
            ] {
                assert_eq!(r[k], 0, "{k}: {r}");
            }
            assert_eq!(r["peers_compared"], 2, "{r}");
        }
    };
    idle(repair_all(&nodes).await);
    // o3's disk is replaced: same address, an empty data folder.
    let (addr, _old_disk) = nodes.pop().unwrap().stop_keep().await;
    let cfg = cluster_config(&[nodes[0].addr, nodes[1].addr, addr], 2, 2);
    nodes.push(restart_node(addr, tempfile::tempdir().unwrap(), cfg).await);
    wait_live(&nodes[0], "o3", true).await;
    wait_live(&nodes[1], "o3", true).await;
    for r in repair_all(&nodes[..2]).await {
        assert!(r["buckets_differing"].as_u64().unwrap() > 0, "{r}");
        assert!(r["paths"].as_u64().unwrap() <= paths.len() as u64, "{r}");
        assert!(r["chunks_copied"].as_u64().unwrap() > 0, "{r}");
    }
    for path in &paths {
        let m = manifest(&nodes[2], path).await;
        for c in &m.chunks {
            assert_eq!(
                holders(&nodes, &c.hash).await,
                sorted(ring.chunk_owners(&c.hash)),
                "{path}"
            );
        }
        assert_eq!(
            record_holders(&nodes, path).await,
            sorted(ring.file_owners(path)),
            "{path}"
        );
    }
    idle(repair_all(&nodes).await);
    stop_all(nodes).await;
}

/// A node away for longer than tombstones are kept cannot bring back a file deleted
/// meanwhile: it comes back resynchronising and answers no peer about its records (so reads
/// through any node find the file deleted), drops the record no other owner has any more,
/// keeps the ones they still have, and then serves again; the file stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_back_after_the_tombstone_horizon_cannot_resurrect_a_deleted_file() {
    // Tombstones kept 3 s: longer than the peers' 1 s health checks, which keep the nodes
    // that stay up in contact.
    let tombstone_secs = 3;
    let mut nodes = start_cluster_with(3, 2, |c| c.tombstone_secs = tombstone_secs).await;
    let ring = ring(3, 2);
    let owned_by_o3: Vec<String> = (0..)
        .map(|i| format!("t/{i}.txt"))
        .filter(|p| ring.file_owners(p).contains(&2))
        .take(2)
        .collect();
    let (gone, kept) = (&owned_by_o3[0], &owned_by_o3[1]);
    publish(&nodes[0], gone, b"deleted while o3 was away").await;
    publish(&nodes[0], kept, b"still here").await;
    let (addr, dir) = nodes.pop().unwrap().stop_keep().await;
    wait_live(&nodes[0], "o3", false).await;
    wait_live(&nodes[1], "o3", false).await;
    let r = send(
        Method::DELETE,
        &nodes[0].url(&format!("/api/v1/files/{gone}")),
        &[AUTH],
        "",
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    // The tombstones expire; full passes forget them (bounded wait: expiry is wall time).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for n in &nodes {
            let url = n.url("/api/v1/cluster/repair?full=1");
            let r = send(Method::POST, &url, &[AUTH], Bytes::new()).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        }
        if record_holders(&nodes, gone).await.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tombstones never expired"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // o3 returns with its old disk, which still has the file's record.
    let mut cfg = cluster_config(&[nodes[0].addr, nodes[1].addr, addr], 2, 2);
    cfg.tombstone_secs = tombstone_secs;
    nodes.push(restart_node(addr, dir, cfg).await);
    let status = get(&nodes[2].url("/api/v1/cluster")).await.json();
    assert_eq!(status["resynchronising"], true, "{status}");
    let url = nodes[2].url(&format!("/api/v1/cluster/files/{gone}"));
    let r = send(Method::GET, &url, &[AUTH], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("resynchronising")
    );
    wait_live(&nodes[0], "o3", true).await;
    wait_live(&nodes[1], "o3", true).await;
    for n in &nodes {
        let r = get(&n.url(&format!("/api/v1/files/{gone}"))).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "through {}: {:?}",
            n.addr,
            r.body
        );
    }
    let rep = send(
        Method::POST,
        &nodes[2].url("/api/v1/cluster/repair"),
        &[AUTH],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(rep["resynchronising"], true, "{rep}");
    assert_eq!(rep["records_dropped"], 1, "{rep}");
    let status = get(&nodes[2].url("/api/v1/cluster")).await.json();
    assert_eq!(status["resynchronising"], false, "{status}");
    repair_all(&nodes).await;
    repair_all(&nodes).await;
    assert_eq!(record_holders(&nodes, gone).await, Vec::<usize>::new());
    assert_eq!(
        record_holders(&nodes, kept).await,
        sorted(ring.file_owners(kept))
    );
    for n in &nodes {
        let r = get(&n.url(&format!("/api/v1/files/{gone}"))).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "through {}", n.addr);
        let r = get(&n.url(&format!("/api/v1/files/{kept}"))).await;
        assert!(r.status == StatusCode::OK && r.body == "still here"[..]);
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_few_live_nodes_refuse_a_publish_cleanly() {
    let mut nodes = start_cluster(2, 2).await;
    let (_addr, _dir) = nodes.pop().unwrap().stop_keep().await;
    wait_live(&nodes[0], "o2", false).await;
    let r = send(
        Method::PUT,
        &nodes[0].url("/api/v1/files/x.bin"),
        &[AUTH],
        Bytes::from(noise(100_000, 4)),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("only 1 of 2"), "{msg}");
    assert_eq!(
        get(&nodes[0].url("/api/v1/files/x.bin")).await.status,
        StatusCode::NOT_FOUND
    );
    nodes.pop().unwrap().stop().await;
}

/// A version replaced by a newer one keeps its chunks for `superseded_grace_secs`, so a read
/// that started on it (an edge streaming the old file from its manifest) can finish, as a
/// file unlinked on a filesystem stays readable while open; repair drops them afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_version_stays_readable_for_the_grace_period() {
    const GRACE: Duration = Duration::from_secs(6);
    let nodes = start_cluster_with(3, 2, |c| c.superseded_grace_secs = GRACE.as_secs()).await;
    let v1 = noise(2 << 20, 21);
    publish(&nodes[0], "g.bin", &v1).await;
    let m1 = manifest(&nodes[0], "g.bin").await;
    let replaced = std::time::Instant::now();
    publish(&nodes[1], "g.bin", &noise(1 << 20, 22)).await;
    let m2 = manifest(&nodes[0], "g.bin").await;
    let in_v2: std::collections::HashSet<_> = m2.chunks.iter().map(|c| c.hash).collect();
    let only_v1: Vec<_> = m1
        .chunks
        .iter()
        .filter(|c| !in_v2.contains(&c.hash))
        .map(|c| c.hash)
        .collect();
    assert!(!only_v1.is_empty());
    // Within the grace period, after a repair pass: every old chunk still on two nodes,
    // and the old version reads back whole, chunk by chunk, from any node.
    repair_all(&nodes).await;
    assert!(
        replaced.elapsed() < GRACE,
        "the test ran too slowly to tell"
    );
    for h in &only_v1 {
        assert_eq!(holders(&nodes, h).await.len(), 2, "chunk {h} dropped early");
    }
    let mut read = Vec::new();
    for c in &m1.chunks {
        let r = get(&nodes[2].url(&format!("/api/v1/chunks/{}", c.hash))).await;
        assert_eq!(r.status, StatusCode::OK);
        read.extend_from_slice(&r.body);
    }
    assert!(read == v1, "the old version no longer reads back");
    // After it, repair drops them.
    let deadline = std::time::Instant::now() + GRACE * 5;
    loop {
        repair_all(&nodes).await;
        let mut left = 0;
        for h in &only_v1 {
            left += holders(&nodes, h).await.len();
        }
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} copies of the old version's chunks still kept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        replaced.elapsed() >= GRACE,
        "dropped before the grace period ended"
    );
    assert_eq!(
        get(&nodes[0].url("/api/v1/files/g.bin")).await.body,
        noise(1 << 20, 22)
    );
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_and_replace_free_only_chunks_no_other_file_uses() {
    let nodes = start_cluster(3, 2).await;
    let shared = noise(1 << 20, 5);
    let mut b = shared.clone();
    b.extend_from_slice(&noise(1 << 20, 6));
    publish(&nodes[0], "a.bin", &shared).await;
    publish(&nodes[1], "b.bin", &b).await;
    let ma = manifest(&nodes[0], "a.bin").await;
    let mb = manifest(&nodes[0], "b.bin").await;
    let r = send(
        Method::DELETE,
        &nodes[2].url("/api/v1/files/a.bin"),
        &[AUTH],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    for n in &nodes {
        assert_eq!(
            get(&n.url("/api/v1/files/a.bin")).await.status,
            StatusCode::NOT_FOUND
        );
        let r = get(&n.url("/api/v1/files/b.bin")).await;
        assert!(r.status == StatusCode::OK && r.body == b);
    }
    // b shares a's chunks except a's last (cut at a's end): those stay on two nodes each.
    let in_b: std::collections::HashSet<_> = mb.chunks.iter().map(|c| c.hash).collect();
    for c in &ma.chunks {
        let n = holders(&nodes, &c.hash).await.len();
        if in_b.contains(&c.hash) {
            assert_eq!(n, 2, "a chunk b still uses was removed");
        } else {
            assert_eq!(n, 0, "a chunk only a used is still stored");
        }
    }
    // Cluster-wide figures count b once, whatever the copies; a node's own count differs.
    let v = get(&nodes[1].url("/api/v1/cluster/stats")).await.json();
    assert_eq!(v["objects"], 1, "{v}");
    assert_eq!(v["logical_bytes"], b.len() as u64, "{v}");
    assert_eq!(v["replication"], 2);
    assert_eq!(v["nodes"].as_object().unwrap().len(), 3);
    let unique = v["unique_bytes"].as_u64().unwrap();
    assert!(
        unique >= b.len() as u64 && unique < b.len() as u64 * 11 / 10,
        "{v}"
    );
    // Replacing b frees its old chunks that the new version does not use.
    let b2 = noise(500_000, 7);
    publish(&nodes[2], "b.bin", &b2).await;
    assert!(get(&nodes[0].url("/api/v1/files/b.bin")).await.body == b2);
    repair_all(&nodes).await; // collects what the background drop released
    for c in &mb.chunks {
        assert!(
            holders(&nodes, &c.hash).await.is_empty(),
            "old version's chunk kept"
        );
    }
    // A delete of something never published is a 404, and the tombstone is not listed.
    let r = send(
        Method::DELETE,
        &nodes[0].url("/api/v1/files/a.bin"),
        &[AUTH],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let l = get(&nodes[1].url("/api/v1/files")).await.json();
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_a_node_moves_only_what_the_ring_gives_it() {
    let nodes = start_cluster(3, 2).await;
    let paths = publish_files(&nodes, "f", 8, 512 << 10, 100).await;
    let mut all_chunks = Vec::new();
    for p in &paths {
        all_chunks.extend(manifest(&nodes[0], p).await.chunks.iter().map(|c| c.hash));
    }
    all_chunks.sort();
    all_chunks.dedup();
    // Restart all three with a four-node topology, and start the fourth.
    let fourth = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    addrs.push(fourth.local_addr().unwrap());
    let mut nodes = restart_with(nodes, &addrs).await;
    let cfg = cluster_config(&addrs, 3, 2);
    nodes.push(start_member(fourth, tempfile::tempdir().unwrap(), cfg).await);
    repair_all(&nodes).await;
    repair_all(&nodes).await;
    let ring4 = ring(4, 2);
    let mut on_new = 0;
    for h in &all_chunks {
        let hs = holders(&nodes, h).await;
        assert_eq!(
            hs,
            sorted(ring4.chunk_owners(h)),
            "chunk {h} not on its new owners"
        );
        on_new += usize::from(hs.contains(&3));
    }
    // Each chunk has 2 copies; the new node should take about a quarter of the copies.
    let frac = on_new as f64 / (2 * all_chunks.len()) as f64;
    assert!(
        (0.12..0.40).contains(&frac),
        "moved {frac:.2} of the copies"
    );
    for p in &paths {
        assert_eq!(
            get(&nodes[3].url(&format!("/api/v1/files/{p}")))
                .await
                .status,
            StatusCode::OK
        );
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_node_moves_its_share_to_the_others() {
    let mut nodes = start_cluster(3, 2).await;
    let paths = publish_files(&nodes, "r", 6, 400 << 10, 200).await;
    // o3 leaves for good: the other two restart with a two-node topology.
    nodes.pop().unwrap().stop().await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let nodes = restart_with(nodes, &addrs).await;
    repair_all(&nodes).await;
    let last = repair_all(&nodes).await;
    for r in &last {
        assert_eq!(r["chunks_missing"], 0, "{r}");
        assert_eq!(r["chunks_waiting"], 0, "{r}");
    }
    for p in &paths {
        let m = manifest(&nodes[0], p).await;
        for c in &m.chunks {
            assert_eq!(
                holders(&nodes, &c.hash).await,
                vec![0, 1],
                "chunk {}",
                c.hash
            );
        }
        assert_eq!(record_holders(&nodes, p).await, vec![0, 1]);
        assert_eq!(
            get(&nodes[1].url(&format!("/api/v1/files/{p}")))
                .await
                .status,
            StatusCode::OK
        );
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_replaces_a_corrupt_chunk_from_a_replica() {
    let nodes = start_cluster(3, 2).await;
    let data = noise(1 << 20, 9);
    publish(&nodes[0], "s.bin", &data).await;
    // Flip one byte in the middle of a pack record on node o1.
    let pack = std::fs::read_dir(nodes[0].packs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&pack, &bytes).unwrap();
    // Reads stay correct meanwhile: the replica's copy is served.
    let r = get(&nodes[0].url("/api/v1/files/s.bin")).await;
    assert!(r.status == StatusCode::OK && r.body == data);
    let r = send(
        Method::POST,
        &nodes[0].url("/api/v1/cluster/scrub"),
        &[AUTH],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["repaired"], 1, "{v}");
    let r = send(
        Method::POST,
        &nodes[0].url("/api/v1/cluster/scrub"),
        &[AUTH],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.json()["repaired"], 0);
    assert_eq!(
        metric(&nodes[0], "tessera_origin_scrub_corrupt_total").await,
        1.0
    );
    assert_eq!(
        metric(&nodes[0], "tessera_origin_scrub_repaired_total").await,
        1.0
    );
    stop_all(nodes).await;
}

#[tokio::test]
async fn internal_calls_refuse_bad_input() {
    let nodes = start_cluster(2, 2).await;
    let n = &nodes[0];
    let bad = [
        (
            Method::PUT,
            "/api/v1/cluster/files/a.bin",
            "{}",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/api/v1/cluster/fragments/x/a.bin",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/api/v1/cluster/fragments/1.zz/a.bin",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/cluster/fragments/drop",
            "{\"path\": 1}",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/v1/cluster/sync/digest",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/v1/cluster/sync/digest?peer=o1",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/cluster/sync/items?peer=o9",
            "{\"buckets\": [1]}",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/cluster/sync/items?peer=o2",
            "{\"buckets\": [65536]}",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/cluster/sync/digest?peer=o2",
            "{\"groups\": [4096]}",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/cluster/sync/items?peer=o2",
            "{\"buckets\": \"all\"}",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (m, p, body, want) in bad {
        let r = send(m.clone(), &n.url(p), &[AUTH], body).await;
        assert_eq!(r.status, want, "{m} {p}: {:?}", r.body);
        assert!(r.json()["error"].is_string());
    }
    // A frame whose bytes do not match its hash is refused and nothing is stored.
    let mut frame = vec![0u8; 32];
    frame.extend_from_slice(&5u32.to_be_bytes());
    frame.extend_from_slice(b"hello");
    let r = send(
        Method::PUT,
        &n.url("/api/v1/cluster/fragments/1.ab/a.bin"),
        &[AUTH],
        frame,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );
    let fragment = n.url("/api/v1/cluster/fragments/1.ab/a.bin");
    let r = send(Method::GET, &fragment, &[AUTH], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Writes need the token, and so do reads of records and fragments (they name deleted
    // paths); the cluster's status stays open.
    let r = send(
        Method::POST,
        &n.url("/api/v1/cluster/repair"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(Method::PUT, &n.url("/api/v1/files/gone.txt"), &[AUTH], "x").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = send(
        Method::DELETE,
        &n.url("/api/v1/files/gone.txt"),
        &[AUTH],
        "",
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    for p in [
        "/api/v1/cluster/files",
        "/api/v1/cluster/files?prefix=gone",
        "/api/v1/cluster/files/gone.txt",
        "/api/v1/cluster/fragments/1.ab/a.bin",
        "/api/v1/cluster/sync/digest?peer=o2",
    ] {
        let r = get(&n.url(p)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{p}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("gone.txt"),
            "{p}"
        );
    }
    let r = send(Method::GET, &n.url("/api/v1/cluster/files"), &[AUTH], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&r.body).contains("gone.txt"),
        "the token reads records"
    );
    assert_eq!(get(&n.url("/api/v1/cluster")).await.status, StatusCode::OK);
    stop_all(nodes).await;
}

/// One node of three (replication 2) on a full disk (a real 12 MiB tmpfs): a publish whose
/// chunks it owns is refused with `507` naming it, nothing of that publish is visible on any
/// node, what was published before reads back from every node, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_full_disk_makes_publishes_507_and_nothing_partial_is_visible() {
    let disk = Tmpfs::new("12m");
    let nodes = start_cluster_each(3, 2, |i, c| {
        if i == 0 {
            c.data = disk.path().join("data");
        }
    })
    .await;
    // o1's 12 MiB cannot hold its share of 60 MB.
    let (published, failed, r) = publish_until_refused(&nodes[1], "c", 2_000_000, 300, 30).await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{:?}", r.json());
    let why = r.json()["error"].as_str().unwrap().to_string();
    assert!(why.contains("o1") && why.contains("no disk space"), "{why}");
    assert!(!published.is_empty());
    for n in &nodes {
        let r = get(&n.url(&format!("/api/v1/files/c{failed}.bin"))).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "the refused publish is not visible"
        );
        for (i, body) in &published {
            let r = get(&n.url(&format!("/api/v1/files/c{i}.bin"))).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body[..] == body[..], "c{i} reads back");
        }
    }
    stop_all(nodes).await;
}

/// Only callers with the write token (the peers) move a node's clock: a reader's huge clock
/// is ignored and gets none back, while a peer's is followed and answered, and the next
/// version is stamped after it.
#[tokio::test]
async fn only_callers_with_the_token_move_the_clock() {
    let nodes = start_cluster(2, 2).await;
    let auth = ("authorization", "Bearer secret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stamp_of = |r: &common::Reply| r.json()["placement"]["stamp"].as_u64().unwrap();
    let far = (u64::MAX / 2).to_string();
    let r = send(
        Method::GET,
        &nodes[0].url("/healthz"),
        &[("x-tessera-clock", &far)],
        "",
    )
    .await;
    assert_eq!(r.header("x-tessera-clock"), "", "no clock for a reader");
    let url = nodes[0].url("/api/v1/files/a.txt");
    let r = send(Method::PUT, &url, &[auth], "a").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(
        stamp_of(&r) < now + 60_000,
        "{} against {now}",
        stamp_of(&r)
    );

    let ahead = (now + 3_600_000).to_string();
    let r = send(
        Method::GET,
        &nodes[0].url("/healthz"),
        &[auth, ("x-tessera-clock", &ahead)],
        "",
    )
    .await;
    assert_eq!(
        r.header("x-tessera-clock"),
        ahead,
        "a peer's clock is followed"
    );
    let r = send(Method::PUT, &url, &[auth], "a2").await;
    assert!(r.status.is_success(), "{}", r.status);
    assert!(stamp_of(&r) > now + 3_600_000);
    stop_all(nodes).await;
}

/// A publish sends a node only the chunks it lacks: republishing a 16 MiB file with 1 % of
/// it changed (one run of 160 KiB in the middle) sends at most 3 % of the file's bytes
/// between nodes, names the rest by address, and every node reads the new version back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republish_sends_only_the_chunks_a_node_lacks() {
    let nodes = start_cluster(3, 2).await;
    let size = 16 << 20;
    let mut data = noise(size, 900);
    nodes[0]
        .client
        .put_bytes("big.bin", data.clone())
        .await
        .unwrap();
    let sent_first = metric(&nodes[0], "tessera_origin_cluster_chunk_bytes_sent_total").await;
    assert!(
        sent_first > size as f64,
        "the first publish sends its remote copies: {sent_first}"
    );
    let change = noise(160 << 10, 901);
    let at = size / 2;
    data[at..at + change.len()].copy_from_slice(&change);
    nodes[0]
        .client
        .put_bytes("big.bin", data.clone())
        .await
        .unwrap();
    let sent =
        metric(&nodes[0], "tessera_origin_cluster_chunk_bytes_sent_total").await - sent_first;
    let spared = metric(&nodes[0], "tessera_origin_cluster_chunk_bytes_spared_total").await;
    assert!(
        sent <= 0.03 * size as f64,
        "{sent} bytes sent for a 1 % change of {size}"
    );
    assert!(
        spared >= 0.9 * sent_first,
        "{spared} spared of {sent_first}"
    );
    for n in &nodes {
        let r = get(&n.url("/api/v1/files/big.bin")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body[..] == data[..], "the new version everywhere");
    }
    stop_all(nodes).await;
}

/// Chunks merged into one fragment by many nodes at once (repair moving data after a
/// membership change, each holder sending what the owner lacks) are all kept: each merge
/// reads the fragment and commits it under the fragment's lock, so none writes back a
/// fragment read before another merge committed (whose chunks would then be collected,
/// though their senders were told they were kept and dropped their own copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_merges_into_one_fragment_keep_every_chunk() {
    let nodes = start_cluster(2, 1).await;
    let n = &nodes[0];
    let url = n.url("/api/v1/cluster/fragments/7.ab/moved.bin?merge=1");
    let chunks: Vec<Vec<u8>> = (0..24).map(|i| noise(20_000, 500 + i)).collect();
    let merges = chunks.iter().map(|c| {
        let mut frame = ChunkHash::of(c).as_bytes().to_vec();
        frame.extend_from_slice(&(c.len() as u32).to_be_bytes());
        frame.extend_from_slice(c);
        let url = url.clone();
        async move { send(Method::PUT, &url, &[AUTH, HOP], frame).await }
    });
    for r in futures_util::future::join_all(merges).await {
        assert!(r.status.is_success(), "{:?}", r.body);
    }
    let r = send(
        Method::GET,
        &n.url("/api/v1/cluster/fragments/7.ab/moved.bin"),
        &[AUTH],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
    let held: std::collections::HashSet<String> = list
        .iter()
        .map(|c| c["hash"].as_str().unwrap().to_string())
        .collect();
    for c in &chunks {
        assert!(
            held.contains(&ChunkHash::of(c).to_string()),
            "a merged chunk was lost: {} of {} kept",
            held.len(),
            chunks.len()
        );
    }
    assert_eq!(list.len(), chunks.len(), "each chunk once");
    stop_all(nodes).await;
}
