//! `build`'s and `plan`'s flags resolved against the world: installables
//! built by Nix, closures read, image specs merged, the previous image
//! read, the output and cache checked. Everything that can be wrong with
//! the input fails here, before anything is written; what comes out is a
//! [`PlanRequest`] or a [`BuildRequest`], where the flags take effect.
//!
//! (The flags themselves are parsed into types by clap: `cli::flags`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use super::build::Args;
use super::flags::{default_jobs, Created, KeyValue};
use super::{usage, Classify, UsageError};
use crate::closure::Closure;
use crate::eval::{self, Nix, TargetArgs};
use crate::installable::Installable;
use crate::layer::{cache, Cache, Compression, LayerOptions};
use crate::oci::image::{check_key_values, valid_ref_name, RunConfig};
use crate::oci::layout::{check_output, LayoutArg};
use crate::pipeline::{ArchCheck, BuildRequest, ImageRequest, PlanRequest};
use crate::plan::{Layering, DEFAULT_MAX_LAYERS};
use crate::platform::Platform;
use crate::publish::base::{read_base, Base, BaseRequest};
use crate::publish::previous::{read_previous, PreviousRequest};
use crate::rootfs::{Perms, RootSpec};
use crate::spec::{self, ImageSpec, Overrides};
use crate::store_path::{StoreDir, StorePath};

/// The request of `nixoci build`.
pub fn build_request(args: &Args) -> anyhow::Result<BuildRequest> {
    let store_dir = store_dir(args)?;
    let output = args
        .output
        .as_ref()
        .map(|o| o.dir.clone())
        .ok_or_else(|| usage("--output is required"))?;
    if output == Path::new("-") {
        bail!(UsageError(
            "-o -: build writes a layout directory; to stream an image, build into one and run `nixoci save LAYOUT -o -` (| docker load)".into()
        ));
    }
    let stores = super::store_dirs(&args.store_dir, &args.store_root);
    // The ociLayout builder writes its own $out, a store path.
    if !args.structured_attrs {
        super::refuse_in_store("--output", &output, &stores)?;
    }
    if let Some(dir) = cache_dir(args) {
        super::refuse_in_store("--cache-dir", &dir, &stores)?;
    }
    check_output(&output).classify()?;
    let compression =
        Compression::new(&args.compression, args.level).map_err(|e| match args.level {
            Some(level) => usage(format!("--level {level}: {e}")),
            None => usage(format!("--compression {}: {e}", args.compression)),
        })?;
    if args.jobs == Some(0) {
        bail!(UsageError("--jobs 0: expected at least 1".into()));
    }
    let resolved = resolve(args, &store_dir, true)?;
    Ok(BuildRequest {
        base: resolved.base,
        plan: resolved.plan,
        tag: resolved.tag,
        output,
        created: resolved.created.as_str().to_owned(),
        annotations: resolved.annotations,
        jobs: args.jobs.unwrap_or_else(default_jobs),
        layer_options: LayerOptions {
            store_root: args.store_root.clone(),
            compression,
            cache: cache(args),
            perms: resolved.perms,
        },
        arch_check: if args.no_arch_check {
            ArchCheck::Off
        } else if args.structured_attrs {
            ArchCheck::On {
                off_switch: "set archCheck = false in ociLayout to build anyway",
            }
        } else {
            ArchCheck::On {
                off_switch: "use --no-arch-check to build anyway",
            }
        },
    })
}

/// The request of `nixoci plan`: no output, no layer cache.
pub fn plan_request(args: &Args) -> anyhow::Result<PlanRequest> {
    let store_dir = store_dir(args)?;
    Ok(resolve(args, &store_dir, false)?.plan)
}

fn store_dir(args: &Args) -> anyhow::Result<StoreDir> {
    StoreDir::new(&args.store_dir).map_err(|e| usage(format!("--store-dir: {e}")))
}

/// What the flags and the image specs say for the whole image.
struct Resolved {
    plan: PlanRequest,
    base: Option<Base>,
    perms: Perms,
    tag: String,
    created: Created,
    annotations: BTreeMap<String, String>,
}

/// Everything but the output: `read_all` also checks that every path of
/// the closures is on disk (a build reads them all; a plan none).
fn resolve(args: &Args, store_dir: &StoreDir, read_all: bool) -> anyhow::Result<Resolved> {
    let pairs = |flat: &[String]| -> Vec<(String, String)> {
        flat.chunks(2)
            .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
            .collect()
    };
    if args.file.is_some() && !args.override_inputs.is_empty() {
        bail!(UsageError(
            "--override-input is for flakes; -f FILE evaluates a file without inputs".into()
        ));
    }
    let nix = Nix {
        options: pairs(&args.options),
        file: args.file.clone(),
        impure: args.impure,
        override_inputs: pairs(&args.override_inputs),
        print_build_logs: args.print_build_logs,
        ..Nix::default()
    };
    let tag_flag = tag_flag(args)?;
    if args.max_layers == Some(0) {
        bail!(UsageError("--max-layers 0: expected at least 1".into()));
    }
    if args.previous.is_none()
        && args.from.is_none()
        && args.push.is_none()
        && args.registry.given()
    {
        bail!(UsageError(
            "--creds, --insecure, --ca-file and --timeout are for the registry of a --from or --previous image or of --push: give one".into()
        ));
    }
    let created_flag = match &args.created {
        Some(c) => c.clone(),
        None => match std::env::var("SOURCE_DATE_EPOCH").ok().as_deref() {
            None | Some("") => Created::epoch(),
            Some(s) => Created::from_epoch(s)
                .map_err(|e| usage(format!("SOURCE_DATE_EPOCH '{s}': {e}")))?,
        },
    };
    let mut annotations = key_values("--annotation", &args.annotation)?;
    key_values("--label", &args.label)?;
    // The config flags, before Nix builds anything ({root} as a stand-in).
    if let Ok(stand_in) =
        StorePath::from_absolute(&format!("{}/{}-root", store_dir.as_str(), "0".repeat(32)))
    {
        run_config(args, RunConfig::default(), &stand_in)?
            .check()
            .map_err(|e| usage(e.to_string()))?;
    }
    let mut layering = layering(args, store_dir)?;
    let root_spec = RootSpec {
        trees: Vec::new(),
        dirs: args.dirs.clone(),
        symlinks: args.symlinks.clone(),
        users: args.users.clone(),
        groups: args.groups.clone(),
    };
    // The tree, before Nix builds anything ({root} as a stand-in): a
    // conflict fails now.
    root_spec.tree("/").map_err(|e| usage(e.to_string()))?;
    let flags_root_layer = !root_spec.is_empty() || !args.copy_to_root.is_empty() || args.nix_db;
    if flags_root_layer {
        // The root layer counts in the budget.
        layering.reserve_layers += 1;
    }
    if !args.store_root.is_dir() {
        bail!(UsageError(format!(
            "--store-root {}: not a directory",
            args.store_root.display()
        )));
    }
    let targets = eval::targets(
        TargetArgs {
            installable: args.installable.as_deref(),
            systems: &args.systems,
            platforms: &args.platforms,
            closure_file: args.closure_json.is_some(),
            file: args.file.is_some(),
        },
        store_dir,
        &nix,
    )
    .classify()?;

    // The --copy-to-root installables of each platform, resolved like
    // the platform's own (a flake attribute for its system).
    let mut copies: Vec<BTreeMap<Platform, eval::Target>> = Vec::new();
    for copy in &args.copy_to_root {
        let installable =
            Installable::parse_with(&copy.installable, store_dir, args.file.is_some())
                .map_err(|e| usage(format!("--copy-to-root '{}': {e}", copy.installable)))?;
        if let Some(p) = &copy.platform {
            if !targets.contains_key(p) {
                bail!(UsageError(format!(
                    "--copy-to-root {p}={}: the image has no platform {p}",
                    copy.installable
                )));
            }
        }
        copies.push(
            targets
                .iter()
                .filter(|(p, _)| copy.platform.as_ref().is_none_or(|c| c == *p))
                .map(|(p, t)| {
                    let target = eval::Target {
                        installable: installable.clone(),
                        system: t.system.clone(),
                    };
                    (p.clone(), target)
                })
                .collect(),
        );
    }

    // Build the flake outputs with one nix call.
    let mut roots: BTreeMap<Platform, StorePath> = BTreeMap::new();
    let mut copy_paths: Vec<BTreeMap<Platform, StorePath>> = vec![BTreeMap::new(); copies.len()];
    let mut labelled: Vec<(String, eval::BuildTarget)> = Vec::new();
    // Where each built path goes: the image's root, or copy `i`.
    let mut goes: Vec<(Option<usize>, Platform)> = Vec::new();
    for (i, group) in std::iter::once(&targets).chain(&copies).enumerate() {
        let mut flakes = BTreeMap::new();
        for (platform, target) in group {
            match (&target.installable, i) {
                (Installable::StorePath(p), 0) => {
                    roots.insert(platform.clone(), p.clone());
                }
                (Installable::StorePath(p), _) => {
                    copy_paths[i - 1].insert(platform.clone(), p.clone());
                }
                (Installable::Flake { .. } | Installable::Attr(_), _) => {
                    flakes.insert(platform.clone(), target.clone());
                }
            }
        }
        if flakes.is_empty() {
            continue;
        }
        if args.closure_json.is_some() {
            bail!(UsageError(
                "--closure-json needs store paths, not flake outputs".into()
            ));
        }
        for (platform, installable) in eval::resolve_attrs(&nix, &flakes).classify()? {
            let label = match i {
                0 => platform.to_string(),
                _ => format!("{platform} --copy-to-root"),
            };
            labelled.push((label, installable));
            goes.push(((i > 0).then(|| i - 1), platform));
        }
    }
    if !labelled.is_empty() {
        let built = eval::build(&nix, store_dir, &labelled).classify()?;
        for ((copy, platform), path) in goes.into_iter().zip(built) {
            match copy {
                None => roots.insert(platform, path),
                Some(c) => copy_paths[c].insert(platform, path),
            };
        }
    }

    // Image specs give roots, config and defaults for the whole image.
    let mut specs: BTreeMap<Platform, ImageSpec> = BTreeMap::new();
    for (platform, root) in &roots {
        if let Some(spec) = read_spec(&args.store_root, root)? {
            specs.insert(platform.clone(), spec);
        }
    }
    let merged = spec::merge(
        specs.values(),
        Overrides {
            tag: tag_flag.as_deref(),
            created: args.created.as_ref().map(Created::as_str),
            max_layers: args.max_layers,
            from: args.from.is_some(),
        },
    )
    .map_err(|e| usage(e.to_string()))?;
    // The specs' directories, links, users and groups, per platform.
    let mut spec_roots: BTreeMap<Platform, (String, RootSpec)> = BTreeMap::new();
    for (platform, s) in &specs {
        if s.has_root_entries() {
            let root = s.root_spec().map_err(|e| usage(e.to_string()))?;
            spec_roots.insert(
                platform.clone(),
                (format!("the image spec '{}'", s.name), root),
            );
        }
    }
    if !flags_root_layer && !spec_roots.is_empty() {
        // The root layer counts in the budget.
        layering.reserve_layers += 1;
    }
    // The base image, for every platform: --from, else the specs'.
    let from = match &args.from {
        Some(f) => Some(f.clone()),
        None => merged.from_image.clone(),
    };
    let base = match &from {
        None => None,
        Some(arg) => Some(
            read_base(BaseRequest {
                flag: "--from",
                arg,
                wanted: &roots.keys().cloned().collect(),
                creds: args.registry.creds.as_deref(),
                options: args.registry.client_options(),
                note: Arc::new(|msg| say!("nixoci: {msg}")),
            })
            .classify()?,
        ),
    };
    // The base's layers count in the budget: the most of any platform.
    let base_layers = base
        .iter()
        .flat_map(|b| b.platforms.values())
        .map(|p| p.layers.len())
        .max()
        .unwrap_or(0);
    layering.reserve_layers += base_layers;
    let tag = match (&tag_flag, merged.tag) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => {
            check_tag("the image spec's tag", &t)?;
            t
        }
        (None, None) => "latest".to_owned(),
    };
    let max_layers = args
        .max_layers
        .or(merged.max_layers)
        .unwrap_or(DEFAULT_MAX_LAYERS);
    if max_layers == 0 {
        bail!(UsageError("the image spec's maxLayers is 0".into()));
    }
    if base_layers > 0 && layering.reserve_layers >= max_layers {
        bail!(UsageError(format!(
            "--from {}: its {base_layers} layers and {} reserved leave no layer of --max-layers {max_layers} for the store paths",
            from.as_deref().unwrap_or_default(),
            layering.reserve_layers - base_layers
        )));
    }
    // --created, then the specs' own time, then SOURCE_DATE_EPOCH, then the
    // epoch: what the image says beats what the environment says, so the
    // CLI and the ociLayout derivation agree.
    let created = match merged.created {
        Some(c) => c
            .parse::<Created>()
            .map_err(|e| usage(format!("the image spec's created '{c}': {e}")))?,
        None => created_flag,
    };
    for (k, v) in merged.annotations {
        annotations.entry(k).or_insert(v);
    }
    check_key_values("--annotation", &annotations).map_err(|e| usage(e.to_string()))?;
    // Each platform's trees for /, and their store paths as roots too.
    let mut trees: BTreeMap<Platform, Vec<StorePath>> = BTreeMap::new();
    for paths in &copy_paths {
        for (p, path) in paths {
            trees.entry(p.clone()).or_default().push(path.clone());
        }
    }
    let image_roots: BTreeMap<Platform, Vec<StorePath>> = roots
        .iter()
        .map(|(p, r)| {
            let mut rs = specs
                .get(p)
                .map(|s| s.roots.clone())
                .unwrap_or_else(|| vec![r.clone()]);
            let spec_trees = specs.get(p).map(|s| &s.copy_to_root);
            for t in trees.get(p).into_iter().chain(spec_trees).flatten() {
                if !rs.contains(t) {
                    rs.push(t.clone());
                }
            }
            (p.clone(), rs)
        })
        .collect();

    let all_roots: Vec<StorePath> = image_roots
        .values()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let graph = match &args.closure_json {
        Some(file) => {
            let bytes = std::fs::read(file)
                .map_err(|e| usage(format!("--closure-json {}: {e}", file.display())))?;
            Closure::from_any_json(store_dir, &bytes)
                .map_err(|e| usage(format!("--closure-json {}: {e}", file.display())))?
        }
        None => eval::path_info_closure(&nix, store_dir, &all_roots)
            .classify()
            .context("reading closures from the Nix store")?,
    };
    // Each platform's closure; the last takes the graph itself, so a
    // one-platform image copies no entry.
    let mut per_platform: Vec<(Platform, Vec<StorePath>)> = image_roots.into_iter().collect();
    let last = per_platform.pop();
    let mut closures = Vec::new();
    for (platform, rs) in per_platform {
        let closure = graph.subclosure(&rs);
        closures.push((platform, rs, closure));
    }
    if let Some((platform, rs)) = last {
        let closure = graph.into_subclosure(&rs);
        closures.push((platform, rs, closure));
    }
    // A tree placed at / for several platforms is listed (and its files
    // hashed) once.
    let mut listed: BTreeMap<StorePath, Vec<(String, crate::rootfs::Entry)>> = BTreeMap::new();
    let mut read_tree = |path: &StorePath| -> anyhow::Result<Vec<(String, crate::rootfs::Entry)>> {
        if let Some(tree) = listed.get(path) {
            return Ok(tree.clone());
        }
        let tree = crate::rootfs::read_tree(&args.store_root, path.as_str())?;
        listed.insert(path.clone(), tree.clone());
        Ok(tree)
    };
    let mut images = BTreeMap::new();
    let mut checked = BTreeSet::new();
    for (platform, rs, closure) in closures {
        let closure =
            closure.map_err(|e| usage(format!("closure of {} for {platform}: {e}", rs[0])))?;
        // Every path a layer will read, before anything is written (a plan
        // reads none: it needs only the roots).
        let read = if read_all { closure.paths.len() } else { 0 };
        for path in rs.iter().chain(closure.paths.keys().take(read)) {
            if !checked.insert(path.clone()) {
                continue;
            }
            let on_disk = args.store_root.join(path.as_str().trim_start_matches('/'));
            if std::fs::symlink_metadata(&on_disk).is_err() {
                bail!(UsageError(format!(
                    "{path} is not in the store (looked for {})",
                    on_disk.display()
                )));
            }
        }
        let spec_run = specs
            .get(&platform)
            .map(ImageSpec::run_config)
            .unwrap_or_default();
        let base_image = base
            .as_ref()
            .and_then(|b| b.platforms.get(&platform))
            .cloned();
        let spec_run = match &base_image {
            Some(b) => spec_run.on_base(&b.run),
            None => spec_run,
        };
        let run = run_config(args, spec_run, &rs[0])?;
        run.check()
            .map_err(|e| usage(format!("the image config of {platform}: {e}")))?;
        let mut spec = root_spec.clone();
        for path in trees.get(&platform).into_iter().flatten() {
            let tree = read_tree(path).context(format!("--copy-to-root {path}"))?;
            spec.trees.push((format!("--copy-to-root {path}"), tree));
        }
        let mut from_spec = spec_roots.remove(&platform);
        if let (Some((label, root)), Some(s)) = (&mut from_spec, specs.get(&platform)) {
            for path in &s.copy_to_root {
                let tree = read_tree(path).context(format!("{label}: copyToRoot {path}"))?;
                root.trees
                    .push((format!("{label} (copyToRoot {path})"), tree));
            }
        }
        let mut rootfs = spec
            .tree_with(
                rs[0].as_str(),
                from_spec.as_ref().map(|(l, r)| (l.as_str(), r)),
            )
            .map_err(|e| usage(e.to_string()))?;
        if args.nix_db || specs.get(&platform).is_some_and(|s| s.include_nix_db) {
            add_nix_db(&mut rootfs, &closure, &rs)?;
        }
        images.insert(
            platform,
            ImageRequest {
                roots: rs,
                closure,
                run,
                rootfs,
                base: base_image,
            },
        );
    }
    if let Some(user) = args.user.as_deref() {
        warn_unknown_user(user, &images, &args.store_root);
    }
    // The flags' rules, then each spec's (the same spec of several
    // platforms once).
    let mut spec_rules = Vec::new();
    let mut seen: Vec<&Vec<crate::spec::SpecPerm>> = Vec::new();
    for spec in specs.values() {
        if !seen.contains(&&spec.perms) {
            seen.push(&spec.perms);
            spec_rules.extend(spec.perm_rules().map_err(|e| usage(e.to_string()))?);
        }
    }
    let perms = perms(args, spec_rules, &images)?;
    Ok(Resolved {
        base,
        perms,
        plan: PlanRequest {
            images,
            max_layers,
            layering,
        },
        tag,
        created,
        annotations,
    })
}

/// The `--chmod` and `--chown` rules, in the order given (chmod rules
/// first, then chown: they set different things). Each must match some
/// path of some image: the store paths' trees are listed (names only) to
/// check.
fn perms(
    args: &Args,
    spec_rules: Vec<crate::rootfs::PermRule>,
    images: &BTreeMap<Platform, ImageRequest>,
) -> anyhow::Result<Perms> {
    let perms = Perms {
        rules: args
            .chmod
            .iter()
            .chain(&args.chown)
            .cloned()
            .chain(spec_rules)
            .collect(),
    };
    if perms.is_empty() {
        return Ok(perms);
    }
    let mut matched = vec![false; perms.rules.len()];
    let mut note = |path: &str| {
        for (i, rule) in perms.rules.iter().enumerate() {
            matched[i] = matched[i] || rule.matches(path);
        }
    };
    let mut stores = BTreeSet::new();
    let mut walked = BTreeSet::new();
    for image in images.values() {
        for path in image.rootfs.entries.keys() {
            note(path);
        }
        // A store path several platforms share is walked once.
        for path in image.closure.paths.keys().filter(|p| walked.insert(*p)) {
            stores.insert(path.store_dir().to_owned());
            let disk = args.store_root.join(path.as_str().trim_start_matches('/'));
            let mut pending = vec![(disk, path.as_str().to_owned())];
            while let Some((disk, name)) = pending.pop() {
                note(&name);
                let is_dir = std::fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    continue;
                }
                let entries = std::fs::read_dir(&disk)
                    .with_context(|| format!("reading {}", disk.display()))?;
                for e in entries {
                    let e = e.with_context(|| format!("reading {}", disk.display()))?;
                    let child = format!("{name}/{}", e.file_name().to_string_lossy());
                    pending.push((e.path(), child));
                }
            }
        }
    }
    // The store directory and its parents are entries too (`/nix`, `/nix/store`).
    for store in stores {
        let mut prefix = String::new();
        for part in store.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            note(&prefix);
        }
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        let rule = &perms.rules[i];
        bail!(UsageError(format!(
            "{} '{}': matches no path of the image (patterns match whole absolute paths, such as /nix/store/…-app/bin/helper or /var/lib/app)",
            rule.flag, rule.given
        )));
    }
    Ok(perms)
}

/// Warns when `--user NAME` names a user that some image's /etc/passwd
/// (made by --add-user, or from a --copy-to-root tree) does not define:
/// runtimes refuse to start such an image. Numeric users need no entry.
fn warn_unknown_user(user: &str, images: &BTreeMap<Platform, ImageRequest>, store_root: &Path) {
    use crate::rootfs::Kind;
    let name = user.split(':').next().unwrap_or(user);
    if name.is_empty() || name == "root" || name.bytes().all(|b| b.is_ascii_digit()) {
        return;
    }
    let defines = |image: &ImageRequest| {
        let passwd = match image.rootfs.entries.get("/etc/passwd").map(|e| &e.kind) {
            Some(Kind::File(bytes)) => bytes.clone(),
            Some(Kind::StoreFile { source, .. }) => {
                std::fs::read(store_root.join(source.trim_start_matches('/'))).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        String::from_utf8_lossy(&passwd)
            .lines()
            .any(|l| l.split(':').next() == Some(name))
    };
    if let Some(platform) = images.iter().find(|(_, i)| !defines(i)).map(|(p, _)| p) {
        say!(
            "nixoci: warning: --user {user}: the {platform} image's /etc/passwd has no user {name} (runtimes refuse to start it); add --add-user {name}:UID, or give a numeric --user UID:GID"
        );
    }
}

/// The registration time of `--nix-db`: the store's mtime, as every entry.
const NIX_DB_TIME: i64 = 1;

/// Adds the Nix database of `closure` (`--nix-db`) to the root layer's
/// tree, under `/nix/var/nix`, where no flag may put anything.
fn add_nix_db(
    rootfs: &mut crate::rootfs::RootFs,
    closure: &Closure,
    roots: &[StorePath],
) -> anyhow::Result<()> {
    use crate::layer::nix_db::{self, EntryKind};
    use crate::rootfs::{Entry, Kind};
    let entries = nix_db::root_entries(closure, roots, NIX_DB_TIME)
        .context("writing the Nix database (--nix-db)")?;
    let dir = Entry {
        kind: Kind::Directory,
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    rootfs.entries.insert("/nix".to_owned(), dir);
    for e in entries {
        let kind = match e.kind {
            EntryKind::Directory => Kind::Directory,
            EntryKind::File(bytes) => Kind::File(bytes),
            EntryKind::Symlink(target) => Kind::Symlink(target),
        };
        let entry = Entry {
            kind,
            mode: e.mode,
            uid: 0,
            gid: 0,
        };
        rootfs.entries.insert(format!("/{}", e.path), entry);
    }
    Ok(())
}

/// `KEY=VALUE` flags as a map; a key given twice is an error.
fn key_values(flag: &str, items: &[KeyValue]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for kv in items {
        if map.insert(kv.key.clone(), kv.value.clone()).is_some() {
            bail!(UsageError(format!("{flag} {} given twice", kv.key)));
        }
    }
    Ok(map)
}

/// The run config of one platform: the spec's, with what the flags set
/// replacing it field by field, and `{root}` replaced.
fn run_config(args: &Args, base: RunConfig, root: &StorePath) -> anyhow::Result<RunConfig> {
    let subst = |s: &str| s.replace("{root}", root.as_str());
    let mut run = base;
    if !args.env.is_empty() {
        let mut env: BTreeMap<String, String> = run
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, _)| (k.to_owned(), e.clone())))
            .collect();
        let mut given = BTreeSet::new();
        for kv in &args.env {
            if !given.insert(kv.key.clone()) {
                bail!(UsageError(format!("--env {} given twice", kv.key)));
            }
            env.insert(kv.key.clone(), subst(&kv.to_string()));
        }
        run.env = env.into_values().collect();
    }
    if !args.entrypoint.is_empty() {
        run.entrypoint = Some(args.entrypoint.iter().map(|a| subst(a)).collect());
    }
    if !args.cmd.is_empty() {
        run.cmd = Some(args.cmd.iter().map(|a| subst(a)).collect());
    }
    if let Some(w) = &args.workdir {
        run.working_dir = Some(subst(w));
    }
    if let Some(u) = &args.user {
        run.user = Some(u.clone());
    }
    for p in &args.expose {
        run.exposed_ports.insert(p.as_str().to_owned());
    }
    run.labels.extend(key_values("--label", &args.label)?);
    run.volumes.extend(args.volumes.iter().map(|v| subst(v)));
    if let Some(s) = &args.stop_signal {
        run.stop_signal = Some(s.clone());
    }
    Ok(run)
}

/// A root that is an image spec, read from the store.
fn read_spec(store_root: &Path, root: &StorePath) -> anyhow::Result<Option<ImageSpec>> {
    let file = store_root.join(root.as_str().trim_start_matches('/'));
    match std::fs::symlink_metadata(&file) {
        Ok(meta) if meta.is_file() && meta.len() < 16 << 20 => {}
        _ => return Ok(None),
    }
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    if !spec::is_spec(&bytes) {
        return Ok(None);
    }
    let spec = ImageSpec::parse(&bytes).map_err(|e| usage(format!("{root}: {e}")))?;
    Ok(Some(spec))
}

/// The default cache directory, from XDG_CACHE_HOME or HOME. A HOME that
/// does not exist (Nix builders get /homeless-shelter, and Nix checks that
/// it stays missing) is never used, hence never created.
pub fn default_cache_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| Path::new(h).is_dir());
    cache::default_dir(std::env::var_os("XDG_CACHE_HOME"), home)
}

/// The layer cache directory a build uses, if any.
fn cache_dir(args: &Args) -> Option<PathBuf> {
    if args.no_cache {
        return None;
    }
    args.cache_dir.clone().or_else(default_cache_dir)
}

/// The layer cache to use, opened: `--cache-dir` or the default, if it can
/// be written; otherwise none, said once on stderr.
fn cache(args: &Args) -> Option<Cache> {
    if args.no_cache {
        return None;
    }
    let Some(dir) = cache_dir(args) else {
        say!(
            "nixoci: no layer cache directory (XDG_CACHE_HOME is not set and HOME is not a directory); building without a layer cache"
        );
        return None;
    };
    match Cache::open(&dir) {
        Ok(cache) => Some(cache),
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            say!("nixoci: {e}{cause}; building without a layer cache");
            None
        }
    }
}

/// `--reserve-layers`, `--min-layer-size`, `--layer` and `--previous`.
fn layering(args: &Args, store_dir: &StoreDir) -> anyhow::Result<Layering> {
    let mut pins = Vec::new();
    for group in &args.layer {
        let paths = group
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                store_dir
                    .parse(p)
                    .map_err(|e| usage(format!("--layer '{group}': {e}")))
            })
            .collect::<anyhow::Result<Vec<StorePath>>>()?;
        if paths.is_empty() {
            bail!(UsageError(format!("--layer '{group}': no store path")));
        }
        pins.push(paths);
    }
    let previous = match &args.previous {
        None => None,
        Some(arg) => read_previous(PreviousRequest {
            arg,
            optional: args.previous_optional,
            creds: args.registry.creds.as_deref(),
            options: args.registry.client_options(),
            note: Arc::new(|msg| say!("nixoci: {msg}")),
        })
        .classify()?,
    };
    Ok(Layering {
        reserve_layers: args.reserve_layers,
        min_layer_size: args.min_layer_size.0,
        pins,
        previous,
    })
}

/// The tag the command line gives: `--tag`, or the TAG of `-o DIR:TAG`
/// (checked when parsed); both must agree.
fn tag_flag(args: &Args) -> anyhow::Result<Option<String>> {
    if let Some(tag) = &args.tag {
        check_tag("--tag", tag)?;
    }
    let output_tag = args.output.as_ref().and_then(|o| o.tag.clone());
    match (&args.tag, output_tag) {
        (Some(flag), Some(out)) if *flag != out => Err(usage(format!(
            "--tag '{flag}' and -o {}: two different tags; give the tag once",
            args.output
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        ))),
        (Some(flag), _) => Ok(Some(flag.clone())),
        (None, out) => Ok(out),
    }
}

fn check_tag(what: &str, tag: &str) -> anyhow::Result<()> {
    if !valid_ref_name(tag) {
        bail!(UsageError(format!(
            "{what} '{tag}': not a valid reference name (letters and digits joined by . _ - : @ +, components separated by /)"
        )));
    }
    Ok(())
}

/// Fills `args` from the structured attributes of an ociLayout derivation.
pub fn apply_structured_attrs(args: &mut Args) -> anyhow::Result<()> {
    let (file, attrs) = super::write_spec::read_structured_attrs()?;
    let bad = |what: &str| usage(format!("{}: {what}", file.display()));
    let images = attrs["images"]
        .as_object()
        .ok_or_else(|| bad("no `images` attribute set"))?;
    for (platform, path) in images {
        let path = path
            .as_str()
            .ok_or_else(|| bad(&format!("images.{platform} is not a store path")))?;
        args.platforms.push(format!("{platform}={path}"));
    }
    if let Some(tag) = attrs["tag"].as_str() {
        args.tag.get_or_insert_with(|| tag.to_owned());
    }
    if let Some(n) = attrs["maxLayers"].as_u64() {
        args.max_layers
            .get_or_insert(usize::try_from(n).map_err(|_| bad("maxLayers is too large"))?);
    }
    if let (Some(c), None) = (attrs["created"].as_str(), &args.created) {
        let created = c
            .parse::<Created>()
            .map_err(|e| bad(&format!("created '{c}': {e}")))?;
        args.created = Some(created);
    }
    if let Some(map) = attrs["annotations"].as_object() {
        for (k, v) in map {
            let v = v
                .as_str()
                .ok_or_else(|| bad(&format!("annotations.{k} is not a string")))?;
            args.annotation.push(
                format!("{k}={v}")
                    .parse::<KeyValue>()
                    .map_err(|e| bad(&format!("annotations.{k}: {e}")))?,
            );
        }
    }
    // The build options: ociLayout passes only those given.
    if let Some(c) = attrs.get("compression") {
        let c = c
            .as_str()
            .ok_or_else(|| bad("compression is not a string"))?;
        args.compression = c.to_owned();
    }
    if let Some(level) = attrs.get("level") {
        let level = level
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| bad("level is not an integer"))?;
        args.level = Some(level);
    }
    if let Some(layers) = attrs.get("layers") {
        let groups = layers
            .as_array()
            .ok_or_else(|| bad("layers is not a list of lists of store paths"))?;
        for group in groups {
            let paths = group
                .as_array()
                .and_then(|g| g.iter().map(|p| p.as_str()).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad("layers is not a list of lists of store paths"))?;
            args.layer.push(paths.join(","));
        }
    }
    if let Some(size) = attrs.get("minLayerSize") {
        let text = match size {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            _ => {
                return Err(bad(
                    "minLayerSize is not a number of bytes or a size such as 64K",
                ))
            }
        };
        args.min_layer_size = text
            .parse()
            .map_err(|e| bad(&format!("minLayerSize '{text}': {e}")))?;
    }
    if let Some(n) = attrs.get("reserveLayers") {
        let n = n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad("reserveLayers is not a non-negative integer"))?;
        args.reserve_layers = n;
    }
    if let Some(check) = attrs.get("archCheck") {
        let check = check
            .as_bool()
            .ok_or_else(|| bad("archCheck is not a boolean"))?;
        args.no_arch_check |= !check;
    }
    let out = attrs["outputs"]["out"]
        .as_str()
        .ok_or_else(|| bad("no outputs.out"))?;
    args.output = Some(LayoutArg {
        dir: PathBuf::from(out),
        tag: None,
    });
    args.closure_json = Some(file);
    Ok(())
}
