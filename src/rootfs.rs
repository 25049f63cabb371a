//! What an image holds outside the store: trees of store paths placed at
//! `/` (`--copy-to-root`), directories, symbolic links and the user
//! database, declared on the command line and written as one root layer on
//! top of the store layers, with owners and modes (no fakeroot). Pure but
//! for [`read_tree`], which lists a store path's tree: flags in, a sorted
//! tree of entries out; `layer::tar` writes it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a root filesystem flag or the tree it makes is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootFsError {
    #[error("{flag} '{given}': {problem}")]
    Syntax {
        flag: &'static str,
        given: String,
        problem: String,
    },
    #[error("{path} is given twice, differently: by {first} and by {second}")]
    Conflict {
        path: String,
        first: String,
        second: String,
    },
    #[error("{path} ({by}) is inside {parent}, which {parent_by} makes a {kind}, not a directory")]
    NotADirectory {
        path: String,
        by: String,
        parent: String,
        parent_by: String,
        kind: &'static str,
    },
}

/// An entry of the root layer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Directory,
    File(Vec<u8>),
    Symlink(String),
    /// A file of a store path (`--copy-to-root`), read when the layer is
    /// written: `source` is its absolute path in the store.
    StoreFile {
        source: String,
        size: u64,
        executable: bool,
        /// SHA-256 of the contents, to tell equal files of two trees.
        sha256: String,
    },
}

impl Kind {
    /// The same thing at one path: store files by contents, not source.
    fn same(&self, other: &Kind) -> bool {
        match (self, other) {
            (
                Kind::StoreFile {
                    size: a,
                    executable: x,
                    sha256: h,
                    ..
                },
                Kind::StoreFile {
                    size: b,
                    executable: y,
                    sha256: k,
                    ..
                },
            ) => a == b && x == y && h == k,
            (a, b) => a == b,
        }
    }
}

/// One entry: what it is, its mode (permission bits, setuid/setgid/sticky
/// included) and owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Directory => "directory",
            Kind::File(_) | Kind::StoreFile { .. } => "file",
            Kind::Symlink(_) => "symbolic link",
        }
    }
}

/// The root layer's tree: absolute paths (`/tmp`, `/etc/passwd`) to
/// entries, parents present, in path order.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RootFs {
    pub entries: BTreeMap<String, Entry>,
}

impl RootFs {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Checks an absolute, normal path in the image: `/a/b`, no `.` or `..`
/// parts, no empty parts, not `/` itself, nothing under the store.
fn image_path(flag: &'static str, given: &str, path: &str) -> Result<String, RootFsError> {
    let bad = |problem: &str| RootFsError::Syntax {
        flag,
        given: given.to_owned(),
        problem: problem.to_owned(),
    };
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad("the path must name something below /"));
    }
    if trimmed[1..]
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad("the path must not hold empty, '.' or '..' parts"));
    }
    if trimmed.contains('\0') || trimmed.chars().any(char::is_control) {
        return Err(bad("the path holds a control character"));
    }
    if trimmed == "/nix" || trimmed.starts_with("/nix/") {
        return Err(bad(
            "the path is in /nix, which the store layers and the Nix database own",
        ));
    }
    Ok(trimmed.to_owned())
}

/// The largest id a tar header holds (7 octal digits).
pub const MAX_ID: u32 = 0o7777777;

fn number(flag: &'static str, given: &str, what: &str, s: &str) -> Result<u32, RootFsError> {
    s.parse::<u32>()
        .ok()
        .filter(|&n| n <= MAX_ID)
        .ok_or_else(|| RootFsError::Syntax {
            flag,
            given: given.to_owned(),
            problem: format!("{what} '{s}' is not a number from 0 to {MAX_ID}"),
        })
}

/// `--dir PATH[:MODE[:UID:GID]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FromStr for DirSpec {
    type Err = RootFsError;

    fn from_str(s: &str) -> Result<Self, RootFsError> {
        const FLAG: &str = "--dir";
        let parts: Vec<&str> = s.split(':').collect();
        let (path, mode, owner) = match parts.as_slice() {
            [path] => (*path, None, None),
            [path, mode] => (*path, Some(*mode), None),
            [path, mode, uid, gid] => (*path, Some(*mode), Some((*uid, *gid))),
            _ => {
                return Err(RootFsError::Syntax {
                    flag: FLAG,
                    given: s.to_owned(),
                    problem: "expected PATH[:MODE[:UID:GID]], such as /tmp:1777".to_owned(),
                })
            }
        };
        let mode = match mode {
            None => 0o755,
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|&m| m <= 0o7777)
                .ok_or_else(|| RootFsError::Syntax {
                    flag: FLAG,
                    given: s.to_owned(),
                    problem: format!("mode '{m}' is not an octal mode such as 0755 or 1777"),
                })?,
        };
        let (uid, gid) = match owner {
            None => (0, 0),
            Some((u, g)) => (number(FLAG, s, "UID", u)?, number(FLAG, s, "GID", g)?),
        };
        Ok(DirSpec {
            path: image_path(FLAG, s, path)?,
            mode,
            uid,
            gid,
        })
    }
}

/// `--symlink PATH=TARGET`; TARGET is absolute and may hold `{root}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkSpec {
    pub path: String,
    pub target: String,
}

impl FromStr for SymlinkSpec {
    type Err = RootFsError;

    fn from_str(s: &str) -> Result<Self, RootFsError> {
        const FLAG: &str = "--symlink";
        let bad = |problem: &str| RootFsError::Syntax {
            flag: FLAG,
            given: s.to_owned(),
            problem: problem.to_owned(),
        };
        let (path, target) = s
            .split_once('=')
            .ok_or_else(|| bad("expected PATH=TARGET, such as /bin/sh={root}/bin/sh"))?;
        if !(target.starts_with('/') || target.starts_with("{root}")) {
            return Err(bad("the target must be absolute"));
        }
        if target.contains('\0') || target.chars().any(char::is_control) {
            return Err(bad("the target holds a control character"));
        }
        Ok(SymlinkSpec {
            path: image_path(FLAG, s, path)?,
            target: target.to_owned(),
        })
    }
}

/// A name in `/etc/passwd` or `/etc/group`.
fn account_name(flag: &'static str, given: &str, name: &str) -> Result<String, RootFsError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(RootFsError::Syntax {
            flag,
            given: given.to_owned(),
            problem: format!(
                "'{name}' is not a user or group name (letters, digits, '.', '_', '-')"
            ),
        })
    }
}

/// `--add-user NAME:UID[:GID[:HOME[:SHELL]]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

impl FromStr for UserSpec {
    type Err = RootFsError;

    fn from_str(s: &str) -> Result<Self, RootFsError> {
        const FLAG: &str = "--add-user";
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=5).contains(&parts.len()) {
            return Err(RootFsError::Syntax {
                flag: FLAG,
                given: s.to_owned(),
                problem: "expected NAME:UID[:GID[:HOME[:SHELL]]], such as app:1000".to_owned(),
            });
        }
        let name = account_name(FLAG, s, parts[0])?;
        let uid = number(FLAG, s, "UID", parts[1])?;
        let gid = match parts.get(2) {
            Some(g) if !g.is_empty() => number(FLAG, s, "GID", g)?,
            _ => uid,
        };
        let home = match parts.get(3) {
            Some(h) if !h.is_empty() => image_path(FLAG, s, h)?,
            _ => format!("/home/{name}"),
        };
        let shell = match parts.get(4) {
            Some(sh) if !sh.is_empty() => {
                if !sh.starts_with('/') {
                    return Err(RootFsError::Syntax {
                        flag: FLAG,
                        given: s.to_owned(),
                        problem: format!("shell '{sh}' must be an absolute path"),
                    });
                }
                (*sh).to_owned()
            }
            _ => "/bin/sh".to_owned(),
        };
        Ok(UserSpec {
            name,
            uid,
            gid,
            home,
            shell,
        })
    }
}

/// `--add-group NAME:GID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub gid: u32,
}

impl FromStr for GroupSpec {
    type Err = RootFsError;

    fn from_str(s: &str) -> Result<Self, RootFsError> {
        const FLAG: &str = "--add-group";
        match s.split_once(':') {
            Some((name, gid)) => Ok(GroupSpec {
                name: account_name(FLAG, s, name)?,
                gid: number(FLAG, s, "GID", gid)?,
            }),
            None => Err(RootFsError::Syntax {
                flag: FLAG,
                given: s.to_owned(),
                problem: "expected NAME:GID, such as app:1000".to_owned(),
            }),
        }
    }
}

impl fmt::Display for DirSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--dir {}", self.path)
    }
}

/// Everything the command line asks to put outside the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootSpec {
    /// Trees placed at `/`, each listed by [`read_tree`], with the flag
    /// that asked for it.
    pub trees: Vec<(String, Vec<(String, Entry)>)>,
    pub dirs: Vec<DirSpec>,
    pub symlinks: Vec<SymlinkSpec>,
    pub users: Vec<UserSpec>,
    pub groups: Vec<GroupSpec>,
}

/// How a source of entries names one (`--dir`, `/tmp`): `--dir /tmp`.
type Label = Box<dyn Fn(&str, &str) -> String>;

/// The entries the tree gets, each with what asked for it.
struct Builder {
    entries: BTreeMap<String, (Entry, String)>,
}

impl Builder {
    /// Adds `entry` at `path`; the same entry twice is fine, a different
    /// one is a conflict naming both.
    fn add(&mut self, path: &str, entry: Entry, by: String) -> Result<(), RootFsError> {
        match self.entries.get(path) {
            Some((old, first))
                if !(old.kind.same(&entry.kind)
                    && (old.mode, old.uid, old.gid) == (entry.mode, entry.uid, entry.gid)) =>
            {
                Err(RootFsError::Conflict {
                    path: path.to_owned(),
                    first: first.clone(),
                    second: by,
                })
            }
            Some(_) => Ok(()),
            None => {
                self.entries.insert(path.to_owned(), (entry, by));
                Ok(())
            }
        }
    }

    /// Adds the parents of every entry that no flag made: directories 0755
    /// owned by root. A parent that is not a directory is an error.
    fn parents(mut self) -> Result<RootFs, RootFsError> {
        let paths: Vec<(String, String)> = self
            .entries
            .iter()
            .map(|(p, (_, by))| (p.clone(), by.clone()))
            .collect();
        for (path, by) in paths {
            let mut parent = path.as_str();
            while let Some(i) = parent.rfind('/').filter(|&i| i > 0) {
                parent = &path[..i];
                match self.entries.get(parent) {
                    Some((e, _)) if e.kind == Kind::Directory => {}
                    Some((e, parent_by)) => {
                        return Err(RootFsError::NotADirectory {
                            path: path.clone(),
                            by,
                            parent: parent.to_owned(),
                            parent_by: parent_by.clone(),
                            kind: e.kind_name(),
                        })
                    }
                    None => {
                        let dir = Entry {
                            kind: Kind::Directory,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        };
                        self.entries
                            .insert(parent.to_owned(), (dir, format!("the parent of {path}")));
                    }
                }
            }
        }
        Ok(RootFs {
            entries: self.entries.into_iter().map(|(p, (e, _))| (p, e)).collect(),
        })
    }
}

impl RootSpec {
    pub fn is_empty(&self) -> bool {
        self.trees.is_empty()
            && self.dirs.is_empty()
            && self.symlinks.is_empty()
            && self.users.is_empty()
            && self.groups.is_empty()
    }

    /// The tree for the platform whose root store path is `root` (`{root}`
    /// in symlink targets).
    pub fn tree(&self, root: &str) -> Result<RootFs, RootFsError> {
        self.tree_with(root, None)
    }

    /// The tree of these flags and of `other`'s entries (an image spec's,
    /// named by `label`): entries of both merge (the same entry twice is
    /// fine), users and groups go into one user database, and a conflict
    /// names both.
    pub fn tree_with(
        &self,
        root: &str,
        other: Option<(&str, &RootSpec)>,
    ) -> Result<RootFs, RootFsError> {
        let mut b = Builder {
            entries: BTreeMap::new(),
        };
        // Each source with how it names what it asks for.
        let mut sources: Vec<(&RootSpec, Label)> = vec![(
            self,
            Box::new(|flag: &str, what: &str| format!("{flag} {what}")),
        )];
        if let Some((label, spec)) = other {
            let label = label.to_owned();
            let name = move |flag: &str, what: &str| {
                let field = match flag {
                    "--dir" => "dirs",
                    "--symlink" => "symlinks",
                    "--add-user" => "users",
                    _ => "groups",
                };
                format!("{label} ({field} {what})")
            };
            sources.push((spec, Box::new(name)));
        }
        for (spec, _) in &sources {
            for (by, tree) in &spec.trees {
                for (path, entry) in tree {
                    b.add(path, entry.clone(), by.clone())?;
                }
            }
        }
        for (spec, by) in &sources {
            for d in &spec.dirs {
                let entry = Entry {
                    kind: Kind::Directory,
                    mode: d.mode,
                    uid: d.uid,
                    gid: d.gid,
                };
                b.add(&d.path, entry, by("--dir", &d.path))?;
            }
        }
        for (spec, by) in &sources {
            for l in &spec.symlinks {
                let entry = Entry {
                    kind: Kind::Symlink(l.target.replace("{root}", root)),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                };
                b.add(&l.path, entry, by("--symlink", &l.path))?;
            }
        }
        // Each user and group once; the same name given differently by
        // two sources is a conflict.
        let mut users: BTreeMap<&str, (&UserSpec, String)> = BTreeMap::new();
        let mut groups: BTreeMap<&str, (&GroupSpec, String)> = BTreeMap::new();
        for (spec, by) in &sources {
            for u in &spec.users {
                let label = by("--add-user", &u.name);
                match users.get(u.name.as_str()) {
                    Some((old, first)) if *old != u => {
                        return Err(RootFsError::Conflict {
                            path: format!("user {}", u.name),
                            first: first.clone(),
                            second: label,
                        })
                    }
                    Some(_) => {}
                    None => {
                        users.insert(&u.name, (u, label));
                    }
                }
            }
            for g in &spec.groups {
                let label = by("--add-group", &g.name);
                match groups.get(g.name.as_str()) {
                    Some((old, first)) if *old != g => {
                        return Err(RootFsError::Conflict {
                            path: format!("group {}", g.name),
                            first: first.clone(),
                            second: label,
                        })
                    }
                    Some(_) => {}
                    None => {
                        groups.insert(&g.name, (g, label));
                    }
                }
            }
        }
        if !users.is_empty() || !groups.is_empty() {
            let users: Vec<&UserSpec> = users.values().map(|(u, _)| *u).collect();
            let groups: Vec<&GroupSpec> = groups.values().map(|(g, _)| *g).collect();
            let database_by = if other.is_some() {
                "--add-user/--add-group and the image spec's users/groups"
            } else {
                "--add-user/--add-group"
            };
            for (path, bytes) in user_database(&users, &groups) {
                let file = Entry {
                    kind: Kind::File(bytes),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                };
                b.add(path, file, database_by.to_owned())?;
            }
            // A home a --dir declares is as that says.
            let declared: Vec<&str> = sources
                .iter()
                .flat_map(|(s, _)| s.dirs.iter().map(|d| d.path.as_str()))
                .collect();
            for (spec, by) in &sources {
                for u in spec
                    .users
                    .iter()
                    .filter(|u| !declared.contains(&u.home.as_str()))
                {
                    let home = Entry {
                        kind: Kind::Directory,
                        mode: 0o755,
                        uid: u.uid,
                        gid: u.gid,
                    };
                    let label = format!("the home of {}", by("--add-user", &u.name));
                    b.add(&u.home, home, label)?;
                }
            }
        }
        b.parents()
    }
}

/// `/etc/passwd`, `/etc/group` (with `root` and `nobody`, as
/// dockerTools' fakeNss) and `/etc/nsswitch.conf`. A user whose group
/// no `--add-group` names gets a group of its own name.
fn user_database(users: &[&UserSpec], groups_given: &[&GroupSpec]) -> [(&'static str, Vec<u8>); 3] {
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/false\n",
    );
    // In id order, whatever the order of the flags.
    let mut users: Vec<&UserSpec> = users.to_vec();
    users.sort_by(|a, b| (a.uid, &a.name).cmp(&(b.uid, &b.name)));
    for u in &users {
        passwd.push_str(&format!(
            "{}:x:{}:{}::{}:{}\n",
            u.name, u.uid, u.gid, u.home, u.shell
        ));
    }
    let mut groups: Vec<(String, u32)> = vec![("root".to_owned(), 0), ("nobody".to_owned(), 65534)];
    groups.extend(groups_given.iter().map(|g| (g.name.clone(), g.gid)));
    for u in &users {
        if !groups.iter().any(|(_, gid)| *gid == u.gid) {
            groups.push((u.name.clone(), u.gid));
        }
    }
    groups[2..].sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let group: String = groups
        .iter()
        .map(|(name, gid)| format!("{name}:x:{gid}:\n"))
        .collect();
    [
        ("/etc/group", group.into_bytes()),
        ("/etc/nsswitch.conf", b"hosts: files dns\n".to_vec()),
        ("/etc/passwd", passwd.into_bytes()),
    ]
}

/// `--chmod REGEX=MODE` or `--chown REGEX=UID:GID`: a rule over every path
/// of the image (absolute, store paths included), the pattern anchored at
/// both ends.
#[derive(Debug, Clone)]
pub struct PermRule {
    /// What the user gave, for messages and cache keys.
    pub given: String,
    pub flag: &'static str,
    pattern: regex::Regex,
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
}

impl PermRule {
    fn parse<'s>(flag: &'static str, s: &'s str) -> Result<(regex::Regex, &'s str), RootFsError> {
        let bad = |problem: String| RootFsError::Syntax {
            flag,
            given: s.to_owned(),
            problem,
        };
        // The pattern may hold '=' itself: the value is after the last one.
        let (pattern, value) = s
            .rsplit_once('=')
            .ok_or_else(|| bad("expected REGEX=VALUE".to_owned()))?;
        let regex = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| bad(format!("not a regular expression ({e})").replace('\n', " ")))?;
        Ok((regex, value))
    }

    /// `--chmod REGEX=MODE`.
    pub fn chmod(s: &str) -> Result<PermRule, RootFsError> {
        const FLAG: &str = "--chmod";
        let (pattern, mode) = PermRule::parse(FLAG, s)?;
        let mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|&m| m <= 0o7777 && !mode.is_empty())
            .ok_or_else(|| RootFsError::Syntax {
                flag: FLAG,
                given: s.to_owned(),
                problem: format!("mode '{mode}' is not an octal mode such as 0755 or 4755"),
            })?;
        Ok(PermRule {
            given: s.to_owned(),
            flag: FLAG,
            pattern,
            mode: Some(mode),
            owner: None,
        })
    }

    /// `--chown REGEX=UID:GID`.
    pub fn chown(s: &str) -> Result<PermRule, RootFsError> {
        const FLAG: &str = "--chown";
        let (pattern, owner) = PermRule::parse(FLAG, s)?;
        let (uid, gid) = owner.split_once(':').ok_or_else(|| RootFsError::Syntax {
            flag: FLAG,
            given: s.to_owned(),
            problem: "expected REGEX=UID:GID".to_owned(),
        })?;
        Ok(PermRule {
            given: s.to_owned(),
            flag: FLAG,
            pattern,
            mode: None,
            owner: Some((number(FLAG, s, "UID", uid)?, number(FLAG, s, "GID", gid)?)),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.pattern.is_match(path)
    }
}

/// The `--chmod` and `--chown` rules of an image, applied in order to every
/// entry of every layer; later rules win.
#[derive(Debug, Clone, Default)]
pub struct Perms {
    pub rules: Vec<PermRule>,
}

impl Perms {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The mode and owner of the entry at `path` (absolute, no trailing
    /// `/`) that had `mode` and `owner`. A symlink's mode stays.
    pub fn apply(
        &self,
        path: &str,
        symlink: bool,
        mode: u32,
        owner: (u32, u32),
    ) -> (u32, (u32, u32)) {
        let (mut mode, mut owner) = (mode, owner);
        for rule in self.rules.iter().filter(|r| r.matches(path)) {
            if let (Some(m), false) = (rule.mode, symlink) {
                mode = m;
            }
            if let Some(o) = rule.owner {
                owner = o;
            }
        }
        (mode, owner)
    }

    /// The rules as text, for the layer cache's key.
    pub fn key_text(&self) -> String {
        self.rules
            .iter()
            .map(|r| format!("{} {}\n", r.flag, r.given))
            .collect()
    }
}

/// Why a store path's tree could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("reading {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: unsupported file type (only regular files, directories and symlinks belong in the store)")]
    FileType(std::path::PathBuf),
    #[error("{0}: a name that is not UTF-8 cannot be placed at /")]
    Name(std::path::PathBuf),
}

/// The entries `--copy-to-root STORE_PATH` places at `/`: every file,
/// directory and symlink under the store path (read from `store_root`),
/// at the same path below `/`. Directories get 0755, files the store's
/// 0444 or 0555, symlinks stay symlinks; all owned by root.
pub fn read_tree(
    store_root: &std::path::Path,
    store_path: &str,
) -> Result<Vec<(String, Entry)>, TreeError> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let top = store_root.join(store_path.trim_start_matches('/'));
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| TreeError::Io { path, source }
    };
    let meta = std::fs::symlink_metadata(&top).map_err(io(&top))?;
    // A store path that is a file or a symlink has no tree to place.
    if !meta.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut pending = vec![(top.clone(), String::new())];
    while let Some((dir, image)) = pending.pop() {
        for child in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let child = child.map_err(io(&dir))?;
            let disk = child.path();
            let name = child
                .file_name()
                .into_string()
                .map_err(|_| TreeError::Name(disk.clone()))?;
            let path = format!("{image}/{name}");
            let kind = child.file_type().map_err(io(&disk))?;
            let root = |kind, mode| Entry {
                kind,
                mode,
                uid: 0,
                gid: 0,
            };
            if kind.is_dir() {
                out.push((path.clone(), root(Kind::Directory, 0o755)));
                pending.push((disk, path));
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&disk).map_err(io(&disk))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| TreeError::Name(disk.clone()))?;
                out.push((path, root(Kind::Symlink(target), 0o777)));
            } else if kind.is_file() {
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&disk)
                    .map_err(io(&disk))?;
                let meta = file.metadata().map_err(io(&disk))?;
                let executable = meta.permissions().mode() & 0o111 != 0;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = file.read(&mut buf).map_err(io(&disk))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                let source = format!("{store_path}{path}");
                let entry = Kind::StoreFile {
                    source,
                    size: meta.len(),
                    executable,
                    sha256: format!("{:x}", hasher.finalize()),
                };
                out.push((path, root(entry, if executable { 0o555 } else { 0o444 })));
            } else {
                return Err(TreeError::FileType(disk));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dirs: &[&str], links: &[&str], users: &[&str], groups: &[&str]) -> RootSpec {
        RootSpec {
            trees: Vec::new(),
            dirs: dirs.iter().map(|d| d.parse().unwrap()).collect(),
            symlinks: links.iter().map(|l| l.parse().unwrap()).collect(),
            users: users.iter().map(|u| u.parse().unwrap()).collect(),
            groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn flags_parse() {
        let d: DirSpec = "/var/lib/app:0750:1000:1000".parse().unwrap();
        assert_eq!(
            (d.path.as_str(), d.mode, d.uid, d.gid),
            ("/var/lib/app", 0o750, 1000, 1000)
        );
        let t: DirSpec = "/tmp:1777".parse().unwrap();
        assert_eq!((t.mode, t.uid), (0o1777, 0));
        assert_eq!("/tmp/".parse::<DirSpec>().unwrap().path, "/tmp");
        for bad in [
            "tmp",
            "/",
            "/tmp:999",
            "/tmp:rwx",
            "/tmp:17777",
            "/tmp:0755:1000",
            "/a/../b",
            "/nix/store/x",
            "/tmp:0755:x:1",
        ] {
            assert!(bad.parse::<DirSpec>().is_err(), "{bad}");
        }
        let l: SymlinkSpec = "/bin/sh={root}/bin/sh".parse().unwrap();
        assert_eq!(l.target, "{root}/bin/sh");
        for bad in [
            "/bin/sh",
            "/bin/sh=bin/busybox",
            "bin/sh=/x",
            "/bin/sh=/a\nb",
        ] {
            assert!(bad.parse::<SymlinkSpec>().is_err(), "{bad}");
        }
        let u: UserSpec = "app:1000".parse().unwrap();
        assert_eq!(
            (u.gid, u.home.as_str(), u.shell.as_str()),
            (1000, "/home/app", "/bin/sh")
        );
        let u: UserSpec = "app:1000:100:/var/lib/app:/bin/ash".parse().unwrap();
        assert_eq!(
            (u.gid, u.home.as_str(), u.shell.as_str()),
            (100, "/var/lib/app", "/bin/ash")
        );
        for bad in [
            "app",
            "app:x",
            "a:b:c:d:e:f",
            "-x:1",
            "a b:1",
            "app:1:1:home",
            "app:1:1:/h:sh",
        ] {
            assert!(bad.parse::<UserSpec>().is_err(), "{bad}");
        }
        assert_eq!("app:1000".parse::<GroupSpec>().unwrap().gid, 1000);
        assert!("app".parse::<GroupSpec>().is_err());
    }

    #[test]
    fn trees_have_parents_owners_and_the_user_database() {
        let s = spec(
            &["/tmp:1777", "/var/lib/app:0750:1000:1000"],
            &["/bin/sh={root}/bin/sh"],
            &["app:1000:1000:/var/lib/app"],
            &[],
        );
        let fs = s.tree("/nix/store/abc-hello").unwrap();
        let paths: Vec<&str> = fs.entries.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "/bin",
                "/bin/sh",
                "/etc",
                "/etc/group",
                "/etc/nsswitch.conf",
                "/etc/passwd",
                "/tmp",
                "/var",
                "/var/lib",
                "/var/lib/app"
            ]
        );
        let app = &fs.entries["/var/lib/app"];
        assert_eq!((app.mode, app.uid, app.gid), (0o750, 1000, 1000));
        assert_eq!(fs.entries["/tmp"].mode, 0o1777);
        assert_eq!(
            fs.entries["/bin/sh"].kind,
            Kind::Symlink("/nix/store/abc-hello/bin/sh".into())
        );
        let Kind::File(passwd) = &fs.entries["/etc/passwd"].kind else {
            panic!("passwd")
        };
        let passwd = String::from_utf8_lossy(passwd);
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
        assert!(
            passwd.ends_with("app:x:1000:1000::/var/lib/app:/bin/sh\n"),
            "{passwd}"
        );
        let Kind::File(group) = &fs.entries["/etc/group"].kind else {
            panic!("group")
        };
        assert!(String::from_utf8_lossy(group).contains("app:x:1000:\n"));
    }

    #[test]
    fn perms_apply_in_order_and_are_anchored() {
        let perms = Perms {
            rules: vec![
                PermRule::chmod("/nix/store/[^/]+-app/bin/helper=4755").unwrap(),
                PermRule::chown("/var/.*=1000:1000").unwrap(),
                PermRule::chmod("/var/lib=0700").unwrap(),
            ],
        };
        let helper = "/nix/store/abc-app/bin/helper";
        assert_eq!(perms.apply(helper, false, 0o555, (0, 0)), (0o4755, (0, 0)));
        // Anchored: a prefix or a longer path does not match.
        assert_eq!(
            perms
                .apply("/x/nix/store/abc-app/bin/helper", false, 0o555, (0, 0))
                .0,
            0o555
        );
        assert_eq!(
            perms.apply("/var/lib", false, 0o755, (0, 0)),
            (0o700, (1000, 1000))
        );
        assert_eq!(perms.apply("/var", false, 0o755, (0, 0)).1, (0, 0));
        // A symlink keeps its mode, not its owner.
        assert_eq!(
            perms.apply("/var/l", true, 0o777, (0, 0)),
            (0o777, (1000, 1000))
        );
        for bad in ["/x", "/x=rwx", "/x=99999", "(=0755"] {
            assert!(PermRule::chmod(bad).is_err(), "{bad}");
        }
        for bad in ["/x=1000", "/x=a:b", "/x"] {
            assert!(PermRule::chown(bad).is_err(), "{bad}");
        }
        // '=' in the pattern: the value is after the last one.
        assert!(PermRule::chmod("/a=b=0644").unwrap().matches("/a=b"));
    }

    #[test]
    fn conflicts_name_both() {
        let e = spec(&["/x:0755", "/x:0700"], &[], &[], &[])
            .tree("/r")
            .unwrap_err();
        assert!(matches!(e, RootFsError::Conflict { .. }), "{e}");
        assert!(e.to_string().contains("--dir /x"), "{e}");
        // The same entry twice is fine.
        assert!(spec(&["/x", "/x"], &[], &[], &[]).tree("/r").is_ok());
        let e = spec(&["/bin/sh/x"], &["/bin/sh=/b"], &[], &[])
            .tree("/r")
            .unwrap_err();
        assert!(matches!(e, RootFsError::NotADirectory { .. }), "{e}");
        let e = spec(&["/etc/passwd"], &[], &["app:1"], &[])
            .tree("/r")
            .unwrap_err();
        assert!(e.to_string().contains("/etc/passwd"), "{e}");
    }

    #[test]
    fn flags_and_an_image_spec_merge() {
        let flags = spec(&["/tmp:1777"], &[], &["app:1000"], &[]);
        let from_spec = spec(
            &["/tmp:1777", "/data"],
            &["/bin/sh=/b"],
            &["app:1000"],
            &["staff:50"],
        );
        let both = flags
            .tree_with("/r", Some(("the image spec 'x'", &from_spec)))
            .unwrap();
        let one = spec(
            &["/tmp:1777", "/data"],
            &["/bin/sh=/b"],
            &["app:1000"],
            &["staff:50"],
        );
        assert_eq!(both, one.tree("/r").unwrap());
        let Kind::File(passwd) = &both.entries["/etc/passwd"].kind else {
            panic!("passwd")
        };
        assert_eq!(String::from_utf8_lossy(passwd).matches("app:x:").count(), 1);

        let e = flags
            .tree_with(
                "/r",
                Some(("the image spec 'x'", &spec(&["/tmp"], &[], &[], &[]))),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/tmp is given twice, differently: by --dir /tmp and by the image spec 'x' (dirs /tmp)"
        );
        let e = flags
            .tree_with(
                "/r",
                Some(("the image spec 'x'", &spec(&[], &[], &["app:1001"], &[]))),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "user app is given twice, differently: by --add-user app and by the image spec 'x' (users app)"
        );
    }

    #[test]
    fn trees_do_not_depend_on_flag_order() {
        let a = spec(
            &["/a/b", "/c"],
            &["/d=/x"],
            &["u:1", "v:2"],
            &["g:3", "h:4"],
        );
        let b = spec(
            &["/c", "/a/b"],
            &["/d=/x"],
            &["v:2", "u:1"],
            &["h:4", "g:3"],
        );
        assert_eq!(a.tree("/r").unwrap(), b.tree("/r").unwrap());
    }
}
