//! `nixoci gc`: remove the blobs of a layout that no tag reaches.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::build::human_bytes;
use crate::oci::gc::collect;

/// Remove the blobs of an OCI image layout that no tag reaches: what a
/// killed build or an overwritten tag left behind. `nixoci verify` reports
/// them.
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
    #[arg(long, value_name = "AGE", default_value = "1h", value_parser = grace)]
    pub grace: Duration,

    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn grace(s: &str) -> Result<Duration, String> {
    super::cache::parse_age(s)
        .ok_or_else(|| format!("'{s}': expected a number with s, m, h or d (0s, 30m, 1h, 2d)"))
}

/// `3600 s` as `1h`: the biggest unit that says it exactly.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    [("d", 86_400), ("h", 3600), ("m", 60)]
        .iter()
        .find(|(_, n)| secs > 0 && secs % n == 0)
        .map(|(unit, n)| format!("{}{unit}", secs / n))
        .unwrap_or_else(|| format!("{secs}s"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::refuse_in_store("LAYOUT", &args.layout, &super::default_store_dirs())?;
    let dir = args.layout.display();
    // The grace period is measured against the file system's clock: this
    // reaches no output.
    let now = SystemTime::now();
    let report = collect(&args.layout, args.grace, now, args.dry_run, &mut || {
        eprintln!("nixoci: waiting for another nixoci that is writing {dir}")
    })
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
            format_duration(args.grace),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_print_as_they_parse() {
        for (s, secs) in [
            ("0s", 0),
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("2d", 172_800),
        ] {
            assert_eq!(grace(s), Ok(Duration::from_secs(secs)), "{s}");
            let back = format_duration(Duration::from_secs(secs));
            assert_eq!(grace(&back), Ok(Duration::from_secs(secs)), "{back}");
        }
        assert!(grace("soon").is_err());
    }
}
