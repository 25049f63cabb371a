//! `nixoci build --from IMAGE` and `nixoci pull`: the hello closures on top
//! of a base image made with umoci (a file in `/etc`, a shared layer under
//! `/srv`, an `Env`, a `WorkingDir` and a label), two platforms in one
//! image index, in a layout and pushed by skopeo to Debian's Distribution
//! registry (`docker-registry`) on 127.0.0.1, started by each test and
//! stopped by PID. The images run in a chroot (under qemu for arm64) and
//! in podman.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::publish::*;
use common::runtime::{Podman, Runtime};
use common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);

/// Runs a command to success within a bound.
fn must(mut cmd: Command, what: &str) -> Output {
    let o = run_bounded(&mut cmd, LIMIT, what);
    assert!(o.status.success(), "{what} failed: {}", stderr(&o));
    o
}

/// A base layout made with umoci: per arch an image tagged ARCH (two
/// layers: `/etc/base-release` saying `base ARCH`, and `/srv/file`, the
/// same bytes for every arch), and `tag` naming an image index of
/// `arches` (platforms without a variant, as most registries' images).
fn make_base(work: &Path, arches: &[&str], tag: &str) -> PathBuf {
    let layout = work.join("base.oci");
    if !layout.join("oci-layout").exists() {
        must(
            {
                let mut c = Command::new("umoci");
                c.args(["init", "--layout"]).arg(&layout);
                c
            },
            "umoci init",
        );
    }
    let umoci = |args: &[&str]| {
        let mut c = Command::new("umoci");
        c.args(args);
        must(c, &format!("umoci {}", args[0]));
    };
    let mut entries = Vec::new();
    for arch in arches {
        let image = format!("{}:{arch}", layout.display());
        let index: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
                .expect("index.json is JSON");
        let tagged = |index: &Value| {
            // umoci init writes "manifests": null.
            index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["annotations"][REF_NAME] == *arch)
                .cloned()
        };
        if tagged(&index).is_none() {
            let etc = work.join(format!("etc-{arch}"));
            fs::create_dir_all(&etc).expect("mkdir");
            fs::write(etc.join("base-release"), format!("base {arch}\n")).expect("write");
            let srv = work.join("srv");
            fs::create_dir_all(&srv).expect("mkdir");
            fs::write(srv.join("file"), "served\n").expect("write");
            umoci(&["new", "--image", &image]);
            umoci(&[
                "insert",
                "--image",
                &image,
                etc.to_str().expect("utf-8"),
                "/etc",
            ]);
            umoci(&[
                "insert",
                "--image",
                &image,
                srv.to_str().expect("utf-8"),
                "/srv",
            ]);
            umoci(&[
                "config",
                "--image",
                &image,
                "--os",
                "linux",
                "--architecture",
                arch,
                "--config.env",
                "PATH=/usr/bin:/bin",
                "--config.env",
                "BASE_ONLY=from-base",
                "--config.env",
                "SHARED=base",
                "--config.workingdir",
                "/srv",
                "--config.label",
                "org.example.base=yes",
            ]);
        }
        let index: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
                .expect("index.json is JSON");
        let mut d = tagged(&index).expect("umoci tagged the image");
        d.as_object_mut().expect("an object").remove("annotations");
        d["platform"] = json!({"os": "linux", "architecture": arch});
        entries.push(d);
    }
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries,
    }))
    .expect("JSON");
    let digest = sha256_digest(&bytes);
    fs::write(Layout(layout.clone()).blob_path(&digest), &bytes).expect("writing the index");
    let mut index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    index["manifests"].as_array_mut().expect("manifests").push(
        json!({"mediaType": INDEX_MEDIA_TYPE, "digest": digest, "size": bytes.len(),
                     "annotations": {REF_NAME: tag}}),
    );
    fs::write(layout.join("index.json"), index.to_string()).expect("writing index.json");
    layout
}

/// `skopeo copy --all` of the layout's `tag` to the registry as `dest`.
fn push_base(layout: &Path, tag: &str, reg: &Registry, dest: &str) {
    let mut c = Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
    ])
    .arg(oci_ref(layout, tag))
    .arg(format!("docker://{}/{dest}", reg.addr()));
    must(c, "skopeo copy to the registry");
}

/// The base's manifest of `arch` in the layout (tag `arch`).
fn base_manifest(layout: &Path, arch: &str) -> (String, Value, Value) {
    let l = Layout(layout.to_owned());
    let d = l.tag_descriptor(arch);
    let digest = str_of(&d["digest"]).to_owned();
    let manifest = l.blob_json(&digest);
    let config = l.blob_json(str_of(&manifest["config"]["digest"]));
    (digest, manifest, config)
}

/// `build` of the hello image on `from` with a shell entrypoint that shows
/// the base: its file, its and our environment.
fn build_on(from: &str, platforms: &[(&str, &str)], out: &Path, cache: &Path) -> Output {
    let mut c = nixoci();
    c.arg("build");
    for (p, root) in platforms {
        c.args(["--platform", &format!("{p}={root}")]);
    }
    c.args([
        "--from",
        from,
        "--env",
        "SHARED=ours",
        "--entrypoint",
        "{root}/bin/sh",
        "--entrypoint",
        "-c",
        "--entrypoint",
        "read l < /etc/base-release && echo \"$l\"; echo \"env $BASE_ONLY $SHARED\"; . {root}/bin/hello",
        "--tag",
        TAG,
        "--json",
        "-o",
    ])
    .arg(out)
    .env("XDG_CACHE_HOME", cache)
    .env("HOME", "/nonexistent");
    run_bounded(c, LIMIT, "nixoci build --from")
}

/// What the image's entrypoint prints on `arch`.
fn check_output(stdout: &str, arch: &str, machine: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..2],
        [format!("base {arch}").as_str(), "env from-base ours"],
        "{stdout}"
    );
    assert!(stdout.contains(GREETING), "{stdout}");
    assert!(stdout.contains(&format!("machine: {machine}")), "{stdout}");
}

/// The registry's GETs of blobs, by digest.
fn blob_gets(reg: &Registry) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for line in reg.access_lines() {
        if let Some(rest) = line.split("\"GET /v2/base/blobs/").nth(1) {
            let digest = rest.split(' ').next().unwrap_or_default().to_owned();
            *n.entry(digest).or_default() += 1;
        }
    }
    n
}

#[test]
fn a_registry_base_runs_on_both_platforms_and_is_pushed_without_its_blobs() {
    if !require(&[
        "nix",
        "busybox",
        "umoci",
        "skopeo",
        "docker-registry",
        "qemu-aarch64-static",
        "chroot",
        "root",
    ]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let base = make_base(work, &["amd64", "arm64"], "1");
    push_base(&base, "1", &reg, "base:1");

    let out = work.join("app.oci");
    let cache = work.join("cache");
    let from = format!("docker://{}/base:1", reg.addr());
    let o = build_on(
        &from,
        &[("linux/amd64", &h.amd64), ("linux/arm64", &h.arm64)],
        &out,
        &cache,
    );
    let report = ok_json(&o, "build --from a registry");
    let layout = Layout(out.clone());
    let (index, images) = layout.image(TAG);
    assert_eq!(images.len(), 2, "{index}");

    let mut base_layers = BTreeSet::new();
    let qemu = which("qemu-aarch64-static").expect("required above");
    for (arch, machine, qemu) in [
        ("amd64", "x86_64", None),
        ("arm64", "aarch64", Some(qemu.as_path())),
    ] {
        let (base_digest, base_m, base_c) = base_manifest(&base, arch);
        let image = images
            .iter()
            .find(|i| i.descriptor["platform"]["architecture"] == arch)
            .expect("the platform's image");
        let ours = &image.manifest;
        // The base's layers first, the same blobs.
        let base_l = array_of(&base_m["layers"]);
        let our_l = array_of(&ours["layers"]);
        assert_eq!(base_l.len(), 2);
        for (b, o) in base_l.iter().zip(our_l) {
            assert_eq!(b["digest"], o["digest"], "{arch}");
            assert_eq!(b["size"], o["size"], "{arch}");
            assert_eq!(
                layout.blob(str_of(&o["digest"])).len() as u64,
                o["size"].as_u64().expect("size")
            );
            base_layers.insert(str_of(&b["digest"]).to_owned());
        }
        assert!(our_l.len() > base_l.len());
        assert_eq!(
            ours["annotations"]["org.opencontainers.image.base.digest"], base_digest,
            "{arch}"
        );
        assert_eq!(
            ours["annotations"]["org.opencontainers.image.base.name"],
            format!("{}/base", reg.addr())
        );
        // The config: the base's diff_ids and history first, Env merged
        // by key (ours win), WorkingDir and Labels kept.
        let config = &image.config;
        let base_ids = array_of(&base_c["rootfs"]["diff_ids"]);
        assert_eq!(
            array_of(&config["rootfs"]["diff_ids"])[..base_ids.len()],
            base_ids[..]
        );
        let base_history = array_of(&base_c["history"]);
        assert_eq!(
            array_of(&config["history"])[..base_history.len()],
            base_history[..]
        );
        let env: BTreeSet<&str> = array_of(&config["config"]["Env"])
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(
            env,
            BTreeSet::from(["PATH=/usr/bin:/bin", "BASE_ONLY=from-base", "SHARED=ours"]),
            "{arch}"
        );
        assert_eq!(config["config"]["WorkingDir"], "/srv");
        assert_eq!(config["config"]["Labels"]["org.example.base"], "yes");

        // It runs: the base's file, both environments, then hello.
        let bundle = umoci_unpack(&out, &image.descriptor, work, &format!("run-{arch}"));
        let r = run_bundle(&bundle, qemu).success();
        check_output(&r.stdout, arch, machine);
    }
    // Each base layer came from the registry once (the /srv layer is
    // usually the same blob on both platforms; umoci's tars are not always
    // the same bytes).
    assert!((3..=4).contains(&base_layers.len()), "{base_layers:?}");
    let gets = blob_gets(&reg);
    for d in &base_layers {
        assert_eq!(gets.get(d), Some(&1), "{d}: {gets:?}");
    }
    let misses: Vec<&Value> = array_of(&report["layers"])
        .iter()
        .filter(|l| base_layers.contains(str_of(&l["digest"])))
        .collect();
    assert_eq!(misses.len(), base_layers.len(), "{report}");

    // Again into another layout: the layer cache has the base's blobs.
    let again = work.join("again.oci");
    let o = build_on(
        &from,
        &[("linux/amd64", &h.amd64), ("linux/arm64", &h.arm64)],
        &again,
        &cache,
    );
    let second = ok_json(&o, "second build --from");
    assert_eq!(second["index"], report["index"], "the same image");
    // (Configs are read again: they are documents, not layers.)
    let layer_gets = |gets: &BTreeMap<String, usize>| {
        gets.iter()
            .filter(|(d, _)| base_layers.contains(*d))
            .map(|(d, n)| (d.clone(), *n))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        layer_gets(&blob_gets(&reg)),
        layer_gets(&gets),
        "no base layer fetched again"
    );
    for l in array_of(&second["layers"]) {
        if base_layers.contains(str_of(&l["digest"])) {
            assert_eq!(l["cache"], "hit", "{l}");
        }
    }

    // podman runs the host's image.
    if let Some(podman) = Podman::new() {
        let name = podman.load(&out, TAG, "base-app:1");
        let r = podman.run(&name, None, &[]).success();
        check_output(&r.stdout, "amd64", "x86_64");
        // In the base's working directory.
        let sh = format!("{}/bin/sh", h.amd64);
        let r = podman.run(&name, Some(&sh), &["-c", "pwd"]).success();
        assert_eq!(r.stdout.trim(), "/srv");
    }

    // Pushed to the same registry: the base's blobs are mounted from its
    // repository, never uploaded; pushed again, everything is there.
    let push = |dest: &str| {
        let o = run_bounded(
            nixoci()
                .args(["push", "--json"])
                .arg(format!("{}:{TAG}", out.display()))
                .arg(format!("{}/{dest}", reg.addr()))
                .env("HOME", "/nonexistent"),
            LIMIT,
            "nixoci push",
        );
        ok_json(&o, "push")
    };
    let pushed = push("app:1");
    for b in array_of(&pushed["blobs"]) {
        let is_base = base_layers.contains(str_of(&b["digest"]));
        if is_base {
            assert_eq!(b["status"], "mounted", "{b}");
            assert_eq!(b["from"], "base", "{b}");
        } else {
            assert_eq!(b["status"], "uploaded", "{b}");
        }
    }
    assert_eq!(pushed["mounted"], base_layers.len(), "{pushed}");
    let uploads: Vec<String> = reg
        .access_lines()
        .into_iter()
        .filter(|l| l.contains("\"PUT /v2/app/blobs/uploads/"))
        .collect();
    for d in &base_layers {
        assert!(
            !uploads.iter().any(|l| l.contains(d.as_str())),
            "{d} uploaded: {uploads:?}"
        );
    }
    let again = push("app:1");
    assert_eq!(again["uploaded"], 0, "{again}");
    assert_eq!(again["mounted"], 0, "{again}");
    // What the registry serves is our image, the base's layers included.
    let pulled = work.join("pulled.oci");
    let o = skopeo_pull(&format!("{}/app:1", reg.addr()), None, &pulled);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_base_without_a_platform_is_a_usage_error_naming_its_platforms() {
    if !require(&["nix", "busybox", "umoci", "skopeo", "docker-registry"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let base = make_base(work, &["amd64"], "amd64-only");
    push_base(&base, "amd64-only", &reg, "base:amd64-only");
    let out = work.join("app.oci");
    let both = [("linux/amd64", h.amd64.as_str()), ("linux/arm64", &h.arm64)];
    for from in [
        format!("docker://{}/base:amd64-only", reg.addr()),
        format!("oci:{}:amd64-only", base.display()),
    ] {
        let o = build_on(&from, &both, &out, &work.join("cache"));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{from}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        assert!(
            e.contains(&format!(
                "--from {from} has no linux/arm64/v8 image (its platforms: linux/amd64)"
            )),
            "{e}"
        );
        assert!(!out.exists(), "nothing written");
    }
    // The amd64 image alone is fine.
    let o = build_on(
        &format!("docker://{}/base:amd64-only", reg.addr()),
        &both[..1],
        &out,
        &work.join("cache"),
    );
    ok_json(&o, "build --from for the platform the base has");
}

#[test]
fn plan_counts_the_base_layers_in_the_budget() {
    if !require(&["nix", "busybox", "umoci"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let work = tmp.path();
    let base = make_base(work, &["amd64", "arm64"], "1");
    let from = format!("{}:1", base.display());
    let plan = |max: &str, json: bool| {
        let mut c = nixoci();
        c.args(["plan", "--from", &from, "--max-layers", max])
            .args(["--platform", &format!("linux/amd64={}", h.amd64)])
            .args(["--platform", &format!("linux/arm64={}", h.arm64)]);
        if json {
            c.arg("--json");
        }
        run(&mut c)
    };
    // Two base layers of a budget of three leave one for the store.
    let p = plan("3", true).success().json();
    for image in array_of(&p["images"]) {
        assert_eq!(array_of(&image["layers"]).len(), 1, "{p}");
    }
    let text = plan("3", false).success().stdout;
    assert!(
        text.contains("2 layers of the base image"),
        "the plan says so: {text}"
    );
    plan("2", false)
        .expect_code(2)
        .refused("leave no layer of --max-layers 2");

    // A build on the base, then a plan with it as --previous: its store
    // layers are kept, the base's layers are not taken for ours.
    let out = work.join("app.oci");
    let o = run_bounded(
        nixoci()
            .args(["build", "--from", &from, "-o"])
            .arg(&out)
            .args(["--platform", &format!("linux/amd64={}", h.amd64)])
            .args(["--platform", &format!("linux/arm64={}", h.arm64)])
            .env("XDG_CACHE_HOME", work.join("cache")),
        LIMIT,
        "nixoci build --from",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let again = run(nixoci()
        .args(["plan", "--json", "--from", &from, "--previous"])
        .arg(&out)
        .args(["--platform", &format!("linux/amd64={}", h.amd64)])
        .args(["--platform", &format!("linux/arm64={}", h.arm64)]))
    .success()
    .json();
    let origins: BTreeSet<&str> = array_of(&again["layers"])
        .iter()
        .map(|l| str_of(&l["origin"]))
        .collect();
    assert_eq!(origins, BTreeSet::from(["previous"]), "{again}");
    for l in array_of(&again["layers"]) {
        assert!(!array_of(&l["storePaths"]).is_empty(), "{again}");
    }
}

#[test]
fn pull_writes_one_platform_the_same_every_time_and_builds_as_the_registry() {
    if !require(&["nix", "busybox", "umoci", "skopeo", "docker-registry"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let base = make_base(work, &["amd64", "arm64"], "1");
    push_base(&base, "1", &reg, "base:1");
    let image = format!("docker://{}/base:1", reg.addr());
    let pull = |out: &Path, cache: &str| {
        let o = run_bounded(
            nixoci()
                .args(["pull", &image, "--platform", "linux/arm64", "-o"])
                .arg(out)
                .env("XDG_CACHE_HOME", work.join(cache))
                .env("HOME", "/nonexistent"),
            LIMIT,
            "nixoci pull",
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let (a, b) = (work.join("a.oci"), work.join("b.oci"));
    pull(&a, "cache-a");
    pull(&b, "cache-b");
    assert_eq!(snapshot(&a), snapshot(&b), "the same bytes");
    let (digest, _, _) = base_manifest(&base, "arm64");
    let pulled = Layout(a.clone());
    let tag = format!("{}/base:1", reg.addr());
    assert_eq!(pulled.tag_descriptor(&tag)["digest"], digest);
    let o = run(nixoci().arg("verify").arg(&a));
    assert_eq!(o.code, Some(0), "{}", o.describe());

    // A build on the pulled layout is the build on the registry's image.
    let arm = [("linux/arm64", h.arm64.as_str())];
    let from_layout = ok_json(
        &build_on(
            a.to_str().expect("utf-8"),
            &arm,
            &work.join("l.oci"),
            &work.join("c1"),
        ),
        "build --from the pulled layout",
    );
    let from_registry = ok_json(
        &build_on(&image, &arm, &work.join("r.oci"), &work.join("c2")),
        "build --from the registry",
    );
    assert_eq!(from_layout["index"], from_registry["index"]);

    // A platform the image lacks.
    let o = run_bounded(
        nixoci()
            .args(["pull", &image, "--platform", "linux/riscv64", "-o"])
            .arg(work.join("x.oci")),
        LIMIT,
        "nixoci pull",
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("its platforms: linux/amd64, linux/arm64"),
        "{}",
        stderr(&o)
    );
}

/// A Nix string literal holding `s`.
fn nix_string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "\\$");
    format!("\"{escaped}\"")
}

#[test]
fn pull_image_and_from_image_in_nix_equal_the_command_line() {
    if !require(&["nix", "busybox", "umoci", "skopeo", "docker-registry"]) {
        return;
    }
    let h = hello();
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let base = make_base(work, &["amd64", "arm64"], "1");
    push_base(&base, "1", &reg, "base:1");
    let (digest, _, _) = base_manifest(&base, "amd64");
    let image_name = format!("{}/base", reg.addr());

    // pullImage's hash: that of what `nixoci pull` writes, the same bytes
    // anywhere.
    let pulled = work.join("pulled.oci");
    let o = run_bounded(
        nixoci()
            .args(["pull", &format!("docker://{image_name}@{digest}")])
            .args(["--platform", "linux/amd64", "-o"])
            .arg(&pulled)
            .env("XDG_CACHE_HOME", work.join("pull-cache")),
        LIMIT,
        "nixoci pull",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let hash = run(nix().args(["hash", "path"]).arg(&pulled))
        .success()
        .stdout
        .trim()
        .to_owned();

    let pkg = work.join("nixoci");
    fs::create_dir_all(pkg.join("bin")).expect("mkdir");
    fs::copy(env!("CARGO_BIN_EXE_nixoci"), pkg.join("bin/nixoci")).expect("copying nixoci");
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/lib");
    let expr = format!(
        r#"let
  lib = import {lib} {{ nixoci = builtins.path {{ path = {pkg}; name = "nixoci"; }}; system = "x86_64-linux"; }};
  hello = builtins.storePath {hello};
  base = lib.pullImage {{ imageName = {name}; imageDigest = {digest}; hash = {hash}; arch = "amd64"; }};
  spec = lib.image {{
    name = "app";
    roots = [ hello ];
    fromImage = base;
    config.entrypoint = [ "${{hello}}/bin/sh" "${{hello}}/bin/hello" ];
    config.env.SHARED = "ours";
  }};
in lib.ociLayout {{ name = "app"; tag = {tag}; images.x86_64-linux = spec; }}"#,
        lib = nix_string(&lib.to_string_lossy()),
        pkg = nix_string(&pkg.to_string_lossy()),
        hello = nix_string(&h.amd64),
        name = nix_string(&image_name),
        digest = nix_string(&digest),
        hash = nix_string(&hash),
        tag = nix_string(TAG),
    );
    let r = run(nix()
        .args(["build", "--impure", "--no-link", "--json", "-L", "--expr"])
        .arg(&expr))
    .success()
    .json();
    let built = str_of(&r[0]["outputs"]["out"]).to_owned();

    // The command line, on the registry's image by tag.
    let cli = work.join("cli.oci");
    let o = run_bounded(
        nixoci()
            .arg("build")
            .args(["--platform", &format!("linux/amd64={}", h.amd64)])
            .args(["--from", &format!("docker://{image_name}:1")])
            .args([
                "--entrypoint",
                "{root}/bin/sh",
                "--entrypoint",
                "{root}/bin/hello",
            ])
            .args(["--env", "SHARED=ours", "--tag", TAG, "-o"])
            .arg(&cli)
            .env("XDG_CACHE_HOME", work.join("cli-cache")),
        LIMIT,
        "nixoci build --from",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut nix_files = snapshot(Path::new(&built));
    nix_files.retain(|p, _| !p.starts_with("nix-support"));
    assert_eq!(nix_files, snapshot(&cli), "blob for blob");
    let (_, images) = Layout(cli).image(TAG);
    let m = &images[0].manifest;
    assert_eq!(
        m["annotations"]["org.opencontainers.image.base.digest"],
        digest
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.base.name"],
        image_name
    );
}
