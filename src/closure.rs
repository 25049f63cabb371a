//! Closures: the graph of store paths an image holds, with sizes, NAR
//! hashes and references.
//!
//! Parses every JSON shape Nix and Lix print for `nix path-info --json
//! --recursive`, and the `exportReferencesGraph` list that a derivation with
//! `__structuredAttrs` receives. Pure: callers hand in bytes.
//!
//! The shapes of `nix path-info --json`, all accepted:
//!
//! - Nix 2.18 and older, and Lix: an array of objects with a `path` field and
//!   `narHash`, `narSize`, `references` (full store paths); an invalid path
//!   is `{"path": "…", "valid": false}`.
//! - Nix 2.19 to 2.32, and 2.33 with `--json-format 1`: an object keyed by
//!   full store path; an invalid path has the value `null`. 2.33 adds
//!   `version` and `storeDir` to each entry.
//! - Nix 2.33 with `--json-format 2`: a wrapper
//!   `{"version": 2, "storeDir": "/nix/store", "info": {…}}` whose `info` is
//!   keyed by store path base name (`HASH-NAME`); references are base names
//!   too. Source: the Nix 2.33.0 release notes ("Store path info JSON format
//!   changes", doc/manual/source/release-notes/rl-2.33.md) and the test data
//!   in NixOS/nix `src/libstore-tests/data/path-info/json-2/`, where
//!   `narHash` is an SRI string. Drafts of that change on Nix master (the
//!   rl-next note "JSON format changes for store path info and derivations")
//!   printed hashes as structured objects, `{"algorithm": "sha256",
//!   "format": "base16" | "base64", "hash": "…"}`; niks3, which reads this
//!   output in production, accepts both (Mic92/niks3 `client/hash.go`). So
//!   do we.
//!
//! NAR hashes come as SRI (`sha256-<base64>`), `sha256:<nix32>`,
//! `sha256:<base16>`, `sha256:<base64>` or a structured object; all are
//! normalised to SRI. Only SHA-256 is accepted: it is the only NAR hash
//! algorithm Nix has ever used.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store_path::{StoreDir, StorePath, StorePathError, NIX_BASE32_ALPHABET};

/// Version of the JSON form of [`Closure`].
pub const CLOSURE_VERSION: u32 = 1;

/// One store path and what Nix knows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    pub path: StorePath,
    /// The NAR hash in SRI form, `sha256-<base64>`, whatever form Nix printed.
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
}

impl PathInfo {
    /// The NAR hash as Nix's database stores it, `sha256:<base16>`
    /// (lowercase). [`PathInfo::nar_hash`] is SRI when parsed by this
    /// module, but any form Nix prints is accepted, since a `Closure` can
    /// also be deserialized from its own JSON.
    pub fn nar_hash_base16(&self) -> Result<String, ClosureError> {
        let sri = sri_nar_hash(self.path.as_str(), &Value::String(self.nar_hash.clone()))?;
        let digest = sri.strip_prefix("sha256-").unwrap_or(&sri);
        let bytes = base64_decode(digest).map_err(|reason| ClosureError::BadNarHash {
            path: self.path.to_string(),
            hash: self.nar_hash.clone(),
            reason,
        })?;
        let mut out = String::with_capacity("sha256:".len() + 2 * bytes.len());
        out.push_str("sha256:");
        for b in bytes {
            out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
            out.push(char::from(HEX_DIGITS[usize::from(b & 0xf)]));
        }
        Ok(out)
    }
}

/// A set of store paths closed under references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Closure {
    pub version: u32,
    pub store_dir: StoreDir,
    pub paths: BTreeMap<StorePath, PathInfo>,
}

/// Why JSON could not be read as a closure.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error("closure JSON is malformed")]
    Json(#[from] serde_json::Error),
    #[error("closure JSON has an unexpected shape: {0}")]
    Shape(String),
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    #[error("{path} has a reference that is not a store path of this store")]
    Reference {
        path: String,
        #[source]
        source: StorePathError,
    },
    #[error("closure JSON is for the store directory {found}, not {expected}")]
    StoreDir { expected: String, found: String },
    #[error("{path}: unsupported NAR hash '{hash}'")]
    NarHash { path: String, hash: String },
    #[error("{path}: malformed NAR hash '{hash}': {reason}")]
    BadNarHash {
        path: String,
        hash: String,
        reason: String,
    },
    #[error("{0} is not valid in the Nix store")]
    Invalid(String),
    #[error("{path} refers to {reference}, which is not in the closure")]
    Dangling { path: String, reference: String },
    #[error("{0} is not in the closure")]
    MissingRoot(String),
}

impl Closure {
    /// Parses the output of `nix path-info --json --recursive`, in any shape
    /// (see the module documentation).
    pub fn from_path_info_json(store_dir: &StoreDir, json: &[u8]) -> Result<Closure, ClosureError> {
        parse(store_dir, json, Shape::PathInfo)
    }

    /// Parses a closure file of any shape, with the parser its shape calls
    /// for, so that an error is that parser's: an object with `outputs` is a
    /// `.attrs.json` (every derivation has outputs; no store path is called
    /// so), another object is `nix path-info` output (Nix 2.19+, Lix), and
    /// a list is an `exportReferencesGraph` list or older `nix path-info`
    /// output (the same entries).
    pub fn from_any_json(store_dir: &StoreDir, json: &[u8]) -> Result<Closure, ClosureError> {
        parse(store_dir, json, Shape::Any)
    }

    /// Parses an `exportReferencesGraph` list from `__structuredAttrs`.
    ///
    /// Takes the list itself, or the whole `.attrs.json` object when exactly
    /// one of its attributes holds such a list (a non-empty list of objects
    /// with a `path`).
    pub fn from_references_graph_json(
        store_dir: &StoreDir,
        json: &[u8],
    ) -> Result<Closure, ClosureError> {
        parse(store_dir, json, Shape::Graph)
    }

    /// The closure of `roots` within this graph. Complete by construction:
    /// every reference of a path taken is taken, or the error names it.
    pub fn subclosure(&self, roots: &[StorePath]) -> Result<Closure, ClosureError> {
        let reached = self.reached(roots)?;
        Ok(Closure {
            version: CLOSURE_VERSION,
            store_dir: self.store_dir.clone(),
            paths: reached
                .into_iter()
                .map(|p| (p.clone(), self.paths[p].clone()))
                .collect(),
        })
    }

    /// [`Closure::subclosure`], keeping this graph's entries instead of
    /// copying them (a closure of 100,000 paths is about 100 MB).
    pub fn into_subclosure(mut self, roots: &[StorePath]) -> Result<Closure, ClosureError> {
        let reached: BTreeSet<StorePath> = self.reached(roots)?.into_iter().cloned().collect();
        if reached.len() < self.paths.len() {
            self.paths.retain(|p, _| reached.contains(p));
        }
        self.version = CLOSURE_VERSION;
        Ok(self)
    }

    /// The paths `roots` reach.
    fn reached(&self, roots: &[StorePath]) -> Result<BTreeSet<&StorePath>, ClosureError> {
        let mut reached = BTreeSet::new();
        let mut todo: Vec<&StorePath> = roots.iter().collect();
        while let Some(p) = todo.pop() {
            let (key, info) = self
                .paths
                .get_key_value(p)
                .ok_or_else(|| ClosureError::MissingRoot(p.to_string()))?;
            if reached.insert(key) {
                todo.extend(info.references.iter());
            }
        }
        Ok(reached)
    }

    /// Checks that every reference is in the closure.
    pub fn check_complete(&self) -> Result<(), ClosureError> {
        for info in self.paths.values() {
            for r in &info.references {
                if !self.paths.contains_key(r) {
                    return Err(ClosureError::Dangling {
                        path: info.path.to_string(),
                        reference: r.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Which closure files a parser takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `nix path-info --json --recursive`: a list, or an object keyed by path.
    PathInfo,
    /// `exportReferencesGraph`: a list, or a `.attrs.json` object holding one.
    Graph,
    /// Either, told apart by shape ([`Closure::from_any_json`]).
    Any,
}

fn parse(store_dir: &StoreDir, json: &[u8], shape_of: Shape) -> Result<Closure, ClosureError> {
    let value: Value = serde_json::from_slice(json)?;
    let entries = match (&value, shape_of) {
        (Value::Array(list), _) => {
            let what = match shape_of {
                Shape::PathInfo => "path-info",
                Shape::Graph => "exportReferencesGraph",
                Shape::Any => "closure",
            };
            entries_of_list(list, what)?
        }
        (Value::Object(attrs), Shape::Graph) => {
            entries_of_list(graph_list_in_attrs(attrs)?, "exportReferencesGraph")?
        }
        (Value::Object(attrs), Shape::Any) if attrs.contains_key("outputs") => {
            entries_of_list(graph_list_in_attrs(attrs)?, "exportReferencesGraph")?
        }
        (Value::Object(object), _) => entries_of_path_info_object(store_dir, object)?,
        (other, _) => {
            let expected = match shape_of {
                Shape::PathInfo => "an array or an object",
                Shape::Graph => "an exportReferencesGraph list or a .attrs.json object",
                Shape::Any => {
                    "an exportReferencesGraph list, a .attrs.json object or nix path-info output"
                }
            };
            return Err(shape(format!("expected {expected}, found {}", kind(other))));
        }
    };
    closure_from_entries(store_dir, entries)
}

/// One entry as Nix printed it: the path (full or base name) and its fields,
/// or `None` when Nix said the path is not valid.
struct RawEntry<'a> {
    path: &'a str,
    fields: Option<&'a Map<String, Value>>,
}

fn shape(message: String) -> ClosureError {
    ClosureError::Shape(message)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Entries of the array shape: objects with a `path`, maybe `"valid": false`.
fn entries_of_list<'a>(list: &'a [Value], what: &str) -> Result<Vec<RawEntry<'a>>, ClosureError> {
    let mut entries = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let fields = item
            .as_object()
            .ok_or_else(|| shape(format!("{what} entry {i} is {}, not an object", kind(item))))?;
        let path = fields
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| shape(format!("{what} entry {i} has no \"path\" string")))?;
        let valid = match fields.get("valid") {
            None | Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => false,
            Some(other) => {
                return Err(shape(format!(
                    "\"valid\" of {path} is {}, not a boolean",
                    kind(other)
                )))
            }
        };
        entries.push(RawEntry {
            path,
            fields: valid.then_some(fields),
        });
    }
    Ok(entries)
}

/// Entries of the object shapes: keyed by path, or wrapped in `info`.
fn entries_of_path_info_object<'a>(
    store_dir: &StoreDir,
    object: &'a Map<String, Value>,
) -> Result<Vec<RawEntry<'a>>, ClosureError> {
    // No store path, full or base name, is called `info`: this is the
    // `--json-format 2` wrapper. Other wrapper fields are metadata; Nix
    // promises that adding fields is not a breaking change.
    if let Some(info) = object.get("info") {
        let info = info
            .as_object()
            .ok_or_else(|| shape(format!("\"info\" is {}, not an object", kind(info))))?;
        check_store_dir(store_dir, object.get("storeDir"))?;
        return entries_of_map(store_dir, info);
    }
    entries_of_map(store_dir, object)
}

fn entries_of_map<'a>(
    store_dir: &StoreDir,
    map: &'a Map<String, Value>,
) -> Result<Vec<RawEntry<'a>>, ClosureError> {
    let mut entries = Vec::with_capacity(map.len());
    for (key, value) in map {
        match value {
            Value::Null => entries.push(RawEntry {
                path: key,
                fields: None,
            }),
            Value::Object(fields) => entries.push(RawEntry {
                path: key,
                fields: Some(fields),
            }),
            // Metadata next to the paths, as Nix 2.33 may print it.
            Value::String(_) if key == "storeDir" => check_store_dir(store_dir, Some(value))?,
            Value::Number(_) if key == "version" => {}
            other => {
                return Err(shape(format!(
                    "the value of \"{key}\" is {}, not an object or null",
                    kind(other)
                )))
            }
        }
    }
    Ok(entries)
}

/// A `storeDir` field, where Nix prints one, must be ours.
fn check_store_dir(store_dir: &StoreDir, value: Option<&Value>) -> Result<(), ClosureError> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(found)) if found == store_dir.as_str() => Ok(()),
        Some(Value::String(found)) => Err(ClosureError::StoreDir {
            expected: store_dir.to_string(),
            found: found.clone(),
        }),
        Some(other) => Err(shape(format!(
            "\"storeDir\" is {}, not a string",
            kind(other)
        ))),
    }
}

/// A store path printed in full, or as a base name (`--json-format 2`).
fn resolve(store_dir: &StoreDir, printed: &str) -> Result<StorePath, StorePathError> {
    if printed.contains('/') {
        store_dir.parse(printed)
    } else {
        store_dir.parse(&format!("{store_dir}/{printed}"))
    }
}

fn closure_from_entries(
    store_dir: &StoreDir,
    entries: Vec<RawEntry<'_>>,
) -> Result<Closure, ClosureError> {
    let mut paths = BTreeMap::new();
    for entry in entries {
        let path = resolve(store_dir, entry.path)?;
        let Some(fields) = entry.fields else {
            return Err(ClosureError::Invalid(path.to_string()));
        };
        let info = path_info(store_dir, path, fields)?;
        match paths.entry(info.path.clone()) {
            Entry::Vacant(slot) => {
                slot.insert(info);
            }
            Entry::Occupied(slot) if slot.get() == &info => {}
            Entry::Occupied(_) => {
                return Err(shape(format!(
                    "{} is listed twice, with different information",
                    info.path
                )))
            }
        }
    }
    let closure = Closure {
        version: CLOSURE_VERSION,
        store_dir: store_dir.clone(),
        paths,
    };
    closure.check_complete()?;
    Ok(closure)
}

fn path_info(
    store_dir: &StoreDir,
    path: StorePath,
    fields: &Map<String, Value>,
) -> Result<PathInfo, ClosureError> {
    check_store_dir(store_dir, fields.get("storeDir"))?;
    let nar_hash = match fields.get("narHash") {
        None | Some(Value::Null) => return Err(shape(format!("{path} has no narHash"))),
        Some(hash) => sri_nar_hash(path.as_str(), hash)?,
    };
    let nar_size = fields
        .get("narSize")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            shape(format!(
                "{path} has no narSize that is a non-negative integer"
            ))
        })?;
    let printed_references = fields
        .get("references")
        .and_then(Value::as_array)
        .ok_or_else(|| shape(format!("{path} has no references list")))?;
    let mut references = BTreeSet::new();
    for r in printed_references {
        let r = r
            .as_str()
            .ok_or_else(|| shape(format!("{path} has a reference that is {}", kind(r))))?;
        let r = resolve(store_dir, r).map_err(|source| ClosureError::Reference {
            path: path.to_string(),
            source,
        })?;
        references.insert(r);
    }
    Ok(PathInfo {
        path,
        nar_hash,
        nar_size,
        references,
    })
}

/// Bytes of a SHA-256 digest.
const SHA256_LEN: usize = 32;

/// The SRI form of a NAR hash printed in any form Nix uses.
fn sri_nar_hash(path: &str, value: &Value) -> Result<String, ClosureError> {
    let printed = || match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let bad = |reason: String| ClosureError::BadNarHash {
        path: path.to_owned(),
        hash: printed(),
        reason,
    };
    let (algorithm, format, digest) = match value {
        Value::String(s) => {
            // `algo-base64` (SRI) or `algo:digest`, whichever separator
            // comes first: neither occurs in an algorithm name, and no
            // digest encoding uses '-' or ':'.
            match s.find(['-', ':']) {
                Some(i) if s[i..].starts_with('-') => (&s[..i], Some("sri"), &s[i + 1..]),
                Some(i) => (&s[..i], None, &s[i + 1..]),
                None => return Err(bad("no algorithm prefix".to_owned())),
            }
        }
        Value::Object(fields) => {
            let field = |name: &str| fields.get(name).and_then(Value::as_str);
            let algorithm =
                field("algorithm").ok_or_else(|| bad("no \"algorithm\" string".to_owned()))?;
            let digest = field("hash").ok_or_else(|| bad("no \"hash\" string".to_owned()))?;
            // An SRI-formatted digest may repeat the algorithm.
            let digest = digest
                .strip_prefix(algorithm)
                .and_then(|d| d.strip_prefix('-'))
                .unwrap_or(digest);
            (algorithm, field("format"), digest)
        }
        other => return Err(bad(format!("{} is not a hash", kind(other)))),
    };
    if algorithm != "sha256" {
        return Err(ClosureError::NarHash {
            path: path.to_owned(),
            hash: printed(),
        });
    }
    let format = match format {
        Some(format) => format,
        // How Nix itself tells `algo:digest` encodings apart: by length.
        None => match digest.len() {
            64 => "base16",
            52 => "nix32",
            44 => "base64",
            n => return Err(bad(format!("{n} characters is no SHA-256 digest length"))),
        },
    };
    let bytes = match format {
        "base16" => hex_decode(digest),
        "nix32" | "base32" => nix32_decode(digest, SHA256_LEN),
        "base64" | "sri" => base64_decode(digest),
        other => Err(format!("unknown hash format '{other}'")),
    }
    .map_err(bad)?;
    if bytes.len() != SHA256_LEN {
        return Err(bad(format!(
            "{} bytes, a SHA-256 digest has {SHA256_LEN}",
            bytes.len()
        )));
    }
    Ok(format!("sha256-{}", base64_encode(&bytes)))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("'{}' is not a hexadecimal digit", c as char)),
    };
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hexadecimal digits".to_owned());
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Nix's base-32 ("nix32"): the last character holds the lowest five bits
/// of the first byte, and so on, little-endian, read from the end.
fn nix32_decode(s: &str, len: usize) -> Result<Vec<u8>, String> {
    if s.len() != (len * 8).div_ceil(5) {
        return Err(format!(
            "{} nix32 characters, {len} bytes take {}",
            s.len(),
            (len * 8).div_ceil(5)
        ));
    }
    let mut out = vec![0u8; len];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = NIX_BASE32_ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("'{}' is not a nix32 digit", c as char))?;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        // At most 10 significant bits: a low byte and a carry.
        let shifted = (digit as u16) << j;
        let overflow = || "the value does not fit the digest".to_owned();
        *out.get_mut(i).ok_or_else(overflow)? |= (shifted & 0xff) as u8;
        let carry = (shifted >> 8) as u8;
        if carry != 0 {
            *out.get_mut(i + 1).ok_or_else(overflow)? |= carry;
        }
    }
    Ok(out)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(
                    BASE64_ALPHABET[(n >> (18 - 6 * k) & 0x3f) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; only the canonical encoding is accepted, so
/// decoding and encoding again gives the same text.
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err("base64 length is not a multiple of 4".to_owned());
    }
    let padding = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return Err("too much base64 padding".to_owned());
    }
    let body = &bytes[..bytes.len() - padding];
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in body {
        let v = BASE64_ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("'{}' is not a base64 digit", c as char))?;
        acc = (acc << 6 | v as u32) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    if acc & ((1 << bits) - 1) != 0 {
        return Err("non-canonical base64: stray bits after the last byte".to_owned());
    }
    Ok(out)
}

/// The list in a `.attrs.json` object: the one attribute holding a
/// non-empty list of objects with a `path`.
fn graph_list_in_attrs(attrs: &Map<String, Value>) -> Result<&Vec<Value>, ClosureError> {
    let is_graph = |list: &Vec<Value>| {
        !list.is_empty()
            && list
                .iter()
                .all(|item| item.get("path").is_some_and(Value::is_string))
    };
    let mut graphs: BTreeMap<&str, &Vec<Value>> = attrs
        .iter()
        .filter_map(|(key, value)| match value {
            Value::Array(list) if is_graph(list) => Some((key.as_str(), list)),
            _ => None,
        })
        .collect();
    if graphs.len() == 1 {
        if let Some((_, list)) = graphs.pop_first() {
            return Ok(list);
        }
    }
    if graphs.is_empty() {
        let keys: BTreeSet<&str> = attrs.keys().map(String::as_str).collect();
        return Err(shape(format!(
            "no attribute holds an exportReferencesGraph list (attributes: {})",
            keys.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Err(shape(format!(
        "attributes {} all hold exportReferencesGraph lists; pass one of them",
        graphs.keys().copied().collect::<Vec<_>>().join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    const APP: &str = "/nix/store/h4yvppml6j07lw1lmsh6z8x8y5drv493-nixoci-fixture-app";
    const LIB: &str = "/nix/store/in1vmjqhx09bfq0v68dpskwccf0wgpf2-nixoci-fixture-lib";
    const BUSYBOX: &str = "/nix/store/zpya58m9bxib49ddjq6jdk22xiy6219w-busybox";
    const NOPE: &str = "/nix/store/00000000000000000000000000000000-nope";

    /// The NAR hashes of the fixture paths in the forms Nix prints, from
    /// `nix hash to-sri`, `to-base16` and `to-base32` of Nix 2.8.
    const HASHES: [(&str, &str, &str); 3] = [
        (
            "sha256-NTYkaUID074EzDSWBhDU4HVo5MubI1PI26vNyX+agHI=",
            "353624694203d3be04cc34960610d4e07568e4cb9b2353c8dbabcdc97f9a8072",
            "0wl0k9zwkkdbvg4568wvrgj6hxg0sh80d5ilrh2bxlq389lj8dim",
        ),
        (
            "sha256-+5dCUWRZvxhgYxeMkOjR7naGQyV75SvE3mnFDxuhwaE=",
            "fb9742516459bf186063178c90e8d1ee768643257be52bc4de69c50f1ba1c1a1",
            "18f1l4dhzib9vv22prbv4m1qcxpfs7l9130pcdh1igsrci8l55zv",
        ),
        (
            "sha256-36z96Dp02Lyu9YNktiYz7mhMi5cNCOjh9Pwz4MUpDeE=",
            "dfacfde83a74d8bcaef58364b62633ee684c8b970d08e8e1f4fc33e0c5290de1",
            "1q8d572y0czwykhyh20djy5lqs7f6ckbcr43ynpbrn3l7blgvb6z",
        ),
    ];

    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                &include_bytes!(concat!("../tests/fixtures/path-info/", $name))[..],
            )
        };
    }

    fn dir() -> StoreDir {
        StoreDir::default()
    }

    fn sp(path: &str) -> StorePath {
        dir().parse(path).unwrap()
    }

    /// The closure every fixture describes.
    fn expected() -> Closure {
        let entries = [
            (APP, HASHES[0].0, 632, vec![APP, LIB, BUSYBOX]),
            (LIB, HASHES[1].0, 512, vec![BUSYBOX]),
            (BUSYBOX, HASHES[2].0, 1982760, vec![]),
        ];
        let paths = entries
            .into_iter()
            .map(|(path, hash, size, refs)| {
                let info = PathInfo {
                    path: sp(path),
                    nar_hash: hash.to_owned(),
                    nar_size: size,
                    references: refs.into_iter().map(sp).collect(),
                };
                (sp(path), info)
            })
            .collect();
        Closure {
            version: CLOSURE_VERSION,
            store_dir: dir(),
            paths,
        }
    }

    fn path_info(json: &[u8]) -> Result<Closure, ClosureError> {
        Closure::from_path_info_json(&dir(), json)
    }

    fn graph(json: &[u8]) -> Result<Closure, ClosureError> {
        Closure::from_references_graph_json(&dir(), json)
    }

    /// A one-path path-info array with the given NAR hash.
    fn with_hash(hash: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!([
            {"path": BUSYBOX, "narHash": hash, "narSize": 1, "references": []}
        ]))
        .unwrap()
    }

    #[test]
    fn every_shape_parses_to_the_same_closure() {
        let path_info_fixtures = [
            fixture!("nix-2.8-array.json"),
            fixture!("lix-array.json"),
            fixture!("nix-2.19-object.json"),
            fixture!("nix-2.33-json-format-1.json"),
            fixture!("nix-2.33-json-format-2.json"),
            fixture!("nix-newest-structured.json"),
        ];
        for (name, json) in path_info_fixtures {
            let closure = path_info(json).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(closure, expected(), "{name}");
        }

        // The whole `.attrs.json`, as captured, and the list alone.
        let (name, attrs) = fixture!("export-references-graph.json");
        assert_eq!(graph(attrs).unwrap(), expected(), "{name}");
        let attrs: Value = serde_json::from_slice(attrs).unwrap();
        let list = serde_json::to_vec(&attrs["closure"]).unwrap();
        assert_eq!(graph(&list).unwrap(), expected(), "{name}, closure only");
    }

    #[test]
    fn nar_hash_base16_is_the_database_form() {
        for (sri, hex, nix32) in HASHES {
            for form in [
                sri.to_owned(),
                format!("sha256:{nix32}"),
                format!("sha256:{}", hex.to_uppercase()),
            ] {
                let info = PathInfo {
                    path: sp(BUSYBOX),
                    nar_hash: form.clone(),
                    nar_size: 1,
                    references: BTreeSet::new(),
                };
                assert_eq!(
                    info.nar_hash_base16().unwrap(),
                    format!("sha256:{hex}"),
                    "{form}"
                );
            }
        }
        for bad in ["sha512-AAAA", "sha256-AAAA", "nonsense"] {
            let info = PathInfo {
                path: sp(BUSYBOX),
                nar_hash: bad.to_owned(),
                nar_size: 1,
                references: BTreeSet::new(),
            };
            assert!(info.nar_hash_base16().is_err(), "{bad}");
        }
    }

    #[test]
    fn nar_hash_forms_are_equivalent() {
        for (sri, hex, nix32) in HASHES {
            let base64 = sri.strip_prefix("sha256-").unwrap();
            let structured = |format: Option<&str>, hash: &str| {
                let mut v = serde_json::json!({"algorithm": "sha256", "hash": hash});
                if let Some(f) = format {
                    v["format"] = f.into();
                }
                v
            };
            let forms = [
                Value::from(sri),
                Value::from(format!("sha256:{nix32}")),
                Value::from(format!("sha256:{hex}")),
                Value::from(format!("sha256:{}", hex.to_uppercase())),
                Value::from(format!("sha256:{base64}")),
                structured(Some("base16"), hex),
                structured(Some("nix32"), nix32),
                structured(Some("base32"), nix32),
                structured(Some("base64"), base64),
                structured(Some("sri"), sri),
                structured(Some("sri"), base64),
                structured(None, hex),
                structured(None, nix32),
            ];
            for form in forms {
                let closure =
                    path_info(&with_hash(form.clone())).unwrap_or_else(|e| panic!("{form}: {e:?}"));
                assert_eq!(closure.paths[&sp(BUSYBOX)].nar_hash, sri, "{form}");
            }
        }
    }

    #[test]
    fn nar_hash_errors() {
        let sha512 = format!("sha512-{}", "A".repeat(86) + "==");
        let unsupported = [
            Value::from(sha512),
            Value::from("md5:0123456789abcdef0123456789abcdef"),
            Value::from(format!(
                "blake3-{}",
                HASHES[0].0.strip_prefix("sha256-").unwrap()
            )),
            serde_json::json!({"algorithm": "sha1", "format": "base16", "hash": "00"}),
        ];
        for hash in unsupported {
            let err = path_info(&with_hash(hash.clone())).unwrap_err();
            assert!(
                matches!(err, ClosureError::NarHash { .. }),
                "{hash}: {err:?}"
            );
        }
        let nix32 = HASHES[0].2;
        let malformed = [
            Value::from(HASHES[0].1),                        // no algorithm
            Value::from(format!("sha256:{}", &nix32[1..])),  // 51 characters
            Value::from(format!("sha256:e{}", &nix32[1..])), // 'e' is not nix32
            Value::from(format!("sha256:z{}", &nix32[1..])), // more than 256 bits
            Value::from(format!("sha256:{}g", &HASHES[0].1[1..])),
            Value::from("sha256-NTYkaUID074EzDSWBhDU4HVo5MubI1PI26vNyX+agHJ="), // stray bits
            Value::from("sha256-NTYkaUID074EzDSWBhDU4HVo5MubI1PI26vNyX+agHI"),  // no padding
            Value::from("sha256-AAAA"),                                         // 3 bytes
            serde_json::json!({"algorithm": "sha256", "format": "base58", "hash": "x"}),
            serde_json::json!({"algorithm": "sha256", "format": "base16"}),
            serde_json::json!(42),
        ];
        for hash in malformed {
            let err = path_info(&with_hash(hash.clone())).unwrap_err();
            assert!(
                matches!(&err, ClosureError::BadNarHash { path, .. } if path == BUSYBOX),
                "{hash}: {err:?}"
            );
        }
    }

    #[test]
    fn invalid_paths() {
        let fixtures = [
            fixture!("invalid-array.json"),
            fixture!("invalid-object.json"),
            fixture!("invalid-structured.json"),
        ];
        for (name, json) in fixtures {
            match path_info(json) {
                Err(ClosureError::Invalid(path)) => assert_eq!(path, NOPE, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        let json = format!(r#"[{{"path": "{NOPE}", "valid": false}}]"#);
        assert!(matches!(graph(json.as_bytes()), Err(ClosureError::Invalid(p)) if p == NOPE));
    }

    #[test]
    fn rejects_bad_graphs() {
        let lib_only = format!(
            r#"{{"{LIB}": {{"narHash": "{}", "narSize": 1, "references": ["{BUSYBOX}"]}}}}"#,
            HASHES[1].0
        );
        match path_info(lib_only.as_bytes()) {
            Err(ClosureError::Dangling { path, reference }) => {
                assert_eq!((path.as_str(), reference.as_str()), (LIB, BUSYBOX));
            }
            other => panic!("{other:?}"),
        }

        let gnu = "/gnu/store/zpya58m9bxib49ddjq6jdk22xiy6219w-busybox";
        let outside_ref = format!(
            r#"[{{"path": "{LIB}", "narHash": "{}", "narSize": 1, "references": ["{gnu}"]}}]"#,
            HASHES[1].0
        );
        match path_info(outside_ref.as_bytes()) {
            Err(ClosureError::Reference {
                path,
                source: StorePathError::OutsideStore { .. },
            }) => assert_eq!(path, LIB),
            other => panic!("{other:?}"),
        }

        let outside_path = format!(
            r#"[{{"path": "{gnu}", "narHash": "{}", "narSize": 1, "references": []}}]"#,
            HASHES[2].0
        );
        assert!(matches!(
            path_info(outside_path.as_bytes()),
            Err(ClosureError::StorePath(StorePathError::OutsideStore { .. }))
        ));

        // A real closure read against another store directory.
        let gnu_dir = StoreDir::new("/gnu/store").unwrap();
        let (_, json) = fixture!("nix-2.8-array.json");
        assert!(matches!(
            Closure::from_path_info_json(&gnu_dir, json),
            Err(ClosureError::StorePath(StorePathError::OutsideStore { .. }))
        ));
        let (_, json) = fixture!("nix-2.33-json-format-2.json");
        match Closure::from_path_info_json(&gnu_dir, json) {
            Err(ClosureError::StoreDir { expected, found }) => {
                assert_eq!(
                    (expected.as_str(), found.as_str()),
                    ("/gnu/store", "/nix/store")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_json() {
        let busybox = |fields: &str| format!(r#"[{{"path": "{BUSYBOX}"{fields}}}]"#);
        let hash = format!(r#", "narHash": "{}""#, HASHES[2].0);
        for json in ["[{", "", "[1,]"] {
            let err = path_info(json.as_bytes()).unwrap_err();
            assert!(matches!(err, ClosureError::Json(_)), "{json}: {err:?}");
        }
        let shapes = [
            "42".to_owned(),
            "[42]".to_owned(),
            r#"[{"narSize": 1}]"#.to_owned(),
            format!(r#"{{"{BUSYBOX}": 3}}"#),
            r#"{"info": []}"#.to_owned(),
            busybox(r#", "valid": "yes""#),
            busybox(r#", "narSize": 1, "references": []"#),
            busybox(&format!(r#"{hash}, "references": []"#)),
            busybox(&format!(r#"{hash}, "narSize": -1, "references": []"#)),
            busybox(&format!(r#"{hash}, "narSize": 1"#)),
            busybox(&format!(r#"{hash}, "narSize": 1, "references": [1]"#)),
            format!(
                r#"[{{"path": "{BUSYBOX}"{hash}, "narSize": 1, "references": []}},
                    {{"path": "{BUSYBOX}"{hash}, "narSize": 2, "references": []}}]"#
            ),
        ];
        for json in shapes {
            let err = path_info(json.as_bytes()).unwrap_err();
            assert!(matches!(err, ClosureError::Shape(_)), "{json}: {err:?}");
        }
        // Listed twice, identically: as `nix path-info` of overlapping roots
        // might, harmless.
        let twice = format!(
            r#"[{{"path": "{BUSYBOX}"{hash}, "narSize": 1, "references": []}},
                {{"path": "{BUSYBOX}"{hash}, "narSize": 1, "references": []}}]"#
        );
        assert_eq!(path_info(twice.as_bytes()).unwrap().paths.len(), 1);
    }

    /// Every fixture reads the same through the parser chosen by shape,
    /// and a broken file gets the error of the parser its shape calls for.
    #[test]
    fn any_shape_reads_with_its_own_parser() {
        for (name, json) in [
            fixture!("nix-2.8-array.json"),
            fixture!("lix-array.json"),
            fixture!("nix-2.19-object.json"),
            fixture!("nix-2.33-json-format-1.json"),
            fixture!("nix-2.33-json-format-2.json"),
            fixture!("nix-newest-structured.json"),
        ] {
            let any = Closure::from_any_json(&dir(), json);
            assert_eq!(any.ok(), path_info(json).ok(), "{name}");
        }
        let (_, attrs) = fixture!("export-references-graph.json");
        assert_eq!(
            Closure::from_any_json(&dir(), attrs).unwrap(),
            graph(attrs).unwrap()
        );
        // A .attrs.json whose graph entry is broken: the graph parser's
        // error, not the path-info parser's.
        let mut broken: Value = serde_json::from_slice(attrs).unwrap();
        broken["closure"][0]["narSize"] = Value::String("big".into());
        let e = Closure::from_any_json(&dir(), &serde_json::to_vec(&broken).unwrap()).unwrap_err();
        let g = graph(&serde_json::to_vec(&broken).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), g.to_string());
        let mut no_graph = serde_json::from_slice::<Value>(attrs).unwrap();
        no_graph.as_object_mut().unwrap().remove("closure");
        let e =
            Closure::from_any_json(&dir(), &serde_json::to_vec(&no_graph).unwrap()).unwrap_err();
        assert!(e.to_string().contains("exportReferencesGraph"), "{e}");
    }

    #[test]
    fn attrs_json_needs_exactly_one_graph() {
        let (_, attrs) = fixture!("export-references-graph.json");
        let attrs: Value = serde_json::from_slice(attrs).unwrap();

        let mut none = attrs.clone();
        none.as_object_mut().unwrap().remove("closure");
        match graph(&serde_json::to_vec(&none).unwrap()) {
            Err(ClosureError::Shape(message)) => {
                assert!(
                    message.contains("builder, exportReferencesGraph, name"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }

        let mut two = attrs.clone();
        two["again"] = attrs["closure"].clone();
        match graph(&serde_json::to_vec(&two).unwrap()) {
            Err(ClosureError::Shape(message)) => {
                assert!(message.contains("again, closure"), "{message}");
            }
            other => panic!("{other:?}"),
        }

        // The path-info object shapes are not graph lists.
        let (_, json) = fixture!("nix-2.19-object.json");
        assert!(matches!(graph(json), Err(ClosureError::Shape(_))));
    }

    #[test]
    fn error_messages_follow_house_style() {
        let (_, invalid) = fixture!("invalid-array.json");
        let errors = [
            path_info(b"[{").unwrap_err(),
            path_info(b"42").unwrap_err(),
            path_info(invalid).unwrap_err(),
            path_info(&with_hash(Value::from("md5:00"))).unwrap_err(),
            path_info(&with_hash(Value::from("sha256:00"))).unwrap_err(),
        ];
        for err in errors {
            let message = err.to_string();
            assert!(!message.ends_with('.'), "{message}");
            assert!(!message.starts_with(char::is_uppercase), "{message}");
        }
    }

    /// Nix's encoder, `printHash32`, for the round trip below.
    fn nix32_encode(bytes: &[u8]) -> String {
        let len = (bytes.len() * 8).div_ceil(5);
        (0..len)
            .rev()
            .map(|n| {
                let (i, j) = (n * 5 / 8, n * 5 % 8);
                let low = bytes[i] >> j;
                let high = bytes
                    .get(i + 1)
                    .map_or(0, |b| b.checked_shl(8 - j as u32).unwrap_or(0));
                char::from(NIX_BASE32_ALPHABET[((low | high) & 0x1f) as usize])
            })
            .collect()
    }

    #[test]
    fn codecs_match_real_nix_output() {
        for (sri, hex, nix32) in HASHES {
            let bytes = hex_decode(hex).unwrap();
            assert_eq!(nix32_decode(nix32, SHA256_LEN).unwrap(), bytes);
            assert_eq!(nix32_encode(&bytes), nix32);
            assert_eq!(format!("sha256-{}", base64_encode(&bytes)), sri);
        }
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64_encode(bytes), text);
            assert_eq!(base64_decode(text).unwrap(), bytes);
        }
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn nix32_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(nix32_decode(&nix32_encode(&bytes), SHA256_LEN).unwrap(), bytes.to_vec());
        }
    }
}
