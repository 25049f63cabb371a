//! `nixoci gc`: remove what no tag reaches, from a layout or a static
//! registry (a tree export-static wrote, or a bucket).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use super::flags::{human_bytes, Age, S3Args};
use super::{usage, Classify};
use crate::error::error_chain;
use crate::oci::gc::collect;
use crate::oci::layout::LayoutArg;
use crate::publish::client::ClientOptions;
use crate::publish::gc::{self as static_gc, bucket::BucketObjects, tree, GcReport};
use crate::publish::s3::{Bucket, S3Url};

/// Remove the blobs no tag reaches, from a layout or a static registry
///
/// TARGET is an OCI image layout, DIR or oci:DIR (it has an oci-layout
/// file; no :TAG, gc collects whole layouts), a static
/// registry tree export-static wrote (it has a .nixoci folder), or
/// s3://BUCKET[/PREFIX].
///
/// A layout: removes the blobs its index.json does not reach, what a killed
/// build or an overwritten tag left behind (`nixoci verify` reports them),
/// and the temporary files of builds that died, under the layout's lock.
///
/// A static registry: marks what every tag of every repository reaches
/// (image indexes, manifests, configs and layers) and deletes the other
/// manifests by digest, then the other blobs. A tag whose documents are
/// missing or damaged stops gc before it deletes anything (exit 1, naming
/// it). A tree is locked meanwhile; its blob store loses the copies no
/// repository links, and its tag lists, objects.json, nginx.conf and
/// Caddyfile are rewritten as export-static writes them. Remove tags first
/// with `nixoci untag`.
///
/// Only what was last modified longer ago than the grace period goes (by
/// the file system's clock; in a bucket, by the server's), so that a build,
/// export or push running at the same time never loses what it has written
/// but not yet tagged.
///
///   nixoci gc hello.oci
///   nixoci gc site --grace 0s --dry-run --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The layout, the static registry tree, or s3://BUCKET[/PREFIX] (with
    /// the --s3-* flags below).
    #[arg(value_name = "TARGET")]
    pub target: String,

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

    #[command(flatten)]
    pub s3: S3Args,
}

/// What `gc` and `untag` work on.
#[derive(Debug)]
pub enum Target {
    /// An OCI image layout.
    Layout(PathBuf),
    /// A static registry tree export-static wrote.
    Tree(PathBuf),
    /// A static registry in a bucket.
    Bucket(S3Url),
}

impl Target {
    /// What `arg` names, by what is there; anything else is a usage error.
    /// A layout is `[oci:]DIR` ([`LayoutArg`]), a whole layout: a `:TAG`
    /// is refused.
    pub fn find(arg: &str) -> anyhow::Result<Target> {
        if arg.starts_with("s3://") {
            let url = S3Url::parse(arg).map_err(|e| usage(format!("TARGET {arg}: {e}")))?;
            return Ok(Target::Bucket(url));
        }
        let whole_layout = |layout: LayoutArg| match &layout.tag {
            Some(tag) => Err(usage(format!(
                "TARGET {arg}: gc collects a whole layout; give {} without :{tag}",
                layout.dir.display()
            ))),
            None => Ok(Target::Layout(layout.dir)),
        };
        if arg.starts_with(LayoutArg::PREFIX) {
            let layout = LayoutArg::parse(arg).map_err(|e| usage(format!("TARGET {arg}: {e}")))?;
            return whole_layout(layout);
        }
        let path = Path::new(arg);
        if tree::is_tree(path) {
            return Ok(Target::Tree(path.to_owned()));
        }
        if path.join("oci-layout").exists() {
            return Ok(Target::Layout(path.to_owned()));
        }
        if let Some(layout) = LayoutArg::parse(arg).ok().filter(LayoutArg::is_layout) {
            return whole_layout(layout);
        }
        Err(usage(format!(
            "TARGET {arg}: neither an OCI layout (no oci-layout file), a static registry tree (no {} folder) nor s3://BUCKET[/PREFIX]",
            crate::publish::static_export::STATE_DIR
        )))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let target = Target::find(&args.target)?;
    if args.s3.given() && !matches!(target, Target::Bucket(_)) {
        return Err(usage(format!(
            "--s3-endpoint and --s3-region are for s3:// targets, not {}",
            args.target
        )));
    }
    match target {
        Target::Layout(dir) => run_layout(&args, &dir),
        Target::Tree(dir) => {
            super::refuse_in_store("TARGET", &dir, &super::default_store_dirs())?;
            let mut tree =
                tree::Tree::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
            let report = static_gc::collect(&mut tree, &args.target, args.grace.0, args.dry_run)
                .classify()
                .with_context(|| format!("collecting {}", args.target))?;
            print_static(&args, &report)
        }
        Target::Bucket(url) => {
            let bucket = open_bucket(&url, &args.s3)?;
            let report = static_gc::collect(
                &mut BucketObjects::new(&bucket),
                &args.target,
                args.grace.0,
                args.dry_run,
            )
            .classify()
            .with_context(|| format!("collecting {url}"))?;
            print_static(&args, &report)
        }
    }
}

/// The client of the bucket `url`, its credentials and the bucket tried
/// (a missing key or endpoint is a setup error, exit 2).
pub fn open_bucket(url: &S3Url, s3: &S3Args) -> anyhow::Result<Bucket> {
    let config = s3.config().map_err(|e| usage(error_chain(&e)))?;
    let bucket = Bucket::new(
        &config,
        url,
        ClientOptions::default(),
        Box::new(|m| say!("nixoci: {m}")),
    )
    .with_context(|| format!("opening {url}"))?;
    bucket.check().with_context(|| format!("opening {url}"))?;
    Ok(bucket)
}

/// What the summary says was done: removed, or would be with --dry-run.
fn verb(args: &Args) -> &'static str {
    if args.dry_run {
        "would remove"
    } else {
        "removed"
    }
}

/// The summary's note of what the grace period kept, when anything.
fn push_kept(line: &mut String, args: &Args, kept: usize, kept_bytes: u64) {
    if kept > 0 {
        line.push_str(&format!(
            "; kept {kept} younger than {} ({})",
            args.grace,
            human_bytes(kept_bytes)
        ));
    }
}

/// Prints a static registry's report: JSON on stdout with `--json`, one
/// line on stderr.
fn print_static(args: &Args, report: &GcReport) -> anyhow::Result<()> {
    if args.json {
        super::print_json(report)?;
    }
    let verb = verb(args);
    let mut line = format!(
        "{}: {} tag{} reach {} object{}; {verb} {} manifest{} and {} blob{} ({})",
        report.target,
        report.tags,
        plural(report.tags),
        report.reachable,
        plural(report.reachable),
        report.removed_manifests,
        plural(report.removed_manifests),
        report.removed_blobs,
        plural(report.removed_blobs),
        human_bytes(report.removed_bytes),
    );
    if !report.store_removed.is_empty() {
        line.push_str(&format!(
            ", {} blob-store cop{} ({} freed)",
            report.store_removed.len(),
            if report.store_removed.len() == 1 {
                "y"
            } else {
                "ies"
            },
            human_bytes(report.bytes_freed)
        ));
    }
    push_kept(&mut line, args, report.kept.len(), report.kept_bytes);
    say!("{line}");
    if args.dry_run && !args.json {
        // What would go is the data of a dry run: BYTES<TAB>KEY, as du.
        let mut out = String::new();
        for g in report.removed.iter().chain(&report.store_removed) {
            out.push_str(&format!("{}\t{}\n", g.size, g.key));
        }
        super::print_stdout(out.as_bytes())?;
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `gc` of an OCI image layout.
fn run_layout(args: &Args, layout: &Path) -> anyhow::Result<()> {
    super::refuse_in_store("LAYOUT", layout, &super::default_store_dirs())?;
    let dir = layout.display();
    // The grace period is measured against the file system's clock: this
    // reaches no output.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    let report = collect(layout, args.grace.0, now, args.dry_run, &mut || {
        say!("nixoci: waiting for another nixoci that is writing {dir}")
    })
    .classify()
    .with_context(|| format!("collecting {dir}"))?;
    if args.json {
        super::print_json(&report)?;
    }
    let verb = verb(args);
    let mut line = format!(
        "{dir}: {verb} {} unreachable blob{} ({})",
        report.removed.len(),
        plural(report.removed.len()),
        human_bytes(report.removed_bytes)
    );
    push_kept(&mut line, args, report.kept.len(), report.kept_bytes);
    if report.temp_files > 0 {
        line.push_str(&format!(
            "; removed {} temporary file{} ({})",
            report.temp_files,
            plural(report.temp_files),
            human_bytes(report.temp_bytes)
        ));
    }
    say!("{line}");
    Ok(())
}
