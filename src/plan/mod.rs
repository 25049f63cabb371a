//! The layer plan: which store paths go into which layer, for every
//! platform at once. Pure: closures, a budget and the layering options in,
//! a plan out.
//!
//! The plan minimises what clients pull again after an update. In Nix a
//! changed store path changes every path that depends on it, so a layer is
//! new after an update exactly when a path in the dependency closure of its
//! paths changed. The planner starts from one layer per path and merges,
//! best first, the pair of layers whose merge raises the expected re-pulled
//! bytes least (`merge.rs` has the cost model), until each image is within
//! `max_layers - reserve_layers` layers and no layer is below
//! `min_layer_size` where another can take it. Then:
//!
//! - a path shared by several platforms is in the same layer of every image
//!   that holds it (only paths of the same platforms are merged), so the
//!   layer is one blob;
//! - `--layer` groups ([`Layering::pins`]) are layers of their own;
//! - with a [`Previous`] image, its layers whose paths are all still in the
//!   closure are kept exactly, below the new ones, and new paths are placed
//!   without moving the old ones;
//! - the layers of an image are ordered bottom-up from the least likely to
//!   change, so runtimes keep their lower layers.
//!
//! Layers are identified by their sorted set of store paths: the same set
//! planned for two platforms is one layer. [`baseline`] has the two nixpkgs
//! algorithms and [`score`] the update scenarios that the benchmark
//! (`scripts/bench-layering`, `docs/layering.md`) compares them with.

pub mod baseline;
mod graph;
mod merge;
pub mod score;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::closure::Closure;
use crate::platform::Platform;
use crate::store_path::StorePath;

use graph::Graph;
use merge::{Kind, Unit};

/// Version of the JSON form of [`LayerPlan`]. Version 2 added
/// [`PlannedLayer::origin`].
pub const PLAN_VERSION: u32 = 2;

/// Default budget of layers per image.
pub const DEFAULT_MAX_LAYERS: usize = 100;

/// Why a layer holds what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// Placed by the planner.
    Planned,
    /// A `--layer` group.
    Pinned,
    /// Kept as it was in the previous image.
    Previous,
}

/// A distinct layer: sorted store paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedLayer {
    pub store_paths: Vec<StorePath>,
    /// Sum of the paths' NAR sizes, roughly the tar size.
    pub nar_size: u64,
    pub origin: Origin,
}

/// The layers of one platform's image, bottom first, as indices into
/// [`LayerPlan::layers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagePlan {
    pub platform: Platform,
    pub layers: Vec<usize>,
}

/// Every distinct layer once, and every image as a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerPlan {
    pub version: u32,
    pub layers: Vec<PlannedLayer>,
    /// In platform order.
    pub images: Vec<ImagePlan>,
}

/// The layers of a previous build of the image, read from its layer
/// annotations (`oci::previous`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Previous {
    /// Per platform, the previous image's layers bottom first, each as the
    /// base names (`HASH-NAME`) of its store paths.
    pub images: BTreeMap<Platform, Vec<Vec<String>>>,
}

impl From<crate::oci::previous::PreviousLayers> for Previous {
    fn from(read: crate::oci::previous::PreviousLayers) -> Previous {
        Previous {
            images: read.images,
        }
    }
}

/// How to layer, beyond the budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layering {
    /// Layers left for images built on top: each image gets at most
    /// `max_layers - reserve_layers`.
    pub reserve_layers: usize,
    /// A planned layer smaller than this many NAR bytes is merged into
    /// another of the same platforms; 0 turns this off.
    pub min_layer_size: u64,
    /// Groups of store paths that each make one layer of their own in every
    /// image that holds them. Overlapping groups are joined.
    pub pins: Vec<Vec<StorePath>>,
    /// The previous build, whose unchanged layers are kept.
    pub previous: Option<Previous>,
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the layer budget must be at least 1")]
    ZeroBudget,
    #[error("the closure for {0} is empty")]
    EmptyClosure(Platform),
    #[error("reserving {reserve} of {max_layers} layers leaves none for the image")]
    ReserveTooLarge { max_layers: usize, reserve: usize },
    #[error("--layer {0}: not in the closure of any platform")]
    PinNotInClosure(StorePath),
    #[error("{platform}: {needed} layers are needed for the --layer groups and the rest of the closure, but the budget is {budget}")]
    TooManyPins {
        platform: Platform,
        needed: usize,
        budget: usize,
    },
    #[error("{0} platforms: at most 64 can be planned together")]
    TooManyPlatforms(usize),
    #[error("{platform}: the plan has {layers} layers, over the budget of {budget}")]
    OverBudget {
        platform: Platform,
        layers: usize,
        budget: usize,
    },
}

/// Plans the layers of every platform's image within `max_layers` each,
/// less `layering.reserve_layers`.
pub fn plan(
    closures: &BTreeMap<Platform, Closure>,
    max_layers: usize,
    layering: &Layering,
) -> Result<LayerPlan, PlanError> {
    if max_layers == 0 {
        return Err(PlanError::ZeroBudget);
    }
    let budget = max_layers
        .checked_sub(layering.reserve_layers)
        .filter(|b| *b > 0)
        .ok_or(PlanError::ReserveTooLarge {
            max_layers,
            reserve: layering.reserve_layers,
        })?;
    let g = Graph::new(closures)?;
    let mut units = initial_units(&g, layering)?;
    if needed_layers(&g, &units).iter().any(|&n| n > budget) {
        // More platform combinations than layers: plan each platform on
        // its own. Identical layers are still stored once.
        units = per_platform(units);
        for (p, &needed) in needed_layers(&g, &units).iter().enumerate() {
            if needed > budget {
                return Err(PlanError::TooManyPins {
                    platform: g.platforms[p].clone(),
                    needed,
                    budget,
                });
            }
        }
    }
    let units = merge::run(&g, units, budget, layering.min_layer_size);
    assemble(&g, &units, budget)
}

/// The units the merging starts from: pinned groups, layers kept from the
/// previous image, and one unit per remaining path.
fn initial_units(g: &Graph, layering: &Layering) -> Result<Vec<Unit>, PlanError> {
    let n = g.len();
    // Platforms for which each path is already in a unit.
    let mut covered = vec![0u64; n];
    let mut units = Vec::new();

    for group in pin_groups(g, &layering.pins)? {
        let masks: BTreeSet<u64> = group.iter().map(|&p| g.platform_mask[p]).collect();
        let all: u64 = masks.iter().fold(0, |a, m| a | m);
        if masks.len() == 1 {
            units.push(Unit::new(g, group.clone(), all, Kind::Pinned));
        } else {
            // Paths of different platforms: one pinned layer per platform.
            for bit in bits(all) {
                let paths: Vec<usize> = group
                    .iter()
                    .copied()
                    .filter(|&p| g.platform_mask[p] & bit != 0)
                    .collect();
                units.push(Unit::new(g, paths, bit, Kind::Pinned));
            }
        }
        for &p in &group {
            covered[p] = g.platform_mask[p];
        }
    }

    if let Some(previous) = &layering.previous {
        // Kept layers by their paths: the platforms and positions.
        let mut kept: BTreeMap<Vec<usize>, BTreeMap<usize, usize>> = BTreeMap::new();
        for (pi, platform) in g.platforms.iter().enumerate() {
            let Some(layers) = previous.images.get(platform) else {
                continue;
            };
            let bit = 1u64 << pi;
            let by_name: BTreeMap<&str, usize> = (0..n)
                .filter(|&p| g.platform_mask[p] & bit != 0)
                .map(|p| (g.paths[p].base_name(), p))
                .collect();
            for (pos, names) in layers.iter().enumerate() {
                let ids: Option<Vec<usize>> = names
                    .iter()
                    .map(|s| by_name.get(s.as_str()).copied())
                    .collect();
                let Some(mut ids) = ids else { continue };
                ids.sort_unstable();
                ids.dedup();
                if ids.is_empty()
                    || ids.len() != names.len()
                    || ids.iter().any(|&p| covered[p] & bit != 0)
                {
                    continue;
                }
                for &p in &ids {
                    covered[p] |= bit;
                }
                kept.entry(ids).or_default().insert(pi, pos);
            }
        }
        for (ids, positions) in kept {
            let class = positions.keys().fold(0, |a, &pi| a | (1u64 << pi));
            units.push(Unit::new(g, ids, class, Kind::Kept(positions)));
        }
    }

    for (p, (mask, covered)) in g.platform_mask.iter().zip(&covered).enumerate() {
        let rest = mask & !covered;
        if rest != 0 {
            units.push(Unit::new(g, vec![p], rest, Kind::Free));
        }
    }
    Ok(units)
}

/// The pins as sorted, disjoint groups of path ids.
fn pin_groups(g: &Graph, pins: &[Vec<StorePath>]) -> Result<Vec<Vec<usize>>, PlanError> {
    let mut groups: Vec<BTreeSet<usize>> = Vec::new();
    for pin in pins {
        let mut group = BTreeSet::new();
        for path in pin {
            let id = g
                .ids
                .get(path)
                .ok_or_else(|| PlanError::PinNotInClosure(path.clone()))?;
            group.insert(*id);
        }
        // Join every earlier group this one overlaps.
        let (overlapping, rest): (Vec<_>, Vec<_>) = groups
            .into_iter()
            .partition(|g: &BTreeSet<usize>| !g.is_disjoint(&group));
        groups = rest;
        for o in overlapping {
            group.extend(o);
        }
        if !group.is_empty() {
            groups.push(group);
        }
    }
    let mut out: Vec<Vec<usize>> = groups
        .into_iter()
        .map(|g| g.into_iter().collect())
        .collect();
    out.sort();
    Ok(out)
}

/// The single-bit masks of `mask`, lowest first.
fn bits(mask: u64) -> impl Iterator<Item = u64> {
    (0..64).map(|i| 1u64 << i).filter(move |b| mask & b != 0)
}

/// For each platform, the fewest layers merging can reach: its pinned
/// units plus one per platform class among the others.
fn needed_layers(g: &Graph, units: &[Unit]) -> Vec<usize> {
    (0..g.platforms.len())
        .map(|pi| {
            let bit = 1u64 << pi;
            let mine = units.iter().filter(|u| u.class & bit != 0);
            let pinned = mine.clone().filter(|u| u.kind == Kind::Pinned).count();
            let classes: BTreeSet<u64> = mine
                .filter(|u| u.kind != Kind::Pinned)
                .map(|u| u.class)
                .collect();
            pinned + classes.len()
        })
        .collect()
}

/// Splits every unplanned unit of several platforms into one per platform.
fn per_platform(units: Vec<Unit>) -> Vec<Unit> {
    let mut out = Vec::new();
    for u in units {
        if u.kind == Kind::Pinned || u.class.count_ones() == 1 {
            out.push(u);
            continue;
        }
        for bit in bits(u.class) {
            let mut one = u.clone();
            one.class = bit;
            if let Kind::Kept(positions) = &u.kind {
                let pi = bit.trailing_zeros() as usize;
                one.kind = Kind::Kept(
                    positions
                        .iter()
                        .filter(|(p, _)| **p == pi)
                        .map(|(a, b)| (*a, *b))
                        .collect(),
                );
            }
            out.push(one);
        }
    }
    out
}

/// Orders each image's units and turns them into the plan.
fn assemble(g: &Graph, units: &[Unit], budget: usize) -> Result<LayerPlan, PlanError> {
    let mut layers: Vec<PlannedLayer> = Vec::new();
    let mut by_paths: BTreeMap<Vec<StorePath>, usize> = BTreeMap::new();
    let mut images = Vec::new();
    for (pi, platform) in g.platforms.iter().enumerate() {
        let bit = 1u64 << pi;
        let mut mine: Vec<(&Unit, f64)> = units
            .iter()
            .filter(|u| u.class & bit != 0)
            .map(|u| (u, g.weight_of(&u.deps)))
            .collect();
        if mine.len() > budget {
            return Err(PlanError::OverBudget {
                platform: platform.clone(),
                layers: mine.len(),
                budget,
            });
        }
        // Kept layers first, as they were; then the least likely to change,
        // the biggest first among equals.
        mine.sort_by(|(a, wa), (b, wb)| {
            let pos = |u: &Unit| match &u.kind {
                Kind::Kept(positions) => positions.get(&pi).copied(),
                _ => None,
            };
            match (pos(a), pos(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => wa
                    .total_cmp(wb)
                    .then(b.size.cmp(&a.size))
                    .then_with(|| g.key(a.paths[0]).cmp(&g.key(b.paths[0]))),
            }
        });
        let mut image_layers = Vec::with_capacity(mine.len());
        for (unit, _) in mine {
            let mut paths: Vec<StorePath> =
                unit.paths.iter().map(|&p| g.paths[p].clone()).collect();
            paths.sort();
            let origin = match unit.kind {
                Kind::Free => Origin::Planned,
                Kind::Pinned => Origin::Pinned,
                Kind::Kept(_) => Origin::Previous,
            };
            let index = match by_paths.get(&paths) {
                Some(&i) => {
                    layers[i].origin = layers[i].origin.max(origin);
                    i
                }
                None => {
                    layers.push(PlannedLayer {
                        store_paths: paths.clone(),
                        nar_size: unit.size,
                        origin,
                    });
                    by_paths.insert(paths, layers.len() - 1);
                    layers.len() - 1
                }
            };
            image_layers.push(index);
        }
        images.push(ImagePlan {
            platform: platform.clone(),
            layers: image_layers,
        });
    }
    Ok(LayerPlan {
        version: PLAN_VERSION,
        layers,
        images,
    })
}

#[cfg(test)]
mod tests;
