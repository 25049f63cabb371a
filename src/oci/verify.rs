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
use serde_json::Value;

use super::files::{self, FileError};
use super::image::{MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use super::{check_nesting, Digest, DigestWriter};
use crate::layer::{MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};

/// The first problem found in a layout.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}: missing")]
    Missing(String),
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
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
    VerifyError::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

fn read_json(dir: &Path, what: &str) -> Result<Value, VerifyError> {
    let bytes = files::read(dir, what).map_err(|e| file_error(e, what))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(what, format!("not valid JSON ({e})")))
}

/// A descriptor as found in an index or manifest.
struct Desc {
    media_type: String,
    digest: Digest,
    size: u64,
    platform: Option<Value>,
}

fn descriptor(v: &Value, what: &str) -> Result<Desc, VerifyError> {
    let media_type = v["mediaType"]
        .as_str()
        .ok_or_else(|| invalid(what, "descriptor has no mediaType"))?
        .to_owned();
    let digest: Digest = v["digest"]
        .as_str()
        .ok_or_else(|| invalid(what, "descriptor has no digest"))?
        .parse()
        .map_err(|e: super::digest::DigestError| invalid(what, e.to_string()))?;
    let size = v["size"]
        .as_u64()
        .ok_or_else(|| invalid(what, "descriptor has no size"))?;
    Ok(Desc {
        media_type,
        digest,
        size,
        platform: v.get("platform").cloned(),
    })
}

struct Verifier<'a> {
    layout: &'a Path,
    report: VerifyReport,
    /// Layers to check against diff_ids: (layer, media type, diff_id, manifest).
    layer_checks: Vec<(Desc, String, Digest)>,
    seen_manifests: BTreeSet<Digest>,
    /// Indexes checked, with the least depth they were reached at.
    seen_indexes: BTreeMap<Digest, usize>,
}

impl Verifier<'_> {
    fn blob_json(&self, d: &Desc, what: &str) -> Result<Value, VerifyError> {
        let bytes = files::read(self.layout, files::blob_path(&d.digest))
            .map_err(|e| file_error(e, format!("{what} {}", d.digest)))?;
        if bytes.len() as u64 != d.size {
            return Err(VerifyError::Size {
                what: format!("{what} {}", d.digest),
                expected: d.size,
                found: bytes.len() as u64,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            invalid(
                format!("{what} {}", d.digest),
                format!("not valid JSON ({e})"),
            )
        })
    }

    /// Checks the image index `d`, reached through `depth` indexes.
    fn index(&mut self, d: &Desc, depth: usize) -> Result<(), VerifyError> {
        let what = format!("image index {}", d.digest);
        check_nesting(depth).map_err(|e| invalid(&what, e.to_string()))?;
        // Checked already, with at least as many levels left below it.
        if self
            .seen_indexes
            .get(&d.digest)
            .is_some_and(|&at| at <= depth)
        {
            return Ok(());
        }
        self.seen_indexes.insert(d.digest.clone(), depth);
        let v = self.blob_json(d, "image index")?;
        if v["schemaVersion"] != 2 {
            return Err(invalid(&what, "schemaVersion is not 2"));
        }
        if let Some(mt) = v.get("mediaType") {
            if mt != MEDIA_TYPE_INDEX {
                return Err(invalid(&what, format!("mediaType is {mt}")));
            }
        }
        let manifests = v["manifests"]
            .as_array()
            .ok_or_else(|| invalid(&what, "no manifests array"))?;
        for m in manifests {
            let md = descriptor(m, &what)?;
            match md.media_type.as_str() {
                MEDIA_TYPE_MANIFEST => {
                    let platform = md.platform.clone().ok_or_else(|| {
                        invalid(&what, format!("manifest {} has no platform", md.digest))
                    })?;
                    for field in ["os", "architecture"] {
                        if !platform[field].is_string() {
                            return Err(invalid(
                                &what,
                                format!("platform of manifest {} has no {field}", md.digest),
                            ));
                        }
                    }
                    self.manifest(&md, Some(&platform))?;
                }
                MEDIA_TYPE_INDEX => self.index(&md, depth + 1)?,
                other => {
                    return Err(invalid(&what, format!("unsupported media type {other}")));
                }
            }
        }
        Ok(())
    }

    fn manifest(&mut self, d: &Desc, platform: Option<&Value>) -> Result<(), VerifyError> {
        let what = format!("manifest {}", d.digest);
        let v = self.blob_json(d, "manifest")?;
        self.report.manifests += 1;
        if v["schemaVersion"] != 2 {
            return Err(invalid(&what, "schemaVersion is not 2"));
        }
        if let Some(mt) = v.get("mediaType") {
            if mt != MEDIA_TYPE_MANIFEST {
                return Err(invalid(&what, format!("mediaType is {mt}")));
            }
        }
        let cd = descriptor(&v["config"], &what)?;
        if cd.media_type != MEDIA_TYPE_CONFIG {
            return Err(invalid(
                &what,
                format!("config media type is {}", cd.media_type),
            ));
        }
        let config = self.blob_json(&cd, "config")?;
        if let Some(p) = platform {
            for field in ["os", "architecture", "variant"] {
                if p.get(field) != config.get(field) {
                    return Err(invalid(
                        &what,
                        format!(
                            "index says {field} {}, config says {}",
                            p.get(field).unwrap_or(&Value::Null),
                            config.get(field).unwrap_or(&Value::Null)
                        ),
                    ));
                }
            }
        }
        if config["rootfs"]["type"] != "layers" {
            return Err(invalid(
                format!("config {}", cd.digest),
                "rootfs.type is not layers",
            ));
        }
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .ok_or_else(|| invalid(format!("config {}", cd.digest), "no rootfs.diff_ids"))?;
        let layers = v["layers"]
            .as_array()
            .ok_or_else(|| invalid(&what, "no layers array"))?;
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
            let ld = descriptor(l, &what)?;
            if !LAYER_MEDIA_TYPES.contains(&ld.media_type.as_str()) {
                return Err(invalid(
                    &what,
                    format!(
                        "layer {} has unsupported media type {}",
                        ld.digest, ld.media_type
                    ),
                ));
            }
            let diff = diff.as_str().unwrap_or_default().to_owned();
            self.layer_checks.push((ld, diff, d.digest.clone()));
        }
        Ok(())
    }
}

/// The layer media types a layout may use.
const LAYER_MEDIA_TYPES: [&str; 3] = [MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD, MEDIA_TYPE_TAR];

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

/// Verifies the layout in `dir`.
pub fn verify(dir: &Path, jobs: usize) -> Result<VerifyReport, VerifyError> {
    let layout = read_json(dir, "oci-layout")?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        return Err(invalid("oci-layout", "imageLayoutVersion is not 1.0.0"));
    }
    let index = read_json(dir, "index.json")?;
    if index["schemaVersion"] != 2 {
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
    results.into_iter().collect::<Result<(), _>>()?;

    let mut v = Verifier {
        layout: dir,
        report: VerifyReport {
            version: 1,
            blobs: names.len(),
            ..VerifyReport::default()
        },
        layer_checks: Vec::new(),
        seen_manifests: BTreeSet::new(),
        seen_indexes: BTreeMap::new(),
    };
    let entries = index["manifests"]
        .as_array()
        .ok_or_else(|| invalid("index.json", "no manifests array"))?;
    for e in entries {
        let d = descriptor(e, "index.json")?;
        if let Some(tag) = e["annotations"]["org.opencontainers.image.ref.name"].as_str() {
            v.report.tags.push(tag.to_owned());
        }
        match d.media_type.as_str() {
            MEDIA_TYPE_INDEX => v.index(&d, 0)?,
            MEDIA_TYPE_MANIFEST => v.manifest(&d, d.platform.as_ref())?,
            other => {
                return Err(invalid(
                    "index.json",
                    format!("unsupported media type {other}"),
                ))
            }
        }
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
                if meta.len() != l.size {
                    return Err(VerifyError::Size {
                        what: format!("layer {}", l.digest),
                        expected: l.size,
                        found: meta.len(),
                    });
                }
                let (found, _) = hash_file(file, &path, Some(&l.media_type))?;
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
