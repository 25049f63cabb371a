//! Runtime tests: the hello image the binary writes runs in real container
//! runtimes, podman and Docker (Debian's dockerd and containerd, started by
//! the test on unix sockets of its own and stopped when it ends). The
//! runtime picks the host's platform from the two-platform index.
//!
//! `scripts/setup` installs podman, runc and docker.io. A missing runtime
//! skips a test with a printed reason, except under `CI=true`.

mod common;

use common::runtime::{Docker, Podman, Runtime};
use common::*;

/// The image of the hello layout the host runs.
struct HostImage {
    /// `linux/amd64` or `linux/arm64`.
    platform: &'static str,
    /// What `uname -m` prints in it.
    machine: &'static str,
    /// `{root}`: the hello store path of that platform.
    root: String,
    /// The busybox store path of its closure.
    busybox: String,
}

fn host_image(h: &Hello) -> HostImage {
    let (platform, root, busybox) = match std::env::consts::ARCH {
        "x86_64" => ("linux/amd64", &h.amd64, &h.busybox_amd64),
        "aarch64" => ("linux/arm64", &h.arm64, &h.busybox_arm64),
        other => panic!("the hello image has no platform for a {other} host"),
    };
    HostImage {
        platform,
        machine: std::env::consts::ARCH,
        root: root.clone(),
        busybox: busybox.clone(),
    }
}

/// Builds the two-platform hello image into `dir`; returns the layout.
fn hello_layout(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("hello.oci");
    build_hello_image(hello(), &out);
    out
}

/// What every runtime must show of the hello image: its entrypoint
/// (`{root}/bin/sh {root}/bin/hello`) greets from the host's platform, and
/// a process runs as root (uid 0, the image sets no user).
fn check_runs(rt: &impl Runtime, image: &str, host: &HostImage) {
    let what = rt.name();
    let run = |entrypoint, args: &[&str]| rt.run(image, entrypoint, args);
    assert_eq!(
        rt.platform(image),
        host.platform,
        "{what}: the platform it picked"
    );

    let r = run(None, &[]).success();
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some(GREETING), "{what}: {}", r.describe());
    assert_eq!(
        lines.next(),
        Some(format!("machine: {}", host.machine).as_str()),
        "{what}: {}",
        r.describe()
    );

    let busybox = format!("{}/busybox", host.busybox);
    let r = run(Some(&busybox), &["id", "-u"]).success();
    assert_eq!(r.stdout.trim(), "0", "{what}: {}", r.describe());

    // The image's own shell, through the entrypoint flag.
    let sh = format!("{}/bin/sh", host.root);
    let r = run(Some(&sh), &["-c", "echo $0 ran"]).success();
    assert_eq!(
        r.stdout.trim(),
        format!("{sh} ran"),
        "{what}: {}",
        r.describe()
    );
}

#[test]
fn podman_runs_the_hello_image() {
    if let Some(podman) = needs(Podman::new) {
        hello_runs_in(&podman);
    }
}

#[test]
fn docker_runs_the_hello_image() {
    if let Some(docker) = needs(Docker::start) {
        hello_runs_in(&docker);
    }
}

/// The hello image, loaded into `rt`, runs there (see [`check_runs`]).
fn hello_runs_in(rt: &impl Runtime) {
    let dir = tempdir();
    let layout = hello_layout(dir.path());
    let image = rt.load(&layout, TAG, "nixoci-test/hello:1.0");
    check_runs(rt, &image, &host_image(hello()));
}

/// The runtime `start` gives, when Nix and the test busybox are there
/// too; `None` after printing why (a failure under `CI=true`).
fn needs<R>(start: impl FnOnce() -> Option<R>) -> Option<R> {
    if !require(&["nix", "busybox"]) {
        return None;
    }
    start()
}

/// The hello image with a root layer: its store path's tree at `/`
/// (`/bin/sh`, `/bin/hello`), a world-writable `/tmp`,
/// a user `app` whose home is owned by it, and `--user app`.
fn rootfs_layout(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("rootfs.oci");
    let h = hello();
    let mut cmd = nixoci();
    // Each hello store path (bin/sh -> its busybox, bin/hello) at /.
    cmd.args(hello_build_args(h, &out)).args([
        "--copy-to-root",
        &format!("linux/amd64={}", h.amd64),
        "--copy-to-root",
        &format!("linux/arm64={}", h.arm64),
        "--dir",
        "/tmp:1777",
        "--dir",
        "/var/lib/app:0750:1000:1000",
        "--add-user",
        "app:1000:1000:/var/lib/app",
        "--user",
        "app",
    ]);
    let r = run(&mut cmd).success();
    assert!(!r.stderr.contains("warning"), "{}", r.describe());
    out
}

/// What every runtime must show of the root layer: the process runs as
/// `app`, writes to `/tmp` and to its home, which belongs to it, and
/// `/bin/sh` resolves.
fn check_rootfs(rt: &impl Runtime, image: &str, host: &HostImage) {
    let what = rt.name();
    let run = |entrypoint, args: &[&str]| rt.run(image, entrypoint, args);
    let bb = format!("{}/busybox", host.busybox);
    let r = run(Some(&bb), &["id", "-un"]).success();
    assert_eq!(r.stdout.trim(), "app", "{what}: {}", r.describe());
    let script = format!("echo x > /tmp/t && echo y > /var/lib/app/t && {bb} ls -ln /var/lib/app");
    let r = run(Some(&bb), &["sh", "-c", &script]).success();
    let line = r.stdout.lines().find(|l| l.ends_with(" t")).unwrap_or("");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields.get(2..4),
        Some(&["1000", "1000"][..]),
        "{what}: {}",
        r.describe()
    );
    let r = run(Some("/bin/sh"), &["-c", "echo sh works"]).success();
    assert_eq!(r.stdout.trim(), "sh works", "{what}: {}", r.describe());
}

#[test]
fn podman_runs_an_image_with_a_root_layer() {
    if let Some(podman) = needs(Podman::new) {
        rootfs_runs_in(&podman);
    }
}

#[test]
fn docker_runs_an_image_with_a_root_layer() {
    if let Some(docker) = needs(Docker::start) {
        rootfs_runs_in(&docker);
    }
}

/// The image with a root layer, loaded into `rt`, runs there as its user
/// (see [`check_rootfs`]).
fn rootfs_runs_in(rt: &impl Runtime) {
    let dir = tempdir();
    let layout = rootfs_layout(dir.path());
    let image = rt.load(&layout, TAG, "nixoci-test/rootfs:1.0");
    check_rootfs(rt, &image, &host_image(hello()));
}

/// `nixoci save -o - | docker load`: no temporary file, the loaded image
/// carries the layout's tag and runs.
#[test]
fn docker_loads_a_saved_image_from_a_pipe() {
    let Some(docker) = needs(Docker::start) else {
        return;
    };
    let dir = tempdir();
    let layout = hello_layout(dir.path());
    let mut save = nixoci()
        .args(["save", "-o", "-"])
        .arg(format!("oci:{}:{TAG}", layout.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = save.stdout.take().unwrap();
    let mut load = docker.command();
    load.arg("load").stdin(stdout);
    let loaded = run(&mut load).success();
    assert!(save.wait().unwrap().success());
    assert!(loaded.stdout.contains(TAG), "{}", loaded.describe());
    check_runs(&docker, TAG, &host_image(hello()));
}

/// `podman load` takes both archives and keeps the tag.
#[test]
fn podman_loads_both_archives_with_their_tag() {
    let Some(podman) = needs(Podman::new) else {
        return;
    };
    let dir = tempdir();
    let layout = hello_layout(dir.path());
    for format in ["docker-archive", "oci-archive"] {
        let archive = dir.path().join(format!("{format}.tar"));
        run(nixoci()
            .args(["save", "--format", format, "-o"])
            .arg(&archive)
            .arg(format!("{}:{TAG}", layout.display())))
        .success();
        let mut load = podman.command();
        load.args(["load", "-i"]).arg(&archive);
        let loaded = run(&mut load).success();
        assert!(
            loaded.stdout.contains(TAG),
            "{format}: {}",
            loaded.describe()
        );
        let r = podman.run(TAG, None, &[]).success();
        assert!(r.stdout.starts_with(GREETING), "{format}: {}", r.describe());
        let mut rm = podman.command();
        rm.args(["rmi", TAG]);
        run(&mut rm).success();
    }
}
