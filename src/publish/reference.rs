//! Image references of the distribution API, `REGISTRY/NAME[:TAG]`, and the
//! grammars of repository names and tags. Pure.
//!
//! The grammars are the distribution spec's, and they are also what keeps
//! a name or tag from escaping a URL path or a directory: a valid name has
//! no empty, `.` or `..` component and no leading `/`, a valid tag has no
//! `/` at all and never starts with `.`.

use std::fmt;
use std::net::IpAddr;

use crate::oci::Digest;

/// How Docker Hub is written in references and credential files.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Why a string is not a usable reference, name or tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("'{0}': expected REGISTRY/NAME[:TAG], such as registry.example.org/app:1.0")]
    Empty(String),
    #[error(
        "'{reference}': registry '{registry}' is not a host name or address with an optional :port"
    )]
    Registry { reference: String, registry: String },
    #[error("'{reference}': '{name}' is not a valid repository name (lowercase letters and digits separated by '.', '_', '__' or dashes, components joined by '/')")]
    Name { reference: String, name: String },
    #[error("'{reference}': '{tag}' is not a valid tag (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')")]
    Tag { reference: String, tag: String },
    #[error("'{0}': a digest is not a destination; give a tag")]
    Digest(String),
    #[error("'{reference}': '{digest}' is not a sha256 digest (sha256: followed by 64 lowercase hex digits)")]
    BadDigest { reference: String, digest: String },
}

/// A registry, a repository in it and maybe a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
}

impl Reference {
    /// Parses `[docker://]REGISTRY/NAME[:TAG]`. Like Docker, a first
    /// component without `.` or `:` that is not `localhost` is part of the
    /// name on Docker Hub, where one-component names live in `library/`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let reference = s.to_owned();
        let s = s.strip_prefix("docker://").unwrap_or(s);
        if s.is_empty() {
            return Err(ReferenceError::Empty(reference));
        }
        if s.contains('@') {
            return Err(ReferenceError::Digest(reference));
        }
        let (registry, remainder) = match s.split_once('/') {
            Some((first, rest)) if names_registry(first) => (first.to_owned(), rest),
            _ => (DOCKER_HUB.to_owned(), s),
        };
        if !valid_registry(&registry) {
            return Err(ReferenceError::Registry {
                reference,
                registry,
            });
        }
        let last = remainder.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match remainder[last..].rfind(':') {
            Some(i) => (
                &remainder[..last + i],
                Some(remainder[last + i + 1..].to_owned()),
            ),
            None => (remainder, None),
        };
        let name = if registry == DOCKER_HUB && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        };
        if !valid_repository(&name) {
            return Err(ReferenceError::Name { reference, name });
        }
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Tag {
                    reference,
                    tag: t.clone(),
                });
            }
        }
        Ok(Reference {
            registry,
            repository: name,
            tag,
        })
    }

    /// Parses `[docker://]REGISTRY/NAME[:TAG][@sha256:HEX]`, an image to
    /// read: with a digest, the digest is what is fetched, and a tag only
    /// names it for people.
    pub fn parse_with_digest(s: &str) -> Result<(Reference, Option<Digest>), ReferenceError> {
        let Some((name, digest)) = s.split_once('@') else {
            return Ok((Reference::parse(s)?, None));
        };
        let digest = digest
            .parse::<Digest>()
            .map_err(|_| ReferenceError::BadDigest {
                reference: s.to_owned(),
                digest: digest.to_owned(),
            })?;
        Ok((Reference::parse(name)?, Some(digest)))
    }

    /// The host (and port) that serves the registry API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// True for `localhost`, 127.0.0.0/8 and `[::1]`: plain HTTP is allowed
    /// there without `--insecure`.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

/// True when the first component of a reference (before its first `/`)
/// is a registry rather than part of a Docker Hub name: it has a `.` or a
/// `:`, or is `localhost`, as Docker reads it.
pub fn names_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// True when `host[:port]` names the loopback interface.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host` of `host[:port]`, keeping the brackets of an IPv6 address.
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        match registry.find(']') {
            Some(i) => &registry[..=i],
            None => registry,
        }
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

/// `host[:port]`: DNS labels or an IPv4 address, or `[IPv6]`, and a port
/// from 1 to 65535.
pub fn valid_registry(registry: &str) -> bool {
    let host = host_of(registry);
    let port = &registry[host.len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0) && !p.starts_with('+'));
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                let b = label.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                    && b[0] != b'-'
                    && b[b.len() - 1] != b'-'
            })
    };
    host_ok && port_ok
}

/// A repository name: components of lowercase letters and digits joined by
/// `.`, `_`, `__` or dashes, separated by `/`, 255 bytes at most.
pub fn valid_repository(name: &str) -> bool {
    fn component(c: &str) -> bool {
        let b = c.as_bytes();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let sep = match b[i] {
                b'.' => 1,
                b'_' if b.get(i + 1) == Some(&b'_') => 2,
                b'_' => 1,
                b'-' => b[i..].iter().take_while(|c| **c == b'-').count(),
                _ => return false,
            };
            i += sep;
            if !b.get(i).copied().is_some_and(alnum) {
                return false;
            }
        }
        true
    }
    fn alnum(c: u8) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit()
    }
    !name.is_empty() && name.len() <= 255 && name.split('/').all(component)
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(&b[0])
        && b[1..].iter().all(|c| word(c) || *c == b'.' || *c == b'-')
}

/// The registry tag for a layout's `org.opencontainers.image.ref.name`:
/// the name itself when it is a valid tag (`1.0`), else the tag of the
/// reference it holds (`example.org/hello:1.0` gives `1.0`).
pub fn tag_from_ref_name(ref_name: &str) -> Option<String> {
    if valid_tag(ref_name) {
        return Some(ref_name.to_owned());
    }
    let last = ref_name.rsplit('/').next().unwrap_or(ref_name);
    let (_, tag) = last.rsplit_once(':')?;
    valid_tag(tag).then(|| tag.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(reg: &str, name: &str, tag: Option<&str>) -> Reference {
        Reference {
            registry: reg.into(),
            repository: name.into(),
            tag: tag.map(Into::into),
        }
    }

    #[test]
    fn parses_references() {
        for (s, want) in [
            (
                "127.0.0.1:5000/hello:1.0",
                r("127.0.0.1:5000", "hello", Some("1.0")),
            ),
            ("localhost/a/b", r("localhost", "a/b", None)),
            (
                "docker://ghcr.io/o/app:v1",
                r("ghcr.io", "o/app", Some("v1")),
            ),
            ("[::1]:5000/x:y", r("[::1]:5000", "x", Some("y"))),
            ("alpine", r("docker.io", "library/alpine", None)),
            ("me/app:latest", r("docker.io", "me/app", Some("latest"))),
            ("docker.io/app", r("docker.io", "library/app", None)),
            (
                "reg.example.org:443/a.b/c__d/e--f:T_1.0-x",
                r("reg.example.org:443", "a.b/c__d/e--f", Some("T_1.0-x")),
            ),
        ] {
            assert_eq!(Reference::parse(s).unwrap(), want, "{s}");
        }
        assert_eq!(
            Reference::parse("reg:5000/a:1").unwrap().to_string(),
            "reg:5000/a:1"
        );
        assert_eq!(
            Reference::parse("alpine").unwrap().api_host(),
            DOCKER_HUB_API
        );
    }

    #[test]
    fn rejects_bad_references() {
        for s in [
            "",
            "docker://",
            "reg.example.org/../etc:1",
            "reg.example.org/a/../b",
            "reg.example.org//a",
            "reg.example.org/a/",
            "reg.example.org/Upper",
            "reg.example.org/a:../../x",
            "reg.example.org/a:.hidden",
            "reg.example.org/a:-x",
            "reg.example.org/a:",
            "reg.example.org/a@sha256:00",
            "reg.example.org:0/a",
            "reg.example.org:99999/a",
            "bad_host.org/a",
            "-x.org/a",
            "reg.example.org/a b",
            "reg.example.org/a?x=1",
            "reg.example.org/a%2f",
        ] {
            assert!(Reference::parse(s).is_err(), "{s}");
        }
        let long_tag = format!("r.org/a:{}", "x".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }

    #[test]
    fn references_with_digests() {
        let d = format!("sha256:{}", "0".repeat(64));
        let (r, digest) = Reference::parse_with_digest(&format!("reg.org/a:1@{d}")).unwrap();
        assert_eq!(r, Reference::parse("reg.org/a:1").unwrap());
        assert_eq!(digest.map(|x| x.to_string()), Some(d.clone()));
        let (r, digest) = Reference::parse_with_digest("docker://reg.org/a").unwrap();
        assert_eq!((r.tag, digest), (None, None));
        for bad in [
            "reg.org/a@sha256:00",
            "reg.org/a@",
            "reg.org/a@md5:00",
            &format!("reg.org/A@{d}"),
            &format!("@{d}"),
        ] {
            assert!(Reference::parse_with_digest(bad).is_err(), "{bad}");
        }
        // Still no digest as a destination.
        assert!(Reference::parse(&format!("reg.org/a@{d}")).is_err());
    }

    #[test]
    fn names_and_tags() {
        for ok in ["a", "a/b", "a.b_c__d---e/f0", "0"] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "a/..", "/a", "a//b", "a_", "a___b", "a.-b", "A",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
        for ok in ["1.0", "latest", "_x", "A-b.C"] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "-a", ".a", "a:b", "/abs"] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn tags_from_ref_names() {
        for (name, want) in [
            ("1.0", Some("1.0")),
            ("example.org/hello:1.0", Some("1.0")),
            ("localhost:5000/hello", None),
            ("hello:v2", Some("v2")),
            ("a/b", None),
        ] {
            assert_eq!(tag_from_ref_name(name).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn loopback() {
        for (reg, want) in [
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.8.9.10", true),
            ("[::1]:5000", true),
            ("10.0.0.1:5000", false),
            ("localhost.example.org", false),
            ("example.org", false),
        ] {
            assert_eq!(is_loopback_host(reg), want, "{reg}");
        }
    }
}
