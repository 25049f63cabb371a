//! The image spec: the small, versioned JSON file that the Nix library's
//! `image` function produces (roots, image config, options; no tarballs).
//!
//! `nixoci build` treats a root that is such a file as "this image": it
//! images the spec's roots with the spec's config. Pure: parsing and
//! validation only.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::oci::image::RunConfig;
use crate::store_path::StorePath;

/// The spec version this nixoci reads and writes.
pub const SPEC_VERSION: u32 = 1;

/// The key that marks a JSON file as an image spec; its value is the version.
pub const SPEC_MARKER: &str = "nixociImageSpec";

/// The runtime config of an image, as the Nix library writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// An image spec, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    #[serde(rename = "nixociImageSpec")]
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub tag: Option<String>,
    pub roots: Vec<StorePath>,
    #[serde(default)]
    pub config: SpecConfig,
    #[serde(default)]
    pub max_layers: Option<usize>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub created: Option<String>,
}

/// Why bytes are not a usable image spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image spec is not valid JSON of the expected form")]
    Json(#[from] serde_json::Error),
    #[error(
        "image spec version {found} is not supported (this nixoci reads version {SPEC_VERSION})"
    )]
    Version { found: u64 },
    #[error("image spec '{0}' has no roots")]
    NoRoots(String),
    #[error("image spec '{name}': port '{port}' is not PORT/tcp, PORT/udp or PORT/sctp")]
    Port { name: String, port: String },
}

/// True when `bytes` look like a spec (a JSON object with the marker key),
/// whatever its version.
pub fn is_spec(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii_start();
    trimmed.starts_with(b"{")
        && serde_json::from_slice::<serde_json::Value>(trimmed)
            .is_ok_and(|v| v.get(SPEC_MARKER).is_some())
}

impl ImageSpec {
    /// Parses and validates a spec.
    pub fn parse(bytes: &[u8]) -> Result<ImageSpec, SpecError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        let found = value.get(SPEC_MARKER).and_then(|v| v.as_u64()).unwrap_or(0);
        if found != u64::from(SPEC_VERSION) {
            return Err(SpecError::Version { found });
        }
        let spec: ImageSpec = serde_json::from_value(value)?;
        if spec.roots.is_empty() {
            return Err(SpecError::NoRoots(spec.name));
        }
        for port in &spec.config.exposed_ports {
            let ok = match port.split_once('/') {
                Some((p, proto)) => {
                    p.parse::<u16>().is_ok_and(|n| n > 0) && ["tcp", "udp", "sctp"].contains(&proto)
                }
                None => port.parse::<u16>().is_ok_and(|n| n > 0),
            };
            if !ok {
                return Err(SpecError::Port {
                    name: spec.name.clone(),
                    port: port.clone(),
                });
            }
        }
        Ok(spec)
    }

    /// The OCI runtime config the spec asks for.
    pub fn run_config(&self) -> RunConfig {
        let c = &self.config;
        RunConfig {
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            env: c.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: c.working_dir.clone(),
            user: c.user.clone(),
            exposed_ports: c
                .exposed_ports
                .iter()
                .map(|p| {
                    if p.contains('/') {
                        p.clone()
                    } else {
                        format!("{p}/tcp")
                    }
                })
                .collect(),
            labels: c.labels.clone(),
            ..RunConfig::default()
        }
    }
}

/// What the command line sets for the whole image, overriding the specs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    pub tag: Option<&'a str>,
    pub created: Option<&'a str>,
    pub max_layers: Option<usize>,
}

/// What the image specs of an image's platforms say for the whole image,
/// where the command line does not say it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// The specs' one tag.
    pub tag: Option<String>,
    /// The specs' one creation time, as written there.
    pub created: Option<String>,
    /// The smallest of the specs' budgets.
    pub max_layers: Option<usize>,
    /// Every spec's annotations; for a key several set, the first spec's
    /// value (specs in platform order).
    pub annotations: BTreeMap<String, String>,
}

/// Why several image specs cannot make one image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("the image specs name different tags ({0}); choose one with --tag")]
    Tags(String),
    #[error("the image specs name different creation times ({0}); choose one with --created")]
    Created(String),
}

/// Merges the specs of one image's platforms (in platform order). A value
/// the command line overrides is not taken from the specs, so specs that
/// disagree on it are fine.
pub fn merge<'a>(
    specs: impl IntoIterator<Item = &'a ImageSpec>,
    overrides: Overrides,
) -> Result<Merged, MergeError> {
    let specs: Vec<&ImageSpec> = specs.into_iter().collect();
    let one = |values: BTreeSet<&String>, error: fn(String) -> MergeError| {
        let list = values.iter().map(|v| v.as_str()).collect::<Vec<_>>();
        match values.len() {
            0 | 1 => Ok(values.into_iter().next().cloned()),
            _ => Err(error(list.join(", "))),
        }
    };
    let tag = match overrides.tag {
        Some(_) => None,
        None => one(
            specs.iter().filter_map(|s| s.tag.as_ref()).collect(),
            MergeError::Tags,
        )?,
    };
    let created = match overrides.created {
        Some(_) => None,
        None => one(
            specs.iter().filter_map(|s| s.created.as_ref()).collect(),
            MergeError::Created,
        )?,
    };
    let max_layers = match overrides.max_layers {
        Some(_) => None,
        None => specs.iter().filter_map(|s| s.max_layers).min(),
    };
    let mut annotations = BTreeMap::new();
    for spec in &specs {
        for (k, v) in &spec.annotations {
            annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Ok(Merged {
        tag,
        created,
        max_layers,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello";

    #[test]
    fn parses_a_full_spec() {
        let text = format!(
            r#"{{"nixociImageSpec":1,"name":"hello","tag":"1.0","roots":["{ROOT}"],
               "config":{{"entrypoint":["{ROOT}/bin/hello"],"env":{{"B":"2","A":"1"}},"exposedPorts":["80","53/udp"]}},
               "maxLayers":20,"annotations":{{}},"created":null}}"#
        );
        assert!(is_spec(text.as_bytes()));
        let spec = ImageSpec::parse(text.as_bytes()).unwrap();
        assert_eq!(spec.max_layers, Some(20));
        let run = spec.run_config();
        assert_eq!(run.env, ["A=1", "B=2"]);
        assert_eq!(
            run.exposed_ports.into_iter().collect::<Vec<_>>(),
            ["53/udp", "80/tcp"]
        );
        assert_eq!(run.entrypoint.unwrap()[0], format!("{ROOT}/bin/hello"));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(!is_spec(b"#!/bin/sh\necho hi"));
        assert!(!is_spec(b"{\"other\": 1}"));
        let v2 = format!(r#"{{"nixociImageSpec":2,"name":"x","roots":["{ROOT}"]}}"#);
        assert!(matches!(
            ImageSpec::parse(v2.as_bytes()),
            Err(SpecError::Version { found: 2 })
        ));
        let none = r#"{"nixociImageSpec":1,"name":"x","roots":[]}"#;
        assert!(matches!(
            ImageSpec::parse(none.as_bytes()),
            Err(SpecError::NoRoots(_))
        ));
        let unknown = format!(r#"{{"nixociImageSpec":1,"name":"x","roots":["{ROOT}"],"typo":1}}"#);
        assert!(matches!(
            ImageSpec::parse(unknown.as_bytes()),
            Err(SpecError::Json(_))
        ));
        let port = format!(
            r#"{{"nixociImageSpec":1,"name":"x","roots":["{ROOT}"],"config":{{"exposedPorts":["http"]}}}}"#
        );
        assert!(matches!(
            ImageSpec::parse(port.as_bytes()),
            Err(SpecError::Port { .. })
        ));
    }

    fn spec(
        tag: Option<&str>,
        created: Option<&str>,
        max: Option<usize>,
        ann: &[(&str, &str)],
    ) -> ImageSpec {
        let mut spec = ImageSpec::parse(
            format!(r#"{{"nixociImageSpec":1,"name":"x","roots":["{ROOT}"]}}"#).as_bytes(),
        )
        .unwrap();
        spec.tag = tag.map(Into::into);
        spec.created = created.map(Into::into);
        spec.max_layers = max;
        spec.annotations = ann
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        spec
    }

    #[test]
    fn specs_merge_into_one_image() {
        let a = spec(
            Some("1.0"),
            Some("2024-01-01T00:00:00Z"),
            Some(20),
            &[("k", "a"), ("x", "1")],
        );
        let b = spec(Some("1.0"), None, Some(10), &[("k", "b"), ("y", "2")]);
        let merged = merge([&a, &b], Overrides::default()).unwrap();
        assert_eq!(merged.tag.as_deref(), Some("1.0"));
        assert_eq!(merged.created.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(merged.max_layers, Some(10));
        let ann: Vec<(&str, &str)> = merged
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(ann, [("k", "a"), ("x", "1"), ("y", "2")]);
        assert_eq!(merge([], Overrides::default()).unwrap(), Merged::default());
    }

    #[test]
    fn specs_that_disagree_need_the_command_line() {
        let a = spec(Some("1.0"), Some("2024-01-01T00:00:00Z"), None, &[]);
        let b = spec(Some("2.0"), Some("2025-01-01T00:00:00Z"), None, &[]);
        assert_eq!(
            merge([&a, &b], Overrides::default()),
            Err(MergeError::Tags("1.0, 2.0".into()))
        );
        let tag = Overrides {
            tag: Some("3.0"),
            ..Overrides::default()
        };
        let e = merge([&a, &b], tag).unwrap_err();
        assert_eq!(
            e,
            MergeError::Created("2024-01-01T00:00:00Z, 2025-01-01T00:00:00Z".into())
        );
        assert!(e.to_string().contains("choose one with --created"));
        let both = Overrides {
            tag: Some("3.0"),
            created: Some("1"),
            max_layers: Some(5),
        };
        let merged = merge([&a, &b], both).unwrap();
        assert_eq!(
            (merged.tag, merged.created, merged.max_layers),
            (None, None, None)
        );
    }
}
