//! The `tessera` command line: help, `push` of a folder with its summary, `get` over HTTP/1.1,
//! HTTP/2 and HTTP/3 from a real edge process, and clear failures.

mod common;

use std::process::Command;

fn tessera(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn help_lists_the_subcommands() {
    let (ok, out, _) = tessera(&["--help"]);
    assert!(ok);
    assert!(out.contains("origin") && out.contains("push"), "{out}");
    // A node's own options come first, with their defaults; the global --log-format last;
    // no pointers into the source tree.
    let (ok, out, _) = tessera(&["edge", "--help"]);
    assert!(ok);
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("no {s} in {out}"));
    assert!(at("--id <") < at("--log-format <"), "{out}");
    for default in [
        "[default: 256MiB]",
        "[default: 1GiB]",
        "[default: tessera-edge-data]",
    ] {
        assert!(out.contains(default), "{default}: {out}");
    }
    let (_, origin, _) = tessera(&["origin", "--help"]);
    assert!(origin.contains("[default: 64GiB]"), "{origin}");
    let (_, push, _) = tessera(&["push", "--help"]);
    for text in [&out, &origin, &push] {
        assert!(
            !text.contains("Config`") && !text.contains("HISTORY.md"),
            "{text}"
        );
    }
    for sub in ["rollback", "remove"] {
        let (_, h, _) = tessera(&["plugin", sub, "--help"]);
        let line = h
            .lines()
            .find(|l| l.trim_start().starts_with("--hook"))
            .unwrap();
        assert!(line.contains("route, authorize or eviction"), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_publishes_a_folder_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("img")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>hello</h1>").unwrap();
    std::fs::write(site.join("img/a.bin"), common::noise(300_000, 1)).unwrap();
    std::fs::write(site.join("img/copy.bin"), common::noise(300_000, 1)).unwrap();
    let (mut child, url) = common::start_origin(&dir.path().join("origin"));

    let site_arg = site.to_str().unwrap();
    let (ok, out, err) = tessera(&["push", site_arg, "--origin", &url, "--prefix", "www"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("published 3 files, 585.95 KiB (600014 bytes)") && out.contains("under /www/"),
        "{out}"
    );
    assert!(
        out.contains("stored ") && out.contains(" % of the files' size"),
        "{out}"
    );
    assert!(out.contains("dedup"), "{out}");
    // Pushing the same folder again stores nothing new.
    let (ok, again, err) = tessera(&["push", site_arg, "--origin", &url, "--prefix", "www2"]);
    assert!(ok, "{again}{err}");
    assert!(
        again.contains("(0 new)") && again.contains("already had every chunk"),
        "{again}"
    );
    // Its big files went as names of the chunks the origin has: only the small one was sent.
    assert!(again.contains("sent 14 B of them"), "{again}");
    // Pushing it again to the same place sends nothing: the origin has those bytes there.
    let (ok, same, err) = tessera(&["push", site_arg, "--origin", &url, "--prefix", "www"]);
    assert!(ok, "{same}{err}");
    assert!(
        !same.contains("published ") && same.contains("unchanged: 3 files, 585.95 KiB"),
        "{same}"
    );
    let client = tessera_origin_proto::OriginClient::new(&url, None).unwrap();
    let m = client.manifest("www/img/copy.bin").await.unwrap().unwrap();
    assert_eq!(m.size, 300_000);
    assert!(client.manifest("www/index.html").await.unwrap().is_some());
    // The copy cost nothing: stored bytes are about one copy's worth.
    let stats = client.stats().await.unwrap();
    assert!(stats.unique_bytes < 310_000, "{stats:?}");
    // A changed big file sends about the chunks around the change, and reads back exact.
    let mut changed = common::noise(300_000, 1);
    changed.splice(150_000..150_000, common::noise(100, 9));
    std::fs::write(site.join("img/a.bin"), &changed).unwrap();
    let (ok, out, err) = tessera(&["push", site_arg, "--origin", &url, "--prefix", "www"]);
    assert!(ok, "{out}{err}");
    let sent_kib: f64 = out
        .split("sent ")
        .nth(1)
        .and_then(|r| r.split(" KiB of them").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(sent_kib < 150.0, "{out}");
    assert!(
        out.contains("published 1 files") && out.contains("unchanged: 2 files"),
        "{out}"
    );
    let back = dir.path().join("back.bin");
    let (ok, _, err) = tessera(&[
        "get",
        "-o",
        back.to_str().unwrap(),
        &format!("{url}/api/v1/files/www/img/a.bin"),
    ]);
    assert!(ok, "{err}");
    assert!(
        std::fs::read(&back).unwrap() == changed,
        "the changed file reads back different"
    );
    std::fs::write(site.join("img/a.bin"), common::noise(300_000, 1)).unwrap();

    // Links: one to a file inside is published as that file; one out of the folder and
    // links to folders (two to `.` would expand without end) are skipped, and said so.
    std::fs::write(dir.path().join("outside.txt"), "not for the public").unwrap();
    std::os::unix::fs::symlink("../outside.txt", site.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(".", site.join("loop1")).unwrap();
    std::os::unix::fs::symlink(".", site.join("loop2")).unwrap();
    std::os::unix::fs::symlink("index.html", site.join("alias.html")).unwrap();
    let (ok, out, err) = tessera(&["push", site_arg, "--origin", &url, "--prefix", "links"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("published 4 files"), "{out}");
    assert!(err.contains("leak.txt: a link out of the folder"), "{err}");
    assert!(
        err.contains("loop1: links to folders are not followed"),
        "{err}"
    );
    assert!(client.manifest("links/alias.html").await.unwrap().is_some());
    assert!(client.manifest("links/leak.txt").await.unwrap().is_none());
    assert!(
        client
            .manifest("links/loop1/index.html")
            .await
            .unwrap()
            .is_none()
    );
    for l in ["leak.txt", "loop1", "loop2", "alias.html"] {
        std::fs::remove_file(site.join(l)).unwrap();
    }

    // Secrets stay home: hidden files, version-control folders and editor backups are
    // skipped (and said so), `.well-known` is published, --exclude leaves out more.
    for (f, body) in [
        (".git/config", "[remote] url = https://token@example.com"),
        (".env", "DB_PASSWORD=hunter2"),
        ("index.html~", "old"),
        ("#index.html#", "autosave"),
        (
            ".well-known/security.txt",
            "Contact: mailto:sec@example.com",
        ),
        ("drafts/next.html", "draft"),
        ("img/raw.psd", "layers"),
    ] {
        let p = site.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let exclude = ["--exclude", "*.psd", "--exclude", "drafts/"];
    let push = |prefix: &str, extra: &[&str]| {
        let mut args = vec!["push", site_arg, "--origin", &url, "--prefix", prefix];
        args.extend_from_slice(&exclude);
        args.extend_from_slice(extra);
        tessera(&args)
    };
    let (ok, out, err) = push("dry", &["--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("-> /dry/.well-known/security.txt"), "{out}");
    assert!(
        out.contains("would publish 4 files") && out.contains("nothing was sent"),
        "{out}"
    );
    assert!(!out.contains(".env") && !out.contains("raw.psd"), "{out}");
    assert!(client.manifest("dry/index.html").await.unwrap().is_none());
    let (ok, out, err) = push("hidden", &[]);
    assert!(ok && out.contains("published 4 files"), "{out}{err}");
    assert!(
        err.contains("skipped version-control folders (never published): .git/"),
        "{err}"
    );
    assert!(
        err.contains("skipped hidden files and editor backups (--include-hidden publishes them): #index.html#, .env, index.html~"),
        "{err}"
    );
    assert!(
        err.contains("skipped excluded by --exclude: drafts/, img/raw.psd"),
        "{err}"
    );
    let published = |p: &str| {
        let client = &client;
        let p = p.to_string();
        async move { client.manifest(&p).await.unwrap().is_some() }
    };
    assert!(published("hidden/.well-known/security.txt").await);
    for p in [
        ".env",
        ".git/config",
        "index.html~",
        "drafts/next.html",
        "img/raw.psd",
    ] {
        assert!(
            !published(&format!("hidden/{p}")).await,
            "{p} was published"
        );
    }
    let (ok, out, err) = push("all", &["--include-hidden"]);
    assert!(ok, "{out}{err}");
    assert!(published("all/.env").await && published("all/index.html~").await);
    assert!(!published("all/.git/config").await);
    let (ok, _, err) = tessera(&["push", site_arg, "--origin", &url, "--exclude", "a[b"]);
    assert!(
        !ok && err.contains("--exclude \"a[b\" is not a valid pattern"),
        "{err}"
    );

    // --delete removes what is no longer in the folder (under the prefix only); `tessera
    // delete` removes paths; deleting what is not published is an error.
    std::fs::remove_file(site.join("img/copy.bin")).unwrap();
    let (ok, out, err) = tessera(&[
        "push", site_arg, "--origin", &url, "--prefix", "www", "--delete",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("deleted /www/img/copy.bin (not in the folder)"),
        "{out}"
    );
    assert!(client.manifest("www/img/copy.bin").await.unwrap().is_none());
    assert!(
        client
            .manifest("www2/img/copy.bin")
            .await
            .unwrap()
            .is_some(),
        "another prefix is left alone"
    );
    let (ok, out, err) = tessera(&[
        "delete",
        "/www2/index.html",
        "www2/img/a.bin",
        "--origin",
        &url,
    ]);
    assert!(ok && out.contains("deleted /www2/index.html"), "{out}{err}");
    assert!(client.manifest("www2/img/a.bin").await.unwrap().is_none());
    let (ok, _, err) = tessera(&["delete", "/www2/index.html", "--origin", &url]);
    assert!(
        !ok && err.contains("/www2/index.html is not published"),
        "{err}"
    );
    child.kill_9();

    // Failures: an origin that is not there, a path that does not exist, a bad URL.
    let (ok, _, err) = tessera(&["push", site_arg, "--origin", &url]);
    assert!(!ok);
    assert!(
        err.contains("unreachable") && err.contains("failed to publish"),
        "{err}"
    );
    let (ok, _, err) = tessera(&["push", "/no/such/folder", "--origin", &url]);
    assert!(!ok);
    assert!(err.contains("/no/such/folder"), "{err}");
    let (ok, _, err) = tessera(&["push", site_arg, "--origin", "ftp://x"]);
    assert!(!ok);
    assert!(err.contains("expected http://HOST:PORT"), "{err}");
}

#[test]
fn push_without_the_token_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.txt");
    std::fs::write(&file, "x").unwrap();
    let (mut child, url) =
        common::start_origin_with(&dir.path().join("origin"), &["--token", "s3cret"]);
    let (ok, _, err) = tessera(&["push", file.to_str().unwrap(), "--origin", &url]);
    assert!(!ok);
    assert!(err.contains("401") && err.contains("Bearer"), "{err}");
    // A folder: the first refusal stops the push, said once.
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    for i in 0..40 {
        std::fs::write(site.join(format!("{i}.txt")), "x").unwrap();
    }
    let (ok, out, err) = tessera(&[
        "push",
        site.to_str().unwrap(),
        "--origin",
        &url,
        "--jobs",
        "2",
    ]);
    assert!(!ok, "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("the origin refused the write token (401 Unauthorized")
            && err.contains("stopped after 0 of 40 files")
            && err.contains("--token"),
        "{err}"
    );
    let push_with_token = || {
        tessera(&[
            "push",
            file.to_str().unwrap(),
            "--origin",
            &url,
            "--token",
            "s3cret",
        ])
    };
    let (ok, out, err) = push_with_token();
    assert!(ok, "{out}{err}");
    // A file named alone says where it went.
    assert!(
        out.contains(&format!("published {} as /f.txt", file.display())),
        "{out}"
    );
    // Again: its manifest says the origin has these bytes there; nothing is sent.
    let (ok, out, err) = push_with_token();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "/f.txt already holds the bytes of {}: not sent",
            file.display()
        )),
        "{out}"
    );
    child.kill_9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_fetches_over_each_protocol_from_an_edge() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("page.html");
    std::fs::write(&file, "<p>over quic</p>").unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, common::noise(3 << 20, 7)).unwrap();
    let (_origin, origin_url) = common::start_origin(&dir.path().join("origin"));
    for f in [&file, &big] {
        let (ok, out, err) = tessera(&["push", f.to_str().unwrap(), "--origin", &origin_url]);
        assert!(ok, "{out}{err}");
    }
    let edge_data = dir.path().join("edge");
    let (_edge, lines) = common::start_edge(
        &edge_data,
        &["--origin", &origin_url, "--https", "127.0.0.1:0"],
        "HTTP/3 on udp://",
    );
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("tessera edge HTTP/3 on udp://"))
        .unwrap()
        .to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("https://{addr}"))),
        "HTTP/3 shares the HTTPS address: {lines:?}"
    );
    let port = addr.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}/page.html");

    let (ok, out, err) = tessera(&["get", "--http3", "--insecure", "-i", &url]);
    assert!(ok, "{err}");
    assert!(out.starts_with("h3 200 OK\n"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("\ncache-status: tessera;"),
        "{out}"
    );
    assert!(out.ends_with("\n\n<p>over quic</p>"), "{out}");

    // HTTP/2 and HTTP/1.1 over TLS advertise HTTP/3.
    for (flag, proto) in [("--http2", "h2"), ("--http1", "http/1.1")] {
        let (ok, out, err) = tessera(&["get", flag, "-k", "-i", &url]);
        assert!(ok, "{err}");
        assert!(out.starts_with(&format!("{proto} 200 OK")), "{out}");
        assert!(
            out.contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")),
            "{out}"
        );
    }

    // -o writes the body, byte for byte; --cacert trusts the development certificate.
    let saved = dir.path().join("saved.bin");
    let cert = edge_data.join("tls/dev-cert.pem");
    let (ok, out, err) = tessera(&[
        "get",
        "--http3",
        "--cacert",
        cert.to_str().unwrap(),
        "-o",
        saved.to_str().unwrap(),
        &format!("https://localhost:{port}/big.bin"),
    ]);
    assert!(ok, "{err}");
    assert!(out.is_empty());
    assert!(std::fs::read(&saved).unwrap() == std::fs::read(&big).unwrap());

    // -I alone prints the status line and the headers, as curl does.
    let (ok, out, err) = tessera(&["get", "-k", "-I", &url]);
    assert!(ok, "{err}");
    assert!(
        out.contains(" 200 OK\n") && out.contains("cache-status:"),
        "{out}"
    );
    assert!(!out.contains("over quic"), "{out}");

    // Failures say why and exit non-zero.
    let (ok, _, err) = tessera(&["get", "--http3", &url]);
    assert!(!ok);
    assert!(err.contains("TLS with localhost failed"), "{err}");
    assert!(err.contains("-k accepts any certificate"), "{err}");
    for bad in [
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:abc/",
        "http://127.0.0.1:65536/",
        "http://127.0.0.1:0/",
    ] {
        let (ok, _, err) = tessera(&["get", bad]);
        assert!(!ok, "{bad}");
        assert!(err.contains("bad URL"), "{bad}: {err}");
    }
    // --fail: a 404 exits 22 without the body; without it, the 404 body is printed.
    let missing = format!("https://localhost:{port}/missing.html");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["get", "-k", "--fail", &missing])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(22), "{status:?}");
    assert!(status.stdout.is_empty(), "{status:?}");
    let (ok, out, _) = tessera(&["get", "-k", &missing]);
    assert!(ok && out.contains("error"), "{out}");
    let (ok, _, err) = tessera(&["get", "--http3", "http://localhost:1/x"]);
    assert!(!ok);
    assert!(err.contains("HTTP/3 needs an https:// URL"), "{err}");
    let (ok, _, err) = tessera(&["get", "ftp://x/y"]);
    assert!(!ok);
    assert!(err.contains("bad URL"), "{err}");
}

#[test]
fn json_access_log_has_one_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.txt");
    let body = common::noise(70_000, 3);
    std::fs::write(&file, &body).unwrap();
    let (_origin, origin_url) = common::start_origin(&dir.path().join("origin"));
    let (ok, out, err) = tessera(&["push", file.to_str().unwrap(), "--origin", &origin_url]);
    assert!(ok, "{out}{err}");
    let log = dir.path().join("edge.log");
    let edge_data = dir.path().join("edge");
    let (_edge, lines) = common::start_tessera_with(
        &[
            "--log-format",
            "json",
            "edge",
            "--access-log",
            "--origin",
            &origin_url,
            "--http",
            "127.0.0.1:0",
            "--data",
            edge_data.to_str().unwrap(),
        ],
        "listening on http://",
        std::fs::File::create(&log).unwrap().into(),
    );
    // Under --log-format json the line saying where the edge listens is JSON too.
    let said: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("listening on http://"),
        "{said}"
    );
    let base = said["url"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let (ok, out, err) = tessera(&["get", "-o", "/dev/null", &format!("{base}/a.txt")]);
        assert!(ok, "{out}{err}");
    }
    let (_, out, _) = tessera(&["get", "-i", &format!("{base}/missing.txt")]);
    assert!(out.contains(" 404 "), "{out}");
    // The lines are written when each response body ends; wait for three (bounded).
    let mut access = Vec::new();
    for _ in 0..200 {
        access = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "tessera::access")
            .collect();
        if access.len() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(access.len(), 3, "{access:?}");
    let (miss, hit, missing) = (&access[0], &access[1], &access[2]);
    for (v, status, cache) in [
        (miss, 200, "miss"),
        (hit, 200, "hit"),
        // Nothing published there: the origin's answer to a miss.
        (missing, 404, "miss"),
    ] {
        assert_eq!(v["proto"], "http/1.1", "{v}");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["cache"], cache, "{v}");
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(v["level"], "INFO");
    }
    assert_eq!(miss["path"], "/a.txt");
    // The combined format's fields: the host asked for, the query, User-Agent, Referer.
    assert_eq!(miss["host"], base.trim_start_matches("http://"), "{miss}");
    assert_eq!(
        (miss["query"].as_str(), miss["referer"].as_str()),
        (Some(""), Some(""))
    );
    assert!(miss["user_agent"].is_string(), "{miss}");
    assert_eq!(miss["bytes"], body.len() as u64);
    assert_eq!(hit["bytes"], body.len() as u64);
    assert_eq!(hit["tier"], "memory");
    assert_eq!(miss["complete"], true);
}

#[test]
fn plugin_commands_deploy_list_sign_and_roll_back_on_a_real_edge() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, b"secret content").unwrap();
    let (_origin, origin_url) = common::start_origin(&dir.path().join("origin"));
    let (ok, out, err) = tessera(&["push", file.to_str().unwrap(), "--origin", &origin_url]);
    assert!(ok, "{out}{err}");
    // Port 0 for both listeners: the edge prints where they are, admin last.
    let start_edge = || {
        let (edge, lines) = common::start_edge(
            &dir.path().join("edge"),
            &[
                "--origin",
                &origin_url,
                "--http",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--admin-token",
                "tok",
            ],
            "admin on http://",
        );
        let url_after = |marker: &str| {
            lines
                .iter()
                .find_map(|l| l.split_once(marker))
                .map(|(_, rest)| format!("http://{}", rest.trim()))
                .unwrap_or_else(|| panic!("no {marker:?} line in {lines:?}"))
        };
        let urls = (
            url_after("listening on http://"),
            url_after("admin on http://"),
        );
        (edge, urls)
    };
    let (mut edge, (edge_url, admin_url)) = start_edge();
    let get = |path: &str| tessera(&["get", "-i", &format!("{edge_url}{path}")]);
    let (_, first, err) = get("/a.txt");
    assert!(first.contains("200"), "{first}{err}");

    let (ok, out, err) = tessera(&[
        "plugin",
        "deploy",
        "--edge",
        &admin_url,
        "--token",
        "tok",
        "--hook",
        "authorize",
        "signed-url",
        "--config",
        "key=k3y",
        "--config",
        "prefixes=/",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("deployed on authorize: signed-url v1"),
        "{out}"
    );
    let (_, out, _) = get("/a.txt");
    assert!(out.lines().next().unwrap().contains("403"), "{out}");
    assert!(!out.contains("secret content"));
    let sign = |path: &str| {
        tessera(&[
            "plugin",
            "sign-url",
            "--key",
            "k3y",
            "--expires-in",
            "600",
            path,
        ])
    };
    let (ok, signed, err) = sign("/a.txt");
    assert!(ok, "{err}");
    let (_, out, _) = get(signed.trim());
    assert!(
        out.lines().next().unwrap().contains("200") && out.contains("secret content"),
        "{out}"
    );
    // Another spelling of the path is signed as the edge normalises it (what the plugin
    // sees); a path the edge refuses is not signed.
    let (ok, signed, err) = sign("//%61.txt");
    assert!(ok && signed.starts_with("/a.txt?expires="), "{signed}{err}");
    let (_, out, _) = get(signed.trim());
    assert!(out.lines().next().unwrap().contains("200"), "{out}");
    let (ok, _, err) = sign("/b/../a.txt");
    assert!(!ok && err.contains("dot segments"), "{err}");

    // The token from the environment; a second version, listed with the first as previous.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "plugin",
            "deploy",
            "--edge",
            &admin_url,
            "--hook",
            "authorize",
            "signed-url",
            "--name",
            "other-key",
            "--config",
            "key=zzz",
        ])
        .env("TESSERA_ADMIN_TOKEN", "tok")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, list, _) = tessera(&["plugin", "list", "--edge", &admin_url, "--token", "tok"]);
    assert!(ok);
    let row = list.lines().find(|l| l.starts_with("authorize")).unwrap();
    assert!(
        row.contains("other-key v2") && row.contains("signed-url v1"),
        "{list}"
    );
    assert!(get(signed.trim()).1.lines().next().unwrap().contains("403"));
    let (ok, out, err) = tessera(&[
        "plugin",
        "rollback",
        "--edge",
        &admin_url,
        "--token",
        "tok",
        "--hook",
        "authorize",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("signed-url v1"), "{out}");
    assert!(get(signed.trim()).1.lines().next().unwrap().contains("200"));

    // kill -9 and a restart on the same data folder: the guard is bound again before the
    // listener opens, with its previous version kept for rollback.
    edge.kill_9();
    let (_edge, (edge_url, admin_url)) = start_edge();
    let get = |path: &str| tessera(&["get", "-i", &format!("{edge_url}{path}")]);
    let (_, out, _) = get("/a.txt");
    assert!(out.lines().next().unwrap().contains("403"), "{out}");
    assert!(get(signed.trim()).1.lines().next().unwrap().contains("200"));
    let (ok, list, _) = tessera(&["plugin", "list", "--edge", &admin_url, "--token", "tok"]);
    assert!(ok);
    let row = list.lines().find(|l| l.starts_with("authorize")).unwrap();
    assert!(
        row.contains("signed-url v1") && row.contains("other-key v2"),
        "{list}"
    );

    // Clear failures, non-zero exits.
    let (ok, _, err) = tessera(&["plugin", "list", "--edge", &admin_url, "--token", "wrong"]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = tessera(&[
        "plugin", "rollback", "--edge", &admin_url, "--token", "tok", "--hook", "route",
    ]);
    assert!(!ok && err.contains("no previous version"), "{err}");
    let (ok, _, err) = tessera(&[
        "plugin",
        "deploy",
        "--edge",
        &admin_url,
        "--token",
        "tok",
        "--hook",
        "route",
        "signed-url",
        "--config",
        "key=k",
    ]);
    assert!(!ok && err.contains("tessera:policy/router@0.2.0"), "{err}");
    let (ok, _, err) = tessera(&[
        "plugin", "deploy", "--edge", &admin_url, "--token", "tok", "--hook", "routing", "router",
    ]);
    assert!(!ok && err.contains("unknown hook"), "{err}");
    let (ok, _, _) = tessera(&[
        "plugin",
        "remove",
        "--edge",
        &admin_url,
        "--token",
        "tok",
        "--hook",
        "authorize",
    ]);
    assert!(ok);
    assert!(get("/a.txt").1.contains("secret content"));
}

/// A data folder serves one node at a time: a second origin or edge given a running one's
/// folder is refused with the reason before it binds anything; once the first is gone (even
/// by kill -9) the folder is free again.
#[test]
fn a_second_node_on_a_data_folder_in_use_is_refused_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let (origin_data, edge_data) = (dir.path().join("origin"), dir.path().join("edge"));
    let (mut origin, origin_url) = common::start_origin(&origin_data);
    let (mut edge, _) = common::start_edge(
        &edge_data,
        &["--origin", &origin_url, "--http", "127.0.0.1:0"],
        "listening on",
    );
    let second = |args: &[&str]| {
        let (ok, out, err) = tessera(args);
        assert!(!ok, "{out}{err}");
        assert!(out.is_empty(), "it bound before refusing: {out}");
        assert_eq!(err.lines().count(), 1, "said once: {err}");
        err
    };
    let err = second(&[
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--data",
        origin_data.to_str().unwrap(),
    ]);
    assert!(
        err.contains("is in use by another tessera node")
            && err.contains(&format!("process {}", origin.id())),
        "{err}"
    );
    let err = second(&[
        "edge",
        "--origin",
        &origin_url,
        "--http",
        "127.0.0.1:0",
        "--data",
        edge_data.to_str().unwrap(),
    ]);
    assert!(
        err.contains(&edge_data.display().to_string()) && err.contains("this edge another --data"),
        "{err}"
    );
    edge.kill_9();
    let (_edge, lines) = common::start_edge(
        &edge_data,
        &["--origin", &origin_url, "--http", "127.0.0.1:0"],
        "listening on",
    );
    assert!(lines.iter().any(|l| l.contains("listening on")));
    origin.kill_9();
}

/// SIGHUP (`systemctl reload`) used to end the process (exit 129); until reloading exists it
/// is logged and ignored, by the origin and the edge alike, and SIGTERM still stops them.
#[test]
fn sighup_is_logged_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let data = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let commands: [Vec<String>; 2] = [
        ["origin", "--listen", "127.0.0.1:0", "--data"]
            .map(String::from)
            .to_vec(),
        [
            "edge",
            "--origin",
            "http://127.0.0.1:9",
            "--http",
            "127.0.0.1:0",
            "--data",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (i, mut args) in commands.into_iter().enumerate() {
        args.push(data(&format!("node{i}")));
        let log = dir.path().join(format!("node{i}.log"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (mut p, lines) = common::start_tessera_with(
            &args,
            "listening on http://",
            std::fs::File::create(&log).unwrap().into(),
        );
        let url = lines
            .iter()
            .find_map(|l| l.split(' ').find(|w| w.starts_with("http://")))
            .unwrap()
            .to_string();
        let pid = p.id().to_string();
        let sent = Command::new("sh")
            .args(["-c", "kill -HUP \"$1\"", "sh", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut logged = false;
        for _ in 0..200 {
            if std::fs::read_to_string(&log)
                .unwrap()
                .contains("SIGHUP received")
            {
                logged = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert!(logged, "{}: no SIGHUP line", args[0]);
        assert!(p.running(), "{} ended on SIGHUP", args[0]);
        // Still serving (which also means its SIGTERM handler is in place).
        let (ok, _, err) = tessera(&["get", "-o", "/dev/null", &url]);
        assert!(ok, "{}: {err}", args[0]);
        assert!(
            common::terminate(&mut p),
            "{} did not stop cleanly on SIGTERM",
            args[0]
        );
        // A log file gets plain text (no colours), says which node stops, and no internals.
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in a log file: {text}"
        );
        assert!(
            text.contains(&format!("shutting down role=\"{}\"", args[0])),
            "{text}"
        );
        assert!(
            !text.contains("cmd::origin") && !text.contains("18446744073709551615"),
            "{text}"
        );
    }
}

/// A node config file describes a whole node: the origin's `listen` and the edge's
/// listeners (`http`, `https`, `http3`, `admin`) come from the file alone. Sizes are taken
/// as operators write them (`"64MiB"`) as well as numbers, and the size is the one used; a
/// size that is not one is refused naming the field.
#[test]
fn node_config_files_describe_a_whole_node_with_human_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let origin_toml = dir.path().join("origin.toml");
    std::fs::write(
        &origin_toml,
        format!(
            "listen = \"127.0.0.1:0\"\ndata = {:?}\nmax_body_bytes = \"1KiB\"\n",
            dir.path().join("origin")
        ),
    )
    .unwrap();
    let (mut origin, lines) = common::start_tessera(
        &["origin", "--config", origin_toml.to_str().unwrap()],
        "listening on",
    );
    let url = lines[0]
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string();
    let small = dir.path().join("small.bin");
    std::fs::write(&small, vec![7u8; 1000]).unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 2000]).unwrap();
    let (ok, out, err) = tessera(&["push", small.to_str().unwrap(), "--origin", &url]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = tessera(&["push", big.to_str().unwrap(), "--origin", &url]);
    assert!(!ok && err.contains("413"), "{err}");

    let edge_toml = dir.path().join("edge.toml");
    std::fs::write(
        &edge_toml,
        format!(
            "backend = {{ origin = [\"{url}\"] }}\ndata = {:?}\nmemory_bytes = \"64MiB\"\n\
             disk_bytes = \"16MiB\"\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\
             http3 = false\nadmin = \"127.0.0.1:0\"\nadmin_token = \"t\"\n",
            dir.path().join("edge")
        ),
    )
    .unwrap();
    let (_edge, lines) = common::start_tessera(
        &["edge", "--config", edge_toml.to_str().unwrap()],
        "admin on",
    );
    let at = |scheme: &str| {
        lines
            .iter()
            .find_map(|l| l.split(' ').find(|w| w.starts_with(scheme)))
            .unwrap_or_else(|| panic!("no {scheme} listener: {lines:?}"))
            .to_string()
    };
    assert!(
        !lines.iter().any(|l| l.contains("HTTP/3")),
        "http3 = false: {lines:?}"
    );
    for base in [at("http://"), at("https://")] {
        let (ok, _, err) = tessera(&["get", "-k", "-o", "/dev/null", &format!("{base}/small.bin")]);
        assert!(ok, "{base}: {err}");
    }
    let admin = lines
        .iter()
        .find(|l| l.contains("admin on"))
        .and_then(|l| l.split(' ').find(|w| w.starts_with("http://")))
        .unwrap()
        .to_string();
    let (ok, out, err) = tessera(&["get", &format!("{admin}/healthz")]);
    assert!(ok && out.contains("ok"), "{out}{err}");
    std::fs::write(&edge_toml, "memory_bytes = \"lots\"\n").unwrap();
    let (ok, _, err) = tessera(&[
        "edge",
        "--config",
        edge_toml.to_str().unwrap(),
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    assert!(
        !ok && err.contains("memory_bytes") && err.contains("is not a size"),
        "{err}"
    );
    origin.kill_9();
}

/// An origin reachable beyond this machine without a write token lets anyone publish: it
/// says so at start. On loopback, or with a token, it does not.
#[test]
fn an_origin_open_to_the_network_without_a_token_warns() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (listen, token, warns)) in [
        ("0.0.0.0:0", None, true),
        ("0.0.0.0:0", Some("t"), false),
        ("127.0.0.1:0", None, false),
    ]
    .into_iter()
    .enumerate()
    {
        let data = dir.path().join(format!("o{i}"));
        let mut args = vec![
            "origin",
            "--listen",
            listen,
            "--data",
            data.to_str().unwrap(),
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        let log = dir.path().join(format!("o{i}.log"));
        let (mut p, _) = common::start_tessera_with(
            &args,
            "listening on",
            std::fs::File::create(&log).unwrap().into(),
        );
        // The warning is written before the line waited for.
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.contains("no write token: anyone who can reach this address"),
            warns,
            "{args:?}: {text}"
        );
        p.kill_9();
    }
}
