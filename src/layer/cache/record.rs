//! The record of blobs this tool wrote or verified, so that an unchanged
//! blob is not read again.
//!
//! A cache entry keeps, next to its blob's digest, the [`FileState`]s
//! (device, inode, size, modification and change time) of the files it
//! knows to hold that blob: a blob this tool just wrote, a blob it hashed
//! and found good, and a blob it hard-linked after either. A file whose
//! state is in the record is taken as good without reading it; any other
//! is hashed as before, and recorded when good.
//!
//! Why that is safe: every write to a file, every `chmod`, `touch`, link or
//! rename of it sets its change time (ctime) to the kernel's clock, and
//! nothing can set it back (short of changing the clock or the raw disk).
//! So a file changed after it was recorded never matches the record again,
//! even one of the same size whose modification time was reset with
//! `touch -d`; a file replaced by another has another inode or device.
//!
//! The kernel stamps times with a clock that moves in ticks (a few
//! milliseconds): a write within the tick of the state recorded would keep
//! that ctime. A hashed file is therefore recorded only when its ctime is
//! well before the hashing started ([`SETTLED`]) and it did not change
//! while it was read. A blob this tool wrote or linked is recorded by its
//! state right after that write or link, leaving the rest of that one tick
//! as the window another writer of the same file could hide in (the
//! "racily clean" window git's index has too).

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::check_blob;
use crate::oci::files::FileCheckError;
use crate::oci::Digest;

/// States kept per entry: the output's link and the cache's are usually
/// one inode; more than that are older outputs.
pub const MAX_STATES: usize = 4;

/// How long before a hash begins a file's last change must be for the hash
/// to be recorded: longer than any kernel's clock tick.
pub const SETTLED: Duration = Duration::from_millis(100);

/// What `stat` says of a file that changes whenever its content can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileState {
    pub fn of(meta: &Metadata) -> FileState {
        FileState {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The state of the regular file `path` (never through a symbolic
    /// link); `None` when it is something else or cannot be read.
    pub fn read(path: &Path) -> Option<FileState> {
        fs::symlink_metadata(path)
            .ok()
            .filter(Metadata::is_file)
            .map(|m| FileState::of(&m))
    }

    /// Same file and content as `other` was, though linked or renamed since
    /// (which moves only the change time).
    fn same_content(&self, other: &FileState) -> bool {
        (self.dev, self.ino, self.size, self.mtime)
            == (other.dev, other.ino, other.size, other.mtime)
    }

    /// Whether the file last changed at least [`SETTLED`] before `at`.
    fn settled_before(&self, at: SystemTime) -> bool {
        let Ok(secs) = u64::try_from(self.ctime.0) else {
            return false;
        };
        let Ok(nanos) = u32::try_from(self.ctime.1) else {
            return false;
        };
        let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        changed + SETTLED < at
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// No such file.
    Missing,
    /// The file holds the blob; `state` is what to record (`None` when it
    /// changed too recently to be recorded).
    Good { state: Option<FileState> },
}

/// Checks that `path` is a regular file of `size` bytes hashing to
/// `digest`, as [`check_blob`] does, except that a file whose state is in
/// `known` is not read. Errors are [`check_blob`]'s.
pub fn check(
    path: &Path,
    size: u64,
    digest: &Digest,
    known: &[FileState],
) -> Result<Checked, FileCheckError> {
    let before = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checked::Missing),
        // Anything else that is wrong, check_blob names.
        other => other
            .ok()
            .filter(Metadata::is_file)
            .map(|m| FileState::of(&m)),
    };
    if let Some(state) = before.filter(|s| s.size == size && known.contains(s)) {
        return Ok(Checked::Good { state: Some(state) });
    }
    // When a file was last changed, against when hashing began: no output.
    #[allow(clippy::disallowed_methods)]
    let start = SystemTime::now();
    if !check_blob(path, size, digest)? {
        return Ok(Checked::Missing);
    }
    let after = FileState::read(path);
    let state = before.filter(|b| Some(*b) == after && b.settled_before(start));
    Ok(Checked::Good { state })
}

/// The states, after a link this tool made, of those of `paths` that are
/// the file `verified` described (a copy is another file, and is left out).
pub fn after_link(verified: &FileState, paths: &[&Path]) -> Vec<FileState> {
    paths
        .iter()
        .filter_map(|p| FileState::read(p))
        .filter(|s| s.same_content(verified))
        .collect()
}

/// `new` states first, then those of `old` of other files, at most
/// [`MAX_STATES`]: a file's older state can never match again (its change
/// time only moves forward).
pub fn merge(new: &[FileState], old: &[FileState]) -> Vec<FileState> {
    let mut out: Vec<FileState> = Vec::new();
    for s in new.iter().chain(old) {
        if out.len() < MAX_STATES && !out.iter().any(|o| (o.dev, o.ino) == (s.dev, s.ino)) {
            out.push(*s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn blob(dir: &Path, bytes: &[u8]) -> (std::path::PathBuf, Digest) {
        let digest = Digest::of(bytes);
        let path = dir.join(digest.hex());
        fs::write(&path, bytes).unwrap();
        (path, digest)
    }

    /// Makes `path`'s last change look older than [`SETTLED`] by waiting.
    fn settle() {
        std::thread::sleep(SETTLED + Duration::from_millis(20));
    }

    #[test]
    fn a_recorded_state_skips_the_hash_and_any_change_is_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, digest) = blob(tmp.path(), b"blob bytes");
        settle();
        // Unknown: hashed, and recorded since it changed long enough ago.
        let Checked::Good { state: Some(state) } = check(&path, 10, &digest, &[]).unwrap() else {
            panic!("not recorded");
        };
        assert_eq!(FileState::read(&path), Some(state));
        // Known: good without reading, even though the content no longer
        // hashes right, as long as nothing changed the file.
        let known = [state];
        assert!(matches!(
            check(&path, 10, &digest, &known).unwrap(),
            Checked::Good { state: Some(_) }
        ));

        // Damaged in place, same size, and its modification time put back:
        // the change time moved, so it is hashed, and refused.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b"blob bytez").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let now = FileState::read(&path).unwrap();
        assert_eq!((now.size, now.mtime), (state.size, state.mtime));
        assert_ne!(now, state);
        let err = check(&path, 10, &digest, &known).unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");

        // The same with touch -d, the way a user would put a time back.
        fs::write(&path, b"blob bytes").unwrap();
        settle();
        let Checked::Good { state: Some(good) } = check(&path, 10, &digest, &[]).unwrap() else {
            panic!("not recorded");
        };
        fs::write(&path, b"blob bytez").unwrap();
        let o = Command::new("touch")
            .arg("-d")
            .arg(format!("@{}.{:09}", good.mtime.0, good.mtime.1))
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let now = FileState::read(&path).unwrap();
        assert_eq!((now.size, now.mtime), (good.size, good.mtime));
        assert!(check(&path, 10, &digest, &[good]).is_err());

        // A file that is not there is missing, whatever the record says.
        fs::remove_file(&path).unwrap();
        assert_eq!(
            check(&path, 10, &digest, &[good]).unwrap(),
            Checked::Missing
        );
    }

    #[test]
    fn a_file_changed_just_now_is_good_but_not_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, digest) = blob(tmp.path(), b"blob bytes");
        assert_eq!(
            check(&path, 10, &digest, &[]).unwrap(),
            Checked::Good { state: None }
        );
    }

    #[test]
    fn a_replaced_file_is_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, digest) = blob(tmp.path(), b"blob bytes");
        settle();
        let Checked::Good { state: Some(state) } = check(&path, 10, &digest, &[]).unwrap() else {
            panic!("not recorded");
        };
        // Another file of the same size renamed over it: another inode.
        let other = tmp.path().join("other");
        fs::write(&other, b"blob bytez").unwrap();
        fs::rename(&other, &path).unwrap();
        assert!(check(&path, 10, &digest, &[state]).is_err());
    }

    #[test]
    fn links_keep_the_content_and_move_the_change_time() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, _) = blob(tmp.path(), b"blob bytes");
        let before = FileState::read(&path).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let link = tmp.path().join("link");
        fs::hard_link(&path, &link).unwrap();
        let copy = tmp.path().join("copy");
        fs::copy(&path, &copy).unwrap();
        let after = after_link(&before, &[&path, &link, &copy]);
        assert_eq!(after.len(), 2, "{after:?}");
        assert_eq!(after[0], after[1]);
        assert_eq!(after[0].ino, before.ino);
        assert_ne!(after[0].ctime, before.ctime);
    }

    #[test]
    fn merge_keeps_one_state_per_file_newest_first() {
        let s = |ino, c| FileState {
            dev: 1,
            ino,
            size: 3,
            mtime: (1, 0),
            ctime: (c, 0),
        };
        assert_eq!(
            merge(&[s(1, 2)], &[s(1, 1), s(2, 1)]),
            vec![s(1, 2), s(2, 1)]
        );
        let many: Vec<_> = (10..20).map(|i| s(i, 1)).collect();
        assert_eq!(merge(&[s(1, 2)], &many).len(), MAX_STATES);
        assert_eq!(merge(&[], &[]), vec![]);
    }
}
