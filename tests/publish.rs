//! `nixoci push` and `nixoci export-static` against real servers on
//! 127.0.0.1: Debian's Distribution registry (`docker-registry`), nginx,
//! and loopback servers in this harness for the bearer-token flow, a
//! flaky registry and a trickling one. Images are read back with skopeo and compared digest
//! for digest. Every server is stopped by PID when its test ends.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::publish::*;
use common::*;

/// Pulls `reference` with skopeo and checks it is `layout`'s image, byte
/// for byte: the same index digest and the same set of blobs.
fn assert_pulls_back(reference: &str, creds: Option<&str>, layout: &Path, work: &Path) {
    let dest = work.join(format!("pulled-{}", reference.replace(['/', ':'], "_")));
    let o = skopeo_pull(reference, creds, &dest);
    assert!(
        o.status.success(),
        "skopeo copy {reference} failed:\n{}",
        stderr(&o)
    );
    let (want_root, want_blobs) = layout_digests(layout);
    let (got_root, got_blobs) = layout_digests(&dest);
    assert_eq!(got_root, want_root, "index digest of {reference}");
    assert_eq!(got_blobs, want_blobs, "blobs of {reference}");
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let v = skopeo_inspect(reference, creds, arch);
        assert_eq!(v["Architecture"], arch, "{reference} for {arch}: {v}");
        assert_eq!(v["Os"], "linux");
        let _ = variant;
        assert!(
            v["Layers"].as_array().is_some_and(|l| !l.is_empty()),
            "{reference} for {arch} has layers: {v}"
        );
    }
}

#[test]
fn push_with_basic_auth_then_pull_back() {
    if !require(&["docker-registry", "htpasswd", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/hello:1.0");
    let reg = Registry::start(&work.join("registry"), true);
    let dest = format!("{}/hello", reg.addr());
    let creds = format!("{USER}:{PASSWORD}");
    let layout_s = layout.to_str().expect("utf-8 path");

    // First push: everything uploaded, the tag taken from the layout's.
    let o = output_of(nixoci().args(["push", layout_s, &dest, "--creds", &creds, "--json"]));
    let report = ok_json(&o, "first push");
    assert!(!stderr(&o).contains(PASSWORD));
    assert_eq!(report["version"], 1);
    assert_eq!(report["tag"], "1.0");
    assert_eq!(report["destination"], format!("{dest}:1.0"));
    let blobs = report["blobs"].as_array().expect("blobs");
    assert_eq!(blobs.len(), 5, "{report}");
    assert_eq!(report["uploaded"], 5);
    assert_eq!(report["skipped"], 0);
    let manifests = report["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 3);
    assert_eq!(manifests[2]["reference"], "1.0");
    assert_eq!(
        manifests[2]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let (root, _) = layout_digests(&layout);
    assert_eq!(report["digest"], root.as_str());

    let pull_creds = Some(creds.as_str());
    assert_pulls_back(&format!("{dest}:1.0"), pull_creds, &layout, work);

    // Second push, credentials from a Docker config.json this time:
    // nothing uploaded, and the registry saw no upload.
    let home = work.join("home");
    fs::create_dir_all(home.join(".docker")).expect("mkdir");
    let auth = base64_encode(&creds);
    fs::write(
        home.join(".docker/config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr()),
    )
    .expect("writing config.json");
    let before = reg.access_lines().len();
    let o = output_of(
        nixoci()
            .args(["push", layout_s, &format!("{dest}:1.0"), "--json"])
            .env("HOME", home.to_str().expect("utf-8")),
    );
    let report = ok_json(&o, "second push");
    assert_eq!(report["uploaded"], 0, "{report}");
    assert_eq!(report["skipped"], 5);
    assert_eq!(report["bytesUploaded"], 0);
    let after: Vec<String> = reg.access_lines().split_off(before);
    assert_eq!(
        count(&after, "/blobs/uploads/"),
        0,
        "uploads on a second push:\n{after:#?}"
    );
    // The tag's image names every blob: it is read (GET of the tag), and
    // no blob is asked for one by one.
    assert!(
        count(&after, "\"GET /v2/hello/manifests/1.0 ") >= 1,
        "{after:#?}"
    );
    assert_eq!(
        count(&after, "\"HEAD /v2/hello/blobs/sha256:"),
        0,
        "{after:#?}"
    );

    // Credentials from REGISTRY_AUTH_FILE, another tag, then a cross-repo
    // mount into a second repository: nothing uploaded there either.
    let auth_json = work.join("auth.json");
    fs::write(
        &auth_json,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr()),
    )
    .expect("writing auth.json");
    let before = reg.access_lines().len();
    let o = output_of(
        nixoci()
            .args([
                "push",
                &format!("{layout_s}:example.org/hello:1.0"),
                &format!("{}/copy/hello:v1", reg.addr()),
                "--mount-from",
                "hello",
                "--json",
            ])
            .env("REGISTRY_AUTH_FILE", auth_json.to_str().expect("utf-8")),
    );
    let report = ok_json(&o, "push with --mount-from");
    assert_eq!(report["mounted"], 5, "{report}");
    assert_eq!(report["uploaded"], 0);
    assert_eq!(report["blobs"][0]["from"], "hello");
    let after: Vec<String> = reg.access_lines().split_off(before);
    assert_eq!(count(&after, "\"PATCH "), 0);
    assert_eq!(
        count(&after, "\"POST /v2/copy/hello/blobs/uploads/?mount="),
        5
    );
    assert_pulls_back(
        &format!("{}/copy/hello:v1", reg.addr()),
        pull_creds,
        &layout,
        work,
    );

    // Wrong password: exit 1, a clear message, no secret in it.
    let o =
        output_of(nixoci().args(["push", layout_s, &dest, "--creds", "alice:not-the-password"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("rejected the credentials of user 'alice'"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    // No credentials at all: exit 1, saying how to give them.
    let o = output_of(
        nixoci()
            .args(["push", layout_s, &dest])
            .env("HOME", "/nonexistent"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("requires authentication"),
        "{}",
        stderr(&o)
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn chunked_upload_of_a_large_layer() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = big_layout(work, 30 << 20, "big:1");
    let reg = Registry::start(&work.join("registry"), false);
    let o = output_of(nixoci().args([
        "push",
        layout.to_str().expect("utf-8"),
        &format!("{}/big", reg.addr()),
        "--chunk-size",
        "8M",
        "--json",
    ]));
    let report = ok_json(&o, "push of a large layer");
    let big = report["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .map(|b| b["size"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(big > 30 << 20, "the large layer is {big} bytes");
    let lines = reg.access_lines();
    // 30 MiB in 8 MiB chunks: at least 4 PATCHes.
    assert!(
        count(&lines, "\"PATCH /v2/big/blobs/uploads/") >= 4,
        "{lines:#?}"
    );
    assert_pulls_back(&format!("{}/big:1", reg.addr()), None, &layout, work);
}

#[test]
fn bearer_token_flow() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "1.0");
    let reg = Registry::start(&work.join("registry"), false);
    let proxy = Proxy::start(reg.port, Mode::Bearer);
    let layout_s = layout.to_str().expect("utf-8");
    let dest = format!("{}/team/hello:1.0", proxy.addr());

    let o = output_of(
        nixoci()
            .args(["push", layout_s, &dest, "--json", "--chunk-size", "100"])
            .envs([
                ("NIXOCI_REGISTRY_USER", USER),
                ("NIXOCI_REGISTRY_PASSWORD", PASSWORD),
            ]),
    );
    let report = ok_json(&o, "push through the bearer proxy");
    assert_eq!(report["uploaded"], 5, "{report}");
    {
        let s = proxy.stats.lock().expect("stats");
        assert!(s.tokens_issued >= 2, "tokens expire after 12 uses: {s:?}");
        assert!(
            s.scopes
                .iter()
                .any(|sc| sc == "repository:team/hello:pull,push"),
            "{s:?}"
        );
        assert_eq!(s.token_denied, 0);
    }
    // The registry behind the proxy has it, byte for byte.
    assert_pulls_back(
        &format!("{}/team/hello:1.0", reg.addr()),
        None,
        &layout,
        work,
    );

    // A wrong password at the token server: exit 1, clear, no secret.
    let o = output_of(nixoci().args(["push", layout_s, &dest, "--creds", "alice:wrong-secret"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("token server"), "{err}");
    assert!(
        err.contains("rejected the credentials of user 'alice'"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret"), "{err}");
}

#[test]
fn flaky_registry_still_gets_a_complete_push() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = big_layout(work, 5 << 20, "flaky:1");
    let reg = Registry::start(&work.join("registry"), false);
    let proxy = Proxy::start(reg.port, Mode::Flaky);
    let o = output_of(nixoci().args([
        "push",
        layout.to_str().expect("utf-8"),
        &format!("{}/flaky", proxy.addr()),
        "--chunk-size",
        "2M",
        "--json",
    ]));
    let report = ok_json(&o, "push through the flaky proxy");
    let err = stderr(&o);
    assert!(err.contains("retrying"), "{err}");
    let injected = proxy.stats.lock().expect("stats").failures_injected;
    assert!(injected >= 10, "only {injected} failures injected");
    assert!(
        report["blobs"]
            .as_array()
            .expect("blobs")
            .iter()
            .any(|b| b["attempts"].as_u64().unwrap_or(0) > 1),
        "{report}"
    );
    assert_eq!(report["skipped"], 0, "{report}");
    assert_pulls_back(&format!("{}/flaky:1", reg.addr()), None, &layout, work);
}

#[test]
fn static_tree_served_by_nginx() {
    if !require(&["skopeo"]) || !(Path::new(&nginx_binary()).is_file() || require(&["nginx"])) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/hello:1.0");
    let layout_s = layout.to_str().expect("utf-8");
    let tree = work.join("site");
    let tree_s = tree.to_str().expect("utf-8");

    let o = output_of(nixoci().args([
        "export-static",
        layout_s,
        "--repository",
        "hello",
        "-o",
        tree_s,
        "--json",
    ]));
    let first = ok_json(&o, "export-static");
    assert_eq!(first["tags"][0], "1.0");
    assert_eq!(first["stored"], 8);
    // A second repository with two tags shares the blobs.
    let o = output_of(nixoci().args([
        "export-static",
        &format!("{layout_s}:example.org/hello:1.0"),
        "--repository",
        "team/hello",
        "--tag",
        "1.0",
        "--tag",
        "latest",
        "-o",
        tree_s,
        "--json",
    ]));
    let second = ok_json(&o, "export-static of a second repository");
    assert_eq!(second["stored"], 0, "{second}");
    // Exporting again changes nothing.
    let o = output_of(nixoci().args([
        "export-static",
        layout_s,
        "--repository",
        "hello",
        "-o",
        tree_s,
        "--json",
    ]));
    let again = ok_json(&o, "export-static again");
    assert_eq!(
        again["written"].as_array().map(Vec::len),
        Some(0),
        "{again}"
    );
    assert_eq!(again["stored"], 0);

    let (root, blobs) = layout_digests(&layout);
    let config = blobs
        .iter()
        .find(|b| {
            let p = tree.join(format!("v2/hello/blobs/sha256:{b}"));
            p.exists()
        })
        .expect("a blob in the tree");
    let a = fs::metadata(tree.join(format!("v2/hello/blobs/sha256:{config}"))).expect("stat");
    let b = fs::metadata(tree.join(format!("v2/team/hello/blobs/sha256:{config}"))).expect("stat");
    assert_eq!(
        (a.dev(), a.ino()),
        (b.dev(), b.ino()),
        "blobs are shared, not copied"
    );
    assert!(tree.join(format!("v2/hello/manifests/{root}")).is_file());

    let objects: serde_json::Value =
        serde_json::from_slice(&fs::read(tree.join("objects.json")).expect("objects.json"))
            .expect("JSON");
    let tag_obj = objects
        .as_array()
        .expect("a list")
        .iter()
        .find(|o| o["key"] == "v2/team/hello/manifests/latest")
        .expect("the latest tag in objects.json");
    assert_eq!(
        tag_obj["contentType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(tag_obj["digest"], root.as_str());
    assert!(tree.join("Caddyfile").is_file());

    let nginx = Nginx::start(&work.join("nginx"), &tree.join("nginx.conf"));
    for reference in ["hello:1.0", "team/hello:latest", "team/hello:1.0"] {
        assert_pulls_back(
            &format!("127.0.0.1:{}/{reference}", nginx.port),
            None,
            &layout,
            work,
        );
    }
}

#[test]
fn names_and_tags_cannot_leave_the_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "1.0");
    let layout_s = layout.to_str().expect("utf-8");
    let tree = work.join("inner/site");
    fs::create_dir_all(work.join("inner")).expect("mkdir");
    let tree_s = tree.to_str().expect("utf-8");
    let before: Vec<_> = fs::read_dir(work)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    for (repo, tag) in [
        ("../escape", "1.0"),
        ("a/../../escape", "1.0"),
        ("/etc/escape", "1.0"),
        ("..", "1.0"),
        ("ok", "../../escape"),
        ("ok", "a/b"),
        ("ok", ".."),
        ("ok", "/abs"),
        ("Upper", "1.0"),
    ] {
        let o = output_of(nixoci().args([
            "export-static",
            layout_s,
            "--repository",
            repo,
            "--tag",
            tag,
            "-o",
            tree_s,
        ]));
        assert_eq!(o.status.code(), Some(2), "{repo}:{tag}: {}", stderr(&o));
        assert!(!tree.exists(), "{repo}:{tag} wrote the tree");
    }
    let after: Vec<_> = fs::read_dir(work)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(before, after, "nothing written next to the tree");

    // push: the same grammar keeps names out of URLs; exit 2 before any
    // connection (port 9 is never contacted).
    for dest in [
        "127.0.0.1:9/../escape:1",
        "127.0.0.1:9/a/..:1",
        "127.0.0.1:9//abs:1",
        "127.0.0.1:9/ok:../x",
        "127.0.0.1:9/ok:a/b",
    ] {
        let o = output_of(nixoci().args(["push", layout_s, dest]));
        assert_eq!(o.status.code(), Some(2), "{dest}: {}", stderr(&o));
    }
    let o = output_of(nixoci().args(["push", &format!("{layout_s}:nope"), "127.0.0.1:9/ok"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no tag 'nope'"), "{}", stderr(&o));
    let o = output_of(nixoci().args(["push", layout_s, "127.0.0.1:9/ok", "--mount-from", "../x"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_trickling_registry_fails_the_push_in_bounded_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/hello:1.0");
    let layout_s = layout.to_str().expect("utf-8 path");

    // A push with --timeout 2s to a trickler: its output, how long it
    // took, and the trickler's address.
    let push_to = |trickle| {
        let trickler = Trickler::start(trickle);
        let dest = format!("{}/app:1", trickler.addr());
        let start = Instant::now();
        let o = run_bounded(
            nixoci().args(["push", layout_s, &dest, "--timeout", "2s"]),
            Duration::from_secs(60),
            "nixoci",
        );
        (o, start.elapsed(), trickler.addr())
    };

    // Every answer after /v2/ trickled from its status line: the blobs'
    // HEADs time out, each retried once.
    let (o, took, addr) = push_to(Trickle::Answer);
    assert_timed_out(
        &o,
        took,
        &addr,
        "HEAD /v2/app/blobs/sha256:",
        "push to a registry trickling its answers",
    );
    assert!(stderr(&o).contains("within 2 s"), "{}", stderr(&o));

    // A body trickled without Content-Length after 200 OK: every HEAD
    // finds its blob, and the tag's PUT gets a 200 whose error body
    // trickles. The push fails, in bounded time.
    let (o, took, addr) = push_to(Trickle::Body);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}\n{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(&addr), "{}", stderr(&o));
}
