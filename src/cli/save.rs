//! `nixoci save`: an image of a layout as one archive for `docker load` and
//! `podman load`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{usage, Classify};
use crate::error::error_chain;
use crate::oci::layout::LayoutArg;
use crate::platform::Platform;
use crate::publish::archive::{self, Format};
use crate::publish::source::read_image;

/// Save an image as an archive for docker load or podman load.
///
/// docker-archive (the default) holds one platform, the host's unless
/// --platform says otherwise: manifest.json, the config and the layers as
/// they are in the layout (never recompressed), tagged with the layout's tag
/// (a full reference such as example.org/app:1.0) or --tag. oci-archive is
/// the image's part of the layout, every platform, as a tar.
///
/// -o - writes to standard output, without a temporary file:
///
///   nixoci save app.oci:example.org/app:1.0 -o - | docker load
///   nixoci save app.oci --format oci-archive -o app.tar && podman load -i app.tar
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The layout, DIR or oci:DIR, with :TAG naming the image in it (the
    /// tag `build --tag` gave) when it holds several.
    #[arg(value_name = "[oci:]DIR[:TAG]")]
    pub source: LayoutArg,

    /// The platform of a docker-archive [default: this machine's].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,

    /// docker-archive (one platform) or oci-archive (every platform).
    #[arg(long, value_enum, default_value = "docker-archive")]
    pub format: Format,

    /// The name:tag the loaded image gets [default: the layout's tag].
    #[arg(long, value_name = "REF")]
    pub tag: Option<String>,

    /// The archive to write, or - for standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
}

/// This machine's platform, as the runtimes pick it.
pub(crate) fn host_platform() -> anyhow::Result<Platform> {
    let system = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux",
        "aarch64" => "aarch64-linux",
        "arm" => "armv7l-linux",
        "x86" => "i686-linux",
        "riscv64" => "riscv64-linux",
        "powerpc64" => "powerpc64le-linux",
        "s390x" => "s390x-linux",
        other => {
            return Err(usage(format!(
                "no OCI platform for a {other} host; give --platform"
            )))
        }
    };
    Platform::from_nix_system(system)
        .ok_or_else(|| usage(format!("no OCI platform for {system}; give --platform")))
}

/// The pipe buffer `save -o -` asks for: 1 MiB, Linux's default
/// `/proc/sys/fs/pipe-max-size` for unprivileged processes.
const PIPE_BUFFER: libc::c_int = 1 << 20;

/// Makes standard output's pipe buffer [`PIPE_BUFFER`] bytes when it is a
/// pipe with a smaller one. With the default 64 KiB, each 64 KiB write of
/// a blob fills the pipe and waits for the reader (`docker load`, `wc`):
/// the two take turns instead of running side by side (docs/performance.md,
/// "Cost of the features"). Anything else (a file, a socket, a limit lower
/// than 1 MiB, a pipe already as big) is left as it is: the bytes written
/// are the same either way.
#[allow(unsafe_code)] // fcntl has no safe form in std
fn widen_pipe(out: &std::io::Stdout) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(out);
    // SAFETY: F_GETPIPE_SZ and F_SETPIPE_SZ read and set the buffer size
    // of the pipe behind `fd` and touch no memory of ours; on anything
    // but a pipe, or over the limit, they fail with -1 and change nothing.
    unsafe {
        let size = libc::fcntl(fd, libc::F_GETPIPE_SZ);
        if (0..PIPE_BUFFER).contains(&size) {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BUFFER);
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layout = &args.source;
    let image = read_image(&layout.dir, layout.tag.as_deref()).map_err(|e| {
        if e.is_usage() {
            usage(error_chain(&e))
        } else {
            anyhow::Error::new(e).context(format!("reading {}", args.source))
        }
    })?;
    let tag = match (&args.tag, &image.ref_name) {
        (Some(t), _) => t.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            return Err(usage(
                "the layout's image has no tag; give the name:tag it gets with --tag",
            ))
        }
    };
    if args.format == Format::DockerArchive && !tag.contains(':') {
        return Err(usage(format!(
            "the tag '{tag}' is not a name:tag Docker can load; give one with --tag, such as example.org/app:{tag}"
        )));
    }
    let platform = match args.platform {
        Some(p) => p,
        None => host_platform()?,
    };
    let write = |out: &mut dyn Write| -> anyhow::Result<()> {
        let result = match args.format {
            Format::DockerArchive => {
                archive::docker_archive(&image, &platform, &tag, out).map(drop)
            }
            Format::OciArchive => archive::oci_archive(&image, &tag, out).map(drop),
        };
        result.classify().context("saving the image")
    };
    if args.output == Path::new("-") {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return Err(usage(
                "-o - writes a tar to standard output, which is a terminal; pipe it (| docker load) or give a file",
            ));
        }
        let stdout = std::io::stdout();
        widen_pipe(&stdout);
        // Not through `Stdout`, which is line buffered: it would cut each
        // 64 KiB chunk of a blob at its last newline into two writes and
        // copy the rest. A duplicate of the descriptor takes them whole.
        let fd = std::os::fd::AsFd::as_fd(&stdout)
            .try_clone_to_owned()
            .context("duplicating standard output")?;
        let mut out = std::io::BufWriter::new(std::fs::File::from(fd));
        match write(&mut out).and_then(|()| out.flush().map_err(Into::into)) {
            // A reader that stops early (docker load failing) is not our error.
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                }) =>
            {
                Ok(())
            }
            other => other,
        }
    } else {
        super::refuse_in_store("--output", &args.output, &super::default_store_dirs())?;
        let dir = match args.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        // Written beside the archive and renamed: never half an archive.
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-save-")
            .tempfile_in(&dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        {
            let mut out = std::io::BufWriter::new(tmp.as_file_mut());
            write(&mut out)?;
            out.flush()
                .with_context(|| format!("writing {}", args.output.display()))?;
        }
        tmp.persist(&args.output)
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}", args.output.display()))?;
        say!(
            "saved {}:{tag} ({}) to {}",
            layout.dir.display(),
            match args.format {
                Format::DockerArchive => format!("docker-archive, {platform}"),
                Format::OciArchive => "oci-archive".to_owned(),
            },
            args.output.display()
        );
        Ok(())
    }
}
