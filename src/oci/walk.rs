//! One walker for images wherever they live (go-containerregistry's
//! `layout` and `remote` behind one set of image interfaces): from the
//! descriptor a tag names, through image indexes (at most
//! [`super::MAX_NESTING`] deep) to manifests, reading each document from a
//! [`BlobSource`] and handing it, typed ([`super::model`]), to a
//! [`Visitor`].
//!
//! A layout directory is a source here ([`LayoutBlobs`]); a registry is
//! one in `publish::fetch`. `verify`, `gc`, `push`, `export-static` and
//! `build --previous` are visitors.

use std::collections::BTreeSet;
use std::io::Read;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use super::files::{self, FileError};
use super::model::{parse, Descriptor, Index, Invalid, Manifest, Mismatch};
use super::{check_nesting, Digest};

/// Which document a walk reads.
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

/// Where the documents of an image come from.
pub trait BlobSource {
    /// The error of a read, and of the whole walk.
    type Error: From<Invalid>;

    /// The bytes of the document `d` names: an image index, a manifest or
    /// (when a visitor asks) a config. What is returned is checked against
    /// `d` already, as far as the source can.
    fn read(&mut self, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, Self::Error>;
}

/// Where a descriptor was found.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// Image indexes above it: 0 for the root the walk starts from.
    pub depth: usize,
    /// The image index that lists it; `None` for the root.
    pub parent: Option<&'a Descriptor>,
}

/// What a reader does with the documents of a walk. Every method but
/// [`Visitor::manifest`] does nothing by default.
pub trait Visitor<S: BlobSource> {
    /// Before what `d` names is read (for an image index, after the
    /// nesting limit is checked): `false` skips it.
    fn enter(&mut self, _d: &Descriptor, _at: At<'_>) -> Result<bool, S::Error> {
        Ok(true)
    }

    /// An image index, before its entries are walked.
    fn index(&mut self, _d: &Descriptor, _index: &Index) -> Result<(), S::Error> {
        Ok(())
    }

    /// An image index, after its entries were walked, with its bytes.
    fn index_done(&mut self, _d: &Descriptor, _bytes: Vec<u8>) -> Result<(), S::Error> {
        Ok(())
    }

    /// A manifest, with its bytes; `source` reads its config if needed.
    fn manifest(
        &mut self,
        d: &Descriptor,
        manifest: &Manifest,
        bytes: Vec<u8>,
        at: At<'_>,
        source: &mut S,
    ) -> Result<(), S::Error>;

    /// A descriptor that is neither an image index nor a manifest.
    fn other(&mut self, _d: &Descriptor, _at: At<'_>) -> Result<(), S::Error> {
        Ok(())
    }
}

/// The visitor that notes every digest a walk reaches: indexes and
/// manifests (each walked once), configs and layers.
#[derive(Default)]
pub struct Reach {
    pub seen: BTreeSet<Digest>,
}

impl<S: BlobSource> Visitor<S> for Reach {
    fn enter(&mut self, d: &Descriptor, _: At<'_>) -> Result<bool, S::Error> {
        Ok(self.seen.insert(d.digest.clone()))
    }

    fn manifest(
        &mut self,
        _: &Descriptor,
        m: &Manifest,
        _: Vec<u8>,
        _: At<'_>,
        _: &mut S,
    ) -> Result<(), S::Error> {
        for d in m.config.iter().chain(m.layers.iter().flatten()) {
            self.seen.insert(d.digest.clone());
        }
        Ok(())
    }
}

/// Walks the image `root` names (an image index or a manifest), reading
/// from `source`.
pub fn walk<S: BlobSource, V: Visitor<S>>(
    source: &mut S,
    root: &Descriptor,
    visitor: &mut V,
) -> Result<(), S::Error> {
    node(
        source,
        root,
        At {
            depth: 0,
            parent: None,
        },
        visitor,
    )
}

fn node<S: BlobSource, V: Visitor<S>>(
    source: &mut S,
    d: &Descriptor,
    at: At<'_>,
    visitor: &mut V,
) -> Result<(), S::Error> {
    if d.media_type.is_index() {
        let what = format!("{} {}", Kind::Index.what(), d.digest);
        check_nesting(at.depth).map_err(|e| Invalid::new(&what, e.to_string()))?;
        if !visitor.enter(d, at)? {
            return Ok(());
        }
        let bytes = source.read(Kind::Index, d)?;
        let index: Index = parse(&bytes, &what)?;
        visitor.index(d, &index)?;
        let entries = index
            .manifests
            .as_deref()
            .ok_or_else(|| Invalid::new(&what, "no manifests array"))?;
        for entry in entries {
            let below = At {
                depth: at.depth + 1,
                parent: Some(d),
            };
            node(source, entry, below, visitor)?;
        }
        visitor.index_done(d, bytes)
    } else if d.media_type.is_manifest() {
        if !visitor.enter(d, at)? {
            return Ok(());
        }
        let what = format!("{} {}", Kind::Manifest.what(), d.digest);
        let bytes = source.read(Kind::Manifest, d)?;
        let manifest: Manifest = parse(&bytes, &what)?;
        visitor.manifest(d, &manifest, bytes, at, source)
    } else if visitor.enter(d, at)? {
        visitor.other(d, at)
    } else {
        Ok(())
    }
}

/// Why a document of a layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not there (see [`FileError::is_not_found`]), a symbolic link, not a
    /// regular file, unreadable.
    #[error("{} {digest}", kind.what())]
    File {
        kind: Kind,
        digest: Digest,
        #[source]
        source: FileError,
    },
    #[error("{} {digest} {mismatch}", kind.what())]
    Mismatch {
        kind: Kind,
        digest: Digest,
        mismatch: Mismatch,
    },
    #[error("{} {digest}: larger than {limit} bytes", kind.what())]
    TooLarge {
        kind: Kind,
        digest: Digest,
        limit: u64,
    },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The error of a walk over a layout, for a reader to put in its own.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// The blobs of an OCI image layout, opened through [`files`] (never
/// through a symbolic link) and checked against their descriptors (size,
/// then digest). `E` is the reader's error.
pub struct LayoutBlobs<E> {
    dir: PathBuf,
    limit: Option<u64>,
    error: PhantomData<fn() -> E>,
}

impl<E> LayoutBlobs<E> {
    pub fn new(dir: &Path) -> Self {
        LayoutBlobs {
            dir: dir.to_owned(),
            limit: None,
            error: PhantomData,
        }
    }

    /// Refuses documents larger than `limit` bytes.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl<E: From<Invalid> + From<BlobError>> BlobSource for LayoutBlobs<E> {
    type Error = E;

    fn read(&mut self, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, E> {
        let rel = files::blob_path(&d.digest);
        let mismatch = |mismatch| BlobError::Mismatch {
            kind,
            digest: d.digest.clone(),
            mismatch,
        };
        let (file, meta) = files::open(&self.dir, &rel).map_err(|source| BlobError::File {
            kind,
            digest: d.digest.clone(),
            source,
        })?;
        d.check_size(meta.len()).map_err(mismatch)?;
        let limit = self.limit.unwrap_or(u64::MAX);
        let too_large = || BlobError::TooLarge {
            kind,
            digest: d.digest.clone(),
            limit,
        };
        if meta.len() > limit {
            return Err(too_large().into());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| BlobError::Io {
                path: self.dir.join(&rel),
                source,
            })?;
        if bytes.len() as u64 > limit {
            return Err(too_large().into());
        }
        d.check_bytes(&bytes).map_err(mismatch)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::media_type::{
        MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
        MEDIA_TYPE_TAR_GZIP,
    };
    use super::*;

    #[derive(Debug)]
    enum TestError {
        Invalid(Invalid),
        Blob(BlobError),
    }

    impl From<Invalid> for TestError {
        fn from(e: Invalid) -> Self {
            TestError::Invalid(e)
        }
    }

    impl From<BlobError> for TestError {
        fn from(e: BlobError) -> Self {
            TestError::Blob(e)
        }
    }

    fn put(dir: &Path, media_type: &'static str, bytes: &[u8]) -> Descriptor {
        let d = Descriptor::new(media_type, Digest::of(bytes), bytes.len() as u64);
        fs::write(dir.join(files::blob_path(&d.digest)), bytes).unwrap();
        d
    }

    fn json(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    /// What a walk saw, in order.
    #[derive(Default)]
    struct Seen(Vec<String>);

    impl<S: BlobSource> Visitor<S> for Seen {
        fn enter(&mut self, d: &Descriptor, at: At<'_>) -> Result<bool, S::Error> {
            self.0
                .push(format!("enter {} at {}", d.media_type, at.depth));
            Ok(true)
        }

        fn index_done(&mut self, d: &Descriptor, bytes: Vec<u8>) -> Result<(), S::Error> {
            assert_eq!(Digest::of(&bytes), d.digest);
            self.0.push("index done".into());
            Ok(())
        }

        fn manifest(
            &mut self,
            d: &Descriptor,
            m: &Manifest,
            _bytes: Vec<u8>,
            at: At<'_>,
            source: &mut S,
        ) -> Result<(), S::Error> {
            let config = source.read(Kind::Config, m.config(&d.digest.to_string())?)?;
            let platform = d.platform.as_ref().and_then(|p| p.name());
            self.0.push(format!(
                "manifest {} in {:?} with {} layers and a {}-byte config",
                platform.unwrap_or_default(),
                at.parent.map(|p| p.digest.hex()[..4].to_owned()),
                m.layers("m")?.len(),
                config.len()
            ));
            Ok(())
        }

        fn other(&mut self, d: &Descriptor, _: At<'_>) -> Result<(), S::Error> {
            self.0.push(format!("other {}", d.media_type));
            Ok(())
        }
    }

    /// An index of an index (Docker's) of one manifest, and an attestation.
    fn layout(dir: &Path) -> (Descriptor, Digest) {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let config = put(dir, MEDIA_TYPE_CONFIG, br#"{"os":"linux"}"#);
        let layer = put(dir, MEDIA_TYPE_TAR_GZIP, b"layer");
        let manifest = put(
            dir,
            MEDIA_TYPE_MANIFEST,
            &json(serde_json::json!({"schemaVersion": 2, "config": config, "layers": [layer]})),
        );
        let mut entry = manifest.clone();
        entry.platform = Some(crate::oci::model::Platform {
            os: Some("linux".into()),
            architecture: Some("amd64".into()),
            variant: None,
        });
        let inner = put(
            dir,
            MEDIA_TYPE_DOCKER_LIST,
            &json(serde_json::json!({"schemaVersion": 2, "manifests": [entry,
                {"mediaType": "application/vnd.in-toto+json", "digest": Digest::of(b"att"), "size": 3}]})),
        );
        let root = put(
            dir,
            MEDIA_TYPE_INDEX,
            &json(serde_json::json!({"schemaVersion": 2, "manifests": [inner]})),
        );
        (root, inner.digest)
    }

    #[test]
    fn walks_nested_indexes_to_manifests() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, inner) = layout(tmp.path());
        let mut source = LayoutBlobs::<TestError>::new(tmp.path());
        let mut seen = Seen::default();
        walk(&mut source, &root, &mut seen).unwrap();
        let inner_hex = &inner.hex()[..4];
        assert_eq!(
            seen.0,
            [
                format!("enter {MEDIA_TYPE_INDEX} at 0"),
                format!("enter {MEDIA_TYPE_DOCKER_LIST} at 1"),
                format!("enter {MEDIA_TYPE_MANIFEST} at 2"),
                format!(
                    "manifest linux/amd64 in Some({inner_hex:?}) with 1 layers and a 14-byte config"
                ),
                "enter application/vnd.in-toto+json at 2".to_owned(),
                "other application/vnd.in-toto+json".to_owned(),
                "index done".to_owned(),
                "index done".to_owned(),
            ]
        );
    }

    #[test]
    fn a_layout_blob_is_checked_against_its_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = layout(tmp.path());
        let mut source = LayoutBlobs::<TestError>::new(tmp.path());
        let wrong_size = Descriptor {
            size: Some(1),
            ..root.clone()
        };
        match walk(&mut source, &wrong_size, &mut Seen::default()) {
            Err(TestError::Blob(BlobError::Mismatch {
                kind: Kind::Index,
                mismatch: Mismatch::Size { expected: 1, .. },
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
        // Another file under the descriptor's name.
        let path = tmp.path().join(files::blob_path(&root.digest));
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] = b' ';
        fs::write(&path, &bytes).unwrap();
        let e = walk(&mut source, &root, &mut Seen::default()).unwrap_err();
        assert!(
            matches!(
                &e,
                TestError::Blob(BlobError::Mismatch {
                    mismatch: Mismatch::Digest { .. },
                    ..
                })
            ),
            "{e:?}"
        );
        let mut limited = LayoutBlobs::<TestError>::new(tmp.path()).with_limit(4);
        assert!(matches!(
            walk(&mut limited, &root, &mut Seen::default()),
            Err(TestError::Blob(BlobError::TooLarge { limit: 4, .. }))
        ));
        fs::remove_file(&path).unwrap();
        match walk(&mut source, &root, &mut Seen::default()) {
            Err(TestError::Blob(BlobError::File { source, .. })) => assert!(source.is_not_found()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn indexes_nest_at_most_the_limit() {
        for (levels, ok) in [(crate::oci::MAX_NESTING, true), (9, false), (40, false)] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
            let mut d = put(
                dir,
                MEDIA_TYPE_INDEX,
                br#"{"schemaVersion":2,"manifests":[]}"#,
            );
            for _ in 1..levels {
                d = put(
                    dir,
                    MEDIA_TYPE_INDEX,
                    &json(serde_json::json!({"schemaVersion": 2, "manifests": [d]})),
                );
            }
            let mut seen = Seen::default();
            let r = walk(&mut LayoutBlobs::<TestError>::new(dir), &d, &mut seen);
            if ok {
                assert!(r.is_ok(), "{levels}: {r:?}");
                assert_eq!(seen.0.len(), 2 * levels);
            } else {
                match r {
                    Err(TestError::Invalid(e)) => {
                        assert_eq!(e.problem, "image indexes nest more than 8 deep", "{levels}")
                    }
                    other => panic!("{levels}: {other:?}"),
                }
                // Read no further than the limit.
                assert_eq!(seen.0.len(), crate::oci::MAX_NESTING, "{levels}");
            }
        }
    }
}
