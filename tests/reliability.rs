//! Regression tests for what adversarial testing found (issue #12): no
//! write inside the store, damaged documents repaired by a rebuild, missing
//! store paths and invalid config values refused before anything is
//! written, one message for a full cache disk. Each runs the real binary on
//! a fake store under a temporary `--store-root`; none needs Nix.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{nixoci, require, run, snapshot, Run};
use serde_json::Value;

const STORE: &str = "/nix/store";
const PATH_A: &str = "/nix/store/5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a-app";
const PATH_B: &str = "/nix/store/6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b-lib";

/// A fake store under `dir/root`: PATH_A references PATH_B, each holds a
/// file; `closure.json` lists both.
struct Store {
    dir: PathBuf,
}

impl Store {
    fn new(dir: &Path) -> Store {
        for (i, p) in [PATH_A, PATH_B].iter().enumerate() {
            let d = dir.join("root").join(p.trim_start_matches('/'));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("data"), vec![b'a' + i as u8; 10_000 * (i + 1)]).unwrap();
        }
        let entry = |p: &str, refs: &[&str]| {
            format!(
                r#"{{"path":"{p}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":10000,"references":{}}}"#,
                serde_json::to_string(refs).unwrap()
            )
        };
        fs::write(
            dir.join("closure.json"),
            format!("[{},{}]", entry(PATH_A, &[PATH_B]), entry(PATH_B, &[])),
        )
        .unwrap();
        Store {
            dir: dir.to_owned(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where the store path `p` is on disk.
    fn on_disk(&self, p: &str) -> PathBuf {
        self.root().join(p.trim_start_matches('/'))
    }

    /// `nixoci build` of PATH_A's closure into `out`, with `extra` flags.
    fn build(&self, out: &Path, extra: &[&str]) -> Command {
        let mut cmd = nixoci();
        cmd.args(["build", "--no-cache", "--json"])
            .arg("--platform")
            .arg(format!("linux/amd64={PATH_A}"))
            .arg("--closure-json")
            .arg(self.dir.join("closure.json"))
            .arg("--store-root")
            .arg(self.root())
            .arg("-o")
            .arg(out)
            .args(extra);
        cmd
    }
}

fn verify(out: &Path) -> Run {
    run(nixoci().arg("verify").arg(out))
}

/// The error line of a failed run: exactly one line on stderr.
#[track_caller]
fn one_line(r: &Run) -> &str {
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {}", r.describe());
    lines[0]
}

#[test]
fn outputs_inside_the_store_are_refused_and_nothing_is_written() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    let root = store.root();
    let before = snapshot(&root);

    // Inside a store path of the (chroot) store, directly and through a
    // symlink, and in the store directory itself.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(store.on_disk(PATH_A), &link).unwrap();
    let inside = [
        store.on_disk(PATH_A).join("out"),
        link.join("out"),
        root.join("nix/store/zzzz-out.oci"),
        PathBuf::from(format!("{STORE}/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-out.oci")),
        // `..` after a symlink is the parent of its target: the store.
        tmp.path().join("link/../zzzz-out.oci"),
    ];
    for out in &inside {
        let r = run(&mut store.build(out, &[])).expect_code(2);
        assert!(
            one_line(&r).contains("inside the Nix store"),
            "{}",
            r.stderr
        );
        assert!(!out.exists(), "{} was created", out.display());
    }
    // The layer cache and the export tree too.
    let cache = store.on_disk(PATH_B).join("cache");
    let out = tmp.path().join("ok.oci");
    let cmd = store.build(&out, &[]);
    let args: Vec<_> = cmd
        .get_args()
        .filter(|a| *a != "--no-cache")
        .map(|a| a.to_owned())
        .collect();
    let mut cmd = nixoci();
    cmd.args(&args).arg("--cache-dir").arg(&cache);
    let r = run(&mut cmd).expect_code(2);
    assert!(one_line(&r).contains("--cache-dir"), "{}", r.stderr);
    assert!(!out.exists());

    run(&mut store.build(&out, &[])).success();
    let tree = store.on_disk(PATH_B).join("site");
    let r = run(nixoci()
        .env("NIX_STORE_DIR", root.join("nix/store"))
        .args(["export-static", "--repository", "app", "--tag", "1"])
        .arg(&out)
        .arg("-o")
        .arg(&tree))
    .expect_code(2);
    assert!(
        one_line(&r).contains("inside the Nix store"),
        "{}",
        r.stderr
    );
    assert!(!tree.exists());
    // gc removes files: not in a layout inside the store either.
    let r = run(nixoci()
        .env("NIX_STORE_DIR", tmp.path())
        .arg("gc")
        .arg(&out))
    .expect_code(2);
    assert!(
        one_line(&r).contains("inside the Nix store"),
        "{}",
        r.stderr
    );

    assert_eq!(snapshot(&root), before, "the store was modified");
}

#[test]
fn a_rebuild_repairs_damaged_documents_in_the_output() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    let out = tmp.path().join("out.oci");
    let report = run(&mut store.build(&out, &[])).success().json();
    let digest = |v: &Value| {
        v["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_owned()
    };
    let platform = &report["platforms"][0];
    let blobs = out.join("blobs/sha256");
    let documents = [
        ("manifest", digest(&platform["manifest"])),
        ("config", digest(&platform["config"])),
        ("index", digest(&report["index"])),
    ];
    let outside = tmp.path().join("outside");
    for (what, hex) in &documents {
        let path = blobs.join(hex);
        let good = fs::read(&path).unwrap();
        // A symlink to a good copy outside the layout is replaced too.
        fs::write(&outside, &good).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        verify(&out).expect_code(1);
        run(&mut store.build(&out, &[])).success();
        assert!(fs::symlink_metadata(&path).unwrap().is_file(), "{what}");
        verify(&out).success();
        for damage in [
            vec![b'x'; good.len()],          // same size, other bytes
            b"garbage".to_vec(),             // another size
            good[..good.len() / 2].to_vec(), // truncated
        ] {
            fs::write(&path, &damage).unwrap();
            verify(&out).expect_code(1);
            run(&mut store.build(&out, &[])).success();
            assert_eq!(fs::read(&path).unwrap(), good, "{what} not repaired");
            verify(&out).success();
        }
    }
}

/// A layer blob of the output that is a symlink out of the layout is not
/// reused through the layer cache: it is replaced by the real blob.
#[test]
fn a_rebuild_replaces_a_symlinked_layer_blob() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    let out = tmp.path().join("out.oci");
    let cache = tmp.path().join("cache");
    let with_cache = |out: &Path| {
        let mut cmd = nixoci();
        let args: Vec<_> = store
            .build(out, &[])
            .get_args()
            .filter(|a| *a != "--no-cache")
            .map(|a| a.to_owned())
            .collect();
        cmd.args(args).arg("--cache-dir").arg(&cache);
        cmd
    };
    let report = run(&mut with_cache(&out)).success().json();
    let outside = tmp.path().join("outside");
    for layer in report["layers"].as_array().unwrap() {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let path = out.join("blobs/sha256").join(hex);
        fs::copy(&path, &outside).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        let again = run(&mut with_cache(&out)).success().json();
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        let statuses: Vec<&str> = again["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["cache"].as_str().unwrap())
            .collect();
        assert!(!statuses.is_empty());
        verify(&out).success();
    }
}

#[test]
fn build_to_stdout_points_to_save() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    let r = run(&mut store.build(Path::new("-"), &[]));
    assert!(r.refused("nixoci save").contains("-o -"));
    assert!(!Path::new("-").exists());
}

#[test]
fn a_closure_path_missing_on_disk_is_a_usage_error() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    fs::remove_dir_all(store.on_disk(PATH_B)).unwrap();
    let out = tmp.path().join("out.oci");
    let r = run(&mut store.build(&out, &[])).expect_code(2);
    let line = one_line(&r);
    assert!(
        line.contains(PATH_B) && line.contains("not in the store"),
        "{line}"
    );
    assert!(!out.exists());
}

#[test]
fn config_values_no_runtime_takes_are_refused() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    let out = tmp.path().join("out.oci");
    for (flags, names) in [
        (vec!["--workdir", "relative"], "--workdir"),
        (vec!["--workdir", ""], "--workdir"),
        (vec!["--env", "A\nB=1"], "--env"),
        (vec!["--env", "=1"], "--env"),
        (vec!["--label", "a\u{7}b=1"], "--label"),
        (vec!["--annotation", "a\u{1}b=1"], "--annotation"),
        (vec!["--annotation", "a\nb=1"], "--annotation"),
        (vec!["--user", "a b"], "--user"),
    ] {
        run(&mut store.build(&out, &flags)).refused(names);
        assert!(!out.exists());
    }
    // {root} makes an absolute working directory.
    run(&mut store.build(&out, &["--workdir", "{root}/share", "--env", "MULTI=a\nb"])).success();
}

#[test]
fn a_full_cache_disk_is_reported_once() {
    if !require(&["root"]) {
        return;
    }
    let tmp = common::tempdir();
    // An app referencing ten paths of 64 KiB each, a layer each; a cache
    // that holds its directories and little more.
    let mut entries = Vec::new();
    let mut refs = Vec::new();
    let write_path = |p: &str, seed: u32| {
        let d = tmp.path().join("root").join(p.trim_start_matches('/'));
        fs::create_dir_all(&d).unwrap();
        // xorshift: incompressible, so every layer is about 64 KiB.
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
        let data: Vec<u8> = (0..65_536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(d.join("data"), data).unwrap();
    };
    for i in 0..10u32 {
        let p = format!("{STORE}/{}-layer{i}", i.to_string().repeat(32));
        write_path(&p, i * 7919);
        entries.push(format!(
            r#"{{"path":"{p}","narHash":"sha256-{i}{}=","narSize":65536,"references":[]}}"#,
            "A".repeat(42)
        ));
        refs.push(p);
    }
    let app = format!("{STORE}/{}-app", "a".repeat(32));
    write_path(&app, 1);
    entries.push(format!(
        r#"{{"path":"{app}","narHash":"sha256-{}=","narSize":65536,"references":{}}}"#,
        "A".repeat(43),
        serde_json::to_string(&refs).unwrap()
    ));
    fs::write(
        tmp.path().join("closure.json"),
        format!("[{}]", entries.join(",")),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mount = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96k", "tmpfs"])
        .arg(&cache));
    assert_eq!(mount.code, Some(0), "{}", mount.describe());
    let out = tmp.path().join("out.oci");
    let mut cmd = nixoci();
    cmd.args(["build", "--max-layers", "11", "--jobs", "2"])
        .arg("--platform")
        .arg(format!("linux/amd64={app}"))
        .arg("--closure-json")
        .arg(tmp.path().join("closure.json"))
        .arg("--store-root")
        .arg(tmp.path().join("root"))
        .arg("--cache-dir")
        .arg(&cache)
        .arg("-o")
        .arg(&out);
    let r = run(&mut cmd);
    let _ = Command::new("umount").arg(&cache).status();
    let r = r.success();
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("could not store"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", r.stderr);
    assert!(warnings[0].contains("No space left"), "{}", warnings[0]);
    verify(&out).success();
}

#[test]
fn save_refuses_what_it_cannot_write_and_writes_nothing() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    let out = tmp.path().join("out.oci");
    run(&mut store.build(&out, &["--tag", "example.org/app:1.0"])).success();
    let archive = tmp.path().join("app.tar");
    let save = |extra: &[&str]| {
        run(nixoci()
            .arg("save")
            .arg(&out)
            .arg("-o")
            .arg(&archive)
            .args(extra))
    };
    let line = save(&["--platform", "linux/arm64"])
        .refused("no linux/arm64/v8 manifest")
        .to_owned();
    assert!(line.contains("linux/amd64"), "{line}");
    save(&["--tag", "plain"]).refused("--tag");
    assert!(!archive.exists());
    // What it writes: manifest.json naming the config and layers, tagged.
    save(&["--platform", "linux/amd64"]).success();
    let r = run(std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("manifest.json"))
    .success();
    let manifest: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], "example.org/app:1.0");
    assert!(!manifest[0]["Layers"].as_array().unwrap().is_empty());
    // The same image, the same bytes.
    let first = fs::read(&archive).unwrap();
    save(&["--platform", "linux/amd64"]).success();
    assert_eq!(fs::read(&archive).unwrap(), first);
}

/// A message to a stderr that cannot be written (full, or closed) is lost,
/// not a panic: the command still ends with its own exit code, not 101.
#[test]
fn an_unwritable_stderr_keeps_the_exit_code() {
    let dir = common::tempdir();
    let missing = dir.path().join("missing.oci");
    let cache = dir.path().join("no-cache");
    for (args, code) in [
        (vec!["verify".into(), missing.display().to_string()], 2),
        (
            vec![
                "cache".into(),
                "prune".into(),
                "--max-size".into(),
                "1M".into(),
                "--cache-dir".into(),
                cache.display().to_string(),
            ],
            0,
        ),
    ] {
        for closed in [false, true] {
            let mut cmd = nixoci();
            cmd.args(&args);
            if closed {
                // The parent end of a pipe whose reader is already gone.
                let (reader, writer) = std::io::pipe().unwrap();
                drop(reader);
                cmd.stderr(writer);
            } else {
                cmd.stderr(fs::File::options().write(true).open("/dev/full").unwrap());
            }
            let status = cmd.status().unwrap();
            assert_eq!(
                status.code(),
                Some(code),
                "nixoci {args:?} with stderr closed={closed}"
            );
        }
    }
}

/// An output whose parent folder is missing is refused before any work
/// (it used to fail with exit 1 at the end of the build).
#[test]
fn an_output_without_its_parent_folder_is_a_usage_error() {
    let tmp = common::tempdir();
    let store = Store::new(tmp.path());
    let r = run(&mut store.build(&tmp.path().join("no/such/app.oci"), &[]));
    assert!(r
        .refused("no/such does not exist")
        .contains("create it first"));
    assert!(!tmp.path().join("no").exists());
}
