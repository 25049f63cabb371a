//! Container runtimes for the runtime tests: podman and Docker run images
//! that the binary wrote into OCI layouts. Each keeps its state in a
//! temporary folder of its own and leaves nothing running:
//!
//! - [`Podman`] has no daemon: every command gets the same private
//!   `--root`, `--runroot` and `--tmpdir`, runc, cgroupfs, and
//!   `tests/common/containers.conf` (no default rlimits) through
//!   `CONTAINERS_CONF`.
//! - [`Docker`] starts its own containerd and dockerd on unix sockets in its
//!   folder (no TCP, no bridge, no iptables) and stops both by PID when
//!   dropped, dockerd first. Images get in through
//!   `skopeo copy oci:… docker-daemon:…`: Docker 20.10 loads
//!   docker-archive tars only.
//!
//! Both store images with the vfs driver: podman's overlay driver leaves its
//! folder bind-mounted after each command, a mount a test that ended early
//! would leave behind. Every command is bounded in time.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{oci_ref, require, run_bounded, tempdir, which, Run};

/// The limit of one podman, docker or skopeo command.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// The limit for containerd or dockerd to get ready, and to stop after
/// SIGTERM (then it is killed).
const DAEMON_LIMIT: Duration = Duration::from_secs(30);

/// Runs `cmd` (stdin closed) within [`COMMAND_LIMIT`].
fn bounded(mut cmd: Command, what: &str) -> Run {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    cmd.stdin(Stdio::null());
    let out = run_bounded(cmd, COMMAND_LIMIT, what);
    Run {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What the tests do with either runtime. The commands come from
/// [`Runtime::command`]; the words are the same in podman and docker.
pub trait Runtime {
    /// `podman` or `docker`, for messages.
    fn name(&self) -> &'static str;

    /// The client, talking to this instance only.
    fn command(&self) -> Command;

    /// Puts the image `tag` of a layout (the host's platform, from an
    /// index) into the runtime as `name`; returns the name it knows it by.
    fn load(&self, layout: &Path, tag: &str, name: &str) -> String;

    /// `os/architecture` of a stored image.
    #[track_caller]
    fn platform(&self, image: &str) -> String {
        let mut c = self.command();
        c.args([
            "image",
            "inspect",
            "--format",
            "{{.Os}}/{{.Architecture}}",
            image,
        ]);
        bounded(c, &format!("{} image inspect", self.name()))
            .success()
            .stdout
            .trim()
            .to_string()
    }

    /// Runs `image` without a network, removing the container afterwards:
    /// its own entrypoint with `args`, or `entrypoint` with `args`.
    fn run(&self, image: &str, entrypoint: Option<&str>, args: &[&str]) -> Run {
        let mut c = self.command();
        // An image missing from the store is an error, never a pull from
        // Docker Hub.
        c.args(["run", "--rm", "--pull", "never", "--network", "none"]);
        if let Some(e) = entrypoint {
            c.args(["--entrypoint", e]);
        }
        c.arg(image).args(args);
        bounded(c, &format!("{} run", self.name()))
    }
}

/// The podman configuration of the tests.
pub fn containers_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/containers.conf")
}

/// Rootful podman with storage of its own.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// `None`, after printing why, when podman, runc or skopeo is missing
    /// or we are not root; under `CI=true` that fails the test instead.
    pub fn new() -> Option<Podman> {
        if !require(&["root", "podman", "runc", "skopeo"]) {
            return None;
        }
        Some(Podman { dir: tempdir() })
    }
}

impl Runtime for Podman {
    fn name(&self) -> &'static str {
        "podman"
    }

    /// `podman` with this instance's storage and the tests' settings.
    fn command(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", containers_conf())
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        c
    }

    /// Copies the image `tag` of a layout (the host's platform, from an
    /// index) into this podman's storage as `name` (`repo:tag`, stored as
    /// `localhost/repo:tag`); returns the name podman knows it by.
    ///
    /// skopeo writes it: `podman pull oci:DIR:TAG` names the image after
    /// the folder, which fails on a temporary folder's capital letters.
    fn load(&self, layout: &Path, tag: &str, name: &str) -> String {
        let d = self.dir.path();
        let stored = format!("localhost/{name}");
        let mut c = Command::new("skopeo");
        c.env("CONTAINERS_CONF", containers_conf())
            .args(["copy", "--quiet"])
            .arg(oci_ref(layout, tag))
            .arg(format!(
                "containers-storage:[vfs@{}+{}]{stored}",
                d.join("root").display(),
                d.join("runroot").display()
            ));
        bounded(c, "skopeo copy to containers-storage").success();
        stored
    }
}

/// The docker client: Debian's `/usr/bin/docker` (the client of the
/// dockerd we run) when present, else the first `docker` on `PATH`.
pub fn docker_cli() -> PathBuf {
    let debian = Path::new("/usr/bin/docker");
    if debian.is_file() {
        return debian.into();
    }
    which("docker").unwrap_or_else(|| "docker".into())
}

/// A containerd and a dockerd of our own, on unix sockets in a temporary
/// folder; both stopped when dropped.
pub struct Docker {
    dir: tempfile::TempDir,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    cli: PathBuf,
}

impl Docker {
    /// Starts containerd, then dockerd, and waits until dockerd answers
    /// (within [`DAEMON_LIMIT`] each). `None`, after printing why, when a
    /// program is missing or we are not root; under `CI=true` that fails the
    /// test instead.
    pub fn start() -> Option<Docker> {
        if !require(&["root", "containerd", "dockerd", "docker", "runc", "skopeo"]) {
            return None;
        }
        let mut docker = Docker {
            dir: tempdir(),
            containerd: None,
            dockerd: None,
            cli: docker_cli(),
        };
        let d = docker.dir.path().to_path_buf();
        let p = |name: &str| d.join(name).display().to_string();

        // Its own root, state, sockets and opt folder; no CRI plugin (it
        // would look for CNI and serve Kubernetes).
        let containerd_conf = d.join("containerd.toml");
        fs::write(
            &containerd_conf,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {:?}\n",
                p("containerd/root"),
                p("containerd/state"),
                p("containerd.sock"),
                p("containerd.sock.ttrpc"),
                p("containerd/opt"),
            ),
        )
        .expect("writing containerd.toml");
        docker.containerd = Some(spawn(
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(&containerd_conf),
            &d.join("containerd.log"),
        ));
        docker.wait_ready("containerd", &d.join("containerd.log"), || {
            UnixStream::connect(d.join("containerd.sock")).is_ok()
        });

        // No /etc/docker/daemon.json, and the daemon's key in our folder,
        // not /etc/docker/key.json.
        let daemon_json = d.join("daemon.json");
        fs::write(
            &daemon_json,
            format!("{{\"deprecated-key-path\": {:?}}}\n", p("key.json")),
        )
        .expect("writing daemon.json");
        docker.dockerd = Some(spawn(
            "dockerd",
            Command::new("dockerd")
                .arg("--config-file")
                .arg(&daemon_json)
                .arg("--data-root")
                .arg(d.join("data"))
                .arg("--exec-root")
                .arg(d.join("exec"))
                .arg("--pidfile")
                .arg(d.join("dockerd.pid"))
                .arg("-H")
                .arg(docker.host())
                .arg("--containerd")
                .arg(d.join("containerd.sock"))
                .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
                .args(["--storage-driver", "vfs", "--shutdown-timeout", "5"]),
            &d.join("dockerd.log"),
        ));
        let sock = docker.socket();
        docker.wait_ready("dockerd", &d.join("dockerd.log"), || ping(&sock));
        Some(docker)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// The socket of this harness's containerd.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr` talking to this harness's containerd, in a namespace of the
    /// tests' own (dockerd keeps to `moby`).
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "nixoci-test"]);
        c
    }

    /// `unix://…/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Waits until `ready()`; fails the test, with the daemon's log, when
    /// the daemon exits or [`DAEMON_LIMIT`] passes first.
    fn wait_ready(&mut self, name: &str, log: &Path, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + DAEMON_LIMIT;
        loop {
            if ready() {
                return;
            }
            let child = match name {
                "containerd" => self.containerd.as_mut(),
                _ => self.dockerd.as_mut(),
            };
            if let Some(status) = child.and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "{name} exited ({status}) before it was ready; its log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} was not ready within {DAEMON_LIMIT:?}; its log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Runtime for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// The docker client talking to this dockerd only.
    fn command(&self) -> Command {
        let mut c = Command::new(&self.cli);
        c.env("DOCKER_CONFIG", self.dir.path().join("client"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .arg("-H")
            .arg(self.host());
        c
    }

    /// Copies the image `tag` of a layout (the host's platform, from an
    /// index) into dockerd as `name` (`repo:tag`), the name it knows it by.
    fn load(&self, layout: &Path, tag: &str, name: &str) -> String {
        // skopeo 1.9 does not read DOCKER_HOST; the flag names the daemon.
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-daemon-host"])
            .arg(self.host())
            .arg(oci_ref(layout, tag))
            .arg(format!("docker-daemon:{name}"));
        bounded(c, "skopeo copy to docker-daemon").success();
        name.to_owned()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // dockerd first: it stops its containers and unmounts, then
        // containerd (whose shims are gone with the containers).
        for (name, child) in [
            ("dockerd", &mut self.dockerd),
            ("containerd", &mut self.containerd),
        ] {
            if let Some(c) = child.as_mut() {
                stop(name, c);
            }
        }
        if std::thread::panicking() {
            for log in ["containerd.log", "dockerd.log"] {
                let text = fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- last lines of {log}\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
            }
        }
    }
}

/// Starts a daemon with stdout and stderr to `log`.
fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Child {
    let out = fs::File::create(log).expect("creating a daemon log");
    let err = out.try_clone().expect("cloning a log handle");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// True when dockerd answers `GET /_ping` on `sock`.
fn ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: dockerd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
}

/// SIGTERM to our child, then waits for it; SIGKILL after [`DAEMON_LIMIT`].
fn stop(name: &str, child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    terminate(child);
    let deadline = Instant::now() + DAEMON_LIMIT;
    loop {
        match child.try_wait() {
            Ok(None) if Instant::now() <= deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                eprintln!("{name} did not stop within {DAEMON_LIMIT:?} of SIGTERM: killing it");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(Some(_)) | Err(_) => return,
        }
    }
}

/// Sends SIGTERM to a child process of ours that has not been reaped.
#[allow(unsafe_code)] // kill(2): std only sends SIGKILL, and dockerd needs SIGTERM to stop its containers and unmount
fn terminate(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) touches no memory of ours. The PID is our child's and
    // the caller has not reaped it (try_wait returned None), so it cannot
    // have been reused by another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}
