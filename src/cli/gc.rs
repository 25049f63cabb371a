//! `nixoci gc`: remove the blobs of a layout that no tag reaches.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;

use super::flags::{human_bytes, Age};
use super::Classify;
use crate::oci::gc::collect;

/// Remove the blobs of a layout that no tag reaches
///
/// What a killed build or an overwritten tag left behind: `nixoci verify`
/// reports them.
///
/// Only blobs last modified longer ago than the grace period go, and the
/// layout's lock is held meanwhile, so a build that is still writing never
/// loses a blob it has not yet committed. Temporary files of builds that
/// died are removed too.
///
///   nixoci gc hello.oci
///   nixoci gc hello.oci --grace 0s --dry-run --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The layout directory.
    pub layout: PathBuf,

    /// Keep unreachable blobs modified within this time: a number with s,
    /// m, h or d (`0s`, `30m`, `1h`, `2d`).
    #[arg(long, value_name = "AGE", default_value = "1h")]
    pub grace: Age,

    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::refuse_in_store("LAYOUT", &args.layout, &super::default_store_dirs())?;
    let dir = args.layout.display();
    // The grace period is measured against the file system's clock: this
    // reaches no output.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    let report = collect(&args.layout, args.grace.0, now, args.dry_run, &mut || {
        eprintln!("nixoci: waiting for another nixoci that is writing {dir}")
    })
    .classify()
    .with_context(|| format!("collecting {dir}"))?;
    if args.json {
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        super::print_stdout(&bytes)?;
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut line = format!(
        "{dir}: {verb} {} unreachable blob{} ({})",
        report.removed.len(),
        if report.removed.len() == 1 { "" } else { "s" },
        human_bytes(report.removed_bytes)
    );
    if !report.kept.is_empty() {
        line.push_str(&format!(
            "; kept {} younger than {} ({})",
            report.kept.len(),
            args.grace,
            human_bytes(report.kept_bytes)
        ));
    }
    if report.temp_files > 0 {
        line.push_str(&format!(
            "; removed {} temporary file{} ({})",
            report.temp_files,
            if report.temp_files == 1 { "" } else { "s" },
            human_bytes(report.temp_bytes)
        ));
    }
    eprintln!("{line}");
    Ok(())
}
