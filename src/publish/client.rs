//! An HTTP client for one repository of a registry: the `/v2/` ping that
//! picks HTTPS or (on loopback or with `--insecure`) plain HTTP, the
//! basic and bearer-token authentication flows, and retries with backoff
//! on transient failures.
//!
//! Built on `ureq` (blocking, rustls): see `docs/publish.md` for why.
//! Authorization headers go only to the registry's own origin, never to a
//! redirect target or another host named in a `Location`.
//!
//! Every request is bounded in time by [`TimeBounds`]: a registry that
//! stops answering, or trickles its answer, fails with a
//! [`ClientError::Timeout`] that names the host, the request and the limit.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::Deserialize;
use ureq::http::Response;
use ureq::RequestExt;
use url::Url;

use super::auth::{Challenge, Credentials};
use super::reference::Reference;
use crate::error::error_chain;

/// Content types the client accepts for manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The default `--timeout`: connecting, and a request without a body.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The default slowest pace of a body once its timeout is spent: 100 KiB/s.
pub const DEFAULT_MIN_RATE: u64 = 100 << 10;

/// How long a request may take.
///
/// A fixed deadline cannot serve a 100-byte manifest and a 2 GiB layer
/// alike, so the bound grows with the bytes a request moves:
///
/// - connecting (DNS, TCP, TLS) takes at most `timeout`;
/// - no write may wait more than `timeout` for the registry to take a
///   byte, no read more than `timeout` for one to come (a stall), but for
///   the wait for the answer to an upload, bounded as follows;
/// - the answer's status and headers come within `timeout` of the request
///   being sent, or within [`TimeBounds::deadline`] of the bytes the
///   registry must take in first (an uploaded body, a blob it assembles
///   from chunks: [`Extra::work`]);
/// - the whole request, redirects and the answer's body included, ends
///   within [`TimeBounds::deadline`] of the bytes it sends and reads:
///   `timeout + bytes / min_rate`. For an upload the bytes are the body's
///   length, known before it starts, so the deadline is fixed up front and
///   a blob is only required to average `min_rate` over its transfer;
/// - a body read whose length is not known in advance (a manifest or a
///   config, up to its size limit, with or without `Content-Length`) is
///   also checked as it arrives ([`TimeBounds::behind`]): after `timeout`
///   of grace it must keep up an average of `min_rate`, so a trickling
///   registry fails soon after `timeout`, not at the end of the deadline
///   its size limit would allow.
///
/// Nothing waits longer than the deadline, and a timed-out operation is
/// tried once more at most (see [`Client::with_retries_progress`]), so an
/// operation takes at most two deadlines plus a backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// Connecting, a stall, and the fixed part of every deadline.
    pub timeout: Duration,
    /// Bytes per second a body must average once `timeout` is spent.
    pub min_rate: u64,
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds {
            timeout: DEFAULT_TIMEOUT,
            min_rate: DEFAULT_MIN_RATE,
        }
    }
}

impl TimeBounds {
    /// The deadline of a request that moves `bytes` of bodies: the timeout
    /// plus the bytes at the minimum rate.
    pub fn deadline(&self, bytes: u64) -> Duration {
        let rate = self.min_rate.max(1) as f64;
        self.timeout.saturating_add(
            Duration::try_from_secs_f64(bytes as f64 / rate).unwrap_or(Duration::MAX),
        )
    }

    /// True when a body that has moved `bytes` in `elapsed` is behind: it
    /// took longer than [`TimeBounds::deadline`] of those bytes.
    pub fn behind(&self, elapsed: Duration, bytes: u64) -> bool {
        elapsed > self.deadline(bytes)
    }
}

/// What a request may take longer for, beyond its timeout and its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extra {
    /// Bytes of the answer's body the caller reads ([`Client::read_body`]).
    pub read: u64,
    /// Bytes the registry handles before it answers: a blob it assembles
    /// from the chunks sent before.
    pub work: u64,
}

/// Which time limit a request ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// No connection within this.
    Connect(Duration),
    /// Nothing sent or received for this long.
    Stall(Duration),
    /// The whole request: `timeout`, plus `bytes` at `rate`.
    Deadline {
        timeout: Duration,
        bytes: u64,
        rate: u64,
    },
    /// A body fell behind the minimum rate: `bytes` in `elapsed`.
    Rate {
        rate: u64,
        bytes: u64,
        elapsed: Duration,
    },
}

/// A request that ran out of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// `registry HOST[:PORT]` or `token server HOST[:PORT]`.
    pub who: String,
    pub method: &'static str,
    /// The URL path (no query: upload URLs carry long state).
    pub path: String,
    pub limit: Limit,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TimedOut {
            who, method, path, ..
        } = self;
        match &self.limit {
            Limit::Connect(t) => write!(
                f,
                "{who} did not accept a connection within {} ({method} {path})",
                seconds(*t)
            ),
            Limit::Stall(t) => write!(
                f,
                "{who} stalled during {method} {path}: nothing moved for {}",
                seconds(*t)
            ),
            Limit::Deadline {
                timeout, bytes: 0, ..
            } => write!(
                f,
                "{who} did not answer {method} {path} within {}",
                seconds(*timeout)
            ),
            Limit::Deadline {
                timeout,
                bytes,
                rate,
            } => {
                let bounds = TimeBounds {
                    timeout: *timeout,
                    min_rate: *rate,
                };
                write!(
                    f,
                    "{who} did not answer {method} {path} within {} ({} plus {} at {}/s)",
                    seconds(bounds.deadline(*bytes)),
                    seconds(*timeout),
                    amount(*bytes),
                    amount(*rate)
                )
            }
            Limit::Rate {
                rate,
                bytes,
                elapsed,
            } => write!(
                f,
                "{who} answered {method} {path} too slowly: {} in {}, under {}/s",
                amount(*bytes),
                seconds(*elapsed),
                amount(*rate)
            ),
        }
    }
}

/// `500 ms`, `2 s`, `2.5 s`.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// `12 bytes`, `100 KiB`, `16.0 MiB`.
fn amount(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} byte{}", if n == 1 { "" } else { "s" });
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{method} {url}")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {url}: the registry answered {status}{detail}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        /// ` (CODE: message)` from the registry's error body, or empty.
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{registry} rejected the credentials of user '{user}' (from {from}): wrong user name or password")]
    Unauthorized {
        registry: String,
        user: String,
        from: String,
    },
    #[error("{registry} refused access to {repository}{who} even after authenticating: the account may lack pull or push rights there")]
    Denied {
        registry: String,
        repository: String,
        who: String,
    },
    #[error("{registry} requires authentication: give --creds USER:PASSWORD, set NIXOCI_REGISTRY_USER and NIXOCI_REGISTRY_PASSWORD, or log in with podman, skopeo or docker{hint}")]
    AuthRequired { registry: String, hint: String },
    #[error("the token server {realm} rejected the credentials of user '{user}' (from {from}): wrong user name or password")]
    TokenRejected {
        realm: String,
        user: String,
        from: String,
    },
    #[error("the token server {realm}: {problem}")]
    Token { realm: String, problem: String },
    #[error("{registry} asks for authentication nixoci does not speak ({challenge})")]
    Scheme { registry: String, challenge: String },
    #[error("{registry} is not a registry: GET /v2/ answered {status}")]
    NotARegistry { registry: String, status: u16 },
    #[error("{method} {url}: the answer has no usable Location header")]
    Location { method: &'static str, url: String },
    #[error("{what}: the registry stored digest {found}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading TLS certificates from {path}")]
    Certificates { path: PathBuf },
    #[error("{0}")]
    Timeout(Box<TimedOut>),
}

/// A connection error that may go away by itself (for the registry and the
/// S3 client alike).
pub(crate) fn transient_transport(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

/// An HTTP status worth a retry: 5xx, 408 and 429.
pub(crate) fn transient_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

impl ClientError {
    /// True for what may go away by itself: connection errors, timeouts,
    /// 5xx, 408 and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { source, .. } => transient_transport(source),
            ClientError::Status { status, .. } => transient_status(*status),
            ClientError::Token { .. } | ClientError::Timeout(_) => true,
            _ => false,
        }
    }

    /// True when a request ran out of time: retried once at most.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout(_))
    }

    /// The delay a 429 or 503 asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when credentials or rights are the problem.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized { .. }
                | ClientError::Denied { .. }
                | ClientError::AuthRequired { .. }
                | ClientError::TokenRejected { .. }
                | ClientError::Scheme { .. }
        )
    }
}

/// How to reach the registry.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Allow plain HTTP and unverified TLS to a registry off this machine.
    pub insecure: bool,
    /// Retries after the first attempt of each operation.
    pub retries: u32,
    /// The first retry's delay; each next one doubles, up to 30 s.
    pub backoff: Duration,
    /// Read certificates from this PEM file instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// How long each request may take.
    pub bounds: TimeBounds,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            retries: 5,
            backoff: Duration::from_millis(500),
            ca_file: None,
            bounds: TimeBounds::default(),
        }
    }
}

/// A request body that can be sent again (after a 401 or a retry).
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of `path` from `offset`; `sent` hears how many went out.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        sent: &'a (dyn Fn(u64) + Sync),
    },
}

impl Body<'_> {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// Counts bytes as the HTTP client reads them.
struct Counting<'a, R> {
    inner: R,
    sent: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.sent)(n as u64);
        Ok(n)
    }
}

#[derive(Debug, Clone)]
enum AuthState {
    Anonymous,
    Basic,
    Bearer(String),
}

struct Auth {
    state: AuthState,
    /// Bumped at each change, so concurrent 401s refresh once.
    generation: u64,
}

/// A connection to one repository of a registry.
pub struct Client {
    agent: ureq::Agent,
    base: Url,
    registry: String,
    repository: String,
    creds: Option<Credentials>,
    helper_hint: Option<String>,
    scopes: Vec<String>,
    auth: RwLock<Auth>,
    options: ClientOptions,
    notify: Box<dyn Fn(&str) + Send + Sync>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A URL without its query, for messages (upload URLs carry long state).
pub(crate) fn short(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

fn header<'a, B>(resp: &'a Response<B>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn retry_after<B>(resp: &Response<B>) -> Option<Duration> {
    header(resp, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

fn tls_roots(ca_file: Option<&Path>) -> Result<ureq::tls::RootCerts, ClientError> {
    let nix = std::env::var_os("NIX_SSL_CERT_FILE")
        .filter(|_| std::env::var_os("SSL_CERT_FILE").is_none());
    let file = ca_file.map(Path::to_path_buf).or(nix.map(PathBuf::from));
    let Some(path) = file else {
        return Ok(ureq::tls::RootCerts::PlatformVerifier);
    };
    let pem = std::fs::read(&path).map_err(|source| ClientError::Io {
        path: path.clone(),
        source,
    })?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(ClientError::Certificates { path });
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

pub(crate) fn agent(options: &ClientOptions) -> Result<ureq::Agent, ClientError> {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(tls_roots(options.ca_file.as_deref())?)
        .disable_verification(options.insecure)
        .build();
    // The agent's deadline is that of a request without bodies; one that
    // sends or reads a body sets its own (`Client::send_once`).
    let t = options.bounds.timeout;
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(5)
        .user_agent(format!("nixoci/{}", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(t))
        .timeout_send_request(Some(t))
        .timeout_recv_response(Some(t))
        .timeout_per_read(Some(t))
        .timeout_per_write(Some(t))
        .timeout_global(Some(options.bounds.deadline(0)))
        .tls_config(tls)
        .build();
    Ok(config.new_agent())
}

/// Runs `req` on `agent` with deadlines of its own for the answer's
/// headers and for the whole request. A registry that takes in an upload
/// may send nothing until it answers, so no read waits longer than the
/// headers' deadline (the timeout, for a request that uploads nothing).
fn run_within<S: ureq::AsSendBody>(
    agent: &ureq::Agent,
    req: ureq::http::Request<S>,
    (headers, all): (Duration, Duration),
) -> Result<Response<ureq::Body>, ureq::Error> {
    req.with_agent(agent)
        .configure()
        .timeout_per_read(Some(headers))
        .timeout_recv_response(Some(headers))
        .timeout_global(Some(all))
        .build()
        .run()
}

/// `registry HOST[:PORT]` style names for messages.
pub(crate) fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

impl Client {
    /// Connects to the registry of `reference`: pings `/v2/` over HTTPS,
    /// falls back to plain HTTP where allowed, and authenticates with
    /// `creds` for `scopes` (`repository:NAME:pull,push`, …) when the
    /// registry asks. Wrong credentials fail here, before any upload.
    pub fn connect(
        reference: &Reference,
        creds: Option<Credentials>,
        helper_hint: Option<String>,
        scopes: Vec<String>,
        options: ClientOptions,
        notify: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Client, ClientError> {
        let plain_ok = options.insecure || reference.is_loopback();
        let base_url = |scheme: &str| {
            let base = format!("{scheme}://{}/", reference.api_host());
            Url::parse(&base).map_err(|_| ClientError::Location {
                method: "GET",
                url: base,
            })
        };
        let mut client = Client {
            agent: agent(&options)?,
            base: base_url("https")?,
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            creds,
            helper_hint,
            scopes,
            auth: RwLock::new(Auth {
                state: AuthState::Anonymous,
                generation: 0,
            }),
            options,
            notify,
        };
        let mut last = None;
        let schemes: &[&str] = if plain_ok {
            &["https", "http"]
        } else {
            &["https"]
        };
        for scheme in schemes {
            client.base = base_url(scheme)?;
            let https_probe = plain_ok && *scheme == "https";
            let result = if https_probe {
                // One try: a plain-HTTP registry fails the TLS handshake.
                client.ping()
            } else {
                client.with_retries("GET /v2/", |_| client.ping())
            };
            match result {
                // A plain-HTTP server may also sit on the TLS handshake
                // until the connect timeout.
                Err(e @ (ClientError::Transport { .. } | ClientError::Timeout(_)))
                    if https_probe =>
                {
                    last = Some(e)
                }
                other => return other.map(|()| client),
            }
        }
        Err(last.unwrap_or(ClientError::NotARegistry {
            registry: reference.registry.clone(),
            status: 0,
        }))
    }

    fn ping(&self) -> Result<(), ClientError> {
        let url = self.url("v2/")?;
        let resp = self.send("GET", &url, &[], &Body::Empty)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            401 => Err(self.after_auth_failure()),
            s if s >= 500 || s == 429 || s == 408 => Err(status_error("GET", &url, resp)),
            s => Err(ClientError::NotARegistry {
                registry: self.registry.clone(),
                status: s,
            }),
        }
    }

    /// `http(s)://host/` of the registry.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `path` (relative to the registry root).
    pub fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base.join(path).map_err(|_| ClientError::Location {
            method: "GET",
            url: path.to_owned(),
        })
    }

    /// `/v2/NAME/…`.
    pub fn repo_url(&self, rest: &str) -> Result<Url, ClientError> {
        self.url(&format!("v2/{}/{rest}", self.repository))
    }

    /// Resolves a `Location` header against the URL it answered.
    pub fn location<B>(
        &self,
        method: &'static str,
        url: &Url,
        resp: &Response<B>,
    ) -> Result<Url, ClientError> {
        header(resp, "location")
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| ClientError::Location {
                method,
                url: short(url),
            })
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of retries;
    /// waits between tries as the registry asked (`Retry-After`) or with
    /// exponential backoff. `op` gets the attempt number, from 0.
    pub fn with_retries<T>(
        &self,
        what: &str,
        op: impl FnMut(u32) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.with_retries_progress(what, op, || false)
    }

    /// [`Client::with_retries`] for long operations: when `progressed`
    /// says a failed attempt still got further than the one before (a
    /// chunk went up), the retry count starts again, so `retries` bounds
    /// failures in a row, not failures in all.
    ///
    /// A timeout is retried once (a fresh connection can cure a stuck
    /// one), not `retries` times: a registry too slow twice is too slow,
    /// and an operation stays within two deadlines plus a backoff.
    pub fn with_retries_progress<T>(
        &self,
        what: &str,
        op: impl FnMut(u32) -> Result<T, ClientError>,
        progressed: impl FnMut() -> bool,
    ) -> Result<T, ClientError> {
        retrying(&self.options, &*self.notify, what, op, progressed)
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// Sends one request, authenticating and sending again once when the
    /// registry answers 401. Any other status is the caller's to judge.
    /// The answer's body, if read, must be small (an error, at most
    /// 64 KiB): the request's deadline has no time for more.
    pub fn send(
        &self,
        method: &'static str,
        url: &Url,
        headers: &[(&str, &str)],
        body: &Body,
    ) -> Result<Response<ureq::Body>, ClientError> {
        self.send_with(method, url, headers, body, Extra::default())
    }

    /// [`Client::send`] with more time, for `extra` bytes at the minimum
    /// rate: an answer whose body is read with [`Client::read_body`], a
    /// registry that assembles a blob before it answers.
    pub fn send_with(
        &self,
        method: &'static str,
        url: &Url,
        headers: &[(&str, &str)],
        body: &Body,
        extra: Extra,
    ) -> Result<Response<ureq::Body>, ClientError> {
        let mut refreshed = false;
        loop {
            let (state, generation) = {
                let a = self.auth.read().unwrap_or_else(|e| e.into_inner());
                (a.state.clone(), a.generation)
            };
            let resp = self.send_once(method, url, headers, body, extra, &state)?;
            if resp.status().as_u16() != 401 || refreshed || !self.same_origin(url) {
                return Ok(resp);
            }
            refreshed = true;
            let challenge = header(&resp, "www-authenticate").unwrap_or("").to_owned();
            self.authenticate(&challenge, generation)?;
        }
    }

    /// Who `url` is, for messages: the registry, or another server (a
    /// token realm, a redirect target for blobs).
    fn who(&self, url: &Url) -> String {
        if self.same_origin(url) {
            format!("registry {}", authority(url))
        } else {
            authority(url)
        }
    }

    /// The error for a failed request: a [`ClientError::Timeout`] naming
    /// the limit when ureq ran out of time, else a transport error.
    /// `before` and `total` are the bytes of the deadlines for the answer's
    /// headers and for the whole request.
    fn failed(
        &self,
        method: &'static str,
        url: &Url,
        bytes: (u64, u64),
        source: ureq::Error,
    ) -> ClientError {
        match timeout_limit(self.options.bounds, bytes, &source) {
            Some(limit) => ClientError::Timeout(Box::new(TimedOut {
                who: self.who(url),
                method,
                path: url.path().to_owned(),
                limit,
            })),
            None => ClientError::Transport {
                method,
                url: short(url),
                source,
            },
        }
    }

    /// Reads the body of an answer to [`Client::send_with`], at most
    /// `limit` bytes (`None` when there are more), as long as it keeps up
    /// the minimum rate after the timeout's grace ([`TimeBounds::behind`]).
    pub fn read_body(
        &self,
        method: &'static str,
        url: &Url,
        resp: &mut Response<ureq::Body>,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut bytes = Vec::new();
        Ok(self
            .read_body_into(method, url, resp, limit, &mut bytes, Path::new("memory"))?
            .map(|_| bytes))
    }

    /// [`Client::read_body`] into `to` (a file at `path`, for messages):
    /// the bytes written, `None` when there were more than `limit`.
    pub fn read_body_into(
        &self,
        method: &'static str,
        url: &Url,
        resp: &mut Response<ureq::Body>,
        limit: u64,
        to: &mut dyn io::Write,
        path: &Path,
    ) -> Result<Option<u64>, ClientError> {
        let bounds = self.options.bounds;
        let start = Instant::now();
        let mut reader = resp.body_mut().with_config().limit(limit).reader();
        let mut written = 0u64;
        let mut buf = vec![0; 64 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(Some(written)),
                Ok(n) => {
                    to.write_all(&buf[..n]).map_err(|source| ClientError::Io {
                        path: path.to_owned(),
                        source,
                    })?;
                    written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return match ureq::Error::from(e) {
                        ureq::Error::BodyExceedsLimit(_) => Ok(None),
                        source => Err(self.failed(method, url, (0, limit), source)),
                    }
                }
            }
            let elapsed = start.elapsed();
            if bounds.behind(elapsed, written) {
                return Err(ClientError::Timeout(Box::new(TimedOut {
                    who: self.who(url),
                    method,
                    path: url.path().to_owned(),
                    limit: Limit::Rate {
                        rate: bounds.min_rate,
                        bytes: written,
                        elapsed,
                    },
                })));
            }
        }
    }

    fn send_once(
        &self,
        method: &'static str,
        url: &Url,
        headers: &[(&str, &str)],
        body: &Body,
        extra: Extra,
        state: &AuthState,
    ) -> Result<Response<ureq::Body>, ClientError> {
        // The bytes before the answer's headers and in all, and so the
        // deadlines of the headers and of the request.
        let before = body.len().saturating_add(extra.work);
        let total = before.saturating_add(extra.read);
        let deadlines = (
            self.options.bounds.deadline(before),
            self.options.bounds.deadline(total),
        );
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(url.as_str());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if self.same_origin(url) {
            match state {
                AuthState::Anonymous => {}
                AuthState::Basic => {
                    if let Some(c) = &self.creds {
                        req = req.header("authorization", c.basic_header());
                    }
                }
                AuthState::Bearer(t) => req = req.header("authorization", format!("Bearer {t}")),
            }
        }
        match send_body(&self.agent, req, method, body, deadlines) {
            Ok(resp) => Ok(resp),
            Err(SendFailure::Http(e)) => Err(self.failed(method, url, (before, total), e)),
            Err(SendFailure::File { path, source }) => Err(ClientError::Io { path, source }),
        }
    }

    /// The error for a 401 that authenticating did not cure.
    fn after_auth_failure(&self) -> ClientError {
        let state = self
            .auth
            .read()
            .map(|a| a.state.clone())
            .unwrap_or(AuthState::Anonymous);
        match (&self.creds, state) {
            (None, _) => ClientError::AuthRequired {
                registry: self.registry.clone(),
                hint: self.hint(),
            },
            (Some(c), AuthState::Basic) => ClientError::Unauthorized {
                registry: self.registry.clone(),
                user: c.username.clone(),
                from: c.source.clone(),
            },
            (Some(c), _) => ClientError::Denied {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                who: format!(" for user '{}'", c.username),
            },
        }
    }

    fn hint(&self) -> String {
        self.helper_hint
            .as_ref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default()
    }

    /// Answers a 401 challenge: basic credentials, or a bearer token from
    /// the realm for our scopes. Does nothing when another thread already
    /// did since `seen_generation`.
    fn authenticate(
        &self,
        challenge_header: &str,
        seen_generation: u64,
    ) -> Result<(), ClientError> {
        let mut auth = self.auth.write().unwrap_or_else(|e| e.into_inner());
        if auth.generation != seen_generation {
            return Ok(());
        }
        let challenges = Challenge::parse(challenge_header);
        let bearer = challenges.iter().find(|c| c.scheme == "bearer");
        let basic = challenges.iter().find(|c| c.scheme == "basic");
        let state = if let Some(b) = bearer {
            AuthState::Bearer(self.fetch_token(b)?)
        } else if basic.is_some() {
            match (&self.creds, &auth.state) {
                (None, _) => {
                    return Err(ClientError::AuthRequired {
                        registry: self.registry.clone(),
                        hint: self.hint(),
                    })
                }
                (Some(c), AuthState::Basic) => {
                    return Err(ClientError::Unauthorized {
                        registry: self.registry.clone(),
                        user: c.username.clone(),
                        from: c.source.clone(),
                    })
                }
                (Some(_), _) => AuthState::Basic,
            }
        } else {
            return Err(ClientError::Scheme {
                registry: self.registry.clone(),
                challenge: challenges
                    .first()
                    .map(|c| c.scheme.clone())
                    .unwrap_or_else(|| "no WWW-Authenticate challenge".into()),
            });
        };
        auth.state = state;
        auth.generation += 1;
        Ok(())
    }

    /// The bearer-token flow: GET realm?service=…&scope=… with basic
    /// credentials when we have them.
    fn fetch_token(&self, challenge: &Challenge) -> Result<String, ClientError> {
        let realm = challenge.param("realm").unwrap_or_default().to_owned();
        let token_err = |problem: String| ClientError::Token {
            realm: realm.clone(),
            problem,
        };
        let mut url = Url::parse(&realm).map_err(|_| token_err("the realm is not a URL".into()))?;
        if url.scheme() != "https" && !(url.scheme() == "http" && self.base.scheme() == "http") {
            return Err(token_err(
                "the realm must be https unless the registry is plain HTTP".into(),
            ));
        }
        let mut scopes = self.scopes.clone();
        if let Some(s) = challenge.param("scope") {
            for one in s.split(' ') {
                if !one.is_empty() && !scopes.iter().any(|x| x == one) {
                    scopes.push(one.to_owned());
                }
            }
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                q.append_pair("service", service);
            }
            for s in &scopes {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.agent.get(url.as_str());
        if let Some(c) = &self.creds {
            req = req.header("authorization", c.basic_header());
        }
        let mut resp = req
            .call()
            .map_err(|source| self.failed("GET", &url, (0, 0), source))?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(match &self.creds {
                    Some(c) => ClientError::TokenRejected {
                        realm: realm.clone(),
                        user: c.username.clone(),
                        from: c.source.clone(),
                    },
                    None => ClientError::AuthRequired {
                        registry: self.registry.clone(),
                        hint: self.hint(),
                    },
                })
            }
            s => return Err(token_err(format!("answered {s}"))),
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| token_err(format!("reading the answer failed ({e})")))?;
        let answer: TokenAnswer = serde_json::from_slice(&bytes)
            .map_err(|_| token_err("the answer is not a JSON token".into()))?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("the answer holds no token".into()))
    }
}

/// An error that may go away when the request is sent again.
pub trait Retryable: std::error::Error {
    /// Connection errors, timeouts, 5xx, 408, 429.
    fn is_transient(&self) -> bool;
    /// A request that ran out of time: retried once at most.
    fn is_timeout(&self) -> bool;
    /// The delay a 429 or 503 asked for.
    fn retry_after(&self) -> Option<Duration>;
}

impl Retryable for ClientError {
    fn is_transient(&self) -> bool {
        ClientError::is_transient(self)
    }
    fn is_timeout(&self) -> bool {
        ClientError::is_timeout(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        ClientError::retry_after(self)
    }
}

/// Runs `op` until it succeeds, fails for good, or runs out of the
/// retries of `options`; waits between tries as the server asked
/// (`Retry-After`) or with exponential backoff, telling `notify`. `op`
/// gets the attempt number, from 0. When `progressed` says a failed
/// attempt still got further than the one before, the retry count starts
/// again, so `retries` bounds failures in a row, not failures in all.
///
/// A timeout is retried once (a fresh connection can cure a stuck one),
/// not `retries` times: a server too slow twice is too slow, and an
/// operation stays within two deadlines plus a backoff.
pub fn retrying<T, E: Retryable>(
    options: &ClientOptions,
    notify: &(dyn Fn(&str) + Send + Sync),
    what: &str,
    mut op: impl FnMut(u32) -> Result<T, E>,
    mut progressed: impl FnMut() -> bool,
) -> Result<T, E> {
    let mut attempt = 0;
    let mut total = 0;
    let mut timeouts = 0;
    loop {
        let result = op(total);
        total += 1;
        if result.is_err() && progressed() {
            attempt = 0;
            timeouts = 0;
        }
        match result {
            Err(e) if e.is_timeout() && timeouts > 0 => return Err(e),
            Err(e) if e.is_transient() && attempt < options.retries => {
                if e.is_timeout() {
                    timeouts += 1;
                }
                let backoff = options
                    .backoff
                    .saturating_mul(1 << attempt.min(16))
                    .min(Duration::from_secs(30));
                let delay = e.retry_after().unwrap_or(backoff);
                let count = if e.is_timeout() {
                    "once".to_owned()
                } else {
                    format!("{} of {}", attempt + 1, options.retries)
                };
                notify(&format!(
                    "{what}: {}; retrying in {:.1}s ({count})",
                    error_chain(&e),
                    delay.as_secs_f64(),
                ));
                std::thread::sleep(delay);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The limit a request ran into when ureq reports a timeout (`None` for
/// any other error). `before` and `total` are the bytes of the deadlines
/// for the answer's headers and for the whole request.
pub(crate) fn timeout_limit(
    bounds: TimeBounds,
    (before, total): (u64, u64),
    source: &ureq::Error,
) -> Option<Limit> {
    let deadline = |bytes| Limit::Deadline {
        timeout: bounds.timeout,
        bytes,
        rate: bounds.min_rate,
    };
    Some(match source {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            Limit::Connect(bounds.timeout)
        }
        ureq::Error::Timeout(ureq::Timeout::PerRead) if before > 0 => deadline(before),
        ureq::Error::Timeout(ureq::Timeout::PerRead | ureq::Timeout::PerWrite) => {
            Limit::Stall(bounds.timeout)
        }
        ureq::Error::Timeout(ureq::Timeout::SendRequest) => deadline(0),
        ureq::Error::Timeout(ureq::Timeout::RecvResponse) => deadline(before),
        ureq::Error::Timeout(_) => deadline(total),
        _ => return None,
    })
}

/// Why [`send_body`] failed: the request, or reading the file to send.
pub(crate) enum SendFailure {
    Http(ureq::Error),
    File { path: PathBuf, source: io::Error },
}

/// Sends `req` with `body` (a `content-length` header for any method
/// but GET and HEAD) within `deadlines` (see [`run_within`]).
pub(crate) fn send_body(
    agent: &ureq::Agent,
    mut req: ureq::http::request::Builder,
    method: &str,
    body: &Body,
    deadlines: (Duration, Duration),
) -> Result<Response<ureq::Body>, SendFailure> {
    let http = |e| SendFailure::Http(ureq::Error::Http(e));
    let has_body = !matches!(method, "GET" | "HEAD");
    if has_body {
        req = req.header("content-length", body.len().to_string());
    }
    let result = match body {
        Body::Empty | Body::Bytes(_) if !has_body => {
            run_within(agent, req.body(()).map_err(http)?, deadlines)
        }
        Body::Empty => run_within(agent, req.body(&[][..]).map_err(http)?, deadlines),
        Body::Bytes(b) => run_within(agent, req.body(*b).map_err(http)?, deadlines),
        Body::File {
            path,
            offset,
            len,
            sent,
        } => {
            let file_err = |source| SendFailure::File {
                path: path.to_path_buf(),
                source,
            };
            // The file of a layout: never through a symbolic link.
            let (mut f, _) = crate::oci::files::open_no_follow(path).map_err(|e| match e {
                crate::oci::files::FileError::Io { source, .. } => file_err(source),
                other => file_err(io::Error::other(other.to_string())),
            })?;
            f.seek(SeekFrom::Start(*offset)).map_err(file_err)?;
            let mut reader = Counting {
                inner: f.take(*len),
                sent: *sent,
            };
            let r = req
                .body(ureq::SendBody::from_reader(&mut reader))
                .map_err(http)?;
            run_within(agent, r, deadlines)
        }
    };
    result.map_err(SendFailure::Http)
}

/// The error for an unexpected status, with the registry's error code.
pub fn status_error(
    method: &'static str,
    url: &Url,
    mut resp: Response<ureq::Body>,
) -> ClientError {
    let status = resp.status().as_u16();
    let retry_after = retry_after(&resp);
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()
        .unwrap_or_default();
    let detail = serde_json::from_slice::<ErrorBody>(&bytes)
        .ok()
        .and_then(|b| b.errors.into_iter().next())
        .map(|e| {
            if e.message.is_empty() {
                format!(" ({})", e.code)
            } else {
                format!(" ({}: {})", e.code, e.message)
            }
        })
        .unwrap_or_default();
    ClientError::Status {
        method,
        url: short(url),
        status,
        detail,
        retry_after,
    }
}

/// The value of a response header.
pub fn response_header<'a, B>(resp: &'a Response<B>, name: &str) -> Option<&'a str> {
    header(resp, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_or_not() {
        let status = |s| ClientError::Status {
            method: "PUT",
            url: "u".into(),
            status: s,
            detail: String::new(),
            retry_after: None,
        };
        for s in [500, 502, 503, 429, 408] {
            assert!(status(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404] {
            assert!(!status(s).is_transient(), "{s}");
        }
        let io = ClientError::Transport {
            method: "GET",
            url: "u".into(),
            source: ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionReset)),
        };
        assert!(io.is_transient());
        let creds = ClientError::Unauthorized {
            registry: "r".into(),
            user: "u".into(),
            from: "--creds".into(),
        };
        assert!(!creds.is_transient() && creds.is_auth());
    }

    #[test]
    fn deadlines_grow_with_the_bytes_moved() {
        let b = TimeBounds {
            timeout: Duration::from_secs(30),
            min_rate: 100 << 10,
        };
        assert_eq!(b.deadline(0), Duration::from_secs(30));
        // 16 MiB at 100 KiB/s: 163.84 s.
        assert_eq!(
            b.deadline(16 << 20),
            Duration::from_millis(30_000 + 163_840)
        );
        assert!(b.deadline(u64::MAX) > Duration::from_secs(1 << 40));
        // Behind: a trickle of 2 bytes a second, past the grace.
        assert!(!b.behind(Duration::from_secs(29), 58));
        assert!(b.behind(Duration::from_secs(31), 62));
        // Not behind: 1 MiB in 35 s is over the rate, counting the grace.
        assert!(!b.behind(Duration::from_secs(35), 1 << 20));
    }

    #[test]
    fn timeouts_name_the_host_the_request_and_the_limit() {
        let t = |limit| {
            ClientError::Timeout(Box::new(TimedOut {
                who: "registry 127.0.0.1:5000".into(),
                method: "GET",
                path: "/v2/app/manifests/1.0".into(),
                limit,
            }))
        };
        let s = Duration::from_secs;
        for (limit, want) in [
            (
                Limit::Deadline {
                    timeout: s(30),
                    bytes: 0,
                    rate: 100 << 10,
                },
                "registry 127.0.0.1:5000 did not answer GET /v2/app/manifests/1.0 within 30 s",
            ),
            (
                Limit::Deadline {
                    timeout: s(30),
                    bytes: 16 << 20,
                    rate: 100 << 10,
                },
                "registry 127.0.0.1:5000 did not answer GET /v2/app/manifests/1.0 within 193.8 s (30 s plus 16 MiB at 100 KiB/s)",
            ),
            (
                Limit::Connect(Duration::from_millis(500)),
                "registry 127.0.0.1:5000 did not accept a connection within 500 ms (GET /v2/app/manifests/1.0)",
            ),
            (
                Limit::Stall(s(2)),
                "registry 127.0.0.1:5000 stalled during GET /v2/app/manifests/1.0: nothing moved for 2 s",
            ),
            (
                Limit::Rate {
                    rate: 100 << 10,
                    bytes: 5,
                    elapsed: Duration::from_millis(2_510),
                },
                "registry 127.0.0.1:5000 answered GET /v2/app/manifests/1.0 too slowly: 5 bytes in 2.5 s, under 100 KiB/s",
            ),
        ] {
            let e = t(limit);
            assert_eq!(e.to_string(), want);
            assert!(e.is_timeout() && e.is_transient());
        }
        assert_eq!(amount(1), "1 byte");
        assert_eq!(amount(1536), "1.5 KiB");
    }

    #[test]
    fn urls_in_messages_lose_their_query() {
        let u =
            Url::parse("http://r:5000/v2/a/blobs/uploads/x?_state=abc&digest=sha256:1").unwrap();
        assert_eq!(short(&u), "http://r:5000/v2/a/blobs/uploads/x");
    }
}
