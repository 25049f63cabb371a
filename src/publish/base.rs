//! `--from IMAGE` (and `nixoci pull IMAGE`): where a base image is (a
//! layout or a registry image, named as `--previous` names one), reading
//! its documents for the platforms of the build through the one typed
//! reader ([`crate::oci::base`]), and getting its layer blobs into the
//! output layout: through the layer cache when there is one (a registry's
//! blob is downloaded once, then hard-linked from the cache), never
//! decompressed or recompressed, checked against their digests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::auth::AuthError;
use super::client::{Client, ClientError, ClientOptions};
use super::fetch::{self, FetchError};
use super::previous::{image_source, PreviousSource, SourceError};
use super::reference::{names_registry, valid_registry, Reference};
use crate::layer::cache::{check_blob, Cache, CacheStatus, Reuse};
use crate::layer::{BuiltLayer, LayerOutcome};
use crate::oci::base::{self as oci_base, BaseImage, BasePlatform};
use crate::oci::files::{self, FileError};
use crate::oci::model::{Descriptor, Mismatch};
use crate::oci::previous::{read_error, PreviousError as LayoutError};
use crate::oci::temp;
use crate::oci::walk::{BlobSource, Kind, LayoutBlobs, ReadError};
use crate::oci::{Digest, DigestWriter};
use crate::platform::Platform;

/// Why the base image could not be read or its blobs copied.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("{flag} {arg}")]
    Reference {
        flag: &'static str,
        arg: String,
        #[source]
        source: Box<SourceError>,
    },
    #[error("{flag} {arg}")]
    Layout {
        flag: &'static str,
        arg: String,
        #[source]
        source: Box<LayoutError>,
    },
    #[error("{flag} {arg}")]
    Auth {
        flag: &'static str,
        arg: String,
        #[source]
        source: Box<AuthError>,
    },
    #[error("{flag} {arg}: connecting to {registry}")]
    Connect {
        flag: &'static str,
        arg: String,
        registry: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("{flag} {arg}")]
    Fetch {
        flag: &'static str,
        arg: String,
        #[source]
        source: Box<FetchError>,
    },
    #[error("{flag} {arg} has no {missing} image (its platforms: {available})")]
    Platforms {
        flag: &'static str,
        arg: String,
        missing: String,
        available: String,
    },
    #[error("{flag} {arg}: copying layer {digest}")]
    Copy {
        flag: &'static str,
        arg: String,
        digest: Digest,
        #[source]
        source: Box<CopyError>,
    },
}

/// Why a base layer's blob could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the blob {0}")]
    Mismatch(Mismatch),
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BaseError {
    /// True when the argument names no usable image or lacks a platform
    /// (exit 2), false when reading it failed (exit 1).
    pub fn is_usage(&self) -> bool {
        match self {
            BaseError::Reference { .. } | BaseError::Auth { .. } | BaseError::Platforms { .. } => {
                true
            }
            BaseError::Layout { source, .. } => source.is_usage(),
            BaseError::Fetch { source, .. } => source.is_missing(),
            BaseError::Connect { .. } | BaseError::Copy { .. } => false,
        }
    }
}

/// Where the base's blobs are.
#[derive(Clone)]
enum Blobs {
    Layout(PathBuf),
    Registry(Arc<Client>),
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blobs::Layout(dir) => write!(f, "Layout({})", dir.display()),
            Blobs::Registry(c) => write!(f, "Registry({})", c.base()),
        }
    }
}

/// A base image read for a build.
#[derive(Debug, Clone)]
pub struct Base {
    /// `--from`'s argument, for messages.
    pub arg: String,
    /// `REGISTRY/NAME` of the base, when known: the registry's, or the
    /// layout's tag when that is a full reference (as `nixoci pull`
    /// writes it).
    pub name: Option<String>,
    /// The layout's tag of the image, for a base read from a layout.
    pub ref_name: Option<String>,
    /// Each platform of the build's image of the base.
    pub platforms: BTreeMap<Platform, BasePlatform>,
    /// The flag that named it, for messages.
    flag: &'static str,
    blobs: Blobs,
}

/// How to read a base image.
pub struct BaseRequest<'a> {
    /// The flag, for messages: `--from`, `IMAGE`.
    pub flag: &'static str,
    pub arg: &'a str,
    /// The platforms to read: all must be there.
    pub wanted: &'a BTreeSet<Platform>,
    pub creds: Option<&'a str>,
    pub options: ClientOptions,
    /// Where notes go (retries).
    pub note: Arc<dyn Fn(&str) + Send + Sync>,
}

/// `REGISTRY/NAME` from a layout's tag that is a full reference with a
/// registry host (`127.0.0.1:5000/base:1`, `registry.example.org/b@sha256:…`).
fn name_of_ref(ref_name: &str) -> Option<String> {
    let (host, _) = ref_name.split_once('/')?;
    if !(names_registry(host) && valid_registry(host)) {
        return None;
    }
    let (r, _) = Reference::parse_with_digest(ref_name).ok()?;
    Some(format!("{}/{}", r.registry, r.repository))
}

/// Reads the base image `req.arg` names, for every platform of
/// `req.wanted`; a platform the base lacks is an error naming those it has.
pub fn read_base(req: BaseRequest) -> Result<Base, BaseError> {
    let (flag, arg) = (req.flag, req.arg.to_owned());
    let (name, ref_name, image, blobs) = match image_source(req.arg).map_err(|source| {
        BaseError::Reference {
            flag,
            arg: arg.clone(),
            source: Box::new(source),
        }
    })? {
        PreviousSource::Layout(layout) => {
            let read = oci_base::read(&layout, req.wanted).map_err(|source| BaseError::Layout {
                flag,
                arg: arg.clone(),
                source: Box::new(source),
            })?;
            (
                read.ref_name.as_deref().and_then(name_of_ref),
                read.ref_name,
                read.image,
                Blobs::Layout(read.layout),
            )
        }
        PreviousSource::Registry(reference, digest) => {
            let client = connect(&req, &reference)?;
            let image_name = match &digest {
                Some(d) => format!("{}/{}@{d}", reference.registry, reference.repository),
                None => reference.to_string(),
            };
            let wanted_ref = match &digest {
                Some(d) => d.to_string(),
                None => reference.tag.clone().unwrap_or_default(),
            };
            let image = fetch::read_base(
                &client,
                &wanted_ref,
                digest.as_ref(),
                &image_name,
                req.wanted,
            )
            .map_err(|source| BaseError::Fetch {
                flag,
                arg: arg.clone(),
                source: Box::new(source),
            })?;
            (
                Some(format!("{}/{}", reference.registry, reference.repository)),
                None,
                image,
                Blobs::Registry(Arc::new(client)),
            )
        }
    };
    check_platforms(flag, &arg, req.wanted, &image)?;
    Ok(Base {
        arg,
        name,
        ref_name,
        platforms: image.platforms,
        flag,
        blobs,
    })
}

fn check_platforms(
    flag: &'static str,
    arg: &str,
    wanted: &BTreeSet<Platform>,
    image: &BaseImage,
) -> Result<(), BaseError> {
    let missing: Vec<String> = wanted
        .iter()
        .filter(|p| !image.platforms.contains_key(p))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(BaseError::Platforms {
        flag,
        arg: arg.to_owned(),
        missing: missing.join(", "),
        available: if image.available.is_empty() {
            "none".to_owned()
        } else {
            image.available.join(", ")
        },
    })
}

/// A client for pulling from `reference`'s repository.
pub fn connect(req: &BaseRequest, reference: &Reference) -> Result<Client, BaseError> {
    let (flag, arg) = (req.flag, req.arg.to_owned());
    let found = super::auth::lookup(
        &super::auth::AuthEnv::from_process(),
        req.creds,
        &reference.registry,
        &reference.repository,
    )
    .map_err(|source| BaseError::Auth {
        flag,
        arg: arg.clone(),
        source: Box::new(source),
    })?;
    let note = req.note.clone();
    Client::connect(
        reference,
        found.credentials,
        found.helper_hint,
        vec![format!("repository:{}:pull", reference.repository)],
        req.options.clone(),
        Box::new(move |msg| note(msg)),
    )
    .map_err(|source| BaseError::Connect {
        flag,
        arg,
        registry: reference.registry.clone(),
        source: Box::new(source),
    })
}

/// The layer cache's key of a base layer: its digest (a blob is what its
/// digest says, whoever made it).
fn cache_key(d: &Descriptor) -> Digest {
    Digest::of(format!("nixoci base layer v1\n{}\n", d.digest).as_bytes())
}

impl Base {
    /// The distinct layers of every platform's base, in platform order.
    fn layers(&self) -> Vec<(&Descriptor, &Digest)> {
        let mut seen = BTreeSet::new();
        self.platforms
            .values()
            .flat_map(|p| p.layers.iter().zip(&p.diff_ids))
            .filter(|(d, _)| seen.insert(d.digest.clone()))
            .collect()
    }

    /// Puts every base layer's blob into `blobs_dir` (the output's
    /// `blobs/sha256`): kept when it is there and good, else from the
    /// cache, else copied from the base's layout or downloaded from its
    /// registry (then stored in the cache). Never recompressed.
    pub fn place_blobs(
        &self,
        cache: Option<&Cache>,
        blobs_dir: &Path,
    ) -> Result<Vec<LayerOutcome>, BaseError> {
        let mut outcomes = Vec::new();
        for (d, diff_id) in self.layers() {
            let size = d.size.unwrap_or_default();
            let layer = BuiltLayer {
                store_paths: Vec::new(),
                diff_id: diff_id.clone(),
                digest: d.digest.clone(),
                size,
                media_type: d.media_type.as_str().to_owned(),
                // The base's files are the base's: not checked.
                elf: Vec::new(),
            };
            let key = cache_key(d);
            let mut problem = None;
            match cache.map(|c| c.reuse(&key, &[], d.media_type.as_str(), blobs_dir)) {
                Some(Reuse::Found(_, status)) => {
                    outcomes.push(LayerOutcome {
                        layer,
                        cache: status,
                        cache_problem: None,
                    });
                    continue;
                }
                Some(Reuse::Build { problem: p }) => problem = p,
                None => {
                    let path = blobs_dir.join(d.digest.hex());
                    if check_blob(&path, size, &d.digest).unwrap_or(false) {
                        outcomes.push(LayerOutcome {
                            layer,
                            cache: CacheStatus::Layout,
                            cache_problem: None,
                        });
                        continue;
                    }
                }
            }
            self.copy(d, blobs_dir).map_err(|source| BaseError::Copy {
                flag: self.flag,
                arg: self.arg.clone(),
                digest: d.digest.clone(),
                source: Box::new(source),
            })?;
            if let Some(c) = cache {
                if let Err(e) = c.store(&key, &layer, blobs_dir) {
                    problem = Some(format!("cannot store base layer {} ({e})", d.digest));
                }
            }
            outcomes.push(LayerOutcome {
                layer,
                cache: CacheStatus::Miss,
                cache_problem: problem,
            });
        }
        Ok(outcomes)
    }

    /// The bytes of the base's document (`Kind::Manifest`) or config
    /// (`Kind::Config`) `d` names, checked against it.
    pub fn read_document(&self, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, BaseError> {
        let copy = |source: CopyError| BaseError::Copy {
            flag: self.flag,
            arg: self.arg.clone(),
            digest: d.digest.clone(),
            source: Box::new(source),
        };
        match &self.blobs {
            Blobs::Layout(dir) => {
                let mut blobs = LayoutBlobs::<ReadError>::new(dir);
                blobs.read(kind, d).map_err(|e| BaseError::Layout {
                    flag: self.flag,
                    arg: self.arg.clone(),
                    source: Box::new(read_error(dir, e)),
                })
            }
            Blobs::Registry(client) => {
                fetch::read_document(client, kind, d).map_err(|e| copy(CopyError::Fetch(e)))
            }
        }
    }

    /// Copies the blob `d` names into `blobs_dir`, checked on its way.
    fn copy(&self, d: &Descriptor, blobs_dir: &Path) -> Result<(), CopyError> {
        let to = blobs_dir.join(d.digest.hex());
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CopyError::Io { path, source }
        };
        let mut tmp = temp::create(tempfile::Builder::new().prefix(".tmp-base-"), blobs_dir)
            .map_err(io_err(blobs_dir))?;
        let tmp_path = tmp.path().to_owned();
        match &self.blobs {
            Blobs::Layout(dir) => {
                let (mut file, _) = files::open(dir, files::blob_path(&d.digest))?;
                let mut w = DigestWriter::new(tmp.as_file_mut());
                copy_all(&mut file, &mut w).map_err(io_err(&tmp_path))?;
                let (_, found, len) = w.finish();
                d.check_hashed(found, len).map_err(CopyError::Mismatch)?;
            }
            Blobs::Registry(client) => {
                fetch::fetch_blob(client, d, tmp.as_file_mut(), &tmp_path)?;
            }
        }
        tmp.as_file().sync_data().map_err(io_err(&tmp_path))?;
        tmp.persist(&to).map_err(io_err(&to))?;
        Ok(())
    }
}

fn copy_all(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    io::copy(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_full_references_only() {
        assert_eq!(
            name_of_ref("127.0.0.1:5000/base:1").as_deref(),
            Some("127.0.0.1:5000/base")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            name_of_ref(&format!("registry.example.org/team/b@{d}")).as_deref(),
            Some("registry.example.org/team/b")
        );
        for none in ["latest", "base:1", "team/base:1"] {
            assert_eq!(name_of_ref(none), None, "{none}");
        }
    }
}
