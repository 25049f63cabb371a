//! The layering benchmark: how many bytes clients pull again after an
//! update, for nixoci's planner and the nixpkgs algorithms, on a closure
//! made from this machine's Debian package database.
//!
//! Run it with `scripts/bench-layering` (or `--quick`). Input: the output of
//!
//!     dpkg-query -W -f '${db:Status-Abbrev}\t${Package}\t${source:Package}\t${Installed-Size}\t${Provides}\t${Pre-Depends}\t${Depends}\n'
//!
//! Each installed package is one store path of its installed size whose
//! references are its dependencies (the first installed alternative, virtual
//! packages through their providers); packages that depend on each other in
//! a cycle are joined into one path, as Nix cannot express a cycle. An
//! application of 16 MiB on top refers to every package nothing else
//! depends on. An update scenario changes every binary package of one
//! source package (a Debian point release does exactly that); in Nix every
//! path depending on a changed path changes too. See `docs/layering.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Instant;

use nixoci::closure::Closure;
use nixoci::plan::score::{self, Algorithm};
use nixoci::store_path::StorePath;

const APP_SIZE: u64 = 16 << 20;

struct Package {
    name: String,
    source: String,
    size: u64,
    provides: Vec<String>,
    depends: Vec<Vec<String>>,
}

/// The package names of a dependency field: clauses of alternatives.
fn clauses(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|clause| {
            clause
                .split('|')
                .filter_map(|alt| {
                    let name = alt.split(['(', ' ', '[']).find(|w| !w.is_empty())?;
                    Some(name.split(':').next().unwrap_or(name).to_owned())
                })
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

fn parse(text: &str) -> Vec<Package> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 7 || !f[0].starts_with("ii") {
                return None;
            }
            let mut depends = clauses(f[5]);
            depends.extend(clauses(f[6]));
            Some(Package {
                name: f[1].to_owned(),
                source: f[2].split_whitespace().next().unwrap_or(f[1]).to_owned(),
                size: f[3].trim().parse::<u64>().unwrap_or(0) * 1024,
                provides: clauses(f[4]).into_iter().flatten().collect(),
                depends,
            })
        })
        .collect()
}

/// Strongly connected components of a graph (Tarjan, iterative), each
/// sorted, in an order where every component comes after those it refers to.
fn components(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let (mut index, mut low) = (vec![usize::MAX; n], vec![0; n]);
    let (mut on_stack, mut stack, mut out) = (vec![false; n], Vec::new(), Vec::new());
    let mut next = 0;
    for start in 0..n {
        if index[start] != usize::MAX {
            continue;
        }
        let mut work = vec![(start, 0usize)];
        while let Some(&mut (v, ref mut i)) = work.last_mut() {
            if *i == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(*i) {
                *i += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                comp.sort_unstable();
                out.push(comp);
            }
        }
    }
    out
}

/// The corpus: the closure, and for each source package the paths it
/// changes.
struct Corpus {
    closure: Closure,
    packages: usize,
    joined: usize,
    by_source: BTreeMap<String, BTreeSet<StorePath>>,
    app: StorePath,
}

fn corpus(packages: &[Package]) -> Corpus {
    let ids: BTreeMap<&str, usize> = packages
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut providers: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (i, p) in packages.iter().enumerate() {
        for v in &p.provides {
            providers.entry(v.as_str()).or_default().insert(i);
        }
    }
    let resolve = |name: &str| {
        ids.get(name)
            .copied()
            .or_else(|| providers.get(name).and_then(|s| s.first().copied()))
    };
    let edges: Vec<Vec<usize>> = packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let set: BTreeSet<usize> = p
                .depends
                .iter()
                .filter_map(|alts| alts.iter().find_map(|a| resolve(a)))
                .filter(|&d| d != i)
                .collect();
            set.into_iter().collect()
        })
        .collect();
    let comps = components(&edges);
    let mut comp_of = vec![0; packages.len()];
    for (c, members) in comps.iter().enumerate() {
        for &m in members {
            comp_of[m] = c;
        }
    }
    let mut nodes: Vec<(String, u64, Vec<usize>)> = comps
        .iter()
        .enumerate()
        .map(|(c, members)| {
            let mut names: Vec<&str> = members.iter().map(|&m| packages[m].name.as_str()).collect();
            names.sort_unstable();
            let name = match names.as_slice() {
                [one] => (*one).to_owned(),
                [first, rest @ ..] => format!("{first}-and-{}-more", rest.len()),
                [] => format!("empty{c}"),
            };
            let size = members.iter().map(|&m| packages[m].size).sum();
            let refs: BTreeSet<usize> = members
                .iter()
                .flat_map(|&m| edges[m].iter().map(|&d| comp_of[d]))
                .filter(|&d| d != c)
                .collect();
            (name, size, refs.into_iter().collect())
        })
        .collect();
    let mut used = vec![false; nodes.len()];
    for (_, _, refs) in &nodes {
        for &r in refs {
            used[r] = true;
        }
    }
    let tops: Vec<usize> = (0..nodes.len()).filter(|&c| !used[c]).collect();
    nodes.push(("app".to_owned(), APP_SIZE, tops));
    let closure = score::closure_of(&nodes);
    let path_of = |name: &str| score::by_name(&closure, name).cloned();
    let mut by_source: BTreeMap<String, BTreeSet<StorePath>> = BTreeMap::new();
    for (i, p) in packages.iter().enumerate() {
        if let Some(path) = path_of(&nodes[comp_of[i]].0) {
            by_source.entry(p.source.clone()).or_default().insert(path);
        }
    }
    let app = path_of("app").expect("the app is in the closure");
    Corpus {
        joined: packages.len() - comps.len(),
        packages: packages.len(),
        closure,
        by_source,
        app,
    }
}

/// Prints a plan's layers, and for each scenario the unchanged bytes
/// shipped in each new layer (`--layers`).
fn show(closure: &Closure, layers: &[Vec<StorePath>], scenarios: &[(String, BTreeSet<StorePath>)]) {
    let size = |l: &[StorePath]| -> u64 { l.iter().map(|p| closure.paths[p].nar_size).sum() };
    for (i, l) in layers.iter().enumerate() {
        let names: Vec<&str> = l.iter().take(6).map(|p| p.name()).collect();
        println!(
            "layer {i}: {} MiB, {} paths: {}",
            mib(size(l)),
            l.len(),
            names.join(" ")
        );
    }
    for (what, direct) in scenarios {
        let update = score::update(closure, direct);
        println!("{what}:");
        for (i, l) in layers.iter().enumerate() {
            let changed: u64 = l
                .iter()
                .filter(|p| update.renamed.contains_key(*p))
                .map(|p| closure.paths[p].nar_size)
                .sum();
            if changed > 0 {
                println!(
                    "  layer {i}: {} MiB changed, {} MiB unchanged",
                    mib(changed),
                    mib(size(l) - changed)
                );
            }
        }
    }
}

/// `--synthetic N`: planning time on a generated closure of N paths.
fn synthetic(n: &str) -> ExitCode {
    let Ok(n) = n.parse::<usize>() else {
        eprintln!("layering: --synthetic {n}: expected a number of paths");
        return ExitCode::from(2);
    };
    let closure = score::synthetic_closure(n, 1);
    for budget in [100, 20] {
        let t = Instant::now();
        match score::layers(Algorithm::Nixoci, &closure, budget, None) {
            Ok(layers) => println!(
                "{} paths, budget {budget}: {} layers in {:.0} ms",
                closure.paths.len(),
                layers.len(),
                t.elapsed().as_secs_f64() * 1000.0
            ),
            Err(e) => {
                eprintln!("layering: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let known = ["--quick", "--layers", "--synthetic"];
    if let Some(bad) = args
        .iter()
        .find(|a| a.starts_with("--") && !known.contains(&a.as_str()))
    {
        eprintln!("layering: unknown option {bad}; usage: layering [--quick] [--layers] DPKG_QUERY_OUTPUT | --synthetic N");
        return ExitCode::from(2);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let show_layers = args.iter().any(|a| a == "--layers");
    if let Some(n) = args
        .iter()
        .position(|a| a == "--synthetic")
        .and_then(|i| args.get(i + 1))
    {
        return synthetic(n);
    }
    let Some(file) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: layering [--quick] [--layers] DPKG_QUERY_OUTPUT | --synthetic N");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("layering: reading {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let packages = parse(&text);
    if packages.is_empty() {
        eprintln!("layering: {file} lists no installed package");
        return ExitCode::from(2);
    }
    let c = corpus(&packages);
    let total: u64 = c.closure.paths.values().map(|i| i.nar_size).sum();
    println!(
        "Corpus: {} store paths ({} installed Debian packages, {} joined into others by dependency cycles, and the application), {} MiB.\n",
        c.closure.paths.len(),
        c.packages,
        c.joined,
        mib(total)
    );

    let mut scenarios: Vec<(String, BTreeSet<StorePath>)> = Vec::new();
    for (source, what) in [
        ("openssl", "openssl (libssl3: a leaf library)"),
        ("python3.11", "python3.11 (a language runtime)"),
        ("perl", "perl (a language runtime)"),
        ("glibc", "glibc (under everything)"),
    ] {
        match c.by_source.get(source) {
            Some(paths) => scenarios.push((what.to_owned(), paths.clone())),
            None => eprintln!("layering: note: {source} is not installed; scenario skipped"),
        }
    }
    scenarios.push((
        "the application only".to_owned(),
        BTreeSet::from([c.app.clone()]),
    ));
    let budgets: &[usize] = if quick { &[20] } else { &[100, 20] };
    // Every source package of the corpus, or every fourth (every
    // sixteenth with --quick), by name: a broad sample of updates.
    let step = if quick { 16 } else { 4 };
    let sample: Vec<&BTreeSet<StorePath>> = c.by_source.values().step_by(step).collect();

    let mut failures = Vec::new();
    for &budget in budgets {
        // Each algorithm's image before the update, once.
        let mut before: BTreeMap<Algorithm, Vec<Vec<StorePath>>> = BTreeMap::new();
        let mut times: BTreeMap<Algorithm, f64> = BTreeMap::new();
        for alg in Algorithm::ALL {
            let t = Instant::now();
            let layers = match score::layers(alg, &c.closure, budget, None) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("layering: {}: {e}", alg.name());
                    return ExitCode::FAILURE;
                }
            };
            times.insert(alg, t.elapsed().as_secs_f64());
            before.insert(alg, layers);
        }
        let run = |direct: &BTreeSet<StorePath>| -> Result<(score::Update, BTreeMap<Algorithm, u64>), String> {
            let update = score::update(&c.closure, direct);
            let mut cost_of = BTreeMap::new();
            for alg in Algorithm::ALL {
                let prior = match alg {
                    Algorithm::NixociPrevious => &before[&Algorithm::Nixoci],
                    other => &before[&other],
                };
                let after = score::layers(alg, &update.closure, budget, Some(prior))
                    .map_err(|e| format!("{}: {e}", alg.name()))?;
                cost_of.insert(alg, score::new_layer_bytes(prior, &after, &update.closure));
            }
            Ok((update, cost_of))
        };

        println!("Budget {budget} layers: new-layer MiB after the update (ratio to one layer per path).\n");
        println!("| scenario | changed paths | changed directly | lower bound | one layer per path | nixoci | nixoci --previous | nixpkgs popularity | nixpkgs auto-layer |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (what, direct) in &scenarios {
            let (update, cost_of) = match run(direct) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("layering: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let ideal = update.changed_bytes;
            let cell = |alg: Algorithm| {
                let cost = cost_of[&alg];
                format!("{} ({:.2}x)", mib(cost), cost as f64 / ideal.max(1) as f64)
            };
            println!(
                "| {what} | {} | {} | {} | {} | {} | {} | {} | {} |",
                update.renamed.len(),
                mib(update.direct_bytes),
                mib(ideal),
                cell(Algorithm::PerPath),
                cell(Algorithm::Nixoci),
                cell(Algorithm::NixociPrevious),
                cell(Algorithm::Popularity),
                cell(Algorithm::AutoLayer),
            );
            if budget == 20 {
                let ours = cost_of[&Algorithm::Nixoci] as f64;
                let popularity = cost_of[&Algorithm::Popularity] as f64;
                if ours > 1.5 * ideal as f64 {
                    failures.push(format!(
                        "{what}: nixoci is {:.2}x the ideal",
                        ours / ideal as f64
                    ));
                }
                // When even the ideal pulls more than half of what
                // popularity pulls, no plan can meet that target.
                if ours > 0.5 * popularity && ideal as f64 <= 0.5 * popularity {
                    failures.push(format!(
                        "{what}: nixoci is {:.2}x popularity",
                        ours / popularity
                    ));
                }
                if what == "the application only" && cost_of[&Algorithm::NixociPrevious] != ideal {
                    failures.push(format!(
                        "{what}: with --previous more than the application was pulled"
                    ));
                }
            }
        }
        println!();
        if show_layers {
            show(&c.closure, &before[&Algorithm::Nixoci], &scenarios);
        }

        // The broad sample: ratios to the ideal.
        let mut ratios: BTreeMap<Algorithm, Vec<f64>> = BTreeMap::new();
        for direct in &sample {
            let (update, cost_of) = match run(direct) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("layering: {e}");
                    return ExitCode::FAILURE;
                }
            };
            for (alg, cost) in cost_of {
                ratios
                    .entry(alg)
                    .or_default()
                    .push(cost as f64 / update.changed_bytes.max(1) as f64);
            }
        }
        println!(
            "Budget {budget}, updates of {} source packages (every {step}th by name): new-layer bytes over the ideal.\n",
            sample.len()
        );
        println!("| algorithm | mean | median | 90th percentile | worst | within 1.5x |");
        println!("|---|---:|---:|---:|---:|---:|");
        for alg in Algorithm::ALL {
            let mut r = ratios.remove(&alg).unwrap_or_default();
            r.sort_by(f64::total_cmp);
            let at = |q: f64| {
                r.get(((r.len() as f64 - 1.0) * q).round() as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            let mean = r.iter().sum::<f64>() / r.len().max(1) as f64;
            let within = r.iter().filter(|x| **x <= 1.5).count();
            println!(
                "| {} | {mean:.2}x | {:.2}x | {:.2}x | {:.2}x | {}/{} |",
                alg.name(),
                at(0.5),
                at(0.9),
                at(1.0),
                within,
                r.len()
            );
        }
        println!();
        let counts: Vec<String> = Algorithm::ALL
            .iter()
            .filter(|a| **a != Algorithm::NixociPrevious)
            .map(|a| {
                format!(
                    "{} {} layers in {:.0} ms",
                    a.name(),
                    before[a].len(),
                    times[a] * 1000.0
                )
            })
            .collect();
        println!(
            "Planning the image before the update: {}.\n",
            counts.join("; ")
        );
    }
    if budgets.contains(&20) {
        if failures.is_empty() {
            println!("Targets (budget 20): all met.");
        } else {
            println!("Targets (budget 20) missed:\n");
            for f in &failures {
                println!("- {f}");
            }
        }
    }
    ExitCode::SUCCESS
}
