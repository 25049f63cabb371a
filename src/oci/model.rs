//! The documents every reader of an image sees, typed: descriptors, image
//! indexes, manifests and the parts of an image configuration nixoci
//! reads, whether the image is in a layout or a registry. Pure: bytes in,
//! values out, and [`check`] of a blob against its descriptor.
//!
//! The model reads what the OCI image spec and Docker's schema 2 write
//! and is lenient where real images differ: a descriptor's `mediaType`
//! and `size` may be missing (`MediaType` empty, `size` `None`), and a
//! reader that needs them says so ([`Descriptor::complete`]). Fields
//! nixoci does not read are ignored.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::media_type::MediaType;
use super::{Digest, DigestWriter};

/// A document that is not what it should be: `what` names it (`manifest
/// sha256:…`), `problem` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {problem}")]
pub struct Invalid {
    pub what: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(what: impl Into<String>, problem: impl Into<String>) -> Invalid {
        Invalid {
            what: what.into(),
            problem: problem.into(),
        }
    }
}

/// Parses the document `what` (`image index sha256:…`, `index.json`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Invalid> {
    serde_json::from_slice(bytes).map_err(|e| {
        let problem = if e.is_data() {
            e.to_string()
        } else {
            format!("not valid JSON ({e})")
        };
        Invalid::new(what, problem)
    })
}

/// The platform of an image index's entry (or of a config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/architecture[/variant]`, when both are there.
    pub fn name(&self) -> Option<String> {
        let (os, arch) = (self.os.as_deref()?, self.architecture.as_deref()?);
        Some(match &self.variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        })
    }
}

/// A descriptor: what an index, a manifest or `index.json` says of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawDescriptor")]
pub struct Descriptor {
    /// Empty when the descriptor names none.
    #[serde(skip_serializing_if = "MediaType::is_empty")]
    pub media_type: MediaType,
    pub digest: Digest,
    /// `None` when the descriptor says none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A descriptor as written, before its digest is checked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<u64>,
    platform: Option<Platform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl TryFrom<RawDescriptor> for Descriptor {
    type Error = String;

    fn try_from(raw: RawDescriptor) -> Result<Descriptor, String> {
        let digest = raw
            .digest
            .ok_or("a descriptor has no digest")?
            .parse::<Digest>()
            .map_err(|e| e.to_string())?;
        Ok(Descriptor {
            media_type: raw.media_type.map(MediaType::from).unwrap_or_default(),
            digest,
            size: raw.size,
            platform: raw.platform,
            annotations: raw.annotations.unwrap_or_default(),
        })
    }
}

impl Descriptor {
    pub fn new(media_type: impl Into<MediaType>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size: Some(size),
            platform: None,
            annotations: BTreeMap::new(),
        }
    }

    /// The size, for readers that need a complete descriptor: one with a
    /// media type and a size.
    pub fn complete(&self) -> Result<u64, &'static str> {
        if self.media_type.is_empty() {
            return Err("a descriptor has no mediaType");
        }
        self.size.ok_or("a descriptor has no size")
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// Checks a blob's size (known before it is read, as a file's) against
    /// the descriptor's, when it says one.
    pub fn check_size(&self, found: u64) -> Result<(), Mismatch> {
        match self.size {
            Some(expected) if expected != found => Err(Mismatch::Size { expected, found }),
            _ => Ok(()),
        }
    }

    /// Checks `bytes` against the descriptor: digest (what the content
    /// is), then size (what the descriptor says of it).
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<(), Mismatch> {
        self.check_digest(Digest::of(bytes))?;
        self.check_size(bytes.len() as u64)
    }

    /// Checks a blob hashed on its way (its digest and length) against
    /// the descriptor: digest, then size.
    pub fn check_hashed(&self, found: Digest, len: u64) -> Result<(), Mismatch> {
        self.check_digest(found)?;
        self.check_size(len)
    }

    fn check_digest(&self, found: Digest) -> Result<(), Mismatch> {
        if found == self.digest {
            Ok(())
        } else {
            Err(Mismatch::Digest {
                expected: self.digest.clone(),
                found,
            })
        }
    }
}

/// A blob that is not what its descriptor says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("has {found} bytes, expected {expected}")]
    Size { expected: u64, found: u64 },
    #[error("hashes to {found}")]
    Digest { expected: Digest, found: Digest },
}

/// Why [`check`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    #[error("cannot be read ({0})")]
    Read(io::Error),
}

/// Checks the blob read from `blob` against `d`, streaming: its digest,
/// then its size (when `d` says one). A reader that knows the size first
/// (a file's) checks it first with [`Descriptor::check_size`].
pub fn check(blob: impl Read, d: &Descriptor) -> Result<(), CheckError> {
    let mut w = DigestWriter::new(io::sink());
    let mut blob = blob;
    io::copy(&mut blob, &mut w).map_err(CheckError::Read)?;
    let (_, found, len) = w.finish();
    d.check_digest(found)?;
    d.check_size(len)?;
    Ok(())
}

/// An image index (or Docker manifest list), and a layout's `index.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<MediaType>,
    /// `None` when the document has no `manifests` array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<MediaType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    /// `None` when the document has no `layers` array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// The config descriptor; `what` names the manifest.
    pub fn config(&self, what: &str) -> Result<&Descriptor, Invalid> {
        self.config
            .as_ref()
            .ok_or_else(|| Invalid::new(what, "no config"))
    }

    /// The layer descriptors; `what` names the manifest.
    pub fn layers(&self, what: &str) -> Result<&[Descriptor], Invalid> {
        self.layers
            .as_deref()
            .ok_or_else(|| Invalid::new(what, "no layers array"))
    }
}

/// What nixoci reads of an image configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
}

impl ImageConfig {
    /// The platform the config names.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// A config's `rootfs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_ids: Option<Vec<String>>,
}

/// One entry of a config's `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

/// A layout's `oci-layout` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutFile {
    #[serde(
        default,
        rename = "imageLayoutVersion",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<String>,
}

/// A value as JSON in a message: `"amd64"`, or `null` when absent.
pub fn json_text(v: Option<&str>) -> String {
    serde_json::to_string(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::media_type::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
    use super::*;

    #[test]
    fn descriptors_parse_leniently_and_name_what_is_missing() {
        let d = Digest::of(b"x");
        let full: Descriptor = parse(
            format!(
                r#"{{"mediaType":"{MEDIA_TYPE_MANIFEST}","digest":"{d}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}},"annotations":{{"a":"b"}},"urls":[]}}"#
            )
            .as_bytes(),
            "t",
        )
        .unwrap();
        assert!(full.media_type.is_manifest());
        assert_eq!(full.complete(), Ok(3));
        assert_eq!(full.annotation("a"), Some("b"));
        assert_eq!(
            full.platform.as_ref().and_then(Platform::name).as_deref(),
            Some("linux/arm64/v8")
        );

        let bare: Descriptor = parse(format!(r#"{{"digest":"{d}"}}"#).as_bytes(), "t").unwrap();
        assert!(bare.media_type.is_empty());
        assert_eq!(bare.complete(), Err("a descriptor has no mediaType"));
        let no_size = Descriptor {
            media_type: MEDIA_TYPE_INDEX.into(),
            ..bare.clone()
        };
        assert_eq!(no_size.complete(), Err("a descriptor has no size"));

        let e = parse::<Descriptor>(br#"{"size":1}"#, "manifest m").unwrap_err();
        assert_eq!(e.what, "manifest m");
        assert!(e.problem.starts_with("a descriptor has no digest"), "{e}");
        let e = parse::<Descriptor>(br#"{"digest":"md5:00"}"#, "m").unwrap_err();
        assert!(e.problem.contains("is not a sha256 digest"), "{e}");
        let e = parse::<Descriptor>(b"{", "m").unwrap_err();
        assert!(e.problem.starts_with("not valid JSON ("), "{e}");
    }

    #[test]
    fn documents_say_what_they_lack() {
        let m: Manifest = parse(br#"{"schemaVersion":2}"#, "manifest m").unwrap();
        assert_eq!(m.schema_version, Some(2));
        assert_eq!(
            m.layers("manifest m").unwrap_err().to_string(),
            "manifest m: no layers array"
        );
        assert_eq!(
            m.config("manifest m").unwrap_err().to_string(),
            "manifest m: no config"
        );
        let i: Index = parse(br#"{"schemaVersion":2,"manifests":[]}"#, "i").unwrap();
        assert_eq!(i.manifests, Some(Vec::new()));
        let c: ImageConfig = parse(
            br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["sha256:0"]},"history":[{"comment":"c"},{"empty_layer":true}],"config":{"Env":["A=1"]}}"#,
            "c",
        )
        .unwrap();
        assert_eq!(c.platform().name().as_deref(), Some("linux/amd64"));
        assert_eq!(c.rootfs.unwrap().diff_ids.unwrap().len(), 1);
        assert_eq!(c.history.unwrap()[1].empty_layer, Some(true));
        assert_eq!(json_text(Some("a")), "\"a\"");
        assert_eq!(json_text(None), "null");
    }

    #[test]
    fn check_names_a_size_or_digest_mismatch() {
        let d = Descriptor::new(MEDIA_TYPE_MANIFEST, Digest::of(b"hello"), 5);
        assert!(d.check_bytes(b"hello").is_ok());
        assert!(check(&b"hello"[..], &d).is_ok());
        let short = Descriptor {
            size: Some(4),
            ..d.clone()
        };
        assert_eq!(
            short.check_bytes(b"hello"),
            Err(Mismatch::Size {
                expected: 4,
                found: 5
            })
        );
        assert_eq!(
            short.check_size(5),
            Err(Mismatch::Size {
                expected: 4,
                found: 5
            })
        );
        assert_eq!(
            d.check_bytes(b"jello"),
            Err(Mismatch::Digest {
                expected: d.digest.clone(),
                found: Digest::of(b"jello")
            })
        );
        match check(&b"jello"[..], &d) {
            Err(CheckError::Mismatch(Mismatch::Digest { found, .. })) => {
                assert_eq!(found, Digest::of(b"jello"))
            }
            other => panic!("{other:?}"),
        }
        // Other content is a digest mismatch, whatever its size.
        let e = check(&b"hi"[..], &d).unwrap_err();
        assert_eq!(e.to_string(), format!("hashes to {}", Digest::of(b"hi")));
        let e = check(&b"hello"[..], &short).unwrap_err();
        assert_eq!(e.to_string(), "has 5 bytes, expected 4");
        // Without a size, only the digest is checked.
        let unsized_d = Descriptor { size: None, ..d };
        assert!(unsized_d.check_bytes(b"hello").is_ok());
        assert!(unsized_d.check_bytes(b"hell").is_err());
    }
}
