//! The command line: one module per subcommand, each owning its `Args`
//! (whose doc comments are the help text) and its `run`.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

/// `eprintln!` for the command line's messages, ignoring a failed write: a
/// closed or full stderr (`2>&-`, `2>/dev/full`, a pipe whose reader has
/// gone) must not turn a message into a panic and exit 101.
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod build;
pub mod cache;
pub mod export_static;
pub mod flags;
pub mod gc;
pub mod plan;
pub mod pull;
pub mod push;
pub mod resolve;
pub mod save;
pub mod untag;
pub mod verify;
pub mod write_spec;

/// Turn Nix closures into multi-platform OCI image layouts, fast and
/// bit-for-bit reproducibly.
///
/// Exit codes: 0 success, 1 the operation failed (build, push, verify), 2
/// usage or setup error, 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP
/// (after removing what the run was writing). With --json, a failure also
/// prints {"version":1,"error":{"kind":"usage"|"failed","message":"…"}} on
/// stdout (kind usage is exit 2, failed exit 1).
///
/// A layout is named [oci:]DIR[:TAG] by every command: DIR, or the image
/// TAG names in it.
#[derive(Debug, Parser)]
#[command(name = "nixoci", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Build(Box<build::Args>),
    Plan(Box<plan::Args>),
    Verify(verify::Args),
    // Internal: the builder of the Nix library's `image`.
    #[command(hide = true)]
    WriteSpec(write_spec::Args),
    Push(push::Args),
    Pull(pull::Args),
    Save(save::Args),
    ExportStatic(export_static::Args),
    Cache(cache::Args),
    Gc(gc::Args),
    Untag(untag::Args),
}

/// An error caused by what the user asked for, not by the operation: exit 2.
/// The CLI's own messages are [`UsageError`]s; a library error that is the
/// user's to fix keeps its type inside a [`UsageOf`] ([`Classify`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// A library error that is the user's to fix (exit 2), kept as it is: it
/// prints as the error itself, its causes follow.
#[derive(Debug)]
pub struct UsageOf(Box<dyn std::error::Error + Send + Sync + 'static>);

impl std::fmt::Display for UsageOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for UsageOf {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Library errors that may be the user's fault rather than the
/// operation's; each type says which of its values are.
pub trait UserFault: std::error::Error + Send + Sync + Sized + 'static {
    fn is_usage(&self) -> bool;
}

macro_rules! user_fault {
    ($($t:ty),* $(,)?) => {
        $(impl UserFault for $t {
            fn is_usage(&self) -> bool {
                <$t>::is_usage(self)
            }
        })*
    };
}

user_fault!(
    crate::publish::archive::SaveError,
    crate::eval::EvalError,
    crate::eval::TargetError,
    crate::oci::gc::GcError,
    crate::publish::gc::GcError<crate::publish::gc::tree::TreeError>,
    crate::publish::gc::GcError<crate::publish::gc::bucket::BucketError>,
    crate::oci::layout::LayoutError,
    crate::oci::layout::TagError,
    crate::oci::verify::VerifyError,
    crate::pipeline::BuildError,
    crate::publish::previous::PreviousError,
    crate::publish::base::BaseError,
);

/// Marks the error of a library call as the user's to fix where it is.
pub trait Classify<T> {
    fn classify(self) -> anyhow::Result<T>;
}

impl<T, E: UserFault> Classify<T> for Result<T, E> {
    fn classify(self) -> anyhow::Result<T> {
        self.map_err(|e| {
            if e.is_usage() {
                UsageOf(Box::new(e)).into()
            } else {
                e.into()
            }
        })
    }
}

/// The error and its causes on one line, joined by ": ". Each cause says
/// only its own part (a context, or an error whose source is separate), so
/// nothing repeats.
pub fn error_message(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err
        .chain()
        .map(|c| c.to_string())
        .filter(|p| !p.is_empty())
        .collect();
    parts.join(": ").replace('\n', " ")
}

/// What kind of failure a `--json` error object reports, one per exit
/// code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Exit 1: the operation failed on valid input.
    Failed,
    /// Exit 2: a usage or setup error.
    Usage,
}

impl ErrorKind {
    /// Usage when any cause is a usage error, kept typed until here
    /// ([`UsageError`], [`UsageOf`]); failed otherwise.
    pub fn of(err: &anyhow::Error) -> ErrorKind {
        if err
            .chain()
            .any(|cause| cause.is::<UsageError>() || cause.is::<UsageOf>())
        {
            ErrorKind::Usage
        } else {
            ErrorKind::Failed
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Usage => "usage",
        }
    }
}

/// The version of the `--json` error object.
pub const ERROR_JSON_VERSION: u32 = 1;

/// The `--json` error object, one line:
/// `{"version":1,"error":{"kind":"usage","message":"…"}}`.
pub fn error_json(kind: ErrorKind, message: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Report<'a> {
        version: u32,
        error: Error<'a>,
    }
    #[derive(serde::Serialize)]
    struct Error<'a> {
        kind: &'static str,
        message: &'a str,
    }
    let report = Report {
        version: ERROR_JSON_VERSION,
        error: Error {
            kind: kind.as_str(),
            message,
        },
    };
    // A struct of strings always serialises.
    let mut bytes = serde_json::to_vec(&report).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// True when the command line asks for `--json` (before any `--`) of a
/// command that has it: its failures, clap's included, then print
/// [`error_json`] on stdout too.
fn json_requested(args: &[std::ffi::OsString]) -> bool {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut given = false;
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        match arg {
            "--" => break,
            "--json" => given = true,
            _ => {
                if let Some(sub) = cmd.find_subcommand(arg) {
                    cmd = sub.clone();
                }
            }
        }
    }
    given && cmd.get_arguments().any(|a| a.get_id() == "json")
}

/// Reports a failure: one line on stderr, and with `--json` the error
/// object on stdout.
fn fail(kind: ErrorKind, message: &str, json: bool) -> ExitCode {
    say!("nixoci: error: {message}");
    if json {
        let _ = print_stdout(&error_json(kind, message));
    }
    ExitCode::from(kind.exit_code())
}

/// The store directories nixoci must never write into: `store_dir`, and
/// the same under `store_root` when that is not `/`.
pub fn store_dirs(store_dir: &str, store_root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(store_dir)];
    if store_root != Path::new("/") {
        dirs.push(store_root.join(store_dir.trim_start_matches('/')));
    }
    dirs
}

/// [`store_dirs`] for commands without `--store-dir`: `NIX_STORE_DIR`, else
/// `/nix/store`.
pub fn default_store_dirs() -> Vec<PathBuf> {
    let dir = std::env::var("NIX_STORE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/nix/store".to_owned());
    store_dirs(&dir, Path::new("/"))
}

/// `path` made absolute with its symlinks resolved: the longest part that
/// exists is canonicalised, the rest (which holds no symlink, as it does
/// not exist) is appended with `.` and `..` resolved by name.
fn resolved(path: &Path) -> io::Result<PathBuf> {
    let mut absolute = std::env::current_dir()?;
    absolute.push(path);
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    let mut base = loop {
        match existing.canonicalize() {
            Ok(p) => break p,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                // `..` as the last part, or `/` itself.
                _ => break existing.to_owned(),
            },
        }
    };
    for part in rest.iter().rev() {
        match part.to_str() {
            Some("..") => {
                base.pop();
            }
            Some(".") => {}
            _ => base.push(part),
        }
    }
    Ok(base)
}

/// Refuses (exit 2) a path nixoci would write to (`what`: the flag) when it
/// is inside one of `store_dirs` once symlinks are resolved: writing there
/// would corrupt store paths.
pub fn refuse_in_store(what: &str, path: &Path, store_dirs: &[PathBuf]) -> anyhow::Result<()> {
    let target = resolved(path).map_err(|e| usage(format!("{what} {}: {e}", path.display())))?;
    for store in store_dirs {
        let store = resolved(store).unwrap_or_else(|_| store.clone());
        if target.starts_with(&store) {
            return Err(usage(format!(
                "{what} {}: inside the Nix store {} (resolved to {}); nixoci never writes into the store",
                path.display(),
                store.display(),
                target.display()
            )));
        }
    }
    Ok(())
}

/// A command-line error as one line, like every other error: clap's
/// message and tips, without its usage block.
fn clap_error_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let joined = parts.join(" ");
    let message = joined.strip_prefix("error: ").unwrap_or(&joined);
    format!("{message} (see --help)")
}

/// True when progress and colour belong on stderr.
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// `build`'s and `push`'s progress: bytes done of the total, rate, time
/// left, a bar as wide as the terminal lets it be and a message, redrawn
/// ten times a second even when no byte moves; `message` from the first
/// frame on. Hidden unless stderr is a terminal.
pub fn bytes_bar(message: &'static str) -> ProgressBar {
    if !stderr_is_terminal() {
        return ProgressBar::hidden();
    }
    // No length until the caller knows it: an empty bar, not a full one.
    // Dropped unfinished (an error), it goes away rather than claiming 100%.
    let bar = ProgressBar::no_length().with_finish(ProgressFinish::AndClear);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta} left [{wide_bar}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    // Before the tick starts, so that no frame goes without it.
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Writes a `--json` report to stdout, pretty, with a final newline.
pub fn print_json(report: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    print_stdout(&bytes)
}

/// Writes `bytes` to stdout; a closed pipe is not an error.
pub fn print_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP remove what this run was writing
/// ([`crate::oci::temp`]) and exit 130, 143 or 129 (128 + the signal).
///
/// The signals are blocked in this thread before any other starts, so that
/// every thread inherits the mask, and one thread takes them with
/// `sigwait`. Child processes (`nix`) start with an empty mask, as
/// `std::process::Command` resets it.
// sigwait and the signal mask have no safe form in std.
#[allow(unsafe_code)]
fn catch_signals() {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before
    // use; pthread_sigmask changes only this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let waiter = move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid signal set and `sig` a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            crate::oci::temp::remove_all_and_exit(128 + sig);
        }
    };
    let started = std::thread::Builder::new()
        .name("nixoci-signals".into())
        .spawn(waiter);
    if started.is_err() {
        // Nobody would take them: let the signals act as usual.
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Parses the command line, runs it and returns the process exit code.
pub fn main() -> ExitCode {
    catch_signals();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = json_requested(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(ErrorKind::Usage, &clap_error_message(&e), json),
    };
    let result = match cli.command {
        Command::Build(args) => build::run(*args),
        Command::Plan(args) => plan::run(*args),
        Command::Verify(args) => verify::run(args),
        Command::WriteSpec(args) => write_spec::run(args),
        Command::Push(args) => push::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Save(args) => save::run(args),
        Command::ExportStatic(args) => export_static::run(args),
        Command::Cache(args) => cache::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Untag(args) => untag::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(ErrorKind::of(&err), &error_message(&err), json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_for_commands_that_have_json() {
        let args = |s: &str| -> Vec<std::ffi::OsString> {
            std::iter::once("nixoci")
                .chain(s.split_whitespace())
                .map(Into::into)
                .collect()
        };
        for yes in [
            "verify x --json",
            "build --json --bogus",
            "push --json a b",
            "cache prune --json",
            "gc x --json",
            "plan .#x --json",
        ] {
            assert!(json_requested(&args(yes)), "{yes}");
        }
        for no in [
            "verify x",
            "save x -o y --json",
            "build -- --json",
            "cache --json",
        ] {
            assert!(!json_requested(&args(no)), "{no}");
        }
        assert_eq!(
            String::from_utf8(error_json(ErrorKind::Usage, "a \"b\"\nc")).unwrap(),
            "{\"version\":1,\"error\":{\"kind\":\"usage\",\"message\":\"a \\\"b\\\"\\nc\"}}\n"
        );
    }
}
