//! The build pipeline from closures to a written layout: plan, build the
//! distinct layers in parallel, write each platform's config and manifest,
//! the image index, and last `index.json`. Returns the build report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::closure::Closure;
use crate::elf::{self, ElfFile};
use crate::layer::{self, BuiltLayer, Cache, LayerOptions, LayerOutcome};
use crate::oci::base::BasePlatform;
use crate::oci::image::{self, Blob, RunConfig};
use crate::oci::layout::Layout;
use crate::oci::Digest;
use crate::plan::{self, LayerPlan};
use crate::platform::Platform;
use crate::publish::base::Base;
use crate::rootfs::RootFs;
use crate::store_path::StorePath;

/// Version of the JSON form of [`BuildReport`].
pub const REPORT_VERSION: u32 = 1;

/// One platform's image, ready to build.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub roots: Vec<StorePath>,
    pub closure: Closure,
    pub run: RunConfig,
    /// The entries outside the store (empty: no root layer), written as one
    /// layer on top of the store layers.
    pub rootfs: RootFs,
    /// The base image's layers (`--from`), below the store layers; its
    /// config is merged into `run` already.
    pub base: Option<BasePlatform>,
}

/// Everything a plan needs, resolved and validated: what `nixoci plan`
/// prints and what a build plans.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub images: BTreeMap<Platform, ImageRequest>,
    pub max_layers: usize,
    /// Reserved layers, minimum layer size, pins and the previous image.
    pub layering: plan::Layering,
}

/// Everything a build needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub plan: PlanRequest,
    pub tag: String,
    pub output: PathBuf,
    /// RFC 3339 creation time for configs and history.
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub jobs: usize,
    pub layer_options: LayerOptions,
    pub arch_check: ArchCheck,
    /// The base image (`--from`): where its blobs come from, and its name.
    pub base: Option<Base>,
}

/// Whether each platform's store layers are checked for ELF programs and
/// libraries of another architecture (`crate::elf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchCheck {
    Off,
    /// On; a mismatch ends with `off_switch`, how to turn the check off
    /// where the build was asked for (`--no-arch-check`, ociLayout's
    /// `archCheck = false`).
    On {
        off_switch: &'static str,
    },
}

/// A blob's descriptor in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobRef {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl From<&Blob> for BlobRef {
    fn from(b: &Blob) -> Self {
        BlobRef {
            media_type: b.media_type.to_owned(),
            digest: b.digest.clone(),
            size: b.size(),
        }
    }
}

/// One platform in the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformReport {
    pub platform: Platform,
    pub roots: Vec<StorePath>,
    pub manifest: BlobRef,
    pub config: BlobRef,
    /// Layer digests, bottom first.
    pub layers: Vec<Digest>,
}

/// What `nixoci build --json` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    pub version: u32,
    pub layout: PathBuf,
    pub tag: String,
    pub index: BlobRef,
    pub platforms: Vec<PlatformReport>,
    /// Every distinct layer once, with where its blob came from (`cache`:
    /// `miss`, `hit` or `layout`).
    pub layers: Vec<LayerOutcome>,
}

/// Why a build failed, with the stage it failed in.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("planning layers")]
    Plan(#[from] plan::PlanError),
    #[error("opening the output layout")]
    Layout(#[from] crate::oci::layout::LayoutError),
    #[error("building layer {index} of {count} ({name})")]
    Layer {
        index: usize,
        count: usize,
        name: String,
        #[source]
        source: layer::LayerError,
    },
    #[error("building layers")]
    Layers(#[source] layer::LayerError),
    #[error("building the root layer")]
    RootLayer(#[source] layer::LayerError),
    /// An image holds an ELF file its platform cannot run: the user named
    /// the wrong store path for the platform.
    #[error("{mismatch} ({off_switch})")]
    Arch {
        mismatch: Box<elf::Mismatch>,
        off_switch: &'static str,
    },
    #[error("copying the base image's layers")]
    Base(#[source] crate::publish::base::BaseError),
    #[error("assembling the image documents")]
    Image(#[from] image::ImageError),
}

impl BuildError {
    /// True when the request, not the build, is at fault: a plan that
    /// cannot be made, an output that is no layout.
    pub fn is_usage(&self) -> bool {
        match self {
            BuildError::Plan(_) | BuildError::Arch { .. } => true,
            BuildError::Layout(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// The plan of a request, without building anything.
pub fn plan_request(req: &PlanRequest) -> Result<LayerPlan, BuildError> {
    Ok(plan::plan(&closures(req), req.max_layers, &req.layering)?)
}

/// The closures of a request, borrowed, not cloned: a closure of 100,000
/// paths takes about 100 MB.
fn closures(req: &PlanRequest) -> BTreeMap<Platform, &Closure> {
    req.images
        .iter()
        .map(|(p, i)| (p.clone(), &i.closure))
        .collect()
}

/// The planner's source files, hashed (their code only) into every plan
/// key: a planner that plans differently never reuses an old plan. A test
/// keeps the list equal to the files of `src/plan/` but `tests.rs`, whose
/// tests never reach the binary.
const PLANNER_SOURCES: [(&str, &str); 5] = [
    ("baseline.rs", include_str!("plan/baseline.rs")),
    ("graph.rs", include_str!("plan/graph.rs")),
    ("merge.rs", include_str!("plan/merge.rs")),
    ("mod.rs", include_str!("plan/mod.rs")),
    ("score.rs", include_str!("plan/score.rs")),
];

/// The plan cache's key of a request: SHA-256 over a versioned text of
/// everything the planner reads (closures with sizes and references,
/// budget, layering options, previous image) and the planner's source.
pub fn plan_key(req: &PlanRequest) -> Result<Digest, serde_json::Error> {
    let mut text = String::from("nixoci plan cache key v1\n");
    // The planner's code, without its tests and comments.
    text.push_str(&format!(
        "planner {}\n",
        crate::layer::cache::source_fingerprint(&PLANNER_SOURCES)
    ));
    let l = &req.layering;
    text.push_str(&format!(
        "max_layers {}\nreserve_layers {}\nmin_layer_size {}\npins {}\nprevious {}\nclosures {}\n",
        req.max_layers,
        l.reserve_layers,
        l.min_layer_size,
        serde_json::to_string(&l.pins)?,
        serde_json::to_string(&l.previous)?,
        serde_json::to_string(&closures(req))?,
    ));
    Ok(Digest::of(text.as_bytes()))
}

/// Whether `plan` is a plan of `req`: each image's layers hold every path
/// of its closure exactly once and fit the budget. A stored plan must pass
/// this before it is used.
fn plan_fits(plan: &LayerPlan, req: &PlanRequest) -> bool {
    let budget = req.max_layers.saturating_sub(req.layering.reserve_layers);
    plan.version == plan::PLAN_VERSION
        && plan.images.len() == req.images.len()
        && plan
            .images
            .iter()
            .zip(&req.images)
            .all(|(image, (platform, request))| {
                let mut seen = std::collections::BTreeSet::new();
                image.platform == *platform
                    && image.layers.len() <= budget
                    && image.layers.iter().all(|&i| {
                        plan.layers.get(i).is_some_and(|layer| {
                            layer.store_paths.iter().all(|p| {
                                request.closure.paths.contains_key(p) && seen.insert(p.clone())
                            })
                        })
                    })
                    && seen.len() == request.closure.paths.len()
            })
}

/// [`plan_request`], through the plan cache of `--cache-dir`: the same
/// request planned before is not planned again. Without a usable cache,
/// plans.
fn plan_cached(req: &PlanRequest, cache: Option<&Cache>) -> Result<LayerPlan, BuildError> {
    let (Some(cache), Ok(key)) = (cache, plan_key(req)) else {
        return plan_request(req);
    };
    if let Some(plan) = cache.plan(&key).filter(|p| plan_fits(p, req)) {
        return Ok(plan);
    }
    let plan = plan_request(req)?;
    // A cache that cannot take the plan costs a plan next time, nothing more.
    let _ = cache.store_plan(&key, &plan);
    Ok(plan)
}

/// A short human name for a layer: its first store path's name, and how
/// many more it holds.
pub fn layer_name(paths: &[StorePath]) -> String {
    match paths {
        [] => "empty".to_owned(),
        [one] => one.name().to_owned(),
        [first, rest @ ..] => format!("{} and {} more", first.name(), rest.len()),
    }
}

/// What a build tells its caller as it goes.
pub struct Events<'a> {
    /// The plan, before any layer is built.
    pub plan: &'a dyn Fn(&LayerPlan),
    /// Another process holds the output's lock; the build waits for it.
    pub waiting: &'a dyn Fn(),
    /// Temporary files (count, bytes) that builds which died left in the
    /// output, removed.
    pub stale: &'a dyn Fn(usize, u64),
    /// A layer finished; called from worker threads.
    pub layer: &'a (dyn Fn(&BuiltLayer) + Sync),
    /// Bytes read into layers, or layers not read (see [`read_size`]);
    /// called from worker threads as they read.
    pub progress: &'a (dyn Fn(layer::Progress) + Sync),
}

/// The size of what a build of `plan` reads, in [`layer::Progress`]'s
/// bytes: its layers' NAR sizes and its distinct root layers' contents.
/// The progress of the build adds up to this.
pub fn read_size(req: &PlanRequest, plan: &LayerPlan) -> u64 {
    let roots: std::collections::BTreeSet<&RootFs> = req
        .images
        .values()
        .filter(|i| !i.rootfs.is_empty())
        .map(|i| &i.rootfs)
        .collect();
    plan.layers.iter().map(|l| l.nar_size).sum::<u64>()
        + roots.into_iter().map(layer::root_layer_size).sum::<u64>()
}

/// How many layers a build of `plan` tells [`Events::layer`] of: the
/// planned ones, the base's distinct ones and the distinct root layers.
pub fn layer_count(req: &BuildRequest, plan: &LayerPlan) -> usize {
    let base: std::collections::BTreeSet<&Digest> = req
        .base
        .iter()
        .flat_map(|b| b.platforms.values())
        .flat_map(|p| p.layers.iter().map(|d| &d.digest))
        .collect();
    let roots: std::collections::BTreeSet<&RootFs> = req
        .plan
        .images
        .values()
        .filter(|i| !i.rootfs.is_empty())
        .map(|i| &i.rootfs)
        .collect();
    plan.layers.len() + base.len() + roots.len()
}

/// Builds the layout `req` describes.
pub fn build(req: &BuildRequest, events: &Events) -> Result<BuildReport, BuildError> {
    let plan = plan_cached(&req.plan, req.layer_options.cache.as_ref())?;
    (events.plan)(&plan);
    let layout = Layout::open_waiting(&req.output, &mut || (events.waiting)())?;
    match layout.stale_removed() {
        (0, _) => {}
        (count, bytes) => (events.stale)(count, bytes),
    }
    let on_layer = events.layer;

    let blobs_dir = layout.blobs_dir();
    let groups: Vec<Vec<StorePath>> = plan.layers.iter().map(|l| l.store_paths.clone()).collect();
    // NAR hashes key the layer cache; NAR sizes order the work.
    let infos: BTreeMap<StorePath, crate::closure::PathInfo> = req
        .plan
        .images
        .values()
        .flat_map(|i| i.closure.paths.iter())
        .map(|(p, info)| (p.clone(), info.clone()))
        .collect();
    // Each layer is checked against every platform whose image holds it.
    let mut users: Vec<Vec<&Platform>> = vec![Vec::new(); groups.len()];
    for image in &plan.images {
        for &i in &image.layers {
            if let Some(u) = users.get_mut(i) {
                u.push(&image.platform);
            }
        }
    }
    let check = |i: usize, files: &[ElfFile]| match req.arch_check {
        ArchCheck::Off => Ok(()),
        ArchCheck::On { .. } => users
            .get(i)
            .map_or(Ok(()), |u| u.iter().try_for_each(|p| elf::check(p, files))),
    };
    let outcomes = layer::build_layers(
        &groups,
        &infos,
        &req.layer_options,
        &blobs_dir,
        req.jobs,
        &check,
        on_layer,
        events.progress,
    )
    .map_err(|e| match e {
        layer::LayerError::InLayer { index, source } => match (*source, req.arch_check) {
            (layer::LayerError::Arch(mismatch), ArchCheck::On { off_switch }) => BuildError::Arch {
                mismatch,
                off_switch,
            },
            (source, _) => BuildError::Layer {
                index: index + 1,
                count: groups.len(),
                name: layer_name(&groups[index]),
                source,
            },
        },
        other => BuildError::Layers(other),
    })?;
    let built: Vec<BuiltLayer> = outcomes.iter().map(|o| o.layer.clone()).collect();
    // The base's layers, as they are: from the layer cache, the output, or
    // the base's layout or registry.
    let base_outcomes = match &req.base {
        Some(base) => base
            .place_blobs(req.layer_options.cache.as_ref(), &blobs_dir)
            .map_err(BuildError::Base)?,
        None => Vec::new(),
    };
    for o in &base_outcomes {
        on_layer(&o.layer);
    }
    // One root layer per distinct tree: platforms with the same entries
    // share its blob.
    let mut root_layers: BTreeMap<&RootFs, LayerOutcome> = BTreeMap::new();
    for image in req.plan.images.values() {
        if image.rootfs.is_empty() || root_layers.contains_key(&image.rootfs) {
            continue;
        }
        let outcome = layer::build_root_layer(
            &image.rootfs,
            &req.layer_options,
            &blobs_dir,
            events.progress,
        )
        .map_err(BuildError::RootLayer)?;
        on_layer(&outcome.layer);
        root_layers.insert(&image.rootfs, outcome);
    }

    let mut platforms = Vec::new();
    let mut manifests: Vec<(Platform, Blob)> = Vec::new();
    for image_plan in &plan.images {
        let request = &req.plan.images[&image_plan.platform];
        let mut layers: Vec<&BuiltLayer> = image_plan.layers.iter().map(|&i| &built[i]).collect();
        if let Some(root) = root_layers.get(&request.rootfs) {
            layers.push(&root.layer);
        }
        let described: Vec<image::Layer> = layers.iter().map(|l| l.oci_layer()).collect();
        let base = request.base.as_ref();
        let config = image::config_blob(
            &image_plan.platform,
            &request.run,
            &described,
            &req.created,
            base,
        )?;
        let base_name = req.base.as_ref().and_then(|b| b.name.as_deref());
        let manifest = image::manifest_blob(
            &config,
            &described,
            &req.annotations,
            base.map(|b| (b, base_name)),
        )?;
        layout.write_blob(&config)?;
        layout.write_blob(&manifest)?;
        platforms.push(PlatformReport {
            platform: image_plan.platform.clone(),
            roots: request.roots.clone(),
            manifest: (&manifest).into(),
            config: (&config).into(),
            layers: base
                .into_iter()
                .flat_map(|b| b.layers.iter().map(|l| l.digest.clone()))
                .chain(layers.iter().map(|l| l.digest.clone()))
                .collect(),
        });
        manifests.push((image_plan.platform.clone(), manifest));
    }
    let pairs: Vec<(&Platform, &Blob)> = manifests.iter().map(|(p, b)| (p, b)).collect();
    let index = image::index_blob(&pairs, &req.annotations)?;
    layout.write_blob(&index)?;
    layout.commit(&req.tag, &index)?;

    Ok(BuildReport {
        version: REPORT_VERSION,
        layout: req.output.clone(),
        tag: req.tag.clone(),
        index: (&index).into(),
        platforms,
        layers: base_outcomes
            .into_iter()
            .chain(outcomes)
            .chain(root_layers.into_values())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::closure::PathInfo;
    use crate::plan::{ImagePlan, Origin, PlannedLayer};

    fn sp(name: &str) -> StorePath {
        StorePath::from_absolute(&format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
    }

    fn request(names: &[&str], max_layers: usize) -> PlanRequest {
        let paths = names
            .iter()
            .map(|n| {
                let info = PathInfo {
                    path: sp(n),
                    nar_hash: String::new(),
                    nar_size: 10,
                    references: Default::default(),
                };
                (sp(n), info)
            })
            .collect();
        let closure = Closure {
            version: crate::closure::CLOSURE_VERSION,
            store_dir: crate::store_path::StoreDir::default(),
            paths,
        };
        let image = ImageRequest {
            roots: vec![sp(names[0])],
            closure,
            run: RunConfig::default(),
            rootfs: RootFs::default(),
            base: None,
        };
        PlanRequest {
            images: [("linux/amd64".parse().unwrap(), image)].into(),
            max_layers,
            layering: plan::Layering::default(),
        }
    }

    fn plan_of(layers: &[&[&str]]) -> LayerPlan {
        LayerPlan {
            version: plan::PLAN_VERSION,
            layers: layers
                .iter()
                .map(|l| PlannedLayer {
                    store_paths: l.iter().map(|n| sp(n)).collect(),
                    nar_size: 10 * l.len() as u64,
                    origin: Origin::Planned,
                })
                .collect(),
            images: vec![ImagePlan {
                platform: "linux/amd64".parse().unwrap(),
                layers: (0..layers.len()).collect(),
            }],
        }
    }

    #[test]
    fn a_stored_plan_must_fit_the_request() {
        let req = request(&["app", "lib", "base"], 2);
        assert!(plan_fits(&plan_of(&[&["base", "lib"], &["app"]]), &req));
        // A path missing, twice, or foreign; over the budget; another
        // platform; a layer index out of range.
        assert!(!plan_fits(&plan_of(&[&["base"], &["app"]]), &req));
        assert!(!plan_fits(
            &plan_of(&[&["base", "lib"], &["app", "lib"]]),
            &req
        ));
        assert!(!plan_fits(
            &plan_of(&[&["base", "lib"], &["app", "x"]]),
            &req
        ));
        assert!(!plan_fits(&plan_of(&[&["base"], &["lib"], &["app"]]), &req));
        let mut other = plan_of(&[&["base", "lib"], &["app"]]);
        other.images[0].platform = "linux/arm64".parse().unwrap();
        assert!(!plan_fits(&other, &req));
        let mut out_of_range = plan_of(&[&["base", "lib"], &["app"]]);
        out_of_range.images[0].layers.push(7);
        assert!(!plan_fits(&out_of_range, &req));
        let mut reserved = req.clone();
        reserved.layering.reserve_layers = 1;
        assert!(!plan_fits(
            &plan_of(&[&["base", "lib"], &["app"]]),
            &reserved
        ));
    }

    #[test]
    fn plan_key_follows_every_input() {
        let req = request(&["app", "lib"], 5);
        let key = plan_key(&req).unwrap();
        assert_eq!(plan_key(&req.clone()).unwrap(), key);
        let mut budget = req.clone();
        budget.max_layers = 4;
        let mut reserve = req.clone();
        reserve.layering.reserve_layers = 1;
        let mut min = req.clone();
        min.layering.min_layer_size = 1;
        let mut pins = req.clone();
        pins.layering.pins = vec![vec![sp("lib")]];
        let mut previous = req.clone();
        previous.layering.previous = Some(plan::Previous::default());
        let mut size = req.clone();
        for image in size.images.values_mut() {
            image
                .closure
                .paths
                .values_mut()
                .for_each(|i| i.nar_size = 11);
        }
        let others: BTreeSet<Digest> = [budget, reserve, min, pins, previous, size]
            .iter()
            .map(|r| plan_key(r).unwrap())
            .chain([key])
            .collect();
        assert_eq!(others.len(), 7);
    }

    #[test]
    fn planner_sources_are_every_file_of_src_plan() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plan");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files.retain(|f| f != "tests.rs");
        let listed: Vec<String> = PLANNER_SOURCES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(files, listed, "update PLANNER_SOURCES in src/pipeline.rs");
    }
}
