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

fn build(dir: &Path, closure: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixoci"));
    cmd.args(["build", "--no-cache", "--jobs", "1", "--level", "9"])
        .arg("--platform")
        .arg(format!("linux/amd64={PATH_A}"))
        .arg("--platform")
        .arg(format!("linux/arm64={PATH_B}"))
        .arg("--closure-json")
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

    // `verify` does not take the remains for a layout.
    let verify = Command::new(env!("CARGO_BIN_EXE_nixoci"))
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1));

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
