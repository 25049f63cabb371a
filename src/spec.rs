//! The image spec: the small, versioned JSON file that the Nix library's
//! `image` function produces (roots, image config, options; no tarballs).
//!
//! `nixoci build` treats a root that is such a file as "this image": it
//! images the spec's roots with the spec's config. Pure: parsing and
//! validation only.

use std::collections::BTreeMap;

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
        }
    }
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
}
