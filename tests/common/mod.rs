//! Helpers for the integration tests: the real `nixoci` binary, the hermetic
//! closures of `nix/tests/hello.nix` in the real Nix store, and readers for
//! OCI image layouts that check what they read. [`publish`] adds registries,
//! web servers and proxies for the publish tests, [`runtime`] podman and
//! Docker for the runtime tests.
//!
//! External tools are required with [`require`]: a missing one skips the test
//! with a printed reason on a developer's machine and fails it under
//! `CI=true`. `scripts/setup` installs them all.
//!
//! The tests that include this module run the binary under test through
//! [`nixoci`], a `Command` with the tests' environment, and [`run`] (its
//! output as text) or [`output_of`] / [`run_bounded`] (killed, and the test
//! failed, after a time limit).

// Each test crate that includes this module uses a different subset.
#![allow(dead_code)]

pub mod garage;
pub mod publish;
pub mod runtime;

use std::borrow::BorrowMut;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The tag the tests write, as skopeo reads it: `oci:DIR:example.org/hello:1.0`.
pub const TAG: &str = "example.org/hello:1.0";
/// The first line `bin/hello` prints.
pub const GREETING: &str = "Hello from nixoci";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The Nix settings the tests use (the same as `scripts/setup` checks): no
/// binary caches, aarch64-linux built by the x86-64 busybox, no sandbox.
pub const DEFAULT_NIX_CONFIG: &str = "experimental-features = nix-command flakes\n\
     substituters =\n\
     extra-platforms = aarch64-linux\n\
     sandbox = false";

/// `NIXOCI_TEST_NIX_CONFIG`, or [`DEFAULT_NIX_CONFIG`].
pub fn nix_config() -> String {
    std::env::var("NIXOCI_TEST_NIX_CONFIG").unwrap_or_else(|_| DEFAULT_NIX_CONFIG.to_string())
}

/// True under `CI=true`, where a skipped test is a failed test.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

#[allow(unsafe_code)] // geteuid: std cannot tell who we are
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first `prog` on `PATH`.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(prog))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Checks what a test needs: program names on `PATH`, or `"root"` (euid 0),
/// `"busybox"` (the folders `scripts/setup` fills) or `"garage"` (the
/// binary it installs, [`garage::garage_binary`]). Returns false after
/// printing why the test is skipped; panics instead under `CI=true`.
pub fn require(needs: &[&str]) -> bool {
    let mut missing = Vec::new();
    for need in needs {
        match *need {
            "root" => {
                if !is_root() {
                    missing.push("root (euid 0)".to_string());
                }
            }
            "busybox" => {
                if let Err(e) = busybox_dirs() {
                    missing.push(e);
                }
            }
            "garage" => {
                if let Err(e) = garage::garage_binary() {
                    missing.push(e);
                }
            }
            prog => {
                if which(prog).is_none() {
                    missing.push(format!("'{prog}' on PATH"));
                }
            }
        }
    }
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let msg = format!(
        "{test}: missing {} (scripts/setup installs it)",
        missing.join(", ")
    );
    if in_ci() {
        panic!("{msg}; under CI=true a skip is a failure");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// The two busybox folders of `scripts/setup`, each holding `busybox` and
/// `sh -> busybox`.
#[derive(Debug, Clone)]
pub struct BusyboxDirs {
    pub amd64: PathBuf,
    pub arm64: PathBuf,
}

/// `NIXOCI_TEST_BUSYBOX_{AMD64,ARM64}`, else the folders under
/// `$NIXOCI_DEV_CACHE` (default `${XDG_CACHE_HOME:-$HOME/.cache}/nixoci-dev`).
pub fn busybox_dirs() -> Result<BusyboxDirs, String> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let cache = nonempty("NIXOCI_DEV_CACHE")
        .map(PathBuf::from)
        .or_else(|| nonempty("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("nixoci-dev")))
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache/nixoci-dev")))
        .ok_or("the busybox folders (neither NIXOCI_TEST_BUSYBOX_* nor HOME is set)")?;
    let dir = |var: &str, name: &str| {
        let d = nonempty(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join(name));
        if d.join("busybox").is_file() && d.join("sh").exists() {
            Ok(d)
        } else {
            Err(format!("{} (busybox and sh)", d.display()))
        }
    };
    Ok(BusyboxDirs {
        amd64: dir("NIXOCI_TEST_BUSYBOX_AMD64", "busybox-amd64")?,
        arm64: dir("NIXOCI_TEST_BUSYBOX_ARM64", "busybox-arm64")?,
    })
}

/// The store paths of `nix/tests/hello.nix`.
#[derive(Debug, Clone)]
pub struct Hello {
    pub amd64: String,
    pub arm64: String,
    /// Shared by both closures.
    pub data: String,
    pub busybox_amd64: String,
    pub busybox_arm64: String,
    pub closure_amd64: BTreeSet<String>,
    pub closure_arm64: BTreeSet<String>,
}

impl Hello {
    /// Store paths in both closures.
    pub fn shared(&self) -> BTreeSet<String> {
        self.closure_amd64
            .intersection(&self.closure_arm64)
            .cloned()
            .collect()
    }
}

/// Builds the hello closures once per test process. Callers `require` "nix"
/// and "busybox" first; a failing build fails the test.
pub fn hello() -> &'static Hello {
    static HELLO: OnceLock<Result<Hello, String>> = OnceLock::new();
    match HELLO.get_or_init(build_hello) {
        Ok(h) => h,
        Err(e) => panic!("building nix/tests/hello.nix: {e}"),
    }
}

/// `nix` with the tests' settings.
pub fn nix() -> Command {
    let mut c = Command::new("nix");
    c.env("NIX_CONFIG", nix_config()).stdin(Stdio::null());
    c
}

fn build_hello() -> Result<Hello, String> {
    let bb = busybox_dirs()?;
    let expr = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/tests/hello.nix");
    let r = run(nix()
        .args(["build", "--json", "--no-link", "-f"])
        .arg(&expr)
        .arg("--argstr")
        .arg("busyboxAmd64")
        .arg(&bb.amd64)
        .arg("--argstr")
        .arg("busyboxArm64")
        .arg(&bb.arm64)
        .args(["hello-amd64", "hello-arm64"]));
    if r.code != Some(0) {
        return Err(r.describe());
    }
    let built: Value = serde_json::from_str(&r.stdout).map_err(|e| format!("{e}: {}", r.stdout))?;
    let out = |i: usize| {
        built[i]["outputs"]["out"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no outputs.out in {built}"))
    };
    let (amd64, arm64) = (out(0)?, out(1)?);
    let closure = |root: &str| -> Result<BTreeSet<String>, String> {
        let r = run(nix().args(["path-info", "--recursive", root]));
        if r.code != Some(0) {
            return Err(r.describe());
        }
        Ok(r.stdout.lines().map(str::to_string).collect())
    };
    let (closure_amd64, closure_arm64) = (closure(&amd64)?, closure(&arm64)?);
    let pick = |c: &BTreeSet<String>, suffix: &str| {
        let found: Vec<&String> = c.iter().filter(|p| p.ends_with(suffix)).collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(format!("expected one *{suffix} in {c:?}")),
        }
    };
    let h = Hello {
        data: pick(&closure_amd64, "-nixoci-hello-data")?,
        busybox_amd64: pick(&closure_amd64, "-busybox")?,
        busybox_arm64: pick(&closure_arm64, "-busybox")?,
        amd64,
        arm64,
        closure_amd64,
        closure_arm64,
    };
    let expect_amd64 = BTreeSet::from([h.amd64.clone(), h.data.clone(), h.busybox_amd64.clone()]);
    let expect_arm64 = BTreeSet::from([h.arm64.clone(), h.data.clone(), h.busybox_arm64.clone()]);
    if h.closure_amd64 != expect_amd64 || h.closure_arm64 != expect_arm64 {
        return Err(format!("unexpected closures: {h:?}"));
    }
    Ok(h)
}

/// The binary under test with the tests' environment: the tests' Nix
/// settings, the tests' layer cache ([`test_cache_home`]), no stdin, and
/// nothing of the caller's that would change its output or reach a
/// registry or a bucket: no `SOURCE_DATE_EPOCH`, no registry credentials or
/// auth files, no AWS settings from the environment. A test sets what it needs on the `Command`.
pub fn nixoci() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixoci"));
    c.env("NIX_CONFIG", nix_config())
        .env("XDG_CACHE_HOME", test_cache_home())
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null());
    for var in [
        "NIXOCI_REGISTRY_USER",
        "NIXOCI_REGISTRY_PASSWORD",
        "REGISTRY_AUTH_FILE",
        "DOCKER_CONFIG",
        "XDG_RUNTIME_DIR",
    ]
    .into_iter()
    // Every variable the S3 settings read but HOME.
    .chain(
        nixoci::publish::aws::VARS
            .into_iter()
            .filter(|v| v.starts_with("AWS_")),
    ) {
        c.env_remove(var);
    }
    c
}

/// The tests' own layer cache under cargo's target folder, so tests never
/// read or fill the user's `~/.cache/nixoci`.
pub fn test_cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache")
}

/// `build` arguments for the two-platform hello image written to `out`.
pub fn hello_build_args(h: &Hello, out: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "build".to_string(),
        "--platform".into(),
        format!("linux/amd64={}", h.amd64),
        "--platform".into(),
        format!("linux/arm64={}", h.arm64),
        "--entrypoint".into(),
        "{root}/bin/sh".into(),
        "--entrypoint".into(),
        "{root}/bin/hello".into(),
        "--tag".into(),
        TAG.into(),
        "-o".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    a.push(out.into());
    a
}

/// Builds the hello image into `out` with `--json` and returns the report.
pub fn build_hello_image(h: &Hello, out: &Path) -> Value {
    run(nixoci().args(hello_build_args(h, out)).arg("--json"))
        .success()
        .json()
}

/// A finished process.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }

    /// Panics unless the exit code was 0.
    #[track_caller]
    pub fn success(self) -> Self {
        self.expect_code(0)
    }

    /// Panics unless the exit code was `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}: {}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.describe()))
    }
}

impl Run {
    /// Checks a usage error (exit 2) whose one line on stderr says `says`,
    /// and returns that line.
    #[track_caller]
    pub fn refused(&self, says: &str) -> &str {
        assert_eq!(
            self.code,
            Some(2),
            "expected exit code 2: {}",
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error line: {}", self.describe());
        assert!(lines[0].contains(says), "expected '{says}': {}", lines[0]);
        lines[0]
    }
}

/// Runs `cmd` to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Run {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| format!("{:?}", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    Run {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// [`run_bounded`] within 5 minutes, the limit of one run of the binary.
pub fn output_of(cmd: &mut Command) -> Output {
    let what = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    run_bounded(cmd, Duration::from_secs(300), &what)
}

/// Runs a command (a `Command` or a `&mut Command`), capturing its output,
/// killing it and failing the test after `limit`.
pub fn run_bounded(mut cmd: impl BorrowMut<Command>, limit: Duration, what: &str) -> Output {
    let mut child = cmd
        .borrow_mut()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for a child") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout parsed as JSON.
pub fn ok_json(o: &Output, what: &str) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}",
        o.status,
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// A temporary directory readable by everyone (the default is 0700).
pub fn tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("nixoci-e2e-")
        .tempdir()
        .expect("creating a temporary directory");
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    t
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `os/arch[/variant]` of an OCI platform object.
pub fn platform_string(p: &Value) -> String {
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("?"),
        p["architecture"].as_str().unwrap_or("?")
    );
    if let Some(v) = p["variant"].as_str() {
        s.push('/');
        s.push_str(v);
    }
    s
}

#[track_caller]
pub fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {v}"))
}

#[track_caller]
pub fn array_of(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, found {v}"))
}

/// One platform's image in a layout.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The descriptor in the image index.
    pub descriptor: Value,
    pub manifest: Value,
    pub config: Value,
    /// Layer digests, in manifest order.
    pub layers: Vec<String>,
}

/// An OCI image layout on disk; every blob read is checked against its digest.
#[derive(Debug, Clone)]
pub struct Layout(pub PathBuf);

impl Layout {
    pub fn index_json(&self) -> Value {
        let p = self.0.join("index.json");
        let bytes = fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.0.join("blobs/sha256").join(hex)
    }

    /// The bytes of a blob, checked against its digest.
    #[track_caller]
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let p = self.blob_path(digest);
        let bytes = fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        assert_eq!(
            sha256_digest(&bytes),
            digest,
            "blob content does not match its name"
        );
        bytes
    }

    #[track_caller]
    pub fn blob_json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest))
            .unwrap_or_else(|e| panic!("blob {digest} is not JSON: {e}"))
    }

    /// File names in `blobs/sha256`, as digests.
    pub fn blob_digests(&self) -> BTreeSet<String> {
        fs::read_dir(self.0.join("blobs/sha256"))
            .expect("reading blobs/sha256")
            .map(|e| {
                format!(
                    "sha256:{}",
                    e.expect("dir entry").file_name().to_string_lossy()
                )
            })
            .collect()
    }

    /// The descriptor in `index.json` named `tag`; exactly one must exist.
    #[track_caller]
    pub fn tag_descriptor(&self, tag: &str) -> Value {
        let index = self.index_json();
        let found: Vec<&Value> = array_of(&index["manifests"])
            .iter()
            .filter(|d| d["annotations"][REF_NAME] == tag)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one '{tag}' in index.json: {index}"
        );
        found[0].clone()
    }

    /// The image index of `tag` and its per-platform images.
    #[track_caller]
    pub fn image(&self, tag: &str) -> (Value, Vec<PlatformImage>) {
        let desc = self.tag_descriptor(tag);
        assert_eq!(
            desc["mediaType"], INDEX_MEDIA_TYPE,
            "{tag} is not an image index"
        );
        let index = self.blob_json(str_of(&desc["digest"]));
        let platforms = array_of(&index["manifests"])
            .iter()
            .map(|d| {
                let manifest = self.blob_json(str_of(&d["digest"]));
                let config = self.blob_json(str_of(&manifest["config"]["digest"]));
                let layers = array_of(&manifest["layers"])
                    .iter()
                    .map(|l| str_of(&l["digest"]).to_string())
                    .collect();
                PlatformImage {
                    platform: platform_string(&d["platform"]),
                    descriptor: d.clone(),
                    manifest,
                    config,
                    layers,
                }
            })
            .collect();
        (index, platforms)
    }

    /// Every digest reachable from `index.json`.
    pub fn reachable_blobs(&self) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<Value> = array_of(&self.index_json()["manifests"]).clone();
        while let Some(d) = todo.pop() {
            let digest = str_of(&d["digest"]).to_string();
            if !seen.insert(digest.clone()) {
                continue;
            }
            let media = d["mediaType"].as_str().unwrap_or("");
            if media == INDEX_MEDIA_TYPE {
                todo.extend(
                    array_of(&self.blob_json(&digest)["manifests"])
                        .iter()
                        .cloned(),
                );
            } else if media == MANIFEST_MEDIA_TYPE {
                let m = self.blob_json(&digest);
                todo.push(m["config"].clone());
                todo.extend(array_of(&m["layers"]).iter().cloned());
            }
        }
        seen
    }
}

/// Every entry under `dir` (relative path -> kind and content hash), to tell
/// whether a directory changed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            let meta = fs::symlink_metadata(&p).expect("metadata");
            let kind = if meta.file_type().is_symlink() {
                format!("symlink {}", fs::read_link(&p).expect("readlink").display())
            } else if meta.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else {
                format!(
                    "file {}",
                    sha256_digest(&fs::read(&p).expect("reading a file"))
                )
            };
            out.insert(rel, kind);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Copies a tree of directories, files and symlinks.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("creating a directory");
    for e in fs::read_dir(src).expect("reading a directory") {
        let e = e.expect("dir entry");
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ty = e.file_type().expect("file type");
        if ty.is_symlink() {
            symlink(fs::read_link(&from).expect("readlink"), &to).expect("symlink");
        } else if ty.is_dir() {
            copy_dir(&from, &to);
        } else {
            fs::copy(&from, &to).expect("copying a file");
        }
    }
}

/// True when `p` exists, even as a dangling symlink.
pub fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// `skopeo inspect --raw oci:DIR:TAG`.
pub fn skopeo_inspect_raw(layout: &Path, tag: &str) -> Value {
    run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(oci_ref(layout, tag)))
    .success()
    .json()
}

/// `skopeo inspect` of the image skopeo picks from the index for a platform.
pub fn skopeo_inspect_platform(
    layout: &Path,
    tag: &str,
    arch: &str,
    variant: Option<&str>,
) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--override-os", "linux", "--override-arch", arch]);
    if let Some(v) = variant {
        cmd.args(["--override-variant", v]);
    }
    run(cmd.arg("inspect").arg(oci_ref(layout, tag)))
        .success()
        .json()
}

pub fn oci_ref(layout: &Path, tag: &str) -> OsString {
    let mut r = OsString::from("oci:");
    r.push(layout);
    r.push(":");
    r.push(tag);
    r
}

/// Unpacks one platform's image with umoci into `work/NAME.bundle`.
///
/// umoci 0.4 resolves a tag to every manifest under it and calls a
/// multi-platform tag ambiguous, so this writes a layout `work/NAME.oci`
/// whose `index.json` names only `descriptor` and whose `blobs` links to the
/// original blobs.
pub fn umoci_unpack(layout: &Path, descriptor: &Value, work: &Path, name: &str) -> PathBuf {
    let single = work.join(format!("{name}.oci"));
    fs::create_dir_all(&single).expect("creating a layout");
    fs::copy(layout.join("oci-layout"), single.join("oci-layout")).expect("copying oci-layout");
    let blobs = fs::canonicalize(layout.join("blobs")).expect("canonical blobs path");
    symlink(blobs, single.join("blobs")).expect("linking blobs");
    let mut d = descriptor.clone();
    d["annotations"] = json!({ REF_NAME: name });
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [d] });
    fs::write(single.join("index.json"), index.to_string()).expect("writing index.json");
    let bundle = work.join(format!("{name}.bundle"));
    let mut image = single.into_os_string();
    image.push(":");
    image.push(name);
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(image)
        .arg(&bundle))
    .success();
    bundle
}

/// Runs an unpacked bundle's process (`config.json`: args and env) with
/// `chroot`, through `qemu` (copied into the root file system) when given.
pub fn run_bundle(bundle: &Path, qemu: Option<&Path>) -> Run {
    let config: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).expect("reading config.json"))
            .expect("config.json is JSON");
    let rootfs = bundle.join(config["root"]["path"].as_str().unwrap_or("rootfs"));
    let chroot = which("chroot").expect("chroot on PATH");
    let mut cmd = Command::new(chroot);
    cmd.arg(&rootfs).env_clear().stdin(Stdio::null());
    if let Some(q) = qemu {
        let inside = rootfs.join("qemu-aarch64-static");
        fs::copy(q, &inside).expect("copying qemu into the root file system");
        fs::set_permissions(&inside, fs::Permissions::from_mode(0o755)).expect("chmod qemu");
        cmd.arg("/qemu-aarch64-static");
    }
    for a in array_of(&config["process"]["args"]) {
        cmd.arg(str_of(a));
    }
    for kv in config["process"]["env"].as_array().into_iter().flatten() {
        if let Some((k, v)) = str_of(kv).split_once('=') {
            cmd.env(k, v);
        }
    }
    run(&mut cmd)
}

/// Flips one bit in the middle of a file.
pub fn flip_byte(p: &Path) {
    let mut bytes = fs::read(p).expect("reading a file");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    // Blobs may be read-only.
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).expect("chmod a file");
    fs::write(p, bytes).expect("writing a file");
}

/// `OsStr` concatenation, for `KEY=VALUE` arguments.
pub fn os_concat(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}
