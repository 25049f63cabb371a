//! OCI platforms and the Nix systems they come from.
//!
//! A platform is written `os/arch[/variant]` (`linux/arm64`, `linux/arm/v7`)
//! or as a Nix system (`aarch64-linux`). Both are normalised the way
//! containerd does it: `linux/arm64` is `linux/arm64/v8`, `linux/arm` is
//! `linux/arm/v7`. Pure.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A normalised OCI platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// Why a string names no platform we can build for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("unknown platform '{input}': expected os/arch[/variant] such as linux/amd64 or linux/arm/v7, or a Nix system such as aarch64-linux (known: {known})")]
    Unknown { input: String, known: String },
    #[error("unknown variant '{variant}' for {os}/{architecture} (known: {known})")]
    UnknownVariant {
        os: String,
        architecture: String,
        variant: String,
        known: String,
    },
}

/// Nix system, OCI architecture, default variant, accepted variants.
const TABLE: &[(&str, &str, Option<&str>, &[&str])] = &[
    ("x86_64-linux", "amd64", None, &["v1", "v2", "v3", "v4"]),
    ("aarch64-linux", "arm64", Some("v8"), &["v8", "v9"]),
    ("armv7l-linux", "arm", Some("v7"), &["v5", "v6", "v7"]),
    ("i686-linux", "386", None, &[]),
    ("riscv64-linux", "riscv64", None, &[]),
    ("powerpc64le-linux", "ppc64le", None, &[]),
    ("s390x-linux", "s390x", None, &[]),
];

/// Nix systems that map to a platform with a variant other than the default.
const EXTRA_SYSTEMS: &[(&str, &str, &str)] = &[
    ("armv6l-linux", "arm", "v6"),
    ("armv5tel-linux", "arm", "v5"),
];

fn known() -> String {
    let mut names: Vec<String> = TABLE
        .iter()
        .map(|(sys, arch, variant, _)| match variant {
            Some(v) => format!("linux/{arch}/{v} ({sys})"),
            None => format!("linux/{arch} ({sys})"),
        })
        .collect();
    names.extend(
        EXTRA_SYSTEMS
            .iter()
            .map(|(sys, arch, v)| format!("linux/{arch}/{v} ({sys})")),
    );
    names.join(", ")
}

impl Platform {
    /// The platform of a Nix system such as `aarch64-linux`.
    pub fn from_nix_system(system: &str) -> Option<Platform> {
        if let Some((_, arch, variant, _)) = TABLE.iter().find(|(s, ..)| *s == system) {
            return Some(Platform {
                os: "linux".into(),
                architecture: (*arch).into(),
                variant: variant.map(Into::into),
            });
        }
        EXTRA_SYSTEMS
            .iter()
            .find(|(s, ..)| *s == system)
            .map(|(_, arch, v)| Platform {
                os: "linux".into(),
                architecture: (*arch).into(),
                variant: Some((*v).into()),
            })
    }

    /// The Nix system that builds for this platform.
    pub fn nix_system(&self) -> Option<&'static str> {
        if let Some((sys, ..)) = EXTRA_SYSTEMS
            .iter()
            .find(|(_, arch, v)| *arch == self.architecture && Some(*v) == self.variant.as_deref())
        {
            return Some(sys);
        }
        TABLE
            .iter()
            .find(|(_, arch, ..)| *arch == self.architecture)
            .map(|(sys, ..)| *sys)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Some(p) = Platform::from_nix_system(input) {
            return Ok(p);
        }
        let unknown = || PlatformError::Unknown {
            input: input.to_owned(),
            known: known(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return Err(unknown()),
        };
        if os != "linux" {
            return Err(unknown());
        }
        let (_, arch, default_variant, variants) = TABLE
            .iter()
            .find(|(_, a, ..)| *a == arch)
            .ok_or_else(unknown)?;
        let variant = match variant {
            None => default_variant.map(str::to_owned),
            Some(v) if variants.contains(&v) => Some(v.to_owned()),
            Some(v) => {
                return Err(PlatformError::UnknownVariant {
                    os: os.into(),
                    architecture: (*arch).into(),
                    variant: v.into(),
                    known: if variants.is_empty() {
                        "none".into()
                    } else {
                        variants.join(", ")
                    },
                })
            }
        };
        Ok(Platform {
            os: os.into(),
            architecture: (*arch).into(),
            variant,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_systems_map_as_designed() {
        let table = [
            ("x86_64-linux", "linux/amd64"),
            ("aarch64-linux", "linux/arm64/v8"),
            ("armv7l-linux", "linux/arm/v7"),
            ("armv6l-linux", "linux/arm/v6"),
            ("i686-linux", "linux/386"),
            ("riscv64-linux", "linux/riscv64"),
            ("powerpc64le-linux", "linux/ppc64le"),
            ("s390x-linux", "linux/s390x"),
        ];
        for (system, platform) in table {
            let p: Platform = system.parse().unwrap();
            assert_eq!(p.to_string(), platform, "{system}");
            assert_eq!(p.nix_system(), Some(system), "{platform} back to {system}");
            let q: Platform = platform.parse().unwrap();
            assert_eq!(p, q, "{platform} parses to the same platform");
        }
    }

    #[test]
    fn normalises_like_containerd() {
        let cases = [
            ("linux/arm64", "linux/arm64/v8"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/amd64", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Platform>().unwrap().to_string(), want);
        }
    }

    #[test]
    fn rejects_unknown() {
        for bad in [
            "",
            "linux",
            "linux/",
            "windows/amd64",
            "linux/sparc",
            "x86_64-darwin",
            "linux/amd64/v3/x",
        ] {
            let err = bad.parse::<Platform>().unwrap_err();
            assert!(matches!(err, PlatformError::Unknown { .. }), "{bad}");
        }
        assert!(matches!(
            "linux/arm/v9".parse::<Platform>(),
            Err(PlatformError::UnknownVariant { .. })
        ));
        assert!(matches!(
            "linux/386/v2".parse::<Platform>(),
            Err(PlatformError::UnknownVariant { .. })
        ));
    }
}
