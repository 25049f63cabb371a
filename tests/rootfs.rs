//! The root layer (issue #14): directories, symbolic links and the user
//! database on top of the store layers, with owners and modes, read back
//! from the layer and by umoci; reproducible; bad input refused.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{nixoci, require, run, Run};
use serde_json::Value;

const APP: &str = "/nix/store/7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a-app";
const LIB: &str = "/nix/store/8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b-lib";
/// A buildEnv-like tree: `bin/sh -> APP/bin/sh`, `etc/os-release`.
const ENV: &str = "/nix/store/9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c-env";
/// Another, whose `etc/os-release` differs.
const OTHER: &str = "/nix/store/0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d-other";

/// A fake store: APP (with `bin/sh`) refers to LIB.
fn store(dir: &Path) -> PathBuf {
    for (p, file) in [(APP, "bin/sh"), (LIB, "lib/libx.so")] {
        let f = dir.join("root").join(p.trim_start_matches('/')).join(file);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, format!("{p}\n")).unwrap();
    }
    let entry = |p: &str, refs: &[&str]| {
        format!(
            r#"{{"path":"{p}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":100,"references":{}}}"#,
            serde_json::to_string(refs).unwrap()
        )
    };
    fs::create_dir_all(
        dir.join("root")
            .join(ENV.trim_start_matches('/'))
            .join("etc"),
    )
    .unwrap();
    fs::write(
        dir.join("root")
            .join(ENV.trim_start_matches('/'))
            .join("etc/passwd"),
        "svc:x:5:5::/:/bin/sh\n",
    )
    .unwrap();
    for (env, release) in [(ENV, "ID=nixoci\n"), (OTHER, "ID=other\n")] {
        let d = dir.join("root").join(env.trim_start_matches('/'));
        fs::create_dir_all(d.join("bin")).unwrap();
        fs::create_dir_all(d.join("etc")).unwrap();
        std::os::unix::fs::symlink(format!("{APP}/bin/sh"), d.join("bin/sh")).unwrap();
        fs::write(d.join("etc/os-release"), release).unwrap();
    }
    let closure = dir.join("closure.json");
    fs::write(
        &closure,
        format!(
            "[{},{},{},{}]",
            entry(APP, &[LIB]),
            entry(LIB, &[]),
            entry(ENV, &[APP]),
            entry(OTHER, &[APP])
        ),
    )
    .unwrap();
    closure
}

/// A temporary directory with the fake store, and `out.oci` in it.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = common::tempdir();
    store(tmp.path());
    let out = tmp.path().join("out.oci");
    (tmp, out)
}

/// `nixoci build --no-cache --json` of APP for `platforms` into `out`.
fn build(dir: &Path, out: &Path, platforms: &[&str], flags: &[&str]) -> Run {
    let mut flags = flags.to_vec();
    flags.push("--no-cache");
    build_with(dir, out, platforms, &flags)
}

/// [`build`] through the layer cache `dir/cache`.
fn build_cached(dir: &Path, out: &Path, flags: &[&str]) -> Value {
    let cache = dir.join("cache");
    let mut all = vec!["--cache-dir", cache.to_str().unwrap()];
    all.extend(flags);
    build_with(dir, out, &["linux/amd64"], &all)
        .success()
        .json()
}

fn build_with(dir: &Path, out: &Path, platforms: &[&str], flags: &[&str]) -> Run {
    let mut cmd = nixoci();
    cmd.args(["build", "--json"])
        .arg("--closure-json")
        .arg(dir.join("closure.json"))
        .arg("--store-root")
        .arg(dir.join("root"))
        .arg("-o")
        .arg(out);
    for p in platforms {
        cmd.arg("--platform").arg(format!("{p}={APP}"));
    }
    cmd.args(flags);
    run(&mut cmd)
}

const FLAGS: [&str; 15] = [
    "--dir",
    "/tmp:1777",
    "--dir",
    "/var/lib/app:0750:1000:1000",
    "--symlink",
    "/bin/sh={root}/bin/sh",
    "--add-user",
    "app:1000:1000:/var/lib/app",
    "--add-group",
    "staff:50",
    "--user=app",
    "--volume",
    "/var/lib/app",
    "--stop-signal",
    "SIGINT",
];

/// One tar entry: type, mode, uid, gid, link target, contents.
type Listing = BTreeMap<String, (char, u32, u64, u64, String, Vec<u8>)>;

fn list(blob: &Path) -> Listing {
    let gz = flate2::read::MultiGzDecoder::new(fs::File::open(blob).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut out = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Regular => 'f',
            other => panic!("{other:?}"),
        };
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        out.insert(
            name,
            (
                kind,
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                link,
                data,
            ),
        );
    }
    out
}

/// The layers of the one image of a report, bottom first.
fn layers(report: &Value, out: &Path) -> Vec<PathBuf> {
    report["platforms"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            out.join("blobs/sha256")
                .join(d.as_str().unwrap().trim_start_matches("sha256:"))
        })
        .collect()
}

#[test]
fn the_root_layer_has_owners_modes_links_and_users() {
    let (tmp, out) = fixture();
    let r = build(tmp.path(), &out, &["linux/amd64"], &FLAGS).success();
    let report = r.json();
    let blobs = layers(&report, &out);
    // The store layers, then the root layer on top.
    let top = list(blobs.last().unwrap());
    let names: Vec<&str> = top.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "bin",
            "bin/sh",
            "etc",
            "etc/group",
            "etc/nsswitch.conf",
            "etc/passwd",
            "tmp",
            "var",
            "var/lib",
            "var/lib/app"
        ]
    );
    assert_eq!(top["tmp"].0, 'd');
    assert_eq!(top["tmp"].1, 0o1777);
    assert_eq!(
        (
            top["var/lib/app"].1,
            top["var/lib/app"].2,
            top["var/lib/app"].3
        ),
        (0o750, 1000, 1000)
    );
    assert_eq!(top["bin/sh"].0, 'l');
    assert_eq!(top["bin/sh"].4, format!("{APP}/bin/sh"));
    let passwd = String::from_utf8_lossy(&top["etc/passwd"].5).into_owned();
    assert!(
        passwd.contains("\napp:x:1000:1000::/var/lib/app:/bin/sh\n"),
        "{passwd}"
    );
    let group = String::from_utf8_lossy(&top["etc/group"].5).into_owned();
    assert!(
        group.contains("staff:x:50:\n") && group.contains("root:x:0:\n"),
        "{group}"
    );
    assert_eq!(top["etc/nsswitch.conf"].5, b"hosts: files dns\n");
    // No store path in the root layer, none outside the store below it.
    for layer in &blobs[..blobs.len() - 1] {
        assert!(list(layer).keys().all(|n| n.starts_with("nix")));
    }
    // --user app is defined: no warning.
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    run(nixoci().arg("verify").arg(&out)).success();
    // The manifest marks the root layer; the config's history says so.
    let manifest_digest = report["platforms"][0]["manifest"]["digest"]
        .as_str()
        .unwrap();
    let manifest: Value = serde_json::from_slice(
        &fs::read(
            out.join("blobs/sha256")
                .join(manifest_digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let last = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["annotations"]["dev.nixoci.root-layer"], "true");
    let config: Value = serde_json::from_slice(
        &fs::read(
            out.join("blobs/sha256").join(
                manifest["config"]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["config"]["User"], "app");
    assert_eq!(
        config["config"]["Volumes"],
        serde_json::json!({ "/var/lib/app": {} })
    );
    assert_eq!(config["config"]["StopSignal"], "SIGINT");
    assert_eq!(
        config["history"].as_array().unwrap().last().unwrap()["comment"],
        "files outside the store"
    );
}

#[test]
fn the_root_layer_is_reproducible_and_shared() {
    let tmp = common::tempdir();
    store(tmp.path());
    let index = |out: &Path, platforms: &[&str], flags: &[&str]| {
        build(tmp.path(), out, platforms, flags).success().json()["index"]["digest"].clone()
    };
    let a = index(&tmp.path().join("a.oci"), &["linux/amd64"], &FLAGS);
    // The same flags in another order give the same bytes.
    let mut shuffled: Vec<&str> = Vec::new();
    for pair in FLAGS[..10].chunks(2).rev() {
        shuffled.extend(pair);
    }
    shuffled.extend(&FLAGS[10..]);
    let b = index(&tmp.path().join("b.oci"), &["linux/amd64"], &shuffled);
    assert_eq!(a, b);
    // Two platforms with the same entries share the root layer's blob.
    let out = tmp.path().join("two.oci");
    let report = build(
        tmp.path(),
        &out,
        &["linux/amd64", "linux/arm64"],
        &["--dir", "/tmp:1777"],
    )
    .success()
    .json();
    let tops: Vec<&Value> = report["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["layers"].as_array().unwrap().last().unwrap())
        .collect();
    assert_eq!(tops[0], tops[1]);
    // The root layer counts in the budget.
    let out = tmp.path().join("budget.oci");
    let report = build(
        tmp.path(),
        &out,
        &["linux/amd64"],
        &["--dir", "/tmp", "--max-layers", "2"],
    )
    .success()
    .json();
    assert_eq!(
        report["platforms"][0]["layers"].as_array().unwrap().len(),
        2
    );
    // --previous reads an image with a root layer and keeps its store layers.
    let again = build(
        tmp.path(),
        &tmp.path().join("again.oci"),
        &["linux/amd64"],
        &[
            "--dir",
            "/tmp",
            "--max-layers",
            "2",
            "--previous",
            out.to_str().unwrap(),
        ],
    )
    .success()
    .json();
    assert_eq!(
        again["platforms"][0]["layers"],
        report["platforms"][0]["layers"]
    );
}

#[test]
fn umoci_unpacks_owners_and_modes() {
    if !require(&["umoci", "root"]) {
        return;
    }
    let (tmp, out) = fixture();
    let report = build(tmp.path(), &out, &["linux/amd64"], &FLAGS)
        .success()
        .json();
    let manifest = &report["platforms"][0]["manifest"];
    let descriptor = serde_json::json!({
        "mediaType": manifest["mediaType"],
        "digest": manifest["digest"],
        "size": manifest["size"],
    });
    let bundle = common::umoci_unpack(&out, &descriptor, tmp.path(), "rootfs");
    let rootfs = bundle.join("rootfs");
    let tmp_dir = fs::symlink_metadata(rootfs.join("tmp")).unwrap();
    assert_eq!(tmp_dir.mode() & 0o7777, 0o1777);
    let app = fs::symlink_metadata(rootfs.join("var/lib/app")).unwrap();
    assert_eq!(
        (app.uid(), app.gid(), app.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        PathBuf::from(format!("{APP}/bin/sh"))
    );
    assert!(fs::read_to_string(rootfs.join("etc/passwd"))
        .unwrap()
        .contains("app:x:1000:"));
    // The store is there too, under the symlink's target.
    assert!(rootfs
        .join(APP.trim_start_matches('/'))
        .join("bin/sh")
        .is_file());
    let _ = Command::new("rm").arg("-rf").arg(&bundle).status();
}

#[test]
fn bad_root_entries_are_refused_and_nothing_is_written() {
    let (tmp, out) = fixture();
    for (flags, says) in [
        (vec!["--dir", "/tmp:rwx"], "octal"),
        (vec!["--dir", "/tmp:999"], "octal"),
        (vec!["--dir", "/nix/store/x"], "/nix"),
        (vec!["--dir", "relative"], "absolute"),
        (vec!["--symlink", "/bin/sh=bin/busybox"], "absolute"),
        (vec!["--add-user", "app:x"], "number"),
        (
            vec!["--dir", "/etc/passwd", "--add-user", "app:1000"],
            "/etc/passwd",
        ),
        (
            vec!["--dir", "/bin/sh/x", "--symlink", "/bin/sh=/a"],
            "not a directory",
        ),
    ] {
        build(tmp.path(), &out, &["linux/amd64"], &flags).refused(says);
        assert!(!out.exists(), "{flags:?} wrote {}", out.display());
    }
    // A --user no /etc/passwd of the image defines: a warning naming the fix.
    let r = build(tmp.path(), &out, &["linux/amd64"], &["--user", "web"]).success();
    assert!(r.stderr.contains("--add-user web:UID"), "{}", r.stderr);
}

#[test]
fn copy_to_root_places_a_tree_at_the_root() {
    let (tmp, out) = fixture();
    let report = build(
        tmp.path(),
        &out,
        &["linux/amd64"],
        &["--copy-to-root", ENV, "--dir", "/tmp:1777"],
    )
    .success()
    .json();
    let blobs = layers(&report, &out);
    let top = list(blobs.last().unwrap());
    let names: Vec<&str> = top.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "bin",
            "bin/sh",
            "etc",
            "etc/os-release",
            "etc/passwd",
            "tmp"
        ]
    );
    assert_eq!((top["bin"].0, top["bin"].1), ('d', 0o755));
    assert_eq!(top["bin/sh"].4, format!("{APP}/bin/sh"));
    assert_eq!(
        (top["etc/os-release"].0, top["etc/os-release"].1),
        ('f', 0o444)
    );
    assert_eq!(top["etc/os-release"].5, b"ID=nixoci\n");
    // The tree's store path and its closure are in the store layers.
    let stored: Vec<String> = blobs[..blobs.len() - 1]
        .iter()
        .flat_map(|b| list(b).into_keys())
        .collect();
    assert!(
        stored.iter().any(|n| n == ENV.trim_start_matches('/')),
        "{stored:?}"
    );
    run(nixoci().arg("verify").arg(&out)).success();

    // A --user the tree's /etc/passwd defines: no warning; another: one.
    let r = build(
        tmp.path(),
        &tmp.path().join("svc.oci"),
        &["linux/amd64"],
        &["--copy-to-root", ENV, "--user", "svc"],
    )
    .success();
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    let r = build(
        tmp.path(),
        &tmp.path().join("web.oci"),
        &["linux/amd64"],
        &["--copy-to-root", ENV, "--user", "web"],
    )
    .success();
    assert!(r.stderr.contains("has no user web"), "{}", r.stderr);

    // An /etc/passwd from a tree and one from --add-user: exit 2, naming both.
    let bad = tmp.path().join("passwd.oci");
    let line = build(
        tmp.path(),
        &bad,
        &["linux/amd64"],
        &["--copy-to-root", ENV, "--add-user", "app:1000"],
    )
    .refused("/etc/passwd")
    .to_owned();
    assert!(line.contains(ENV) && line.contains("--add-user"), "{line}");
    assert!(!bad.exists());

    // The same tree twice is fine; a tree for one platform only.
    build(
        tmp.path(),
        &tmp.path().join("twice.oci"),
        &["linux/amd64", "linux/arm64"],
        &[
            "--copy-to-root",
            ENV,
            "--copy-to-root",
            &format!("linux/arm64={ENV}"),
        ],
    )
    .success();
    // Two trees with different files at one path: exit 2, naming both.
    let bad = tmp.path().join("bad.oci");
    let r = build(
        tmp.path(),
        &bad,
        &["linux/amd64"],
        &["--copy-to-root", ENV, "--copy-to-root", OTHER],
    )
    .expect_code(2);
    assert!(
        r.stderr.contains("/etc/os-release") && r.stderr.contains(ENV) && r.stderr.contains(OTHER),
        "{}",
        r.stderr
    );
    assert!(!bad.exists());
    // A tree for a platform the image does not have.
    let r = build(
        tmp.path(),
        &bad,
        &["linux/amd64"],
        &["--copy-to-root", &format!("linux/arm64={ENV}")],
    )
    .expect_code(2);
    assert!(r.stderr.contains("no platform linux/arm64"), "{}", r.stderr);
}

#[test]
fn chmod_and_chown_reach_store_paths_and_the_root_layer() {
    let (tmp, out) = fixture();
    let report = build(
        tmp.path(),
        &out,
        &["linux/amd64"],
        &[
            "--chmod",
            "/nix/store/[^/]+-app/bin/sh=4755",
            "--chown",
            "/nix/store/[^/]+-lib/lib(/.*)?=0:50",
            "--dir",
            "/srv",
            "--chown",
            "/srv=1000:1000",
        ],
    )
    .success()
    .json();
    let blobs = layers(&report, &out);
    let mut all = BTreeMap::new();
    for b in &blobs {
        all.extend(list(b));
    }
    let sh = &all[&format!("{}/bin/sh", APP.trim_start_matches('/'))];
    assert_eq!((sh.1, sh.2, sh.3), (0o4755, 0, 0));
    let lib = &all[&format!("{}/lib/libx.so", LIB.trim_start_matches('/'))];
    assert_eq!((lib.2, lib.3), (0, 50));
    let srv = &all["srv"];
    assert_eq!((srv.1, srv.2, srv.3), (0o755, 1000, 1000));
    // Untouched entries keep the store's modes and root.
    let app_dir = &all[APP.trim_start_matches('/')];
    assert_eq!((app_dir.1, app_dir.2), (0o555, 0));
    run(nixoci().arg("verify").arg(&out)).success();

    for (flags, says) in [
        (vec!["--chmod", "/nope/.*=0755"], "matches no path"),
        (vec!["--chown", "/nix/store/x=1:1"], "matches no path"),
        (vec!["--chmod", "(=0755"], "regular expression"),
        (vec!["--chmod", "/tmp=rwx"], "octal"),
        (vec!["--chown", "/tmp=1000"], "UID:GID"),
    ] {
        let bad = tmp.path().join("bad.oci");
        build(tmp.path(), &bad, &["linux/amd64"], &flags).refused(says);
        assert!(!bad.exists(), "{flags:?}");
    }
}

/// The layer cache keys name the rules: a layer built with --chmod is not
/// reused without it, nor the other way round.
#[test]
fn the_layer_cache_tells_rules_apart() {
    let tmp = common::tempdir();
    store(tmp.path());
    let sh_mode = |name: &str, flags: &[&str]| {
        let out = tmp.path().join(name);
        let report = build_cached(tmp.path(), &out, flags);
        let mut all = BTreeMap::new();
        for b in layers(&report, &out) {
            all.extend(list(&b));
        }
        all[&format!("{}/bin/sh", APP.trim_start_matches('/'))].1
    };
    assert_eq!(sh_mode("a.oci", &[]), 0o444);
    assert_eq!(
        sh_mode("b.oci", &["--chmod", "/nix/store/[^/]+-app/bin/sh=4755"]),
        0o4755
    );
    assert_eq!(sh_mode("c.oci", &[]), 0o444);
}

#[test]
fn plan_shows_the_root_layer() {
    let tmp = common::tempdir();
    store(tmp.path());
    let r = run(nixoci()
        .args(["plan", "--max-layers", "3", "--dir", "/tmp:1777"])
        .arg("--platform")
        .arg(format!("linux/amd64={APP}"))
        .arg("--closure-json")
        .arg(tmp.path().join("closure.json"))
        .arg("--store-root")
        .arg(tmp.path().join("root")))
    .success();
    let last = r.stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.contains("root") && last.contains("1 entry outside the store"),
        "{}",
        r.stdout
    );
    // Two store paths, a budget of 3 with the root layer: two store layers.
    assert!(
        r.stdout.starts_with("linux/amd64: 2 layers"),
        "{}",
        r.stdout
    );
}

/// The root layer goes through the layer cache like any layer.
#[test]
fn the_root_layer_is_cached() {
    let tmp = common::tempdir();
    store(tmp.path());
    let root_status = |name: &str| {
        let out = tmp.path().join(name);
        let report = build_cached(
            tmp.path(),
            &out,
            &["--dir", "/tmp:1777", "--copy-to-root", ENV],
        );
        let root = report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["storePaths"].as_array().unwrap().is_empty())
            .unwrap()
            .clone();
        (
            root["cache"].as_str().unwrap().to_owned(),
            root["digest"].clone(),
        )
    };
    let (first, digest) = root_status("a.oci");
    assert_eq!(first, "miss");
    let (second, again) = root_status("b.oci");
    assert_eq!(second, "hit");
    assert_eq!(digest, again);
}
