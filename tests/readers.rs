//! What every reader of a layout (`verify`, `push`, `export-static`)
//! refuses, run with the real binary: a symbolic link anywhere in the
//! layout (its blobs, `index.json`, `blobs/`), image indexes nested more
//! than `oci::MAX_NESTING` deep; and what `export-static` guarantees: every
//! blob's digest checked on its way into the tree, never a symlink in the
//! tree, and a failed export (a bad blob, a full disk) leaves no stub tree
//! and an existing tree as it was.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::publish::{big_layout, golden_layout};
use common::{nixoci, output_of, require, run_bounded, stderr};
use serde_json::{json, Value};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn read_json(p: &Path) -> Value {
    let bytes = fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// The first layer of the first platform of the layout's only image.
fn first_layer(layout: &Path) -> PathBuf {
    let index = read_json(&layout.join("index.json"));
    let root = index["manifests"][0]["digest"].as_str().expect("a digest");
    let image_index = read_json(&blob_path(layout, root));
    let manifest = image_index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest digest");
    let manifest = read_json(&blob_path(layout, manifest));
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("a layer digest");
    blob_path(layout, layer)
}

/// Everything under `dir`: each path with its kind and content (files by
/// content, symlinks by target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).expect("reading a directory") {
            let p = e.expect("an entry").path();
            let rel = p.strip_prefix(root).expect("under root").to_owned();
            let m = fs::symlink_metadata(&p).expect("lstat");
            if m.file_type().is_symlink() {
                let target = fs::read_link(&p).expect("readlink");
                out.insert(rel, format!("symlink -> {}", target.display()));
            } else if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                let bytes = fs::read(&p).expect("reading a file");
                out.insert(rel, format!("file {}", String::from_utf8_lossy(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[track_caller]
fn assert_no_symlinks(tree: &Path) {
    let links: Vec<_> = snapshot(tree)
        .into_iter()
        .filter(|(_, v)| v.starts_with("symlink"))
        .collect();
    assert!(
        links.is_empty(),
        "symlinks in {}: {links:?}",
        tree.display()
    );
}

#[track_caller]
fn expect_failure(o: &Output, code: i32, needle: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{what}: {err}");
    assert!(
        err.contains(needle),
        "{what}: expected '{needle}' in: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: one error line: {err}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn export(layout: &str, repository: &str, tree: &Path) -> Output {
    output_of(nixoci().args([
        "export-static",
        layout,
        "--repository",
        repository,
        "--tag",
        "1",
        "-o",
        s(tree),
    ]))
}

/// A tree made by exporting a layout unlike the golden one (so the blob
/// store holds none of its blobs).
fn existing_tree(work: &Path) -> PathBuf {
    let base_dir = work.join("base");
    fs::create_dir_all(&base_dir).expect("mkdir");
    let base = big_layout(&base_dir, 4096, "base:1");
    let tree = work.join("site");
    let o = export(s(&base), "base", &tree);
    assert!(o.status.success(), "exporting the base: {}", stderr(&o));
    tree
}

#[test]
fn a_blob_symlinked_out_of_the_layout_is_refused_everywhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/hello:1.0");
    // The outside file has the blob's very bytes: size and digest match,
    // only the symlink is wrong.
    let layer = first_layer(&layout);
    let outside = work.join("outside-file");
    fs::copy(&layer, &outside).expect("copying the layer out");
    fs::remove_file(&layer).expect("removing the layer");
    symlink(&outside, &layer).expect("symlinking the layer");
    let l = s(&layout);

    let o = output_of(nixoci().args(["verify", l]));
    expect_failure(&o, 1, "is a symbolic link", "verify");

    let fresh = work.join("fresh-site");
    let o = export(l, "hello", &fresh);
    expect_failure(&o, 1, "is a symbolic link", "export-static");
    assert!(!fresh.exists(), "a failed export left a tree");

    let tree = existing_tree(work);
    let before = snapshot(&tree);
    let o = export(l, "hello", &tree);
    expect_failure(&o, 1, "is a symbolic link", "export-static into a tree");
    assert_eq!(snapshot(&tree), before, "the existing tree changed");
    assert_no_symlinks(&tree);

    // Refused while reading the layout, before any connection (port 9 is
    // never contacted).
    let o = output_of(nixoci().args(["push", l, "127.0.0.1:9/hello:1"]));
    expect_failure(&o, 1, "is a symbolic link", "push");
}

#[test]
fn index_json_and_blobs_symlinked_out_of_the_layout_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/hello:1.0");
    let l = s(&layout);
    let outside = work.join("outside");
    fs::create_dir(&outside).expect("mkdir");

    // index.json
    fs::rename(layout.join("index.json"), outside.join("index.json")).expect("mv");
    symlink(outside.join("index.json"), layout.join("index.json")).expect("ln -s");
    let o = output_of(nixoci().args(["verify", l]));
    expect_failure(&o, 1, "index.json is a symbolic link", "verify");
    let o = export(l, "hello", &work.join("site"));
    expect_failure(&o, 1, "index.json is a symbolic link", "export-static");
    assert!(!work.join("site").exists());
    let o = output_of(nixoci().args(["push", l, "127.0.0.1:9/hello:1"]));
    expect_failure(&o, 1, "index.json is a symbolic link", "push");
    fs::remove_file(layout.join("index.json")).expect("rm");
    fs::rename(outside.join("index.json"), layout.join("index.json")).expect("mv");

    // blobs/ as a whole
    fs::rename(layout.join("blobs"), outside.join("blobs")).expect("mv");
    symlink(outside.join("blobs"), layout.join("blobs")).expect("ln -s");
    let o = output_of(nixoci().args(["verify", l]));
    expect_failure(&o, 1, "blobs is a symbolic link", "verify");
    let o = export(l, "hello", &work.join("site"));
    expect_failure(&o, 1, "blobs is a symbolic link", "export-static");
    assert!(!work.join("site").exists());
    let o = output_of(nixoci().args(["push", l, "127.0.0.1:9/hello:1"]));
    expect_failure(&o, 1, "blobs is a symbolic link", "push");
    fs::remove_file(layout.join("blobs")).expect("rm");
    fs::rename(outside.join("blobs"), layout.join("blobs")).expect("mv");

    // The layout directory itself is the user's own argument: a symlink to
    // it is fine.
    let link = work.join("link.oci");
    symlink(&layout, &link).expect("ln -s");
    let o = output_of(nixoci().args(["verify", s(&link)]));
    assert!(o.status.success(), "verify via a symlink: {}", stderr(&o));
    let tree = work.join("site");
    let o = export(s(&link), "hello", &tree);
    assert!(o.status.success(), "export via a symlink: {}", stderr(&o));
    assert_no_symlinks(&tree);
}

#[test]
fn export_static_checks_every_blob_digest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let layout = golden_layout(work, "example.org/hello:1.0");
    let l = s(&layout);
    let layer = first_layer(&layout);
    let hex = layer
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a blob name")
        .to_owned();
    // Same size, one bit flipped.
    let mut bytes = fs::read(&layer).expect("reading the layer");
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    fs::set_permissions(&layer, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&layer, &bytes).expect("writing the layer");

    let fresh = work.join("fresh-site");
    let o = export(l, "hello", &fresh);
    expect_failure(&o, 1, &hex, "export-static of a corrupted blob");
    assert!(!fresh.exists(), "a failed export left a tree");

    let tree = existing_tree(work);
    let before = snapshot(&tree);
    let o = export(l, "hello", &tree);
    expect_failure(&o, 1, &hex, "export-static of a corrupted blob into a tree");
    assert_eq!(snapshot(&tree), before, "the existing tree changed");
    assert_no_symlinks(&tree);
}

/// A layout whose `index.json` names an image index that lists an image
/// index, `depth` of them in all.
fn nested_layout(dir: &Path, depth: usize) -> PathBuf {
    let out = dir.join("deep.oci");
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir");
    fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let mut doc = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []});
    let mut desc = Value::Null;
    for _ in 0..depth {
        let bytes = serde_json::to_vec(&doc).expect("JSON");
        let digest = publish_support_digest(&bytes);
        fs::write(blob_path(&out, &digest), &bytes).expect("writing a blob");
        desc = json!({"mediaType": INDEX, "digest": digest, "size": bytes.len()});
        doc = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [desc.clone()]});
    }
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": "deep:1"});
    fs::write(
        out.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]})).expect("JSON"),
    )
    .expect("index.json");
    out
}

fn publish_support_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

#[test]
fn one_nesting_limit_for_every_reader() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let deep = nested_layout(work, 3000);
    let d = s(&deep);

    let started = Instant::now();
    let mut cmd = nixoci();
    cmd.args(["verify", d]);
    let o = run_bounded(cmd, Duration::from_secs(60), "nixoci verify");
    expect_failure(
        &o,
        1,
        "nest more than 8 deep",
        "verify of 3000 nested indexes",
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "verify took {:?}",
        started.elapsed()
    );

    let tree = work.join("site");
    let o = export(d, "deep", &tree);
    expect_failure(&o, 1, "nest more than 8 deep", "export-static");
    assert!(!tree.exists());
    let o = output_of(nixoci().args(["push", d, "127.0.0.1:9/deep:1"]));
    expect_failure(&o, 1, "nest more than 8 deep", "push");

    // Eight levels are fine for every reader (an empty innermost index
    // holds no image: verify accepts it).
    let ok_dir = work.join("ok");
    fs::create_dir(&ok_dir).expect("mkdir");
    let ok = nested_layout(&ok_dir, 8);
    let o = output_of(nixoci().args(["verify", s(&ok)]));
    assert!(o.status.success(), "verify of 8 levels: {}", stderr(&o));
    let nine_dir = work.join("nine");
    fs::create_dir(&nine_dir).expect("mkdir");
    let nine = nested_layout(&nine_dir, 9);
    let o = output_of(nixoci().args(["verify", s(&nine)]));
    expect_failure(&o, 1, "nest more than 8 deep", "verify of 9 levels");
}

/// A tmpfs of `size` mounted at a fresh folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).expect("mkdir");
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            o.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_no_stub_tree_and_an_existing_tree_as_it_was() {
    // Mounting a tmpfs needs root.
    if !require(&["root"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    // A 3 MiB layer of noise does not fit in 2 MiB; the layout is on
    // another file system, so the blob is copied, not linked.
    let big_dir = work.join("big");
    fs::create_dir(&big_dir).expect("mkdir");
    let big = big_layout(&big_dir, 3 << 20, "big:1");
    let small = golden_layout(work, "example.org/hello:1.0");
    let mnt = work.join("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "2M");

    let tree = mnt.join("site");
    let o = export(s(&big), "big", &tree);
    expect_failure(
        &o,
        1,
        "No space left on device",
        "export-static to a full disk",
    );
    assert!(!tree.exists(), "a failed export left a tree");
    assert_eq!(snapshot(&mnt), BTreeMap::new(), "leftovers on the tmpfs");

    let o = export(s(&small), "hello", &tree);
    assert!(
        o.status.success(),
        "export of a small image: {}",
        stderr(&o)
    );
    let before = snapshot(&tree);
    let o = export(s(&big), "big", &tree);
    expect_failure(
        &o,
        1,
        "No space left on device",
        "export-static into a full tree",
    );
    assert_eq!(snapshot(&tree), before, "the existing tree changed");

    // The tree still takes exports.
    let o = output_of(nixoci().args([
        "export-static",
        s(&small),
        "--repository",
        "hello",
        "--tag",
        "2",
        "-o",
        s(&tree),
    ]));
    assert!(o.status.success(), "export after a failure: {}", stderr(&o));
    assert_no_symlinks(&tree);
}
