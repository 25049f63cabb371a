//! `nixoci cache`: look after the layer cache.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;

use super::flags::{human_bytes, Age, ByteSize};
use super::usage;
use crate::layer::cache::{Cache, Prune};

/// Look after the layer cache (`--cache-dir` of `nixoci build`).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    Prune(PruneArgs),
}

/// Remove layers and plans that were not used for a while, or beyond a size.
///
/// Removes from the cache the layers and plans not used for a while
/// (--unused-for), then the least recently used until the rest fits a size
/// (--max-size). Using a layer (a cache hit, or a blob already in the
/// output) or a plan counts as use. Also removes damaged entries, blobs
/// that no entry names and files left by interrupted builds. Safe while
/// builds run: a build that loses a layer under it builds it again.
///
/// Examples:
///
///   nixoci cache prune --unused-for 30d
///   nixoci cache prune --max-size 20G --dry-run
///   nixoci cache prune --max-size 0        # empty it
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct PruneArgs {
    /// The cache directory [default: $XDG_CACHE_HOME/nixoci, else
    /// ~/.cache/nixoci].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Remove what was not used for this long: a number with s, m, h or d
    /// (`90m`, `12h`, `30d`).
    #[arg(long, value_name = "AGE")]
    pub unused_for: Option<Age>,

    /// Then remove the least recently used until the rest takes at most
    /// SIZE (bytes, or a number with K, M or G: powers of 1024).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<ByteSize>,

    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Prune(args) => prune(args),
    }
}

fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let unused_for = args.unused_for.map(|a| a.0);
    let max_size = args.max_size.map(|s| s.0);
    if unused_for.is_none() && max_size.is_none() {
        return Err(usage(
            "say what to remove: --unused-for AGE, --max-size SIZE, or both",
        ));
    }
    let dir = args
        .cache_dir
        .clone()
        .or_else(super::resolve::default_cache_dir)
        .ok_or_else(|| {
            usage("no cache directory: pass --cache-dir (XDG_CACHE_HOME is not set and HOME is not a directory)")
        })?;
    super::refuse_in_store("--cache-dir", &dir, &super::default_store_dirs())?;
    if !dir.is_dir() {
        say!("nixoci: no cache at {}: nothing to prune", dir.display());
        return Ok(());
    }
    let cache = Cache::open(&dir).with_context(|| format!("opening cache {}", dir.display()))?;
    let policy = Prune {
        unused_for,
        max_size,
        dry_run: args.dry_run,
    };
    let report = cache
        .prune(&policy, now())
        .with_context(|| format!("pruning cache {}", dir.display()))?;
    if args.json {
        super::print_json(&report)?;
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    say!(
        "{}: {verb} {} layers and {} plans ({}){}; kept {} layers and {} plans ({})",
        dir.display(),
        report.removed_layers,
        report.removed_plans,
        human_bytes(report.removed_bytes),
        match report.removed_other {
            0 => String::new(),
            n => format!(" and {n} damaged or leftover files"),
        },
        report.kept_layers,
        report.kept_plans,
        human_bytes(report.kept_bytes),
    );
    Ok(())
}

/// The clock, for what was used when: cache bookkeeping, never output.
#[allow(clippy::disallowed_methods)]
fn now() -> SystemTime {
    SystemTime::now()
}
