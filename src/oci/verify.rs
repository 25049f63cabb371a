//! Verifying an OCI image layout: every blob re-hashed, sizes checked,
//! every manifest's layers decompressed (gzip, zstd or plain tar) and
//! checked against the config's `diff_ids`, media types and platform fields
//! checked. Stops at the first problem and names it.
//!
//! Files are opened through [`super::files`] (a symbolic link anywhere in
//! the layout is an error, never followed) and image indexes nest at most
//! [`super::MAX_NESTING`] deep, as for every other reader.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::files::{self, FileError};
use super::layout::TagError;
use super::media_type::{
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, MEDIA_TYPE_TAR_GZIP,
    MEDIA_TYPE_TAR_ZSTD,
};
use super::model::{
    json_text, parse, Descriptor, ImageConfig, Index, Invalid, LayoutFile, Manifest, Mismatch,
};
use super::walk::{self, At, BlobError, BlobSource, Kind, LayoutBlobs, Visitor};
use super::{Digest, DigestWriter};

/// The first problem found in a layout.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}: missing")]
    Missing(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("blob {name}: content hashes to {found}")]
    Digest { name: String, found: Digest },
    #[error("{what}: size is {found} bytes, descriptor says {expected}")]
    Size {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error("layer {layer} of {manifest}: uncompressed content hashes to {found}, config says {expected}")]
    DiffId {
        layer: Digest,
        manifest: Digest,
        expected: String,
        found: Digest,
    },
    #[error(transparent)]
    File(FileError),
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No layout there, or no such tag in it: nothing to verify.
    #[error(transparent)]
    Tag(#[from] TagError),
}

impl VerifyError {
    /// True when the argument names no image (exit 2), rather than the
    /// layout being broken (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, VerifyError::Tag(t) if t.is_usage())
    }
}

/// A file that could not be opened: `what` is missing, or the layout is
/// broken (a symbolic link, not a regular file, unreadable).
fn file_error(e: FileError, what: impl Into<String>) -> VerifyError {
    if e.is_not_found() {
        VerifyError::Missing(what.into())
    } else {
        VerifyError::File(e)
    }
}

impl From<BlobError> for VerifyError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::File {
                kind,
                digest,
                source,
            } => file_error(source, format!("{} {digest}", kind.what())),
            BlobError::Mismatch {
                kind,
                digest,
                mismatch: Mismatch::Size { expected, found },
            } => VerifyError::Size {
                what: format!("{} {digest}", kind.what()),
                expected,
                found,
            },
            BlobError::Mismatch {
                digest,
                mismatch: Mismatch::Digest { found, .. },
                ..
            } => VerifyError::Digest {
                name: digest.hex().to_owned(),
                found,
            },
            BlobError::TooLarge {
                kind,
                digest,
                limit,
            } => invalid(
                format!("{} {digest}", kind.what()),
                format!("larger than {limit} bytes"),
            ),
            BlobError::Io { path, source } => VerifyError::Io { path, source },
        }
    }
}

/// What a successful verification looked at.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub version: u32,
    pub tags: Vec<String>,
    pub blobs: usize,
    pub manifests: usize,
    pub layers: usize,
}

fn invalid(what: impl Into<String>, problem: impl Into<String>) -> VerifyError {
    Invalid::new(what, problem).into()
}

/// Reads and parses the file `what` of the layout `dir`.
fn read_file<T: serde::de::DeserializeOwned>(dir: &Path, what: &str) -> Result<T, VerifyError> {
    let bytes = files::read(dir, what).map_err(|e| file_error(e, what))?;
    Ok(parse(&bytes, what)?)
}

type Blobs = LayoutBlobs<VerifyError>;

/// The visitor that checks every index and manifest a tag reaches.
struct Verifier {
    report: VerifyReport,
    /// Layers to check against diff_ids: (layer, diff_id, manifest).
    layer_checks: Vec<(Descriptor, String, Digest)>,
    seen_manifests: BTreeSet<Digest>,
    /// Every blob the walk reached: indexes, manifests, configs, layers.
    reached: BTreeSet<Digest>,
    /// Indexes checked, with the least depth they were reached at.
    seen_indexes: BTreeMap<Digest, usize>,
}

/// Checks that a document names no other type than its descriptor's.
fn own_media_type(
    what: &str,
    schema_version: Option<u64>,
    media_type: Option<&super::MediaType>,
    expected: &str,
) -> Result<(), VerifyError> {
    if schema_version != Some(2) {
        return Err(invalid(what, "schemaVersion is not 2"));
    }
    match media_type {
        Some(mt) if mt != expected => Err(invalid(
            what,
            format!("mediaType is {}", json_text(Some(mt.as_str()))),
        )),
        _ => Ok(()),
    }
}

impl Visitor<Blobs> for Verifier {
    fn enter(&mut self, d: &Descriptor, at: At<'_>) -> Result<bool, VerifyError> {
        let parent = match at.parent {
            Some(p) => format!("image index {}", p.digest),
            None => "index.json".to_owned(),
        };
        d.complete().map_err(|problem| invalid(&parent, problem))?;
        self.reached.insert(d.digest.clone());
        match d.media_type.as_str() {
            MEDIA_TYPE_INDEX => {
                // Checked already, with at least as many levels left below it.
                if self
                    .seen_indexes
                    .get(&d.digest)
                    .is_some_and(|&seen| seen <= at.depth)
                {
                    return Ok(false);
                }
                self.seen_indexes.insert(d.digest.clone(), at.depth);
                Ok(true)
            }
            MEDIA_TYPE_MANIFEST => {
                if at.parent.is_some() {
                    let platform = d.platform.as_ref().ok_or_else(|| {
                        invalid(&parent, format!("manifest {} has no platform", d.digest))
                    })?;
                    for (field, value) in [
                        ("os", &platform.os),
                        ("architecture", &platform.architecture),
                    ] {
                        if value.is_none() {
                            return Err(invalid(
                                &parent,
                                format!("platform of manifest {} has no {field}", d.digest),
                            ));
                        }
                    }
                }
                Ok(true)
            }
            other => Err(invalid(&parent, format!("unsupported media type {other}"))),
        }
    }

    fn index(&mut self, d: &Descriptor, index: &Index) -> Result<(), VerifyError> {
        let what = format!("image index {}", d.digest);
        own_media_type(
            &what,
            index.schema_version,
            index.media_type.as_ref(),
            MEDIA_TYPE_INDEX,
        )
    }

    fn manifest(
        &mut self,
        d: &Descriptor,
        m: &Manifest,
        _bytes: Vec<u8>,
        _at: At<'_>,
        blobs: &mut Blobs,
    ) -> Result<(), VerifyError> {
        let what = format!("manifest {}", d.digest);
        self.report.manifests += 1;
        own_media_type(
            &what,
            m.schema_version,
            m.media_type.as_ref(),
            MEDIA_TYPE_MANIFEST,
        )?;
        let cd = m.config(&what)?;
        cd.complete().map_err(|problem| invalid(&what, problem))?;
        if cd.media_type != MEDIA_TYPE_CONFIG {
            return Err(invalid(
                &what,
                format!("config media type is {}", cd.media_type),
            ));
        }
        self.reached.insert(cd.digest.clone());
        let config_name = format!("config {}", cd.digest);
        let config: ImageConfig = parse(&blobs.read(Kind::Config, cd)?, &config_name)?;
        if let Some(p) = &d.platform {
            for (field, index_says, config_says) in [
                ("os", &p.os, &config.os),
                ("architecture", &p.architecture, &config.architecture),
                ("variant", &p.variant, &config.variant),
            ] {
                if index_says != config_says {
                    return Err(invalid(
                        &what,
                        format!(
                            "index says {field} {}, config says {}",
                            json_text(index_says.as_deref()),
                            json_text(config_says.as_deref())
                        ),
                    ));
                }
            }
        }
        let rootfs = config.rootfs.unwrap_or_default();
        if rootfs.typ.as_deref() != Some("layers") {
            return Err(invalid(&config_name, "rootfs.type is not layers"));
        }
        let diff_ids = rootfs
            .diff_ids
            .ok_or_else(|| invalid(&config_name, "no rootfs.diff_ids"))?;
        let layers = m.layers(&what)?;
        if layers.len() != diff_ids.len() {
            return Err(invalid(
                &what,
                format!(
                    "{} layers but {} diff_ids in its config",
                    layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        if !self.seen_manifests.insert(d.digest.clone()) {
            return Ok(());
        }
        for (l, diff) in layers.iter().zip(diff_ids) {
            l.complete().map_err(|problem| invalid(&what, problem))?;
            if !l.media_type.is_layer() {
                return Err(invalid(
                    &what,
                    format!(
                        "layer {} has unsupported media type {}",
                        l.digest, l.media_type
                    ),
                ));
            }
            self.reached.insert(l.digest.clone());
            self.layer_checks.push((l.clone(), diff, d.digest.clone()));
        }
        Ok(())
    }
}

/// Re-hashes a file as stored (`media_type` `None`) or decompressed as its
/// layer media type says, returning the digest and size.
fn hash_file(
    file: File,
    path: &Path,
    media_type: Option<&str>,
) -> Result<(Digest, u64), VerifyError> {
    let io_err = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut w = DigestWriter::new(io::sink());
    let mut reader: Box<dyn Read> = match media_type {
        Some(MEDIA_TYPE_TAR_GZIP) => {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        }
        // Frames one after another, as the zstd format allows.
        Some(MEDIA_TYPE_TAR_ZSTD) => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(io_err)?)
        }
        _ => Box::new(file),
    };
    io::copy(&mut reader, &mut w).map_err(io_err)?;
    let (_, digest, len) = w.finish();
    Ok((digest, len))
}

/// Verifies the layout in `dir`: every blob and every tag, or with `tag`
/// that tag's image only (its blobs, manifests, configs and layers).
pub fn verify(dir: &Path, tag: Option<&str>, jobs: usize) -> Result<VerifyReport, VerifyError> {
    if !dir.join("oci-layout").is_file() {
        return Err(TagError::NotALayout(dir.to_owned()).into());
    }
    let layout: LayoutFile = read_file(dir, "oci-layout")?;
    if layout.version.as_deref() != Some("1.0.0") {
        return Err(invalid("oci-layout", "imageLayoutVersion is not 1.0.0"));
    }
    let index: Index = read_file(dir, "index.json")?;
    if index.schema_version != Some(2) {
        return Err(invalid("index.json", "schemaVersion is not 2"));
    }
    let blobs = files::check_dir(dir, "blobs/sha256").map_err(|e| file_error(e, "blobs/sha256"))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| VerifyError::Io {
            path: dir.to_owned(),
            source: io::Error::other(e.to_string()),
        })?;

    let mut entries = index
        .manifests
        .ok_or_else(|| invalid("index.json", "no manifests array"))?;
    if let Some(tag) = tag {
        let tags: Vec<&str> = entries
            .iter()
            .filter_map(|e| e.annotation(super::image::ANNOTATION_REF_NAME))
            .collect();
        let available = if tags.is_empty() {
            "none".to_owned()
        } else {
            tags.join(", ")
        };
        entries.retain(|e| e.annotation(super::image::ANNOTATION_REF_NAME) == Some(tag));
        if entries.is_empty() {
            return Err(TagError::NoSuchTag {
                layout: dir.to_owned(),
                tag: tag.to_owned(),
                available,
            }
            .into());
        }
    }

    // Every blob's name must be its content's digest.
    let mut names: Vec<String> = fs::read_dir(&blobs)
        .map_err(|source| VerifyError::Io {
            path: blobs.clone(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let hash_all = |names: &[String]| -> Result<(), VerifyError> {
        let results: Vec<Result<(), VerifyError>> = pool.install(|| {
            names
                .par_iter()
                .map(|name| {
                    let path = blobs.join(name);
                    let (file, _) = files::open_no_follow(&path).map_err(VerifyError::File)?;
                    let (found, _) = hash_file(file, &path, None)?;
                    if found.hex() != name {
                        return Err(VerifyError::Digest {
                            name: name.clone(),
                            found,
                        });
                    }
                    Ok(())
                })
                .collect()
        });
        results.into_iter().collect()
    };

    let mut v = Verifier {
        report: VerifyReport {
            version: 1,
            ..VerifyReport::default()
        },
        layer_checks: Vec::new(),
        seen_manifests: BTreeSet::new(),
        reached: BTreeSet::new(),
        seen_indexes: BTreeMap::new(),
    };
    let mut source = Blobs::new(dir);
    let mut walk_all = |v: &mut Verifier| -> Result<(), VerifyError> {
        for e in &entries {
            if let Some(tag) = e.annotation(super::image::ANNOTATION_REF_NAME) {
                v.report.tags.push(tag.to_owned());
            }
            walk::walk(&mut source, e, v)?;
        }
        Ok(())
    };
    if tag.is_none() {
        // Every blob, then what the tags reach.
        hash_all(&names)?;
        v.report.blobs = names.len();
        walk_all(&mut v)?;
    } else {
        // What the tag reaches, then those blobs (a missing one is named by
        // the walk or the layer check).
        walk_all(&mut v)?;
        let reached: BTreeSet<&str> = v.reached.iter().map(Digest::hex).collect();
        names.retain(|n| reached.contains(n.as_str()));
        hash_all(&names)?;
        v.report.blobs = names.len();
    }

    // Decompress each distinct layer once, in parallel; report in order.
    let mut checks = std::mem::take(&mut v.layer_checks);
    let mut seen = BTreeSet::new();
    checks.retain(|(l, diff, _)| seen.insert((l.digest.clone(), diff.clone())));
    v.report.layers = checks.len();
    let results: Vec<Result<(), VerifyError>> = pool.install(|| {
        checks
            .par_iter()
            .map(|(l, diff, manifest)| {
                let path = blobs.join(l.digest.hex());
                let (file, meta) = files::open(dir, files::blob_path(&l.digest))
                    .map_err(|e| file_error(e, format!("layer {}", l.digest)))?;
                if let Err(Mismatch::Size { expected, found }) = l.check_size(meta.len()) {
                    return Err(VerifyError::Size {
                        what: format!("layer {}", l.digest),
                        expected,
                        found,
                    });
                }
                let (found, _) = hash_file(file, &path, Some(l.media_type.as_str()))?;
                if found.as_str() != diff {
                    return Err(VerifyError::DiffId {
                        layer: l.digest.clone(),
                        manifest: manifest.clone(),
                        expected: diff.clone(),
                        found,
                    });
                }
                Ok(())
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(v.report)
}
