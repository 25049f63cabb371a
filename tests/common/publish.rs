//! Helpers for the publish tests: free ports, servers stopped by PID when
//! dropped, layouts built by the real binary, a Distribution registry,
//! nginx, a loopback HTTP proxy that can demand bearer tokens (and issue
//! them) or fail the first attempt of every request, and a loopback
//! registry that trickles its answers. The binary, `require` and the
//! bounded runner are the parent module's.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::{nixoci, ok_json, output_of, run_bounded, stderr};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct-horse-battery";

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port on 127.0.0.1")
}

/// Waits until 127.0.0.1:`port` accepts connections.
pub fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on 127.0.0.1:{port} within 20 s; its log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// A child process killed (by its PID) and reaped when dropped.
pub struct Server {
    child: Child,
    pub name: &'static str,
}

impl Server {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Server {
        let out = fs::File::create(log).expect("creating a server log");
        let err = out.try_clone().expect("cloning a log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Server { child, name }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `build` arguments for the two-platform image of the golden fixture tree
/// (no Nix: `--closure-json` and `--store-root`), without `-o` and `--tag`.
pub fn golden_build_args() -> Vec<String> {
    let root = repo_root().join("tests/fixtures/golden");
    let path = |p: PathBuf| p.to_str().expect("utf-8 path").to_owned();
    vec![
        "build".into(),
        "--platform".into(),
        "linux/amd64=/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello".into(),
        "--platform".into(),
        "linux/arm64=/nix/store/2c3d4f5g6h7i8j9k0l1m2n3p4q5r6s7v-hello".into(),
        "--closure-json".into(),
        path(root.join("closure.json")),
        "--store-root".into(),
        path(root.join("root")),
    ]
}

/// A two-platform layout of the golden fixture tree, tagged `tag`.
pub fn golden_layout(dir: &Path, tag: &str) -> PathBuf {
    // `build -o` wants the output's folder to exist.
    fs::create_dir_all(dir).expect("creating the layout's folder");
    let out = dir.join("golden.oci");
    let cache = dir.join("cache");
    let o = output_of(
        nixoci()
            .args(golden_build_args())
            .args(["--tag", tag, "-o", out.to_str().expect("utf-8 path")])
            // A layer cache of the test's own.
            .env("XDG_CACHE_HOME", &cache),
    );
    assert!(o.status.success(), "nixoci build failed:\n{}", stderr(&o));
    out
}

/// `build` of the golden two-platform image with `--env V=<v>` (a new
/// config per platform for each `v`, the same layers), tagged `app:1`,
/// into `dir/app.oci` with the layer cache `dir/cache`, and `extra`.
pub fn golden_variant(dir: &Path, v: &str, extra: &[&str]) -> (PathBuf, Output) {
    golden_variant_with(dir, v, extra, |_| {})
}

/// [`golden_variant`], with `setup` given the command before it runs (a
/// server's environment).
pub fn golden_variant_with(
    dir: &Path,
    v: &str,
    extra: &[&str],
    setup: impl FnOnce(&mut Command),
) -> (PathBuf, Output) {
    fs::create_dir_all(dir).expect("mkdir");
    let out = dir.join("app.oci");
    let mut cmd = nixoci();
    cmd.args(golden_build_args())
        .args(["--env", &format!("V={v}"), "--tag", "app:1", "-o"])
        .arg(&out)
        .args(extra)
        .env("XDG_CACHE_HOME", dir.join("cache"));
    setup(&mut cmd);
    let o = output_of(&mut cmd);
    (out, o)
}

/// Deterministic bytes that gzip cannot shrink.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A two-platform layout whose platforms share one layer of `size` bytes
/// of noise, from a fake store tree.
pub fn big_layout(dir: &Path, size: usize, tag: &str) -> PathBuf {
    let store_root = dir.join("store-root");
    let store = store_root.join("nix/store");
    // Names and hashes follow the content, as in a real store.
    let data = format!("/nix/store/3a4b5c6d7f8g9h0i1j2k3l4m5n6p7q8r-bigdata-{size}");
    let data = data.as_str();
    let amd = "/nix/store/4a5b6c7d8f9g0h1i2j3k4l5m6n7p8q9r-app-amd64";
    let arm = "/nix/store/5a6b7c8d9f0g1h2i3j4k5l6m7n8p9q0r-app-arm64";
    fs::create_dir_all(store.join(&data[11..])).expect("creating the fake store");
    let bytes = noise(size, 7);
    fs::write(store.join(&data[11..]).join("data.bin"), &bytes).expect("writing noise");
    for (p, text) in [(amd, "amd64\n"), (arm, "arm64\n")] {
        fs::create_dir_all(store.join(&p[11..])).expect("creating the fake store");
        fs::write(store.join(&p[11..]).join("name"), text).expect("writing a file");
    }
    let hash = |s: &str| {
        let mut seed = s.as_bytes().to_vec();
        seed.extend_from_slice(&sha_of(&bytes));
        format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(sha_of(&seed))
        )
    };
    let closure = serde_json::json!([
        {"path": data, "narHash": hash(data), "narSize": size + 200, "references": []},
        {"path": amd, "narHash": hash(amd), "narSize": 300, "references": [data]},
        {"path": arm, "narHash": hash(arm), "narSize": 300, "references": [data]},
    ]);
    let closure_file = dir.join("closure.json");
    fs::write(&closure_file, closure.to_string()).expect("writing the closure");
    let out = dir.join("big.oci");
    let cache = dir.join("cache");
    let o = output_of(
        nixoci()
            .args([
                "build",
                "--platform",
                &format!("linux/amd64={amd}"),
                "--platform",
                &format!("linux/arm64={arm}"),
                "--closure-json",
                closure_file.to_str().expect("utf-8 path"),
                "--store-root",
                store_root.to_str().expect("utf-8 path"),
                "--level",
                "1",
                "--tag",
                tag,
                "-o",
                out.to_str().expect("utf-8 path"),
            ])
            // A layer cache of the test's own.
            .env("XDG_CACHE_HOME", &cache),
    );
    assert!(
        o.status.success(),
        "nixoci build of the big layout failed:\n{}",
        stderr(&o)
    );
    out
}

fn sha_of(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

/// The digests a layout's tag reaches: the root, and every blob file.
pub fn layout_digests(layout: &Path) -> (String, Vec<String>) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("reading index.json"))
            .expect("index.json is JSON");
    let root = index["manifests"][0]["digest"]
        .as_str()
        .expect("a digest in index.json")
        .to_owned();
    let mut blobs: Vec<String> = fs::read_dir(layout.join("blobs/sha256"))
        .expect("reading blobs")
        .map(|e| {
            e.expect("a blob entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| !n.starts_with('.'))
        .collect();
    blobs.sort();
    (root, blobs)
}

/// `skopeo copy --all` from a plain-HTTP loopback registry into a layout.
pub fn skopeo_pull(reference: &str, creds: Option<&str>, dest: &Path) -> Output {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--src-tls-verify=false",
    ]);
    if let Some(c) = creds {
        cmd.args(["--src-creds", c]);
    }
    cmd.arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:pulled", dest.display()));
    run_bounded(cmd, Duration::from_secs(120), "skopeo copy")
}

/// `skopeo inspect` of one platform; returns the JSON.
pub fn skopeo_inspect(reference: &str, creds: Option<&str>, arch: &str) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "inspect",
        "--tls-verify=false",
        "--override-os",
        "linux",
        "--override-arch",
        arch,
    ]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    cmd.arg(format!("docker://{reference}"));
    let o = run_bounded(cmd, Duration::from_secs(60), "skopeo inspect");
    ok_json(&o, "skopeo inspect")
}

/// Debian's Distribution registry on 127.0.0.1, storing in `dir`.
pub struct Registry {
    pub port: u16,
    pub log: PathBuf,
    _server: Server,
}

impl Registry {
    /// With `htpasswd`, basic auth for [`USER`]/[`PASSWORD`].
    pub fn start(dir: &Path, htpasswd: bool) -> Registry {
        fs::create_dir_all(dir).expect("creating the registry dir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: nixoci-test\n",
            dir.join("data").display()
        );
        if htpasswd {
            let o = run_bounded(
                {
                    let mut c = Command::new("htpasswd");
                    c.args(["-Bbn", USER, PASSWORD]);
                    c
                },
                Duration::from_secs(30),
                "htpasswd",
            );
            assert!(o.status.success(), "htpasswd failed: {}", stderr(&o));
            fs::write(dir.join("htpasswd"), &o.stdout).expect("writing htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: nixoci-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        let config_file = dir.join("config.yml");
        fs::write(&config_file, config).expect("writing the registry config");
        let log = dir.join("registry.log");
        let server = Server::spawn(
            "docker-registry",
            Command::new("docker-registry")
                .arg("serve")
                .arg(&config_file),
            &log,
        );
        wait_for_port(port, "docker-registry", &log);
        Registry {
            port,
            log,
            _server: server,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's access-log lines (`"METHOD /path HTTP/1.1" status`).
    pub fn access_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" HTTP/1.1\" "))
            .map(str::to_owned)
            .collect()
    }
}

/// How many of the access-log `lines` hold `needle`.
pub fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// nginx on 127.0.0.1 with a server block that includes `snippet`.
pub struct Nginx {
    pub port: u16,
    _server: Server,
}

impl Nginx {
    pub fn start(dir: &Path, snippet: &Path) -> Nginx {
        fs::create_dir_all(dir).expect("creating the nginx dir");
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n    access_log {d}/access.log;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    server {{\n        listen 127.0.0.1:{port};\n        include {};\n    }}\n}}\n",
            snippet.display()
        );
        let conf_file = dir.join("nginx.conf");
        fs::write(&conf_file, conf).expect("writing nginx.conf");
        let log = dir.join("nginx.out");
        let server = Server::spawn(
            "nginx",
            Command::new(nginx_binary())
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_file),
            &log,
        );
        wait_for_port(port, "nginx", &dir.join("error.log"));
        Nginx {
            port,
            _server: server,
        }
    }
}

/// nginx lives in /usr/sbin, which a user's PATH may lack.
pub fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    "nginx".into()
}

/// What the proxy does besides forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Demand `Bearer` tokens from its own `/token` endpoint, which wants
    /// basic [`USER`]/[`PASSWORD`]; a token expires after 12 uses.
    Bearer,
    /// Fail the first attempt of every distinct request: dropped
    /// connections, 500, 503 and 429 with `Retry-After`, in turn; a
    /// manifest PUT is forwarded and then its answer dropped.
    Flaky,
}

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// `scope` values asked of the token endpoint.
    pub scopes: Vec<String>,
    pub tokens_issued: u32,
    pub token_denied: u32,
    pub challenged: u32,
    pub failures_injected: u32,
    pub requests: u32,
    seen: BTreeMap<String, u32>,
    token: u32,
    token_uses: u32,
}

/// A loopback HTTP/1.1 proxy in front of a registry: one request per
/// connection, `Connection: close`.
pub struct Proxy {
    pub port: u16,
    pub stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || handle(conn, upstream, port, mode, &s));
            }
        });
        Proxy {
            port,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    had_length: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    let mut had_length = false;
    if let Some(len) = get("content-length") {
        had_length = true;
        let n: usize = len.parse().ok()?;
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        had_length = true;
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some(Request {
        method,
        target,
        headers,
        body,
        had_length,
    })
}

fn respond(mut conn: &TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

/// Sends the request upstream and returns the raw answer.
fn forward(req: &Request, upstream: u16, strip_auth: bool) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    up.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        let k_l = k.to_ascii_lowercase();
        if ["connection", "content-length", "transfer-encoding"].contains(&k_l.as_str())
            || (strip_auth && k_l == "authorization")
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if req.had_length {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes()).ok()?;
    up.write_all(&req.body).ok()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).ok()?;
    Some(answer)
}

fn handle(conn: TcpStream, upstream: u16, port: u16, mode: Mode, stats: &Mutex<Stats>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(req) = read_request(&conn) else {
        let _ = conn.shutdown(Shutdown::Both);
        return;
    };
    let path = req.target.split('?').next().unwrap_or("").to_owned();
    match mode {
        Mode::Bearer => {
            if path == "/token" {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
                );
                let mut s = stats.lock().expect("stats");
                let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
                for pair in query.split('&') {
                    if let Some(v) = pair.strip_prefix("scope=") {
                        s.scopes.push(url_decode(v));
                    }
                }
                if req.header("authorization") != Some(want.as_str()) {
                    s.token_denied += 1;
                    drop(s);
                    respond(&conn, "401 Unauthorized", &[], b"{}");
                    return;
                }
                s.token += 1;
                s.token_uses = 0;
                s.tokens_issued += 1;
                let body = format!("{{\"token\":\"tok-{}\",\"expires_in\":300}}", s.token);
                drop(s);
                respond(
                    &conn,
                    "200 OK",
                    &[("Content-Type", "application/json".into())],
                    body.as_bytes(),
                );
                return;
            }
            let ok = {
                let mut s = stats.lock().expect("stats");
                s.requests += 1;
                let current = format!("Bearer tok-{}", s.token);
                let valid = s.token > 0
                    && req.header("authorization") == Some(current.as_str())
                    && s.token_uses < 12;
                if valid {
                    s.token_uses += 1;
                } else {
                    s.challenged += 1;
                }
                valid
            };
            if !ok {
                let scope = path
                    .strip_prefix("/v2/")
                    .and_then(|r| {
                        ["/blobs/", "/manifests/"]
                            .iter()
                            .find_map(|m| r.split_once(m).map(|(name, _)| name.to_owned()))
                    })
                    .map(|name| format!(",scope=\"repository:{name}:pull,push\""))
                    .unwrap_or_default();
                let challenge = format!(
                    "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"nixoci-test\"{scope}"
                );
                respond(
                    &conn,
                    "401 Unauthorized",
                    &[
                        ("WWW-Authenticate", challenge),
                        ("Content-Type", "application/json".into()),
                    ],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
                return;
            }
            if let Some(answer) = forward(&req, upstream, true) {
                let _ = (&conn).write_all(&answer);
            }
        }
        Mode::Flaky => {
            // Upload sessions get new URLs; key them by what they send.
            let key = match path.split_once("/blobs/uploads/") {
                Some((repo, session)) if !session.is_empty() => format!(
                    "{} {repo}/blobs/uploads/* {} {}",
                    req.method,
                    req.header("content-range").unwrap_or(""),
                    req.target
                        .split_once("digest=")
                        .map(|(_, d)| d)
                        .unwrap_or("")
                ),
                _ => format!("{} {path}", req.method),
            };
            let failure = {
                let mut s = stats.lock().expect("stats");
                s.requests += 1;
                let n = s.seen.entry(key).or_insert(0);
                *n += 1;
                if *n == 1 {
                    s.failures_injected += 1;
                    Some(s.failures_injected % 4)
                } else {
                    None
                }
            };
            let manifest_put = req.method == "PUT" && path.contains("/manifests/");
            match failure {
                Some(_) if manifest_put => {
                    // The registry stores it; the answer is lost.
                    let _ = forward(&req, upstream, false);
                    let _ = conn.shutdown(Shutdown::Both);
                }
                Some(0) => {
                    let _ = conn.shutdown(Shutdown::Both);
                }
                Some(1) => respond(&conn, "500 Internal Server Error", &[], b"boom"),
                Some(2) => respond(
                    &conn,
                    "503 Service Unavailable",
                    &[("Retry-After", "1".into())],
                    b"",
                ),
                Some(_) => respond(
                    &conn,
                    "429 Too Many Requests",
                    &[("Retry-After", "1".into())],
                    b"",
                ),
                None => {
                    if let Some(answer) = forward(&req, upstream, false) {
                        let _ = (&conn).write_all(&answer);
                    }
                }
            }
        }
    }
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a [`Trickler`] does after answering `GET /v2/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trickle {
    /// `200 OK` with an image index's media type and no `Content-Length`
    /// at once, then the body, one byte every half second.
    Body,
    /// The whole answer, from its status line on, one byte every half
    /// second (its header block never ends before the server stops).
    Answer,
}

/// A byte every this long.
pub const TRICKLE_EVERY: Duration = Duration::from_millis(500);

/// A registry on 127.0.0.1 that answers `GET /v2/` at once and every other
/// request with a trickle. One request per connection. Its threads stop by
/// themselves: no connection trickles more than 2 minutes, no connection is
/// accepted after 3 minutes, and all stop within half a second of a drop.
pub struct Trickler {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Trickler {
    pub fn start(mode: Trickle) -> Trickler {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the trickler");
        let port = listener.local_addr().expect("trickler address").port();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(180);
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) && Instant::now() < until {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = st.clone();
                        conns.push(std::thread::spawn(move || trickle(conn, mode, &st)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            st.store(true, Ordering::SeqCst);
            for c in conns {
                let _ = c.join();
            }
        });
        Trickler {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one connection of a [`Trickler`].
fn trickle(conn: TcpStream, mode: Trickle, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    // The client tries TLS first: close on a handshake at once.
    let mut first = [0u8; 1];
    if conn.peek(&mut first).is_err() || !first[0].is_ascii_uppercase() {
        return;
    }
    let Some(req) = read_request(&conn) else {
        return;
    };
    let path = req.target.split('?').next().unwrap_or("");
    if req.method == "GET" && path == "/v2/" {
        respond(
            &conn,
            "200 OK",
            &[("Docker-Distribution-API-Version", "registry/2.0".into())],
            b"{}",
        );
        return;
    }
    let (head, endless): (&str, &[u8]) = match mode {
        Trickle::Body => (
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\n\
             Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":["#,
        ),
        Trickle::Answer => ("", b"HTTP/1.1 200 OK\r\nX-Trickle: "),
    };
    let mut out = &conn;
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let bytes = endless.iter().copied().chain(std::iter::repeat(b' '));
    // At most 240 bytes: 2 minutes.
    for b in bytes.take(240) {
        if stop.load(Ordering::SeqCst) || out.write_all(&[b]).and_then(|()| out.flush()).is_err() {
            return;
        }
        std::thread::sleep(TRICKLE_EVERY);
    }
}

/// Asserts that a run against a trickling registry failed with exit 1 in
/// well under the harness's limit, with one error line that names the
/// registry and the request.
pub fn assert_timed_out(o: &Output, took: Duration, addr: &str, request: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: exit code\n{err}");
    assert!(
        took < Duration::from_secs(20),
        "{what} took {took:?} with --timeout 2s\n{err}"
    );
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("nixoci: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one error line\n{err}");
    let line = errors[0];
    assert!(
        line.contains(&format!("registry {addr} ")) && line.contains(request),
        "{what}: the error names the registry and the request\n{err}"
    );
}
