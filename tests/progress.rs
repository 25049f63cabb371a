//! `nixoci build`'s progress in a terminal (a pseudo-terminal from
//! util-linux `script`): bytes read of the total, rate and time left,
//! redrawn as the layers are read, ending at the total, with layers the
//! cache has taken out of the total; and no bar at all when stderr is not a
//! terminal.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{require, run_bounded};

/// Store paths of incompressible data: MiB each.
const SIZES: [u64; 4] = [3, 5, 7, 9];
const HASH: &str = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn data_path(i: usize) -> String {
    format!(
        "/nix/store/{}-data-{i}",
        char::from(b'0' + i as u8).to_string().repeat(32)
    )
}

fn app_path() -> String {
    format!("/nix/store/{}-app", "a".repeat(32))
}

/// A fake store under `dir/root`: the app, whose closure holds the data
/// paths, each of one file of xorshift noise and whose NAR size is its
/// MiB exactly (the NAR framing of a real path is left out: progress then
/// shows whole MiB). `fill` varies the noise; `nar_hash` of data path 0.
fn fake_store(dir: &Path, fill: u64, nar_hash: &str) -> PathBuf {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ fill;
    let mut entries = Vec::new();
    for (i, mib) in SIZES.iter().enumerate() {
        let path = data_path(i);
        let d = dir.join("root").join(path.trim_start_matches('/'));
        fs::create_dir_all(&d).unwrap();
        let mut f = fs::File::create(d.join("data")).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..*mib {
            for chunk in buf.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&buf).unwrap();
        }
        let hash = if i == 0 { nar_hash } else { HASH };
        entries.push(format!(
            r#"{{"path":"{path}","narHash":"{hash}","narSize":{},"references":[]}}"#,
            mib << 20
        ));
    }
    let app = app_path();
    let bin = dir
        .join("root")
        .join(app.trim_start_matches('/'))
        .join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("app"), "#!/bin/sh\n").unwrap();
    let refs: Vec<String> = (0..SIZES.len())
        .map(|i| format!(r#""{}""#, data_path(i)))
        .collect();
    entries.push(format!(
        r#"{{"path":"{app}","narHash":"{HASH}","narSize":200,"references":[{}]}}"#,
        refs.join(",")
    ));
    let closure = dir.join("closure.json");
    fs::write(&closure, format!("[{}]", entries.join(","))).unwrap();
    closure
}

/// `nixoci build` of the fake store: one layer per path, a root layer
/// (`--add-user`), a slow single-threaded level 9, the layer cache in `dir`.
fn build_args(dir: &Path, closure: &Path) -> Vec<PathBuf> {
    let args: Vec<PathBuf> = [
        "build",
        "--closure-json",
        closure.to_str().unwrap(),
        "--store-root",
        dir.join("root").to_str().unwrap(),
        "--platform",
        &format!("linux/amd64={}", app_path()),
        "--add-user",
        "app:1000",
        "--jobs",
        "1",
        "--level",
        "9",
        "--cache-dir",
        dir.join("cache").to_str().unwrap(),
        "-o",
        dir.join("out.oci").to_str().unwrap(),
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    args
}

fn shell_quote(arg: &OsStr) -> String {
    let text = String::from_utf8(arg.as_bytes().to_vec()).unwrap();
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// What a terminal shows while `nixoci ARGS` runs: `script` gives it a
/// pseudo-terminal as stdin, stdout and stderr, with the tests'
/// environment.
fn in_terminal(args: &[PathBuf]) -> String {
    // A terminal of WIDTH columns; indicatif pads its last line to the
    // width and leaves the line break to the terminal's wrapping.
    let mut line = format!("stty cols {WIDTH} rows 30; exec ");
    line.push_str(&shell_quote(OsStr::new(env!("CARGO_BIN_EXE_nixoci"))));
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a.as_os_str()));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"]);
    // The environment common::nixoci gives the binary.
    for (k, v) in common::nixoci().get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("TERM", "xterm").env("SHELL", "/bin/sh");
    cmd.stdin(std::process::Stdio::null());
    let out = run_bounded(cmd, Duration::from_secs(300), "nixoci build under script");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

/// Columns of the test's terminal.
const WIDTH: usize = 100;

/// The lines a terminal was given, one per redraw (`\r`), line or wrap at
/// [`WIDTH`], with escape sequences taken out and blanks around cut.
fn frames(tty: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = tty.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then a final letter.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
        .split(['\r', '\n'])
        .flat_map(|l| {
            let chars: Vec<char> = l.chars().collect();
            chars
                .chunks(WIDTH)
                .map(|c| c.iter().collect::<String>().trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// Bytes done and total of a frame: "12.50 MiB/24.00 MiB ...".
fn done_of_total(frame: &str) -> Option<(String, String)> {
    let words: Vec<&str> = frame.split_whitespace().collect();
    words.windows(3).find_map(|w| {
        let (done, total_number) = w[1].split_once('/')?;
        let unit = w[2];
        (w[0].parse::<f64>().is_ok()
            && total_number.parse::<f64>().is_ok()
            && unit.ends_with('B')
            && !unit.ends_with("/s"))
        .then(|| {
            (
                format!("{} {}", w[0], done),
                format!("{total_number} {unit}"),
            )
        })
    })
}

#[test]
fn the_build_bar_counts_bytes_of_the_total_with_rate_and_time_left() {
    if !require(&["script"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let closure = fake_store(tmp.path(), 0, HASH);
    let args = build_args(tmp.path(), &closure);
    let tty = in_terminal(&args);
    let frames = frames(&tty);
    let total_mib: u64 = SIZES.iter().sum();
    let total = format!("{total_mib}.00 MiB");

    // Redrawn as bytes are read: bytes of the total, a rate, time left and
    // the layers done.
    let bars: Vec<&String> = frames.iter().filter(|f| f.contains(" left [")).collect();
    let positions: std::collections::BTreeSet<String> = bars
        .iter()
        .filter_map(|f| done_of_total(f))
        // The total is known once the layers are planned.
        .filter(|(d, t)| {
            assert!(t == &total || (d == "0 B" && t == "0 B"), "{frames:#?}");
            t == &total
        })
        .map(|(d, _)| d)
        .collect();
    assert!(
        positions.len() >= 3,
        "several positions drawn, got {positions:?}: {frames:#?}"
    );
    assert!(
        bars.iter()
            .all(|f| f.contains("/s ") && (f.contains("layers ") || f.ends_with("planning"))),
        "{frames:#?}"
    );
    assert!(bars.iter().any(|f| f.contains("layers 0/")), "{frames:#?}");
    // The last state stays: every byte of the total read, every layer.
    let at = frames
        .iter()
        .position(|f| f.starts_with("read "))
        .unwrap_or_else(|| panic!("no final line: {frames:#?}"));
    let end = &frames[at];
    assert!(
        end.starts_with(&format!("read {total}/{total} in ")) && end.ends_with("layers 6/6"),
        "{end}"
    );
    assert!(end.contains("iB/s), "), "{end}");
    // Then the summary, on a line of its own.
    assert!(frames[at + 1].starts_with("wrote "), "{frames:#?}");

    // Again: every layer from the cache, nothing to read.
    let frames_again = frames_of(&args);
    assert!(
        frames_again
            .iter()
            .any(|f| f.starts_with("read 0 B/0 B in ") && f.ends_with("layers 6/6")),
        "{frames_again:#?}"
    );

    // One path changed: only its bytes are to read.
    let closure = fake_store(
        tmp.path(),
        1,
        "sha256-BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let args = build_args(tmp.path(), &closure);
    let frames_changed = frames_of(&args);
    let changed = format!("{}.00 MiB", SIZES[0]);
    assert!(
        frames_changed
            .iter()
            .any(|f| f.starts_with(&format!("read {changed}/{changed} in "))),
        "{frames_changed:#?}"
    );
}

fn frames_of(args: &[PathBuf]) -> Vec<String> {
    frames(&in_terminal(args))
}

#[test]
fn without_a_terminal_stderr_has_no_bar() {
    let tmp = tempfile::tempdir().unwrap();
    let closure = fake_store(tmp.path(), 0, HASH);
    let args = build_args(tmp.path(), &closure);
    let out = run_bounded(
        common::nixoci().args(&args),
        Duration::from_secs(300),
        "nixoci build",
    );
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("wrote "), "{stderr}");
    for bar in ["\r", "\x1b", "/s", " left", "[=", "read "] {
        assert!(!stderr.contains(bar), "{bar:?} in {stderr:?}");
    }
}
