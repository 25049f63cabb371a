//! The architecture check (#15 part 4): an image holding ELF programs or
//! shared libraries of another architecture than its platform's is refused
//! (exit 2, one line naming the platform, the file and both architectures),
//! from `nixoci build` and from the Nix library's `ociLayout`;
//! `--no-arch-check` and `archCheck = false` build it anyway. The right
//! architectures and closures without ELF files pass, a store path shared
//! by two platforms is checked against each, and a cached layer is checked
//! from what the cache remembers, without reading the store.
//!
//! The closures are those of `nix/tests/hello.nix` (static x86-64 and
//! aarch64 busybox); `scripts/setup` installs what the tests need.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// The message for the x86-64 busybox of `h` in an arm64 image, up to
/// the way to turn the check off.
fn amd64_busybox_in_arm64(h: &Hello) -> String {
    format!(
        "linux/arm64/v8: {}/busybox is an x86-64 ELF executable, not aarch64",
        h.busybox_amd64
    )
}

#[test]
fn an_amd64_closure_named_as_arm64_is_refused_naming_the_file() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let out = tmp.path().join("wrong.oci");
    let build = |extra: &[&str]| {
        run(nixoci()
            .arg("build")
            .arg("--platform")
            .arg(format!("linux/arm64={}", h.amd64))
            .args(extra)
            .arg("-o")
            .arg(&out))
    };
    for cache in [&["--no-cache"][..], &[]] {
        let line = build(cache)
            .refused(&format!(
                "{} (use --no-arch-check to build anyway)",
                amd64_busybox_in_arm64(h)
            ))
            .to_owned();
        assert!(line.starts_with("nixoci: error: "), "{line}");
        assert!(!out.exists(), "a refused build leaves no layout: {line}");
    }
    // A Nix system names the platform as well.
    let r = run(nixoci()
        .arg("build")
        .arg("--platform")
        .arg(format!("aarch64-linux={}", h.amd64))
        .arg("-o")
        .arg(&out));
    r.refused(&amd64_busybox_in_arm64(h));

    // --no-arch-check builds it all the same.
    build(&["--no-arch-check"]).success();
    run(nixoci().arg("verify").arg(&out)).success();
}

#[test]
fn right_architectures_and_data_only_closures_pass() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    // busybox arm64 for arm64, x86-64 for amd64, in one image.
    let out = tmp.path().join("hello.oci");
    build_hello_image(h, &out);
    run(nixoci().arg("verify").arg(&out)).success();
    // The data path (regular files, an executable script, no ELF) suits
    // every platform.
    let data = tmp.path().join("data.oci");
    let mut cmd = nixoci();
    cmd.arg("build").arg("--no-cache");
    for platform in [
        "linux/amd64",
        "linux/arm64",
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/386",
        "linux/riscv64",
        "linux/ppc64le",
        "linux/s390x",
    ] {
        cmd.arg("--platform").arg(format!("{platform}={}", h.data));
    }
    run(cmd.arg("-o").arg(&data)).success();
    run(nixoci().arg("verify").arg(&data)).success();
}

#[test]
fn a_store_path_shared_by_two_platforms_is_checked_for_each() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    // The x86-64 hello for both: its layers are shared, and wrong for
    // arm64 only.
    let r = run(nixoci()
        .arg("build")
        .arg("--platform")
        .arg(format!("linux/amd64={}", h.amd64))
        .arg("--platform")
        .arg(format!("linux/arm64={}", h.amd64))
        .arg("-o")
        .arg(tmp.path().join("shared.oci")));
    r.refused(&amd64_busybox_in_arm64(h));
    // The aarch64 hello for both: wrong for amd64.
    let r = run(nixoci()
        .arg("build")
        .arg("--platform")
        .arg(format!("linux/amd64={}", h.arm64))
        .arg("--platform")
        .arg(format!("linux/arm64={}", h.arm64))
        .arg("-o")
        .arg(tmp.path().join("shared.oci")));
    r.refused(&format!(
        "linux/amd64: {}/busybox is an aarch64 ELF executable, not x86-64",
        h.busybox_arm64
    ));
}

/// A store under `root` holding one path, `/nix/store/<hash>-tool`, with
/// `bin/tool` a copy of `program`; returns the closure file and the path.
fn fake_store(root: &Path, program: &Path) -> (std::path::PathBuf, String) {
    let path = format!("/nix/store/{}-tool", "a".repeat(32));
    let bin = root.join(path.trim_start_matches('/')).join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(program, bin.join("tool")).unwrap();
    fs::set_permissions(bin.join("tool"), fs::Permissions::from_mode(0o555)).unwrap();
    let closure = root.join("closure.json");
    fs::write(
        &closure,
        format!(
            r#"[{{"path":"{path}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":1000000,"references":[]}}]"#
        ),
    )
    .unwrap();
    (closure, path)
}

#[test]
fn a_cached_layer_is_checked_without_reading_the_store() {
    if !require(&["busybox"]) {
        return;
    }
    let bb = busybox_dirs().expect("required");
    let tmp = tempdir();
    let root = tmp.path().join("root");
    let (closure, path) = fake_store(&root, &bb.amd64.join("busybox"));
    let build_with = |cache: &Path, platform: &str, out: &str, extra: &[&str]| {
        run(nixoci()
            .arg("build")
            .arg("--platform")
            .arg(format!("{platform}={path}"))
            .arg("--closure-json")
            .arg(&closure)
            .arg("--store-root")
            .arg(&root)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--json")
            .args(extra)
            .arg("-o")
            .arg(tmp.path().join(out)))
    };
    let cache = tmp.path().join("cache");
    let build =
        |platform: &str, out: &str, extra: &[&str]| build_with(&cache, platform, out, extra);
    let first = build("linux/amd64", "amd64.oci", &[]).success().json();
    assert_eq!(first["layers"][0]["cache"], "miss", "{first}");

    // The program is gone from the store: only the cache can tell.
    fs::remove_file(root.join(path.trim_start_matches('/')).join("bin/tool")).unwrap();
    build("linux/arm64", "arm64.oci", &[]).refused(&format!(
        "linux/arm64/v8: {path}/bin/tool is an x86-64 ELF executable, not aarch64"
    ));
    let forced = build("linux/arm64", "arm64.oci", &["--no-arch-check"])
        .success()
        .json();
    assert_eq!(forced["layers"][0]["cache"], "hit", "{forced}");
    assert_eq!(
        forced["layers"][0]["digest"], first["layers"][0]["digest"],
        "the same blob"
    );
    // With an empty cache the store is read: no program, nothing to refuse.
    build_with(&tmp.path().join("empty"), "linux/arm64", "cold.oci", &[]).success();
}

/// `nix build` of an `ociLayout` of `images` (Nix attributes) with the
/// binary under test as its builder.
fn build_oci_layout(images: &str, extra: &str) -> Run {
    let tmp = tempdir();
    let bin = tmp.path().join("nixoci/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_nixoci"), bin.join("nixoci")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let system = format!("{}-linux", std::env::consts::ARCH);
    let expr = format!(
        r#"let lib = import {lib} {{ nixoci = builtins.path {{ path = {pkg}; name = "nixoci"; }}; system = "{system}"; }};
           in lib.ociLayout {{ name = "arch-check"; images = {images}; {extra} }}"#,
        lib = repo.join("nix/lib").display(),
        pkg = tmp.path().join("nixoci").display(),
    );
    run(nix().args([
        "build",
        "--json",
        "--no-link",
        "-L",
        "--impure",
        "--expr",
        &expr,
    ]))
}

#[test]
fn oci_layout_refuses_an_amd64_closure_as_arm64_unless_told() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let h = hello();
    let wrong = format!(r#"{{ aarch64-linux = builtins.storePath "{}"; }}"#, h.amd64);
    let r = build_oci_layout(&wrong, "");
    assert_ne!(r.code, Some(0), "{}", r.describe());
    assert!(
        r.stderr.contains(&format!(
            "{} (set archCheck = false in ociLayout to build anyway)",
            amd64_busybox_in_arm64(h)
        )),
        "the build failure names the file: {}",
        r.describe()
    );

    let built = build_oci_layout(&wrong, "archCheck = false;")
        .success()
        .json();
    run(nixoci()
        .arg("verify")
        .arg(str_of(&built[0]["outputs"]["out"])))
    .success();

    // busybox arm64 for arm64 passes.
    let right = format!(
        r#"{{ aarch64-linux = builtins.storePath "{}"; x86_64-linux = builtins.storePath "{}"; }}"#,
        h.arm64, h.amd64
    );
    build_oci_layout(&right, "").success();
}
