//! Layers: deterministic tar streams of store paths, hashed, compressed and
//! hashed again in one pass, written straight into `blobs/sha256/`, and
//! never built twice.
//!
//! One pass per layer, constant memory:
//!
//! ```text
//! tar (tar.rs) -> sha256 (diff_id) -> compress (compress.rs) -> sha256, size (digest) -> temp file in blobs_dir
//! ```
//!
//! then the temp file is renamed to `blobs_dir/<hex of digest>`. The blob
//! depends only on the tar, the compressor, its level and the pinned
//! library versions: never on the number of threads.
//!
//! [`build_layers`] builds many layers at once: `jobs` layer threads take
//! distinct layers biggest first (by NAR size) and first ask the layer
//! cache ([`cache`]), which either puts a checked blob into the layout or
//! says to build. A layer is built on its layer thread, which writes the
//! tar stream; its gzip chunks are deflated on one shared pool of `jobs`
//! threads ([`compress::Workers`]), so a single big layer keeps every core
//! busy, and layers and chunks share the cores. Results come back in input
//! order.
//!
//! Each layer also says which architectures its ELF programs and libraries
//! are built for ([`BuiltLayer::elf`], found by `tar.rs` in the same pass
//! and kept with the layer in the cache), and [`build_layers`] hands that
//! to the caller's check as each layer is done: an image of the wrong
//! architecture stops the build at its first wrong layer. As they go,
//! layers tell how many bytes they have read ([`Progress`]).

pub mod cache;
pub mod compress;
pub mod nix_db;
pub mod tar;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File, Permissions};
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::closure::PathInfo;
use crate::elf::{ElfFile, Mismatch};
use crate::oci::{temp, Digest, DigestWriter};
use crate::rootfs::{Perms, RootFs};
use crate::store_path::StorePath;

pub use self::cache::{Cache, CacheStatus};
pub use self::compress::{
    Compression, GZIP_OS_UNKNOWN, MAX_GZIP_LEVEL, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP,
    MEDIA_TYPE_TAR_ZSTD,
};
use self::compress::{Encoder, Workers};
pub use self::tar::write_tar;
use self::tar::StreamError;

/// Buffer between the compressor and the blob file.
const FILE_BUFFER: usize = 256 * 1024;
/// [`Progress::Read`] is told at least this many bytes at once (but the
/// last of a layer).
const PROGRESS_STEP: u64 = 256 * 1024;

/// Where layer contents come from, how they are compressed, and where
/// built layers are remembered.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// Files of `/nix/store/x` are read from `store_root/nix/store/x`; `/` for
    /// the real store.
    pub store_root: PathBuf,
    pub compression: Compression,
    /// The layer cache, opened once for the whole build; `None` builds every
    /// layer.
    pub cache: Option<Cache>,
    /// `--chmod`/`--chown` rules, applied to every entry of every layer.
    pub perms: Perms,
}

/// A layer written to `blobs/sha256/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltLayer {
    pub store_paths: Vec<StorePath>,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    pub media_type: String,
    /// The first loadable ELF file (program or shared library) of each
    /// architecture in the layer, in tar order (`crate::elf`); empty for a
    /// layer without one and for the root layer. Not in the report.
    #[serde(skip)]
    pub elf: Vec<ElfFile>,
}

impl BuiltLayer {
    /// The layer as the image's documents name it.
    pub fn oci_layer(&self) -> crate::oci::image::Layer<'_> {
        crate::oci::image::Layer {
            media_type: &self.media_type,
            digest: &self.digest,
            size: self.size,
            diff_id: &self.diff_id,
            store_paths: &self.store_paths,
        }
    }
}

/// A layer of [`build_layers`] and where its blob came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerOutcome {
    #[serde(flatten)]
    pub layer: BuiltLayer,
    /// `miss`: built now; `hit`: from the cache's blob store; `layout`:
    /// already in the output layout.
    pub cache: CacheStatus,
    /// What was wrong with the cache for this layer (a damaged entry or
    /// blob that was rebuilt, a blob that could not be stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_problem: Option<String>,
}

/// How far [`build_layers`] and [`build_root_layer`] are, told from the
/// layer threads as they go, in bytes of layer size: a store layer's size
/// is the sum of its paths' NAR sizes, the root layer's is
/// [`root_layer_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bytes of a layer being built: file contents as they are read (in
    /// steps of 256 KiB), then, when the layer is done, the rest of its size (what the
    /// NAR counts beyond contents: names, directories, framing), so that a
    /// built layer has told exactly its size, or more if its files hold
    /// more than its size says.
    Read(u64),
    /// The size of a layer that is not read: its blob came from the layer
    /// cache or was in the layout already.
    Skipped(u64),
}

/// The size [`Progress`] gives the root layer of `fs`: the bytes of its
/// files' contents (from the store or written by nixoci, like the Nix
/// database).
pub fn root_layer_size(fs: &RootFs) -> u64 {
    fs.entries
        .values()
        .map(|e| match &e.kind {
            crate::rootfs::Kind::File(bytes) => bytes.len() as u64,
            crate::rootfs::Kind::StoreFile { size, .. } => *size,
            _ => 0,
        })
        .sum()
}

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The error of one layer of [`build_layers`], by its input index.
    #[error("layer {} of the input", index + 1)]
    InLayer {
        index: usize,
        #[source]
        source: Box<LayerError>,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsupported file type (only regular files, directories and symlinks belong in the store)")]
    FileType { path: PathBuf },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the output of [`write_tar`] failed; it has no path to name.
    #[error("writing the tar stream")]
    WriteStream {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{compression} level {level} is out of range ({})",
        Compression::level_range(compression)
    )]
    Level {
        compression: &'static str,
        level: i32,
    },
    #[error("compression none takes no level")]
    NoLevel,
    #[error("unknown compression '{name}' (expected gzip, zstd or none)")]
    UnknownCompression { name: String },
    #[error("starting layer threads")]
    Threads(#[source] std::io::Error),
    /// The caller's check of [`build_layers`] refused the layer's ELF
    /// files.
    #[error(transparent)]
    Arch(Box<Mismatch>),
}

/// Builds one layer from store paths into `blobs_dir` (`blobs/sha256/`),
/// without the cache, on one compression thread.
///
/// The paths are written sorted and without duplicates, and returned so.
/// The blob replaces any file of its name. On error no temp file is left
/// behind.
pub fn build_layer(
    paths: &[StorePath],
    opts: &LayerOptions,
    blobs_dir: &Path,
) -> Result<BuiltLayer, LayerError> {
    opts.compression.check()?;
    let workers = Workers::new(1);
    write_layer(paths, opts, blobs_dir, &workers, &|_| {})
}

/// Tars, hashes, compresses, hashes and writes one layer, telling `read`
/// the bytes of file contents as they are read.
fn write_layer(
    paths: &[StorePath],
    opts: &LayerOptions,
    blobs_dir: &Path,
    workers: &Workers,
    read: &dyn Fn(u64),
) -> Result<BuiltLayer, LayerError> {
    let mut store_paths = paths.to_vec();
    store_paths.sort();
    store_paths.dedup();
    let mut elf = Vec::new();
    let (diff_id, digest, size) = write_blob(opts, blobs_dir, workers, |out| {
        let (out, files) =
            tar::write_stream(&store_paths, &opts.store_root, &opts.perms, read, out)?;
        elf = files;
        Ok(out)
    })?;
    Ok(BuiltLayer {
        store_paths,
        diff_id,
        digest,
        size,
        media_type: opts.compression.media_type().to_owned(),
        elf,
    })
}

/// Builds the root layer of `fs` into `blobs_dir` (the entries outside the
/// store: `crate::rootfs`), with `opts`' compression, through the layer
/// cache like any layer. It holds no store path. `progress` is told its
/// bytes as it goes.
pub fn build_root_layer(
    fs: &RootFs,
    opts: &LayerOptions,
    blobs_dir: &Path,
    progress: &dyn Fn(Progress),
) -> Result<LayerOutcome, LayerError> {
    opts.compression.check()?;
    let workers = Workers::new(1);
    let key = match &opts.cache {
        Some(cache) => cache::root_key(
            fs,
            &opts.compression.engine(),
            &fingerprint(opts, &workers)?,
        )
        .map(|key| (cache, key)),
        None => None,
    };
    reuse_or_build(
        key.as_ref().map(|(c, k)| (*c, k)),
        &[],
        opts,
        blobs_dir,
        root_layer_size(fs),
        progress,
        |read| {
            let (diff_id, digest, size) = write_blob(opts, blobs_dir, &workers, |out| {
                tar::write_root_stream(fs, &opts.store_root, &opts.perms, read, out)
            })?;
            Ok(BuiltLayer {
                store_paths: Vec::new(),
                diff_id,
                digest,
                size,
                media_type: opts.compression.media_type().to_owned(),
                elf: Vec::new(),
            })
        },
    )
}

/// A layer through the cache: the cached blob of `key` when it is good,
/// else `build`, stored under `key`. What went wrong with the cache is the
/// outcome's problem; the layer is built all the same.
///
/// `progress` is told the layer's `size`: skipped, or read as `build` reads
/// (it calls the function it is given with each chunk) and the rest when
/// it is done.
fn reuse_or_build(
    key: Option<(&Cache, &Digest)>,
    paths: &[StorePath],
    opts: &LayerOptions,
    blobs_dir: &Path,
    size: u64,
    progress: &dyn Fn(Progress),
    build: impl FnOnce(&dyn Fn(u64)) -> Result<BuiltLayer, LayerError>,
) -> Result<LayerOutcome, LayerError> {
    let mut problem = None;
    if let Some((cache, key)) = key {
        match cache.reuse(key, paths, opts.compression.media_type(), blobs_dir) {
            cache::Reuse::Found(layer, status) => {
                progress(Progress::Skipped(size));
                return Ok(LayerOutcome {
                    layer,
                    cache: status,
                    cache_problem: None,
                });
            }
            cache::Reuse::Build { problem: p } => problem = p,
        }
    }
    // Bytes read, and of them told, in steps of PROGRESS_STEP: many small
    // files cost one call each here, not one each to `progress`.
    let (read, told) = (Cell::new(0u64), Cell::new(0u64));
    let layer = build(&|n| {
        read.set(read.get() + n);
        if read.get() - told.get() >= PROGRESS_STEP {
            progress(Progress::Read(read.get() - told.get()));
            told.set(read.get());
        }
    })?;
    progress(Progress::Read(size.max(read.get()) - told.get()));
    if let Some((cache, key)) = key {
        if let Err(e) = cache.store(key, &layer, blobs_dir) {
            let note = format!(
                "could not store layer {} in cache {}: {e}; no more layers are stored there in this build",
                layer.digest,
                cache.dir().display()
            );
            problem = Some(match problem {
                Some(p) => format!("{p}; {note}"),
                None => note,
            });
        }
    }
    Ok(LayerOutcome {
        layer,
        cache: CacheStatus::Miss,
        cache_problem: problem,
    })
}

/// What goes into every cache key besides the layer's own content: the
/// compressor's fingerprint, the code's, and the `--chmod`/`--chown` rules.
fn fingerprint(opts: &LayerOptions, workers: &Workers) -> Result<Digest, LayerError> {
    let mut text = format!(
        "{} {}",
        compress::fingerprint(opts.compression, workers)?,
        cache::code_fingerprint()
    );
    // Rules that change entries change the bytes (none: the text, and so
    // every key, as before).
    if !opts.perms.is_empty() {
        text.push_str(&format!("\nperms\n{}", opts.perms.key_text()));
    }
    Ok(Digest::of(text.as_bytes()))
}

/// Where a layer's tar stream goes: hashed, compressed, hashed, buffered
/// into the blob's temporary file.
type LayerSink<'w> = DigestWriter<Encoder<'w, DigestWriter<BufWriter<&'w File>>>>;

/// The tar stream `tar` writes, hashed (diff_id), compressed, hashed again
/// (digest) and written to `blobs_dir` under its digest, in one pass.
fn write_blob(
    opts: &LayerOptions,
    blobs_dir: &Path,
    workers: &Workers,
    tar: impl for<'w> FnOnce(LayerSink<'w>) -> Result<LayerSink<'w>, StreamError>,
) -> Result<(Digest, Digest, u64), LayerError> {
    // The temp file is removed when dropped, on any early return.
    let temp = temp::create(
        tempfile::Builder::new()
            .prefix(".tmp-layer-")
            .permissions(Permissions::from_mode(0o666)),
        blobs_dir,
    )
    .map_err(|source| LayerError::Write {
        path: blobs_dir.to_owned(),
        source,
    })?;
    let temp_path = temp.path().to_owned();
    let write_error = |source| LayerError::Write {
        path: temp_path.clone(),
        source,
    };

    let file = BufWriter::with_capacity(FILE_BUFFER, temp.as_file());
    let encoder =
        Encoder::new(opts.compression, DigestWriter::new(file), workers).map_err(|e| match e {
            LayerError::WriteStream { source } => write_error(source),
            other => other,
        })?;
    let tar = tar(DigestWriter::new(encoder)).map_err(|e| match e {
        StreamError::Layer(e) => e,
        StreamError::Write(source) => write_error(source),
    })?;
    let (encoder, diff_id, _) = tar.finish();
    let compressed = encoder.finish().map_err(write_error)?;
    let (file, digest, size) = compressed.finish();
    file.into_inner().map_err(|e| write_error(e.into_error()))?;

    let blob = blobs_dir.join(digest.hex());
    let file = temp.persist(&blob).map_err(|e| LayerError::Write {
        path: blob.clone(),
        source: e,
    })?;
    sync_soon(file);
    Ok((diff_id, digest, size))
}

/// Makes a finished blob durable on a thread of its own, one blob after
/// the other, while later layers still build; the layout's commit, which
/// syncs every new blob again (that sync is the one that counts and
/// reports errors), then finds little left to wait for. Without it the
/// commit waited for the file system's journal and the disk at the end of
/// every build (30-315 ms for the 100 blobs of a 218 MiB build here).
/// Best effort: a blob the thread cannot take only has its writing to disk
/// started.
fn sync_soon(file: File) {
    static SYNCER: OnceLock<Option<Sender<File>>> = OnceLock::new();
    let syncer = SYNCER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<File>();
        std::thread::Builder::new()
            .name("blob-sync".into())
            .spawn(move || {
                for file in rx {
                    let _ = file.sync_data();
                }
            })
            .ok()
            .map(|_| tx)
    });
    start_writeback(&file);
    if let Some(tx) = syncer {
        let _ = tx.send(file);
    }
}

/// Asks the kernel to start writing `file` to disk now, without waiting.
// sync_file_range has no safe form in std.
#[allow(unsafe_code)]
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a file descriptor `file` owns for
        // the duration of the call; no memory is passed.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// The check [`build_layers`] runs on each layer's ELF files: the input
/// index of the layer and its [`BuiltLayer::elf`].
pub type ArchCheckFn<'a> = dyn Fn(usize, &[ElfFile]) -> Result<(), Mismatch> + Sync + 'a;

/// Builds `layers` with `jobs` threads (0: one per CPU), the biggest first
/// so that a big layer does not start last, and returns them in input
/// order.
///
/// `infos` gives each store path's NAR hash and size: the NAR hashes make
/// the cache key (a layer with a path missing from `infos` is never
/// cached), the sizes the order of work and the sizes `progress` is told.
/// Equal layers are built once (and told once). `check` is given each
/// distinct layer (by the input index of its first copy) and its ELF files
/// as soon as it is built or found in the cache; a refusal fails that layer
/// ([`LayerError::Arch`]). `on_done` is called from the layer threads as
/// layers finish and pass, once per entry of `layers`. If layers fail, the
/// error is the one of the first failing layer in input order; layers after
/// it that have not started yet are not built.
// The layers, where to read and write them, and three callbacks (check,
// done, progress): grouping them would only rename the parameters.
#[allow(clippy::too_many_arguments)]
pub fn build_layers(
    layers: &[Vec<StorePath>],
    infos: &BTreeMap<StorePath, PathInfo>,
    opts: &LayerOptions,
    blobs_dir: &Path,
    jobs: usize,
    check: &ArchCheckFn<'_>,
    on_done: &(dyn Fn(&BuiltLayer) + Sync),
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<LayerOutcome>, LayerError> {
    opts.compression.check()?;

    // Distinct layers, numbered in order of first appearance, so that their
    // order is input order.
    let mut distinct: Vec<Vec<StorePath>> = Vec::new();
    let mut copies: Vec<usize> = Vec::new();
    let mut number: BTreeMap<Vec<StorePath>, usize> = BTreeMap::new();
    let mut slots = Vec::with_capacity(layers.len());
    for layer in layers {
        let mut key = layer.clone();
        key.sort();
        key.dedup();
        let k = *number.entry(key.clone()).or_insert_with(|| {
            distinct.push(key);
            copies.push(0);
            distinct.len() - 1
        });
        copies[k] += 1;
        slots.push(k);
    }

    let workers = Workers::new(jobs);
    let cache = opts.cache.as_ref();
    let keys: Vec<Option<Digest>> = match cache {
        Some(_) => {
            let engine = opts.compression.engine();
            let fingerprint = fingerprint(opts, &workers)?;
            distinct
                .iter()
                .map(|paths| cache::key(paths, infos, &engine, &fingerprint))
                .collect()
        }
        None => vec![None; distinct.len()],
    };
    let sizes: Vec<u64> = distinct
        .iter()
        .map(|paths| {
            paths
                .iter()
                .map(|p| match infos.get(p) {
                    Some(info) => info.nar_size,
                    None => estimate_size(std::slice::from_ref(p), &opts.store_root),
                })
                .sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&k| (std::cmp::Reverse(sizes[k]), k));

    let build_one = |k: usize| -> Result<LayerOutcome, LayerError> {
        let paths = &distinct[k];
        let key = cache.zip(keys[k].as_ref());
        let outcome = reuse_or_build(key, paths, opts, blobs_dir, sizes[k], progress, |read| {
            write_layer(paths, opts, blobs_dir, &workers, read)
        })?;
        let first = slots.iter().position(|&s| s == k).unwrap_or(k);
        check(first, &outcome.layer.elf).map_err(|m| LayerError::Arch(Box::new(m)))?;
        Ok(outcome)
    };

    let results: Vec<Mutex<Option<Result<LayerOutcome, LayerError>>>> =
        distinct.iter().map(|_| Mutex::new(None)).collect();
    // Each layer thread takes the next layer in `order` until none is left.
    let next = AtomicUsize::new(0);
    let first_failed = AtomicUsize::new(usize::MAX);
    let run = || {
        while let Some(&k) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            if k > first_failed.load(Ordering::Relaxed) {
                continue;
            }
            let result = build_one(k);
            match &result {
                Ok(outcome) => (0..copies[k]).for_each(|_| on_done(&outcome.layer)),
                Err(_) => {
                    first_failed.fetch_min(k, Ordering::Relaxed);
                }
            }
            if let Ok(mut slot) = results[k].lock() {
                *slot = Some(result);
            }
        }
    };
    // gzip layer threads mostly wait for the pool: twice as many keep it fed
    // while some of them tar. zstd and none work on their layer thread.
    let per_job = match opts.compression {
        Compression::Gzip { .. } => 2,
        _ => 1,
    };
    let threads = (per_job * workers.jobs()).min(distinct.len());
    std::thread::scope(|scope| {
        let mut started = 0;
        let mut spawn_error = None;
        for i in 0..threads {
            match std::thread::Builder::new()
                .name(format!("nixoci-layer-{i}"))
                .spawn_scoped(scope, run)
            {
                Ok(_) => started += 1,
                Err(e) => spawn_error = Some(e),
            }
        }
        match (started, spawn_error) {
            (0, Some(e)) => Err(LayerError::Threads(e)),
            _ => Ok(()),
        }
    })?;

    // Every layer before the first failure was built; skipped ones come
    // after it, so the first error in order is the one to return.
    let mut built = Vec::with_capacity(distinct.len());
    for (k, result) in results.into_iter().enumerate() {
        let result = result
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(result) = result {
            built.push(result.map_err(|source| LayerError::InLayer {
                index: slots.iter().position(|&s| s == k).unwrap_or(k),
                source: Box::new(source),
            })?);
        }
    }
    Ok(slots
        .iter()
        .filter_map(|&k| built.get(k).cloned())
        .collect())
}

/// A rough size of a layer's tar, from metadata alone, to order the work
/// when the closure does not say. Anything unreadable counts as nothing:
/// the build reports it.
fn estimate_size(paths: &[StorePath], store_root: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending: Vec<PathBuf> = paths
        .iter()
        .map(|p| store_root.join(p.as_str().trim_start_matches('/')))
        .collect();
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        total = total.saturating_add(512);
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::AtomicUsize;

    use flate2::read::MultiGzDecoder;

    use super::tar::tests::{Fixture, H1};
    use super::*;

    fn options(fixture: &Fixture) -> LayerOptions {
        LayerOptions {
            store_root: fixture.root.path().to_owned(),
            compression: Compression::default(),
            cache: None,
            perms: Perms::default(),
        }
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn build_layer_hashes_tar_and_blob() {
        let fixture = Fixture::new(false);
        let blobs = tempfile::tempdir().unwrap();
        let built = build_layer(&fixture.paths, &options(&fixture), blobs.path()).unwrap();
        let tar = fixture.tar();
        assert_eq!(built.diff_id, Digest::of(&tar));
        assert_eq!(built.store_paths, fixture.paths);
        assert_eq!(built.media_type, MEDIA_TYPE_TAR_GZIP);

        let blob = fs::read(blobs.path().join(built.digest.hex())).unwrap();
        assert_eq!(built.digest, Digest::of(&blob));
        assert_eq!(built.size, blob.len() as u64);
        assert_eq!(dir_names(blobs.path()), vec![built.digest.hex().to_owned()]);

        let mut unpacked = Vec::new();
        MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, tar);

        assert_eq!(&blob[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(blob[3], 0, "no FNAME or other flags");
        assert_eq!(&blob[4..8], &[0, 0, 0, 0], "mtime");
        assert_eq!(blob[9], GZIP_OS_UNKNOWN);

        // Again: same layer, the existing blob kept, no temp file left.
        let again = build_layer(&fixture.paths, &options(&fixture), blobs.path()).unwrap();
        assert_eq!(again, built);
        assert_eq!(dir_names(blobs.path()), vec![built.digest.hex().to_owned()]);
    }

    #[test]
    fn build_layer_is_reproducible() {
        let (a, b) = (Fixture::new(false), Fixture::new(true));
        let blobs = tempfile::tempdir().unwrap();
        let other_blobs = tempfile::tempdir().unwrap();
        let built_a = build_layer(&a.paths, &options(&a), blobs.path()).unwrap();
        let built_b = build_layer(&b.paths, &options(&b), other_blobs.path()).unwrap();
        assert_eq!(built_a, built_b);
    }

    #[test]
    fn failed_build_leaves_no_temp_file() {
        let root = tempfile::tempdir().unwrap();
        let blobs = tempfile::tempdir().unwrap();
        let opts = LayerOptions {
            store_root: root.path().to_owned(),
            compression: Compression::default(),
            cache: None,
            perms: Perms::default(),
        };
        let gone = StorePath::from_absolute(&format!("/nix/store/{H1}-gone")).unwrap();
        let err = build_layer(&[gone], &opts, blobs.path()).unwrap_err();
        assert!(matches!(err, LayerError::Read { .. }), "{err:?}");
        assert!(dir_names(blobs.path()).is_empty());
    }

    #[test]
    fn missing_blobs_dir_is_a_write_error() {
        let fixture = Fixture::new(false);
        let blobs = fixture.root.path().join("no/such/dir");
        let err = build_layer(&fixture.paths, &options(&fixture), &blobs).unwrap_err();
        match err {
            LayerError::Write { path, .. } => assert_eq!(path, blobs),
            other => panic!("expected Write, got {other:?}"),
        }
    }

    #[test]
    fn gzip_level_is_checked() {
        let fixture = Fixture::new(false);
        let blobs = tempfile::tempdir().unwrap();
        let opts = LayerOptions {
            compression: Compression::Gzip { level: 13 },
            ..options(&fixture)
        };
        let err = build_layer(&fixture.paths, &opts, blobs.path()).unwrap_err();
        assert_eq!(err.to_string(), "gzip level 13 is out of range (0 to 12)");
        let err = build_layers(
            std::slice::from_ref(&fixture.paths),
            &BTreeMap::new(),
            &opts,
            blobs.path(),
            1,
            &|_, _| Ok(()),
            &|_| {},
            &|_| {},
        )
        .unwrap_err();
        assert!(matches!(
            err,
            LayerError::Level {
                compression: "gzip",
                level: 13
            }
        ));
    }

    #[test]
    fn build_layers_same_for_any_thread_count() {
        let fixture = Fixture::new(false);
        let p = &fixture.paths;
        // Different sizes, a duplicate, and one layer given unsorted.
        let layers = vec![
            vec![p[2].clone()],
            vec![p[0].clone(), p[1].clone()],
            vec![p[1].clone()],
            vec![p[2].clone()],
            vec![p[1].clone(), p[0].clone()],
        ];
        let mut runs = Vec::new();
        for jobs in [1, 3] {
            let blobs = tempfile::tempdir().unwrap();
            let done = AtomicUsize::new(0);
            let built: Vec<BuiltLayer> = build_layers(
                &layers,
                &BTreeMap::new(),
                &options(&fixture),
                blobs.path(),
                jobs,
                &|_, _| Ok(()),
                &|_| {
                    done.fetch_add(1, Ordering::Relaxed);
                },
                &|_| {},
            )
            .unwrap()
            .into_iter()
            .map(|o| {
                assert_eq!(o.cache, CacheStatus::Miss);
                o.layer
            })
            .collect();
            assert_eq!(done.load(Ordering::Relaxed), layers.len());
            assert_eq!(built.len(), layers.len());
            for (layer, b) in layers.iter().zip(&built) {
                let mut sorted = layer.clone();
                sorted.sort();
                assert_eq!(b.store_paths, sorted);
                assert_eq!(
                    b,
                    &build_layer(layer, &options(&fixture), blobs.path()).unwrap()
                );
            }
            assert_eq!(built[0], built[3]);
            assert_eq!(built[1], built[4]);
            assert_eq!(dir_names(blobs.path()).len(), 3);
            runs.push(built);
        }
        assert_eq!(runs[0], runs[1]);
    }

    #[test]
    fn build_layers_returns_first_failure_in_input_order() {
        let fixture = Fixture::new(false);
        let gone =
            |name: &str| StorePath::from_absolute(&format!("/nix/store/{H1}-{name}")).unwrap();
        let layers = vec![
            fixture.paths.clone(),
            vec![gone("first")],
            vec![fixture.paths[1].clone()],
            vec![gone("second")],
        ];
        for jobs in [1, 3] {
            let blobs = tempfile::tempdir().unwrap();
            let err = build_layers(
                &layers,
                &BTreeMap::new(),
                &options(&fixture),
                blobs.path(),
                jobs,
                &|_, _| Ok(()),
                &|_| {},
                &|_| {},
            )
            .unwrap_err();
            let LayerError::InLayer { index, source } = err else {
                panic!("expected InLayer, got {err:?}");
            };
            assert_eq!(index, 1, "the first failing layer in input order");
            match *source {
                LayerError::Read { path, .. } => {
                    assert!(path.ends_with(gone("first").base_name()), "{path:?}");
                }
                other => panic!("expected Read, got {other:?}"),
            }
            assert!(dir_names(blobs.path()).iter().all(|n| !n.starts_with('.')));
        }
    }

    #[test]
    fn layers_tell_their_sizes_read_or_skipped() {
        let fixture = Fixture::new(false);
        let p = &fixture.paths;
        // hello's tree holds less than 100,000 bytes; the builder's 11
        // bytes are more than the 5 its size says.
        let infos: BTreeMap<StorePath, PathInfo> = p
            .iter()
            .zip([100_000, 5, 777])
            .map(|(path, nar_size)| {
                let info = PathInfo {
                    path: path.clone(),
                    nar_hash: format!("sha256-{nar_size}"),
                    nar_size,
                    references: Default::default(),
                };
                (path.clone(), info)
            })
            .collect();
        let layers: Vec<Vec<StorePath>> =
            [0, 1, 2, 0].iter().map(|&i| vec![p[i].clone()]).collect();
        let tmp = tempfile::tempdir().unwrap();
        let opts = LayerOptions {
            cache: Some(Cache::open(&tmp.path().join("cache")).unwrap()),
            ..options(&fixture)
        };
        let fs = RootFs {
            entries: [
                ("/etc", crate::rootfs::Kind::Directory),
                (
                    "/etc/passwd",
                    crate::rootfs::Kind::File(b"root:x:0:0::/:/bin/sh\n".to_vec()),
                ),
                (
                    "/bin/hello",
                    crate::rootfs::Kind::StoreFile {
                        source: format!("/nix/store/{H1}-hello-2.12/bin/hello"),
                        size: 21,
                        executable: true,
                        sha256: String::new(),
                    },
                ),
            ]
            .into_iter()
            .map(|(path, kind)| {
                let entry = crate::rootfs::Entry {
                    kind,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                };
                (path.to_owned(), entry)
            })
            .collect(),
        };
        assert_eq!(root_layer_size(&fs), 22 + 21);
        // Everything told, sorted: what is read, then what is skipped.
        let told = |blobs: &Path| {
            let told = Mutex::new(Vec::new());
            let tell = |p| told.lock().unwrap().push(p);
            build_layers(
                &layers,
                &infos,
                &opts,
                blobs,
                2,
                &|_, _| Ok(()),
                &|_| {},
                &tell,
            )
            .unwrap();
            build_root_layer(&fs, &opts, blobs, &tell).unwrap();
            let told = told.into_inner().unwrap();
            let sum = |read: bool| -> u64 {
                told.iter()
                    .map(|p| match (p, read) {
                        (Progress::Read(n), true) | (Progress::Skipped(n), false) => *n,
                        _ => 0,
                    })
                    .sum()
            };
            (sum(true), sum(false))
        };
        // Built: each distinct layer its size once, or what it read when
        // that is more, and the root layer its contents.
        let first = tempfile::tempdir().unwrap();
        assert_eq!(told(first.path()), (100_000 + 11 + 777 + 43, 0));
        // From the cache: skipped, at their sizes.
        let second = tempfile::tempdir().unwrap();
        assert_eq!(told(second.path()), (0, 100_000 + 5 + 777 + 43));
    }

    #[test]
    fn estimate_orders_by_size() {
        let fixture = Fixture::new(false);
        let root = fixture.root.path();
        let tree = estimate_size(&fixture.paths[..1], root);
        let file = estimate_size(&fixture.paths[1..2], root);
        assert!(tree > file, "{tree} > {file}");
        assert_eq!(file, 512 + 11);
    }
}
