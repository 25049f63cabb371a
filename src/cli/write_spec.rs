//! `nixoci write-spec`: the builder of the Nix library's `image`
//! derivation. Reads the spec from the derivation's structured attributes,
//! checks it, and writes it as canonical JSON to the derivation's output.

use std::path::PathBuf;

use anyhow::Context;

use super::UsageError;
use crate::oci::json::to_canonical_vec;
use crate::spec::ImageSpec;

/// Write an image spec: run as a derivation's builder with
/// `__structuredAttrs = true` and a `spec` attribute (see the Nix library's
/// `image`). Writes the checked spec as canonical JSON to `outputs.out`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// The structured attributes of the running derivation: the file named by
/// NIX_ATTRS_JSON_FILE, else `.attrs.json` in NIX_BUILD_TOP or the current
/// directory (as Nix 2.8 writes it).
pub fn read_structured_attrs() -> anyhow::Result<(PathBuf, serde_json::Value)> {
    let candidates: Vec<PathBuf> = [
        std::env::var_os("NIX_ATTRS_JSON_FILE").map(PathBuf::from),
        std::env::var_os("NIX_BUILD_TOP").map(|t| PathBuf::from(t).join(".attrs.json")),
        Some(PathBuf::from(".attrs.json")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let file = candidates.iter().find(|f| f.is_file()).ok_or_else(|| {
        UsageError(
            "no structured attributes: set NIX_ATTRS_JSON_FILE, or run as the builder of a derivation with __structuredAttrs = true".into(),
        )
    })?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| UsageError(format!("{}: not JSON ({e})", file.display())))?;
    Ok((file.clone(), value))
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let (file, attrs) = read_structured_attrs()?;
    let spec_value = attrs
        .get("spec")
        .ok_or_else(|| UsageError(format!("{}: no `spec` attribute", file.display())))?;
    let bytes = serde_json::to_vec(spec_value)?;
    let spec =
        ImageSpec::parse(&bytes).map_err(|e| UsageError(format!("the spec attribute: {e}")))?;
    let out = attrs["outputs"]["out"]
        .as_str()
        .ok_or_else(|| UsageError(format!("{}: no outputs.out", file.display())))?;
    let mut text = to_canonical_vec(&spec)?;
    text.push(b'\n');
    std::fs::write(out, text).with_context(|| format!("writing {out}"))?;
    Ok(())
}
