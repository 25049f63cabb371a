//! `nixoci build`: store paths per platform to one multi-platform OCI
//! image layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use super::UsageError;
use crate::closure::Closure;
use crate::eval::{self, Nix};
use crate::layer::LayerOptions;
use crate::oci::image::{valid_ref_name, RunConfig};
use crate::oci::layout::check_output;
use crate::pipeline::{self, BuildRequest, ImageRequest};
use crate::plan::DEFAULT_MAX_LAYERS;
use crate::platform::Platform;
use crate::store_path::{StoreDir, StorePath};

/// Build one multi-platform OCI image layout from Nix store paths.
///
/// Each `--platform` names a platform and the store path whose closure
/// becomes that platform's image. Store paths shared by several platforms
/// are stored once. The layout's `index.json` gets an entry tagged `--tag`
/// pointing at an image index that lists every platform; other tags already
/// in the layout are kept.
///
/// In `--entrypoint`, `--cmd`, `--env` and `--workdir` values, `{root}`
/// stands for the platform's root store path, so one command line serves
/// every platform:
///
///   nixoci build --platform linux/amd64=/nix/store/…-hello
///                --platform linux/arm64=/nix/store/…-hello
///                --entrypoint '{root}/bin/hello' --tag example.org/hello:1.0 -o hello.oci
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// PLATFORM=STORE_PATH: build PLATFORM's image from STORE_PATH's
    /// closure. PLATFORM is os/arch[/variant] (linux/amd64, linux/arm64,
    /// linux/arm/v7) or a Nix system (aarch64-linux). Repeatable.
    #[arg(long = "platform", value_name = "PLATFORM=STORE_PATH", required = true)]
    pub platforms: Vec<String>,

    /// The layout directory to create or add to.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: PathBuf,

    /// The tag to point at the image, stored as the
    /// org.opencontainers.image.ref.name of its index.json entry (read it
    /// back as oci:DIR:TAG).
    #[arg(long, default_value = "latest")]
    pub tag: String,

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
    /// Default: SOURCE_DATE_EPOCH if set, else 1970-01-01T00:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub created: Option<String>,

    /// Print the build report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Most layers in each platform's image.
    #[arg(long, default_value_t = DEFAULT_MAX_LAYERS, value_name = "N")]
    pub max_layers: usize,

    /// Layers built at once [default: all cores].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,

    /// gzip level of the layers, 0 (none) to 9 (smallest).
    #[arg(long, default_value_t = 6, value_name = "0-9")]
    pub level: u32,

    /// Read the closure from FILE instead of asking Nix: the JSON list that
    /// exportReferencesGraph gives a derivation with __structuredAttrs, or
    /// the output of `nix path-info --json --recursive`.
    #[arg(long, value_name = "FILE")]
    pub closure_json: Option<PathBuf>,

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

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
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

/// The run config of one platform, with `{root}` replaced.
fn run_config(args: &Args, root: &StorePath) -> anyhow::Result<RunConfig> {
    let subst = |s: &String| s.replace("{root}", root.as_str());
    let mut env = BTreeMap::new();
    for e in &args.env {
        let (k, _) = key_value("--env", e)?;
        if env.insert(k.to_owned(), subst(e)).is_some() {
            bail!(UsageError(format!("--env {k} given twice")));
        }
    }
    Ok(RunConfig {
        entrypoint: (!args.entrypoint.is_empty())
            .then(|| args.entrypoint.iter().map(subst).collect()),
        cmd: (!args.cmd.is_empty()).then(|| args.cmd.iter().map(subst).collect()),
        env: env.into_values().collect(),
        working_dir: args.workdir.as_ref().map(subst),
        user: args.user.clone(),
        exposed_ports: args
            .expose
            .iter()
            .map(|p| exposed_port(p))
            .collect::<anyhow::Result<BTreeSet<_>>>()?,
        labels: key_values("--label", &args.label)?,
    })
}

/// Parses `--platform` values: platforms must differ after normalisation.
fn platform_roots(
    args: &Args,
    store_dir: &StoreDir,
) -> anyhow::Result<BTreeMap<Platform, StorePath>> {
    let mut out: BTreeMap<Platform, StorePath> = BTreeMap::new();
    let mut given: BTreeMap<Platform, &str> = BTreeMap::new();
    for spec in &args.platforms {
        let (p, path) = spec.split_once('=').ok_or_else(|| {
            usage(format!("--platform '{spec}': expected PLATFORM=STORE_PATH, such as linux/arm64=/nix/store/…-hello"))
        })?;
        let platform: Platform = p.parse().with_context(|| format!("--platform '{spec}'"))?;
        let root = store_dir
            .parse(path)
            .with_context(|| format!("--platform '{spec}'"))?;
        if let Some(first) = given.get(&platform) {
            bail!(UsageError(format!(
                "--platform '{spec}': {platform} is already given by '{first}'"
            )));
        }
        given.insert(platform.clone(), spec);
        out.insert(platform, root);
    }
    Ok(out)
}

/// Validates the arguments and reads the closures: everything that can be
/// wrong with the input fails here, before anything is written.
pub fn request(args: &Args) -> anyhow::Result<BuildRequest> {
    let store_dir =
        StoreDir::new(&args.store_dir).map_err(|e| usage(format!("--store-dir: {e}")))?;
    let roots = platform_roots(args, &store_dir)?;
    if !valid_ref_name(&args.tag) {
        bail!(UsageError(format!(
            "--tag '{}': not a valid reference name (letters and digits joined by . _ - : @ +, components separated by /)",
            args.tag
        )));
    }
    if args.level > 9 {
        bail!(UsageError(format!(
            "--level {}: expected 0 to 9",
            args.level
        )));
    }
    if args.jobs == Some(0) {
        bail!(UsageError("--jobs 0: expected at least 1".into()));
    }
    if args.max_layers == 0 {
        bail!(UsageError("--max-layers 0: expected at least 1".into()));
    }
    let created = created(
        args.created.as_deref(),
        std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
    )?;
    let annotations = key_values("--annotation", &args.annotation)?;
    let mut runs = BTreeMap::new();
    for (platform, root) in &roots {
        runs.insert(platform.clone(), run_config(args, root)?);
    }
    check_output(&args.output)?;
    if !args.store_root.is_dir() {
        bail!(UsageError(format!(
            "--store-root {}: not a directory",
            args.store_root.display()
        )));
    }

    let all_roots: Vec<StorePath> = roots
        .values()
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
        None => eval::path_info_closure(&Nix::default(), &store_dir, &all_roots)
            .context("reading closures from the Nix store")?,
    };
    let mut images = BTreeMap::new();
    for (platform, root) in roots {
        let closure = graph
            .subclosure(std::slice::from_ref(&root))
            .map_err(|e| usage(format!("closure of {root} for {platform}: {e}")))?;
        let on_disk = args.store_root.join(root.as_str().trim_start_matches('/'));
        if std::fs::symlink_metadata(&on_disk).is_err() {
            bail!(UsageError(format!(
                "{root} is not in the store (looked for {})",
                on_disk.display()
            )));
        }
        let run = runs.remove(&platform).unwrap_or_default();
        images.insert(
            platform,
            ImageRequest {
                roots: vec![root],
                closure,
                run,
            },
        );
    }
    Ok(BuildRequest {
        images,
        tag: args.tag.clone(),
        output: args.output.clone(),
        created,
        annotations,
        max_layers: args.max_layers,
        jobs: args.jobs.unwrap_or_else(default_jobs),
        layer_options: LayerOptions {
            store_root: args.store_root.clone(),
            gzip_level: args.level,
        },
    })
}

fn human_bytes(n: u64) -> String {
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

pub fn run(args: Args) -> anyhow::Result<()> {
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
    let report = pipeline::build(
        &req,
        &|plan| bar.set_length(plan.layers.len() as u64),
        &|layer| {
            let total = written.fetch_add(layer.size, Ordering::Relaxed) + layer.size;
            bar.set_message(human_bytes(total));
            bar.inc(1);
        },
    )
    .with_context(|| format!("building {}", args.output.display()))?;
    bar.finish_and_clear();

    if args.json {
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        super::print_stdout(&bytes)?;
    }
    let total: u64 = report.layers.iter().map(|l| l.size).sum();
    eprintln!(
        "wrote {}:{} ({} platform{}, {} layer{}, {}) index {}",
        args.output.display(),
        report.tag,
        report.platforms.len(),
        if report.platforms.len() == 1 { "" } else { "s" },
        report.layers.len(),
        if report.layers.len() == 1 { "" } else { "s" },
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
    fn ports() {
        assert_eq!(exposed_port("8080").unwrap(), "8080/tcp");
        assert_eq!(exposed_port("53/udp").unwrap(), "53/udp");
        for bad in ["0", "70000", "80/http", "x/tcp", ""] {
            assert!(exposed_port(bad).is_err(), "{bad}");
        }
    }
}
