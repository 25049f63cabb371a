//! The layers of a previous build, read back from its image documents for
//! `nixoci build --previous`: for each platform, the store paths of each
//! layer, bottom first, as [`PreviousLayers`] (which `plan` takes as its
//! `Previous`).
//!
//! [`from_documents`] is the one reader of those documents, a visitor of
//! the one walker ([`super::walk`]) whatever the blobs come from: [`read`]
//! walks an OCI image layout (`LAYOUT[:TAG]`), `publish::fetch` a
//! registry.
//!
//! Each layer descriptor of a manifest nixoci writes carries
//! `dev.nixoci.store-paths` ([`ANNOTATION_STORE_PATHS`]): the layer's store
//! path base names separated by spaces. For images without it (older
//! builds), the config's `history` comments (`store paths: /nix/store/… …`)
//! are read instead, when there is one per layer. A platform whose layers
//! say neither is left out, and planned from scratch.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use super::files::{self, FileError};
use super::image::{ANNOTATION_BASE_LAYER, ANNOTATION_ROOT_LAYER, ANNOTATION_STORE_PATHS};
use super::layout::{tagged_entry, LayoutArg, TagError};
use super::model::{parse, Descriptor, ImageConfig, Manifest};
use super::walk::{self, At, BlobError, BlobSource, Kind, LayoutBlobs, ReadError, Visitor};
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

/// The layers of a previous image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousLayers {
    /// Per platform, the image's layers bottom first, each as the base
    /// names (`HASH-NAME`) of its store paths.
    pub images: BTreeMap<Platform, Vec<Vec<String>>>,
}

/// What was read from a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousImage {
    pub layout: PathBuf,
    pub tag: Option<String>,
    pub previous: PreviousLayers,
    /// Platforms of the image whose layers name no store paths.
    pub unknown: Vec<String>,
}

/// What the documents of an image say about its layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageLayers {
    pub previous: PreviousLayers,
    /// Platforms of the image whose layers name no store paths, sorted.
    pub unknown: Vec<String>,
}

/// The visitor that finds each platform's layers.
#[derive(Default)]
struct Reader {
    found: ImageLayers,
}

/// The config a manifest names, parsed.
fn config<S: BlobSource>(
    source: &mut S,
    manifest: &Manifest,
    what: &str,
) -> Result<ImageConfig, S::Error> {
    let d = manifest.config(what)?;
    let bytes = source.read(Kind::Config, d)?;
    Ok(parse(
        &bytes,
        &format!("{} {}", Kind::Config.what(), d.digest),
    )?)
}

impl<S: BlobSource> Visitor<S> for Reader {
    // Attestations, signatures and other artifacts have no layers of
    // ours: `other` ignores them.

    fn manifest(
        &mut self,
        d: &Descriptor,
        manifest: &Manifest,
        _bytes: Vec<u8>,
        _at: At<'_>,
        source: &mut S,
    ) -> Result<(), S::Error> {
        let what = format!("{} {}", Kind::Manifest.what(), d.digest);
        // The config is read only when the manifest leaves a question.
        let mut read: Option<ImageConfig> = None;
        // The platform: the index's word for it, else the config's.
        let p = match &d.platform {
            Some(p) => p.clone(),
            None => read.insert(config(source, manifest, &what)?).platform(),
        };
        let Some(name) = p.name() else {
            return Ok(());
        };
        let Ok(platform) = name.parse::<Platform>() else {
            return Ok(());
        };
        let layers = manifest.layers(&what)?;
        // The root layer holds no store path: nothing to keep from it (it
        // is made anew, the same bytes when nothing changed).
        // Nor does a layer of a base image (`--from`): it comes first anew.
        let root_layer = |l: &&Descriptor| {
            l.annotation(ANNOTATION_ROOT_LAYER).is_some()
                || l.annotation(ANNOTATION_BASE_LAYER).is_some()
        };
        let from_annotations: Option<Vec<Vec<String>>> = layers
            .iter()
            .filter(|l| !root_layer(l))
            .map(|l| l.annotation(ANNOTATION_STORE_PATHS).map(names))
            .collect();
        let found = match from_annotations {
            Some(found) => Some(found),
            None => {
                let config = match read {
                    Some(c) => c,
                    None => config(source, manifest, &what)?,
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
fn from_history(config: &ImageConfig, layers: usize) -> Option<Vec<Vec<String>>> {
    let history: Vec<_> = config
        .history
        .as_ref()?
        .iter()
        .filter(|h| h.empty_layer != Some(true))
        .collect();
    if history.len() != layers {
        return None;
    }
    history
        .iter()
        .map(|h| {
            h.comment
                .as_deref()?
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
/// an image index or a manifest), per platform, read from `source`.
pub fn from_documents<S: BlobSource>(
    source: &mut S,
    root: &Descriptor,
) -> Result<ImageLayers, S::Error> {
    let mut reader = Reader::default();
    walk::walk(source, root, &mut reader)?;
    let mut found = reader.found;
    found.unknown.sort();
    found.unknown.dedup();
    Ok(found)
}

/// Reads the image `arg` names.
pub fn read(arg: &LayoutArg) -> Result<PreviousImage, PreviousError> {
    let LayoutArg { dir, tag } = arg.clone();
    files::check_layout(&dir)?;
    let entry = tagged_entry(&dir, tag.as_deref())?;
    let mut blobs = LayoutBlobs::<ReadError>::new(&dir);
    let found =
        from_documents(&mut blobs, &Descriptor::from(&entry)).map_err(|e| read_error(&dir, e))?;
    Ok(PreviousImage {
        layout: dir,
        tag,
        previous: found.previous,
        unknown: found.unknown,
    })
}

/// The error of a walk over the layout `dir`, for a reader of an image
/// from a layout (`--previous`, `--from`).
pub fn read_error(dir: &std::path::Path, e: ReadError) -> PreviousError {
    let invalid = |what: String, problem: String| PreviousError::Invalid {
        layout: dir.to_owned(),
        what,
        problem,
    };
    match e {
        ReadError::Invalid(e) => invalid(e.what, e.problem),
        ReadError::Blob(BlobError::File { source, .. }) => PreviousError::File(source),
        ReadError::Blob(BlobError::Io { path, source }) => {
            PreviousError::File(FileError::Io { path, source })
        }
        ReadError::Blob(BlobError::Mismatch {
            kind,
            digest,
            mismatch,
        }) => invalid(format!("{} {digest}", kind.what()), mismatch.to_string()),
        ReadError::Blob(BlobError::TooLarge {
            kind,
            digest,
            limit,
        }) => invalid(
            format!("{} {digest}", kind.what()),
            format!("larger than {limit} bytes"),
        ),
    }
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

    use serde_json::Value;

    use super::super::media_type::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
    use super::super::model::Invalid;
    use super::super::Digest;
    use super::*;

    /// [`read`] of a command-line argument.
    fn read_arg(arg: &str) -> Result<PreviousImage, PreviousError> {
        read(&LayoutArg::parse(arg).unwrap())
    }

    /// Writes a blob; its digest and size.
    fn write_blob(dir: &Path, v: &Value) -> (Value, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let d = Digest::of(&bytes);
        fs::write(dir.join("blobs/sha256").join(d.hex()), &bytes).unwrap();
        (Value::String(d.as_str().to_owned()), bytes.len())
    }

    /// A layout whose amd64 manifest has annotations and whose arm64
    /// manifest has only history comments.
    fn layout() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layer = |ann: Option<&str>| {
            let annotations = match ann {
                Some(a) => serde_json::json!({ ANNOTATION_STORE_PATHS: a }),
                None => serde_json::json!({}),
            };
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
                "annotations": annotations})
        };
        let (amd_cfg, _) = write_blob(
            dir,
            &serde_json::json!({"os": "linux", "architecture": "amd64"}),
        );
        let (amd, amd_size) = write_blob(
            dir,
            &serde_json::json!({"schemaVersion": 2, "config": {"digest": amd_cfg},
                "layers": [layer(Some("aaa-libc bbb-zlib")), layer(Some("ccc-app"))]}),
        );
        let (arm_cfg, _) = write_blob(
            dir,
            &serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8",
                "history": [{"comment": "store paths: /nix/store/ddd-libc"},
                            {"comment": "store paths: /nix/store/eee-app /nix/store/fff-data"}]}),
        );
        let (arm, arm_size) = write_blob(
            dir,
            &serde_json::json!({"schemaVersion": 2, "config": {"digest": arm_cfg},
                "layers": [layer(None), layer(None)]}),
        );
        let (index, index_size) = write_blob(
            dir,
            &serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": MEDIA_TYPE_MANIFEST, "digest": amd, "size": amd_size,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": MEDIA_TYPE_MANIFEST, "digest": arm, "size": arm_size,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}),
        );
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": MEDIA_TYPE_INDEX, "digest": index, "size": index_size,
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
            let image = read_arg(&arg).unwrap();
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
        let entry = tagged_entry(dir, None).unwrap();
        let mut asked = Vec::new();
        let mut source = Fetch(|kind: Kind, d: &Descriptor| {
            asked.push(kind);
            fs::read(dir.join("blobs/sha256").join(d.digest.hex()))
                .map_err(|e| TestError::Other(e.to_string()))
        });
        let found = from_documents(&mut source, &Descriptor::from(&entry)).unwrap();
        assert_eq!(found.previous.images.len(), 2);
        // The amd64 manifest names its store paths: no config for it; the
        // arm64 one needs its history.
        assert_eq!(
            asked,
            [Kind::Index, Kind::Manifest, Kind::Manifest, Kind::Config]
        );
        // A getter's error comes back as it was.
        let mut failing = Fetch(|_: Kind, _: &Descriptor| Err(TestError::Other("offline".into())));
        assert!(matches!(
            from_documents(&mut failing, &Descriptor::from(&entry)),
            Err(TestError::Other(e)) if e == "offline"
        ));
    }

    /// A source that asks a function.
    struct Fetch<F>(F);

    impl<F, E> BlobSource for Fetch<F>
    where
        F: FnMut(Kind, &Descriptor) -> Result<Vec<u8>, E>,
        E: From<Invalid>,
    {
        type Error = E;

        fn read(&mut self, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, E> {
            (self.0)(kind, d)
        }
    }

    #[derive(Debug)]
    enum TestError {
        Invalid(Invalid),
        Other(String),
    }

    impl From<Invalid> for TestError {
        fn from(e: Invalid) -> Self {
            TestError::Invalid(e)
        }
    }

    #[test]
    fn missing_is_only_not_there() {
        let tmp = layout();
        let dir = tmp.path().to_str().unwrap();
        assert!(read_arg(&format!("{dir}:nope")).unwrap_err().is_missing());
        let gone = format!("{dir}/gone.oci");
        assert!(read_arg(&gone).unwrap_err().is_missing());
        assert!(read_arg(&format!("{gone}:1.0")).unwrap_err().is_missing());
        // A directory that is there but is no layout is a mistake.
        let blobs = format!("{dir}/blobs");
        assert!(!read_arg(&blobs).unwrap_err().is_missing());
        assert!(!read_arg(&format!("{blobs}:1.0")).unwrap_err().is_missing());
    }

    /// One limit for every reader: an index that lists itself forever is
    /// read MAX_NESTING levels deep, then refused.
    #[test]
    fn indexes_nest_at_most_the_limit() {
        let d = format!("sha256:{}", "0".repeat(64));
        let child = serde_json::json!({"mediaType": MEDIA_TYPE_INDEX, "digest": d, "size": 1});
        let doc = serde_json::to_vec(&serde_json::json!({"manifests": [child]})).unwrap();
        let mut asked = 0;
        let mut fetch = Fetch(|_: Kind, _: &Descriptor| -> Result<Vec<u8>, TestError> {
            asked += 1;
            Ok(doc.clone())
        });
        let child: Descriptor = serde_json::from_value(child).unwrap();
        let e = from_documents(&mut fetch, &child).unwrap_err();
        assert!(
            matches!(&e, TestError::Invalid(Invalid { problem, .. }) if problem == "image indexes nest more than 8 deep"),
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
        let name = tagged_entry(dir, None).unwrap().digest.hex().to_owned();
        fs::rename(blobs.join(&name), outside.path().join("blob")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("blob"), blobs.join(&name)).unwrap();
        let e = read_arg(dir.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(e, PreviousError::File(FileError::Symlink(_))) && !e.is_usage(),
            "{e}"
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let tmp = layout();
        let dir = tmp.path().to_str().unwrap();
        let e = read_arg(&format!("{dir}:nope")).unwrap_err();
        assert!(
            matches!(e, PreviousError::Tag(TagError::NoSuchTag { .. })) && e.is_usage(),
            "{e}"
        );
        assert!(e.to_string().contains("tags: app:1"), "{e}");
        let e = read_arg("/nonexistent/layout").unwrap_err();
        assert!(matches!(e, PreviousError::Tag(TagError::NotALayout(_))));
    }
}
