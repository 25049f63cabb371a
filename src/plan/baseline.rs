//! The two layering algorithms of nixpkgs' `dockerTools`, written from
//! their published descriptions, for the benchmark and the tests to compare
//! the planner with. Single platform; layers bottom first.
//!
//! - [`popularity`]: `buildLayeredImage` / `streamLayeredImage` since 2018
//!   (Graham Christensen, "Optimising Docker Layers for Better Caching with
//!   Nix", grahamc.com, 2018; nixpkgs
//!   `pkgs/build-support/references-by-popularity/closure-graph.py`, and the
//!   `popularity_contest` + `limit_layers` layering pipeline of
//!   `pkgs/build-support/docker/popularity-contest-layering-pipeline.nix`).
//!   A path's popularity grows with the number of ways it is reached from
//!   the roots and how deep (see [`popularity_scores`]). Paths are sorted
//!   by popularity, most popular first,
//!   ties by name then hash; the first `budget - 1` get a layer each and all
//!   the others share the last layer.
//! - [`auto_layer`]: nixpkgs `pkgs/build-support/docker/auto-layer.py`
//!   (the size-first splitter). The largest paths become layer "primaries"
//!   one by one; every path belongs to the layer named by the set of
//!   primaries that use it and that no other of those primaries uses, so a
//!   big path takes along the dependencies only it needs. It adds primaries
//!   while the number of distinct layers stays within the budget, and orders
//!   layers by the total size of their closure, smallest first.

use std::collections::{BTreeMap, BTreeSet};

use crate::closure::Closure;
use crate::store_path::StorePath;

/// The closure as numbered paths: references without self-references, and
/// the reverse edges.
struct Numbered<'a> {
    paths: Vec<&'a StorePath>,
    size: Vec<u64>,
    refs: Vec<Vec<usize>>,
    users: Vec<Vec<usize>>,
}

impl<'a> Numbered<'a> {
    fn new(closure: &'a Closure) -> Numbered<'a> {
        let paths: Vec<&StorePath> = closure.paths.keys().collect();
        let ids: BTreeMap<&StorePath, usize> =
            paths.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let size = closure.paths.values().map(|i| i.nar_size).collect();
        let refs: Vec<Vec<usize>> = closure
            .paths
            .values()
            .map(|info| {
                info.references
                    .iter()
                    .filter(|r| **r != info.path)
                    .filter_map(|r| ids.get(r).copied())
                    .collect()
            })
            .collect();
        let mut users = vec![Vec::new(); paths.len()];
        for (p, rs) in refs.iter().enumerate() {
            for &r in rs {
                users[r].push(p);
            }
        }
        Numbered {
            paths,
            size,
            refs,
            users,
        }
    }

    /// Name, then hash: the order nixpkgs breaks ties in.
    fn name_key(&self, p: usize) -> (&str, &str) {
        (self.paths[p].name(), self.paths[p].hash_part())
    }

    /// Everything reachable from `start` along `edges`, `start` excluded.
    fn reach(&self, start: usize, edges: &[Vec<usize>]) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(p) = todo.pop() {
            for &q in &edges[p] {
                if q != start && seen.insert(q) {
                    todo.push(q);
                }
            }
        }
        seen
    }

    fn layers(&self, groups: Vec<Vec<usize>>) -> Vec<Vec<StorePath>> {
        groups
            .into_iter()
            .map(|g| {
                let mut v: Vec<StorePath> = g.into_iter().map(|p| self.paths[p].clone()).collect();
                v.sort();
                v
            })
            .collect()
    }
}

/// The popularity of each path, as `closure-graph.py` computes it: the
/// contest below a path `p` gives each path `x` under it, summed over the
/// children `c` of `p`, 1 if `x` is `c`, else its score in `c`'s contest
/// plus 1; the image's scores are the roots' contests added the same way,
/// each root counting 1. Scores grow exponentially with the depth of the
/// graph, hence floating point.
pub fn popularity_scores(closure: &Closure) -> BTreeMap<StorePath, f64> {
    let g = Numbered::new(closure);
    let n = g.paths.len();
    let mut contest: Vec<BTreeMap<usize, f64>> = vec![BTreeMap::new(); n];
    let add = |into: &mut BTreeMap<usize, f64>, c: usize, below: &BTreeMap<usize, f64>| {
        *into.entry(c).or_default() += 1.0;
        for (&x, &s) in below {
            *into.entry(x).or_default() += s + 1.0;
        }
    };
    for p in post_order(&g.refs) {
        let mut mine = BTreeMap::new();
        for &c in &g.refs[p] {
            add(&mut mine, c, &contest[c]);
        }
        contest[p] = mine;
    }
    let mut score = BTreeMap::new();
    for root in (0..n).filter(|&p| g.users[p].is_empty()) {
        add(&mut score, root, &contest[root]);
    }
    (0..n)
        .map(|p| (g.paths[p].clone(), score.get(&p).copied().unwrap_or(0.0)))
        .collect()
}

/// Paths so that every path comes after its references (cycles cut).
fn post_order(refs: &[Vec<usize>]) -> Vec<usize> {
    let n = refs.len();
    let mut state = vec![0u8; n];
    let mut out = Vec::with_capacity(n);
    for start in 0..n {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some(top) = stack.last_mut() {
            let (p, i) = *top;
            if let Some(&r) = refs[p].get(i) {
                top.1 += 1;
                if state[r] == 0 {
                    state[r] = 1;
                    stack.push((r, 0));
                }
            } else {
                state[p] = 2;
                out.push(p);
                stack.pop();
            }
        }
    }
    out
}

/// nixpkgs' popularity layering with `budget` layers.
pub fn popularity(closure: &Closure, budget: usize) -> Vec<Vec<StorePath>> {
    let g = Numbered::new(closure);
    let scores = popularity_scores(closure);
    let mut order: Vec<usize> = (0..g.paths.len()).collect();
    order.sort_by(|&a, &b| {
        scores[g.paths[b]]
            .total_cmp(&scores[g.paths[a]])
            .then_with(|| g.name_key(a).cmp(&g.name_key(b)))
    });
    let budget = budget.max(1);
    let groups: Vec<Vec<usize>> = if order.len() <= budget {
        order.into_iter().map(|p| vec![p]).collect()
    } else {
        let rest = order.split_off(budget - 1);
        let mut groups: Vec<Vec<usize>> = order.into_iter().map(|p| vec![p]).collect();
        groups.push(rest);
        groups
    };
    g.layers(groups)
}

/// nixpkgs' auto-layer (size-first) layering with `budget` layers.
pub fn auto_layer(closure: &Closure, budget: usize) -> Vec<Vec<StorePath>> {
    let g = Numbered::new(closure);
    let n = g.paths.len();
    // Biggest first; ties by name.
    let mut by_size: Vec<usize> = (0..n).collect();
    by_size.sort_by(|&a, &b| {
        g.size[b]
            .cmp(&g.size[a])
            .then_with(|| g.name_key(a).cmp(&g.name_key(b)))
    });
    // Each path's layer is named by a set of primary paths.
    let mut split: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for &primary in &by_size {
        let mut next = split.clone();
        next[primary] = BTreeSet::from([primary]);
        let deps = g.reach(primary, &g.refs);
        let users = g.reach(primary, &g.users);
        for &d in &deps {
            next[d].retain(|p| !users.contains(p));
            if next[d].is_disjoint(&deps) {
                next[d].insert(primary);
            }
        }
        let distinct: BTreeSet<&BTreeSet<usize>> = next.iter().collect();
        if distinct.len() > budget.max(1) {
            break;
        }
        split = next;
    }
    let mut layers: BTreeMap<&BTreeSet<usize>, Vec<usize>> = BTreeMap::new();
    for (p, id) in split.iter().enumerate() {
        layers.entry(id).or_default().push(p);
    }
    // Smallest closure first.
    let mut groups: Vec<(u64, Vec<usize>)> = layers
        .into_values()
        .map(|paths| {
            let mut closure: BTreeSet<usize> = paths.iter().copied().collect();
            for &p in &paths {
                closure.extend(g.reach(p, &g.refs));
            }
            (closure.iter().map(|&p| g.size[p]).sum(), paths)
        })
        .collect();
    groups.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| g.name_key(a.1[0]).cmp(&g.name_key(b.1[0])))
    });
    g.layers(groups.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{closure, sp};

    #[test]
    fn popularity_matches_the_published_example() {
        // closure-graph.py's worked example: A-B-C-D-F, B-E-F, C-E, A-G
        // gives A 1, B 2, C 3, D 4, E 5, F 9, G 2.
        let (a, b, c, d, e, f, g) = (0, 1, 2, 3, 4, 5, 6);
        let cl = closure(&[
            (a, 1, vec![b, g]),
            (b, 1, vec![c, e]),
            (c, 1, vec![d, e]),
            (d, 1, vec![f]),
            (e, 1, vec![f]),
            (f, 1, vec![]),
            (g, 1, vec![]),
        ]);
        let s = popularity_scores(&cl);
        let got: Vec<f64> = [a, b, c, d, e, f, g].iter().map(|&p| s[&sp(p)]).collect();
        assert_eq!(got, vec![1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 2.0]);
        let layers = popularity(&cl, 3);
        assert_eq!(layers.len(), 3);
        assert_eq!(layers[0], vec![sp(f)]);
        assert_eq!(layers[1], vec![sp(e)]);
        assert_eq!(layers[2].len(), 5);
    }

    #[test]
    fn auto_layer_gives_big_paths_their_private_dependencies() {
        // 0 (app) -> 1 (big) -> 2 (only 1 uses it); 0 -> 3 (small).
        let cl = closure(&[
            (0, 10, vec![1, 3]),
            (1, 1000, vec![2]),
            (2, 5, vec![]),
            (3, 1, vec![]),
        ]);
        let layers = auto_layer(&cl, 2);
        assert_eq!(layers.len(), 2);
        let mut big = vec![sp(1), sp(2)];
        big.sort();
        assert!(layers.contains(&big), "{layers:?}");
        let all: usize = layers.iter().map(Vec::len).sum();
        assert_eq!(all, 4);
    }
}
