//! `nixoci export-static`: an image of an OCI image layout to a static
//! registry tree that a plain web server or an S3 bucket serves.

use std::path::PathBuf;

use anyhow::Context;

use super::flags::human_bytes;
use super::usage;
use crate::error::error_chain;
use crate::oci::layout::LayoutArg;
use crate::publish::reference::tag_from_ref_name;
use crate::publish::source::read_image;
use crate::publish::static_export::{self, CADDY_FILE, NGINX_FILE, OBJECTS_FILE};

/// Export an image as a static registry tree, served read-only by a plain
/// web server or an S3 bucket.
///
/// TREE gets v2/NAME/manifests/TAG, v2/NAME/manifests/sha256:… (the index
/// and every platform's manifest), v2/NAME/blobs/sha256:…, and the metadata
/// a static server cannot guess, rewritten for the whole tree by each
/// export: nginx.conf (a snippet to include in a server block), Caddyfile,
/// and objects.json (every object under v2/ with its content type, for an
/// S3 upload). Several repositories and tags share one tree and its blobs;
/// exporting again adds to it.
///
///   nixoci export-static hello.oci --repository hello -o site
///   nixoci export-static hello.oci:example.org/hello:1.0 --repository team/hello --tag 1.0 --tag latest -o site
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The layout, DIR or oci:DIR, with :TAG naming the image in it (the
    /// tag `build --tag` gave) when it holds several.
    #[arg(value_name = "[oci:]DIR[:TAG]")]
    pub source: LayoutArg,

    /// The repository name clients pull (`HOST/NAME:TAG`).
    #[arg(long, value_name = "NAME")]
    pub repository: String,

    /// A tag to serve the image under. Repeatable. Default: the layout's
    /// tag (its part after the last ':' when it is a full reference).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// The tree to create or add to.
    #[arg(long, short = 'o', value_name = "TREE")]
    pub output: PathBuf,

    /// Print the export report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layout = &args.source;
    // Names first: nothing is read or written for a bad one.
    static_export::check_names(&args.repository, &args.tags)
        .map_err(|e| usage(format!("--repository/--tag: {e}")))?;
    super::refuse_in_store("--output", &args.output, &super::default_store_dirs())?;
    static_export::check_tree(&args.output).map_err(|e| usage(error_chain(&e)))?;
    let image = read_image(&layout.dir, layout.tag.as_deref()).map_err(|e| {
        if e.is_usage() {
            usage(error_chain(&e))
        } else {
            anyhow::Error::new(e).context(format!("reading {}", args.source))
        }
    })?;
    let tags = if args.tags.is_empty() {
        let derived = image.ref_name.as_deref().and_then(tag_from_ref_name);
        match derived {
            Some(t) => vec![t],
            None => {
                return Err(usage(format!(
                    "the layout's image has no tag usable in a registry ({}); give --tag",
                    image.ref_name.as_deref().unwrap_or("none")
                )))
            }
        }
    } else {
        args.tags.clone()
    };
    let report = static_export::export(&image, &args.repository, &tags, &args.output)
        .map_err(|e| {
            if e.is_usage() {
                usage(error_chain(&e))
            } else {
                anyhow::Error::new(e)
            }
        })
        .with_context(|| format!("exporting {} to {}", args.source, args.output.display()))?;

    if args.json {
        super::print_json(&report)?;
    }
    let out = args.output.display();
    say!(
        "exported {}:{} to {out} ({} file{} written, {} unchanged; {} new in the blob store, {} copied) {}",
        report.repository,
        report.tags.join(","),
        report.written.len(),
        if report.written.len() == 1 { "" } else { "s" },
        report.unchanged,
        report.stored,
        human_bytes(report.bytes_copied),
        report.digest
    );
    say!(
        "serve it with nginx (include {out}/{NGINX_FILE} in a server block) or Caddy ({out}/{CADDY_FILE}); upload v2/ to a bucket with the content types in {out}/{OBJECTS_FILE}"
    );
    Ok(())
}
