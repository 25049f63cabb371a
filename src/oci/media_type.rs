//! OCI and Docker media types: the strings, and [`MediaType`], which knows
//! an image index from a manifest (go-containerregistry's
//! `types.MediaType`).

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image configuration.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker's manifest list, read like an image index where layouts hold one.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's image manifest, read like an OCI manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A gzip-compressed tar layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A zstd-compressed tar layer.
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// An uncompressed tar layer.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The layer media types nixoci writes and reads.
pub const LAYER_MEDIA_TYPES: [&str; 3] = [MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD, MEDIA_TYPE_TAR];

/// The media type of a descriptor or document, as written: empty when a
/// descriptor names none.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MediaType(Cow<'static, str>);

impl MediaType {
    pub const INDEX: MediaType = MediaType(Cow::Borrowed(MEDIA_TYPE_INDEX));
    pub const MANIFEST: MediaType = MediaType(Cow::Borrowed(MEDIA_TYPE_MANIFEST));
    pub const CONFIG: MediaType = MediaType(Cow::Borrowed(MEDIA_TYPE_CONFIG));
    pub const DOCKER_LIST: MediaType = MediaType(Cow::Borrowed(MEDIA_TYPE_DOCKER_LIST));
    pub const DOCKER_MANIFEST: MediaType = MediaType(Cow::Borrowed(MEDIA_TYPE_DOCKER_MANIFEST));

    pub fn new(s: impl Into<String>) -> MediaType {
        MediaType(Cow::Owned(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An image index: OCI's, or Docker's manifest list.
    pub fn is_index(&self) -> bool {
        matches!(self.as_str(), MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST)
    }

    /// An image manifest: OCI's or Docker's.
    pub fn is_manifest(&self) -> bool {
        matches!(
            self.as_str(),
            MEDIA_TYPE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST
        )
    }

    /// One of the tar layer types nixoci writes ([`LAYER_MEDIA_TYPES`]).
    pub fn is_layer(&self) -> bool {
        LAYER_MEDIA_TYPES.contains(&self.as_str())
    }
}

impl From<&'static str> for MediaType {
    fn from(s: &'static str) -> MediaType {
        MediaType(Cow::Borrowed(s))
    }
}

impl From<String> for MediaType {
    fn from(s: String) -> MediaType {
        MediaType(Cow::Owned(s))
    }
}

impl PartialEq<str> for MediaType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MediaType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MediaType({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_indexes_manifests_and_layers() {
        // (media type, index, manifest, layer)
        let table = [
            (MEDIA_TYPE_INDEX, true, false, false),
            (MEDIA_TYPE_DOCKER_LIST, true, false, false),
            (MEDIA_TYPE_MANIFEST, false, true, false),
            (MEDIA_TYPE_DOCKER_MANIFEST, false, true, false),
            (MEDIA_TYPE_CONFIG, false, false, false),
            (MEDIA_TYPE_TAR_GZIP, false, false, true),
            (MEDIA_TYPE_TAR_ZSTD, false, false, true),
            (MEDIA_TYPE_TAR, false, false, true),
            ("application/vnd.in-toto+json", false, false, false),
            ("", false, false, false),
            // Parameters are not stripped: a document names its type exactly.
            (
                "application/vnd.oci.image.index.v1+json; x=1",
                false,
                false,
                false,
            ),
        ];
        for (s, index, manifest, layer) in table {
            let m = MediaType::new(s);
            assert_eq!(
                (m.is_index(), m.is_manifest(), m.is_layer()),
                (index, manifest, layer),
                "{s}"
            );
            assert_eq!(MediaType::from(s), m);
        }
        assert!(MediaType::default().is_empty());
        assert_eq!(MediaType::INDEX, MEDIA_TYPE_INDEX);
    }

    #[test]
    fn serialises_as_its_string() {
        let m: MediaType = serde_json::from_str(&format!("\"{MEDIA_TYPE_MANIFEST}\"")).unwrap();
        assert_eq!(m, MediaType::MANIFEST);
        assert_eq!(
            serde_json::to_string(&MediaType::CONFIG).unwrap(),
            format!("\"{MEDIA_TYPE_CONFIG}\"")
        );
        assert_eq!(m.to_string(), MEDIA_TYPE_MANIFEST);
    }
}
