//! The layer cache: a persistent map from what decides a layer's bytes to
//! the layer's blob, so that a layer is never built twice.
//!
//! Store paths never change, so a layer is fully determined by its sorted
//! store paths with their NAR hashes, the tar format version and the
//! compressor (name, level, library version, and a fingerprint of what it
//! makes of a fixed sample). The key is the SHA-256 of a versioned text of
//! exactly those ([`key`]). On disk, under the cache directory:
//!
//! ```text
//! layers-v1/index/<key hex>          {"version":1,"key":…,"diffId":…,"digest":…,"size":…,"mediaType":…,"elf":[…],"check":…,"seen":[…]}
//! layers-v1/blobs/sha256/<hex>       the blob, often a hard link to a layout's blob
//! plans-v1/<key hex>                 {"version":1,"key":…,"plan":…,"check":…}
//! ```
//!
//! The plans are layer plans by the key of their inputs (closures, budget,
//! layering options and the planner's source, `pipeline`), so that a
//! rebuild of the same closures does not plan again.
//!
//! An entry also keeps the layer's ELF files (`elf`: the first program or
//! shared library of each architecture, `crate::elf`), so that the
//! architecture check of a cached layer reads nothing; an entry without
//! them (written before the check existed) is rebuilt.
//!
//! Nothing is trusted blindly: an entry carries a check digest over its own
//! fields, and a blob is reused only after its size and SHA-256 are checked;
//! a corrupt or foreign entry or blob is reported, removed and rebuilt. The
//! SHA-256 is skipped only for a file whose state (device, inode, size,
//! modification and change time) the entry recorded when this tool wrote,
//! hashed or linked it ([`record`], `"seen"` in the entry): any write to
//! the file since moves its change time, and it is hashed again.
//! Every file is written to a temporary name and renamed, so concurrent runs
//! never see a partial file. Using an entry or a plan sets its file's
//! modification time, so [`Cache::prune`] (`nixoci cache prune`) can remove
//! what was not used for a while, or the least recently used beyond a size.
//! Deleting the directory (when no build runs) is always safe too.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::BuiltLayer;
use crate::closure::PathInfo;
use crate::elf::ElfFile;
use crate::oci::temp;
use crate::oci::Digest;
use crate::plan::LayerPlan;
use crate::store_path::StorePath;

mod record;

pub use self::record::FileState;

/// Version of the cache's layout on disk and of its entries.
pub const CACHE_VERSION: u32 = 1;

/// The first line of every key's text; bump [`CACHE_VERSION`] to change it.
const KEY_HEADER: &str = "nixoci layer cache key v1";

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path} is not writable")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where a layer's blob came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// Built now: tarred, compressed and written.
    Miss,
    /// Taken from the cache's blob store (hard-linked or copied).
    Hit,
    /// Already in the output layout, checked and kept.
    Layout,
}

/// The default cache directory: `$XDG_CACHE_HOME/nixoci`, else
/// `$HOME/.cache/nixoci`. Relative or empty values are ignored, as the XDG
/// spec says. Takes the variables' values to stay pure.
pub fn default_dir(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_cache_home)
        .map(|d| d.join("nixoci"))
        .or_else(|| absolute(home).map(|h| h.join(".cache/nixoci")))
}

/// The source of the code that decides a layer's bytes (the tar writer, the
/// compressors and the layer writer) and the ELF files its entry records
/// (`crate::elf`), as [`code_only`] keeps it, hashed: any change to that
/// code, even one that forgot to bump [`super::tar::FORMAT_VERSION`], gets
/// new keys; editing a test or a comment does not (docs/architecture.md,
/// "What invalidates the caches").
pub fn code_fingerprint() -> Digest {
    source_fingerprint(&[
        ("tar.rs", include_str!("tar.rs")),
        ("compress.rs", include_str!("compress.rs")),
        ("mod.rs", include_str!("mod.rs")),
        ("elf.rs", include_str!("../elf.rs")),
    ])
}

/// SHA-256 over the names and [`code_only`] text of source files.
pub fn source_fingerprint(files: &[(&str, &str)]) -> Digest {
    let mut h = Sha256::new();
    for (name, source) in files {
        let code = code_only(source);
        for part in [name.as_bytes(), code.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    Digest::from_sha256(h.finalize().into())
}

/// `source` without what never reaches the binary: a line `#[cfg(test)]`
/// at column 0 and the item after it (through its line ending in `;`, or
/// through the next line that is only `}`, which rustfmt guarantees for a
/// block item), lines that are only a comment, and blank lines; trailing
/// whitespace is trimmed.
pub fn code_only(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() == "#[cfg(test)]" {
            for item in lines.by_ref() {
                let item = item.trim_end();
                if item == "}" || (item.ends_with(';') && !item.starts_with(char::is_whitespace)) {
                    break;
                }
            }
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The cache key of a layer: SHA-256 over a versioned text of its sorted
/// store paths with their NAR hashes, the tar format version, the
/// compressor's description ([`super::Compression::engine`]) and
/// `fingerprint` (of the compressor's output and of the code,
/// [`super::compress::fingerprint`], [`code_fingerprint`]). `None` when a
/// path has no NAR hash: such a layer is never cached.
pub fn key(
    paths: &[StorePath],
    infos: &BTreeMap<StorePath, PathInfo>,
    engine: &str,
    fingerprint: &Digest,
) -> Option<Digest> {
    let mut sorted: Vec<&StorePath> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut text = format!(
        "{KEY_HEADER}\ntar {}\ncompression {engine}\nfingerprint {fingerprint}\n",
        super::tar::FORMAT_VERSION
    );
    for p in sorted {
        let hash = &infos.get(p)?.nar_hash;
        if hash.is_empty() || hash.contains(char::is_whitespace) {
            return None;
        }
        text.push_str(&format!("path {p} {hash}\n"));
    }
    Some(Digest::of(text.as_bytes()))
}

/// The cache key of a root layer: as [`key`], over the tree's entries (a
/// store file by its contents' SHA-256, as the tree records it) instead of
/// store paths. `None` when the tree cannot be written down.
pub fn root_key(fs: &crate::rootfs::RootFs, engine: &str, fingerprint: &Digest) -> Option<Digest> {
    let mut text = format!(
        "{KEY_HEADER}
root layer
tar {}
compression {engine}
fingerprint {fingerprint}
",
        super::tar::FORMAT_VERSION
    );
    text.push_str(&serde_json::to_string(fs).ok()?);
    Some(Digest::of(text.as_bytes()))
}

/// An index entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    version: u32,
    key: Digest,
    diff_id: Digest,
    digest: Digest,
    size: u64,
    media_type: String,
    /// The layer's [`BuiltLayer::elf`]; `None` in an entry of a nixoci
    /// before the architecture check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    elf: Option<Vec<ElfFile>>,
    /// SHA-256 over the fields above: a damaged entry never passes.
    check: Digest,
    /// The states of the files known to hold the blob (the record,
    /// [`record`]). Outside the check: a state that does not match a file
    /// only means that file is hashed, and a nixoci before the record
    /// reads the entry as it always did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<FileState>,
}

impl Entry {
    fn new(key: &Digest, layer: &BuiltLayer) -> Entry {
        let mut e = Entry {
            version: CACHE_VERSION,
            key: key.clone(),
            diff_id: layer.diff_id.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            media_type: layer.media_type.clone(),
            elf: Some(layer.elf.clone()),
            check: Digest::of(b""),
            seen: Vec::new(),
        };
        e.check = e.expected_check();
        e
    }

    fn expected_check(&self) -> Digest {
        let mut text = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n",
            self.version, self.key, self.diff_id, self.digest, self.size, self.media_type
        );
        // Absent: the text of an entry before the field existed.
        if let Some(elf) = &self.elf {
            text.push_str(&format!(
                "elf {}\n",
                serde_json::to_string(elf).unwrap_or_default()
            ));
        }
        Digest::of(text.as_bytes())
    }
}

/// A stored layer plan, as on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanEntry {
    version: u32,
    key: Digest,
    plan: LayerPlan,
    /// SHA-256 of the key and the plan's JSON: a damaged entry never passes.
    check: Digest,
}

impl PlanEntry {
    fn check_of(key: &Digest, plan: &LayerPlan) -> Result<Digest, serde_json::Error> {
        let mut text = format!("{CACHE_VERSION}\n{key}\n").into_bytes();
        text.extend(serde_json::to_vec(plan)?);
        Ok(Digest::of(&text))
    }
}

/// What [`Cache::reuse`] found.
#[derive(Debug)]
pub enum Reuse {
    /// The blob is in the output layout now.
    Found(BuiltLayer, CacheStatus),
    /// Build it; `problem` says what was wrong with the cache, if anything.
    Build { problem: Option<String> },
}

/// An open cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    index: PathBuf,
    blobs: PathBuf,
    plans: PathBuf,
    /// Set by the first layer that could not be stored (a full disk): the
    /// build goes on without storing, and says so once.
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cache {
    /// Opens (creating) the cache under `dir` and checks that it can be
    /// written.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        let root = dir.join(format!("layers-v{CACHE_VERSION}"));
        let cache = Cache {
            dir: dir.to_owned(),
            index: root.join("index"),
            blobs: root.join("blobs/sha256"),
            plans: dir.join(format!("plans-v{CACHE_VERSION}")),
            full: Default::default(),
        };
        let not_writable = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::NotWritable { path, source }
        };
        for d in [&cache.index, &cache.blobs, &cache.plans] {
            fs::create_dir_all(d).map_err(not_writable(dir))?;
        }
        // A directory can exist and still refuse files (read-only mounts,
        // another user's cache).
        tempfile::Builder::new()
            .prefix(".probe-")
            .tempfile_in(&cache.index)
            .map_err(not_writable(dir))?;
        Ok(cache)
    }

    /// The directory given to [`Cache::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, key: &Digest) -> PathBuf {
        self.index.join(key.hex())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Reads and checks the entry of `key`: `Ok(None)` when there is none,
    /// `Err` saying what is wrong with a damaged one.
    fn entry(&self, key: &Digest) -> Result<Option<Entry>, String> {
        let path = self.entry_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it ({e})")),
        };
        let entry: Entry =
            serde_json::from_slice(&bytes).map_err(|e| format!("it is not an entry ({e})"))?;
        if entry.version != CACHE_VERSION {
            return Err(format!("it has version {}", entry.version));
        }
        if entry.key != *key {
            return Err(format!("it is the entry of {}", entry.key));
        }
        if entry.check != entry.expected_check() {
            return Err("its check digest does not match its fields".to_owned());
        }
        Ok(Some(entry))
    }

    /// Looks `key` up and, if its blob is good, puts it into `blobs_dir`
    /// (the output layout's `blobs/sha256`). A damaged entry or blob is
    /// removed and named in the returned problem.
    pub fn reuse(
        &self,
        key: &Digest,
        paths: &[StorePath],
        media_type: &str,
        blobs_dir: &Path,
    ) -> Reuse {
        let entry = match self.entry(key) {
            Ok(Some(e)) => e,
            Ok(None) => return Reuse::Build { problem: None },
            Err(why) => {
                let _ = fs::remove_file(self.entry_path(key));
                return Reuse::Build {
                    problem: Some(format!(
                        "cache entry {} is corrupt: {why}; rebuilding",
                        key.hex()
                    )),
                };
            }
        };
        if entry.media_type != media_type {
            // Keys include the compressor, so this is a foreign entry.
            let _ = fs::remove_file(self.entry_path(key));
            return Reuse::Build {
                problem: Some(format!(
                    "cache entry {} has media type {}, expected {media_type}; rebuilding",
                    key.hex(),
                    entry.media_type
                )),
            };
        }
        // An entry of a nixoci before the architecture check: build the
        // layer again to know its ELF files (and store it with them).
        let Some(elf) = entry.elf.clone() else {
            return Reuse::Build { problem: None };
        };
        let mut store_paths = paths.to_vec();
        store_paths.sort();
        store_paths.dedup();
        let layer = BuiltLayer {
            store_paths,
            diff_id: entry.diff_id.clone(),
            digest: entry.digest.clone(),
            size: entry.size,
            media_type: entry.media_type.clone(),
            elf,
        };

        let in_layout = blobs_dir.join(entry.digest.hex());
        let cached = self.blob_path(&entry.digest);
        let mut problems = Vec::new();
        match record::check(&in_layout, entry.size, &entry.digest, &entry.seen) {
            Ok(record::Checked::Good { state }) => {
                let mut states: Vec<FileState> = state.into_iter().collect();
                // Keep the cache's copy too; a failure here costs nothing now.
                if !cached.exists() && place(&in_layout, &cached).is_ok() {
                    states = state
                        .map(|s| record::after_link(&s, &[&in_layout, &cached]))
                        .unwrap_or_default();
                }
                self.remember(key, &entry, &states);
                return Reuse::Found(layer, CacheStatus::Layout);
            }
            Ok(record::Checked::Missing) => {}
            Err(why) => problems.push(format!("the output's blob {why}")),
        }
        match record::check(&cached, entry.size, &entry.digest, &entry.seen) {
            Ok(record::Checked::Good { state }) => match place(&cached, &in_layout) {
                Ok(()) => {
                    let states = state
                        .map(|s| record::after_link(&s, &[&in_layout, &cached]))
                        .unwrap_or_default();
                    self.remember(key, &entry, &states);
                    return Reuse::Found(layer, CacheStatus::Hit);
                }
                Err(e) => problems.push(format!(
                    "cannot copy cached blob {} into the output ({e})",
                    entry.digest
                )),
            },
            Ok(record::Checked::Missing) => {
                // The entry outlived its blob: rebuild quietly.
                let _ = fs::remove_file(self.entry_path(key));
            }
            Err(why) => {
                let _ = fs::remove_file(&cached);
                let _ = fs::remove_file(self.entry_path(key));
                problems.push(format!("cache blob {} {why}", entry.digest));
            }
        }
        Reuse::Build {
            problem: (!problems.is_empty()).then(|| format!("{}; rebuilding", problems.join("; "))),
        }
    }

    /// Records a freshly built layer whose blob is in `blobs_dir`: the blob
    /// goes into the cache's store (a hard link when the file system
    /// allows, else a copy), then the entry, each atomically.
    ///
    /// After the first failure, layers are no longer stored (`Ok(false)`):
    /// a full disk is reported once, not once per layer.
    pub fn store(&self, key: &Digest, layer: &BuiltLayer, blobs_dir: &Path) -> io::Result<bool> {
        use std::sync::atomic::Ordering;
        if self.full.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.store_now(key, layer, blobs_dir) {
            Ok(()) => Ok(true),
            // Only the first failure is an error to report.
            Err(e) if !self.full.swap(true, Ordering::Relaxed) => Err(e),
            Err(_) => Ok(false),
        }
    }

    fn store_now(&self, key: &Digest, layer: &BuiltLayer, blobs_dir: &Path) -> io::Result<()> {
        let built = blobs_dir.join(layer.digest.hex());
        let cached = self.blob_path(&layer.digest);
        let good = fs::metadata(&cached).is_ok_and(|m| m.is_file() && m.len() == layer.size);
        if !good {
            place(&built, &cached)?;
        }
        let mut entry = Entry::new(key, layer);
        // The blob was hashed as it was written; its state now, after the
        // link into the cache, is the one to record.
        entry.seen = FileState::read(&built)
            .filter(|s| s.size == layer.size)
            .into_iter()
            .collect();
        write_json(&self.entry_path(key), ".tmp-entry-", &entry)
    }

    /// Marks the entry of `key` used, with `states` (files just found to
    /// hold its blob) added to its record: rewritten when the record
    /// changes, else only touched.
    fn remember(&self, key: &Digest, entry: &Entry, states: &[FileState]) {
        let seen = record::merge(states, &entry.seen);
        if seen == entry.seen {
            touch(&self.entry_path(key));
            return;
        }
        let updated = Entry {
            seen,
            ..entry.clone()
        };
        // A failure only leaves the old record: the blob is hashed next time.
        if write_json(&self.entry_path(key), ".tmp-entry-", &updated).is_err() {
            touch(&self.entry_path(key));
        }
    }
}

impl Cache {
    /// The stored plan of `key`, if there is one and it is intact; a
    /// damaged entry is removed (the caller plans again and stores anew).
    pub fn plan(&self, key: &Digest) -> Option<LayerPlan> {
        let path = self.plan_path(key);
        let entry = self.plan_entry(key);
        match &entry {
            Some(_) => touch(&path),
            None => {
                let _ = fs::remove_file(&path);
            }
        }
        entry.map(|e| e.plan)
    }

    /// Stores `plan` as the plan of `key`, atomically.
    pub fn store_plan(&self, key: &Digest, plan: &LayerPlan) -> io::Result<()> {
        let entry = PlanEntry {
            version: CACHE_VERSION,
            key: key.clone(),
            plan: plan.clone(),
            check: PlanEntry::check_of(key, plan).map_err(io::Error::other)?,
        };
        write_json(&self.plan_path(key), ".tmp-plan-", &entry)
    }

    fn plan_path(&self, key: &Digest) -> PathBuf {
        self.plans.join(key.hex())
    }
}

/// Writes `value` as one line of JSON to `path`, through a temporary file
/// (named with `prefix`) beside it and a rename: readers never see a
/// partial file.
fn write_json<T: Serialize>(path: &Path, prefix: &str, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a cache file has no directory"))?;
    let mut temp = temp::create(tempfile::Builder::new().prefix(prefix), dir)?;
    temp.as_file_mut().write_all(&bytes)?;
    temp.persist(path)?;
    Ok(())
}

/// Marks a cache file as used now (its modification time), for
/// [`Cache::prune`]; a failure only makes it look older.
fn touch(path: &Path) {
    // When a file was last used: bookkeeping for `cache prune`, not output.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    let _ = File::open(path).and_then(|f| f.set_modified(now));
}

/// What [`Cache::prune`] removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prune {
    /// Layers and plans not used for this long.
    pub unused_for: Option<Duration>,
    /// Then the least recently used, until the blobs and plans kept take at
    /// most this many bytes.
    pub max_size: Option<u64>,
    /// Only say what would be removed.
    pub dry_run: bool,
}

/// Version of the JSON form of [`PruneReport`].
pub const PRUNE_REPORT_VERSION: u32 = 1;

/// What [`Cache::prune`] did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub version: u32,
    pub dry_run: bool,
    pub removed_layers: usize,
    pub removed_plans: usize,
    /// Bytes of the blobs and plans removed (a blob counted once).
    pub removed_bytes: u64,
    /// Damaged entries and plans, blobs no entry names and temporary files
    /// of interrupted runs, removed whatever the policy.
    pub removed_other: usize,
    pub kept_layers: usize,
    pub kept_plans: usize,
    pub kept_bytes: u64,
}

/// A layer entry or a plan, as [`Cache::prune`] weighs it.
struct Used {
    path: PathBuf,
    used: SystemTime,
    /// The layer's blob; `None` for a plan.
    blob: Option<(Digest, u64)>,
    /// The plan file's size.
    bytes: u64,
}

/// Blobs and temporary files younger than this are left alone: a build
/// running now may be about to name them.
const GRACE: Duration = Duration::from_secs(3600);

impl Cache {
    /// Removes layers and plans by `policy`, as of `now`: first those not
    /// used for `unused_for`, then the least recently used until the rest
    /// fits `max_size`; a layer's blob goes with the last entry that names
    /// it. Damaged entries and plans, blobs that no entry names and
    /// temporary files left by interrupted runs go too (blobs and temporary
    /// files only once they are an hour old, since a build running now may
    /// be writing them). Safe while builds run: a build that loses an entry
    /// or a blob under it rebuilds the layer.
    pub fn prune(&self, policy: &Prune, now: SystemTime) -> io::Result<PruneReport> {
        let mut report = PruneReport {
            version: PRUNE_REPORT_VERSION,
            dry_run: policy.dry_run,
            ..PruneReport::default()
        };
        let remove = |path: &Path| -> io::Result<()> {
            if policy.dry_run {
                return Ok(());
            }
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        let age = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default()
        };

        // Every entry and plan, with when it was last used.
        let mut items = Vec::new();
        for (dir, is_plan) in [(&self.index, false), (&self.plans, true)] {
            for file in list(dir)? {
                let meta = fs::symlink_metadata(&file)?;
                let name = file_name(&file);
                if name.starts_with('.') {
                    if age(&meta) > GRACE {
                        remove(&file)?;
                        report.removed_other += 1;
                    }
                    continue;
                }
                // `None` when damaged: a name that is no key, or an entry or
                // plan that does not pass its checks.
                let key = format!("sha256:{name}").parse::<Digest>().ok();
                let blob = match (key, is_plan) {
                    (Some(k), true) => self.plan_entry(&k).map(|_| None),
                    (Some(k), false) => self
                        .entry(&k)
                        .ok()
                        .flatten()
                        .map(|e| Some((e.digest, e.size))),
                    (None, _) => None,
                };
                let Some(blob) = blob else {
                    remove(&file)?;
                    report.removed_other += 1;
                    continue;
                };
                items.push(Used {
                    path: file,
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    blob,
                    bytes: meta.len(),
                });
            }
        }
        // Most recently used first; ties by name, so the outcome does not
        // depend on the order the directory lists files in.
        items.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.path.cmp(&b.path)));

        let mut kept_blobs: BTreeMap<Digest, u64> = BTreeMap::new();
        let mut removed_blobs: BTreeMap<Digest, u64> = BTreeMap::new();
        let mut kept_bytes = 0u64;
        for item in items {
            let unused = policy
                .unused_for
                .is_some_and(|limit| now.duration_since(item.used).unwrap_or_default() > limit);
            let extra = match &item.blob {
                Some((digest, size)) if !kept_blobs.contains_key(digest) => *size,
                Some(_) => 0,
                None => item.bytes,
            };
            let too_big = policy
                .max_size
                .is_some_and(|max| kept_bytes.saturating_add(extra) > max);
            if unused || too_big {
                remove(&item.path)?;
                match item.blob {
                    Some((digest, size)) => {
                        report.removed_layers += 1;
                        removed_blobs.insert(digest, size);
                    }
                    None => {
                        report.removed_plans += 1;
                        report.removed_bytes += item.bytes;
                    }
                }
                continue;
            }
            kept_bytes += extra;
            match item.blob {
                Some((digest, size)) => {
                    report.kept_layers += 1;
                    kept_blobs.insert(digest, size);
                }
                None => report.kept_plans += 1,
            }
        }
        report.kept_bytes = kept_bytes;

        // Blobs: those of removed entries, and those no entry names.
        for file in list(&self.blobs)? {
            let name = file_name(&file);
            let digest = format!("sha256:{name}").parse::<Digest>().ok();
            if digest.as_ref().is_some_and(|d| kept_blobs.contains_key(d)) {
                continue;
            }
            if let Some(size) = digest.as_ref().and_then(|d| removed_blobs.get(d)) {
                remove(&file)?;
                report.removed_bytes += size;
                continue;
            }
            let meta = fs::symlink_metadata(&file)?;
            if age(&meta) > GRACE {
                remove(&file)?;
                report.removed_other += 1;
            }
        }
        Ok(report)
    }

    /// The intact plan entry of `key`, without marking it used.
    fn plan_entry(&self, key: &Digest) -> Option<PlanEntry> {
        let bytes = fs::read(self.plan_path(key)).ok()?;
        serde_json::from_slice::<PlanEntry>(&bytes)
            .ok()
            .filter(|e| {
                e.version == CACHE_VERSION
                    && e.key == *key
                    && PlanEntry::check_of(key, &e.plan).is_ok_and(|c| c == e.check)
            })
    }
}

/// The files of `dir`, sorted; none when it does not exist.
fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                files.push(e?.path());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks that `path` is a regular file of `size` bytes hashing to
/// `digest`, with the one check of `oci`. `Ok(false)` when it does not
/// exist; the error says what is wrong.
pub fn check_blob(
    path: &Path,
    size: u64,
    digest: &Digest,
) -> Result<bool, crate::oci::files::FileCheckError> {
    let d = crate::oci::Descriptor::new(crate::oci::MediaType::default(), digest.clone(), size);
    crate::oci::files::check_file(path, &d)
}

/// Makes `to` a hard link to `from`, else a copy of it, atomically
/// replacing whatever `to` was.
fn place(from: &Path, to: &Path) -> io::Result<()> {
    // Where `to` does not exist yet (a fresh output), one link does it:
    // a link appears whole or not at all.
    if temp::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let dir = to
        .parent()
        .ok_or_else(|| io::Error::other("a blob path has no directory"))?;
    if let (Ok(a), Ok(b)) = (fs::metadata(from), fs::symlink_metadata(to)) {
        if a.dev() == b.dev() && a.ino() == b.ino() {
            return Ok(());
        }
    }
    let linked = temp::create_with(tempfile::Builder::new().prefix(".tmp-link-"), dir, |t| {
        fs::hard_link(from, t)
    });
    match linked {
        Ok(temp) => temp.persist(to).map(drop),
        Err(_) => {
            let mut temp = temp::create(tempfile::Builder::new().prefix(".tmp-copy-"), dir)?;
            io::copy(&mut File::open(from)?, temp.as_file_mut())?;
            temp.persist(to).map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_fingerprints_ignore_tests_and_comments() {
        let base = "//! A module.\nuse x;\n\n/// Doc.\nfn f() -> u8 {\n    1 // one\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {\n        assert!(true);\n    }\n}\n\nfn g() {}\n";
        let fp = |s: &str| source_fingerprint(&[("m.rs", s)]);
        let same = [
            base.replace("//! A module.", "//! Another text."),
            base.replace("/// Doc.", "/// Doc, longer.\n/// Two lines."),
            base.replace("assert!(true);", "assert!(1 + 1 == 2);"),
            base.replace("\n\n", "\n\n\n"),
        ];
        for s in &same {
            assert_eq!(fp(s), fp(base), "{s}");
        }
        let different = [
            base.replace("    1 // one", "    2 // one"),
            base.replace("fn g() {}", "fn g() { h() }"),
            base.replace("use x;", "use y;"),
        ];
        for s in &different {
            assert_ne!(fp(s), fp(base), "{s}");
        }
        assert_ne!(
            source_fingerprint(&[("a.rs", base)]),
            source_fingerprint(&[("b.rs", base)])
        );
        // `#[cfg(test)] mod tests;` ends at its own line.
        let file = "fn a() {}\n#[cfg(test)]\nmod tests;\nfn b() {}\n";
        assert_eq!(code_only(file), "fn a() {}\nfn b() {}\n");
        // The real files keep their code and lose their tests.
        let tar = code_only(include_str!("tar.rs"));
        assert!(tar.contains("FORMAT_VERSION"));
        assert!(!tar.contains("#[test]"));
        let compress = code_only(include_str!("compress.rs"));
        assert!(!compress.contains("#[test]") && compress.contains("fn "));
    }

    fn sp(name: &str) -> StorePath {
        StorePath::from_absolute(&format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
    }

    fn infos(paths: &[(&StorePath, &str)]) -> BTreeMap<StorePath, PathInfo> {
        paths
            .iter()
            .map(|(p, h)| {
                (
                    (*p).clone(),
                    PathInfo {
                        path: (*p).clone(),
                        nar_hash: (*h).to_owned(),
                        nar_size: 1,
                        references: Default::default(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn key_depends_on_everything_that_decides_the_bytes() {
        let (a, b) = (sp("a"), sp("b"));
        let fp = Digest::of(b"fp");
        let i = infos(&[(&a, "sha256-A"), (&b, "sha256-B")]);
        let k = key(&[a.clone(), b.clone()], &i, "gzip level 6", &fp).unwrap();
        // Order and duplicates do not matter.
        assert_eq!(
            key(&[b.clone(), a.clone(), b.clone()], &i, "gzip level 6", &fp),
            Some(k.clone())
        );
        // NAR hash, compressor, fingerprint and the path set do.
        let changed = infos(&[(&a, "sha256-A"), (&b, "sha256-C")]);
        assert_ne!(
            key(&[a.clone(), b.clone()], &changed, "gzip level 6", &fp),
            Some(k.clone())
        );
        assert_ne!(
            key(&[a.clone(), b.clone()], &i, "gzip level 7", &fp),
            Some(k.clone())
        );
        assert_ne!(
            key(
                &[a.clone(), b.clone()],
                &i,
                "gzip level 6",
                &Digest::of(b"x")
            ),
            Some(k.clone())
        );
        assert_ne!(
            key(std::slice::from_ref(&a), &i, "gzip level 6", &fp),
            Some(k)
        );
        // No NAR hash, no key.
        assert_eq!(key(&[sp("c")], &i, "gzip level 6", &fp), None);
    }

    #[test]
    fn default_dir_follows_xdg() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            default_dir(os("/x/cache"), os("/home/u")),
            Some(PathBuf::from("/x/cache/nixoci"))
        );
        assert_eq!(
            default_dir(os("relative"), os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/nixoci"))
        );
        assert_eq!(
            default_dir(None, os("/homeless-shelter")),
            Some(PathBuf::from("/homeless-shelter/.cache/nixoci"))
        );
        assert_eq!(default_dir(os(""), None), None);
    }

    fn layer_in(dir: &Path, bytes: &[u8]) -> BuiltLayer {
        let digest = Digest::of(bytes);
        fs::write(dir.join(digest.hex()), bytes).unwrap();
        BuiltLayer {
            store_paths: vec![sp("a")],
            diff_id: Digest::of(b"tar"),
            digest,
            size: bytes.len() as u64,
            media_type: super::super::MEDIA_TYPE_TAR_GZIP.to_owned(),
            // What the architecture check of a cached layer reads.
            elf: vec![crate::elf::ElfFile {
                path: format!("{}/bin/a", sp("a")),
                arch: crate::elf::Arch {
                    machine: 62,
                    bits: 64,
                    big_endian: false,
                    arm_cpu: None,
                },
                kind: crate::elf::Kind::Executable,
            }],
        }
    }

    #[test]
    fn an_entry_without_elf_files_is_built_again() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let out = tmp.path().join("o");
        fs::create_dir_all(&out).unwrap();
        let layer = layer_in(&out, b"blob bytes");
        let k = Digest::of(b"key");
        let mt = super::super::MEDIA_TYPE_TAR_GZIP;
        cache.store(&k, &layer, &out).unwrap();
        // As a nixoci before the architecture check wrote it: no `elf`,
        // and a check digest without it.
        let mut old = Entry::new(&k, &layer);
        old.elf = None;
        old.check = old.expected_check();
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("elf"), "{text}");
        fs::write(cache.entry_path(&k), text).unwrap();
        assert!(matches!(
            cache.reuse(&k, &[sp("a")], mt, &out),
            Reuse::Build { problem: None }
        ));
        // An entry whose ELF files were changed fails its check.
        let mut forged = Entry::new(&k, &layer);
        forged.elf = Some(Vec::new());
        fs::write(
            cache.entry_path(&k),
            serde_json::to_string(&forged).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            cache.reuse(&k, &[sp("a")], mt, &out),
            Reuse::Build { problem: Some(_) }
        ));
    }

    #[test]
    fn store_then_reuse_from_layout_and_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let (out1, out2) = (tmp.path().join("o1"), tmp.path().join("o2"));
        fs::create_dir_all(&out1).unwrap();
        fs::create_dir_all(&out2).unwrap();
        let layer = layer_in(&out1, b"blob bytes");
        let k = Digest::of(b"key");
        let mt = super::super::MEDIA_TYPE_TAR_GZIP;
        assert!(matches!(
            cache.reuse(&k, &[sp("a")], mt, &out1),
            Reuse::Build { problem: None }
        ));
        cache.store(&k, &layer, &out1).unwrap();

        match cache.reuse(&k, &[sp("a")], mt, &out1) {
            Reuse::Found(l, CacheStatus::Layout) => assert_eq!(l, layer),
            other => panic!("{other:?}"),
        }
        match cache.reuse(&k, &[sp("a")], mt, &out2) {
            Reuse::Found(l, CacheStatus::Hit) => assert_eq!(l, layer),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fs::read(out2.join(layer.digest.hex())).unwrap(),
            b"blob bytes"
        );
        // No temporary files are left anywhere.
        for d in [&out1, &out2, &cache.blobs, &cache.index] {
            for e in fs::read_dir(d).unwrap() {
                let name = e.unwrap().file_name();
                assert!(
                    !name.to_string_lossy().starts_with('.'),
                    "{name:?} in {d:?}"
                );
            }
        }
    }

    #[test]
    fn damaged_entries_and_blobs_are_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let out = tmp.path().join("o");
        let fresh = tmp.path().join("fresh");
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&fresh).unwrap();
        let layer = layer_in(&out, b"blob bytes");
        let k = Digest::of(b"key");
        let mt = super::super::MEDIA_TYPE_TAR_GZIP;

        // A damaged entry: garbage, or a field changed.
        for case in ["garbage", "edited"] {
            cache.store(&k, &layer, &out).unwrap();
            let text = fs::read_to_string(cache.entry_path(&k)).unwrap();
            let bad = match case {
                "garbage" => "not json".to_owned(),
                _ => text.replace(&layer.diff_id.hex()[..8], "00000000"),
            };
            assert_ne!(bad, text);
            fs::write(cache.entry_path(&k), bad).unwrap();
            match cache.reuse(&k, &[sp("a")], mt, &fresh) {
                Reuse::Build { problem: Some(p) } => assert!(p.contains("is corrupt"), "{p}"),
                other => panic!("{case}: {other:?}"),
            }
            assert!(!cache.entry_path(&k).exists());
        }

        // A damaged blob, in a fresh output.
        cache.store(&k, &layer, &out).unwrap();
        fs::remove_file(cache.blob_path(&layer.digest)).unwrap();
        fs::write(cache.blob_path(&layer.digest), b"blob bytez").unwrap();
        match cache.reuse(&k, &[sp("a")], mt, &fresh) {
            Reuse::Build { problem: Some(p) } => assert!(p.contains("hashes to"), "{p}"),
            other => panic!("{other:?}"),
        }
        assert!(!cache.blob_path(&layer.digest).exists());
        assert!(!fresh.join(layer.digest.hex()).exists());
    }

    #[test]
    fn the_record_skips_the_hash_until_the_blob_changes_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let out = tmp.path().join("o");
        fs::create_dir_all(&out).unwrap();
        let layer = layer_in(&out, b"blob bytes");
        let k = Digest::of(b"key");
        let mt = super::super::MEDIA_TYPE_TAR_GZIP;
        cache.store(&k, &layer, &out).unwrap();
        let blob = out.join(layer.digest.hex());
        // Stored with the state of the blob, linked into the cache.
        let entry = cache.entry(&k).unwrap().unwrap();
        assert_eq!(entry.seen, vec![FileState::read(&blob).unwrap()]);
        assert!(matches!(
            cache.reuse(&k, &[sp("a")], mt, &out),
            Reuse::Found(_, CacheStatus::Layout)
        ));

        // Damaged in place (one inode for the output and the cache), same
        // size, modification time put back: hashed, refused, rebuilt.
        let mtime = fs::metadata(&blob).unwrap().modified().unwrap();
        fs::write(&blob, b"blob bytez").unwrap();
        File::options()
            .write(true)
            .open(&blob)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        match cache.reuse(&k, &[sp("a")], mt, &out) {
            Reuse::Build { problem: Some(p) } => assert!(p.contains("hashes to"), "{p}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unwritable_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = Cache::open(&file.join("cache")).unwrap_err();
        assert!(err.to_string().starts_with("cache directory"), "{err}");
    }
}
