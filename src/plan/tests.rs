//! Table tests and property tests of the planner.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::closure::{PathInfo, CLOSURE_VERSION};
use crate::store_path::StoreDir;

pub(crate) fn sp(i: usize) -> StorePath {
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
pub(crate) fn closure(nodes: &[(usize, u64, Vec<usize>)]) -> Closure {
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

fn one(c: Closure) -> BTreeMap<Platform, Closure> {
    BTreeMap::from([(amd(), c)])
}

/// The layers of the first image, bottom first.
fn image_layers(plan: &LayerPlan, image: usize) -> Vec<Vec<StorePath>> {
    plan.images[image]
        .layers
        .iter()
        .map(|&i| plan.layers[i].store_paths.clone())
        .collect()
}

fn sorted(mut v: Vec<StorePath>) -> Vec<StorePath> {
    v.sort();
    v
}

#[test]
fn one_layer_per_path_within_budget_and_shared_paths_once() {
    // 0 = shared data, 1/2 = per-platform libc, 3/4 = per-platform app.
    let a = closure(&[(0, 10, vec![]), (1, 20, vec![]), (3, 5, vec![0, 1])]);
    let b = closure(&[(0, 10, vec![]), (2, 20, vec![]), (4, 5, vec![0, 2])]);
    let plan = plan(
        &BTreeMap::from([(amd(), a), (arm(), b)]),
        100,
        &Layering::default(),
    )
    .unwrap();
    assert_eq!(plan.version, PLAN_VERSION);
    assert_eq!(plan.layers.len(), 5, "the shared path is one layer");
    let shared = plan
        .layers
        .iter()
        .position(|l| l.store_paths == vec![sp(0)])
        .unwrap();
    for image in &plan.images {
        assert_eq!(image.layers.len(), 3);
        assert!(image.layers.contains(&shared));
    }
    // The app, which changes with anything, is on top.
    assert_eq!(image_layers(&plan, 0)[2], vec![sp(3)]);
    assert_eq!(image_layers(&plan, 1)[2], vec![sp(4)]);
    assert!(plan.layers.iter().all(|l| l.origin == Origin::Planned));
}

#[test]
fn merges_along_dependency_chains_and_keeps_the_root_alone() {
    // A chain root 0 -> 1 -> 2 -> 3 -> 4.
    let c = closure(&[
        (0, 1, vec![1]),
        (1, 1, vec![2]),
        (2, 1, vec![3]),
        (3, 1, vec![4]),
        (4, 1, vec![]),
    ]);
    let plan = plan(&one(c), 3, &Layering::default()).unwrap();
    let layers = image_layers(&plan, 0);
    assert_eq!(
        layers,
        vec![
            sorted(vec![sp(3), sp(4)]),
            sorted(vec![sp(1), sp(2)]),
            vec![sp(0)]
        ]
    );
    assert_eq!(plan.layers[plan.images[0].layers[0]].nar_size, 2);
}

#[test]
fn a_path_used_by_one_other_joins_it_before_unrelated_paths_meet() {
    // app 0 -> big libraries 1 and 2; 3 is a small helper only 1 uses.
    let c = closure(&[
        (0, 100, vec![1, 2]),
        (1, 5000, vec![3]),
        (2, 5000, vec![]),
        (3, 10, vec![]),
    ]);
    let plan = plan(&one(c), 3, &Layering::default()).unwrap();
    let layers = image_layers(&plan, 0);
    assert!(layers.contains(&sorted(vec![sp(1), sp(3)])), "{layers:?}");
    assert_eq!(layers.last().unwrap(), &vec![sp(0)]);
}

#[test]
fn tiny_paths_do_not_burn_the_budget() {
    // Big libraries 1..=3 and tiny data 4..=7, all used by the app 0.
    let c = closure(&[
        (0, 1 << 20, vec![1, 2, 3, 4, 5, 6, 7]),
        (1, 1 << 20, vec![]),
        (2, 1 << 20, vec![]),
        (3, 1 << 20, vec![]),
        (4, 10, vec![]),
        (5, 10, vec![]),
        (6, 10, vec![]),
        (7, 10, vec![]),
    ]);
    let layering = Layering {
        min_layer_size: 4096,
        ..Layering::default()
    };
    let plan = plan(&one(c), 100, &layering).unwrap();
    let layers = image_layers(&plan, 0);
    // The big libraries keep their own layers.
    for big in 1..=3 {
        assert!(layers.contains(&vec![sp(big)]), "{layers:?}");
    }
    // The tiny paths do not get layers of their own.
    for l in &plan.layers {
        assert!(l.nar_size >= 4096, "{l:?}");
    }
    assert_eq!(layers.len(), 4);
}

#[test]
fn pins_make_their_own_layer() {
    let c = closure(&[
        (0, 10, vec![1, 2, 3]),
        (1, 100, vec![]),
        (2, 100, vec![]),
        (3, 100, vec![]),
    ]);
    let layering = Layering {
        pins: vec![vec![sp(3), sp(1)]],
        ..Layering::default()
    };
    let plan = plan(&one(c.clone()), 2, &layering).unwrap();
    let layers = image_layers(&plan, 0);
    assert_eq!(layers.len(), 2);
    let pinned = sorted(vec![sp(1), sp(3)]);
    assert!(layers.contains(&pinned));
    let l = plan
        .layers
        .iter()
        .find(|l| l.store_paths == pinned)
        .unwrap();
    assert_eq!(l.origin, Origin::Pinned);

    let foreign = Layering {
        pins: vec![vec![sp(9)]],
        ..Layering::default()
    };
    assert_eq!(
        super::plan(&one(c.clone()), 2, &foreign),
        Err(PlanError::PinNotInClosure(sp(9)))
    );
    let too_many = Layering {
        pins: vec![vec![sp(1)], vec![sp(2)]],
        ..Layering::default()
    };
    assert!(matches!(
        super::plan(&one(c), 2, &too_many),
        Err(PlanError::TooManyPins { needed: 3, .. })
    ));
}

#[test]
fn reserved_layers_are_left_free() {
    let nodes: Vec<(usize, u64, Vec<usize>)> = (0..10)
        .map(|i| (i, 100, if i == 0 { (1..10).collect() } else { vec![] }))
        .collect();
    let c = closure(&nodes);
    let layering = Layering {
        reserve_layers: 4,
        ..Layering::default()
    };
    let plan = plan(&one(c.clone()), 6, &layering).unwrap();
    assert_eq!(plan.images[0].layers.len(), 2);
    let all = Layering {
        reserve_layers: 6,
        ..Layering::default()
    };
    assert_eq!(
        super::plan(&one(c), 6, &all),
        Err(PlanError::ReserveTooLarge {
            max_layers: 6,
            reserve: 6
        })
    );
}

#[test]
fn rejects_zero_budget_and_empty_closures() {
    let c = closure(&[(0, 1, vec![])]);
    assert_eq!(
        plan(&one(c), 0, &Layering::default()),
        Err(PlanError::ZeroBudget)
    );
    let empty = closure(&[]);
    assert!(matches!(
        plan(&one(empty), 10, &Layering::default()),
        Err(PlanError::EmptyClosure(_))
    ));
}

/// The previous image's layers as the annotations give them.
fn previous_of(plan: &LayerPlan) -> Previous {
    Previous {
        images: plan
            .images
            .iter()
            .map(|image| {
                let layers = image
                    .layers
                    .iter()
                    .map(|&i| {
                        plan.layers[i]
                            .store_paths
                            .iter()
                            .map(|p| p.base_name().to_owned())
                            .collect()
                    })
                    .collect();
                (image.platform.clone(), layers)
            })
            .collect(),
    }
}

#[test]
fn previous_layers_stay_and_new_paths_go_on_top() {
    let c = score::synthetic_closure(60, 3);
    let before = plan(&one(c.clone()), 10, &Layering::default()).unwrap();
    let lib = score::by_name(&c, "lib4").unwrap().clone();
    let update = score::update(&c, &BTreeSet::from([lib]));
    let layering = Layering {
        previous: Some(previous_of(&before)),
        ..Layering::default()
    };
    let after = plan(&one(update.closure.clone()), 10, &layering).unwrap();
    let old = image_layers(&before, 0);
    let new = image_layers(&after, 0);
    let unchanged: Vec<&Vec<StorePath>> = old
        .iter()
        .filter(|l| l.iter().all(|p| !update.renamed.contains_key(p)))
        .collect();
    assert!(!unchanged.is_empty());
    // Kept layers first, in their old order.
    for (i, l) in unchanged.iter().enumerate() {
        assert_eq!(&&new[i], l);
        let layer = &after.layers[after.images[0].layers[i]];
        assert_eq!(layer.origin, Origin::Previous);
    }
    assert!(new.len() <= 10);

    // With nothing changed the plan is the previous one.
    let layering = Layering {
        previous: Some(previous_of(&before)),
        ..Layering::default()
    };
    let again = plan(&one(c), 10, &layering).unwrap();
    assert_eq!(image_layers(&again, 0), old);
}

#[test]
fn previous_of_another_platform_or_with_missing_paths_is_ignored() {
    let c = closure(&[(0, 10, vec![1]), (1, 10, vec![])]);
    let previous = Previous {
        images: BTreeMap::from([
            (arm(), vec![vec![sp(0).base_name().to_owned()]]),
            (
                amd(),
                vec![vec![
                    sp(1).base_name().to_owned(),
                    sp(7).base_name().to_owned(),
                ]],
            ),
        ]),
    };
    let layering = Layering {
        previous: Some(previous),
        ..Layering::default()
    };
    let plan = plan(&one(c), 10, &layering).unwrap();
    assert!(plan.layers.iter().all(|l| l.origin == Origin::Planned));
    assert_eq!(plan.layers.len(), 2);
}

#[test]
fn more_platform_combinations_than_layers_plans_platforms_apart() {
    // Budget 1 and a path shared by two platforms next to private ones:
    // each image gets one layer of its own.
    let a = closure(&[(0, 10, vec![]), (1, 20, vec![0])]);
    let b = closure(&[(0, 10, vec![]), (2, 20, vec![0])]);
    let plan = plan(
        &BTreeMap::from([(amd(), a), (arm(), b)]),
        1,
        &Layering::default(),
    )
    .unwrap();
    assert_eq!(plan.images[0].layers.len(), 1);
    assert_eq!(plan.images[1].layers.len(), 1);
    assert_eq!(image_layers(&plan, 0)[0], sorted(vec![sp(0), sp(1)]));
    assert_eq!(image_layers(&plan, 1)[0], sorted(vec![sp(0), sp(2)]));
}

#[test]
fn json_form_is_versioned() {
    let c = closure(&[(0, 10, vec![])]);
    let plan = plan(&one(c), 10, &Layering::default()).unwrap();
    let v = serde_json::to_value(&plan).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(v["layers"][0]["origin"], "planned");
    assert_eq!(v["layers"][0]["narSize"], 10);
    assert_eq!(v["images"][0]["platform"], "linux/amd64");
    let back: LayerPlan = serde_json::from_value(v).unwrap();
    assert_eq!(back, plan);
}

/// A random DAG: each node refers only to nodes with a larger index.
fn dag() -> impl Strategy<Value = Vec<(usize, u64, Vec<usize>)>> {
    (1usize..40).prop_flat_map(|n| {
        proptest::collection::vec(
            (
                prop_oneof![1u64..100, 1u64..1_000_000],
                proptest::collection::vec(0usize..1000, 0..4),
            ),
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

/// Two platforms' closures from one graph: the closures of two root sets.
fn two_closures(
    nodes: &[(usize, u64, Vec<usize>)],
    a: &[usize],
    b: &[usize],
) -> BTreeMap<Platform, Closure> {
    let full = closure(nodes);
    let n = nodes.len();
    let roots = |picks: &[usize]| -> Vec<StorePath> {
        let mut r: Vec<StorePath> = picks.iter().map(|i| sp(i % n)).collect();
        r.push(sp(0));
        r
    };
    let ca = full.subclosure(&roots(a)).unwrap();
    let mut b: Vec<StorePath> = b.iter().map(|i| sp(i % n)).collect();
    b.push(sp(1 % n));
    let cb = full.subclosure(&b).unwrap();
    BTreeMap::from([(amd(), ca), (arm(), cb)])
}

fn check_plan(
    closures: &BTreeMap<Platform, Closure>,
    p: &LayerPlan,
    budget: usize,
) -> Result<(), TestCaseError> {
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
        prop_assert_eq!(&sorted(l.store_paths.clone()), &l.store_paths);
        prop_assert!(sets.insert(l.store_paths.clone()), "the same layer twice");
    }
    Ok(())
}

/// The layer of each path in an image, as a set of paths.
fn layer_of(p: &LayerPlan, image: usize) -> BTreeMap<StorePath, Vec<StorePath>> {
    image_layers(p, image)
        .into_iter()
        .flat_map(|l| l.clone().into_iter().map(move |path| (path, l.clone())))
        .collect()
}

proptest! {
    #[test]
    fn invariants(
        nodes in dag(),
        a in proptest::collection::vec(0usize..40, 0..3),
        b in proptest::collection::vec(0usize..40, 0..2),
        max_layers in 1usize..30,
        reserve in 0usize..4,
        min_size in prop_oneof![Just(0u64), 1u64..100_000],
        pins in proptest::collection::vec(proptest::collection::vec(0usize..40, 1..4), 0..3),
    ) {
        let closures = two_closures(&nodes, &a, &b);
        let n = nodes.len();
        let pins: Vec<Vec<StorePath>> =
            pins.iter().map(|g| g.iter().map(|i| sp(i % n)).collect()).collect();
        let layering = Layering { reserve_layers: reserve, min_layer_size: min_size, pins: pins.clone(), previous: None };
        let budget = max_layers.saturating_sub(reserve);
        let p = match plan(&closures, max_layers, &layering) {
            Ok(p) => p,
            Err(PlanError::ReserveTooLarge { .. }) => { prop_assert_eq!(budget, 0); return Ok(()); }
            Err(PlanError::TooManyPins { needed, budget: b, .. }) => { prop_assert!(needed > b); return Ok(()); }
            Err(PlanError::PinNotInClosure(_)) => { return Ok(()); }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        check_plan(&closures, &p, budget)?;

        // Pins: in each image, the pinned paths it holds make one layer of
        // exactly those paths (overlapping pins are one group).
        let mut groups: Vec<BTreeSet<StorePath>> = Vec::new();
        for pin in &pins {
            let mut g: BTreeSet<StorePath> = pin.iter().cloned().collect();
            let (joined, rest): (Vec<_>, Vec<_>) = groups.into_iter().partition(|o| !o.is_disjoint(&g));
            groups = rest;
            for o in joined { g.extend(o); }
            groups.push(g);
        }
        for (i, image) in p.images.iter().enumerate() {
            let closure = &closures[&image.platform];
            let of = layer_of(&p, i);
            for g in &groups {
                let here: Vec<StorePath> = g.iter().filter(|x| closure.paths.contains_key(*x)).cloned().collect();
                if let Some(first) = here.first() {
                    prop_assert_eq!(&of[first], &here, "pin not one layer of its own");
                }
            }
        }

        // Shared paths are in the same layer of both images, unless the
        // budget is too small for the platform combinations or pins split
        // them.
        if pins.is_empty() && budget >= 2 {
            let (la, lb) = (layer_of(&p, 0), layer_of(&p, 1));
            for (path, layer) in &la {
                if let Some(other) = lb.get(path) {
                    prop_assert_eq!(layer, other, "a shared path in different layers");
                }
            }
        }

        // The same plan whatever order pins and their paths come in.
        let reversed: Vec<Vec<StorePath>> = pins.iter().rev().map(|g| g.iter().rev().cloned().collect()).collect();
        let again = plan(&closures, max_layers, &Layering { pins: reversed, ..layering.clone() }).unwrap();
        prop_assert_eq!(&p, &again);
    }

    #[test]
    fn previous_layers_are_kept(
        nodes in dag(),
        budget in 1usize..20,
        changed in 0usize..40,
    ) {
        let c = closure(&nodes);
        let closures = one(c.clone());
        let before = plan(&closures, budget, &Layering::default()).unwrap();
        let p = sp(changed % nodes.len());
        let update = score::update(&c, &BTreeSet::from([p]));
        let layering = Layering { previous: Some(previous_of(&before)), ..Layering::default() };
        let after_closures = one(update.closure.clone());
        let after = plan(&after_closures, budget, &layering).unwrap();
        check_plan(&after_closures, &after, budget)?;
        let new: BTreeSet<Vec<StorePath>> = image_layers(&after, 0).into_iter().collect();
        for old in image_layers(&before, 0) {
            if old.iter().all(|x| !update.renamed.contains_key(x)) {
                prop_assert!(new.contains(&old), "unchanged layer {:?} not kept", old);
            }
        }
        // Planned again with itself as the previous image, nothing moves.
        let again = plan(&closures, budget, &layering).unwrap();
        prop_assert_eq!(image_layers(&again, 0), image_layers(&before, 0));
    }

    #[test]
    fn the_same_plan_for_any_order_of_the_closure_json(
        nodes in dag(),
        budget in 1usize..12,
        rotate in 0usize..40,
    ) {
        let entries = |nodes: &[(usize, u64, Vec<usize>)]| -> Vec<u8> {
            let list: Vec<serde_json::Value> = nodes
                .iter()
                .map(|(i, size, refs)| serde_json::json!({
                    "path": sp(*i).as_str(),
                    "narHash": "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                    "narSize": size,
                    "references": refs.iter().map(|r| sp(*r).as_str().to_owned()).collect::<Vec<_>>(),
                }))
                .collect();
            serde_json::to_vec(&list).unwrap()
        };
        let mut shuffled = nodes.clone();
        let len = shuffled.len();
        shuffled.rotate_left(rotate % len.max(1));
        shuffled.reverse();
        let read = |bytes: &[u8]| Closure::from_references_graph_json(&StoreDir::default(), bytes).unwrap();
        let a = plan(&one(read(&entries(&nodes))), budget, &Layering::default()).unwrap();
        let b = plan(&one(read(&entries(&shuffled))), budget, &Layering::default()).unwrap();
        prop_assert_eq!(a, b);
    }
}

/// Above PROBES paths the dependency bits are a sample: the plan still
/// holds every path once within the budget, keeps the application alone
/// on top, and does not depend on the order of the closure.
#[test]
fn closures_of_sampled_bits_keep_the_invariants() {
    let c = score::synthetic_closure(graph::PROBES + 900, 3);
    let closures = one(c.clone());
    for budget in [100, 20] {
        let p = plan(&closures, budget, &Layering::default()).unwrap();
        check_plan(&closures, &p, budget).unwrap();
        assert_eq!(p.images[0].layers.len(), budget);
        let top = &p.layers[*p.images[0].layers.last().unwrap()];
        assert_eq!(top.store_paths.len(), 1);
        assert_eq!(top.store_paths[0].name(), "app");
    }
    // The same paths read back in reverse order.
    let bytes = serde_json::to_vec(&c.paths.values().rev().collect::<Vec<_>>()).unwrap();
    let reread = Closure::from_references_graph_json(&StoreDir::default(), &bytes).unwrap();
    assert_eq!(
        plan(&one(reread), 20, &Layering::default()).unwrap(),
        plan(&closures, 20, &Layering::default()).unwrap()
    );
}

/// Two platforms sharing most of a big closure: shared paths share
/// layers, and a path of both is in the same layer of each image.
#[test]
fn big_closures_of_two_platforms_share_layers() {
    let c = score::synthetic_closure(2500, 4);
    let mut other = c.clone();
    // The second platform lacks a few packages (and so the application
    // refers to fewer).
    let gone: Vec<StorePath> = other
        .paths
        .keys()
        .filter(|p| p.name().starts_with("pkg1"))
        .cloned()
        .collect();
    for p in &gone {
        other.paths.remove(p);
    }
    for info in other.paths.values_mut() {
        info.references.retain(|r| !gone.contains(r));
    }
    let closures = BTreeMap::from([(amd(), c), (arm(), other)]);
    let p = plan(&closures, 40, &Layering::default()).unwrap();
    check_plan(&closures, &p, 40).unwrap();
    let (la, lb) = (layer_of(&p, 0), layer_of(&p, 1));
    for (path, layer) in &la {
        if let Some(o) = lb.get(path) {
            assert_eq!(layer, o, "{path} in different layers");
        }
    }
}

#[test]
fn big_closures_keep_the_invariants() {
    // More paths than are weighed pair by pair (merge::EXACT_UNITS).
    let c = score::synthetic_closure(1300, 5);
    let closures = one(c);
    let p = plan(&closures, 30, &Layering::default()).unwrap();
    check_plan(&closures, &p, 30).unwrap();
    assert_eq!(p.images[0].layers.len(), 30);
    let top = &p.layers[*p.images[0].layers.last().unwrap()];
    assert_eq!(top.store_paths.len(), 1);
    assert_eq!(top.store_paths[0].name(), "app");
}

/// Keys are weighed on several threads for big closures: the plan is the
/// same with one thread or several, exact (up to `EXACT_UNITS` units) and
/// grouped (above).
#[test]
fn plans_do_not_depend_on_the_threads() {
    for paths in [600, 1300] {
        let closures = one(score::synthetic_closure(paths, 5));
        let with = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| plan(&closures, 25, &Layering::default()).unwrap())
        };
        assert_eq!(with(1), with(3), "{paths} paths");
    }
}
