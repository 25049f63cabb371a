//! Update scenarios: what clients pull again when some store paths change,
//! for the planner and the [`baseline`] algorithms. The
//! benchmark (`examples/layering.rs`) and the tests share this.
//!
//! An update changes some paths directly (a new version is a little
//! bigger); in Nix every path that depends on a changed path changes too
//! (its hash does, its size does not). Each algorithm plans the image before
//! and after the update; the cost is the bytes (NAR size) of the layers of
//! the image after that were not layers of the image before, which is what
//! a client that has the old image pulls and what a registry stores anew. A
//! layer is the same when it holds the same store paths.

use std::collections::{BTreeMap, BTreeSet};

use crate::closure::{Closure, PathInfo, CLOSURE_VERSION};
use crate::platform::Platform;
use crate::store_path::{StoreDir, StorePath, NIX_BASE32_ALPHABET};

use super::{baseline, Layering, PlanError, Previous};

/// A closure after an update.
#[derive(Debug, Clone)]
pub struct Update {
    pub closure: Closure,
    /// Every changed path, old to new.
    pub renamed: BTreeMap<StorePath, StorePath>,
    /// NAR bytes of the changed paths after the update, dependents
    /// included: the least any layering can make clients pull.
    pub changed_bytes: u64,
    /// NAR bytes of the directly changed paths after the update.
    pub direct_bytes: u64,
}

/// The same path name with another hash.
fn rehash(p: &StorePath) -> StorePath {
    let hash: String = p
        .hash_part()
        .bytes()
        .map(|b| {
            let i = NIX_BASE32_ALPHABET
                .iter()
                .position(|&a| a == b)
                .unwrap_or(0);
            char::from(NIX_BASE32_ALPHABET[(i + 1) % 32])
        })
        .collect();
    let text = format!("{}/{hash}-{}", p.store_dir(), p.name());
    StorePath::from_absolute(&text).unwrap_or_else(|_| p.clone())
}

/// Applies an update that changes `direct` (paths of `closure`).
pub fn update(closure: &Closure, direct: &BTreeSet<StorePath>) -> Update {
    let mut users: BTreeMap<&StorePath, Vec<&StorePath>> = BTreeMap::new();
    for info in closure.paths.values() {
        for r in &info.references {
            if r != &info.path {
                users.entry(r).or_default().push(&info.path);
            }
        }
    }
    let mut changed: BTreeSet<&StorePath> = BTreeSet::new();
    let mut todo: Vec<&StorePath> = direct
        .iter()
        .filter(|p| closure.paths.contains_key(*p))
        .collect();
    while let Some(p) = todo.pop() {
        if changed.insert(p) {
            todo.extend(users.get(p).into_iter().flatten().copied());
        }
    }
    let renamed: BTreeMap<StorePath, StorePath> =
        changed.iter().map(|p| ((*p).clone(), rehash(p))).collect();
    let name = |p: &StorePath| renamed.get(p).cloned().unwrap_or_else(|| p.clone());
    let mut paths = BTreeMap::new();
    let (mut changed_bytes, mut direct_bytes) = (0, 0);
    for info in closure.paths.values() {
        let mut nar_size = info.nar_size;
        if direct.contains(&info.path) {
            nar_size += nar_size / 64 + 1;
            direct_bytes += nar_size;
        }
        if renamed.contains_key(&info.path) {
            changed_bytes += nar_size;
        }
        let path = name(&info.path);
        paths.insert(
            path.clone(),
            PathInfo {
                path,
                nar_hash: info.nar_hash.clone(),
                nar_size,
                references: info.references.iter().map(name).collect(),
            },
        );
    }
    Update {
        closure: Closure {
            version: CLOSURE_VERSION,
            store_dir: closure.store_dir.clone(),
            paths,
        },
        renamed,
        changed_bytes,
        direct_bytes,
    }
}

/// Bytes of the layers of `after` that are not layers of `before`.
pub fn new_layer_bytes(
    before: &[Vec<StorePath>],
    after: &[Vec<StorePath>],
    closure_after: &Closure,
) -> u64 {
    let old: BTreeSet<BTreeSet<&StorePath>> = before.iter().map(|l| l.iter().collect()).collect();
    after
        .iter()
        .filter(|l| !old.contains(&l.iter().collect::<BTreeSet<_>>()))
        .flat_map(|l| l.iter())
        .filter_map(|p| closure_after.paths.get(p).map(|i| i.nar_size))
        .sum()
}

/// A layering algorithm under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    /// nixoci's planner, planning each image from scratch.
    Nixoci,
    /// nixoci's planner given the previous image (`--previous`).
    NixociPrevious,
    /// nixpkgs' popularity layering.
    Popularity,
    /// nixpkgs' auto-layer.
    AutoLayer,
    /// One layer per store path, whatever the budget: the ideal.
    PerPath,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Nixoci,
        Algorithm::NixociPrevious,
        Algorithm::Popularity,
        Algorithm::AutoLayer,
        Algorithm::PerPath,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Nixoci => "nixoci",
            Algorithm::NixociPrevious => "nixoci --previous",
            Algorithm::Popularity => "nixpkgs popularity",
            Algorithm::AutoLayer => "nixpkgs auto-layer",
            Algorithm::PerPath => "one layer per path",
        }
    }
}

fn platform() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

/// nixoci's layers for one closure, bottom first, optionally keeping the
/// layers of `previous`.
pub fn nixoci_layers(
    closure: &Closure,
    budget: usize,
    layering: &Layering,
) -> Result<Vec<Vec<StorePath>>, PlanError> {
    let plan = super::plan(
        &BTreeMap::from([(platform(), closure.clone())]),
        budget,
        layering,
    )?;
    Ok(plan.images[0]
        .layers
        .iter()
        .map(|&i| plan.layers[i].store_paths.clone())
        .collect())
}

/// The layers `algorithm` gives `closure`, bottom first. `previous` is the
/// image before, for [`Algorithm::NixociPrevious`].
pub fn layers(
    algorithm: Algorithm,
    closure: &Closure,
    budget: usize,
    previous: Option<&[Vec<StorePath>]>,
) -> Result<Vec<Vec<StorePath>>, PlanError> {
    Ok(match algorithm {
        Algorithm::Nixoci => nixoci_layers(closure, budget, &Layering::default())?,
        Algorithm::NixociPrevious => {
            let previous = previous.map(|layers| Previous {
                images: BTreeMap::from([(
                    platform(),
                    layers
                        .iter()
                        .map(|l| l.iter().map(|p| p.base_name().to_owned()).collect())
                        .collect(),
                )]),
            });
            let layering = Layering {
                previous,
                ..Layering::default()
            };
            nixoci_layers(closure, budget, &layering)?
        }
        Algorithm::Popularity => baseline::popularity(closure, budget),
        Algorithm::AutoLayer => baseline::auto_layer(closure, budget),
        Algorithm::PerPath => closure.paths.keys().map(|p| vec![p.clone()]).collect(),
    })
}

/// What `algorithm` makes clients pull after `update` of `closure`: the
/// image before is planned from scratch, the image after with the image
/// before as its previous one for [`Algorithm::NixociPrevious`].
pub fn cost(
    algorithm: Algorithm,
    closure: &Closure,
    update: &Update,
    budget: usize,
) -> Result<u64, PlanError> {
    let before_algorithm = match algorithm {
        Algorithm::NixociPrevious => Algorithm::Nixoci,
        other => other,
    };
    let before = layers(before_algorithm, closure, budget, None)?;
    let after = layers(algorithm, &update.closure, budget, Some(&before))?;
    Ok(new_layer_bytes(&before, &after, &update.closure))
}

/// A small deterministic closure shaped like a distribution: one C library
/// everything uses, base libraries, a few big language runtimes, packages
/// on top of them, and an application that uses the packages. Names are
/// `libc`, `lib<i>`, `runtime<i>`, `pkg<i>` and `app`.
pub fn synthetic_closure(packages: usize, seed: u64) -> Closure {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound.max(1)
    };
    let libs = (packages / 5).max(2);
    let runtimes = (packages / 20).max(1);
    let pkgs = packages.saturating_sub(libs + runtimes + 2).max(1);
    let mut nodes: Vec<(String, u64, Vec<usize>)> = Vec::new();
    nodes.push(("libc".into(), 30 << 20, vec![]));
    for i in 0..libs {
        let mut refs = vec![0];
        if i > 0 && next(2) == 0 {
            refs.push(1 + next(i as u64) as usize);
        }
        nodes.push((format!("lib{i}"), (64 << 10) * (1 + next(64)), refs));
    }
    let lib = |k: u64| 1 + k as usize;
    for i in 0..runtimes {
        let refs = vec![0, lib(next(libs as u64)), lib(next(libs as u64))];
        nodes.push((format!("runtime{i}"), (40 << 20) + (next(80) << 20), refs));
    }
    let first_runtime = 1 + libs;
    for i in 0..pkgs {
        let mut refs = vec![first_runtime + next(runtimes as u64) as usize];
        for _ in 0..1 + next(3) {
            refs.push(lib(next(libs as u64)));
        }
        nodes.push((format!("pkg{i}"), (16 << 10) * (1 + next(256)), refs));
    }
    let first_pkg = first_runtime + runtimes;
    let app_refs: Vec<usize> = (first_pkg..first_pkg + pkgs).collect();
    nodes.push(("app".into(), 8 << 20, app_refs));
    closure_of(&nodes)
}

/// A closure from (name, size, references by index) triples, with hashes
/// made from the names.
pub fn closure_of(nodes: &[(String, u64, Vec<usize>)]) -> Closure {
    let store = StoreDir::default();
    let path = |name: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let hash: String = (0..32)
            .map(|i| {
                h = h.rotate_left(5).wrapping_add(i);
                char::from(NIX_BASE32_ALPHABET[(h % 32) as usize])
            })
            .collect();
        store
            .parse(&format!("{}/{hash}-{name}", store.as_str()))
            .ok()
    };
    let names: Vec<Option<StorePath>> = nodes.iter().map(|(n, _, _)| path(n)).collect();
    let paths = nodes
        .iter()
        .zip(&names)
        .filter_map(|((_, size, refs), p)| {
            let p = p.clone()?;
            let info = PathInfo {
                path: p.clone(),
                nar_hash: "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                nar_size: *size,
                references: refs
                    .iter()
                    .filter_map(|&r| names.get(r).cloned().flatten())
                    .collect(),
            };
            Some((p, info))
        })
        .collect();
    Closure {
        version: CLOSURE_VERSION,
        store_dir: store,
        paths,
    }
}

/// The path of `closure` called `name`.
pub fn by_name<'a>(closure: &'a Closure, name: &str) -> Option<&'a StorePath> {
    closure.paths.keys().find(|p| p.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_change_dependents_and_keep_the_rest() {
        let c = synthetic_closure(40, 1);
        let libc = by_name(&c, "libc").unwrap().clone();
        let u = update(&c, &BTreeSet::from([libc.clone()]));
        // Everything depends on libc.
        assert_eq!(u.renamed.len(), c.paths.len());
        assert!(u.closure.paths.keys().all(|p| !c.paths.contains_key(p)));
        let app = by_name(&c, "app").unwrap().clone();
        let u = update(&c, &BTreeSet::from([app.clone()]));
        assert_eq!(u.renamed.len(), 1);
        assert_eq!(u.direct_bytes, u.changed_bytes);
        assert_eq!(u.closure.paths.len(), c.paths.len());
        u.closure.check_complete().unwrap();
    }

    #[test]
    fn per_path_layers_cost_exactly_the_changed_bytes() {
        let c = synthetic_closure(60, 2);
        for name in ["libc", "lib3", "runtime0", "app"] {
            let p = by_name(&c, name).unwrap().clone();
            let u = update(&c, &BTreeSet::from([p]));
            assert_eq!(
                cost(Algorithm::PerPath, &c, &u, 10).unwrap(),
                u.changed_bytes
            );
        }
    }

    /// The benchmark's scenarios on a small closure: the planner pulls
    /// less than the popularity algorithm, and with the previous image an
    /// application change pulls only the application.
    #[test]
    fn planner_beats_popularity_on_the_scenarios() {
        let c = synthetic_closure(120, 7);
        for budget in [8, 20] {
            for name in ["lib5", "runtime1", "app"] {
                let p = by_name(&c, name).unwrap().clone();
                let u = update(&c, &BTreeSet::from([p]));
                let ours = cost(Algorithm::Nixoci, &c, &u, budget).unwrap();
                let theirs = cost(Algorithm::Popularity, &c, &u, budget).unwrap();
                assert!(
                    ours < theirs,
                    "{name}, budget {budget}: nixoci {ours} >= popularity {theirs}"
                );
                let with_previous = cost(Algorithm::NixociPrevious, &c, &u, budget).unwrap();
                assert!(with_previous < theirs, "{name}, budget {budget}");
                if name == "app" {
                    assert_eq!(with_previous, u.changed_bytes, "budget {budget}");
                }
            }
        }
    }
}
