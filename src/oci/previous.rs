//! The layers of a previous build, read back from an OCI image layout for
//! `nixoci build --previous LAYOUT[:TAG]`: for each platform, the store
//! paths of each layer, bottom first, as a [`Previous`].
//!
//! Each layer descriptor of a manifest nixoci writes carries
//! `dev.nixoci.store-paths` ([`ANNOTATION_STORE_PATHS`]): the layer's store
//! path base names separated by spaces. For layouts without it (older
//! builds), the config's `history` comments (`store paths: /nix/store/… …`)
//! are read instead, when there is one per layer. A platform whose layers
//! say neither is left out, and planned from scratch.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::image::{
    ANNOTATION_STORE_PATHS, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};
use super::layout::{tagged_entry, LayoutArg, TagError};
use super::Digest;
use crate::plan::Previous;
use crate::platform::Platform;

/// Why the previous image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PreviousError {
    #[error(transparent)]
    Tag(#[from] TagError),
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

/// What was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousImage {
    pub layout: PathBuf,
    pub tag: Option<String>,
    pub previous: Previous,
    /// Platforms of the image whose layers name no store paths.
    pub unknown: Vec<String>,
}

struct Reader<'a> {
    layout: &'a Path,
    previous: Previous,
    unknown: Vec<String>,
}

impl Reader<'_> {
    fn invalid(&self, what: impl Into<String>, problem: impl Into<String>) -> PreviousError {
        PreviousError::Invalid {
            layout: self.layout.to_owned(),
            what: what.into(),
            problem: problem.into(),
        }
    }

    fn blob(&self, digest: &Value, what: &str) -> Result<Value, PreviousError> {
        let digest: Digest = digest
            .as_str()
            .ok_or_else(|| self.invalid(what, "a descriptor has no digest"))?
            .parse()
            .map_err(|e: super::digest::DigestError| self.invalid(what, e.to_string()))?;
        let path = self.layout.join("blobs/sha256").join(digest.hex());
        let bytes = fs::read(&path).map_err(|source| PreviousError::Io { path, source })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.invalid(format!("{what} {digest}"), format!("not valid JSON ({e})")))
    }

    fn descriptor(&mut self, d: &Value, depth: usize) -> Result<(), PreviousError> {
        let media_type = d["mediaType"].as_str().unwrap_or_default();
        match media_type {
            MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST => {
                if depth > 4 {
                    return Err(self.invalid("image index", "indexes nest more than 4 deep"));
                }
                let index = self.blob(&d["digest"], "image index")?;
                let children = index["manifests"]
                    .as_array()
                    .ok_or_else(|| self.invalid("image index", "no manifests array"))?;
                for child in children {
                    self.descriptor(child, depth + 1)?;
                }
                Ok(())
            }
            MEDIA_TYPE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => self.manifest(d),
            // Attestations, signatures and other artifacts have no layers
            // of ours.
            _ => Ok(()),
        }
    }

    fn manifest(&mut self, d: &Value) -> Result<(), PreviousError> {
        let manifest = self.blob(&d["digest"], "manifest")?;
        let config = self.blob(&manifest["config"]["digest"], "config")?;
        // The platform: the index's word for it, else the config's.
        let p = d.get("platform").unwrap_or(&config);
        let name = match (p["os"].as_str(), p["architecture"].as_str()) {
            (Some(os), Some(arch)) => match p["variant"].as_str() {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            },
            _ => return Ok(()),
        };
        let Ok(platform) = name.parse::<Platform>() else {
            return Ok(());
        };
        let layers = manifest["layers"]
            .as_array()
            .ok_or_else(|| self.invalid("manifest", "no layers array"))?;
        let from_annotations: Option<Vec<Vec<String>>> = layers
            .iter()
            .map(|l| l["annotations"][ANNOTATION_STORE_PATHS].as_str().map(names))
            .collect();
        let from_history = || -> Option<Vec<Vec<String>>> {
            let history: Vec<&Value> = config["history"]
                .as_array()?
                .iter()
                .filter(|h| h["empty_layer"] != true)
                .collect();
            if history.len() != layers.len() {
                return None;
            }
            history
                .iter()
                .map(|h| {
                    h["comment"]
                        .as_str()?
                        .strip_prefix("store paths: ")
                        .map(names)
                })
                .collect()
        };
        match from_annotations.or_else(from_history) {
            Some(found) if !layers.is_empty() => {
                self.previous.images.insert(platform, found);
            }
            _ => self.unknown.push(platform.to_string()),
        }
        Ok(())
    }
}

/// Base names from a list of store paths or base names separated by
/// whitespace.
fn names(list: &str) -> Vec<String> {
    list.split_whitespace()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
        .collect()
}

/// Reads the image `arg` (`LAYOUT[:TAG]`) names.
pub fn read(arg: &str) -> Result<PreviousImage, PreviousError> {
    let LayoutArg { dir, tag } = LayoutArg::parse(arg)?;
    let entry = tagged_entry(&dir, tag.as_deref())?;
    let entry = serde_json::to_value(&entry).map_err(|e| PreviousError::Invalid {
        layout: dir.clone(),
        what: "index.json".into(),
        problem: e.to_string(),
    })?;
    let mut reader = Reader {
        layout: &dir,
        previous: Previous::default(),
        unknown: Vec::new(),
    };
    reader.descriptor(&entry, 0)?;
    let (previous, mut unknown) = (reader.previous, reader.unknown);
    unknown.sort();
    unknown.dedup();
    Ok(PreviousImage {
        layout: dir,
        tag,
        previous,
        unknown,
    })
}

impl PreviousError {
    /// True when the argument names no readable image, rather than the
    /// image being broken.
    pub fn is_usage(&self) -> bool {
        matches!(self, PreviousError::Tag(t) if t.is_usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_blob(dir: &Path, v: &Value) -> Value {
        let bytes = serde_json::to_vec(v).unwrap();
        let d = Digest::of(&bytes);
        fs::write(dir.join("blobs/sha256").join(d.hex()), &bytes).unwrap();
        Value::String(d.as_str().to_owned())
    }

    /// A layout whose amd64 manifest has annotations and whose arm64
    /// manifest has only history comments.
    fn layout() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layer = |ann: Option<&str>| {
            let mut l = serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{}", "0".repeat(64)), "size": 1});
            if let Some(a) = ann {
                l["annotations"] = serde_json::json!({ ANNOTATION_STORE_PATHS: a });
            }
            l
        };
        let amd_cfg = write_blob(
            dir,
            &serde_json::json!({"os": "linux", "architecture": "amd64"}),
        );
        let amd = write_blob(
            dir,
            &serde_json::json!({"schemaVersion": 2, "config": {"digest": amd_cfg},
                "layers": [layer(Some("aaa-libc bbb-zlib")), layer(Some("ccc-app"))]}),
        );
        let arm_cfg = write_blob(
            dir,
            &serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8",
                "history": [{"comment": "store paths: /nix/store/ddd-libc"},
                            {"comment": "store paths: /nix/store/eee-app /nix/store/fff-data"}]}),
        );
        let arm = write_blob(
            dir,
            &serde_json::json!({"schemaVersion": 2, "config": {"digest": arm_cfg},
                "layers": [layer(None), layer(None)]}),
        );
        let index = write_blob(
            dir,
            &serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": MEDIA_TYPE_MANIFEST, "digest": amd, "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": MEDIA_TYPE_MANIFEST, "digest": arm, "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}),
        );
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": MEDIA_TYPE_INDEX, "digest": index, "size": 1,
                 "annotations": {"org.opencontainers.image.ref.name": "app:1"}}]}))
            .unwrap(),
        )
        .unwrap();
        tmp
    }

    #[test]
    fn reads_annotations_and_falls_back_to_history() {
        let tmp = layout();
        let dir = tmp.path().to_str().unwrap();
        for arg in [dir.to_owned(), format!("{dir}:app:1")] {
            let image = read(&arg).unwrap();
            let amd: Platform = "linux/amd64".parse().unwrap();
            let arm: Platform = "linux/arm64".parse().unwrap();
            assert_eq!(
                image.previous.images[&amd],
                vec![vec!["aaa-libc", "bbb-zlib"], vec!["ccc-app"]]
            );
            assert_eq!(
                image.previous.images[&arm],
                vec![vec!["ddd-libc"], vec!["eee-app", "fff-data"]]
            );
            assert!(image.unknown.is_empty());
        }
        assert_eq!(
            LayoutArg::parse(&format!("{dir}:app:1"))
                .unwrap()
                .tag
                .as_deref(),
            Some("app:1")
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let tmp = layout();
        let dir = tmp.path().to_str().unwrap();
        let e = read(&format!("{dir}:nope")).unwrap_err();
        assert!(
            matches!(e, PreviousError::Tag(TagError::NoSuchTag { .. })) && e.is_usage(),
            "{e}"
        );
        assert!(e.to_string().contains("tags: app:1"), "{e}");
        let e = read("/nonexistent/layout").unwrap_err();
        assert!(matches!(e, PreviousError::Tag(TagError::NotALayout(_))));
    }
}
