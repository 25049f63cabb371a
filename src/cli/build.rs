//! `nixoci build`: installables per platform to one multi-platform OCI
//! image layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use super::{usage, UsageError};
use crate::closure::Closure;
use crate::error::error_chain;
use crate::eval::{self, EvalError, Nix};
use crate::installable::Installable;
use crate::layer::{cache, Cache, CacheStatus, Compression, LayerOptions};
use crate::oci::image::{valid_ref_name, RunConfig};
use crate::oci::layout::{check_output, LayoutArg};
use crate::oci::{previous, Digest};
use crate::pipeline::{self, BuildRequest, ImageRequest};
use crate::plan::{Layering, Previous, DEFAULT_MAX_LAYERS};
use crate::platform::Platform;
use crate::publish::auth::{self, AuthEnv};
use crate::publish::client::{Client, ClientOptions, TimeBounds};
use crate::publish::fetch;
use crate::publish::reference::{names_registry, valid_registry, Reference};
use crate::spec::{self, ImageSpec};
use crate::store_path::{StoreDir, StorePath};

/// Build one multi-platform OCI image layout from Nix flake outputs or
/// store paths.
///
/// Each platform's image is the closure of one installable: a flake output
/// (.#app, path:./x#app, github:owner/repo#app) or a store path. With
/// --system, INSTALLABLE resolves per system as `nix build` would
/// (packages.SYSTEM.app, then legacyPackages.SYSTEM.app), and all platforms
/// are built by ONE `nix build` call, so Nix schedules them together and
/// sends foreign systems to your remote builders. Store paths shared by
/// several platforms are stored once. The layout's index.json gets an entry
/// tagged --tag pointing at an image index that lists every platform; other
/// tags already in the layout are kept.
///
/// An installable that builds an image spec (the Nix library's `image`)
/// gives its roots, config, tag and layer budget; flags override them.
///
/// In --entrypoint, --cmd, --env and --workdir values, `{root}` stands for
/// the platform's root store path, so one command line serves every
/// platform.
///
/// Examples:
///
///   nixoci build .#app --system x86_64-linux --system aarch64-linux \
///       --entrypoint '{root}/bin/app' --tag example.org/app:1.0 -o app.oci
///
///   nixoci build --platform linux/amd64=.#app \
///       --platform linux/arm64=.#app-aarch64-cross -o app.oci
///
///   nixoci build --platform linux/amd64=/nix/store/…-hello \
///       --platform linux/arm/v7=/nix/store/…-hello-armv7 -o hello.oci
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A flake output or store path to image for every --system (default:
    /// the current system).
    #[arg(value_name = "INSTALLABLE")]
    pub installable: Option<String>,

    /// A Nix system to build INSTALLABLE for (x86_64-linux,
    /// aarch64-linux, armv7l-linux, …). Repeatable.
    #[arg(long = "system", value_name = "SYSTEM")]
    pub systems: Vec<String>,

    /// PLATFORM=INSTALLABLE: PLATFORM's image is INSTALLABLE's closure, for
    /// cross-compiled or explicitly chosen outputs. PLATFORM is
    /// os/arch[/variant] (linux/amd64, linux/arm64, linux/arm/v7) or a Nix
    /// system (aarch64-linux). Repeatable; each platform once.
    #[arg(long = "platform", value_name = "PLATFORM=INSTALLABLE")]
    pub platforms: Vec<String>,

    /// The layout directory to create or add to.
    #[arg(
        long,
        short = 'o',
        value_name = "DIR",
        required_unless_present = "structured_attrs"
    )]
    pub output: Option<PathBuf>,

    /// The tag to point at the image, stored as the
    /// org.opencontainers.image.ref.name of its index.json entry (read it
    /// back as oci:DIR:TAG). Default: the image spec's tag, else latest.
    #[arg(long)]
    pub tag: Option<String>,

    /// One element of the entrypoint's argv. Repeatable, in order.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,

    /// One element of the default command's argv. Repeatable, in order.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,

    /// KEY=VALUE in the image's environment. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Working directory of the entrypoint.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// User (and group) to run as: name, uid, user:group or uid:gid.
    #[arg(long)]
    pub user: Option<String>,

    /// A port to expose: PORT or PORT/tcp, PORT/udp, PORT/sctp. Repeatable.
    #[arg(long, value_name = "PORT[/PROTO]")]
    pub expose: Vec<String>,

    /// KEY=VALUE label in the image config. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,

    /// KEY=VALUE annotation on the image index and manifests. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,

    /// Creation time in the image configs, RFC 3339 (2024-01-01T00:00:00Z).
    /// Default: the image spec's, else SOURCE_DATE_EPOCH, else
    /// 1970-01-01T00:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub created: Option<String>,

    /// Print the build report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Most layers in each platform's image [default: the spec's, else 100].
    #[arg(long, value_name = "N")]
    pub max_layers: Option<usize>,

    /// Layers to leave free for images built on top of this one: each
    /// image gets at most --max-layers minus N.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub reserve_layers: usize,

    /// Smallest layer worth a place in the budget: a planned layer with
    /// fewer NAR bytes is merged with another of the same platforms. Bytes,
    /// or with a K, M or G suffix (powers of 1024); 0 turns it off.
    #[arg(long, default_value = "0", value_name = "SIZE")]
    pub min_layer_size: String,

    /// Store paths to keep together in one layer of their own, separated
    /// by commas. Repeatable; groups that share a path are joined.
    #[arg(long = "layer", value_name = "PATH[,PATH…]")]
    pub layer: Vec<String>,

    /// A previous build of this image: an OCI layout (and its tag if it
    /// holds several), or an image in a registry. Its layers whose store
    /// paths are all still in the closure are kept as they were, with the
    /// same digests, and new paths go into new layers on top: clients pull
    /// only what changed.
    ///
    /// docker://REGISTRY/NAME[:TAG|@DIGEST] is a registry image (the tag
    /// defaults to latest) and oci:DIR[:TAG] a layout. Without a prefix,
    /// IMAGE is a layout when such a file or directory exists (IMAGE, or
    /// its part before a colon), else a registry image when its first
    /// component is a host (it has a dot or a colon, or is localhost:
    /// registry.example.org/app:1.0, localhost:5000/app), else a layout.
    /// A registry is read with --creds, --insecure, --ca-file, --timeout
    /// and the credentials `nixoci push` finds.
    #[arg(long, value_name = "IMAGE")]
    pub previous: Option<String>,

    /// When the --previous image does not exist (no such layout, or no
    /// such tag in it or in the registry), say so on stderr and plan from
    /// scratch instead of failing: a pipeline's first build can then pass
    /// the same --previous as every later one. Any other problem (network,
    /// credentials, a broken image) still fails.
    #[arg(long, requires = "previous")]
    pub previous_optional: bool,

    /// USER:PASSWORD for the registry of a --previous image (visible to
    /// other local users in the process list; prefer NIXOCI_REGISTRY_USER
    /// and NIXOCI_REGISTRY_PASSWORD or an auth file, as for `nixoci push`).
    #[arg(long, value_name = "USER:PASSWORD", requires = "previous")]
    pub creds: Option<String>,

    /// Allow plain HTTP and unverified TLS to the registry of a --previous
    /// image that is not on this machine.
    #[arg(long, requires = "previous")]
    pub insecure: bool,

    /// Trust the certificates in this PEM file instead of the system's,
    /// for the registry of a --previous image.
    #[arg(long, value_name = "FILE", requires = "previous")]
    pub ca_file: Option<PathBuf>,

    /// Time limit of each request to the registry of a --previous image:
    /// connecting, a stall, and an answer each get DURATION (30s, 2m,
    /// 500ms, or seconds), a document also its size at 100 KiB/s.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = super::parse_timeout, requires = "previous")]
    pub timeout: std::time::Duration,

    /// Layers built at once [default: all cores].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,

    /// How layers are compressed: gzip (every runtime reads it), zstd
    /// (smaller and much faster; containerd 1.5+, Docker 23+, podman, CRI-O;
    /// see docs/performance.md) or none (plain tar).
    #[arg(
        long,
        default_value = "gzip",
        value_parser = Compression::NAMES,
        value_name = "gzip|zstd|none"
    )]
    pub compression: String,

    /// Compression level: gzip 0 (stored) to 9 [default: 6], zstd 1 to 19
    /// [default: 3]; none takes no level.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub level: Option<i32>,

    /// The layer cache: layers built before (same store paths, same
    /// compression) are reused from here instead of being built again
    /// [default: $XDG_CACHE_HOME/nixoci, else ~/.cache/nixoci]. When it
    /// cannot be written (as in a Nix build sandbox), the build goes on
    /// without it.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Build every layer: neither read nor write the layer cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,

    /// Read the closure from FILE instead of asking Nix: the JSON list that
    /// exportReferencesGraph gives a derivation with __structuredAttrs (or
    /// its whole .attrs.json), or `nix path-info --json --recursive` output.
    /// Installables must then be store paths.
    #[arg(long, value_name = "FILE")]
    pub closure_json: Option<PathBuf>,

    /// Pass `--option NAME VALUE` to every nix call. Repeatable.
    #[arg(long = "option", num_args = 2, value_names = ["NAME", "VALUE"])]
    pub options: Vec<String>,

    /// Run as the builder of the Nix library's ociLayout: read images, tag
    /// and the closure from the derivation's structured attributes
    /// (NIX_ATTRS_JSON_FILE or .attrs.json), write the layout to its `out`
    /// and nix-support/hydra-build-products. Calls no nix.
    #[arg(long)]
    pub structured_attrs: bool,

    /// The Nix store directory.
    #[arg(
        long,
        default_value = "/nix/store",
        env = "NIX_STORE_DIR",
        value_name = "DIR"
    )]
    pub store_dir: String,

    /// Read store paths from under DIR instead of / (a chroot store).
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub store_root: PathBuf,
}

/// Threads to use when not told: every core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Splits `KEY=VALUE`; the key must not be empty.
fn key_value<'a>(flag: &str, s: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(usage(format!("{flag} '{s}': expected KEY=VALUE"))),
    }
}

fn key_values(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for item in items {
        let (k, v) = key_value(flag, item)?;
        if map.insert(k.to_owned(), v.to_owned()).is_some() {
            bail!(UsageError(format!("{flag} {k} given twice")));
        }
    }
    Ok(map)
}

/// `PORT[/PROTO]` to `PORT/PROTO`.
fn exposed_port(s: &str) -> anyhow::Result<String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    if !port_ok || !["tcp", "udp", "sctp"].contains(&proto) {
        bail!(UsageError(format!(
            "--expose '{s}': expected PORT[/tcp|udp|sctp] with PORT from 1 to 65535"
        )));
    }
    Ok(format!("{port}/{proto}"))
}

/// Checks an RFC 3339 date-time such as `2024-01-01T00:00:00Z`.
fn valid_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !(b[10] == b'T' || b[10] == b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z'] | [b'z'] => true,
        [sign, h1, h2, b':', m1, m2] => {
            (*sign == b'+' || *sign == b'-') && [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
        }
        _ => false,
    }
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_epoch(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The creation time: `--created`, else SOURCE_DATE_EPOCH, else the epoch.
fn created(flag: Option<&str>, source_date_epoch: Option<&str>) -> anyhow::Result<String> {
    if let Some(c) = flag {
        if !valid_rfc3339(c) {
            bail!(UsageError(format!(
                "--created '{c}': expected an RFC 3339 time such as 2024-01-01T00:00:00Z"
            )));
        }
        return Ok(c.to_owned());
    }
    match source_date_epoch {
        None | Some("") => Ok(format_epoch(0)),
        Some(s) => match s.parse::<i64>() {
            Ok(secs) if (0..=253_402_300_799).contains(&secs) => Ok(format_epoch(secs)),
            _ => bail!(UsageError(format!(
                "SOURCE_DATE_EPOCH '{s}': expected seconds since 1970 as a non-negative integer"
            ))),
        },
    }
}

/// The run config of one platform: the spec's, with what the flags set
/// replacing it field by field, and `{root}` replaced.
fn run_config(args: &Args, base: RunConfig, root: &StorePath) -> anyhow::Result<RunConfig> {
    let subst = |s: &String| s.replace("{root}", root.as_str());
    let mut run = base;
    if !args.env.is_empty() {
        let mut env: BTreeMap<String, String> = run
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, _)| (k.to_owned(), e.clone())))
            .collect();
        let mut given = BTreeSet::new();
        for e in &args.env {
            let (k, _) = key_value("--env", e)?;
            if !given.insert(k.to_owned()) {
                bail!(UsageError(format!("--env {k} given twice")));
            }
            env.insert(k.to_owned(), subst(e));
        }
        run.env = env.into_values().collect();
    }
    if !args.entrypoint.is_empty() {
        run.entrypoint = Some(args.entrypoint.iter().map(subst).collect());
    }
    if !args.cmd.is_empty() {
        run.cmd = Some(args.cmd.iter().map(subst).collect());
    }
    if let Some(w) = &args.workdir {
        run.working_dir = Some(subst(w));
    }
    if let Some(u) = &args.user {
        run.user = Some(u.clone());
    }
    for p in &args.expose {
        run.exposed_ports.insert(exposed_port(p)?);
    }
    run.labels.extend(key_values("--label", &args.label)?);
    Ok(run)
}

/// What one platform's image is made of, and the Nix system that short
/// flake attributes resolve for (`None`: the current system).
#[derive(Debug, Clone)]
struct Target {
    installable: Installable,
    system: Option<String>,
}

/// What to image for each platform, from INSTALLABLE + --system and
/// --platform. Platforms must differ after normalisation.
fn targets(
    args: &Args,
    store_dir: &StoreDir,
    nix: &Nix,
) -> anyhow::Result<BTreeMap<Platform, Target>> {
    let mut out: BTreeMap<Platform, Target> = BTreeMap::new();
    let mut given: BTreeMap<Platform, String> = BTreeMap::new();
    let mut add = |platform: Platform, inst: Target, spec: String| -> anyhow::Result<()> {
        if let Some(first) = given.get(&platform) {
            bail!(UsageError(format!(
                "{spec}: {platform} is already given by {first}"
            )));
        }
        given.insert(platform.clone(), spec);
        out.insert(platform, inst);
        Ok(())
    };
    if let Some(text) = &args.installable {
        let inst = Installable::parse(text, store_dir).context(format!("'{text}'"))?;
        let systems = if args.systems.is_empty() {
            if args.closure_json.is_some() || !args.platforms.is_empty() {
                bail!(UsageError(format!(
                    "'{text}': say which platforms it is for with --system"
                )));
            }
            vec![eval::current_system(nix).context("asking nix for the current system")?]
        } else {
            args.systems.clone()
        };
        for system in systems {
            let platform = Platform::from_nix_system(&system).ok_or_else(|| {
                usage(format!(
                    "--system {system}: unknown Nix system (known: x86_64-linux, aarch64-linux, armv7l-linux, armv6l-linux, i686-linux, riscv64-linux, powerpc64le-linux, s390x-linux)"
                ))
            })?;
            let target = Target {
                installable: inst.clone(),
                system: Some(system.clone()),
            };
            add(platform, target, format!("--system {system}"))?;
        }
    } else if !args.systems.is_empty() {
        bail!(UsageError("--system needs an INSTALLABLE to build".into()));
    }
    for spec in &args.platforms {
        let (p, text) = spec.split_once('=').ok_or_else(|| {
            usage(format!(
                "--platform '{spec}': expected PLATFORM=INSTALLABLE, such as linux/arm64=.#hello or linux/arm64=/nix/store/…-hello"
            ))
        })?;
        let platform: Platform = p.parse().with_context(|| format!("--platform '{spec}'"))?;
        let inst =
            Installable::parse(text, store_dir).with_context(|| format!("--platform '{spec}'"))?;
        // Short attributes resolve for the current system, as `nix build`
        // resolves them: that is where outputs cross-compiled on this host
        // live (packages.x86_64-linux.app-aarch64-cross). Another system's
        // output is named in full (.#packages.aarch64-linux.app).
        let target = Target {
            installable: inst,
            system: None,
        };
        add(platform.clone(), target, format!("--platform '{spec}'"))?;
    }
    if out.is_empty() {
        bail!(UsageError(
            "nothing to build: give an INSTALLABLE (with --system) or --platform PLATFORM=INSTALLABLE".into()
        ));
    }
    Ok(out)
}

/// Flake outputs to `nix build` arguments: short attributes resolve per
/// system as `nix build` would; a missing one lists what the flake has.
fn resolve_attrs(
    nix: &Nix,
    targets: &BTreeMap<Platform, Target>,
) -> anyhow::Result<Vec<(Platform, String)>> {
    let mut packages: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut host: Option<String> = None;
    let mut out = Vec::new();
    for (platform, target) in targets {
        let Installable::Flake { flake_ref, attr } = &target.installable else {
            continue;
        };
        if attr.contains('.') {
            out.push((platform.clone(), format!("{flake_ref}#{attr}")));
            continue;
        }
        let system = match &target.system {
            Some(s) => s.clone(),
            None => {
                if host.is_none() {
                    host = Some(
                        eval::current_system(nix).context("asking nix for the current system")?,
                    );
                }
                host.clone().unwrap_or_default()
            }
        };
        if !packages.contains_key(flake_ref) {
            let p = eval::flake_packages(nix, flake_ref)
                .with_context(|| format!("evaluating {flake_ref}"))?;
            packages.insert(flake_ref.clone(), p);
        }
        let candidates = Installable::attr_paths(attr, &system);
        let chosen = if packages[flake_ref]
            .get(system.as_str())
            .is_some_and(|a| a.iter().any(|x| x == attr))
        {
            Some(candidates[0].clone())
        } else if eval::flake_has_attr(nix, flake_ref, &candidates[1])
            .with_context(|| format!("evaluating {flake_ref}"))?
        {
            Some(candidates[1].clone())
        } else {
            None
        };
        let have = &packages[flake_ref];
        let Some(chosen) = chosen else {
            let list: Vec<String> = have
                .iter()
                .map(|(s, attrs)| {
                    format!(
                        "{s}: {}",
                        if attrs.is_empty() {
                            "none".to_owned()
                        } else {
                            attrs.join(" ")
                        }
                    )
                })
                .collect();
            let available = if list.is_empty() {
                "the flake has no packages".to_owned()
            } else {
                format!("the flake's packages are {}", list.join("; "))
            };
            return Err(EvalError::MissingAttr {
                installable: format!("{flake_ref}#{attr}"),
                detail: format!(
                    "for {platform} (looked for {}); {available}",
                    candidates.join(", ")
                ),
            }
            .into());
        };
        out.push((platform.clone(), format!("{flake_ref}#{chosen}")));
    }
    Ok(out)
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

/// Validates the arguments, builds what must be built and reads the
/// closures: everything that can be wrong with the input fails here,
/// before anything is written.
pub fn request(args: &Args) -> anyhow::Result<BuildRequest> {
    resolve(args, true)
}

/// The request of `nixoci plan`: as [`request`], without an output
/// directory or a layer cache.
pub fn plan_request(args: &Args) -> anyhow::Result<BuildRequest> {
    resolve(args, false)
}

fn resolve(args: &Args, with_output: bool) -> anyhow::Result<BuildRequest> {
    let store_dir =
        StoreDir::new(&args.store_dir).map_err(|e| usage(format!("--store-dir: {e}")))?;
    let nix = Nix {
        options: args
            .options
            .chunks(2)
            .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
            .collect(),
        ..Nix::default()
    };
    if let Some(tag) = &args.tag {
        check_tag("--tag", tag)?;
    }
    let compression =
        Compression::new(&args.compression, args.level).map_err(|e| match args.level {
            Some(level) => usage(format!("--level {level}: {e}")),
            None => usage(format!("--compression {}: {e}", args.compression)),
        })?;
    if args.jobs == Some(0) {
        bail!(UsageError("--jobs 0: expected at least 1".into()));
    }
    if args.max_layers == Some(0) {
        bail!(UsageError("--max-layers 0: expected at least 1".into()));
    }
    let created_flag = created(
        args.created.as_deref(),
        std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
    )?;
    let mut annotations = key_values("--annotation", &args.annotation)?;
    // Flag syntax, before anything runs.
    for e in &args.env {
        key_value("--env", e)?;
    }
    key_values("--label", &args.label)?;
    for p in &args.expose {
        exposed_port(p)?;
    }
    // The config flags, before Nix builds anything ({root} as a stand-in).
    if let Ok(stand_in) =
        StorePath::from_absolute(&format!("{}/{}-root", store_dir.as_str(), "0".repeat(32)))
    {
        run_config(args, RunConfig::default(), &stand_in)?
            .check()
            .map_err(|e| usage(e.to_string()))?;
    }
    let layering = layering(args, &store_dir)?;
    let output = if with_output {
        let output = args
            .output
            .clone()
            .ok_or_else(|| usage("--output is required"))?;
        let stores = super::store_dirs(&args.store_dir, &args.store_root);
        // The ociLayout builder writes its own $out, a store path.
        if !args.structured_attrs {
            super::refuse_in_store("--output", &output, &stores)?;
        }
        if let Some(dir) = cache_dir(args) {
            super::refuse_in_store("--cache-dir", &dir, &stores)?;
        }
        check_output(&output)?;
        output
    } else {
        PathBuf::new()
    };
    if !args.store_root.is_dir() {
        bail!(UsageError(format!(
            "--store-root {}: not a directory",
            args.store_root.display()
        )));
    }
    let targets = targets(args, &store_dir, &nix)?;

    // Build the flake outputs with one nix call.
    let mut roots: BTreeMap<Platform, StorePath> = BTreeMap::new();
    for (platform, target) in &targets {
        if let Installable::StorePath(p) = &target.installable {
            roots.insert(platform.clone(), p.clone());
        }
    }
    if roots.len() < targets.len() {
        if args.closure_json.is_some() {
            bail!(UsageError(
                "--closure-json needs store paths, not flake outputs".into()
            ));
        }
        let flake_targets = resolve_attrs(&nix, &targets)?;
        let labelled: Vec<(String, String)> = flake_targets
            .iter()
            .map(|(p, t)| (p.to_string(), t.clone()))
            .collect();
        let built = eval::build(&nix, &store_dir, &labelled)?;
        for ((platform, _), path) in flake_targets.into_iter().zip(built) {
            roots.insert(platform, path);
        }
    }

    // Image specs give roots and config.
    let mut specs: BTreeMap<Platform, ImageSpec> = BTreeMap::new();
    for (platform, root) in &roots {
        if let Some(spec) = read_spec(&args.store_root, root)? {
            specs.insert(platform.clone(), spec);
        }
    }
    let tag = match &args.tag {
        Some(t) => t.clone(),
        None => {
            let tags: BTreeSet<&String> = specs.values().filter_map(|s| s.tag.as_ref()).collect();
            match tags.len() {
                0 => "latest".to_owned(),
                1 => {
                    let t = tags.into_iter().next().cloned().unwrap_or_default();
                    check_tag("the image spec's tag", &t)?;
                    t
                }
                _ => bail!(UsageError(format!(
                    "the image specs name different tags ({}); choose one with --tag",
                    tags.into_iter().cloned().collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    };
    let max_layers = args
        .max_layers
        .or_else(|| specs.values().filter_map(|s| s.max_layers).min())
        .unwrap_or(DEFAULT_MAX_LAYERS);
    if max_layers == 0 {
        bail!(UsageError("the image spec's maxLayers is 0".into()));
    }
    // --created, then the specs' own time, then SOURCE_DATE_EPOCH, then the
    // epoch: what the image says beats what the environment says, so the
    // CLI and the ociLayout derivation agree.
    let from_specs: BTreeSet<&String> = specs.values().filter_map(|s| s.created.as_ref()).collect();
    if from_specs.len() > 1 {
        bail!(UsageError(format!(
            "the image specs name different creation times ({}); choose one with --created",
            from_specs
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let created = match (&args.created, from_specs.into_iter().next()) {
        (None, Some(c)) => created(Some(c), None).context("the image spec's created")?,
        _ => created_flag,
    };
    for spec in specs.values() {
        for (k, v) in &spec.annotations {
            annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    crate::oci::image::check_key_values("--annotation", &annotations)
        .map_err(|e| usage(e.to_string()))?;
    let image_roots: BTreeMap<Platform, Vec<StorePath>> = roots
        .iter()
        .map(|(p, r)| {
            let rs = specs
                .get(p)
                .map(|s| s.roots.clone())
                .unwrap_or_else(|| vec![r.clone()]);
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
            Closure::from_references_graph_json(&store_dir, &bytes)
                .or_else(|_| Closure::from_path_info_json(&store_dir, &bytes))
                .map_err(|e| usage(format!("--closure-json {}: {e}", file.display())))?
        }
        None => eval::path_info_closure(&nix, &store_dir, &all_roots)
            .context("reading closures from the Nix store")?,
    };
    let mut images = BTreeMap::new();
    let mut checked = BTreeSet::new();
    for (platform, rs) in image_roots {
        let closure = graph
            .subclosure(&rs)
            .map_err(|e| usage(format!("closure of {} for {platform}: {e}", rs[0])))?;
        // Every path a layer will read, before anything is written (a plan
        // reads none: it needs only the roots).
        let read = if with_output { closure.paths.len() } else { 0 };
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
        let base = specs
            .get(&platform)
            .map(ImageSpec::run_config)
            .unwrap_or_default();
        let run = run_config(args, base, &rs[0])?;
        run.check()
            .map_err(|e| usage(format!("the image config of {platform}: {e}")))?;
        images.insert(
            platform,
            ImageRequest {
                roots: rs,
                closure,
                run,
            },
        );
    }
    Ok(BuildRequest {
        images,
        tag,
        output,
        created,
        annotations,
        max_layers,
        layering,
        jobs: args.jobs.unwrap_or_else(default_jobs),
        layer_options: LayerOptions {
            store_root: args.store_root.clone(),
            compression,
            cache: if with_output { cache(args) } else { None },
        },
    })
}

/// The default cache directory, from XDG_CACHE_HOME or HOME. A HOME that
/// does not exist (Nix builders get /homeless-shelter, and Nix checks that
/// it stays missing) is never used, hence never created.
pub(super) fn default_cache_dir() -> Option<PathBuf> {
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
        eprintln!(
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
            eprintln!("nixoci: {e}{cause}; building without a layer cache");
            None
        }
    }
}

/// `--reserve-layers`, `--min-layer-size`, `--layer` and `--previous`.
fn layering(args: &Args, store_dir: &StoreDir) -> anyhow::Result<Layering> {
    let min_layer_size = parse_size(&args.min_layer_size).ok_or_else(|| {
        usage(format!(
            "--min-layer-size '{}': expected bytes, or a number with K, M or G",
            args.min_layer_size
        ))
    })?;
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
    let previous = read_previous(args)?;
    Ok(Layering {
        reserve_layers: args.reserve_layers,
        min_layer_size,
        pins,
        previous,
    })
}

/// Where `--previous` reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PreviousSource {
    /// `LAYOUT[:TAG]`.
    Layout(String),
    /// `REGISTRY/NAME[:TAG|@DIGEST]`: a tag (`latest` when none is given)
    /// or a digest.
    Registry(Reference, Option<Digest>),
}

/// Reads `--previous`: a layout that exists, as always; else
/// `docker://…` a registry image and `oci:…` a layout; else a layout when
/// such a path exists, a registry image when the first component is a
/// host, a layout otherwise.
fn previous_source(arg: &str) -> anyhow::Result<PreviousSource> {
    let registry = |s: &str| {
        let (mut reference, digest) =
            Reference::parse_with_digest(s).map_err(|e| usage(format!("--previous {arg}: {e}")))?;
        if digest.is_none() && reference.tag.is_none() {
            reference.tag = Some("latest".to_owned());
        }
        Ok(PreviousSource::Registry(reference, digest))
    };
    if LayoutArg::parse(arg).is_ok() {
        return Ok(PreviousSource::Layout(arg.to_owned()));
    }
    if arg.starts_with("docker://") {
        return registry(arg);
    }
    if let Some(layout) = arg.strip_prefix("oci:") {
        return Ok(PreviousSource::Layout(layout.to_owned()));
    }
    let host = arg.split_once('/').map(|(first, _)| first);
    if previous::nothing_at(arg) && host.is_some_and(|h| names_registry(h) && valid_registry(h)) {
        return registry(arg);
    }
    Ok(PreviousSource::Layout(arg.to_owned()))
}

/// The layers of the `--previous` image, if any; `None` also when
/// `--previous-optional` forgives a missing one.
fn read_previous(args: &Args) -> anyhow::Result<Option<Previous>> {
    let Some(arg) = &args.previous else {
        return Ok(None);
    };
    let from_scratch = |why: &dyn std::fmt::Display| {
        eprintln!("nixoci: note: --previous {arg}: {why}; planning from scratch");
        Ok(None)
    };
    let unknown_platforms = |unknown: &[String]| {
        for platform in unknown {
            eprintln!(
                "nixoci: note: --previous {arg}: its {platform} layers name no store paths; planning {platform} from scratch"
            );
        }
    };
    let (reference, digest) = match previous_source(arg)? {
        PreviousSource::Layout(layout) => {
            return match previous::read(&layout) {
                Ok(image) => {
                    unknown_platforms(&image.unknown);
                    Ok(Some(image.previous.into()))
                }
                Err(e) if args.previous_optional && e.is_missing() => from_scratch(&e),
                Err(e) => Err(usage(format!("--previous {arg}: {}", error_chain(&e)))),
            };
        }
        PreviousSource::Registry(reference, digest) => (reference, digest),
    };
    let image = match &digest {
        Some(d) => format!("{reference}@{d}"),
        None => reference.to_string(),
    };
    let found = auth::lookup(
        &AuthEnv::from_process(),
        args.creds.as_deref(),
        &reference.registry,
        &reference.repository,
    )
    .map_err(|e| usage(format!("--previous {arg}: {}", error_chain(&e))))?;
    let options = ClientOptions {
        insecure: args.insecure,
        ca_file: args.ca_file.clone(),
        bounds: TimeBounds {
            timeout: args.timeout,
            ..TimeBounds::default()
        },
        ..ClientOptions::default()
    };
    let client = Client::connect(
        &reference,
        found.credentials,
        found.helper_hint,
        vec![format!("repository:{}:pull", reference.repository)],
        options,
        Box::new(|msg| eprintln!("nixoci: {msg}")),
    )
    .with_context(|| format!("--previous {arg}: connecting to {}", reference.registry))?;
    let wanted = match &digest {
        Some(d) => d.to_string(),
        None => reference.tag.clone().unwrap_or_default(),
    };
    match fetch::read_layers(&client, &wanted, digest.as_ref(), &image) {
        Ok(remote) => {
            unknown_platforms(&remote.layers.unknown);
            Ok(Some(remote.layers.previous.into()))
        }
        Err(e) if e.is_missing() && args.previous_optional => from_scratch(&e),
        Err(e) if e.is_missing() => Err(usage(format!(
            "--previous {arg}: {e} (with --previous-optional, a missing image is planned from scratch)"
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("--previous {arg}"))),
    }
}

/// `4096`, `64K`, `1M`, `2GiB`: bytes, with powers of 1024.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn check_tag(what: &str, tag: &str) -> anyhow::Result<()> {
    if !valid_ref_name(tag) {
        bail!(UsageError(format!(
            "{what} '{tag}': not a valid reference name (letters and digits joined by . _ - : @ +, components separated by /)"
        )));
    }
    Ok(())
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Fills `args` from the structured attributes of an ociLayout derivation.
pub(super) fn apply_structured_attrs(args: &mut Args) -> anyhow::Result<()> {
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
    if let Some(c) = attrs["created"].as_str() {
        args.created.get_or_insert_with(|| c.to_owned());
    }
    if let Some(map) = attrs["annotations"].as_object() {
        for (k, v) in map {
            let v = v
                .as_str()
                .ok_or_else(|| bad(&format!("annotations.{k} is not a string")))?;
            args.annotation.push(format!("{k}={v}"));
        }
    }
    let out = attrs["outputs"]["out"]
        .as_str()
        .ok_or_else(|| bad("no outputs.out"))?;
    args.output = Some(PathBuf::from(out));
    args.closure_json = Some(file);
    Ok(())
}

/// Names the layout as the build product Hydra shows.
fn write_hydra_products(out: &Path) -> anyhow::Result<()> {
    let dir = out.join("nix-support");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("hydra-build-products");
    std::fs::write(&file, format!("file oci-layout {}\n", out.display()))
        .with_context(|| format!("writing {}", file.display()))
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    if args.structured_attrs {
        apply_structured_attrs(&mut args)?;
    }
    let req = request(&args)?;
    let bar = if super::stderr_is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} layers {pos}/{len} [{bar:30}] {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let written = AtomicU64::new(0);
    let output = req.output.display();
    let events = pipeline::Events {
        plan: &|plan| bar.set_length(plan.layers.len() as u64),
        waiting: &|| {
            bar.suspend(|| eprintln!("nixoci: waiting for another nixoci that is writing {output}"))
        },
        stale: &|count, bytes| {
            bar.suspend(|| {
                eprintln!(
                    "nixoci: removed {count} temporary file{} ({}) that interrupted builds left in {output}",
                    if count == 1 { "" } else { "s" },
                    human_bytes(bytes)
                )
            })
        },
        layer: &|layer| {
            let total = written.fetch_add(layer.size, Ordering::Relaxed) + layer.size;
            bar.set_message(human_bytes(total));
            bar.inc(1);
        },
    };
    let report = pipeline::build(&req, &events)
        .with_context(|| format!("building {}", req.output.display()))?;
    bar.finish_and_clear();
    if args.structured_attrs {
        write_hydra_products(&req.output)?;
    }

    if args.json {
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        super::print_stdout(&bytes)?;
    }
    for l in &report.layers {
        if let Some(problem) = &l.cache_problem {
            eprintln!("nixoci: warning: {problem}");
        }
    }
    let total: u64 = report.layers.iter().map(|l| l.layer.size).sum();
    let count = |status| report.layers.iter().filter(|l| l.cache == status).count();
    let reused = count(CacheStatus::Hit) + count(CacheStatus::Layout);
    eprintln!(
        "wrote {}:{} ({} platform{}, {} layer{} of which {} reused, {}) index {}",
        req.output.display(),
        report.tag,
        report.platforms.len(),
        if report.platforms.len() == 1 { "" } else { "s" },
        report.layers.len(),
        if report.layers.len() == 1 { "" } else { "s" },
        reused,
        human_bytes(total),
        report.index.digest
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_format_as_rfc3339() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(format_epoch(secs), want);
            assert!(valid_rfc3339(want));
        }
    }

    #[test]
    fn created_precedence() {
        assert_eq!(created(None, None).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            created(None, Some("86400")).unwrap(),
            "1970-01-02T00:00:00Z"
        );
        assert_eq!(
            created(Some("2024-05-06T07:08:09.5+02:00"), Some("86400")).unwrap(),
            "2024-05-06T07:08:09.5+02:00"
        );
        assert!(created(None, Some("yesterday")).is_err());
        assert!(created(None, Some("-5")).is_err());
        for bad in [
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0200",
        ] {
            assert!(created(Some(bad), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        for bad in ["", "M", "1.5M", "-1", "1T", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn previous_images_from_layouts_or_registries() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("app.oci");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("oci-layout"), crate::oci::layout::OCI_LAYOUT).unwrap();
        let dir = layout.to_str().unwrap();
        let plain = tmp.path().join("plain.d");
        std::fs::create_dir(&plain).unwrap();
        let plain = plain.to_str().unwrap();
        let layout_of = |s: &str| PreviousSource::Layout(s.to_owned());
        let registry = |reg: &str, name: &str, tag: Option<&str>, digest: Option<&str>| {
            PreviousSource::Registry(
                Reference {
                    registry: reg.into(),
                    repository: name.into(),
                    tag: tag.map(Into::into),
                },
                digest.map(|d| d.parse().unwrap()),
            )
        };
        let d = format!("sha256:{}", "a".repeat(64));
        for (arg, want) in [
            (dir.to_owned(), layout_of(dir)),
            (format!("{dir}:1.0"), layout_of(&format!("{dir}:1.0"))),
            (format!("oci:{dir}:1.0"), layout_of(&format!("{dir}:1.0"))),
            // Paths that exist stay layouts, whatever they look like.
            (plain.to_owned(), layout_of(plain)),
            (format!("{plain}:x"), layout_of(&format!("{plain}:x"))),
            ("missing.oci".into(), layout_of("missing.oci")),
            ("./out/app.oci".into(), layout_of("./out/app.oci")),
            ("out/app.oci:1".into(), layout_of("out/app.oci:1")),
            (
                "127.0.0.1:5000/app:1".into(),
                registry("127.0.0.1:5000", "app", Some("1"), None),
            ),
            (
                "localhost/team/app".into(),
                registry("localhost", "team/app", Some("latest"), None),
            ),
            (
                format!("registry.example.org/app@{d}"),
                registry("registry.example.org", "app", None, Some(&d)),
            ),
            (
                "docker://alpine".into(),
                registry("docker.io", "library/alpine", Some("latest"), None),
            ),
            (
                format!("docker://127.0.0.1:5000/app:1@{d}"),
                registry("127.0.0.1:5000", "app", Some("1"), Some(&d)),
            ),
        ] {
            assert_eq!(previous_source(&arg).unwrap(), want, "{arg}");
        }
        for bad in [
            "docker://",
            "docker://127.0.0.1:5000/App:1",
            "127.0.0.1:5000/app:../x",
            "127.0.0.1:5000/app@sha256:00",
        ] {
            let e = previous_source(bad).unwrap_err();
            assert!(e.is::<UsageError>(), "{bad}: {e}");
            assert!(
                e.to_string().starts_with(&format!("--previous {bad}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn ports() {
        assert_eq!(exposed_port("8080").unwrap(), "8080/tcp");
        assert_eq!(exposed_port("53/udp").unwrap(), "53/udp");
        for bad in ["0", "70000", "80/http", "x/tcp", ""] {
            assert!(exposed_port(bad).is_err(), "{bad}");
        }
    }
}
