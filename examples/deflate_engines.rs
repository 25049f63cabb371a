//! The deflate engines compared for gzip layers (docs/performance.md): one
//! thread compresses a file cut into chunks, each chunk on its own, and the
//! time and the total size are printed per engine and level as tab-separated
//! lines. Run by `scripts/bench-deflate`, which adds pigz and zlib-ng.
//!
//!     cargo run --release --example deflate_engines -- FILE [CHUNK_BYTES] [RUNS]
//!
//! Engines: libdeflate (nixoci's gzip since issue #17: a gzip member per
//! chunk) at levels 1 to 12, and zlib-rs (nixoci's gzip before: raw deflate
//! per chunk primed with the previous chunk's last 32 KiB, one stream) at
//! levels 1 to 9. Each line: engine, level, chunk bytes, median seconds of
//! RUNS runs, output bytes.

use std::process::ExitCode;
use std::time::Instant;

use flate2::{Compress, FlushCompress, Status};
use nixoci::layer::compress::gzip_member;

/// An engine: its name, its compression of the chunks at a level, its levels.
type Engine = (
    &'static str,
    fn(u32, &[&[u8]]) -> usize,
    std::ops::RangeInclusive<u32>,
);

fn libdeflate(level: u32, chunks: &[&[u8]]) -> usize {
    let mut out = Vec::new();
    let mut total = 0;
    for chunk in chunks {
        out = gzip_member(level, chunk, out).expect("libdeflate");
        total += out.len();
    }
    total
}

fn zlib_rs(level: u32, chunks: &[&[u8]]) -> usize {
    let mut total = 18; // gzip header and trailer
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut z = Compress::new(flate2::Compression::new(level), false);
        if i > 0 {
            let prev = chunks[i - 1];
            z.set_dictionary(&prev[prev.len().saturating_sub(32 * 1024)..])
                .expect("dictionary");
        }
        let flush = if last {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        out.clear();
        out.reserve(chunk.len() + chunk.len() / 1000 + 64);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(32 * 1024);
            }
            let before = z.total_in();
            let status = z
                .compress_vec(&chunk[consumed..], &mut out, flush)
                .expect("zlib-rs");
            consumed += (z.total_in() - before) as usize;
            match status {
                Status::StreamEnd => break,
                _ if !last && consumed == chunk.len() && out.len() < out.capacity() => break,
                _ => {}
            }
        }
        total += out.len();
    }
    total
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(file) = args.first() else {
        eprintln!("usage: deflate_engines FILE [CHUNK_BYTES] [RUNS]");
        return ExitCode::from(2);
    };
    let chunk: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1 << 20);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("deflate_engines: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let chunks: Vec<&[u8]> = data.chunks(chunk).collect();
    let engines: [Engine; 2] = [
        ("libdeflate", libdeflate, 1..=12),
        ("zlib-rs", zlib_rs, 1..=9),
    ];
    let only: Option<Vec<String>> = std::env::var("ENGINES")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    for (name, run, levels) in engines {
        for level in levels {
            let label = format!("{name}:{level}");
            if only.as_ref().is_some_and(|o| !o.contains(&label)) {
                continue;
            }
            let mut times = Vec::new();
            let mut size = 0;
            for _ in 0..runs {
                let t = Instant::now();
                size = run(level, &chunks);
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            println!(
                "{name}\t{level}\t{chunk}\t{:.3}\t{size}",
                times[times.len() / 2]
            );
        }
    }
    ExitCode::SUCCESS
}
