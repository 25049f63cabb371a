//! End-to-end tests: the real `nixoci` binary, the real Nix store (the
//! hermetic closures of `nix/tests/hello.nix`) and real clients (skopeo,
//! umoci, chroot, qemu-aarch64-static) reading the result back.
//!
//! `scripts/setup` installs what they need; `scripts/test` runs them. A
//! missing tool skips a test with a printed reason, except under `CI=true`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

/// A hello image built once per test process, for tests that only read it
/// or work on a copy.
fn reference_layout() -> &'static Path {
    static REF: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, out) = REF.get_or_init(|| {
        // Statics are never dropped: remove what earlier, finished test
        // processes left.
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for e in fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("e2e-reference-")
                .and_then(|r| r.split('-').next())
            {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let t = tempfile::Builder::new()
            .prefix(&format!("e2e-reference-{}-", std::process::id()))
            .tempdir_in(tmp)
            .expect("creating a temporary directory");
        let out = t.path().join("hello.oci");
        build_hello_image(hello(), &out);
        (t, out)
    });
    out
}

/// A fresh copy of the reference layout.
fn copy_of_reference(dir: &Path) -> PathBuf {
    let out = dir.join("copy.oci");
    copy_dir(reference_layout(), &out);
    out
}

fn report_layers(report: &Value) -> BTreeMap<String, Value> {
    array_of(&report["layers"])
        .iter()
        .map(|l| (str_of(&l["digest"]).to_string(), l.clone()))
        .collect()
}

fn store_paths_of(layer: &Value) -> BTreeSet<String> {
    array_of(&layer["storePaths"])
        .iter()
        .map(|p| str_of(p).to_string())
        .collect()
}

#[test]
fn two_platform_image_runs_on_both_platforms() {
    if !require(&[
        "nix",
        "busybox",
        "skopeo",
        "umoci",
        "qemu-aarch64-static",
        "chroot",
        "root",
    ]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let out = tmp.path().join("hello.oci");
    build_hello_image(h, &out);
    let layout = Layout(out.clone());

    let raw = skopeo_inspect_raw(&out, TAG);
    assert_eq!(raw["mediaType"], INDEX_MEDIA_TYPE, "{raw}");
    let manifests = array_of(&raw["manifests"]);
    let platforms: BTreeSet<String> = manifests
        .iter()
        .map(|m| platform_string(&m["platform"]))
        .collect();
    assert_eq!(
        platforms,
        BTreeSet::from(["linux/amd64".to_string(), "linux/arm64/v8".to_string()])
    );
    assert_eq!(manifests.len(), 2);

    let qemu = which("qemu-aarch64-static").expect("required above");
    let cases = [
        ("amd64", None, &h.amd64, &h.closure_amd64, None, "x86_64"),
        (
            "arm64",
            Some("v8"),
            &h.arm64,
            &h.closure_arm64,
            Some(qemu.as_path()),
            "aarch64",
        ),
    ];
    for (arch, variant, root, closure, qemu, machine) in cases {
        let desc = manifests
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .expect("platform listed");
        assert_eq!(desc["mediaType"], MANIFEST_MEDIA_TYPE);
        let manifest = layout.blob_json(str_of(&desc["digest"]));
        let config = layout.blob_json(str_of(&manifest["config"]["digest"]));
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["variant"].as_str(), variant);
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!([format!("{root}/bin/sh"), format!("{root}/bin/hello")]),
            "{{root}} is replaced by the platform's store path"
        );

        // skopeo picks this platform's manifest out of the index.
        let inspected = skopeo_inspect_platform(&out, TAG, arch, variant);
        assert_eq!(inspected["Architecture"], arch);
        let layer_digests: Vec<Value> = array_of(&manifest["layers"])
            .iter()
            .map(|l| l["digest"].clone())
            .collect();
        assert_eq!(inspected["Layers"], Value::Array(layer_digests));

        // umoci unpacks exactly the closure, and the entrypoint runs.
        let bundle = umoci_unpack(&out, desc, tmp.path(), arch);
        let in_store: BTreeSet<String> = fs::read_dir(bundle.join("rootfs/nix/store"))
            .expect("rootfs has /nix/store")
            .map(|e| {
                format!(
                    "/nix/store/{}",
                    e.expect("entry").file_name().to_string_lossy()
                )
            })
            .collect();
        assert_eq!(&in_store, closure, "{arch} rootfs holds its closure only");
        let r = run_bundle(&bundle, qemu).success();
        assert!(r.stdout.contains(GREETING), "{}", r.describe());
        assert!(
            r.stdout.contains(&format!("machine: {machine}")),
            "{}",
            r.describe()
        );
    }
}

#[test]
fn json_report_describes_the_layout() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let out = tmp.path().join("hello.oci");
    let report = build_hello_image(h, &out);
    let layout = Layout(out.clone());

    assert_eq!(report["version"], 1, "{report}");
    assert_eq!(report["tag"], TAG);
    assert_eq!(
        fs::canonicalize(str_of(&report["layout"])).ok(),
        fs::canonicalize(&out).ok()
    );
    assert_eq!(
        fs::read_to_string(out.join("oci-layout"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok()),
        Some(json!({ "imageLayoutVersion": "1.0.0" }))
    );

    let desc = layout.tag_descriptor(TAG);
    assert_eq!(report["index"]["digest"], desc["digest"]);
    assert_eq!(report["index"]["size"], desc["size"]);
    assert_eq!(report["index"]["mediaType"], INDEX_MEDIA_TYPE);
    assert_eq!(desc["mediaType"], INDEX_MEDIA_TYPE);

    let (_, images) = layout.image(TAG);
    let layers = report_layers(&report);
    let reported = array_of(&report["platforms"]);
    assert_eq!(reported.len(), 2);
    for (p, closure, root) in [
        ("linux/amd64", &h.closure_amd64, &h.amd64),
        ("linux/arm64/v8", &h.closure_arm64, &h.arm64),
    ] {
        let image = images
            .iter()
            .find(|i| i.platform == p)
            .unwrap_or_else(|| panic!("{p} in the index"));
        let rp = reported
            .iter()
            .find(|r| r["platform"] == p)
            .unwrap_or_else(|| panic!("{p} in the report: {report}"));
        // The spec says "root"; the CLI prints "roots", a list.
        let roots = if rp["roots"].is_array() {
            rp["roots"].clone()
        } else {
            json!([rp["root"]])
        };
        assert_eq!(roots, json!([root]), "{rp}");
        assert_eq!(rp["manifest"]["digest"], image.descriptor["digest"]);
        assert_eq!(rp["manifest"]["size"], image.descriptor["size"]);
        assert_eq!(rp["config"]["digest"], image.manifest["config"]["digest"]);
        assert_eq!(rp["config"]["size"], image.manifest["config"]["size"]);
        assert_eq!(rp["layers"], json!(image.layers));

        // Each store path of the closure is in exactly one layer.
        let mut seen = BTreeSet::new();
        for (i, d) in image.layers.iter().enumerate() {
            let l = layers
                .get(d)
                .unwrap_or_else(|| panic!("{d} in report.layers"));
            let desc = &image.manifest["layers"][i];
            assert_eq!(desc["size"], l["size"]);
            assert_eq!(desc["mediaType"], l["mediaType"]);
            assert_eq!(image.config["rootfs"]["diff_ids"][i], l["diffId"]);
            for sp in store_paths_of(l) {
                assert!(seen.insert(sp.clone()), "{sp} is in two layers of {p}");
            }
        }
        assert_eq!(&seen, closure, "the layers of {p} hold its closure");
        assert_eq!(image.config["rootfs"]["type"], "layers");
        assert_eq!(
            array_of(&image.config["rootfs"]["diff_ids"]).len(),
            image.layers.len()
        );
    }

    // Nothing in blobs/ that the layout does not reference: no leftovers.
    assert_eq!(layout.blob_digests(), layout.reachable_blobs());
    let top: BTreeSet<String> = fs::read_dir(&out)
        .expect("reading the layout")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        top,
        BTreeSet::from(["blobs".into(), "index.json".into(), "oci-layout".into()])
    );
}

#[test]
fn shared_store_path_is_one_layer_blob() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let out = tmp.path().join("hello.oci");
    let report = build_hello_image(h, &out);
    let layers = report_layers(&report);
    let (_, images) = Layout(out).image(TAG);
    assert_eq!(images.len(), 2);
    let digests = |i: usize| images[i].layers.iter().cloned().collect::<BTreeSet<_>>();
    let in_both: BTreeSet<String> = digests(0).intersection(&digests(1)).cloned().collect();

    let shared = h.shared();
    assert_eq!(shared, BTreeSet::from([h.data.clone()]));
    let with_shared: BTreeSet<String> = layers
        .iter()
        .filter(|(_, l)| !store_paths_of(l).is_disjoint(&shared))
        .map(|(d, _)| d.clone())
        .collect();
    assert!(!with_shared.is_empty(), "{} is in no layer", h.data);
    assert_eq!(
        in_both, with_shared,
        "the manifests share exactly the layers holding shared store paths"
    );
    for d in &in_both {
        let paths = store_paths_of(&layers[d]);
        assert!(
            paths.is_subset(&shared),
            "layer {d} is in both images but holds {paths:?}"
        );
    }
}

#[test]
fn layers_follow_the_tar_rules() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let tmp = tempdir();
    let out = copy_of_reference(tmp.path());
    let layout = Layout(out);
    let (_, images) = layout.image(TAG);
    let mut checked = BTreeSet::new();
    for image in &images {
        for (i, digest) in image.layers.iter().enumerate() {
            if !checked.insert(digest.clone()) {
                continue;
            }
            let media = str_of(&image.manifest["layers"][i]["mediaType"]);
            assert_eq!(media, "application/vnd.oci.image.layer.v1.tar+gzip");
            let mut tar_bytes = Vec::new();
            flate2::read::MultiGzDecoder::new(&layout.blob(digest)[..])
                .read_to_end(&mut tar_bytes)
                .expect("the layer is gzip");
            assert_eq!(
                image.config["rootfs"]["diff_ids"][i],
                json!(sha256_digest(&tar_bytes)),
                "diff_id is the digest of the uncompressed tar"
            );
            check_tar(digest, &tar_bytes);
        }
    }
}

/// Checks one layer against the store: `nix/` and `nix/store/` first,
/// parents before children, owner 0:0, one mtime, and types, modes, link
/// targets and contents as in the store.
fn check_tar(digest: &str, tar_bytes: &[u8]) {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut names = Vec::new();
    let mut mtimes = BTreeSet::new();
    for entry in archive.entries().expect("a tar stream") {
        let mut entry = entry.expect("a tar entry");
        let name = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        let header = entry.header().clone();
        assert_eq!(header.uid().ok(), Some(0), "{digest}: {name} owner");
        assert_eq!(header.gid().ok(), Some(0), "{digest}: {name} group");
        mtimes.insert(header.mtime().expect("mtime"));

        let trimmed = name.trim_end_matches('/');
        let parent = Path::new(trimmed).parent().expect("a parent");
        if !parent.as_os_str().is_empty() {
            let parent = format!("{}/", parent.display());
            assert!(
                names
                    .iter()
                    .any(|n: &String| n.trim_end_matches('/') == parent.trim_end_matches('/')),
                "{digest}: {name} comes before its parent"
            );
        }
        if names.len() < 2 {
            assert_eq!(
                trimmed,
                ["nix", "nix/store"][names.len()],
                "{digest}: nix/ and nix/store/ come first"
            );
        }
        names.push(name.clone());
        if trimmed == "nix" || trimmed == "nix/store" {
            assert!(header.entry_type().is_dir());
            continue;
        }

        let on_disk = Path::new("/").join(trimmed);
        let meta = fs::symlink_metadata(&on_disk)
            .unwrap_or_else(|e| panic!("{digest}: {name} is not in the store: {e}"));
        let mode = header.mode().expect("mode") & 0o7777;
        let ty = header.entry_type();
        if meta.file_type().is_symlink() {
            assert!(ty.is_symlink(), "{digest}: {name} is a symlink");
            assert_eq!(
                entry
                    .link_name()
                    .expect("link name")
                    .map(|l| l.into_owned()),
                Some(fs::read_link(&on_disk).expect("readlink")),
                "{digest}: {name} link target"
            );
        } else if meta.is_dir() {
            assert!(ty.is_dir(), "{digest}: {name} is a directory");
            assert_eq!(
                mode,
                meta.permissions().mode() & 0o7777,
                "{digest}: {name} mode"
            );
        } else if ty.is_hard_link() {
            // Only to an earlier entry of the same layer.
            let target = entry.link_name().expect("link name").expect("a target");
            let target = target.to_string_lossy().into_owned();
            assert!(
                names[..names.len() - 1].contains(&target),
                "{digest}: hardlink {name} -> {target} leaves the layer"
            );
        } else {
            assert!(ty.is_file(), "{digest}: {name} is a regular file");
            assert_eq!(
                mode,
                meta.permissions().mode() & 0o7777,
                "{digest}: {name} mode"
            );
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("entry content");
            assert!(
                content == fs::read(&on_disk).expect("reading the store"),
                "{digest}: {name} content"
            );
        }
    }
    assert_eq!(mtimes.len(), 1, "{digest}: one mtime for every entry");
}

#[test]
fn builds_are_reproducible() {
    if !require(&["nix", "busybox", "sh"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).expect("mkdir");
    fs::create_dir(&b).expect("mkdir");
    let with_umask = |umask: &str, cwd: &Path, args: Vec<OsString>| {
        let mut cmd = Command::new("sh");
        cmd.env("NIX_CONFIG", nix_config())
            .env_remove("SOURCE_DATE_EPOCH")
            .current_dir(cwd)
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_nixoci"))
            .args(args);
        run(&mut cmd).success();
    };
    let s = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    let amd64 = format!("linux/amd64={}", h.amd64);
    let arm64 = format!("linux/arm64={}", h.arm64);
    let arm64_system = format!("aarch64-linux={}", h.arm64);

    let out_a = a.join("hello.oci");
    // No layer cache: both builds must compress for themselves.
    let mut args_a = s(&[
        "build",
        "--no-cache",
        "--jobs",
        "1",
        "--platform",
        amd64.as_str(),
        "--platform",
        arm64.as_str(),
        "--entrypoint",
        "{root}/bin/sh",
        "--entrypoint",
        "{root}/bin/hello",
        "--label",
        "a=1",
        "--label",
        "b=2",
        "--tag",
        TAG,
        "-o",
    ]);
    args_a.push(out_a.clone().into());
    with_umask("022", &a, args_a);

    // Other working directory, umask, flag order, relative output, the Nix
    // system name for the same platform and two threads.
    let args_b = s(&[
        "build",
        "--no-cache",
        "-o",
        "hello.oci",
        "--tag",
        TAG,
        "--label",
        "b=2",
        "--platform",
        arm64_system.as_str(),
        "--entrypoint",
        "{root}/bin/sh",
        "--label",
        "a=1",
        "--platform",
        amd64.as_str(),
        "--jobs",
        "2",
        "--entrypoint",
        "{root}/bin/hello",
    ]);
    with_umask("077", &b, args_b);
    let out_b = b.join("hello.oci");

    for f in ["index.json", "oci-layout"] {
        assert!(
            fs::read(out_a.join(f)).expect("read") == fs::read(out_b.join(f)).expect("read"),
            "{f} differs"
        );
    }
    let blobs = |o: &Path| snapshot(&o.join("blobs"));
    assert_eq!(blobs(&out_a), blobs(&out_b), "blobs differ");
}

#[test]
fn verify_accepts_a_fresh_layout() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let tmp = tempdir();
    let out = copy_of_reference(tmp.path());
    run(nixoci().arg("verify").arg(&out)).success();
}

/// Damages one blob of a fresh copy with `damage`; `verify` must exit 1
/// and name it on stderr.
fn check_verify_catches(pick: impl Fn(&Layout) -> String, damage: impl Fn(&Path)) {
    let tmp = tempdir();
    let out = copy_of_reference(tmp.path());
    let layout = Layout(out.clone());
    let digest = pick(&layout);
    damage(&layout.blob_path(&digest));
    let r = run(nixoci().arg("verify").arg(&out)).expect_code(1);
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        r.stderr.contains(hex),
        "stderr names {digest}: {}",
        r.describe()
    );
}

fn image_index_digest(l: &Layout) -> String {
    str_of(&l.tag_descriptor(TAG)["digest"]).to_string()
}

fn config_digest(l: &Layout) -> String {
    let (_, images) = l.image(TAG);
    str_of(&images[0].manifest["config"]["digest"]).to_string()
}

fn manifest_digest(l: &Layout) -> String {
    let (_, images) = l.image(TAG);
    str_of(&images[1].descriptor["digest"]).to_string()
}

fn layer_digest(l: &Layout) -> String {
    let (_, images) = l.image(TAG);
    images[1].layers[0].clone()
}

#[test]
fn verify_names_a_damaged_image_index() {
    if require(&["nix", "busybox"]) {
        check_verify_catches(image_index_digest, flip_byte);
    }
}

#[test]
fn verify_names_a_damaged_manifest() {
    if require(&["nix", "busybox"]) {
        check_verify_catches(manifest_digest, flip_byte);
    }
}

#[test]
fn verify_names_a_damaged_config() {
    if require(&["nix", "busybox"]) {
        check_verify_catches(config_digest, flip_byte);
    }
}

#[test]
fn verify_names_a_damaged_layer() {
    if require(&["nix", "busybox"]) {
        check_verify_catches(layer_digest, flip_byte);
    }
}

#[test]
fn verify_names_a_missing_layer() {
    if require(&["nix", "busybox"]) {
        check_verify_catches(layer_digest, |p| fs::remove_file(p).expect("rm"));
    }
}

#[test]
fn verify_names_a_truncated_layer() {
    if require(&["nix", "busybox"]) {
        check_verify_catches(layer_digest, |p| {
            let len = fs::metadata(p).expect("stat").len();
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).expect("chmod");
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| f.set_len(len / 2))
                .expect("truncating");
        });
    }
}

/// Runs a build that must fail with `code` and a stderr that `mentions`,
/// twice: into a fresh path, which must not exist afterwards, and into a
/// copy of an existing layout, which must be unchanged. `configure` adds the
/// arguments, given the output path.
fn check_rejected(
    code: i32,
    mentions: impl Fn(&str) -> bool,
    configure: impl Fn(&mut Command, &Path),
) {
    let tmp = tempdir();
    let fresh = tmp.path().join("fresh.oci");
    let mut cmd = nixoci();
    configure(&mut cmd, &fresh);
    let r = run(&mut cmd).expect_code(code);
    assert!(mentions(&r.stderr), "stderr says why: {}", r.describe());
    assert!(
        !exists(&fresh),
        "{} was created: {}",
        fresh.display(),
        r.describe()
    );
    assert!(
        fs::read_dir(tmp.path()).expect("ls").next().is_none(),
        "nothing is left next to the output"
    );

    let existing = copy_of_reference(tmp.path());
    let before = snapshot(&existing);
    let mut cmd = nixoci();
    configure(&mut cmd, &existing);
    let r = run(&mut cmd).expect_code(code);
    assert!(mentions(&r.stderr), "stderr says why: {}", r.describe());
    assert_eq!(snapshot(&existing), before, "the existing layout changed");
    assert_eq!(
        fs::read_dir(tmp.path()).expect("ls").count(),
        1,
        "nothing is left next to the output"
    );
}

/// `build --platform P1 [--platform P2] --entrypoint … -o OUT` with `extra`.
fn build_args(cmd: &mut Command, out: &Path, platforms: &[String], extra: &[&str]) {
    cmd.arg("build");
    for p in platforms {
        cmd.arg("--platform").arg(p);
    }
    cmd.args([
        "--entrypoint",
        "{root}/bin/sh",
        "--entrypoint",
        "{root}/bin/hello",
    ])
    .args(extra)
    .arg("-o")
    .arg(out);
}

#[test]
fn rejects_a_path_not_in_the_store() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let nope = "/nix/store/00000000000000000000000000000000-nope";
    check_rejected(
        2,
        |e| e.contains("00000000000000000000000000000000-nope"),
        |cmd, out| {
            build_args(
                cmd,
                out,
                &[
                    format!("linux/amd64={}", h.amd64),
                    format!("linux/arm64={nope}"),
                ],
                &["--tag", TAG],
            )
        },
    );
}

#[test]
fn rejects_a_path_outside_the_store() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    check_rejected(
        2,
        |e| e.contains("/etc"),
        |cmd, out| {
            build_args(
                cmd,
                out,
                &[
                    format!("linux/amd64={}", h.amd64),
                    "linux/arm64=/etc".into(),
                ],
                &["--tag", TAG],
            )
        },
    );
}

#[test]
fn rejects_an_unknown_platform() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    check_rejected(
        2,
        |e| e.contains("sparc"),
        |cmd, out| {
            build_args(
                cmd,
                out,
                &[format!("linux/sparc={}", h.amd64)],
                &["--tag", TAG],
            )
        },
    );
}

#[test]
fn rejects_the_same_platform_twice() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    check_rejected(
        2,
        |e| e.contains("arm64"),
        |cmd, out| {
            build_args(
                cmd,
                out,
                &[
                    format!("linux/arm64={}", h.arm64),
                    format!("aarch64-linux={}", h.arm64),
                ],
                &["--tag", TAG],
            )
        },
    );
}

#[test]
fn rejects_an_invalid_tag() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    check_rejected(
        2,
        |e| e.contains("Bad Tag!"),
        |cmd, out| {
            build_args(
                cmd,
                out,
                &[
                    format!("linux/amd64={}", h.amd64),
                    format!("linux/arm64={}", h.arm64),
                ],
                &["--tag", "Bad Tag!"],
            )
        },
    );
}

#[test]
fn missing_nix_is_a_setup_error() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let empty = tempdir();
    // Store paths in the message do not count as naming Nix.
    check_rejected(
        2,
        |e| e.replace("/nix/store", "").to_lowercase().contains("nix"),
        |cmd, out| {
            cmd.env("PATH", empty.path());
            build_args(
                cmd,
                out,
                &[
                    format!("linux/amd64={}", h.amd64),
                    format!("linux/arm64={}", h.arm64),
                ],
                &["--tag", TAG],
            )
        },
    );
}

#[test]
fn output_that_is_a_regular_file_is_refused() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let file = tmp.path().join("hello.oci");
    fs::write(&file, "precious\n").expect("writing a file");
    let mut cmd = nixoci();
    build_args(
        &mut cmd,
        &file,
        &[format!("linux/amd64={}", h.amd64)],
        &["--tag", TAG],
    );
    let r = run(&mut cmd).expect_code(2);
    assert!(
        r.stderr.contains("hello.oci"),
        "stderr names the file: {}",
        r.describe()
    );
    assert_eq!(
        fs::read_to_string(&file).ok().as_deref(),
        Some("precious\n")
    );
    assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 1);
}

/// A store path under a temporary store root, with its closure JSON in the
/// `exportReferencesGraph` form.
struct FakeStore {
    root: PathBuf,
    path: String,
    closure_json: PathBuf,
    secret: PathBuf,
}

fn fake_store(dir: &Path) -> FakeStore {
    let name = "11111111111111111111111111111111-nixoci-fake";
    let path = format!("/nix/store/{name}");
    let root = dir.join("store-root");
    let top = root.join("nix/store").join(name);
    fs::create_dir_all(top.join("share")).expect("mkdir");
    fs::write(top.join("share/readable"), "anyone may read this\n").expect("write");
    let secret = top.join("share/secret");
    fs::write(&secret, "only root may read this\n").expect("write");
    std::os::unix::fs::symlink("readable", top.join("share/link")).expect("symlink");
    for d in [
        &root,
        &root.join("nix"),
        &root.join("nix/store"),
        &top,
        &top.join("share"),
    ] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let closure_json = dir.join("closure.json");
    let closure = json!([{
        "path": path,
        "narHash": "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "narSize": 1000,
        "references": [],
    }]);
    fs::write(&closure_json, closure.to_string()).expect("write");
    FakeStore {
        root,
        path,
        closure_json,
        secret,
    }
}

#[test]
fn unreadable_file_in_a_store_path_fails_the_build() {
    // As root, permissions stop no read: run the binary as nobody.
    if is_root() && !require(&["setpriv"]) {
        return;
    }
    let tmp = tempdir();
    let store = fake_store(tmp.path());
    // A copy of the binary that nobody can surely reach and run.
    let bin = tmp.path().join("nixoci");
    fs::copy(env!("CARGO_BIN_EXE_nixoci"), &bin).expect("copying the binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    let outs = tmp.path().join("out");
    fs::create_dir(&outs).expect("mkdir");
    fs::set_permissions(&outs, fs::Permissions::from_mode(0o777)).expect("chmod");

    let build = |out: &Path| {
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        cmd.env_remove("SOURCE_DATE_EPOCH")
            .env("HOME", "/nonexistent")
            .current_dir(&outs)
            .arg("build")
            .arg("--platform")
            .arg(format!("linux/amd64={}", store.path))
            .arg("--store-root")
            .arg(&store.root)
            .arg("--closure-json")
            .arg(&store.closure_json)
            .args(["--tag", TAG, "-o"])
            .arg(out);
        run(&mut cmd)
    };

    // While every file is readable the build works...
    let good = outs.join("good.oci");
    build(&good).success();
    run(nixoci().arg("verify").arg(&good)).success();

    // ...and with one unreadable file it fails, naming the file, leaving no
    // new layout and the existing one as it was.
    fs::set_permissions(&store.secret, fs::Permissions::from_mode(0o000)).expect("chmod");
    let bad = outs.join("bad.oci");
    let r = build(&bad).expect_code(1);
    assert!(
        r.stderr.contains("secret"),
        "stderr names the file: {}",
        r.describe()
    );
    assert!(!exists(&bad), "{} was created", bad.display());

    let before = snapshot(&good);
    let r = build(&good).expect_code(1);
    assert!(
        r.stderr.contains("secret"),
        "stderr names the file: {}",
        r.describe()
    );
    assert_eq!(snapshot(&good), before, "the existing layout changed");
    assert_eq!(
        fs::read_dir(&outs).expect("ls").count(),
        1,
        "nothing left behind"
    );
}

#[test]
fn a_second_tag_keeps_the_first() {
    if !require(&["nix", "busybox", "skopeo"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let out = tmp.path().join("hello.oci");
    let first = build_hello_image(h, &out);
    let second_tag = "example.org/hello:2.0";
    let args: Vec<OsString> = hello_build_args(h, &out)
        .into_iter()
        .map(|a| if a == TAG { second_tag.into() } else { a })
        .collect();
    let second = run(nixoci().args(&args).arg("--json")).success().json();

    let layout = Layout(out.clone());
    let refs: BTreeSet<String> = array_of(&layout.index_json()["manifests"])
        .iter()
        .map(|d| str_of(&d["annotations"][REF_NAME]).to_string())
        .collect();
    assert_eq!(
        refs,
        BTreeSet::from([TAG.to_string(), second_tag.to_string()])
    );
    assert_eq!(first["tag"], TAG);
    assert_eq!(second["tag"], second_tag);
    for tag in [TAG, second_tag] {
        let raw = skopeo_inspect_raw(&out, tag);
        assert_eq!(raw["mediaType"], INDEX_MEDIA_TYPE);
        assert_eq!(array_of(&raw["manifests"]).len(), 2);
    }

    // Building the first tag again replaces its entry, not adds one.
    run(nixoci().args(hello_build_args(h, &out))).success();
    assert_eq!(array_of(&layout.index_json()["manifests"]).len(), 2);
    run(nixoci().arg("verify").arg(&out)).success();
}

#[test]
fn hello_closures_are_as_designed() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    // hello() checks the closures; here the layout of the hello outputs the
    // `{root}` entrypoint depends on.
    let h = hello();
    for (root, bb) in [(&h.amd64, &h.busybox_amd64), (&h.arm64, &h.busybox_arm64)] {
        assert_eq!(
            fs::read_link(Path::new(root).join("bin/sh")).ok(),
            Some(Path::new(bb).join("busybox"))
        );
        let script = fs::read_to_string(Path::new(root).join("bin/hello")).expect("bin/hello");
        assert!(script.starts_with(&format!("#!{bb}/sh\n")), "{script}");
        assert!(script.contains(&h.data), "{script}");
    }
    assert_ne!(h.busybox_amd64, h.busybox_arm64);
}
