//! Golden test: a tiny committed store tree gives exact, committed digests
//! and manifest JSON. A change here changes every user's digests: make it
//! on purpose, regenerate with `UPDATE_GOLDEN=1 cargo test --test golden`,
//! and say so in CHANGELOG.md.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

const AMD64_ROOT: &str = "/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello";
const ARM64_ROOT: &str = "/nix/store/2c3d4f5g6h7i8j9k0l1m2n3p4q5r6s7v-hello";

/// nixoci, under `runner` (an emulator and its arguments) when not empty.
fn nixoci(runner: &[&str]) -> Command {
    match runner {
        [] => Command::new(env!("CARGO_BIN_EXE_nixoci")),
        [prog, rest @ ..] => {
            let mut c = Command::new(prog);
            c.args(rest).arg(env!("CARGO_BIN_EXE_nixoci"));
            c
        }
    }
}

/// The x86-64 emulator for runs on a CPU without POPCNT, PCLMULQDQ, AVX2
/// or SHA (`qemu64`): `None` when it is not installed, outside CI (under
/// `CI=true` the run goes on and fails).
fn emulated_cpu() -> Option<[&'static str; 3]> {
    let qemu = "qemu-x86_64-static";
    let has_qemu = Command::new(qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ci = matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"));
    if !has_qemu && !ci {
        eprintln!("skipping the emulated CPU: {qemu} is not installed");
        return None;
    }
    Some([qemu, "-cpu", "qemu64"])
}

/// `nixoci build --json --no-cache ARGS` (under `runner`, an emulator and
/// its arguments, when not empty), which must succeed: its report.
fn nixoci_build(runner: &[&str], args: &[std::ffi::OsString]) -> serde_json::Value {
    let output = nixoci(runner)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("NIX_STORE_DIR")
        .args(["build", "--json", "--no-cache"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "build {runner:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn build(out: &Path) -> serde_json::Value {
    let fx = fixtures();
    let amd64 = format!("linux/amd64={AMD64_ROOT}");
    let arm64 = format!("linux/arm64={ARM64_ROOT}");
    let (closure, root) = (fx.join("closure.json"), fx.join("root"));
    let mut args: Vec<std::ffi::OsString> = [
        "--tag",
        "example.org/hello:1.0",
        "--platform",
        &amd64,
        "--platform",
        &arm64,
        "--entrypoint",
        "{root}/bin/hello",
        "--env",
        "GREETING=hi",
        "--closure-json",
    ]
    .map(Into::into)
    .into();
    args.extend([closure.into(), "--store-root".into(), root.into()]);
    args.extend(["-o".into(), out.into()]);
    nixoci_build(&[], &args)
}

/// With `UPDATE_GOLDEN` set, writes `got` to `path` as the new golden JSON
/// and says so: the caller then returns instead of comparing.
fn rewrite_golden(path: &Path, got: &serde_json::Value) -> bool {
    if std::env::var_os("UPDATE_GOLDEN").is_none() {
        return false;
    }
    let mut text = serde_json::to_string_pretty(got).unwrap();
    text.push('\n');
    std::fs::write(path, text).unwrap();
    eprintln!("golden file {} rewritten", path.display());
    true
}

/// The committed golden JSON at `path`.
fn read_golden(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The digests that the fixture must give, as committed.
fn summary(report: &serde_json::Value, layout: &Path) -> serde_json::Value {
    let index_json = std::fs::read_to_string(layout.join("index.json")).unwrap();
    serde_json::json!({
        "indexJson": index_json,
        "index": report["index"]["digest"],
        "platforms": report["platforms"].as_array().unwrap().iter().map(|p| serde_json::json!({
            "platform": p["platform"],
            "manifest": p["manifest"]["digest"],
            "config": p["config"]["digest"],
            "layers": p["layers"],
        })).collect::<Vec<_>>(),
        "layers": report["layers"].as_array().unwrap().iter().map(|l| serde_json::json!({
            "storePaths": l["storePaths"],
            "diffId": l["diffId"],
            "digest": l["digest"],
            "size": l["size"],
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn fixture_tree_gives_committed_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hello.oci");
    let report = build(&out);
    let got = summary(&report, &out);

    let amd64 = &report["platforms"][0];
    assert_eq!(amd64["platform"], "linux/amd64");
    let manifest_hex = amd64["manifest"]["digest"].as_str().unwrap()[7..].to_owned();
    let manifest = std::fs::read_to_string(out.join("blobs/sha256").join(manifest_hex)).unwrap();

    let expected_path = fixtures().join("expected.json");
    let manifest_path = fixtures().join("manifest-amd64.json");
    if rewrite_golden(&expected_path, &got) {
        std::fs::write(&manifest_path, &manifest).unwrap();
        return;
    }
    let expected = read_golden(&expected_path);
    assert_eq!(
        got, expected,
        "digests changed; if on purpose, run UPDATE_GOLDEN=1 and record it in CHANGELOG.md"
    );
    assert_eq!(manifest, std::fs::read_to_string(&manifest_path).unwrap());

    // Two platforms share the greeting path: its layer is one blob in both.
    let layers = report["layers"].as_array().unwrap();
    let shared = layers
        .iter()
        .find(|l| l["storePaths"][0].as_str().unwrap().ends_with("-greeting"))
        .unwrap();
    for p in report["platforms"].as_array().unwrap() {
        assert!(p["layers"].as_array().unwrap().contains(&shared["digest"]));
    }
    assert_eq!(layers.len(), 3);

    let verify = Command::new(env!("CARGO_BIN_EXE_nixoci"))
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Deterministic text-like and random bytes (xorshift), `len` of them.
fn mixed_bytes(len: usize, seed: u64) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"store ",
        b"layer ",
        b"/nix/store/",
        b"deflate ",
        b"\n",
        b"libc.so.6 ",
        b"0x7f ",
        b"ELF ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x >> 61 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(words[(x % 8) as usize]);
        }
    }
    out.truncate(len);
    out
}

/// The gzip layer of a store path of several MiB (several gzip members):
/// the same bytes with one compression thread or two, and on an emulated
/// CPU without the instructions libdeflate and SHA-256 pick at run time
/// (`qemu-x86_64 -cpu qemu64`: no PCLMULQDQ, AVX2 or SHA), and the digest
/// committed here. A change of digest must be on purpose, in CHANGELOG.md.
#[test]
fn gzip_layers_are_the_same_for_any_jobs_and_any_cpu() {
    const ROOT: &str = "/nix/store/3d4f5g6h7i8j9k0l1m2n3p4q5r6s7v8w-data";
    const GOLDEN: &str = "sha256:416065a81fa78df1b4f616c2930fa4125d45ea3a7a3e7ab923dcdf64edb71000";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("root").join(&ROOT[1..]);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("share/text"), mixed_bytes(2_500_000, 7)).unwrap();
    std::fs::write(dir.join("share/more"), mixed_bytes(1_300_000, 11)).unwrap();
    let closure = tmp.path().join("closure.json");
    let entry = serde_json::json!([{
        "path": ROOT, "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        "narSize": 3_800_000, "references": [],
    }]);
    std::fs::write(&closure, entry.to_string()).unwrap();
    let platform = format!("linux/amd64={ROOT}");
    let store_root = tmp.path().join("root");
    let build = |runner: &[&str], jobs: &str, out: &Path| -> String {
        let mut args: Vec<std::ffi::OsString> = ["--jobs", jobs, "--platform", &platform]
            .map(Into::into)
            .into();
        args.extend(["--closure-json".into(), closure.clone().into()]);
        args.extend(["--store-root".into(), store_root.clone().into()]);
        args.extend(["-o".into(), out.into()]);
        let report = nixoci_build(runner, &args);
        let layers = report["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        layers[0]["digest"].as_str().unwrap().to_owned()
    };
    let one = build(&[], "1", &tmp.path().join("one"));
    assert_eq!(build(&[], "2", &tmp.path().join("two")), one, "--jobs 2");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        eprintln!("gzip golden digest: {one}");
    } else {
        assert_eq!(
            one, GOLDEN,
            "digests changed; if on purpose, record it in CHANGELOG.md"
        );
    }
    let Some(emulator) = emulated_cpu() else {
        return;
    };
    let emulated = build(&emulator, "2", &tmp.path().join("qemu64"));
    assert_eq!(
        emulated, one,
        "on an emulated CPU without PCLMULQDQ, AVX2, SHA"
    );
}

/// A plan does not depend on the CPU either: the planner counts bits with
/// the CPU's population count instruction when it has one, and by hand on
/// `qemu64`, which lacks it. A closure of 300 paths planned into 12 layers
/// natively and emulated gives the same plan.
#[test]
fn plans_are_the_same_on_any_cpu() {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let path = |i: usize, name: &str| {
        let hash: String = (0..32)
            .map(|k| ALPHABET[(i * 7 + k * 13 + i / 32 * k) % 32] as char)
            .collect();
        format!("/nix/store/{hash}-{name}-{i}")
    };
    let n = 300;
    // Each path refers to up to three earlier ones; the root to all.
    let mut seed = 12345u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let mut entries = Vec::new();
    for i in 0..n {
        let refs: Vec<String> = (0..(if i == 0 { 0 } else { next() % 4 }))
            .map(|_| path(next() % i.max(1), "lib"))
            .collect();
        entries.push(serde_json::json!({
            "path": path(i, "lib"),
            "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "narSize": 1024 + (next() % 4_000_000),
            "references": refs,
        }));
    }
    let root = path(n, "root");
    entries.push(serde_json::json!({
        "path": root,
        "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        "narSize": 4096,
        "references": (0..n).map(|i| path(i, "lib")).collect::<Vec<_>>(),
    }));
    let tmp = tempfile::tempdir().unwrap();
    let closure = tmp.path().join("closure.json");
    std::fs::write(&closure, serde_json::Value::from(entries).to_string()).unwrap();
    std::fs::create_dir_all(tmp.path().join("root").join(&root[1..])).unwrap();
    let plan = |runner: &[&str]| -> String {
        let output = nixoci(runner)
            .args(["plan", "--json", "--no-cache", "--max-layers", "12"])
            .arg("--closure-json")
            .arg(&closure)
            .arg("--store-root")
            .arg(tmp.path().join("root"))
            .args(["--platform", &format!("linux/amd64={root}")])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "plan {runner:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let native = plan(&[]);
    let layers = serde_json::from_str::<serde_json::Value>(&native).unwrap()["layers"]
        .as_array()
        .unwrap()
        .len();
    assert!((2..=12).contains(&layers), "{layers} layers");
    let Some(emulator) = emulated_cpu() else {
        return;
    };
    assert_eq!(plan(&emulator), native, "on qemu64 (no POPCNT)");
}

/// The pipe buffer `nixoci save -o -` asks for (src/cli/save.rs).
const SAVE_PIPE_BUFFER: i32 = 1 << 20;

/// The buffer size of the pipe behind `fd`.
#[allow(unsafe_code)] // fcntl has no safe form in std
fn pipe_buffer(fd: std::os::fd::RawFd) -> i32 {
    // SAFETY: F_GETPIPE_SZ reads the size of the pipe behind `fd`.
    unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }
}

#[test]
fn save_archives_give_committed_digests_in_a_file_and_through_a_pipe() {
    use sha2::Digest as _;
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hello.oci");
    build(&out);
    let save = |format: &str, output: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixoci"));
        cmd.arg("save").arg(&out).args([
            "--platform",
            "linux/amd64",
            "--format",
            format,
            "-o",
            output,
        ]);
        cmd
    };
    let mut got = serde_json::Map::new();
    for format in ["docker-archive", "oci-archive"] {
        let file = tmp.path().join(format!("{format}.tar"));
        let o = save(format, file.to_str().unwrap()).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(&file).unwrap();
        // -o - into a pipe (64 KiB until save widens it): the same bytes.
        let mut child = save(format, "-")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut piped = Vec::new();
        stdout.read_to_end(&mut piped).unwrap();
        assert!(child.wait().unwrap().success());
        assert!(
            piped == bytes,
            "{format}: -o - wrote other bytes than -o FILE"
        );
        let max: i32 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if max >= SAVE_PIPE_BUFFER {
            assert_eq!(
                pipe_buffer(stdout.as_raw_fd()),
                SAVE_PIPE_BUFFER,
                "{format}"
            );
        }
        got.insert(
            format.to_owned(),
            format!("sha256:{:x}", sha2::Sha256::digest(&bytes)).into(),
        );
    }
    let got = serde_json::Value::Object(got);
    if rewrite_golden(&fixtures().join("save.json"), &got) {
        return;
    }
    let expected = read_golden(&fixtures().join("save.json"));
    assert_eq!(
        got, expected,
        "save's archives changed; if on purpose, run UPDATE_GOLDEN=1 and record it in CHANGELOG.md"
    );
}
