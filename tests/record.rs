//! The layer cache's record of blobs it wrote or verified (device, inode,
//! size, modification and change time), through the real binary.
//!
//! What must hold: a rebuild into the same output, or into a fresh output
//! from the cache, reads none of the blobs it reuses (shown with `strace`);
//! a blob damaged in place, same size, even with its modification time put
//! back with `touch -d`, is still caught by the next build, rebuilt, and
//! what reaches the registry is the good blob.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::publish::*;
use common::*;
use serde_json::Value;

/// `build` of the golden fixture into `out` with the cache in `cache`,
/// under `strace` when `trace` names a log file.
fn build(out: &Path, cache: &Path, trace: Option<&Path>) -> Value {
    let mut cmd = match trace {
        Some(log) => {
            let mut c = Command::new("strace");
            // One log per thread (LOG.<tid>): no call split over lines.
            c.args(["-ff", "-qq", "-e", "trace=openat,open", "-o"])
                .arg(log)
                .arg(env!("CARGO_BIN_EXE_nixoci"));
            // The environment nixoci() gives, on the traced command.
            let base = nixoci();
            for (k, v) in base.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c
        }
        None => nixoci(),
    };
    cmd.args(golden_build_args())
        .args(["--tag", "rec:1", "--json", "--cache-dir"])
        .arg(cache)
        .arg("-o")
        .arg(out);
    ok_json(&output_of(&mut cmd), "nixoci build")
}

fn layers(report: &Value) -> Vec<(String, String)> {
    array_of(&report["layers"])
        .iter()
        .map(|l| {
            (
                str_of(&l["digest"]).to_owned(),
                str_of(&l["cache"]).to_owned(),
            )
        })
        .collect()
}

/// The blobs of `digests` that the traced run (logs `log.<tid>`) opened
/// to read their content: the way every reader of a layout's blobs opens
/// them (`oci::files`, `O_NOFOLLOW`), not the commit's open for `fsync`.
fn blobs_read(log: &Path, digests: &[String]) -> Vec<String> {
    let prefix = format!(
        "{}.",
        log.file_name().and_then(|n| n.to_str()).expect("utf-8")
    );
    let dir = log.parent().expect("a log folder");
    let mut text = String::new();
    for e in fs::read_dir(dir).expect("listing the logs") {
        let e = e.expect("a log");
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            text.push_str(&fs::read_to_string(e.path()).expect("reading a log"));
        }
    }
    assert!(
        text.contains("openat("),
        "no strace log {}.*",
        log.display()
    );
    digests
        .iter()
        .filter(|d| {
            let name = format!("{}\"", &d["sha256:".len()..]);
            text.lines().any(|l| {
                l.contains(&name)
                    && l.contains("O_RDONLY")
                    && l.contains("O_NOFOLLOW")
                    && !l.contains("ENOENT")
            })
        })
        .cloned()
        .collect()
}

#[test]
fn reused_blobs_are_not_read_again_and_a_damaged_one_is_caught_and_never_pushed() {
    if !require(&["strace", "docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let (out, fresh, cache) = (work.join("out"), work.join("fresh"), work.join("cache"));
    fs::create_dir_all(&out).expect("mkdir");
    fs::create_dir_all(&fresh).expect("mkdir");

    let first = build(&out, &cache, None);
    let all: Vec<String> = layers(&first).into_iter().map(|(d, _)| d).collect();
    assert!(all.len() >= 2, "{first:#}");

    // Into the same output: every layer kept, none read.
    let log = work.join("same.strace");
    let same = build(&out, &cache, Some(&log));
    assert!(layers(&same).iter().all(|(_, c)| c == "layout"), "{same:#}");
    assert_eq!(blobs_read(&log, &all), Vec::<String>::new());
    // Into a fresh output: every layer linked from the cache, none read.
    let log = work.join("fresh.strace");
    let hits = build(&fresh, &cache, Some(&log));
    assert!(layers(&hits).iter().all(|(_, c)| c == "hit"), "{hits:#}");
    assert_eq!(blobs_read(&log, &all), Vec::<String>::new());
    // And into the same output again, after those links: still none read.
    let log = work.join("again.strace");
    build(&out, &cache, Some(&log));
    assert_eq!(blobs_read(&log, &all), Vec::<String>::new());

    // A layer damaged in place: same size, same inode, and its
    // modification time put back with touch -d. The output's blob and the
    // cache's are one file (a hard link), so both are damaged.
    let victim = all[0].clone();
    let blob = out.join("blobs/sha256").join(&victim["sha256:".len()..]);
    let before = fs::metadata(&blob).expect("stat");
    flip_byte(&blob);
    let o = output_of(
        Command::new("touch")
            .arg("-d")
            .arg(format!("@{}.{:09}", before.mtime(), before.mtime_nsec()))
            .arg(&blob),
    );
    assert!(o.status.success(), "touch -d: {}", stderr(&o));
    let after = fs::metadata(&blob).expect("stat");
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    assert_ne!(sha256_digest(&fs::read(&blob).expect("read")), victim);

    // The next build reads it, finds it damaged and builds it again.
    let log = work.join("damaged.strace");
    let rebuilt = build(&out, &cache, Some(&log));
    assert_eq!(blobs_read(&log, &all), vec![victim.clone()]);
    let layer = array_of(&rebuilt["layers"])
        .iter()
        .find(|l| str_of(&l["digest"]) == victim)
        .expect("the damaged layer is still in the image");
    assert_eq!(str_of(&layer["cache"]), "miss", "{layer:#}");
    assert!(
        str_of(&layer["cacheProblem"]).contains("hashes to"),
        "{layer:#}"
    );
    assert_eq!(sha256_digest(&fs::read(&blob).expect("read")), victim);
    // The fresh output's link was damaged too: its next build catches it.
    let hits = build(&fresh, &cache, None);
    let fresh_blob = fresh.join("blobs/sha256").join(&victim["sha256:".len()..]);
    assert_eq!(sha256_digest(&fs::read(&fresh_blob).expect("read")), victim);
    assert!(layers(&hits)
        .iter()
        .any(|(d, c)| *d == victim && c != "layout"));

    // What reaches the registry is the good blob: a pull (which checks
    // every digest) gets it back.
    let reg = Registry::start(&work.join("registry"), false);
    let o = output_of(nixoci().args([
        "push",
        out.to_str().expect("utf-8"),
        &format!("{}/rec:1", reg.addr()),
    ]));
    assert!(o.status.success(), "push: {}", stderr(&o));
    let pulled = work.join("pulled");
    let o = skopeo_pull(&format!("{}/rec:1", reg.addr()), None, &pulled);
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
    let got = pulled.join("blobs/sha256").join(&victim["sha256:".len()..]);
    assert_eq!(sha256_digest(&fs::read(got).expect("read")), victim);
}
