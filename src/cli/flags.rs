//! Flag values parsed into types at the edge: each type has one parser,
//! which clap calls (`value_parser!` finds `FromStr`), so a bad value is
//! clap's usage error (exit 2) naming the flag, and the commands receive
//! checked values. Resolving them against the world (Nix, the store, a
//! registry) is `cli::resolve`'s job; where they take effect, the
//! library's.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::publish::auth::{self, AuthEnv, Lookup};
use crate::publish::aws::{self, AwsEnv, ConfigError};
use crate::publish::client::{ClientOptions, TimeBounds};
use crate::publish::reference::Reference;
use crate::publish::s3::S3Config;

/// A number of bytes: `4096`, `64K`, `1M`, `2GiB` (powers of 1024; `B`,
/// `K`/`KB`/`KiB`, `M`…, `G`…, any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = t.split_at(digits);
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => Some(0),
            "k" | "kb" | "kib" => Some(10),
            "m" | "mb" | "mib" => Some(20),
            "g" | "gb" | "gib" => Some(30),
            _ => None,
        };
        shift
            .and_then(|shift| number.parse::<u64>().ok()?.checked_mul(1 << shift))
            .map(ByteSize)
            .ok_or_else(|| {
                "expected bytes, or a number with K, M or G (powers of 1024), such as 64K or 16M"
                    .to_owned()
            })
    }
}

/// `KEY=VALUE` with a non-empty key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl FromStr for KeyValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(KeyValue {
                key: k.to_owned(),
                value: v.to_owned(),
            }),
            _ => Err("expected KEY=VALUE".to_owned()),
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// `PORT[/PROTO]`, held as `PORT/PROTO` (`tcp` by default).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExposedPort(String);

impl ExposedPort {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ExposedPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
        if !port_ok || !["tcp", "udp", "sctp"].contains(&proto) {
            return Err("expected PORT[/tcp|udp|sctp] with PORT from 1 to 65535".to_owned());
        }
        Ok(ExposedPort(format!("{port}/{proto}")))
    }
}

/// An image's creation time: RFC 3339 (`2024-01-01T00:00:00Z`, kept as
/// written) or seconds since 1970 (written as RFC 3339 in UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created(String);

impl Created {
    /// The epoch, 1970-01-01T00:00:00Z.
    pub fn epoch() -> Created {
        Created(format_epoch(0))
    }

    /// Seconds since 1970, as `SOURCE_DATE_EPOCH` gives them.
    pub fn from_epoch(s: &str) -> Result<Created, String> {
        match s.parse::<i64>() {
            Ok(secs) if (0..=253_402_300_799).contains(&secs) => Ok(Created(format_epoch(secs))),
            _ => Err("expected seconds since 1970 as a non-negative integer".to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Created {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if valid_rfc3339(s) {
            return Ok(Created(s.to_owned()));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return Created::from_epoch(s);
        }
        Err("expected an RFC 3339 time such as 2024-01-01T00:00:00Z, or seconds since 1970".into())
    }
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

/// An age or grace period: a number with `s`, `m`, `h` or `d` (`90s`,
/// `30m`, `12h`, `30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(pub Duration);

impl FromStr for Age {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = t.split_at(digits);
        let seconds: Option<u64> = match unit {
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            _ => None,
        };
        seconds
            .and_then(|n| number.parse::<u64>().ok()?.checked_mul(n))
            .map(|secs| Age(Duration::from_secs(secs)))
            .ok_or_else(|| "expected a number with s, m, h or d, such as 90m, 12h or 30d".into())
    }
}

impl fmt::Display for Age {
    /// The biggest unit that says it exactly: `3600 s` is `1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        match [("d", 86_400), ("h", 3600), ("m", 60)]
            .iter()
            .find(|(_, n)| secs > 0 && secs.is_multiple_of(*n))
        {
            Some((unit, n)) => write!(f, "{}{unit}", secs / n),
            None => write!(f, "{secs}s"),
        }
    }
}

/// A request time limit: `30s`, `2m`, `500ms`, `1.5s`, `1h`, or a number
/// of seconds; from 1 ms to a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl FromStr for Timeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, unit) = t.split_at(digits);
        let scale = match unit.trim() {
            "ms" => 0.001,
            "" | "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => f64::NAN,
        };
        let secs = number
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && !number.starts_with('.'))
            .map(|n| n * scale);
        match secs {
            Some(x) if (0.001..=86_400.0).contains(&x) => Ok(Timeout(Duration::from_secs_f64(x))),
            Some(x) if x > 86_400.0 => Err("at most a day (24h)".into()),
            Some(x) if x >= 0.0 => Err("too short to answer in: give 1ms or more".into()),
            _ => Err("expected a duration such as 30s, 2m, 500ms or a number of seconds".into()),
        }
    }
}

impl Default for Timeout {
    fn default() -> Self {
        Timeout(TimeBounds::default().timeout)
    }
}

/// `--copy-to-root [PLATFORM=]INSTALLABLE`: a tree placed at `/`, for
/// every platform or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyToRoot {
    pub platform: Option<crate::platform::Platform>,
    pub installable: String,
}

impl FromStr for CopyToRoot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // An installable may hold '=' too (path:x?dir=y#env): a platform
        // only when the part before the first '=' is one.
        if let Some((p, rest)) = s.split_once('=') {
            if let Ok(platform) = p.parse() {
                return Ok(CopyToRoot {
                    platform: Some(platform),
                    installable: rest.to_owned(),
                });
            }
        }
        if s.is_empty() {
            return Err("expected [PLATFORM=]INSTALLABLE".to_owned());
        }
        Ok(CopyToRoot {
            platform: None,
            installable: s.to_owned(),
        })
    }
}

/// `NAME:TAG` in a static registry: a repository and one of its tags,
/// checked against the distribution grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTag {
    pub repository: String,
    pub tag: String,
}

impl FromStr for NameTag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (repository, tag) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("expected NAME:TAG, such as team/hello:1.0, not '{s}'"))?;
        if !crate::publish::reference::valid_repository(repository) {
            return Err(format!(
                "'{repository}' is not a repository name (lowercase letters and digits separated by '.', '_', '__' or dashes, components joined by '/')"
            ));
        }
        if !crate::publish::reference::valid_tag(tag) {
            return Err(format!(
                "'{tag}' is not a tag (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"
            ));
        }
        Ok(NameTag {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

impl fmt::Display for NameTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// How to reach a registry: the flags `nixoci push` and `nixoci build
/// --previous` share, and the credential lookup behind them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// USER:PASSWORD for the registry (visible to other local users in
    /// the process list; prefer NIXOCI_REGISTRY_USER and
    /// NIXOCI_REGISTRY_PASSWORD or an auth file).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,

    /// Allow plain HTTP and unverified TLS to a registry that is not on
    /// this machine.
    #[arg(long)]
    pub insecure: bool,

    /// Trust the certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Time limit of each request: connecting, a stall, and an answer
    /// without a body each get DURATION (30s, 2m, 500ms, or seconds); a
    /// body also its size at 100 KiB/s [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<Timeout>,
}

impl RegistryArgs {
    /// True when any of the flags was given.
    pub fn given(&self) -> bool {
        self.creds.is_some() || self.insecure || self.ca_file.is_some() || self.timeout.is_some()
    }

    /// The client options these flags ask for (retries and backoff as
    /// `ClientOptions` has them).
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            insecure: self.insecure,
            ca_file: self.ca_file.clone(),
            bounds: TimeBounds {
                timeout: self.timeout.unwrap_or_default().0,
                ..TimeBounds::default()
            },
            ..ClientOptions::default()
        }
    }

    /// [`RegistryArgs::client_options`] for a push: `retries` retries of
    /// each blob or manifest (`push --retries`, `build --push`).
    pub fn push_options(&self, retries: u32) -> ClientOptions {
        ClientOptions {
            retries,
            ..self.client_options()
        }
    }

    /// The credentials for `reference`: `--creds`, else the environment and
    /// the auth files.
    pub fn credentials(&self, reference: &Reference) -> Result<Lookup, auth::AuthError> {
        auth::lookup(
            &AuthEnv::from_process(),
            self.creds.as_deref(),
            &reference.registry,
            &reference.repository,
        )
    }
}

/// `--s3-endpoint URL`: an http:// or https:// URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Endpoint(pub url::Url);

impl FromStr for S3Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        aws::parse_endpoint(s, "--s3-endpoint")
            .map(S3Endpoint)
            .map_err(|_| {
                "expected an http:// or https:// URL, such as http://127.0.0.1:3900".into()
            })
    }
}

/// How to reach an S3 bucket: the flags of `push s3://…` and `gc
/// s3://…`, and the AWS tools' environment and shared files behind them
/// (see [`crate::publish::aws`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// The S3 API endpoint, such as http://127.0.0.1:3900 for Garage,
    /// addressed path-style [default: AWS_ENDPOINT_URL_S3,
    /// AWS_ENDPOINT_URL, the profile's endpoint_url, else AWS]. The
    /// access key comes from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    /// and AWS_SESSION_TOKEN, else from the profile (AWS_PROFILE, else
    /// default) in ~/.aws/credentials and ~/.aws/config.
    #[arg(long = "s3-endpoint", value_name = "URL")]
    pub endpoint: Option<S3Endpoint>,

    /// The region S3 requests are signed for [default: AWS_REGION,
    /// AWS_DEFAULT_REGION, the profile's region, else garage with a
    /// custom endpoint and us-east-1 without].
    #[arg(long = "s3-region", value_name = "REGION")]
    pub region: Option<String>,
}

impl S3Args {
    /// True when any of the flags was given.
    pub fn given(&self) -> bool {
        self.endpoint.is_some() || self.region.is_some()
    }

    /// The endpoint, region and access key, from the flags, the
    /// environment and the AWS shared files.
    pub fn config(&self) -> Result<S3Config, ConfigError> {
        aws::resolve(
            &AwsEnv::from_process(),
            self.endpoint.as_ref().map(|e| &e.0),
            self.region.as_deref(),
        )
    }
}

/// `n` bytes for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
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

/// Threads to use by default: one per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("0", 0),
            ("4096", 4096),
            ("64K", 64 << 10),
            ("1MiB", 1 << 20),
            ("1kib", 1 << 10),
            ("16MB", 16 << 20),
            ("16MiB", 16 << 20),
            ("512k", 512 << 10),
            ("100B", 100),
            ("1G", 1 << 30),
            ("2g", 2 << 30),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(want)), "{s}");
        }
        for bad in ["", "M", "1.5M", "-1", "-1M", "1T", "99999999999G", "1 M"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn key_values() {
        let kv: KeyValue = "A=b=c".parse().unwrap();
        assert_eq!((kv.key.as_str(), kv.value.as_str()), ("A", "b=c"));
        assert_eq!(kv.to_string(), "A=b=c");
        assert_eq!("A=".parse::<KeyValue>().unwrap().value, "");
        for bad in ["", "=x", "novalue"] {
            assert!(bad.parse::<KeyValue>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!("8080".parse::<ExposedPort>().unwrap().as_str(), "8080/tcp");
        assert_eq!("53/udp".parse::<ExposedPort>().unwrap().as_str(), "53/udp");
        for bad in ["0", "70000", "80/http", "x/tcp", ""] {
            assert!(bad.parse::<ExposedPort>().is_err(), "{bad}");
        }
    }

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
    fn creation_times() {
        assert_eq!(Created::epoch().as_str(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Created::from_epoch("86400").unwrap().as_str(),
            "1970-01-02T00:00:00Z"
        );
        assert_eq!(
            "2024-05-06T07:08:09.5+02:00"
                .parse::<Created>()
                .unwrap()
                .as_str(),
            "2024-05-06T07:08:09.5+02:00"
        );
        assert_eq!(
            "86400".parse::<Created>().unwrap().as_str(),
            "1970-01-02T00:00:00Z"
        );
        for bad in ["yesterday", "-5", ""] {
            assert!(Created::from_epoch(bad).is_err(), "{bad}");
        }
        for bad in [
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0200",
            "",
        ] {
            assert!(bad.parse::<Created>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ages() {
        for (s, secs) in [
            ("0s", 0),
            ("90s", 90),
            ("90m", 5400),
            ("12h", 43_200),
            ("30d", 2_592_000),
        ] {
            let age: Age = s.parse().unwrap();
            assert_eq!(age, Age(Duration::from_secs(secs)), "{s}");
            assert_eq!(age.to_string().parse::<Age>(), Ok(age), "{s}");
        }
        for bad in ["", "30", "d", "1w", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(bad.parse::<Age>().is_err(), "{bad}");
        }
        let t: NameTag = "team/hello:1.0".parse().unwrap();
        assert_eq!(
            (t.repository.as_str(), t.tag.as_str()),
            ("team/hello", "1.0")
        );
        assert_eq!(t.to_string(), "team/hello:1.0");
        for bad in [
            "hello", "hello:", ":1.0", "Hello:1", "../x:1", "a:b/c", "a:.x",
        ] {
            assert!(bad.parse::<NameTag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("30s", ms(30_000)),
            ("30", ms(30_000)),
            (" 2m ", ms(120_000)),
            ("2min", ms(120_000)),
            ("500ms", ms(500)),
            ("1.5s", ms(1_500)),
            ("0.25", ms(250)),
            ("1h", ms(3_600_000)),
            ("24h", ms(86_400_000)),
        ] {
            assert_eq!(s.parse::<Timeout>(), Ok(Timeout(want)), "{s}");
        }
        for bad in [
            "", "0", "0s", "0ms", "0.0", "s", "-1", "-5s", "1x", "1 s s", "abc", "1..2s", ".5s",
            "25h", "inf", "NaN", "1e3", "0.0001", "2d",
        ] {
            assert!(bad.parse::<Timeout>().is_err(), "{bad:?} was accepted");
        }
    }
}
