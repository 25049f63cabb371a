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
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::oci::files::{self, FileError};
use crate::oci::image::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::oci::layout::{tagged_entry, TagError};
use crate::oci::{check_nesting, Digest};

use crate::oci::image::{MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST};

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
    pub media_type: String,
    pub path: PathBuf,
}

/// A manifest or index, with its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// `os/arch[/variant]` from the parent index, for manifests.
    pub platform: Option<String>,
}

impl Document {
    pub fn is_index(&self) -> bool {
        is_index_type(&self.media_type)
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

fn is_index_type(m: &str) -> bool {
    m == MEDIA_TYPE_INDEX || m == MEDIA_TYPE_DOCKER_LIST
}

fn is_manifest_type(m: &str) -> bool {
    m == MEDIA_TYPE_MANIFEST || m == MEDIA_TYPE_DOCKER_MANIFEST
}

struct Desc {
    media_type: String,
    digest: Digest,
    size: u64,
    platform: Option<String>,
}

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

    fn descriptor(&self, v: &Value, what: &str) -> Result<Desc, SourceError> {
        let media_type = v["mediaType"]
            .as_str()
            .ok_or_else(|| self.invalid(what, "a descriptor has no mediaType"))?
            .to_owned();
        let digest = v["digest"]
            .as_str()
            .ok_or_else(|| self.invalid(what, "a descriptor has no digest"))?
            .parse::<Digest>()
            .map_err(|e| self.invalid(what, e.to_string()))?;
        let size = v["size"]
            .as_u64()
            .ok_or_else(|| self.invalid(what, "a descriptor has no size"))?;
        let platform = v.get("platform").and_then(|p| {
            let os = p["os"].as_str()?;
            let arch = p["architecture"].as_str()?;
            Some(match p["variant"].as_str() {
                Some(var) => format!("{os}/{arch}/{var}"),
                None => format!("{os}/{arch}"),
            })
        });
        Ok(Desc {
            media_type,
            digest,
            size,
            platform,
        })
    }

    /// Opens a blob, checking that it is there, a regular file (never
    /// through a symbolic link) with the descriptor's size.
    fn open_blob(
        &self,
        d: &Desc,
        what: &'static str,
    ) -> Result<(PathBuf, std::fs::File), SourceError> {
        let rel = files::blob_path(&d.digest);
        let (file, meta) =
            files::open(self.layout, &rel).map_err(|e| self.missing(e, what, &d.digest))?;
        if meta.len() != d.size {
            return Err(SourceError::Size {
                layout: self.layout.to_owned(),
                what,
                digest: d.digest.clone(),
                expected: d.size,
                found: meta.len(),
            });
        }
        Ok((self.layout.join(rel), file))
    }

    fn missing(&self, e: FileError, what: &'static str, d: &Digest) -> SourceError {
        if e.is_not_found() {
            SourceError::Missing {
                layout: self.layout.to_owned(),
                what,
                digest: d.clone(),
            }
        } else {
            SourceError::File(e)
        }
    }

    fn document(&mut self, d: &Desc, depth: usize) -> Result<(), SourceError> {
        if self.seen.contains(&d.digest) {
            return Ok(());
        }
        let what = if is_index_type(&d.media_type) {
            check_nesting(depth)
                .map_err(|e| self.invalid(format!("image index {}", d.digest), e.to_string()))?;
            "image index"
        } else if is_manifest_type(&d.media_type) {
            "manifest"
        } else {
            return Err(self.invalid(
                format!("descriptor {}", d.digest),
                format!("unsupported media type {}", d.media_type),
            ));
        };
        let (path, file) = self.open_blob(d, what)?;
        let mut bytes = Vec::new();
        file.take(d.size)
            .read_to_end(&mut bytes)
            .map_err(|source| SourceError::Io { path, source })?;
        let found = Digest::of(&bytes);
        if found != d.digest {
            return Err(SourceError::Digest {
                layout: self.layout.to_owned(),
                what,
                digest: d.digest.clone(),
                found,
            });
        }
        let name = format!("{what} {}", d.digest);
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.invalid(&name, format!("not valid JSON ({e})")))?;
        if what == "image index" {
            let children = v["manifests"]
                .as_array()
                .ok_or_else(|| self.invalid(&name, "no manifests array"))?;
            for child in children {
                let cd = self.descriptor(child, &name)?;
                self.document(&cd, depth + 1)?;
            }
        } else {
            let config = self.descriptor(&v["config"], &name)?;
            self.blob(&config, "config")?;
            let layers = v["layers"]
                .as_array()
                .ok_or_else(|| self.invalid(&name, "no layers array"))?;
            for l in layers {
                let ld = self.descriptor(l, &name)?;
                self.blob(&ld, "layer")?;
            }
        }
        self.seen.insert(d.digest.clone());
        self.documents.push(Document {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            bytes,
            platform: d.platform.clone(),
        });
        Ok(())
    }

    fn blob(&mut self, d: &Desc, what: &'static str) -> Result<(), SourceError> {
        if !self.seen.insert(d.digest.clone()) {
            return Ok(());
        }
        let (path, _) = self.open_blob(d, what)?;
        self.blobs.push(BlobRef {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
            path,
        });
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
    let value =
        serde_json::to_value(&entry).map_err(|e| reader.invalid("index.json", e.to_string()))?;
    let desc = reader.descriptor(&value, "index.json")?;
    reader.document(&desc, 0)?;
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

    fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    }

    fn desc(media_type: &str, d: &Digest, size: usize) -> Value {
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
            let mut e = desc(MEDIA_TYPE_MANIFEST, &md, m.len());
            e["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
            manifests.push(e);
        }
        let idx =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
                .unwrap();
        let id = write_blob(dir, &idx);
        let mut top = desc(MEDIA_TYPE_INDEX, &id, idx.len());
        top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "r/app:1"});
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
        assert!(LayoutArg::parse(&format!("{dir}/nope:1")).is_err());
        assert!(LayoutArg::parse(&format!("{dir}:")).is_err());
    }
}
