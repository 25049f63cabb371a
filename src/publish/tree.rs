//! The keys of a static registry: which objects an image needs under a
//! repository and its tags, each with its content type, digest, size and
//! where its bytes come from, in the order a reader may see them appear.
//! `export-static` (files under a tree) and `push s3://…` (objects in a
//! bucket) both write exactly these; pure, no I/O.
//!
//! ```text
//! v2/index.html                      {} (the /v2/ ping: a website's index document)
//! v2/NAME/blobs/sha256:HEX           configs and layers, application/octet-stream
//! v2/NAME/manifests/sha256:HEX       the index and every manifest, their media types
//! v2/NAME/manifests/TAG              the tagged index (or manifest)
//! v2/NAME/tags/list                  {"name":…,"tags":[…]}, application/json
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::source::{Document, Image};
use crate::oci::Digest;

/// The `/v2/` ping, served as the web endpoint's index document.
pub const PING_KEY: &str = "v2/index.html";
pub const PING_BODY: &[u8] = b"{}";
/// The content type of configs and layers.
pub const BLOB_TYPE: &str = "application/octet-stream";
/// The content type of the ping and the tag lists.
pub const JSON_TYPE: &str = "application/json";

/// `v2/NAME/blobs/DIGEST`.
pub fn blob_key(repository: &str, digest: &Digest) -> String {
    format!("v2/{repository}/blobs/{digest}")
}

/// `v2/NAME/manifests/REFERENCE` (a tag or a digest).
pub fn manifest_key(repository: &str, reference: &str) -> String {
    format!("v2/{repository}/manifests/{reference}")
}

/// `v2/NAME/tags/list`.
pub fn tags_list_key(repository: &str) -> String {
    format!("v2/{repository}/tags/list")
}

/// The body of `v2/NAME/tags/list`.
pub fn tag_list(repository: &str, tags: &BTreeSet<String>) -> Vec<u8> {
    let list = serde_json::json!({"name": repository, "tags": tags});
    // A map of strings always serialises.
    serde_json::to_vec(&list).unwrap_or_default()
}

/// What kind of object a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ping,
    Manifest,
    Blob,
    Tags,
}

/// One object of the tree, as `objects.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    /// The path under the tree, and the object key.
    pub key: String,
    pub content_type: String,
    /// The `Docker-Content-Digest` a registry would send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    pub size: u64,
    pub kind: Kind,
}

/// Where the bytes of a needed object come from.
#[derive(Debug, Clone, Copy)]
pub enum Bytes<'a> {
    /// A config or layer: the layout's blob of the object's digest.
    Blob,
    /// A manifest or index, read and checked already.
    Document(&'a Document),
}

/// When an object may be written: every object of a stage only once the
/// stages before it are complete, so a reader never meets a tag whose
/// objects are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Configs and layers, in any order.
    Blobs,
    /// Manifests then indexes by digest, children before parents.
    Manifests,
    /// The tags, pointing at the root.
    Tags,
}

/// An object an image needs under a repository.
#[derive(Debug, Clone)]
pub struct Needed<'a> {
    pub object: Object,
    pub bytes: Bytes<'a>,
    pub stage: Stage,
    /// The reference under `manifests/` (a digest or a tag), or the
    /// digest of a blob: the key's last part.
    pub name: String,
}

impl Needed<'_> {
    pub fn digest(&self) -> Option<&Digest> {
        self.object.digest.as_ref()
    }
}

/// The objects `image` needs as `repository` under `tags`, in order:
/// blobs, then manifests by digest (children before parents), then the
/// tags. The ping and the tag list depend on the rest of the tree: see
/// [`PING_KEY`] and [`tag_list`]. `None` when the image has no document.
pub fn image_objects<'a>(
    image: &'a Image,
    repository: &str,
    tags: &[String],
) -> Option<Vec<Needed<'a>>> {
    let root = image.root()?;
    let mut out = Vec::with_capacity(image.blobs.len() + image.documents.len() + tags.len());
    for b in &image.blobs {
        out.push(Needed {
            object: Object {
                key: blob_key(repository, &b.digest),
                content_type: BLOB_TYPE.to_owned(),
                digest: Some(b.digest.clone()),
                size: b.size,
                kind: Kind::Blob,
            },
            bytes: Bytes::Blob,
            stage: Stage::Blobs,
            name: b.digest.to_string(),
        });
    }
    let document = |d: &'a Document, reference: String, stage| Needed {
        object: Object {
            key: manifest_key(repository, &reference),
            content_type: d.media_type.as_str().to_owned(),
            digest: Some(d.digest.clone()),
            size: d.bytes.len() as u64,
            kind: Kind::Manifest,
        },
        bytes: Bytes::Document(d),
        stage,
        name: reference,
    };
    for d in &image.documents {
        out.push(document(d, d.digest.to_string(), Stage::Manifests));
    }
    for t in tags {
        out.push(document(root, t.clone(), Stage::Tags));
    }
    Some(out)
}

/// The ping object.
pub fn ping_object() -> Object {
    Object {
        key: PING_KEY.to_owned(),
        content_type: JSON_TYPE.to_owned(),
        digest: None,
        size: PING_BODY.len() as u64,
        kind: Kind::Ping,
    }
}

/// The tag list object of `repository` with `body` ([`tag_list`]).
pub fn tags_object(repository: &str, body: &[u8]) -> Object {
    Object {
        key: tags_list_key(repository),
        content_type: JSON_TYPE.to_owned(),
        digest: None,
        size: body.len() as u64,
        kind: Kind::Tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::MediaType;
    use crate::publish::source::BlobRef;

    #[test]
    fn an_image_needs_blobs_then_manifests_then_tags() {
        let doc = |b: &[u8], mt: &str| Document {
            digest: Digest::of(b),
            media_type: MediaType::new(mt),
            bytes: b.to_vec(),
            platform: None,
        };
        let m = doc(b"manifest", "application/vnd.oci.image.manifest.v1+json");
        let i = doc(b"index", "application/vnd.oci.image.index.v1+json");
        let layer = Digest::of(b"layer");
        let image = Image {
            layout: "l".into(),
            ref_name: None,
            blobs: vec![BlobRef {
                digest: layer.clone(),
                size: 5,
                media_type: MediaType::from("application/vnd.oci.image.layer.v1.tar+gzip"),
                path: "l/blobs/sha256/x".into(),
            }],
            documents: vec![m.clone(), i.clone()],
        };
        let tags = ["1.0".to_string(), "latest".to_string()];
        let needed = image_objects(&image, "team/app", &tags).unwrap();
        let keys: Vec<(&str, Stage, &str)> = needed
            .iter()
            .map(|n| {
                (
                    n.object.key.as_str(),
                    n.stage,
                    n.object.content_type.as_str(),
                )
            })
            .collect();
        let (mk, ik, lk) = (
            format!("v2/team/app/manifests/{}", m.digest),
            format!("v2/team/app/manifests/{}", i.digest),
            format!("v2/team/app/blobs/{layer}"),
        );
        assert_eq!(
            keys,
            [
                (lk.as_str(), Stage::Blobs, BLOB_TYPE),
                (
                    mk.as_str(),
                    Stage::Manifests,
                    "application/vnd.oci.image.manifest.v1+json"
                ),
                (
                    ik.as_str(),
                    Stage::Manifests,
                    "application/vnd.oci.image.index.v1+json"
                ),
                (
                    "v2/team/app/manifests/1.0",
                    Stage::Tags,
                    "application/vnd.oci.image.index.v1+json"
                ),
                (
                    "v2/team/app/manifests/latest",
                    Stage::Tags,
                    "application/vnd.oci.image.index.v1+json"
                ),
            ]
        );
        assert_eq!(needed[3].digest(), Some(&i.digest));
        assert_eq!(needed[3].object.size, 5);
        assert_eq!(
            tag_list("a", &tags.iter().cloned().collect()),
            br#"{"name":"a","tags":["1.0","latest"]}"#
        );
    }
}
