//! `nixoci build` on a hermetic test flake (busybox builder, no nixpkgs):
//! per-system outputs with `--system`, cross-style outputs with
//! `--platform`, and the errors of a missing attribute, an unknown system
//! and a failing derivation.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A flake whose packages come from nix/tests/hello.nix:
/// `packages.x86_64-linux.hello`, `packages.aarch64-linux.hello`, the
/// cross-style `packages.x86_64-linux.hello-arm64`, and
/// `packages.x86_64-linux.broken`, whose builder fails.
fn test_flake(dir: &Path) -> PathBuf {
    let bb = busybox_dirs().expect("required by the caller");
    let flake = dir.join("flake");
    fs::create_dir_all(&flake).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::copy(repo.join("nix/tests/hello.nix"), flake.join("hello.nix")).unwrap();
    for (src, name) in [(&bb.amd64, "bb-amd64"), (&bb.arm64, "bb-arm64")] {
        let d = flake.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::copy(src.join("busybox"), d.join("busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", d.join("sh")).unwrap();
    }
    fs::write(
        flake.join("flake.nix"),
        r#"{
  outputs = { self }:
    let
      hello = import ./hello.nix { busyboxAmd64 = ./bb-amd64; busyboxArm64 = ./bb-arm64; };
      bb = builtins.path { path = ./bb-amd64; name = "busybox"; };
    in {
      packages.x86_64-linux.hello = hello.hello-amd64;
      packages.x86_64-linux.hello-arm64 = hello.hello-arm64;
      packages.aarch64-linux.hello = hello.hello-arm64;
      packages.x86_64-linux.broken = derivation {
        name = "nixoci-broken"; system = "x86_64-linux"; builder = "${bb}/sh";
        args = [ "-c" "echo this build fails on purpose >&2; exit 3" ];
      };
    };
}
"#,
    )
    .unwrap();
    flake
}

fn build_in(flake: &Path, args: &[&str]) -> Run {
    run(nixoci().current_dir(flake).arg("build").args(args))
}

fn roots_by_platform(report: &Value) -> Vec<(String, String)> {
    array_of(&report["platforms"])
        .iter()
        .map(|p| {
            (
                str_of(&p["platform"]).to_owned(),
                str_of(&p["roots"][0]).to_owned(),
            )
        })
        .collect()
}

fn host_is_x86_64() -> bool {
    std::env::consts::ARCH == "x86_64"
}

#[test]
fn per_system_outputs_and_cross_outputs_give_the_same_image() {
    if !require(&[
        "nix",
        "busybox",
        "umoci",
        "qemu-aarch64-static",
        "chroot",
        "root",
    ]) {
        return;
    }
    if !host_is_x86_64() {
        eprintln!("SKIPPED: the test flake's cross-style output is for an x86-64 host");
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let flake = test_flake(tmp.path());
    let entry = [
        "--entrypoint",
        "{root}/bin/sh",
        "--entrypoint",
        "{root}/bin/hello",
    ];

    let by_system = tmp.path().join("by-system.oci");
    let mut args = vec![
        ".#hello",
        "--system",
        "x86_64-linux",
        "--system",
        "aarch64-linux",
        "--json",
        "--tag",
        TAG,
        "-o",
    ];
    args.push(by_system.to_str().unwrap());
    args.extend(entry);
    let a = build_in(&flake, &args).success().json();
    assert_eq!(
        roots_by_platform(&a),
        [
            ("linux/amd64".to_owned(), h.amd64.clone()),
            ("linux/arm64/v8".to_owned(), h.arm64.clone())
        ]
    );

    // Platforms in another order than Nix prints its results: each image
    // still gets its own platform's output.
    let by_platform = tmp.path().join("by-platform.oci");
    let mut args = vec![
        "--platform",
        "linux/arm64=.#hello-arm64",
        "--platform",
        "linux/amd64=.#hello",
        "--json",
        "--tag",
        TAG,
        "-o",
    ];
    args.push(by_platform.to_str().unwrap());
    args.extend(entry);
    let b = build_in(&flake, &args).success().json();
    assert_eq!(roots_by_platform(&b), roots_by_platform(&a));
    assert_eq!(
        a["index"]["digest"], b["index"]["digest"],
        "the same closures and config give the same image"
    );

    // Both images run.
    let layout = Layout(by_platform.clone());
    let qemu = which("qemu-aarch64-static").expect("required above");
    let (_, images) = layout.image(TAG);
    assert_eq!(images.len(), 2);
    for image in &images {
        let arm = image.platform.contains("arm64");
        let name = if arm { "arm64" } else { "amd64" };
        let bundle = umoci_unpack(&by_platform, &image.descriptor, tmp.path(), name);
        let r = run_bundle(&bundle, arm.then_some(qemu.as_path())).success();
        assert!(r.stdout.contains(GREETING), "{}", r.describe());
        let machine = if arm { "aarch64" } else { "x86_64" };
        assert!(
            r.stdout.contains(&format!("machine: {machine}")),
            "{}",
            r.describe()
        );
    }
}

/// Runs `nixoci build ARGS -o OUT` in a fresh test flake, expects exit
/// `code`, and checks that no output was written.
fn rejected_build(args: &[&str], code: i32) -> Run {
    let tmp = tempdir();
    let flake = test_flake(tmp.path());
    let out = tmp.path().join("out.oci");
    let mut all = args.to_vec();
    all.extend(["-o", out.to_str().unwrap()]);
    let r = build_in(&flake, &all).expect_code(code);
    assert!(
        !out.exists(),
        "{} was written: {}",
        out.display(),
        r.describe()
    );
    r
}

#[test]
fn a_missing_attribute_lists_what_the_flake_has() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let r = rejected_build(&[".#nope", "--system", "x86_64-linux"], 2);
    assert!(r.stderr.contains(".#nope"), "{}", r.describe());
    assert!(
        r.stderr.contains("x86_64-linux: broken hello hello-arm64"),
        "names the flake's packages: {}",
        r.describe()
    );
    assert!(
        r.stderr.contains("aarch64-linux: hello"),
        "{}",
        r.describe()
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.describe());
}

#[test]
fn an_unknown_system_is_a_usage_error() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let r = rejected_build(&[".#hello", "--system", "sparc-linux"], 2);
    assert!(r.stderr.contains("sparc-linux"), "{}", r.describe());
}

#[test]
fn a_failing_derivation_names_its_platform() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let r = rejected_build(
        &[
            "--platform",
            "linux/amd64=.#packages.x86_64-linux.broken",
            "--platform",
            "linux/arm64=.#packages.aarch64-linux.hello",
        ],
        1,
    );
    // Nix's own output comes through, then one line of ours.
    assert!(
        r.stderr.contains("this build fails on purpose"),
        "{}",
        r.describe()
    );
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("nixoci: error: nix build failed for linux/amd64"),
        "{}",
        r.describe()
    );
    assert!(!last.contains("linux/arm64"), "{}", r.describe());
}

/// `--copy-to-root .#hello` resolves per system like the image's own
/// installable, in the same nix build: each platform's root layer holds
/// its own hello's tree.
#[test]
fn copy_to_root_resolves_flake_attributes_per_system() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let flake = test_flake(tmp.path());
    let out = tmp.path().join("copy.oci");
    let r = build_in(
        &flake,
        &[
            ".#hello",
            "--system",
            "x86_64-linux",
            "--system",
            "aarch64-linux",
            "--copy-to-root",
            ".#hello",
            "--json",
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .success();
    let report = r.json();
    for (platform, root) in [("linux/amd64", &h.amd64), ("linux/arm64/v8", &h.arm64)] {
        let image = array_of(&report["platforms"])
            .iter()
            .find(|p| p["platform"].as_str() == Some(platform))
            .unwrap_or_else(|| panic!("no {platform}: {}", r.describe()));
        let top = str_of(array_of(&image["layers"]).last().unwrap());
        let blob = out
            .join("blobs/sha256")
            .join(top.trim_start_matches("sha256:"));
        let listing = run(std::process::Command::new("tar").arg("-tvzf").arg(&blob)).success();
        // bin/sh is the hello store path's own symlink to its busybox.
        let sh = listing
            .stdout
            .lines()
            .find(|l| l.contains(" bin/sh -> "))
            .unwrap_or_else(|| panic!("{platform}: {}", listing.stdout));
        let hello_dir = fs::read_link(Path::new(root).join("bin/sh")).unwrap();
        assert!(
            sh.ends_with(&hello_dir.to_string_lossy().into_owned()),
            "{sh}"
        );
        assert!(listing.stdout.contains(" bin/hello"), "{}", listing.stdout);
    }
}
