//! `nixoci build`: installables per platform to one multi-platform OCI
//! image layout. This module holds the flags (parsed into types by clap,
//! `cli::flags`), the run (progress, the report); `cli::resolve` turns the
//! flags into a [`crate::pipeline::BuildRequest`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use indicatif::ProgressStyle;

use super::flags::{
    human_bytes, ByteSize, CopyToRoot, Created, ExposedPort, KeyValue, RegistryArgs, S3Args,
};
use super::push::{
    push_to_bucket, Counters, Destination, Notes, Target, DEFAULT_JOBS, DEFAULT_REFRESH_AFTER,
    DEFAULT_RETRIES, S3_NO_CREDS,
};
use super::resolve::{apply_structured_attrs, build_request};
use super::{usage, Classify};
use crate::error::error_chain;
use crate::layer::{CacheStatus, Compression, Progress};
use crate::oci::layout::LayoutArg;
use crate::oci::Digest;
use crate::pipeline::{self, BuildReport, BuildRequest};
use crate::publish::client::Client;
use crate::publish::client::ClientOptions;
use crate::publish::push::{self, PushOptions, PushReport, DEFAULT_CHUNK_SIZE};
use crate::publish::reference::{tag_from_ref_name, Reference};
use crate::publish::s3::{S3Config, S3Target, MIN_PART_SIZE};
use crate::publish::s3_push::S3PushOptions;
use crate::publish::source::read_image;
use crate::rootfs::{DirSpec, GroupSpec, PermRule, SymlinkSpec, UserSpec};

fn chmod_rule(s: &str) -> Result<PermRule, crate::rootfs::RootFsError> {
    PermRule::chmod(s)
}

fn chown_rule(s: &str) -> Result<PermRule, crate::rootfs::RootFsError> {
    PermRule::chown(s)
}

const INPUT: &str = "Input";
const CONFIG: &str = "Image config";
const ROOT: &str = "Root filesystem (a layer on top of the store layers)";
const LAYERING: &str = "Layering";
const OUTPUT: &str = "Output";
const PERFORMANCE: &str = "Performance";

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
///
///   nixoci build .#app --tag 1.0 -o app.oci --push registry.example.org/app
///
///   AWS_PROFILE=garage nixoci build .#app -o app.oci \
///       --push s3://registry/app:1.0 --s3-endpoint http://127.0.0.1:3900
#[derive(Debug, Clone, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A flake output or store path to image for every --system (default:
    /// the current system).
    #[arg(value_name = "INSTALLABLE", help_heading = INPUT)]
    pub installable: Option<String>,

    /// A Nix system to build INSTALLABLE for (x86_64-linux,
    /// aarch64-linux, armv7l-linux, …). Repeatable.
    #[arg(long = "system", value_name = "SYSTEM", help_heading = INPUT)]
    pub systems: Vec<String>,

    /// PLATFORM=INSTALLABLE: PLATFORM's image is INSTALLABLE's closure, for
    /// cross-compiled or explicitly chosen outputs. PLATFORM is
    /// os/arch[/variant] (linux/amd64, linux/arm64, linux/arm/v7) or a Nix
    /// system (aarch64-linux). Repeatable; each platform once.
    #[arg(long = "platform", value_name = "PLATFORM=INSTALLABLE", help_heading = INPUT)]
    pub platforms: Vec<String>,

    /// Read the closure from FILE instead of asking Nix: the JSON list that
    /// exportReferencesGraph gives a derivation with __structuredAttrs (or
    /// its whole .attrs.json), or `nix path-info --json --recursive` output.
    /// Installables must then be store paths.
    #[arg(long, value_name = "FILE", help_heading = INPUT)]
    pub closure_json: Option<PathBuf>,

    /// Evaluate FILE, a Nix expression rather than a flake, as `nix build
    /// -f FILE`: INSTALLABLE and the installables of --platform and
    /// --copy-to-root are then attribute paths of its value (a function is
    /// called with its default arguments); store paths stay store paths.
    /// --system SYSTEM evaluates FILE with Nix's `system` setting, that is
    /// builtins.currentSystem, set to SYSTEM (as `nix build -f FILE
    /// --system SYSTEM`): an expression that builds for
    /// builtins.currentSystem gives each system its package. A --platform
    /// attribute evaluates for the current system.
    #[arg(long, short = 'f', value_name = "FILE", help_heading = INPUT)]
    pub file: Option<PathBuf>,

    /// Evaluate impurely (`nix --impure`): flakes may read the environment,
    /// builtins.currentSystem and paths outside the flake.
    #[arg(long, help_heading = INPUT)]
    pub impure: bool,

    /// Override a flake input, as `nix build --override-input INPUT REF`
    /// (INPUT as in flake.lock, such as nixpkgs or dep/nixpkgs).
    /// Repeatable.
    #[arg(
        long = "override-input",
        num_args = 2,
        value_names = ["INPUT", "REF"],
        help_heading = INPUT
    )]
    pub override_inputs: Vec<String>,

    /// Show the build logs of what Nix builds, as `nix build -L`.
    #[arg(long, short = 'L', help_heading = INPUT)]
    pub print_build_logs: bool,

    /// Pass `--option NAME VALUE` to every nix call. Repeatable.
    #[arg(long = "option", num_args = 2, value_names = ["NAME", "VALUE"], help_heading = INPUT)]
    pub options: Vec<String>,

    /// Run as the builder of the Nix library's ociLayout: read images, tag
    /// and the closure from the derivation's structured attributes
    /// (NIX_ATTRS_JSON_FILE or .attrs.json), write the layout to its `out`
    /// and nix-support/hydra-build-products. Calls no nix.
    #[arg(long, help_heading = INPUT)]
    pub structured_attrs: bool,

    /// The Nix store directory.
    #[arg(
        long,
        default_value = "/nix/store",
        env = "NIX_STORE_DIR",
        value_name = "DIR",
        help_heading = INPUT
    )]
    pub store_dir: String,

    /// Read store paths from under DIR instead of / (a chroot store).
    #[arg(long, default_value = "/", value_name = "DIR", help_heading = INPUT)]
    pub store_root: PathBuf,

    /// One element of the entrypoint's argv. Repeatable, in order.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true, help_heading = CONFIG)]
    pub entrypoint: Vec<String>,

    /// One element of the default command's argv. Repeatable, in order.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true, help_heading = CONFIG)]
    pub cmd: Vec<String>,

    /// KEY=VALUE in the image's environment. Repeatable.
    #[arg(long, value_name = "KEY=VALUE", help_heading = CONFIG)]
    pub env: Vec<KeyValue>,

    /// Working directory of the entrypoint: an absolute path.
    #[arg(long, value_name = "DIR", help_heading = CONFIG)]
    pub workdir: Option<String>,

    /// User (and group) to run as: name, uid, user:group or uid:gid.
    #[arg(long, help_heading = CONFIG)]
    pub user: Option<String>,

    /// A port to expose: PORT or PORT/tcp, PORT/udp, PORT/sctp. Repeatable.
    #[arg(long, value_name = "PORT[/PROTO]", help_heading = CONFIG)]
    pub expose: Vec<ExposedPort>,

    /// A path where a runtime mounts a volume (absolute). Repeatable.
    #[arg(long = "volume", value_name = "PATH", help_heading = CONFIG)]
    pub volumes: Vec<String>,

    /// The signal that stops the container: SIGTERM, SIGINT, … or a
    /// number.
    #[arg(long, value_name = "SIG", help_heading = CONFIG)]
    pub stop_signal: Option<String>,

    /// KEY=VALUE label in the image config. Repeatable.
    #[arg(long, value_name = "KEY=VALUE", help_heading = CONFIG)]
    pub label: Vec<KeyValue>,

    /// KEY=VALUE annotation on the image index and manifests. Repeatable.
    #[arg(long, value_name = "KEY=VALUE", help_heading = CONFIG)]
    pub annotation: Vec<KeyValue>,

    /// Creation time in the image configs: RFC 3339
    /// (2024-01-01T00:00:00Z) or seconds since 1970. Default: the image
    /// spec's, else SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z.
    #[arg(long, value_name = "TIME", help_heading = CONFIG)]
    pub created: Option<Created>,

    /// [PLATFORM=]INSTALLABLE whose tree is placed at / (typically a
    /// buildEnv: its bin/, etc/, lib/ appear at /bin, /etc, /lib), for
    /// every platform or only PLATFORM; a flake attribute resolves per
    /// system like the image's own installable. Symlinks stay symlinks; the
    /// store path and its closure are in the store layers as usual. Trees
    /// that put different things at one path are an error naming both.
    /// Repeatable.
    #[arg(long = "copy-to-root", value_name = "[PLATFORM=]INSTALLABLE", help_heading = ROOT)]
    pub copy_to_root: Vec<CopyToRoot>,

    /// Register the closure in /nix/var/nix/db/db.sqlite (Nix's schema,
    /// registration time 1) with a garbage collector root per image root,
    /// so that nix inside the image sees a valid store. Byte for byte
    /// reproducible.
    #[arg(long, help_heading = ROOT)]
    pub nix_db: bool,

    /// REGEX=MODE: every path of the image the regular expression matches
    /// whole (absolute, store paths included) gets MODE (octal, e.g. 4755
    /// for a setuid helper). A rule that matches nothing is an error.
    /// Repeatable; later rules win.
    #[arg(long, value_name = "REGEX=MODE", value_parser = chmod_rule, help_heading = ROOT)]
    pub chmod: Vec<PermRule>,

    /// REGEX=UID:GID: every path of the image the regular expression
    /// matches whole gets that owner. A rule that matches nothing is an
    /// error. Repeatable; later rules win.
    #[arg(long, value_name = "REGEX=UID:GID", value_parser = chown_rule, help_heading = ROOT)]
    pub chown: Vec<PermRule>,

    /// A directory PATH[:MODE[:UID:GID]] in the image (parents 0755 0:0):
    /// --dir /tmp:1777, --dir /var/lib/app:0750:1000:1000. Repeatable.
    #[arg(long = "dir", value_name = "PATH[:MODE[:UID:GID]]", help_heading = ROOT)]
    pub dirs: Vec<DirSpec>,

    /// A symbolic link PATH=TARGET in the image, TARGET absolute:
    /// --symlink /bin/sh={root}/bin/sh. Repeatable.
    #[arg(long = "symlink", value_name = "PATH=TARGET", help_heading = ROOT)]
    pub symlinks: Vec<SymlinkSpec>,

    /// A user NAME:UID[:GID[:HOME[:SHELL]]] in /etc/passwd (GID defaults to
    /// UID, HOME to /home/NAME, created owned by the user; SHELL to
    /// /bin/sh). Any of --add-user and --add-group writes /etc/passwd and
    /// /etc/group (with root and nobody) and /etc/nsswitch.conf. Repeatable.
    #[arg(long = "add-user", value_name = "NAME:UID[:GID[:HOME[:SHELL]]]", help_heading = ROOT)]
    pub users: Vec<UserSpec>,

    /// A group NAME:GID in /etc/group. Repeatable.
    #[arg(long = "add-group", value_name = "NAME:GID", help_heading = ROOT)]
    pub groups: Vec<GroupSpec>,

    /// Most layers in each platform's image [default: the spec's, else 100].
    #[arg(long, value_name = "N", help_heading = LAYERING)]
    pub max_layers: Option<usize>,

    /// Layers to leave free for images built on top of this one: each
    /// image gets at most --max-layers minus N.
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = LAYERING)]
    pub reserve_layers: usize,

    /// Smallest layer worth a place in the budget: a planned layer with
    /// fewer NAR bytes is merged with another of the same platforms. Bytes,
    /// or with a K, M or G suffix (powers of 1024); 0 turns it off.
    #[arg(long, default_value = "0", value_name = "SIZE", help_heading = LAYERING)]
    pub min_layer_size: ByteSize,

    /// Store paths to keep together in one layer of their own, separated
    /// by commas. Repeatable; groups that share a path are joined.
    #[arg(long = "layer", value_name = "PATH[,PATH…]", help_heading = LAYERING)]
    pub layer: Vec<String>,

    /// A base image to build on (dockerTools' and nix2container's
    /// fromImage): an OCI layout (oci:DIR[:TAG], or DIR[:TAG] when it
    /// exists) or a registry image (docker://REGISTRY/NAME[:TAG|@DIGEST]),
    /// named as for --previous. Each platform's image is the base's image
    /// of that platform (linux/arm64 is linux/arm64/v8) with our layers on
    /// top: the base's layers come first, exactly as they are (same
    /// digests, never recompressed, fetched once into the layer cache) and
    /// count in --max-layers. Its config is kept where we set nothing: Env
    /// merged by key (ours win), ExposedPorts, Labels and Volumes merged,
    /// Entrypoint, Cmd, WorkingDir, User and StopSignal the base's unless
    /// given; its history comes first. Default: the image spec's fromImage.
    #[arg(long = "from", value_name = "IMAGE", help_heading = INPUT)]
    pub from: Option<String>,

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
    /// A registry is read with the registry flags below and the
    /// credentials `nixoci push` finds.
    #[arg(long, value_name = "IMAGE", help_heading = LAYERING)]
    pub previous: Option<String>,

    /// When the --previous image does not exist (no such layout, or no
    /// such tag in it or in the registry), say so on stderr and plan from
    /// scratch instead of failing: a pipeline's first build can then pass
    /// the same --previous as every later one. Any other problem (network,
    /// credentials, a broken image) still fails.
    #[arg(long, requires = "previous", help_heading = LAYERING)]
    pub previous_optional: bool,

    /// The registry of a --from or --previous image, and of --push.
    #[command(
        flatten,
        next_help_heading = "Registry (of a --from or --previous image, and of --push)"
    )]
    pub registry: RegistryArgs,

    /// The layout to create or add to: DIR, or DIR:TAG to name the tag as
    /// --tag does (both may be given when they agree); `oci:DIR[:TAG]`
    /// means the same. A new DIR has no ':' in its name.
    #[arg(
        long,
        short = 'o',
        value_name = "[oci:]DIR[:TAG]",
        required_unless_present = "structured_attrs",
        help_heading = OUTPUT
    )]
    pub output: Option<LayoutArg>,

    /// The tag to point at the image, stored as the
    /// org.opencontainers.image.ref.name of its index.json entry (read it
    /// back as oci:DIR:TAG). Default: the image spec's tag, else latest.
    #[arg(long, help_heading = OUTPUT)]
    pub tag: Option<String>,

    /// Push the image once the layout is written, as `nixoci push LAYOUT
    /// DEST` would (the same requests and checks, 4 blobs at once): to a
    /// registry, REGISTRY/NAME[:TAG], or to an S3 bucket as a static
    /// registry, s3://BUCKET/NAME[:TAG] (s3://BUCKET/PREFIX//NAME[:TAG]).
    /// Without :TAG, the tag of --tag (its part after the last ':' when it
    /// is a full reference). While the layers build, a registry is reached
    /// (scheme, and the credentials `nixoci push` finds, with the Registry
    /// flags) and the image its tag names now is read, so the push starts
    /// knowing which blobs are there. The layout is written exactly as
    /// without --push; when the push fails (exit 1), it is complete, and
    /// `nixoci push` pushes it. With --json, the report's `push` holds the
    /// push's report.
    #[arg(
        long,
        value_name = "REGISTRY/NAME[:TAG]|s3://BUCKET/NAME[:TAG]",
        value_parser = Target::parse,
        help_heading = OUTPUT
    )]
    pub push: Option<Target>,

    /// The bucket of a --push s3:// destination.
    #[command(flatten, next_help_heading = "S3 (of a --push s3:// destination)")]
    pub s3: S3Args,

    /// Print the build report as JSON on stdout.
    #[arg(long, help_heading = OUTPUT)]
    pub json: bool,

    /// Build even when a platform's image holds ELF programs or shared
    /// libraries of another architecture. By default such an image is
    /// refused (exit 2), naming the platform, the file and both
    /// architectures: it would fail with "exec format error" where it runs.
    /// linux/amd64 takes i386 code too; ELF files that are neither
    /// executable nor named like a library (*.so, *.so.*) are data.
    #[arg(long, help_heading = OUTPUT)]
    pub no_arch_check: bool,

    /// Layers built at once [default: all cores].
    #[arg(long, short = 'j', value_name = "N", help_heading = PERFORMANCE)]
    pub jobs: Option<usize>,

    /// How layers are compressed: gzip (every runtime reads it), zstd
    /// (smaller and much faster; containerd 1.5+, Docker 23+, podman, CRI-O;
    /// see docs/performance.md) or none (plain tar).
    #[arg(
        long,
        default_value = "gzip",
        value_parser = Compression::NAMES,
        value_name = "gzip|zstd|none",
        help_heading = PERFORMANCE
    )]
    pub compression: String,

    /// Compression level, a bigger number for smaller and slower output:
    /// gzip 0 (stored) to 12 [default: 5] (libdeflate's levels, 5 with a
    /// shorter search: already smaller than `gzip -6`; 10 to 12 are very
    /// slow), zstd 1 to 19 [default: 3]; none takes no level.
    #[arg(long, value_name = "N", allow_negative_numbers = true, help_heading = PERFORMANCE)]
    pub level: Option<i32>,

    /// The layer cache: layers built before (same store paths, same
    /// compression) are reused from here instead of being built again
    /// [default: $XDG_CACHE_HOME/nixoci, else ~/.cache/nixoci]. When it
    /// cannot be written (as in a Nix build sandbox), the build goes on
    /// without it.
    #[arg(long, value_name = "DIR", help_heading = PERFORMANCE)]
    pub cache_dir: Option<PathBuf>,

    /// Build every layer: neither read nor write the layer cache.
    #[arg(long, conflicts_with = "cache_dir", help_heading = PERFORMANCE)]
    pub no_cache: bool,
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
    let req = build_request(&args)?;
    let bar = super::bytes_bar("planning");
    let notes = Notes::above(&bar);
    // The registry is reached while the layout is built.
    let pushing = Pushing::start(&args, &req, &notes)?;
    // Bytes of the layers read, of the closure's total NAR size (and the
    // root layers' contents). A layer the cache or the layout already has
    // is taken out of the total when that is known, rather than counted as
    // read: counted, it would jump the position and make the rate and the
    // time left a fiction. Either way the position ends at the total.
    let layers_done = AtomicUsize::new(0);
    let layer_count = AtomicUsize::new(0);
    let output = req.output.display();
    let events = pipeline::Events {
        plan: &|plan| {
            let count = pipeline::layer_count(&req, plan);
            layer_count.store(count, Ordering::Relaxed);
            bar.set_message(format!("layers 0/{count}"));
            bar.set_length(pipeline::read_size(&req.plan, plan));
        },
        waiting: &|| {
            bar.suspend(|| say!("nixoci: waiting for another nixoci that is writing {output}"))
        },
        stale: &|count, bytes| {
            bar.suspend(|| {
                say!(
                    "nixoci: removed {count} temporary file{} ({}) that interrupted builds left in {output}",
                    if count == 1 { "" } else { "s" },
                    human_bytes(bytes)
                )
            })
        },
        layer: &|_| {
            let done = layers_done.fetch_add(1, Ordering::Relaxed) + 1;
            let count = layer_count.load(Ordering::Relaxed);
            bar.set_message(format!("layers {done}/{count}"));
        },
        progress: &|p| match p {
            Progress::Read(bytes) => bar.inc(bytes),
            Progress::Skipped(bytes) => bar.dec_length(bytes),
        },
    };
    let report = pipeline::build(&req, &events);
    if report.is_ok() {
        // The last state stays on the screen, as counted (not set to the
        // total), with the average rate. On an error the bar goes away.
        bar.set_style(
            ProgressStyle::with_template(
                "  read {binary_bytes}/{binary_total_bytes} in {elapsed} ({binary_bytes_per_sec}), {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.abandon();
    }
    let report = report
        .classify()
        .with_context(|| format!("building {}", req.output.display()))?;
    if args.structured_attrs {
        write_hydra_products(&req.output)?;
    }

    if args.json && pushing.is_none() {
        super::print_json(&report)?;
    }
    for l in &report.layers {
        if let Some(problem) = &l.cache_problem {
            say!("nixoci: warning: {problem}");
        }
    }
    let total: u64 = report.layers.iter().map(|l| l.layer.size).sum();
    let count = |status| report.layers.iter().filter(|l| l.cache == status).count();
    let reused = count(CacheStatus::Hit) + count(CacheStatus::Layout);
    say!(
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
    if let Some(pushing) = pushing {
        let (pushed, mounted) = pushing.finish(&req, &notes)?;
        if args.json {
            super::print_json(&Report {
                build: &report,
                push: Some(&pushed),
            })?;
        }
        super::push::summary(&pushed, mounted);
    }
    Ok(())
}

/// `build --json`'s report: the build's, and with --push the push's
/// report as `push` (a field added to version 1).
#[derive(serde::Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    build: &'a BuildReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<&'a PushReport>,
}

/// What the connection made while the build runs gives: the client, and
/// the blobs the destination's tag names now.
type Prepared = anyhow::Result<(Client, BTreeSet<Digest>)>;

/// A `--push` under way.
enum Pushing {
    Registry(ToRegistry),
    Bucket(Box<ToBucket>),
}

/// A `--push` to a registry: its destination, and the thread that connects
/// and reads what the tag names while the layout is built.
struct ToRegistry {
    destination: Reference,
    tag: String,
    prepared: std::thread::JoinHandle<Prepared>,
}

/// A `--push s3://…`: the destination and how to reach the bucket, checked
/// before the build; nothing is sent before the layout is written.
struct ToBucket {
    target: S3Target,
    tag: String,
    config: S3Config,
    options: ClientOptions,
}

/// The tag to push under: the destination's, else the build's (its part
/// after the last ':' when it is a full reference).
fn push_tag(
    given: Option<&String>,
    req: &BuildRequest,
    destination: &str,
) -> anyhow::Result<String> {
    match given {
        Some(t) => Ok(t.clone()),
        None => tag_from_ref_name(&req.tag).ok_or_else(|| {
            usage(format!(
                "the tag '{}' is not a registry tag; give one as --push {destination}:TAG",
                req.tag
            ))
        }),
    }
}

impl Pushing {
    /// Checks --push and the flags that go with it (a usage error comes
    /// before any building) and, to a registry, starts connecting on a
    /// thread of its own. `None` without --push.
    fn start(args: &Args, req: &BuildRequest, notes: &Notes) -> anyhow::Result<Option<Pushing>> {
        if args.s3.given() && !matches!(args.push, Some(Target::S3(_))) {
            return Err(usage(
                "--s3-endpoint and --s3-region are for a --push s3:// destination",
            ));
        }
        match &args.push {
            None => Ok(None),
            Some(Target::Registry(r)) => Ok(Some(Pushing::Registry(ToRegistry::start(
                r.clone(),
                args,
                req,
                notes,
            )?))),
            Some(Target::S3(t)) => {
                if args.registry.creds.is_some() {
                    return Err(usage(format!("--creds is for registries; {S3_NO_CREDS}")));
                }
                let config = args.s3.config().map_err(|e| usage(error_chain(&e)))?;
                let tag = push_tag(t.tag.as_ref(), req, &t.to_string())?;
                Ok(Some(Pushing::Bucket(Box::new(ToBucket {
                    target: S3Target {
                        tag: Some(tag.clone()),
                        ..t.clone()
                    },
                    tag,
                    config,
                    options: args.registry.push_options(DEFAULT_RETRIES),
                }))))
            }
        }
    }

    /// Pushes the written layout's image; returns the report and what a
    /// mount is called there. A failure says that the layout is written
    /// and how to push it.
    fn finish(
        self,
        req: &BuildRequest,
        notes: &Notes,
    ) -> anyhow::Result<(PushReport, &'static str)> {
        let layout = format!("{}:{}", req.output.display(), req.tag);
        let destination = match &self {
            Pushing::Registry(r) => r.destination.to_string(),
            Pushing::Bucket(b) => b.target.to_string(),
        };
        let written = || {
            format!(
                "{layout} is written but not pushed; `nixoci push {layout} {destination}` pushes it"
            )
        };
        match self {
            Pushing::Registry(r) => r.push(req, notes).map(|p| (p, "mounted")),
            Pushing::Bucket(b) => b.push(req, &layout).map(|p| (p, "copied in the bucket")),
        }
        .with_context(written)
    }
}

impl ToBucket {
    fn push(self, req: &BuildRequest, layout: &str) -> anyhow::Result<PushReport> {
        let image = read_image(&req.output, Some(&req.tag))
            .with_context(|| format!("reading {}", req.output.display()))?;
        push_to_bucket(
            &image,
            layout,
            &self.target,
            &self.tag,
            &self.config,
            self.options,
            &S3PushOptions {
                jobs: DEFAULT_JOBS,
                part_size: DEFAULT_CHUNK_SIZE.max(MIN_PART_SIZE),
                refresh_after: DEFAULT_REFRESH_AFTER,
            },
        )
    }
}

impl ToRegistry {
    /// Checks the destination and starts connecting to it on a thread of
    /// its own.
    fn start(
        mut destination: Reference,
        args: &Args,
        req: &BuildRequest,
        notes: &Notes,
    ) -> anyhow::Result<ToRegistry> {
        let tag = push_tag(destination.tag.as_ref(), req, &destination.to_string())?;
        destination.tag = Some(tag.clone());
        // The repository of a --from base on this registry, as `nixoci
        // push` finds it in the manifests the build writes.
        let mount_from: Vec<String> = req
            .base
            .as_ref()
            .and_then(|b| b.name.as_deref())
            .and_then(|name| push::base_repository(name, &destination))
            .into_iter()
            .collect();
        let target = Destination::new(
            destination.clone(),
            &args.registry,
            &mount_from,
            DEFAULT_RETRIES,
        )?;
        let notify = notes.notify();
        let (reference, t) = (destination.clone(), tag.clone());
        let prepared = std::thread::Builder::new()
            .name("nixoci-push".into())
            .spawn(move || -> Prepared {
                let client = target.connect(notify)?;
                let known = push::tagged_blobs(&client, &reference, &t);
                Ok((client, known))
            })
            .context("starting the push's connection")?;
        Ok(ToRegistry {
            destination,
            tag,
            prepared,
        })
    }

    /// Pushes the written layout's image with the client and the blobs
    /// known.
    fn push(self, req: &BuildRequest, notes: &Notes) -> anyhow::Result<PushReport> {
        let (client, known) = match self.prepared.join() {
            Ok(prepared) => prepared?,
            Err(_) => anyhow::bail!("the push's connection thread stopped"),
        };
        let image = read_image(&req.output, Some(&req.tag))
            .with_context(|| format!("reading {}", req.output.display()))?;
        let bar = super::bytes_bar("pushing");
        notes.move_above(&bar);
        let counters = Counters::default();
        let events = |e: push::Event| counters.show(&bar, e);
        let options = PushOptions {
            jobs: DEFAULT_JOBS,
            chunk_size: DEFAULT_CHUNK_SIZE,
            mount_from: push::base_repositories(&image, &self.destination),
        };
        let report = push::push_known(
            &client,
            &image,
            &self.destination,
            &self.tag,
            &options,
            &events,
            known,
        )
        .with_context(|| format!("pushing to {}", self.destination))?;
        bar.finish_and_clear();
        Ok(report)
    }
}
