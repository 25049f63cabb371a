//! `nixoci untag` and `nixoci gc` on a static registry tree export-static
//! wrote and on a real Garage bucket `push` filled: two
//! repositories and three tags sharing blobs, collected down to exactly
//! what the remaining tags reach, pulled back with skopeo through nginx
//! and through Garage's web endpoint.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::garage::{Garage, WEB_BUCKET};
use common::publish::*;
use common::*;
use nixoci::publish::client::Body;
use serde_json::Value;

/// The golden fixture built again into `layout` as tag `2.0`, with another
/// config: its layers are 1.0's.
fn add_second_image(work: &Path, layout: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    run(nixoci()
        .args([
            "build",
            "--platform",
            "linux/amd64=/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello",
            "--platform",
            "linux/arm64=/nix/store/2c3d4f5g6h7i8j9k0l1m2n3p4q5r6s7v-hello",
            "--env",
            "VERSION=2",
            "--tag",
            "2.0",
        ])
        .arg("--closure-json")
        .arg(root.join("closure.json"))
        .arg("--store-root")
        .arg(root.join("root"))
        .arg("-o")
        .arg(layout)
        .env("XDG_CACHE_HOME", work.join("cache")))
    .success();
}

/// The digests of the image `tag` of `layout`: its index and manifests,
/// and its configs and layers.
struct Image {
    root: String,
    manifests: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

impl Image {
    fn read(layout: &Path, tag: &str) -> Image {
        let json = |digest: &str| -> Value {
            let hex = digest.trim_start_matches("sha256:");
            serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).expect("blob"))
                .expect("JSON")
        };
        let index: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
                .expect("JSON");
        let root = array_of(&index["manifests"])
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .map(|m| str_of(&m["digest"]).to_owned())
            .expect("the tag in index.json");
        let mut manifests = BTreeSet::from([root.clone()]);
        let mut blobs = BTreeSet::new();
        for m in array_of(&json(&root)["manifests"]) {
            let digest = str_of(&m["digest"]);
            manifests.insert(digest.to_owned());
            let manifest = json(digest);
            blobs.insert(str_of(&manifest["config"]["digest"]).to_owned());
            for l in array_of(&manifest["layers"]) {
                blobs.insert(str_of(&l["digest"]).to_owned());
            }
        }
        Image {
            root,
            manifests,
            blobs,
        }
    }

    /// Its keys in the repository `repository` of a tree.
    fn keys(&self, repository: &str) -> BTreeSet<String> {
        let m = self
            .manifests
            .iter()
            .map(|d| format!("v2/{repository}/manifests/{d}"));
        let b = self
            .blobs
            .iter()
            .map(|d| format!("v2/{repository}/blobs/{d}"));
        m.chain(b).collect()
    }

    fn digests(&self) -> BTreeSet<String> {
        self.manifests.union(&self.blobs).cloned().collect()
    }
}

/// The files of `tree` under `under`, as keys relative to the tree.
fn files(tree: &Path, under: &str) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under the tree");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(tree, &tree.join(under), &mut out);
    out
}

/// Sets the modification time of every file under `dir` to `ago` before
/// now: what was exported long ago. (Hard links share it with the
/// layout's blobs.)
fn age_files(dir: &Path, ago: Duration) {
    // The test stands in for the clock of a past export.
    #[allow(clippy::disallowed_methods)]
    let when = SystemTime::now() - ago;
    for key in files(dir, "") {
        let f = fs::File::open(dir.join(&key)).expect("opening a file");
        f.set_modified(when).expect("setting a file's mtime");
    }
}

fn export(layout: &Path, tag: &str, repository: &str, as_tag: &str, tree: &Path) {
    run(nixoci()
        .arg("export-static")
        .arg(format!("{}:{tag}", layout.display()))
        .args(["--repository", repository, "--tag", as_tag, "-o"])
        .arg(tree))
    .success();
}

fn gc(tree: &Path, args: &[&str]) -> Value {
    run(nixoci().arg("gc").arg(tree).args(args).arg("--json"))
        .success()
        .json()
}

fn keys_of(list: &Value) -> BTreeSet<String> {
    array_of(list)
        .iter()
        .map(|o| str_of(&o["key"]).to_owned())
        .collect()
}

/// Pulls `reference` from nginx with skopeo and checks it is `image`.
fn assert_pulls(port: u16, reference: &str, image: &Image, work: &Path) {
    assert_pulls_from(&format!("127.0.0.1:{port}"), reference, image, work)
}

/// Pulls `reference` from the registry at `addr` with skopeo and checks it
/// is `image`.
fn assert_pulls_from(addr: &str, reference: &str, image: &Image, work: &Path) {
    let dest = work.join(format!("pulled-{}", reference.replace(['/', ':'], "_")));
    let _ = fs::remove_dir_all(&dest);
    let o = skopeo_pull(&format!("{addr}/{reference}"), None, &dest);
    assert!(o.status.success(), "pulling {reference}: {}", stderr(&o));
    let (root, blobs) = layout_digests(&dest);
    assert_eq!(root, image.root, "{reference}");
    let want: BTreeSet<String> = image
        .digests()
        .iter()
        .map(|d| d.trim_start_matches("sha256:").to_owned())
        .collect();
    assert_eq!(blobs.into_iter().collect::<BTreeSet<_>>(), want);
}

/// A tree with hello:1.0, hello:2.0 (the same layers, another config) and
/// team/hello:latest (1.0 again), every file two hours old.
struct Fixture {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    layout: PathBuf,
    tree: PathBuf,
    one: Image,
    two: Image,
}

fn fixture() -> Fixture {
    let tmp = tempdir();
    let work = tmp.path().to_owned();
    let layout = golden_layout(&work, "1.0");
    add_second_image(&work, &layout);
    let tree = work.join("site");
    export(&layout, "1.0", "hello", "1.0", &tree);
    export(&layout, "2.0", "hello", "2.0", &tree);
    export(&layout, "1.0", "team/hello", "latest", &tree);
    age_files(&tree, Duration::from_secs(7200));
    let one = Image::read(&layout, "1.0");
    let two = Image::read(&layout, "2.0");
    assert_eq!(
        one.blobs.len() - one.blobs.intersection(&two.blobs).count(),
        2,
        "the images differ in their two configs only"
    );
    Fixture {
        _tmp: tmp,
        work,
        layout,
        tree,
        one,
        two,
    }
}

#[test]
fn untag_and_gc_on_a_tree_remove_exactly_the_unreachable() {
    if !require(&["skopeo"]) || !(Path::new(&nginx_binary()).is_file() || require(&["nginx"])) {
        return;
    }
    let Fixture {
        _tmp,
        work,
        layout,
        tree,
        one,
        two,
    } = fixture();
    let work = work.as_path();
    let before = files(&tree, "v2");
    let mut want = one.keys("hello");
    want.extend(two.keys("hello"));
    want.extend(one.keys("team/hello"));
    for k in [
        "hello/manifests/1.0",
        "hello/manifests/2.0",
        "team/hello/manifests/latest",
    ] {
        want.insert(format!("v2/{k}"));
    }
    for k in ["index.html", "hello/tags/list", "team/hello/tags/list"] {
        want.insert(format!("v2/{k}"));
    }
    assert_eq!(before, want, "the tree as exported");

    // untag: the tag and its line in tags/list go, and the metadata says so.
    let r = run(nixoci()
        .arg("untag")
        .arg(&tree)
        .args(["hello:1.0", "--json"]))
    .success()
    .json();
    assert_eq!(r["digest"], one.root.as_str());
    assert_eq!(r["tags"], serde_json::json!(["2.0"]));
    assert_eq!(
        fs::read_to_string(tree.join("v2/hello/tags/list")).expect("tags/list"),
        r#"{"name":"hello","tags":["2.0"]}"#
    );
    let after_untag = files(&tree, "v2");
    assert_eq!(
        before.difference(&after_untag).collect::<Vec<_>>(),
        ["v2/hello/manifests/1.0"]
    );
    let objects = fs::read_to_string(tree.join("objects.json")).expect("objects.json");
    assert!(!objects.contains("v2/hello/manifests/1.0\""), "{objects}");
    let nginx = fs::read_to_string(tree.join("nginx.conf")).expect("nginx.conf");
    assert!(!nginx.contains("/v2/hello/manifests/1.0\""), "{nginx}");
    assert!(nginx.contains("/v2/hello/manifests/2.0\""), "{nginx}");

    // A blob uploaded a moment ago, not yet tagged.
    let fresh = format!("v2/hello/blobs/{}", sha256_digest(b"fresh"));
    fs::write(tree.join(&fresh), b"fresh").expect("writing a fresh blob");

    // What hello:1.0 alone reached in hello: its index, its two manifests
    // and its two configs.
    let unreachable: BTreeSet<String> = one
        .keys("hello")
        .difference(&two.keys("hello"))
        .cloned()
        .collect();
    assert_eq!(unreachable.len(), 5);

    // --dry-run lists what would go, with sizes, and deletes nothing.
    let snap = snapshot(&tree);
    let dry = gc(&tree, &["--dry-run", "--grace", "0s"]);
    let mut dry_want = unreachable.clone();
    dry_want.insert(fresh.clone());
    assert_eq!(keys_of(&dry["removed"]), dry_want);
    assert!(array_of(&dry["removed"])
        .iter()
        .all(|o| o["size"].as_u64().is_some_and(|s| s > 0)));
    assert_eq!(snapshot(&tree), snap, "a dry run changes nothing");
    let text = run(nixoci()
        .arg("gc")
        .arg(&tree)
        .args(["--dry-run", "--grace", "0s"]))
    .success();
    for key in &dry_want {
        assert!(
            text.stdout.contains(&format!("\t{key}\n")),
            "{}",
            text.stdout
        );
    }
    assert_eq!(snapshot(&tree), snap, "a dry run changes nothing");

    // gc with the default grace: exactly the unreachable old objects go,
    // the fresh one stays.
    let r = gc(&tree, &[]);
    assert_eq!(keys_of(&r["removed"]), unreachable, "{r}");
    assert_eq!(keys_of(&r["kept"]), BTreeSet::from([fresh.clone()]));
    assert_eq!(
        (r["removedManifests"].as_u64(), r["removedBlobs"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(r["tags"], 2);
    assert_eq!(
        array_of(&r["storeRemoved"]).len(),
        0,
        "team/hello still links hello:1.0's blobs"
    );
    let after_gc = files(&tree, "v2");
    let mut expected: BTreeSet<String> = after_untag.difference(&unreachable).cloned().collect();
    expected.insert(fresh.clone());
    assert_eq!(after_gc, expected);

    // The metadata is what export-static writes for the remaining tags.
    let fresh_tree = work.join("fresh-site");
    export(&layout, "2.0", "hello", "2.0", &fresh_tree);
    export(&layout, "1.0", "team/hello", "latest", &fresh_tree);
    for name in ["objects.json", "nginx.conf", "Caddyfile"] {
        let abs = |t: &Path| {
            fs::canonicalize(t)
                .expect("canonical")
                .display()
                .to_string()
        };
        let got = fs::read_to_string(tree.join(name)).expect("reading");
        let want = fs::read_to_string(fresh_tree.join(name)).expect("reading");
        assert_eq!(
            got.replace(&abs(&tree), "TREE"),
            want.replace(&abs(&fresh_tree), "TREE"),
            "{name}"
        );
    }

    // Every remaining tag still pulls; the untagged one does not.
    {
        let server = Nginx::start(&work.join("nginx"), &tree.join("nginx.conf"));
        assert_pulls(server.port, "hello:2.0", &two, work);
        assert_pulls(server.port, "team/hello:latest", &one, work);
        let o = skopeo_pull(
            &format!("127.0.0.1:{}/hello:1.0", server.port),
            None,
            &work.join("pulled-gone"),
        );
        assert!(!o.status.success(), "hello:1.0 still pulls");
    }

    // The last tag of team/hello: the repository goes whole, and the blob
    // store loses the copies no repository links any more.
    run(nixoci().arg("untag").arg(&tree).arg("team/hello:latest")).success();
    assert!(!tree.join("v2/team/hello/tags/list").exists());
    let r = gc(&tree, &["--grace", "0s"]);
    let mut gone = one.keys("team/hello");
    gone.insert(fresh.clone());
    assert_eq!(keys_of(&r["removed"]), gone);
    let only_one: BTreeSet<String> = one
        .digests()
        .difference(&two.digests())
        .map(|d| format!(".nixoci/blobs/sha256/{}", d.trim_start_matches("sha256:")))
        .collect();
    assert_eq!(keys_of(&r["storeRemoved"]), only_one);
    let freed: u64 = array_of(&r["storeRemoved"])
        .iter()
        .map(|o| o["size"].as_u64().expect("a size"))
        .sum();
    assert_eq!(r["bytesFreed"].as_u64(), Some(freed));
    assert!(freed > 0);
    assert!(!tree.join("v2/team").exists(), "empty folders go too");
    let store: BTreeSet<String> = files(&tree, ".nixoci/blobs")
        .into_iter()
        .map(|k| k.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    let two_hex: BTreeSet<String> = two
        .digests()
        .iter()
        .map(|d| d.trim_start_matches("sha256:").to_owned())
        .collect();
    assert_eq!(store, two_hex, "the blob store holds hello:2.0's only");
    let mut left = two.keys("hello");
    for k in [
        "v2/index.html",
        "v2/hello/tags/list",
        "v2/hello/manifests/2.0",
    ] {
        left.insert(k.to_owned());
    }
    assert_eq!(files(&tree, "v2"), left);
    let objects: Value =
        serde_json::from_slice(&fs::read(tree.join("objects.json")).expect("objects.json"))
            .expect("JSON");
    assert_eq!(keys_of(&objects), left, "objects.json lists what is left");
    let server = Nginx::start(&work.join("nginx-2"), &tree.join("nginx.conf"));
    assert_pulls(server.port, "hello:2.0", &two, work);
}

#[test]
fn a_damaged_tag_stops_gc_before_it_deletes_anything() {
    let Fixture {
        _tmp, tree, two, ..
    } = fixture();
    run(nixoci().arg("untag").arg(&tree).arg("hello:1.0")).success();
    // One of hello:2.0's platform manifests, missing, then damaged.
    let manifest = two
        .manifests
        .iter()
        .find(|d| **d != two.root)
        .expect("a platform manifest");
    let path = tree.join(format!("v2/hello/manifests/{manifest}"));
    let bytes = fs::read(&path).expect("reading the manifest");
    fs::remove_file(&path).expect("removing the manifest");
    let snap = snapshot(&tree);
    let r = run(nixoci().arg("gc").arg(&tree).args(["--grace", "0s"])).expect_code(1);
    assert!(
        r.stderr.contains("tag hello:2.0 cannot be read"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("manifest {manifest} is missing")),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_eq!(snapshot(&tree), snap, "nothing deleted");
    let r = run(nixoci()
        .arg("gc")
        .arg(&tree)
        .args(["--grace", "0s", "--json"]))
    .expect_code(1);
    let e = r.json();
    assert_eq!(e["error"]["kind"], "failed", "{e}");
    assert!(str_of(&e["error"]["message"]).contains("tag hello:2.0 cannot be read"));
    assert_eq!(snapshot(&tree), snap, "nothing deleted");

    let mut damaged = bytes.clone();
    damaged[0] = b' ';
    fs::write(&path, &damaged).expect("writing the manifest");
    let snap = snapshot(&tree);
    let r = run(nixoci().arg("gc").arg(&tree).args(["--grace", "0s"])).expect_code(1);
    assert!(
        r.stderr.contains("tag hello:2.0 cannot be read"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hashes to"), "{}", r.stderr);
    assert_eq!(snapshot(&tree), snap, "nothing deleted");

    // Repaired, the same gc goes through.
    fs::write(&path, &bytes).expect("writing the manifest");
    let r = gc(&tree, &["--grace", "0s"]);
    assert_eq!(r["removedManifests"], 3, "{r}");
}

#[test]
fn gc_and_untag_refuse_what_they_cannot_work_on() {
    let tmp = tempdir();
    let work = tmp.path();
    run(nixoci().arg("gc").arg(work)).refused("neither an OCI layout");
    let file = work.join("file");
    fs::write(&file, "x").expect("writing");
    run(nixoci().arg("gc").arg(&file)).refused("neither an OCI layout");
    run(nixoci().arg("untag").arg(work).arg("hello:1.0")).refused("neither an OCI layout");

    let layout = golden_layout(work, "1.0");
    run(nixoci().arg("untag").arg(&layout).arg("hello:1.0")).refused("an OCI layout");
    run(nixoci()
        .arg("untag")
        .arg(format!("oci:{}:1.0", layout.display()))
        .arg("hello:1.0"))
    .refused("an OCI layout; untag works on");
    let tree = work.join("site");
    export(&layout, "1.0", "hello", "1.0", &tree);
    let snap = snapshot(&tree);
    run(nixoci().arg("untag").arg(&tree).arg("hello:2.0")).refused("no tag hello:2.0");
    run(nixoci().arg("untag").arg(&tree).arg("other:1.0")).refused("no tag other:1.0");
    for bad in ["hello", "Hello:1.0", "../x:1.0", "hello:a/b"] {
        run(nixoci().arg("untag").arg(&tree).arg(bad)).refused("NAME:TAG");
    }
    assert_eq!(snapshot(&tree), snap);
    // A layout is still collected as a layout.
    let r = run(nixoci().arg("gc").arg(&layout).arg("--json"))
        .success()
        .json();
    assert_eq!(r["removed"], serde_json::json!([]));
}

/// The keys under `v2/` of the bucket.
fn bucket_keys(b: &nixoci::publish::s3::Bucket) -> BTreeSet<String> {
    b.list("v2/")
        .expect("listing the bucket")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// `nixoci ARGS… --json` with the test key and endpoint.
fn on_bucket(g: &Garage, args: &[&str]) -> Run {
    let mut cmd = nixoci();
    g.env(&mut cmd).args(args);
    run(&mut cmd)
}

#[test]
fn untag_and_gc_on_a_garage_bucket_remove_exactly_the_unreachable() {
    if !require(&["garage", "skopeo"]) {
        return;
    }
    let Fixture {
        _tmp,
        work,
        layout,
        tree,
        one,
        two,
    } = fixture();
    let work = work.as_path();
    let g = Garage::start(&work.join("garage"));
    let target = format!("s3://{WEB_BUCKET}");
    let b = g.bucket(&target);
    // The same three tags pushed: the bucket holds the tree's keys.
    for (tag, dest) in [
        ("1.0", "hello:1.0"),
        ("2.0", "hello:2.0"),
        ("1.0", "team/hello:latest"),
    ] {
        on_bucket(
            &g,
            &[
                "push",
                &format!("{}:{tag}", layout.display()),
                &format!("{target}/{dest}"),
            ],
        )
        .success();
    }
    let before = bucket_keys(&b);
    assert_eq!(before, files(&tree, "v2"));

    let r = on_bucket(&g, &["untag", &target, "hello:1.0", "--json"])
        .success()
        .json();
    assert_eq!(r["digest"], one.root.as_str());
    let (status, headers, body) = g.web_get("/v2/hello/tags/list");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, r#"{"name":"hello","tags":["2.0"]}"#)
    );
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/json"));
    let after_untag = bucket_keys(&b);
    assert_eq!(
        before.difference(&after_untag).collect::<Vec<_>>(),
        ["v2/hello/manifests/1.0"]
    );
    let unreachable: BTreeSet<String> = one
        .keys("hello")
        .difference(&two.keys("hello"))
        .cloned()
        .collect();

    // Everything was uploaded a moment ago: the default grace keeps it.
    let r = on_bucket(&g, &["gc", &target, "--json"]).success().json();
    assert_eq!(keys_of(&r["kept"]), unreachable, "{r}");
    assert_eq!(r["removed"], serde_json::json!([]));
    assert_eq!(bucket_keys(&b), after_untag);

    // Some seconds later, a blob uploaded a moment ago (by the server's
    // clock) is kept by a grace of 5 s; the rest is older.
    std::thread::sleep(Duration::from_secs(8));
    let fresh = format!("v2/hello/blobs/{}", sha256_digest(b"fresh"));
    b.put(&fresh, "application/octet-stream", &Body::Bytes(b"fresh"))
        .expect("uploading");
    let r = on_bucket(&g, &["gc", &target, "--grace", "5s", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(keys_of(&r["removed"]), unreachable, "{r}");
    assert_eq!(keys_of(&r["kept"]), BTreeSet::from([fresh.clone()]));
    let mut listed = after_untag.clone();
    listed.insert(fresh.clone());
    assert_eq!(bucket_keys(&b), listed, "a dry run deletes nothing");

    let r = on_bucket(&g, &["gc", &target, "--grace", "5s", "--json"])
        .success()
        .json();
    assert_eq!(keys_of(&r["removed"]), unreachable, "{r}");
    assert_eq!(keys_of(&r["kept"]), BTreeSet::from([fresh.clone()]));
    assert_eq!(r["bytesFreed"], r["removedBytes"]);
    assert_eq!(r["storeRemoved"], serde_json::json!([]));
    let expected: BTreeSet<String> = listed.difference(&unreachable).cloned().collect();
    assert_eq!(bucket_keys(&b), expected);

    // Every remaining tag pulls through the web endpoint; the untagged
    // one does not.
    assert_pulls_from(&g.web_addr(), "hello:2.0", &two, work);
    assert_pulls_from(&g.web_addr(), "team/hello:latest", &one, work);
    let o = skopeo_pull(
        &format!("{}/hello:1.0", g.web_addr()),
        None,
        &work.join("pulled-gone"),
    );
    assert!(!o.status.success(), "hello:1.0 still pulls");

    // A manifest of hello:2.0 gone: gc stops before deleting anything.
    let manifest = two
        .manifests
        .iter()
        .find(|d| **d != two.root)
        .expect("a platform manifest");
    b.delete(&format!("v2/hello/manifests/{manifest}"))
        .expect("deleting");
    let left = bucket_keys(&b);
    let r = on_bucket(&g, &["gc", &target, "--grace", "0s"]).expect_code(1);
    assert!(
        r.stderr.contains("tag hello:2.0 cannot be read"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("is missing"), "{}", r.stderr);
    assert_eq!(bucket_keys(&b), left, "nothing deleted");

    // The last tag of team/hello: its tags/list goes, then everything of
    // the repository once hello:2.0 is whole again.
    on_bucket(&g, &["untag", &target, "team/hello:latest"]).success();
    assert!(!bucket_keys(&b).contains("v2/team/hello/tags/list"));
    let bytes = fs::read(tree.join(format!("v2/hello/manifests/{manifest}"))).expect("reading");
    b.put(
        &format!("v2/hello/manifests/{manifest}"),
        "application/vnd.oci.image.manifest.v1+json",
        &Body::Bytes(&bytes),
    )
    .expect("uploading");
    // The server's Date has whole seconds: an object of this very second
    // is younger than any grace, even 0s.
    std::thread::sleep(Duration::from_secs(2));
    let r = on_bucket(&g, &["gc", &target, "--grace", "0s", "--json"])
        .success()
        .json();
    let mut gone = one.keys("team/hello");
    gone.insert(fresh);
    assert_eq!(keys_of(&r["removed"]), gone, "{r}");
    assert!(bucket_keys(&b).iter().all(|k| !k.starts_with("v2/team/")));
    assert_pulls_from(&g.web_addr(), "hello:2.0", &two, work);

    // Flags that name a bucket's endpoint are for buckets only.
    run(nixoci()
        .arg("gc")
        .arg(&tree)
        .args(["--s3-endpoint", &g.endpoint()]))
    .refused("for s3:// targets");
    run(nixoci().args(["gc", "s3://Not_A_Bucket"])).refused("s3://Not_A_Bucket");
}
