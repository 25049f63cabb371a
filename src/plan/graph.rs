//! The planner's view of the closures: every store path of every platform
//! once, with its size, its references, the platforms whose closures hold it,
//! its dependency closure as a bit set, and its change weight.
//!
//! Paths are numbered in the order of their name, then hash, so that an
//! update that changes a path's hash but not its name does not renumber the
//! graph and tie-breaks stay where they were.
//!
//! The dependency bit sets have a bit per path on closures of up to
//! [`PROBES`] paths. Above that, a bit per path would take `n² / 8` bytes
//! (1.25 GB for 100,000 paths), so the bits are every root and an evenly
//! spread sample of the other paths, each sampled path standing for as many
//! paths as the sample is smaller than the closure: weights are then
//! estimates, used only to group paths before exact weighing (`merge.rs`).

use std::borrow::Borrow;
use std::collections::BTreeMap;

use crate::closure::Closure;
use crate::platform::Platform;
use crate::store_path::StorePath;

use super::PlanError;

/// Closures of up to this many paths have a dependency bit per path; larger
/// ones a bit per root and per sampled path, this many in all.
pub(crate) const PROBES: usize = 4096;

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
    #[allow(unsafe_code)] // a CPU instruction std reaches only so
    pub fn count_minus(&self, other: &BitSet) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has the instruction.
            return unsafe { popcnt::count_minus(&self.0, &other.0) };
        }
        count_minus(&self.0, &other.0)
    }

    /// [`BitSet::count_minus`] both ways, `(self - other, other - self)`, in
    /// one pass over the words.
    #[allow(unsafe_code)] // a CPU instruction std reaches only so
    pub fn count_minus_both(&self, other: &BitSet) -> (u64, u64) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has the instruction.
            return unsafe { popcnt::count_minus_both(&self.0, &other.0) };
        }
        count_minus_both(&self.0, &other.0)
    }

    /// Frees the words: for units that no longer take part.
    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }

    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

#[inline(always)]
fn count_minus(a: &[u64], b: &[u64]) -> u64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| u64::from((a & !b).count_ones()))
        .sum()
}

#[inline(always)]
fn count_minus_both(a: &[u64], b: &[u64]) -> (u64, u64) {
    let (mut ab, mut ba) = (0u64, 0u64);
    for (a, b) in a.iter().zip(b) {
        ab += u64::from((a & !b).count_ones());
        ba += u64::from((b & !a).count_ones());
    }
    (ab, ba)
}

/// The counts with the CPU's population count instruction, which the
/// x86-64 baseline lacks (`count_ones` is then a dozen instructions): the
/// same numbers, so plans do not depend on the CPU.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod popcnt {
    #[target_feature(enable = "popcnt")]
    pub(super) unsafe fn count_minus(a: &[u64], b: &[u64]) -> u64 {
        super::count_minus(a, b)
    }

    #[target_feature(enable = "popcnt")]
    pub(super) unsafe fn count_minus_both(a: &[u64], b: &[u64]) -> (u64, u64) {
        super::count_minus_both(a, b)
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
    /// change changes it, as bits (see [`Graph::bits`]).
    pub deps: Vec<BitSet>,
    /// How many bits a dependency set has: a bit per path, or per root and
    /// per sampled path on closures of more than [`PROBES`] paths.
    pub bits: usize,
    /// The bits of the paths no other path refers to: the images' roots.
    pub root_bits: Vec<usize>,
    /// The change weight of a root; every other path weighs 1 (see
    /// [`root_weight`]).
    pub root_weight: f64,
    /// The weight a bit that is not a root's stands for: 1, or the number
    /// of non-root paths over the number of sampled ones.
    pub bit_weight: f64,
    /// Sum of all weights.
    pub total_weight: f64,
    /// How many store paths the items of this graph hold: its length, or
    /// for a graph of groups ([`Graph::of_groups`]) the paths of the groups.
    pub store_paths: usize,
}

impl Graph {
    pub fn new<C: Borrow<Closure>>(closures: &BTreeMap<Platform, C>) -> Result<Graph, PlanError> {
        if closures.len() > 64 {
            return Err(PlanError::TooManyPlatforms(closures.len()));
        }
        let platforms: Vec<Platform> = closures.keys().cloned().collect();
        let mut all: BTreeMap<(&str, &str), &StorePath> = BTreeMap::new();
        for (platform, closure) in closures {
            let closure = closure.borrow();
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
            for (p, info) in &closure.borrow().paths {
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
        let mass = size.iter().map(|&s| mass(s)).collect();
        let mut referenced = vec![false; n];
        for r in refs.iter().flatten() {
            referenced[*r] = true;
        }
        let roots: Vec<usize> = (0..n).filter(|&i| !referenced[i]).collect();
        let (bit, bits) = bits_of(&referenced);
        let deps = dependency_closures(&refs, &bit, bits);
        let root_bits: Vec<usize> = roots.iter().filter_map(|&r| bit[r]).collect();
        let others = n - roots.len();
        let sampled = bits - root_bits.len();
        let bit_weight = if sampled == others {
            1.0
        } else {
            others as f64 / sampled.max(1) as f64
        };
        let root_weight = root_weight(n, roots.len());
        let total_weight = others as f64 + root_weight * roots.len() as f64;
        Ok(Graph {
            platforms,
            paths,
            ids,
            size,
            refs,
            mass,
            platform_mask,
            deps,
            bits,
            root_bits,
            root_weight,
            bit_weight,
            total_weight,
            store_paths: n,
        })
    }

    /// A graph whose items are groups of this graph's paths, each group
    /// with its platforms and dependency bits (the union of its paths'):
    /// merging then works on groups exactly as on paths. An item's path is
    /// its group's first; an item refers to the items holding what its
    /// paths refer to. Weights and bits are this graph's.
    pub fn of_groups(&self, groups: &[(&[usize], u64, &BitSet)]) -> Graph {
        let mut item_of: Vec<Vec<usize>> = vec![Vec::new(); self.len()];
        for (i, (paths, _, _)) in groups.iter().enumerate() {
            for &p in *paths {
                item_of[p].push(i);
            }
        }
        let refs = groups
            .iter()
            .enumerate()
            .map(|(i, (paths, _, _))| {
                let mut r: Vec<usize> = paths
                    .iter()
                    .flat_map(|&p| &self.refs[p])
                    .flat_map(|&q| item_of[q].iter().copied())
                    .filter(|&j| j != i)
                    .collect();
                r.sort_unstable();
                r.dedup();
                r
            })
            .collect();
        Graph {
            platforms: self.platforms.clone(),
            paths: groups
                .iter()
                .filter_map(|(paths, _, _)| paths.first().map(|&p| self.paths[p].clone()))
                .collect(),
            ids: BTreeMap::new(),
            size: groups
                .iter()
                .map(|(paths, _, _)| {
                    paths
                        .iter()
                        .fold(0u64, |a, &p| a.saturating_add(self.size[p]))
                })
                .collect(),
            refs,
            mass: groups
                .iter()
                .map(|(paths, _, _)| paths.iter().map(|&p| self.mass[p]).sum())
                .collect(),
            platform_mask: groups.iter().map(|(_, class, _)| *class).collect(),
            deps: groups.iter().map(|(_, _, deps)| (*deps).clone()).collect(),
            bits: self.bits,
            root_bits: self.root_bits.clone(),
            root_weight: self.root_weight,
            bit_weight: self.bit_weight,
            total_weight: self.total_weight,
            store_paths: self.store_paths,
        }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The weight of the paths in `a` and not in `b`.
    pub fn weight_minus(&self, a: &BitSet, b: &BitSet) -> f64 {
        let mut w = a.count_minus(b) as f64 * self.bit_weight;
        for &r in &self.root_bits {
            if a.contains(r) && !b.contains(r) {
                w += self.root_weight - self.bit_weight;
            }
        }
        w
    }

    /// `(weight_minus(a, b), weight_minus(b, a))`, the same numbers, with
    /// one pass over the bits.
    pub fn weight_minus_both(&self, a: &BitSet, b: &BitSet) -> (f64, f64) {
        let (ab, ba) = a.count_minus_both(b);
        let mut wa = ab as f64 * self.bit_weight;
        let mut wb = ba as f64 * self.bit_weight;
        for &r in &self.root_bits {
            let (in_a, in_b) = (a.contains(r), b.contains(r));
            if in_a && !in_b {
                wa += self.root_weight - self.bit_weight;
            }
            if in_b && !in_a {
                wb += self.root_weight - self.bit_weight;
            }
        }
        (wa, wb)
    }

    /// The weight of the paths in `a`.
    pub fn weight_of(&self, a: &BitSet) -> f64 {
        self.weight_minus(a, &BitSet::new(self.bits))
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

/// The bit of each path, if it has one, and the number of bits: every path
/// has one when there are at most [`PROBES`]; otherwise every root
/// (`!referenced`) and an evenly spread sample of the others, in path
/// order, [`PROBES`] bits in all (or every root when they are more).
fn bits_of(referenced: &[bool]) -> (Vec<Option<usize>>, usize) {
    let n = referenced.len();
    if n <= PROBES {
        return ((0..n).map(Some).collect(), n);
    }
    let others = referenced.iter().filter(|r| **r).count();
    // At least half the bits for the other paths, however many roots.
    let sampled = PROBES
        .saturating_sub(n - others)
        .max(PROBES / 2)
        .min(others);
    let mut bit = vec![None; n];
    let (mut next, mut j) = (0, 0);
    for (p, &r) in referenced.iter().enumerate() {
        let take = if r {
            // The j-th other path is sampled when j * sampled / others
            // steps up: exactly `sampled` of them, evenly spread.
            j += 1;
            (j * sampled) / others > ((j - 1) * sampled) / others
        } else {
            true
        };
        if take {
            bit[p] = Some(next);
            next += 1;
        }
    }
    (bit, next)
}

/// Each path's dependency closure, itself included, as bits (`bit`, out of
/// `bits`), by an iterative depth-first walk. A reference cycle (which Nix
/// never makes) is cut where the walk meets it.
fn dependency_closures(refs: &[Vec<usize>], bit: &[Option<usize>], bits: usize) -> Vec<BitSet> {
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
            let mut set = BitSet::new(bits);
            if let Some(b) = bit[node] {
                set.insert(b);
            }
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
        .map(|s| s.unwrap_or_else(|| BitSet::new(bits)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_at_once_is_both_ways() {
        let mut a = BitSet::new(200);
        let mut b = BitSet::new(200);
        for i in (0..200).step_by(3) {
            a.insert(i);
        }
        for i in (0..200).step_by(5) {
            b.insert(i);
        }
        assert_eq!(
            a.count_minus_both(&b),
            (a.count_minus(&b), b.count_minus(&a))
        );
    }

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

    /// Every path a bit up to PROBES paths; above, every root and an even
    /// sample of the others, PROBES bits in all.
    #[test]
    fn bits_are_every_path_or_every_root_and_a_sample() {
        for (n, roots) in [
            (0, 0),
            (5, 1),
            (PROBES, 3),
            (PROBES + 1, 1),
            (3 * PROBES, 7),
        ] {
            // The first `roots` paths are roots (nothing refers to them).
            let referenced: Vec<bool> = (0..n).map(|i| i >= roots).collect();
            let (bit, bits) = bits_of(&referenced);
            assert_eq!(bits, n.min(PROBES), "{n} paths");
            let given: Vec<usize> = bit.iter().flatten().copied().collect();
            assert_eq!(given, (0..bits).collect::<Vec<_>>(), "{n} paths");
            assert!(bit[..roots].iter().all(Option::is_some));
            if n > PROBES {
                // Evenly spread: no gap between sampled paths is more
                // than one longer than another.
                let at: Vec<usize> = (roots..n).filter(|&p| bit[p].is_some()).collect();
                let gaps: Vec<usize> = at.windows(2).map(|w| w[1] - w[0]).collect();
                let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
                assert!(hi - lo <= 1, "{n} paths: gaps {lo} to {hi}");
            }
        }
        // More roots than bits: every root, and half the bits for the rest.
        let referenced: Vec<bool> = (0..3 * PROBES).map(|i| i >= PROBES).collect();
        let (bit, bits) = bits_of(&referenced);
        assert_eq!(bits, PROBES + PROBES / 2);
        assert!(bit[..PROBES].iter().all(Option::is_some));
    }

    /// A graph of more than PROBES paths: a chain under one root. The
    /// sampled weights are exact where the sample sees everything (the
    /// root's closure is every path) and estimate the rest.
    #[test]
    fn sampled_weights_estimate_the_exact_ones() {
        let n = 3 * PROBES + 5;
        let nodes: Vec<(usize, u64, Vec<usize>)> = (0..n)
            .map(|i| (i, 1000, if i + 1 < n { vec![i + 1] } else { vec![] }))
            .collect();
        let platform: Platform = "linux/amd64".parse().unwrap();
        let c = crate::plan::tests::closure(&nodes);
        let g = Graph::new(&BTreeMap::from([(platform, c)])).unwrap();
        assert_eq!(g.bits, PROBES);
        assert_eq!(g.root_bits.len(), 1);
        let root = g.ids[&crate::plan::tests::sp(0)];
        assert_eq!(g.weight_of(&g.deps[root]), g.total_weight);
        for i in [1, 100, PROBES, n - 1] {
            let p = g.ids[&crate::plan::tests::sp(i)];
            // Path i depends on the n - i paths below it.
            let exact = (n - i) as f64;
            let estimate = g.weight_of(&g.deps[p]);
            assert!(
                (estimate - exact).abs() <= 0.01 * exact + 4.0 * g.bit_weight,
                "path {i}: {estimate} for {exact}"
            );
            assert_eq!(
                g.weight_minus(&g.deps[root], &g.deps[p]),
                g.total_weight - estimate
            );
        }
    }

    /// A graph of one group per path is the graph itself.
    #[test]
    fn a_graph_of_single_paths_is_the_same_graph() {
        let platform: Platform = "linux/amd64".parse().unwrap();
        let c = crate::plan::score::synthetic_closure(60, 2);
        let g = Graph::new(&BTreeMap::from([(platform, c)])).unwrap();
        let singles: Vec<[usize; 1]> = (0..g.len()).map(|p| [p]).collect();
        let groups: Vec<(&[usize], u64, &BitSet)> = singles
            .iter()
            .enumerate()
            .map(|(p, one)| (&one[..], g.platform_mask[p], &g.deps[p]))
            .collect();
        let q = g.of_groups(&groups);
        assert_eq!(q.paths, g.paths);
        assert_eq!(q.size, g.size);
        assert_eq!(q.mass, g.mass);
        assert_eq!(q.refs, g.refs);
        assert_eq!(q.platform_mask, g.platform_mask);
        assert_eq!(q.deps, g.deps);
        assert_eq!((q.bits, q.store_paths), (g.bits, g.store_paths));
        assert_eq!(q.total_weight, g.total_weight);
    }

    #[test]
    fn closures_follow_references_and_survive_cycles() {
        // 0 -> 1 -> 2, 3 -> 2, and a cycle 4 <-> 5.
        let refs = vec![vec![1], vec![2], vec![], vec![2], vec![5], vec![4]];
        let bit: Vec<Option<usize>> = (0..refs.len()).map(Some).collect();
        let d = dependency_closures(&refs, &bit, refs.len());
        assert_eq!(d[0].ones().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(d[3].ones().collect::<Vec<_>>(), vec![2, 3]);
        assert!(d[4].contains(4) && d[4].contains(5));
    }
}
