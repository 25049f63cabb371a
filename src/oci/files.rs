//! The files of an OCI image layout, opened for reading without ever
//! following a symbolic link.
//!
//! A layout is a directory the user names; what is inside it is data. A
//! blob, `index.json` or `oci-layout` that is a symbolic link (or that sits
//! under a `blobs/` or `blobs/sha256/` that is one) can point anywhere on
//! the machine, and a reader that followed it would verify, push or publish
//! a file from outside the layout. Every reader opens a layout's files
//! here: each directory between the layout and the file is checked with
//! `lstat`, and the file itself is opened with `O_NOFOLLOW` (and
//! `O_NONBLOCK`, so that a FIFO cannot hang the reader) and must be a
//! regular file. The layout directory itself is the user's own argument
//! and may be a symbolic link.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::model::{check, CheckError, Descriptor, Mismatch};
use super::Digest;

/// Why a file of a layout was not opened.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0} is a symbolic link; refusing to follow it out of the layout")]
    Symlink(PathBuf),
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// True when the file (or a directory on its way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `blobs/sha256/<hex>`: where a blob is in a layout.
pub fn blob_path(digest: &Digest) -> PathBuf {
    Path::new("blobs/sha256").join(digest.hex())
}

/// Checks that `path` is a directory, not a symbolic link to one.
fn real_dir(path: &Path) -> Result<(), FileError> {
    let m = fs::symlink_metadata(path).map_err(io_err(path))?;
    if m.file_type().is_symlink() {
        Err(FileError::Symlink(path.to_owned()))
    } else if m.is_dir() {
        Ok(())
    } else {
        Err(FileError::NotADirectory(path.to_owned()))
    }
}

/// Checks that the directory `rel` of `layout` (such as `blobs/sha256`),
/// and each one on the way to it, is a real directory. Returns its path.
pub fn check_dir(layout: &Path, rel: impl AsRef<Path>) -> Result<PathBuf, FileError> {
    let mut dir = layout.to_owned();
    for part in rel.as_ref().components() {
        dir.push(part);
        real_dir(&dir)?;
    }
    Ok(dir)
}

/// Opens the file `rel` of `layout` (such as `index.json` or
/// [`blob_path`]) for reading, with its metadata.
pub fn open(layout: &Path, rel: impl AsRef<Path>) -> Result<(File, Metadata), FileError> {
    let rel = rel.as_ref();
    if let Some(parent) = rel.parent() {
        check_dir(layout, parent)?;
    }
    open_no_follow(&layout.join(rel))
}

/// Opens `path` for reading unless it is a symbolic link; it must be a
/// regular file. The directories on the way are the caller's to check.
pub fn open_no_follow(path: &Path) -> Result<(File, Metadata), FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                FileError::Symlink(path.to_owned())
            } else {
                io_err(path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(FileError::NotAFile(path.to_owned()));
    }
    Ok((file, meta))
}

/// The whole content of the file `rel` of `layout`.
pub fn read(layout: &Path, rel: impl AsRef<Path>) -> Result<Vec<u8>, FileError> {
    let rel = rel.as_ref();
    let (mut file, meta) = open(layout, rel)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(io_err(&layout.join(rel)))?;
    Ok(bytes)
}

/// Why a file is not the blob a descriptor names.
#[derive(Debug, thiserror::Error)]
pub enum FileCheckError {
    /// A symbolic link, a directory, a FIFO…
    #[error("is not a plain file ({0})")]
    NotAFile(FileError),
    #[error("cannot be read ({0})")]
    Unreadable(io::Error),
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
}

/// Checks the file `path` against `d` with the one [`check`]: its size
/// first (from its metadata), then its content. Never through a symbolic
/// link: what it points at is not this blob. `Ok(false)` when there is no
/// such file.
pub fn check_file(path: &Path, d: &Descriptor) -> Result<bool, FileCheckError> {
    let (file, meta) = match open_no_follow(path) {
        Ok(opened) => opened,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(FileError::Io { source, .. }) => return Err(FileCheckError::Unreadable(source)),
        Err(e) => return Err(FileCheckError::NotAFile(e)),
    };
    d.check_size(meta.len())?;
    match check(BufReader::with_capacity(256 << 10, file), d) {
        Ok(()) => Ok(true),
        Err(CheckError::Mismatch(m)) => Err(m.into()),
        Err(CheckError::Read(e)) => Err(FileCheckError::Unreadable(e)),
    }
}

/// Refuses a layout whose `oci-layout`, `index.json`, `blobs` or
/// `blobs/sha256` is a symbolic link or of the wrong kind. What is missing
/// is left for the reader to report.
pub fn check_layout(layout: &Path) -> Result<(), FileError> {
    for (rel, dir) in [
        ("oci-layout", false),
        ("index.json", false),
        ("blobs", true),
        ("blobs/sha256", true),
    ] {
        let path = layout.join(rel);
        let m = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        if m.file_type().is_symlink() {
            return Err(FileError::Symlink(path));
        }
        if dir && !m.is_dir() {
            return Err(FileError::NotADirectory(path));
        }
        if !dir && !m.is_file() {
            return Err(FileError::NotAFile(path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn never_follows_a_symlink_in_a_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("l.oci");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        fs::create_dir_all(outside.join("sha256")).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        fs::write(layout.join("oci-layout"), b"{}").unwrap();
        assert_eq!(read(&layout, "oci-layout").unwrap(), b"{}");
        assert!(check_layout(&layout).is_ok());

        let d = Digest::of(b"secret");
        symlink(outside.join("secret"), layout.join(blob_path(&d))).unwrap();
        let e = read(&layout, blob_path(&d)).unwrap_err();
        assert!(matches!(e, FileError::Symlink(_)), "{e}");
        assert!(e
            .to_string()
            .ends_with("is a symbolic link; refusing to follow it out of the layout"));

        symlink(outside.join("secret"), layout.join("index.json")).unwrap();
        assert!(matches!(
            read(&layout, "index.json"),
            Err(FileError::Symlink(_))
        ));
        assert!(
            matches!(check_layout(&layout), Err(FileError::Symlink(p)) if p.ends_with("index.json"))
        );
        fs::remove_file(layout.join("index.json")).unwrap();

        // A symlinked directory on the way.
        fs::write(outside.join("sha256").join(d.hex()), b"secret").unwrap();
        fs::remove_dir_all(layout.join("blobs")).unwrap();
        symlink(&outside, layout.join("blobs")).unwrap();
        let e = read(&layout, blob_path(&d)).unwrap_err();
        assert!(
            matches!(&e, FileError::Symlink(p) if p.ends_with("blobs")),
            "{e}"
        );
        assert!(matches!(
            check_dir(&layout, "blobs/sha256"),
            Err(FileError::Symlink(_))
        ));
        assert!(matches!(check_layout(&layout), Err(FileError::Symlink(_))));

        // The layout directory itself may be a symlink.
        fs::remove_file(layout.join("blobs")).unwrap();
        let link = tmp.path().join("link.oci");
        symlink(&layout, &link).unwrap();
        assert_eq!(read(&link, "oci-layout").unwrap(), b"{}");
    }

    #[test]
    fn a_file_is_checked_against_its_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("blob");
        let d = Descriptor::new("", Digest::of(b"hello"), 5);
        assert!(!check_file(&path, &d).unwrap());
        fs::write(&path, b"hello").unwrap();
        assert!(check_file(&path, &d).unwrap());
        fs::write(&path, b"hell").unwrap();
        let e = check_file(&path, &d).unwrap_err();
        assert!(
            matches!(
                e,
                FileCheckError::Mismatch(Mismatch::Size {
                    expected: 5,
                    found: 4
                })
            ),
            "{e}"
        );
        assert_eq!(e.to_string(), "has 4 bytes, expected 5");
        fs::write(&path, b"jello").unwrap();
        let e = check_file(&path, &d).unwrap_err();
        assert_eq!(e.to_string(), format!("hashes to {}", Digest::of(b"jello")));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = check_file(&link, &d).unwrap_err();
        assert!(
            matches!(e, FileCheckError::NotAFile(FileError::Symlink(_))),
            "{e}"
        );
        assert!(e.to_string().starts_with("is not a plain file ("), "{e}");
    }

    #[test]
    #[allow(unsafe_code)] // mkfifo: a fixture std cannot make
    fn missing_and_odd_files() {
        let tmp = tempfile::tempdir().unwrap();
        let e = read(tmp.path(), "index.json").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = read(tmp.path(), "blobs/sha256/x").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        fs::create_dir(tmp.path().join("index.json")).unwrap();
        assert!(matches!(
            read(tmp.path(), "index.json"),
            Err(FileError::NotAFile(_))
        ));
        // A FIFO is refused without blocking.
        let fifo = tmp.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            read(tmp.path(), "fifo"),
            Err(FileError::NotAFile(_))
        ));
    }
}
