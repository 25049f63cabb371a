//! `nixoci save`: an image of a layout as one tar that `docker load` and
//! `podman load` take. A docker-archive holds one platform's config and
//! layers (as they are in the layout, never recompressed) and a
//! `manifest.json` naming them with the image's tag; an oci-archive is the
//! image's part of the layout (every platform) as a tar. Entries are
//! written in name order with the layer tar rules (owner 0:0, mtime 1), so
//! the same image gives the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::source::{Image, SourceError};
use crate::layer::tar::ArchiveWriter;
use crate::layer::LayerError;
use crate::oci::image::TopIndex;
use crate::oci::model::{self, Invalid, Manifest};
use crate::oci::Digest;
use crate::platform::Platform;

/// What `nixoci save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One platform, for `docker load` (Docker ≥ 1.10) and `podman load`.
    DockerArchive,
    /// The OCI layout of the image, every platform, as a tar.
    OciArchive,
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the image has no {wanted} manifest (it has: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("reading the image")]
    Source(#[from] SourceError),
    #[error("writing the archive")]
    Write(#[from] LayerError),
}

impl SaveError {
    /// True when the image has no such platform (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, SaveError::NoPlatform { .. })
    }
}

/// `blobs/sha256/<hex>`: where a blob goes in either archive.
fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The files of a blob of `image`, by digest.
fn blob_files(image: &Image) -> BTreeMap<Digest, PathBuf> {
    image
        .blobs
        .iter()
        .map(|b| (b.digest.clone(), b.path.clone()))
        .chain(
            image
                .documents
                .iter()
                .map(|d| (d.digest.clone(), image.layout.join(blob_name(&d.digest)))),
        )
        .collect()
}

/// One entry of a docker-archive's `manifest.json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest<'a> {
    config: String,
    repo_tags: Vec<&'a str>,
    layers: Vec<String>,
}

/// Writes the docker-archive of `image`'s `platform` manifest, tagged
/// `repo_tag`, to `out`.
pub fn docker_archive<W: Write>(
    image: &Image,
    platform: &Platform,
    repo_tag: &str,
    out: W,
) -> Result<W, SaveError> {
    let wanted = platform.to_string();
    let manifests: Vec<_> = image
        .documents
        .iter()
        .filter(|d| d.media_type.is_manifest())
        .collect();
    let chosen = manifests
        .iter()
        .find(|d| {
            d.platform
                .as_deref()
                .and_then(|p| p.parse::<Platform>().ok())
                .is_some_and(|p| p == *platform)
        })
        // A lone manifest without a platform is the image.
        .or_else(|| {
            (manifests.len() == 1 && manifests[0].platform.is_none()).then(|| &manifests[0])
        })
        .ok_or_else(|| SaveError::NoPlatform {
            wanted,
            available: {
                let list: Vec<&str> = manifests
                    .iter()
                    .filter_map(|d| d.platform.as_deref())
                    .collect();
                if list.is_empty() {
                    "none".to_owned()
                } else {
                    list.join(", ")
                }
            },
        })?;
    let what = format!("manifest {}", chosen.digest);
    let manifest: Manifest = model::parse(&chosen.bytes, &what)?;
    let config = manifest.config(&what)?.digest.clone();
    let layers: Vec<Digest> = manifest
        .layers(&what)?
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    let entry = [DockerManifest {
        config: blob_name(&config),
        repo_tags: vec![repo_tag],
        layers: layers.iter().map(blob_name).collect(),
    }];
    let manifest_json =
        serde_json::to_vec(&entry).map_err(|e| Invalid::new("manifest.json", e.to_string()))?;
    let files = blob_files(image);
    let mut wanted: Vec<&Digest> = std::iter::once(&config).chain(&layers).collect();
    wanted.sort();
    wanted.dedup();
    let mut tar = ArchiveWriter::new(out);
    tar.directory("blobs/")?;
    tar.directory("blobs/sha256/")?;
    for digest in wanted {
        let path = files
            .get(digest)
            .ok_or_else(|| Invalid::new(&what, format!("blob {digest} is not in the layout")))?;
        tar.file(&blob_name(digest), path)?;
    }
    tar.bytes("manifest.json", &manifest_json)?;
    Ok(tar.finish()?)
}

/// Writes the oci-archive of `image` (its blobs, an `index.json` naming its
/// root as `ref_name`, `oci-layout`) to `out`.
pub fn oci_archive<W: Write>(image: &Image, ref_name: &str, out: W) -> Result<W, SaveError> {
    let root = image
        .root()
        .ok_or_else(|| Invalid::new("index.json", "the tag names nothing"))?;
    let mut index = TopIndex::default();
    index.set_tag_to(
        ref_name,
        root.media_type.as_str(),
        &root.digest,
        root.bytes.len() as u64,
    );
    let index_json = index
        .to_canonical()
        .map_err(|e| Invalid::new("index.json", e.to_string()))?;
    let mut tar = ArchiveWriter::new(out);
    tar.directory("blobs/")?;
    tar.directory("blobs/sha256/")?;
    for (digest, path) in blob_files(image) {
        tar.file(&blob_name(&digest), &path)?;
    }
    tar.bytes("index.json", &index_json)?;
    tar.bytes("oci-layout", crate::oci::layout::OCI_LAYOUT)?;
    Ok(tar.finish()?)
}
