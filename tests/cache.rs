//! The layer cache and compression choices, through the real binary: fake
//! store trees under temp dirs (`--store-root`, `--closure-json`), no Nix.
//!
//! What must hold: cache hits and misses show in the `--json` report; a
//! no-change rebuild reuses every layer; a one-path change rebuilds exactly
//! the layers holding changed paths; a damaged cache blob or index entry is
//! noticed, rebuilt and the output verifies; digests are the same for any
//! `--jobs`, with and without a warm cache, for gzip, zstd and none.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A package: its files (relative name, content) and dependency names.
type Package = (Vec<(String, Vec<u8>)>, Vec<String>);

/// A fake Nix store: packages with files and references, their store paths
/// hashed from content and references as Nix would.
struct Store {
    tmp: tempfile::TempDir,
    packages: BTreeMap<String, Package>,
}

impl Store {
    fn new() -> Store {
        Store {
            tmp: tempfile::tempdir().unwrap(),
            packages: BTreeMap::new(),
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    fn add(&mut self, name: &str, files: &[(&str, &[u8])], deps: &[&str]) {
        self.packages.insert(
            name.to_owned(),
            (
                files
                    .iter()
                    .map(|(n, c)| ((*n).to_owned(), c.to_vec()))
                    .collect(),
                deps.iter().map(|d| (*d).to_owned()).collect(),
            ),
        );
    }

    /// Store path of `name`: a hash of its files and its dependencies'
    /// store paths.
    fn path(&self, name: &str) -> String {
        let (files, deps) = &self.packages[name];
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        for (n, c) in files {
            h.update(n.as_bytes());
            h.update(Sha256::digest(c));
        }
        for d in deps {
            h.update(self.path(d).as_bytes());
        }
        let hash: String = h
            .finalize()
            .iter()
            .take(32)
            .map(|b| char::from(NIX32[usize::from(b % 32)]))
            .collect();
        format!("/nix/store/{hash}-{name}")
    }

    /// Writes every package's store path (if missing) and a closure JSON
    /// with `root` as first entry; returns the JSON file and root path.
    fn write(&self, root: &str) -> (PathBuf, String) {
        let mut closure = Vec::new();
        let mut todo = vec![root.to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let (files, deps) = &self.packages[&name];
            let path = self.path(&name);
            let dir = self.root().join(path.trim_start_matches('/'));
            let refs: Vec<String> = deps.iter().map(|d| self.path(d)).collect();
            let mut nar = Sha256::new();
            if !dir.exists() {
                fs::create_dir_all(dir.join("nix-support")).unwrap();
                fs::write(
                    dir.join("nix-support/propagated-build-inputs"),
                    refs.join(" "),
                )
                .unwrap();
                for (n, c) in files {
                    let f = dir.join(n);
                    fs::create_dir_all(f.parent().unwrap()).unwrap();
                    fs::write(&f, c).unwrap();
                    fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
                }
            }
            let mut size = 0;
            for (n, c) in files {
                nar.update(n.as_bytes());
                nar.update(c);
                size += c.len() as u64;
            }
            nar.update(path.as_bytes());
            closure.push(json!({
                "path": path,
                "narHash": format!("sha256:{}", sha256_hex(&nar.finalize())),
                "narSize": size + 512,
                "references": refs,
            }));
            todo.extend(deps.iter().cloned());
        }
        let bytes = serde_json::to_vec_pretty(&closure).unwrap();
        let file = self
            .dir()
            .join(format!("closure-{}.json", &sha256_hex(&bytes)[..16]));
        fs::write(&file, bytes).unwrap();
        (file, self.path(root))
    }
}

struct Run {
    report: Value,
    stderr: String,
}

fn nixoci() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixoci"));
    c.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("NIX_STORE_DIR")
        .env_remove("XDG_CACHE_HOME");
    c
}

/// `nixoci build` of the closure file `closure` (from [`Store::write`],
/// with root `root_path`) for linux/amd64 into `out`.
fn build_command(store: &Store, closure: &Path, root_path: &str, out: &Path) -> Command {
    let mut cmd = nixoci();
    cmd.args(["build", "--platform"])
        .arg(format!("linux/amd64={root_path}"))
        .arg("--closure-json")
        .arg(closure)
        .arg("--store-root")
        .arg(store.root())
        .arg("-o")
        .arg(out);
    cmd
}

/// `nixoci build --json` of `root`'s closure into `out`; `cache` `None`
/// means `--no-cache`.
fn build(store: &Store, root: &str, out: &Path, cache: Option<&Path>, extra: &[&str]) -> Run {
    let (closure, root_path) = store.write(root);
    let mut cmd = build_command(store, &closure, &root_path, out);
    cmd.arg("--json").args(extra);
    match cache {
        Some(dir) => cmd.arg("--cache-dir").arg(dir),
        None => cmd.arg("--no-cache"),
    };
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "build failed: {stderr}");
    Run {
        report: serde_json::from_slice(&output.stdout).unwrap(),
        stderr,
    }
}

fn verify(out: &Path) {
    let output = nixoci().arg("verify").arg(out).output().unwrap();
    assert!(
        output.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// (first store path name, cache status) of every layer.
fn statuses(run: &Run) -> Vec<(String, String)> {
    run.report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let path = l["storePaths"][0].as_str().unwrap();
            (
                path[path.find('-').unwrap() + 1..].to_owned(),
                l["cache"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn all(run: &Run, status: &str) -> bool {
    statuses(run).iter().all(|(_, s)| s == status)
}

/// What a build decides: the index digest and every layer's digests.
fn digests(run: &Run) -> Value {
    json!({
        "index": run.report["index"]["digest"],
        "layers": run.report["layers"].as_array().unwrap().iter()
            .map(|l| json!([l["diffId"], l["digest"], l["size"], l["mediaType"]]))
            .collect::<Vec<_>>(),
    })
}

/// base <- lib <- app, data <- app, and a tool beside them.
fn small_store() -> Store {
    let mut s = Store::new();
    s.add(
        "base",
        &[
            ("lib/libbase.so", &[7u8; 3000][..]),
            ("etc/base.conf", b"x=1\n"),
        ],
        &[],
    );
    s.add("lib", &[("lib/libfoo.so", b"foo library v1")], &["base"]);
    s.add(
        "data",
        &[("share/data.txt", "hello data\n".repeat(500).as_bytes())],
        &[],
    );
    s.add(
        "app",
        &[("bin/app", b"#!/bin/sh\necho app\n")],
        &["lib", "data"],
    );
    s.add("tool", &[("bin/tool", b"tool")], &["base"]);
    s.add("env", &[("README", b"env")], &["app", "tool"]);
    s
}

#[test]
fn cache_hits_and_misses_show_in_the_report() {
    let store = small_store();
    let cache = store.dir().join("cache");
    let out = store.dir().join("out");

    let cold = build(&store, "env", &out, Some(&cache), &[]);
    assert_eq!(statuses(&cold).len(), 6);
    assert!(all(&cold, "miss"), "{:?}", statuses(&cold));
    verify(&out);

    // Nothing changed, same output: every blob is already there.
    let same = build(&store, "env", &out, Some(&cache), &[]);
    assert!(all(&same, "layout"), "{:?}", statuses(&same));
    assert_eq!(digests(&same), digests(&cold));
    assert!(
        same.stderr.contains("6 layers of which 6 reused"),
        "{}",
        same.stderr
    );

    // Nothing changed, fresh output: every blob comes from the cache.
    let out2 = store.dir().join("out2");
    let fresh = build(&store, "env", &out2, Some(&cache), &[]);
    assert!(all(&fresh, "hit"), "{:?}", statuses(&fresh));
    assert_eq!(digests(&fresh), digests(&cold));
    verify(&out2);

    // Without the cache, everything is built again, to the same bytes.
    let out3 = store.dir().join("out3");
    let none = build(&store, "env", &out3, None, &[]);
    assert!(all(&none, "miss"));
    assert_eq!(digests(&none), digests(&cold));
}

#[test]
fn one_path_change_rebuilds_exactly_the_affected_layers() {
    let mut store = small_store();
    let cache = store.dir().join("cache");
    build(&store, "env", &store.dir().join("out"), Some(&cache), &[]);

    // A new lib: its store path changes, and so do app's and env's.
    store.add("lib", &[("lib/libfoo.so", b"foo library v2")], &["base"]);
    let out = store.dir().join("out-changed");
    let run = build(&store, "env", &out, Some(&cache), &[]);
    let got: BTreeMap<String, String> = statuses(&run).into_iter().collect();
    let want: BTreeMap<String, String> = [
        ("app", "miss"),
        ("base", "hit"),
        ("data", "hit"),
        ("env", "miss"),
        ("lib", "miss"),
        ("tool", "hit"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(got, want);
    verify(&out);
}

/// The files of `dir` but temporary ones (`.tmp-…`, `.probe-…`), sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

fn cache_files(cache: &Path, sub: &str) -> Vec<PathBuf> {
    files_in(&cache.join("layers-v1").join(sub))
}

/// After a build over a damaged cache (`run`, into `out`): the image is the
/// one the `cold` build made and verifies, and the rebuilt layers went back
/// into the cache, so the next build takes every layer from it.
fn mended(store: &Store, cache: &Path, cold: &Run, run: &Run, out: &Path) {
    assert_eq!(digests(run), digests(cold));
    verify(out);
    let again = build(store, "env", &store.dir().join("out3"), Some(cache), &[]);
    assert!(all(&again, "hit"), "{:?}", statuses(&again));
}

#[test]
fn corrupt_cache_blob_is_noticed_and_rebuilt() {
    let store = small_store();
    let cache = store.dir().join("cache");
    let cold = build(&store, "env", &store.dir().join("out"), Some(&cache), &[]);

    // Flip a byte in the data layer's cached blob, in place.
    let data = cold.report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["storePaths"][0].as_str().unwrap().ends_with("-data"))
        .unwrap();
    let hex = &data["digest"].as_str().unwrap()[7..];
    let blob = cache.join("layers-v1/blobs/sha256").join(hex);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();

    let out = store.dir().join("out2");
    let run = build(&store, "env", &out, Some(&cache), &[]);
    let got: BTreeMap<String, String> = statuses(&run).into_iter().collect();
    assert_eq!(got["data"], "miss");
    assert_eq!(got.values().filter(|s| *s == "hit").count(), 5, "{got:?}");
    assert!(
        run.stderr.contains("warning: cache blob") && run.stderr.contains("hashes to"),
        "{}",
        run.stderr
    );
    mended(&store, &cache, &cold, &run, &out);
}

#[test]
fn corrupt_cache_index_is_noticed_and_rebuilt() {
    let store = small_store();
    let cache = store.dir().join("cache");
    let cold = build(&store, "env", &store.dir().join("out"), Some(&cache), &[]);
    let entries = cache_files(&cache, "index");
    assert_eq!(entries.len(), 6);

    // One entry garbage, one with a wrong diff_id (its check digest no
    // longer matches), one truncated.
    fs::write(&entries[0], b"{not json").unwrap();
    let text = fs::read_to_string(&entries[1]).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let diff_id = v["diffId"].as_str().unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    fs::write(&entries[1], text.replace(diff_id, &wrong)).unwrap();
    fs::write(&entries[2], &text.as_bytes()[..text.len() / 2]).unwrap();

    let out = store.dir().join("out2");
    let run = build(&store, "env", &out, Some(&cache), &[]);
    let s = statuses(&run);
    assert_eq!(s.iter().filter(|(_, s)| s == "miss").count(), 3, "{s:?}");
    assert_eq!(s.iter().filter(|(_, s)| s == "hit").count(), 3, "{s:?}");
    assert_eq!(
        run.stderr.matches("is corrupt").count(),
        3,
        "{}",
        run.stderr
    );
    mended(&store, &cache, &cold, &run, &out);
}

/// The plan files of a cache directory.
fn plan_files(cache: &Path) -> Vec<PathBuf> {
    files_in(&cache.join("plans-v1"))
}

#[test]
fn plans_are_cached_and_a_damaged_plan_is_replanned() {
    let store = small_store();
    let cache = store.dir().join("cache");
    let budget = ["--max-layers", "3"];
    let cold = build(
        &store,
        "env",
        &store.dir().join("out"),
        Some(&cache),
        &budget,
    );
    let plans = plan_files(&cache);
    assert_eq!(plans.len(), 1, "{plans:?}");
    let stored = fs::read_to_string(&plans[0]).unwrap();
    let entry: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        entry["plan"]["images"][0]["layers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The same request again: the stored plan, unchanged, the same image.
    let again = build(
        &store,
        "env",
        &store.dir().join("out2"),
        Some(&cache),
        &budget,
    );
    assert_eq!(digests(&again), digests(&cold));
    assert_eq!(fs::read_to_string(&plans[0]).unwrap(), stored);

    // Another budget is another plan.
    build(&store, "env", &store.dir().join("out3"), Some(&cache), &[]);
    assert_eq!(plan_files(&cache).len(), 2);

    // Damaged plans: not JSON; a layer moved to another image position
    // (the check digest no longer matches); truncated. Each time the build
    // plans again, writes the same image and stores the plan anew.
    let mut moved: Value = serde_json::from_str(&stored).unwrap();
    moved["plan"]["images"][0]["layers"]
        .as_array_mut()
        .unwrap()
        .reverse();
    for (i, damage) in [
        b"{not json".to_vec(),
        serde_json::to_vec(&moved).unwrap(),
        stored.as_bytes()[..stored.len() / 2].to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        fs::write(&plans[0], damage).unwrap();
        let out = store.dir().join(format!("damaged{i}"));
        let run = build(&store, "env", &out, Some(&cache), &budget);
        assert_eq!(digests(&run), digests(&cold), "damage {i}");
        verify(&out);
        assert_eq!(fs::read_to_string(&plans[0]).unwrap(), stored, "damage {i}");
    }
}

#[test]
fn digests_do_not_depend_on_jobs_or_cache() {
    let store = small_store();
    for compression in ["gzip", "zstd", "none"] {
        let cache = store.dir().join(format!("cache-{compression}"));
        let mut runs = Vec::new();
        for (i, (jobs, cached)) in [(1, false), (2, false), (1, true), (2, true), (1, true)]
            .into_iter()
            .enumerate()
        {
            let out = store.dir().join(format!("out-{compression}-{i}"));
            let run = build(
                &store,
                "env",
                &out,
                cached.then_some(cache.as_path()),
                &["--compression", compression, "--jobs", &jobs.to_string()],
            );
            let media = run.report["layers"][0]["mediaType"].as_str().unwrap();
            let want = match compression {
                "gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
                "zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => "application/vnd.oci.image.layer.v1.tar",
            };
            assert_eq!(media, want);
            verify(&out);
            runs.push((jobs, cached, digests(&run), statuses(&run)));
        }
        // Cold cache, then warm cache (hits).
        assert!(runs[2].3.iter().all(|(_, s)| s == "miss"));
        assert!(runs[3].3.iter().all(|(_, s)| s == "hit"));
        for (jobs, cached, d, _) in &runs[1..] {
            assert_eq!(
                d, &runs[0].2,
                "{compression}: --jobs {jobs}, cache {cached} gave other digests"
            );
        }
    }
}

/// Text with noise: compresses, but not to nothing.
fn big_content(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let words: [&[u8]; 6] = [
        b"store ",
        b"layer ",
        b"nix ",
        b"image\n",
        b"0x",
        b"deflate ",
    ];
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(words[(x >> 8) as usize % words.len()]);
        }
    }
    out.truncate(len);
    out
}

#[test]
fn big_single_layer_same_digest_for_any_jobs() {
    let mut store = Store::new();
    let big = big_content(40 << 20);
    store.add(
        "big",
        &[
            ("share/big.bin", &big[..24 << 20]),
            ("share/more.bin", &big[24 << 20..]),
        ],
        &[],
    );
    for compression in ["gzip", "zstd"] {
        let mut seen = Vec::new();
        for jobs in ["1", "2"] {
            let out = store.dir().join(format!("out-{compression}-{jobs}"));
            let run = build(
                &store,
                "big",
                &out,
                None,
                &["--compression", compression, "--jobs", jobs],
            );
            seen.push(digests(&run));
            if jobs == "2" {
                verify(&out);
            }
        }
        assert_eq!(seen[0], seen[1], "{compression}");
    }
}

#[test]
fn unwritable_cache_is_skipped_with_one_message() {
    let store = small_store();
    // A cache directory under a regular file cannot be created, even as
    // root; neither can one in a HOME that does not exist.
    let file = store.dir().join("a-file");
    fs::write(&file, b"").unwrap();
    let out = store.dir().join("out");
    let run = build(&store, "env", &out, Some(&file.join("cache")), &[]);
    assert!(all(&run, "miss"));
    assert_eq!(
        run.stderr.matches("building without a layer cache").count(),
        1,
        "{}",
        run.stderr
    );

    let (closure, root) = store.write("env");
    let output = build_command(&store, &closure, &root, &store.dir().join("out2"))
        .env("HOME", store.dir().join("homeless-shelter"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("building without a layer cache").count(),
        1,
        "{stderr}"
    );
    assert!(!store.dir().join("homeless-shelter").exists());
}

#[test]
fn concurrent_builds_share_one_cache() {
    let store = small_store();
    let cache = store.dir().join("cache");
    let (closure, root) = store.write("env");
    let children: Vec<_> = (0..3)
        .map(|i| {
            build_command(
                &store,
                &closure,
                &root,
                &store.dir().join(format!("out{i}")),
            )
            .arg("--json")
            .arg("--cache-dir")
            .arg(&cache)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for i in 0..3 {
        verify(&store.dir().join(format!("out{i}")));
    }
    let again = build(
        &store,
        "env",
        &store.dir().join("out-again"),
        Some(&cache),
        &[],
    );
    assert!(all(&again, "hit"), "{:?}", statuses(&again));
    assert!(!again.stderr.contains("warning"), "{}", again.stderr);
}

#[test]
fn compression_flags_are_checked() {
    let store = small_store();
    let (closure, root) = store.write("env");
    for (args, msg) in [
        (
            &["--compression", "none", "--level", "1"][..],
            "takes no level",
        ),
        (
            &["--compression", "zstd", "--level", "20"][..],
            "zstd level 20 is out of range (1 to 19)",
        ),
        (
            &["--level", "13"][..],
            "gzip level 13 is out of range (0 to 12)",
        ),
        (&["--compression", "xz"][..], "invalid value 'xz'"),
    ] {
        let output = build_command(&store, &closure, &root, &store.dir().join("out"))
            .arg("--no-cache")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
    }
}

/// Sets the modification time of every file under `dir` to `age` ago.
fn age_files(dir: &Path, age: std::time::Duration) {
    #[allow(clippy::disallowed_methods)] // files made old for the test
    let when = std::time::SystemTime::now() - age;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            age_files(&path, age);
        } else {
            fs::File::open(&path).unwrap().set_modified(when).unwrap();
        }
    }
}

/// `nixoci cache prune --json ARGS` on `cache`: exit code, report, stderr.
fn prune(cache: &Path, args: &[&str]) -> (i32, Value, String) {
    let output = nixoci()
        .args(["cache", "prune", "--json", "--cache-dir"])
        .arg(cache)
        .args(args)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (
        output.status.code().unwrap(),
        report,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
}

#[test]
fn prune_removes_what_was_not_used_and_keeps_the_rest_usable() {
    const DAY: std::time::Duration = std::time::Duration::from_secs(86400);
    let store = small_store();
    let cache = store.dir().join("cache");
    let cold = build(&store, "env", &store.dir().join("out"), Some(&cache), &[]);
    let layers = cold.report["layers"].as_array().unwrap().len();
    assert!(layers > 2, "{layers}");

    // Everything 40 days old, then the tool alone used today: one of its
    // layers (a hit) and its plan.
    age_files(&cache, 40 * DAY);
    let tool = build(&store, "tool", &store.dir().join("tool"), Some(&cache), &[]);
    assert!(all(&tool, "hit"), "{:?}", statuses(&tool));
    let used_today = tool.report["layers"].as_array().unwrap().len();

    // A dry run says, and removes nothing.
    let (code, dry, stderr) = prune(&cache, &["--unused-for", "30d", "--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["removedLayers"], layers - used_today, "{dry}");
    assert_eq!(dry["removedPlans"], 1, "{dry}");
    assert_eq!(dry["keptLayers"], used_today);
    assert_eq!(count_files(&cache.join("layers-v1/index")), layers);
    assert!(stderr.contains("would remove"), "{stderr}");

    // Leftovers: a temporary file and a blob no entry names, two hours old,
    // and a fresh unnamed blob (a build may be storing it right now).
    let blobs = cache.join("layers-v1/blobs/sha256");
    #[allow(clippy::disallowed_methods)] // files made old for the test
    let old = std::time::SystemTime::now() - 2 * DAY / 24;
    for name in [".tmp-layer-x".to_owned(), "1".repeat(64)] {
        fs::write(blobs.join(&name), b"left over").unwrap();
        fs::File::open(blobs.join(&name))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    fs::write(blobs.join("2".repeat(64)), b"being stored").unwrap();

    let (code, done, stderr) = prune(&cache, &["--unused-for", "30d"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(done["removedLayers"], dry["removedLayers"]);
    assert_eq!(done["removedOther"], 2, "{done}");
    assert!(done["removedBytes"].as_u64().unwrap() > 0);
    assert_eq!(count_files(&cache.join("layers-v1/index")), used_today);
    assert_eq!(count_files(&cache.join("plans-v1")), 1);
    assert_eq!(count_files(&blobs), used_today + 1);
    assert!(blobs.join("2".repeat(64)).exists());
    assert!(!blobs.join(".tmp-layer-x").exists());

    // What was removed is built again, the same; what was kept is a hit.
    let again = build(&store, "env", &store.dir().join("out2"), Some(&cache), &[]);
    let s = statuses(&again);
    assert_eq!(
        s.iter().filter(|(_, s)| s == "hit").count(),
        used_today,
        "{s:?}"
    );
    assert_eq!(digests(&again), digests(&cold));
    verify(&store.dir().join("out2"));

    // --max-size keeps the most recently used that fit: 0 keeps nothing.
    let (code, empty, stderr) = prune(&cache, &["--max-size", "0"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(empty["keptLayers"], 0, "{empty}");
    assert_eq!(empty["keptPlans"], 0, "{empty}");
    assert_eq!(count_files(&cache.join("layers-v1/index")), 0);
    let rebuilt = build(&store, "env", &store.dir().join("out3"), Some(&cache), &[]);
    assert!(all(&rebuilt, "miss"), "{:?}", statuses(&rebuilt));
    assert_eq!(digests(&rebuilt), digests(&cold));

    // A size that holds the biggest layer only keeps that one, the most
    // recently used first... here all were used at once, so it keeps
    // layers while they fit and removes the rest.
    let total: u64 = rebuilt.report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let (code, half, _) = prune(&cache, &["--max-size", &(total / 2).to_string()]);
    assert_eq!(code, 0);
    assert!(half["keptBytes"].as_u64().unwrap() <= total / 2, "{half}");
    assert!(half["removedLayers"].as_u64().unwrap() > 0, "{half}");
}

#[test]
fn prune_needs_a_policy_and_says_when_there_is_no_cache() {
    let store = small_store();
    let cache = store.dir().join("cache");
    for args in [
        &[][..],
        &["--unused-for", "3w"][..],
        &["--unused-for", "30"][..],
        &["--max-size", "lots"][..],
    ] {
        let (code, _, stderr) = prune(&cache, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let (code, _, stderr) = prune(&cache, &["--unused-for", "1d"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("nothing to prune"), "{stderr}");
    assert!(!cache.exists());
}
