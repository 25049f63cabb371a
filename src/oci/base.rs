//! A base image (`nixoci build --from IMAGE`, the Nix library's
//! `fromImage`): for each platform asked for, the base's layer
//! descriptors (kept with their digests, never recompressed), its
//! `rootfs.diff_ids` and `history`, and its runtime config, read from its
//! documents by a visitor of the one walker ([`super::walk`]) whatever the
//! blobs come from: [`read`] walks an OCI image layout (`LAYOUT[:TAG]`),
//! `publish::fetch` a registry.
//!
//! Platforms match as containerd matches them: a base's `linux/arm64` is
//! `linux/arm64/v8` ([`crate::platform::Platform`] normalises both).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::files;
use super::image::RunConfig;
use super::layout::{tagged_entry, LayoutArg};
use super::media_type::{MediaType, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};
use super::model::{parse, Descriptor, Invalid, Manifest};
use super::previous::{read_error, PreviousError};
use super::walk::{self, At, BlobSource, Kind, LayoutBlobs, ReadError, Visitor};
use super::Digest;
use crate::platform::Platform;

/// Docker's layer media types, and the OCI types of the same bytes.
const DOCKER_LAYERS: [(&str, &str); 3] = [
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        MEDIA_TYPE_TAR_GZIP,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        MEDIA_TYPE_TAR_ZSTD,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        MEDIA_TYPE_TAR,
    ),
];

/// One platform's image of a base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasePlatform {
    /// The base's manifest of this platform (its digest is the
    /// `org.opencontainers.image.base.digest` of ours).
    pub manifest: Descriptor,
    /// Its config's descriptor.
    pub config: Descriptor,
    /// The base's layers, bottom first: digests and sizes as the base has
    /// them, Docker media types named by their OCI equivalents (the same
    /// bytes).
    pub layers: Vec<Descriptor>,
    /// The config's `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<Digest>,
    /// The config's `history`, entries as they were.
    pub history: Vec<serde_json::Value>,
    /// The config's runtime settings nixoci knows.
    pub run: RunConfig,
}

/// What a base's documents say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseImage {
    /// The platforms asked for that the base has.
    pub platforms: BTreeMap<Platform, BasePlatform>,
    /// Every platform the base has (`os/arch[/variant]`), sorted.
    pub available: Vec<String>,
}

/// The `config` part of an image configuration, as far as nixoci merges it.
#[derive(Debug, Default, Deserialize)]
struct RawRun {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "ExposedPorts", default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Volumes", default)]
    volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "StopSignal", default)]
    stop_signal: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRootFs {
    #[serde(default)]
    diff_ids: Option<Vec<Digest>>,
}

/// An image configuration, as far as a base needs it.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RawRun>,
    #[serde(default)]
    rootfs: Option<RawRootFs>,
    #[serde(default)]
    history: Option<Vec<serde_json::Value>>,
}

impl RawRun {
    /// The settings as a [`RunConfig`]; empty strings are unset.
    fn into_run(self) -> RunConfig {
        let some = |s: Option<String>| s.filter(|s| !s.is_empty());
        RunConfig {
            entrypoint: self.entrypoint,
            cmd: self.cmd,
            env: self.env.unwrap_or_default(),
            working_dir: some(self.working_dir),
            user: some(self.user),
            exposed_ports: self.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: self.labels.unwrap_or_default(),
            volumes: self.volumes.unwrap_or_default().into_keys().collect(),
            stop_signal: some(self.stop_signal),
        }
    }
}

/// A layer descriptor of a base as our manifest names it: Docker media
/// types become their OCI equivalents (the same bytes, the same digest).
fn layer_descriptor(d: &Descriptor) -> Descriptor {
    let mut d = d.clone();
    if let Some((_, oci)) = DOCKER_LAYERS
        .iter()
        .find(|(docker, _)| *docker == d.media_type.as_str())
    {
        d.media_type = MediaType::from(*oci);
    }
    d.platform = None;
    d
}

/// The visitor that finds each platform's manifest.
struct Reader<'a> {
    wanted: &'a BTreeSet<Platform>,
    found: BaseImage,
}

impl<S: BlobSource> Visitor<S> for Reader<'_> {
    fn manifest(
        &mut self,
        d: &Descriptor,
        manifest: &Manifest,
        _bytes: Vec<u8>,
        _at: At<'_>,
        source: &mut S,
    ) -> Result<(), S::Error> {
        let what = format!("{} {}", Kind::Manifest.what(), d.digest);
        let config_d = manifest.config(&what)?;
        let config_what = format!("{} {}", Kind::Config.what(), config_d.digest);
        // The platform: the index's word for it, else the config's.
        let mut config: Option<RawConfig> = None;
        let named = match d.platform.as_ref().and_then(|p| p.name()) {
            Some(name) => name,
            None => {
                let bytes = source.read(Kind::Config, config_d)?;
                let c: RawConfig = parse(&bytes, &config_what)?;
                let name = super::model::Platform {
                    os: c.os.clone(),
                    architecture: c.architecture.clone(),
                    variant: c.variant.clone(),
                }
                .name();
                config = Some(c);
                match name {
                    Some(n) => n,
                    // Attestations and other artifacts name no platform.
                    None => return Ok(()),
                }
            }
        };
        self.found.available.push(named.clone());
        let Ok(platform) = named.parse::<Platform>() else {
            return Ok(());
        };
        if !self.wanted.contains(&platform) || self.found.platforms.contains_key(&platform) {
            return Ok(());
        }
        let config = match config {
            Some(c) => c,
            None => parse(&source.read(Kind::Config, config_d)?, &config_what)?,
        };
        let layers = manifest.layers(&what)?;
        for l in layers {
            l.complete().map_err(|p| Invalid::new(&what, p))?;
        }
        let diff_ids = config.rootfs.and_then(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(Invalid::new(
                &config_what,
                format!(
                    "{} diff_ids for the {} layers of {what}",
                    diff_ids.len(),
                    layers.len()
                ),
            )
            .into());
        }
        let mut manifest_d = d.clone();
        manifest_d.platform = None;
        manifest_d.annotations.clear();
        self.found.platforms.insert(
            platform,
            BasePlatform {
                manifest: manifest_d,
                config: config_d.clone(),
                layers: layers.iter().map(layer_descriptor).collect(),
                diff_ids,
                history: config.history.unwrap_or_default(),
                run: config.config.unwrap_or_default().into_run(),
            },
        );
        Ok(())
    }
}

/// The platforms `wanted` of the base image `root` names (an image index
/// or a manifest), read from `source`.
pub fn from_documents<S: BlobSource>(
    source: &mut S,
    root: &Descriptor,
    wanted: &BTreeSet<Platform>,
) -> Result<BaseImage, S::Error> {
    let mut reader = Reader {
        wanted,
        found: BaseImage::default(),
    };
    walk::walk(source, root, &mut reader)?;
    let mut found = reader.found;
    found.available.sort();
    found.available.dedup();
    Ok(found)
}

/// A base read from a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutBase {
    pub layout: PathBuf,
    /// The `ref.name` of the image's `index.json` entry.
    pub ref_name: Option<String>,
    pub image: BaseImage,
}

/// Reads the platforms `wanted` of the image `arg` names.
pub fn read(arg: &LayoutArg, wanted: &BTreeSet<Platform>) -> Result<LayoutBase, PreviousError> {
    let LayoutArg { dir, tag } = arg.clone();
    files::check_layout(&dir)?;
    let entry = tagged_entry(&dir, tag.as_deref())?;
    let mut blobs = LayoutBlobs::<ReadError>::new(&dir);
    let image = from_documents(&mut blobs, &Descriptor::from(&entry), wanted)
        .map_err(|e| read_error(&dir, e))?;
    Ok(LayoutBase {
        layout: dir,
        ref_name: entry.ref_name().map(str::to_owned),
        image,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use serde_json::{json, Value};

    use super::super::media_type::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
    use super::*;

    fn write_blob(dir: &Path, v: &Value) -> (String, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let d = Digest::of(&bytes);
        fs::write(dir.join("blobs/sha256").join(d.hex()), &bytes).unwrap();
        (d.as_str().to_owned(), bytes.len())
    }

    /// A base with amd64 and arm64 (no variant), Docker layer types on arm64.
    fn layout() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut entries = Vec::new();
        for (arch, layer_type) in [
            ("amd64", MEDIA_TYPE_TAR_GZIP),
            ("arm64", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ] {
            let layer = Digest::of(arch.as_bytes());
            let diff = Digest::of(format!("{arch} tar").as_bytes());
            let (cfg, cfg_size) = write_blob(
                dir,
                &json!({"os": "linux", "architecture": arch,
                    "config": {"Env": ["PATH=/bin", "LANG=C"], "Cmd": ["/bin/sh"],
                               "WorkingDir": "", "ExposedPorts": {"80/tcp": {}},
                               "Labels": {"base": arch}},
                    "rootfs": {"type": "layers", "diff_ids": [diff.as_str()]},
                    "history": [{"created_by": "base", "comment": arch}]}),
            );
            let (m, m_size) = write_blob(
                dir,
                &json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": cfg, "size": cfg_size},
                    "layers": [{"mediaType": layer_type, "digest": layer.as_str(), "size": 5}]}),
            );
            entries.push(
                json!({"mediaType": MEDIA_TYPE_MANIFEST, "digest": m, "size": m_size,
                "platform": {"os": "linux", "architecture": arch}}),
            );
        }
        let (index, index_size) =
            write_blob(dir, &json!({"schemaVersion": 2, "manifests": entries}));
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
                {"mediaType": MEDIA_TYPE_INDEX, "digest": index, "size": index_size,
                 "annotations": {"org.opencontainers.image.ref.name": "base:1"}}]}))
            .unwrap(),
        )
        .unwrap();
        tmp
    }

    #[test]
    fn reads_the_platforms_asked_for() {
        let tmp = layout();
        let amd: Platform = "linux/amd64".parse().unwrap();
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        let riscv: Platform = "linux/riscv64".parse().unwrap();
        let wanted = [amd.clone(), arm.clone(), riscv.clone()].into();
        let arg = LayoutArg::parse(tmp.path().to_str().unwrap()).unwrap();
        let base = read(&arg, &wanted).unwrap();
        assert_eq!(base.ref_name.as_deref(), Some("base:1"));
        assert_eq!(base.image.available, ["linux/amd64", "linux/arm64"]);
        // linux/arm64 is linux/arm64/v8; riscv64 is not there.
        assert_eq!(
            base.image.platforms.keys().collect::<Vec<_>>(),
            [&amd, &arm]
        );
        let a = &base.image.platforms[&amd];
        assert_eq!(a.layers.len(), 1);
        assert_eq!(a.layers[0].digest, Digest::of(b"amd64"));
        assert_eq!(a.diff_ids, [Digest::of(b"amd64 tar")]);
        assert_eq!(a.run.env, ["PATH=/bin", "LANG=C"]);
        assert_eq!(a.run.cmd, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(a.run.working_dir, None);
        assert!(a.run.exposed_ports.contains("80/tcp"));
        assert_eq!(a.history.len(), 1);
        // Docker's layer type is named by the OCI type of the same bytes.
        let b = &base.image.platforms[&arm];
        assert_eq!(b.layers[0].media_type, MEDIA_TYPE_TAR_GZIP);
        assert_eq!(b.layers[0].digest, Digest::of(b"arm64"));
    }
}
