//! A real Garage (the S3 server) for the S3 tests: one node on 127.0.0.1
//! with a generated config (S3 API, web endpoint, admin API and RPC on
//! free ports, a fresh `rpc_secret`, sqlite metadata and data in the
//! test's folder, `replication_factor = 1`), its layout applied, an access
//! key imported, and a bucket `localhost` served by the web endpoint:
//! Garage picks a website's bucket by the `Host` header, so
//! `http://localhost:WEBPORT/v2/…` is that bucket, which is how skopeo and
//! podman pull through it. Stopped by its PID when dropped.
//!
//! The binary is `NIXOCI_TEST_GARAGE`, else `garage/bin/garage` under
//! `$NIXOCI_DEV_CACHE` (default `${XDG_CACHE_HOME:-$HOME/.cache}/nixoci-dev`),
//! where `scripts/setup` installs it; `require(&["garage"])` checks it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::publish::{free_port, wait_for_port, Server};
use super::{run_bounded, stderr};

/// The bucket the web endpoint serves at `http://localhost:WEBPORT/`.
pub const WEB_BUCKET: &str = "localhost";
/// Garage's region, as the config below sets it.
pub const REGION: &str = "garage";

/// `NIXOCI_TEST_GARAGE`, else the binary `scripts/setup` installs.
pub fn garage_binary() -> Result<PathBuf, String> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = nonempty("NIXOCI_TEST_GARAGE") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NIXOCI_TEST_GARAGE={} (not a file)", p.display()))
        };
    }
    let cache = nonempty("NIXOCI_DEV_CACHE")
        .map(PathBuf::from)
        .or_else(|| nonempty("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("nixoci-dev")))
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache/nixoci-dev")))
        .ok_or("garage (neither NIXOCI_TEST_GARAGE nor HOME is set)")?;
    let p = cache.join("garage/bin/garage");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("garage at {}", p.display()))
    }
}

/// `n` random-looking hex digits, different in every call and process.
fn fresh_hex(n: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::new();
    let mut round = 0u32;
    while out.len() < n {
        let mut h = Sha256::new();
        h.update(std::process::id().to_le_bytes());
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(round.to_le_bytes());
        // The kernel's randomness: a fresh UUID at each read.
        h.update(fs::read("/proc/sys/kernel/random/uuid").expect("reading a random UUID"));
        for b in h.finalize() {
            out.push_str(&format!("{b:02x}"));
        }
        round += 1;
    }
    out.truncate(n);
    out
}

/// A running single-node Garage.
pub struct Garage {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub s3_port: u16,
    pub web_port: u16,
    pub admin_port: u16,
    /// The imported access key, allowed to read, write and own every
    /// bucket [`Garage::create_bucket`] makes.
    pub key_id: String,
    pub secret: String,
    binary: PathBuf,
    _server: Server,
}

impl Garage {
    /// Starts Garage in `dir` (created) and makes the bucket
    /// [`WEB_BUCKET`] with website access. Callers `require(&["garage"])`
    /// first.
    pub fn start(dir: &Path) -> Garage {
        let binary = garage_binary().unwrap_or_else(|e| panic!("missing {e}"));
        fs::create_dir_all(dir).expect("creating the garage dir");
        let (rpc_port, s3_port, web_port, admin_port) =
            (free_port(), free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        let text = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[s3_web]
bind_addr = "127.0.0.1:{web_port}"
root_domain = ".web.garage.localhost"
index = "index.html"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin}"
"#,
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = fresh_hex(64),
            admin = fresh_hex(32),
        );
        fs::write(&config, text).expect("writing garage.toml");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod garage.toml");
        let log = dir.join("garage.log");
        let server = Server::spawn(
            "garage",
            Command::new(&binary)
                .arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=info"),
            &log,
        );
        wait_for_port(rpc_port, "garage (RPC)", &log);
        let g = Garage {
            dir: dir.to_owned(),
            config,
            log,
            s3_port,
            web_port,
            admin_port,
            key_id: format!("GK{}", fresh_hex(24)),
            secret: fresh_hex(64),
            binary,
            _server: server,
        };
        // The node's id, then its role in the layout.
        let id = g.retry("garage node id", &["node", "id", "-q"]);
        let id = String::from_utf8_lossy(&id.stdout)
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(!id.is_empty(), "garage node id printed nothing");
        g.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.cli_ok(&["layout", "apply", "--version", "1"]);
        let (key_id, secret) = (g.key_id.clone(), g.secret.clone());
        g.retry(
            "garage key import",
            &[
                "key",
                "import",
                "-n",
                "nixoci-test",
                "--yes",
                &key_id,
                &secret,
            ],
        );
        wait_for_port(s3_port, "garage (S3 API)", &g.log);
        wait_for_port(web_port, "garage (web)", &g.log);
        g.create_bucket(WEB_BUCKET, true);
        g
    }

    /// `garage -c CONFIG ARGS…`, bounded in time.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&self.config).args(args);
        run_bounded(cmd, Duration::from_secs(60), "garage")
    }

    /// [`Garage::cli`], failing the test unless it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> Output {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "garage {} failed: {}\nstdout: {}\nlog:\n{}",
            args.join(" "),
            stderr(&o),
            String::from_utf8_lossy(&o.stdout),
            fs::read_to_string(&self.log).unwrap_or_default()
        );
        o
    }

    /// [`Garage::cli`] until it succeeds, for 30 s at most (the node
    /// takes a moment to be ready after it listens, and after a layout
    /// change).
    fn retry(&self, what: &str, args: &[&str]) -> Output {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = self.cli(args);
            if o.status.success() {
                return o;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what} did not succeed within 30 s: {}\nlog:\n{}",
                    stderr(&o),
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates `name`, lets the test key read, write and own it, and with
    /// `website` serves it on the web endpoint (index document
    /// `index.html`).
    pub fn create_bucket(&self, name: &str, website: bool) {
        self.retry("garage bucket create", &["bucket", "create", name]);
        self.cli_ok(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.key_id,
        ]);
        if website {
            self.cli_ok(&["bucket", "website", "--allow", name]);
        }
    }

    /// `http://127.0.0.1:S3PORT`, for `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `localhost:WEBPORT`: the registry [`WEB_BUCKET`] serves, for
    /// `skopeo copy docker://localhost:WEBPORT/NAME:TAG`.
    pub fn web_addr(&self) -> String {
        format!("localhost:{}", self.web_port)
    }

    /// Sets the test key, the endpoint and the region on `cmd` (and
    /// points the AWS shared files nowhere, so the user's are not read).
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_REGION", REGION)
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-credentials"),
            )
            .env("AWS_CONFIG_FILE", self.dir.join("no-config"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
    }

    /// A library client for `s3://BUCKET[/PREFIX]` with the test key.
    pub fn bucket(&self, url: &str) -> nixoci::publish::s3::Bucket {
        use nixoci::publish::s3::{Bucket, S3Config, S3Credentials, S3Url};
        let config = S3Config {
            endpoint: url::Url::parse(&self.endpoint()).expect("an endpoint URL"),
            region: REGION.into(),
            credentials: S3Credentials::new(&self.key_id, &self.secret, None, "the test"),
            path_style: true,
        };
        let url = S3Url::parse(url).expect("an s3:// URL");
        Bucket::new(
            &config,
            &url,
            nixoci::publish::client::ClientOptions::default(),
            Box::new(|m| eprintln!("s3: {m}")),
        )
        .expect("a bucket client")
    }

    /// GET `path` from the web endpoint with `Host: localhost`: status,
    /// headers (lowercase names) and body.
    pub fn web_get(&self, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        http_get(self.web_port, &self.web_addr(), path)
    }
}

/// GET `path` from 127.0.0.1:`port` with `Host: host`: status, headers
/// (lowercase names) and body.
pub fn http_get(port: u16, host: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending a request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

/// The body of a chunked HTTP answer.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}
