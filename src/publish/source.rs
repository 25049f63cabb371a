//! The image to publish, read from an OCI image layout: the tagged entry of
//! `index.json` and everything it reaches (image indexes, manifests,
//! configs, layers), in the order a registry must receive them.
//!
//! Manifests and indexes are read, re-hashed and size-checked (they are
//! small); configs and layers are only size-checked here, since the
//! registry or client re-hashes them anyway. Every file is opened through
//! [`crate::oci::files`], so a symbolic link anywhere in the layout is an
//! error, never followed; image indexes nest at most
//! [`crate::oci::MAX_NESTING`] deep.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::oci::files::{self, FileError};
use crate::oci::layout::{tagged_entry, TagError};
use crate::oci::model::{Descriptor, Invalid, Manifest, Mismatch};
use crate::oci::walk::{self, At, BlobError, LayoutBlobs, ReadError, Visitor};
use crate::oci::{Digest, MediaType};

/// Why the image could not be read from the layout.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{layout}: {what} {digest} is missing from blobs/sha256")]
    Missing {
        layout: PathBuf,
        what: &'static str,
        digest: Digest,
    },
    #[error("{layout}: {what} {digest} is {found} bytes, its descriptor says {expected}")]
    Size {
        layout: PathBuf,
        what: &'static str,
        digest: Digest,
        expected: u64,
        found: u64,
    },
    #[error("{layout}: {what} {digest} hashes to {found}")]
    Digest {
        layout: PathBuf,
        what: &'static str,
        digest: Digest,
        found: Digest,
    },
    #[error("{layout}: {what}: {problem}")]
    Invalid {
        layout: PathBuf,
        what: String,
        problem: String,
    },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SourceError {
    /// True when the user named something that is not there (exit 2);
    /// false when the layout itself is broken (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, SourceError::Tag(t) if t.is_usage())
    }
}

/// A blob to copy as it is: a config or a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: MediaType,
    pub path: PathBuf,
}

/// A manifest or index, with its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub digest: Digest,
    pub media_type: MediaType,
    pub bytes: Vec<u8>,
    /// `os/arch[/variant]` from the parent index, for manifests.
    pub platform: Option<String>,
}

impl Document {
    pub fn is_index(&self) -> bool {
        self.media_type.is_index()
    }
}

/// Everything one tag of a layout reaches.
#[derive(Debug, Clone)]
pub struct Image {
    pub layout: PathBuf,
    /// The `ref.name` of the chosen `index.json` entry, if it has one.
    pub ref_name: Option<String>,
    /// Configs and layers, each once, in the order first reached.
    pub blobs: Vec<BlobRef>,
    /// Manifests and indexes, each once, children before parents; the last
    /// one is the tagged root.
    pub documents: Vec<Document>,
}

impl Image {
    /// The tagged document: an image index or a single manifest.
    pub fn root(&self) -> Option<&Document> {
        self.documents.last()
    }
}

/// What stopped a walk: a document of the layout (without the layout's
/// name, added by [`read_image`]) or a config or layer.
#[derive(Debug)]
enum Failure {
    Read(ReadError),
    Source(SourceError),
}

impl From<Invalid> for Failure {
    fn from(e: Invalid) -> Self {
        Failure::Read(e.into())
    }
}

impl From<BlobError> for Failure {
    fn from(e: BlobError) -> Self {
        Failure::Read(e.into())
    }
}

impl From<SourceError> for Failure {
    fn from(e: SourceError) -> Self {
        Failure::Source(e)
    }
}

impl SourceError {
    /// A document's problem, in the layout `layout`.
    fn in_layout(layout: &Path, e: ReadError) -> SourceError {
        let layout = layout.to_owned();
        match e {
            ReadError::Invalid(Invalid { what, problem }) => SourceError::Invalid {
                layout,
                what,
                problem,
            },
            ReadError::Blob(BlobError::File {
                kind,
                digest,
                source,
            }) => {
                if source.is_not_found() {
                    SourceError::Missing {
                        layout,
                        what: kind.what(),
                        digest,
                    }
                } else {
                    SourceError::File(source)
                }
            }
            ReadError::Blob(BlobError::Mismatch {
                kind,
                digest,
                mismatch,
            }) => match mismatch {
                Mismatch::Size { expected, found } => SourceError::Size {
                    layout,
                    what: kind.what(),
                    digest,
                    expected,
                    found,
                },
                Mismatch::Digest { found, .. } => SourceError::Digest {
                    layout,
                    what: kind.what(),
                    digest,
                    found,
                },
            },
            ReadError::Blob(BlobError::TooLarge {
                kind,
                digest,
                limit,
            }) => SourceError::Invalid {
                layout,
                what: format!("{} {digest}", kind.what()),
                problem: format!("larger than {limit} bytes"),
            },
            ReadError::Blob(BlobError::Io { path, source }) => SourceError::Io { path, source },
        }
    }
}

type Blobs = LayoutBlobs<Failure>;

/// The visitor that collects what a tag reaches, children first.
struct Reader<'a> {
    layout: &'a Path,
    blobs: Vec<BlobRef>,
    documents: Vec<Document>,
    seen: BTreeSet<Digest>,
}

impl Reader<'_> {
    fn invalid(&self, what: impl Into<String>, problem: impl Into<String>) -> SourceError {
        SourceError::Invalid {
            layout: self.layout.to_owned(),
            what: what.into(),
            problem: problem.into(),
        }
    }

    /// Notes a config or layer, checking that it is there, a regular file
    /// (never through a symbolic link) with the descriptor's size.
    fn blob(
        &mut self,
        d: &Descriptor,
        in_doc: &str,
        what: &'static str,
    ) -> Result<(), SourceError> {
        let size = d.complete().map_err(|p| self.invalid(in_doc, p))?;
        if !self.seen.insert(d.digest.clone()) {
            return Ok(());
        }
        let rel = files::blob_path(&d.digest);
        let (_, meta) = files::open(self.layout, &rel).map_err(|e| {
            if e.is_not_found() {
                SourceError::Missing {
                    layout: self.layout.to_owned(),
                    what,
                    digest: d.digest.clone(),
                }
            } else {
                SourceError::File(e)
            }
        })?;
        if let Err(Mismatch::Size { expected, found }) = d.check_size(meta.len()) {
            return Err(SourceError::Size {
                layout: self.layout.to_owned(),
                what,
                digest: d.digest.clone(),
                expected,
                found,
            });
        }
        self.blobs.push(BlobRef {
            digest: d.digest.clone(),
            size,
            media_type: d.media_type.clone(),
            path: self.layout.join(rel),
        });
        Ok(())
    }

    fn document(&mut self, d: &Descriptor, bytes: Vec<u8>) {
        self.seen.insert(d.digest.clone());
        self.documents.push(Document {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            bytes,
            platform: d.platform.as_ref().and_then(|p| p.name()),
        });
    }
}

impl Visitor<Blobs> for Reader<'_> {
    fn enter(&mut self, d: &Descriptor, at: At<'_>) -> Result<bool, Failure> {
        let parent = match at.parent {
            Some(p) => format!("image index {}", p.digest),
            None => "index.json".to_owned(),
        };
        d.complete().map_err(|p| self.invalid(parent, p))?;
        if self.seen.contains(&d.digest) {
            return Ok(false);
        }
        if !d.media_type.is_index() && !d.media_type.is_manifest() {
            return Err(self
                .invalid(
                    format!("descriptor {}", d.digest),
                    format!("unsupported media type {}", d.media_type),
                )
                .into());
        }
        Ok(true)
    }

    fn index_done(&mut self, d: &Descriptor, bytes: Vec<u8>) -> Result<(), Failure> {
        self.document(d, bytes);
        Ok(())
    }

    fn manifest(
        &mut self,
        d: &Descriptor,
        m: &Manifest,
        bytes: Vec<u8>,
        _: At<'_>,
        _: &mut Blobs,
    ) -> Result<(), Failure> {
        let name = format!("manifest {}", d.digest);
        let config = m
            .config
            .as_ref()
            .ok_or_else(|| self.invalid(&name, "no config"))?;
        self.blob(config, &name, "config")?;
        let layers = m
            .layers
            .as_deref()
            .ok_or_else(|| self.invalid(&name, "no layers array"))?;
        for l in layers {
            self.blob(l, &name, "layer")?;
        }
        self.document(d, bytes);
        Ok(())
    }
}

/// Reads the image that `tag` names in the layout `dir`; without a tag,
/// the layout's only image.
pub fn read_image(dir: &Path, tag: Option<&str>) -> Result<Image, SourceError> {
    files::check_layout(dir)?;
    let entry = tagged_entry(dir, tag)?;
    let mut reader = Reader {
        layout: dir,
        blobs: Vec::new(),
        documents: Vec::new(),
        seen: BTreeSet::new(),
    };
    walk::walk(&mut Blobs::new(dir), &Descriptor::from(&entry), &mut reader).map_err(
        |e| match e {
            Failure::Read(e) => SourceError::in_layout(dir, e),
            Failure::Source(e) => e,
        },
    )?;
    Ok(Image {
        layout: dir.to_owned(),
        ref_name: entry.ref_name().map(str::to_owned),
        blobs: reader.blobs,
        documents: reader.documents,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::oci::media_type::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

    fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    }

    fn desc(media_type: &str, d: &Digest, size: usize) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": d.as_str(), "size": size})
    }

    /// A layout with one index over two manifests sharing a layer.
    fn layout() -> (tempfile::TempDir, Digest) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), crate::oci::layout::OCI_LAYOUT).unwrap();
        let layer = write_blob(dir, b"layer");
        let mut manifests = Vec::new();
        for arch in ["amd64", "arm64"] {
            let cfg = format!("{{\"architecture\":\"{arch}\"}}");
            let c = write_blob(dir, cfg.as_bytes());
            let m = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "config": desc(crate::oci::image::MEDIA_TYPE_CONFIG, &c, cfg.len()),
                "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer, 5)],
            }))
            .unwrap();
            let md = write_blob(dir, &m);
            manifests.push(serde_json::json!({"mediaType": MEDIA_TYPE_MANIFEST,
                "digest": md.as_str(), "size": m.len(),
                "platform": {"os": "linux", "architecture": arch}}));
        }
        let idx =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
                .unwrap();
        let id = write_blob(dir, &idx);
        let top = serde_json::json!({"mediaType": MEDIA_TYPE_INDEX,
            "digest": id.as_str(), "size": idx.len(),
            "annotations": {"org.opencontainers.image.ref.name": "r/app:1"}});
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]}))
                .unwrap(),
        )
        .unwrap();
        (tmp, id)
    }

    #[test]
    fn reads_children_before_parents() {
        let (tmp, id) = layout();
        let img = read_image(tmp.path(), None).unwrap();
        assert_eq!(img.ref_name.as_deref(), Some("r/app:1"));
        assert_eq!(img.documents.len(), 3);
        assert_eq!(img.root().unwrap().digest, id);
        assert!(img.root().unwrap().is_index());
        assert_eq!(img.documents[0].platform.as_deref(), Some("linux/amd64"));
        // The shared layer once, two configs.
        assert_eq!(img.blobs.len(), 3);
        assert_eq!(img.blobs[1].digest, Digest::of(b"layer"));
        let same = read_image(tmp.path(), Some("r/app:1")).unwrap();
        assert_eq!(same.documents, img.documents);
    }

    #[test]
    fn names_what_is_wrong() {
        let (tmp, _) = layout();
        let e = read_image(tmp.path(), Some("nope")).unwrap_err();
        assert!(e.is_usage());
        assert!(e.to_string().contains("tags: r/app:1"), "{e}");
        fs::remove_file(
            tmp.path()
                .join("blobs/sha256")
                .join(Digest::of(b"layer").hex()),
        )
        .unwrap();
        let e = read_image(tmp.path(), None).unwrap_err();
        assert!(
            matches!(e, SourceError::Missing { what: "layer", .. }),
            "{e}"
        );
        assert!(!e.is_usage());
    }

    #[test]
    fn splits_layout_and_tag() {
        use crate::oci::layout::LayoutArg;
        let (tmp, _) = layout();
        let dir = tmp.path().to_str().unwrap();
        assert_eq!(LayoutArg::parse(dir).unwrap().tag, None);
        let a = LayoutArg::parse(&format!("{dir}:r/app:1")).unwrap();
        assert_eq!(
            (a.dir.as_path(), a.tag.as_deref()),
            (tmp.path(), Some("r/app:1"))
        );
        // Nothing there: the first colon splits, and reading it fails.
        let nope = LayoutArg::parse(&format!("{dir}/nope:1")).unwrap();
        assert!(read_image(&nope.dir, nope.tag.as_deref()).is_err_and(|e| e.is_usage()));
        assert!(LayoutArg::parse(&format!("{dir}:")).is_err());
    }
}
