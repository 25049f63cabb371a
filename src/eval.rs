//! The only place that runs `nix`: evaluates and builds flake outputs and
//! reads closures from the Nix store. The user's Nix configuration
//! (`NIX_CONFIG`, `nix.conf`, `--option`) passes through untouched; nixoci
//! only adds the experimental features its own calls need.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::closure::{Closure, ClosureError, CLOSURE_VERSION};
use crate::installable::{Installable, InstallableError};
use crate::platform::{Platform, PlatformError};
use crate::store_path::{StoreDir, StorePath};

/// How to call Nix.
#[derive(Debug, Clone)]
pub struct Nix {
    /// The `nix` program, `nix` from `PATH` by default.
    pub program: PathBuf,
    /// `--option NAME VALUE` pairs passed to every call.
    pub options: Vec<(String, String)>,
    /// `--file FILE`: installables other than store paths are attribute
    /// paths of FILE's value ([`Installable::Attr`]), as `nix build -f`.
    pub file: Option<PathBuf>,
    /// `--impure`, to every call that evaluates.
    pub impure: bool,
    /// `--override-input INPUT REF` pairs, to every call that evaluates a
    /// flake.
    pub override_inputs: Vec<(String, String)>,
    /// `--print-build-logs` (`-L`), to `nix build`.
    pub print_build_logs: bool,
}

impl Default for Nix {
    fn default() -> Self {
        Nix {
            program: PathBuf::from("nix"),
            options: Vec::new(),
            file: None,
            impure: false,
            override_inputs: Vec::new(),
            print_build_logs: false,
        }
    }
}

impl Nix {
    /// `nix --extra-experimental-features FEATURES [--option N V]… SUBCOMMAND`.
    fn command(&self, features: &str, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(["--extra-experimental-features", features]);
        cmd.arg(subcommand);
        for (name, value) in &self.options {
            cmd.args(["--option", name, value]);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `nix SUBCOMMAND` that evaluates installables, with what the user
    /// asked of evaluation: `--impure`, and `--override-input` for flakes
    /// or `--file FILE` with `system` (`--option system SYSTEM`, which is
    /// `builtins.currentSystem`) for attributes of a file.
    fn eval_command(&self, subcommand: &str, system: Option<&str>) -> Command {
        let mut cmd = self.command(FLAKES, subcommand);
        if self.impure {
            cmd.arg("--impure");
        }
        match &self.file {
            Some(file) => {
                cmd.arg("--file").arg(file);
                if let Some(system) = system {
                    cmd.args(["--option", "system", system]);
                }
            }
            None => {
                for (input, reference) in &self.override_inputs {
                    cmd.args(["--override-input", input, reference]);
                }
            }
        }
        cmd
    }

    fn program_name(&self) -> String {
        self.program.display().to_string()
    }

    fn missing(&self) -> impl FnOnce(io::Error) -> EvalError {
        let program = self.program_name();
        move |source| EvalError::NixMissing { program, source }
    }
}

/// Why Nix could not tell us a closure.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot run '{program}' (install Nix, or pass --closure-json)")]
    NixMissing {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a valid path in the Nix store")]
    NotInStore(String),
    #[error("'{command}' failed: {stderr}")]
    NixFailed { command: String, stderr: String },
    #[error("flake output {installable} does not exist {detail}")]
    MissingAttr {
        installable: String,
        /// Where nixoci looked and what the flake does have.
        detail: String,
    },
    #[error("-f {file}: its value has no attribute {attr}{system}")]
    MissingFileAttr {
        attr: String,
        file: PathBuf,
        /// ` (evaluated for SYSTEM)`, or empty.
        system: String,
    },
    #[error("nix build failed for {what}: {detail}")]
    BuildFailed { what: String, detail: String },
    #[error("'{command}' printed output nixoci cannot read: {detail}")]
    Output { command: String, detail: String },
    #[error("reading the output of '{command}'")]
    Closure {
        command: String,
        #[source]
        source: ClosureError,
    },
}

impl EvalError {
    /// True when the user's input, not the operation, is at fault.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EvalError::NixMissing { .. }
                | EvalError::NotInStore(_)
                | EvalError::MissingAttr { .. }
                | EvalError::MissingFileAttr { .. }
        )
    }
}

/// What one platform's image is made of, and the Nix system that short
/// flake attributes resolve for (`None`: the current system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub installable: Installable,
    pub system: Option<String>,
}

/// What the command line names to image: `INSTALLABLE` with `--system`s,
/// and `--platform PLATFORM=INSTALLABLE`s.
#[derive(Debug, Clone, Copy)]
pub struct TargetArgs<'a> {
    pub installable: Option<&'a str>,
    pub systems: &'a [String],
    pub platforms: &'a [String],
    /// The closure comes from a file: installables must be store paths
    /// and INSTALLABLE needs explicit systems.
    pub closure_file: bool,
    /// `--file FILE`: installables are attribute paths of its value.
    pub file: bool,
}

/// Why the installables and platforms name no set of targets, or no flake
/// output to build.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{given}: {platform} is already given by {first}")]
    Twice {
        given: String,
        platform: Platform,
        first: String,
    },
    #[error("'{0}': say which platforms it is for with --system")]
    NoSystem(String),
    #[error("--system {0}: unknown Nix system (known: x86_64-linux, aarch64-linux, armv7l-linux, armv6l-linux, i686-linux, riscv64-linux, powerpc64le-linux, s390x-linux)")]
    UnknownSystem(String),
    #[error("--system needs an INSTALLABLE to build")]
    SystemWithoutInstallable,
    #[error("--platform '{0}': expected PLATFORM=INSTALLABLE, such as linux/arm64=.#hello or linux/arm64=/nix/store/…-hello")]
    PlatformSyntax(String),
    #[error("--platform '{spec}'")]
    Platform {
        spec: String,
        #[source]
        source: PlatformError,
    },
    #[error("{given}")]
    Installable {
        given: String,
        #[source]
        source: InstallableError,
    },
    #[error(
        "nothing to build: give an INSTALLABLE (with --system) or --platform PLATFORM=INSTALLABLE"
    )]
    Nothing,
    #[error("asking nix for the current system")]
    CurrentSystem(#[source] Box<EvalError>),
    #[error("evaluating {flake_ref}")]
    Evaluating {
        flake_ref: String,
        #[source]
        source: Box<EvalError>,
    },
    #[error(transparent)]
    Eval(Box<EvalError>),
}

impl From<EvalError> for TargetError {
    fn from(e: EvalError) -> Self {
        TargetError::Eval(Box::new(e))
    }
}

impl TargetError {
    /// True when the user's input, not Nix, is at fault.
    pub fn is_usage(&self) -> bool {
        match self {
            TargetError::CurrentSystem(e)
            | TargetError::Evaluating { source: e, .. }
            | TargetError::Eval(e) => e.is_usage(),
            _ => true,
        }
    }
}

/// What to image for each platform, from INSTALLABLE + `--system` and
/// `--platform`. Platforms must differ after normalisation. Asks Nix for
/// the current system only when INSTALLABLE comes without `--system`.
pub fn targets(
    args: TargetArgs,
    store_dir: &StoreDir,
    nix: &Nix,
) -> Result<BTreeMap<Platform, Target>, TargetError> {
    let mut out: BTreeMap<Platform, Target> = BTreeMap::new();
    let mut given: BTreeMap<Platform, String> = BTreeMap::new();
    let mut add = |platform: Platform, target: Target, spec: String| {
        if let Some(first) = given.get(&platform) {
            return Err(TargetError::Twice {
                given: spec,
                platform,
                first: first.clone(),
            });
        }
        given.insert(platform.clone(), spec);
        out.insert(platform, target);
        Ok(())
    };
    if let Some(text) = args.installable {
        let installable =
            Installable::parse_with(text, store_dir, args.file).map_err(|source| {
                TargetError::Installable {
                    given: format!("'{text}'"),
                    source,
                }
            })?;
        let systems = if args.systems.is_empty() {
            if args.closure_file || !args.platforms.is_empty() {
                return Err(TargetError::NoSystem(text.to_owned()));
            }
            vec![current_system(nix).map_err(|e| TargetError::CurrentSystem(Box::new(e)))?]
        } else {
            args.systems.to_vec()
        };
        for system in systems {
            let platform = Platform::from_nix_system(&system)
                .ok_or_else(|| TargetError::UnknownSystem(system.clone()))?;
            let target = Target {
                installable: installable.clone(),
                system: Some(system.clone()),
            };
            add(platform, target, format!("--system {system}"))?;
        }
    } else if !args.systems.is_empty() {
        return Err(TargetError::SystemWithoutInstallable);
    }
    for spec in args.platforms {
        let (p, text) = spec
            .split_once('=')
            .ok_or_else(|| TargetError::PlatformSyntax(spec.clone()))?;
        let platform: Platform = p.parse().map_err(|source| TargetError::Platform {
            spec: spec.clone(),
            source,
        })?;
        let installable =
            Installable::parse_with(text, store_dir, args.file).map_err(|source| {
                TargetError::Installable {
                    given: format!("--platform '{spec}'"),
                    source,
                }
            })?;
        // Short attributes resolve for the current system, as `nix build`
        // resolves them: that is where outputs cross-compiled on this host
        // live (packages.x86_64-linux.app-aarch64-cross). Another system's
        // output is named in full (.#packages.aarch64-linux.app).
        let target = Target {
            installable,
            system: None,
        };
        add(platform, target, format!("--platform '{spec}'"))?;
    }
    if out.is_empty() {
        return Err(TargetError::Nothing);
    }
    Ok(out)
}

/// One installable for `nix build`: a flake output (`REF#ATTR`), or an
/// attribute path of the `--file` expression evaluated with `system` as
/// `builtins.currentSystem` (`None`: Nix's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildTarget {
    pub installable: String,
    pub system: Option<String>,
}

impl BuildTarget {
    fn flake(installable: String) -> BuildTarget {
        BuildTarget {
            installable,
            system: None,
        }
    }
}

impl std::fmt::Display for BuildTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.installable)
    }
}

/// Flake outputs and attributes of `--file` to `nix build` arguments:
/// short flake attributes resolve per system as `nix build` would (a
/// missing one lists what the flake has); a file's attribute is evaluated
/// for the target's system.
pub fn resolve_attrs(
    nix: &Nix,
    targets: &BTreeMap<Platform, Target>,
) -> Result<Vec<(Platform, BuildTarget)>, TargetError> {
    let mut packages: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut host: Option<String> = None;
    let mut out = Vec::new();
    for (platform, target) in targets {
        let (flake_ref, attr) = match &target.installable {
            Installable::Flake { flake_ref, attr } => (flake_ref, attr),
            Installable::Attr(attr) => {
                let build = BuildTarget {
                    installable: attr.clone(),
                    system: target.system.clone(),
                };
                out.push((platform.clone(), build));
                continue;
            }
            Installable::StorePath(_) => continue,
        };
        if attr.contains('.') {
            out.push((
                platform.clone(),
                BuildTarget::flake(format!("{flake_ref}#{attr}")),
            ));
            continue;
        }
        let system = match (&target.system, &host) {
            (Some(s), _) | (None, Some(s)) => s.clone(),
            (None, None) => {
                let s = current_system(nix).map_err(|e| TargetError::CurrentSystem(Box::new(e)))?;
                host = Some(s.clone());
                s
            }
        };
        let evaluating = |source| TargetError::Evaluating {
            flake_ref: flake_ref.clone(),
            source: Box::new(source),
        };
        if !packages.contains_key(flake_ref) {
            let p = flake_packages(nix, flake_ref).map_err(evaluating)?;
            packages.insert(flake_ref.clone(), p);
        }
        let have = &packages[flake_ref];
        let candidates = Installable::attr_paths(attr, &system);
        let chosen = if have
            .get(system.as_str())
            .is_some_and(|a| a.iter().any(|x| x == attr))
        {
            candidates[0].clone()
        } else if flake_has_attr(nix, flake_ref, &candidates[1]).map_err(evaluating)? {
            candidates[1].clone()
        } else {
            let list: Vec<String> = have
                .iter()
                .map(|(s, attrs)| {
                    let attrs = if attrs.is_empty() {
                        "none".to_owned()
                    } else {
                        attrs.join(" ")
                    };
                    format!("{s}: {attrs}")
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
        out.push((
            platform.clone(),
            BuildTarget::flake(format!("{flake_ref}#{chosen}")),
        ));
    }
    Ok(out)
}

/// How many trailing lines of Nix's stderr a [`EvalError::NixFailed`] keeps.
const STDERR_LINES: usize = 5;

/// Reads the closure of all `roots` with one `nix path-info --json --recursive`.
///
/// A `nix` that cannot be started is [`EvalError::NixMissing`]; a root (or
/// anything in its closure) Nix does not have is [`EvalError::NotInStore`];
/// any other failure of Nix is [`EvalError::NixFailed`] with the end of its
/// stderr. The closure holds exactly the roots and what they refer to.
pub fn path_info_closure(
    nix: &Nix,
    store_dir: &StoreDir,
    roots: &[StorePath],
) -> Result<Closure, EvalError> {
    // Without arguments Nix would read the flake in the current directory.
    if roots.is_empty() {
        return Ok(Closure {
            version: CLOSURE_VERSION,
            store_dir: store_dir.clone(),
            paths: BTreeMap::new(),
        });
    }
    let program = nix.program_name();
    // `nix-command` is experimental up to at least Nix 2.8; newer Nix
    // accepts the flag for a stable feature. `--` keeps paths from being
    // read as options.
    let output = nix
        .command("nix-command", "path-info")
        .args(["--json", "--recursive", "--"])
        .args(roots.iter().map(StorePath::as_str))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(nix.missing())?;
    let command = describe_command(&program, roots);
    if !output.status.success() {
        let stderr = strip_ansi(&String::from_utf8_lossy(&output.stderr));
        if let Some(path) = invalid_path_in(&stderr) {
            return Err(EvalError::NotInStore(path));
        }
        return Err(EvalError::NixFailed {
            command,
            stderr: last_lines(&stderr, STDERR_LINES)
                .unwrap_or_else(|| format!("no error message, {}", output.status)),
        });
    }
    let closure = Closure::from_path_info_json(store_dir, &output.stdout)
        .and_then(|all| all.subclosure(roots))
        .map_err(|source| match source {
            ClosureError::Invalid(path) => EvalError::NotInStore(path),
            source => EvalError::Closure { command, source },
        })?;
    Ok(closure)
}

const FLAKES: &str = "nix-command flakes";

/// Runs a quiet `nix` command and returns its stdout, or the failure.
fn run_captured(
    nix: &Nix,
    mut cmd: Command,
    what: &str,
) -> Result<Vec<u8>, Box<(String, EvalError)>> {
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Box::new((String::new(), nix.missing()(e))))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = strip_ansi(&String::from_utf8_lossy(&output.stderr));
    let detail = last_lines(&stderr, STDERR_LINES)
        .unwrap_or_else(|| format!("no error message, {}", output.status));
    Err(Box::new((
        stderr,
        EvalError::NixFailed {
            command: what.to_owned(),
            stderr: detail,
        },
    )))
}

/// The system Nix builds for by default, `builtins.currentSystem`.
pub fn current_system(nix: &Nix) -> Result<String, EvalError> {
    let mut cmd = nix.command(FLAKES, "eval");
    cmd.args(["--impure", "--raw", "--expr", "builtins.currentSystem"]);
    let out = run_captured(nix, cmd, "nix eval builtins.currentSystem").map_err(|f| f.1)?;
    String::from_utf8(out)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EvalError::Output {
            command: "nix eval builtins.currentSystem".into(),
            detail: "not a system name".into(),
        })
}

/// `packages` of a flake: system -> attribute names. A flake without
/// `packages` gives an empty map.
pub fn flake_packages(
    nix: &Nix,
    flake_ref: &str,
) -> Result<BTreeMap<String, Vec<String>>, EvalError> {
    let target = format!("{flake_ref}#packages");
    let mut cmd = nix.eval_command("eval", None);
    cmd.args([
        "--json",
        &target,
        "--apply",
        "builtins.mapAttrs (s: builtins.attrNames)",
    ]);
    match run_captured(nix, cmd, &format!("nix eval {target}")) {
        Ok(out) => serde_json::from_slice(&out).map_err(|e| EvalError::Output {
            command: format!("nix eval {target}"),
            detail: e.to_string(),
        }),
        Err(f) if f.0.contains("does not provide attribute") => Ok(BTreeMap::new()),
        Err(f) => Err(f.1),
    }
}

/// True when `flake_ref#attr_path` exists (`nix eval` of its type).
pub fn flake_has_attr(nix: &Nix, flake_ref: &str, attr_path: &str) -> Result<bool, EvalError> {
    let target = format!("{flake_ref}#{attr_path}");
    let mut cmd = nix.eval_command("eval", None);
    cmd.args(["--raw", &target, "--apply", "builtins.typeOf"]);
    match run_captured(nix, cmd, &format!("nix eval {target}")) {
        Ok(_) => Ok(true),
        Err(f) if f.0.contains("does not provide attribute") => Ok(false),
        Err(f) => Err(f.1),
    }
}

/// One output of a `nix build --json` entry: `out` if it has one, else the
/// first by name; `path` for store paths built as themselves.
fn built_path(entry: &serde_json::Value) -> Option<&str> {
    if let Some(outputs) = entry.get("outputs").and_then(|o| o.as_object()) {
        if let Some(out) = outputs.get("out").and_then(|v| v.as_str()) {
            return Some(out);
        }
        let mut names: Vec<&String> = outputs.keys().collect();
        names.sort();
        return names.first().and_then(|n| outputs[*n].as_str());
    }
    entry.get("path").and_then(|p| p.as_str())
}

/// The derivations Nix says failed: `builder for '/nix/store/….drv' failed`.
fn failed_derivations(stderr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in stderr.lines() {
        if let Some(start) = line.find("builder for '") {
            let rest = &line[start + "builder for '".len()..];
            if let Some(end) = rest.find('\'') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

/// Builds `targets` (label, installable) with ONE `nix build --json
/// --no-link`, so Nix schedules them together and sends foreign systems to
/// the user's remote builders (attributes of a `--file` evaluated for
/// several systems take one call per system: the system is a setting of
/// the call). Nix's own progress and errors stream to stderr. Returns one
/// store path per target, in order.
pub fn build(
    nix: &Nix,
    store_dir: &StoreDir,
    targets: &[(String, BuildTarget)],
) -> Result<Vec<StorePath>, EvalError> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let drvs = targets
        .iter()
        .map(|(_, t)| drv_path(nix, t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut calls: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for (i, (_, t)) in targets.iter().enumerate() {
        calls.entry(t.system.as_deref()).or_default().push(i);
    }
    let command = "nix build --json".to_owned();
    let mut entries: Vec<serde_json::Value> = Vec::new();
    for (system, members) in calls {
        let mut cmd = nix.eval_command("build", system);
        cmd.args(["--json", "--no-link"]);
        if nix.print_build_logs {
            cmd.arg("--print-build-logs");
        }
        cmd.arg("--");
        cmd.args(members.iter().map(|&i| &targets[i].1.installable));
        let run = run_build(nix, cmd)?;
        if !run.status.success() {
            let failed = failed_derivations(&run.stderr);
            // Nix's whole output is on the terminal already; repeat its
            // first error line only.
            let detail = run
                .stderr
                .lines()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .map(|l| l.trim_end_matches(';').to_owned())
                .unwrap_or_else(|| format!("nix exited with {}", run.status));
            let group: Vec<(String, BuildTarget)> =
                members.iter().map(|&i| targets[i].clone()).collect();
            let group_drvs: Vec<String> = members.iter().map(|&i| drvs[i].clone()).collect();
            let what = match blame(nix, &group, &group_drvs, &failed) {
                Some(labels) => labels,
                None => group
                    .iter()
                    .map(|(l, t)| format!("{l} ({t})"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            return Err(EvalError::BuildFailed { what, detail });
        }
        let stdout = run.stdout;
        let mut more: Vec<serde_json::Value> =
            serde_json::from_slice(&stdout).map_err(|e| EvalError::Output {
                command: command.clone(),
                detail: e.to_string(),
            })?;
        entries.append(&mut more);
    }
    // Nix prints results in its own order (2.8 sorts them by derivation),
    // so match them to targets by derivation path.
    let mut by_drv: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &entries {
        let drv = e.get("drvPath").and_then(|d| d.as_str());
        let out = built_path(e);
        if let (Some(drv), Some(out)) = (drv, out) {
            by_drv.insert(drv, out);
        }
    }
    drvs.iter()
        .zip(targets)
        .map(|(drv, (_, target))| {
            let path = by_drv.get(drv.as_str()).ok_or_else(|| EvalError::Output {
                command: command.clone(),
                detail: format!("no result for {target} ({drv})"),
            })?;
            store_dir.parse(path).map_err(|e| EvalError::Output {
                command: command.clone(),
                detail: e.to_string(),
            })
        })
        .collect()
}

/// What one `nix build` did.
struct BuildRun {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    /// Without terminal escapes.
    stderr: String,
}

/// Runs one `nix build`, forwarding its stderr as it comes and keeping it
/// to explain a failure.
fn run_build(nix: &Nix, mut cmd: Command) -> Result<BuildRun, EvalError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(nix.missing())?;
    let stderr = child.stderr.take();
    let forward = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut kept = String::new();
        if let Some(stderr) = stderr {
            for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(io::stderr(), "{line}");
                kept.push_str(&line);
                kept.push('\n');
            }
        }
        kept
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_end(&mut stdout);
    }
    let status = child.wait().map_err(nix.missing())?;
    let stderr = strip_ansi(&forward.join().unwrap_or_default());
    Ok(BuildRun {
        status,
        stdout,
        stderr,
    })
}

/// The derivation a flake output or a file's attribute evaluates to
/// (`nix eval --raw X.drvPath`).
fn drv_path(nix: &Nix, target: &BuildTarget) -> Result<String, EvalError> {
    let what = format!("{}.drvPath", target.installable);
    let mut cmd = nix.eval_command("eval", target.system.as_deref());
    cmd.args(["--raw", "--", &what]);
    let out = run_captured(nix, cmd, &format!("nix eval {what}")).map_err(|f| match &nix.file {
        // What Nix says of an attribute path a file's value lacks.
        Some(file) if f.0.contains("in selection path") && f.0.contains("not found") => {
            EvalError::MissingFileAttr {
                attr: target.installable.clone(),
                file: file.clone(),
                system: target
                    .system
                    .as_ref()
                    .map(|s| format!(" (evaluated for {s})"))
                    .unwrap_or_default(),
            }
        }
        _ => f.1,
    })?;
    String::from_utf8(out)
        .ok()
        .filter(|s| s.ends_with(".drv"))
        .ok_or_else(|| EvalError::Output {
            command: format!("nix eval {what}"),
            detail: "not a derivation path".into(),
        })
}

/// Which targets a failed derivation belongs to: the closure of each
/// target's derivation is asked of Nix (nothing is built).
fn blame(
    nix: &Nix,
    targets: &[(String, BuildTarget)],
    drvs: &[String],
    failed: &[String],
) -> Option<String> {
    if failed.is_empty() {
        return None;
    }
    let mut guilty = Vec::new();
    for ((label, target), drv) in targets.iter().zip(drvs) {
        let mut cmd = nix.command(FLAKES, "path-info");
        cmd.args(["--derivation", "--recursive", "--", drv]);
        let Ok(out) = run_captured(nix, cmd, "nix path-info --derivation") else {
            continue;
        };
        let text = String::from_utf8_lossy(&out);
        if failed.iter().any(|f| text.lines().any(|l| l.trim() == f)) {
            guilty.push(format!("{label} ({target})"));
        }
    }
    (!guilty.is_empty()).then(|| guilty.join(", "))
}

/// The command for messages, with at most two roots spelled out.
fn describe_command(program: &str, roots: &[StorePath]) -> String {
    let mut command = format!("{program} path-info --json --recursive");
    for root in roots.iter().take(2) {
        command.push(' ');
        command.push_str(root.as_str());
    }
    if roots.len() > 2 {
        command.push_str(&format!(" (and {} more)", roots.len() - 2));
    }
    command
}

/// The path in Nix's `path '/nix/store/…' is not valid`, the error every Nix
/// since 2.0 gives for a store path that is not in the store.
fn invalid_path_in(stderr: &str) -> Option<String> {
    const START: &str = "path '";
    const END: &str = "' is not valid";
    stderr.lines().find_map(|line| {
        let start = line.find(START)? + START.len();
        let len = line[start..].find(END)?;
        Some(line[start..start + len].to_owned())
    })
}

/// Drops terminal escape sequences (`ESC [ … letter`), which Nix prints
/// around paths when it believes stderr is a terminal.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// The last `n` non-empty lines, trimmed, or `None` if there are none.
fn last_lines(text: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    (!tail.is_empty()).then(|| tail.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_each_platform_once() {
        let store = StoreDir::default();
        // A nix that cannot run: none of these may ask it anything.
        let nix = Nix {
            program: PathBuf::from("/nonexistent/nix"),
            ..Nix::default()
        };
        let hello = format!("{}/{}-hello", store.as_str(), "a".repeat(32));
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let args = |installable, systems: &'static [&'static str], platforms: Vec<String>| {
            (installable, strings(systems), platforms)
        };
        let run = |(installable, systems, platforms): (Option<&str>, Vec<String>, Vec<String>),
                   closure_file| {
            targets(
                TargetArgs {
                    installable,
                    systems: &systems,
                    platforms: &platforms,
                    closure_file,
                    file: false,
                },
                &store,
                &nix,
            )
        };
        let both = run(
            args(
                Some(hello.as_str()),
                &["x86_64-linux"],
                vec![format!("linux/arm64={hello}")],
            ),
            false,
        )
        .unwrap();
        let platforms: Vec<String> = both.keys().map(|p| p.to_string()).collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(
            both.values().next().unwrap().system.as_deref(),
            Some("x86_64-linux")
        );
        assert_eq!(both.values().nth(1).unwrap().system, None);

        let twice = vec![
            format!("linux/arm64={hello}"),
            format!("aarch64-linux={hello}"),
        ];
        assert!(matches!(
            run(args(None, &[], twice), false),
            Err(TargetError::Twice { .. })
        ));
        assert!(matches!(
            run(args(None, &["x86_64-linux"], vec![]), false),
            Err(TargetError::SystemWithoutInstallable)
        ));
        assert!(matches!(
            run(args(None, &[], vec![]), false),
            Err(TargetError::Nothing)
        ));
        assert!(matches!(
            run(args(None, &[], vec!["linux/amd64".into()]), false),
            Err(TargetError::PlatformSyntax(_))
        ));
        assert!(matches!(
            run(args(None, &[], vec![format!("linux/sparc={hello}")]), false),
            Err(TargetError::Platform { .. })
        ));
        assert!(matches!(
            run(args(Some(hello.as_str()), &["vax-vms"], vec![]), false),
            Err(TargetError::UnknownSystem(_))
        ));
        assert!(matches!(
            run(args(Some(hello.as_str()), &[], vec![]), true),
            Err(TargetError::NoSystem(_))
        ));
        assert!(matches!(
            run(args(Some(""), &["x86_64-linux"], vec![]), false),
            Err(TargetError::Installable { .. })
        ));
        // Every one of them is the user's to fix.
        let e = run(args(None, &[], vec![]), false).unwrap_err();
        assert!(e.is_usage());
    }

    /// `nix` from `PATH`, or `None` with a printed reason; under `CI=true` a
    /// missing Nix fails the test instead.
    fn nix_or_skip(test: &str) -> Option<Nix> {
        let nix = Nix::default();
        let works = Command::new(&nix.program)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Some(nix);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: `nix` is not on PATH, and CI=true does not allow skipping");
        }
        eprintln!("skipping {test}: `nix` is not on PATH");
        None
    }

    /// Adds two text files to the store, the second referring to the first,
    /// and returns the second: no builder and no nixpkgs needed.
    fn add_text_files(nix: &Nix) -> StorePath {
        let expr = r#"
            let a = builtins.toFile "nixoci-eval-test-a" "a";
            in builtins.toFile "nixoci-eval-test-b" "refers to ${a}"
        "#;
        let out = Command::new(&nix.program)
            .args(["--extra-experimental-features", "nix-command"])
            .args(["eval", "--raw", "--expr", expr])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        StorePath::from_absolute(std::str::from_utf8(&out.stdout).unwrap().trim()).unwrap()
    }

    #[test]
    fn reads_a_real_closure() {
        let Some(nix) = nix_or_skip("reads_a_real_closure") else {
            return;
        };
        let b = add_text_files(&nix);
        let store_dir = StoreDir::new(b.store_dir()).unwrap();
        let closure = path_info_closure(&nix, &store_dir, std::slice::from_ref(&b)).unwrap();
        assert_eq!(closure.paths.len(), 2, "{closure:?}");
        let info = &closure.paths[&b];
        assert_eq!(info.references.len(), 1);
        let a = info.references.iter().next().unwrap();
        assert_eq!(a.name(), "nixoci-eval-test-a");
        assert!(closure.paths[a].references.is_empty());
        for info in closure.paths.values() {
            assert!(info.nar_hash.starts_with("sha256-"), "{info:?}");
            assert!(info.nar_size > 0);
        }
    }

    #[test]
    fn a_missing_path_is_not_in_store() {
        let Some(nix) = nix_or_skip("a_missing_path_is_not_in_store") else {
            return;
        };
        let nope = "/nix/store/00000000000000000000000000000000-nope";
        let root = StorePath::from_absolute(nope).unwrap();
        match path_info_closure(&nix, &StoreDir::default(), &[root]) {
            Err(e @ EvalError::NotInStore(_)) => {
                assert!(e.is_usage());
                assert_eq!(
                    e.to_string(),
                    format!("{nope} is not a valid path in the Nix store")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_program_is_nix_missing() {
        let nix = Nix {
            program: PathBuf::from("/nonexistent/nixoci-test/nix"),
            ..Nix::default()
        };
        let root =
            StorePath::from_absolute("/nix/store/00000000000000000000000000000000-x").unwrap();
        match path_info_closure(&nix, &StoreDir::default(), &[root]) {
            Err(e @ EvalError::NixMissing { .. }) => {
                assert!(e.is_usage());
                let EvalError::NixMissing { source, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
                assert!(!e.to_string().contains(&source.to_string()), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // No roots: nothing to ask, and Nix is not run.
        let empty = path_info_closure(&nix, &StoreDir::default(), &[]).unwrap();
        assert!(empty.paths.is_empty());
    }

    #[test]
    fn reads_nix_errors() {
        let nix_2_8 = "don't know how to build these paths:\n  /nix/store/00000000000000000000000000000000-nope\nerror: path '/nix/store/00000000000000000000000000000000-nope' is not valid\n";
        let coloured = "\u{1b}[31;1merror:\u{1b}[0m path '\u{1b}[35;1m/nix/store/00000000000000000000000000000000-nope\u{1b}[0m' is not valid";
        for stderr in [nix_2_8, coloured] {
            assert_eq!(
                invalid_path_in(&strip_ansi(stderr)).as_deref(),
                Some("/nix/store/00000000000000000000000000000000-nope")
            );
        }
        assert_eq!(invalid_path_in("error: cannot connect to socket"), None);
        let long = "1\n2\n\n3\n4\n5\n6\n  7  \n";
        assert_eq!(last_lines(long, 5).as_deref(), Some("3\n4\n5\n6\n  7"));
        assert_eq!(last_lines("\n \n", 5), None);
    }

    #[test]
    fn commands_in_messages_stay_short() {
        let roots: Vec<StorePath> = (0..4)
            .map(|i| {
                StorePath::from_absolute(&format!("/nix/store/{}-p{i}", "0".repeat(32))).unwrap()
            })
            .collect();
        let command = describe_command("nix", &roots);
        assert!(command.ends_with("-p1 (and 2 more)"), "{command}");
    }
}
