//! Installables: what a user names an image's contents with. A store path
//! (`/nix/store/…-hello`), a flake output (`.#hello`, `path:./x#hello`,
//! `github:owner/repo#hello`), or with `--file FILE` an attribute path of
//! FILE's value (`hello`, `pkgs.hello`), as `nix build -f` reads them.
//! Pure: parsing and the attribute paths Nix would try, nothing is
//! evaluated here.

use std::fmt;

use crate::store_path::{StoreDir, StorePath, StorePathError};

/// A store path or a flake reference with an attribute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Installable {
    StorePath(StorePath),
    Flake {
        flake_ref: String,
        attr: String,
    },
    /// An attribute path of the `--file` expression's value.
    Attr(String),
}

/// Why a string is not an installable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallableError {
    #[error("'{0}' is empty: expected a store path or a flake output such as .#hello")]
    Empty(String),
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    #[error("'{input}' is an absolute path outside the store directory {store_dir}: name a store path, or a flake as path:{input}#ATTR")]
    OutsideStore { input: String, store_dir: String },
    #[error("'{0}' has an empty attribute after '#'")]
    EmptyAttr(String),
}

impl Installable {
    /// Parses `input` as `nix build` does: with `file` (`--file FILE`),
    /// anything but a store path is an attribute path of FILE's value;
    /// without it, a flake output.
    pub fn parse_with(
        input: &str,
        store_dir: &StoreDir,
        file: bool,
    ) -> Result<Installable, InstallableError> {
        if !file || input.starts_with('/') {
            return Installable::parse(input, store_dir);
        }
        if input.is_empty() {
            return Err(InstallableError::Empty(input.to_owned()));
        }
        Ok(Installable::Attr(input.to_owned()))
    }

    /// Parses `input`. Absolute paths without `#` must be store paths; a
    /// flake reference without `#` means its `default` output, as in Nix.
    pub fn parse(input: &str, store_dir: &StoreDir) -> Result<Installable, InstallableError> {
        if input.is_empty() {
            return Err(InstallableError::Empty(input.to_owned()));
        }
        if input.starts_with('/') && !input.contains('#') {
            return match store_dir.parse(input) {
                Ok(p) => Ok(Installable::StorePath(p)),
                Err(StorePathError::OutsideStore { .. }) => Err(InstallableError::OutsideStore {
                    input: input.to_owned(),
                    store_dir: store_dir.to_string(),
                }),
                Err(e) => Err(e.into()),
            };
        }
        let (flake_ref, attr) = match input.split_once('#') {
            Some((r, a)) => (r, a),
            None => (input, "default"),
        };
        if attr.is_empty() {
            return Err(InstallableError::EmptyAttr(input.to_owned()));
        }
        Ok(Installable::Flake {
            flake_ref: if flake_ref.is_empty() {
                ".".to_owned()
            } else {
                flake_ref.to_owned()
            },
            attr: attr.to_owned(),
        })
    }

    /// The attribute paths Nix tries for `system`, in order: an attribute
    /// with a dot is taken as written, otherwise `packages.SYSTEM.ATTR` then
    /// `legacyPackages.SYSTEM.ATTR`.
    pub fn attr_paths(attr: &str, system: &str) -> Vec<String> {
        if attr.contains('.') {
            vec![attr.to_owned()]
        } else {
            vec![
                format!("packages.{system}.{attr}"),
                format!("legacyPackages.{system}.{attr}"),
            ]
        }
    }
}

impl fmt::Display for Installable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Installable::StorePath(p) => write!(f, "{p}"),
            Installable::Flake { flake_ref, attr } => write!(f, "{flake_ref}#{attr}"),
            Installable::Attr(attr) => write!(f, "{attr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let dir = StoreDir::default();
        let sp = "/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello";
        assert!(matches!(
            Installable::parse(sp, &dir),
            Ok(Installable::StorePath(_))
        ));
        let cases = [
            (".#hello", ".", "hello"),
            ("#hello", ".", "hello"),
            ("path:./x#hello", "path:./x", "hello"),
            ("github:o/r#a.b", "github:o/r", "a.b"),
            (".", ".", "default"),
            ("/home/me/proj#app", "/home/me/proj", "app"),
        ];
        for (input, r, a) in cases {
            assert_eq!(
                Installable::parse(input, &dir).unwrap(),
                Installable::Flake {
                    flake_ref: r.into(),
                    attr: a.into()
                },
                "{input}"
            );
        }
        assert!(matches!(
            Installable::parse("/etc", &dir),
            Err(InstallableError::OutsideStore { .. })
        ));
        assert!(matches!(
            Installable::parse(".#", &dir),
            Err(InstallableError::EmptyAttr(_))
        ));
        assert!(matches!(
            Installable::parse("", &dir),
            Err(InstallableError::Empty(_))
        ));
        assert!(matches!(
            Installable::parse("/nix/store/short-x", &dir),
            Err(InstallableError::StorePath(_))
        ));
    }

    #[test]
    fn with_a_file_attributes_are_its_own() {
        let dir = StoreDir::default();
        let sp = "/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello";
        assert!(matches!(
            Installable::parse_with(sp, &dir, true),
            Ok(Installable::StorePath(_))
        ));
        for attr in ["hello", "pkgs.hello", ".#hello"] {
            assert_eq!(
                Installable::parse_with(attr, &dir, true).unwrap(),
                Installable::Attr(attr.into())
            );
        }
        assert!(matches!(
            Installable::parse_with("/etc", &dir, true),
            Err(InstallableError::OutsideStore { .. })
        ));
        assert!(matches!(
            Installable::parse_with("", &dir, true),
            Err(InstallableError::Empty(_))
        ));
        assert_eq!(
            Installable::parse_with("hello", &dir, false).unwrap(),
            Installable::parse("hello", &dir).unwrap()
        );
    }

    #[test]
    fn attr_paths_follow_nix() {
        assert_eq!(
            Installable::attr_paths("hello", "aarch64-linux"),
            [
                "packages.aarch64-linux.hello",
                "legacyPackages.aarch64-linux.hello"
            ]
        );
        assert_eq!(
            Installable::attr_paths("packages.x86_64-linux.hello", "aarch64-linux"),
            ["packages.x86_64-linux.hello"]
        );
    }
}
