//! A real network from a topology file: `tessera up`, and separate `tessera origin` and
//! `tessera edge` processes, one of which is killed with `kill -9`.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{OriginProcess, free_port, noise, start_tessera, start_tessera_env, terminate};
use tessera_origin_proto::OriginClient;

/// A topology of `origins` origins (replication 2) and one edge, data under `dir`.
fn write_topology(dir: &Path, origins: usize) -> (std::path::PathBuf, Vec<u16>, u16) {
    let ports: Vec<u16> = (0..origins).map(|_| free_port()).collect();
    let edge = free_port();
    let mut t = format!(
        "replication = 2\nvnodes = 64\ndata = {:?}\ntoken = \"t0k\"\nadmin_token = \"adm\"\n",
        dir.join("data").display().to_string()
    );
    for (i, p) in ports.iter().enumerate() {
        t += &format!(
            "\n[[origin]]\nid = \"o{}\"\nlisten = \"127.0.0.1:{p}\"\n",
            i + 1
        );
    }
    t += &format!(
        "\n[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:{edge}\"\nmemory = \"16MiB\"\ndisk = \"64MiB\"\n"
    );
    let path = dir.join("net.toml");
    std::fs::write(&path, t).unwrap();
    (path, ports, edge)
}

async fn fetch(url: &str) -> (u16, Bytes) {
    request(http::Method::GET, url, None).await
}

/// `METHOD url` with an empty body, with the topology's token when `token`: status and body.
async fn request(method: http::Method, url: &str, token: Option<&str>) -> (u16, Bytes) {
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = c
        .request(req.body(http_body_util::Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = r.status().as_u16();
    use http_body_util::BodyExt;
    (status, r.into_body().collect().await.unwrap().to_bytes())
}

/// `METHOD url` with the token of the test topologies.
async fn with_token(method: http::Method, url: &str) -> (u16, Bytes) {
    request(method, url, Some("t0k")).await
}

fn start_origin(topology: &Path, id: &str) -> OriginProcess {
    let t = topology.to_str().unwrap();
    start_tessera(&["origin", "--topology", t, "--id", id], "listening on").0
}

/// The network of [`write_topology`] with three origins, started: the topology file, the
/// origins' ports, the edge's port, the origins and the edge.
fn start_network(
    dir: &Path,
) -> (
    std::path::PathBuf,
    Vec<u16>,
    u16,
    Vec<OriginProcess>,
    OriginProcess,
) {
    let (topology, ports, edge) = write_topology(dir, 3);
    let origins = ["o1", "o2", "o3"]
        .iter()
        .map(|id| start_origin(&topology, id))
        .collect();
    let t = topology.to_str().unwrap();
    let (edge_process, _) = start_tessera(
        &["edge", "--topology", t, "--id", "e1"],
        "listening on http://",
    );
    (topology, ports, edge, origins, edge_process)
}

/// Waits (bounded) until origin `url` sees node `id` as `live`.
async fn wait_live(url: &str, id: &str, live: bool) {
    for _ in 0..200 {
        let (_, body) = fetch(&format!("{url}/api/v1/cluster")).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == id && n["live"] == live)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never saw {id} live={live}");
}

#[tokio::test]
async fn up_runs_the_network_serves_the_demo_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, ports, edge) = write_topology(dir.path(), 3);
    let (mut up, lines) = start_tessera(
        &["up", topology.to_str().unwrap()],
        "Ctrl-C stops everything",
    );
    let text = lines.join("\n");
    assert!(text.contains("3 origin node(s), replication 2"), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{edge}/demo/")),
        "{text}"
    );
    let (status, page) = fetch(&format!("http://127.0.0.1:{edge}/demo/")).await;
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("<link rel=\"stylesheet\" href=\"style.css\">"));
    for asset in ["style.css", "app.js", "img/logo.svg", "img/mosaic.svg"] {
        let (s, body) = fetch(&format!("http://127.0.0.1:{edge}/demo/{asset}")).await;
        assert_eq!(s, 200, "{asset}");
        assert!(!body.is_empty());
    }
    // The demo is on the cluster: every origin lists it.
    for p in &ports {
        let (s, body) = fetch(&format!("http://127.0.0.1:{p}/api/v1/files?prefix=demo/")).await;
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 5, "{v}");
    }
    assert!(terminate(&mut up), "tessera up did not exit cleanly");
    // Everything stopped: the ports are free again.
    for p in ports.iter().chain([&edge]) {
        std::net::TcpListener::bind(("127.0.0.1", *p)).expect("a node still listens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_an_origin_loses_no_read_and_publishes_go_on_then_repair_heals() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, ports, edge, mut origins, _edge) = start_network(dir.path());
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let o1 = OriginClient::new(&url(0), Some("t0k".into())).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("f/{i}.bin"), noise(300_000 + i * 1000, i as u64)))
        .collect();
    for (p, d) in &files {
        o1.put_bytes(p, Bytes::from(d.clone())).await.unwrap();
    }
    // Half of them are in the edge's cache before the kill.
    for (p, d) in &files[..6] {
        let (s, b) = fetch(&format!("http://127.0.0.1:{edge}/{p}")).await;
        assert!(s == 200 && b == *d, "{p}");
    }
    // Publishes run while o2 is killed: each either succeeds or fails with a clear error.
    let publisher = {
        let o1 = o1.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..30u64 {
                let p = format!("during/{i}.bin");
                let d = noise(100_000, 1000 + i);
                let r = o1.put_bytes(&p, Bytes::from(d.clone())).await;
                outcomes.push((p, d, r.map_err(|e| e.to_string())));
            }
            outcomes
        })
    };
    // And reads run through the edge and through o1 and o3 while o2 dies: none may fail.
    let reader = {
        let files = files.clone();
        let urls: Vec<String> = vec![format!("http://127.0.0.1:{edge}"), url(0), url(2)];
        tokio::spawn(async move {
            let mut reads = 0;
            for round in 0..4 {
                for (i, (p, d)) in files.iter().enumerate() {
                    let base = &urls[(i + round) % urls.len()];
                    let u = if base.ends_with(&edge.to_string()) {
                        format!("{base}/{p}")
                    } else {
                        format!("{base}/api/v1/files/{p}")
                    };
                    let (s, b) = fetch(&u).await;
                    assert!(s == 200 && b == *d, "read of {u} during the kill: {s}");
                    reads += 1;
                }
            }
            reads
        })
    };
    origins[1].kill_9();
    let outcomes = publisher.await.unwrap();
    assert_eq!(reader.await.unwrap(), 4 * files.len());
    wait_live(&url(0), "o2", false).await;
    wait_live(&url(2), "o2", false).await;
    // No read fails: cached or not, through the edge and through the survivors.
    for (p, d) in &files {
        let (s, b) = fetch(&format!("http://127.0.0.1:{edge}/{p}")).await;
        assert!(s == 200 && b == *d, "edge read of {p}: {s}");
        for i in [0, 2] {
            let (s, b) = fetch(&format!("{}/api/v1/files/{p}", url(i))).await;
            assert!(s == 200 && b == *d, "o{} read of {p}: {s}", i + 1);
        }
    }
    // Never half-visible: a publish that succeeded reads back whole, a failed one not at all.
    for (p, d, r) in &outcomes {
        let (s, b) = fetch(&format!("{}/api/v1/files/{p}", url(2))).await;
        match r {
            Ok(_) => assert!(s == 200 && b == *d, "{p} was acknowledged but reads {s}"),
            // The record reached some owner but not all: published, and said so.
            Err(e) if e.contains("is published but") => {
                assert!(s == 200 && b == *d, "{p}: {e}, but reads {s}");
            }
            Err(e) => {
                assert!(
                    e.contains("503") || e.contains("o2"),
                    "unclear failure: {e}"
                );
                assert_eq!(s, 404, "{p} failed but is visible");
            }
        }
    }
    let failed = outcomes.iter().filter(|(_, _, r)| r.is_err()).count();
    eprintln!(
        "publishes during the kill: {} ok, {failed} failed",
        outcomes.len() - failed
    );
    // New publishes succeed with o2 down.
    let late = noise(400_000, 77);
    let reply = o1
        .put_bytes("after/kill.bin", Bytes::from(late.clone()))
        .await
        .unwrap();
    assert_eq!(reply.size, late.len() as u64);
    let (s, b) = fetch(&format!("http://127.0.0.1:{edge}/after/kill.bin")).await;
    assert!(s == 200 && b == late);
    // o2 returns; repair brings every chunk back to its owners.
    origins[1] = start_origin(&topology, "o2");
    wait_live(&url(0), "o2", true).await;
    wait_live(&url(2), "o2", true).await;
    for _pass in 0..2 {
        for i in 0..3 {
            repair_report(&url(i), false).await;
        }
    }
    for i in 0..3 {
        let (_, body) = fetch(&format!("{}/api/v1/cluster", url(i))).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["repair"]["chunks_waiting"], 0, "{v}");
        assert_eq!(v["repair"]["chunks_missing"], 0, "{v}");
    }
    let (s, b) = fetch(&format!("{}/api/v1/files/after/kill.bin", url(1))).await;
    assert!(s == 200 && b == late);
}

/// An owner of a file's chunks dies while the edge streams the file (cold) to a client: the
/// chunks it would have given come from their other owner, and the client gets every byte.
#[tokio::test]
async fn an_owner_killed_mid_stream_leaves_the_rest_to_the_replica() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (_topology, ports, edge, mut origins, _edge) = start_network(dir.path());
    let o1 = OriginClient::new(
        &format!("http://127.0.0.1:{}", ports[0]),
        Some("t0k".into()),
    )
    .unwrap();
    let data = noise(48 << 20, 404);
    o1.put_bytes("big.bin", Bytes::from(data.clone()))
        .await
        .unwrap();

    // A client with a small receive buffer reads the first MiB and stops: the edge fetches a
    // readahead window (4 MiB) ahead of it, far from the 48 MiB file.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 << 10).unwrap();
    let mut s = sock
        .connect(format!("127.0.0.1:{edge}").parse().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while got.len() < (1 << 20) + 4096 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the edge closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..40]);
    let mut body = got.split_off(head_end);

    // o2 owns (first or second) about two thirds of the chunks; it dies now.
    origins[1].kill_9();
    while body.len() < data.len() {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the body ended at {} of {}", body.len(), data.len());
        body.extend_from_slice(&buf[..n]);
    }
    assert_eq!(body.len(), data.len());
    assert!(body == data, "the bytes served are the file's");
}

/// Versions are ordered by hybrid logical clocks, not by the coordinating node's wall clock:
/// with o1's clock ten minutes behind and o3's ten minutes ahead (Debian's `faketime`), a
/// publish or delete acknowledged through one node and followed by another through a
/// different node is always the older of the two, in every order of nodes, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_never_order_an_acknowledged_write_after_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, ports, _) = write_topology(dir.path(), 3);
    let t = topology.to_str().unwrap();
    // libfaketime preloaded into tessera itself (the `faketime` command would stand between
    // it and the SIGTERM that stops it).
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        Path::new(lib).exists(),
        "{lib} is missing: install Debian's faketime (README, Test it)"
    );
    let skews = [Some("-600s"), None, Some("+600s")];
    let mut origins: Vec<OriginProcess> = Vec::new();
    for (i, skew) in skews.iter().enumerate() {
        let id = format!("o{}", i + 1);
        let args = ["origin", "--topology", t, "--id", &id];
        let env: Vec<(&str, &str)> = match skew {
            Some(s) => vec![("LD_PRELOAD", lib), ("FAKETIME", s)],
            None => vec![],
        };
        let (p, _) = start_tessera_env(&env, &args, "listening on", std::process::Stdio::null());
        origins.push(p);
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for u in &urls {
        for i in 1..=3 {
            wait_live(u, &format!("o{i}"), true).await;
        }
    }
    // The skews hold: each node's `Date` is its own clock.
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut dates = Vec::new();
    for u in &urls {
        let r = c
            .get(format!("{u}/healthz").parse().unwrap())
            .await
            .unwrap();
        let d = r.headers()["date"].to_str().unwrap().to_string();
        dates.push(httpdate::parse_http_date(&d).unwrap());
    }
    let behind = dates[1].duration_since(dates[0]).unwrap().as_secs();
    let ahead = dates[2].duration_since(dates[1]).unwrap().as_secs();
    assert!(
        (590..=610).contains(&behind) && (590..=610).contains(&ahead),
        "{dates:?}"
    );
    let clients: Vec<OriginClient> = urls
        .iter()
        .map(|u| OriginClient::new(u, Some("t0k".into())).unwrap())
        .collect();
    // What every node serves at `path`: the body, or None for a 404.
    let everywhere = async |path: &str| -> Vec<Option<Bytes>> {
        let mut got = Vec::new();
        for u in &urls {
            let (status, body) = fetch(&format!("{u}/api/v1/files/{path}")).await;
            assert!(status == 200 || status == 404, "{u} {path}: {status}");
            got.push((status == 200).then_some(body));
        }
        got
    };
    let delete = async |node: usize, path: &str| {
        let req = http::Request::delete(format!("{}/api/v1/files/{path}", urls[node]))
            .header("authorization", "Bearer t0k")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let status = c.request(req).await.unwrap().status();
        assert!(
            status.is_success(),
            "delete {path} through o{}: {status}",
            node + 1
        );
    };
    for a in 0..3 {
        for b in (0..3).filter(|&b| b != a) {
            let path = format!("skew/o{}-then-o{}.txt", a + 1, b + 1);
            let v1 = Bytes::from(format!("{path}: v1 through o{}", a + 1));
            let v2 = Bytes::from(format!("{path}: v2 through o{}", b + 1));
            clients[a].put_bytes(&path, v1).await.unwrap();
            clients[b].put_bytes(&path, v2.clone()).await.unwrap();
            assert_eq!(
                everywhere(&path).await,
                vec![Some(v2); 3],
                "{path}: the second publish"
            );
            delete(a, &path).await;
            assert_eq!(
                everywhere(&path).await,
                vec![None; 3],
                "{path}: deleted after it"
            );
            let v3 = Bytes::from(format!("{path}: v3 through o{}", b + 1));
            clients[b].put_bytes(&path, v3.clone()).await.unwrap();
            assert_eq!(
                everywhere(&path).await,
                vec![Some(v3); 3],
                "{path}: published again"
            );
        }
    }
    for mut o in origins {
        assert!(terminate(&mut o), "an origin did not stop cleanly");
    }
}

#[test]
fn a_topology_with_mistakes_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "replication = 2\n\n[[origin]]\nid = \"o1\"\nlisten = \"127.0.0.1:7071\"\n\n[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:8080\"\norigins = [\"o7\"]\n",
    )
    .unwrap();
    for args in [
        vec!["up", path.to_str().unwrap()],
        vec!["origin", "--topology", path.to_str().unwrap(), "--id", "o1"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml:1: replication"), "{args:?}: {err}");
    }
    std::fs::write(
        &path,
        "[[origin]]\nid = \"o1\"\nlisten = \"127.0.0.1:7071\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["edge", "--topology", path.to_str().unwrap(), "--id", "e9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no edge \"e9\""));
}

/// A partition (real network namespaces, root only): o3 is cut off from o1 and o2 but not
/// from clients. On the majority side publishes go on (hinted handoff) and read back; on
/// the minority side a publish or delete is refused with `503` before anything is written,
/// and a read either serves bytes of an acknowledged version or fails with `503`. After
/// the cut heals, repair converges: every acknowledged write reads back as the newest from
/// every node, nothing refused is visible, and nothing is under-replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_loses_no_acknowledged_write_and_heals() {
    let net = tessera_faults::netns::Netns::new(3).expect("network namespaces (root and iproute2)");
    let dir = tempfile::tempdir().unwrap();
    let mut t = format!(
        "replication = 2\nvnodes = 64\ndata = {:?}\ntoken = \"t0k\"\n",
        dir.path().join("data").display().to_string()
    );
    for i in 0..3 {
        t += &format!(
            "\n[[origin]]\nid = \"o{}\"\nlisten = \"{}:7070\"\ncluster = {{ call_timeout_secs = 2, repair_interval_secs = 0 }}\n",
            i + 1,
            net.ip(i)
        );
    }
    let topology = dir.path().join("net.toml");
    std::fs::write(&topology, t).unwrap();
    let tp = topology.to_str().unwrap();
    let _origins: Vec<OriginProcess> = (0..3)
        .map(|i| {
            let id = format!("o{}", i + 1);
            let args = ["origin", "--topology", tp, "--id", &id];
            common::start_in(&net, i, &args, "listening on").0
        })
        .collect();
    let urls: Vec<String> = (0..3)
        .map(|i| format!("http://{}:7070", net.ip(i)))
        .collect();
    for u in &urls {
        for i in 1..=3 {
            wait_live(u, &format!("o{i}"), true).await;
        }
    }
    let clients: Vec<OriginClient> = urls
        .iter()
        .map(|u| OriginClient::new(u, Some("t0k".into())).unwrap())
        .collect();
    // Acknowledged writes: path → the bytes it must read back as after healing.
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    for k in 0..8u64 {
        let (p, d) = (format!("before/{k}.bin"), noise(40_000, 100 + k));
        clients[0]
            .put_bytes(&p, Bytes::from(d.clone()))
            .await
            .unwrap();
        acked.push((p, d));
    }
    net.cut(2, 0).unwrap();
    net.cut(2, 1).unwrap();
    for (u, id) in [(0, "o3"), (1, "o3"), (2, "o1"), (2, "o2")] {
        wait_live(&urls[u], id, false).await;
    }
    // Majority side: publishes and a replacement go on.
    for k in 0..8u64 {
        let (p, d) = (format!("during/{k}.bin"), noise(40_000, 200 + k));
        clients[k as usize % 2]
            .put_bytes(&p, Bytes::from(d.clone()))
            .await
            .unwrap();
        acked.push((p, d));
    }
    let v2 = noise(40_000, 300);
    clients[1]
        .put_bytes("before/0.bin", Bytes::from(v2.clone()))
        .await
        .unwrap();
    acked[0].1 = v2.clone();
    for (p, d) in &acked {
        for u in &urls[..2] {
            let (s, b) = fetch(&format!("{u}/api/v1/files/{p}")).await;
            assert!(s == 200 && b == *d, "{u} {p} during the partition: {s}");
        }
    }
    // Minority side: writes are refused, reads serve an acknowledged version or a 503.
    let refused = clients[2]
        .put_bytes("minority/x.bin", Bytes::from_static(b"never"))
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("503")),
        "{refused:?}"
    );
    let req = http::Request::delete(format!("{}/api/v1/files/before/1.bin", urls[2]))
        .header("authorization", "Bearer t0k")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    assert_eq!(c.request(req).await.unwrap().status(), 503);
    let before_v1 = noise(40_000, 100);
    for (p, d) in &acked {
        let (s, b) = fetch(&format!("{}/api/v1/files/{p}", urls[2])).await;
        let acceptable =
            (s == 200 && (b == *d || (p == "before/0.bin" && b == before_v1))) || s == 503;
        assert!(acceptable, "o3 {p} during the partition: {s}");
    }
    net.heal(2, 0).unwrap();
    net.heal(2, 1).unwrap();
    for u in &urls {
        for i in 1..=3 {
            wait_live(u, &format!("o{i}"), true).await;
        }
    }
    // Repair until a round finds nothing to copy (bounded).
    let mut quiet = false;
    for _ in 0..10 {
        quiet = true;
        for u in &urls {
            let v = repair_report(u, false).await;
            for k in [
                "chunks_missing",
                "records_copied",
                "chunks_waiting",
                "errors",
            ] {
                if v[k] != 0 {
                    quiet = false;
                }
            }
        }
        if quiet {
            break;
        }
    }
    assert!(quiet, "repair never converged after the partition healed");
    for u in &urls {
        for (p, d) in &acked {
            let (s, b) = fetch(&format!("{u}/api/v1/files/{p}")).await;
            assert!(s == 200 && b == *d, "{u} {p} after healing: {s}");
        }
        let (s, _) = fetch(&format!("{u}/api/v1/files/minority/x.bin")).await;
        assert_eq!(s, 404, "{u}: a refused publish is visible");
        let (_, m) = fetch(&format!("{u}/metrics")).await;
        let m = String::from_utf8_lossy(&m);
        assert!(
            m.lines()
                .any(|l| l == "tessera_origin_cluster_under_replicated_chunks 0"),
            "{u}"
        );
    }
}

/// One repair pass on the origin at `url` (`full`: a full one), with the topology's token;
/// its report.
async fn repair_report(url: &str, full: bool) -> serde_json::Value {
    let q = if full { "?full=1" } else { "" };
    let (s, body) = with_token(
        http::Method::POST,
        &format!("{url}/api/v1/cluster/repair{q}"),
    )
    .await;
    assert_eq!(s, 200);
    serde_json::from_slice(&body).unwrap()
}

/// `tessera cluster SUB --origin ORIGIN --token t0k ARG`.
fn cluster(sub: &str, origin: &str, arg: &str) -> (bool, String) {
    tessera(&["cluster", sub, "--origin", origin, "--token", "t0k", arg])
}

/// Runs `tessera ARGS` to its end: its exit success and its stdout and stderr.
fn tessera(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Live membership: a fourth origin joins a running cluster and then a first member leaves
/// it, with `tessera cluster add|remove`, while reads and publishes go on through the
/// others. No read fails, every publish is acknowledged and reads back, the new node takes
/// its share, the removed one hands everything over, and once it is killed a full repair
/// on every member finds nothing missing: the data is where the ring puts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_and_a_member_leaves_while_reads_and_publishes_go_on() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let edge = free_port();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    // What the operator writes: the topology with the new node, which starts from it; the
    // running nodes started from the one before.
    let topology = |n: usize| {
        let mut t = format!(
            "replication = 2\nvnodes = 64\ndata = {:?}\ntoken = \"t0k\"\n",
            dir.path().join("data").display().to_string()
        );
        for (i, p) in ports.iter().enumerate().take(n) {
            t += &format!(
                "\n[[origin]]\nid = \"o{}\"\nlisten = \"127.0.0.1:{p}\"\ncluster = {{ repair_interval_secs = 1 }}\n",
                i + 1
            );
        }
        t += &format!(
            "\n[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:{edge}\"\nmemory = \"1MiB\"\ndisk = 0\n"
        );
        let path = dir.path().join(format!("net{n}.toml"));
        std::fs::write(&path, t).unwrap();
        path
    };
    let (three, four) = (topology(3), topology(4));
    let mut origins: Vec<OriginProcess> = ["o1", "o2", "o3"]
        .iter()
        .map(|id| start_origin(&three, id))
        .collect();
    let client = |i: usize| OriginClient::new(&url(i), Some("t0k".into())).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..40u64 {
        let (p, d) = (format!("f/{i}.bin"), noise(20_000 + i as usize * 3000, i));
        client(0)
            .put_bytes(&p, Bytes::from(d.clone()))
            .await
            .unwrap();
        files.push((p, d));
    }
    origins.push(start_origin(&four, "o4"));
    // An edge that knows the cluster as it was: any member answers any read.
    let (mut edge_process, _) = start_tessera(
        &["edge", "--topology", three.to_str().unwrap(), "--id", "e1"],
        "listening on http://",
    );

    // Reads and publishes through o2 and o3 (members throughout) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let files = files.clone();
        let (a, b) = (client(1), client(2));
        let bases = [url(1), url(2), format!("http://127.0.0.1:{edge}")];
        tokio::spawn(async move {
            let (mut reads, mut failures, mut published) = (0u64, Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (p, d) = &files[(n as usize * 7) % files.len()];
                let base = &bases[n as usize % 3];
                let u = if n % 3 == 2 {
                    format!("{base}/{p}")
                } else {
                    format!("{base}/api/v1/files/{p}")
                };
                let (s, body) = fetch(&u).await;
                reads += 1;
                if s != 200 || body != *d {
                    failures.push(format!(
                        "read of {u}: {s} {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ));
                }
                if n.is_multiple_of(4) {
                    let (p, d) = (format!("during/{n}.bin"), noise(30_000, 10_000 + n));
                    let c = if n.is_multiple_of(8) { &a } else { &b };
                    match c.put_bytes(&p, Bytes::from(d.clone())).await {
                        Ok(_) => published.push((p, d)),
                        Err(e) => failures.push(format!("publish of {p}: {e}")),
                    }
                }
                n += 1;
            }
            (reads, failures, published)
        })
    };

    // Refused changes leave the cluster as it is, with the reason.
    let o4_at = format!("o4={}", url(3));
    let (ok, out) = cluster("add", &url(0), &format!("o5={}", url(1)));
    assert!(!ok && out.contains("is o2, not o5"), "{out}");
    let (ok, out) = cluster("remove", &url(0), "o9");
    assert!(!ok && out.contains("o9 is not a member"), "{out}");
    let (ok, out) = tessera(&["cluster", "add", "--origin", &url(0), &o4_at]);
    assert!(
        !ok && out.contains("401"),
        "a change needs the token: {out}"
    );

    // o4 joins.
    let (ok, out) = cluster("add", &url(0), &o4_at);
    assert!(ok, "{out}");
    assert!(out.contains("membership epoch 1: o1, o2, o3, o4"), "{out}");
    let (ok, out) = tessera(&["cluster", "status", "--origin", &url(0), "--wait", "120"]);
    assert!(ok, "the join did not settle: {out}");
    assert!(out.contains("settled"), "{out}");
    let held = |i: usize| async move {
        let url = format!("{}/api/v1/cluster/files?prefix=", url(i));
        let (s, b) = with_token(http::Method::GET, &url).await;
        assert_eq!(s, 200);
        serde_json::from_slice::<Vec<serde_json::Value>>(&b)
            .unwrap()
            .len()
    };
    let on_o4 = held(3).await;
    assert!(on_o4 > 0, "o4 holds no file record after joining");

    // o1 leaves: its data moves to the others, then it is killed.
    let (ok, out) = cluster("remove", &url(1), "o1");
    assert!(ok, "{out}");
    assert!(out.contains("membership epoch 2: o2, o3, o4"), "{out}");
    let (ok, out) = tessera(&["cluster", "status", "--origin", &url(1), "--wait", "120"]);
    assert!(ok, "the removal did not settle: {out}");
    assert_eq!(
        held(0).await,
        0,
        "o1 still holds file records after leaving"
    );
    stop.store(true, Ordering::Relaxed);
    let (reads, failures, published) = load.await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(reads > 0 && !published.is_empty());
    eprintln!(
        "during the changes: {reads} reads, {} publishes, 0 failed; o4 took {on_o4} records",
        published.len()
    );
    origins[0].kill_9();

    // Each file's record is on both of its owners under the ring of the members.
    let ring = tessera_origin_proto::ring::Ring::new(
        ["o2", "o3", "o4"]
            .iter()
            .map(|id| tessera_origin_proto::ring::RingNode {
                id: id.to_string(),
                weight: 1,
            })
            .collect(),
        64,
        2,
    );
    for (p, _) in files.iter().chain(&published) {
        for o in ring.file_owners(p) {
            let i: usize = ring.nodes()[o].id[1..].parse::<usize>().unwrap() - 1;
            let record = format!("{}/api/v1/cluster/files/{p}", url(i));
            let (s, _) = with_token(http::Method::GET, &record).await;
            assert_eq!(s, 200, "o{} lacks the record of {p}, which it owns", i + 1);
        }
    }
    // The edge goes on too, with the member it knew gone.
    for (p, d) in &files {
        let (s, b) = fetch(&format!("http://127.0.0.1:{edge}/{p}")).await;
        assert!(s == 200 && b == *d, "edge read of {p}: {s}");
    }
    // Everything reads back from every member, and nothing is missing anywhere.
    for (p, d) in files.iter().chain(&published) {
        for i in 1..4 {
            let (s, b) = fetch(&format!("{}/api/v1/files/{p}", url(i))).await;
            assert!(s == 200 && b == *d, "o{} read of {p}: {s}", i + 1);
        }
    }
    for i in 1..4 {
        let v = repair_report(&url(i), true).await;
        for k in [
            "chunks_missing",
            "chunks_waiting",
            "records_copied",
            "errors",
        ] {
            assert_eq!(v[k], 0, "o{}: {k} after the move: {v}", i + 1);
        }
    }

    // A member restarted from the old topology file keeps the live membership (the edge,
    // which follows o2's change feed, is stopped first: o2 would wait for it to leave).
    edge_process.kill_9();
    assert!(terminate(&mut origins[1]));
    origins[1] = start_origin(&three, "o2");
    let (_, body) = fetch(&format!("{}/api/v1/cluster/members", url(1))).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["membership"]["epoch"], 2, "{v}");
    let ids: Vec<&str> = v["membership"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o2", "o3", "o4"]);
}
