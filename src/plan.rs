//! The layer plan: which store paths go into which layer, for every
//! platform at once. Pure: closures and a budget in, a plan out.
//!
//! One layer per store path while the closure fits the budget. Beyond it,
//! the most popular paths (those the most other paths of the closure depend
//! on, as in nixpkgs' popularity contest) keep a layer each and the rest
//! share the top layer. Paths that several platforms share sort first, so
//! they get layers of their own in every image and are stored once. A layer
//! is identified by its sorted set of store paths: the same set planned for
//! two platforms is one layer.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::closure::Closure;
use crate::platform::Platform;
use crate::store_path::StorePath;

/// Version of the JSON form of [`LayerPlan`].
pub const PLAN_VERSION: u32 = 1;

/// Default budget of layers per image.
pub const DEFAULT_MAX_LAYERS: usize = 100;

/// A distinct layer: sorted store paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedLayer {
    pub store_paths: Vec<StorePath>,
    /// Sum of the paths' NAR sizes, roughly the tar size.
    pub nar_size: u64,
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

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the layer budget must be at least 1")]
    ZeroBudget,
    #[error("the closure for {0} is empty")]
    EmptyClosure(Platform),
}

/// For each path, how many paths of the closure have it in their closure
/// (itself included).
fn popularity(closure: &Closure) -> BTreeMap<&StorePath, usize> {
    // Reverse edges, then count ancestors of each path by a walk.
    let mut parents: BTreeMap<&StorePath, Vec<&StorePath>> = BTreeMap::new();
    for info in closure.paths.values() {
        for r in &info.references {
            if r != &info.path {
                parents.entry(r).or_default().push(&info.path);
            }
        }
    }
    let mut out = BTreeMap::new();
    for p in closure.paths.keys() {
        let mut seen: BTreeSet<&StorePath> = BTreeSet::from([p]);
        let mut todo = vec![p];
        while let Some(q) = todo.pop() {
            for parent in parents.get(q).into_iter().flatten() {
                if seen.insert(parent) {
                    todo.push(parent);
                }
            }
        }
        out.insert(p, seen.len());
    }
    out
}

/// Plans the layers of every platform's image within `max_layers` each.
pub fn plan(
    closures: &BTreeMap<Platform, Closure>,
    max_layers: usize,
) -> Result<LayerPlan, PlanError> {
    if max_layers == 0 {
        return Err(PlanError::ZeroBudget);
    }
    // How many images each path is in.
    let mut shared: BTreeMap<&StorePath, usize> = BTreeMap::new();
    for closure in closures.values() {
        for p in closure.paths.keys() {
            *shared.entry(p).or_default() += 1;
        }
    }

    let mut layers: Vec<PlannedLayer> = Vec::new();
    let mut by_paths: BTreeMap<Vec<StorePath>, usize> = BTreeMap::new();
    let mut images = Vec::new();
    for (platform, closure) in closures {
        if closure.paths.is_empty() {
            return Err(PlanError::EmptyClosure(platform.clone()));
        }
        let pop = popularity(closure);
        let mut order: Vec<&StorePath> = closure.paths.keys().collect();
        // Most shared, then most popular, then biggest, first.
        order.sort_by(|a, b| {
            shared[b]
                .cmp(&shared[a])
                .then(pop[b].cmp(&pop[a]))
                .then(closure.paths[*b].nar_size.cmp(&closure.paths[*a].nar_size))
                .then(a.cmp(b))
        });
        let mut groups: Vec<Vec<StorePath>> = Vec::new();
        if order.len() <= max_layers {
            groups.extend(order.iter().map(|p| vec![(*p).clone()]));
        } else {
            let (own, rest) = order.split_at(max_layers - 1);
            groups.extend(own.iter().map(|p| vec![(*p).clone()]));
            let mut rest: Vec<StorePath> = rest.iter().map(|p| (*p).clone()).collect();
            rest.sort();
            groups.push(rest);
        }
        let mut image_layers = Vec::with_capacity(groups.len());
        for group in groups {
            let index = match by_paths.get(&group) {
                Some(&i) => i,
                None => {
                    let nar_size = group.iter().map(|p| closure.paths[p].nar_size).sum();
                    layers.push(PlannedLayer {
                        store_paths: group.clone(),
                        nar_size,
                    });
                    by_paths.insert(group, layers.len() - 1);
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
mod tests {
    use super::*;
    use crate::closure::{PathInfo, CLOSURE_VERSION};
    use crate::store_path::StoreDir;
    use proptest::prelude::*;

    fn sp(i: usize) -> StorePath {
        // 32 characters of the Nix alphabet from the index.
        let alphabet = crate::store_path::NIX_BASE32_ALPHABET;
        let hash: String = (0..32)
            .map(|k| char::from(alphabet[(i * 7 + k * (i + 3)) % 32]))
            .collect();
        StoreDir::default()
            .parse(&format!("/nix/store/{hash}-p{i}"))
            .unwrap()
    }

    /// A closure from (path index, size, references) triples.
    fn closure(nodes: &[(usize, u64, Vec<usize>)]) -> Closure {
        let paths = nodes
            .iter()
            .map(|(i, size, refs)| {
                let p = sp(*i);
                let info = PathInfo {
                    path: p.clone(),
                    nar_hash: "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                    nar_size: *size,
                    references: refs.iter().map(|r| sp(*r)).collect(),
                };
                (p, info)
            })
            .collect();
        Closure {
            version: CLOSURE_VERSION,
            store_dir: StoreDir::default(),
            paths,
        }
    }

    fn amd() -> Platform {
        "linux/amd64".parse().unwrap()
    }
    fn arm() -> Platform {
        "linux/arm64".parse().unwrap()
    }

    #[test]
    fn one_layer_per_path_within_budget_and_shared_paths_once() {
        // 0 = shared data, 1/2 = per-platform libc, 3/4 = per-platform app.
        let a = closure(&[(0, 10, vec![]), (1, 20, vec![]), (3, 5, vec![0, 1])]);
        let b = closure(&[(0, 10, vec![]), (2, 20, vec![]), (4, 5, vec![0, 2])]);
        let plan = plan(&BTreeMap::from([(amd(), a), (arm(), b)]), 100).unwrap();
        assert_eq!(plan.layers.len(), 5, "the shared path is one layer");
        for image in &plan.images {
            assert_eq!(image.layers.len(), 3);
            // The shared path is the bottom layer of both images.
            assert_eq!(plan.layers[image.layers[0]].store_paths, vec![sp(0)]);
        }
        // Popular before leaf: the app (root) is on top.
        let top = &plan.layers[*plan.images[0].layers.last().unwrap()];
        assert_eq!(top.store_paths, vec![sp(3)]);
    }

    #[test]
    fn merges_the_least_popular_beyond_the_budget() {
        // A chain root 0 -> 1 -> 2 -> 3 -> 4: 4 is the most popular.
        let c = closure(&[
            (0, 1, vec![1]),
            (1, 1, vec![2]),
            (2, 1, vec![3]),
            (3, 1, vec![4]),
            (4, 1, vec![]),
        ]);
        let plan = plan(&BTreeMap::from([(amd(), c)]), 3).unwrap();
        let image = &plan.images[0];
        assert_eq!(image.layers.len(), 3);
        assert_eq!(plan.layers[image.layers[0]].store_paths, vec![sp(4)]);
        assert_eq!(plan.layers[image.layers[1]].store_paths, vec![sp(3)]);
        let mut rest = vec![sp(0), sp(1), sp(2)];
        rest.sort();
        assert_eq!(plan.layers[image.layers[2]].store_paths, rest);
        assert_eq!(plan.layers[image.layers[2]].nar_size, 3);
    }

    #[test]
    fn rejects_zero_budget_and_empty_closures() {
        let c = closure(&[(0, 1, vec![])]);
        assert_eq!(
            plan(&BTreeMap::from([(amd(), c)]), 0),
            Err(PlanError::ZeroBudget)
        );
        let empty = closure(&[]);
        assert!(matches!(
            plan(&BTreeMap::from([(amd(), empty)]), 10),
            Err(PlanError::EmptyClosure(_))
        ));
    }

    /// A random DAG: each node refers only to nodes with a larger index.
    fn dag() -> impl Strategy<Value = Vec<(usize, u64, Vec<usize>)>> {
        (1usize..40).prop_flat_map(|n| {
            proptest::collection::vec(
                (1u64..1000, proptest::collection::vec(0usize..1000, 0..4)),
                n,
            )
            .prop_map(move |nodes| {
                nodes
                    .into_iter()
                    .enumerate()
                    .map(|(i, (size, refs))| {
                        let refs = refs
                            .into_iter()
                            .filter(|_| i + 1 < n)
                            .map(|r| i + 1 + r % (n - i - 1).max(1))
                            .filter(|r| *r < n)
                            .collect();
                        (i, size, refs)
                    })
                    .collect()
            })
        })
    }

    proptest! {
        #[test]
        fn invariants(a in dag(), b in dag(), budget in 1usize..30, rotate in 0usize..40) {
            let closures = BTreeMap::from([(amd(), closure(&a)), (arm(), closure(&b))]);
            let p = plan(&closures, budget).unwrap();
            for image in &p.images {
                let closure = &closures[&image.platform];
                prop_assert!(image.layers.len() <= budget, "over budget");
                // Every path of the closure in exactly one layer of its image.
                let mut seen = BTreeSet::new();
                for &l in &image.layers {
                    for path in &p.layers[l].store_paths {
                        prop_assert!(closure.paths.contains_key(path), "foreign path");
                        prop_assert!(seen.insert(path.clone()), "path in two layers");
                    }
                }
                prop_assert_eq!(seen.len(), closure.paths.len());
            }
            // Distinct layers are distinct sets of sorted paths.
            let mut sets = BTreeSet::new();
            for l in &p.layers {
                let mut sorted = l.store_paths.clone();
                sorted.sort();
                prop_assert_eq!(&sorted, &l.store_paths);
                prop_assert!(sets.insert(sorted), "the same layer twice");
            }

            // The same plan whatever order the closures' paths come in.
            let mut shuffled = a.clone();
            let len = shuffled.len();
            shuffled.rotate_left(rotate % len.max(1));
            shuffled.reverse();
            let again = plan(&BTreeMap::from([(amd(), closure(&shuffled)), (arm(), closure(&b))]), budget).unwrap();
            prop_assert_eq!(p, again);
        }
    }
}
