//! Registry credentials and authentication challenges.
//!
//! Credentials come, first match wins, from `--creds`, from
//! `NIXOCI_REGISTRY_USER`/`NIXOCI_REGISTRY_PASSWORD`, from the containers
//! `auth.json` (`REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$XDG_CONFIG_HOME/containers/auth.json`) and from Docker's
//! `config.json` (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`).
//! A password is never printed: [`Credentials`] redacts it in `Debug`, and
//! no error here carries one.
//!
//! [`Challenge::parse`] reads `WWW-Authenticate` (RFC 9110 section 11.6.1)
//! for the basic and bearer-token schemes.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::reference::DOCKER_HUB;

/// A user name and password, and where they came from (for messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
    /// `--creds`, an environment variable or a file name.
    pub source: String,
}

impl Credentials {
    pub fn new(username: &str, password: &str, source: &str) -> Credentials {
        Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            source: source.to_owned(),
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("--creds: expected USER:PASSWORD")]
    CredsFlag,
    #[error("NIXOCI_REGISTRY_USER and NIXOCI_REGISTRY_PASSWORD must be set together")]
    EnvPair,
    #[error("reading credentials from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid credentials file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: the entry for {key} is not base64 of USER:PASSWORD")]
    Entry { path: PathBuf, key: String },
}

/// Where to look for credentials: the environment of the process, as
/// values, so tests can give their own.
#[derive(Debug, Clone, Default)]
pub struct AuthEnv {
    pub user: Option<String>,
    pub password: Option<String>,
    pub registry_auth_file: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl AuthEnv {
    /// Reads the variables of this process.
    pub fn from_process() -> AuthEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path = |k: &str| var(k).map(PathBuf::from);
        AuthEnv {
            user: var("NIXOCI_REGISTRY_USER"),
            password: var("NIXOCI_REGISTRY_PASSWORD"),
            registry_auth_file: path("REGISTRY_AUTH_FILE"),
            xdg_runtime_dir: path("XDG_RUNTIME_DIR"),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            docker_config: path("DOCKER_CONFIG"),
            home: path("HOME"),
        }
    }

    /// The credential files to read, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(f) = &self.registry_auth_file {
            files.push(f.clone());
        } else {
            if let Some(d) = &self.xdg_runtime_dir {
                files.push(d.join("containers/auth.json"));
            }
            match (&self.xdg_config_home, &self.home) {
                (Some(d), _) => files.push(d.join("containers/auth.json")),
                (None, Some(h)) => files.push(h.join(".config/containers/auth.json")),
                (None, None) => {}
            }
        }
        match (&self.docker_config, &self.home) {
            (Some(d), _) => files.push(d.join("config.json")),
            (None, Some(h)) => files.push(h.join(".docker/config.json")),
            (None, None) => {}
        }
        files
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// What the lookup found: credentials, or a hint why there are none.
#[derive(Debug, Default)]
pub struct Lookup {
    pub credentials: Option<Credentials>,
    /// Set when a file names a credential helper for this registry, which
    /// nixoci does not run.
    pub helper_hint: Option<String>,
}

/// `https://index.docker.io/v1/` to `index.docker.io`, `reg:5000/ns/` to
/// `reg:5000/ns`.
fn normalize_key(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    k.to_owned()
}

/// The names a registry goes by in credential files.
fn registry_aliases(registry: &str) -> Vec<&str> {
    if registry == DOCKER_HUB {
        vec![DOCKER_HUB, "index.docker.io", "registry-1.docker.io"]
    } else {
        vec![registry]
    }
}

/// How specifically `key` matches `registry/repository`: `None` when it
/// does not, else the key's length (longer is more specific).
fn key_match(key: &str, registry: &str, repository: &str) -> Option<usize> {
    let key = normalize_key(key);
    registry_aliases(registry).into_iter().find_map(|alias| {
        let full = format!("{alias}/{repository}");
        let hit = key == alias || full == key || full.starts_with(&format!("{key}/"));
        hit.then_some(key.len())
    })
}

fn decode_entry(path: &Path, key: &str, e: &AuthEntry) -> Result<Option<Credentials>, AuthError> {
    let source = path.display().to_string();
    if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || AuthError::Entry {
            path: path.to_owned(),
            key: key.to_owned(),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (user, pass) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::new(user, pass, &source)));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::new(u, p, &source))),
        _ => Ok(None),
    }
}

/// Credentials in one file for `registry/repository`, most specific key
/// first.
fn from_file(path: &Path, registry: &str, repository: &str) -> Result<Lookup, AuthError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::default()),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let file: AuthFile = serde_json::from_slice(&bytes).map_err(|source| AuthError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let mut matches: Vec<(usize, &String, &AuthEntry)> = file
        .auths
        .iter()
        .filter_map(|(k, e)| key_match(k, registry, repository).map(|n| (n, k, e)))
        .collect();
    matches.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    for (_, key, entry) in matches {
        if let Some(c) = decode_entry(path, key, entry)? {
            return Ok(Lookup {
                credentials: Some(c),
                helper_hint: None,
            });
        }
    }
    let helper = file
        .cred_helpers
        .iter()
        .find(|(k, _)| key_match(k, registry, repository).is_some())
        .map(|(_, h)| h.clone())
        .or(file.creds_store);
    Ok(Lookup {
        credentials: None,
        helper_hint: helper.map(|h| {
            format!(
                "{} sends {registry} to the credential helper docker-credential-{h}, which nixoci does not run; give --creds",
                path.display()
            )
        }),
    })
}

/// Finds credentials for `registry/repository`: `creds_flag` (`USER:PASS`)
/// first, then the environment, then the credential files.
pub fn lookup(
    env: &AuthEnv,
    creds_flag: Option<&str>,
    registry: &str,
    repository: &str,
) -> Result<Lookup, AuthError> {
    if let Some(flag) = creds_flag {
        let (u, p) = flag
            .split_once(':')
            .filter(|(u, _)| !u.is_empty())
            .ok_or(AuthError::CredsFlag)?;
        return Ok(Lookup {
            credentials: Some(Credentials::new(u, p, "--creds")),
            helper_hint: None,
        });
    }
    match (&env.user, &env.password) {
        (Some(u), Some(p)) => {
            return Ok(Lookup {
                credentials: Some(Credentials::new(u, p, "NIXOCI_REGISTRY_USER")),
                helper_hint: None,
            })
        }
        (None, None) => {}
        _ => return Err(AuthError::EnvPair),
    }
    let mut hint = None;
    for file in env.files() {
        let found = from_file(&file, registry, repository)?;
        if found.credentials.is_some() {
            return Ok(found);
        }
        hint = hint.or(found.helper_hint);
    }
    Ok(Lookup {
        credentials: None,
        helper_hint: hint,
    })
}

/// One `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `basic`, `bearer`.
    pub scheme: String,
    /// Parameter names lowercased.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parses a header value into its challenges; what cannot be parsed
    /// ends the list.
    pub fn parse(header: &str) -> Vec<Challenge> {
        let mut out: Vec<Challenge> = Vec::new();
        let mut p = Parser {
            s: header.as_bytes(),
            i: 0,
        };
        loop {
            p.skip_ws_commas();
            let Some(scheme) = p.token() else { break };
            let mut ch = Challenge {
                scheme: scheme.to_ascii_lowercase(),
                params: BTreeMap::new(),
            };
            loop {
                p.skip_ws_commas();
                let save = p.i;
                let Some(name) = p.token() else { break };
                p.skip_ws();
                if !p.eat(b'=') {
                    // The next challenge's scheme (or token68 credentials).
                    p.i = save;
                    break;
                }
                p.skip_ws();
                let value = if p.peek() == Some(b'"') {
                    p.quoted()
                } else {
                    p.token()
                };
                match value {
                    Some(v) => {
                        ch.params.insert(name.to_ascii_lowercase(), v);
                    }
                    None => break,
                }
            }
            out.push(ch);
            if p.i >= p.s.len() {
                break;
            }
            let before = p.i;
            p.skip_ws_commas();
            if p.i == before && p.token_peek().is_none() {
                break;
            }
        }
        out
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_ws_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn is_tchar(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c)
    }

    fn token_peek(&self) -> Option<u8> {
        self.peek().filter(|c| Self::is_tchar(*c))
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.token_peek().is_some() {
            self.i += 1;
        }
        // token68 may end in '='s only when it is not a parameter name.
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut v = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return Some(String::from_utf8_lossy(&v).into_owned()),
                b'\\' => {
                    if let Some(n) = self.peek() {
                        v.push(n);
                        self.i += 1;
                    }
                }
                _ => v.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:samalba/my-app:pull,push")
        );

        let c = Challenge::parse(r#"Basic realm="Registry Realm", charset="UTF-8""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("charset"), Some("UTF-8"));

        let c = Challenge::parse(
            r#"Basic realm="a \"q\"", Bearer realm=https://t/x, error=invalid_token"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].param("realm"), Some("a \"q\""));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://t/x"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));

        assert!(Challenge::parse("").is_empty());
        assert_eq!(Challenge::parse("Bearer")[0].params.len(), 0);
        // Unterminated quotes do not loop or panic.
        assert_eq!(Challenge::parse(r#"Bearer realm="x"#).len(), 1);
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn looks_up_in_files_and_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        fs::create_dir_all(home.join(".docker")).unwrap();
        fs::write(
            home.join(".docker/config.json"),
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:hubpw")},
                "reg.example.org:5000": {"auth": b64("u:p:with:colons")},
                "reg.example.org:5000/team": {"auth": b64("team:tpw")},
                "http://other.org/v2/": {"username": "o", "password": "opw"},
            }, "credHelpers": {"ghcr.io": "gh"}})
            .to_string(),
        )
        .unwrap();
        let env = AuthEnv {
            home: Some(home.clone()),
            ..AuthEnv::default()
        };
        let get = |reg: &str, repo: &str| {
            lookup(&env, None, reg, repo)
                .unwrap()
                .credentials
                .map(|c| (c.username.clone(), c.password().to_owned()))
        };
        assert_eq!(
            get("docker.io", "library/alpine"),
            Some(("hub".into(), "hubpw".into()))
        );
        assert_eq!(
            get("reg.example.org:5000", "app"),
            Some(("u".into(), "p:with:colons".into()))
        );
        assert_eq!(
            get("reg.example.org:5000", "team/app"),
            Some(("team".into(), "tpw".into()))
        );
        assert_eq!(
            get("reg.example.org:5000", "teamx/app"),
            Some(("u".into(), "p:with:colons".into()))
        );
        assert_eq!(get("other.org", "x"), Some(("o".into(), "opw".into())));
        assert_eq!(get("reg.example.org", "app"), None);
        let l = lookup(&env, None, "ghcr.io", "o/app").unwrap();
        assert!(l.credentials.is_none());
        assert!(l.helper_hint.unwrap().contains("docker-credential-gh"));

        // auth.json comes before config.json; --creds and the environment first.
        let auth_json = tmp.path().join("auth.json");
        fs::write(
            &auth_json,
            serde_json::json!({"auths": {"reg.example.org:5000": {"auth": b64("podman:pw")}}})
                .to_string(),
        )
        .unwrap();
        let env2 = AuthEnv {
            registry_auth_file: Some(auth_json),
            ..env.clone()
        };
        let c = lookup(&env2, None, "reg.example.org:5000", "app")
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!(c.username, "podman");
        assert!(c.source.ends_with("auth.json"));
        let env3 = AuthEnv {
            user: Some("eu".into()),
            password: Some("ep".into()),
            ..env2.clone()
        };
        let c = lookup(&env3, None, "reg.example.org:5000", "app")
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!((c.username.as_str(), c.password()), ("eu", "ep"));
        let c = lookup(&env3, Some("f:fp"), "reg.example.org:5000", "app")
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password(), c.source.as_str()),
            ("f", "fp", "--creds")
        );
        assert!(lookup(&env3, Some("nocolon"), "r", "a").is_err());
        let half = AuthEnv {
            user: Some("eu".into()),
            ..AuthEnv::default()
        };
        assert!(matches!(
            lookup(&half, None, "r", "a"),
            Err(AuthError::EnvPair)
        ));
    }

    #[test]
    fn bad_entries_never_show_the_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("auth.json");
        fs::write(&f, r#"{"auths":{"r.org":{"auth":"c2VjcmV0cGFzc3dvcmQ="}}}"#).unwrap();
        let env = AuthEnv {
            registry_auth_file: Some(f),
            ..AuthEnv::default()
        };
        let e = lookup(&env, None, "r.org", "a").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let c = Credentials::new("u", "hunter2", "--creds");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
