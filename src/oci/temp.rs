//! What this process is writing and has not finished: temporary files and
//! the new blobs and directories of layouts not yet committed. On SIGINT,
//! SIGTERM or SIGHUP the command line calls [`remove_all_and_exit`], which
//! removes all of it, so that no temp file outlives its build.
//!
//! Every name these files get is created, renamed or removed under one
//! lock, and the cleanup takes that lock and keeps it until the process
//! exits: it sees every name, and no new one appears after it. A layout's
//! commit renames `index.json` under the same lock ([`Unfinished::commit`]),
//! so the cleanup either finds the layout unfinished and removes its new
//! blobs before `index.json` names them, or finds it committed and leaves
//! it alone.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tempfile::NamedTempFile;

/// The prefix of every temporary file nixoci makes next to its outputs.
pub const TEMP_PREFIX: &str = ".tmp-";

struct State {
    temps: BTreeSet<PathBuf>,
    layouts: BTreeMap<u64, UnfinishedLayout>,
    next: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    temps: BTreeSet::new(),
    layouts: BTreeMap::new(),
    next: 0,
});

/// The lock. A panic while it was held leaves the sets as they were, which
/// is still what to clean up.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A named temporary file, removed when dropped, that a signal removes too.
pub struct TempFile<F = fs::File> {
    inner: Option<NamedTempFile<F>>,
}

/// Creates a temporary file in `dir` with `builder`'s prefix and options.
pub fn create(builder: &tempfile::Builder, dir: &Path) -> io::Result<TempFile> {
    create_with(builder, dir, |path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
    })
}

/// Creates a temporary name in `dir` with `make`, which must create it
/// (a file, a hard link) or fail with `AlreadyExists` to try another name.
pub fn create_with<F>(
    builder: &tempfile::Builder,
    dir: &Path,
    make: impl FnMut(&Path) -> io::Result<F>,
) -> io::Result<TempFile<F>> {
    let mut s = state();
    let temp = builder.make_in(dir, make)?;
    s.temps.insert(temp.path().to_owned());
    Ok(TempFile { inner: Some(temp) })
}

impl<F> TempFile<F> {
    fn inner(&self) -> &NamedTempFile<F> {
        // Only `persist` and `drop` take it, and both consume `self`.
        self.inner.as_ref().unwrap_or_else(|| unreachable!())
    }

    pub fn path(&self) -> &Path {
        self.inner().path()
    }

    pub fn as_file(&self) -> &F {
        self.inner().as_file()
    }

    pub fn as_file_mut(&mut self) -> &mut F {
        self.inner
            .as_mut()
            .unwrap_or_else(|| unreachable!())
            .as_file_mut()
    }

    /// Renames the file to `to`, replacing what was there.
    pub fn persist(self, to: &Path) -> io::Result<F> {
        let mut s = state();
        self.persist_locked(&mut s, to)
    }

    /// [`TempFile::persist`] with the lock held by the caller.
    fn persist_locked(mut self, s: &mut State, to: &Path) -> io::Result<F> {
        let temp = self.inner.take().unwrap_or_else(|| unreachable!());
        let path = temp.path().to_owned();
        let result = temp.persist(to);
        s.temps.remove(&path);
        // On failure the temp file goes with `e.file`, under the lock.
        result.map_err(|e| e.error)
    }
}

impl<F> Drop for TempFile<F> {
    fn drop(&mut self) {
        if let Some(temp) = self.inner.take() {
            let mut s = state();
            s.temps.remove(temp.path());
            drop(temp);
        }
    }
}

/// Makes `to` a hard link to `from`, failing when `to` exists.
pub fn hard_link(from: &Path, to: &Path) -> io::Result<()> {
    let _s = state();
    fs::hard_link(from, to)
}

/// What an unfinished layout created: blobs not present when it was
/// opened, and the directories it made.
#[derive(Debug, Clone)]
pub struct UnfinishedLayout {
    pub dir: PathBuf,
    pub blobs_dir: PathBuf,
    /// Blob names present when the layout was opened.
    pub existing: BTreeSet<OsString>,
    /// Directories this run created, parents first.
    pub created: Vec<PathBuf>,
}

impl UnfinishedLayout {
    /// The names in `blobs_dir`, temporary files left out.
    pub fn blob_names(&self) -> BTreeSet<OsString> {
        blob_names(&self.blobs_dir)
    }

    /// Blobs written since the layout was opened.
    pub fn new_blobs(&self) -> Vec<PathBuf> {
        self.blob_names()
            .difference(&self.existing)
            .map(|n| self.blobs_dir.join(n))
            .collect()
    }

    /// Removes the new blobs, temporary files, and the directories this run
    /// created (with the `oci-layout` file of a directory it created).
    fn remove(&self) {
        for blob in self.new_blobs() {
            let _ = fs::remove_file(blob);
        }
        // Under the layout's lock every temp file there is this run's or a
        // dead writer's.
        remove_temp_files(&self.blobs_dir);
        remove_temp_files(&self.dir);
        if self.created.first() == Some(&self.dir) {
            let _ = fs::remove_file(self.dir.join("oci-layout"));
        }
        for dir in self.created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The names in `dir`, temporary files left out.
pub fn blob_names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| !n.as_bytes().starts_with(b"."))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the temporary files (`.tmp-…`) directly in `dir`; returns how
/// many were removed and their total size.
pub fn remove_temp_files(dir: &Path) -> (usize, u64) {
    let (mut count, mut bytes) = (0, 0);
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        if !e.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            continue;
        }
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        if fs::remove_file(e.path()).is_ok() {
            count += 1;
            bytes += size;
        }
    }
    (count, bytes)
}

/// A registered unfinished layout: dropped, it removes what it created;
/// committed, it is left alone from then on.
pub struct Unfinished {
    id: u64,
}

/// Registers `layout` as unfinished.
pub fn register(layout: UnfinishedLayout) -> Unfinished {
    let mut s = state();
    let id = s.next;
    s.next += 1;
    s.layouts.insert(id, layout);
    Unfinished { id }
}

impl Unfinished {
    /// Replaces what was registered.
    pub fn update(&self, layout: UnfinishedLayout) {
        state().layouts.insert(self.id, layout);
    }

    /// Renames `index` to `to` and marks the layout finished, in one step
    /// that a signal cannot split.
    pub fn commit(self, index: TempFile, to: &Path) -> io::Result<()> {
        let mut s = state();
        index.persist_locked(&mut s, to)?;
        s.layouts.remove(&self.id);
        drop(s);
        std::mem::forget(self);
        Ok(())
    }

    /// Marks the layout finished without a new `index.json` (a rebuild
    /// that changed nothing).
    pub fn finish(self) {
        state().layouts.remove(&self.id);
        std::mem::forget(self);
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let mut s = state();
        if let Some(layout) = s.layouts.remove(&self.id) {
            layout.remove();
        }
    }
}

/// Removes every temporary file and unfinished layout of this process and
/// exits with `code`. Holds the lock until the end, so no thread creates a
/// file after the cleanup has looked.
pub fn remove_all_and_exit(code: i32) -> ! {
    let s = state();
    for temp in &s.temps {
        let _ = fs::remove_file(temp);
    }
    for layout in s.layouts.values() {
        layout.remove();
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_are_removed_unless_persisted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut builder = tempfile::Builder::new();
        builder.prefix(TEMP_PREFIX);
        let a = create(&builder, tmp.path()).unwrap();
        let b = create(&builder, tmp.path()).unwrap();
        let a_path = a.path().to_owned();
        assert!(state().temps.contains(&a_path));
        drop(a);
        assert!(!a_path.exists());
        assert!(!state().temps.contains(&a_path));
        let kept = tmp.path().join("kept");
        b.persist(&kept).unwrap();
        assert!(kept.exists());
        assert_eq!(remove_temp_files(tmp.path()), (0, 0));
    }
}
