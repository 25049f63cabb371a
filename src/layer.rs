//! Layers: deterministic tar streams of store paths, hashed, compressed and
//! hashed again in one pass, written straight into `blobs/sha256/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::oci::Digest;
use crate::store_path::StorePath;

/// The media type of a gzip-compressed tar layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Where layer contents come from and how they are compressed.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// Files of `/nix/store/x` are read from `store_root/nix/store/x`; `/` for
    /// the real store.
    pub store_root: PathBuf,
    /// gzip level, 0 to 9.
    pub gzip_level: u32,
}

/// A layer written to `blobs/sha256/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltLayer {
    pub store_paths: Vec<StorePath>,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    pub media_type: String,
}

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsupported file type (only regular files, directories and symlinks belong in the store)")]
    FileType { path: PathBuf },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Builds one layer from sorted store paths into `blobs_dir`.
pub fn build_layer(
    paths: &[StorePath],
    opts: &LayerOptions,
    blobs_dir: &Path,
) -> Result<BuiltLayer, LayerError> {
    let _ = (paths, opts, blobs_dir);
    todo!()
}
