//! The only place that runs `nix`: reads closures from the Nix store.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::closure::{Closure, ClosureError, CLOSURE_VERSION};
use crate::store_path::{StoreDir, StorePath};

/// How to call Nix.
#[derive(Debug, Clone)]
pub struct Nix {
    /// The `nix` program, `nix` from `PATH` by default.
    pub program: PathBuf,
}

impl Default for Nix {
    fn default() -> Self {
        Nix {
            program: PathBuf::from("nix"),
        }
    }
}

/// Why Nix could not tell us a closure.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot run '{program}' (install Nix, or pass --closure-json)")]
    NixMissing {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a valid path in the Nix store")]
    NotInStore(String),
    #[error("'{command}' failed: {stderr}")]
    NixFailed { command: String, stderr: String },
    #[error("reading the output of '{command}'")]
    Closure {
        command: String,
        #[source]
        source: ClosureError,
    },
}

impl EvalError {
    /// True when the user's input, not the operation, is at fault.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EvalError::NixMissing { .. } | EvalError::NotInStore(_)
        )
    }
}

/// How many trailing lines of Nix's stderr a [`EvalError::NixFailed`] keeps.
const STDERR_LINES: usize = 5;

/// Reads the closure of all `roots` with one `nix path-info --json --recursive`.
///
/// A `nix` that cannot be started is [`EvalError::NixMissing`]; a root (or
/// anything in its closure) Nix does not have is [`EvalError::NotInStore`];
/// any other failure of Nix is [`EvalError::NixFailed`] with the end of its
/// stderr. The closure holds exactly the roots and what they refer to.
pub fn path_info_closure(
    nix: &Nix,
    store_dir: &StoreDir,
    roots: &[StorePath],
) -> Result<Closure, EvalError> {
    // Without arguments Nix would read the flake in the current directory.
    if roots.is_empty() {
        return Ok(Closure {
            version: CLOSURE_VERSION,
            store_dir: store_dir.clone(),
            paths: BTreeMap::new(),
        });
    }
    let program = nix.program.display().to_string();
    // `nix-command` is experimental up to at least Nix 2.8; newer Nix
    // accepts the flag for a stable feature. `--` keeps paths from being
    // read as options.
    let output = Command::new(&nix.program)
        .args(["--extra-experimental-features", "nix-command"])
        .args(["path-info", "--json", "--recursive", "--"])
        .args(roots.iter().map(StorePath::as_str))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| EvalError::NixMissing {
            program: program.clone(),
            source,
        })?;
    let command = describe_command(&program, roots);
    if !output.status.success() {
        let stderr = strip_ansi(&String::from_utf8_lossy(&output.stderr));
        if let Some(path) = invalid_path_in(&stderr) {
            return Err(EvalError::NotInStore(path));
        }
        return Err(EvalError::NixFailed {
            command,
            stderr: last_lines(&stderr, STDERR_LINES)
                .unwrap_or_else(|| format!("no error message, {}", output.status)),
        });
    }
    let closure = Closure::from_path_info_json(store_dir, &output.stdout)
        .and_then(|all| all.subclosure(roots))
        .map_err(|source| match source {
            ClosureError::Invalid(path) => EvalError::NotInStore(path),
            source => EvalError::Closure { command, source },
        })?;
    Ok(closure)
}

/// The command for messages, with at most two roots spelled out.
fn describe_command(program: &str, roots: &[StorePath]) -> String {
    let mut command = format!("{program} path-info --json --recursive");
    for root in roots.iter().take(2) {
        command.push(' ');
        command.push_str(root.as_str());
    }
    if roots.len() > 2 {
        command.push_str(&format!(" (and {} more)", roots.len() - 2));
    }
    command
}

/// The path in Nix's `path '/nix/store/…' is not valid`, the error every Nix
/// since 2.0 gives for a store path that is not in the store.
fn invalid_path_in(stderr: &str) -> Option<String> {
    const START: &str = "path '";
    const END: &str = "' is not valid";
    stderr.lines().find_map(|line| {
        let start = line.find(START)? + START.len();
        let len = line[start..].find(END)?;
        Some(line[start..start + len].to_owned())
    })
}

/// Drops terminal escape sequences (`ESC [ … letter`), which Nix prints
/// around paths when it believes stderr is a terminal.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// The last `n` non-empty lines, trimmed, or `None` if there are none.
fn last_lines(text: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    (!tail.is_empty()).then(|| tail.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nix` from `PATH`, or `None` with a printed reason; under `CI=true` a
    /// missing Nix fails the test instead.
    fn nix_or_skip(test: &str) -> Option<Nix> {
        let nix = Nix::default();
        let works = Command::new(&nix.program)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Some(nix);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: `nix` is not on PATH, and CI=true does not allow skipping");
        }
        eprintln!("skipping {test}: `nix` is not on PATH");
        None
    }

    /// Adds two text files to the store, the second referring to the first,
    /// and returns the second: no builder and no nixpkgs needed.
    fn add_text_files(nix: &Nix) -> StorePath {
        let expr = r#"
            let a = builtins.toFile "nixoci-eval-test-a" "a";
            in builtins.toFile "nixoci-eval-test-b" "refers to ${a}"
        "#;
        let out = Command::new(&nix.program)
            .args(["--extra-experimental-features", "nix-command"])
            .args(["eval", "--raw", "--expr", expr])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        StorePath::from_absolute(std::str::from_utf8(&out.stdout).unwrap().trim()).unwrap()
    }

    #[test]
    fn reads_a_real_closure() {
        let Some(nix) = nix_or_skip("reads_a_real_closure") else {
            return;
        };
        let b = add_text_files(&nix);
        let store_dir = StoreDir::new(b.store_dir()).unwrap();
        let closure = path_info_closure(&nix, &store_dir, std::slice::from_ref(&b)).unwrap();
        assert_eq!(closure.paths.len(), 2, "{closure:?}");
        let info = &closure.paths[&b];
        assert_eq!(info.references.len(), 1);
        let a = info.references.iter().next().unwrap();
        assert_eq!(a.name(), "nixoci-eval-test-a");
        assert!(closure.paths[a].references.is_empty());
        for info in closure.paths.values() {
            assert!(info.nar_hash.starts_with("sha256-"), "{info:?}");
            assert!(info.nar_size > 0);
        }
    }

    #[test]
    fn a_missing_path_is_not_in_store() {
        let Some(nix) = nix_or_skip("a_missing_path_is_not_in_store") else {
            return;
        };
        let nope = "/nix/store/00000000000000000000000000000000-nope";
        let root = StorePath::from_absolute(nope).unwrap();
        match path_info_closure(&nix, &StoreDir::default(), &[root]) {
            Err(e @ EvalError::NotInStore(_)) => {
                assert!(e.is_usage());
                assert_eq!(
                    e.to_string(),
                    format!("{nope} is not a valid path in the Nix store")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_program_is_nix_missing() {
        let nix = Nix {
            program: PathBuf::from("/nonexistent/nixoci-test/nix"),
        };
        let root =
            StorePath::from_absolute("/nix/store/00000000000000000000000000000000-x").unwrap();
        match path_info_closure(&nix, &StoreDir::default(), &[root]) {
            Err(e @ EvalError::NixMissing { .. }) => {
                assert!(e.is_usage());
                let EvalError::NixMissing { source, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
                assert!(!e.to_string().contains(&source.to_string()), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // No roots: nothing to ask, and Nix is not run.
        let empty = path_info_closure(&nix, &StoreDir::default(), &[]).unwrap();
        assert!(empty.paths.is_empty());
    }

    #[test]
    fn reads_nix_errors() {
        let nix_2_8 = "don't know how to build these paths:\n  /nix/store/00000000000000000000000000000000-nope\nerror: path '/nix/store/00000000000000000000000000000000-nope' is not valid\n";
        let coloured = "\u{1b}[31;1merror:\u{1b}[0m path '\u{1b}[35;1m/nix/store/00000000000000000000000000000000-nope\u{1b}[0m' is not valid";
        for stderr in [nix_2_8, coloured] {
            assert_eq!(
                invalid_path_in(&strip_ansi(stderr)).as_deref(),
                Some("/nix/store/00000000000000000000000000000000-nope")
            );
        }
        assert_eq!(invalid_path_in("error: cannot connect to socket"), None);
        let long = "1\n2\n\n3\n4\n5\n6\n  7  \n";
        assert_eq!(last_lines(long, 5).as_deref(), Some("3\n4\n5\n6\n  7"));
        assert_eq!(last_lines("\n \n", 5), None);
    }

    #[test]
    fn commands_in_messages_stay_short() {
        let roots: Vec<StorePath> = (0..4)
            .map(|i| {
                StorePath::from_absolute(&format!("/nix/store/{}-p{i}", "0".repeat(32))).unwrap()
            })
            .collect();
        let command = describe_command("nix", &roots);
        assert!(command.ends_with("-p1 (and 2 more)"), "{command}");
    }
}
