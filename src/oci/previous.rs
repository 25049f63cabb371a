//! The layers of a previous build, read back from its image documents for
//! `nixoci build --previous`: for each platform, the store paths of each
//! layer, bottom first, as a [`Previous`].
//!
//! [`from_documents`] is the one reader of those documents, whatever they
//! come from: [`read`] gives it the blobs of an OCI image layout
//! (`LAYOUT[:TAG]`), `publish::fetch` the answers of a registry.
//!
//! Each layer descriptor of a manifest nixoci writes carries
//! `dev.nixoci.store-paths` ([`ANNOTATION_STORE_PATHS`]): the layer's store
//! path base names separated by spaces. For images without it (older
//! builds), the config's `history` comments (`store paths: /nix/store/… …`)
//! are read instead, when there is one per layer. A platform whose layers
//! say neither is left out, and planned from scratch.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde_json::Value;

use super::files::{self, FileError};
use super::image::{
    ANNOTATION_STORE_PATHS, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};
use super::layout::{tagged_entry, LayoutArg, TagError};
use super::{check_nesting, Digest};
use crate::plan::Previous;
use crate::platform::Platform;

/// Why the previous image could not be read from a layout.
#[derive(Debug, thiserror::Error)]
pub enum PreviousError {
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{layout}: {what}: {problem}")]
    Invalid {
        layout: PathBuf,
        what: String,
        problem: String,
    },
}

/// What was read from a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousImage {
    pub layout: PathBuf,
    pub tag: Option<String>,
    pub previous: Previous,
    /// Platforms of the image whose layers name no store paths.
    pub unknown: Vec<String>,
}

/// What the documents of an image say about its layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageLayers {
    pub previous: Previous,
    /// Platforms of the image whose layers name no store paths, sorted.
    pub unknown: Vec<String>,
}

/// Which document [`from_documents`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
    Config,
}

impl Kind {
    /// Its name in messages.
    pub fn what(self) -> &'static str {
        match self {
            Kind::Index => "image index",
            Kind::Manifest => "manifest",
            Kind::Config => "config",
        }
    }
}

/// Why [`from_documents`] failed: a document is not what it should be, or
/// getting one failed (`E`, the getter's error).
#[derive(Debug)]
pub enum DocumentsError<E> {
    Invalid { what: String, problem: String },
    Fetch(E),
}

/// Gets a document by its digest; the size is what its descriptor says.
pub type Fetch<'a, E> = dyn FnMut(Kind, &Digest, Option<u64>) -> Result<Vec<u8>, E> + 'a;

struct Reader<'a, 'f, E> {
    fetch: &'a mut Fetch<'f, E>,
    found: ImageLayers,
}

fn invalid<E>(what: impl Into<String>, problem: impl Into<String>) -> DocumentsError<E> {
    DocumentsError::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

impl<E> Reader<'_, '_, E> {
    /// The document a descriptor names, parsed.
    fn document(&mut self, d: &Value, kind: Kind) -> Result<Value, DocumentsError<E>> {
        let what = kind.what();
        let digest: Digest = d["digest"]
            .as_str()
            .ok_or_else(|| invalid(what, "a descriptor has no digest"))?
            .parse()
            .map_err(|e: super::digest::DigestError| invalid(what, e.to_string()))?;
        let bytes =
            (self.fetch)(kind, &digest, d["size"].as_u64()).map_err(DocumentsError::Fetch)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("{what} {digest}"), format!("not valid JSON ({e})")))
    }

    fn descriptor(&mut self, d: &Value, depth: usize) -> Result<(), DocumentsError<E>> {
        let media_type = d["mediaType"].as_str().unwrap_or_default();
        match media_type {
            MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST => {
                check_nesting(depth).map_err(|e| invalid("image index", e.to_string()))?;
                let index = self.document(d, Kind::Index)?;
                let children = index["manifests"]
                    .as_array()
                    .ok_or_else(|| invalid("image index", "no manifests array"))?;
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

    fn manifest(&mut self, d: &Value) -> Result<(), DocumentsError<E>> {
        let manifest = self.document(d, Kind::Manifest)?;
        // The config is read only when the manifest leaves a question.
        let mut config: Option<Value> = None;
        // The platform: the index's word for it, else the config's.
        let p = match d.get("platform") {
            Some(p) => p.clone(),
            None => config
                .insert(self.document(&manifest["config"], Kind::Config)?)
                .clone(),
        };
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
            .ok_or_else(|| invalid("manifest", "no layers array"))?;
        let from_annotations: Option<Vec<Vec<String>>> = layers
            .iter()
            .map(|l| l["annotations"][ANNOTATION_STORE_PATHS].as_str().map(names))
            .collect();
        let found = match from_annotations {
            Some(found) => Some(found),
            None => {
                let config = match config {
                    Some(c) => c,
                    None => self.document(&manifest["config"], Kind::Config)?,
                };
                from_history(&config, layers.len())
            }
        };
        match found {
            Some(found) if !layers.is_empty() => {
                self.found.previous.images.insert(platform, found);
            }
            _ => self.found.unknown.push(platform.to_string()),
        }
        Ok(())
    }
}

/// The store paths of each layer from the config's `history` comments,
/// when there is one per layer.
fn from_history(config: &Value, layers: usize) -> Option<Vec<Vec<String>>> {
    let history: Vec<&Value> = config["history"]
        .as_array()?
        .iter()
        .filter(|h| h["empty_layer"] != true)
        .collect();
    if history.len() != layers {
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
}

/// Base names from a list of store paths or base names separated by
/// whitespace.
fn names(list: &str) -> Vec<String> {
    list.split_whitespace()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
        .collect()
}

/// The layers of the image `root` names (the descriptor a tag points at:
/// an image index or a manifest), per platform. `fetch` gets each
/// document it asks for by digest; checking the bytes against the digest
/// is the getter's part.
pub fn from_documents<E>(
    root: &Value,
    fetch: &mut Fetch<'_, E>,
) -> Result<ImageLayers, DocumentsError<E>> {
    let mut reader = Reader {
        fetch,
        found: ImageLayers::default(),
    };
    reader.descriptor(root, 0)?;
    let mut found = reader.found;
    found.unknown.sort();
    found.unknown.dedup();
    Ok(found)
}

/// Reads the image `arg` (`LAYOUT[:TAG]`) names.
pub fn read(arg: &str) -> Result<PreviousImage, PreviousError> {
    let LayoutArg { dir, tag } = LayoutArg::parse(arg)?;
    files::check_layout(&dir)?;
    let entry = tagged_entry(&dir, tag.as_deref())?;
    let entry = serde_json::to_value(&entry).map_err(|e| PreviousError::Invalid {
        layout: dir.clone(),
        what: "index.json".into(),
        problem: e.to_string(),
    })?;
    let mut fetch = |_: Kind, digest: &Digest, _: Option<u64>| {
        files::read(&dir, files::blob_path(digest)).map_err(PreviousError::File)
    };
    let found = from_documents(&entry, &mut fetch).map_err(|e| match e {
        DocumentsError::Invalid { what, problem } => PreviousError::Invalid {
            layout: dir.clone(),
            what,
            problem,
        },
        DocumentsError::Fetch(e) => e,
    })?;
    Ok(PreviousImage {
        layout: dir,
        tag,
        previous: found.previous,
        unknown: found.unknown,
    })
}

/// True when neither `arg` nor any part of it before a colon (the
/// `LAYOUT` of `LAYOUT:TAG`) is a file or directory.
pub fn nothing_at(arg: &str) -> bool {
    let missing =
        |p: &str| fs::symlink_metadata(p).is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
    missing(arg)
        && arg
            .match_indices(':')
            .all(|(i, _)| arg[..i].is_empty() || missing(&arg[..i]))
}

impl PreviousError {
    /// True when the argument names no readable image, rather than the
    /// image being broken.
    pub fn is_usage(&self) -> bool {
        matches!(self, PreviousError::Tag(t) if t.is_usage())
    }

    /// True when the image is not there at all: no layout at that path,
    /// no such tag in it, or a layout holding no image. What
    /// `--previous-optional` forgives.
    pub fn is_missing(&self) -> bool {
        match self {
            PreviousError::Tag(TagError::NotALayout(p)) => nothing_at(&p.to_string_lossy()),
            PreviousError::Tag(TagError::NoSuchTag { .. } | TagError::Empty { .. }) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
    fn configs_are_read_only_when_needed() {
        let tmp = layout();
        let dir = tmp.path();
        let entry: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut asked = Vec::new();
        let mut fetch = |kind: Kind, d: &Digest, _: Option<u64>| {
            asked.push(kind);
            fs::read(dir.join("blobs/sha256").join(d.hex()))
        };
        let found = from_documents(&entry["manifests"][0], &mut fetch).unwrap();
        assert_eq!(found.previous.images.len(), 2);
        // The amd64 manifest names its store paths: no config for it; the
        // arm64 one needs its history.
        assert_eq!(
            asked,
            [Kind::Index, Kind::Manifest, Kind::Manifest, Kind::Config]
        );
        // A getter's error comes back as it was.
        let mut failing = |_: Kind, _: &Digest, _: Option<u64>| Err("offline");
        assert!(matches!(
            from_documents(&entry["manifests"][0], &mut failing),
            Err(DocumentsError::Fetch("offline"))
        ));
    }

    #[test]
    fn missing_is_only_not_there() {
        let tmp = layout();
        let dir = tmp.path().to_str().unwrap();
        assert!(read(&format!("{dir}:nope")).unwrap_err().is_missing());
        let gone = format!("{dir}/gone.oci");
        assert!(read(&gone).unwrap_err().is_missing());
        assert!(read(&format!("{gone}:1.0")).unwrap_err().is_missing());
        // A directory that is there but is no layout is a mistake.
        let blobs = format!("{dir}/blobs");
        assert!(!read(&blobs).unwrap_err().is_missing());
        assert!(!read(&format!("{blobs}:1.0")).unwrap_err().is_missing());
    }

    /// One limit for every reader: an index that lists itself forever is
    /// read MAX_NESTING levels deep, then refused.
    #[test]
    fn indexes_nest_at_most_the_limit() {
        let d = format!("sha256:{}", "0".repeat(64));
        let child = serde_json::json!({"mediaType": MEDIA_TYPE_INDEX, "digest": d, "size": 1});
        let doc = serde_json::to_vec(&serde_json::json!({"manifests": [child]})).unwrap();
        let mut asked = 0;
        let mut fetch = |_: Kind, _: &Digest, _: Option<u64>| -> Result<Vec<u8>, ()> {
            asked += 1;
            Ok(doc.clone())
        };
        let e = from_documents(&child, &mut fetch).unwrap_err();
        assert!(
            matches!(&e, DocumentsError::Invalid { problem, .. } if problem == "image indexes nest more than 8 deep"),
            "{e:?}"
        );
        assert_eq!(asked, crate::oci::MAX_NESTING);
    }

    #[test]
    fn never_follows_a_symlink_out_of_the_layout() {
        let tmp = layout();
        let dir = tmp.path();
        let outside = tempfile::tempdir().unwrap();
        let blobs = dir.join("blobs/sha256");
        // The image index, which every read reaches.
        let top: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let name = top["manifests"][0]["digest"].as_str().unwrap()[7..].to_owned();
        fs::rename(blobs.join(&name), outside.path().join("blob")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("blob"), blobs.join(&name)).unwrap();
        let e = read(dir.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(e, PreviousError::File(FileError::Symlink(_))) && !e.is_usage(),
            "{e}"
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
