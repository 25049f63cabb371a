//! `--previous IMAGE`: where the previous build of an image is (a layout or
//! a registry image), and reading its layers from there for the planner.

use crate::oci::layout::{LayoutArg, LayoutArgError};
use crate::oci::previous::{self as layout_previous, PreviousError as LayoutPreviousError};
use crate::oci::Digest;
use crate::plan::Previous;

use super::auth::AuthError;
use super::client::{Client, ClientError, ClientOptions};
use super::fetch::{self, FetchError};
use super::reference::{names_registry, valid_registry, Reference, ReferenceError};

/// Where `--previous` reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviousSource {
    /// `[oci:]DIR[:TAG]`.
    Layout(LayoutArg),
    /// `REGISTRY/NAME[:TAG|@DIGEST]`: a tag (`latest` when none is given)
    /// or a digest.
    Registry(Reference, Option<Digest>),
}

/// Why the previous image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PreviousError {
    #[error("--previous {arg}")]
    Reference {
        arg: String,
        #[source]
        source: Box<ReferenceError>,
    },
    #[error("--previous {arg}")]
    Layout {
        arg: String,
        #[source]
        source: Box<LayoutPreviousError>,
    },
    #[error("--previous {arg}")]
    Auth {
        arg: String,
        #[source]
        source: Box<AuthError>,
    },
    #[error("--previous {arg}: connecting to {registry}")]
    Connect {
        arg: String,
        registry: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error(
        "--previous {arg}: {missing} (with --previous-optional, a missing image is planned from scratch)"
    )]
    Missing {
        arg: String,
        /// What says it is missing (not a source: its text is the message).
        missing: Box<FetchError>,
    },
    #[error("--previous {arg}")]
    Fetch {
        arg: String,
        #[source]
        source: Box<FetchError>,
    },
}

impl PreviousError {
    /// True when the argument names no usable image (exit 2), false when
    /// reading it failed (the network, a broken image: exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PreviousError::Reference { .. }
                | PreviousError::Layout { .. }
                | PreviousError::Auth { .. }
                | PreviousError::Missing { .. }
        )
    }
}

impl PreviousSource {
    /// Reads `--previous`: `docker://…` a registry image and `oci:…` a
    /// layout; else a layout that exists, as always; else a registry image
    /// when nothing is at the path and the first component is a host, a
    /// layout otherwise. Layouts are [`LayoutArg`]s, as for every command.
    pub fn parse(arg: &str) -> Result<PreviousSource, PreviousError> {
        image_source(arg).map_err(|e| match e {
            SourceError::Reference(source) => PreviousError::Reference {
                arg: arg.to_owned(),
                source: Box::new(source),
            },
            SourceError::Layout(e) => PreviousError::Layout {
                arg: arg.to_owned(),
                source: Box::new(LayoutPreviousError::Tag(e.into())),
            },
        })
    }
}

/// Why an image named on the command line names nothing.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Layout(#[from] LayoutArgError),
}

/// Where an image named on the command line is (`--previous`, `--from`,
/// `nixoci pull`): `docker://…` a registry image and `oci:…` a layout;
/// else a layout that exists, as always; else a registry image when
/// nothing is at the path and the first component is a host, a layout
/// otherwise. Layouts are [`LayoutArg`]s, as for every command; a registry
/// image without tag or digest is `:latest`.
pub fn image_source(arg: &str) -> Result<PreviousSource, SourceError> {
    let registry = |s: &str| {
        let (mut reference, digest) = Reference::parse_with_digest(s)?;
        if digest.is_none() && reference.tag.is_none() {
            reference.tag = Some("latest".to_owned());
        }
        Ok(PreviousSource::Registry(reference, digest))
    };
    let layout = || Ok(PreviousSource::Layout(LayoutArg::parse(arg)?));
    if arg.starts_with("docker://") {
        return registry(arg);
    }
    if arg.starts_with(LayoutArg::PREFIX) {
        return layout();
    }
    if LayoutArg::parse(arg).is_ok_and(|l| l.is_layout()) {
        return layout();
    }
    let host = arg.split_once('/').map(|(first, _)| first);
    if layout_previous::nothing_at(arg)
        && host.is_some_and(|h| names_registry(h) && valid_registry(h))
    {
        return registry(arg);
    }
    layout()
}

/// The layers read from an image as the planner takes them (the planner,
/// a pure stage, knows nothing of where they were read).
fn planner_input(layers: layout_previous::PreviousLayers) -> Previous {
    Previous {
        images: layers.images,
    }
}

/// How to read `--previous IMAGE`.
pub struct PreviousRequest<'a> {
    pub arg: &'a str,
    /// `--previous-optional`: a missing image is a note and no previous.
    pub optional: bool,
    /// `--creds`.
    pub creds: Option<&'a str>,
    pub options: ClientOptions,
    /// Where notes go (a missing optional image, platforms whose layers
    /// name no store paths, retries).
    pub note: std::sync::Arc<dyn Fn(&str) + Send + Sync>,
}

/// The layers of the `--previous` image; `None` when `optional` forgives a
/// missing one.
pub fn read_previous(req: PreviousRequest) -> Result<Option<Previous>, PreviousError> {
    let arg = req.arg;
    let from_scratch = |why: &dyn std::fmt::Display| {
        (req.note)(&format!(
            "note: --previous {arg}: {why}; planning from scratch"
        ));
        Ok(None)
    };
    let unknown_platforms = |unknown: &[String]| {
        for platform in unknown {
            (req.note)(&format!(
                "note: --previous {arg}: its {platform} layers name no store paths; planning {platform} from scratch"
            ));
        }
    };
    let (reference, digest) = match PreviousSource::parse(arg)? {
        PreviousSource::Layout(layout) => {
            return match layout_previous::read(&layout) {
                Ok(image) => {
                    unknown_platforms(&image.unknown);
                    Ok(Some(planner_input(image.previous)))
                }
                Err(e) if req.optional && e.is_missing() => from_scratch(&e),
                Err(source) => Err(PreviousError::Layout {
                    arg: arg.to_owned(),
                    source: Box::new(source),
                }),
            };
        }
        PreviousSource::Registry(reference, digest) => (reference, digest),
    };
    let image = match &digest {
        Some(d) => format!("{reference}@{d}"),
        None => reference.to_string(),
    };
    let found = super::auth::lookup(
        &super::auth::AuthEnv::from_process(),
        req.creds,
        &reference.registry,
        &reference.repository,
    )
    .map_err(|source| PreviousError::Auth {
        arg: arg.to_owned(),
        source: Box::new(source),
    })?;
    let note = req.note.clone();
    let client = Client::connect(
        &reference,
        found.credentials,
        found.helper_hint,
        vec![format!("repository:{}:pull", reference.repository)],
        req.options,
        Box::new(move |msg| note(msg)),
    )
    .map_err(|source| PreviousError::Connect {
        arg: arg.to_owned(),
        registry: reference.registry.clone(),
        source: Box::new(source),
    })?;
    let wanted = match &digest {
        Some(d) => d.to_string(),
        None => reference.tag.clone().unwrap_or_default(),
    };
    match fetch::read_layers(&client, &wanted, digest.as_ref(), &image) {
        Ok(remote) => {
            unknown_platforms(&remote.layers.unknown);
            Ok(Some(planner_input(remote.layers.previous)))
        }
        Err(e) if e.is_missing() && req.optional => from_scratch(&e),
        Err(missing) if missing.is_missing() => Err(PreviousError::Missing {
            arg: arg.to_owned(),
            missing: Box::new(missing),
        }),
        Err(source) => Err(PreviousError::Fetch {
            arg: arg.to_owned(),
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_images_from_layouts_or_registries() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("app.oci");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("oci-layout"), crate::oci::layout::OCI_LAYOUT).unwrap();
        let dir = layout.to_str().unwrap();
        let plain = tmp.path().join("plain.d");
        std::fs::create_dir(&plain).unwrap();
        let plain = plain.to_str().unwrap();
        let layout_of = |s: &str| PreviousSource::Layout(LayoutArg::parse(s).unwrap());
        let registry = |reg: &str, name: &str, tag: Option<&str>, digest: Option<&str>| {
            PreviousSource::Registry(
                Reference {
                    registry: reg.into(),
                    repository: name.into(),
                    tag: tag.map(Into::into),
                },
                digest.map(|d| d.parse().unwrap()),
            )
        };
        let d = format!("sha256:{}", "a".repeat(64));
        for (arg, want) in [
            (dir.to_owned(), layout_of(dir)),
            (format!("{dir}:1.0"), layout_of(&format!("{dir}:1.0"))),
            (format!("oci:{dir}:1.0"), layout_of(&format!("{dir}:1.0"))),
            // Paths that exist stay layouts, whatever they look like.
            (plain.to_owned(), layout_of(plain)),
            (format!("{plain}:x"), layout_of(&format!("{plain}:x"))),
            ("missing.oci".into(), layout_of("missing.oci")),
            ("./out/app.oci".into(), layout_of("./out/app.oci")),
            ("out/app.oci:1".into(), layout_of("out/app.oci:1")),
            (
                "127.0.0.1:5000/app:1".into(),
                registry("127.0.0.1:5000", "app", Some("1"), None),
            ),
            (
                "localhost/team/app".into(),
                registry("localhost", "team/app", Some("latest"), None),
            ),
            (
                format!("registry.example.org/app@{d}"),
                registry("registry.example.org", "app", None, Some(&d)),
            ),
            (
                "docker://alpine".into(),
                registry("docker.io", "library/alpine", Some("latest"), None),
            ),
            (
                format!("docker://127.0.0.1:5000/app:1@{d}"),
                registry("127.0.0.1:5000", "app", Some("1"), Some(&d)),
            ),
        ] {
            assert_eq!(PreviousSource::parse(&arg).unwrap(), want, "{arg}");
        }
        for bad in [
            "docker://",
            "docker://127.0.0.1:5000/App:1",
            "127.0.0.1:5000/app:../x",
            "127.0.0.1:5000/app@sha256:00",
            "oci:",
            "oci:app.oci:",
            "oci:app.oci:bad tag",
        ] {
            let e = PreviousSource::parse(bad).unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
            assert_eq!(e.to_string(), format!("--previous {bad}"));
        }
    }
}
