//! The S3 client and `nixoci push s3://…` against a real Garage
//! (tests/common/garage.rs): the object operations a static registry
//! needs, what clients pull through Garage's web endpoint, interrupted
//! pushes, and the errors a user meets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use common::garage::{Garage, WEB_BUCKET};
use common::{require, tempdir};
use nixoci::oci::Digest;
use nixoci::publish::client::Body;
use nixoci::publish::s3::{PutMeta, S3Error};

#[test]
fn the_client_lists_heads_gets_puts_copies_and_deletes() {
    if !require(&["garage"]) {
        return;
    }
    let tmp = tempdir();
    let g = Garage::start(&tmp.path().join("garage"));
    let b = g.bucket(&format!("s3://{WEB_BUCKET}/pre/fix"));
    b.check().expect("the bucket and the key work");

    assert_eq!(b.head("a/x").unwrap(), None);
    assert_eq!(b.get("a/x").unwrap(), None);
    let d = Digest::of(b"hello");
    b.put_object(
        "a/x",
        PutMeta {
            content_type: "application/vnd.oci.image.index.v1+json",
            checksum: Some(&d),
            content_digest: Some(&d),
        },
        &Body::Bytes(b"hello"),
    )
    .unwrap();
    let info = b.head("a/x").unwrap().expect("the object is there");
    assert_eq!((info.key.as_str(), info.size), ("a/x", 5));
    assert_eq!(b.get("a/x").unwrap().as_deref(), Some(&b"hello"[..]));
    // The key is under the prefix, and the web endpoint serves it with
    // its content type and the digest as metadata.
    let (status, headers, body) = g.web_get("/pre/fix/a/x");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(
        header("x-amz-meta-docker-content-digest"),
        Some(d.to_string().as_str())
    );

    // A checksum that does not match is refused by Garage.
    let wrong = Digest::of(b"other");
    let e = b
        .put_object(
            "a/bad",
            PutMeta {
                content_type: "application/octet-stream",
                checksum: Some(&wrong),
                content_digest: None,
            },
            &Body::Bytes(b"hello"),
        )
        .unwrap_err();
    assert!(matches!(e, S3Error::Status { status: 400, .. }), "{e}");
    assert_eq!(b.head("a/bad").unwrap(), None);

    // Server-side copy, with a content type of its own.
    b.copy("a/x", "b/y", "application/json").unwrap();
    let (status, headers, body) = g.web_get("/pre/fix/b/y");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/json"));

    // A multipart upload: 11 MiB in parts of 5 MiB.
    let big: Vec<u8> = (0..11u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = tmp.path().join("big");
    fs::write(&file, &big).unwrap();
    let moved = std::sync::atomic::AtomicI64::new(0);
    b.put_multipart(
        "c/big",
        PutMeta {
            content_type: "application/octet-stream",
            checksum: None,
            content_digest: Some(&Digest::of(&big)),
        },
        &file,
        big.len() as u64,
        5 << 20,
        &|n| {
            moved.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .unwrap();
    assert_eq!(moved.into_inner(), big.len() as i64);
    assert_eq!(b.head("c/big").unwrap().unwrap().size, big.len() as u64);
    assert!(b.get("c/big").unwrap().unwrap() == big);

    // Every page of a listing: 1005 keys in pages of 1000.
    for i in 0..1005 {
        b.put(&format!("many/{i:04}"), "text/plain", &Body::Bytes(b"x"))
            .unwrap();
    }
    let listed = b.list("many/").unwrap();
    assert_eq!(listed.len(), 1005);
    assert_eq!(listed[0].key, "many/0000");
    assert_eq!(listed[1004].key, "many/1004");
    let all = b.list("").unwrap();
    let keys: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
    assert!(keys.contains(&"a/x") && keys.contains(&"b/y") && keys.contains(&"c/big"));

    b.delete("a/x").unwrap();
    b.delete("a/x").expect("deleting a missing key is no error");
    assert_eq!(b.head("a/x").unwrap(), None);
}

#[test]
fn the_client_names_a_wrong_secret_and_a_missing_bucket() {
    if !require(&["garage"]) {
        return;
    }
    let tmp = tempdir();
    let g = Garage::start(&tmp.path().join("garage"));
    let missing = g.bucket("s3://no-such-bucket");
    let e = missing.check().unwrap_err();
    assert!(matches!(e, S3Error::NoSuchBucket { .. }), "{e}");
    assert!(e.to_string().contains("no-such-bucket"), "{e}");

    use nixoci::publish::s3::{Bucket, S3Config, S3Credentials, S3Url};
    let config = S3Config {
        endpoint: url::Url::parse(&g.endpoint()).unwrap(),
        region: "garage".into(),
        credentials: S3Credentials::new(&g.key_id, "0".repeat(64), None, "the test"),
        path_style: true,
    };
    let b = Bucket::new(
        &config,
        &S3Url::parse("s3://localhost").unwrap(),
        Default::default(),
        Box::new(|_| {}),
    )
    .unwrap();
    let e = b.check().unwrap_err();
    assert!(e.is_auth(), "{e}");
    let shown = nixoci::error::error_chain(&e);
    assert!(shown.contains(&g.key_id), "{shown}");
    assert!(!shown.contains(&g.secret), "{shown}");
}

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::publish::{big_layout, golden_layout, layout_digests, skopeo_pull};
use common::runtime::{Podman, Runtime};
use common::{build_hello_image, hello, nixoci, ok_json, output_of, stderr, GREETING};

/// `nixoci push LAYOUT DEST ARGS…` with the Garage's key and endpoint.
fn push_cmd(g: &Garage, layout: &Path, dest: &str, args: &[&str]) -> Command {
    let mut c = nixoci();
    g.env(&mut c).arg("push").arg(layout).arg(dest).args(args);
    c
}

fn push(g: &Garage, layout: &Path, dest: &str, args: &[&str]) -> Output {
    output_of(&mut push_cmd(g, layout, dest, args))
}

/// Every object of the bucket: key, size, time.
fn snapshot(g: &Garage) -> Vec<(String, u64, std::time::SystemTime)> {
    g.bucket(&format!("s3://{WEB_BUCKET}"))
        .list("")
        .expect("listing the bucket")
        .into_iter()
        .map(|o| (o.key, o.size, o.last_modified))
        .collect()
}

/// skopeo copies `NAME:TAG` from Garage's web endpoint, both platforms,
/// with the digests of `layout`.
#[track_caller]
fn assert_pulls(g: &Garage, name_tag: &str, layout: &Path, work: &Path) {
    let dest = work.join(format!("pulled-{}", name_tag.replace([':', '/'], "-")));
    let _ = fs::remove_dir_all(&dest);
    let reference = format!("{}/{name_tag}", g.web_addr());
    let o = skopeo_pull(&reference, None, &dest);
    assert!(
        o.status.success(),
        "skopeo copy {reference} failed:\n{}",
        stderr(&o)
    );
    let (want_root, want_blobs) = layout_digests(layout);
    let (got_root, got_blobs) = layout_digests(&dest);
    assert_eq!(got_root, want_root, "index digest of {reference}");
    assert_eq!(got_blobs, want_blobs, "blobs of {reference}");
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn push_to_garage_pulls_through_the_web_endpoint_and_runs() {
    if !require(&["nix", "busybox", "garage", "skopeo"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let layout = work.join("hello.oci");
    build_hello_image(hello(), &layout);
    let g = Garage::start(&work.join("garage"));

    let o = push(&g, &layout, "s3://localhost/hello:1.0", &["--json"]);
    let report = ok_json(&o, "nixoci push s3://");
    let (root, blobs) = layout_digests(&layout);
    assert_eq!(report["destination"], "s3://localhost/hello:1.0");
    assert_eq!(report["digest"], root.as_str());
    let n_blobs = report["blobs"].as_array().unwrap().len();
    assert_eq!(report["uploaded"], n_blobs);
    assert_eq!(
        (&report["mounted"], &report["skipped"]),
        (&0.into(), &0.into())
    );
    // Two manifests and the index by digest, the index under the tag.
    let manifests = report["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 4, "{report}");
    assert!(manifests.iter().all(|m| m["status"] == "pushed"));
    assert_eq!(manifests[3]["reference"], "1.0");
    assert_eq!(n_blobs + 3, blobs.len());

    // Each object has its exact content type, as the web endpoint serves it.
    let index_type = "application/vnd.oci.image.index.v1+json";
    let (status, h, body) = g.web_get("/v2/");
    assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    let (status, h, body) = g.web_get("/v2/hello/manifests/1.0");
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some(index_type));
    assert_eq!(common::sha256_digest(&body), root);
    assert_eq!(
        header(&h, "x-amz-meta-docker-content-digest"),
        Some(root.as_str())
    );
    let (status, h, _) = g.web_get(&format!("/v2/hello/manifests/{root}"));
    assert_eq!(
        (status, header(&h, "content-type")),
        (200, Some(index_type))
    );
    let layer = report["blobs"][0]["digest"].as_str().unwrap();
    let (status, h, _) = g.web_get(&format!("/v2/hello/blobs/{layer}"));
    assert_eq!(
        (status, header(&h, "content-type")),
        (200, Some("application/octet-stream"))
    );
    let (status, h, body) = g.web_get("/v2/hello/tags/list");
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    assert_eq!(body, br#"{"name":"hello","tags":["1.0"]}"#);

    // skopeo through the web endpoint: both platforms, the same digests.
    assert_pulls(&g, "hello:1.0", &layout, work);

    // A second push writes nothing: the report says so, and no object of
    // the bucket changed (key, size, time).
    let before = snapshot(&g);
    let o = push(&g, &layout, "s3://localhost/hello:1.0", &["--json"]);
    let again = ok_json(&o, "the second push");
    assert_eq!(again["uploaded"], 0);
    assert_eq!(again["skipped"], n_blobs);
    assert!(again["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["status"] == "skipped"));
    assert_eq!(snapshot(&g), before, "the second push changed the bucket");

    // Another repository and a second tag: every blob copied inside the
    // bucket, nothing uploaded; both tags listed.
    let o = push(&g, &layout, "s3://localhost/team/hello:2.0", &["--json"]);
    let other = ok_json(&o, "the push to team/hello");
    assert_eq!(
        (&other["uploaded"], &other["mounted"]),
        (&0.into(), &n_blobs.into())
    );
    assert_eq!(other["blobs"][0]["from"], "hello");
    assert_pulls(&g, "team/hello:2.0", &layout, work);
    let o = push(&g, &layout, "s3://localhost/hello:latest", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, _, body) = g.web_get("/v2/hello/tags/list");
    assert_eq!(body, br#"{"name":"hello","tags":["1.0","latest"]}"#);

    // podman pulls the host's platform through the web endpoint and runs it.
    let Some(podman) = Podman::new() else {
        return;
    };
    let reference = format!("{}/hello:1.0", g.web_addr());
    let mut pull = podman.command();
    pull.args(["pull", "--tls-verify=false", "--quiet", &reference]);
    let o = common::run_bounded(pull, Duration::from_secs(120), "podman pull");
    assert!(
        o.status.success(),
        "podman pull {reference}: {}",
        stderr(&o)
    );
    let r = podman.run(&reference, None, &[]).success();
    assert_eq!(r.stdout.lines().next(), Some(GREETING), "{}", r.describe());
}

#[test]
fn push_to_s3_refuses_bad_input_and_names_what_failed() {
    if !require(&["garage"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/golden:1.0");
    let g = Garage::start(&work.join("garage"));

    // A wrong secret key: exit 1, naming the key, never the secret.
    let wrong = "f".repeat(64);
    let mut c = push_cmd(&g, &layout, "s3://localhost/golden:1.0", &[]);
    c.env("AWS_SECRET_ACCESS_KEY", &wrong);
    let o = output_of(&mut c);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&g.key_id) && err.contains("wrong secret key"),
        "{err}"
    );
    assert!(!err.contains(&wrong) && !String::from_utf8_lossy(&o.stdout).contains(&wrong));
    assert_eq!(err.trim().lines().count(), 1, "one error line: {err}");

    // A missing bucket: exit 1, naming it.
    let o = push(&g, &layout, "s3://no-such-bucket/golden:1.0", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bucket 'no-such-bucket' does not exist"),
        "{err}"
    );

    // Names and tags that try to leave their place: exit 2, nothing sent.
    for dest in [
        "s3://localhost/../x:1.0",
        "s3://localhost/a/../../b:1.0",
        "s3://localhost/golden:..",
        "s3://localhost/golden:../../x",
        "s3://localhost/../..//golden:1.0",
        "s3://localhost/",
        "s3://Bad_Bucket/golden:1.0",
    ] {
        let o = push(&g, &layout, dest, &[]);
        assert_eq!(o.status.code(), Some(2), "{dest}: {}", stderr(&o));
    }
    // No access key at all: a setup error (exit 2).
    let mut c = push_cmd(&g, &layout, "s3://localhost/golden:1.0", &[]);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let o = output_of(&mut c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("AWS_ACCESS_KEY_ID"), "{}", stderr(&o));
    // S3 flags for a registry destination: exit 2.
    let o = output_of(nixoci().arg("push").arg(&layout).args([
        "127.0.0.1:1/x:1",
        "--s3-region",
        "garage",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = output_of(nixoci().arg("push").arg(&layout).args([
        "127.0.0.1:1/x:1",
        "--refresh-after",
        "1s",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--refresh-after"), "{}", stderr(&o));
    let o = output_of(&mut push_cmd(
        &g,
        &layout,
        "s3://localhost/golden:1.0",
        &["--refresh-after", "1"],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Nothing of the bucket was written by any of these.
    assert!(snapshot(&g).is_empty(), "{:?}", snapshot(&g));

    // A profile from the shared files works as the environment does.
    let aws = work.join("aws");
    fs::create_dir_all(&aws).unwrap();
    fs::write(
        aws.join("credentials"),
        format!(
            "[other]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            g.key_id, g.secret
        ),
    )
    .unwrap();
    fs::write(
        aws.join("config"),
        format!(
            "[profile other]\nregion = garage\nendpoint_url = {}\n",
            g.endpoint()
        ),
    )
    .unwrap();
    let mut c = push_cmd(&g, &layout, "s3://localhost/golden:1.0", &[]);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .env("AWS_PROFILE", "other")
        .env("AWS_SHARED_CREDENTIALS_FILE", aws.join("credentials"))
        .env("AWS_CONFIG_FILE", aws.join("config"));
    let o = output_of(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_pulls(&g, "golden:1.0", &layout, work);
}

/// A small xorshift generator, seeded from the kernel.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let uuid = fs::read("/proc/sys/kernel/random/uuid").expect("a random UUID");
        let seed = uuid.iter().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The digest `app:TAG` points at through the web endpoint, if any.
fn tag_digest(g: &Garage, name_tag: &str) -> Option<String> {
    let (repo, tag) = name_tag.rsplit_once(':').unwrap();
    let (status, _, body) = g.web_get(&format!("/v2/{repo}/manifests/{tag}"));
    (status == 200).then(|| common::sha256_digest(&body))
}

#[test]
fn a_push_killed_anywhere_leaves_every_tag_pullable_and_a_rerun_completes_it() {
    if !require(&["garage", "skopeo"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let a = golden_layout(&work.join("a"), "example.org/app:a");
    let b = big_layout(&work.join("b"), 24 << 20, "example.org/app:b");
    let (a_root, a_blobs) = layout_digests(&a);
    let (b_root, b_blobs) = layout_digests(&b);
    let g = Garage::start(&work.join("garage"));
    // v1 and v2 are image A; the killed pushes move v2 to image B.
    for tag in ["v1", "v2"] {
        let o = push(&g, &a, &format!("s3://localhost/app:{tag}"), &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let bucket = g.bucket("s3://localhost");
    let b_only: Vec<&String> = b_blobs.iter().filter(|h| !a_blobs.contains(h)).collect();
    let args = ["--jobs", "2", "--chunk-size", "5M"];

    // Back to the start: v2 on A, B's objects gone.
    let reset = || {
        if tag_digest(&g, "app:v2").as_deref() != Some(a_root.as_str()) {
            let o = push(&g, &a, "s3://localhost/app:v2", &[]);
            assert!(o.status.success(), "{}", stderr(&o));
        }
        for hex in &b_only {
            for kind in ["blobs", "manifests"] {
                bucket
                    .delete(&format!("v2/app/{kind}/sha256:{hex}"))
                    .expect("deleting B's objects");
            }
        }
    };
    // How long a whole push takes: the kill points fall within it.
    let start = Instant::now();
    let o = push(&g, &b, "s3://localhost/app:v2", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let window = start.elapsed();
    reset();

    let mut rng = Rng::new();
    let seed = rng.0;
    let (mut kills, mut finished, mut log) = (0, 0, Vec::new());
    for round in 0..40 {
        if kills >= 12 {
            break;
        }
        let delay = Duration::from_millis(rng.below(window.as_millis() as u64 + 1));
        let mut cmd = push_cmd(&g, &b, "s3://localhost/app:v2", &args);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("starting nixoci push");
        while start.elapsed() < delay {
            if child.try_wait().expect("waiting").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let outcome = match child.try_wait().expect("waiting") {
            Some(status) => {
                assert!(status.success(), "round {round}: the push failed");
                finished += 1;
                "finished"
            }
            None => {
                // SIGKILL, by PID.
                child.kill().expect("killing the push");
                child.wait().expect("reaping the push");
                kills += 1;
                "killed"
            }
        };
        log.push(format!("round {round}: {outcome} at {delay:?}"));
        let context = format!("seed {seed}: {}", log.join(", "));

        // v1 is untouched; v2 is image A or image B, whole either way.
        assert_eq!(
            tag_digest(&g, "app:v1").as_deref(),
            Some(a_root.as_str()),
            "{context}"
        );
        assert_pulls(&g, "app:v1", &a, work);
        match tag_digest(&g, "app:v2") {
            Some(d) if d == a_root => assert_pulls(&g, "app:v2", &a, work),
            Some(d) if d == b_root => assert_pulls(&g, "app:v2", &b, work),
            other => panic!("v2 points at {other:?}; {context}"),
        }
        let (_, _, list) = g.web_get("/v2/app/tags/list");
        assert!(
            list.is_empty() || list == br#"{"name":"app","tags":["v1","v2"]}"#,
            "{}; {context}",
            String::from_utf8_lossy(&list)
        );

        reset();
    }
    assert!(
        kills >= 10,
        "only {kills} of the pushes were killed ({finished} finished): {}",
        log.join(", ")
    );

    // One more kill, then a run to the end completes what it left.
    let mut child = push_cmd(&g, &b, "s3://localhost/app:v2", &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting nixoci push");
    std::thread::sleep(Duration::from_millis(
        rng.below(window.as_millis() as u64 / 2),
    ));
    let _ = child.kill();
    child.wait().expect("reaping the push");
    let o = push(&g, &b, "s3://localhost/app:v2", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tag_digest(&g, "app:v2").as_deref(), Some(b_root.as_str()));
    assert_pulls(&g, "app:v2", &b, work);
    assert_pulls(&g, "app:v1", &a, work);
    let (_, _, list) = g.web_get("/v2/app/tags/list");
    assert_eq!(list, br#"{"name":"app","tags":["v1","v2"]}"#);
    eprintln!(
        "a whole push: {window:?}; seed {seed}: {kills} kills, {finished} finished: {}",
        log.join(", ")
    );
}

/// Docker pulls through the web endpoint as it is (no Docker-Content-Digest
/// header) and runs the host's platform.
#[test]
fn docker_pulls_a_pushed_image_through_the_web_endpoint() {
    if !require(&["nix", "busybox", "garage"]) {
        return;
    }
    let Some(docker) = common::runtime::Docker::start() else {
        return;
    };
    let tmp = tempdir();
    let work = tmp.path();
    let layout = work.join("hello.oci");
    build_hello_image(hello(), &layout);
    let g = Garage::start(&work.join("garage"));
    let o = push(&g, &layout, "s3://localhost/hello:1.0", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = format!("{}/hello:1.0", g.web_addr());
    let mut pull = docker.command();
    pull.args(["pull", "--quiet", &reference]);
    let o = common::run_bounded(pull, Duration::from_secs(120), "docker pull");
    assert!(
        o.status.success(),
        "docker pull {reference}: {}",
        stderr(&o)
    );
    let r = docker.run(&reference, None, &[]).success();
    assert_eq!(r.stdout.lines().next(), Some(GREETING), "{}", r.describe());
}

/// The nginx front of the README: Garage's web endpoint behind it, the
/// metadata push writes sent back as `Docker-Content-Digest`.
#[test]
fn a_web_front_answers_docker_content_digest_from_the_metadata() {
    if !require(&[
        "garage",
        "skopeo",
        common::publish::nginx_binary().to_str().unwrap(),
    ]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/golden:1.0");
    let g = Garage::start(&work.join("garage"));
    let o = push(&g, &layout, "s3://localhost/golden:1.0", &["--json"]);
    let report = ok_json(&o, "nixoci push");
    let snippet = work.join("front.conf");
    fs::write(
        &snippet,
        format!(
            "location /v2/ {{
    proxy_pass http://127.0.0.1:{};
    proxy_set_header Host localhost;
    add_header Docker-Content-Digest $upstream_http_x_amz_meta_docker_content_digest always;
    add_header Docker-Distribution-API-Version registry/2.0 always;
}}
",
            g.web_port
        ),
    )
    .unwrap();
    let nginx = common::publish::Nginx::start(&work.join("nginx"), &snippet);
    let get = |path: &str| {
        let (status, headers, _) =
            common::garage::http_get(nginx.port, &format!("127.0.0.1:{}", nginx.port), path);
        assert_eq!(status, 200, "{path}: {headers:?}");
        headers
    };
    let root = report["digest"].as_str().unwrap();
    let layer = report["blobs"][0]["digest"].as_str().unwrap();
    for (path, digest) in [
        ("/v2/golden/manifests/1.0".to_string(), root),
        (format!("/v2/golden/manifests/{root}"), root),
        (format!("/v2/golden/blobs/{layer}"), layer),
    ] {
        let h = get(&path);
        assert_eq!(header(&h, "docker-content-digest"), Some(digest), "{path}");
    }
    let h = get("/v2/");
    assert_eq!(
        header(&h, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let dest = work.join("pulled");
    let o = skopeo_pull(&format!("127.0.0.1:{}/golden:1.0", nginx.port), None, &dest);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(layout_digests(&dest), layout_digests(&layout));
}

/// `nixoci ARGS… --json` with the Garage's key and endpoint.
fn on_garage(g: &Garage, args: &[&str]) -> serde_json::Value {
    let mut c = nixoci();
    g.env(&mut c).args(args).arg("--json");
    ok_json(&output_of(&mut c), &args.join(" "))
}

/// The keys of a gc report's list.
fn gc_keys(list: &serde_json::Value) -> BTreeSet<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|o| o["key"].as_str().expect("a key").to_owned())
        .collect()
}

#[test]
fn a_push_refreshes_the_old_objects_it_relies_on_so_a_concurrent_gc_keeps_them() {
    if !require(&["garage"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/golden:1.0");
    let g = Garage::start(&work.join("garage"));
    let b = g.bucket("s3://localhost");
    // Ages by the server's clock, in whole seconds: far enough apart that
    // a loaded machine does not blur them.
    let old = Duration::from_secs(8);
    let grace = "5s";

    // v1 pushed and untagged: its blobs and manifests are unreachable.
    on_garage(&g, &["push", path_str(&layout), "s3://localhost/hello:v1"]);
    on_garage(&g, &["untag", "s3://localhost", "hello:v1"]);
    let needed: BTreeSet<String> = snapshot(&g)
        .into_iter()
        .map(|(k, _, _)| k)
        .filter(|k| k.contains("/blobs/") || k.contains("/manifests/sha256:"))
        .collect();
    assert!(needed.len() > 3, "{needed:?}");

    // The same image as v3, once they are old: each is copied onto itself
    // before the tag goes up, and says so.
    std::thread::sleep(old);
    b.list("v2/").expect("listing");
    let start = b.server_time().expect("the server's Date");
    let report = on_garage(
        &g,
        &[
            "push",
            path_str(&layout),
            "s3://localhost/hello:v3",
            "--refresh-after",
            "1s",
        ],
    );
    assert_eq!(report["uploaded"], 0, "{report}");
    assert_eq!(report["refreshed"], needed.len(), "{report}");
    let blobs = report["blobs"].as_array().unwrap();
    assert!(blobs
        .iter()
        .all(|b| b["status"] == "skipped" && b["refreshed"] == true));
    assert_eq!(report["skipped"], blobs.len());
    for m in report["manifests"].as_array().unwrap() {
        let by_digest = m["reference"].as_str().unwrap().starts_with("sha256:");
        assert_eq!(m["refreshed"] == true, by_digest, "{m}");
    }
    let times: BTreeMap<String, std::time::SystemTime> =
        snapshot(&g).into_iter().map(|(k, _, t)| (k, t)).collect();
    for k in &needed {
        assert!(
            times[k] >= start,
            "{k} not refreshed: {:?} < {start:?}",
            times[k]
        );
    }
    // The copy keeps what the web endpoint serves.
    let root = report["digest"].as_str().unwrap();
    let (status, h, _) = g.web_get(&format!("/v2/hello/manifests/{root}"));
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(header(&h, "x-amz-meta-docker-content-digest"), Some(root));
    let layer = blobs[0]["digest"].as_str().unwrap();
    let (status, h, _) = g.web_get(&format!("/v2/hello/blobs/{layer}"));
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("application/octet-stream"));
    assert_eq!(header(&h, "x-amz-meta-docker-content-digest"), Some(layer));

    // A gc that listed the tags before v3's went up (v3 untagged here) and
    // has a grace longer than --refresh-after keeps all of it.
    on_garage(&g, &["untag", "s3://localhost", "hello:v3"]);
    let r = on_garage(&g, &["gc", "s3://localhost", "--grace", grace]);
    assert_eq!(r["removed"], serde_json::json!([]), "{r}");
    assert_eq!(gc_keys(&r["kept"]), needed, "{r}");

    // Without the refresh (the default 30m against objects seconds old)
    // the same race loses them: the push skips them as they are, and the
    // gc deletes what the tag v4 needs.
    std::thread::sleep(old);
    let report = on_garage(&g, &["push", path_str(&layout), "s3://localhost/hello:v4"]);
    assert_eq!(report.get("refreshed"), None, "{report}");
    assert!(report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["status"] == "skipped" && b.get("refreshed").is_none()));
    on_garage(&g, &["untag", "s3://localhost", "hello:v4"]);
    let r = on_garage(&g, &["gc", "s3://localhost", "--grace", grace]);
    assert_eq!(gc_keys(&r["removed"]), needed, "{r}");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
