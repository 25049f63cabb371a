//! A static registry tree: the files a plain web server or an S3 bucket
//! serves so that registry clients can pull, read-only.
//!
//! ```text
//! TREE/
//!   v2/index.html                      {} (the /v2/ ping, for buckets)
//!   v2/NAME/manifests/TAG              the tagged index (or manifest)
//!   v2/NAME/manifests/sha256:HEX       the index and every manifest
//!   v2/NAME/blobs/sha256:HEX           configs and layers
//!   v2/NAME/tags/list                  {"name":…,"tags":[…]}
//!   objects.json                       every object under v2/: key, content type, digest, size
//!   nginx.conf                         a snippet for a server block
//!   Caddyfile                          a site serving the tree
//!   .nixoci/blobs/sha256/HEX           one copy of each blob and manifest
//!   .nixoci/lock
//! ```
//!
//! Each file under `v2/` is a hard link to its one copy in `.nixoci/blobs`
//! (a copy where the file system cannot link), so repositories and tags
//! that share blobs share their bytes; the copy itself is a hard link to
//! the layout's blob when both are on one file system. Exports into one
//! tree add to it: what is there is kept, a tag is re-pointed atomically,
//! and `objects.json`, `nginx.conf` and `Caddyfile` are rewritten from the
//! whole tree, last. Names and tags are checked against the distribution
//! grammar and every directory on the way is checked not to be a symlink,
//! so nothing is written outside the tree.
//!
//! Every blob is checked against its digest on its way into the blob store
//! (hashed once: from the layout's file while it is copied, or from the
//! open file whose inode was just hard-linked), and the layout's files are
//! opened through [`crate::oci::files`], never through a symbolic link: the
//! tree holds only files and directories export-static made. An export
//! that fails, whatever the reason (a bad blob, a full disk), removes a
//! tree it created and leaves an existing one as it was: new files are
//! added first, and what clients read by name (tags, tag lists,
//! `objects.json`, `nginx.conf`, `Caddyfile`) is prepared under temporary
//! names and renamed into place last.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::reference::{valid_repository, valid_tag};
use super::source::Image;
use super::tree::{self, Stage, PING_BODY, PING_KEY};
use crate::oci::files::{self, FileError};
use crate::oci::{Digest, DigestWriter, MediaType};

/// The folder of the blob store and the lock.
pub const STATE_DIR: &str = ".nixoci";
/// The list of objects, for S3 uploads and for regenerating the configs.
pub const OBJECTS_FILE: &str = "objects.json";
pub const NGINX_FILE: &str = "nginx.conf";
pub const CADDY_FILE: &str = "Caddyfile";

pub use super::tree::{tag_list, Kind, Object, BLOB_TYPE, JSON_TYPE};

/// Why the export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("repository name '{0}' is not valid (lowercase letters and digits separated by '.', '_', '__' or dashes, components joined by '/'; no '..', no leading '/')")]
    Name(String),
    #[error("tag '{0}' is not valid (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'; no '/')")]
    Tag(String),
    #[error("output {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("output {0} is a non-empty directory without a .nixoci folder; refusing to write into a tree export-static did not create")]
    NotATree(PathBuf),
    #[error(
        "{0} is a symlink or not a directory; a static tree holds only what export-static wrote"
    )]
    Unexpected(PathBuf),
    #[error("the image has no manifest")]
    Empty,
    #[error(transparent)]
    Layout(#[from] FileError),
    #[error("{path}: content hashes to {found}, expected {expected}")]
    Digest {
        path: PathBuf,
        expected: Digest,
        found: Digest,
    },
    #[error("{0} is not a valid objects list")]
    Objects(PathBuf, #[source] serde_json::Error),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ExportError {
    /// True when the user asked for something invalid (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ExportError::Name(_)
                | ExportError::Tag(_)
                | ExportError::NotADirectory(_)
                | ExportError::NotATree(_)
        )
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_owned();
    move |source| ExportError::Io {
        action,
        path,
        source,
    }
}

/// What an export did (the `--json` report, version 1).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    pub version: u32,
    pub tree: PathBuf,
    pub repository: String,
    pub tags: Vec<String>,
    /// The digest the tags point at.
    pub digest: Digest,
    pub media_type: MediaType,
    /// Files added to the blob store, and how many bytes were copied for
    /// them (0 when hard-linked from the layout).
    pub stored: usize,
    pub bytes_copied: u64,
    /// Files under `v2/` created or re-pointed.
    pub written: Vec<String>,
    /// Files under `v2/` that were already right.
    pub unchanged: usize,
}

/// Checks the repository name and tags, before anything is written.
pub fn check_names(repository: &str, tags: &[String]) -> Result<(), ExportError> {
    if !valid_repository(repository) {
        return Err(ExportError::Name(repository.to_owned()));
    }
    for t in tags {
        if !valid_tag(t) {
            return Err(ExportError::Tag(t.clone()));
        }
    }
    Ok(())
}

/// Checks that `tree` is missing, empty, or a tree we wrote.
pub fn check_tree(tree: &Path) -> Result<(), ExportError> {
    match fs::symlink_metadata(tree) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("reading", tree)(e)),
        Ok(_) if !tree.is_dir() => Err(ExportError::NotADirectory(tree.to_owned())),
        Ok(_) => {
            if tree.join(STATE_DIR).is_dir() {
                return Ok(());
            }
            let mut entries = fs::read_dir(tree).map_err(io_err("reading", tree))?;
            if entries.next().is_some() {
                return Err(ExportError::NotATree(tree.to_owned()));
            }
            Ok(())
        }
    }
}

/// Creates (or checks) `tree/a/b/…`, each step a real directory, adding
/// the directories it creates to `created`.
fn ensure_dir(
    tree: &Path,
    parts: &[&str],
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, ExportError> {
    let mut dir = tree.to_owned();
    for part in parts {
        for piece in part.split('/') {
            dir.push(piece);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Err(ExportError::Unexpected(dir)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let made = fs::DirBuilder::new().mode(0o755).create(&dir);
                    match made {
                        Ok(()) => created.push(dir.clone()),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                        Err(e) => return Err(io_err("creating", &dir)(e)),
                    }
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("setting the mode of", &dir))?;
                }
                Err(e) => return Err(io_err("reading", &dir)(e)),
            }
        }
    }
    Ok(dir)
}

/// A fresh name in `dir` for a temporary file.
fn temp_name(dir: &Path, purpose: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{purpose}-{}-{n}", std::process::id()))
}

/// Writes `bytes` (mode 0644, synced) to a temporary file next to `path`,
/// for a rename to `path`.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, ExportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(dir, "write");
    let result = (|| {
        let mut f = new_file(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err("writing", path)(e))
        }
    }
}

/// A new file at `path`, never an existing one or through a symlink.
fn new_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
}

/// Renames `tmp` to `path`, removing `tmp` when that fails.
fn rename_into_place(tmp: &Path, path: &Path) -> Result<(), ExportError> {
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_err("writing", path)(e)
    })
}

/// Writes `bytes` to `path` (mode 0644) through a rename.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let tmp = write_temp(path, bytes)?;
    rename_into_place(&tmp, path)
}

/// Makes `dest` the same file as `src`: a hard link, or a copy where the
/// file system cannot link. Returns the bytes copied.
fn link_or_copy(src: &Path, dest: &Path) -> Result<u64, ExportError> {
    let (tmp, copied) = link_or_copy_to_temp(src, dest)?;
    rename_into_place(&tmp, dest)?;
    Ok(copied)
}

/// [`link_or_copy`] to a temporary name next to `dest`, for a rename.
fn link_or_copy_to_temp(src: &Path, dest: &Path) -> Result<(PathBuf, u64), ExportError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(dir, "link");
    let copied = match fs::hard_link(src, &tmp) {
        Ok(()) => 0,
        Err(_) => {
            let r = fs::copy(src, &tmp).and_then(|n| {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
                File::open(&tmp)?.sync_all()?;
                Ok(n)
            });
            match r {
                Ok(n) => n,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err("copying to", dest)(e));
                }
            }
        }
    };
    Ok((tmp, copied))
}

/// Puts the blob `digest` of the layout `layout` into the blob store at
/// `dest`, checking its digest on the way: hashed once, from the open file
/// whose inode was just hard-linked, or while it is copied. The layout's
/// file is opened without following a symlink, and a hard link is kept only
/// if it is that very file and a web server can read it; else the file is
/// copied. Returns the bytes copied.
fn store_blob(layout: &Path, digest: &Digest, dest: &Path) -> Result<u64, ExportError> {
    let rel = files::blob_path(digest);
    let src = layout.join(&rel);
    let (mut file, meta) = files::open(layout, &rel)?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(dir, "blob");
    let linked = meta.permissions().mode() & 0o004 != 0
        && fs::hard_link(&src, &tmp).is_ok()
        && match fs::symlink_metadata(&tmp) {
            Ok(m) => m.file_type().is_file() && m.ino() == meta.ino() && m.dev() == meta.dev(),
            Err(_) => false,
        };
    let hashed = if linked {
        let mut w = DigestWriter::new(io::sink());
        io::copy(&mut file, &mut w)
            .map(|_| (w.finish().1, 0))
            .map_err(io_err("reading", &src))
    } else {
        let _ = fs::remove_file(&tmp);
        copy_hashing(&mut file, &src, &tmp)
    };
    let (found, copied) = match hashed {
        Ok(h) => h,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if &found != digest {
        let _ = fs::remove_file(&tmp);
        return Err(ExportError::Digest {
            path: src,
            expected: digest.clone(),
            found,
        });
    }
    rename_into_place(&tmp, dest)?;
    Ok(copied)
}

/// Copies `file` (the layout's `src`) to the new file `tmp`, mode 0644 and
/// synced, hashing what passes. Returns the digest and the bytes copied.
fn copy_hashing(file: &mut File, src: &Path, tmp: &Path) -> Result<(Digest, u64), ExportError> {
    let out = new_file(tmp).map_err(io_err("creating", tmp))?;
    let mut w = DigestWriter::new(out);
    // Read errors are the layout's, write errors the tree's.
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match io::Read::read(file, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", src)(e)),
        };
        w.write_all(&buf[..n]).map_err(io_err("writing", tmp))?;
    }
    let (out, digest, len) = w.finish();
    out.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| out.sync_all())
        .map_err(io_err("writing", tmp))?;
    Ok((digest, len))
}

/// True when `path` is a regular file with `size` bytes (and, if given,
/// the same inode as `same_as`).
fn is_in_place(path: &Path, size: u64, same_as: Option<&fs::Metadata>) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && m.len() == size => match same_as {
            Some(s) => m.ino() == s.ino() && m.dev() == s.dev(),
            None => true,
        },
        _ => false,
    }
}

/// An exclusive lock on the tree, released when dropped.
pub struct TreeLock(File);

impl TreeLock {
    fn take(path: &Path) -> Result<TreeLock, ExportError> {
        let f = File::create(path).map_err(io_err("creating", path))?;
        f.lock().map_err(io_err("locking", path))?;
        Ok(TreeLock(f))
    }
}

impl Drop for TreeLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// What goes into the tree for one image: store content and v2/ files.
struct Planned<'a> {
    digest: Digest,
    size: u64,
    /// Where the bytes come from.
    source: Source<'a>,
}

enum Source<'a> {
    /// A config or layer, from the layout.
    Blob,
    /// A manifest or index, read and checked already.
    Bytes(&'a [u8]),
}

/// How the tree was before this export, and what to undo if it fails.
enum Before {
    /// No tree: remove it whole.
    Missing,
    /// An empty directory: empty it again.
    Empty,
    /// A tree: remove what this export added.
    Tree,
}

/// What an export changed, undone when it fails.
struct Undo {
    tree: PathBuf,
    before: Before,
    /// Files and directories created, in order.
    created: Vec<PathBuf>,
    /// Files prepared under a temporary name, and the name each takes
    /// last: tags, tag lists and the tree's metadata.
    pending: Vec<(PathBuf, PathBuf)>,
    rolled_back: bool,
}

impl Undo {
    fn dir(&mut self, parts: &[&str]) -> Result<PathBuf, ExportError> {
        ensure_dir(&self.tree, parts, &mut self.created)
    }

    /// Notes `path` as created by this export unless it is there now.
    fn will_create(&mut self, path: &Path) {
        if fs::symlink_metadata(path).is_err() {
            self.created.push(path.to_owned());
        }
    }

    /// Renames every prepared file into place, in order.
    fn finish(&mut self) -> Result<(), ExportError> {
        for (tmp, path) in std::mem::take(&mut self.pending) {
            rename_into_place(&tmp, path.as_path())?;
        }
        Ok(())
    }

    /// Puts the tree back as it was. Best effort: what cannot be removed
    /// stays.
    fn rollback(&mut self) {
        if std::mem::replace(&mut self.rolled_back, true) {
            return;
        }
        for (tmp, _) in std::mem::take(&mut self.pending) {
            let _ = fs::remove_file(tmp);
        }
        match self.before {
            Before::Missing => {
                let _ = fs::remove_dir_all(&self.tree);
            }
            Before::Empty => {
                if let Ok(entries) = fs::read_dir(&self.tree) {
                    for e in entries.flatten() {
                        let p = e.path();
                        match e.file_type() {
                            Ok(t) if t.is_dir() => {
                                let _ = fs::remove_dir_all(&p);
                            }
                            _ => {
                                let _ = fs::remove_file(&p);
                            }
                        }
                    }
                }
            }
            Before::Tree => {
                for p in std::mem::take(&mut self.created).iter().rev() {
                    match fs::symlink_metadata(p) {
                        Ok(m) if m.is_dir() => {
                            let _ = fs::remove_dir(p);
                        }
                        Ok(_) => {
                            let _ = fs::remove_file(p);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// Exports `image` into `tree` as `repository` under each of `tags`.
pub fn export(
    image: &Image,
    repository: &str,
    tags: &[String],
    tree: &Path,
) -> Result<ExportReport, ExportError> {
    check_names(repository, tags)?;
    check_tree(tree)?;
    let root = image.root().ok_or(ExportError::Empty)?;
    let before = match fs::DirBuilder::new().mode(0o755).create(tree) {
        Ok(()) => Before::Missing,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tree.is_dir() => {
            let empty = fs::read_dir(tree)
                .map_err(io_err("reading", tree))?
                .next()
                .is_none();
            if empty {
                Before::Empty
            } else {
                Before::Tree
            }
        }
        Err(e) => return Err(io_err("creating", tree)(e)),
    };
    let mut undo = Undo {
        tree: tree.to_owned(),
        before,
        created: Vec::new(),
        pending: Vec::new(),
        rolled_back: false,
    };
    let lock = undo
        .dir(&[STATE_DIR])
        .and_then(|state| TreeLock::take(&state.join("lock")));
    let result = lock.and_then(|lock| {
        let result = export_locked(image, root, repository, tags, &mut undo);
        if result.is_err() {
            // Under the lock: no other export sees the tree half done.
            undo.rollback();
        }
        drop(lock);
        result
    });
    if result.is_err() {
        undo.rollback();
    }
    result
}

/// [`export`] once the tree is there and locked.
fn export_locked(
    image: &Image,
    root: &super::source::Document,
    repository: &str,
    tags: &[String],
    undo: &mut Undo,
) -> Result<ExportReport, ExportError> {
    let tree = undo.tree.clone();
    let tree = tree.as_path();
    let store = undo.dir(&[STATE_DIR, "blobs/sha256"])?;

    let mut report = ExportReport {
        version: 1,
        tree: tree.to_owned(),
        repository: repository.to_owned(),
        tags: tags.to_vec(),
        digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        stored: 0,
        bytes_copied: 0,
        written: Vec::new(),
        unchanged: 0,
    };

    // 1. One copy of everything in the store.
    let mut planned: Vec<Planned> = image
        .blobs
        .iter()
        .map(|b| Planned {
            digest: b.digest.clone(),
            size: b.size,
            source: Source::Blob,
        })
        .collect();
    planned.extend(image.documents.iter().map(|d| Planned {
        digest: d.digest.clone(),
        size: d.bytes.len() as u64,
        source: Source::Bytes(&d.bytes),
    }));
    for p in &planned {
        let dest = store.join(p.digest.hex());
        if is_in_place(&dest, p.size, None) {
            continue;
        }
        undo.will_create(&dest);
        match &p.source {
            Source::Bytes(b) => write_file(&dest, b)?,
            Source::Blob => report.bytes_copied += store_blob(&image.layout, &p.digest, &dest)?,
        }
        report.stored += 1;
    }

    // 2. The repository's files, linked to the store; tags last.
    let mut objects = read_objects(tree)?;
    let blobs_dir = undo.dir(&["v2", repository, "blobs"])?;
    let manifests_dir = undo.dir(&["v2", repository, "manifests"])?;
    for n in tree::image_objects(image, repository, tags).ok_or(ExportError::Empty)? {
        let o = &n.object;
        let digest = n.digest().unwrap_or(&root.digest);
        let stored = store.join(digest.hex());
        let stored_meta = fs::metadata(&stored).map_err(io_err("reading", &stored))?;
        let dir = if o.kind == Kind::Blob {
            &blobs_dir
        } else {
            &manifests_dir
        };
        let dest = dir.join(&n.name);
        if is_in_place(&dest, o.size, Some(&stored_meta))
            || n.stage != Stage::Tags && is_in_place(&dest, o.size, None)
        {
            report.unchanged += 1;
        } else if n.stage == Stage::Tags {
            // A tag: re-pointed last, with the tree's metadata.
            let (tmp, copied) = link_or_copy_to_temp(&stored, &dest)?;
            undo.pending.push((tmp, dest));
            report.bytes_copied += copied;
            report.written.push(o.key.clone());
        } else {
            // Named by its digest: new, or the same content again.
            undo.will_create(&dest);
            report.bytes_copied += link_or_copy(&stored, &dest)?;
            report.written.push(o.key.clone());
        }
        objects.insert(o.key.clone(), o.clone());
    }

    // 3. The ping, the tag lists, then the metadata of the whole tree.
    let v2 = undo.dir(&["v2"])?;
    let ping = v2.join("index.html");
    if !is_in_place(&ping, PING_BODY.len() as u64, None) {
        undo.will_create(&ping);
        write_file(&ping, PING_BODY)?;
    }
    objects.insert(PING_KEY.into(), tree::ping_object());
    prepare_listings(tree, &mut objects, undo)?;
    // The tags, the tag lists and the metadata, all ready: into place.
    undo.finish()?;
    report.written.sort();
    Ok(report)
}

/// Prepares the tag list of each repository and the tree's metadata, from
/// `objects`, for [`Undo::finish`].
fn prepare_listings(
    tree: &Path,
    objects: &mut BTreeMap<String, Object>,
    undo: &mut Undo,
) -> Result<(), ExportError> {
    for (repo, repo_tags) in tags_by_repository(objects) {
        let body = tag_list(&repo, &repo_tags);
        let dir = undo.dir(&["v2", &repo, "tags"])?;
        let path = dir.join("list");
        if fs::read(&path).ok().as_deref() != Some(&body[..]) {
            let tmp = write_temp(&path, &body)?;
            undo.pending.push((tmp, path));
        }
        let o = tree::tags_object(&repo, &body);
        objects.insert(o.key.clone(), o);
    }
    write_metadata(tree, objects, undo)
}

/// Takes the lock of the tree export-static made at `tree`, waiting for
/// another writer to finish. `tree` must hold the `.nixoci` folder.
pub fn lock_tree(tree: &Path) -> Result<TreeLock, ExportError> {
    let state = tree.join(STATE_DIR);
    match fs::symlink_metadata(&state) {
        Ok(m) if m.file_type().is_dir() => TreeLock::take(&state.join("lock")),
        Ok(_) => Err(ExportError::Unexpected(state)),
        Err(e) => Err(io_err("reading", &state)(e)),
    }
}

/// Rewrites the tag lists and `objects.json`, `nginx.conf` and `Caddyfile`
/// of `tree` from `objects`, as an export does last: for `untag` and `gc`,
/// under the [`lock_tree`] the caller holds.
pub fn rewrite_listings(
    tree: &Path,
    objects: &mut BTreeMap<String, Object>,
    _lock: &TreeLock,
) -> Result<(), ExportError> {
    let mut undo = Undo {
        tree: tree.to_owned(),
        before: Before::Tree,
        created: Vec::new(),
        pending: Vec::new(),
        rolled_back: false,
    };
    let result = prepare_listings(tree, objects, &mut undo).and_then(|()| undo.finish());
    if result.is_err() {
        undo.rollback();
    }
    result
}

/// The tags of each repository, from the manifest keys that are not
/// digests.
fn tags_by_repository(objects: &BTreeMap<String, Object>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in objects.values().filter(|o| o.kind == Kind::Manifest) {
        let Some(rest) = o.key.strip_prefix("v2/") else {
            continue;
        };
        let Some((repo, reference)) = rest.rsplit_once("/manifests/") else {
            continue;
        };
        if !reference.starts_with("sha256:") {
            out.entry(repo.to_owned())
                .or_default()
                .insert(reference.to_owned());
        }
    }
    out
}

/// The objects `objects.json` of `tree` lists, by key (none when there is
/// no such file).
pub fn read_objects(tree: &Path) -> Result<BTreeMap<String, Object>, ExportError> {
    let path = tree.join(OBJECTS_FILE);
    let list: Vec<Object> = match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| ExportError::Objects(path.clone(), e))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    Ok(list.into_iter().map(|o| (o.key.clone(), o)).collect())
}

/// Prepares `objects.json`, `nginx.conf` and the `Caddyfile` for
/// [`Undo::finish`].
fn write_metadata(
    tree: &Path,
    objects: &BTreeMap<String, Object>,
    undo: &mut Undo,
) -> Result<(), ExportError> {
    let abs = fs::canonicalize(tree).map_err(io_err("resolving", tree))?;
    let list: Vec<&Object> = objects.values().collect();
    let mut json = serde_json::to_vec_pretty(&list)
        .map_err(|e| io_err("serialising", tree)(io::Error::other(e)))?;
    json.push(b'\n');
    for (name, bytes) in [
        (OBJECTS_FILE, json),
        (NGINX_FILE, nginx_config(&abs, objects).into_bytes()),
        (CADDY_FILE, caddy_config(&abs, objects).into_bytes()),
    ] {
        let path = tree.join(name);
        let tmp = write_temp(&path, &bytes)?;
        undo.pending.push((tmp, path));
    }
    Ok(())
}

/// A double-quoted string for nginx and Caddy configs.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The nginx snippet: a `location /v2/` for a server block.
pub fn nginx_config(root: &Path, objects: &BTreeMap<String, Object>) -> String {
    let api = "        add_header Docker-Distribution-API-Version registry/2.0 always;\n";
    let mut s = String::new();
    s.push_str("# Generated by nixoci export-static; every export into this tree rewrites it.\n");
    s.push_str("# A read-only OCI registry served from files. Include it in a server block:\n");
    s.push_str(&format!(
        "#     server {{ listen 8080; include {}; }}\n",
        root.join(NGINX_FILE).display()
    ));
    s.push_str("location /v2/ {\n");
    s.push_str(&format!(
        "    root {};\n",
        quoted(&root.display().to_string())
    ));
    s.push_str("    types { }\n");
    s.push_str(&format!("    default_type {BLOB_TYPE};\n"));
    s.push_str("    add_header Docker-Distribution-API-Version registry/2.0 always;\n\n");
    s.push_str("    location = /v2/ {\n");
    s.push_str(&format!("        default_type {JSON_TYPE};\n"));
    s.push_str(api);
    s.push_str("        return 200 '{}';\n    }\n");
    s.push_str("    location ~ \"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$\" {\n");
    s.push_str("        add_header Docker-Content-Digest $1 always;\n");
    s.push_str(api);
    s.push_str("    }\n");
    s.push_str("    location ~ \"^/v2/.+/tags/list$\" {\n");
    s.push_str(&format!("        default_type {JSON_TYPE};\n"));
    s.push_str(api);
    s.push_str("    }\n");
    for o in objects.values().filter(|o| o.kind == Kind::Manifest) {
        s.push_str(&format!(
            "    location = {} {{\n",
            quoted(&format!("/{}", o.key))
        ));
        s.push_str(&format!("        default_type {};\n", o.content_type));
        if let Some(d) = &o.digest {
            s.push_str(&format!(
                "        add_header Docker-Content-Digest {d} always;\n"
            ));
        }
        s.push_str(api);
        s.push_str("    }\n");
    }
    s.push_str("}\n");
    s
}

/// The Caddyfile: a site on :8080 serving the tree.
pub fn caddy_config(root: &Path, objects: &BTreeMap<String, Object>) -> String {
    let mut s = String::new();
    s.push_str("# Generated by nixoci export-static; every export into this tree rewrites it.\n");
    s.push_str("# A read-only OCI registry served from files:\n");
    s.push_str(&format!(
        "#     caddy run --adapter caddyfile --config {}\n",
        root.join(CADDY_FILE).display()
    ));
    s.push_str("# It listens on :8080; change the address, or copy the directives into a site.\n");
    s.push_str(":8080 {\n");
    s.push_str(&format!(
        "\troot * {}\n",
        quoted(&root.display().to_string())
    ));
    s.push_str("\t@outside not path /v2/*\n\trespond @outside 404\n");
    s.push_str("\theader Docker-Distribution-API-Version registry/2.0\n");
    s.push_str("\t@ping path /v2/\n");
    s.push_str(&format!("\theader @ping Content-Type {JSON_TYPE}\n"));
    s.push_str("\trespond @ping \"{}\" 200\n");
    s.push_str("\t@blob path_regexp blob ^/v2/.+/blobs/(sha256:[0-9a-f]{64})$\n");
    s.push_str(&format!("\theader @blob Content-Type {BLOB_TYPE}\n"));
    s.push_str("\theader @blob Docker-Content-Digest {re.blob.1}\n");
    s.push_str("\t@tags path_regexp ^/v2/.+/tags/list$\n");
    s.push_str(&format!("\theader @tags Content-Type {JSON_TYPE}\n"));
    for (i, o) in objects
        .values()
        .filter(|o| o.kind == Kind::Manifest)
        .enumerate()
    {
        s.push_str(&format!(
            "\t@m{i} path {}\n",
            quoted(&format!("/{}", o.key))
        ));
        s.push_str(&format!("\theader @m{i} Content-Type {}\n", o.content_type));
        if let Some(d) = &o.digest {
            s.push_str(&format!("\theader @m{i} Docker-Content-Digest {d}\n"));
        }
    }
    s.push_str("\tfile_server\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_names_that_leave_the_tree() {
        for bad in ["..", "../x", "/abs", "a/../../b", "a//b", "A", "a/", ""] {
            let e = check_names(bad, &["t".into()]).unwrap_err();
            assert!(e.is_usage(), "{bad}");
        }
        for bad in ["..", "../x", "/abs", "a/b", ".hidden", ""] {
            let e = check_names("ok/name", &[bad.into()]).unwrap_err();
            assert!(matches!(e, ExportError::Tag(_)), "{bad}");
        }
        assert!(check_names("team/app", &["1.0".into(), "latest".into()]).is_ok());
    }

    #[test]
    fn refuses_foreign_directories_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("tree");
        assert!(check_tree(&t).is_ok());
        fs::create_dir(&t).unwrap();
        assert!(check_tree(&t).is_ok());
        fs::write(t.join("x"), "x").unwrap();
        assert!(matches!(check_tree(&t), Err(ExportError::NotATree(_))));
        fs::create_dir(t.join(STATE_DIR)).unwrap();
        assert!(check_tree(&t).is_ok());
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, t.join("v2")).unwrap();
        assert!(matches!(
            ensure_dir(&t, &["v2", "a"], &mut Vec::new()),
            Err(ExportError::Unexpected(_))
        ));
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
    }

    #[test]
    fn configs_list_every_manifest() {
        let d = Digest::of(b"m");
        let mut objects = BTreeMap::new();
        for key in ["v2/a/manifests/1.0", &format!("v2/a/manifests/{d}")] {
            objects.insert(
                key.to_string(),
                Object {
                    key: key.to_string(),
                    content_type: "application/vnd.oci.image.index.v1+json".into(),
                    digest: Some(d.clone()),
                    size: 1,
                    kind: Kind::Manifest,
                },
            );
        }
        let n = nginx_config(Path::new("/srv/t"), &objects);
        assert!(n.contains("root \"/srv/t\";"));
        assert!(n.contains("location = \"/v2/a/manifests/1.0\" {"));
        assert_eq!(n.matches(&format!("Docker-Content-Digest {d}")).count(), 2);
        let c = caddy_config(Path::new("/srv/t"), &objects);
        assert!(c.contains("@m0 path \"/v2/a/manifests/1.0\""));
        assert_eq!(
            tags_by_repository(&objects)["a"].iter().collect::<Vec<_>>(),
            ["1.0"]
        );
    }
}
