//! Nix store paths: parsing, validation and ordering.
//!
//! A store path is `STORE_DIR/HASH-NAME`, where `HASH` is 32 characters of
//! Nix's base-32 alphabet and `NAME` is what the derivation was called. The
//! store directory is a value (usually `/nix/store`), never a constant: tests
//! and chroot stores use others. Pure: no file is touched here.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The alphabet of Nix's base-32 encoding (no `e`, `o`, `u`, `t`).
pub const NIX_BASE32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the hash part of a store path's base name.
pub const HASH_LEN: usize = 32;

/// Longest name Nix accepts after the hash part.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("store directory '{0}' must be an absolute path without a trailing slash")]
    BadStoreDir(String),
    #[error("'{path}' is not in the store directory {store_dir}")]
    OutsideStore { path: String, store_dir: String },
    #[error(
        "'{path}' is inside a store path, not a store path itself (did you mean {store_path}?)"
    )]
    Nested { path: String, store_path: String },
    #[error("'{0}' has no valid hash part (32 characters of Nix base-32 before a '-')")]
    BadHash(String),
    #[error("'{0}' has an invalid name after its hash part")]
    BadName(String),
}

/// The directory holding store paths, such as `/nix/store`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StoreDir(String);

impl StoreDir {
    /// Validates an absolute, normalised directory path.
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        let ok = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && dir
                .split('/')
                .skip(1)
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if ok {
            Ok(StoreDir(dir.to_owned()))
        } else {
            Err(StorePathError::BadStoreDir(dir.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses `path` as a store path directly in this store directory.
    pub fn parse(&self, path: &str) -> Result<StorePath, StorePathError> {
        let rest = path
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::OutsideStore {
                path: path.to_owned(),
                store_dir: self.0.clone(),
            })?;
        let rest = rest.trim_end_matches('/');
        if let Some((base, _)) = rest.split_once('/') {
            // Say which store path the user probably meant, if that one is valid.
            let store_path = format!("{}/{}", self.0, base);
            return match validate_base(base) {
                Ok(()) => Err(StorePathError::Nested {
                    path: path.to_owned(),
                    store_path,
                }),
                Err(e) => Err(e.with_path(path)),
            };
        }
        validate_base(rest).map_err(|e| e.with_path(path))?;
        Ok(StorePath {
            full: format!("{}/{}", self.0, rest),
            base_start: self.0.len() + 1,
        })
    }
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".to_owned())
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StoreDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StoreDir::new(&s).map_err(serde::de::Error::custom)
    }
}

impl StorePathError {
    fn with_path(self, path: &str) -> Self {
        match self {
            StorePathError::BadHash(_) => StorePathError::BadHash(path.to_owned()),
            StorePathError::BadName(_) => StorePathError::BadName(path.to_owned()),
            other => other,
        }
    }
}

/// What each byte may be in a store path's base name: bit 0 a hash
/// character (nix-base32), bit 1 a name character (letters, digits and
/// `+-._?=`). A table, since every path of a closure, and every reference,
/// is checked.
const BASE_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < NIX_BASE32_ALPHABET.len() {
        table[NIX_BASE32_ALPHABET[i] as usize] |= 1;
        i += 1;
    }
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            table[b] |= 2;
        }
        b += 1;
    }
    let extra = b"+-._?=";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] |= 2;
        i += 1;
    }
    table
};

/// Checks `HASH-NAME`.
fn validate_base(base: &str) -> Result<(), StorePathError> {
    let bytes = base.as_bytes();
    if bytes.len() < HASH_LEN + 2
        || bytes[HASH_LEN] != b'-'
        || !bytes[..HASH_LEN]
            .iter()
            .all(|&b| BASE_BYTES[usize::from(b)] & 1 != 0)
    {
        return Err(StorePathError::BadHash(base.to_owned()));
    }
    let name = &base[HASH_LEN + 1..];
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(|b| BASE_BYTES[usize::from(b)] & 2 != 0);
    if name_ok {
        Ok(())
    } else {
        Err(StorePathError::BadName(base.to_owned()))
    }
}

/// A validated store path, such as `/nix/store/0c0k…-hello-2.12`.
///
/// Paths order by their full string, which within one store directory is the
/// order of their hash parts: the order Nix itself lists them in.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    full: String,
    base_start: usize,
}

impl StorePath {
    /// Parses an absolute store path, taking its parent as the store directory.
    pub fn from_absolute(path: &str) -> Result<Self, StorePathError> {
        let trimmed = path.trim_end_matches('/');
        let (dir, _) = trimmed
            .rsplit_once('/')
            .ok_or_else(|| StorePathError::BadHash(path.to_owned()))?;
        let dir = StoreDir::new(dir).map_err(|_| StorePathError::BadHash(path.to_owned()))?;
        dir.parse(trimmed)
    }

    /// The whole path, `/nix/store/HASH-NAME`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `HASH-NAME`.
    pub fn base_name(&self) -> &str {
        &self.full[self.base_start..]
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.base_name()[..HASH_LEN]
    }

    /// The name after the hash part.
    pub fn name(&self) -> &str {
        &self.base_name()[HASH_LEN + 1..]
    }

    /// The directory this path lives in, without trailing slash.
    pub fn store_dir(&self) -> &str {
        &self.full[..self.base_start - 1]
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.full)
    }
}

impl Serialize for StorePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StorePath::from_absolute(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_says_what_the_alphabets_say() {
        for b in 0..=255u8 {
            let hash = NIX_BASE32_ALPHABET.contains(&b);
            let name = b.is_ascii_alphanumeric() || b"+-._?=".contains(&b);
            assert_eq!(BASE_BYTES[usize::from(b)] & 1 != 0, hash, "{b}");
            assert_eq!(BASE_BYTES[usize::from(b)] & 2 != 0, name, "{b}");
        }
    }

    const H: &str = "0c0k4d1yzn1s3f0gqfrz3yvchpnsbbnj";

    #[test]
    fn parses_valid_paths() {
        let dir = StoreDir::default();
        let p = dir.parse(&format!("/nix/store/{H}-hello-2.12")).unwrap();
        assert_eq!(p.hash_part(), H);
        assert_eq!(p.name(), "hello-2.12");
        assert_eq!(p.base_name(), format!("{H}-hello-2.12"));
        assert_eq!(p.store_dir(), "/nix/store");
        // A trailing slash is what shells complete; accept it.
        let q = dir.parse(&format!("/nix/store/{H}-hello-2.12/")).unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn rejects_bad_paths() {
        let dir = StoreDir::default();
        type Check = fn(&StorePathError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("/usr/bin/hello", |e| {
                matches!(e, StorePathError::OutsideStore { .. })
            }),
            ("/nix/storefoo/x", |e| {
                matches!(e, StorePathError::OutsideStore { .. })
            }),
            ("relative/path", |e| {
                matches!(e, StorePathError::OutsideStore { .. })
            }),
            ("/nix/store/short-hello", |e| {
                matches!(e, StorePathError::BadHash(_))
            }),
            // 'e' is not in the alphabet.
            ("/nix/store/ec0k4d1yzn1s3f0gqfrz3yvchpnsbbnj-x", |e| {
                matches!(e, StorePathError::BadHash(_))
            }),
            ("/nix/store/0c0k4d1yzn1s3f0gqfrz3yvchpnsbbnj-", |e| {
                matches!(e, StorePathError::BadHash(_))
            }),
            ("/nix/store/0c0k4d1yzn1s3f0gqfrz3yvchpnsbbnj-a b", |e| {
                matches!(e, StorePathError::BadName(_))
            }),
            ("/nix/store/0c0k4d1yzn1s3f0gqfrz3yvchpnsbbnj-..", |e| {
                matches!(e, StorePathError::BadName(_))
            }),
            ("/nix/store/0c0k4d1yzn1s3f0gqfrz3yvchpnsbbnj-x/bin/x", |e| {
                matches!(e, StorePathError::Nested { .. })
            }),
        ];
        for (input, check) in cases {
            let err = dir.parse(input).unwrap_err();
            assert!(check(&err), "{input}: unexpected {err:?}");
            assert!(err.to_string().contains(input), "{err} names the input");
        }
        let long = format!("/nix/store/{H}-{}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(matches!(dir.parse(&long), Err(StorePathError::BadName(_))));
    }

    #[test]
    fn store_dirs() {
        assert!(StoreDir::new("/gnu/store").is_ok());
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix/../store",
            "/nix//store",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
        let p = StorePath::from_absolute(&format!("/gnu/store/{H}-x")).unwrap();
        assert_eq!(p.store_dir(), "/gnu/store");
    }

    #[test]
    fn orders_by_hash_part() {
        let dir = StoreDir::default();
        let a = dir
            .parse("/nix/store/00000000000000000000000000000000-zzz")
            .unwrap();
        let b = dir
            .parse("/nix/store/11111111111111111111111111111111-aaa")
            .unwrap();
        assert!(a < b);
    }

    #[test]
    fn serde_round_trip() {
        let p = StorePath::from_absolute(&format!("/nix/store/{H}-x")).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"/nix/store/{H}-x\""));
        let back: StorePath = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<StorePath>("\"/etc/passwd\"").is_err());
    }
}
