//! The layer planner through the real binary: `nixoci plan` and
//! `nixoci build --previous` on a fake two-platform store tree in a
//! temporary directory (no Nix needed).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
const PLATFORMS: [&str; 2] = ["amd64", "arm64"];

/// name, NAR size, references, shared by both platforms.
const GRAPH: &[(&str, u64, &[&str], bool)] = &[
    ("glibc", 40_000, &[], false),
    ("zlib", 3_000, &["glibc"], false),
    ("openssl", 20_000, &["glibc"], false),
    ("python", 50_000, &["glibc", "zlib", "openssl"], false),
    ("py-requests", 8_000, &["python"], false),
    ("perl", 30_000, &["glibc"], false),
    ("tzdata", 10_000, &[], true),
    ("app", 5_000, &["py-requests", "perl", "tzdata"], false),
];

/// A fake store: each path a directory with one file, and the closure of
/// both platforms as an exportReferencesGraph list.
struct Store {
    dir: PathBuf,
    /// (platform, name) to store path; shared paths under both platforms.
    paths: BTreeMap<(String, String), String>,
}

fn hash(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    digest
        .iter()
        .take(32)
        .map(|b| char::from(ALPHABET[usize::from(*b) % 32]))
        .collect()
}

impl Store {
    /// The store with the given versions of some packages (others at 1),
    /// as closure `label`. A path's hash covers its version and its
    /// references' paths, as in Nix: a change changes every dependent.
    fn new(dir: &Path, versions: &[(&str, &str)], label: &str) -> Store {
        let mut paths: BTreeMap<(String, String), String> = BTreeMap::new();
        let versions: BTreeMap<&str, &str> = versions.iter().copied().collect();
        let mut entries = Vec::new();
        for platform in PLATFORMS {
            for (name, size, refs, shared) in GRAPH {
                let v = versions.get(name).copied().unwrap_or("1");
                let seed_platform = if *shared { "any" } else { platform };
                let inputs: Vec<&str> = refs
                    .iter()
                    .map(|r| paths[&(platform.to_owned(), (*r).to_owned())].as_str())
                    .collect();
                let seed = format!("{seed_platform}-{name}-{v}-{}", inputs.join(","));
                let path = format!("/nix/store/{}-{name}", hash(&seed));
                paths.insert((platform.to_owned(), (*name).to_owned()), path.clone());
                if *shared && platform != PLATFORMS[0] {
                    continue;
                }
                let on_disk = dir.join("root").join(path.trim_start_matches('/'));
                fs::create_dir_all(&on_disk).unwrap();
                fs::write(on_disk.join("data"), format!("{name} {v} {platform}\n")).unwrap();
                let refs: Vec<String> = refs
                    .iter()
                    .map(|r| paths[&(platform.to_owned(), (*r).to_owned())].clone())
                    .collect();
                let nar_hash = base64::engine::general_purpose::STANDARD
                    .encode(Sha256::digest(path.as_bytes()));
                entries.push(json!({
                    "path": path,
                    "narHash": format!("sha256-{nar_hash}"),
                    "narSize": size,
                    "references": refs,
                }));
            }
        }
        let list = serde_json::to_vec_pretty(&Value::Array(entries)).unwrap();
        fs::write(dir.join(format!("closure-{label}.json")), list).unwrap();
        Store {
            dir: dir.to_owned(),
            paths,
        }
    }

    fn path(&self, platform: &str, name: &str) -> &str {
        &self.paths[&(platform.to_owned(), name.to_owned())]
    }

    /// `nixoci SUBCOMMAND` for both platforms' apps with this store's
    /// closure `version`.
    fn nixoci(&self, sub: &str, version: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_nixoci"))
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("NIX_STORE_DIR")
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .arg(sub)
            .args([
                "--platform",
                &format!("linux/amd64={}", self.path("amd64", "app")),
            ])
            .args([
                "--platform",
                &format!("linux/arm64={}", self.path("arm64", "app")),
            ])
            .arg("--closure-json")
            .arg(self.dir.join(format!("closure-{version}.json")))
            .arg("--store-root")
            .arg(self.dir.join("root"))
            .args(args)
            .output()
            .unwrap()
    }
}

fn ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "nixoci failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Each platform's layers in a plan, bottom first, as sets of paths.
fn plan_layers(plan: &Value) -> BTreeMap<String, Vec<Vec<String>>> {
    plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            let layers = image["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| strings(&plan["layers"][i.as_u64().unwrap() as usize]["storePaths"]))
                .collect();
            (image["platform"].as_str().unwrap().to_owned(), layers)
        })
        .collect()
}

#[test]
fn plan_json_covers_every_path_once_within_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path(), &[], "1");
    let plan = ok(&store.nixoci("plan", "1", &["--json", "--max-layers", "5"]));
    assert_eq!(plan["version"], 2);
    let images = plan_layers(&plan);
    assert_eq!(images.len(), 2);
    for (platform, layers) in &images {
        assert!(layers.len() <= 5, "{platform}: {layers:?}");
        let all: Vec<&String> = layers.iter().flatten().collect();
        let unique: BTreeSet<&String> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "a path in two layers");
        assert_eq!(all.len(), GRAPH.len());
        // The application alone, on top.
        let arch = platform.split('/').nth(1).unwrap();
        assert_eq!(
            layers.last().unwrap(),
            &vec![store.path(arch, "app").to_owned()]
        );
    }
    // The shared data path is in the same layer of both images: one blob.
    let tz = store.path("amd64", "tzdata");
    let with_tz: Vec<&Vec<String>> = images
        .values()
        .map(|layers| layers.iter().find(|l| l.iter().any(|p| p == tz)).unwrap())
        .collect();
    assert_eq!(with_tz[0], with_tz[1]);

    // Text: a header per platform and a row per layer.
    let text = store.nixoci("plan", "1", &["--max-layers", "5"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("linux/amd64: "), "{text}");
    assert!(text.contains("linux/arm64/v8: "), "{text}");
    assert!(text.contains(tz), "{text}");
}

#[test]
fn pins_and_reserved_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path(), &[], "1");
    let pin = format!(
        "{},{}",
        store.path("amd64", "perl"),
        store.path("amd64", "zlib")
    );
    let plan = ok(&store.nixoci(
        "plan",
        "1",
        &[
            "--json",
            "--max-layers",
            "6",
            "--reserve-layers",
            "2",
            "--layer",
            &pin,
        ],
    ));
    let mut pinned: Vec<String> = vec![
        store.path("amd64", "perl").to_owned(),
        store.path("amd64", "zlib").to_owned(),
    ];
    pinned.sort();
    let layer = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| strings(&l["storePaths"]) == pinned)
        .expect("the pinned paths are one layer of their own");
    assert_eq!(layer["origin"], "pinned");
    for layers in plan_layers(&plan).values() {
        assert!(layers.len() <= 4, "{layers:?}");
    }

    // A pin outside the closure, and no room left: usage errors.
    let stray = format!("/nix/store/{}-stray", hash("stray"));
    let out = store.nixoci("plan", "1", &["--layer", &stray]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = store.nixoci("plan", "1", &["--max-layers", "3", "--reserve-layers", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let out = store.nixoci("plan", "1", &["--min-layer-size", "lots"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Layer digests by the set of store paths they hold, per platform, from
/// a build's report.
fn digests(report: &Value) -> BTreeMap<Vec<String>, String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let l = l.get("layer").unwrap_or(l);
            (
                strings(&l["storePaths"]),
                l["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn build(store: &Store, version: &str, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "--max-layers", "5", "-o"];
    let out = out.to_str().unwrap();
    args.push(out);
    args.extend_from_slice(extra);
    ok(&store.nixoci("build", version, &args))
}

#[test]
fn previous_keeps_unchanged_layers_and_their_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let before_store = Store::new(tmp.path(), &[], "1");
    let first = tmp.path().join("first.oci");
    let before = digests(&build(&before_store, "1", &first, &[]));

    // Every layer descriptor names its store paths.
    let index: Value =
        serde_json::from_slice(&fs::read(first.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| -> Value {
        let hex = d.trim_start_matches("sha256:");
        serde_json::from_slice(&fs::read(first.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let image_index = blob(index["manifests"][0]["digest"].as_str().unwrap());
    for m in image_index["manifests"].as_array().unwrap() {
        let manifest = blob(m["digest"].as_str().unwrap());
        for l in manifest["layers"].as_array().unwrap() {
            let names = l["annotations"]["dev.nixoci.store-paths"].as_str().unwrap();
            let paths: Vec<String> = names
                .split(' ')
                .map(|n| format!("/nix/store/{n}"))
                .collect();
            assert_eq!(before[&paths], l["digest"].as_str().unwrap());
        }
    }

    // openssl changes, and with it python, py-requests and the app.
    let after_store = Store::new(tmp.path(), &[("openssl", "2")], "2");
    let only_in = |a: &Store, b: &Store| -> BTreeSet<String> {
        a.paths
            .values()
            .filter(|p| !b.paths.values().any(|q| q == *p))
            .cloned()
            .collect()
    };
    let (gone, new) = (
        only_in(&before_store, &after_store),
        only_in(&after_store, &before_store),
    );
    assert_eq!((gone.len(), new.len()), (8, 8));
    let second = tmp.path().join("second.oci");
    let previous = format!("{}", first.display());
    let after = digests(&build(
        &after_store,
        "2",
        &second,
        &["--previous", &previous],
    ));
    for (paths, digest) in &before {
        if paths.iter().all(|p| !gone.contains(p)) {
            assert_eq!(
                after.get(paths),
                Some(digest),
                "unchanged layer {paths:?} not kept"
            );
        }
    }
    for paths in after.keys() {
        if !before.contains_key(paths) {
            assert!(
                paths.iter().any(|p| new.contains(p)),
                "new layer {paths:?} holds only unchanged paths"
            );
        }
    }

    // Then only the application changes: only its layer is new.
    let app_store = Store::new(tmp.path(), &[("openssl", "2"), ("app", "2")], "3");
    let third = tmp.path().join("third.oci");
    let previous = format!("{}:latest", second.display());
    let last = digests(&build(&app_store, "3", &third, &["--previous", &previous]));
    let fresh: Vec<&Vec<String>> = last.keys().filter(|p| !after.contains_key(*p)).collect();
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    for paths in fresh {
        assert_eq!(paths.len(), 1);
        assert!(paths[0].ends_with("-app"));
    }

    // Plan shows the kept layers as kept.
    let plan = ok(&app_store.nixoci(
        "plan",
        "3",
        &["--json", "--max-layers", "5", "--previous", &previous],
    ));
    let origins: BTreeSet<&str> = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["origin"].as_str().unwrap())
        .collect();
    assert!(origins.contains("previous"), "{origins:?}");

    // A previous layout that is not there is a usage error.
    let out = app_store.nixoci(
        "plan",
        "3",
        &[
            "--previous",
            tmp.path().join("missing.oci").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}
