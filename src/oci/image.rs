//! The OCI documents of an image: per platform an image configuration and a
//! manifest, and one image index listing every platform. Pure: values in,
//! canonical JSON bytes out.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use serde::{Deserialize, Serialize};

use super::base::BasePlatform;
use super::json::to_canonical_vec;
use super::Digest;
use crate::platform::Platform;
use crate::store_path::StorePath;

pub use super::media_type::{
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};

/// The annotation that names a tag in `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The annotation on each layer descriptor of a manifest that lists the
/// layer's store paths: their base names (`HASH-NAME`), sorted, separated
/// by single spaces. `nixoci build --previous` reads it back.
pub const ANNOTATION_STORE_PATHS: &str = "dev.nixoci.store-paths";

/// The annotation that marks the root layer (the entries outside the store:
/// directories, symlinks, the user database) instead of
/// [`ANNOTATION_STORE_PATHS`]; `--previous` leaves such a layer out.
pub const ANNOTATION_ROOT_LAYER: &str = "dev.nixoci.root-layer";

/// The annotation that marks a layer of the base image (`--from`): it
/// holds no store path of ours, and `--previous` leaves it out.
pub const ANNOTATION_BASE_LAYER: &str = "dev.nixoci.base-layer";

/// The manifest annotation naming the base image's manifest digest.
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// The manifest annotation naming the base image's repository
/// (`REGISTRY/NAME`), when it is known; `nixoci push` mounts the base's
/// blobs from there when it pushes to the same registry.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";

/// What `history` entries say created each layer.
pub const CREATED_BY: &str = "nixoci";

/// The runtime configuration of an image, as the user gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`, sorted by key.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `PORT/PROTO`.
    pub exposed_ports: BTreeSet<String>,
    pub labels: BTreeMap<String, String>,
    /// Absolute paths a runtime mounts a volume at.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub volumes: BTreeSet<String>,
    /// The signal that stops the container (`SIGTERM`, `SIGINT`, `15`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// A config or annotation value that no runtime can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: {problem}")]
pub struct InvalidConfig {
    /// The flag or field, e.g. `--env` or `WorkingDir`.
    pub field: &'static str,
    pub value: String,
    pub problem: &'static str,
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

impl RunConfig {
    /// This config on top of a base image's: `Env` merged by key (ours
    /// win; sorted by key, as every `Env` nixoci writes), `ExposedPorts`,
    /// `Labels` and `Volumes` merged (ours win), `Entrypoint`, `Cmd`,
    /// `WorkingDir`, `User` and `StopSignal` the base's unless we set them.
    pub fn on_base(self, base: &RunConfig) -> RunConfig {
        let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
        let env: Vec<String> = base
            .env
            .iter()
            .chain(&self.env)
            .map(|e| (key(e), e.clone()))
            .collect::<BTreeMap<String, String>>()
            .into_values()
            .collect();
        let mut labels = base.labels.clone();
        labels.extend(self.labels);
        RunConfig {
            entrypoint: self.entrypoint.or_else(|| base.entrypoint.clone()),
            cmd: self.cmd.or_else(|| base.cmd.clone()),
            env,
            working_dir: self.working_dir.or_else(|| base.working_dir.clone()),
            user: self.user.or_else(|| base.user.clone()),
            exposed_ports: base
                .exposed_ports
                .union(&self.exposed_ports)
                .cloned()
                .collect(),
            labels,
            volumes: base.volumes.union(&self.volumes).cloned().collect(),
            stop_signal: self.stop_signal.or_else(|| base.stop_signal.clone()),
        }
    }

    /// Checks what the OCI image spec and runtimes require: an absolute
    /// working directory, environment and label keys that are not empty and
    /// hold no control character (a newline would end the line they sit
    /// on in `docker inspect` and env files), and no NUL anywhere (argv and
    /// the environment cannot carry one).
    pub fn check(&self) -> Result<(), InvalidConfig> {
        let bad = |field, value: &str, problem| {
            Err(InvalidConfig {
                field,
                value: value.to_owned(),
                problem,
            })
        };
        for e in &self.env {
            let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
            if key.is_empty() || !e.contains('=') {
                return bad("--env", e, "expected KEY=VALUE with a non-empty KEY");
            }
            if has_control(key) {
                return bad("--env", e, "the key holds a control character");
            }
            if e.contains('\0') {
                return bad("--env", e, "holds a NUL byte");
            }
        }
        if let Some(w) = &self.working_dir {
            if !w.starts_with('/') {
                return bad("--workdir", w, "expected an absolute path");
            }
            if has_control(w) {
                return bad("--workdir", w, "holds a control character");
            }
        }
        if let Some(u) = &self.user {
            if u.is_empty() || has_control(u) || u.contains(char::is_whitespace) {
                return bad(
                    "--user",
                    u,
                    "expected USER[:GROUP] (names or ids) without spaces or control characters",
                );
            }
        }
        for v in &self.volumes {
            if !v.starts_with('/') || has_control(v) {
                return bad("--volume", v, "expected an absolute path");
            }
        }
        if let Some(s) = &self.stop_signal {
            if !valid_signal(s) {
                return bad(
                    "--stop-signal",
                    s,
                    "expected a signal name such as SIGTERM or SIGINT, or its number",
                );
            }
        }
        let argv = self.entrypoint.iter().chain(&self.cmd).flatten();
        if let Some(arg) = argv.into_iter().find(|a| a.contains('\0')) {
            return bad("--entrypoint/--cmd", arg, "holds a NUL byte");
        }
        check_key_values("--label", &self.labels)
    }
}

/// A stop signal runtimes take: `SIGNAME` (upper-case letters, digits and
/// `+`/`-` as in `SIGRTMIN+3`) or a number from 1 to 64.
fn valid_signal(s: &str) -> bool {
    match s.strip_prefix("SIG") {
        Some(name) => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
        }
        None => s.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n)),
    }
}

/// Checks annotation or label keys (not empty, no control character) and
/// values (no NUL).
pub fn check_key_values(
    field: &'static str,
    map: &BTreeMap<String, String>,
) -> Result<(), InvalidConfig> {
    for (k, v) in map {
        let problem = if k.is_empty() {
            Some("the key is empty")
        } else if has_control(k) {
            Some("the key holds a control character")
        } else if v.contains('\0') {
            Some("the value holds a NUL byte")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(InvalidConfig {
                field,
                value: format!("{k}={v}"),
                problem,
            });
        }
    }
    Ok(())
}

/// A document ready to be written as a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

impl Blob {
    /// A document of `media_type` holding `bytes`.
    pub fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        let digest = Digest::of(&bytes);
        Blob {
            media_type,
            bytes,
            digest,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Why a document could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("assembling the {what}")]
    Spec {
        what: &'static str,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("serialising the {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

fn spec(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageError {
    move |source| ImageError::Spec { what, source }
}

fn canonical<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, ImageError> {
    to_canonical_vec(value).map_err(|source| ImageError::Json { what, source })
}

fn oci_digest(d: &Digest) -> Result<oci_spec::image::Digest, ImageError> {
    d.as_str().parse().map_err(spec("digest"))
}

fn media_type(m: &str) -> MediaType {
    MediaType::from(m)
}

/// A layer as an image's documents name it: its blob, its uncompressed
/// content's digest and the store paths it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer<'a> {
    pub media_type: &'a str,
    /// The digest of the blob.
    pub digest: &'a Digest,
    /// The size of the blob.
    pub size: u64,
    /// The digest of the uncompressed tar.
    pub diff_id: &'a Digest,
    pub store_paths: &'a [StorePath],
}

/// The `history` comment of a layer: the store paths it holds.
pub fn history_comment(layer: &Layer) -> String {
    if layer.store_paths.is_empty() {
        return "files outside the store".to_owned();
    }
    let names: Vec<&str> = layer.store_paths.iter().map(|p| p.as_str()).collect();
    format!("store paths: {}", names.join(" "))
}

/// The value of [`ANNOTATION_STORE_PATHS`] for a layer.
pub fn store_paths_annotation(layer: &Layer) -> String {
    let names: Vec<&str> = layer.store_paths.iter().map(|p| p.base_name()).collect();
    names.join(" ")
}

/// The image configuration of one platform; on a base image, the base's
/// `diff_ids` and `history` come first (its runtime settings are merged
/// into `run` already).
pub fn config_blob(
    platform: &Platform,
    run: &RunConfig,
    layers: &[Layer],
    created: &str,
    base: Option<&BasePlatform>,
) -> Result<Blob, ImageError> {
    let mut cb = ConfigBuilder::default();
    if let Some(e) = &run.entrypoint {
        cb = cb.entrypoint(e.clone());
    }
    if let Some(c) = &run.cmd {
        cb = cb.cmd(c.clone());
    }
    if !run.env.is_empty() {
        cb = cb.env(run.env.clone());
    }
    if let Some(w) = &run.working_dir {
        cb = cb.working_dir(w.clone());
    }
    if let Some(u) = &run.user {
        cb = cb.user(u.clone());
    }
    if !run.exposed_ports.is_empty() {
        cb = cb.exposed_ports(run.exposed_ports.iter().cloned().collect::<Vec<_>>());
    }
    if !run.volumes.is_empty() {
        cb = cb.volumes(run.volumes.iter().cloned().collect::<Vec<_>>());
    }
    if let Some(s) = &run.stop_signal {
        cb = cb.stop_signal(s.clone());
    }
    if !run.labels.is_empty() {
        cb = cb.labels(
            run.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    let config = cb.build().map_err(spec("image configuration"))?;

    let base_diff_ids = base.map(|b| b.diff_ids.as_slice()).unwrap_or_default();
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(
            base_diff_ids
                .iter()
                .chain(layers.iter().map(|l| l.diff_id))
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(spec("image configuration"))?;
    let mut history = Vec::new();
    for h in base.map(|b| b.history.as_slice()).unwrap_or_default() {
        history.push(
            serde_json::from_value::<oci_spec::image::History>(h.clone()).map_err(|source| {
                ImageError::Json {
                    what: "base image's history",
                    source,
                }
            })?,
        );
    }
    let ours = layers
        .iter()
        .map(|l| {
            HistoryBuilder::default()
                .created(created)
                .created_by(CREATED_BY)
                .comment(history_comment(l))
                .build()
                .map_err(spec("image configuration"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    history.extend(ours);

    let mut ib = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(platform.architecture.as_str()))
        .os(Os::from(platform.os.as_str()))
        .config(config)
        .rootfs(rootfs)
        .history(history);
    if let Some(v) = &platform.variant {
        ib = ib.variant(v.clone());
    }
    let doc = ib.build().map_err(spec("image configuration"))?;
    Ok(Blob::new(
        MEDIA_TYPE_CONFIG,
        canonical("image configuration", &doc)?,
    ))
}

/// The manifest of one platform's image; on a base image, the base's
/// layers come first, as the base names them (marked
/// [`ANNOTATION_BASE_LAYER`]), and the manifest names the base
/// ([`ANNOTATION_BASE_DIGEST`], and [`ANNOTATION_BASE_NAME`] when
/// `base_name` is known).
pub fn manifest_blob(
    config: &Blob,
    layers: &[Layer],
    annotations: &BTreeMap<String, String>,
    base: Option<(&BasePlatform, Option<&str>)>,
) -> Result<Blob, ImageError> {
    let config_desc = DescriptorBuilder::default()
        .media_type(media_type(config.media_type))
        .digest(oci_digest(&config.digest)?)
        .size(config.size())
        .build()
        .map_err(spec("image manifest"))?;
    let mut layer_descs = Vec::new();
    let mut annotations = annotations.clone();
    if let Some((b, name)) = base {
        for l in &b.layers {
            let mut marked = l.annotations.clone();
            marked.insert(ANNOTATION_BASE_LAYER.to_owned(), "true".to_owned());
            layer_descs.push(
                DescriptorBuilder::default()
                    .media_type(media_type(l.media_type.as_str()))
                    .digest(oci_digest(&l.digest)?)
                    .size(l.size.unwrap_or_default())
                    .annotations(hash_map(&marked))
                    .build()
                    .map_err(spec("image manifest"))?,
            );
        }
        annotations.insert(
            ANNOTATION_BASE_DIGEST.to_owned(),
            b.manifest.digest.to_string(),
        );
        if let Some(name) = name {
            annotations.insert(ANNOTATION_BASE_NAME.to_owned(), name.to_owned());
        }
    }
    let ours = layers
        .iter()
        .map(|l| {
            DescriptorBuilder::default()
                .media_type(media_type(l.media_type))
                .digest(oci_digest(l.digest)?)
                .size(l.size)
                .annotations(std::collections::HashMap::from([
                    if l.store_paths.is_empty() {
                        (ANNOTATION_ROOT_LAYER.to_owned(), "true".to_owned())
                    } else {
                        (ANNOTATION_STORE_PATHS.to_owned(), store_paths_annotation(l))
                    },
                ]))
                .build()
                .map_err(spec("image manifest"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    layer_descs.extend(ours);
    let mut mb = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layer_descs);
    if !annotations.is_empty() {
        mb = mb.annotations(hash_map(&annotations));
    }
    let doc = mb.build().map_err(spec("image manifest"))?;
    Ok(Blob::new(
        MEDIA_TYPE_MANIFEST,
        canonical("image manifest", &doc)?,
    ))
}

/// The image index listing every platform's manifest, in platform order.
pub fn index_blob(
    manifests: &[(&Platform, &Blob)],
    annotations: &BTreeMap<String, String>,
) -> Result<Blob, ImageError> {
    let mut sorted: Vec<&(&Platform, &Blob)> = manifests.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let descs = sorted
        .into_iter()
        .map(|(platform, blob)| {
            let mut pb = PlatformBuilder::default()
                .architecture(Arch::from(platform.architecture.as_str()))
                .os(Os::from(platform.os.as_str()));
            if let Some(v) = &platform.variant {
                pb = pb.variant(v.clone());
            }
            DescriptorBuilder::default()
                .media_type(media_type(blob.media_type))
                .digest(oci_digest(&blob.digest)?)
                .size(blob.size())
                .platform(pb.build().map_err(spec("image index"))?)
                .build()
                .map_err(spec("image index"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ib = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(descs);
    if !annotations.is_empty() {
        ib = ib.annotations(hash_map(annotations));
    }
    let doc = ib.build().map_err(spec("image index"))?;
    Ok(Blob::new(MEDIA_TYPE_INDEX, canonical("image index", &doc)?))
}

/// One entry of a layout's `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields nixoci does not know, kept as they were.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl From<&IndexEntry> for super::model::Descriptor {
    fn from(e: &IndexEntry) -> Self {
        super::model::Descriptor {
            media_type: e.media_type.clone().into(),
            digest: e.digest.clone(),
            size: Some(e.size),
            platform: None,
            annotations: e.annotations.clone(),
        }
    }
}

impl IndexEntry {
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(ANNOTATION_REF_NAME)
            .map(String::as_str)
    }
}

/// A layout's top-level `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<IndexEntry>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for TopIndex {
    fn default() -> Self {
        TopIndex {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
            manifests: Vec::new(),
            other: BTreeMap::new(),
        }
    }
}

impl TopIndex {
    /// Points `tag` at `target`: replaces the entry with that tag in place,
    /// or appends one. Other tags stay as they were.
    pub fn set_tag(&mut self, tag: &str, target: &Blob) {
        self.set_tag_to(tag, target.media_type, &target.digest, target.size());
    }

    /// [`TopIndex::set_tag`] with the target's descriptor fields.
    pub fn set_tag_to(&mut self, tag: &str, media_type: &str, digest: &Digest, size: u64) {
        let entry = IndexEntry {
            media_type: media_type.to_owned(),
            digest: digest.clone(),
            size,
            annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), tag.to_owned())]),
            other: BTreeMap::new(),
        };
        match self
            .manifests
            .iter_mut()
            .find(|e| e.ref_name() == Some(tag))
        {
            Some(e) => *e = entry,
            None => self.manifests.push(entry),
        }
    }

    pub fn to_canonical(&self) -> Result<Vec<u8>, ImageError> {
        canonical("index.json", self)
    }
}

fn hash_map(m: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Checks a tag against the grammar of `org.opencontainers.image.ref.name`:
/// components of alphanumerics joined by `-._:@+` or `--`, separated by `/`.
pub fn valid_ref_name(tag: &str) -> bool {
    fn component(c: &str) -> bool {
        let b = c.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            // A separator: one of -._:@+ or "--", followed by an alphanumeric.
            let sep_len = if b[i] == b'-' && b.get(i + 1) == Some(&b'-') {
                2
            } else if b"-._:@+".contains(&b[i]) {
                1
            } else {
                return false;
            };
            i += sep_len;
            if !b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                return false;
            }
        }
        true
    }
    tag.len() <= 1024 && tag.split('/').all(component)
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_configs_runtimes_cannot_take_are_refused() {
        let ok = RunConfig {
            env: vec!["PATH=/bin".into(), "MULTI=a\nb".into(), "EMPTY=".into()],
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
            labels: [("org.example.x".to_owned(), "y\nz".to_owned())].into(),
            ..RunConfig::default()
        };
        assert_eq!(ok.check(), Ok(()));
        let cases: Vec<(&str, RunConfig)> = vec![
            (
                "--env",
                RunConfig {
                    env: vec!["A\nB=1".into()],
                    ..ok.clone()
                },
            ),
            (
                "--env",
                RunConfig {
                    env: vec!["=1".into()],
                    ..ok.clone()
                },
            ),
            (
                "--env",
                RunConfig {
                    env: vec!["A=\0".into()],
                    ..ok.clone()
                },
            ),
            (
                "--env",
                RunConfig {
                    env: vec!["NOVALUE".into()],
                    ..ok.clone()
                },
            ),
            (
                "--workdir",
                RunConfig {
                    working_dir: Some("relative".into()),
                    ..ok.clone()
                },
            ),
            (
                "--workdir",
                RunConfig {
                    working_dir: Some("".into()),
                    ..ok.clone()
                },
            ),
            (
                "--workdir",
                RunConfig {
                    working_dir: Some("/a\tb".into()),
                    ..ok.clone()
                },
            ),
            (
                "--user",
                RunConfig {
                    user: Some("a b".into()),
                    ..ok.clone()
                },
            ),
            (
                "--user",
                RunConfig {
                    user: Some("".into()),
                    ..ok.clone()
                },
            ),
            (
                "--entrypoint/--cmd",
                RunConfig {
                    cmd: Some(vec!["a\0".into()]),
                    ..ok.clone()
                },
            ),
            (
                "--label",
                RunConfig {
                    labels: [("a\u{1b}".to_owned(), "1".to_owned())].into(),
                    ..ok.clone()
                },
            ),
            (
                "--label",
                RunConfig {
                    labels: [(String::new(), "1".to_owned())].into(),
                    ..ok.clone()
                },
            ),
        ];
        for (field, config) in cases {
            let e = config.check().unwrap_err();
            assert_eq!(e.field, field, "{config:?}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        for bad in ["TERM", "SIGterm", "SIG", "0", "65", ""] {
            let c = RunConfig {
                stop_signal: Some(bad.into()),
                ..ok.clone()
            };
            assert_eq!(c.check().unwrap_err().field, "--stop-signal", "{bad}");
        }
        for good in ["SIGTERM", "SIGRTMIN+3", "9"] {
            let c = RunConfig {
                stop_signal: Some(good.into()),
                ..ok.clone()
            };
            assert_eq!(c.check(), Ok(()), "{good}");
        }
        let c = RunConfig {
            volumes: ["data".to_owned()].into(),
            ..ok.clone()
        };
        assert_eq!(c.check().unwrap_err().field, "--volume");
        let annotations = BTreeMap::from([("a\rb".to_owned(), "x".to_owned())]);
        assert!(check_key_values("--annotation", &annotations).is_err());
    }

    use super::super::media_type::MEDIA_TYPE_TAR_GZIP;
    use super::*;

    /// What a [`Layer`] borrows.
    struct Built {
        store_paths: Vec<StorePath>,
        diff_id: Digest,
        digest: Digest,
        size: u64,
    }

    impl Built {
        fn layer(&self) -> Layer<'_> {
            Layer {
                media_type: MEDIA_TYPE_TAR_GZIP,
                digest: &self.digest,
                size: self.size,
                diff_id: &self.diff_id,
                store_paths: &self.store_paths,
            }
        }
    }

    fn layer(n: u8) -> Built {
        Built {
            store_paths: vec![StorePath::from_absolute(&format!(
                "/nix/store/{}-p{n}",
                "a".repeat(32)
            ))
            .unwrap()],
            diff_id: Digest::of(&[n]),
            digest: Digest::of(&[n, n]),
            size: 100 + u64::from(n),
        }
    }

    #[test]
    fn config_has_platform_rootfs_and_history() {
        let l1 = layer(1);
        let l2 = layer(2);
        let run = RunConfig {
            entrypoint: Some(vec!["/bin/sh".into()]),
            env: vec!["A=1".into(), "B=2".into()],
            exposed_ports: ["8080/tcp".to_string()].into(),
            labels: [("z".to_string(), "1".to_string()), ("a".into(), "2".into())].into(),
            ..RunConfig::default()
        };
        let p: Platform = "linux/arm64".parse().unwrap();
        let blob = config_blob(
            &p,
            &run,
            &[l1.layer(), l2.layer()],
            "1970-01-01T00:00:00Z",
            None,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&blob.bytes).unwrap();
        assert_eq!(v["architecture"], "arm64");
        assert_eq!(v["os"], "linux");
        assert_eq!(v["variant"], "v8");
        assert_eq!(v["created"], "1970-01-01T00:00:00Z");
        assert_eq!(v["rootfs"]["type"], "layers");
        assert_eq!(v["rootfs"]["diff_ids"][1], l2.diff_id.as_str());
        assert_eq!(v["history"].as_array().unwrap().len(), 2);
        assert!(v["history"][0]["comment"].as_str().unwrap().contains("-p1"));
        assert_eq!(
            v["config"]["ExposedPorts"]["8080/tcp"],
            serde_json::json!({})
        );
        assert_eq!(v["config"]["Labels"]["a"], "2");
        // Canonical: re-encoding gives the same bytes.
        assert_eq!(to_canonical_vec(&v).unwrap(), blob.bytes);
        assert_eq!(blob.digest, Digest::of(&blob.bytes));
    }

    #[test]
    fn manifest_and_index() {
        let l1 = layer(1);
        let amd: Platform = "linux/amd64".parse().unwrap();
        let arm: Platform = "linux/arm64".parse().unwrap();
        let cfg = config_blob(
            &amd,
            &RunConfig::default(),
            &[l1.layer()],
            "1970-01-01T00:00:00Z",
            None,
        )
        .unwrap();
        let m = manifest_blob(&cfg, &[l1.layer()], &BTreeMap::new(), None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(v["config"]["mediaType"], MEDIA_TYPE_CONFIG);
        assert_eq!(v["config"]["digest"], cfg.digest.as_str());
        assert_eq!(v["layers"][0]["mediaType"], MEDIA_TYPE_TAR_GZIP);
        assert_eq!(v["layers"][0]["size"], 101);
        assert_eq!(
            v["layers"][0]["annotations"][ANNOTATION_STORE_PATHS],
            format!("{}-p1", "a".repeat(32))
        );

        // Platforms come out sorted whatever order they go in.
        let a = index_blob(&[(&arm, &m), (&amd, &m)], &BTreeMap::new()).unwrap();
        let b = index_blob(&[(&amd, &m), (&arm, &m)], &BTreeMap::new()).unwrap();
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(v["mediaType"], MEDIA_TYPE_INDEX);
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(v["manifests"][1]["platform"]["variant"], "v8");
    }

    #[test]
    fn a_config_on_a_base_keeps_what_it_does_not_set() {
        let base = RunConfig {
            entrypoint: Some(vec!["/bin/base".into()]),
            cmd: Some(vec!["serve".into()]),
            env: vec!["PATH=/bin".into(), "A=base".into(), "Z=base".into()],
            working_dir: Some("/srv".into()),
            user: Some("nobody".into()),
            exposed_ports: ["80/tcp".to_owned()].into(),
            labels: [
                ("a".to_owned(), "base".to_owned()),
                ("b".into(), "base".into()),
            ]
            .into(),
            volumes: ["/data".to_owned()].into(),
            stop_signal: Some("SIGQUIT".into()),
        };
        let ours = RunConfig {
            entrypoint: Some(vec!["/nix/store/x/bin/app".into()]),
            env: vec!["A=ours".into(), "M=ours".into()],
            exposed_ports: ["8080/tcp".to_owned()].into(),
            labels: [("b".to_owned(), "ours".to_owned())].into(),
            ..RunConfig::default()
        };
        let merged = ours.on_base(&base);
        assert_eq!(
            merged.env,
            ["A=ours", "M=ours", "PATH=/bin", "Z=base"],
            "by key, ours win, sorted"
        );
        assert_eq!(merged.entrypoint, Some(vec!["/nix/store/x/bin/app".into()]));
        assert_eq!(merged.cmd, base.cmd);
        assert_eq!(merged.working_dir, base.working_dir);
        assert_eq!(merged.user, base.user);
        assert_eq!(merged.stop_signal, base.stop_signal);
        assert_eq!(merged.exposed_ports.len(), 2);
        assert_eq!(merged.labels["a"], "base");
        assert_eq!(merged.labels["b"], "ours");
        assert!(merged.volumes.contains("/data"));
        // Nothing of ours: the base's config, Env sorted.
        let only = RunConfig::default().on_base(&base);
        assert_eq!(only.env, ["A=base", "PATH=/bin", "Z=base"]);
        assert_eq!(only.entrypoint, base.entrypoint);
    }

    #[test]
    fn a_base_comes_first_in_the_config_and_the_manifest() {
        use super::super::model::Descriptor;
        let ours = layer(1);
        let base_layer = Descriptor::new(MEDIA_TYPE_TAR_GZIP, Digest::of(b"base"), 7);
        let base = BasePlatform {
            manifest: Descriptor::new(MEDIA_TYPE_MANIFEST, Digest::of(b"m"), 3),
            config: Descriptor::new(MEDIA_TYPE_CONFIG, Digest::of(b"c"), 3),
            layers: vec![base_layer.clone()],
            diff_ids: vec![Digest::of(b"base tar")],
            history: vec![serde_json::json!({"created_by": "base", "comment": "from the base"})],
            run: RunConfig::default(),
        };
        let p: Platform = "linux/amd64".parse().unwrap();
        let created = "1970-01-01T00:00:00Z";
        let cfg = config_blob(
            &p,
            &RunConfig::default(),
            &[ours.layer()],
            created,
            Some(&base),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&cfg.bytes).unwrap();
        assert_eq!(
            v["rootfs"]["diff_ids"],
            serde_json::json!([Digest::of(b"base tar").as_str(), ours.diff_id.as_str()])
        );
        assert_eq!(v["history"][0]["comment"], "from the base");
        assert_eq!(v["history"][0]["created_by"], "base");
        assert!(v["history"][1]["comment"].as_str().unwrap().contains("-p1"));
        for name in [Some("127.0.0.1:5000/base"), None] {
            let m = manifest_blob(&cfg, &[ours.layer()], &BTreeMap::new(), Some((&base, name)))
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
            assert_eq!(v["layers"][0]["digest"], base_layer.digest.as_str());
            assert_eq!(v["layers"][0]["size"], 7);
            assert_eq!(v["layers"][0]["annotations"][ANNOTATION_BASE_LAYER], "true");
            assert_eq!(v["layers"][1]["digest"], ours.digest.as_str());
            assert_eq!(
                v["annotations"][ANNOTATION_BASE_DIGEST],
                Digest::of(b"m").as_str()
            );
            assert_eq!(
                v["annotations"]
                    .get(ANNOTATION_BASE_NAME)
                    .and_then(|n| n.as_str()),
                name
            );
        }
        // Without a base, nothing of it.
        let plain = manifest_blob(&cfg, &[ours.layer()], &BTreeMap::new(), None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain.bytes).unwrap();
        assert!(v.get("annotations").is_none(), "{v}");
    }

    #[test]
    fn tags_replace_in_place() {
        let blob = Blob::new(MEDIA_TYPE_INDEX, b"{}".to_vec());
        let other = Blob::new(MEDIA_TYPE_INDEX, b"[]".to_vec());
        let mut idx = TopIndex::default();
        idx.set_tag("a", &blob);
        idx.set_tag("b", &blob);
        idx.set_tag("a", &other);
        assert_eq!(idx.manifests.len(), 2);
        assert_eq!(idx.manifests[0].digest, other.digest);
        assert_eq!(idx.manifests[1].ref_name(), Some("b"));
        let text = String::from_utf8(idx.to_canonical().unwrap()).unwrap();
        assert!(
            text.starts_with(
                r#"{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"a"}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn ref_names() {
        for good in [
            "latest",
            "1.0",
            "example.org/app:1.0",
            "a--b",
            "a_b.c-d",
            "reg:5000/x/y:v1+build",
        ] {
            assert!(valid_ref_name(good), "{good}");
        }
        for bad in [
            "", "Bad Tag!", "a/", "/a", "a//b", "-a", "a-", "a:", "a..", "é",
        ] {
            assert!(!valid_ref_name(bad), "{bad}");
        }
    }
}
