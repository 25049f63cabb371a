//! The build pipeline from closures to a written layout: plan, build the
//! distinct layers in parallel, write each platform's config and manifest,
//! the image index, and last `index.json`. Returns the build report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::closure::Closure;
use crate::layer::{self, BuiltLayer, LayerOptions, LayerOutcome};
use crate::oci::image::{self, Blob, RunConfig};
use crate::oci::layout::Layout;
use crate::oci::Digest;
use crate::plan::{self, LayerPlan};
use crate::platform::Platform;
use crate::store_path::StorePath;

/// Version of the JSON form of [`BuildReport`].
pub const REPORT_VERSION: u32 = 1;

/// One platform's image, ready to build.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub roots: Vec<StorePath>,
    pub closure: Closure,
    pub run: RunConfig,
}

/// Everything a build needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub images: BTreeMap<Platform, ImageRequest>,
    pub tag: String,
    pub output: PathBuf,
    /// RFC 3339 creation time for configs and history.
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub max_layers: usize,
    /// Reserved layers, minimum layer size, pins and the previous image.
    pub layering: plan::Layering,
    pub jobs: usize,
    pub layer_options: LayerOptions,
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
    #[error("assembling the image documents")]
    Image(#[from] image::ImageError),
}

/// The plan of a request, without building anything.
pub fn plan_request(req: &BuildRequest) -> Result<LayerPlan, BuildError> {
    let closures: BTreeMap<Platform, Closure> = req
        .images
        .iter()
        .map(|(p, i)| (p.clone(), i.closure.clone()))
        .collect();
    Ok(plan::plan(&closures, req.max_layers, &req.layering)?)
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

/// Builds the layout `req` describes. `on_layer` is called as each layer
/// finishes, from worker threads.
pub fn build(
    req: &BuildRequest,
    on_plan: &dyn Fn(&LayerPlan),
    on_layer: &(dyn Fn(&BuiltLayer) + Sync),
) -> Result<BuildReport, BuildError> {
    let plan = plan_request(req)?;
    on_plan(&plan);
    let layout = Layout::open(&req.output)?;

    let blobs_dir = layout.blobs_dir();
    let groups: Vec<Vec<StorePath>> = plan.layers.iter().map(|l| l.store_paths.clone()).collect();
    // NAR hashes key the layer cache; NAR sizes order the work.
    let infos: BTreeMap<StorePath, crate::closure::PathInfo> = req
        .images
        .values()
        .flat_map(|i| i.closure.paths.iter())
        .map(|(p, info)| (p.clone(), info.clone()))
        .collect();
    let outcomes = layer::build_layers(
        &groups,
        &infos,
        &req.layer_options,
        &blobs_dir,
        req.jobs,
        on_layer,
    )
    .map_err(|e| match e {
        layer::LayerError::InLayer { index, source } => BuildError::Layer {
            index: index + 1,
            count: groups.len(),
            name: layer_name(&groups[index]),
            source: *source,
        },
        other => BuildError::Layers(other),
    })?;
    let built: Vec<BuiltLayer> = outcomes.iter().map(|o| o.layer.clone()).collect();

    let mut platforms = Vec::new();
    let mut manifests: Vec<(Platform, Blob)> = Vec::new();
    for image_plan in &plan.images {
        let request = &req.images[&image_plan.platform];
        let layers: Vec<&BuiltLayer> = image_plan.layers.iter().map(|&i| &built[i]).collect();
        let config = image::config_blob(&image_plan.platform, &request.run, &layers, &req.created)?;
        let manifest = image::manifest_blob(&config, &layers, &req.annotations)?;
        layout.write_blob(&config)?;
        layout.write_blob(&manifest)?;
        platforms.push(PlatformReport {
            platform: image_plan.platform.clone(),
            roots: request.roots.clone(),
            manifest: (&manifest).into(),
            config: (&config).into(),
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
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
        layers: outcomes,
    })
}
