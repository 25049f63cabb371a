//! `nixoci push`: an image of an OCI image layout to a registry.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::flags::{human_bytes, ByteSize, RegistryArgs};
use super::usage;
use crate::error::error_chain;
use crate::oci::layout::LayoutArg;
use crate::publish::client::{Client, ClientOptions};
use crate::publish::push::{self, Event, PushOptions};
use crate::publish::reference::{tag_from_ref_name, valid_repository, Reference};
use crate::publish::source::read_image;

/// Push an image from an OCI image layout to a registry.
///
/// Blobs the registry already has are skipped, others are mounted from
/// --mount-from repositories or uploaded (in chunks when large), then the
/// per-platform manifests and the image index go up, the index under TAG.
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
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The layout, DIR or oci:DIR, with :TAG naming the image in it (the
    /// tag `build --tag` gave) when it holds several.
    #[arg(value_name = "[oci:]DIR[:TAG]")]
    pub source: LayoutArg,

    /// Where to push. Without :TAG, the tag of the layout's image (its
    /// part after the last ':' when it is a full reference).
    #[arg(value_name = "REGISTRY/NAME[:TAG]")]
    pub destination: String,

    /// A repository of the same registry to mount missing blobs from
    /// instead of uploading them. Repeatable.
    #[arg(long = "mount-from", value_name = "REPOSITORY")]
    pub mount_from: Vec<String>,

    /// Blobs pushed at once.
    #[arg(long, short = 'j', default_value_t = 4, value_name = "N")]
    pub jobs: usize,

    /// Blobs up to SIZE go up in one request, larger ones in chunks of
    /// SIZE: bytes, or with a K, M or G suffix (powers of 1024).
    #[arg(long, default_value = "16M", value_name = "SIZE")]
    pub chunk_size: ByteSize,

    /// Retries of each blob or manifest after a connection error, a 5xx or
    /// a 429 answer, with backoff (or as Retry-After asks); a timeout is
    /// retried once.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Print the push report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layout = &args.source;
    let mut dest = Reference::parse(&args.destination).map_err(|e| usage(e.to_string()))?;
    if args.jobs == 0 {
        return Err(usage("--jobs 0: expected at least 1"));
    }
    let chunk_size = args.chunk_size.0;
    if chunk_size == 0 {
        return Err(usage("--chunk-size 0: expected at least 1 byte"));
    }
    for m in &args.mount_from {
        if !valid_repository(m) {
            return Err(usage(format!(
                "--mount-from '{m}': not a repository name of the same registry (such as team/base)"
            )));
        }
    }
    let image = read_image(&layout.dir, layout.tag.as_deref()).map_err(|e| {
        if e.is_usage() {
            usage(error_chain(&e))
        } else {
            anyhow::Error::new(e).context(format!("reading {}", args.source))
        }
    })?;
    let tag = match (&dest.tag, &image.ref_name) {
        (Some(t), _) => t.clone(),
        (None, Some(name)) => tag_from_ref_name(name).ok_or_else(|| {
            usage(format!(
                "the layout's tag '{name}' is not a registry tag; give one as {}:TAG",
                args.destination
            ))
        })?,
        (None, None) => {
            return Err(usage(format!(
                "the layout's image has no tag; give one as {}:TAG",
                args.destination
            )))
        }
    };
    dest.tag = Some(tag.clone());

    let found = args
        .registry
        .credentials(&dest)
        .map_err(|e| usage(error_chain(&e)))?;
    // The base's repository (`build --from` on this registry) first, then
    // the --mount-from ones.
    let mut mount_from = push::base_repositories(&image, &dest);
    for m in &args.mount_from {
        if !mount_from.contains(m) {
            mount_from.push(m.clone());
        }
    }
    let mut scopes = vec![format!("repository:{}:pull,push", dest.repository)];
    for m in &mount_from {
        scopes.push(format!("repository:{m}:pull"));
    }

    let bar = if super::stderr_is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {binary_bytes_per_sec} [{bar:30}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let notify_bar = bar.clone();
    let notify: Box<dyn Fn(&str) + Send + Sync> =
        Box::new(move |msg| notify_bar.suspend(|| eprintln!("nixoci: {msg}")));
    let options = ClientOptions {
        retries: args.retries,
        backoff: Duration::from_millis(500),
        ..args.registry.client_options()
    };
    let client = Client::connect(
        &dest,
        found.credentials,
        found.helper_hint,
        scopes,
        options,
        notify,
    )
    .with_context(|| format!("connecting to {}", dest.registry))?;

    let position = AtomicI64::new(0);
    let done_blobs = AtomicI64::new(0);
    let total_blobs = AtomicI64::new(0);
    let events = |e: Event| match e {
        Event::Start { bytes, blobs } => {
            bar.set_length(bytes);
            total_blobs.store(blobs as i64, Ordering::Relaxed);
        }
        Event::Bytes(d) => {
            let p = position.fetch_add(d, Ordering::Relaxed) + d;
            bar.set_position(p.max(0) as u64);
        }
        Event::Blob(_) => {
            let n = done_blobs.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("blobs {n}/{}", total_blobs.load(Ordering::Relaxed)));
        }
        Event::Manifest(m) => bar.set_message(format!("manifest {}", m.reference)),
    };
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

    if args.json {
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        super::print_stdout(&bytes)?;
    }
    let platforms = report
        .manifests
        .iter()
        .filter(|m| m.platform.is_some())
        .count();
    eprintln!(
        "pushed {} ({} platform{}; {} blob{} uploaded ({}), {} mounted, {} already there) {}",
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
    Ok(())
}
