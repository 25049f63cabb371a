//! Reading an image back from a registry with the distribution API, for
//! `--previous REGISTRY/NAME[:TAG|@DIGEST]`: the manifest or image index
//! the tag (or digest) names, each platform's manifest by digest, and a
//! config when the layers' store paths must come from its history.
//!
//! Every document is read up to a size limit and checked against the
//! digest it was asked by before it is parsed; the parsing itself is
//! [`crate::oci::previous::from_documents`], the same as for layouts.

use url::Url;

use super::client::{
    response_header, status_error, Body, Client, ClientError, Extra, MANIFEST_ACCEPT,
};
use std::collections::BTreeSet;

use crate::oci::base::BaseImage;
use crate::oci::model::{parse, Descriptor, Invalid, Mismatch};
use crate::oci::previous::{from_documents, ImageLayers};
use crate::oci::walk::{self, BlobSource, Kind};
use crate::oci::{Digest, DigestWriter, MediaType};
use crate::platform::Platform;

/// Largest manifest or image index read.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest config read.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Why the image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The tag or digest names nothing in the registry (404).
    #[error("{image} is not in the registry{detail}")]
    NotFound { image: String, detail: String },
    #[error("fetching {what}")]
    Client {
        what: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("{what}: the registry sent a document whose digest is {found}")]
    DigestMismatch { what: String, found: Digest },
    #[error("{what}: the registry sent {found} bytes, its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error("{what}: larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
}

impl From<Invalid> for FetchError {
    fn from(e: Invalid) -> Self {
        FetchError::Invalid {
            what: e.what,
            problem: e.problem,
        }
    }
}

impl FetchError {
    /// True when the image is not there (what `--previous-optional`
    /// forgives), rather than unreadable.
    pub fn is_missing(&self) -> bool {
        matches!(self, FetchError::NotFound { .. })
    }
}

/// What was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    /// The digest of the manifest or index the reference names.
    pub digest: Digest,
    pub media_type: MediaType,
    pub layers: ImageLayers,
}

/// A document as the registry sent it.
struct Answer {
    bytes: Vec<u8>,
    content_type: Option<String>,
    /// `Docker-Content-Digest`, when sent.
    stated: Option<String>,
}

/// GETs `url` (retrying as a push does) and reads at most `limit` bytes.
/// The outer error is the request's, the inner one the answer's.
fn get(
    client: &Client,
    url: &Url,
    accept: Option<&str>,
    what: &str,
    limit: u64,
) -> Result<Result<Answer, FetchError>, ClientError> {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let label = format!("GET {}", url.path());
    client.with_retries(&label, |_| {
        let mut resp = client.send_with(
            "GET",
            url,
            &headers,
            &Body::Empty,
            Extra {
                read: limit,
                work: 0,
            },
        )?;
        if !resp.status().is_success() {
            return Err(status_error("GET", url, resp));
        }
        let too_large = || FetchError::TooLarge {
            what: what.to_owned(),
            limit,
        };
        let declared = response_header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Ok(Err(too_large()));
        }
        let content_type = response_header(&resp, "content-type").map(str::to_owned);
        let stated = response_header(&resp, "docker-content-digest").map(str::to_owned);
        match client.read_body("GET", url, &mut resp, limit)? {
            Some(bytes) => Ok(Ok(Answer {
                bytes,
                content_type,
                stated,
            })),
            None => Ok(Err(too_large())),
        }
    })
}

/// One document by its descriptor: a manifest or index from
/// `manifests/`, a config from `blobs/`; its bytes must be what the
/// descriptor says.
fn by_digest(client: &Client, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, FetchError> {
    let digest = &d.digest;
    let what = format!("{} {digest}", kind.what());
    let (path, accept, limit) = match kind {
        Kind::Config => (format!("blobs/{digest}"), None, MAX_CONFIG_SIZE),
        Kind::Index | Kind::Manifest => (
            format!("manifests/{digest}"),
            Some(MANIFEST_ACCEPT),
            MAX_MANIFEST_SIZE,
        ),
    };
    if d.size.is_some_and(|n| n > limit) {
        return Err(FetchError::TooLarge { what, limit });
    }
    let client_err = |source| FetchError::Client {
        what: what.clone(),
        source: Box::new(source),
    };
    let url = client.repo_url(&path).map_err(client_err)?;
    let answer = get(client, &url, accept, &what, limit).map_err(client_err)??;
    match d.check_bytes(&answer.bytes) {
        Ok(()) => Ok(answer.bytes),
        Err(Mismatch::Digest { found, .. }) => Err(FetchError::DigestMismatch { what, found }),
        Err(Mismatch::Size { expected, found }) => Err(FetchError::SizeMismatch {
            what,
            expected,
            found,
        }),
    }
}

/// A registry repository as a blob source: the document a reference
/// named, already read, and the others by digest.
struct Registry<'a> {
    client: &'a Client,
    root: Digest,
    root_bytes: Vec<u8>,
}

impl BlobSource for Registry<'_> {
    type Error = FetchError;

    fn read(&mut self, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, FetchError> {
        if d.digest == self.root && kind != Kind::Config {
            return Ok(self.root_bytes.clone());
        }
        by_digest(self.client, kind, d)
    }
}

/// What a manifest or index says of itself.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaTypeOnly {
    media_type: Option<MediaType>,
}

/// The media type of a manifest or index: its own `mediaType`, else the
/// `Content-Type` it came with.
fn media_type(doc: &MediaTypeOnly, content_type: Option<&str>) -> MediaType {
    match &doc.media_type {
        Some(m) => m.clone(),
        None => MediaType::new(
            content_type
                .map(|c| c.split(';').next().unwrap_or(c).trim())
                .unwrap_or_default(),
        ),
    }
}

/// The document a reference names, read and checked, as the root of a
/// walk over the client's repository.
fn open_root<'a>(
    client: &'a Client,
    reference: &str,
    expected: Option<&Digest>,
    image: &str,
) -> Result<(Registry<'a>, Descriptor), FetchError> {
    let what = format!("the manifest of {image}");
    let client_err = |source| FetchError::Client {
        what: what.clone(),
        source: Box::new(source),
    };
    let url = client
        .repo_url(&format!("manifests/{reference}"))
        .map_err(client_err)?;
    let answer = match get(
        client,
        &url,
        Some(MANIFEST_ACCEPT),
        &what,
        MAX_MANIFEST_SIZE,
    ) {
        Ok(a) => a?,
        Err(ClientError::Status {
            status: 404,
            detail,
            ..
        }) => {
            return Err(FetchError::NotFound {
                image: image.to_owned(),
                detail,
            })
        }
        Err(e) => return Err(client_err(e)),
    };
    let digest = Digest::of(&answer.bytes);
    let stated = match expected {
        Some(d) => Some(d.clone()),
        // A registry states the digest of what it sent; one in another
        // algorithm cannot be checked here.
        None => answer.stated.as_deref().and_then(|s| s.parse().ok()),
    };
    if stated.is_some_and(|s| s != digest) {
        return Err(FetchError::DigestMismatch {
            what,
            found: digest,
        });
    }
    let doc: MediaTypeOnly = parse(&answer.bytes, &what)?;
    let media_type = media_type(&doc, answer.content_type.as_deref());
    if !media_type.is_index() && !media_type.is_manifest() {
        return Err(FetchError::Invalid {
            what,
            problem: format!("not an image index or manifest (media type '{media_type}')"),
        });
    }
    let root = Descriptor::new(media_type, digest.clone(), answer.bytes.len() as u64);
    let registry = Registry {
        client,
        root: digest,
        root_bytes: answer.bytes,
    };
    Ok((registry, root))
}

/// Reads the layers of the image `reference` (a tag or a digest) names in
/// the client's repository; `image` names it in messages.
pub fn read_layers(
    client: &Client,
    reference: &str,
    expected: Option<&Digest>,
    image: &str,
) -> Result<RemoteImage, FetchError> {
    let (mut registry, root) = open_root(client, reference, expected, image)?;
    let layers = from_documents(&mut registry, &root)?;
    Ok(RemoteImage {
        digest: root.digest,
        media_type: root.media_type,
        layers,
    })
}

/// Every digest the image `reference` (a tag) names in the client's
/// repository reaches: its index and manifests, their configs and layers,
/// which a registry that took those manifests held when it did (a
/// registry checks that a manifest's blobs are there). `Ok(None)` when
/// there is no such image.
pub fn tagged_blobs(
    client: &Client,
    reference: &str,
    image: &str,
) -> Result<Option<BTreeSet<Digest>>, FetchError> {
    let (mut registry, root) = match open_root(client, reference, None, image) {
        Ok(opened) => opened,
        Err(e) if e.is_missing() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reach = walk::Reach::default();
    walk::walk(&mut registry, &root, &mut reach)?;
    Ok(Some(reach.seen))
}

/// Reads the platforms `wanted` of the base image `reference` (a tag or a
/// digest) names in the client's repository (`--from`, `nixoci pull`).
pub fn read_base(
    client: &Client,
    reference: &str,
    expected: Option<&Digest>,
    image: &str,
    wanted: &BTreeSet<Platform>,
) -> Result<BaseImage, FetchError> {
    let (mut registry, root) = open_root(client, reference, expected, image)?;
    crate::oci::base::from_documents(&mut registry, &root, wanted)
}

/// The bytes of a blob or document `d` names (`Kind::Config` for any blob
/// from `blobs/`), checked against it: what `nixoci pull` copies.
pub fn read_document(client: &Client, kind: Kind, d: &Descriptor) -> Result<Vec<u8>, FetchError> {
    by_digest(client, kind, d)
}

/// Streams the blob `d` names (a layer) from the client's repository into
/// `to` (a file at `path`), checking its size and digest on the way.
pub fn fetch_blob(
    client: &Client,
    d: &Descriptor,
    to: &mut dyn std::io::Write,
    path: &std::path::Path,
) -> Result<(), FetchError> {
    let what = format!("layer {}", d.digest);
    let size = d.size.unwrap_or(u64::MAX);
    let client_err = |source| FetchError::Client {
        what: what.clone(),
        source: Box::new(source),
    };
    let url = client
        .repo_url(&format!("blobs/{}", d.digest))
        .map_err(client_err)?;
    let mut resp = client
        .send_with(
            "GET",
            &url,
            &[],
            &Body::Empty,
            Extra {
                read: size.min(1 << 40),
                work: 0,
            },
        )
        .map_err(client_err)?;
    if !resp.status().is_success() {
        return Err(client_err(status_error("GET", &url, resp)));
    }
    let mut hashing = DigestWriter::new(to);
    let read = client
        .read_body_into("GET", &url, &mut resp, size, &mut hashing, path)
        .map_err(client_err)?;
    let (_, found, len) = hashing.finish();
    let Some(_) = read else {
        return Err(FetchError::TooLarge { what, limit: size });
    };
    match d.check_hashed(found, len) {
        Ok(()) => Ok(()),
        Err(Mismatch::Digest { found, .. }) => Err(FetchError::DigestMismatch { what, found }),
        Err(Mismatch::Size { expected, found }) => Err(FetchError::SizeMismatch {
            what,
            expected,
            found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media_type::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

    fn doc(json: &str) -> MediaTypeOnly {
        parse(json.as_bytes(), "t").unwrap()
    }

    #[test]
    fn media_types_from_the_document_or_the_header() {
        let typed = doc(&format!(r#"{{"mediaType":"{MEDIA_TYPE_INDEX}"}}"#));
        assert_eq!(media_type(&typed, Some("text/plain")), MEDIA_TYPE_INDEX);
        let bare = doc(r#"{"schemaVersion":2}"#);
        assert_eq!(
            media_type(
                &bare,
                Some(&format!("{MEDIA_TYPE_MANIFEST}; charset=utf-8"))
            ),
            MEDIA_TYPE_MANIFEST
        );
        assert_eq!(media_type(&bare, None), "");
    }
}
