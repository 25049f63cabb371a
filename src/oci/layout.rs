//! Writing an OCI image layout: `oci-layout`, `blobs/sha256/…` and
//! `index.json`.
//!
//! Blobs are written to a temporary name and renamed to their digest, so a
//! blob that exists under its digest is complete. `index.json` is replaced
//! atomically and last, after every blob it names is on disk: a run killed
//! at any point leaves either the previous layout or no `index.json` at all,
//! never an index that points at missing or partial blobs. A run that fails
//! removes what it created.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::image::{Blob, IndexEntry, TopIndex};
use super::temp::{self, TempFile, Unfinished, UnfinishedLayout};
use super::Digest;

/// The content of `oci-layout`.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Why a layout could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("output {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "output {0} is a non-empty directory without an oci-layout file; refusing to write into it"
    )]
    NotALayout(PathBuf),
    #[error("{0} is not an OCI image layout (no oci-layout file)")]
    NoLayout(PathBuf),
    #[error("output {output}: folder {parent} does not exist (create it first)")]
    NoParent { output: PathBuf, parent: PathBuf },
    #[error("{path} has an unsupported imageLayoutVersion (expected 1.0.0)")]
    Version { path: PathBuf },
    #[error("{path} is not a valid index.json")]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LayoutError {
    /// True when the user pointed at something we must not write into.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LayoutError::NotADirectory(_)
                | LayoutError::NotALayout(_)
                | LayoutError::NoLayout(_)
                | LayoutError::NoParent { .. }
                | LayoutError::Version { .. }
        )
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayoutError {
    let path = path.to_owned();
    move |source| LayoutError::Io {
        action,
        path,
        source,
    }
}

/// Checks that `dir` can be written as a layout without touching anything:
/// it is missing, an empty directory, an existing layout, or what an
/// interrupted build left (a `blobs/` folder and nothing else).
pub fn check_output(dir: &Path) -> Result<(), LayoutError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A new layout is one directory: its parent must be there, or
            // the build would fail at the end, after all its work.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if parent.is_dir() {
                Ok(())
            } else {
                Err(LayoutError::NoParent {
                    output: dir.to_owned(),
                    parent: parent.to_owned(),
                })
            }
        }
        Err(e) => Err(io_err("reading", dir)(e)),
        Ok(_) if !dir.is_dir() => Err(LayoutError::NotADirectory(dir.to_owned())),
        Ok(_) => {
            let layout_file = dir.join("oci-layout");
            if layout_file.exists() {
                let text = fs::read(&layout_file).map_err(io_err("reading", &layout_file))?;
                let v: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                if v["imageLayoutVersion"] != "1.0.0" {
                    return Err(LayoutError::Version { path: layout_file });
                }
                return Ok(());
            }
            // Empty, or left by an interrupted build (only `blobs/`, whose
            // complete blobs a new build reuses, and temporary files).
            for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
                let entry = entry.map_err(io_err("reading", dir))?;
                let name = entry.file_name();
                let temp = name.as_bytes().starts_with(temp::TEMP_PREFIX.as_bytes());
                if !temp && (name != "blobs" || !entry.path().is_dir()) {
                    return Err(LayoutError::NotALayout(dir.to_owned()));
                }
            }
            Ok(())
        }
    }
}

/// A layout being written, holding the layout's lock (an exclusive `flock`
/// on its directory) from [`Layout::open`] until it is committed or
/// dropped: writers of one layout take turns, and each merges its tag into
/// the `index.json` the one before committed. Dropped without
/// [`Layout::commit`], it removes the blobs and directories it created:
/// every blob that was not in `blobs/sha256` when it was opened, whoever
/// wrote it (the layer builder writes there directly); so does a signal
/// ([`super::temp`]).
pub struct Layout {
    dir: PathBuf,
    /// `None` once committed.
    unfinished: Option<Unfinished>,
    /// What `blobs/sha256` held when the layout was opened.
    existing: BTreeSet<OsString>,
    /// Temporary files of dead writers removed when the lock was taken.
    stale: (usize, u64),
    /// Dropped last: the lock is released after the cleanup.
    _lock: File,
}

/// Takes the lock of the existing layout `dir` (as [`Layout::open`] does),
/// for work on it that writes no image (`nixoci gc`). The lock is held
/// until the returned file is dropped.
pub fn lock_existing(dir: &Path, waiting: &mut dyn FnMut()) -> Result<File, LayoutError> {
    if !dir.join("oci-layout").is_file() {
        return Err(LayoutError::NoLayout(dir.to_owned()));
    }
    Ok(lock_dir(dir, false, waiting)?.0)
}

/// Takes the exclusive lock of the layout directory `dir`, creating the
/// directory when missing and `create` is set. Returns the lock and
/// whether this call created the directory. `waiting` is called once if
/// another process holds it.
fn lock_dir(
    dir: &Path,
    create: bool,
    waiting: &mut dyn FnMut(),
) -> Result<(File, bool), LayoutError> {
    use std::os::unix::fs::MetadataExt;
    let mut said = false;
    loop {
        let created = match fs::create_dir(dir) {
            _ if !create => false,
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err("creating", dir)(e)),
        };
        let lock = File::open(dir).map_err(io_err("opening", dir))?;
        // An exclusive flock(2) on the directory itself.
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                if !said {
                    waiting();
                    said = true;
                }
                lock.lock().map_err(io_err("locking", dir))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking", dir)(e)),
        }
        // A writer that failed may have removed the directory while we
        // waited: lock the one that is there now.
        let locked = lock.metadata().map_err(io_err("reading", dir))?;
        match fs::symlink_metadata(dir) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                return Ok((lock, created))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {}
            Err(e) => return Err(io_err("reading", dir)(e)),
        }
    }
}

impl Layout {
    /// Opens `dir` for writing, creating it (and `blobs/sha256`) if needed,
    /// and takes its lock, waiting for another writer to finish.
    pub fn open(dir: &Path) -> Result<Layout, LayoutError> {
        Layout::open_waiting(dir, &mut || {})
    }

    /// [`Layout::open`], calling `waiting` once if another writer holds the
    /// lock. Temporary files of dead writers are removed.
    pub fn open_waiting(dir: &Path, waiting: &mut dyn FnMut()) -> Result<Layout, LayoutError> {
        check_output(dir)?;
        let (lock, created_dir) = lock_dir(dir, true, waiting)?;
        let mut created = Vec::new();
        if created_dir {
            created.push(dir.to_owned());
        }
        // The registration removes the directory again on any error below.
        let unfinished = temp::register(UnfinishedLayout {
            dir: dir.to_owned(),
            blobs_dir: dir.join("blobs/sha256"),
            existing: BTreeSet::new(),
            created: created.clone(),
        });
        // What it looks like now that it is ours.
        check_output(dir)?;
        for d in [dir.join("blobs"), dir.join("blobs/sha256")] {
            match fs::create_dir(&d) {
                Ok(()) => created.push(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(e) => return Err(io_err("creating", &d)(e)),
            }
        }
        // Under the lock, temporary files are those of writers that died.
        let blobs_dir = dir.join("blobs/sha256");
        let (a, a_bytes) = temp::remove_temp_files(&blobs_dir);
        let (b, b_bytes) = temp::remove_temp_files(dir);
        let existing = temp::blob_names(&blobs_dir);
        unfinished.update(UnfinishedLayout {
            dir: dir.to_owned(),
            blobs_dir,
            existing: existing.clone(),
            created,
        });
        Ok(Layout {
            dir: dir.to_owned(),
            unfinished: Some(unfinished),
            existing,
            stale: (a + b, a_bytes + b_bytes),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The temporary files of writers that died before this one (count,
    /// bytes), removed when the layout was opened.
    pub fn stale_removed(&self) -> (usize, u64) {
        self.stale
    }

    /// `blobs/sha256`, where layers are written directly.
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Blobs written since the layout was opened.
    fn new_blobs(&self) -> Vec<PathBuf> {
        let dir = self.blobs_dir();
        temp::blob_names(&dir)
            .difference(&self.existing)
            .map(|n| dir.join(n))
            .collect()
    }

    /// Writes a small blob unless a good blob with its digest is already
    /// there: one of another size or content is replaced.
    pub fn write_blob(&self, blob: &Blob) -> Result<(), LayoutError> {
        let path = self.blob_path(&blob.digest);
        if blob_is(&path, &blob.bytes) {
            return Ok(());
        }
        // Not synced here: the commit syncs every new blob, several at once.
        let tmp = write_temp(&self.blobs_dir(), &path, &blob.bytes, false)?;
        tmp.persist(&path).map_err(io_err("writing", &path))?;
        if self.existing.contains(path.file_name().unwrap_or_default()) {
            // A repaired blob keeps its name: sync it here, the commit
            // syncs only new names.
            File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(io_err("syncing", &path))?;
        }
        Ok(())
    }

    /// Makes every new blob durable, then points `tag` at `target` in
    /// `index.json`, keeping the layout's other tags.
    pub fn commit(mut self, tag: &str, target: &Blob) -> Result<(), LayoutError> {
        let new_blobs = self.new_blobs();
        if !new_blobs.is_empty() {
            sync_all(&new_blobs)?;
            // The blobs' names are entries of blobs/sha256: durable with it.
            sync_dir(&self.blobs_dir())?;
        }
        let index_path = self.dir.join("index.json");
        let (mut index, old_bytes) = match fs::read(&index_path) {
            Ok(bytes) => (
                serde_json::from_slice::<TopIndex>(&bytes).map_err(|source| {
                    LayoutError::Index {
                        path: index_path.clone(),
                        source,
                    }
                })?,
                Some(bytes),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (TopIndex::default(), None),
            Err(e) => return Err(io_err("reading", &index_path)(e)),
        };
        index.set_tag(tag, target);
        let bytes = index.to_canonical().map_err(|e| LayoutError::Io {
            action: "serialising",
            path: index_path.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let layout_file = self.dir.join("oci-layout");
        let layout_there = layout_file.exists();
        if !layout_there {
            write_atomically(&self.dir, &layout_file, OCI_LAYOUT)?;
        }
        let unfinished = self.unfinished.take();
        // A rebuild that changed nothing leaves index.json as it is.
        if !layout_there || old_bytes.as_deref() != Some(&bytes[..]) {
            let tmp = write_temp(&self.dir, &index_path, &bytes, true)?;
            match unfinished {
                Some(u) => u.commit(tmp, &index_path),
                None => tmp.persist(&index_path).map(drop),
            }
            .map_err(io_err("writing", &index_path))?;
            sync_dir(&self.dir)?;
        } else if let Some(u) = unfinished {
            u.finish();
        }
        Ok(())
    }
}

/// True when `path` is a regular file holding exactly `bytes`.
fn blob_is(path: &Path, bytes: &[u8]) -> bool {
    // Size first: reading is needed only when it matches.
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
        && fs::read(path).is_ok_and(|found| found == bytes)
}

/// Writes `bytes` to `path` through a temporary file in `dir`, synced, and
/// a rename.
pub fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    write_temp(dir, path, bytes, true)?
        .persist(path)
        .map_err(io_err("writing", path))?;
    Ok(())
}

/// A temporary file in `dir` holding `bytes`, readable by everyone, synced
/// only when `sync` is set, to be renamed to `path`.
fn write_temp(dir: &Path, path: &Path, bytes: &[u8], sync: bool) -> Result<TempFile, LayoutError> {
    let mut tmp = temp::create(tempfile::Builder::new().prefix(temp::TEMP_PREFIX), dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    tmp.as_file_mut()
        .write_all(bytes)
        .and_then(|()| {
            if sync {
                tmp.as_file().sync_all()
            } else {
                Ok(())
            }
        })
        .map_err(io_err("writing", path))?;
    // Readable by everyone, as `skopeo` and registries' static files expect.
    set_mode_0644(tmp.as_file()).map_err(io_err("writing", path))?;
    Ok(tmp)
}

fn set_mode_0644(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o644))
}

/// Syncs `files`, several at once: the file system then commits their
/// metadata in a few journal transactions instead of one per file. The
/// error is that of the first failing file in order.
fn sync_all(files: &[PathBuf]) -> Result<(), LayoutError> {
    const AT_ONCE: usize = 16;
    let next = AtomicUsize::new(0);
    let failed: Vec<Mutex<Option<io::Error>>> = files.iter().map(|_| Mutex::new(None)).collect();
    let work = || {
        while let Some(i) = Some(next.fetch_add(1, Ordering::Relaxed)).filter(|&i| i < files.len())
        {
            // Data and what reading it needs (fdatasync): a blob's name is
            // made durable by syncing its directory.
            if let Err(e) = File::open(&files[i]).and_then(|f| f.sync_data()) {
                if let Ok(mut slot) = failed[i].lock() {
                    *slot = Some(e);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        // Helpers that cannot be started leave their share to this thread.
        for _ in 1..AT_ONCE.min(files.len()) {
            let _ = std::thread::Builder::new().spawn_scoped(scope, work);
        }
        work();
    });
    for (file, slot) in files.iter().zip(failed) {
        let error = slot.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = error {
            return Err(io_err("syncing", file)(e));
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Why `LAYOUT[:TAG]` names no image.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("{0} is not an OCI image layout (no oci-layout file)")]
    NotALayout(PathBuf),
    #[error("{layout} has no tag '{tag}' (tags: {available})")]
    NoSuchTag {
        layout: PathBuf,
        tag: String,
        available: String,
    },
    #[error("{layout} holds several images; name one as LAYOUT:TAG (tags: {available})")]
    WhichTag { layout: PathBuf, available: String },
    #[error("{layout} holds no image (index.json lists nothing)")]
    Empty { layout: PathBuf },
    #[error("{path} is not a valid index.json")]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    File(#[from] super::files::FileError),
    #[error(transparent)]
    Arg(#[from] LayoutArgError),
}

impl TagError {
    /// True when the argument names no image (exit 2), false when the
    /// layout is there but unreadable.
    pub fn is_usage(&self) -> bool {
        !matches!(self, TagError::Index { .. } | TagError::File(_))
    }
}

/// A layout on the command line, the same for every command that reads or
/// writes one: `oci:DIR[:TAG]` or `DIR[:TAG]` (the `oci:` prefix, as
/// skopeo writes it, is optional).
///
/// DIR is the whole argument when such a file or directory exists, else
/// the part before the first colon whose left side exists (tags such as
/// `example.org/app:1.0` hold colons themselves), else the part before the
/// first colon: a layout that does not exist yet has no colon in its name.
/// TAG, when given, is a valid `org.opencontainers.image.ref.name`.
/// Parsing looks at the file system only to split; whether DIR is a layout
/// is for the reader ([`tagged_entry`], [`LayoutArg::require`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutArg {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

/// Why an argument is not `[oci:]DIR[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutArgError {
    #[error("no layout directory (expected [oci:]DIR[:TAG])")]
    NoDir,
    #[error("nothing after ':' (expected [oci:]DIR[:TAG])")]
    EmptyTag,
    #[error(
        "the tag '{0}' is not a valid reference name (letters and digits joined by . _ - : @ +, components separated by /)"
    )]
    BadTag(String),
}

impl LayoutArg {
    /// The prefix that names a layout explicitly, as in skopeo.
    pub const PREFIX: &'static str = "oci:";

    pub fn parse(arg: &str) -> Result<LayoutArg, LayoutArgError> {
        let rest = arg.strip_prefix(Self::PREFIX).unwrap_or(arg);
        let exists = |p: &str| !p.is_empty() && fs::symlink_metadata(p).is_ok();
        let (dir, tag) = if exists(rest) {
            (rest, None)
        } else {
            let split = rest
                .match_indices(':')
                .map(|(i, _)| i)
                .find(|&i| exists(&rest[..i]))
                .or_else(|| rest.find(':'));
            match split {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            }
        };
        if dir.is_empty() {
            return Err(LayoutArgError::NoDir);
        }
        match tag {
            Some("") => Err(LayoutArgError::EmptyTag),
            Some(t) if !super::image::valid_ref_name(t) => {
                Err(LayoutArgError::BadTag(t.to_owned()))
            }
            _ => Ok(LayoutArg {
                dir: dir.into(),
                tag: tag.map(str::to_owned),
            }),
        }
    }

    /// True when DIR holds an `oci-layout` file.
    pub fn is_layout(&self) -> bool {
        self.dir.join("oci-layout").is_file()
    }

    /// This argument when DIR is a layout, else [`TagError::NotALayout`].
    pub fn require(self) -> Result<LayoutArg, TagError> {
        if self.is_layout() {
            Ok(self)
        } else {
            Err(TagError::NotALayout(self.dir))
        }
    }
}

impl std::str::FromStr for LayoutArg {
    type Err = LayoutArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LayoutArg::parse(s)
    }
}

/// `DIR` or `DIR:TAG`, as the argument is read back.
impl std::fmt::Display for LayoutArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dir.display())?;
        match &self.tag {
            Some(t) => write!(f, ":{t}"),
            None => Ok(()),
        }
    }
}

/// The `index.json` entry that `tag` names in the layout `dir`; without a
/// tag, the layout's only entry.
pub fn tagged_entry(dir: &Path, tag: Option<&str>) -> Result<IndexEntry, TagError> {
    if !dir.join("oci-layout").is_file() {
        return Err(TagError::NotALayout(dir.to_owned()));
    }
    let index_path = dir.join("index.json");
    let bytes = super::files::read(dir, "index.json")?;
    let index: TopIndex = serde_json::from_slice(&bytes).map_err(|source| TagError::Index {
        path: index_path.clone(),
        source,
    })?;
    let available = || {
        let tags: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|e| e.ref_name())
            .collect();
        if tags.is_empty() {
            "none".to_owned()
        } else {
            tags.join(", ")
        }
    };
    let entry = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|e| e.ref_name() == Some(t))
            .ok_or_else(|| TagError::NoSuchTag {
                layout: dir.to_owned(),
                tag: t.to_owned(),
                available: available(),
            })?,
        None => match index.manifests.as_slice() {
            [] => {
                return Err(TagError::Empty {
                    layout: dir.to_owned(),
                })
            }
            [only] => only,
            _ => {
                return Err(TagError::WhichTag {
                    layout: dir.to_owned(),
                    available: available(),
                })
            }
        },
    };
    Ok(entry.clone())
}

#[cfg(test)]
mod tests {
    use super::super::image::MEDIA_TYPE_INDEX;
    use super::*;

    fn blob(bytes: &[u8]) -> Blob {
        Blob {
            media_type: MEDIA_TYPE_INDEX,
            bytes: bytes.to_vec(),
            digest: Digest::of(bytes),
        }
    }

    #[test]
    fn commit_writes_index_last_and_keeps_tags() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out.oci");
        let l = Layout::open(&dir).unwrap();
        let a = blob(b"{\"a\":1}");
        l.write_blob(&a).unwrap();
        assert!(!dir.join("index.json").exists());
        l.commit("one", &a).unwrap();

        let l = Layout::open(&dir).unwrap();
        let b = blob(b"{\"b\":1}");
        l.write_blob(&b).unwrap();
        l.commit("two", &b).unwrap();
        let index: TopIndex =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let tags: Vec<_> = index
            .manifests
            .iter()
            .filter_map(|e| e.ref_name())
            .collect();
        assert_eq!(tags, ["one", "two"]);
        assert_eq!(fs::read(dir.join("oci-layout")).unwrap(), OCI_LAYOUT);
    }

    /// A commit that changes nothing rewrites nothing: index.json keeps its
    /// inode (no new file renamed over it), so sync tools see no change.
    #[test]
    fn an_unchanged_commit_leaves_index_json_alone() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out.oci");
        let a = blob(b"{\"a\":1}");
        let l = Layout::open(&dir).unwrap();
        l.write_blob(&a).unwrap();
        l.commit("one", &a).unwrap();
        let inode = || fs::metadata(dir.join("index.json")).unwrap().ino();
        let before = inode();

        let l = Layout::open(&dir).unwrap();
        l.write_blob(&a).unwrap();
        l.commit("one", &a).unwrap();
        assert_eq!(inode(), before);

        let l = Layout::open(&dir).unwrap();
        l.commit("two", &a).unwrap();
        assert_ne!(inode(), before);
    }

    #[test]
    fn dropping_without_commit_removes_what_it_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out.oci");
        {
            let l = Layout::open(&dir).unwrap();
            l.write_blob(&blob(b"x")).unwrap();
            // A blob the layer builder wrote straight into blobs/sha256.
            fs::write(l.blob_path(&Digest::of(b"layer")), b"layer").unwrap();
        }
        assert!(!dir.exists());

        // In an existing layout, only the new blob goes.
        let l = Layout::open(&dir).unwrap();
        let a = blob(b"a");
        l.write_blob(&a).unwrap();
        l.commit("t", &a).unwrap();
        {
            let l = Layout::open(&dir).unwrap();
            l.write_blob(&a).unwrap();
            l.write_blob(&blob(b"b")).unwrap();
        }
        assert!(dir.join("blobs/sha256").join(a.digest.hex()).exists());
        assert!(!dir
            .join("blobs/sha256")
            .join(Digest::of(b"b").hex())
            .exists());
    }

    #[test]
    fn layout_args_split_the_same_with_or_without_oci() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a.oci");
        let l = Layout::open(&dir).unwrap();
        let a = blob(b"a");
        l.write_blob(&a).unwrap();
        l.commit("one", &a).unwrap();
        let d = dir.to_str().unwrap();
        let parsed = |arg: &str| LayoutArg::parse(arg).map(|a| (a.dir, a.tag));
        for prefix in ["", "oci:"] {
            assert_eq!(parsed(&format!("{prefix}{d}")), Ok((dir.clone(), None)));
            assert_eq!(
                parsed(&format!("{prefix}{d}:r/app:1")),
                Ok((dir.clone(), Some("r/app:1".to_owned())))
            );
            assert_eq!(
                parsed(&format!("{prefix}{d}:localhost:5000/app:1.0")),
                Ok((dir.clone(), Some("localhost:5000/app:1.0".to_owned())))
            );
            // Nothing there: the first colon splits (a new layout's name).
            let new = tmp.path().join("new.oci");
            assert_eq!(
                parsed(&format!("{prefix}{}:example.org/b:2", new.display())),
                Ok((new.clone(), Some("example.org/b:2".to_owned())))
            );
            assert_eq!(
                parsed(&format!("{prefix}{d}/nope:1")),
                Ok((dir.join("nope"), Some("1".to_owned())))
            );
            assert!(matches!(
                parsed(&format!("{prefix}{d}:")),
                Err(LayoutArgError::EmptyTag)
            ));
            assert!(matches!(
                parsed(&format!("{prefix}{d}:bad tag")),
                Err(LayoutArgError::BadTag(_))
            ));
            assert!(matches!(
                parsed(&format!("{prefix}:t")),
                Err(LayoutArgError::NoDir)
            ));
        }
        assert!(matches!(parsed("oci:"), Err(LayoutArgError::NoDir)));
        // A directory whose name has a colon is whole when it exists.
        let colon = tmp.path().join("x:y");
        fs::create_dir(&colon).unwrap();
        assert_eq!(parsed(colon.to_str().unwrap()), Ok((colon.clone(), None)));
        assert!(LayoutArg::parse(d).unwrap().require().is_ok());
        assert!(matches!(
            LayoutArg::parse(&format!("{d}/nope:1")).unwrap().require(),
            Err(TagError::NotALayout(p)) if p == dir.join("nope")
        ));
        assert_eq!(
            LayoutArg::parse(&format!("oci:{d}:r/app:1"))
                .unwrap()
                .to_string(),
            format!("{d}:r/app:1")
        );
    }

    #[test]
    fn refuses_files_and_foreign_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            check_output(&file),
            Err(LayoutError::NotADirectory(_))
        ));
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        assert!(check_output(&dir).is_ok());
        // What an interrupted build leaves can be built into again.
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        assert!(check_output(&dir).is_ok());
        fs::write(dir.join("precious"), "x").unwrap();
        assert!(matches!(
            check_output(&dir),
            Err(LayoutError::NotALayout(_))
        ));
        assert!(Layout::open(&dir).is_err());
        assert!(dir.join("precious").exists() && dir.join("blobs/sha256").exists());
        // A new layout is one directory: its parent is never created.
        assert!(check_output(&tmp.path().join("new.oci")).is_ok());
        let orphan = tmp.path().join("no/such/new.oci");
        assert!(matches!(
            check_output(&orphan),
            Err(LayoutError::NoParent { .. })
        ));
        assert!(!tmp.path().join("no").exists());
    }
}
