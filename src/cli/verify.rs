//! `nixoci verify`: check an OCI image layout end to end.

use std::path::PathBuf;

use anyhow::Context;

use crate::oci::verify::verify;

/// Verify an OCI image layout: re-hash every blob, check sizes, media
/// types, platforms, and every layer's uncompressed digest against its
/// image config. Exits 1 naming the first problem found. A symbolic link
/// inside the layout (a blob, index.json, blobs/) is such a problem, never
/// followed; so are image indexes nested more than 8 deep.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The layout directory.
    pub layout: PathBuf,

    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,

    /// Threads for hashing and decompressing [default: all cores].
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let jobs = args.jobs.unwrap_or_else(super::build::default_jobs);
    let report = verify(&args.layout, jobs)
        .with_context(|| format!("verifying {}", args.layout.display()))?;
    if args.json {
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        super::print_stdout(&bytes)?;
    }
    eprintln!(
        "{}: ok ({} blobs, {} manifests, {} layers; tags: {})",
        args.layout.display(),
        report.blobs,
        report.manifests,
        report.layers,
        if report.tags.is_empty() {
            "none".to_owned()
        } else {
            report.tags.join(", ")
        }
    );
    Ok(())
}
