//! `push s3://…`: an image as a static registry in an S3 bucket, the same
//! keys `export-static` writes ([`super::tree`]), each object with its
//! exact `Content-Type`, for a bucket website (Garage's web endpoint) to
//! serve read-only.
//!
//! The order is what keeps readers safe, even when the push is killed at
//! any point: the ping and every blob first (in parallel), then the
//! manifests by digest (children before parents), then the tag, then the
//! repository's `tags/list`. A reader that sees a tag finds everything it
//! reaches; a tag that was there before keeps pointing at complete
//! objects, since an object write replaces an object whole. Nothing is
//! ever deleted.
//!
//! Incremental: one listing of `v2/` tells what is there. An object named
//! by its digest with the right size is skipped; a blob the bucket holds
//! under another repository is copied server-side; the tag and the tag list
//! are compared byte for byte. Blobs go up in one `PUT` (with their
//! SHA-256 as `x-amz-checksum-sha256`, so the server refuses damaged
//! bytes) or, when larger than the part size, as a multipart upload after
//! a local check of their digest.
//!
//! A concurrent `gc` cannot take what a push relies on: a blob or manifest
//! the push finds already there but last modified longer ago than
//! `refresh_after` (by the server's clock) is copied onto itself before
//! the manifests and the tag go up, which makes it new again. A gc that
//! keeps what is younger than its grace period, longer than
//! `refresh_after`, never deletes it before the tag that needs it is there.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::client::Body;
use super::gc::Key;
use super::push::{
    push_blobs, BlobReport, BlobStatus, Event, ManifestReport, ManifestStatus, PushReport,
};
use super::s3::{Bucket, ObjectInfo, PutMeta, S3Error, S3Target, MAX_SINGLE_PUT};
use super::source::{BlobRef, Image};
use super::tree::{self, Bytes, Needed, Stage, PING_BODY, PING_KEY};
use crate::oci::{Digest, DigestWriter};

/// Why a push to a bucket failed.
#[derive(Debug, thiserror::Error)]
pub enum S3PushError {
    #[error("listing {what}")]
    List {
        what: String,
        #[source]
        source: Box<S3Error>,
    },
    #[error("pushing {what} {digest}")]
    Blob {
        what: &'static str,
        digest: Digest,
        #[source]
        source: Box<S3Error>,
    },
    #[error("writing {key}")]
    Object {
        key: String,
        #[source]
        source: Box<S3Error>,
    },
    #[error("{path}: content hashes to {found}, expected {expected}")]
    Digest {
        path: std::path::PathBuf,
        expected: Digest,
        found: Digest,
    },
    #[error("reading {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the image has no manifest")]
    Empty,
}

/// How to push.
#[derive(Debug, Clone)]
pub struct S3PushOptions {
    /// Blobs pushed at once.
    pub jobs: usize,
    /// Blobs up to this size go in one `PUT`, larger ones as multipart
    /// uploads in parts this big (at least S3's 5 MiB).
    pub part_size: u64,
    /// A blob or manifest found in the bucket but last modified longer
    /// ago than this is copied onto itself, so that a gc with a longer
    /// grace period never deletes it while this push relies on it.
    pub refresh_after: Duration,
}

fn what_blob(b: &BlobRef) -> &'static str {
    if b.media_type.as_str().contains("config") {
        "config"
    } else {
        "layer"
    }
}

/// The SHA-256 of the layout's file `path`, read without following a
/// symbolic link.
fn hash_file(path: &std::path::Path) -> Result<Digest, S3PushError> {
    let io_err = |source| S3PushError::Io {
        path: path.to_owned(),
        source,
    };
    let (mut f, _) = crate::oci::files::open_no_follow(path).map_err(|e| match e {
        crate::oci::files::FileError::Io { source, .. } => io_err(source),
        other => io_err(io::Error::other(other.to_string())),
    })?;
    let mut w = DigestWriter::new(io::sink());
    io::copy(&mut f, &mut w).map_err(io_err)?;
    Ok(w.finish().1)
}

/// What the bucket holds under `v2/`, from one listing.
struct Existing {
    sizes: BTreeMap<String, u64>,
    modified: BTreeMap<String, SystemTime>,
    /// The server's time of the listing (`None` without a `Date`).
    now: Option<SystemTime>,
    /// A key of each blob digest, in whichever repository.
    blobs: BTreeMap<Digest, (String, u64)>,
}

impl Existing {
    fn read(bucket: &Bucket) -> Result<Existing, S3PushError> {
        let listed: Vec<ObjectInfo> = bucket.list("v2/").map_err(|source| S3PushError::List {
            what: format!("{}/v2/", bucket.url()),
            source: Box::new(source),
        })?;
        let mut blobs = BTreeMap::new();
        for o in &listed {
            if let Key::Blob { digest, .. } = Key::parse(&o.key) {
                blobs.entry(digest).or_insert((o.key.clone(), o.size));
            }
        }
        let modified = listed
            .iter()
            .map(|o| (o.key.clone(), o.last_modified))
            .collect();
        let sizes = listed.into_iter().map(|o| (o.key, o.size)).collect();
        Ok(Existing {
            sizes,
            modified,
            now: bucket.server_time(),
            blobs,
        })
    }

    fn has(&self, key: &str, size: u64) -> bool {
        self.sizes.get(key) == Some(&size)
    }

    /// Whether `key` was last modified longer ago than `age`, by the
    /// server's clock (always, when the server gave no time).
    fn older_than(&self, key: &str, age: Duration) -> bool {
        match (self.now, self.modified.get(key)) {
            (Some(now), Some(t)) => now.duration_since(*t).is_ok_and(|a| a > age),
            _ => true,
        }
    }

    /// The tags of `repository` in the listing.
    fn tags(&self, repository: &str) -> BTreeSet<String> {
        self.sizes
            .keys()
            .filter_map(|k| match Key::parse(k) {
                Key::Tag { repository: r, tag } if r == repository => Some(tag.to_owned()),
                _ => None,
            })
            .collect()
    }
}

struct Pusher<'a> {
    bucket: &'a Bucket,
    existing: &'a Existing,
    options: &'a S3PushOptions,
    events: &'a (dyn Fn(Event) + Sync),
}

impl Pusher<'_> {
    /// Whether the object at `key`, found in the bucket, needs a refresh.
    fn stale(&self, key: &str) -> bool {
        self.existing.older_than(key, self.options.refresh_after)
    }

    /// Copies `key` onto itself, which makes it new for a gc; `false` when
    /// it cannot be (gone meanwhile, or too large for a copy) and must be
    /// written again.
    fn refresh(&self, key: &str, size: u64, meta: PutMeta) -> Result<bool, S3Error> {
        if size > MAX_SINGLE_PUT {
            return Ok(false);
        }
        match self.bucket.copy_object(key, key, meta) {
            Ok(()) => Ok(true),
            Err(S3Error::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn blob(&self, n: &Needed, blob: &BlobRef) -> Result<BlobReport, S3PushError> {
        let key = &n.object.key;
        let meta = PutMeta {
            content_type: &n.object.content_type,
            checksum: Some(&blob.digest),
            content_digest: Some(&blob.digest),
        };
        let err = |source| S3PushError::Blob {
            what: what_blob(blob),
            digest: blob.digest.clone(),
            source: Box::new(source),
        };
        let report = |status, from| BlobReport {
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
            status,
            from,
            attempts: 1,
            refreshed: false,
        };
        if self.existing.has(key, blob.size) {
            let stale = self.stale(key);
            if !stale || self.refresh(key, blob.size, meta).map_err(err)? {
                (self.events)(Event::Bytes(blob.size as i64));
                return Ok(BlobReport {
                    refreshed: stale,
                    ..report(BlobStatus::Skipped, None)
                });
            }
        }
        if let Some((from, size)) = self.existing.blobs.get(&blob.digest) {
            if *size == blob.size && blob.size <= MAX_SINGLE_PUT {
                self.bucket.copy_object(from, key, meta).map_err(err)?;
                (self.events)(Event::Bytes(blob.size as i64));
                let repo = match Key::parse(from) {
                    Key::Blob { repository, .. } => Some(repository.to_owned()),
                    _ => None,
                };
                return Ok(report(BlobStatus::Mounted, repo));
            }
        }
        let sent_now = AtomicU64::new(0);
        if blob.size <= self.options.part_size {
            let sent = |b: u64| {
                sent_now.fetch_add(b, Ordering::Relaxed);
                (self.events)(Event::Bytes(b as i64));
            };
            let body = Body::File {
                path: &blob.path,
                offset: 0,
                len: blob.size,
                sent: &sent,
            };
            let r = self.bucket.put_object(key, meta, &body);
            // Each attempt counts its bytes again: take back all but one.
            let extra = sent_now.load(Ordering::Relaxed) as i64 - blob.size as i64;
            if extra > 0 || r.is_err() {
                let back = if r.is_err() {
                    sent_now.load(Ordering::Relaxed) as i64
                } else {
                    extra
                };
                (self.events)(Event::Bytes(-back));
            }
            r.map_err(err)?;
        } else {
            // No per-part checksum: check the whole file here first.
            let found = hash_file(&blob.path)?;
            if found != blob.digest {
                return Err(S3PushError::Digest {
                    path: blob.path.clone(),
                    expected: blob.digest.clone(),
                    found,
                });
            }
            let sent = |b: i64| (self.events)(Event::Bytes(b));
            self.bucket
                .put_multipart(
                    key,
                    meta,
                    &blob.path,
                    blob.size,
                    self.options.part_size,
                    &sent,
                )
                .map_err(err)?;
        }
        Ok(report(BlobStatus::Uploaded, None))
    }

    /// A manifest by digest (skipped when there, refreshed when old), or
    /// a tag (skipped when it holds the same bytes); whether it was
    /// refreshed.
    fn document(&self, n: &Needed) -> Result<(ManifestStatus, bool), S3PushError> {
        let Bytes::Document(doc) = n.bytes else {
            return Ok((ManifestStatus::Skipped, false));
        };
        let key = &n.object.key;
        let err = |source| S3PushError::Object {
            key: key.clone(),
            source: Box::new(source),
        };
        let meta = PutMeta {
            content_type: &n.object.content_type,
            checksum: Some(&doc.digest),
            content_digest: Some(&doc.digest),
        };
        match n.stage {
            // A tag is a root for gc: never refreshed.
            Stage::Tags => {
                if self.existing.sizes.contains_key(key)
                    && self.bucket.get(key).map_err(err)?.as_deref() == Some(&doc.bytes[..])
                {
                    return Ok((ManifestStatus::Skipped, false));
                }
            }
            _ => {
                if self.existing.has(key, n.object.size) {
                    let stale = self.stale(key);
                    if !stale || self.refresh(key, n.object.size, meta).map_err(err)? {
                        return Ok((ManifestStatus::Skipped, stale));
                    }
                }
            }
        }
        self.bucket
            .put_object(key, meta, &Body::Bytes(&doc.bytes))
            .map_err(err)?;
        Ok((ManifestStatus::Pushed, false))
    }

    /// Writes a small JSON object unless it holds `body` already.
    fn small(&self, key: &str, body: &[u8], compare: bool) -> Result<bool, S3PushError> {
        let err = |source| S3PushError::Object {
            key: key.to_owned(),
            source: Box::new(source),
        };
        let there = if compare {
            self.existing.sizes.contains_key(key)
                && self.bucket.get(key).map_err(err)?.as_deref() == Some(body)
        } else {
            self.existing.has(key, body.len() as u64)
        };
        if there {
            return Ok(false);
        }
        let digest = Digest::of(body);
        let meta = PutMeta {
            content_type: tree::JSON_TYPE,
            checksum: Some(&digest),
            content_digest: None,
        };
        self.bucket
            .put_object(key, meta, &Body::Bytes(body))
            .map_err(err)?;
        Ok(true)
    }
}

/// Pushes `image` to the bucket as `target`'s repository under `tag`.
pub fn push(
    bucket: &Bucket,
    image: &Image,
    target: &S3Target,
    tag: &str,
    options: &S3PushOptions,
    events: &(dyn Fn(Event) + Sync),
) -> Result<PushReport, S3PushError> {
    let root = image.root().ok_or(S3PushError::Empty)?;
    let repository = target.repository.as_str();
    let needed =
        tree::image_objects(image, repository, &[tag.to_owned()]).ok_or(S3PushError::Empty)?;
    let existing = Existing::read(bucket)?;
    let pusher = Pusher {
        bucket,
        existing: &existing,
        options,
        events,
    };
    events(Event::Start {
        bytes: image.blobs.iter().map(|b| b.size).sum(),
        blobs: image.blobs.len(),
    });

    // 1. The ping and the blobs, `jobs` at a time; the first failure
    //    stops new starts.
    pusher.small(PING_KEY, PING_BODY, false)?;
    let blob_objects: Vec<(&Needed, &BlobRef)> = needed
        .iter()
        .filter(|n| n.stage == Stage::Blobs)
        .zip(&image.blobs)
        .collect();
    let blobs = push_blobs(
        &blob_objects,
        options.jobs,
        |(n, b)| pusher.blob(n, b),
        events,
    )?;

    // 2. The manifests by digest, children before parents, then the tag.
    let mut manifests = Vec::new();
    for n in needed.iter().filter(|n| n.stage != Stage::Blobs) {
        let (status, refreshed) = pusher.document(n)?;
        let Bytes::Document(doc) = n.bytes else {
            continue;
        };
        let report = ManifestReport {
            digest: doc.digest.clone(),
            size: doc.bytes.len() as u64,
            media_type: doc.media_type.clone(),
            platform: doc.platform.clone(),
            reference: n.name.clone(),
            status,
            refreshed,
        };
        events(Event::Manifest(&report));
        manifests.push(report);
    }

    // 3. The repository's tag list, last.
    let mut tags = existing.tags(repository);
    tags.insert(tag.to_owned());
    let body = tree::tag_list(repository, &tags);
    pusher.small(&tree::tags_list_key(repository), &body, true)?;

    let count = |s: BlobStatus| blobs.iter().filter(|b| b.status == s).count();
    let destination = S3Target {
        tag: Some(tag.to_owned()),
        ..target.clone()
    };
    Ok(PushReport {
        version: 1,
        destination: destination.to_string(),
        registry: bucket.url().to_string(),
        repository: repository.to_owned(),
        tag: tag.to_owned(),
        digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        uploaded: count(BlobStatus::Uploaded),
        mounted: count(BlobStatus::Mounted),
        skipped: count(BlobStatus::Skipped),
        refreshed: blobs.iter().filter(|b| b.refreshed).count()
            + manifests.iter().filter(|m| m.refreshed).count(),
        bytes_uploaded: blobs
            .iter()
            .filter(|b| b.status == BlobStatus::Uploaded)
            .map(|b| b.size)
            .sum(),
        blobs,
        manifests,
    })
}
