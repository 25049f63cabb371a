//! Integration tests of the Nix side: the library (`nix/lib`), its checks
//! (`nix/checks`), `flake.nix` and the starter template, built with the real
//! `nix` and the nixoci binary under test as the derivations' builder (a
//! folder holding `bin/nixoci`, imported into the store).
//!
//! - `ociLayout` built by `nix build` passes `nixoci verify` and
//!   `skopeo inspect`, names itself in `nix-support/hydra-build-products`,
//!   and is byte for byte the layout `nixoci build` writes for the same
//!   inputs.
//! - `image` writes a spec whose config `nixoci build` puts in the image.
//! - The flake's outputs and checks, and the template's `nix run` and
//!   `nix build .#oci`, work with nixpkgs replaced by
//!   `nix/checks/stub-nixpkgs` (nothing can be fetched here).
//!
//! `scripts/setup` installs what they need. A missing tool skips a test with
//! a printed reason, except under `CI=true`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Writes `dir/bin/nixoci`, a copy of the binary under test (a copy, not a
/// link: the folder is imported into the Nix store).
fn nixoci_package(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("creating bin");
    fs::copy(env!("CARGO_BIN_EXE_nixoci"), bin.join("nixoci")).expect("copying nixoci");
    dir.to_path_buf()
}

/// Every attribute of `nix/checks` (all derivations).
const CHECKS: [&str; 13] = [
    "hello-amd64",
    "hello-arm64",
    "spec-amd64",
    "spec-arm64",
    "layout",
    "layout-plain",
    "spec-rootfs-amd64",
    "spec-rootfs-arm64",
    "layout-rootfs",
    "spec-contents",
    "layout-verified",
    "layout-plain-verified",
    "lib-eval",
];

/// Builds every attribute of `nix/checks` once per test process, with the
/// binary under test as `nixoci`; returns attribute -> store path.
fn checks() -> &'static BTreeMap<String, String> {
    static CHECKS_BUILT: OnceLock<Result<BTreeMap<String, String>, String>> = OnceLock::new();
    match CHECKS_BUILT.get_or_init(build_checks) {
        Ok(m) => m,
        Err(e) => panic!("building nix/checks: {e}"),
    }
}

fn build_checks() -> Result<BTreeMap<String, String>, String> {
    let bb = busybox_dirs()?;
    let tmp = tempdir();
    let pkg = nixoci_package(&tmp.path().join("nixoci"));
    let r = run(nix()
        .args(["build", "--json", "--no-link", "-L", "-f"])
        .arg(repo().join("nix/checks"))
        .arg("--argstr")
        .arg("nixoci")
        .arg(&pkg)
        .arg("--argstr")
        .arg("busyboxAmd64")
        .arg(&bb.amd64)
        .arg("--argstr")
        .arg("busyboxArm64")
        .arg(&bb.arm64)
        .args(CHECKS));
    if r.code != Some(0) {
        return Err(r.describe());
    }
    // `nix build --json` lists outputs in no fixed order: ask for them by name.
    let expr = format!(
        "builtins.mapAttrs (n: d: d.outPath) (import {} {{ nixoci = {}; busyboxAmd64 = {}; busyboxArm64 = {}; }})",
        nix_string(&repo().join("nix/checks")),
        nix_string(&pkg),
        nix_string(&bb.amd64),
        nix_string(&bb.arm64),
    );
    let r = run(nix().args(["eval", "--json", "--impure", "--expr", &expr]));
    if r.code != Some(0) {
        return Err(r.describe());
    }
    let map: BTreeMap<String, String> =
        serde_json::from_str(&r.stdout).map_err(|e| format!("{e}: {}", r.stdout))?;
    let names: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    if names != BTreeSet::from(CHECKS) {
        return Err(format!(
            "nix/checks has {names:?}, the tests know {CHECKS:?}"
        ));
    }
    Ok(map)
}

/// A Nix string literal holding `p`.
fn nix_string(p: &Path) -> String {
    let s = p.to_string_lossy();
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "\\$");
    format!("\"{escaped}\"")
}

fn check(attr: &str) -> &'static str {
    checks()
        .get(attr)
        .unwrap_or_else(|| panic!("no {attr} in nix/checks"))
}

/// Every file and symlink under `dir` with its content hash, but
/// `nix-support` (the derivation's extra).
fn layout_files(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut files = snapshot(dir);
    files.retain(|p, _| !p.starts_with("nix-support"));
    files
}

/// `nixoci build` with `args` into a new `dir/NAME`.
fn cli_build(dir: &Path, name: &str, args: &[String]) -> (PathBuf, Value) {
    let out = dir.join(name);
    let report = run(nixoci()
        .arg("build")
        .args(args)
        .arg("--json")
        .arg("-o")
        .arg(&out))
    .success()
    .json();
    (out, report)
}

fn closure_of(path: &str) -> BTreeSet<String> {
    let r = run(nix().args(["path-info", "--recursive", path])).success();
    r.stdout.lines().map(str::to_string).collect()
}

#[test]
fn oci_layout_derivation_passes_verify_and_skopeo() {
    if !require(&["nix", "busybox", "skopeo"]) {
        return;
    }
    for attr in ["layout", "layout-plain"] {
        let out = check(attr);
        let dir = Path::new(out);
        run(nixoci().arg("verify").arg(dir)).success();

        let raw = skopeo_inspect_raw(dir, TAG);
        assert_eq!(raw["mediaType"], INDEX_MEDIA_TYPE, "{attr}: {raw}");
        let platforms: BTreeSet<String> = array_of(&raw["manifests"])
            .iter()
            .map(|m| platform_string(&m["platform"]))
            .collect();
        assert_eq!(
            platforms,
            BTreeSet::from(["linux/amd64".to_string(), "linux/arm64/v8".to_string()]),
            "{attr}"
        );

        let products = fs::read_to_string(dir.join("nix-support/hydra-build-products"))
            .unwrap_or_else(|e| panic!("{attr}: reading hydra-build-products: {e}"));
        assert_eq!(products, format!("file oci-layout {out}\n"), "{attr}");

        let mut top: Vec<String> = fs::read_dir(dir)
            .expect("reading the layout")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["blobs", "index.json", "nix-support", "oci-layout"],
            "{attr}: the output is the layout itself"
        );
    }
    // The checks that verify inside Nix built too.
    for attr in [
        "spec-contents",
        "layout-verified",
        "layout-plain-verified",
        "lib-eval",
    ] {
        assert!(Path::new(check(attr)).exists(), "{attr}");
    }
}

#[test]
fn oci_layout_derivation_equals_the_cli_output() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let tmp = tempdir();

    // Image specs, one per Nix system, with the tag named on the command line.
    let (cli, _) = cli_build(
        tmp.path(),
        "specs.oci",
        &[
            "--platform".into(),
            format!("x86_64-linux={}", check("spec-amd64")),
            "--platform".into(),
            format!("aarch64-linux={}", check("spec-arm64")),
            "--tag".into(),
            TAG.into(),
        ],
    );
    let drv = Path::new(check("layout"));
    assert_eq!(
        fs::read(cli.join("index.json")).expect("CLI index.json"),
        fs::read(drv.join("index.json")).expect("derivation index.json"),
        "index.json"
    );
    assert_eq!(layout_files(&cli), layout_files(drv), "specs: every blob");

    // Without --tag, both take the specs' tag.
    let (cli_spec_tag, _) = cli_build(
        tmp.path(),
        "spec-tag.oci",
        &[
            "--platform".into(),
            format!("aarch64-linux={}", check("spec-arm64")),
            "--platform".into(),
            format!("x86_64-linux={}", check("spec-amd64")),
        ],
    );
    assert_eq!(layout_files(&cli_spec_tag), layout_files(drv), "spec tag");

    // Plain store paths, OCI platform keys and every option.
    let (cli_plain, _) = cli_build(
        tmp.path(),
        "plain.oci",
        &[
            "--platform".into(),
            format!("linux/amd64={}", check("hello-amd64")),
            "--platform".into(),
            format!("linux/arm64={}", check("hello-arm64")),
            "--max-layers".into(),
            "2".into(),
            "--created".into(),
            "2024-01-01T00:00:00Z".into(),
            "--annotation".into(),
            "org.opencontainers.image.version=1.0".into(),
            "--tag".into(),
            TAG.into(),
        ],
    );
    let drv_plain = Path::new(check("layout-plain"));
    assert_eq!(
        layout_files(&cli_plain),
        layout_files(drv_plain),
        "plain paths: every blob"
    );
    let (_, images) = Layout(drv_plain.to_path_buf()).image(TAG);
    for image in &images {
        assert!(image.layers.len() <= 2, "maxLayers 2: {:?}", image.layers);
        assert_eq!(image.config["created"], "2024-01-01T00:00:00Z");
    }
}

#[test]
fn oci_layout_with_root_entries_equals_the_cli_with_the_same_flags() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let tmp = tempdir();
    let (amd64, arm64) = (check("hello-amd64"), check("hello-arm64"));
    let data = closure_of(amd64)
        .into_iter()
        .find(|p| p.ends_with("-nixoci-check-data"))
        .expect("the data path in hello's closure");
    let flags: Vec<String> = [
        "--copy-to-root",
        &format!("x86_64-linux={amd64}"),
        "--copy-to-root",
        &format!("aarch64-linux={arm64}"),
        "--dir",
        "/tmp:1777",
        "--dir",
        "/var/lib/app:0750:1000:1000",
        "--symlink",
        "/usr/bin/hello={root}/bin/hello",
        "--add-user",
        "app:1000:1000:/var/lib/app",
        "--add-group",
        "staff:50",
        "--nix-db",
        "--entrypoint",
        "/bin/hello",
        "--user",
        "app",
        "--volume",
        "/data",
        "--stop-signal",
        "SIGINT",
        "--chmod",
        "/var/lib/app=0700",
        "--compression",
        "zstd",
        "--level",
        "5",
        "--layer",
        &data,
        "--min-layer-size",
        "1K",
        "--reserve-layers",
        "1",
        "--tag",
        TAG,
        "--no-cache",
    ]
    .map(String::from)
    .to_vec();
    let mut args = vec![
        "--platform".to_string(),
        format!("x86_64-linux={amd64}"),
        "--platform".to_string(),
        format!("aarch64-linux={arm64}"),
    ];
    args.extend(flags);
    let (cli, _) = cli_build(tmp.path(), "flags.oci", &args);
    let drv = Path::new(check("layout-rootfs"));
    assert_eq!(
        fs::read(cli.join("index.json")).expect("CLI index.json"),
        fs::read(drv.join("index.json")).expect("derivation index.json"),
        "index.json"
    );
    assert_eq!(layout_files(&cli), layout_files(drv), "every blob");

    // The specs themselves, with the build options as flags, too.
    let (cli_specs, _) = cli_build(
        tmp.path(),
        "specs.oci",
        &[
            "--platform",
            &format!("x86_64-linux={}", check("spec-rootfs-amd64")),
            "--platform",
            &format!("aarch64-linux={}", check("spec-rootfs-arm64")),
            "--compression",
            "zstd",
            "--level",
            "5",
            "--layer",
            &data,
            "--min-layer-size",
            "1K",
            "--reserve-layers",
            "1",
            "--no-cache",
        ]
        .map(String::from),
    );
    assert_eq!(
        layout_files(&cli_specs),
        layout_files(drv),
        "specs: every blob"
    );

    // What the image holds: the config and the root layer's entries.
    let (_, images) = Layout(drv.to_path_buf()).image(TAG);
    for image in &images {
        let config = &image.config["config"];
        assert_eq!(config["Volumes"], json!({"/data": {}}), "{config}");
        assert_eq!(config["StopSignal"], "SIGINT", "{config}");
        assert_eq!(config["User"], "app", "{config}");
    }
}

/// `nix eval` of `expr` with `lib` bound to the library and `hello` to a
/// store path; returns the failure's stderr.
fn eval_error(expr: &str) -> String {
    let tmp = tempdir();
    let pkg = nixoci_package(&tmp.path().join("nixoci"));
    let full = format!(
        "let lib = import {} {{ nixoci = builtins.path {{ path = {}; name = \"nixoci\"; }}; system = \"x86_64-linux\"; }}; \
         hello = {}; in builtins.toJSON ({expr})",
        nix_string(&repo().join("nix/lib")),
        nix_string(&pkg),
        nix_string(Path::new(check("hello-amd64"))).replacen('"', "builtins.storePath \"", 1),
    );
    let r = run(nix().args(["eval", "--impure", "--raw", "--expr", &full]));
    assert_ne!(r.code, Some(0), "{expr}: evaluates: {}", r.stdout);
    r.stderr
}

#[test]
fn image_mistakes_fail_at_evaluation_naming_the_argument() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let image =
        |args: &str| format!(r#"lib.imageSpec {{ name = "x"; roots = [ hello ]; {args} }}"#);
    for (args, expected) in [
        (
            r#"dirs = [ { path = "/tmp"; mode = "0788"; } ];"#,
            r#"image "x": dirs.0.mode: expected an octal mode as a string"#,
        ),
        (
            r#"users = [ { name = "app"; uid = "app"; } ];"#,
            r#"image "x": users.0.uid: expected a number"#,
        ),
        (
            r#"symlinks."/bin/sh" = "busybox";"#,
            r#"image "x": symlinks."/bin/sh": the target must be an absolute path"#,
        ),
        (
            r#"perms = [ { regex = ".*"; mode = "rwx"; } ];"#,
            r#"image "x": perms.0.mode: expected an octal mode"#,
        ),
        (
            "contents = [ hello ];",
            "contents: nixoci has no `contents`",
        ),
    ] {
        let stderr = eval_error(&image(args));
        assert!(stderr.contains(expected), "{args}: {stderr}");
    }
    let stderr = eval_error("lib.imageSpec { name = \"x\"; contents = [ hello ]; }");
    assert!(
        stderr.contains("roots = [") && stderr.contains("copyToRoot = ["),
        "contents explains roots and copyToRoot: {stderr}"
    );
}

#[test]
fn image_spec_config_is_the_image_config() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let spec_path = check("spec-amd64");
    let hello = check("hello-amd64");

    let spec: Value = serde_json::from_slice(&fs::read(spec_path).expect("reading the spec"))
        .expect("the spec is JSON");
    assert_eq!(spec["nixociImageSpec"], 2, "{spec}");
    assert_eq!(spec["name"], "nixoci-check-hello");
    assert_eq!(spec["tag"], TAG);
    assert_eq!(spec["roots"], json!([hello]));
    assert_eq!(spec["maxLayers"], 100);
    assert_eq!(
        spec["config"],
        json!({
            "entrypoint": [format!("{hello}/bin/sh"), format!("{hello}/bin/hello")],
            "cmd": null,
            "env": {"GREETING_FROM": "nixoci-check", "PATH": format!("{hello}/bin")},
            "workingDir": "/",
            "user": null,
            "exposedPorts": ["8080/tcp"],
            "labels": {"org.opencontainers.image.title": "nixoci check"},
        })
    );

    // The spec's closure is the spec and its roots' closures: Nix found the
    // references in the JSON text.
    let mut expected = closure_of(hello);
    expected.insert(spec_path.to_string());
    assert_eq!(closure_of(spec_path), expected);

    // `nixoci build` on the spec images its roots (not the spec file) with
    // its config and tag.
    let tmp = tempdir();
    let (out, report) = cli_build(
        tmp.path(),
        "spec.oci",
        &["--platform".into(), format!("linux/amd64={spec_path}")],
    );
    let in_layers: BTreeSet<String> = array_of(&report["layers"])
        .iter()
        .flat_map(|l| {
            array_of(&l["storePaths"])
                .iter()
                .map(|p| str_of(p).to_string())
        })
        .collect();
    assert_eq!(in_layers, closure_of(hello), "{report}");

    let (_, images) = Layout(out).image(TAG);
    assert_eq!(images.len(), 1);
    let config = &images[0].config["config"];
    check_image_config(config, hello);

    // And so does ociLayout, for each platform with its own root.
    let (_, images) = Layout(PathBuf::from(check("layout"))).image(TAG);
    let by_platform: BTreeMap<String, &Value> = images
        .iter()
        .map(|i| (i.platform.clone(), &i.config["config"]))
        .collect();
    check_image_config(by_platform["linux/amd64"], hello);
    check_image_config(by_platform["linux/arm64/v8"], check("hello-arm64"));
}

#[track_caller]
fn check_image_config(config: &Value, root: &str) {
    assert_eq!(
        config["Entrypoint"],
        json!([format!("{root}/bin/sh"), format!("{root}/bin/hello")]),
        "{config}"
    );
    let env: BTreeSet<&str> = array_of(&config["Env"]).iter().map(str_of).collect();
    assert!(env.contains("GREETING_FROM=nixoci-check"), "{config}");
    assert!(
        env.contains(format!("PATH={root}/bin").as_str()),
        "{config}"
    );
    assert_eq!(config["WorkingDir"], "/", "{config}");
    assert_eq!(config["ExposedPorts"], json!({"8080/tcp": {}}), "{config}");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"], "nixoci check",
        "{config}"
    );
}

#[test]
fn nix_files_and_flake_lock_parse() {
    if !require(&["nix-instantiate"]) {
        return;
    }
    for file in [
        "flake.nix",
        "templates/default/flake.nix",
        "nix/lib/default.nix",
        "nix/checks/default.nix",
        "nix/checks/stub-nixpkgs/flake.nix",
    ] {
        run(Command::new("nix-instantiate")
            .env("NIX_CONFIG", nix_config())
            .arg("--parse")
            .arg(repo().join(file)))
        .success();
    }

    let lock: Value =
        serde_json::from_slice(&fs::read(repo().join("flake.lock")).expect("reading flake.lock"))
            .expect("flake.lock is JSON");
    assert_eq!(lock["version"], 7, "{lock}");
    let root = str_of(&lock["root"]);
    assert_eq!(lock["nodes"][root]["inputs"], json!({"nixpkgs": "nixpkgs"}));
    let nixpkgs = &lock["nodes"]["nixpkgs"];
    for key in ["type", "owner", "repo", "rev", "narHash", "lastModified"] {
        assert!(nixpkgs["locked"].get(key).is_some(), "locked.{key}: {lock}");
    }
    assert_eq!(nixpkgs["original"]["repo"], "nixpkgs", "{lock}");
}

/// Copies of the flake (what it reads, and `docs` that its source filter
/// must leave out; no build outputs) and of
/// `nix/checks/stub-nixpkgs` with the binary under test and busybox.
struct Flakes {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    stub: PathBuf,
}

fn flakes() -> Flakes {
    let bb = busybox_dirs().expect("required");
    let tmp = tempdir();
    let repo_copy = tmp.path().join("repo");
    for f in ["flake.nix", "flake.lock", "Cargo.toml", "Cargo.lock"] {
        fs::create_dir_all(&repo_copy).expect("mkdir");
        fs::copy(repo().join(f), repo_copy.join(f)).expect("copying a flake file");
    }
    for d in ["src", "nix/lib", "nix/checks", "templates", "docs"] {
        copy_dir(&repo().join(d), &repo_copy.join(d));
    }
    let stub = tmp.path().join("stub-nixpkgs");
    copy_dir(&repo().join("nix/checks/stub-nixpkgs"), &stub);
    nixoci_package(&stub.join("nixoci"));
    // The builder of everything the stub builds.
    let host_bb = if std::env::consts::ARCH == "aarch64" {
        &bb.arm64
    } else {
        &bb.amd64
    };
    copy_dir(host_bb, &stub.join("busybox"));
    Flakes {
        tmp,
        repo: repo_copy,
        stub,
    }
}

fn flake_ref(dir: &Path) -> String {
    format!("path:{}", dir.display())
}

#[test]
fn flake_check_passes_with_a_stub_nixpkgs() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let f = flakes();
    let r = run(nix()
        .args(["flake", "check", "-L", "--no-write-lock-file"])
        .args(["--override-input", "nixpkgs"])
        .arg(flake_ref(&f.stub))
        .arg(flake_ref(&f.repo)))
    .success();
    assert!(
        r.stderr.contains("running flake checks"),
        "{}",
        r.describe()
    );

    // The library, per system and for any nixoci package.
    let eval = |attr: &str, apply: &str| {
        run(nix()
            .args(["eval", "--json", "--no-write-lock-file"])
            .args(["--override-input", "nixpkgs"])
            .arg(flake_ref(&f.stub))
            .arg(format!("{}#{attr}", flake_ref(&f.repo)))
            .args(["--apply", apply]))
        .success()
        .json()
    };
    assert_eq!(
        eval("lib.x86_64-linux.image", "builtins.functionArgs")
            .as_object()
            .map(|a| a.keys().cloned().collect::<Vec<_>>()),
        Some(
            [
                "annotations",
                "config",
                "contents",
                "copyToRoot",
                "created",
                "dirs",
                "fromImage",
                "groups",
                "includeNixDB",
                "maxLayers",
                "name",
                "perms",
                "roots",
                "symlinks",
                "system",
                "tag",
                "users"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    assert_eq!(
        eval(
            "lib",
            "l: builtins.attrNames (l.withNixoci \"/nix/store/00000000000000000000000000000000-nixoci\")"
        ),
        json!(["image", "imageSpec", "ociLayout", "pullImage"])
    );
    assert_eq!(
        eval("packages.aarch64-linux.default.system", "x: x"),
        json!("aarch64-linux")
    );
    let system = host_system();
    let checks = eval(&format!("checks.{system}"), "builtins.attrNames");
    let names: BTreeSet<&str> = array_of(&checks).iter().map(str_of).collect();
    let mut expected = BTreeSet::from(CHECKS);
    expected.insert("package");
    assert_eq!(names, expected, "checks.{system}");

    // What `nix flake check` built: the layout derivation, through the flake.
    let built = run(nix()
        .args(["build", "--json", "--no-link", "--no-write-lock-file"])
        .args(["--override-input", "nixpkgs"])
        .arg(flake_ref(&f.stub))
        .arg(format!("{}#checks.{system}.layout", flake_ref(&f.repo))))
    .success()
    .json();
    let out = str_of(&built[0]["outputs"]["out"]);
    run(nixoci().arg("verify").arg(out)).success();
}

/// The Nix system of this machine.
fn host_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// A copy of the template whose lock file points at the stub nixpkgs and
/// the repository copy, so plain `nix` and `nixoci` commands use them.
fn locked_template(f: &Flakes) -> PathBuf {
    let template = f.tmp.path().join("template");
    copy_dir(&repo().join("templates/default"), &template);
    run(nix()
        .args(["flake", "lock"])
        .args(["--override-input", "nixpkgs"])
        .arg(flake_ref(&f.stub))
        .args(["--override-input", "nixoci"])
        .arg(flake_ref(&f.repo))
        .arg(flake_ref(&template)))
    .success();
    template
}

/// The template's `oci` package: its layout, built by `ociLayout`.
fn template_oci(template: &Path) -> PathBuf {
    let built = run(nix()
        .args(["build", "--json", "--no-link", "-L"])
        .arg(format!("{}#oci", flake_ref(template))))
    .success()
    .json();
    PathBuf::from(str_of(&built[0]["outputs"]["out"]))
}

const TEMPLATE_TAG: &str = "example.org/hello:0.1.0";

#[test]
fn template_images_four_platforms_in_one_command() {
    if !require(&["nix", "busybox", "skopeo"]) {
        return;
    }
    let f = flakes();
    let template = locked_template(&f);
    let tmp = tempdir();
    run(nix()
        .args(["flake", "check", "-L"])
        .arg(flake_ref(&template)))
    .success();

    // `nix run` with no arguments writes hello.oci in the current directory.
    run(nix()
        .current_dir(tmp.path())
        .args(["run", "-L"])
        .arg(flake_ref(&template)))
    .success();
    let out = tmp.path().join("hello.oci");
    run(nixoci().arg("verify").arg(&out)).success();
    let raw = skopeo_inspect_raw(&out, TEMPLATE_TAG);
    let platforms: BTreeSet<String> = array_of(&raw["manifests"])
        .iter()
        .map(|m| platform_string(&m["platform"]))
        .collect();
    assert_eq!(
        platforms,
        ["linux/386", "linux/amd64", "linux/arm/v7", "linux/arm64/v8"]
            .map(String::from)
            .into(),
        "{raw}"
    );
    check_template_programs(&Layout(out.clone()));

    // Flags pass through; given ones replace the defaults.
    run(nix()
        .args(["run", "-L"])
        .arg(format!("{}#image", flake_ref(&template)))
        .arg("--")
        .arg("-o")
        .arg(tmp.path().join("other.oci"))
        .args(["--tag", "example.org/other:1"]))
    .success();
    Layout(tmp.path().join("other.oci")).tag_descriptor("example.org/other:1");

    // `nix build .#oci` gives the same layout as a store path.
    let drv = template_oci(&template);
    assert_eq!(layout_files(&out), layout_files(&drv));
    assert!(drv.join("nix-support/hydra-build-products").is_file());
}

#[test]
fn template_specs_image_as_flake_installables() {
    if !require(&["nix", "busybox"]) {
        return;
    }
    let f = flakes();
    let template = locked_template(&f);
    let tmp = tempdir();
    let flake = flake_ref(&template);
    let system = host_system();
    let mut args = Vec::new();
    for (platform, key) in [
        ("linux/amd64", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/arm/v7", "armv7"),
        ("linux/386", "386"),
    ] {
        args.push("--platform".to_string());
        // The host's cross-compiled specs, named in full: `#image-arm64`
        // alone may resolve to packages.aarch64-linux.image-arm64.
        args.push(format!("{platform}={flake}#packages.{system}.image-{key}"));
    }
    args.extend(["--tag".to_string(), TEMPLATE_TAG.to_string()]);
    let (out, _) = cli_build(tmp.path(), "hello.oci", &args);
    check_template_programs(&Layout(out.clone()));
    assert_eq!(layout_files(&out), layout_files(&template_oci(&template)));
}

/// Each platform's entrypoint is the program built for that platform (the
/// stub's programs say which).
#[track_caller]
fn check_template_programs(layout: &Layout) {
    let (_, images) = layout.image(TEMPLATE_TAG);
    let systems = BTreeMap::from([
        ("linux/amd64", "x86_64-linux"),
        ("linux/arm64/v8", "aarch64-linux"),
        ("linux/arm/v7", "armv7l-linux"),
        ("linux/386", "i686-linux"),
    ]);
    for image in &images {
        let entrypoint = str_of(&image.config["config"]["Entrypoint"][0]);
        let script =
            fs::read_to_string(entrypoint).unwrap_or_else(|e| panic!("reading {entrypoint}: {e}"));
        let system = systems[image.platform.as_str()];
        assert!(
            script.contains(&format!("hello 0.1.0 for {system}\"")),
            "{}: the entrypoint is the {system} program: {script}",
            image.platform
        );
    }
}
