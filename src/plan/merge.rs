//! Agglomerative merging: start from the smallest units the constraints
//! allow (a path, a pinned group, a layer kept from the previous image) and
//! merge the pair that raises the expected re-pull cost least, until every
//! image is within its budget and no free unit is below the minimum size.
//!
//! The cost of a unit `U` is `size(U) * W(D(U))`: its bytes times the
//! weight of the paths whose change changes it (its dependency closure
//! `D(U)`). With weights read as the chances that an update changes each
//! path, that is the expected bytes a client pulls again for the layer.
//! Merging `U` and `V` raises the cost by
//! `size(U) * W(D(V) \ D(U)) + size(V) * W(D(U) \ D(V))`:
//! each side is now also re-pulled when what only the other depends on
//! changes. A path merged into a path that depends on it costs only its
//! own size times the other's extra dependencies, so dependency chains and
//! paths used by one other path merge first; tiny paths merge before big
//! ones.
//!
//! Merges are chosen best-first, by that cost increase over the square root
//! of the merged size, from a priority queue of each unit's best partner
//! (ties broken by unit number, which follows path names, so the result
//! does not depend on input order); each unit remembers its few best
//! partners, so a merge rarely makes others look again at all units. A
//! local search then moves paths between layers, or splits a layer and
//! merges two others to make room, while that lowers the cost. Only units of the same platform class merge, so a path shared by
//! several platforms lands in the same layer of each image. Pinned units
//! never merge; units kept from the previous image merge only when no merge
//! of new units is left that would help, and never to reach the minimum
//! size. Sizes are the model's rounded [`Graph::mass`].
//!
//! On more than [`EXACT_UNITS`] units, merging weighs likely pairs only
//! until that many units are left; those become the items of a graph of
//! groups, which is merged weighing every pair and refined by moving whole
//! groups (see [`run_grouped`]): time and memory grow about linearly with
//! the closure (`scripts/bench-plan`, `docs/performance.md`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::graph::{BitSet, Graph};

/// Where a unit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Placed by the planner.
    Free,
    /// A `--layer` group: never merged.
    Pinned,
    /// A layer of the previous image, by its position in each platform's
    /// previous image (bottom first).
    Kept(BTreeMap<usize, usize>),
}

/// Paths that will share a layer, in the images of the platforms in
/// `class` (a bit per platform).
#[derive(Debug, Clone)]
pub(crate) struct Unit {
    /// Sorted path ids.
    pub paths: Vec<usize>,
    pub class: u64,
    pub size: u64,
    /// The sum of the paths' [`Graph::mass`].
    pub mass: f64,
    pub deps: BitSet,
    pub kind: Kind,
}

impl Unit {
    pub fn new(g: &Graph, mut paths: Vec<usize>, class: u64, kind: Kind) -> Unit {
        paths.sort_unstable();
        paths.dedup();
        let mut deps = BitSet::new(g.bits);
        let mut size = 0u64;
        let mut mass = 0.0;
        for &p in &paths {
            deps.union_with(&g.deps[p]);
            size = size.saturating_add(g.size[p]);
            mass += g.mass[p];
        }
        Unit {
            paths,
            class,
            size,
            mass,
            deps,
            kind,
        }
    }

    fn kept(&self) -> bool {
        matches!(self.kind, Kind::Kept(_))
    }
}

/// The priority of a merge, lowest first: how many kept units it breaks,
/// the cost it adds (the bits of a non-negative `f64`, which order as the
/// numbers do), then the unit numbers.
type Key = (u8, u64, usize, usize);

/// How many best partners each unit remembers.
const CANDIDATES: usize = 16;

/// Up to this many live units, every pair is weighed. Above it (closures
/// of thousands of paths), a unit is weighed only against likely partners
/// (the paths it refers to and that refer to it, their other users, and
/// the partners of the units it was merged from) until merging brings the
/// count down to this.
const EXACT_UNITS: usize = 1200;

/// A unit's best partners: the few best live ones known, sorted, and a
/// bound under which every live unit not listed lies at or above.
#[derive(Debug, Clone, Default)]
struct Candidates {
    list: Vec<(Key, usize)>,
    /// Every live partner not in `list` has a key at least this; `None`
    /// when every live partner is listed.
    floor: Option<Key>,
    /// Only likely partners were weighed: others may be better.
    partial: bool,
}

impl Candidates {
    /// The `CANDIDATES` best of `all`, offered one by one: the list holds
    /// the best and the floor is the best of the others (keys are
    /// distinct: they hold the partner's number), and most offers stop at
    /// the floor. With `partial`, only likely partners were weighed.
    fn from(all: impl IntoIterator<Item = (Key, usize)>, partial: bool) -> Candidates {
        let mut c = Candidates::default();
        for (key, unit) in all {
            c.offer(key, unit);
        }
        c.partial = partial;
        c
    }

    /// Offers a new partner; true if it is now the best.
    fn offer(&mut self, key: Key, unit: usize) -> bool {
        if !self.partial && self.floor.is_some_and(|f| key >= f) {
            return false;
        }
        let at = self.list.partition_point(|c| c.0 < key);
        // A full list drops its worst, which may be the new partner; the
        // list never grows past CANDIDATES, nor its allocation.
        if self.list.len() >= CANDIDATES {
            let dropped = if at == self.list.len() {
                key
            } else {
                match self.list.pop() {
                    Some((k, _)) => k,
                    None => key,
                }
            };
            self.floor = Some(self.floor.map_or(dropped, |f| f.min(dropped)));
            if dropped == key {
                return false;
            }
        }
        self.list.insert(at, (key, unit));
        at == 0
    }
}

struct Merger<'g> {
    g: &'g Graph,
    units: Vec<Unit>,
    alive: Vec<bool>,
    cands: Vec<Candidates>,
    /// For each unit, the units whose best partner it is.
    watchers: Vec<BTreeSet<usize>>,
    /// The best partner each unit was last queued with.
    head: Vec<Option<(Key, usize)>>,
    heap: BinaryHeap<Reverse<(Key, usize, usize)>>,
    /// Live units per platform.
    count: Vec<usize>,
    budget: usize,
    min_size: u64,
    /// Live units.
    live: usize,
    /// Whether every pair is weighed (see [`EXACT_UNITS`]).
    exact: bool,
}

impl Merger<'_> {
    fn mergeable(&self, a: usize, b: usize) -> bool {
        a != b
            && self.alive[a]
            && self.alive[b]
            && self.units[a].class == self.units[b].class
            && self.units[a].kind != Kind::Pinned
            && self.units[b].kind != Kind::Pinned
    }

    /// The keys of `a` with each mergeable unit of `others`.
    fn keys_with<'m, I>(&'m self, a: usize, others: I) -> impl Iterator<Item = (Key, usize)> + 'm
    where
        I: IntoIterator<Item = usize>,
        I::IntoIter: 'm,
    {
        others
            .into_iter()
            .filter(move |&b| self.mergeable(a, b))
            .map(move |b| (self.key(a, b), b))
    }

    fn key(&self, a: usize, b: usize) -> Key {
        let (ua, ub) = (&self.units[a], &self.units[b]);
        let (a_only, b_only) = self.g.weight_minus_both(&ua.deps, &ub.deps);
        let mut cost = ua.mass * b_only + ub.mass * a_only;
        // Relative to the square root of the merged size: at equal cost,
        // merge into bigger layers, so that layers grow evenly rather than
        // one layer collecting every small path early.
        cost /= (ua.mass + ub.mass).max(1.0).sqrt();
        let mut tier = 0;
        // Breaking a kept layer re-ships all of it now: its size at
        // certainty, against the expected costs above.
        for u in [ua, ub] {
            if u.kept() {
                tier += 1;
                cost += u.mass * self.g.total_weight;
            }
        }
        (tier, cost.max(0.0).to_bits(), a.min(b), a.max(b))
    }

    /// Drops dead partners from `a`'s list and queues the best. When none
    /// is left but some may exist: weighing every pair, every partner of
    /// `a` has a key at least the list's floor, so `a` is queued with the
    /// floor and a partner of its own number, and weighed again only when
    /// that entry comes first ([`Merger::weigh_again`]); the merges are the
    /// same, and the units that are never merged again are never weighed
    /// again. Otherwise (likely partners only) the list is made again now.
    fn refresh(&mut self, a: usize) {
        let alive = &self.alive;
        self.cands[a].list.retain(|(_, b)| alive[*b]);
        let c = &self.cands[a];
        let best = match (c.list.first(), c.floor) {
            (Some(&best), _) => Some(best),
            (None, Some(floor)) if !c.partial => Some((floor, a)),
            (None, floor) if floor.is_some() || c.partial => {
                // Exact now, but when not weighing every pair, units merged
                // later are offered only to likely partners.
                self.cands[a] =
                    Candidates::from(self.keys_with(a, 0..self.units.len()), !self.exact);
                self.cands[a].list.first().copied()
            }
            (None, _) => None,
        };
        if let Some((_, old)) = self.head[a] {
            self.watchers[old].remove(&a);
        }
        self.head[a] = best;
        if let Some((key, b)) = best {
            if b != a {
                self.watchers[b].insert(a);
            }
            self.heap.push(Reverse((key, a, b)));
        }
    }

    /// `a`'s entry with its floor came first: weighs every partner of `a`
    /// and queues the best, unless no merge with `a` can happen any more
    /// (its platforms within the budget and no small unit left to merge
    /// with; merging makes neither come back).
    fn weigh_again(&mut self, a: usize) {
        let class = self.units[a].class;
        let needed = self.over_budget(class)
            || (0..self.units.len())
                .any(|u| self.alive[u] && self.units[u].class == class && self.small(u));
        if !needed {
            self.head[a] = None;
            return;
        }
        self.cands[a] = Candidates::from(self.keys_with(a, 0..self.units.len()), false);
        self.refresh(a);
    }

    fn over_budget(&self, class: u64) -> bool {
        self.count
            .iter()
            .enumerate()
            .any(|(p, &c)| class & (1 << p) != 0 && c > self.budget)
    }

    fn small(&self, a: usize) -> bool {
        self.units[a].kind == Kind::Free && self.units[a].size < self.min_size
    }

    fn merge(&mut self, a: usize, b: usize) {
        let (ua, ub) = (&self.units[a], &self.units[b]);
        let mut paths = ua.paths.clone();
        paths.extend_from_slice(&ub.paths);
        paths.sort_unstable();
        let mut deps = ua.deps.clone();
        deps.union_with(&ub.deps);
        let class = ua.class;
        let unit = Unit {
            paths,
            class,
            size: ua.size.saturating_add(ub.size),
            mass: ua.mass + ub.mass,
            deps,
            kind: Kind::Free,
        };
        // Likely partners, when not weighing every pair.
        let likely: BTreeSet<usize> = if self.exact {
            BTreeSet::new()
        } else {
            self.cands[a]
                .list
                .iter()
                .chain(&self.cands[b].list)
                .map(|c| c.1)
                .chain(self.watchers[a].iter().copied())
                .chain(self.watchers[b].iter().copied())
                .collect()
        };
        let new = self.units.len();
        self.units.push(unit);
        self.alive.push(true);
        self.cands.push(Candidates::default());
        self.head.push(None);
        self.watchers.push(BTreeSet::new());
        for dead in [a, b] {
            self.alive[dead] = false;
            // Nothing reads a dead unit's paths, bits or partners again.
            self.units[dead].paths = Vec::new();
            self.units[dead].deps.clear();
            self.cands[dead] = Candidates::default();
            if let Some((_, old)) = self.head[dead].take() {
                self.watchers[old].remove(&dead);
            }
        }
        for (p, c) in self.count.iter_mut().enumerate() {
            if class & (1 << p) != 0 {
                *c -= 1;
            }
        }
        self.live -= 1;
        // The new unit's partners, and the new unit offered to them.
        let mut better = Vec::new();
        let partners: Vec<usize> = if self.exact {
            (0..new).collect()
        } else {
            likely.into_iter().collect()
        };
        let mut mine = Candidates::default();
        for x in partners {
            if self.mergeable(new, x) {
                let k = self.key(new, x);
                mine.offer(k, x);
                if self.cands[x].offer(k, new) {
                    better.push(x);
                }
            }
        }
        mine.partial = !self.exact;
        self.cands[new] = mine;
        self.refresh(new);
        // Units whose best partner just disappeared, or is the new unit.
        let mut stale: BTreeSet<usize> = self.watchers[a]
            .iter()
            .chain(&self.watchers[b])
            .copied()
            .collect();
        stale.extend(better);
        for x in stale {
            if self.alive[x] {
                self.refresh(x);
            }
        }
    }
}

/// Merges `units` until every platform has at most `budget` of them and no
/// free unit smaller than `min_size` has a free partner, then refines. The
/// caller has checked that the budget can be met.
pub(crate) fn run(g: &Graph, units: Vec<Unit>, budget: usize, min_size: u64) -> Vec<Unit> {
    if units.len() > EXACT_UNITS {
        return run_grouped(g, units, budget, min_size);
    }
    let (mut units, merged) = run_merging(g, units, budget, min_size, false);
    if merged {
        refine(g, &mut units, min_size);
    }
    units
}

/// [`run`] on more than [`EXACT_UNITS`] units (closures of thousands of
/// paths): merging weighs only likely pairs until [`EXACT_UNITS`] units are
/// left; these become the items of a graph of groups
/// ([`Graph::of_groups`]), on which merging goes on weighing every pair and
/// the local search moves whole groups. Moving single paths of a closure of
/// `n` paths costs `n²` bit operations per pass, and on closures of more
/// than [`PROBES`](super::graph::PROBES) paths the paths' bits are a
/// sample, while a group's are the union of its paths'.
fn run_grouped(g: &Graph, units: Vec<Unit>, budget: usize, min_size: u64) -> Vec<Unit> {
    let (mut groups, merged) = run_merging(g, units, budget, min_size, true);
    if !merged {
        return groups;
    }
    // Items numbered by their paths: the order does not depend on the
    // order of merging.
    groups.sort_by(|a, b| a.paths.cmp(&b.paths).then(a.class.cmp(&b.class)));
    let items: Vec<(&[usize], u64, &BitSet)> = groups
        .iter()
        .map(|u| (u.paths.as_slice(), u.class, &u.deps))
        .collect();
    let q = g.of_groups(&items);
    let units: Vec<Unit> = groups
        .iter()
        .enumerate()
        .map(|(i, u)| Unit {
            paths: vec![i],
            class: u.class,
            size: u.size,
            mass: u.mass,
            deps: u.deps.clone(),
            kind: u.kind.clone(),
        })
        .collect();
    let (mut units, _) = run_merging(&q, units, budget, min_size, false);
    refine(&q, &mut units, min_size);
    units
        .into_iter()
        .map(|u| {
            let mut paths: Vec<usize> = u
                .paths
                .iter()
                .flat_map(|&i| groups[i].paths.iter().copied())
                .collect();
            paths.sort_unstable();
            Unit { paths, ..u }
        })
        .collect()
}

/// The merging of [`run`], without refining; and whether any merge was
/// needed. With `coarsen`, merging stops once weighing every pair would
/// start (at [`EXACT_UNITS`] units).
fn run_merging(
    g: &Graph,
    units: Vec<Unit>,
    budget: usize,
    min_size: u64,
    coarsen: bool,
) -> (Vec<Unit>, bool) {
    let n = units.len();
    let mut count = vec![0; g.platforms.len()];
    for u in &units {
        for (p, c) in count.iter_mut().enumerate() {
            if u.class & (1 << p) != 0 {
                *c += 1;
            }
        }
    }
    let mut m = Merger {
        g,
        units,
        alive: vec![true; n],
        cands: vec![Candidates::default(); n],
        watchers: vec![BTreeSet::new(); n],
        head: vec![None; n],
        heap: BinaryHeap::new(),
        count,
        budget,
        min_size,
        live: n,
        exact: n <= EXACT_UNITS,
    };
    let needed = m.count.iter().any(|&c| c > budget) || (0..n).any(|a| m.small(a));
    if !needed {
        return (m.units, false);
    }
    if m.exact {
        weigh_all_pairs(&mut m);
    } else {
        weigh_likely_pairs(&mut m);
    }
    while let Some(Reverse((key, a, b))) = m.heap.pop() {
        if !m.alive[a] || !m.alive[b] || m.head[a] != Some((key, b)) {
            continue;
        }
        if a == b {
            m.weigh_again(a);
            continue;
        }
        if !m.exact && m.live <= EXACT_UNITS {
            if coarsen {
                break;
            }
            // Few enough units now: weigh every pair and go on exactly.
            m.exact = true;
            weigh_all_pairs(&mut m);
            continue;
        }
        let over = m.over_budget(m.units[a].class);
        let small = key.0 == 0 && (m.small(a) || m.small(b));
        if over || small {
            m.merge(a, b);
        }
        // Every refresh queues an entry and only pops remove them: drop the
        // stale ones (which pops skip anyway) before they pile up.
        if m.heap.len() > 4 * m.live.max(1024) {
            let heap = std::mem::take(&mut m.heap);
            m.heap = heap
                .into_iter()
                .filter(|Reverse((key, a, b))| {
                    m.alive[*a] && m.alive[*b] && m.head[*a] == Some((*key, *b))
                })
                .collect();
        }
    }
    let units: Vec<Unit> = m
        .units
        .into_iter()
        .zip(m.alive)
        .filter_map(|(u, alive)| alive.then_some(u))
        .collect();
    (units, true)
}

/// Below this many weighings of a move (some 10-20 ns each), the local
/// search stays on the calling thread: waking rayon's threads and waiting
/// for them costs tens of microseconds. (Merging weighs on one thread: a
/// merge is a few microseconds of work.)
const PARALLEL_WORK: usize = 1 << 14;

/// Fills every live unit's partners by weighing every pair, each once, and
/// offering the key to both units.
fn weigh_all_pairs(m: &mut Merger) {
    let live: Vec<usize> = (0..m.units.len()).filter(|&u| m.alive[u]).collect();
    for &a in &live {
        m.cands[a] = Candidates::default();
    }
    for (i, &a) in live.iter().enumerate() {
        for &b in &live[i + 1..] {
            if m.mergeable(a, b) {
                let k = m.key(a, b);
                m.cands[a].offer(k, b);
                m.cands[b].offer(k, a);
            }
        }
    }
    m.heap.clear();
    for &a in &live {
        m.refresh(a);
    }
}

/// Fills every unit's partners from likely ones (see [`EXACT_UNITS`]): the
/// units of the paths it refers to and that refer to it, a few other users
/// of what it refers to, and its neighbours in path order.
fn weigh_likely_pairs(m: &mut Merger) {
    const SIBLINGS: usize = 8;
    let g = m.g;
    let n = m.units.len();
    let mut unit_of: Vec<Vec<usize>> = vec![Vec::new(); g.len()];
    for (u, unit) in m.units.iter().enumerate() {
        for &p in &unit.paths {
            unit_of[p].push(u);
        }
    }
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); g.len()];
    for (p, refs) in g.refs.iter().enumerate() {
        for &r in refs {
            users[r].push(p);
        }
    }
    for a in 0..n {
        let mut likely: BTreeSet<usize> = BTreeSet::new();
        for &p in &m.units[a].paths {
            for &r in &g.refs[p] {
                likely.insert(r);
                let i = users[r].partition_point(|&q| q < p);
                let from = i.saturating_sub(SIBLINGS / 2);
                likely.extend(users[r].iter().skip(from).take(SIBLINGS + 1));
            }
            likely.extend(users[p].iter().copied());
        }
        let mut partners: BTreeSet<usize> = likely
            .into_iter()
            .flat_map(|p| unit_of[p].iter().copied())
            .collect();
        partners.extend(a.saturating_sub(4)..(a + 5).min(n));
        m.cands[a] = Candidates::from(m.keys_with(a, partners), true);
        m.refresh(a);
    }
}

/// Local search after merging: moves paths between planned units of the
/// same platforms while that lowers the total cost, up to a few passes.
/// Greedy merging decides early, on small units; this corrects what ended
/// up next to the wrong neighbours. A move takes out of a unit one path, or
/// the part of it that depends on some path `x`, or the part that does not,
/// into another unit; after the moves of a pass, [`split_and_remerge`]
/// gives such a part a layer of its own where merging two others pays for
/// it.
fn refine(g: &Graph, units: &mut [Unit], min_size: u64) {
    // Thorough on closures of up to EXACT_UNITS paths, lighter above.
    let big = g.store_paths > EXACT_UNITS;
    let (passes, moves, max_sets, splits) = if big {
        (4, 4, 64, 4)
    } else {
        (8, usize::MAX, 256, 16)
    };
    let free: Vec<usize> = (0..units.len())
        .filter(|&u| units[u].kind == Kind::Free)
        .collect();
    let mut weight: Vec<f64> = units.iter().map(|u| g.weight_of(&u.deps)).collect();
    let mut memo = Memo::new(units.len(), max_sets, &free);
    for _ in 0..passes {
        let mut moved = false;
        for &a in &free {
            for _ in 0..moves.min(units[a].paths.len()) {
                // After a search that found no move out of `a`, only the
                // units changed since can take one: neither `a` nor the
                // others changed, so neither did their gains.
                let targets: Vec<usize> = match memo.no_move[a] {
                    Some(t) => free
                        .iter()
                        .copied()
                        .filter(|&b| memo.changed[b] > t)
                        .collect(),
                    None => free.clone(),
                };
                let found = if targets.is_empty() {
                    None
                } else {
                    let parts = memo.parts(g, units, a);
                    best_move(g, units, &weight, parts, &targets, a)
                };
                let Some(m) = found else {
                    memo.no_move[a] = Some(memo.step);
                    break;
                };
                units[a].paths.retain(|p| m.set.binary_search(p).is_err());
                units[a].size -= m.set_size;
                units[a].mass -= m.set_mass;
                units[a].deps = m.rest_deps;
                weight[a] = m.rest_weight;
                let b = m.to;
                units[b].paths.extend_from_slice(&m.set);
                units[b].paths.sort_unstable();
                units[b].size += m.set_size;
                units[b].mass += m.set_mass;
                units[b].deps.union_with(&m.set_deps);
                weight[b] = m.to_weight;
                memo.touch(a);
                memo.touch(b);
                moved = true;
            }
        }
        for _ in 0..splits {
            let Some(changed) =
                split_and_remerge(g, units, &mut weight, &free, &mut memo, min_size)
            else {
                break;
            };
            for u in changed {
                memo.touch(u);
            }
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

/// What [`refine`] keeps between searches: when each unit last changed,
/// its [`Part`]s, when a search for a move out of it last found none, and
/// what merging two free units would cost.
struct Memo {
    max_sets: usize,
    /// Counts changes: a unit's `changed` is the step of its last one.
    step: u64,
    changed: Vec<u64>,
    parts: Vec<Option<Vec<Part>>>,
    no_move: Vec<Option<u64>>,
    /// Each unit's place among the free units.
    place: Vec<Option<usize>>,
    /// The cost of merging the free units at places `i` and `j`, at
    /// `i * free + j` with `i < j`, while neither changed.
    pair: Vec<Option<f64>>,
    free: usize,
}

impl Memo {
    fn new(units: usize, max_sets: usize, free: &[usize]) -> Memo {
        let mut place = vec![None; units];
        for (i, &u) in free.iter().enumerate() {
            place[u] = Some(i);
        }
        Memo {
            max_sets,
            step: 0,
            changed: vec![0; units],
            parts: (0..units).map(|_| None).collect(),
            no_move: vec![None; units],
            place,
            pair: vec![None; free.len() * free.len()],
            free: free.len(),
        }
    }

    /// `u` changed: what was known of it is gone.
    fn touch(&mut self, u: usize) {
        self.step += 1;
        self.changed[u] = self.step;
        self.parts[u] = None;
        self.no_move[u] = None;
        if let Some(i) = self.place[u] {
            for j in 0..self.free {
                self.pair[i.min(j) * self.free + i.max(j)] = None;
            }
        }
    }

    /// The cost of merging free units `b` and `c`, at places `i < j`.
    fn pair(
        &mut self,
        g: &Graph,
        units: &[Unit],
        (i, b): (usize, usize),
        (j, c): (usize, usize),
    ) -> f64 {
        *self.pair[i * self.free + j].get_or_insert_with(|| {
            units[b].mass * g.weight_minus(&units[c].deps, &units[b].deps)
                + units[c].mass * g.weight_minus(&units[b].deps, &units[c].deps)
        })
    }

    /// The parts of unit `a`, made once per state of the unit.
    fn parts(&mut self, g: &Graph, units: &[Unit], a: usize) -> &[Part] {
        let max_sets = self.max_sets;
        self.parts[a].get_or_insert_with(|| {
            candidate_sets(g, &units[a], max_sets)
                .into_iter()
                .map(|set| Part::new(g, &units[a], set))
                .collect()
        })
    }
}

/// A set of paths a move or a split may take out of a unit (see
/// [`candidate_sets`]), with what the unit would keep: numbers that depend
/// on that unit only.
struct Part {
    set: Vec<usize>,
    size: u64,
    mass: f64,
    deps: BitSet,
    /// The weight of `deps`.
    weight: f64,
    rest_deps: BitSet,
    rest_weight: f64,
}

impl Part {
    fn new(g: &Graph, unit: &Unit, set: Vec<usize>) -> Part {
        let mut rest_deps = BitSet::new(g.bits);
        let mut deps = BitSet::new(g.bits);
        let mut size = 0u64;
        let mut mass = 0.0;
        for &p in &unit.paths {
            if set.binary_search(&p).is_ok() {
                deps.union_with(&g.deps[p]);
                size = size.saturating_add(g.size[p]);
                mass += g.mass[p];
            } else {
                rest_deps.union_with(&g.deps[p]);
            }
        }
        Part {
            weight: g.weight_of(&deps),
            rest_weight: g.weight_of(&rest_deps),
            set,
            size,
            mass,
            deps,
            rest_deps,
        }
    }
}

/// The sets of paths of `unit` a move may take out: each path, and for
/// each path `x` the unit depends on, the part that depends on `x` and the
/// part that does not; at most about `max_sets`.
fn candidate_sets(g: &Graph, unit: &Unit, max_sets: usize) -> BTreeSet<Vec<usize>> {
    let mut sets: BTreeSet<Vec<usize>> = unit.paths.iter().map(|&p| vec![p]).collect();
    for x in unit.deps.ones() {
        if sets.len() >= max_sets {
            break;
        }
        let (with, without): (Vec<usize>, Vec<usize>) =
            unit.paths.iter().partition(|&&p| g.deps[p].contains(x));
        for set in [with, without] {
            if !set.is_empty() && set.len() < unit.paths.len() {
                sets.insert(set);
            }
        }
    }
    sets
}

/// Split-and-remerge: takes a set of paths out of a unit into a layer of
/// its own and merges two other units of the same platforms to make room,
/// when that lowers the total cost. Moves between existing units cannot
/// reach such plans when the budget is full. Returns the units it changed,
/// if it changed anything.
fn split_and_remerge(
    g: &Graph,
    units: &mut [Unit],
    weight: &mut [f64],
    free: &[usize],
    memo: &mut Memo,
    min_size: u64,
) -> Option<[usize; 3]> {
    // The three cheapest merges of two free units, per class: at least one
    // leaves the unit to split alone.
    let mut best_pair: BTreeMap<u64, Vec<(f64, usize, usize)>> = BTreeMap::new();
    for (i, &b) in free.iter().enumerate() {
        for (j, &c) in free.iter().enumerate().skip(i + 1) {
            if units[b].class != units[c].class
                || units[b].paths.is_empty()
                || units[c].paths.is_empty()
            {
                continue;
            }
            let d = memo.pair(g, units, (i, b), (j, c));
            best_pair.entry(units[b].class).or_default().push((d, b, c));
        }
    }
    for v in best_pair.values_mut() {
        v.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        v.truncate(3);
    }
    let mut best: Option<(f64, usize, Vec<usize>, usize, usize)> = None;
    for &a in free {
        if units[a].paths.len() < 2 {
            continue;
        }
        let Some(pairs) = best_pair.get(&units[a].class) else {
            continue;
        };
        let Some(&(d, b, c)) = pairs.iter().find(|(_, b, c)| *b != a && *c != a) else {
            continue;
        };
        let unit = &units[a];
        let before = unit.mass * weight[a];
        for part in memo.parts(g, units, a) {
            // Neither part may fall below the minimum layer size.
            if part.size < min_size || unit.size - part.size < min_size {
                continue;
            }
            let after = part.mass * part.weight + (unit.mass - part.mass) * part.rest_weight;
            let gain = before - after - d;
            if gain > 1e-9 * before && best.as_ref().is_none_or(|x| gain > x.0) {
                best = Some((gain, a, part.set.clone(), b, c));
            }
        }
    }
    let (_, a, set, b, c) = best?;
    // c joins b; the set takes c's place.
    let moved = std::mem::take(&mut units[c].paths);
    units[b].paths.extend(moved);
    let class = units[a].class;
    units[a].paths.retain(|p| set.binary_search(p).is_err());
    for u in [a, b] {
        let paths = std::mem::take(&mut units[u].paths);
        units[u] = Unit::new(g, paths, class, Kind::Free);
        weight[u] = g.weight_of(&units[u].deps);
    }
    units[c] = Unit::new(g, set, class, Kind::Free);
    weight[c] = g.weight_of(&units[c].deps);
    Some([a, b, c])
}

/// Paths to move out of a unit, where to, and the units after the move.
struct Move {
    set: Vec<usize>,
    set_size: u64,
    set_mass: f64,
    set_deps: BitSet,
    to: usize,
    rest_deps: BitSet,
    rest_weight: f64,
    to_weight: f64,
}

/// The move of one of `parts` out of unit `a` into one of `targets` that
/// lowers the cost most, if any does: the first, in the order of the parts
/// and then of the targets, of the moves with the greatest gain. Weighed
/// in parallel when there are many; the choice does not depend on the
/// threads.
fn best_move(
    g: &Graph,
    units: &[Unit],
    weight: &[f64],
    parts: &[Part],
    targets: &[usize],
    a: usize,
) -> Option<Move> {
    use rayon::prelude::*;
    let unit = &units[a];
    if unit.paths.len() < 2 {
        return None;
    }
    let before_a = unit.mass * weight[a];
    // Each part's best move (the first unit with the greatest gain).
    let best_for = |(i, part): (usize, &Part)| {
        let after_a = (unit.mass - part.mass) * part.rest_weight;
        let mut best_here: Option<(f64, usize, f64)> = None;
        for &b in targets {
            if b == a || units[b].class != unit.class {
                continue;
            }
            let before_b = units[b].mass * weight[b];
            // Rounding must not make paths go back and forth.
            let floor = 1e-9 * (before_a + before_b);
            // `to_weight` is at least `weight[b]`, so the gain is at most
            // `bound` (rounding is monotone too): a move that cannot win
            // is not weighed, and the choice is the same.
            let bound = before_a + before_b - after_a - (units[b].mass + part.mass) * weight[b];
            if bound <= floor || best_here.is_some_and(|(bg, _, _)| bound <= bg) {
                continue;
            }
            let to_weight = weight[b] + g.weight_minus(&part.deps, &units[b].deps);
            let after_b = (units[b].mass + part.mass) * to_weight;
            let gain = before_a + before_b - after_a - after_b;
            if gain > floor && best_here.is_none_or(|(bg, _, _)| gain > bg) {
                best_here = Some((gain, b, to_weight));
            }
        }
        best_here.map(|(gain, to, to_weight)| (gain, i, to, to_weight))
    };
    // In parallel only when there is enough work (see PARALLEL_WORK).
    let per_part: Vec<Option<(f64, usize, usize, f64)>> =
        if parts.len() * targets.len() >= PARALLEL_WORK {
            parts.par_iter().enumerate().map(best_for).collect()
        } else {
            parts.iter().enumerate().map(best_for).collect()
        };
    let mut best: Option<(f64, usize, usize, f64)> = None;
    for (gain, i, to, to_weight) in per_part.into_iter().flatten() {
        if best.as_ref().is_none_or(|(bg, ..)| gain > *bg) {
            best = Some((gain, i, to, to_weight));
        }
    }
    best.map(|(_, i, to, to_weight)| {
        let part = &parts[i];
        Move {
            set: part.set.clone(),
            set_size: part.size,
            set_mass: part.mass,
            set_deps: part.deps.clone(),
            to,
            rest_deps: part.rest_deps.clone(),
            rest_weight: part.rest_weight,
            to_weight,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::tests::{closure, sp};

    fn graph(nodes: &[(usize, u64, Vec<usize>)]) -> Graph {
        let platform = "linux/amd64".parse().unwrap();
        Graph::new(&BTreeMap::from([(platform, closure(nodes))])).unwrap()
    }

    fn total(g: &Graph, units: &[Unit]) -> f64 {
        units.iter().map(|u| u.mass * g.weight_of(&u.deps)).sum()
    }

    /// Two big unrelated paths share a layer and two tiny ones have a layer
    /// each, with no room for another layer: no move between the layers
    /// helps as much as giving the big ones a layer each and joining the
    /// tiny ones.
    #[test]
    fn split_and_remerge_makes_room_for_a_split() {
        let g = graph(&[
            (0, 1 << 20, vec![]),
            (1, 1 << 20, vec![]),
            (2, 1 << 10, vec![]),
            (3, 1 << 10, vec![]),
        ]);
        let id = |i: usize| g.ids[&sp(i)];
        let mut units = vec![
            Unit::new(&g, vec![id(0), id(1)], 1, Kind::Free),
            Unit::new(&g, vec![id(2)], 1, Kind::Free),
            Unit::new(&g, vec![id(3)], 1, Kind::Free),
        ];
        let mut weight: Vec<f64> = units.iter().map(|u| g.weight_of(&u.deps)).collect();
        let before = total(&g, &units);
        let mut memo = Memo::new(units.len(), 256, &[0, 1, 2]);
        assert!(split_and_remerge(&g, &mut units, &mut weight, &[0, 1, 2], &mut memo, 0).is_some());
        assert!(total(&g, &units) < before);
        let mut layers: Vec<Vec<usize>> = units.iter().map(|u| u.paths.clone()).collect();
        layers.sort();
        let mut want = vec![vec![id(0)], vec![id(1)], vec![id(2), id(3)]];
        want.sort();
        assert_eq!(layers, want);
        for (u, w) in units.iter().zip(&weight) {
            assert_eq!(*w, g.weight_of(&u.deps));
        }
        // Nothing left to gain.
        let mut memo = Memo::new(units.len(), 256, &[0, 1, 2]);
        assert!(split_and_remerge(&g, &mut units, &mut weight, &[0, 1, 2], &mut memo, 0).is_none());
    }

    /// Planning groups (what closures of more than EXACT_UNITS units get;
    /// here the groups come from exact merging, so this checks the graph
    /// of groups and its local search) plans every path once within the
    /// budget, close to the cost of the local search on single paths.
    #[test]
    fn grouped_merging_is_close_to_exact_merging() {
        for (n, seed, budget) in [(150, 3, 12), (300, 7, 20), (400, 9, 5)] {
            let c = crate::plan::score::synthetic_closure(n, seed);
            let g = Graph::new(&BTreeMap::from([("linux/amd64".parse().unwrap(), c)])).unwrap();
            let units = || -> Vec<Unit> {
                (0..g.len())
                    .map(|p| Unit::new(&g, vec![p], 1, Kind::Free))
                    .collect()
            };
            let exact = run(&g, units(), budget, 0);
            let grouped = run_grouped(&g, units(), budget, 0);
            assert_eq!(grouped.len(), budget);
            let mut paths: Vec<usize> = grouped.iter().flat_map(|u| u.paths.clone()).collect();
            paths.sort_unstable();
            assert_eq!(paths, (0..g.len()).collect::<Vec<_>>());
            for u in &grouped {
                let again = Unit::new(&g, u.paths.clone(), 1, Kind::Free);
                assert_eq!((u.size, &u.deps), (again.size, &again.deps));
            }
            let (e, gr) = (total(&g, &exact), total(&g, &grouped));
            assert!(
                gr <= 1.1 * e,
                "{n} paths, budget {budget}: {gr} against {e}"
            );
        }
    }

    /// Refining never raises the cost the merging reached.
    #[test]
    fn refining_lowers_the_cost() {
        let c = crate::plan::score::synthetic_closure(150, 3);
        let g = Graph::new(&BTreeMap::from([("linux/amd64".parse().unwrap(), c)])).unwrap();
        let units: Vec<Unit> = (0..g.len())
            .map(|p| Unit::new(&g, vec![p], 1, Kind::Free))
            .collect();
        let (merged, _) = run_merging(&g, units, 12, 0, false);
        let before = total(&g, &merged);
        let mut refined = merged.clone();
        refine(&g, &mut refined, 0);
        assert!(total(&g, &refined) <= before);
        assert_eq!(refined.len(), merged.len());
        let mut paths: Vec<usize> = refined.iter().flat_map(|u| u.paths.clone()).collect();
        paths.sort_unstable();
        assert_eq!(paths, (0..g.len()).collect::<Vec<_>>());
    }
}
