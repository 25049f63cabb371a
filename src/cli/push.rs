//! `nixoci push`: an image of an OCI image layout to a registry, or to an
//! S3 bucket as a static registry.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;

use super::flags::{human_bytes, Age, ByteSize, RegistryArgs, S3Args};
use super::usage;
use crate::error::error_chain;
use crate::oci::layout::LayoutArg;
use crate::publish::client::{Client, ClientOptions};
use crate::publish::push::PushReport;
use crate::publish::push::{self, Event, PushOptions};
use crate::publish::reference::{tag_from_ref_name, valid_repository, Reference};
use crate::publish::s3::{Bucket, S3Config, S3Target, MIN_PART_SIZE};
use crate::publish::s3_push::{self, S3PushOptions};
use crate::publish::source::{read_image, Image};

/// Push an image from an OCI image layout to a registry, or to an S3
/// bucket as a static registry.
///
/// Blobs the registry already has are skipped (those of the image TAG
/// names there now without asking for each), others are mounted from
/// --mount-from repositories or uploaded (in chunks when large), then the
/// per-platform manifests and the image index go up, the index under TAG.
///
/// To s3://BUCKET/NAME[:TAG] (s3://BUCKET/PREFIX//NAME[:TAG] to write under
/// PREFIX/), the objects export-static would write go into the bucket, each
/// with its Content-Type, for a bucket website (Garage's web endpoint) to
/// serve: blobs first (skipped when there, copied server-side when another
/// repository of the bucket has them, multipart when larger than
/// --chunk-size), then the manifests by digest, then the tag, then
/// v2/NAME/tags/list; nothing is deleted, so a push killed at any point
/// leaves every tag complete. The endpoint, region and access key are read
/// as the AWS tools read them (see --s3-endpoint).
///
/// Credentials, first found wins: --creds, NIXOCI_REGISTRY_USER and
/// NIXOCI_REGISTRY_PASSWORD, the containers auth.json (REGISTRY_AUTH_FILE,
/// $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json),
/// Docker's ~/.docker/config.json (or $DOCKER_CONFIG/config.json).
///
/// Plain HTTP is used only for registries on this machine (localhost,
/// 127.0.0.0/8, [::1]) or with --insecure.
///
///   nixoci push hello.oci registry.example.org/hello:1.0
///   nixoci push hello.oci:example.org/hello:1.0 localhost:5000/hello
///   AWS_PROFILE=garage nixoci push hello.oci s3://registry/hello:1.0 --s3-endpoint http://127.0.0.1:3900
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The layout, DIR or oci:DIR, with :TAG naming the image in it (the
    /// tag `build --tag` gave) when it holds several.
    #[arg(value_name = "[oci:]DIR[:TAG]")]
    pub source: LayoutArg,

    /// Where to push: a registry, or an S3 bucket (s3://BUCKET/NAME[:TAG]
    /// or s3://BUCKET/PREFIX//NAME[:TAG]). Without :TAG, the tag of the
    /// layout's image (its part after the last ':' when it is a full
    /// reference).
    #[arg(value_name = "REGISTRY/NAME[:TAG]|s3://BUCKET/NAME[:TAG]")]
    pub destination: String,

    /// A repository of the same registry to mount missing blobs from
    /// instead of uploading them. Repeatable. The repository of a `build
    /// --from` base on this registry (the manifests'
    /// org.opencontainers.image.base.name) is tried first without it.
    #[arg(long = "mount-from", value_name = "REPOSITORY")]
    pub mount_from: Vec<String>,

    /// Blobs pushed at once.
    #[arg(long, short = 'j', default_value_t = DEFAULT_JOBS, value_name = "N")]
    pub jobs: usize,

    /// Blobs up to SIZE go up in one request, larger ones in chunks of
    /// SIZE (parts of at least 5 MiB to S3): bytes, or with a K, M or G
    /// suffix (powers of 1024).
    #[arg(long, default_value = "16M", value_name = "SIZE")]
    pub chunk_size: ByteSize,

    /// Retries of each blob or manifest after a connection error, a 5xx or
    /// a 429 answer, with backoff (or as Retry-After asks); a timeout is
    /// retried once.
    #[arg(long, default_value_t = DEFAULT_RETRIES, value_name = "N")]
    pub retries: u32,

    /// To s3:// only: a blob or manifest the bucket already has but last
    /// modified longer ago than AGE (by the server's clock) is copied onto
    /// itself before the manifests and the tag go up, so a gc with a
    /// --grace longer than this never deletes what a running push relies
    /// on. AGE is a number with s, m, h or d (90s, 30m, 12h) [default:
    /// 30m]
    #[arg(long, value_name = "AGE")]
    pub refresh_after: Option<Age>,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub s3: S3Args,

    /// Print the push report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--jobs`'s default, and the blobs `build --push` pushes at once.
pub const DEFAULT_JOBS: usize = 4;

/// `--retries`'s default, and `build --push`'s retries.
pub const DEFAULT_RETRIES: u32 = 5;

/// Where to push: a registry, or an S3 bucket as a static registry.
#[derive(Debug, Clone)]
pub enum Target {
    Registry(Reference),
    S3(S3Target),
}

impl Target {
    /// REGISTRY/NAME[:TAG] or s3://BUCKET/NAME[:TAG] as a flag's value
    /// (`build --push`).
    pub fn parse(s: &str) -> Result<Target, String> {
        if s.starts_with("s3://") {
            S3Target::parse(s)
                .map(Target::S3)
                .map_err(|e| e.to_string())
        } else {
            Reference::parse(s)
                .map(Target::Registry)
                .map_err(|e| e.to_string())
        }
    }
}

/// A registry destination with its tag, checked, and what connecting to
/// it takes: the credentials found for it, the token scopes (push to it,
/// pull from the repositories blobs are mounted from) and the client's
/// options. Made before anything is sent, so that a usage error (an
/// unreadable auth file) comes first.
pub struct Destination {
    pub reference: Reference,
    lookup: crate::publish::auth::Lookup,
    scopes: Vec<String>,
    options: ClientOptions,
}

impl Destination {
    /// `reference` (its tag set) with the credentials `registry` finds for
    /// it; `mount_from` are the repositories blobs may be mounted from.
    pub fn new(
        reference: Reference,
        registry: &RegistryArgs,
        mount_from: &[String],
        retries: u32,
    ) -> anyhow::Result<Destination> {
        let lookup = registry
            .credentials(&reference)
            .map_err(|e| usage(error_chain(&e)))?;
        let mut scopes = vec![format!("repository:{}:pull,push", reference.repository)];
        for m in mount_from {
            scopes.push(format!("repository:{m}:pull"));
        }
        let options = registry.push_options(retries);
        Ok(Destination {
            reference,
            lookup,
            scopes,
            options,
        })
    }

    /// Connects (the scheme probe, `GET /v2/`, authentication).
    pub fn connect(self, notify: Notify) -> anyhow::Result<Client> {
        Client::connect(
            &self.reference,
            self.lookup.credentials,
            self.lookup.helper_hint,
            self.scopes,
            self.options,
            notify,
        )
        .with_context(|| format!("connecting to {}", self.reference.registry))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.jobs == 0 {
        return Err(usage("--jobs 0: expected at least 1"));
    }
    let chunk_size = args.chunk_size.0;
    if chunk_size == 0 {
        return Err(usage("--chunk-size 0: expected at least 1 byte"));
    }
    if args.destination.starts_with("s3://") {
        return run_s3(args);
    }
    if args.s3.given() || args.refresh_after.is_some() {
        return Err(usage(
            "--s3-endpoint, --s3-region and --refresh-after are for s3:// destinations",
        ));
    }
    let mut dest = Reference::parse(&args.destination).map_err(|e| usage(e.to_string()))?;
    for m in &args.mount_from {
        if !valid_repository(m) {
            return Err(usage(format!(
                "--mount-from '{m}': not a repository name of the same registry (such as team/base)"
            )));
        }
    }
    let image = read_source(&args)?;
    let tag = tag_for(dest.tag.as_ref(), &image, &args.destination)?;
    dest.tag = Some(tag.clone());

    // The base's repository (`build --from` on this registry) first, then
    // the --mount-from ones.
    let mut mount_from = push::base_repositories(&image, &dest);
    for m in &args.mount_from {
        if !mount_from.contains(m) {
            mount_from.push(m.clone());
        }
    }
    let destination = Destination::new(dest.clone(), &args.registry, &mount_from, args.retries)?;

    let (bar, notify) = progress();
    let client = destination.connect(notify)?;

    let counters = Counters::default();
    let events = |e: Event| counters.show(&bar, e);
    let jobs = args.jobs;
    let report = push::push(
        &client,
        &image,
        &dest,
        &tag,
        &PushOptions {
            jobs,
            chunk_size,
            mount_from,
        },
        &events,
    )
    .with_context(|| format!("pushing {} to {dest}", args.source))?;
    bar.finish_and_clear();
    finish(&report, args.json, "mounted")
}

/// The image of the layout argument.
fn read_source(args: &Args) -> anyhow::Result<Image> {
    let layout = &args.source;
    read_image(&layout.dir, layout.tag.as_deref()).map_err(|e| {
        if e.is_usage() {
            usage(error_chain(&e))
        } else {
            anyhow::Error::new(e).context(format!("reading {}", args.source))
        }
    })
}

/// The tag to push under: the destination's, else the layout's.
fn tag_for(given: Option<&String>, image: &Image, destination: &str) -> anyhow::Result<String> {
    match (given, &image.ref_name) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(name)) => tag_from_ref_name(name).ok_or_else(|| {
            usage(format!(
                "the layout's tag '{name}' is not a registry tag; give one as {destination}:TAG"
            ))
        }),
        (None, None) => Err(usage(format!(
            "the layout's image has no tag; give one as {destination}:TAG"
        ))),
    }
}

/// Where notes of retries go.
pub type Notify = Box<dyn Fn(&str) + Send + Sync>;

/// The progress bar (on a terminal only) and the notes of retries above it.
pub fn progress() -> (ProgressBar, Notify) {
    let bar = super::bytes_bar("starting");
    let notify = Notes::above(&bar).notify();
    (bar, notify)
}

/// The bar the notes of retries are printed above: `build --push`
/// connects while the build's bar is on the screen, and pushes under a
/// bar of its own.
#[derive(Clone)]
pub struct Notes(Arc<Mutex<ProgressBar>>);

impl Notes {
    pub fn above(bar: &ProgressBar) -> Notes {
        Notes(Arc::new(Mutex::new(bar.clone())))
    }

    /// Notes from now on go above `bar`.
    pub fn move_above(&self, bar: &ProgressBar) {
        if let Ok(mut b) = self.0.lock() {
            *b = bar.clone();
        }
    }

    pub fn notify(&self) -> Notify {
        let notes = self.clone();
        Box::new(move |msg| match notes.0.lock().map(|b| b.clone()) {
            Ok(bar) => bar.suspend(|| say!("nixoci: {msg}")),
            Err(_) => say!("nixoci: {msg}"),
        })
    }
}

/// What the bar shows.
#[derive(Default)]
pub struct Counters {
    position: AtomicI64,
    done_blobs: AtomicI64,
    total_blobs: AtomicI64,
}

impl Counters {
    pub fn show(&self, bar: &ProgressBar, e: Event) {
        match e {
            Event::Start { bytes, blobs } => {
                bar.set_length(bytes);
                self.total_blobs.store(blobs as i64, Ordering::Relaxed);
            }
            Event::Bytes(d) => {
                let p = self.position.fetch_add(d, Ordering::Relaxed) + d;
                bar.set_position(p.max(0) as u64);
            }
            Event::Blob(_) => {
                let n = self.done_blobs.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!(
                    "blobs {n}/{}",
                    self.total_blobs.load(Ordering::Relaxed)
                ));
            }
            Event::Manifest(m) => bar.set_message(format!("manifest {}", m.reference)),
        }
    }
}

/// Prints the report: JSON on stdout with --json, a summary on stderr.
fn finish(report: &PushReport, json: bool, mounted: &str) -> anyhow::Result<()> {
    if json {
        super::print_json(report)?;
    }
    summary(report, mounted);
    Ok(())
}

/// The line on stderr that sums up a push (`mounted`: what a mount is
/// called there).
pub fn summary(report: &PushReport, mounted: &str) {
    let platforms = report
        .manifests
        .iter()
        .filter(|m| m.platform.is_some())
        .count();
    let refreshed = if report.refreshed > 0 {
        format!(", {} refreshed", report.refreshed)
    } else {
        String::new()
    };
    say!(
        "pushed {} ({} platform{}; {} blob{} uploaded ({}), {} {mounted}, {} already there{refreshed}) {}",
        report.destination,
        platforms,
        if platforms == 1 { "" } else { "s" },
        report.uploaded,
        if report.uploaded == 1 { "" } else { "s" },
        human_bytes(report.bytes_uploaded),
        report.mounted,
        report.skipped,
        report.digest
    );
}

/// `--refresh-after`'s default, half of `gc --grace`'s.
pub const DEFAULT_REFRESH_AFTER: Duration = Duration::from_secs(30 * 60);

/// `--creds` is refused with an s3:// destination for this reason.
pub const S3_NO_CREDS: &str = "to S3, blobs another repository of the bucket has are copied server-side, and the access key comes from the AWS environment or profile";

/// Pushes `image` into the bucket of `target` under `tag`, with a
/// progress bar (`push s3://…`, `build --push s3://…`).
pub fn push_to_bucket(
    image: &Image,
    source: &str,
    target: &S3Target,
    tag: &str,
    config: &S3Config,
    options: ClientOptions,
    push_options: &S3PushOptions,
) -> anyhow::Result<PushReport> {
    let (bar, notify) = progress();
    let bucket = Bucket::new(config, &target.url, options, notify)
        .with_context(|| format!("connecting to {}", config.endpoint))?;
    let counters = Counters::default();
    let events = |e: Event| counters.show(&bar, e);
    let report =
        s3_push::push(&bucket, image, target, tag, push_options, &events).with_context(|| {
            format!(
                "pushing {source} to {} at {}",
                S3Target {
                    tag: Some(tag.to_owned()),
                    ..target.clone()
                },
                bucket.endpoint()
            )
        })?;
    bar.finish_and_clear();
    Ok(report)
}

/// `push LAYOUT s3://…`.
fn run_s3(args: Args) -> anyhow::Result<()> {
    let target = S3Target::parse(&args.destination).map_err(|e| usage(e.to_string()))?;
    if !args.mount_from.is_empty() || args.registry.creds.is_some() {
        return Err(usage(format!(
            "--mount-from and --creds are for registries; {S3_NO_CREDS}"
        )));
    }
    let config = args.s3.config().map_err(|e| usage(error_chain(&e)))?;
    let image = read_source(&args)?;
    let tag = tag_for(target.tag.as_ref(), &image, &args.destination)?;
    let options = args.registry.push_options(args.retries);
    let report = push_to_bucket(
        &image,
        &args.source.to_string(),
        &target,
        &tag,
        &config,
        options,
        &S3PushOptions {
            jobs: args.jobs,
            part_size: args.chunk_size.0.max(MIN_PART_SIZE),
            refresh_after: args.refresh_after.map_or(DEFAULT_REFRESH_AFTER, |a| a.0),
        },
    )?;
    finish(&report, args.json, "copied in the bucket")
}
