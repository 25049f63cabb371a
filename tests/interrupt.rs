//! A build killed midway never leaves a layout that looks complete, and the
//! next build into the same directory succeeds.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PATH_A: &str = "/nix/store/3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a-big-a";
const PATH_B: &str = "/nix/store/4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b-big-b";

/// A fake store with two paths of incompressible data, big enough that a
/// single-threaded level-9 build takes a while.
fn big_store(dir: &Path) -> std::path::PathBuf {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for p in [PATH_A, PATH_B] {
        let d = dir.join("root").join(p.trim_start_matches('/'));
        fs::create_dir_all(&d).unwrap();
        let mut f = fs::File::create(d.join("data")).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..16 {
            for chunk in buf.chunks_mut(8) {
                // xorshift64: fast, deterministic, incompressible.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&buf).unwrap();
        }
    }
    let closure = dir.join("closure.json");
    let entries: Vec<String> = [PATH_A, PATH_B]
        .iter()
        .map(|p| {
            format!(
                r#"{{"path":"{p}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":16777216,"references":[]}}"#
            )
        })
        .collect();
    fs::write(&closure, format!("[{}]", entries.join(","))).unwrap();
    closure
}

/// `nixoci build --no-cache` of store paths of the fake store under `dir`,
/// one per platform (`PLATFORM=PATH`), with `flags`.
fn build_of(
    dir: &Path,
    platforms: &[String],
    closure: &Path,
    out: &Path,
    flags: &[&str],
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixoci"));
    cmd.args(["build", "--no-cache"]).args(flags);
    for p in platforms {
        cmd.arg("--platform").arg(p);
    }
    cmd.arg("--closure-json")
        .arg(closure)
        .arg("--store-root")
        .arg(dir.join("root"))
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A slow build of the big store: both paths, one thread, level 9.
fn build(dir: &Path, closure: &Path, out: &Path) -> Command {
    let platforms = [
        format!("linux/amd64={PATH_A}"),
        format!("linux/arm64={PATH_B}"),
    ];
    build_of(
        dir,
        &platforms,
        closure,
        out,
        &["--jobs", "1", "--level", "9"],
    )
}

#[test]
fn a_killed_build_leaves_no_index_and_the_next_one_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let closure = big_store(tmp.path());
    let out = tmp.path().join("big.oci");

    let mut child = build(tmp.path(), &closure, &out).spawn().unwrap();
    // Kill it once it has started writing blobs.
    let start = Instant::now();
    let blobs = out.join("blobs/sha256");
    while start.elapsed() < Duration::from_secs(20) {
        let writing = fs::read_dir(&blobs).is_ok_and(|mut d| d.next().is_some());
        if writing {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the build finished before it was killed");
    assert!(
        !out.join("index.json").exists(),
        "a killed build left an index.json"
    );

    // `verify` does not take the remains for a layout: without oci-layout
    // there is no layout, exit 2 as in every command (#15).
    let verify = Command::new(env!("CARGO_BIN_EXE_nixoci"))
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("is not an OCI image layout"),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Building again into the same directory completes and verifies.
    let again = build(tmp.path(), &closure, &out).output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
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

#[test]
#[allow(unsafe_code)] // mkfifo: a fixture std cannot make
fn a_failed_build_removes_the_layers_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    // A: a good path, built first (biggest first); B: holds a FIFO, which
    // no layer may hold, so its layer fails after A's blob is written.
    let a = root.join(PATH_A.trim_start_matches('/'));
    let b = root.join(PATH_B.trim_start_matches('/'));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("data"), vec![7u8; 4 << 20]).unwrap();
    let fifo =
        std::ffi::CString::new(b.join("pipe").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid, NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let closure = tmp.path().join("closure.json");
    fs::write(
        &closure,
        format!(
            r#"[{{"path":"{PATH_A}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":4194304,"references":[]}},
                {{"path":"{PATH_B}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":1,"references":[]}}]"#
        ),
    )
    .unwrap();
    let out = tmp.path().join("failed.oci");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixoci"));
    cmd.args(["build", "--no-cache", "--jobs", "1"])
        .arg("--platform")
        .arg(format!("linux/amd64={PATH_A}"))
        .arg("--platform")
        .arg(format!("linux/arm64={PATH_B}"))
        .arg("--closure-json")
        .arg(&closure)
        .arg("--store-root")
        .arg(&root)
        .arg("-o")
        .arg(&out);
    let r = cmd.output().unwrap();
    assert_eq!(
        r.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("pipe"), "names the file: {stderr}");
    assert!(!out.exists(), "a failed build left {}", out.display());
}

/// A small fake store: one path holding `size` bytes of `fill`.
fn small_store(dir: &Path, path: &str, size: usize, fill: u8) -> std::path::PathBuf {
    let d = dir.join("root").join(path.trim_start_matches('/'));
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("data"), vec![fill; size]).unwrap();
    let closure = dir.join(format!("closure-{fill}.json"));
    fs::write(
        &closure,
        format!(
            r#"[{{"path":"{path}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":{size},"references":[]}}]"#
        ),
    )
    .unwrap();
    closure
}

fn nixoci() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nixoci"))
}

fn small_build(dir: &Path, path: &str, closure: &Path, out: &Path, tag: &str) -> Command {
    build_of(
        dir,
        &[format!("linux/amd64={path}")],
        closure,
        out,
        &["--tag", tag],
    )
}

fn tags(out: &Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_owned)
        .collect()
}

fn verify_ok(out: &Path) -> String {
    let v = nixoci().arg("verify").arg(out).output().unwrap();
    let stderr = String::from_utf8_lossy(&v.stderr).into_owned();
    assert!(v.status.success(), "{stderr}");
    stderr
}

/// The names in `dir` and their sizes.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut names: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    names.sort();
    names
}

/// Waits (at most 20 s) until `dir` holds a name starting with `prefix`.
fn wait_for(dir: &Path, prefix: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let there = fs::read_dir(dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        });
        if there {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("nothing named {prefix}… appeared in {}", dir.display());
}

/// The big store, and a layout holding a small image tagged `kept`.
struct Scene {
    tmp: tempfile::TempDir,
    /// The big store's closure.
    closure: std::path::PathBuf,
    /// The small image's closure (PATH_A holding `fill` bytes).
    small: std::path::PathBuf,
    layout: std::path::PathBuf,
    /// The layout's blobs.
    before: Vec<(String, u64)>,
}

fn scene(fill: u8) -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let closure = big_store(tmp.path());
    let small = small_store(tmp.path(), PATH_A, 4096, fill);
    let layout = tmp.path().join("layout.oci");
    let r = small_build(tmp.path(), PATH_A, &small, &layout, "kept")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let before = listing(&layout.join("blobs/sha256"));
    Scene {
        tmp,
        closure,
        small,
        layout,
        before,
    }
}

/// Two builds into the same new output at once: the second waits for the
/// first and merges its tag into what the first committed.
#[test]
fn concurrent_builds_into_one_new_output_keep_both_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let a = small_store(tmp.path(), PATH_A, 256 << 10, 1);
    let b = small_store(tmp.path(), PATH_B, 256 << 10, 2);
    for round in 0..20 {
        let out = tmp.path().join(format!("nc-{round}.oci"));
        let one = small_build(tmp.path(), PATH_A, &a, &out, "a:1")
            .spawn()
            .unwrap();
        let two = small_build(tmp.path(), PATH_B, &b, &out, "b:1")
            .spawn()
            .unwrap();
        for child in [one, two] {
            let r = child.wait_with_output().unwrap();
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        }
        let mut found = tags(&out);
        found.sort();
        assert_eq!(found, ["a:1", "b:1"], "round {round}");
        verify_ok(&out);
    }
}

/// SIGINT, SIGTERM and SIGHUP: the build removes its temporary files and
/// blobs (and a new output's directory) and exits 128 + the signal.
#[test]
#[allow(unsafe_code)] // kill(2): std sends only SIGKILL
fn a_signal_removes_what_the_build_wrote() {
    let Scene {
        tmp,
        closure,
        layout: existing,
        before,
        ..
    } = scene(3);
    let index_before = fs::read(existing.join("index.json")).unwrap();

    for (signal, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        for out in [
            tmp.path().join(format!("new-{signal}.oci")),
            existing.clone(),
        ] {
            let child = build(tmp.path(), &closure, &out).spawn().unwrap();
            wait_for(&out.join("blobs/sha256"), ".tmp-layer-");
            // SAFETY: kill(2) on our own child's pid.
            assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
            let r = child.wait_with_output().unwrap();
            assert_eq!(
                r.status.code(),
                Some(code),
                "signal {signal}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            if out == existing {
                assert_eq!(
                    listing(&out.join("blobs/sha256")),
                    before,
                    "signal {signal}"
                );
                assert_eq!(fs::read(out.join("index.json")).unwrap(), index_before);
                let top: Vec<String> = listing(&out).into_iter().map(|(n, _)| n).collect();
                assert_eq!(top, ["blobs", "index.json", "oci-layout"]);
            } else {
                assert!(!out.exists(), "signal {signal} left {}", out.display());
            }
        }
    }
    verify_ok(&existing);
}

/// SIGKILL cannot be caught: the next build removes the temporary files,
/// `verify` reports the complete blobs no tag reaches, and `gc` removes
/// them once they are older than the grace period.
#[test]
fn what_a_killed_build_leaves_is_found_and_removed() {
    let Scene {
        tmp,
        closure,
        small,
        layout: out,
        before,
    } = scene(4);

    // Killed once the first of its two layers is complete and the second
    // is being written.
    let mut child = build(tmp.path(), &closure, &out).spawn().unwrap();
    let blobs = out.join("blobs/sha256");
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no layer completed"
        );
        let now = listing(&blobs);
        let complete = now.iter().filter(|(n, _)| !n.starts_with('.')).count();
        let writing = now.iter().any(|(n, _)| n.starts_with(".tmp-layer-"));
        if complete > before.len() && writing {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = listing(&blobs);
    assert!(left.iter().any(|(n, _)| n.starts_with(".tmp-")));

    // verify: still ok, and says what no tag reaches.
    let v = nixoci()
        .args(["verify", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let stray: Vec<&(String, u64)> = left
        .iter()
        .filter(|e| !e.0.starts_with('.') && !before.contains(e))
        .collect();
    assert_eq!(report["unreachableBlobs"], stray.len());
    assert_eq!(
        report["unreachableBytes"],
        stray.iter().map(|(_, s)| s).sum::<u64>()
    );
    assert!(String::from_utf8_lossy(&v.stderr).contains("nixoci gc"));

    // gc within the grace period keeps them (and removes the temp files).
    let gc = nixoci().arg("gc").arg(&out).output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let after_gc = listing(&blobs);
    assert!(after_gc.iter().all(|(n, _)| !n.starts_with('.')));
    assert_eq!(after_gc.len(), before.len() + stray.len());
    let gc = nixoci()
        .args(["gc", "--grace", "0s"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_eq!(listing(&blobs), before);
    verify_ok(&out);

    // A build killed again: the next build into the layout removes the
    // temporary files it left, and says so.
    let mut child = build(tmp.path(), &closure, &out).spawn().unwrap();
    wait_for(&blobs, ".tmp-layer-");
    child.kill().unwrap();
    child.wait().unwrap();
    let r = small_build(tmp.path(), PATH_A, &small, &out, "again")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("temporary file"), "{stderr}");
    assert!(listing(&blobs).iter().all(|(n, _)| !n.starts_with('.')));
}

#[test]
fn gc_refuses_what_is_not_a_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let r = nixoci().arg("gc").arg(tmp.path()).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    let r = nixoci()
        .args(["gc", "--grace", "soon"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
}
