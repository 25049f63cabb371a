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

/// A folder for a flake or a Nix file: hello.nix and the busybox folders
/// it imports (./bb-amd64, ./bb-arm64), and `file` (flake.nix or a
/// file's name) holding `text`.
fn hello_dir(dir: &Path, file: &str, text: &str) -> PathBuf {
    let bb = busybox_dirs().expect("required by the caller");
    fs::create_dir_all(dir).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::copy(repo.join("nix/tests/hello.nix"), dir.join("hello.nix")).unwrap();
    for (src, name) in [(&bb.amd64, "bb-amd64"), (&bb.arm64, "bb-arm64")] {
        let d = dir.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::copy(src.join("busybox"), d.join("busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", d.join("sh")).unwrap();
    }
    fs::write(dir.join(file), text).unwrap();
    dir.to_owned()
}

const HELLO: &str = "import ./hello.nix { busyboxAmd64 = ./bb-amd64; busyboxArm64 = ./bb-arm64; }";

/// `-f FILE ATTR` as `nix build -f`: ATTR is an attribute path of FILE's
/// value; `--system` is Nix's `system` setting (builtins.currentSystem)
/// for each system's evaluation, so one attribute gives each system its
/// package; a `--platform` attribute evaluates for the current system.
#[test]
fn a_file_builds_attributes_per_system_like_nix_build_f() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let dir = hello_dir(
        &tmp.path().join("file"),
        "images.nix",
        &format!(
            "let h = {HELLO}; in {{\n  hello = if builtins.currentSystem == \"aarch64-linux\" then h.hello-arm64 else h.hello-amd64;\n  cross.arm64 = h.hello-arm64;\n}}\n"
        ),
    );
    let file = dir.join("images.nix");
    let file = file.to_str().unwrap();
    let out = tmp.path().join("f.oci");
    let out = out.to_str().unwrap();
    let r = run(nixoci().args([
        "build",
        "-f",
        file,
        "hello",
        "--system",
        "x86_64-linux",
        "--system",
        "aarch64-linux",
        "--json",
        "-o",
        out,
    ]))
    .success();
    assert_eq!(
        roots_by_platform(&r.json()),
        [
            ("linux/amd64".to_owned(), h.amd64.clone()),
            ("linux/arm64/v8".to_owned(), h.arm64.clone())
        ]
    );
    let o = format!("{out}:cross");
    let r = run(nixoci().args([
        "build",
        "--file",
        file,
        "--platform",
        "linux/arm64=cross.arm64",
        "--json",
        "-o",
        &o,
    ]))
    .success();
    assert_eq!(
        roots_by_platform(&r.json()),
        [("linux/arm64/v8".to_owned(), h.arm64.clone())]
    );

    // What the file lacks is the user's to fix; flake inputs are not a
    // file's.
    let r = run(nixoci().args(["build", "-f", file, "nope", "--json", "-o", out]));
    r.refused("no attribute nope");
    assert_eq!(r.json()["error"]["kind"], "usage");
    let r = run(nixoci().args([
        "build",
        "-f",
        file,
        "hello",
        "--override-input",
        "dep",
        "path:/x",
        "-o",
        out,
    ]));
    r.refused("--override-input is for flakes");
}

/// `--override-input INPUT REF` and `--impure` reach every nix call that
/// evaluates the flake: the overridden input's package is imaged, and an
/// output that needs impure evaluation fails without `--impure` (exit 1,
/// Nix's message) and builds with it.
#[test]
fn override_input_and_impure_pass_through_to_nix() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    if !host_is_x86_64() {
        eprintln!("SKIPPED: the test flakes' outputs are for an x86-64 host");
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let dep = |name: &str, attr: &str| {
        hello_dir(
            &tmp.path().join(name),
            "flake.nix",
            &format!(
                "{{ outputs = {{ self }}: {{ packages.x86_64-linux.hello = ({HELLO}).{attr}; }}; }}\n"
            ),
        )
    };
    let one = dep("one", "hello-amd64");
    // Another package for the same platform: the shared data path.
    let two = dep("two", "data");
    let main = tmp.path().join("main");
    fs::create_dir_all(&main).unwrap();
    fs::write(
        main.join("flake.nix"),
        format!(
            r#"{{
  inputs.dep.url = "path:{}";
  outputs = {{ self, dep }}: {{
    packages.x86_64-linux.fromdep = dep.packages.x86_64-linux.hello;
    packages.x86_64-linux.impure =
      if builtins ? currentSystem then dep.packages.x86_64-linux.hello
      else throw "nixoci-test: this output needs --impure";
  }};
}}
"#,
            one.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("o.oci");
    let out = out.to_str().unwrap();
    let root = |args: &[&str]| {
        let r = build_in(&main, &[args, &["--json", "-o", out]].concat()).success();
        roots_by_platform(&r.json())[0].1.clone()
    };
    assert_eq!(root(&["--platform", "linux/amd64=.#fromdep"]), h.amd64);
    let two_ref = format!("path:{}", two.display());
    assert_eq!(
        root(&[
            "--platform",
            "linux/amd64=.#fromdep",
            "--override-input",
            "dep",
            &two_ref
        ]),
        h.data
    );
    // .#fromdep resolves (packages.SYSTEM.fromdep) in the overridden flake too.
    assert_eq!(
        root(&[
            ".#fromdep",
            "--system",
            "x86_64-linux",
            "--override-input",
            "dep",
            &two_ref
        ]),
        h.data
    );

    let r = build_in(&main, &[".#impure", "--json", "-o", out]).expect_code(1);
    assert!(
        r.stderr.contains("this output needs --impure"),
        "{}",
        r.describe()
    );
    assert_eq!(r.json()["error"]["kind"], "failed");
    assert_eq!(root(&[".#impure", "--impure"]), h.amd64);
}

/// `-L` shows the build log of what Nix builds, as `nix build -L`; without
/// it the log stays Nix's.
#[test]
fn print_build_logs_shows_the_build_log() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let tmp = tempdir();
    // A derivation no store has yet: its name holds the temporary folder's.
    let nonce = tmp
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let dir = hello_dir(
        &tmp.path().join("file"),
        "loud.nix",
        &format!(
            r#"let bb = builtins.path {{ path = ./bb-amd64; name = "busybox"; }};
    loud = n: derivation {{
      name = "nixoci-loud-${{n}}-{nonce}"; system = builtins.currentSystem; builder = "${{bb}}/sh";
      args = [ "-c" "echo NIXOCI-LOG-${{n}}-{nonce}; ${{bb}}/busybox mkdir $out" ];
    }};
in {{ a = loud "a"; b = loud "b"; }}
"#
        ),
    );
    let file = dir.join("loud.nix");
    let file = file.to_str().unwrap();
    for (attr, flag, shown) in [("a", Some("-L"), true), ("b", None, false)] {
        let out = tmp.path().join(format!("{attr}.oci"));
        let mut cmd = nixoci();
        cmd.args(["build", "-f", file, attr, "-o", out.to_str().unwrap()]);
        cmd.args(flag);
        let r = run(&mut cmd).success();
        assert_eq!(
            r.stderr.contains(&format!("NIXOCI-LOG-{attr}-{nonce}")),
            shown,
            "{}",
            r.describe()
        );
    }
}
