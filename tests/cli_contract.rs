//! The command-line contract every command keeps (issue #15, part 3): one
//! layout syntax, `[oci:]DIR[:TAG]`, read and written alike by `build -o`,
//! `build --previous`, `build --from`, `plan --previous`, `verify`, `gc`,
//! `save`, `push`, `export-static` and `pull` (and its `-o`); one exit code table (0 ok, 1 failed, 2 usage); and
//! with `--json`, one error object on stdout for every failure.
//!
//! The layouts are built from the golden fixture tree (`--closure-json`),
//! so no Nix is needed; `push` goes to a real registry on 127.0.0.1.

mod common;

use std::fs;
use std::path::Path;

use common::publish::{golden_build_args, golden_layout, Registry};
use common::*;
use serde_json::{json, Value};

/// The ways a layout is named, one column of the table each.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// `oci:DIR:TAG`
    OciDirTag,
    /// `DIR:TAG`
    DirTag,
    /// `DIR`
    Dir,
    /// `oci:DIR`
    OciDir,
    /// A DIR that does not exist.
    Missing,
    /// `DIR:nope`, a tag the layout does not hold.
    NoSuchTag,
    /// `DIR:bad..tag`, not a reference name.
    BadTag,
}

const CASES: [Case; 7] = [
    Case::OciDirTag,
    Case::DirTag,
    Case::Dir,
    Case::OciDir,
    Case::Missing,
    Case::NoSuchTag,
    Case::BadTag,
];

impl Case {
    fn arg(self, dir: &Path) -> String {
        let d = dir.display();
        match self {
            Case::OciDirTag => format!("oci:{d}:{TAG}"),
            Case::DirTag => format!("{d}:{TAG}"),
            Case::Dir => format!("{d}"),
            Case::OciDir => format!("oci:{d}"),
            Case::Missing => format!("{}", dir.with_file_name("missing.oci").display()),
            Case::NoSuchTag => format!("{d}:nope"),
            Case::BadTag => format!("{d}:bad..tag"),
        }
    }

    /// The tag a build with `-o` this argument writes.
    fn written_tag(self) -> Option<&'static str> {
        match self {
            Case::OciDirTag | Case::DirTag => Some(TAG),
            Case::Dir | Case::OciDir | Case::Missing => Some("latest"),
            Case::NoSuchTag => Some("nope"),
            Case::BadTag => None,
        }
    }
}

/// Checks a run against the contract: the exit code; on failure one line
/// on stderr and, with `--json`, exactly one error object on stdout whose
/// kind matches the code and whose message is that line; on success with
/// `--json`, a versioned report.
#[track_caller]
fn check(r: &Run, code: i32, json: bool) {
    assert_eq!(r.code, Some(code), "expected exit {code}: {}", r.describe());
    if code == 0 {
        if json {
            let report = r.json();
            assert!(report["version"].is_u64(), "{}", r.describe());
            assert!(report.get("error").is_none(), "{}", r.describe());
        }
        return;
    }
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {}", r.describe());
    let message = lines[0]
        .strip_prefix("nixoci: error: ")
        .unwrap_or_else(|| panic!("no error prefix: {}", r.describe()));
    if json {
        assert_eq!(
            r.stdout.lines().count(),
            1,
            "one JSON line: {}",
            r.describe()
        );
        let kind = if code == 2 { "usage" } else { "failed" };
        assert_eq!(
            r.json(),
            json!({"version": 1, "error": {"kind": kind, "message": message}}),
            "{}",
            r.describe()
        );
    } else {
        assert_eq!(r.stdout, "", "{}", r.describe());
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Tags in a layout's index.json.
fn tags(layout: &Path) -> Vec<String> {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    array_of(&index["manifests"])
        .iter()
        .filter_map(|m| m["annotations"][REF_NAME].as_str().map(str::to_owned))
        .collect()
}

/// For each command that reads a layout × each way of naming it: the exit
/// code, and the JSON error object where the command has `--json`.
#[test]
fn every_command_reads_a_layout_the_same_way() {
    if !require(&["docker-registry"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let layout = golden_layout(work, TAG);
    let reg = Registry::start(&work.join("registry"), false);
    let cache = work.join("cache");

    // Columns: oci:DIR:TAG, DIR:TAG, DIR, oci:DIR, missing, DIR:nope, DIR:bad..tag.
    type Table = [i32; 7];
    let reading: &[(&str, Table)] = &[
        ("verify", [0, 0, 0, 0, 2, 2, 2]),
        ("gc", [2, 2, 0, 0, 2, 2, 2]),
        ("save", [0, 0, 0, 0, 2, 2, 2]),
        ("push", [0, 0, 0, 0, 2, 2, 2]),
        ("export-static", [0, 0, 0, 0, 2, 2, 2]),
        ("build --previous", [0, 0, 0, 0, 2, 2, 2]),
        ("plan --previous", [0, 0, 0, 0, 2, 2, 2]),
        ("build --from", [0, 0, 0, 0, 2, 2, 2]),
        ("pull", [0, 0, 0, 0, 2, 2, 2]),
    ];
    for (command, codes) in reading {
        for (i, (case, code)) in CASES.iter().zip(codes).enumerate() {
            let arg = case.arg(&layout);
            let out = work.join(format!("out-{}-{i}", command.replace([' ', '-'], "")));
            let mut cmd = nixoci();
            cmd.env("XDG_CACHE_HOME", &cache);
            let json = !matches!(*command, "save" | "pull");
            match *command {
                "verify" | "gc" => {
                    cmd.args([*command, arg.as_str()]);
                }
                "save" => {
                    cmd.args(["save", &arg, "--platform", "linux/amd64", "-o"])
                        .arg(out.with_extension("tar"));
                }
                "push" => {
                    cmd.args([
                        "push",
                        &arg,
                        &format!("{}/contract{i}:1", reg.addr()),
                        "--retries",
                        "0",
                    ]);
                }
                "export-static" => {
                    cmd.args(["export-static", &arg, "--repository", "hello", "-o"])
                        .arg(&out);
                }
                "build --previous" => {
                    cmd.args(golden_build_args())
                        .args(["--previous", &arg, "-o"])
                        .arg(&out);
                }
                "build --from" => {
                    cmd.args(golden_build_args())
                        .args(["--from", &arg, "-o"])
                        .arg(&out);
                }
                "pull" => {
                    cmd.args(["pull", &arg, "--platform", "linux/amd64", "-o"])
                        .arg(&out);
                }
                "plan --previous" => {
                    let mut build = golden_build_args();
                    build[0] = "plan".into();
                    cmd.args(build).args(["--previous", &arg]);
                }
                other => unreachable!("{other}"),
            }
            if json {
                cmd.arg("--json");
            }
            let r = run(&mut cmd);
            eprintln!("{command} {case:?}: exit {:?}", r.code);
            check(&r, *code, json);
        }
    }
    // Nothing read a layout as a directory named after the whole argument.
    assert!(!work.join("oci:golden.oci").exists());
    // The layout was only read.
    run(nixoci().args(["verify", s(&layout)])).success();
}

/// `build -o` and `pull -o` take the same forms: `oci:DIR[:TAG]` writes
/// DIR (never a directory named `oci:…`), `:TAG` is `--tag TAG`, and a TAG
/// that is not a reference name is refused before anything is written.
#[test]
fn build_writes_a_layout_named_the_same_way() {
    let tmp = tempdir();
    let work = tmp.path();
    let base = golden_layout(work, TAG);
    for (i, case) in CASES.iter().enumerate() {
        // An existing layout of its own for each case, one tag in it.
        let layout = work.join(format!("w{i}")).join("app.oci");
        fs::create_dir_all(layout.parent().expect("parent")).expect("mkdir");
        copy_dir(&base, &layout);
        let arg = case.arg(&layout);
        let written = if matches!(case, Case::Missing) {
            layout.with_file_name("missing.oci")
        } else {
            layout.clone()
        };
        let r = run(nixoci()
            .current_dir(work)
            .args(golden_build_args())
            .args(["-o", &arg, "--json"]));
        match case.written_tag() {
            Some(tag) => {
                check(&r, 0, true);
                assert_eq!(r.json()["tag"], tag, "{case:?}");
                assert!(tags(&written).contains(&tag.to_owned()), "{case:?}");
                run(nixoci().args(["verify", &format!("{}:{tag}", s(&written))])).success();
            }
            None => {
                check(&r, 2, true);
                assert_eq!(tags(&layout), [TAG], "{case:?}: left as it was");
            }
        }
        for entry in fs::read_dir(layout.parent().expect("parent")).expect("read_dir") {
            let name = entry.expect("entry").file_name();
            assert!(
                !name.to_string_lossy().starts_with("oci:"),
                "{case:?} created {name:?}"
            );
        }
    }

    // pull -o writes the same way.
    for (i, case) in CASES.iter().enumerate() {
        let dir = work.join(format!("p{i}"));
        fs::create_dir_all(&dir).expect("mkdir");
        let layout = dir.join("pulled.oci");
        let arg = case.arg(&layout);
        let r = run(nixoci().args(["pull", s(&base), "--platform", "linux/arm64", "-o", &arg]));
        let written = match case {
            Case::Missing => layout.with_file_name("missing.oci"),
            _ => layout.clone(),
        };
        match case {
            // The base's own tag when -o names none.
            Case::Dir | Case::OciDir | Case::Missing => {
                check(&r, 0, false);
                assert_eq!(tags(&written), [TAG], "{case:?}");
            }
            Case::OciDirTag | Case::DirTag | Case::NoSuchTag => {
                check(&r, 0, false);
                assert_eq!(
                    tags(&written),
                    [case.written_tag().expect("a tag")],
                    "{case:?}"
                );
            }
            Case::BadTag => {
                check(&r, 2, false);
                assert!(!layout.exists(), "{case:?}");
            }
        }
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let name = entry.expect("entry").file_name();
            assert!(
                !name.to_string_lossy().starts_with("oci:"),
                "{case:?} created {name:?}"
            );
        }
    }

    // -o DIR:TAG and --tag: the same tag is fine, two tags are refused.
    let out = work.join("both.oci");
    let o = format!("oci:{}:{TAG}", s(&out));
    let r = run(nixoci()
        .args(golden_build_args())
        .args(["-o", &o, "--tag", TAG, "--json"]));
    check(&r, 0, true);
    assert_eq!(tags(&out), [TAG]);
    let r = run(nixoci()
        .args(golden_build_args())
        .args(["-o", &o, "--tag", "other", "--json"]));
    check(&r, 2, true);
    r.refused("two different tags");
    assert_eq!(tags(&out), [TAG]);
}

/// `verify DIR:TAG` checks that tag's image only: damage that only another
/// tag reaches fails `verify DIR` and `verify DIR:OTHER` (exit 1, kind
/// failed) but not `verify DIR:TAG`.
#[test]
fn verify_with_a_tag_checks_that_tag_only() {
    let tmp = tempdir();
    let work = tmp.path();
    let layout = golden_layout(work, TAG);
    // A second tag, one platform of the same tree: its own image index.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    let r = run(nixoci().env("XDG_CACHE_HOME", work.join("cache")).args([
        "build",
        "--platform",
        "linux/amd64=/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello",
        "--closure-json",
        s(&root.join("closure.json")),
        "--store-root",
        s(&root.join("root")),
        "-o",
        &format!("{}:other", s(&layout)),
        "--json",
    ]));
    check(&r, 0, true);
    let other_index = str_of(&r.json()["index"]["digest"]).to_owned();
    let l = Layout(layout.clone());
    assert!(!l.reachable_blobs().is_empty());
    let whole = run(nixoci().args(["verify", s(&layout), "--json"])).success();
    let one =
        run(nixoci().args(["verify", &format!("oci:{}:{TAG}", s(&layout)), "--json"])).success();
    assert_eq!(whole.json()["tags"], json!([TAG, "other"]));
    assert_eq!(one.json()["tags"], json!([TAG]));
    assert!(one.json()["blobs"].as_u64() < whole.json()["blobs"].as_u64());
    // Which blobs no tag reaches needs every tag: only without TAG.
    assert_eq!(whole.json()["unreachableBlobs"], 0);
    assert!(one.json().get("unreachableBlobs").is_none());

    flip_byte(&l.blob_path(&other_index));
    let r = run(nixoci().args(["verify", &format!("{}:{TAG}", s(&layout)), "--json"]));
    check(&r, 0, true);
    for arg in [s(&layout).to_owned(), format!("{}:other", s(&layout))] {
        let r = run(nixoci().args(["verify", &arg, "--json"]));
        check(&r, 1, true);
        assert!(r.stderr.contains(&other_index[7..]), "{}", r.describe());
    }
}

/// The rest of the exit code table: a clap error with --json is a usage
/// error object too, a command without --json prints nothing on stdout,
/// and a damaged layout is exit 1 for push and export-static as well.
#[test]
fn exit_codes_and_json_errors() {
    let tmp = tempdir();
    let work = tmp.path();
    let layout = golden_layout(work, TAG);
    let l = Layout(layout.clone());

    let r = run(nixoci().args(["verify", s(&layout), "--json", "--no-such-flag"]));
    check(&r, 2, true);
    let r = run(nixoci().args(["cache", "prune", "--json"]));
    check(&r, 2, true);
    let r = run(nixoci().args(["build", "--json"]));
    check(&r, 2, true);
    // save has no --json: clap refuses it, and stdout stays empty.
    let r = run(nixoci().args(["save", s(&layout), "-o", "x.tar", "--json"]));
    check(&r, 2, false);
    // Without --json, no object.
    let r = run(nixoci().args(["verify", s(&work.join("nope.oci"))]));
    check(&r, 2, false);

    // A damaged layer: the operation fails on valid input, exit 1.
    let (_, platforms) = l.image(TAG);
    let layer = str_of(&platforms[0].manifest["layers"][0]["digest"]).to_owned();
    flip_byte(&l.blob_path(&layer));
    let r = run(nixoci().args(["verify", s(&layout), "--json"]));
    check(&r, 1, true);
    let r = run(nixoci()
        .args(["export-static", &format!("oci:{}", s(&layout))])
        .args(["--repository", "hello", "--json", "-o"])
        .arg(work.join("tree")));
    check(&r, 1, true);
}
