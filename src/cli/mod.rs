//! The command line: one module per subcommand, each owning its `Args`
//! (whose doc comments are the help text) and its `run`.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

pub mod build;
pub mod cache;
pub mod export_static;
pub mod plan;
pub mod push;
pub mod verify;
pub mod write_spec;

/// Turn Nix closures into multi-platform OCI image layouts, fast and
/// bit-for-bit reproducibly.
///
/// Exit codes: 0 success, 1 the operation failed (build, verify), 2 usage or
/// setup error.
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
    WriteSpec(write_spec::Args),
    Push(push::Args),
    ExportStatic(export_static::Args),
    Cache(cache::Args),
}

/// `--timeout`: `30s`, `2m`, `500ms`, `1.5s`, `1h`, or a number of
/// seconds; from 1 ms to a day.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits = t
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = t.split_at(digits);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let secs = number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && !number.starts_with('.'))
        .map(|n| n * scale);
    match secs {
        Some(x) if (0.001..=86_400.0).contains(&x) => Ok(Duration::from_secs_f64(x)),
        Some(x) if x > 86_400.0 => Err("at most a day (24h)".into()),
        Some(x) if x >= 0.0 => Err("too short to answer in: give 1ms or more".into()),
        _ => Err("expected a duration such as 30s, 2m, 500ms or a number of seconds".into()),
    }
}

/// An error caused by what the user asked for, not by the operation: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The exit code for an error: 2 when any cause is a usage error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let usage = err.chain().any(|cause| {
        cause.is::<UsageError>()
            || cause.is::<crate::platform::PlatformError>()
            || cause.is::<crate::store_path::StorePathError>()
            || cause.is::<crate::installable::InstallableError>()
            || cause
                .downcast_ref::<crate::oci::layout::TagError>()
                .is_some_and(|e| e.is_usage())
            || cause
                .downcast_ref::<crate::eval::EvalError>()
                .is_some_and(|e| e.is_usage())
            || cause
                .downcast_ref::<crate::oci::layout::LayoutError>()
                .is_some_and(|e| e.is_usage())
            || cause.is::<crate::plan::PlanError>()
    });
    if usage {
        2
    } else {
        1
    }
}

/// One line: the error and its causes, joined by ": ".
pub fn error_line(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err.chain().map(|c| c.to_string()).collect();
    let mut line = String::from("nixoci: error: ");
    // Some causes repeat their source's text; keep each piece once.
    let mut last = String::new();
    for (i, p) in parts.iter().enumerate() {
        if p == &last || p.is_empty() {
            continue;
        }
        if i > 0 {
            line.push_str(": ");
        }
        line.push_str(p);
        last = p.clone();
    }
    line.replace('\n', " ")
}

/// True when progress and colour belong on stderr.
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// Writes `bytes` to stdout; a closed pipe is not an error.
pub fn print_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Parses the command line, runs it and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Build(args) => build::run(*args),
        Command::Plan(args) => plan::run(*args),
        Command::Verify(args) => verify::run(args),
        Command::WriteSpec(args) => write_spec::run(args),
        Command::Push(args) => push::run(args),
        Command::ExportStatic(args) => export_static::run(args),
        Command::Cache(args) => cache::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", error_line(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("30s", ms(30_000)),
            ("30", ms(30_000)),
            (" 2m ", ms(120_000)),
            ("2min", ms(120_000)),
            ("500ms", ms(500)),
            ("1.5s", ms(1_500)),
            ("0.25", ms(250)),
            ("1h", ms(3_600_000)),
            ("24h", ms(86_400_000)),
        ] {
            assert_eq!(parse_timeout(s), Ok(want), "{s}");
        }
        for bad in [
            "", "0", "0s", "0ms", "0.0", "s", "-1", "-5s", "1x", "1 s s", "abc", "1..2s", ".5s",
            "25h", "inf", "NaN", "1e3", "0.0001",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
