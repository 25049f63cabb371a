//! `nixoci build --previous` and `nixoci plan --previous` reading the
//! previous image from a registry: Debian's Distribution registry
//! (`docker-registry`) on 127.0.0.1, started by each test with its own
//! config and stopped by PID, behind the harness's bearer-token proxy for
//! one check. The images come from a fake two-platform store tree (no Nix
//! needed) whose application changes between versions.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::publish::*;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// name, NAR size, references.
const GRAPH: &[(&str, u64, &[&str])] = &[
    ("glibc", 40_000, &[]),
    ("zlib", 3_000, &["glibc"]),
    ("openssl", 20_000, &["glibc"]),
    ("tzdata", 10_000, &[]),
    ("app", 5_000, &["zlib", "openssl", "tzdata"]),
];

/// A fake store holding version `app_version` of the application for
/// both platforms, and its closure as an exportReferencesGraph list.
struct Store {
    work: PathBuf,
    closure: PathBuf,
    /// (arch, name) to store path.
    paths: BTreeMap<(String, String), String>,
}

fn hash(seed: &str) -> String {
    Sha256::digest(seed.as_bytes())
        .iter()
        .take(32)
        .map(|b| char::from(ALPHABET[usize::from(*b) % 32]))
        .collect()
}

impl Store {
    fn new(work: &Path, app_version: &str) -> Store {
        let mut paths = BTreeMap::new();
        let mut entries = Vec::new();
        for arch in ARCHES {
            for (name, size, refs) in GRAPH {
                let v = if *name == "app" { app_version } else { "1" };
                let path = format!("/nix/store/{}-{name}", hash(&format!("{arch}-{name}-{v}")));
                let on_disk = work.join("root").join(path.trim_start_matches('/'));
                fs::create_dir_all(&on_disk).expect("creating the fake store");
                fs::write(on_disk.join("data"), format!("{name} {v} {arch}\n"))
                    .expect("writing the fake store");
                let refs: Vec<&String> = refs
                    .iter()
                    .map(|r| &paths[&(arch.to_owned(), (*r).to_owned())])
                    .collect();
                let nar_hash =
                    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&path));
                entries.push(json!({
                    "path": path, "narHash": format!("sha256-{nar_hash}"),
                    "narSize": size, "references": refs,
                }));
                paths.insert((arch.to_owned(), (*name).to_owned()), path);
            }
        }
        let closure = work.join(format!("closure-{app_version}.json"));
        fs::write(&closure, Value::Array(entries).to_string()).expect("writing the closure");
        Store {
            work: work.to_owned(),
            closure,
            paths,
        }
    }

    fn app(&self, arch: &str) -> &str {
        &self.paths[&(arch.to_owned(), "app".to_owned())]
    }

    /// `nixoci SUB` (build or plan) of both platforms' applications.
    fn nixoci(&self, sub: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
        self.nixoci_within(sub, args, envs, Duration::from_secs(300))
    }

    /// [`Store::nixoci`], killed (and failing the test) after `limit`.
    fn nixoci_within(
        &self,
        sub: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        limit: Duration,
    ) -> Output {
        let amd = format!("linux/amd64={}", self.app("amd64"));
        let arm = format!("linux/arm64={}", self.app("arm64"));
        let cache = self.work.join("cache");
        let root = self.work.join("root");
        let mut all = vec![
            sub,
            "--platform",
            &amd,
            "--platform",
            &arm,
            "--closure-json",
            self.closure.to_str().expect("utf-8"),
            "--store-root",
            root.to_str().expect("utf-8"),
        ];
        all.extend_from_slice(args);
        let mut envs = envs.to_vec();
        envs.push(("XDG_CACHE_HOME", cache.to_str().expect("utf-8")));
        // No credentials of the user's: HOME holds no auth files.
        envs.push(("HOME", "/nonexistent"));
        run_bounded(
            nixoci().args(&all).envs(envs.iter().copied()),
            limit,
            "nixoci",
        )
    }
}

/// Each platform's layer digests, bottom first, from a build report.
fn platform_layers(report: &Value) -> BTreeMap<String, Vec<String>> {
    report["platforms"]
        .as_array()
        .expect("platforms")
        .iter()
        .map(|p| {
            let layers = p["layers"]
                .as_array()
                .expect("layers")
                .iter()
                .map(|d| d.as_str().expect("a digest").to_owned())
                .collect();
            (p["platform"].as_str().expect("platform").to_owned(), layers)
        })
        .collect()
}

/// The store paths of the layer `digest` in a build report.
fn layer_paths(report: &Value, digest: &str) -> Vec<String> {
    report["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l.get("layer").unwrap_or(l))
        .find(|l| l["digest"] == digest)
        .and_then(|l| l["storePaths"].as_array())
        .map(|a| {
            a.iter()
                .map(|p| p.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The origins of a plan's layers.
fn origins(plan: &Value) -> Vec<String> {
    plan["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["origin"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn previous_from_a_registry_keeps_the_unchanged_layers() {
    if !require(&["docker-registry"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let v1 = Store::new(&work.join("store"), "1");

    // Version 1, in few layers (everything below the application in one),
    // pushed to the registry.
    let first = work.join("v1.oci");
    let o = v1.nixoci(
        "build",
        &[
            "--json",
            "--max-layers",
            "2",
            "-o",
            first.to_str().expect("utf-8"),
        ],
        &[],
    );
    let before = platform_layers(&ok_json(&o, "build of v1"));
    let o = output_of(nixoci().args([
        "push",
        first.to_str().expect("utf-8"),
        &format!("{}/app:1", reg.addr()),
        "--json",
    ]));
    let pushed = ok_json(&o, "push of v1");

    // Version 2 changes only the application. With a budget of 5, a plan
    // from scratch splits the dependencies into more layers ...
    let v2 = Store::new(&work.join("store"), "2");
    let o = v2.nixoci("plan", &["--json", "--max-layers", "5"], &[]);
    let scratch = ok_json(&o, "plan of v2 from scratch");
    assert!(
        !origins(&scratch).iter().any(|o| o == "previous"),
        "{scratch}"
    );
    for image in scratch["images"].as_array().expect("images") {
        assert!(
            image["layers"].as_array().map_or(0, Vec::len) > 2,
            "the test needs a plan that differs from v1's: {scratch}"
        );
    }

    // ... but with the registry image as --previous, every layer of v1
    // below the application is kept: same digests, same order, at the
    // bottom; the one new layer per platform holds the new application.
    let bare = format!("{}/app:1", reg.addr());
    let mut indexes = Vec::new();
    for (n, previous) in [bare.clone(), format!("docker://{bare}")]
        .iter()
        .enumerate()
    {
        let out = work.join(format!("v2-{n}.oci"));
        let before_log = reg.access_lines().len();
        let o = v2.nixoci(
            "build",
            &[
                "--json",
                "--max-layers",
                "5",
                "--previous",
                previous,
                "-o",
                out.to_str().expect("utf-8"),
            ],
            &[],
        );
        let report = ok_json(&o, &format!("build of v2 with --previous {previous}"));
        let after = platform_layers(&report);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
        for (platform, old) in &before {
            let new = &after[platform];
            let arch = if platform.contains("amd64") {
                "amd64"
            } else {
                "arm64"
            };
            assert_eq!(old.len(), 2, "{platform}: {old:?}");
            assert_eq!(new.len(), old.len(), "{platform}: {old:?} then {new:?}");
            assert_eq!(new[0], old[0], "{platform}: the bottom layer was not kept");
            assert_ne!(new[1], old[1], "{platform}: the application layer is new");
            assert!(!old.contains(&new[1]));
            assert_eq!(layer_paths(&report, &new[1]), vec![v2.app(arch).to_owned()]);
        }
        // It read the tag, then each platform's manifest by digest; no
        // config was needed (the layers name their store paths).
        let log: Vec<String> = reg.access_lines().split_off(before_log);
        let gets = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
        assert!(gets("\"GET /v2/app/manifests/1 ") >= 1, "{log:#?}");
        assert_eq!(gets("\"GET /v2/app/manifests/sha256:"), 2, "{log:#?}");
        assert_eq!(gets("\"GET /v2/app/blobs/"), 0, "{log:#?}");
        indexes.push(report["index"]["digest"].clone());
    }
    assert_eq!(indexes[0], indexes[1], "both spellings give the same image");

    // nixoci plan: the kept layers say where they come from; by digest,
    // and through a bearer-token server asking for pull rights only.
    let by_digest = format!(
        "{}/app@{}",
        reg.addr(),
        pushed["digest"].as_str().expect("the pushed digest")
    );
    let o = v2.nixoci(
        "plan",
        &["--json", "--max-layers", "5", "--previous", &by_digest],
        &[],
    );
    let plan = ok_json(&o, "plan with --previous REGISTRY/NAME@DIGEST");
    let mut kinds = origins(&plan);
    kinds.sort();
    // Per platform: the kept bottom layer and the new application.
    assert_eq!(
        kinds,
        ["planned", "planned", "previous", "previous"],
        "{plan}"
    );
    let proxy = Proxy::start(reg.port, Mode::Bearer);
    let o = v2.nixoci(
        "plan",
        &[
            "--json",
            "--max-layers",
            "5",
            "--previous",
            &format!("docker://{}/app:1", proxy.addr()),
        ],
        &[
            ("NIXOCI_REGISTRY_USER", USER),
            ("NIXOCI_REGISTRY_PASSWORD", PASSWORD),
        ],
    );
    let through_proxy = ok_json(&o, "plan with --previous through the token server");
    assert_eq!(through_proxy, plan);
    let s = proxy.stats.lock().expect("stats");
    assert!(s.tokens_issued >= 1, "{s:?}");
    assert!(
        s.scopes.iter().any(|sc| sc == "repository:app:pull"),
        "{s:?}"
    );
}

#[test]
fn missing_refused_and_malformed_previous_images() {
    if !require(&["docker-registry", "htpasswd"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), true);
    let store = Store::new(&work.join("store"), "1");
    let creds = format!("{USER}:{PASSWORD}");
    let first = work.join("v1.oci");
    let o = store.nixoci(
        "build",
        &["--max-layers", "2", "-o", first.to_str().expect("utf-8")],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = output_of(nixoci().args([
        "push",
        first.to_str().expect("utf-8"),
        &format!("{}/app:1", reg.addr()),
        "--creds",
        &creds,
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = |previous: &str, extra: &[&str]| {
        let mut args = vec!["--json", "--previous", previous];
        args.extend_from_slice(extra);
        store.nixoci("plan", &args, &[])
    };
    let code = |o: &Output, want: i32, what: &str| {
        assert_eq!(o.status.code(), Some(want), "{what}: {}", stderr(o));
        stderr(o)
    };

    // The image is there: credentials work.
    let there = format!("{}/app:1", reg.addr());
    let o = plan(&there, &["--creds", &creds]);
    assert!(origins(&ok_json(&o, "plan"))
        .iter()
        .any(|o| o == "previous"));

    // A tag or a repository the registry does not have: exit 2, or with
    // --previous-optional a note and a plan from scratch.
    for missing in [
        format!("{}/app:nope", reg.addr()),
        format!("docker://{}/other/app:1", reg.addr()),
    ] {
        let err = code(&plan(&missing, &["--creds", &creds]), 2, &missing);
        assert!(err.contains("is not in the registry"), "{err}");
        assert!(err.contains(&format!("--previous {missing}: ")), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        let o = plan(&missing, &["--creds", &creds, "--previous-optional"]);
        let scratch = ok_json(&o, "plan with --previous-optional");
        assert!(!origins(&scratch).iter().any(|o| o == "previous"));
        let err = stderr(&o);
        assert!(err.contains("note: --previous"), "{err}");
        assert!(err.contains("planning from scratch"), "{err}");
    }
    // The same for a layout that is not there.
    let gone = work.join("gone.oci");
    let gone = gone.to_str().expect("utf-8");
    code(&plan(gone, &[]), 2, "a missing layout");
    let o = plan(gone, &["--previous-optional"]);
    ok_json(&o, "plan with a missing layout and --previous-optional");
    assert!(stderr(&o).contains("planning from scratch"));

    // Wrong or no credentials: exit 1, naming the reference, even with
    // --previous-optional; no secret in the message.
    for extra in [
        &["--creds", "alice:not-the-password"][..],
        &["--creds", "alice:not-the-password", "--previous-optional"],
    ] {
        let err = code(&plan(&there, extra), 1, "a wrong password");
        assert!(err.contains(&format!("--previous {there}: ")), "{err}");
        assert!(
            err.contains("rejected the credentials of user 'alice'"),
            "{err}"
        );
        assert!(!err.contains("not-the-password"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    let err = code(&plan(&there, &[]), 1, "no credentials");
    assert!(err.contains("requires authentication"), "{err}");

    // Malformed references: exit 2 before any connection (port 9 is
    // never contacted).
    for bad in [
        "docker://127.0.0.1:9/App:1",
        "docker://",
        "127.0.0.1:9/app:../x",
        "127.0.0.1:9/app@sha256:00",
    ] {
        let err = code(&plan(bad, &[]), 2, bad);
        assert!(err.contains(&format!("--previous {bad}: ")), "{err}");
    }
    // --previous-optional alone is a usage error.
    let o = store.nixoci("plan", &["--previous-optional"], &[]);
    code(&o, 2, "--previous-optional without --previous");
}

/// A registry of fixed answers on 127.0.0.1 (path to content type and
/// body; anything else 404), one request per connection. Stops with the
/// test process; it only ever listens on loopback.
fn fixed_registry(answers: BTreeMap<String, (String, Vec<u8>)>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            // The client tries TLS first: close on a handshake at once.
            let mut first = [0u8; 1];
            if conn.peek(&mut first).is_err() || !first[0].is_ascii_uppercase() {
                continue;
            }
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (status, ctype, body) = match answers.get(&path) {
                Some((t, b)) => ("200 OK", t.as_str(), b.clone()),
                None => (
                    "404 Not Found",
                    "application/json",
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                        .to_vec(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    port
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

#[test]
fn registry_documents_are_checked_and_history_is_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::new(&tmp.path().join("store"), "2");
    let path = |name: &str| store.paths[&("amd64".to_owned(), name.to_owned())].clone();
    // An older image: a Docker manifest whose layers carry no annotations,
    // and a config whose history names each layer's store paths.
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "history": [
            {"comment": format!("store paths: {} {}", path("glibc"), path("zlib"))},
            {"created_by": "a label", "empty_layer": true},
            {"comment": "store paths: /nix/store/00000000000000000000000000000000-app-1"},
        ]
    }))
    .expect("JSON");
    let layer = |n: u8| {
        json!({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
               "digest": sha256(&[n]), "size": 1})
    };
    let docker_manifest = "application/vnd.docker.distribution.manifest.v2+json";
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": docker_manifest,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [layer(1), layer(2)],
    }))
    .expect("JSON");
    // An index naming a manifest by a digest its bytes do not have.
    let wrong = sha256(b"not the manifest");
    let index_type = "application/vnd.oci.image.index.v1+json";
    let lying = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": index_type,
        "manifests": [{"mediaType": docker_manifest, "digest": wrong, "size": manifest.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    }))
    .expect("JSON");
    let mut answers = BTreeMap::new();
    let mut answer = |path: String, ctype: &str, body: &[u8]| {
        answers.insert(path, (ctype.to_owned(), body.to_vec()));
    };
    answer("/v2/".into(), "application/json", b"{}");
    answer("/v2/app/manifests/old".into(), docker_manifest, &manifest);
    answer(
        format!("/v2/app/manifests/{wrong}"),
        docker_manifest,
        &manifest,
    );
    answer(
        format!("/v2/app/blobs/{}", sha256(&config)),
        "application/octet-stream",
        &config,
    );
    answer("/v2/app/manifests/lying".into(), index_type, &lying);
    answer(
        "/v2/app/manifests/huge".into(),
        index_type,
        &vec![b' '; 5 << 20],
    );
    let port = fixed_registry(answers);
    let plan = |tag: &str| {
        let previous = format!("127.0.0.1:{port}/app:{tag}");
        store.nixoci("plan", &["--json", "--previous", &previous], &[])
    };

    // The history gives the amd64 layers: the one whose paths are all
    // still there is kept, exactly as it was.
    let found = ok_json(&plan("old"), "plan with a Docker manifest as --previous");
    let kept: Vec<&Value> = found["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter(|l| l["origin"] == "previous")
        .collect();
    let mut want = vec![path("glibc"), path("zlib")];
    want.sort();
    assert_eq!(kept.len(), 1, "{found}");
    assert_eq!(kept[0]["storePaths"], json!(want), "{found}");

    // A document that is not what its digest says, and one too large:
    // exit 1, naming the reference and the problem.
    let o = plan("lying");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("127.0.0.1:{port}/app:lying: ")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "manifest {wrong}: the registry sent a document whose digest is {}",
            sha256(&manifest)
        )),
        "{err}"
    );
    let o = plan("huge");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("larger than 4194304 bytes"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_trickling_registry_fails_the_build_in_bounded_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let store = Store::new(&work.join("store"), "1");
    // A body trickled without Content-Length (build), then a whole answer
    // trickled (plan): both end after about twice --timeout (one retry).
    for (mode, sub, message) in [
        (Trickle::Body, "build", "too slowly"),
        (Trickle::Answer, "plan", "within 2 s"),
    ] {
        let trickler = Trickler::start(mode);
        let previous = format!("{}/app:1", trickler.addr());
        let out = work.join(format!("{sub}.oci"));
        let mut args = vec!["--previous", &previous, "--timeout", "2s"];
        if sub == "build" {
            args.extend(["-o", out.to_str().expect("utf-8")]);
        }
        let start = Instant::now();
        let o = store.nixoci_within(sub, &args, &[], Duration::from_secs(60));
        let what = format!("{sub} --previous {previous} ({mode:?})");
        assert_timed_out(
            &o,
            start.elapsed(),
            &trickler.addr(),
            "GET /v2/app/manifests/1",
            &what,
        );
        assert!(stderr(&o).contains(message), "{what}:\n{}", stderr(&o));
        assert!(!out.exists(), "{what} wrote a layout");
    }
}
