//! Where the S3 endpoint, the region and the access key come from, as the
//! AWS tools read them: the environment, then the profile of the shared
//! files `~/.aws/credentials` and `~/.aws/config`.
//!
//! - endpoint: `--s3-endpoint`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`,
//!   the profile's `endpoint_url`; else AWS itself
//!   (`https://s3.REGION.amazonaws.com`). A custom endpoint is addressed
//!   path-style.
//! - region: `--s3-region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the
//!   profile's `region`; else `garage` (Garage's default) with a custom
//!   endpoint and `us-east-1` without.
//! - access key: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with
//!   `AWS_SESSION_TOKEN`), else the profile's `aws_access_key_id`,
//!   `aws_secret_access_key` and `aws_session_token`, from the credentials
//!   file first, then the config file.
//! - profile: `AWS_PROFILE` (or `AWS_DEFAULT_PROFILE`), else `default`;
//!   files: `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`, else under
//!   `~/.aws`.
//!
//! The environment is read once into an [`AwsEnv`], so tests give their own.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use url::Url;

use super::s3::{S3Config, S3Credentials};

/// The default region of a custom endpoint: Garage's.
pub const GARAGE_REGION: &str = "garage";
/// The default region of AWS.
pub const AWS_REGION: &str = "us-east-1";

/// Why the S3 settings could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no S3 access key: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give a profile (AWS_PROFILE) with aws_access_key_id and aws_secret_access_key in {credentials} or {config}")]
    NoCredentials { credentials: String, config: String },
    #[error("{what} is set but {missing} is not")]
    HalfCredentials {
        what: &'static str,
        missing: &'static str,
    },
    #[error("profile '{profile}' (from {from}) is in neither {credentials} nor {config}")]
    NoProfile {
        profile: String,
        from: &'static str,
        credentials: String,
        config: String,
    },
    #[error("S3 endpoint '{value}' (from {from}) is not an http:// or https:// URL with a host")]
    Endpoint { value: String, from: String },
    #[error("region '{value}' (from {from}) is not a region name")]
    Region { value: String, from: String },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The process environment as far as S3 settings go.
#[derive(Debug, Clone, Default)]
pub struct AwsEnv {
    pub vars: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

/// The environment variables the S3 settings are read from (the tests
/// clear the `AWS_` ones so that the machine's own never leak in).
pub const VARS: [&str; 13] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "HOME",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
];

impl AwsEnv {
    /// Reads the variables that matter from the process environment.
    pub fn from_process() -> AwsEnv {
        let vars = VARS
            .iter()
            .filter_map(|k| {
                let v = std::env::var(k).ok()?;
                (!v.is_empty()).then(|| (k.to_string(), v))
            })
            .collect::<BTreeMap<_, _>>();
        let home = vars.get("HOME").map(PathBuf::from);
        AwsEnv { vars, home }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str)
    }

    fn file(&self, var: &str, default: &str) -> Option<PathBuf> {
        match self.var(var) {
            Some(p) => Some(PathBuf::from(p)),
            None => self.home.as_ref().map(|h| h.join(".aws").join(default)),
        }
    }
}

/// `[section]` to `key = value`, as the AWS shared files write them;
/// nested (indented) settings such as `s3 =` blocks are skipped.
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            section = Some(name);
            continue;
        }
        if let (Some(s), Some((k, v))) = (&section, t.split_once('=')) {
            let v = v.trim();
            if !v.is_empty() {
                out.entry(s.clone())
                    .or_default()
                    .insert(k.trim().to_ascii_lowercase(), v.to_owned());
            }
        }
    }
    out
}

/// A shared file's sections, empty when it is missing.
fn read_ini(
    path: &Option<PathBuf>,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ConfigError> {
    let Some(path) = path else {
        return Ok(BTreeMap::new());
    };
    match fs::read_to_string(path) {
        Ok(t) => Ok(parse_ini(&t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(ConfigError::Io {
            path: path.clone(),
            source,
        }),
    }
}

fn shown(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.aws (HOME is not set)".into())
}

/// Checks an endpoint: http or https with a host.
pub fn parse_endpoint(value: &str, from: &str) -> Result<Url, ConfigError> {
    let err = || ConfigError::Endpoint {
        value: value.to_owned(),
        from: from.to_owned(),
    };
    let url = Url::parse(value).map_err(|_| err())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(err());
    }
    Ok(url)
}

/// Resolves the S3 settings from the flags (`endpoint`, `region`) and
/// `env`.
pub fn resolve(
    env: &AwsEnv,
    endpoint: Option<&Url>,
    region: Option<&str>,
) -> Result<S3Config, ConfigError> {
    let (profile, from) = match (env.var("AWS_PROFILE"), env.var("AWS_DEFAULT_PROFILE")) {
        (Some(p), _) => (p.to_owned(), "AWS_PROFILE"),
        (None, Some(p)) => (p.to_owned(), "AWS_DEFAULT_PROFILE"),
        (None, None) => ("default".to_owned(), ""),
    };
    let cred_path = env.file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_path = env.file("AWS_CONFIG_FILE", "config");
    let creds_file = read_ini(&cred_path)?;
    let config_file = read_ini(&config_path)?;
    let config_section = if profile == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile}")
    };
    let in_creds = creds_file.get(&profile);
    let in_config = config_file
        .get(&config_section)
        .or_else(|| config_file.get(&profile));
    if !from.is_empty() && in_creds.is_none() && in_config.is_none() {
        return Err(ConfigError::NoProfile {
            profile,
            from,
            credentials: shown(&cred_path),
            config: shown(&config_path),
        });
    }
    let setting = |k: &str| -> Option<(String, String)> {
        if let Some(v) = in_creds.and_then(|s| s.get(k)) {
            return Some((
                v.clone(),
                format!("profile {profile} in {}", shown(&cred_path)),
            ));
        }
        in_config.and_then(|s| s.get(k)).map(|v| {
            (
                v.clone(),
                format!("profile {profile} in {}", shown(&config_path)),
            )
        })
    };

    // The access key.
    let credentials = match (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => S3Credentials::new(
            id,
            secret,
            env.var("AWS_SESSION_TOKEN").map(str::to_owned),
            "AWS_ACCESS_KEY_ID",
        ),
        (Some(_), None) => {
            return Err(ConfigError::HalfCredentials {
                what: "AWS_ACCESS_KEY_ID",
                missing: "AWS_SECRET_ACCESS_KEY",
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::HalfCredentials {
                what: "AWS_SECRET_ACCESS_KEY",
                missing: "AWS_ACCESS_KEY_ID",
            })
        }
        (None, None) => match (
            setting("aws_access_key_id"),
            setting("aws_secret_access_key"),
        ) {
            (Some((id, source)), Some((secret, _))) => S3Credentials::new(
                id,
                secret,
                setting("aws_session_token").map(|(t, _)| t),
                source,
            ),
            _ => {
                return Err(ConfigError::NoCredentials {
                    credentials: shown(&cred_path),
                    config: shown(&config_path),
                })
            }
        },
    };

    // The endpoint.
    let endpoint = match endpoint {
        Some(u) => Some(u.clone()),
        None => {
            let ignore = env
                .var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let found = if ignore {
                None
            } else if let Some(v) = env.var("AWS_ENDPOINT_URL_S3") {
                Some((v.to_owned(), "AWS_ENDPOINT_URL_S3".to_owned()))
            } else if let Some(v) = env.var("AWS_ENDPOINT_URL") {
                Some((v.to_owned(), "AWS_ENDPOINT_URL".to_owned()))
            } else {
                setting("endpoint_url")
            };
            match found {
                Some((v, from)) => Some(parse_endpoint(&v, &from)?),
                None => None,
            }
        }
    };

    // The region.
    let found = match region {
        Some(r) => Some((r.to_owned(), "--s3-region".to_owned())),
        None => env
            .var("AWS_REGION")
            .map(|r| (r.to_owned(), "AWS_REGION".to_owned()))
            .or_else(|| {
                env.var("AWS_DEFAULT_REGION")
                    .map(|r| (r.to_owned(), "AWS_DEFAULT_REGION".to_owned()))
            })
            .or_else(|| setting("region")),
    };
    let region = match found {
        Some((r, from)) => {
            let ok = !r.is_empty()
                && r.len() <= 64
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ConfigError::Region { value: r, from });
            }
            r
        }
        None if endpoint.is_some() => GARAGE_REGION.to_owned(),
        None => AWS_REGION.to_owned(),
    };

    let (endpoint, path_style) = match endpoint {
        Some(u) => (u, true),
        None => {
            let v = format!("https://s3.{region}.amazonaws.com");
            (parse_endpoint(&v, "the region")?, false)
        }
    };
    Ok(S3Config {
        endpoint,
        region,
        credentials,
        path_style,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], home: Option<&std::path::Path>) -> AwsEnv {
        AwsEnv {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: home.map(PathBuf::from),
        }
    }

    #[test]
    fn environment_first_then_defaults() {
        let e = env(
            &[
                ("AWS_ACCESS_KEY_ID", "GKenv"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900"),
            ],
            None,
        );
        let c = resolve(&e, None, None).unwrap();
        assert_eq!(c.credentials.access_key_id, "GKenv");
        assert_eq!(c.region, GARAGE_REGION);
        assert!(c.path_style);
        assert_eq!(c.endpoint.as_str(), "http://127.0.0.1:3900/");
        let flag = Url::parse("http://h:1").unwrap();
        let c = resolve(&e, Some(&flag), Some("eu-1")).unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.region.as_str()),
            ("http://h:1/", "eu-1")
        );

        let aws = env(
            &[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "s")],
            None,
        );
        let c = resolve(&aws, None, None).unwrap();
        assert_eq!(c.endpoint.as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(!c.path_style);
    }

    #[test]
    fn profiles_from_the_shared_files() {
        let tmp = tempfile::tempdir().unwrap();
        let aws = tmp.path().join(".aws");
        fs::create_dir(&aws).unwrap();
        fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = ds\n\n[garage]\naws_access_key_id = GKp\naws_secret_access_key = ps\n",
        )
        .unwrap();
        fs::write(
            aws.join("config"),
            "[default]\nregion = eu-west-1\n[profile garage]\nregion = garage\nendpoint_url = http://localhost:3900\ns3 =\n  addressing_style = path\n",
        )
        .unwrap();
        let c = resolve(&env(&[], Some(tmp.path())), None, None).unwrap();
        assert_eq!(
            (c.credentials.access_key_id.as_str(), c.region.as_str()),
            ("D", "eu-west-1")
        );
        let c = resolve(
            &env(&[("AWS_PROFILE", "garage")], Some(tmp.path())),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.credentials.access_key_id, "GKp");
        assert!(c.credentials.source.contains("profile garage"));
        assert_eq!(c.region, "garage");
        assert_eq!(c.endpoint.as_str(), "http://localhost:3900/");
        let e = resolve(
            &env(&[("AWS_PROFILE", "nope")], Some(tmp.path())),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::NoProfile { .. }), "{e}");
    }

    #[test]
    fn missing_or_half_credentials_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let e = resolve(&env(&[], Some(tmp.path())), None, None).unwrap_err();
        assert!(matches!(e, ConfigError::NoCredentials { .. }));
        let e = resolve(&env(&[("AWS_ACCESS_KEY_ID", "A")], None), None, None).unwrap_err();
        assert!(matches!(e, ConfigError::HalfCredentials { .. }));
        let e = resolve(
            &env(
                &[
                    ("AWS_ACCESS_KEY_ID", "A"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                    ("AWS_ENDPOINT_URL", "ftp://x"),
                ],
                None,
            ),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Endpoint { .. }));
    }
}
