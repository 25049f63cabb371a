//! A static registry tree on disk as the [`Objects`] of the collector:
//! the files under `v2/`, held under the tree's lock for as long as the
//! [`Tree`] lives, so that no export runs meanwhile.
//!
//! The files under `v2/` are hard links to one copy of each blob in
//! `.nixoci/blobs/sha256`; a copy goes once no key under `v2/` names its
//! digest (and it is older than the grace period). Afterwards the tag
//! lists, `objects.json`, `nginx.conf` and `Caddyfile` are rewritten from
//! what remains by export-static's own writer.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Grace, Key, Listing, Objects, Stored};
use crate::oci::files::{self, FileError};
use crate::publish::static_export::{
    self, lock_tree, read_objects, rewrite_listings, ExportError, TreeLock, STATE_DIR,
};

/// The blob store under the tree.
const STORE: &str = ".nixoci/blobs/sha256";

/// Why the tree could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{0} is a symlink, not a file or a directory, or not UTF-8; a static tree holds only what export-static wrote"
    )]
    Unexpected(PathBuf),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.to_owned();
    move |source| TreeError::Io {
        action,
        path,
        source,
    }
}

/// True when `dir` holds the `.nixoci` folder export-static writes.
pub fn is_tree(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(STATE_DIR)).is_ok_and(|m| m.is_dir())
}

/// A static registry tree, locked.
pub struct Tree {
    dir: PathBuf,
    lock: TreeLock,
}

impl Tree {
    /// Opens the tree at `dir` and takes its lock, waiting for an export
    /// that holds it.
    pub fn open(dir: &Path) -> Result<Tree, TreeError> {
        let lock = lock_tree(dir)?;
        Ok(Tree {
            dir: dir.to_owned(),
            lock,
        })
    }

    /// The files under `dir` (a directory of the tree named `key`), added
    /// to `out`; temporary files of a dead export are not objects.
    fn list_dir(&self, dir: &Path, key: &str, out: &mut Vec<Stored>) -> Result<(), TreeError> {
        let entries = fs::read_dir(dir).map_err(io_err("reading", dir))?;
        let mut names = Vec::new();
        for e in entries {
            let e = e.map_err(io_err("reading", dir))?;
            names.push(e.file_name());
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let Some(name) = name.to_str() else {
                return Err(TreeError::Unexpected(path));
            };
            if name.starts_with(".tmp-") {
                continue;
            }
            let m = fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
            let child = format!("{key}/{name}");
            if m.is_dir() {
                self.list_dir(&path, &child, out)?;
            } else if m.is_file() {
                let modified = m.modified().map_err(io_err("reading", &path))?;
                out.push(Stored {
                    key: child,
                    size: m.len(),
                    modified,
                });
            } else {
                return Err(TreeError::Unexpected(path));
            }
        }
        Ok(())
    }

    /// Removes the directories of `key` that it leaves empty, up to
    /// `v2/`.
    fn prune(&self, key: &str) {
        let mut dir = Path::new(key).parent();
        while let Some(d) = dir.filter(|d| *d != Path::new("v2")) {
            if fs::remove_dir(self.dir.join(d)).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    /// The blob-store copies no key of `remaining` names, and their age.
    fn unlinked(&self, remaining: &[Stored]) -> Result<Vec<Stored>, TreeError> {
        let named: std::collections::BTreeSet<String> = remaining
            .iter()
            .filter_map(|o| match Key::parse(&o.key) {
                Key::Manifest { digest, .. } | Key::Blob { digest, .. } => {
                    Some(digest.hex().to_owned())
                }
                _ => None,
            })
            .collect();
        let store = self.dir.join(STORE);
        if fs::symlink_metadata(&store).is_err() {
            return Ok(Vec::new());
        }
        files::check_dir(&self.dir, STORE)?;
        let mut copies = Vec::new();
        self.list_dir(&store, STORE, &mut copies)?;
        copies.retain(|c| {
            c.key
                .rsplit_once('/')
                .is_some_and(|(_, hex)| !named.contains(hex))
        });
        Ok(copies)
    }
}

impl Objects for Tree {
    type Error = TreeError;

    fn list(&mut self) -> Result<Listing, TreeError> {
        // Files are stamped by this machine's clock, as is the grace
        // period; it reaches no output.
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now();
        let mut objects = Vec::new();
        let v2 = self.dir.join("v2");
        match fs::symlink_metadata(&v2) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", &v2)(e)),
            Ok(m) if m.is_dir() => self.list_dir(&v2, "v2", &mut objects)?,
            Ok(_) => return Err(TreeError::Unexpected(v2)),
        }
        Ok(Listing { objects, now })
    }

    fn read(&mut self, key: &str) -> Result<Vec<u8>, TreeError> {
        Ok(files::read(&self.dir, key)?)
    }

    fn delete(&mut self, key: &str) -> Result<(), TreeError> {
        if let Some(parent) = Path::new(key).parent() {
            files::check_dir(&self.dir, parent)?;
        }
        let path = self.dir.join(key);
        fs::remove_file(&path).map_err(io_err("removing", &path))
    }

    fn put(&mut self, key: &str, bytes: &[u8], _content_type: &str) -> Result<(), TreeError> {
        if let Some(parent) = Path::new(key).parent() {
            files::check_dir(&self.dir, parent)?;
        }
        Ok(static_export::write_file(&self.dir.join(key), bytes)?)
    }

    fn settle(
        &mut self,
        remaining: &[Stored],
        removed: &[String],
        collect: Option<Grace>,
    ) -> Result<Option<Vec<Stored>>, TreeError> {
        let mut gone = Vec::new();
        if let Some(grace) = collect {
            for copy in self.unlinked(remaining)? {
                if !grace.expired(copy.modified) {
                    continue;
                }
                if !grace.dry_run {
                    self.delete(&copy.key)?;
                }
                gone.push(copy);
            }
            if grace.dry_run {
                return Ok(Some(gone));
            }
        }
        let mut objects = read_objects(&self.dir)?;
        for key in removed {
            objects.remove(key);
            self.prune(key);
        }
        rewrite_listings(&self.dir, &mut objects, &self.lock)?;
        Ok(Some(gone))
    }
}
