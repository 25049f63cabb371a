//! Pushing an image to a registry with the OCI distribution API.
//!
//! Blobs (configs and layers) go first, in parallel: a `HEAD` tells which
//! the registry already has; a missing one is mounted from another
//! repository when asked (`--mount-from`), else uploaded, in one `PUT`
//! when small and in `PATCH` chunks when large. Then the per-platform
//! manifests by digest, then the image index under its tag, each with its
//! exact media type as `Content-Type`. A blob's push is retried as a whole
//! (it starts with the `HEAD`, so an upload that finished before its
//! answer was lost counts as done).
//!
//! The image the tag names now is read first (its index and manifests, a
//! few `GET`s): the blobs it names are in the repository, since the
//! registry took its manifests, so they are not asked for one `HEAD` each.
//! The registry checks the new manifests' blobs in turn; should a manifest
//! be refused anyway (a blob deleted under a live manifest), the push is
//! done again with a `HEAD` for every blob.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use url::Url;

use super::client::{
    response_header, status_error, Body, Client, ClientError, Extra, MANIFEST_ACCEPT,
};
use super::reference::Reference;
use super::source::{BlobRef, Document, Image};
use crate::oci::image::ANNOTATION_BASE_NAME;
use crate::oci::{Digest, MediaType};

/// Blobs up to this size go in one `PUT`; larger ones in chunks this big.
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;

/// What happened to a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobStatus {
    /// Sent to the registry.
    Uploaded,
    /// Linked from another repository of the registry.
    Mounted,
    /// The registry had it already.
    Skipped,
}

/// One blob of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobReport {
    pub digest: Digest,
    pub size: u64,
    pub media_type: MediaType,
    pub status: BlobStatus,
    /// The repository it was mounted from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Attempts it took (1 without retries; 0 when the image the tag named
    /// before already had it, so it was not asked for).
    pub attempts: u32,
    /// Skipped, but copied onto itself first because it was older than
    /// `--refresh-after` (`push s3://…` only), so that a concurrent gc
    /// sees it as new.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refreshed: bool,
}

/// What happened to a manifest or index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestStatus {
    Pushed,
    Skipped,
}

/// One manifest or index of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestReport {
    pub digest: Digest,
    pub size: u64,
    pub media_type: MediaType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The tag or digest it was pushed under.
    pub reference: String,
    pub status: ManifestStatus,
    /// Skipped, but copied onto itself first because it was older than
    /// `--refresh-after` (`push s3://…` only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refreshed: bool,
}

/// The `--json` report of a push (version 1).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    pub version: u32,
    /// `registry/name:tag`.
    pub destination: String,
    pub registry: String,
    pub repository: String,
    pub tag: String,
    /// The digest of what the tag now points at.
    pub digest: Digest,
    pub media_type: MediaType,
    pub blobs: Vec<BlobReport>,
    pub manifests: Vec<ManifestReport>,
    pub uploaded: usize,
    pub mounted: usize,
    pub skipped: usize,
    /// Of the skipped blobs and manifests, those copied onto themselves
    /// because they were older than `--refresh-after` (`push s3://…`
    /// only; absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub refreshed: usize,
    pub bytes_uploaded: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushing {what} {digest}")]
    Blob {
        what: String,
        digest: Digest,
        #[source]
        source: Box<ClientError>,
    },
    #[error("pushing {what} {digest} as {reference}")]
    Manifest {
        what: String,
        digest: Digest,
        reference: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("the image has no manifest")]
    Empty,
}

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs pushed at once.
    pub jobs: usize,
    /// See [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: u64,
    /// Repositories of the same registry to mount missing blobs from.
    pub mount_from: Vec<String>,
}

/// What a push tells as it goes.
pub enum Event<'a> {
    /// Before the first blob: bytes and blobs in all.
    Start {
        bytes: u64,
        blobs: usize,
    },
    /// Bytes sent (or, negative, taken back after a failed attempt).
    Bytes(i64),
    Blob(&'a BlobReport),
    Manifest(&'a ManifestReport),
}

const OCTET: [(&str, &str); 1] = [("content-type", "application/octet-stream")];

fn what_blob(media_type: &MediaType) -> &'static str {
    if media_type.as_str().contains("config") {
        "config"
    } else {
        "layer"
    }
}

fn what_doc(d: &Document) -> &'static str {
    if d.is_index() {
        "image index"
    } else {
        "manifest"
    }
}

struct Pusher<'a> {
    client: &'a Client,
    options: &'a PushOptions,
    events: &'a (dyn Fn(Event) + Sync),
    /// Blobs the repository has: those of the image the tag names now.
    known: &'a BTreeSet<Digest>,
}

/// The state of one blob's push across attempts.
#[derive(Default)]
struct Attempts {
    /// The upload URL of an interrupted chunked upload.
    resume: Mutex<Option<Url>>,
    /// Chunks accepted so far: a retry that follows progress starts its
    /// count again.
    chunks: AtomicU64,
}

impl Pusher<'_> {
    /// One attempt at one blob: resume an interrupted chunked upload, else
    /// HEAD, else mount, else upload.
    fn blob_once(
        &self,
        blob: &BlobRef,
        sent: &(dyn Fn(u64) + Sync),
        state: &Attempts,
    ) -> Result<(BlobStatus, Option<String>), ClientError> {
        let c = self.client;
        let saved = state.resume.lock().ok().and_then(|mut r| r.take());
        if let Some(location) = saved {
            if let Some((location, offset)) = self.upload_status(&location, &state.resume)? {
                self.upload_chunks(blob, location, offset, sent, state)?;
                return Ok((BlobStatus::Uploaded, None));
            }
        }

        let url = c.repo_url(&format!("blobs/{}", blob.digest))?;
        let resp = c.send("HEAD", &url, &[], &Body::Empty)?;
        match resp.status().as_u16() {
            200 => return Ok((BlobStatus::Skipped, None)),
            404 => {}
            _ => return Err(status_error("HEAD", &url, resp)),
        }

        // A failed mount opens an upload session: the last one is used,
        // the others are cancelled.
        let mut session = None;
        let sources = &self.options.mount_from;
        for (i, from) in sources.iter().enumerate() {
            let mut u = c.repo_url("blobs/uploads/")?;
            u.query_pairs_mut()
                .append_pair("mount", blob.digest.as_str())
                .append_pair("from", from);
            let resp = c.send("POST", &u, &[], &Body::Empty)?;
            match resp.status().as_u16() {
                201 => return Ok((BlobStatus::Mounted, Some(from.clone()))),
                202 => {
                    let location = c.location("POST", &u, &resp)?;
                    if i + 1 == sources.len() {
                        session = Some(location);
                    } else {
                        let _ = c.send("DELETE", &location, &[], &Body::Empty);
                    }
                }
                _ => return Err(status_error("POST", &u, resp)),
            }
        }
        let location = match session {
            Some(l) => l,
            None => {
                let u = c.repo_url("blobs/uploads/")?;
                let resp = c.send("POST", &u, &[], &Body::Empty)?;
                if resp.status().as_u16() != 202 {
                    return Err(status_error("POST", &u, resp));
                }
                c.location("POST", &u, &resp)?
            }
        };

        if blob.size > self.options.chunk_size.max(1) {
            self.upload_chunks(blob, location, 0, sent, state)?;
        } else {
            let put = with_digest(&location, &blob.digest);
            let body = Body::File {
                path: &blob.path,
                offset: 0,
                len: blob.size,
                sent,
            };
            let resp = c.send("PUT", &put, &OCTET, &body)?;
            self.check_created("PUT", &put, resp, &blob.digest, what_blob(&blob.media_type))?;
        }
        Ok((BlobStatus::Uploaded, None))
    }

    /// Where an interrupted upload stands: its URL and the next offset, or
    /// `None` when the registry forgot it (start over). A transient failure
    /// keeps it for the next attempt.
    fn upload_status(
        &self,
        location: &Url,
        resume: &Mutex<Option<Url>>,
    ) -> Result<Option<(Url, u64)>, ClientError> {
        let c = self.client;
        let resp = match c.send("GET", location, &[], &Body::Empty) {
            Ok(r) => r,
            Err(e) => {
                if e.is_transient() {
                    if let Ok(mut r) = resume.lock() {
                        *r = Some(location.clone());
                    }
                }
                return Err(e);
            }
        };
        match resp.status().as_u16() {
            200..=299 => {
                // `Range: 0-N` holds bytes 0 to N. Distribution says `0-0`
                // for nothing yet (and for one byte, which no chunk is).
                let offset = response_header(&resp, "range")
                    .and_then(|r| r.rsplit_once('-'))
                    .and_then(|(_, end)| end.trim().parse::<u64>().ok())
                    .map_or(0, |end| if end == 0 { 0 } else { end + 1 });
                let next = c
                    .location("GET", location, &resp)
                    .unwrap_or_else(|_| location.clone());
                Ok(Some((next, offset)))
            }
            s if s >= 500 || s == 429 => {
                if let Ok(mut r) = resume.lock() {
                    *r = Some(location.clone());
                }
                Err(status_error("GET", location, resp))
            }
            _ => Ok(None),
        }
    }

    /// PATCHes the blob from `offset` in chunks, then closes the upload
    /// with a PUT. After each chunk the upload URL is saved in `resume`.
    fn upload_chunks(
        &self,
        blob: &BlobRef,
        mut location: Url,
        mut offset: u64,
        sent: &(dyn Fn(u64) + Sync),
        state: &Attempts,
    ) -> Result<(), ClientError> {
        let c = self.client;
        let chunk = self.options.chunk_size.max(1);
        let save = |u: &Url| {
            if let Ok(mut r) = state.resume.lock() {
                *r = Some(u.clone());
            }
        };
        save(&location);
        while offset < blob.size {
            let len = chunk.min(blob.size - offset);
            let range = format!("{}-{}", offset, offset + len - 1);
            let headers = [OCTET[0], ("content-range", range.as_str())];
            let body = Body::File {
                path: &blob.path,
                offset,
                len,
                sent,
            };
            let resp = c.send("PATCH", &location, &headers, &body)?;
            if resp.status().as_u16() != 202 {
                return Err(status_error("PATCH", &location, resp));
            }
            location = c.location("PATCH", &location, &resp)?;
            save(&location);
            state.chunks.fetch_add(1, Ordering::Relaxed);
            offset += len;
        }
        let put = with_digest(&location, &blob.digest);
        // The registry may move or hash the whole blob before it answers.
        let work = Extra {
            read: 0,
            work: blob.size,
        };
        let resp = c.send_with("PUT", &put, &OCTET, &Body::Empty, work)?;
        self.check_created("PUT", &put, resp, &blob.digest, what_blob(&blob.media_type))?;
        if let Ok(mut r) = state.resume.lock() {
            *r = None;
        }
        Ok(())
    }

    /// Expects 201 Created, and the digest we sent if the registry names one.
    fn check_created(
        &self,
        method: &'static str,
        url: &Url,
        resp: ureq::http::Response<ureq::Body>,
        digest: &Digest,
        what: &str,
    ) -> Result<(), ClientError> {
        if resp.status().as_u16() != 201 {
            return Err(status_error(method, url, resp));
        }
        if let Some(found) = response_header(&resp, "docker-content-digest") {
            if found != digest.as_str() {
                return Err(ClientError::DigestMismatch {
                    what: format!("{what} {digest}"),
                    expected: digest.to_string(),
                    found: found.to_owned(),
                });
            }
        }
        Ok(())
    }

    fn blob(&self, blob: &BlobRef) -> Result<BlobReport, PushError> {
        if self.known.contains(&blob.digest) {
            (self.events)(Event::Bytes(blob.size as i64));
            return Ok(BlobReport {
                digest: blob.digest.clone(),
                size: blob.size,
                media_type: blob.media_type.clone(),
                status: BlobStatus::Skipped,
                from: None,
                attempts: 0,
                refreshed: false,
            });
        }
        let attempts = AtomicU64::new(0);
        let state = Attempts::default();
        // An attempt that sent data and lost the answer may have finished
        // the upload: a later HEAD that finds the blob is our upload.
        let sent_any = AtomicBool::new(false);
        let progress_seen = AtomicU64::new(0);
        let result = self.client.with_retries_progress(
            &format!("{} {}", what_blob(&blob.media_type), blob.digest),
            |_| {
                attempts.fetch_add(1, Ordering::Relaxed);
                let this_try = AtomicU64::new(0);
                let sent = |n: u64| {
                    this_try.fetch_add(n, Ordering::Relaxed);
                    (self.events)(Event::Bytes(n as i64));
                };
                let r = self.blob_once(blob, &sent, &state);
                let n = this_try.load(Ordering::Relaxed);
                if n > 0 {
                    sent_any.store(true, Ordering::Relaxed);
                }
                if r.is_err() && n > 0 && state.resume.lock().map_or(true, |g| g.is_none()) {
                    (self.events)(Event::Bytes(-(n as i64)));
                }
                match r {
                    Ok((BlobStatus::Skipped, _)) if sent_any.load(Ordering::Relaxed) => {
                        Ok((BlobStatus::Uploaded, None))
                    }
                    other => other,
                }
            },
            || {
                let now = state.chunks.load(Ordering::Relaxed);
                let before = progress_seen.swap(now, Ordering::Relaxed);
                now > before
            },
        );
        let (status, from) = result.map_err(|source| PushError::Blob {
            what: what_blob(&blob.media_type).to_owned(),
            digest: blob.digest.clone(),
            source: Box::new(source),
        })?;
        if status != BlobStatus::Uploaded {
            // Count what did not need sending, so the bar reaches its end.
            (self.events)(Event::Bytes(blob.size as i64));
        }
        Ok(BlobReport {
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
            status,
            from,
            attempts: attempts.load(Ordering::Relaxed) as u32,
            refreshed: false,
        })
    }

    /// Pushes a manifest or index under `reference` (a digest or a tag);
    /// one under its digest is skipped when the registry has it.
    fn document(&self, doc: &Document, reference: &str) -> Result<ManifestStatus, ClientError> {
        let c = self.client;
        let url = c.repo_url(&format!("manifests/{reference}"))?;
        self.client
            .with_retries(&format!("{} {}", what_doc(doc), doc.digest), |_| {
                if reference == doc.digest.as_str() {
                    let resp =
                        c.send("HEAD", &url, &[("accept", MANIFEST_ACCEPT)], &Body::Empty)?;
                    match resp.status().as_u16() {
                        200 => return Ok(ManifestStatus::Skipped),
                        404 => {}
                        _ => return Err(status_error("HEAD", &url, resp)),
                    }
                }
                let headers = [("content-type", doc.media_type.as_str())];
                let resp = c.send("PUT", &url, &headers, &Body::Bytes(&doc.bytes))?;
                self.check_created("PUT", &url, resp, &doc.digest, what_doc(doc))?;
                Ok(ManifestStatus::Pushed)
            })
    }
}

/// The repositories of `destination`'s registry that the image's bases
/// come from (the `org.opencontainers.image.base.name` of its manifests,
/// which `build --from` writes), sorted: a push mounts the base's blobs
/// from there instead of uploading them (falling back to an upload when
/// the registry does not mount).
pub fn base_repositories(image: &Image, destination: &Reference) -> Vec<String> {
    let mut repos = std::collections::BTreeSet::new();
    for doc in image.documents.iter().filter(|d| !d.is_index()) {
        let Ok(m) = serde_json::from_slice::<crate::oci::model::Manifest>(&doc.bytes) else {
            continue;
        };
        let Some(name) = m.annotations.get(ANNOTATION_BASE_NAME) else {
            continue;
        };
        if let Some(repo) = base_repository(name, destination) {
            repos.insert(repo);
        }
    }
    repos.into_iter().collect()
}

/// The repository of the base named `name` (`REGISTRY/NAME`, as
/// `build --from` writes it) when it is another repository of
/// `destination`'s registry: one [`base_repositories`] mounts from.
pub fn base_repository(name: &str, destination: &Reference) -> Option<String> {
    let (registry, repo) = name.split_once('/')?;
    (registry == destination.registry
        && repo != destination.repository
        && super::reference::valid_repository(repo))
    .then(|| repo.to_owned())
}

fn with_digest(location: &Url, digest: &Digest) -> Url {
    let mut u = location.clone();
    u.query_pairs_mut().append_pair("digest", digest.as_str());
    u
}

/// Pushes each of `items` with `push`, `jobs` at a time (to a registry or
/// a bucket): the first failure stops new starts, and the reports come in
/// the order of `items`, or the error of the first item that failed.
pub(crate) fn push_blobs<T: Sync, E: Send>(
    items: &[T],
    jobs: usize,
    push: impl Fn(&T) -> Result<BlobReport, E> + Sync,
    events: &(dyn Fn(Event) + Sync),
) -> Result<Vec<BlobReport>, E> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<BlobReport, E>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let workers = jobs.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    break;
                };
                let r = push(item);
                match &r {
                    Ok(report) => events(Event::Blob(report)),
                    Err(_) => failed.store(true, Ordering::Relaxed),
                }
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(r);
                }
            });
        }
    });
    let mut blobs = Vec::with_capacity(items.len());
    for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        match r {
            Some(Ok(b)) => blobs.push(b),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(blobs)
}

/// Pushes `image` to the client's repository, `destination`, and points
/// `tag` at it.
pub fn push(
    client: &Client,
    image: &Image,
    destination: &Reference,
    tag: &str,
    options: &PushOptions,
    events: &(dyn Fn(Event) + Sync),
) -> Result<PushReport, PushError> {
    let known = tagged_blobs(client, destination, tag);
    push_known(client, image, destination, tag, options, events, known)
}

/// The blobs the image `tag` names in the client's repository now reaches
/// ([`super::fetch::tagged_blobs`]): what [`push_known`] takes as there.
/// A hint only, so a failure to read it gives the empty set, which costs
/// the `HEAD`s it would have saved, nothing more.
pub fn tagged_blobs(client: &Client, destination: &Reference, tag: &str) -> BTreeSet<Digest> {
    super::fetch::tagged_blobs(client, tag, &format!("{}:{tag}", destination.repository))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// [`push`] with the blobs the tag named, read before
/// ([`tagged_blobs`], as `build --push` does while it builds): the same
/// requests and checks. Should a manifest be refused after blobs of
/// `known` were skipped, the push is done again with a `HEAD` for every
/// blob.
pub fn push_known(
    client: &Client,
    image: &Image,
    destination: &Reference,
    tag: &str,
    options: &PushOptions,
    events: &(dyn Fn(Event) + Sync),
    known: BTreeSet<Digest>,
) -> Result<PushReport, PushError> {
    let wanted: BTreeSet<&Digest> = image.blobs.iter().map(|b| &b.digest).collect();
    // Nothing in common: no blob is skipped, so a refused manifest has
    // nothing to retry.
    let known = if known.iter().any(|d| wanted.contains(d)) {
        known
    } else {
        BTreeSet::new()
    };
    match push_once(client, image, destination, tag, options, events, &known) {
        // A blob the tag names is gone: push again, asking for every blob.
        Err(PushError::Manifest { .. }) if !known.is_empty() => push_once(
            client,
            image,
            destination,
            tag,
            options,
            events,
            &BTreeSet::new(),
        ),
        other => other,
    }
}

/// [`push`], taking the blobs of `known` as there.
fn push_once(
    client: &Client,
    image: &Image,
    destination: &Reference,
    tag: &str,
    options: &PushOptions,
    events: &(dyn Fn(Event) + Sync),
    known: &BTreeSet<Digest>,
) -> Result<PushReport, PushError> {
    let root = image.root().ok_or(PushError::Empty)?;
    let pusher = Pusher {
        client,
        options,
        events,
        known,
    };
    events(Event::Start {
        bytes: image.blobs.iter().map(|b| b.size).sum(),
        blobs: image.blobs.len(),
    });

    // Blobs, `jobs` at a time; the first failure stops new starts.
    let blobs = push_blobs(&image.blobs, options.jobs, |b| pusher.blob(b), events)?;

    // Children before parents; the root last, under the tag.
    let mut manifests = Vec::with_capacity(image.documents.len());
    for doc in &image.documents {
        let is_root = std::ptr::eq(doc, root);
        let reference = if is_root {
            tag.to_owned()
        } else {
            doc.digest.to_string()
        };
        let status = pusher
            .document(doc, &reference)
            .map_err(|source| PushError::Manifest {
                what: what_doc(doc).to_owned(),
                digest: doc.digest.clone(),
                reference: reference.clone(),
                source: Box::new(source),
            })?;
        let report = ManifestReport {
            digest: doc.digest.clone(),
            size: doc.bytes.len() as u64,
            media_type: doc.media_type.clone(),
            platform: doc.platform.clone(),
            reference,
            status,
            refreshed: false,
        };
        events(Event::Manifest(&report));
        manifests.push(report);
    }

    let count = |s: BlobStatus| blobs.iter().filter(|b| b.status == s).count();
    Ok(PushReport {
        version: 1,
        destination: format!("{}/{}:{tag}", destination.registry, destination.repository),
        registry: destination.registry.clone(),
        repository: destination.repository.clone(),
        tag: tag.to_owned(),
        digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        uploaded: count(BlobStatus::Uploaded),
        mounted: count(BlobStatus::Mounted),
        skipped: count(BlobStatus::Skipped),
        refreshed: 0,
        bytes_uploaded: blobs
            .iter()
            .filter(|b| b.status == BlobStatus::Uploaded)
            .map(|b| b.size)
            .sum(),
        blobs,
        manifests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(annotations: serde_json::Value) -> Document {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "layers": [], "annotations": annotations,
        }))
        .unwrap();
        Document {
            digest: Digest::of(&bytes),
            media_type: MediaType::MANIFEST,
            bytes,
            platform: None,
        }
    }

    #[test]
    fn bases_on_the_destination_registry_are_mounted_from() {
        let dest = Reference::parse("127.0.0.1:5000/app:1").unwrap();
        let image = Image {
            layout: "x".into(),
            ref_name: None,
            blobs: Vec::new(),
            documents: vec![
                manifest(serde_json::json!({ANNOTATION_BASE_NAME: "127.0.0.1:5000/team/base"})),
                manifest(serde_json::json!({ANNOTATION_BASE_NAME: "127.0.0.1:5000/team/base"})),
                manifest(serde_json::json!({ANNOTATION_BASE_NAME: "127.0.0.1:5000/app"})),
                manifest(serde_json::json!({ANNOTATION_BASE_NAME: "docker.io/library/debian"})),
                manifest(serde_json::json!({})),
            ],
        };
        assert_eq!(base_repositories(&image, &dest), ["team/base"]);
    }
}
