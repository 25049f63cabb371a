//! Layer compression: gzip, zstd or none, with bytes that depend only on the
//! tar stream, the level and the pinned library versions, never on the
//! number of threads or on the CPU.
//!
//! - **gzip** is a multi-member gzip file, as RFC 1952 allows and as
//!   bgzip writes: the tar stream is cut into [`CHUNK`]-byte chunks at
//!   fixed offsets; each chunk becomes one complete gzip member (a fixed
//!   10-byte header, raw deflate by libdeflate, the chunk's CRC-32 and
//!   length), deflated on its own on the layer thread pool, and the
//!   members are written in order. Every gzip reader reads the members as
//!   one stream (`gzip -d`, `pigz -d`, Go's `compress/gzip` and so skopeo,
//!   umoci, podman, Docker and containerd: `tests/gzip_members.rs`). A
//!   member's bytes depend only on its chunk and the level, so any number
//!   of threads gives the same file; libdeflate picks CPU-specific code
//!   only for checksums and for filling its tables, never for the choices
//!   that decide the deflate bytes (`tests/gzip_members.rs` runs a build
//!   on an emulated CPU without those instructions). At most
//!   [`Workers::in_flight`] chunks are in memory at once.
//! - **zstd** is libzstd's multithreaded streaming mode with at least one
//!   worker: its output is the same for any number of workers >= 1 (and
//!   differs from single-threaded mode, which is never used).
//! - **none** is the tar stream itself.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex};

use super::LayerError;
use crate::oci::Digest;

/// Bytes of tar stream per gzip member.
pub const CHUNK: usize = 1 << 20;

/// The gzip header's OS byte: 255, "unknown".
pub const GZIP_OS_UNKNOWN: u8 = 255;

/// The layer media types, which live with the other OCI media types.
pub use crate::oci::media_type::{MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};

/// Bytes per libzstd job: its multithreaded output depends on this, not
/// on the number of workers. 2 MiB (libzstd's default at level 3 is 8 MiB)
/// keeps layers of a few MiB on every worker and memory flat, and
/// compresses as well as the zstd CLI on a whole closure.
pub const ZSTD_JOB: u32 = 2 << 20;

/// The libdeflate release that deflates gzip layers: the version of the
/// libdeflate-sys crate pinned in Cargo.lock, which builds that release of
/// the C library from its source (a unit test keeps the two equal). Part of
/// every gzip layer's cache key.
pub const LIBDEFLATE_VERSION: &str = "1.26";

/// nixoci's change to libdeflate, built from `vendor/libdeflate-sys`
/// (`NIXOCI.md` there): level 5 searches less. Part of every gzip layer's
/// cache key; a unit test checks the vendored source against it.
pub const LIBDEFLATE_TUNING: &str = "level 5 lazy depth 10 nice 24";

/// Highest gzip level: libdeflate's 12 (levels 10 to 12 search for the
/// optimal parse, slowly).
pub const MAX_GZIP_LEVEL: u32 = 12;
/// zstd levels nixoci accepts: 1 to 19 (20 and above need windows of
/// hundreds of MiB per worker).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// How layer blobs are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip, level 0 (stored) to 12 (libdeflate's levels).
    Gzip { level: u32 },
    /// zstd, level 1 to 19.
    Zstd { level: i32 },
    /// Plain tar.
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip {
            level: Compression::DEFAULT_GZIP_LEVEL,
        }
    }
}

impl Compression {
    /// libdeflate's level 5, with nixoci's shorter search
    /// ([`LIBDEFLATE_TUNING`]): smaller than `pigz -6` and `gzip -6` on
    /// the benchmark's closures, at about 3 times pigz's speed on two cores
    /// (docs/performance.md).
    pub const DEFAULT_GZIP_LEVEL: u32 = 5;
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
    /// The names [`Compression::new`] takes.
    pub const NAMES: [&'static str; 3] = ["gzip", "zstd", "none"];

    /// A compression by name (`gzip`, `zstd`, `none`) and level (the
    /// compressor's default when `None`). `none` takes no level.
    pub fn new(name: &str, level: Option<i32>) -> Result<Compression, LayerError> {
        let c = match name {
            "gzip" => Compression::Gzip {
                level: match level {
                    None => Self::DEFAULT_GZIP_LEVEL,
                    Some(l) => u32::try_from(l).map_err(|_| LayerError::Level {
                        compression: "gzip",
                        level: l,
                    })?,
                },
            },
            "zstd" => Compression::Zstd {
                level: level.unwrap_or(Self::DEFAULT_ZSTD_LEVEL),
            },
            "none" => match level {
                None => Compression::None,
                Some(_) => return Err(LayerError::NoLevel),
            },
            other => {
                return Err(LayerError::UnknownCompression {
                    name: other.to_owned(),
                })
            }
        };
        c.check()?;
        Ok(c)
    }

    /// Checks the level.
    pub fn check(&self) -> Result<(), LayerError> {
        let ok = match *self {
            Compression::Gzip { level } => level <= MAX_GZIP_LEVEL,
            Compression::Zstd { level } => ZSTD_LEVELS.contains(&level),
            Compression::None => true,
        };
        if ok {
            Ok(())
        } else {
            Err(LayerError::Level {
                compression: self.name(),
                level: self.level().unwrap_or_default(),
            })
        }
    }

    /// `gzip`, `zstd` or `none`.
    pub fn name(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
            Compression::None => "none",
        }
    }

    /// The level, for the compressors that have one.
    pub fn level(&self) -> Option<i32> {
        match *self {
            Compression::Gzip { level } => i32::try_from(level).ok(),
            Compression::Zstd { level } => Some(level),
            Compression::None => None,
        }
    }

    /// The valid levels, for messages.
    pub fn level_range(name: &str) -> &'static str {
        match name {
            "gzip" => "0 to 12",
            "zstd" => "1 to 19",
            _ => "none",
        }
    }

    /// The OCI media type of the layers it makes.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd { .. } => MEDIA_TYPE_TAR_ZSTD,
            Compression::None => MEDIA_TYPE_TAR,
        }
    }

    /// Everything besides the tar stream that decides the compressed bytes:
    /// the compressor, its level, its library's version and nixoci's own
    /// framing. Part of the cache key.
    pub fn engine(&self) -> String {
        match *self {
            Compression::Gzip { level } => format!(
                "gzip level {level} libdeflate {LIBDEFLATE_VERSION} ({LIBDEFLATE_TUNING}) members of {CHUNK} os {GZIP_OS_UNKNOWN}"
            ),
            Compression::Zstd { level } => format!(
                "zstd level {level} libzstd {} multithreaded job {ZSTD_JOB} checksum",
                zstd::zstd_safe::version_string()
            ),
            Compression::None => "none".to_owned(),
        }
    }
}

/// Bounds the chunks in memory: a counting semaphore.
struct Budget {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    fn try_take(&self) -> bool {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if *free > 0 {
            *free -= 1;
            true
        } else {
            false
        }
    }

    fn take(&self) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
    }

    fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += n;
        self.freed.notify_all();
    }
}

/// The threads that compress: a pool of `jobs` threads for gzip chunks, and
/// the worker count of every zstd stream.
pub struct Workers {
    /// Started by the first gzip chunk: a build whose layers are all reused
    /// starts no compression thread.
    pool: std::sync::OnceLock<Result<rayon::ThreadPool, String>>,
    budget: Budget,
    jobs: usize,
    in_flight: usize,
    /// Chunk buffers to reuse: no allocator churn, flat memory.
    spare: Mutex<Vec<Vec<u8>>>,
    /// zstd contexts of finished layers, with their worker threads and
    /// buffers: the next layer reuses them instead of allocating anew.
    zstd: Mutex<Vec<zstd::zstd_safe::CCtx<'static>>>,
}

impl Workers {
    /// `jobs` compression threads (0: one per CPU).
    pub fn new(jobs: usize) -> Workers {
        let jobs = match jobs {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Enough queued chunks that no thread waits for the next one, few
        // enough that memory stays flat: about 2 MiB per chunk in flight.
        let in_flight = 2 * jobs + 2;
        Workers {
            pool: std::sync::OnceLock::new(),
            budget: Budget {
                free: Mutex::new(in_flight),
                freed: Condvar::new(),
            },
            jobs,
            in_flight,
            spare: Mutex::new(Vec::new()),
            zstd: Mutex::new(Vec::new()),
        }
    }

    /// The gzip chunk threads, started on first use.
    fn pool(&self) -> io::Result<&rayon::ThreadPool> {
        let jobs = self.jobs;
        self.pool
            .get_or_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(jobs)
                    .thread_name(|i| format!("nixoci-deflate-{i}"))
                    .build()
                    .map_err(|e| format!("cannot start {jobs} compression threads: {e}"))
            })
            .as_ref()
            .map_err(|e| io::Error::other(e.clone()))
    }

    /// An empty buffer with room for a chunk, reused when possible.
    fn buffer(&self) -> Vec<u8> {
        let reused = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    /// Takes a buffer back for [`Workers::buffer`].
    fn recycle(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 {
            return;
        }
        buffer.clear();
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        // Every chunk in flight holds two; each layer thread fills one.
        if spare.len() < 2 * self.in_flight + 2 * self.jobs {
            spare.push(buffer);
        }
    }

    /// A zstd context set for `level`, reused when possible.
    fn zstd_context(&self, level: i32) -> io::Result<zstd::zstd_safe::CCtx<'static>> {
        use zstd::zstd_safe::{CCtx, CParameter};
        let reused = self.zstd.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut ctx = reused.unwrap_or_else(CCtx::create);
        // Never 0 workers: single-threaded output differs.
        let workers = u32::try_from(self.jobs.max(1)).unwrap_or(1);
        for param in [
            CParameter::CompressionLevel(level),
            CParameter::NbWorkers(workers),
            CParameter::ChecksumFlag(true),
            // Jobs of ZSTD_JOB bytes, not libzstd's default of 4 windows:
            // the output depends on the job size, never on the workers.
            CParameter::JobSize(ZSTD_JOB),
        ] {
            ctx.set_parameter(param).map_err(zstd_error)?;
        }
        Ok(ctx)
    }

    /// Takes a zstd context back, its frame abandoned or finished.
    fn recycle_zstd(&self, mut ctx: zstd::zstd_safe::CCtx<'static>) {
        if ctx
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .is_err()
        {
            return;
        }
        let mut pool = self.zstd.lock().unwrap_or_else(|p| p.into_inner());
        // One per layer thread is all that is ever in use at once.
        if pool.len() < 2 * self.jobs {
            pool.push(ctx);
        }
    }

    /// The number of compression threads.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// How many chunks may be in memory at once, across all layers.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// A compressing writer: the tar stream goes in, the blob comes out of `W`.
pub enum Encoder<'w, W: Write> {
    Gzip(Box<ChunkedGzip<'w, W>>),
    /// Small writes (tar headers, small files) gathered for libzstd, whose
    /// every call takes locks in multithreaded mode.
    Zstd(Box<io::BufWriter<ZstdStream<'w, W>>>),
    None(W),
}

impl<'w, W: Write> Encoder<'w, W> {
    pub fn new(c: Compression, out: W, workers: &'w Workers) -> Result<Self, LayerError> {
        c.check()?;
        let write = |source| LayerError::WriteStream { source };
        Ok(match c {
            Compression::Gzip { level } => Encoder::Gzip(Box::new(
                ChunkedGzip::new(out, level, workers).map_err(write)?,
            )),
            Compression::Zstd { level } => Encoder::Zstd(Box::new(io::BufWriter::with_capacity(
                ZSTD_GATHER,
                ZstdStream::new(out, level, workers)?,
            ))),
            Compression::None => Encoder::None(out),
        })
    }

    /// Ends the stream and returns the inner writer, not flushed.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(g) => g.finish(),
            Encoder::Zstd(z) => z
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?
                .finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(g) => g.write(buf),
            Encoder::Zstd(z) => z.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            // A gzip flush would change the bytes; the chunks decide them.
            Encoder::Gzip(_) => Ok(()),
            Encoder::Zstd(z) => z.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

/// A libzstd error code as an I/O error.
fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// One zstd frame, compressed by a context from [`Workers`] (multithreaded,
/// [`ZSTD_JOB`]-byte jobs, content checksum) and given back when done.
pub struct ZstdStream<'w, W: Write> {
    /// `None` only once finished.
    ctx: Option<zstd::zstd_safe::CCtx<'static>>,
    out: Option<W>,
    workers: &'w Workers,
    /// Compressed bytes on their way to `out`.
    buf: Vec<u8>,
}

/// How many bytes of small writes are gathered for a [`ZstdStream`].
const ZSTD_GATHER: usize = 256 * 1024;

impl<'w, W: Write> ZstdStream<'w, W> {
    fn new(out: W, level: i32, workers: &'w Workers) -> Result<Self, LayerError> {
        let ctx = workers
            .zstd_context(level)
            .map_err(|source| LayerError::WriteStream { source })?;
        Ok(ZstdStream {
            ctx: Some(ctx),
            out: Some(out),
            workers,
            buf: Vec::with_capacity(zstd::zstd_safe::CCtx::out_size()),
        })
    }

    /// Hands `data` (empty when ending the frame) to libzstd and writes
    /// what it gives back, until libzstd has taken all of `data` and, when
    /// ending, flushed the whole frame. libzstd blocks while it cannot take
    /// more input, so this waits for its workers rather than spinning.
    fn compress(
        &mut self,
        data: &[u8],
        end: zstd::zstd_safe::zstd_sys::ZSTD_EndDirective,
    ) -> io::Result<()> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end;
        let (Some(ctx), Some(out)) = (self.ctx.as_mut(), self.out.as_mut()) else {
            return Err(io::Error::other("zstd stream already finished"));
        };
        let mut input = zstd::zstd_safe::InBuffer::around(data);
        loop {
            self.buf.clear();
            let mut output = zstd::zstd_safe::OutBuffer::around(&mut self.buf);
            let left = ctx
                .compress_stream2(&mut output, &mut input, end)
                .map_err(zstd_error)?;
            out.write_all(&self.buf)?;
            let done = match end {
                ZSTD_e_end => left == 0,
                _ => input.pos() == data.len(),
            };
            if done {
                return Ok(());
            }
        }
    }

    /// Ends the frame and returns the inner writer, not flushed.
    pub fn finish(mut self) -> io::Result<W> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end;
        self.compress(&[], ZSTD_e_end)?;
        self.out
            .take()
            .ok_or_else(|| io::Error::other("zstd stream already finished"))
    }
}

impl<W: Write> Write for ZstdStream<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue;
        self.compress(buf, ZSTD_e_continue)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // A zstd flush would end a block early and change the bytes.
        Ok(())
    }
}

impl<W: Write> Drop for ZstdStream<'_, W> {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            self.workers.recycle_zstd(ctx);
        }
    }
}

/// Deterministic text and noise, compressible and not: the fingerprint's
/// sample and the tests' data.
pub(crate) fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed | 1;
    let words = [
        "nix", "store", "layer", "gzip", "deflate", "chunk", "tar", "\n", " ", "0123",
    ];
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x >> 60) < 3 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// What this build's compressor makes of a fixed sample, hashed: part of
/// the cache key, so that blobs of a compressor whose output changed
/// (another library release, another build of it) are never reused.
pub fn fingerprint(c: Compression, workers: &Workers) -> Result<Digest, LayerError> {
    // Enough for matches and literals; small, since every cached build
    // computes it.
    let data = sample(12 * 1024, 42);
    let write = |source| LayerError::WriteStream { source };
    let bytes = match c {
        Compression::Gzip { level } => gzip_member(level, &data, Vec::new()).map_err(write)?,
        Compression::Zstd { .. } => {
            let mut enc = Encoder::new(c, Vec::new(), workers)?;
            enc.write_all(&data).map_err(write)?;
            enc.finish().map_err(write)?
        }
        Compression::None => Vec::new(),
    };
    Ok(Digest::of(&bytes))
}

/// A chunk's number, its gzip member (or why it failed), and its input
/// buffer to reuse.
type Done = (u64, io::Result<Vec<u8>>, Vec<u8>);

/// A multi-member gzip file written from chunks deflated in parallel on
/// [`Workers`]; see the module docs.
pub struct ChunkedGzip<'w, W: Write> {
    /// `None` only once finished.
    out: Option<W>,
    level: u32,
    workers: &'w Workers,
    /// The chunk being filled.
    chunk: Vec<u8>,
    /// Chunks handed to the pool, and how many of them are written.
    submitted: u64,
    written: u64,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    /// Finished chunks that wait for an earlier one.
    waiting: BTreeMap<u64, io::Result<Vec<u8>>>,
}

impl<'w, W: Write> ChunkedGzip<'w, W> {
    fn new(out: W, level: u32, workers: &'w Workers) -> io::Result<Self> {
        let (done_tx, done_rx) = mpsc::channel();
        Ok(ChunkedGzip {
            out: Some(out),
            level,
            workers,
            chunk: workers.buffer(),
            submitted: 0,
            written: 0,
            done_tx,
            done_rx,
            waiting: BTreeMap::new(),
        })
    }

    fn in_flight(&self) -> u64 {
        self.submitted - self.written
    }

    fn out(&mut self) -> io::Result<&mut W> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }

    /// Hands the current chunk to the pool, once there is room for it.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        loop {
            if self.workers.budget.try_take() {
                break;
            }
            if self.in_flight() > 0 {
                // Our own chunks hold room: writing the next one frees some.
                self.write_next(true)?;
            } else {
                self.workers.budget.take();
                break;
            }
        }
        let fresh = if last {
            Vec::new()
        } else {
            self.workers.buffer()
        };
        let input = std::mem::replace(&mut self.chunk, fresh);
        let (index, level, tx) = (self.submitted, self.level, self.done_tx.clone());
        let pool = self.workers.pool()?;
        let output = self.workers.buffer();
        self.submitted += 1;
        pool.spawn(move || {
            let result = gzip_member(level, &input, output);
            // The receiver is gone only when the layer already failed.
            let _ = tx.send((index, result, input));
        });
        while self.write_next(false)? {}
        Ok(())
    }

    /// Writes the next chunk in order if it is done (with `block`, once it
    /// is). Returns whether a chunk was written.
    fn write_next(&mut self, block: bool) -> io::Result<bool> {
        if self.in_flight() == 0 {
            return Ok(false);
        }
        let next = self.written;
        let result = loop {
            if let Some(result) = self.waiting.remove(&next) {
                break result;
            }
            let received = if block {
                self.done_rx.recv().ok()
            } else {
                self.done_rx.try_recv().ok()
            };
            match received {
                Some((i, result, input)) => {
                    self.workers.recycle(input);
                    self.waiting.insert(i, result);
                }
                None if block => return Err(io::Error::other("a compression thread stopped")),
                None => return Ok(false),
            }
        };
        self.written += 1;
        self.workers.budget.give(1);
        let member = result?;
        self.out()?.write_all(&member)?;
        self.workers.recycle(member);
        Ok(true)
    }

    /// Compresses what is left and returns the inner writer, not flushed.
    pub fn finish(mut self) -> io::Result<W> {
        // The last chunk, even an empty one: an empty tar stream is still
        // one (empty) gzip member.
        self.submit(true)?;
        while self.in_flight() > 0 {
            self.write_next(true)?;
        }
        self.out
            .take()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }
}

impl<W: Write> Write for ChunkedGzip<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // A full chunk is handed over only when more data follows: the last
        // chunk is the one `finish` sees.
        if self.chunk.len() == CHUNK {
            self.submit(false)?;
        }
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ChunkedGzip<'_, W> {
    fn drop(&mut self) {
        // A failed layer: give back the room its chunks hold. Chunks still
        // being deflated finish and are dropped.
        let n = usize::try_from(self.in_flight()).unwrap_or(usize::MAX);
        self.workers.budget.give(n);
        self.workers.recycle(std::mem::take(&mut self.chunk));
    }
}

thread_local! {
    /// Each compression thread's libdeflate compressor and its level: its
    /// tables (up to a few MiB) are allocated once per thread, not per
    /// chunk. A compressor keeps no state from one call to the next.
    static DEFLATER: std::cell::RefCell<Option<(u32, libdeflater::Compressor)>> =
        const { std::cell::RefCell::new(None) };
}

/// One complete gzip member of `input` at `level`, written into `out`
/// (cleared first): a fixed header (no flags, mtime 0, XFL as libdeflate
/// sets it, OS [`GZIP_OS_UNKNOWN`]), libdeflate's raw deflate, the CRC-32
/// and the length mod 2^32.
pub fn gzip_member(level: u32, input: &[u8], mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    let lvl = i32::try_from(level)
        .ok()
        .and_then(|l| libdeflater::CompressionLvl::new(l).ok())
        .ok_or_else(|| io::Error::other(format!("gzip level {level} is out of range")))?;
    // What libdeflate puts in XFL: 2 for its slow levels, 4 for the fastest.
    let xfl = match level {
        0 | 1 => 4,
        8.. => 2,
        _ => 0,
    };
    out.clear();
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, GZIP_OS_UNKNOWN]);
    DEFLATER.with(|cell| -> io::Result<()> {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((l, c)) if *l == level => c,
            other => &mut other.insert((level, libdeflater::Compressor::new(lvl))).1,
        };
        let start = out.len();
        out.resize(start + compressor.deflate_compress_bound(input.len()), 0);
        let n = compressor
            .deflate_compress(input, &mut out[start..])
            .map_err(|e| io::Error::other(format!("libdeflate: {e}")))?;
        out.truncate(start + n);
        Ok(())
    })?;
    out.extend_from_slice(&libdeflater::crc32(input).to_le_bytes());
    // ISIZE: the length mod 2^32 (a chunk is far smaller).
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};

    use flate2::read::MultiGzDecoder;

    use super::*;

    fn gzip(data: &[u8], level: u32, jobs: usize) -> Vec<u8> {
        let workers = Workers::new(jobs);
        let mut enc = Encoder::new(Compression::Gzip { level }, Vec::new(), &workers).unwrap();
        // Odd-sized writes, as the tar writer's are not chunk-aligned.
        for piece in data.chunks(77_777) {
            enc.write_all(piece).unwrap();
        }
        enc.finish().unwrap()
    }

    fn gunzip(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MultiGzDecoder::new(blob).read_to_end(&mut out).unwrap();
        out
    }

    /// Decompresses with an external program, if installed.
    fn external(prog: &str, blob: &[u8]) -> Option<Vec<u8>> {
        let mut child = Command::new(prog)
            .args(["-d", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take().unwrap();
        let input = blob.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        assert!(out.status.success(), "{prog} -d failed");
        Some(out.stdout)
    }

    /// Counts gzip members by walking the stream with a single-member
    /// decoder.
    fn members(blob: &[u8]) -> usize {
        let mut rest = blob;
        let mut n = 0;
        while !rest.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(rest);
            std::io::copy(&mut d, &mut std::io::sink()).unwrap();
            rest = d.into_inner();
            n += 1;
        }
        n
    }

    #[test]
    fn chunked_gzip_is_one_member_per_chunk() {
        // Empty, one byte, exactly one chunk, chunk + 1, several chunks.
        for (len, n) in [
            (0, 1),
            (1, 1),
            (CHUNK, 1),
            (CHUNK + 1, 2),
            (3 * CHUNK + 12_345, 4),
        ] {
            let data = sample(len, len as u64 + 7);
            let blob = gzip(&data, 6, 2);
            assert_eq!(gunzip(&blob), data, "len {len}");
            assert_eq!(members(&blob), n, "len {len}");
            assert_eq!(&blob[..4], &[0x1f, 0x8b, 8, 0]);
            assert_eq!(&blob[4..8], &[0, 0, 0, 0], "mtime");
            assert_eq!(blob[9], GZIP_OS_UNKNOWN);
            let end = blob.len();
            assert_eq!(
                u32::from_le_bytes(blob[end - 4..].try_into().unwrap()),
                (len - (n - 1) * CHUNK) as u32,
                "the last member's length"
            );
        }
    }

    #[test]
    fn a_member_is_libdeflates_gzip() {
        // Our header and trailer around libdeflate's raw deflate are what
        // libdeflate's own gzip writer makes of the same chunk.
        let data = sample(CHUNK, 17);
        for level in [1, 6, 9] {
            let lvl = libdeflater::CompressionLvl::new(level as i32).unwrap();
            let mut c = libdeflater::Compressor::new(lvl);
            let mut theirs = vec![0; c.gzip_compress_bound(data.len())];
            let n = c.gzip_compress(&data, &mut theirs).unwrap();
            theirs.truncate(n);
            let ours = gzip_member(level, &data, Vec::new()).unwrap();
            assert!(ours == theirs, "level {level}");
        }
    }

    #[test]
    fn chunked_gzip_decodes_with_gzip_and_pigz() {
        let data = sample(2 * CHUNK + 999, 3);
        let blob = gzip(&data, 6, 2);
        let mut ran = 0;
        for prog in ["gzip", "pigz"] {
            match external(prog, &blob) {
                Some(out) => {
                    assert!(out == data, "{prog} -d gave other bytes");
                    ran += 1;
                }
                None => eprintln!("skipping {prog}: not installed"),
            }
        }
        let ci = matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"));
        assert!(ran == 2 || !ci, "gzip and pigz are required under CI");
    }

    #[test]
    fn chunked_gzip_same_for_any_thread_count() {
        let data = sample(4 * CHUNK + 5, 11);
        let one = gzip(&data, 6, 1);
        for jobs in [2, 3, 8] {
            assert!(gzip(&data, 6, jobs) == one, "jobs {jobs}");
        }
    }

    #[test]
    fn every_gzip_level_round_trips() {
        let data = sample(CHUNK + CHUNK / 2, 5);
        let mut sizes = Vec::new();
        for level in 0..=MAX_GZIP_LEVEL {
            let blob = gzip(&data, level, 2);
            assert_eq!(gunzip(&blob), data, "level {level}");
            sizes.push(blob.len());
        }
        assert!(sizes[0] > data.len(), "level 0 stores");
        assert!(sizes[12] < sizes[9] && sizes[9] < sizes[1], "{sizes:?}");
    }

    #[test]
    fn members_compress_about_as_well_as_one_stream() {
        // Chunks without a dictionary lose little against one deflate
        // stream of the same level.
        let data = sample(4 * CHUNK, 9);
        let chunked = gzip(&data, 6, 2).len();
        let lvl = libdeflater::CompressionLvl::new(6).unwrap();
        let mut c = libdeflater::Compressor::new(lvl);
        let mut single = vec![0; c.gzip_compress_bound(data.len())];
        let single = c.gzip_compress(&data, &mut single).unwrap();
        assert!(
            (chunked as f64) < single as f64 * 1.005,
            "chunked {chunked} vs one stream {single}"
        );
    }

    #[test]
    fn zstd_same_for_any_worker_count_and_none_is_the_input() {
        let data = sample(3 * CHUNK, 13);
        let zstd = |jobs| {
            let workers = Workers::new(jobs);
            let mut enc =
                Encoder::new(Compression::Zstd { level: 3 }, Vec::new(), &workers).unwrap();
            for piece in data.chunks(4096) {
                enc.write_all(piece).unwrap();
            }
            enc.finish().unwrap()
        };
        let one = zstd(1);
        assert!(zstd(2) == one);
        assert!(zstd(3) == one);
        assert!(zstd::decode_all(&one[..]).unwrap() == data);

        let workers = Workers::new(1);
        let mut enc = Encoder::new(Compression::None, Vec::new(), &workers).unwrap();
        enc.write_all(&data).unwrap();
        assert!(enc.finish().unwrap() == data);
    }

    /// zstd through [`Workers`]' pooled contexts: the bytes depend neither
    /// on how the input is cut into writes nor on what the context
    /// compressed before (a finished frame, an abandoned one), and equal
    /// libzstd's own streaming encoder with the same parameters.
    #[test]
    fn zstd_bytes_independent_of_writes_and_context_reuse() {
        let data = sample(5 * ZSTD_JOB as usize / 2, 21);
        let workers = Workers::new(2);
        let zstd = Compression::Zstd { level: 3 };
        let compress = |pieces: &mut dyn Iterator<Item = &[u8]>| {
            let mut enc = Encoder::new(zstd, Vec::new(), &workers).unwrap();
            for piece in pieces {
                enc.write_all(piece).unwrap();
            }
            enc.finish().unwrap()
        };
        let whole = compress(&mut std::iter::once(&data[..]));
        assert!(zstd::decode_all(&whole[..]).unwrap() == data);
        // Tar-like writes: headers, small files, big copies.
        let mut mixed = Vec::new();
        let mut rest = &data[..];
        for n in [512, 3, 65536, 512, 1 << 20, 7, 300_000].iter().cycle() {
            let (a, b) = rest.split_at((*n).min(rest.len()));
            mixed.push(a);
            rest = b;
            if rest.is_empty() {
                break;
            }
        }
        assert!(compress(&mut mixed.iter().copied()) == whole);
        assert!(compress(&mut data.chunks(1)) == whole);
        // An abandoned frame leaves nothing behind in the reused context.
        {
            let mut enc = Encoder::new(zstd, Vec::new(), &workers).unwrap();
            enc.write_all(&sample(1 << 20, 5)).unwrap();
        }
        assert!(workers.zstd.lock().unwrap().len() == 1);
        assert!(compress(&mut data.chunks(4096)) == whole);

        let mut reference = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        reference.multithread(1).unwrap();
        reference.include_checksum(true).unwrap();
        reference
            .set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB))
            .unwrap();
        reference.write_all(&data).unwrap();
        assert!(reference.finish().unwrap() == whole);
    }

    #[test]
    fn names_and_levels() {
        assert_eq!(
            Compression::new("gzip", None).unwrap(),
            Compression::Gzip { level: 5 }
        );
        assert_eq!(
            Compression::new("zstd", Some(19)).unwrap(),
            Compression::Zstd { level: 19 }
        );
        assert_eq!(Compression::new("none", None).unwrap(), Compression::None);
        for (name, level) in [("gzip", 13), ("gzip", -1), ("zstd", 0), ("zstd", 20)] {
            let err = Compression::new(name, Some(level)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{name} level {level} is out of range ({})",
                    Compression::level_range(name)
                )
            );
        }
        assert!(Compression::new("none", Some(1)).is_err());
        assert!(Compression::new("xz", None).is_err());
        assert_eq!(
            Compression::new("zstd", None).unwrap().media_type(),
            MEDIA_TYPE_TAR_ZSTD
        );
    }

    /// libdeflate-sys's entry in Cargo.lock.
    fn locked_libdeflate_sys() -> &'static str {
        include_str!("../../Cargo.lock")
            .split("[[package]]")
            .find(|p| p.contains("name = \"libdeflate-sys\""))
            .unwrap()
    }

    #[test]
    fn libdeflate_version_is_the_locked_one() {
        // The cache key names the deflate engine's version: it must follow
        // Cargo.lock (libdeflate-sys 1.X.Y builds libdeflate 1.X) and the
        // library itself.
        let locked = locked_libdeflate_sys()
            .lines()
            .find(|l| l.starts_with("version = "))
            .map(|l| l.trim_start_matches("version = ").trim_matches('"'))
            .unwrap();
        let minor: Vec<&str> = locked.split('.').take(2).collect();
        assert_eq!(minor.join("."), LIBDEFLATE_VERSION);
    }

    #[test]
    fn libdeflate_tuning_is_the_vendored_one() {
        // The cache key names nixoci's change to libdeflate's level 5: it
        // must be the one the vendored source has.
        let source = include_str!("../../vendor/libdeflate-sys/libdeflate/lib/deflate_compress.c");
        let level5 = source.split("\tcase 5:").nth(1).unwrap();
        let level5 = &level5[..level5.find("break;").unwrap()];
        let number = |field: &str| -> String {
            let at = level5.find(&format!("c->{field} = ")).unwrap() + field.len() + 6;
            level5[at..].split(';').next().unwrap().to_owned()
        };
        assert!(level5.contains("c->impl = deflate_compress_lazy;"));
        assert_eq!(
            format!(
                "level 5 lazy depth {} nice {}",
                number("max_search_depth"),
                number("nice_match_length")
            ),
            LIBDEFLATE_TUNING
        );
        assert!(
            !locked_libdeflate_sys().contains("source = "),
            "libdeflate-sys must come from vendor/, not a registry"
        );
    }
}
