//! The image spec: the small, versioned JSON file that the Nix library's
//! `image` function produces (roots, image config, options; no tarballs).
//!
//! `nixoci build` treats a root that is such a file as "this image": it
//! images the spec's roots with the spec's config. Pure: parsing and
//! validation only.
//!
//! Version 2 adds what the image holds outside the store (`copyToRoot`,
//! `dirs`, `symlinks`, `users`, `groups`, `includeNixDB`) and the config's
//! `volumes` and `stopSignal`; version 1 specs are still read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::oci::image::RunConfig;
use crate::rootfs::{DirSpec, GroupSpec, PermRule, RootFsError, RootSpec, SymlinkSpec, UserSpec};
use crate::store_path::StorePath;

/// The spec version this nixoci writes (the Nix library's `image`).
pub const SPEC_VERSION: u32 = 2;

/// The spec versions this nixoci reads.
pub const SPEC_VERSIONS: [u32; 2] = [1, 2];

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
    /// Absolute paths a runtime mounts a volume at (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// The signal that stops the container (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// A directory of the image (version 2), as `--dir PATH:MODE:UID:GID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecDir {
    pub path: String,
    /// Octal, as a string: `"0755"`, `"1777"`.
    #[serde(default = "default_dir_mode")]
    pub mode: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

fn default_dir_mode() -> String {
    "0755".to_owned()
}

/// A user of `/etc/passwd` (version 2), as `--add-user`; `gid` defaults to
/// `uid`, `home` to `/home/NAME`, `shell` to `/bin/sh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecUser {
    pub name: String,
    pub uid: u32,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub home: Option<String>,
    #[serde(default)]
    pub shell: Option<String>,
}

/// A group of `/etc/group` (version 2), as `--add-group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecGroup {
    pub name: String,
    pub gid: u32,
}

/// A mode and/or owner rule over the image's paths (version 2), as
/// `--chmod REGEX=MODE` and `--chown REGEX=UID:GID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecPerm {
    pub regex: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// An image spec, version 1 or 2.
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
    /// Store paths whose trees are placed at `/` (version 2), as
    /// `--copy-to-root`; they are roots too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_to_root: Vec<StorePath>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<SpecDir>,
    /// Link path to absolute target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub symlinks: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<SpecUser>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<SpecGroup>,
    /// Mode and owner rules, applied to every image of the build (as the
    /// flags are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub perms: Vec<SpecPerm>,
    /// The closure registered in the image's Nix database, as `--nix-db`.
    #[serde(
        default,
        rename = "includeNixDB",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub include_nix_db: bool,
    /// The base image (version 2), as `--from`: a layout directory (the
    /// output of the Nix library's `pullImage`), or `LAYOUT:TAG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
}

/// Why bytes are not a usable image spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image spec is not valid JSON of the expected form")]
    Json(#[from] serde_json::Error),
    #[error("image spec version {found} is not supported (this nixoci reads versions 1 and 2)")]
    Version { found: u64 },
    #[error("image spec '{name}': {field} needs image spec version 2, the spec says 1")]
    NeedsVersion2 { name: String, field: &'static str },
    #[error("image spec '{name}': {problem}")]
    Root {
        name: String,
        problem: Box<RootFsError>,
    },
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
        if !SPEC_VERSIONS.iter().any(|&v| u64::from(v) == found) {
            return Err(SpecError::Version { found });
        }
        let spec: ImageSpec = serde_json::from_value(value)?;
        if spec.roots.is_empty() {
            return Err(SpecError::NoRoots(spec.name));
        }
        if spec.version == 1 {
            if let Some(field) = spec.version_2_field() {
                return Err(SpecError::NeedsVersion2 {
                    name: spec.name,
                    field,
                });
            }
        }
        spec.root_spec()?;
        spec.perm_rules()?;
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

    /// The first version 2 field the spec sets, if any.
    fn version_2_field(&self) -> Option<&'static str> {
        [
            ("copyToRoot", !self.copy_to_root.is_empty()),
            ("dirs", !self.dirs.is_empty()),
            ("symlinks", !self.symlinks.is_empty()),
            ("users", !self.users.is_empty()),
            ("groups", !self.groups.is_empty()),
            ("perms", !self.perms.is_empty()),
            ("includeNixDB", self.include_nix_db),
            ("fromImage", self.from_image.is_some()),
            ("config.volumes", !self.config.volumes.is_empty()),
            ("config.stopSignal", self.config.stop_signal.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(field, _)| field)
    }

    /// True when the image has a root layer: copyToRoot, dirs, symlinks,
    /// users, groups or includeNixDB.
    pub fn has_root_entries(&self) -> bool {
        !self.copy_to_root.is_empty()
            || !self.dirs.is_empty()
            || !self.symlinks.is_empty()
            || !self.users.is_empty()
            || !self.groups.is_empty()
            || self.include_nix_db
    }

    /// The directories, symbolic links, users and groups the spec asks
    /// for, checked as the flags `--dir`, `--symlink`, `--add-user` and
    /// `--add-group` are (`copyToRoot` trees are read from the store by
    /// the caller).
    /// The spec's `perms` as the rules `--chmod`/`--chown` make: a rule
    /// with a mode and an owner is one of each.
    pub fn perm_rules(&self) -> Result<Vec<PermRule>, SpecError> {
        let root = |problem| SpecError::Root {
            name: self.name.clone(),
            problem: Box::new(problem),
        };
        let mut rules = Vec::new();
        for (i, p) in self.perms.iter().enumerate() {
            let mut any = false;
            if let Some(mode) = &p.mode {
                rules.push(PermRule::chmod(&format!("{}={mode}", p.regex)).map_err(root)?);
                any = true;
            }
            match (p.uid, p.gid) {
                (Some(uid), Some(gid)) => {
                    rules.push(PermRule::chown(&format!("{}={uid}:{gid}", p.regex)).map_err(root)?);
                    any = true;
                }
                (None, None) => {}
                _ => {
                    return Err(root(RootFsError::Syntax {
                        flag: "perms",
                        given: format!("{i}"),
                        problem: "give uid and gid together".to_owned(),
                    }))
                }
            }
            if !any {
                return Err(root(RootFsError::Syntax {
                    flag: "perms",
                    given: format!("{i}"),
                    problem: "give a mode, or uid and gid".to_owned(),
                }));
            }
        }
        Ok(rules)
    }

    pub fn root_spec(&self) -> Result<RootSpec, SpecError> {
        // Named by the spec's field, not the flag.
        let root = |problem| SpecError::Root {
            name: self.name.clone(),
            problem: Box::new(match problem {
                RootFsError::Syntax {
                    flag,
                    given,
                    problem,
                } => RootFsError::Syntax {
                    flag: match flag {
                        "--dir" => "dirs",
                        "--symlink" => "symlinks",
                        "--add-user" => "users",
                        _ => "groups",
                    },
                    given,
                    problem,
                },
                other => other,
            }),
        };
        let dirs = self
            .dirs
            .iter()
            .map(|d| format!("{}:{}:{}:{}", d.path, d.mode, d.uid, d.gid).parse::<DirSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(root)?;
        let symlinks = self
            .symlinks
            .iter()
            .map(|(path, target)| format!("{path}={target}").parse::<SymlinkSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(root)?;
        let users = self
            .users
            .iter()
            .map(|u| {
                format!(
                    "{}:{}:{}:{}:{}",
                    u.name,
                    u.uid,
                    u.gid.unwrap_or(u.uid),
                    u.home.as_deref().unwrap_or(""),
                    u.shell.as_deref().unwrap_or("")
                )
                .parse::<UserSpec>()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(root)?;
        let groups = self
            .groups
            .iter()
            .map(|g| format!("{}:{}", g.name, g.gid).parse::<GroupSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(root)?;
        Ok(RootSpec {
            trees: Vec::new(),
            dirs,
            symlinks,
            users,
            groups,
        })
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
            volumes: c.volumes.iter().cloned().collect(),
            stop_signal: c.stop_signal.clone(),
        }
    }
}

/// What the command line sets for the whole image, overriding the specs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    pub tag: Option<&'a str>,
    pub created: Option<&'a str>,
    pub max_layers: Option<usize>,
    /// `--from` was given.
    pub from: bool,
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
    /// The specs' one base image.
    pub from_image: Option<String>,
}

/// Why several image specs cannot make one image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("the image specs name different tags ({0}); choose one with --tag")]
    Tags(String),
    #[error("the image specs name different creation times ({0}); choose one with --created")]
    Created(String),
    #[error("the image specs name different base images ({0}); choose one with --from")]
    FromImage(String),
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
    let from_image = match overrides.from {
        true => None,
        false => one(
            specs.iter().filter_map(|s| s.from_image.as_ref()).collect(),
            MergeError::FromImage,
        )?,
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
        from_image,
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
        let v3 = format!(r#"{{"nixociImageSpec":3,"name":"x","roots":["{ROOT}"]}}"#);
        assert!(matches!(
            ImageSpec::parse(v3.as_bytes()),
            Err(SpecError::Version { found: 3 })
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

    fn v2(fields: &str) -> String {
        format!(r#"{{"nixociImageSpec":2,"name":"x","roots":["{ROOT}"]{fields}}}"#)
    }

    #[test]
    fn parses_a_version_2_spec() {
        let text = v2(&format!(
            r#","copyToRoot":["{ROOT}"],
               "dirs":[{{"path":"/tmp","mode":"1777"}},{{"path":"/var/lib/app","mode":"0750","uid":1000,"gid":1000}}],
               "symlinks":{{"/bin/sh":"{ROOT}/bin/sh"}},
               "users":[{{"name":"app","uid":1000,"home":"/var/lib/app"}}],
               "groups":[{{"name":"staff","gid":50}}],
               "includeNixDB":true,
               "config":{{"volumes":["/data"],"stopSignal":"SIGINT"}}"#
        ));
        let spec = ImageSpec::parse(text.as_bytes()).unwrap();
        assert!(spec.has_root_entries() && spec.include_nix_db);
        assert_eq!(spec.copy_to_root[0].as_str(), ROOT);
        let root = spec.root_spec().unwrap();
        let dirs: Vec<(&str, u32, u32, u32)> = root
            .dirs
            .iter()
            .map(|d| (d.path.as_str(), d.mode, d.uid, d.gid))
            .collect();
        assert_eq!(
            dirs,
            [("/tmp", 0o1777, 0, 0), ("/var/lib/app", 0o750, 1000, 1000)]
        );
        assert_eq!(root.symlinks[0].target, format!("{ROOT}/bin/sh"));
        let u = &root.users[0];
        assert_eq!(
            (
                u.name.as_str(),
                u.uid,
                u.gid,
                u.home.as_str(),
                u.shell.as_str()
            ),
            ("app", 1000, 1000, "/var/lib/app", "/bin/sh")
        );
        assert_eq!(
            (root.groups[0].name.as_str(), root.groups[0].gid),
            ("staff", 50)
        );
        let run = spec.run_config();
        assert_eq!(run.volumes.into_iter().collect::<Vec<_>>(), ["/data"]);
        assert_eq!(run.stop_signal.as_deref(), Some("SIGINT"));

        // Written back, the defaults of version 1 fields stay out.
        let plain = ImageSpec::parse(v2("").as_bytes()).unwrap();
        assert!(!plain.has_root_entries());
        let json = serde_json::to_value(&plain).unwrap();
        for key in [
            "copyToRoot",
            "dirs",
            "symlinks",
            "users",
            "groups",
            "includeNixDB",
        ] {
            assert!(json.get(key).is_none(), "{key}: {json}");
        }
        assert!(json["config"].get("volumes").is_none(), "{json}");
    }

    #[test]
    fn version_1_still_parses_but_not_with_version_2_fields() {
        let v1 = format!(r#"{{"nixociImageSpec":1,"name":"x","roots":["{ROOT}"]}}"#);
        let spec = ImageSpec::parse(v1.as_bytes()).unwrap();
        assert_eq!(spec.version, 1);
        assert!(!spec.has_root_entries());
        let v1_dirs = format!(
            r#"{{"nixociImageSpec":1,"name":"x","roots":["{ROOT}"],"dirs":[{{"path":"/tmp"}}]}}"#
        );
        let e = ImageSpec::parse(v1_dirs.as_bytes()).unwrap_err();
        assert!(
            matches!(e, SpecError::NeedsVersion2 { field: "dirs", .. }),
            "{e}"
        );
        let v1_volumes = format!(
            r#"{{"nixociImageSpec":1,"name":"x","roots":["{ROOT}"],"config":{{"volumes":["/v"]}}}}"#
        );
        assert!(matches!(
            ImageSpec::parse(v1_volumes.as_bytes()),
            Err(SpecError::NeedsVersion2 {
                field: "config.volumes",
                ..
            })
        ));
    }

    #[test]
    fn bad_root_entries_name_the_field() {
        for (fields, field) in [
            (
                r#","dirs":[{"path":"/tmp","mode":"999"}]"#,
                "dirs '/tmp:999:0:0'",
            ),
            (r#","dirs":[{"path":"tmp"}]"#, "dirs 'tmp:0755:0:0'"),
            (
                r#","symlinks":{"/bin/sh":"bin/busybox"}"#,
                "symlinks '/bin/sh=bin/busybox'",
            ),
            (r#","users":[{"name":"a b","uid":1}]"#, "users 'a b:1:1::'"),
            (r#","groups":[{"name":"-g","gid":1}]"#, "groups '-g:1'"),
        ] {
            let e = ImageSpec::parse(v2(fields).as_bytes()).unwrap_err();
            assert!(matches!(e, SpecError::Root { .. }), "{fields}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("image spec 'x': {field}")),
                "{fields}: {e}"
            );
        }
        // A uid that is not a number is not the JSON of a spec.
        let e = ImageSpec::parse(v2(r#","users":[{"name":"a","uid":"x"}]"#).as_bytes());
        assert!(matches!(e, Err(SpecError::Json(_))));
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
            from: false,
        };
        let merged = merge([&a, &b], both).unwrap();
        assert_eq!(
            (merged.tag, merged.created, merged.max_layers),
            (None, None, None)
        );
    }

    #[test]
    fn perms_are_chmod_and_chown_rules() {
        let mut spec = ImageSpec::parse(
            format!(r#"{{"nixociImageSpec":2,"name":"x","roots":["{ROOT}"],"perms":[{{"regex":"/a","mode":"4755","uid":1,"gid":2}},{{"regex":"/b","uid":3,"gid":4}}]}}"#).as_bytes(),
        )
        .unwrap();
        let rules = spec.perm_rules().unwrap();
        let flags: Vec<&str> = rules.iter().map(|r| r.flag).collect();
        assert_eq!(flags, ["--chmod", "--chown", "--chown"]);
        assert_eq!(rules[0].mode, Some(0o4755));
        assert_eq!(rules[2].owner, Some((3, 4)));
        spec.perms[1].gid = None;
        assert!(spec.perm_rules().is_err());
        spec.perms[1].uid = None;
        assert!(spec.perm_rules().is_err(), "neither mode nor owner");
        let v1 = format!(
            r#"{{"nixociImageSpec":1,"name":"x","roots":["{ROOT}"],"perms":[{{"regex":"/a","mode":"0755"}}]}}"#
        );
        assert!(matches!(
            ImageSpec::parse(v1.as_bytes()),
            Err(SpecError::NeedsVersion2 { field: "perms", .. })
        ));
    }
}
