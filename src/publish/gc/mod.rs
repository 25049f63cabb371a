//! Garbage collection of a static registry (`nixoci untag`, `nixoci gc`):
//! a tree export-static wrote, or the same objects in an S3 bucket.
//!
//! A static registry only grows: every export or push adds manifests and
//! blobs, and nothing knows which are still needed. [`untag`] removes a
//! tag and its name in the repository's `tags/list`; [`collect`] marks
//! every object the remaining tags reach and deletes the rest.
//!
//! Marking is per repository, as clients pull: a tag of `NAME` reaches
//! `v2/NAME/manifests/sha256:…` for its image index and every manifest,
//! and `v2/NAME/blobs/sha256:…` for their configs and layers. The documents
//! are read with the typed walker of [`crate::oci::walk`] (one nesting
//! limit, each document checked against its descriptor's size and digest),
//! and every tag is marked before anything is deleted: a tag whose
//! documents are missing or damaged stops the collection, naming it, as
//! deleting on partial knowledge could take what it needs.
//!
//! Deletion goes in the order a pull reads backwards: tags are gone
//! already (untag), then manifests by digest, then blobs. An object last
//! modified less than the grace period before the store's own clock says
//! now is kept, so that an export or push running at the same time never
//! loses what it has uploaded but not yet tagged. Tags, `tags/list`,
//! `v2/index.html` and any key that is not a manifest or a blob are never
//! collected.
//!
//! The collector is written once over [`Objects`]: the local tree
//! ([`tree::Tree`]) and an S3 bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::oci::media_type::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::oci::model::{parse, Descriptor, Index, Invalid, Manifest, Mismatch};
use crate::oci::walk::{self, At, BlobSource, Kind, Visitor};
use crate::oci::Digest;

use super::tree::{tag_list, tags_list_key, JSON_TYPE};

pub mod bucket;
pub mod tree;

/// The most bytes a tag, an image index or a manifest may have.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// One object of a static registry, as its store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The key under the registry's root: `v2/NAME/blobs/sha256:…`.
    pub key: String,
    pub size: u64,
    /// When it was last written, by the store's clock.
    pub modified: SystemTime,
}

/// Every object of a registry, and the time it was listed by the clock
/// that stamps its objects.
#[derive(Debug, Clone)]
pub struct Listing {
    pub objects: Vec<Stored>,
    pub now: SystemTime,
}

/// Where a static registry's objects are kept: a tree on disk or a bucket.
/// Keys are relative to the registry's root (`v2/…`).
pub trait Objects {
    /// The error of the store (a file system, an S3 server).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every object whose key starts with `v2/`.
    fn list(&mut self) -> Result<Listing, Self::Error>;

    /// The whole content of `key`.
    fn read(&mut self, key: &str) -> Result<Vec<u8>, Self::Error>;

    /// Removes `key`.
    fn delete(&mut self, key: &str) -> Result<(), Self::Error>;

    /// Writes `bytes` to `key`, replacing what is there.
    fn put(&mut self, key: &str, bytes: &[u8], content_type: &str) -> Result<(), Self::Error>;

    /// Called once the objects are as [`untag`] or [`collect`] leaves them
    /// (`removed`: the keys deleted, or with a dry run the keys that would
    /// be; `remaining`: the others), for what the store keeps beside them
    /// (a tree's blob store and metadata). With `collect`, the blob-store
    /// copies no remaining key links and older than the grace period go:
    /// they are returned. `None`: the store has no blob store (a bucket).
    fn settle(
        &mut self,
        remaining: &[Stored],
        removed: &[String],
        collect: Option<Grace>,
    ) -> Result<Option<Vec<Stored>>, Self::Error>;
}

/// What a collection keeps by age: objects modified within `grace` of
/// `now`; with `dry_run`, nothing is removed.
#[derive(Debug, Clone, Copy)]
pub struct Grace {
    pub grace: Duration,
    pub now: SystemTime,
    pub dry_run: bool,
}

impl Grace {
    /// True when `modified` is older than the grace period.
    pub fn expired(&self, modified: SystemTime) -> bool {
        self.now
            .duration_since(modified)
            .is_ok_and(|age| age >= self.grace)
    }
}

/// What a key of a static registry is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key<'a> {
    /// `v2/NAME/manifests/TAG`
    Tag { repository: &'a str, tag: &'a str },
    /// `v2/NAME/manifests/sha256:…`
    Manifest { repository: &'a str, digest: Digest },
    /// `v2/NAME/blobs/sha256:…`
    Blob { repository: &'a str, digest: Digest },
    /// `v2/NAME/tags/list`
    TagList { repository: &'a str },
    /// Anything else (`v2/index.html`): never collected.
    Other,
}

impl<'a> Key<'a> {
    pub fn parse(key: &'a str) -> Key<'a> {
        let Some(rest) = key.strip_prefix("v2/") else {
            return Key::Other;
        };
        if let Some(repository) = rest.strip_suffix("/tags/list") {
            return Key::TagList { repository };
        }
        if let Some((repository, name)) = rest.rsplit_once("/manifests/") {
            return match name.parse::<Digest>() {
                Ok(digest) if name.starts_with("sha256:") => Key::Manifest { repository, digest },
                _ if super::reference::valid_tag(name) => Key::Tag {
                    repository,
                    tag: name,
                },
                _ => Key::Other,
            };
        }
        if let Some((repository, name)) = rest.rsplit_once("/blobs/") {
            if let Ok(digest) = name.parse::<Digest>() {
                return Key::Blob { repository, digest };
            }
        }
        Key::Other
    }
}

pub use super::tree::{blob_key, manifest_key};

/// Why a tag's image cannot be marked.
#[derive(Debug, thiserror::Error)]
pub enum Damage<E: std::error::Error + 'static> {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{} {digest} is missing", kind.what())]
    Missing { kind: Kind, digest: Digest },
    #[error("{} {digest} {mismatch}", kind.what())]
    Mismatch {
        kind: Kind,
        digest: Digest,
        mismatch: Mismatch,
    },
    #[error("{what}: larger than {MAX_DOCUMENT} bytes")]
    TooLarge { what: String },
    #[error("reading {key}")]
    Read {
        key: String,
        #[source]
        source: E,
    },
}

/// Why `untag` or `gc` failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError<E: std::error::Error + 'static> {
    /// A tag whose image cannot be read: nothing was deleted.
    #[error("tag {repository}:{tag} cannot be read, nothing was deleted")]
    Tag {
        repository: String,
        tag: String,
        #[source]
        source: Damage<E>,
    },
    #[error("no tag {repository}:{tag}")]
    NoTag { repository: String, tag: String },
    #[error(transparent)]
    Store(E),
}

impl<E: std::error::Error + 'static> GcError<E> {
    /// True when the user named what is not there (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, GcError::NoTag { .. })
    }
}

/// An object removed, or kept for its age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gone {
    pub key: String,
    pub size: u64,
}

impl From<&Stored> for Gone {
    fn from(s: &Stored) -> Gone {
        Gone {
            key: s.key.clone(),
            size: s.size,
        }
    }
}

/// What [`collect`] did (the `--json` report, version 1).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub version: u32,
    /// The tree or `s3://BUCKET[/PREFIX]`.
    pub target: String,
    pub dry_run: bool,
    /// The tags marked from.
    pub tags: usize,
    /// Manifests and blobs a tag reaches, kept.
    pub reachable: usize,
    /// Unreachable manifests and blobs removed (with `dry_run`: to remove),
    /// manifests first.
    pub removed: Vec<Gone>,
    pub removed_manifests: usize,
    pub removed_blobs: usize,
    /// The sum of their sizes.
    pub removed_bytes: u64,
    /// Unreachable objects younger than the grace period, kept.
    pub kept: Vec<Gone>,
    pub kept_bytes: u64,
    /// A tree's blob-store copies that no key links any more, removed:
    /// what frees the disk, as the files under `v2/` are hard links.
    pub store_removed: Vec<Gone>,
    /// The bytes the store gets back: `removedBytes` on a bucket, the
    /// blob-store copies on a tree.
    pub bytes_freed: u64,
}

/// What [`untag`] did (the `--json` report, version 1).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UntagReport {
    pub version: u32,
    pub target: String,
    pub repository: String,
    pub tag: String,
    /// The digest the tag named.
    pub digest: Digest,
    /// The repository's tags left.
    pub tags: Vec<String>,
}

/// Removes the tag `repository:tag` and its name in the repository's
/// `tags/list` (the list goes with the last tag). Its manifests and blobs
/// stay for [`collect`].
pub fn untag<O: Objects>(
    objects: &mut O,
    target: &str,
    repository: &str,
    tag: &str,
) -> Result<UntagReport, GcError<O::Error>> {
    let listing = objects.list().map_err(GcError::Store)?;
    let mut tags = BTreeSet::new();
    let mut list_exists = false;
    for o in &listing.objects {
        match Key::parse(&o.key) {
            Key::Tag { repository: r, tag } if r == repository => {
                tags.insert(tag.to_owned());
            }
            Key::TagList { repository: r } if r == repository => list_exists = true,
            _ => {}
        }
    }
    if !tags.remove(tag) {
        return Err(GcError::NoTag {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        });
    }
    let key = manifest_key(repository, tag);
    let bytes = objects.read(&key).map_err(GcError::Store)?;
    let digest = Digest::of(&bytes);
    objects.delete(&key).map_err(GcError::Store)?;
    let mut removed = vec![key.clone()];
    let list_key = tags_list_key(repository);
    if tags.is_empty() {
        if list_exists {
            objects.delete(&list_key).map_err(GcError::Store)?;
            removed.push(list_key.clone());
        }
    } else {
        objects
            .put(&list_key, &tag_list(repository, &tags), JSON_TYPE)
            .map_err(GcError::Store)?;
    }
    let remaining: Vec<Stored> = listing
        .objects
        .into_iter()
        .filter(|o| !removed.contains(&o.key))
        .collect();
    objects
        .settle(&remaining, &removed, None)
        .map_err(GcError::Store)?;
    Ok(UntagReport {
        version: 1,
        target: target.to_owned(),
        repository: repository.to_owned(),
        tag: tag.to_owned(),
        digest,
        tags: tags.into_iter().collect(),
    })
}

/// The documents of one repository, read from the store and checked
/// against their descriptors: a document that is not listed is missing.
struct RepositoryDocs<'a, O: Objects> {
    objects: &'a mut O,
    repository: &'a str,
    sizes: &'a BTreeMap<String, u64>,
}

impl<O: Objects> RepositoryDocs<'_, O> {
    /// The bytes of `key` (listed with `size`), at most [`MAX_DOCUMENT`].
    fn read_key(&mut self, key: &str, size: u64, what: &str) -> Result<Vec<u8>, Damage<O::Error>> {
        let too_large = || Damage::TooLarge {
            what: what.to_owned(),
        };
        if size > MAX_DOCUMENT {
            return Err(too_large());
        }
        let bytes = self.objects.read(key).map_err(|source| Damage::Read {
            key: key.to_owned(),
            source,
        })?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(too_large());
        }
        Ok(bytes)
    }
}

impl<O: Objects> BlobSource for RepositoryDocs<'_, O> {
    type Error = Damage<O::Error>;

    fn read(&mut self, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, Self::Error> {
        let key = manifest_key(self.repository, d.digest.as_str());
        let Some(&size) = self.sizes.get(&key) else {
            return Err(Damage::Missing {
                kind,
                digest: d.digest.clone(),
            });
        };
        let mismatch = |mismatch| Damage::Mismatch {
            kind,
            digest: d.digest.clone(),
            mismatch,
        };
        d.check_size(size).map_err(mismatch)?;
        let bytes = self.read_key(&key, size, &format!("{} {}", kind.what(), d.digest))?;
        d.check_bytes(&bytes).map_err(mismatch)?;
        Ok(bytes)
    }
}

/// The visitor that notes the keys a tag reaches in its repository.
struct Mark<'a> {
    repository: &'a str,
    live: &'a mut BTreeSet<String>,
}

impl<O: Objects> Visitor<RepositoryDocs<'_, O>> for Mark<'_> {
    fn enter(&mut self, d: &Descriptor, _: At<'_>) -> Result<bool, Damage<O::Error>> {
        let manifest = manifest_key(self.repository, d.digest.as_str());
        if d.media_type.is_index() || d.media_type.is_manifest() {
            // Reached before, from this tag or another: walked already.
            return Ok(self.live.insert(manifest));
        }
        // Neither (an attestation, say): kept under either name.
        self.live.insert(manifest);
        self.live.insert(blob_key(self.repository, &d.digest));
        Ok(true)
    }

    fn manifest(
        &mut self,
        d: &Descriptor,
        m: &Manifest,
        _: Vec<u8>,
        _: At<'_>,
        _: &mut RepositoryDocs<'_, O>,
    ) -> Result<(), Damage<O::Error>> {
        let what = format!("{} {}", Kind::Manifest.what(), d.digest);
        let config = m.config(&what)?;
        for b in std::iter::once(config).chain(m.layers(&what)?) {
            self.live.insert(blob_key(self.repository, &b.digest));
        }
        Ok(())
    }
}

/// The descriptor of what a tag names: its digest and size, and the media
/// type its document says (or, without one, what its shape says).
fn tag_descriptor(bytes: &[u8], what: &str) -> Result<Descriptor, Invalid> {
    let doc: Index = parse(bytes, what)?;
    let media_type = match doc.media_type {
        Some(m) if m.is_index() || m.is_manifest() => m,
        Some(m) => {
            return Err(Invalid::new(
                what,
                format!("names a {m}, neither an image index nor a manifest"),
            ))
        }
        None if doc.manifests.is_some() => MEDIA_TYPE_INDEX.into(),
        None => MEDIA_TYPE_MANIFEST.into(),
    };
    Ok(Descriptor::new(
        media_type,
        Digest::of(bytes),
        bytes.len() as u64,
    ))
}

/// Every manifest and blob key the tags of `listing` reach. The first tag
/// that cannot be read is the error.
pub fn reachable<O: Objects>(
    objects: &mut O,
    listing: &Listing,
) -> Result<(usize, BTreeSet<String>), GcError<O::Error>> {
    let sizes: BTreeMap<String, u64> = listing
        .objects
        .iter()
        .map(|o| (o.key.clone(), o.size))
        .collect();
    let tags: BTreeSet<(&str, &str)> = listing
        .objects
        .iter()
        .filter_map(|o| match Key::parse(&o.key) {
            Key::Tag { repository, tag } => Some((repository, tag)),
            _ => None,
        })
        .collect();
    let mut live = BTreeSet::new();
    for &(repository, tag) in &tags {
        let key = manifest_key(repository, tag);
        let size = sizes.get(&key).copied().unwrap_or(0);
        let mut docs = RepositoryDocs {
            objects: &mut *objects,
            repository,
            sizes: &sizes,
        };
        let what = format!("tag {repository}:{tag}");
        let marked = docs
            .read_key(&key, size, &what)
            .and_then(|bytes| Ok(tag_descriptor(&bytes, &what)?))
            .and_then(|root| {
                walk::walk(
                    &mut docs,
                    &root,
                    &mut Mark {
                        repository,
                        live: &mut live,
                    },
                )
            });
        marked.map_err(|source| GcError::Tag {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            source,
        })?;
    }
    Ok((tags.len(), live))
}

/// Marks what the tags reach and deletes the manifests, then the blobs,
/// that none reaches and that are older than `grace` by the store's
/// clock; with `dry_run`, only says which.
pub fn collect<O: Objects>(
    objects: &mut O,
    target: &str,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, GcError<O::Error>> {
    let listing = objects.list().map_err(GcError::Store)?;
    let (tags, live) = reachable(objects, &listing)?;
    let grace = Grace {
        grace,
        now: listing.now,
        dry_run,
    };
    let mut report = GcReport {
        version: 1,
        target: target.to_owned(),
        dry_run,
        tags,
        ..GcReport::default()
    };
    let mut manifests = Vec::new();
    let mut blobs = Vec::new();
    let mut remaining = Vec::new();
    for o in listing.objects {
        let is_manifest = match Key::parse(&o.key) {
            Key::Manifest { .. } => true,
            Key::Blob { .. } => false,
            _ => {
                remaining.push(o);
                continue;
            }
        };
        if live.contains(&o.key) {
            report.reachable += 1;
            remaining.push(o);
        } else if !grace.expired(o.modified) {
            report.kept_bytes += o.size;
            report.kept.push(Gone::from(&o));
            remaining.push(o);
        } else if is_manifest {
            manifests.push(o);
        } else {
            blobs.push(o);
        }
    }
    manifests.sort_by(|a, b| a.key.cmp(&b.key));
    blobs.sort_by(|a, b| a.key.cmp(&b.key));
    report.removed_manifests = manifests.len();
    report.removed_blobs = blobs.len();
    let mut removed = Vec::new();
    for o in manifests.iter().chain(&blobs) {
        if !dry_run {
            objects.delete(&o.key).map_err(GcError::Store)?;
        }
        report.removed_bytes += o.size;
        report.removed.push(Gone::from(o));
        removed.push(o.key.clone());
    }
    remaining.sort_by(|a, b| a.key.cmp(&b.key));
    let store = objects
        .settle(&remaining, &removed, Some(grace))
        .map_err(GcError::Store)?;
    report.bytes_freed = match store {
        Some(copies) => {
            report.store_removed = copies.iter().map(Gone::from).collect();
            copies.iter().map(|s| s.size).sum()
        }
        None => report.removed_bytes,
    };
    Ok(report)
}

#[cfg(test)]
mod tests;
