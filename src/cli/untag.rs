//! `nixoci untag`: remove a tag from a static registry.

use anyhow::Context;

use super::flags::{NameTag, S3Args};
use super::gc::{open_bucket, Target};
use super::{usage, Classify};
use crate::oci::layout::LayoutArg;
use crate::publish::gc::{self as static_gc, bucket::BucketObjects, tree};

/// Remove a tag from a static registry
///
/// TARGET is a static registry tree export-static wrote (it has a .nixoci
/// folder) or s3://BUCKET[/PREFIX]. The tag's manifest goes and its name
/// leaves the repository's tags/list (the list goes with the last tag); a
/// tree's objects.json, nginx.conf and Caddyfile are rewritten. The
/// manifests and blobs it named stay until `nixoci gc TARGET` finds that
/// no other tag needs them.
///
///   nixoci untag site team/hello:1.0
///   nixoci gc site
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The static registry tree, or s3://BUCKET[/PREFIX] (with the --s3-*
    /// flags below).
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// The repository and the tag to remove.
    #[arg(value_name = "NAME:TAG")]
    pub name: NameTag,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub s3: S3Args,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layout = || {
        usage(format!(
            "TARGET {}: an OCI layout; untag works on a static registry tree or s3://BUCKET[/PREFIX]",
            args.target
        ))
    };
    // A layout with a tag is a layout too, not gc's whole-layout refusal.
    if !args.target.starts_with("s3://")
        && LayoutArg::parse(&args.target).is_ok_and(|l| l.is_layout())
    {
        return Err(layout());
    }
    let target = Target::find(&args.target)?;
    if args.s3.given() && !matches!(target, Target::Bucket(_)) {
        return Err(usage(format!(
            "--s3-endpoint and --s3-region are for s3:// targets, not {}",
            args.target
        )));
    }
    let report = match target {
        Target::Layout(_) => return Err(layout()),
        Target::Tree(dir) => {
            super::refuse_in_store("TARGET", &dir, &super::default_store_dirs())?;
            let mut tree =
                tree::Tree::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
            static_gc::untag(
                &mut tree,
                &args.target,
                &args.name.repository,
                &args.name.tag,
            )
            .classify()
            .with_context(|| format!("untagging {} in {}", args.name, args.target))?
        }
        Target::Bucket(url) => {
            let bucket = open_bucket(&url, &args.s3)?;
            static_gc::untag(
                &mut BucketObjects::new(&bucket),
                &args.target,
                &args.name.repository,
                &args.name.tag,
            )
            .classify()
            .with_context(|| format!("untagging {} in {url}", args.name))?
        }
    };
    if args.json {
        super::print_json(&report)?;
    }
    say!(
        "{}: removed {} ({}); {} tag{} left in {}; `nixoci gc {}` removes what no tag needs",
        report.target,
        args.name,
        report.digest,
        report.tags.len(),
        if report.tags.len() == 1 { "" } else { "s" },
        report.repository,
        report.target,
    );
    Ok(())
}
