//! `nixoci pull`: one platform of an image (a registry's or a layout's)
//! copied into a new OCI image layout, deterministically: the base of
//! `build --from` fetched ahead of time, and the builder of the Nix
//! library's `pullImage`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::flags::RegistryArgs;
use super::resolve::default_cache_dir;
use super::save::host_platform;
use super::{usage, Classify};
use crate::layer::Cache;
use crate::oci::image::{valid_ref_name, Blob, MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST};
use crate::oci::layout::{check_output, Layout, LayoutArg};
use crate::oci::media_type::MEDIA_TYPE_MANIFEST;
use crate::oci::walk::Kind;
use crate::platform::Platform;
use crate::publish::base::{read_base, BaseRequest};
use crate::publish::previous::{image_source, PreviousSource};

/// Pull one platform of an image into a new OCI image layout.
///
/// IMAGE is a registry image (docker://REGISTRY/NAME[:TAG|@DIGEST], or
/// REGISTRY/NAME… when the first component is a host) or a layout
/// (oci:DIR[:TAG], or DIR[:TAG] when it exists), named as for `build
/// --from`. The layout written holds that platform's manifest, config and
/// layers exactly as the image has them (same digests; an image index
/// picks the platform, linux/arm64 being linux/arm64/v8), tagged --tag:
/// the same bytes on every machine and every run, so the Nix library's
/// pullImage, a fixed-output derivation, runs it. Layers go through the
/// layer cache when it can be written.
///
///   nixoci pull docker://registry.example.org/base:1 --platform linux/arm64 -o base.oci
///   nixoci build .#app --from base.oci -o app.oci
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The image to pull.
    #[arg(value_name = "IMAGE")]
    pub image: String,

    /// The platform to pull: os/arch[/variant] or a Nix system [default:
    /// this machine's].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,

    /// The layout to create (or to add the tag to): DIR, or DIR:TAG to
    /// name the tag as --tag does (both may be given when they agree);
    /// `oci:DIR[:TAG]` means the same.
    #[arg(long, short = 'o', value_name = "[oci:]DIR[:TAG]")]
    pub output: LayoutArg,

    /// The tag of the image in the layout [default: the image as named,
    /// REGISTRY/NAME:TAG or REGISTRY/NAME@DIGEST; a layout's own tag].
    #[arg(long, value_name = "REF")]
    pub tag: Option<String>,

    /// The layer cache [default: $XDG_CACHE_HOME/nixoci, else
    /// ~/.cache/nixoci; none when it cannot be written].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    #[command(flatten, next_help_heading = "Registry")]
    pub registry: RegistryArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let platform = match &args.platform {
        Some(p) => p.clone(),
        None => host_platform()?,
    };
    let output = &args.output.dir;
    let tag_flag = match (&args.tag, &args.output.tag) {
        (Some(flag), Some(out)) if flag != out => {
            return Err(usage(format!(
                "--tag '{flag}' and -o {}: two different tags; give the tag once",
                args.output
            )))
        }
        (Some(t), _) | (None, Some(t)) => Some(t.clone()),
        (None, None) => None,
    };
    // The Nix library's pullImage writes its own $out, a store path.
    if std::env::var_os("out").as_deref() != Some(output.as_os_str()) {
        let stores = super::store_dirs("/nix/store", std::path::Path::new("/"));
        super::refuse_in_store("--output", output, &stores)?;
    }
    check_output(output).classify()?;
    let source = image_source(&args.image)
        .map_err(|e| usage(format!("{}: {}", args.image, crate::error::error_chain(&e))))?;
    let wanted: BTreeSet<Platform> = [platform.clone()].into();
    let base = read_base(BaseRequest {
        flag: "IMAGE",
        arg: &args.image,
        wanted: &wanted,
        creds: args.registry.creds.as_deref(),
        options: args.registry.client_options(),
        note: Arc::new(|msg| say!("nixoci: {msg}")),
    })
    .classify()?;
    let tag = match (&tag_flag, &source) {
        (Some(t), _) => t.clone(),
        (None, PreviousSource::Registry(r, Some(d))) => {
            format!("{}/{}@{d}", r.registry, r.repository)
        }
        (None, PreviousSource::Registry(r, None)) => r.to_string(),
        (None, PreviousSource::Layout(_)) => base.ref_name.clone().unwrap_or("latest".into()),
    };
    if !valid_ref_name(&tag) {
        return Err(usage(format!(
            "--tag '{tag}': not a valid reference name (letters and digits joined by . _ - : @ +, components separated by /)"
        )));
    }
    let image = base
        .platforms
        .get(&platform)
        .ok_or_else(|| usage(format!("{} has no {platform} image", args.image)))?;
    let manifest_bytes = base
        .read_document(Kind::Manifest, &image.manifest)
        .classify()?;
    let config_bytes = base.read_document(Kind::Config, &image.config).classify()?;
    let media_type = if image.manifest.media_type == MEDIA_TYPE_DOCKER_MANIFEST {
        MEDIA_TYPE_DOCKER_MANIFEST
    } else {
        MEDIA_TYPE_MANIFEST
    };
    let manifest = Blob::new(media_type, manifest_bytes);
    let config = Blob::new(MEDIA_TYPE_CONFIG, config_bytes);
    let cache = args
        .cache_dir
        .clone()
        .or_else(default_cache_dir)
        .and_then(|dir| Cache::open(&dir).ok());
    let write = || -> anyhow::Result<()> {
        let layout = Layout::open(output).classify()?;
        base.place_blobs(cache.as_ref(), &layout.blobs_dir())
            .classify()?;
        layout.write_blob(&config)?;
        layout.write_blob(&manifest)?;
        layout.commit(&tag, &manifest)?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", output.display()))?;
    say!(
        "pulled {} {platform} into {}:{tag} ({} layer{}) manifest {}",
        args.image,
        output.display(),
        image.layers.len(),
        if image.layers.len() == 1 { "" } else { "s" },
        manifest.digest
    );
    Ok(())
}
