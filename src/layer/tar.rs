//! The layer tar format: one deterministic ustar stream of store paths, with
//! PAX extended headers where ustar runs out of room.
//!
//! Every rule that decides a layer's bytes lives here:
//!
//! - Store paths are written sorted by their full path, duplicates once.
//!   Before the first path of a store directory come entries for the store
//!   directory and its ancestors (`nix/`, `nix/store/`; `gnu/`, `gnu/store/`
//!   for `/gnu/store`), directories with mode 0755.
//! - Each store path is walked depth first, parents before children,
//!   children sorted by the bytes of their names (the order of a NAR).
//! - Entry names are relative (`nix/store/HASH-NAME/bin/hello`); directory
//!   names end in `/`. Names are bytes: anything Linux allows inside a store
//!   path is kept as is.
//! - One header format for all entries: ustar (`ustar\0` magic, version
//!   `00`), the prefix field left empty. Owner 0:0, uname and gname empty,
//!   mtime 1 (the Nix store's own), devmajor and devminor 0.
//! - The root layer ([`write_root_tar`]: what `crate::rootfs` puts outside
//!   the store) follows the same rules, with each entry's own mode and
//!   numeric owner. `--chmod`/`--chown` rules ([`Perms`]) change the mode
//!   (not of symlinks) and owner of any entry whose absolute path they
//!   match, in store layers too; without rules the bytes are as above.
//! - Modes as a NAR defines them, whatever the files on disk say (the store
//!   already holds exactly these; trees checked out of git become
//!   reproducible under any umask): directories 0555, regular files 0555
//!   when any execute bit is set and 0444 otherwise, symlinks 0777.
//! - Symlinks stay symlinks, their target written verbatim. Hardlinked files
//!   are written as regular files: no hardlink entries, ever. FIFOs, sockets
//!   and devices are an error.
//! - A name or link target longer than 100 bytes, or a file of 8 GiB or more,
//!   gets a PAX extended header (`x`) right before its entry, with `path`,
//!   `linkpath` and `size` records as needed (and `hdrcharset=BINARY` when a
//!   path is not UTF-8). The ustar header then carries the first 100 bytes of
//!   the name or target and size 0. The PAX header is named
//!   `PaxHeaders/<last component of the entry name>`, cut to 100 bytes, with
//!   mode 0644, owner 0:0 and mtime 1.
//! - The stream ends with two zero blocks. File contents are streamed through
//!   one fixed buffer: memory stays flat whatever the file sizes.
//!
//! While a store layer is written, the first bytes of each regular file are
//! matched against the ELF magic, in the same pass: [`write_stream`] also
//! returns the first loadable ELF file of each architecture the layer holds
//! (`crate::elf`), for the architecture check of the images that use it.
//! Only a 32-bit ARM file is read again, from the page cache: its section
//! headers and build attributes, for its ARM version. The bytes of the
//! layer do not depend on any of it.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::LayerError;
use crate::elf::{self, ElfFile};
use crate::rootfs::{Kind as RootKind, Perms, RootFs};
use crate::store_path::StorePath;

/// Version of the rules above: bump it with any change to the bytes a layer
/// gets, so that the layer cache never reuses blobs of the old format.
pub const FORMAT_VERSION: u32 = 1;

/// The tar block size.
const BLOCK: usize = 512;
/// Room for a name or link target in a ustar header.
const NAME_FIELD: usize = 100;
/// The largest size 11 octal digits hold: 8 GiB - 1.
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
/// Every entry's mtime: the Nix store's.
pub const MTIME: u64 = 1;
/// Mode of the store directory and its ancestors.
const STORE_DIR_MODE: u32 = 0o755;
const DIR_MODE: u32 = 0o555;
const EXECUTABLE_MODE: u32 = 0o555;
const FILE_MODE: u32 = 0o444;
const SYMLINK_MODE: u32 = 0o777;
const PAX_HEADER_MODE: u32 = 0o644;
/// Size of the one buffer file contents are copied through.
const COPY_BUFFER: usize = 64 * 1024;

const TYPE_REGULAR: u8 = b'0';
const TYPE_SYMLINK: u8 = b'2';
const TYPE_DIRECTORY: u8 = b'5';
const TYPE_PAX: u8 = b'x';

/// Writes the tar stream of `paths` to `out`, reading files from
/// `store_root` joined with each absolute path (`/` for the real store).
///
/// The paths are written sorted and without duplicates, whatever order they
/// come in. Returns `out` once the closing zero blocks are written; flushing
/// it is the caller's job.
pub fn write_tar<W: Write>(
    paths: &[StorePath],
    store_root: &Path,
    out: W,
) -> Result<W, LayerError> {
    write_stream(paths, store_root, &Perms::default(), NO_PROGRESS, out)
        .map(|(out, _)| out)
        .map_err(|e| match e {
            StreamError::Layer(e) => e,
            StreamError::Write(source) => LayerError::WriteStream { source },
        })
}

/// A failure while writing the stream: reading the store, or writing `out`,
/// which only the caller can name.
pub(super) enum StreamError {
    Layer(LayerError),
    Write(io::Error),
}

impl From<LayerError> for StreamError {
    fn from(e: LayerError) -> Self {
        StreamError::Layer(e)
    }
}

/// [`write_tar`], keeping errors of `out` apart so that the caller can say
/// which file they hit, telling `read` the bytes of file contents as they
/// are read, and returning the first loadable ELF file of each
/// architecture, in stream order.
pub(super) fn write_stream<W: Write>(
    paths: &[StorePath],
    store_root: &Path,
    perms: &Perms,
    read: &dyn Fn(u64),
    out: W,
) -> Result<(W, Vec<ElfFile>), StreamError> {
    let mut sorted: Vec<&StorePath> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut tar = TarWriter::new(out, perms.clone(), read);
    for path in sorted {
        tar.store_dir(path.store_dir())?;
        let relative = path.as_str().trim_start_matches('/');
        tar.tree(store_root.join(relative), relative.as_bytes().to_vec())?;
    }
    tar.out
        .write_all(&[0; 2 * BLOCK])
        .map_err(StreamError::Write)?;
    Ok((tar.out, tar.elf))
}

/// Writes the root layer of `fs` to `out`: its entries in path order,
/// parents before children (the tree has every parent), names relative
/// (`tmp/`, `etc/passwd`), with their modes and numeric owners, mtime 1,
/// uname and gname empty; then the closing zero blocks.
pub fn write_root_tar<W: Write>(fs: &RootFs, store_root: &Path, out: W) -> Result<W, LayerError> {
    write_root_stream(fs, store_root, &Perms::default(), NO_PROGRESS, out).map_err(|e| match e {
        StreamError::Layer(e) => e,
        StreamError::Write(source) => LayerError::WriteStream { source },
    })
}

pub(super) fn write_root_stream<W: Write>(
    fs: &RootFs,
    store_root: &Path,
    perms: &Perms,
    read: &dyn Fn(u64),
    out: W,
) -> Result<W, StreamError> {
    let mut tar = TarWriter::new(out, perms.clone(), read);
    for (path, entry) in &fs.entries {
        let mut name = path.trim_start_matches('/').as_bytes().to_vec();
        let owner = (entry.uid, entry.gid);
        match &entry.kind {
            RootKind::Directory => {
                name.push(b'/');
                tar.owned_entry(&name, TYPE_DIRECTORY, entry.mode, owner, 0, b"")?;
            }
            RootKind::Symlink(target) => {
                tar.owned_entry(&name, TYPE_SYMLINK, entry.mode, owner, 0, target.as_bytes())?;
            }
            // A file of a store path, with the store's modes, owned by
            // root, read as the store layers read it.
            RootKind::StoreFile { source, .. } => {
                let disk = store_root.join(source.trim_start_matches('/'));
                tar.file(&disk, &name)?;
            }
            RootKind::File(bytes) => {
                let size = bytes.len() as u64;
                tar.owned_entry(&name, TYPE_REGULAR, entry.mode, owner, size, b"")?;
                tar.out.write_all(bytes).map_err(StreamError::Write)?;
                (tar.read)(size);
                tar.pad(size)?;
            }
        }
    }
    tar.out
        .write_all(&[0; 2 * BLOCK])
        .map_err(StreamError::Write)?;
    Ok(tar.out)
}

/// A tar of whole files, with the layer rules (sorted by the caller, owner
/// 0:0, mtime 1, PAX where ustar runs out): `nixoci save`'s archives.
pub struct ArchiveWriter<W: Write>(TarWriter<'static, W>);

impl<W: Write> ArchiveWriter<W> {
    pub fn new(out: W) -> Self {
        ArchiveWriter(TarWriter::new(out, Perms::default(), NO_PROGRESS))
    }

    /// A directory entry (`name` ends in `/`).
    pub fn directory(&mut self, name: &str) -> Result<(), LayerError> {
        self.0
            .owned_entry(name.as_bytes(), TYPE_DIRECTORY, 0o755, (0, 0), 0, b"")
            .map_err(stream_error)
    }

    /// A file holding `bytes`, mode 0644.
    pub fn bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), LayerError> {
        let size = bytes.len() as u64;
        self.0
            .owned_entry(name.as_bytes(), TYPE_REGULAR, 0o644, (0, 0), size, b"")
            .and_then(|()| self.0.out.write_all(bytes).map_err(StreamError::Write))
            .and_then(|()| self.0.pad(size))
            .map_err(stream_error)
    }

    /// The file at `disk` (never through a symlink), mode 0444.
    pub fn file(&mut self, name: &str, disk: &Path) -> Result<(), LayerError> {
        self.0.file(disk, name.as_bytes()).map_err(stream_error)
    }

    /// Writes the closing zero blocks and returns the output.
    pub fn finish(mut self) -> Result<W, LayerError> {
        self.0
            .out
            .write_all(&[0; 2 * BLOCK])
            .map_err(|source| LayerError::WriteStream { source })?;
        Ok(self.0.out)
    }
}

/// The `Tag_CPU_arch` of a 32-bit ARM ELF `file`: its section headers,
/// then its `.ARM.attributes` section, read at their offsets.
fn arm_cpu_arch(file: &fs::File, header: &elf::Header) -> Option<u8> {
    let read = |(offset, len): (u64, usize)| {
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset).ok().map(|()| bytes)
    };
    let headers = read(header.section_headers()?)?;
    let section = read(elf::arm_attributes(header, &headers)?)?;
    elf::arm_cpu_arch(&section, header.big_endian)
}

fn stream_error(e: StreamError) -> LayerError {
    match e {
        StreamError::Layer(e) => e,
        StreamError::Write(source) => LayerError::WriteStream { source },
    }
}

/// A `read` that tells nobody.
const NO_PROGRESS: &dyn Fn(u64) = &|_| {};

struct TarWriter<'r, W> {
    out: W,
    buffer: Vec<u8>,
    /// Entry names of store directories (and ancestors) already written.
    store_dirs: BTreeSet<Vec<u8>>,
    /// `--chmod`/`--chown` rules over the entries' paths.
    perms: Perms,
    /// The first loadable ELF file of each architecture written so far.
    elf: Vec<ElfFile>,
    /// Told the bytes of every chunk of file contents written (progress).
    read: &'r dyn Fn(u64),
}

impl<'r, W: Write> TarWriter<'r, W> {
    fn new(out: W, perms: Perms, read: &'r dyn Fn(u64)) -> Self {
        TarWriter {
            out,
            buffer: vec![0; COPY_BUFFER],
            store_dirs: BTreeSet::new(),
            perms,
            elf: Vec::new(),
            read,
        }
    }

    /// Writes `nix/`, `nix/store/` (or whatever `store_dir` is made of) unless
    /// already written.
    fn store_dir(&mut self, store_dir: &str) -> Result<(), StreamError> {
        let mut name = Vec::new();
        for component in store_dir.split('/').filter(|c| !c.is_empty()) {
            name.extend_from_slice(component.as_bytes());
            name.push(b'/');
            if self.store_dirs.insert(name.clone()) {
                self.entry(&name, TYPE_DIRECTORY, STORE_DIR_MODE, 0, b"")?;
            }
        }
        Ok(())
    }

    /// Writes the tree at `disk` as `name`, depth first, children sorted.
    ///
    /// A child's kind comes from its directory entry (no `lstat` per file);
    /// a file is then opened without following symlinks and checked again
    /// by `fstat`.
    fn tree(&mut self, disk: PathBuf, name: Vec<u8>) -> Result<(), StreamError> {
        let root_kind = fs::symlink_metadata(&disk)
            .map_err(|e| read_error(&disk, e))?
            .file_type();
        let mut pending = vec![(disk, name, root_kind)];
        while let Some((disk, mut name, kind)) = pending.pop() {
            if kind.is_dir() {
                name.push(b'/');
                self.entry(&name, TYPE_DIRECTORY, DIR_MODE, 0, b"")?;
                let mut children = Vec::new();
                for child in fs::read_dir(&disk).map_err(|e| read_error(&disk, e))? {
                    let child = child.map_err(|e| read_error(&disk, e))?;
                    // From the entry's d_type; an lstat where the file
                    // system does not say.
                    let kind = child
                        .file_type()
                        .map_err(|e| read_error(&child.path(), e))?;
                    children.push((child.file_name(), kind));
                }
                children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                // Reversed onto the stack, so that the first child comes next.
                for (child, kind) in children.into_iter().rev() {
                    let mut child_name = name.clone();
                    child_name.extend_from_slice(child.as_bytes());
                    pending.push((disk.join(child), child_name, kind));
                }
            } else if kind.is_file() {
                self.file(&disk, &name)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&disk).map_err(|e| read_error(&disk, e))?;
                let target = target.as_os_str().as_bytes();
                self.entry(&name, TYPE_SYMLINK, SYMLINK_MODE, 0, target)?;
            } else {
                return Err(LayerError::FileType { path: disk }.into());
            }
        }
        Ok(())
    }

    /// Writes a regular file's header and contents.
    fn file(&mut self, disk: &Path, name: &[u8]) -> Result<(), StreamError> {
        // No following a symlink or blocking on a FIFO swapped in since the
        // lstat; size and mode come from the file actually opened.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(disk)
            .map_err(|e| read_error(disk, e))?;
        let meta = file.metadata().map_err(|e| read_error(disk, e))?;
        if !meta.file_type().is_file() {
            return Err(LayerError::FileType {
                path: disk.to_owned(),
            }
            .into());
        }
        let size = meta.len();
        let executable = meta.permissions().mode() & 0o111 != 0;
        let mode = if executable {
            EXECUTABLE_MODE
        } else {
            FILE_MODE
        };
        self.entry(name, TYPE_REGULAR, mode, size, b"")?;
        // The file's first bytes, for the ELF check.
        let mut head = [0u8; elf::HEADER_LEN];
        let mut head_len = 0;
        let mut left = size;
        while left > 0 {
            let want =
                usize::try_from(left).map_or(self.buffer.len(), |l| l.min(self.buffer.len()));
            let n = match file.read(&mut self.buffer[..want]) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while it was being read",
                    );
                    return Err(read_error(disk, e).into());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(disk, e).into()),
            };
            if head_len < head.len() {
                let take = n.min(head.len() - head_len);
                head[head_len..head_len + take].copy_from_slice(&self.buffer[..take]);
                head_len += take;
            }
            self.out
                .write_all(&self.buffer[..n])
                .map_err(StreamError::Write)?;
            (self.read)(n as u64);
            left -= n as u64;
        }
        if head.starts_with(elf::MAGIC) {
            self.note_elf(&file, &head[..head_len], name, executable);
        }
        self.pad(size)
    }

    /// Remembers a loadable ELF file whose first bytes are `head`, if it
    /// is the first of its architecture. A 32-bit ARM file's build
    /// attributes are read from `file`; when they cannot be, its version
    /// is unknown (any ARM variant takes it).
    fn note_elf(&mut self, file: &fs::File, head: &[u8], name: &[u8], executable: bool) {
        let Some(header) = elf::Header::parse(head) else {
            return;
        };
        let Some(kind) = header.loadable(name, executable) else {
            return;
        };
        let arm_cpu = if header.is_arm() {
            arm_cpu_arch(file, &header)
        } else {
            None
        };
        let arch = header.arch(arm_cpu);
        if self.elf.iter().all(|f| f.arch != arch) {
            self.elf.push(ElfFile {
                path: format!("/{}", String::from_utf8_lossy(name)),
                arch,
                kind,
            });
        }
    }

    /// Writes an entry's headers, owned by 0:0.
    fn entry(
        &mut self,
        name: &[u8],
        typeflag: u8,
        mode: u32,
        size: u64,
        link: &[u8],
    ) -> Result<(), StreamError> {
        self.owned_entry(name, typeflag, mode, (0, 0), size, link)
    }

    /// Writes an entry's headers: a PAX header first if ustar cannot hold it.
    fn owned_entry(
        &mut self,
        name: &[u8],
        typeflag: u8,
        mode: u32,
        owner: (u32, u32),
        size: u64,
        link: &[u8],
    ) -> Result<(), StreamError> {
        let (mode, owner) = if self.perms.is_empty() {
            (mode, owner)
        } else {
            // The entry's path in the image: `/` and the name, no trailing `/`.
            let trimmed = name.strip_suffix(b"/").unwrap_or(name);
            let path = format!("/{}", String::from_utf8_lossy(trimmed));
            self.perms
                .apply(&path, typeflag == TYPE_SYMLINK, mode, owner)
        };
        if let Some(records) = pax_records(name, link, size) {
            let pax_name = pax_header_name(name);
            let header = ustar_header(
                &pax_name,
                TYPE_PAX,
                PAX_HEADER_MODE,
                (0, 0),
                records.len() as u64,
                b"",
            );
            self.out.write_all(&header).map_err(StreamError::Write)?;
            self.out.write_all(&records).map_err(StreamError::Write)?;
            self.pad(records.len() as u64)?;
        }
        let header = ustar_header(name, typeflag, mode, owner, size, link);
        self.out.write_all(&header).map_err(StreamError::Write)
    }

    /// Pads `len` bytes of data to a whole block.
    fn pad(&mut self, len: u64) -> Result<(), StreamError> {
        let rest = (len % BLOCK as u64) as usize;
        if rest == 0 {
            return Ok(());
        }
        self.out
            .write_all(&[0; BLOCK][rest..])
            .map_err(StreamError::Write)
    }
}

fn read_error(path: &Path, source: io::Error) -> LayerError {
    LayerError::Read {
        path: path.to_owned(),
        source,
    }
}

/// The ustar header of one entry. A name or link target longer than the
/// field is cut (the PAX header carries it whole), a size ustar cannot hold
/// is written as 0 (likewise).
fn ustar_header(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    (uid, gid): (u32, u32),
    size: u64,
    link: &[u8],
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put_bytes(&mut h[0..100], name);
    put_octal(&mut h[100..108], u64::from(mode));
    // Ids above ustar's 7 octal digits do not fit: the root layer's
    // parsers refuse them (at most 2097151).
    put_octal(&mut h[108..116], u64::from(uid));
    put_octal(&mut h[116..124], u64::from(gid));
    put_octal(
        &mut h[124..136],
        if size > USTAR_MAX_SIZE { 0 } else { size },
    );
    put_octal(&mut h[136..148], MTIME);
    h[156] = typeflag;
    put_bytes(&mut h[157..257], link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname (265..297) and gname (297..329) stay empty.
    put_octal(&mut h[329..337], 0); // devmajor
    put_octal(&mut h[337..345], 0); // devminor
                                    // prefix (345..500) stays empty.
                                    // The checksum counts its own field as spaces; written "%06o\0 ".
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put_octal(&mut h[148..155], sum);
    h[155] = b' ';
    h
}

/// Copies as much of `value` as fits; the rest of the field stays NUL.
fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Writes `value` as zero-padded octal filling all but the field's last
/// byte, which is NUL. Callers keep values within the field.
fn put_octal(field: &mut [u8], mut value: u64) {
    let Some((last, digits)) = field.split_last_mut() else {
        return;
    };
    *last = 0;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value & 7) as u8;
        value >>= 3;
    }
}

/// The PAX records an entry needs, or `None` when ustar holds it all.
/// Records come in key order.
fn pax_records(name: &[u8], link: &[u8], size: u64) -> Option<Vec<u8>> {
    let long_name = name.len() > NAME_FIELD;
    let long_link = link.len() > NAME_FIELD;
    let big = size > USTAR_MAX_SIZE;
    if !(long_name || long_link || big) {
        return None;
    }
    let mut records = Vec::new();
    let binary = (long_name && std::str::from_utf8(name).is_err())
        || (long_link && std::str::from_utf8(link).is_err());
    if binary {
        pax_record(&mut records, "hdrcharset", b"BINARY");
    }
    if long_link {
        pax_record(&mut records, "linkpath", link);
    }
    if long_name {
        pax_record(&mut records, "path", name);
    }
    if big {
        pax_record(&mut records, "size", size.to_string().as_bytes());
    }
    Some(records)
}

/// Appends `"%d %s=%s\n"`, the length counting the whole record, its own
/// digits included.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // ' ', '=' and '\n' plus key and value; then find the fixed point of
    // adding the length's own digits.
    let base = key.len() + value.len() + 3;
    let mut len = base;
    loop {
        let with_digits = base + decimal_digits(len);
        if with_digits == len {
            break;
        }
        len = with_digits;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn decimal_digits(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// `PaxHeaders/<last component of name>`, cut to the ustar name field.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let base = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(slash) => &trimmed[slash + 1..],
        None => trimmed,
    };
    let mut pax_name = b"PaxHeaders/".to_vec();
    pax_name.extend_from_slice(base);
    pax_name.truncate(NAME_FIELD);
    pax_name
}

#[cfg(test)]
pub(super) mod tests {
    use std::ffi::OsStr;
    use std::fs::Permissions;
    use std::io::Cursor;
    use std::os::unix::fs::symlink;

    use super::*;

    pub const H1: &str = "0c0k4d1yzn1s3f0gqfrz3yvchpnsbbnj";
    pub const H2: &str = "1b2z0hyfwj9d1kg1yxxk1m1ifyqhnmb3";
    pub const H3: &str = "9wz1yvmcngzd0s3l6m4ak6arf0x3sxpj";

    /// The 150-byte file name in the fixture.
    pub fn long_file_name() -> String {
        format!("long-{}", "x".repeat(145))
    }

    /// The 120-byte symlink target in the fixture.
    pub fn long_target() -> String {
        format!("../{}", "t".repeat(117))
    }

    /// A fake store root with three store paths: a tree, a single file and a
    /// symlink. `loose` picks a different umask's modes for the same tree.
    pub struct Fixture {
        pub root: tempfile::TempDir,
        pub paths: Vec<StorePath>,
    }

    impl Fixture {
        pub fn new(loose: bool) -> Fixture {
            let root = tempfile::tempdir().unwrap();
            let store = root.path().join("nix/store");
            let tree = store.join(format!("{H1}-hello-2.12"));
            let (file_mode, exec_mode, dir_mode) = if loose {
                (0o664, 0o775, 0o775)
            } else {
                (0o644, 0o755, 0o755)
            };
            let write = |rel: &str, contents: &[u8], mode: u32| {
                let path = tree.join(rel);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, contents).unwrap();
                fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            };
            write("bin/hello", b"#!/bin/sh\necho hello\n", exec_mode);
            write("share/doc/hello/README", b"read me\n", file_mode);
            write("share/doc/hello/a/deep/nested/file", b"deep", file_mode);
            write(
                &format!("share/{}", long_file_name()),
                b"long name",
                file_mode,
            );
            write("lib/libhello.so", &vec![7u8; 3000], file_mode);
            fs::hard_link(tree.join("lib/libhello.so"), tree.join("lib/libhello.so.1")).unwrap();
            symlink("../../bin/hello", tree.join("share/doc/hello-link")).unwrap();
            symlink(long_target(), tree.join("share/long-link")).unwrap();
            fs::create_dir(tree.join("empty")).unwrap();
            for dir in [
                "",
                "bin",
                "lib",
                "share",
                "share/doc",
                "share/doc/hello",
                "empty",
            ] {
                fs::set_permissions(tree.join(dir), Permissions::from_mode(dir_mode)).unwrap();
            }
            fs::write(store.join(format!("{H2}-builder.sh")), b"echo build\n").unwrap();
            fs::set_permissions(
                store.join(format!("{H2}-builder.sh")),
                Permissions::from_mode(file_mode),
            )
            .unwrap();
            symlink(
                format!("/nix/store/{H1}-hello-2.12/bin/hello"),
                store.join(format!("{H3}-hello-link")),
            )
            .unwrap();
            let paths = [
                format!("{H1}-hello-2.12"),
                format!("{H2}-builder.sh"),
                format!("{H3}-hello-link"),
            ]
            .iter()
            .map(|base| StorePath::from_absolute(&format!("/nix/store/{base}")).unwrap())
            .collect();
            Fixture { root, paths }
        }

        pub fn tar(&self) -> Vec<u8> {
            write_tar(&self.paths, self.root.path(), Vec::new()).unwrap()
        }
    }

    /// One entry read back: name, type, mode, link target, contents.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Seen {
        pub name: Vec<u8>,
        pub kind: u8,
        pub mode: u32,
        pub link: Option<Vec<u8>>,
        pub data: Vec<u8>,
    }

    /// Reads a tar back with the `tar` crate, checking the fields every entry
    /// shares.
    pub fn read_back(bytes: &[u8]) -> Vec<Seen> {
        let mut archive = ::tar::Archive::new(Cursor::new(bytes));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            assert!(h.as_ustar().is_some(), "ustar header");
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert_eq!(h.mtime().unwrap(), 1);
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            assert_eq!(h.groupname_bytes(), Some(&b""[..]));
            assert_eq!(h.device_major().unwrap(), Some(0));
            assert_eq!(h.device_minor().unwrap(), Some(0));
            let kind = h.entry_type().as_byte();
            let mode = h.mode().unwrap();
            let name = entry.path_bytes().into_owned();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push(Seen {
                name,
                kind,
                mode,
                link,
                data,
            });
        }
        seen
    }

    fn seen(name: &str, kind: u8, mode: u32, link: Option<&str>, data: &[u8]) -> Seen {
        Seen {
            name: name.as_bytes().to_vec(),
            kind,
            mode,
            link: link.map(|l| l.as_bytes().to_vec()),
            data: data.to_vec(),
        }
    }

    #[test]
    fn entries_order_names_and_fields() {
        let fixture = Fixture::new(false);
        let entries = read_back(&fixture.tar());
        let p = format!("nix/store/{H1}-hello-2.12");
        let dir = |rel: &str| seen(&format!("{p}/{rel}"), b'5', 0o555, None, b"");
        let file =
            |rel: &str, mode, data: &[u8]| seen(&format!("{p}/{rel}"), b'0', mode, None, data);
        let link =
            |rel: &str, target: &str| seen(&format!("{p}/{rel}"), b'2', 0o777, Some(target), b"");
        let lib = vec![7u8; 3000];
        let expected = vec![
            seen("nix/", b'5', 0o755, None, b""),
            seen("nix/store/", b'5', 0o755, None, b""),
            seen(&format!("{p}/"), b'5', 0o555, None, b""),
            dir("bin/"),
            file("bin/hello", 0o555, b"#!/bin/sh\necho hello\n"),
            dir("empty/"),
            dir("lib/"),
            file("lib/libhello.so", 0o444, &lib),
            file("lib/libhello.so.1", 0o444, &lib),
            dir("share/"),
            dir("share/doc/"),
            dir("share/doc/hello/"),
            file("share/doc/hello/README", 0o444, b"read me\n"),
            dir("share/doc/hello/a/"),
            dir("share/doc/hello/a/deep/"),
            dir("share/doc/hello/a/deep/nested/"),
            file("share/doc/hello/a/deep/nested/file", 0o444, b"deep"),
            link("share/doc/hello-link", "../../bin/hello"),
            link("share/long-link", &long_target()),
            file(&format!("share/{}", long_file_name()), 0o444, b"long name"),
            seen(
                &format!("nix/store/{H2}-builder.sh"),
                b'0',
                0o444,
                None,
                b"echo build\n",
            ),
            seen(
                &format!("nix/store/{H3}-hello-link"),
                b'2',
                0o777,
                Some(&format!("/nix/store/{H1}-hello-2.12/bin/hello")),
                b"",
            ),
        ];
        assert_eq!(entries.len(), expected.len());
        for (got, want) in entries.iter().zip(&expected) {
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&want.name));
        }
    }

    #[test]
    fn hardlinks_become_regular_files() {
        let bytes = Fixture::new(false).tar();
        let mut archive = ::tar::Archive::new(Cursor::new(&bytes));
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            assert_ne!(entry.header().entry_type(), ::tar::EntryType::Link);
        }
    }

    #[test]
    fn long_names_use_pax_headers() {
        let bytes = Fixture::new(false).tar();
        // Walk the raw blocks: find PAX headers and the ustar entries after them.
        let mut raw = ::tar::Archive::new(Cursor::new(&bytes));
        let mut pax_names = Vec::new();
        let mut after_pax = Vec::new();
        let mut previous_was_pax = false;
        for entry in raw.entries().unwrap().raw(true) {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            assert!(h.as_ustar().is_some());
            if h.entry_type() == ::tar::EntryType::XHeader {
                assert_eq!(h.mode().unwrap(), 0o644);
                assert_eq!(h.mtime().unwrap(), 1);
                pax_names.push(String::from_utf8(h.path_bytes().into_owned()).unwrap());
                let mut records = Vec::new();
                entry.read_to_end(&mut records).unwrap();
                let text = String::from_utf8(records).unwrap();
                assert!(
                    text.contains(" path=") || text.contains(" linkpath="),
                    "{text}"
                );
                previous_was_pax = true;
            } else {
                if previous_was_pax {
                    after_pax.push((h.path_bytes().len(), h.link_name_bytes().map(|l| l.len())));
                }
                previous_was_pax = false;
            }
        }
        assert_eq!(
            pax_names,
            vec![
                "PaxHeaders/long-link".to_owned(),
                format!("PaxHeaders/{}", &long_file_name()[..89])
            ]
        );
        // The ustar fields carry the first 100 bytes; the full name comes
        // from PAX (checked in entries_order_names_and_fields).
        assert_eq!(after_pax, vec![(69, Some(100)), (100, None)]);
    }

    #[test]
    fn same_bytes_every_time_and_under_any_umask() {
        let strict = Fixture::new(false);
        let loose = Fixture::new(true);
        let a = strict.tar();
        assert_eq!(a, strict.tar());
        assert_eq!(a, loose.tar());
        assert_eq!(a.len() % BLOCK, 0);
        assert!(a.ends_with(&[0; 2 * BLOCK]));
    }

    #[test]
    fn input_order_does_not_matter() {
        let fixture = Fixture::new(false);
        let mut shuffled = fixture.paths.clone();
        shuffled.reverse();
        shuffled.push(fixture.paths[0].clone());
        let again = write_tar(&shuffled, fixture.root.path(), Vec::new()).unwrap();
        assert_eq!(again, fixture.tar());
    }

    #[test]
    fn store_dir_comes_from_the_paths() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("gnu/store");
        fs::create_dir_all(&store).unwrap();
        fs::write(store.join(format!("{H1}-x")), b"x").unwrap();
        let path = StorePath::from_absolute(&format!("/gnu/store/{H1}-x")).unwrap();
        let bytes = write_tar(&[path], root.path(), Vec::new()).unwrap();
        let names: Vec<_> = read_back(&bytes).into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            vec![
                b"gnu/".to_vec(),
                b"gnu/store/".to_vec(),
                format!("gnu/store/{H1}-x").into_bytes()
            ]
        );
    }

    #[test]
    fn no_paths_is_an_empty_archive() {
        let bytes = write_tar(&[], Path::new("/nonexistent"), Vec::new()).unwrap();
        assert_eq!(bytes, vec![0; 2 * BLOCK]);
    }

    #[test]
    fn non_utf8_names_are_kept_as_bytes() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join(format!("nix/store/{H1}-bytes"));
        fs::create_dir_all(&tree).unwrap();
        let short = b"caf\xe9".to_vec();
        let mut long = vec![b'\xff'; 120];
        long.extend_from_slice(b".txt");
        for name in [&short, &long] {
            fs::write(tree.join(OsStr::from_bytes(name)), b"data").unwrap();
        }
        let path = StorePath::from_absolute(&format!("/nix/store/{H1}-bytes")).unwrap();
        let bytes = write_tar(&[path], root.path(), Vec::new()).unwrap();
        let entries = read_back(&bytes);
        let prefix = format!("nix/store/{H1}-bytes/").into_bytes();
        let names: Vec<_> = entries.iter().skip(3).map(|s| s.name.clone()).collect();
        assert_eq!(
            names,
            vec![[prefix.clone(), short].concat(), [prefix, long].concat()]
        );
        let needle = b"hdrcharset=BINARY\n";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    #[allow(unsafe_code)] // mkfifo: a fixture std cannot make
    fn fifo_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join(format!("nix/store/{H1}-fifo"));
        fs::create_dir_all(&tree).unwrap();
        let fifo = tree.join("pipe");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let path = StorePath::from_absolute(&format!("/nix/store/{H1}-fifo")).unwrap();
        match write_tar(&[path], root.path(), Vec::new()) {
            Err(LayerError::FileType { path }) => assert_eq!(path, fifo),
            other => panic!("expected FileType, got {other:?}"),
        }
    }

    #[test]
    fn missing_path_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        let path = StorePath::from_absolute(&format!("/nix/store/{H1}-gone")).unwrap();
        match write_tar(&[path], root.path(), Vec::new()) {
            Err(LayerError::Read { path, source }) => {
                assert_eq!(path, root.path().join(format!("nix/store/{H1}-gone")));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Read, got {other:?}"),
        }
    }

    #[test]
    #[allow(unsafe_code)] // geteuid: std cannot tell who we are
    fn unreadable_file_names_the_file() {
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("skipping unreadable_file_names_the_file: root reads files with mode 000");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join(format!("nix/store/{H1}-secret"));
        fs::create_dir_all(&tree).unwrap();
        let secret = tree.join("secret");
        fs::write(&secret, b"x").unwrap();
        fs::set_permissions(&secret, Permissions::from_mode(0o000)).unwrap();
        let path = StorePath::from_absolute(&format!("/nix/store/{H1}-secret")).unwrap();
        match write_tar(&[path], root.path(), Vec::new()) {
            Err(e @ LayerError::Read { .. }) => {
                assert_eq!(e.to_string(), format!("reading {}", secret.display()));
            }
            other => panic!("expected Read, got {other:?}"),
        }
    }

    #[test]
    fn write_errors_are_stream_errors() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let fixture = Fixture::new(false);
        match write_tar(&fixture.paths, fixture.root.path(), Full) {
            Err(LayerError::WriteStream { .. }) => {}
            other => panic!("expected WriteStream, got {:?}", other.err()),
        }
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        // Values whose records end up just below, at and just above a change
        // in the number of length digits.
        for value_len in [
            0, 1, 2, 3, 4, 5, 6, 85, 86, 87, 88, 89, 90, 91, 92, 93, 990, 991, 992, 993, 994, 995,
            996,
        ] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'a'; value_len]);
            let space = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {value_len} bytes");
            assert!(out.ends_with(b"\n"));
        }
        let mut out = Vec::new();
        pax_record(&mut out, "size", b"8589934592");
        assert_eq!(out, b"19 size=8589934592\n");
    }

    #[test]
    fn loadable_elf_files_are_found_in_the_same_pass() {
        use crate::elf::tests::elf_bytes;
        use crate::elf::Kind;
        let root = tempfile::tempdir().unwrap();
        let name = format!("{H1}-mixed");
        let tree = root.path().join("nix/store").join(&name);
        let write = |rel: &str, contents: &[u8], mode: u32| {
            let path = tree.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
        };
        // (e_type 1: ET_REL, 2: ET_EXEC, 3: ET_DYN; machines 62 x86-64,
        // 40 arm, 183 aarch64, 243 riscv)
        write("bin/prog", &elf_bytes(64, false, 2, 62, None), 0o755);
        write("bin/tiny", b"\x7fELF", 0o755);
        write("bin/script", b"#!/bin/sh\n", 0o755);
        write(
            "lib/firmware/dsp.bin",
            &elf_bytes(64, false, 2, 183, None),
            0o644,
        );
        write(
            "lib/libarm.so",
            &elf_bytes(32, false, 3, 40, Some(10)),
            0o644,
        );
        write("lib/libz.so.1", &elf_bytes(64, false, 3, 62, None), 0o644);
        write("lib/mod.ko", &elf_bytes(64, false, 1, 183, None), 0o755);
        write("share/riscv.so", &elf_bytes(64, false, 3, 243, None), 0o444);
        let path = StorePath::from_absolute(&format!("/nix/store/{name}")).unwrap();
        let paths = [path];
        let found = match write_stream(
            &paths,
            root.path(),
            &Perms::default(),
            NO_PROGRESS,
            Vec::new(),
        ) {
            Ok((out, found)) => {
                // The scan changes nothing in the stream.
                assert_eq!(out, write_tar(&paths, root.path(), Vec::new()).unwrap());
                found
            }
            Err(_) => panic!("writing the stream"),
        };
        let seen: Vec<(String, String, Kind)> = found
            .iter()
            .map(|f| (f.path.clone(), f.arch.to_string(), f.kind))
            .collect();
        let at = |rel: &str| format!("/nix/store/{name}/{rel}");
        assert_eq!(
            seen,
            vec![
                (at("bin/prog"), "x86-64".into(), Kind::Executable),
                (at("lib/libarm.so"), "armv7".into(), Kind::SharedLibrary),
                (at("share/riscv.so"), "riscv64".into(), Kind::SharedLibrary),
            ]
        );
    }

    #[test]
    fn big_files_get_a_pax_size() {
        // An 8 GiB file takes too long to stream in a unit test; check the
        // headers, and that the tar crate reads the size from them.
        let size = USTAR_MAX_SIZE + 1;
        let mut tar = TarWriter::new(Vec::new(), Perms::default(), NO_PROGRESS);
        assert!(tar
            .entry(b"nix/store/big", TYPE_REGULAR, 0o444, size, b"")
            .is_ok());
        assert!(tar
            .entry(b"nix/store/small", TYPE_REGULAR, 0o444, USTAR_MAX_SIZE, b"")
            .is_ok());
        let bytes = tar.out;
        assert_eq!(&bytes[124..136], b"00000000023\0", "PAX header size field");
        assert_eq!(
            &bytes[BLOCK..BLOCK + 28],
            b"19 size=8589934592\n\0\0\0\0\0\0\0\0\0"
        );
        assert_eq!(&bytes[2 * BLOCK + 124..2 * BLOCK + 136], b"00000000000\0");
        assert_eq!(&bytes[3 * BLOCK + 124..3 * BLOCK + 136], b"77777777777\0");
        let mut archive = ::tar::Archive::new(Cursor::new(&bytes));
        let first = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.path_bytes().as_ref(), b"nix/store/big");
        assert_eq!(first.size(), size);
    }

    #[test]
    fn headers_match_gnu_tar_conventions() {
        let h = ustar_header(b"nix/", TYPE_DIRECTORY, 0o755, (0, 0), 0, b"");
        assert_eq!(&h[100..108], b"0000755\0");
        assert_eq!(&h[108..124], b"0000000\x000000000\0");
        assert_eq!(&h[136..148], b"00000000001\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        // The tar crate agrees on the checksum.
        let mut parsed = ::tar::Header::new_old();
        parsed.as_mut_bytes().copy_from_slice(&h);
        let stored = parsed.cksum().unwrap();
        parsed.set_cksum();
        assert_eq!(parsed.cksum().unwrap(), stored);
    }
}
