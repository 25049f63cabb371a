//! Blobs of a layout that no tag reaches, and removing them (`nixoci gc`).
//!
//! A build killed with SIGKILL cannot clean up: the complete blobs it wrote
//! stay, and `index.json` names none of them. They are found by walking
//! from `index.json` through every index and manifest (config and layers),
//! reading only those small documents; every other name in `blobs/sha256`
//! is unreachable. `gc` removes those older than a grace period, under the
//! layout's lock, so that a concurrent writer never loses a blob it has not
//! yet committed.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::files::{self, FileError};
use super::layout::{self, LayoutError};
use super::model::{parse, Index, Invalid};
use super::temp;
use super::walk::{self, BlobError, LayoutBlobs};
use super::Digest;

/// The most bytes an index or manifest may have.
const MAX_DOCUMENT: u64 = 4 << 20;

/// Why the reachable blobs could not be found.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl GcError {
    /// True when the argument is not a layout (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, GcError::Layout(e) if e.is_usage())
    }
}

impl From<BlobError> for GcError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::File { source, .. } => GcError::File(source),
            BlobError::Mismatch {
                kind,
                digest,
                mismatch,
            } => invalid(format!("{} {digest}", kind.what()), mismatch.to_string()),
            BlobError::TooLarge {
                kind,
                digest,
                limit,
            } => invalid(
                format!("{} {digest}", kind.what()),
                format!("larger than {limit} bytes"),
            ),
            BlobError::Io { path, source } => GcError::Io { path, source },
        }
    }
}

fn invalid(what: impl Into<String>, problem: impl Into<String>) -> GcError {
    Invalid::new(what, problem).into()
}

/// Reads the layout's `index.json` without following a symlink.
fn read_top_index(dir: &Path) -> Result<Index, GcError> {
    let (file, _) = files::open(dir, "index.json")?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| GcError::Io {
            path: dir.join("index.json"),
            source,
        })?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(invalid(
            "index.json",
            format!("larger than {MAX_DOCUMENT} bytes"),
        ));
    }
    Ok(parse(&bytes, "index.json")?)
}

/// Every blob that `index.json` of the layout `dir` reaches: indexes,
/// manifests, configs and layers. A reached index or manifest that is
/// missing (or not what its descriptor says) is an error; a missing config
/// or layer is not (`verify` says so), it is simply not there to keep.
pub fn reachable(dir: &Path) -> Result<BTreeSet<Digest>, GcError> {
    let top = read_top_index(dir)?;
    let mut source = LayoutBlobs::<GcError>::new(dir).with_limit(MAX_DOCUMENT);
    let mut reach = walk::Reach::default();
    for entry in top.manifests.iter().flatten() {
        walk::walk(&mut source, entry, &mut reach)?;
    }
    Ok(reach.seen)
}

/// A blob that no tag reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreachable {
    pub path: PathBuf,
    pub size: u64,
    #[serde(skip)]
    pub modified: Option<SystemTime>,
}

/// The blobs of `dir` that no tag reaches, in name order.
pub fn unreachable(dir: &Path) -> Result<Vec<Unreachable>, GcError> {
    let keep: BTreeSet<String> = reachable(dir)?.iter().map(|d| d.hex().to_owned()).collect();
    let blobs = dir.join("blobs/sha256");
    let mut found = Vec::new();
    for name in temp::blob_names(&blobs) {
        if keep.contains(name.to_string_lossy().as_ref()) {
            continue;
        }
        let path = blobs.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(|source| GcError::Io {
            path: path.clone(),
            source,
        })?;
        found.push(Unreachable {
            path,
            size: meta.len(),
            modified: meta.modified().ok(),
        });
    }
    Ok(found)
}

/// What [`collect`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub version: u32,
    /// Unreachable blobs removed (or, with `dry_run`, to remove).
    pub removed: Vec<Unreachable>,
    pub removed_bytes: u64,
    /// Unreachable blobs younger than the grace period, kept.
    pub kept: Vec<Unreachable>,
    pub kept_bytes: u64,
    /// Temporary files of dead writers removed.
    pub temp_files: usize,
    pub temp_bytes: u64,
}

/// Removes the blobs of the layout `dir` that no tag reaches and that were
/// last modified more than `grace` before `now`, under the layout's lock;
/// with `dry_run`, only says which.
pub fn collect(
    dir: &Path,
    grace: Duration,
    now: SystemTime,
    dry_run: bool,
    waiting: &mut dyn FnMut(),
) -> Result<GcReport, GcError> {
    let _lock = layout::lock_existing(dir, waiting)?;
    let mut report = GcReport {
        version: 1,
        ..GcReport::default()
    };
    if !dry_run {
        for d in [dir.join("blobs/sha256"), dir.to_owned()] {
            let (count, bytes) = temp::remove_temp_files(&d);
            report.temp_files += count;
            report.temp_bytes += bytes;
        }
    }
    for blob in unreachable(dir)? {
        let old = blob
            .modified
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= grace);
        if !old {
            report.kept_bytes += blob.size;
            report.kept.push(blob);
            continue;
        }
        if !dry_run {
            fs::remove_file(&blob.path).map_err(|source| GcError::Io {
                path: blob.path.clone(),
                source,
            })?;
        }
        report.removed_bytes += blob.size;
        report.removed.push(blob);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::image::Blob;
    use super::super::layout::Layout;
    use super::super::media_type::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
    use super::*;

    #[test]
    fn only_blobs_no_tag_reaches_are_collected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out.oci");
        let config = Blob::new(MEDIA_TYPE_INDEX, b"{}".to_vec());
        let manifest = Blob::new(
            MEDIA_TYPE_MANIFEST,
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":2}},"layers":[]}}"#,
                config.digest
            )
            .into_bytes(),
        );
        let l = Layout::open(&dir).unwrap();
        l.write_blob(&config).unwrap();
        l.write_blob(&manifest).unwrap();
        l.commit("t", &manifest).unwrap();
        let stray = dir.join("blobs/sha256").join(Digest::of(b"stray").hex());
        fs::write(&stray, b"stray").unwrap();

        let names: Vec<_> = unreachable(&dir).unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].path, stray);
        assert_eq!(names[0].size, 5);

        // Within the grace period it stays.
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now();
        let r = collect(&dir, Duration::from_secs(3600), now, false, &mut || {}).unwrap();
        assert_eq!((r.removed.len(), r.kept.len()), (0, 1));
        assert!(stray.exists());
        let later = now + Duration::from_secs(7200);
        let r = collect(&dir, Duration::from_secs(3600), later, true, &mut || {}).unwrap();
        assert_eq!(r.removed.len(), 1);
        assert!(stray.exists(), "a dry run removes nothing");
        let r = collect(&dir, Duration::from_secs(3600), later, false, &mut || {}).unwrap();
        assert_eq!((r.removed.len(), r.removed_bytes), (1, 5));
        assert!(!stray.exists());
        assert!(unreachable(&dir).unwrap().is_empty());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out.oci");
        let mut inner = Blob::new(
            MEDIA_TYPE_INDEX,
            br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
        );
        let l = Layout::open(&dir).unwrap();
        l.write_blob(&inner).unwrap();
        for _ in 0..20 {
            inner = Blob::new(
                MEDIA_TYPE_INDEX,
                format!(
                    r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MEDIA_TYPE_INDEX}","digest":"{}","size":{}}}]}}"#,
                    inner.digest,
                    inner.size()
                )
                .into_bytes(),
            );
            l.write_blob(&inner).unwrap();
        }
        l.commit("deep", &inner).unwrap();
        let e = reachable(&dir).unwrap_err();
        assert!(e.to_string().contains("nest more than"), "{e}");
    }
}
