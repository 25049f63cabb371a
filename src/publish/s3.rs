//! An S3 bucket (Garage, MinIO, AWS) as a place to publish to: the
//! `s3://BUCKET[/PREFIX]` address, and a blocking client for the few
//! object operations a static registry needs (list, head, get, put,
//! multipart put, server-side copy, delete).
//!
//! Requests are signed with SigV4 by `rusty-s3` (a sans-IO signer: it
//! builds presigned URLs, we send them) and sent with the same `ureq`
//! agent, time bounds and retries as the registry client
//! ([`super::client`]): see `docs/publish.md` for why. Custom endpoints
//! are addressed path-style (`ENDPOINT/BUCKET/KEY`), AWS virtual-host
//! style. The secret key never leaves this module: it signs, it is never
//! printed, and URLs in messages lose their query (the signature).
//!
//! Keys given to a [`Bucket`] are relative to its prefix: with
//! `s3://b/mirror`, `v2/index.html` is the object `mirror/v2/index.html`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, GetObject,
    HeadObject, ListObjectsV2, PutObject, UploadPart,
};
use rusty_s3::{S3Action, UrlStyle};
use ureq::http::Response;
use url::Url;

use super::client::{
    self, authority, retrying, send_body, short, timeout_limit, transient_status,
    transient_transport, Body, ClientOptions, Limit, Retryable, SendFailure, TimedOut,
};
use crate::oci::Digest;

/// How long a signed URL stays valid: longer than any request's deadline
/// needs, short enough to be useless if it leaked into a log.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// The largest answer body read for a listing page or a small object.
const MAX_SMALL_BODY: u64 = 64 << 20;

/// S3's limits: parts of a multipart upload (all but the last at least
/// 5 MiB), and the largest object a single `PUT` or a copy may write.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PARTS: u64 = 10_000;
pub const MAX_SINGLE_PUT: u64 = 5 << 30;

/// `s3://BUCKET[/PREFIX]`: a bucket, and the folder of it the static
/// registry lives in (empty for the bucket's root).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct S3Url {
    pub bucket: String,
    /// `a/b`, no leading or trailing `/`; empty for none.
    pub prefix: String,
}

/// Why an `s3://` address is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3UrlError {
    #[error("'{0}' is not an s3://BUCKET[/PREFIX] address")]
    Scheme(String),
    #[error("bucket name '{0}' is not valid (3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit)")]
    Bucket(String),
    #[error("prefix '{0}' is not valid (path components without '.', '..' or empty ones)")]
    Prefix(String),
}

/// True for a bucket name S3 and Garage accept.
pub fn valid_bucket(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

/// True for a key prefix of plain path components.
fn valid_prefix(prefix: &str) -> bool {
    prefix
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && c.bytes().all(|b| b.is_ascii_graphic()))
}

impl S3Url {
    /// Parses `s3://BUCKET[/PREFIX]` (a trailing `/` is dropped).
    pub fn parse(s: &str) -> Result<S3Url, S3UrlError> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| S3UrlError::Scheme(s.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if !valid_bucket(bucket) {
            return Err(S3UrlError::Bucket(bucket.to_owned()));
        }
        if !prefix.is_empty() && !valid_prefix(prefix) {
            return Err(S3UrlError::Prefix(prefix.to_owned()));
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// The full key of `key`, under the prefix.
    pub fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }
}

impl FromStr for S3Url {
    type Err = S3UrlError;

    fn from_str(s: &str) -> Result<S3Url, S3UrlError> {
        S3Url::parse(s)
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// `s3://BUCKET/NAME[:TAG]` or `s3://BUCKET/PREFIX//NAME[:TAG]`: where
/// `push` writes a static registry's repository. A doubled `/` ends the
/// prefix, since NAME has `/`s of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    pub url: S3Url,
    pub repository: String,
    pub tag: Option<String>,
}

/// Why an `s3://` push destination is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3TargetError {
    #[error(transparent)]
    Url(#[from] S3UrlError),
    #[error("'{0}' names no repository: give s3://BUCKET/NAME[:TAG] (or s3://BUCKET/PREFIX//NAME[:TAG])")]
    NoName(String),
    #[error("repository name '{0}' is not valid (lowercase letters and digits separated by '.', '_', '__' or dashes, components joined by '/'; no '..', no leading '/')")]
    Name(String),
    #[error("tag '{0}' is not valid (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'; no '/')")]
    Tag(String),
}

impl S3Target {
    pub fn parse(s: &str) -> Result<S3Target, S3TargetError> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| S3UrlError::Scheme(s.to_owned()))?;
        let (bucket_part, name_part) = match rest.split_once("//") {
            Some((b, n)) => (b.to_owned(), n),
            None => match rest.split_once('/') {
                Some((b, n)) => (b.to_owned(), n),
                None => return Err(S3TargetError::NoName(s.to_owned())),
            },
        };
        let url = S3Url::parse(&format!("s3://{bucket_part}"))?;
        // The tag is after the last ':' of the last component.
        let last_slash = name_part.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repository, tag) = match name_part[last_slash..].rfind(':') {
            Some(i) => (
                &name_part[..last_slash + i],
                Some(name_part[last_slash + i + 1..].to_owned()),
            ),
            None => (name_part, None),
        };
        if repository.is_empty() {
            return Err(S3TargetError::NoName(s.to_owned()));
        }
        if !super::reference::valid_repository(repository) {
            return Err(S3TargetError::Name(repository.to_owned()));
        }
        if let Some(t) = &tag {
            if !super::reference::valid_tag(t) {
                return Err(S3TargetError::Tag(t.clone()));
            }
        }
        Ok(S3Target {
            url,
            repository: repository.to_owned(),
            tag,
        })
    }
}

impl fmt::Display for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/", self.url.bucket)?;
        if !self.url.prefix.is_empty() {
            write!(f, "{}//", self.url.prefix)?;
        }
        write!(f, "{}", self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

/// An access key: its id, its secret (never printed) and an optional
/// session token.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    secret: String,
    session_token: Option<String>,
    /// Where they were found, for messages: `AWS_ACCESS_KEY_ID`, or
    /// `profile garage in ~/.aws/credentials`.
    pub source: String,
}

impl S3Credentials {
    pub fn new(
        access_key_id: impl Into<String>,
        secret: impl Into<String>,
        session_token: Option<String>,
        source: impl Into<String>,
    ) -> S3Credentials {
        S3Credentials {
            access_key_id: access_key_id.into(),
            secret: secret.into(),
            session_token,
            source: source.into(),
        }
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where the S3 API is and who we are there.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: Url,
    pub region: String,
    pub credentials: S3Credentials,
    /// `ENDPOINT/BUCKET/KEY` rather than `BUCKET.ENDPOINT/KEY`.
    pub path_style: bool,
}

/// One object of a listing or a `HEAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the bucket's prefix.
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// What an object is written with, beyond its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutMeta<'a> {
    pub content_type: &'a str,
    /// The SHA-256 of the bytes, for S3 to check them
    /// (`x-amz-checksum-sha256`; single `PUT`s only).
    pub checksum: Option<&'a Digest>,
    /// Kept as the metadata `x-amz-meta-docker-content-digest`, which a
    /// bucket website sends back as a header, for a web front to answer
    /// `Docker-Content-Digest` with (manifests and blobs).
    pub content_digest: Option<&'a Digest>,
}

/// Why an S3 request failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{method} {url}")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {url}: S3 answered {status}{detail}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        /// ` (Code: message)` from the error body, or empty.
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("bucket '{bucket}' does not exist at {endpoint}")]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error("{endpoint} refused access key '{key_id}' (from {from}) for bucket '{bucket}'{detail}: wrong secret key, or no rights on the bucket")]
    Denied {
        endpoint: String,
        bucket: String,
        key_id: String,
        from: String,
        detail: String,
    },
    #[error("{method} {url}: the answer is not the XML S3 sends ({problem})")]
    Answer {
        method: &'static str,
        url: String,
        problem: String,
    },
    #[error("{key}: the object is larger than {limit} bytes")]
    TooLarge { key: String, limit: u64 },
    #[error("{key}: {size} bytes in parts of {part_size} is more than {MAX_PARTS} parts")]
    TooManyParts {
        key: String,
        size: u64,
        part_size: u64,
    },
    #[error("{endpoint}: not a usable S3 endpoint")]
    Endpoint { endpoint: String },
    #[error("reading {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error("{0}")]
    Timeout(Box<TimedOut>),
}

impl Retryable for S3Error {
    fn is_transient(&self) -> bool {
        match self {
            S3Error::Transport { source, .. } => transient_transport(source),
            S3Error::Status { status, .. } => transient_status(*status),
            S3Error::Timeout(_) => true,
            _ => false,
        }
    }

    fn is_timeout(&self) -> bool {
        matches!(self, S3Error::Timeout(_))
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            S3Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl S3Error {
    /// True when the credentials or the rights are the problem.
    pub fn is_auth(&self) -> bool {
        matches!(self, S3Error::Denied { .. })
    }
}

/// The text of the first `<tag>…</tag>` of an XML body.
fn xml_text<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(body[start..end].trim())
}

/// Percent-encodes a key for `x-amz-copy-source` (keeps `/`).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `x-amz-checksum-sha256`: the digest's bytes in base64.
fn checksum(d: &Digest) -> Option<String> {
    use base64::Engine as _;
    let hex = d.hex();
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    bytes.map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}

fn http_date_or_iso(s: &str) -> Option<SystemTime> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(SystemTime::from(t));
    }
    jiff::fmt::rfc2822::parse(s)
        .ok()
        .map(|z| SystemTime::from(z.timestamp()))
}

fn header<'a, B>(resp: &'a Response<B>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A bucket (and a prefix in it) of an S3 endpoint.
pub struct Bucket {
    bucket: rusty_s3::Bucket,
    credentials: rusty_s3::Credentials,
    key_id: String,
    key_source: String,
    url: S3Url,
    endpoint: String,
    agent: ureq::Agent,
    options: ClientOptions,
    notify: Box<dyn Fn(&str) + Send + Sync>,
    /// The `Date` of the server's last answer.
    server_time: std::sync::Mutex<Option<SystemTime>>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A signed request, ready to send.
struct Signed {
    method: &'static str,
    url: Url,
    headers: Vec<(String, String)>,
}

impl Signed {
    /// `action` signed with `headers` among what it signs.
    fn with_headers<'a, A: S3Action<'a>>(
        method: &'static str,
        mut action: A,
        headers: Vec<(String, String)>,
    ) -> Signed {
        for (k, v) in &headers {
            action.headers_mut().insert(k.clone(), v.clone());
        }
        Signed {
            method,
            url: action.sign(SIGNED_FOR),
            headers,
        }
    }

    /// The error S3 may send in the body of a 200 answer (`Code` and
    /// `Message`), unless `unless` is there too.
    fn error_in_body(&self, text: &str, unless: Option<&str>) -> Option<S3Error> {
        let code = xml_text(text, "Code")?;
        if unless.is_some_and(|tag| xml_text(text, tag).is_some()) {
            return None;
        }
        Some(S3Error::Status {
            method: self.method,
            url: short(&self.url),
            status: 200,
            detail: format!(" ({code}: {})", xml_text(text, "Message").unwrap_or("")),
            retry_after: None,
        })
    }
}

impl Bucket {
    /// The bucket of `url` at the endpoint of `config`. Sends nothing;
    /// [`Bucket::check`] tries the credentials.
    pub fn new(
        config: &S3Config,
        url: &S3Url,
        options: ClientOptions,
        notify: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Bucket, S3Error> {
        let endpoint = authority(&config.endpoint);
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = rusty_s3::Bucket::new(
            config.endpoint.clone(),
            style,
            url.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|_| S3Error::Endpoint {
            endpoint: config.endpoint.to_string(),
        })?;
        let c = &config.credentials;
        let credentials = match &c.session_token {
            Some(t) => {
                rusty_s3::Credentials::new_with_token(&c.access_key_id, &c.secret, t.clone())
            }
            None => rusty_s3::Credentials::new(&c.access_key_id, &c.secret),
        };
        Ok(Bucket {
            bucket,
            credentials,
            key_id: c.access_key_id.clone(),
            key_source: c.source.clone(),
            url: url.clone(),
            endpoint,
            agent: client::agent(&options)?,
            options,
            notify,
            server_time: std::sync::Mutex::new(None),
        })
    }

    /// `s3://BUCKET[/PREFIX]`.
    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// The time by the server's clock when it sent its last answer (its
    /// `Date` header), for comparing with the objects' `LastModified`
    /// (`gc --grace`); `None` before any answer, or without the header.
    pub fn server_time(&self) -> Option<SystemTime> {
        self.server_time.lock().ok().and_then(|t| *t)
    }

    /// `HOST[:PORT]` of the endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Tries the credentials and the bucket with a one-key listing:
    /// wrong credentials and a missing bucket fail here, before any
    /// upload.
    pub fn check(&self) -> Result<(), S3Error> {
        self.retrying("listing the bucket", |_| {
            self.list_page("", None, 1).map(|_| ())
        })
    }

    fn retrying<T>(
        &self,
        what: &str,
        op: impl FnMut(u32) -> Result<T, S3Error>,
    ) -> Result<T, S3Error> {
        retrying(&self.options, &*self.notify, what, op, || false)
    }

    /// Every object whose key (relative to the prefix) starts with
    /// `prefix`, sorted by key, all pages.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (mut objects, next) = self.retrying(&format!("listing {prefix}"), |_| {
                self.list_page(prefix, token.as_deref(), 1000)
            })?;
            out.append(&mut objects);
            match next {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max: usize,
    ) -> Result<(Vec<ObjectInfo>, Option<String>), S3Error> {
        let full = self.url.key(prefix);
        let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
        if !full.is_empty() {
            action.with_prefix(full.clone());
        }
        if let Some(t) = token {
            action.with_continuation_token(t.to_owned());
        }
        action.with_max_keys(max);
        let signed = Signed {
            method: "GET",
            url: action.sign(SIGNED_FOR),
            headers: Vec::new(),
        };
        let mut resp = self.send(&signed, &Body::Empty, MAX_SMALL_BODY)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(&signed, resp, None));
        }
        let body = self.read_small(&signed, &mut resp)?;
        let text = String::from_utf8_lossy(&body);
        let page = ListObjectsV2::parse_response(&text).map_err(|e| S3Error::Answer {
            method: "GET",
            url: short(&signed.url),
            problem: e.to_string(),
        })?;
        let strip = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        let objects = page
            .contents
            .into_iter()
            .filter_map(|c| {
                let key = c.key.strip_prefix(&strip)?.to_owned();
                Some(ObjectInfo {
                    key,
                    size: c.size.unwrap_or(0),
                    last_modified: c
                        .last_modified
                        .as_deref()
                        .and_then(http_date_or_iso)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect();
        Ok((objects, page.next_continuation_token))
    }

    /// The size and time of `key`, or `None` when there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        self.retrying(&format!("HEAD {key}"), |_| {
            let full = self.url.key(key);
            let action = HeadObject::new(&self.bucket, Some(&self.credentials), &full);
            let signed = Signed {
                method: "HEAD",
                url: action.sign(SIGNED_FOR),
                headers: Vec::new(),
            };
            let resp = self.send(&signed, &Body::Empty, 0)?;
            match resp.status().as_u16() {
                200 => Ok(Some(ObjectInfo {
                    key: key.to_owned(),
                    size: header(&resp, "content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    last_modified: header(&resp, "last-modified")
                        .and_then(http_date_or_iso)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                })),
                // HEAD answers carry no body: a 404 is a missing object,
                // unless the bucket is missing (checked by `check`).
                404 => Ok(None),
                _ => Err(self.status_error(&signed, resp, None)),
            }
        })
    }

    /// The bytes of `key` (at most 64 MiB), or `None` when there is no
    /// such object.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        self.retrying(&format!("GET {key}"), |_| {
            let full = self.url.key(key);
            let action = GetObject::new(&self.bucket, Some(&self.credentials), &full);
            let signed = Signed {
                method: "GET",
                url: action.sign(SIGNED_FOR),
                headers: Vec::new(),
            };
            let mut resp = self.send(&signed, &Body::Empty, MAX_SMALL_BODY)?;
            match resp.status().as_u16() {
                200 => self.read_small(&signed, &mut resp).map(Some),
                404 => {
                    let e = self.status_error(&signed, resp, None);
                    match e {
                        S3Error::NoSuchBucket { .. } => Err(e),
                        _ => Ok(None),
                    }
                }
                _ => Err(self.status_error(&signed, resp, None)),
            }
        })
    }

    /// Writes `body` to `key` with `content_type`, in one request.
    pub fn put(&self, key: &str, content_type: &str, body: &Body) -> Result<(), S3Error> {
        self.put_object(
            key,
            PutMeta {
                content_type,
                ..PutMeta::default()
            },
            body,
        )
    }

    /// Writes `body` to `key` in one request (retried as a whole).
    pub fn put_object(&self, key: &str, meta: PutMeta, body: &Body) -> Result<(), S3Error> {
        self.retrying(&format!("PUT {key}"), |_| {
            let full = self.url.key(key);
            let action = PutObject::new(&self.bucket, Some(&self.credentials), &full);
            let signed = Signed::with_headers("PUT", action, object_headers(meta));
            let resp = self.send(&signed, body, 0)?;
            match resp.status().as_u16() {
                200..=299 => Ok(()),
                _ => Err(self.status_error(&signed, resp, Some(key))),
            }
        })
    }

    /// Writes `size` bytes of the file `path` to `key` in parts of
    /// `part_size` (at least 5 MiB, and larger when 10,000 parts would not
    /// hold the file: a multipart upload; each part retried on its own,
    /// the upload aborted when it fails for good). `sent` hears the bytes
    /// as they go out, and takes them back (negative) when a part is sent
    /// again.
    pub fn put_multipart(
        &self,
        key: &str,
        meta: PutMeta,
        path: &Path,
        size: u64,
        part_size: u64,
        sent: &(dyn Fn(i64) + Sync),
    ) -> Result<(), S3Error> {
        // At least S3's smallest part, and few enough parts for S3.
        let part_size = part_size.max(MIN_PART_SIZE).max(size.div_ceil(MAX_PARTS));
        let full = self.url.key(key);
        let upload_id = self.retrying(&format!("starting the upload of {key}"), |_| {
            let action = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), &full);
            let headers = object_headers(PutMeta {
                checksum: None,
                ..meta
            });
            let signed = Signed::with_headers("POST", action, headers);
            let text = self.answer_text(&signed, &Body::Empty, key)?;
            CreateMultipartUpload::parse_response(&text)
                .map(|r| r.upload_id().to_owned())
                .map_err(|e| S3Error::Answer {
                    method: "POST",
                    url: short(&signed.url),
                    problem: e.to_string(),
                })
        })?;
        let result = self.upload_parts(key, &full, &upload_id, path, size, part_size, sent);
        if result.is_err() {
            // Best effort: an upload left open costs space until the
            // bucket's lifecycle (or Garage's) cleans it.
            let action =
                AbortMultipartUpload::new(&self.bucket, Some(&self.credentials), &full, &upload_id);
            let signed = Signed {
                method: "DELETE",
                url: action.sign(SIGNED_FOR),
                headers: Vec::new(),
            };
            let _ = self.send(&signed, &Body::Empty, 0);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_parts(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
        part_size: u64,
        sent: &(dyn Fn(i64) + Sync),
    ) -> Result<(), S3Error> {
        let parts = size.div_ceil(part_size).max(1);
        let mut etags = Vec::with_capacity(parts as usize);
        for n in 0..parts {
            let offset = n * part_size;
            let len = part_size.min(size - offset);
            let number = u16::try_from(n + 1).map_err(|_| S3Error::TooManyParts {
                key: key.to_owned(),
                size,
                part_size,
            })?;
            let etag = self.retrying(&format!("part {} of {parts} of {key}", n + 1), |_| {
                let moved = std::sync::atomic::AtomicU64::new(0);
                let count = |b: u64| {
                    moved.fetch_add(b, std::sync::atomic::Ordering::Relaxed);
                    sent(b as i64);
                };
                let action = UploadPart::new(
                    &self.bucket,
                    Some(&self.credentials),
                    full,
                    number,
                    upload_id,
                );
                let signed = Signed {
                    method: "PUT",
                    url: action.sign(SIGNED_FOR),
                    headers: Vec::new(),
                };
                let body = Body::File {
                    path,
                    offset,
                    len,
                    sent: &count,
                };
                let result = self.send(&signed, &body, 0).and_then(|resp| {
                    match (resp.status().as_u16(), header(&resp, "etag")) {
                        (200..=299, Some(etag)) => Ok(etag.to_owned()),
                        (200..=299, None) => Err(S3Error::Answer {
                            method: "PUT",
                            url: short(&signed.url),
                            problem: "no ETag for the part".into(),
                        }),
                        _ => Err(self.status_error(&signed, resp, Some(key))),
                    }
                });
                if result.is_err() {
                    sent(-(moved.load(std::sync::atomic::Ordering::Relaxed) as i64));
                }
                result
            })?;
            etags.push(etag);
        }
        self.retrying(&format!("completing the upload of {key}"), |_| {
            let action = CompleteMultipartUpload::new(
                &self.bucket,
                Some(&self.credentials),
                full,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(SIGNED_FOR);
            let xml = action.body();
            let signed = Signed {
                method: "POST",
                url,
                headers: Vec::new(),
            };
            let text = self.answer_text(&signed, &Body::Bytes(xml.as_bytes()), key)?;
            // S3 may answer 200 with an error in the body.
            match signed.error_in_body(&text, None) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    /// Copies `from_key` to `to_key` inside the bucket (server-side, up
    /// to 5 GiB), with `content_type`.
    pub fn copy(&self, from_key: &str, to_key: &str, content_type: &str) -> Result<(), S3Error> {
        self.copy_object(
            from_key,
            to_key,
            PutMeta {
                content_type,
                ..PutMeta::default()
            },
        )
    }

    /// [`Bucket::copy`] with the metadata of [`Bucket::put_object`].
    pub fn copy_object(&self, from_key: &str, to_key: &str, meta: PutMeta) -> Result<(), S3Error> {
        self.retrying(&format!("copying {from_key} to {to_key}"), |_| {
            let full = self.url.key(to_key);
            let source = format!(
                "/{}/{}",
                self.url.bucket,
                encode_key(&self.url.key(from_key))
            );
            let action = PutObject::new(&self.bucket, Some(&self.credentials), &full);
            let mut headers = object_headers(PutMeta {
                checksum: None,
                ..meta
            });
            headers.push(("x-amz-copy-source".into(), source));
            headers.push(("x-amz-metadata-directive".into(), "REPLACE".into()));
            let signed = Signed::with_headers("PUT", action, headers);
            let text = self.answer_text(&signed, &Body::Empty, to_key)?;
            // An error in the body of a 200, unless the copy's ETag is there.
            match signed.error_in_body(&text, Some("ETag")) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    /// Deletes `key` (no error when it is not there).
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.retrying(&format!("DELETE {key}"), |_| {
            let full = self.url.key(key);
            let action = DeleteObject::new(&self.bucket, Some(&self.credentials), &full);
            let signed = Signed {
                method: "DELETE",
                url: action.sign(SIGNED_FOR),
                headers: Vec::new(),
            };
            let resp = self.send(&signed, &Body::Empty, 0)?;
            match resp.status().as_u16() {
                200..=299 | 404 => Ok(()),
                _ => Err(self.status_error(&signed, resp, Some(key))),
            }
        })
    }

    /// Sends a signed request within the time bounds: its body, and `read`
    /// bytes of answer at most.
    fn send(
        &self,
        signed: &Signed,
        body: &Body,
        read: u64,
    ) -> Result<Response<ureq::Body>, S3Error> {
        let bounds = self.options.bounds;
        let before = body.len();
        let total = before.saturating_add(read);
        let deadlines = (bounds.deadline(before), bounds.deadline(total));
        let mut req = ureq::http::Request::builder()
            .method(signed.method)
            .uri(signed.url.as_str());
        for (k, v) in &signed.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match send_body(&self.agent, req, signed.method, body, deadlines) {
            Ok(resp) => {
                if let Some(t) = header(&resp, "date").and_then(http_date_or_iso) {
                    if let Ok(mut last) = self.server_time.lock() {
                        *last = Some(t);
                    }
                }
                Ok(resp)
            }
            Err(SendFailure::File { path, source }) => Err(S3Error::Io { path, source }),
            Err(SendFailure::Http(source)) => {
                match timeout_limit(bounds, (before, total), &source) {
                    Some(limit) => Err(self.timed_out(signed, limit)),
                    None => Err(S3Error::Transport {
                        method: signed.method,
                        url: short(&signed.url),
                        source,
                    }),
                }
            }
        }
    }

    fn timed_out(&self, signed: &Signed, limit: Limit) -> S3Error {
        S3Error::Timeout(Box::new(TimedOut {
            who: format!("S3 endpoint {}", self.endpoint),
            method: signed.method,
            path: signed.url.path().to_owned(),
            limit,
        }))
    }

    /// Sends `signed` with `body` and reads the text of its 2xx answer (an
    /// XML answer of at most 1 MiB); another status is an error about
    /// `key`.
    fn answer_text(&self, signed: &Signed, body: &Body, key: &str) -> Result<String, S3Error> {
        let mut resp = self.send(signed, body, 1 << 20)?;
        if !(200..300).contains(&resp.status().as_u16()) {
            return Err(self.status_error(signed, resp, Some(key)));
        }
        let body = self.read_small(signed, &mut resp)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Reads a small answer body (a listing page, an XML answer, a
    /// manifest).
    fn read_small(
        &self,
        signed: &Signed,
        resp: &mut Response<ureq::Body>,
    ) -> Result<Vec<u8>, S3Error> {
        let result = resp
            .body_mut()
            .with_config()
            .limit(MAX_SMALL_BODY)
            .read_to_vec();
        match result {
            Ok(b) => Ok(b),
            Err(ureq::Error::BodyExceedsLimit(_)) => Err(S3Error::TooLarge {
                key: signed.url.path().to_owned(),
                limit: MAX_SMALL_BODY,
            }),
            Err(source) => match timeout_limit(self.options.bounds, (0, MAX_SMALL_BODY), &source) {
                Some(limit) => Err(self.timed_out(signed, limit)),
                None => Err(S3Error::Transport {
                    method: signed.method,
                    url: short(&signed.url),
                    source,
                }),
            },
        }
    }

    /// The error for an unexpected answer, from S3's XML error body.
    fn status_error(
        &self,
        signed: &Signed,
        mut resp: Response<ureq::Body>,
        _key: Option<&str>,
    ) -> S3Error {
        let status = resp.status().as_u16();
        let retry_after = header(&resp, "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(60)));
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_vec()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let code = xml_text(&text, "Code").unwrap_or("").to_owned();
        let message = xml_text(&text, "Message").unwrap_or("").to_owned();
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!(" ({code})"),
            (false, false) => format!(" ({code}: {message})"),
        };
        match (status, code.as_str()) {
            (404, "NoSuchBucket") => S3Error::NoSuchBucket {
                bucket: self.url.bucket.clone(),
                endpoint: self.endpoint.clone(),
            },
            (401 | 403, _)
            | (
                400,
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AuthorizationHeaderMalformed",
            ) => S3Error::Denied {
                endpoint: self.endpoint.clone(),
                bucket: self.url.bucket.clone(),
                key_id: self.key_id.clone(),
                from: self.key_source.clone(),
                detail,
            },
            _ => S3Error::Status {
                method: signed.method,
                url: short(&signed.url),
                status,
                detail,
                retry_after,
            },
        }
    }
}

/// The signed headers of an object write.
fn object_headers(meta: PutMeta) -> Vec<(String, String)> {
    let mut h = vec![("content-type".to_owned(), meta.content_type.to_owned())];
    if let Some(sum) = meta.checksum.and_then(checksum) {
        h.push(("x-amz-checksum-sha256".into(), sum));
    }
    if let Some(d) = meta.content_digest {
        h.push(("x-amz-meta-docker-content-digest".into(), d.to_string()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_push_destinations() {
        let t = S3Target::parse("s3://localhost/team/app:1.0").unwrap();
        assert_eq!(t.url.bucket, "localhost");
        assert_eq!(t.url.prefix, "");
        assert_eq!(
            (t.repository.as_str(), t.tag.as_deref()),
            ("team/app", Some("1.0"))
        );
        let t = S3Target::parse("s3://b-1/mirror/x//hello").unwrap();
        assert_eq!(t.url.prefix, "mirror/x");
        assert_eq!((t.repository.as_str(), t.tag.as_deref()), ("hello", None));
        assert_eq!(t.to_string(), "s3://b-1/mirror/x//hello");
        for bad in ["s3://b-1", "s3://b-1/", "s3://b-1/:t"] {
            assert!(
                matches!(S3Target::parse(bad), Err(S3TargetError::NoName(_))),
                "{bad}"
            );
        }
        for bad in ["s3://b-1/../x:t", "s3://b-1/a/../b", "s3://b-1/A"] {
            assert!(
                matches!(S3Target::parse(bad), Err(S3TargetError::Name(_))),
                "{bad}"
            );
        }
        for bad in ["s3://b-1/a:..", "s3://b-1/a:.x", "s3://b-1/a:"] {
            assert!(
                matches!(S3Target::parse(bad), Err(S3TargetError::Tag(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            S3Target::parse("s3://b-1/../..//a"),
            Err(S3TargetError::Url(_))
        ));
    }

    #[test]
    fn parses_bucket_addresses() {
        let u = S3Url::parse("s3://localhost").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("localhost", ""));
        assert_eq!(u.key("v2/index.html"), "v2/index.html");
        let u = S3Url::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.key("v2/x"), "a/b/v2/x");
        assert_eq!(u.to_string(), "s3://my-bucket/a/b");
        for bad in [
            "bucket",
            "https://b",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-b-",
            "s3://b..c",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/./a",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn copy_sources_and_checksums_are_encoded() {
        assert_eq!(
            encode_key("p/v2/a/blobs/sha256:ab"),
            "p/v2/a/blobs/sha256%3Aab"
        );
        // sha256("") in base64, as S3 expects it.
        let d = Digest::of(b"");
        assert_eq!(
            checksum(&d).unwrap(),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn reads_xml_errors_and_times() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>Bucket not found: x</Message></Error>";
        assert_eq!(xml_text(body, "Code"), Some("NoSuchBucket"));
        assert_eq!(xml_text(body, "Message"), Some("Bucket not found: x"));
        assert_eq!(xml_text(body, "Resource"), None);
        let t = http_date_or_iso("2024-01-02T03:04:05.000Z").unwrap();
        let h = http_date_or_iso("Tue, 02 Jan 2024 03:04:05 GMT").unwrap();
        assert_eq!(t, h);
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let c = S3Credentials::new("GKid", "very-secret", None, "AWS_ACCESS_KEY_ID");
        let shown = format!("{c:?}");
        assert!(shown.contains("GKid") && !shown.contains("very-secret"));
    }
}
