//! `nixoci verify`: check an OCI image layout end to end.

use anyhow::Context;
use serde::Serialize;

use super::flags::{default_jobs, human_bytes};
use super::Classify;
use crate::oci::gc::unreachable;
use crate::oci::layout::LayoutArg;
use crate::oci::verify::{verify, VerifyReport};

/// Verify an OCI image layout (every tag, or the one :TAG names)
///
/// Re-hashes every blob (with :TAG, every blob of that tag's image),
/// checks sizes, media types, platforms, and every layer's uncompressed
/// digest against its image config. Exits 1 naming
/// the first problem found. A symbolic link inside the layout (a blob,
/// index.json, blobs/) is such a problem, never followed; so are image
/// indexes nested more than 8 deep. Blobs that no tag reaches (left by a
/// killed build or a replaced tag) are reported with their total size;
/// `nixoci gc` removes them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The layout, DIR or oci:DIR; with :TAG, only the image that tag names
    /// is checked.
    #[arg(value_name = "[oci:]DIR[:TAG]")]
    pub layout: LayoutArg,

    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,

    /// Threads for hashing and decompressing [default: all cores].
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

/// The JSON report: the verification's, and the blobs no tag reaches.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    #[serde(flatten)]
    verify: VerifyReport,
    /// Blobs that no tag reaches (`nixoci gc` removes them); absent with
    /// a TAG, whose verification reads no other tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    unreachable_blobs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unreachable_bytes: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let jobs = args.jobs.unwrap_or_else(default_jobs);
    let dir = args.layout.dir.display();
    let context = || format!("verifying {}", args.layout);
    let report = verify(&args.layout.dir, args.layout.tag.as_deref(), jobs)
        .classify()
        .with_context(context)?;
    // Which blobs no tag reaches needs every tag: not with one TAG.
    let unreachable = match args.layout.tag {
        Some(_) => None,
        None => Some(
            unreachable(&args.layout.dir)
                .classify()
                .with_context(context)?,
        ),
    };
    let report = Report {
        verify: report,
        unreachable_blobs: unreachable.as_ref().map(Vec::len),
        unreachable_bytes: unreachable.as_ref().map(|u| u.iter().map(|u| u.size).sum()),
    };
    if args.json {
        super::print_json(&report)?;
    }
    let r = &report.verify;
    say!(
        "{}: ok ({} blobs, {} manifests, {} layers; tags: {})",
        args.layout,
        r.blobs,
        r.manifests,
        r.layers,
        if r.tags.is_empty() {
            "none".to_owned()
        } else {
            r.tags.join(", ")
        }
    );
    if let Some(count @ 1..) = report.unreachable_blobs {
        say!(
            "{dir}: {} blob{} ({}) that no tag reaches; `nixoci gc {dir}` removes them",
            count,
            if count == 1 { "" } else { "s" },
            human_bytes(report.unreachable_bytes.unwrap_or(0))
        );
    }
    Ok(())
}
