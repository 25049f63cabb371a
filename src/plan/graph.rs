//! The planner's view of the closures: every store path of every platform
//! once, with its size, its references, the platforms whose closures hold it,
//! its dependency closure as a bit set, and its change weight.
//!
//! Paths are numbered in the order of their name, then hash, so that an
//! update that changes a path's hash but not its name does not renumber the
//! graph and tie-breaks stay where they were.

use std::collections::BTreeMap;

use crate::closure::Closure;
use crate::platform::Platform;
use crate::store_path::StorePath;

use super::PlanError;

/// A fixed-size set of path ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BitSet(Vec<u64>);

impl BitSet {
    pub fn new(len: usize) -> BitSet {
        BitSet(vec![0; len.div_ceil(64)])
    }

    pub fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    pub fn union_with(&mut self, other: &BitSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// How many ids are in `self` and not in `other`.
    pub fn count_minus(&self, other: &BitSet) -> u64 {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| u64::from((a & !b).count_ones()))
            .sum()
    }

    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

/// Every path of every closure once.
#[derive(Debug)]
pub(crate) struct Graph {
    pub platforms: Vec<Platform>,
    /// By id, in (name, hash) order.
    pub paths: Vec<StorePath>,
    pub ids: BTreeMap<StorePath, usize>,
    pub size: Vec<u64>,
    /// Direct references without the self-reference, by id.
    pub refs: Vec<Vec<usize>>,
    /// The size the cost model uses: [`mass`] of the size.
    pub mass: Vec<f64>,
    /// For each path, a bit per platform whose closure holds it.
    pub platform_mask: Vec<u64>,
    /// The dependency closure of each path, itself included: the paths whose
    /// change changes it.
    pub deps: Vec<BitSet>,
    /// Paths no other path refers to: the images' roots.
    pub roots: Vec<usize>,
    /// The change weight of a root; every other path weighs 1 (see
    /// [`root_weight`]).
    pub root_weight: f64,
    /// Sum of all weights.
    pub total_weight: f64,
}

impl Graph {
    pub fn new(closures: &BTreeMap<Platform, Closure>) -> Result<Graph, PlanError> {
        if closures.len() > 64 {
            return Err(PlanError::TooManyPlatforms(closures.len()));
        }
        let platforms: Vec<Platform> = closures.keys().cloned().collect();
        let mut all: BTreeMap<(&str, &str), &StorePath> = BTreeMap::new();
        for (platform, closure) in closures {
            if closure.paths.is_empty() {
                return Err(PlanError::EmptyClosure(platform.clone()));
            }
            for p in closure.paths.keys() {
                all.insert((p.name(), p.hash_part()), p);
            }
        }
        let paths: Vec<StorePath> = all.into_values().cloned().collect();
        let ids: BTreeMap<StorePath, usize> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        let n = paths.len();
        let mut size = vec![0; n];
        let mut refs: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut platform_mask = vec![0u64; n];
        let mut seen = vec![false; n];
        for (pi, closure) in closures.values().enumerate() {
            for (p, info) in &closure.paths {
                let id = ids[p];
                platform_mask[id] |= 1 << pi;
                if seen[id] {
                    continue;
                }
                seen[id] = true;
                size[id] = info.nar_size;
                // References outside every closure are ignored: the closure
                // module checks completeness, the plan only needs the edges.
                let mut r: Vec<usize> = info
                    .references
                    .iter()
                    .filter(|r| *r != p)
                    .filter_map(|r| ids.get(r).copied())
                    .collect();
                r.sort_unstable();
                refs[id] = r;
            }
        }
        let deps = dependency_closures(&refs);
        let mass = size.iter().map(|&s| mass(s)).collect();
        let mut referenced = vec![false; n];
        for r in refs.iter().flatten() {
            referenced[*r] = true;
        }
        let roots: Vec<usize> = (0..n).filter(|&i| !referenced[i]).collect();
        let root_weight = root_weight(n, roots.len());
        let total_weight = (n - roots.len()) as f64 + root_weight * roots.len() as f64;
        Ok(Graph {
            platforms,
            paths,
            ids,
            size,
            refs,
            mass,
            platform_mask,
            deps,
            roots,
            root_weight,
            total_weight,
        })
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The weight of the paths in `a` and not in `b`.
    pub fn weight_minus(&self, a: &BitSet, b: &BitSet) -> f64 {
        let mut w = a.count_minus(b) as f64;
        for &r in &self.roots {
            if a.contains(r) && !b.contains(r) {
                w += self.root_weight - 1.0;
            }
        }
        w
    }

    /// The weight of the paths in `a`.
    pub fn weight_of(&self, a: &BitSet) -> f64 {
        self.weight_minus(a, &BitSet::new(self.len()))
    }

    /// The sort key that numbers paths: name, then hash.
    pub fn key(&self, id: usize) -> (&str, &str) {
        (self.paths[id].name(), self.paths[id].hash_part())
    }
}

/// The size the cost model uses: rounded down to a power of two, or to 1.5
/// times one above `2^e * sqrt(2)`. A version bump that changes a path's
/// size by a few percent then rarely changes the plan made from scratch.
/// Integer arithmetic: a plan must not depend on the machine's
/// floating-point library.
fn mass(size: u64) -> f64 {
    if size < 2 {
        return size as f64;
    }
    let e = 63 - size.leading_zeros();
    let low = 1u64 << e;
    if u128::from(size) * u128::from(size) >= 1u128 << (2 * e + 1) {
        (low + low / 2) as f64
    } else {
        low as f64
    }
}

/// The change weight of a root (an application) among `n` paths with
/// `roots` roots, where every other path weighs 1. Every path is as likely
/// to be updated as any other, except the application, which is taken to
/// change in 9 of 10 updates: most rebuilds (a CI build per commit) change
/// only the application, so nothing should share its layer.
fn root_weight(n: usize, roots: usize) -> f64 {
    (9.0 * (n - roots) as f64 / roots.max(1) as f64).max(1.0)
}

/// Each path's dependency closure, itself included, by an iterative
/// depth-first walk. A reference cycle (which Nix never makes) is cut where
/// the walk meets it.
fn dependency_closures(refs: &[Vec<usize>]) -> Vec<BitSet> {
    let n = refs.len();
    let mut out: Vec<Option<BitSet>> = vec![None; n];
    let mut on_stack = vec![false; n];
    for start in 0..n {
        if out[start].is_some() {
            continue;
        }
        // (node, next reference to visit)
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        on_stack[start] = true;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&r) = refs[node].get(*next) {
                *next += 1;
                if out[r].is_none() && !on_stack[r] {
                    on_stack[r] = true;
                    stack.push((r, 0));
                }
                continue;
            }
            let mut set = BitSet::new(n);
            set.insert(node);
            for &r in &refs[node] {
                if let Some(d) = &out[r] {
                    set.union_with(d);
                }
            }
            out[node] = Some(set);
            on_stack[node] = false;
            stack.pop();
        }
    }
    out.into_iter()
        .map(|s| s.unwrap_or_else(|| BitSet::new(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitsets() {
        let mut a = BitSet::new(130);
        let mut b = BitSet::new(130);
        for i in [0, 63, 64, 129] {
            a.insert(i);
        }
        b.insert(64);
        assert_eq!(a.count_minus(&b), 3);
        assert_eq!(a.ones().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
        b.union_with(&a);
        assert_eq!(b.count_minus(&a), 0);
        assert!(b.contains(129) && !b.contains(1));
    }

    #[test]
    fn closures_follow_references_and_survive_cycles() {
        // 0 -> 1 -> 2, 3 -> 2, and a cycle 4 <-> 5.
        let refs = vec![vec![1], vec![2], vec![], vec![2], vec![5], vec![4]];
        let d = dependency_closures(&refs);
        assert_eq!(d[0].ones().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(d[3].ones().collect::<Vec<_>>(), vec![2, 3]);
        assert!(d[4].contains(4) && d[4].contains(5));
    }
}
