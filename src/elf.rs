//! ELF identification: the architecture an executable or shared library is
//! built for, read from its header (and, for 32-bit ARM, its build
//! attributes), and whether an image of a platform can run it. Pure: the
//! bytes come from `layer::tar`, which reads every file of a layer anyway.
//!
//! What counts (the loader's view): a regular file whose ELF type is
//! `ET_EXEC` or `ET_DYN` (what `execve` and `ld.so` load: programs, PIE
//! programs, shared libraries) and that is either executable (any execute
//! bit) or named like a shared library (`*.so`, `*.so.*`). Everything else
//! is data to the image: `ET_REL` (object files, kernel modules, which a
//! container never loads: the host kernel does), `ET_CORE`, and
//! non-executable ELF files that are not libraries (firmware for other
//! processors, test data of toolchains, emulator ROMs), which packages carry
//! legitimately for other architectures.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// The first four bytes of every ELF file.
pub const MAGIC: &[u8; 4] = b"\x7fELF";
/// The bytes [`Header::parse`] needs at most: a 64-bit ELF header.
pub const HEADER_LEN: usize = 64;

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

const EM_386: u16 = 3;
const EM_ARM: u16 = 40;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const EM_PPC64: u16 = 21;
const EM_S390: u16 = 22;
const EM_RISCV: u16 = 243;

/// The section type of `.ARM.attributes`.
const SHT_ARM_ATTRIBUTES: u32 = 0x7000_0003;
/// The most section header bytes and attribute bytes [`Header`] asks for:
/// more is no ELF a linker wrote.
const MAX_SECTION_HEADERS: u64 = 4 << 20;
const MAX_ATTRIBUTES: u64 = 64 << 10;

/// The fields of an ELF header this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 32 or 64 (`EI_CLASS`).
    pub bits: u8,
    /// `EI_DATA`: big-endian (MSB) or little-endian (LSB).
    pub big_endian: bool,
    /// `e_type`.
    pub elf_type: u16,
    /// `e_machine`.
    pub machine: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
}

impl Header {
    /// The header at the start of `bytes`, or `None` when `bytes` is no
    /// complete ELF header (no magic, an unknown class or byte order, too
    /// short).
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        if bytes.get(..4)? != MAGIC {
            return None;
        }
        let bits = match bytes.get(4)? {
            1 => 32,
            2 => 64,
            _ => return None,
        };
        let big_endian = match bytes.get(5)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let r = Reader { bytes, big_endian };
        let (shoff, shentsize, shnum) = if bits == 32 {
            (u64::from(r.u32(32)?), r.u16(46)?, r.u16(48)?)
        } else {
            (r.u64(40)?, r.u16(58)?, r.u16(60)?)
        };
        Some(Header {
            bits,
            big_endian,
            elf_type: r.u16(16)?,
            machine: r.u16(18)?,
            shoff,
            shentsize,
            shnum,
        })
    }

    /// What the loader makes of the file: `None` for anything but
    /// `ET_EXEC` and `ET_DYN`. `executable` (any execute bit) and the
    /// file's `name` tell a program from a library.
    pub fn loadable(&self, name: &[u8], executable: bool) -> Option<Kind> {
        let library = is_library_name(name);
        match self.elf_type {
            ET_EXEC | ET_DYN if library => Some(Kind::SharedLibrary),
            ET_EXEC | ET_DYN if executable => Some(Kind::Executable),
            _ => None,
        }
    }

    /// True when the architecture version is in the ARM build attributes
    /// ([`Header::section_headers`], [`arm_attributes`], [`arm_cpu_arch`]).
    pub fn is_arm(&self) -> bool {
        self.machine == EM_ARM && self.bits == 32
    }

    /// Where the section header table is: (offset, length), when it is
    /// there and of a sane size.
    pub fn section_headers(&self) -> Option<(u64, usize)> {
        let len = u64::from(self.shentsize) * u64::from(self.shnum);
        if self.shoff == 0 || len == 0 || len > MAX_SECTION_HEADERS {
            return None;
        }
        Some((self.shoff, usize::try_from(len).ok()?))
    }

    /// The architecture, with `arm_cpu` (`Tag_CPU_arch` of the ARM build
    /// attributes) when known.
    pub fn arch(&self, arm_cpu: Option<u8>) -> Arch {
        Arch {
            machine: self.machine,
            bits: self.bits,
            big_endian: self.big_endian,
            arm_cpu: if self.is_arm() { arm_cpu } else { None },
        }
    }
}

/// True for `libc.so.6`, `libfoo.so`, `_ssl.cpython-311-x86_64-linux-gnu.so`:
/// a last path component ending in `.so` or holding `.so.`.
fn is_library_name(name: &[u8]) -> bool {
    let base = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
    base.ends_with(b".so") || base.windows(4).any(|w| w == b".so.")
}

/// Where the `.ARM.attributes` section is, from the section header table
/// `headers` of a file with `header`: (offset, length).
pub fn arm_attributes(header: &Header, headers: &[u8]) -> Option<(u64, usize)> {
    let r = Reader {
        bytes: headers,
        big_endian: header.big_endian,
    };
    let size = usize::from(header.shentsize);
    let min = if header.bits == 32 { 24 } else { 40 };
    if size < min {
        return None;
    }
    (0..usize::from(header.shnum)).find_map(|i| {
        let at = i * size;
        if r.u32(at + 4)? != SHT_ARM_ATTRIBUTES {
            return None;
        }
        let (offset, len) = if header.bits == 32 {
            (u64::from(r.u32(at + 16)?), u64::from(r.u32(at + 20)?))
        } else {
            (r.u64(at + 24)?, r.u64(at + 32)?)
        };
        (len > 0 && len <= MAX_ATTRIBUTES).then_some((offset, usize::try_from(len).ok()?))
    })
}

/// `Tag_CPU_arch` of the file-wide `aeabi` attributes in the bytes of an
/// `.ARM.attributes` section (ARM IHI 0045, "Build Attributes"), or `None`
/// when the section does not say or cannot be read.
pub fn arm_cpu_arch(section: &[u8], big_endian: bool) -> Option<u8> {
    const TAG_FILE: u8 = 1;
    const TAG_CPU_ARCH: u64 = 6;
    let r = Reader {
        bytes: section,
        big_endian,
    };
    if *section.first()? != b'A' {
        return None;
    }
    let mut at = 1;
    while at < section.len() {
        let len = usize::try_from(r.u32(at)?).ok()?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= section.len() && len > 4)?;
        let vendor_end = at + 4 + section.get(at + 4..end)?.iter().position(|&b| b == 0)?;
        if &section[at + 4..vendor_end] == b"aeabi" {
            let mut sub = vendor_end + 1;
            while sub < end {
                let tag = *section.get(sub)?;
                let size = usize::try_from(r.u32(sub + 1)?).ok()?;
                let sub_end = sub.checked_add(size).filter(|&e| e <= end && size > 5)?;
                if tag == TAG_FILE {
                    let mut p = sub + 5;
                    while p < sub_end {
                        let (tag, next) = uleb128(section, p)?;
                        p = next;
                        if tag == TAG_CPU_ARCH {
                            let (value, _) = uleb128(section, p)?;
                            return u8::try_from(value).ok();
                        }
                        p = skip_attribute(section, tag, p)?;
                    }
                }
                sub = sub_end;
            }
        }
        at = end;
    }
    None
}

/// The position after the value of attribute `tag` at `p`: a string for
/// `Tag_CPU_raw_name`, `Tag_CPU_name`, `Tag_conformance` and odd tags from
/// 32 on, a number and a string for `Tag_compatibility`, else a ULEB128.
fn skip_attribute(bytes: &[u8], tag: u64, p: usize) -> Option<usize> {
    let string =
        |p: usize| -> Option<usize> { Some(p + bytes.get(p..)?.iter().position(|&b| b == 0)? + 1) };
    match tag {
        4 | 5 | 67 => string(p),
        32 => string(uleb128(bytes, p)?.1),
        t if t > 32 && t % 2 == 1 => string(p),
        _ => Some(uleb128(bytes, p)?.1),
    }
}

/// The ULEB128 number at `p` and the position after it.
fn uleb128(bytes: &[u8], mut p: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(p)?;
        p += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((value, p));
        }
    }
    None
}

/// Big- or little-endian numbers at offsets of a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn array<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.bytes.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    fn u16(&self, at: usize) -> Option<u16> {
        let b = self.array(at)?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b = self.array(at)?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64(&self, at: usize) -> Option<u64> {
        let b = self.array(at)?;
        Some(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
}

/// An ELF file's architecture: machine, class, byte order and, for 32-bit
/// ARM, the `Tag_CPU_arch` build attribute when the file has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arch {
    pub machine: u16,
    pub bits: u8,
    pub big_endian: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm_cpu: Option<u8>,
}

/// Names of (machine, bits, big-endian), as `file` and the toolchains say.
const NAMES: &[(u16, u8, bool, &str)] = &[
    (EM_X86_64, 64, false, "x86-64"),
    (EM_X86_64, 32, false, "x32"),
    (EM_386, 32, false, "i386"),
    (EM_AARCH64, 64, false, "aarch64"),
    (EM_AARCH64, 64, true, "aarch64_be"),
    (EM_ARM, 32, false, "arm"),
    (EM_ARM, 32, true, "armeb"),
    (EM_RISCV, 64, false, "riscv64"),
    (EM_RISCV, 32, false, "riscv32"),
    (EM_PPC64, 64, false, "ppc64le"),
    (EM_PPC64, 64, true, "ppc64"),
    (20, 32, true, "ppc"),
    (EM_S390, 64, true, "s390x"),
    (EM_S390, 32, true, "s390"),
    (8, 32, true, "mips"),
    (8, 32, false, "mipsel"),
    (8, 64, true, "mips64"),
    (8, 64, false, "mips64el"),
    (43, 64, true, "sparc64"),
    (258, 64, false, "loongarch64"),
];

/// `Tag_CPU_arch` values: name, and the ARM architecture version a CPU
/// needs to run the code (a v7 CPU runs v4 to v7 code).
const ARM_CPUS: &[(&str, u8)] = &[
    ("armv4 (pre-v4)", 4),
    ("armv4", 4),
    ("armv4t", 4),
    ("armv5t", 5),
    ("armv5te", 5),
    ("armv5tej", 5),
    ("armv6", 6),
    ("armv6kz", 6),
    ("armv6t2", 6),
    ("armv6k", 6),
    ("armv7", 7),
    ("armv6-m", 6),
    ("armv6s-m", 6),
    ("armv7e-m", 7),
    ("armv8-a (32-bit)", 8),
    ("armv8-r (32-bit)", 8),
    ("armv8-m.base", 8),
    ("armv8-m.main", 8),
    ("armv8.1-a (32-bit)", 8),
    ("armv8.2-a (32-bit)", 8),
    ("armv8.3-a (32-bit)", 8),
    ("armv8.1-m.main", 8),
    ("armv9-a (32-bit)", 9),
];

impl Arch {
    /// The ARM architecture version the code needs, when it says.
    fn arm_version(&self) -> Option<u8> {
        let cpu = self.arm_cpu?;
        // A tag newer than this table: newer than any variant.
        Some(ARM_CPUS.get(usize::from(cpu)).map_or(u8::MAX, |(_, v)| *v))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (EM_ARM, false, Some(cpu)) = (self.machine, self.big_endian, self.arm_cpu) {
            return match ARM_CPUS.get(usize::from(cpu)) {
                Some((name, _)) => f.write_str(name),
                None => write!(f, "arm (Tag_CPU_arch {cpu})"),
            };
        }
        match NAMES
            .iter()
            .find(|(m, b, e, _)| (*m, *b, *e) == (self.machine, self.bits, self.big_endian))
        {
            Some((.., name)) => f.write_str(name),
            None => write!(
                f,
                "machine-{} {}-bit {}-endian",
                self.machine,
                self.bits,
                if self.big_endian { "big" } else { "little" }
            ),
        }
    }
}

/// What the loader does with an ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A program (`ET_EXEC`, or a PIE `ET_DYN` with an execute bit).
    Executable,
    /// An `ET_EXEC` or `ET_DYN` named like a shared library.
    SharedLibrary,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Executable => "executable",
            Kind::SharedLibrary => "shared library",
        })
    }
}

/// An ELF file of a layer: its absolute path in the image, architecture
/// and kind. A layer remembers the first file (in tar order) of each
/// architecture it holds, and the layer cache keeps that list with the
/// layer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElfFile {
    pub path: String,
    pub arch: Arch,
    pub kind: Kind,
}

/// (`e_machine`, bits, big-endian).
type Machine = (u16, u8, bool);

/// The architectures an image of `platform` runs: (machine, bits,
/// big-endian) and for ARM the version of the variant. `None` for a
/// platform this module has no table for (nothing is refused).
///
/// linux/amd64 runs i386 code too: the x86-64 kernels of every distribution
/// run 32-bit programs, and 64-bit closures carry 32-bit libraries
/// (multilib glibc, wine). No other platform accepts another's code: many
/// arm64 CPUs cannot run 32-bit ARM code at all.
fn accepted(platform: &Platform) -> Option<(&'static [Machine], Option<u8>)> {
    Some(match platform.architecture.as_str() {
        "amd64" => (&[(EM_X86_64, 64, false), (EM_386, 32, false)], None),
        "386" => (&[(EM_386, 32, false)], None),
        "arm64" => (&[(EM_AARCH64, 64, false)], None),
        "arm" => {
            let version = match platform.variant.as_deref() {
                Some("v5") => 5,
                Some("v6") => 6,
                _ => 7,
            };
            (&[(EM_ARM, 32, false)], Some(version))
        }
        "riscv64" => (&[(EM_RISCV, 64, false)], None),
        "ppc64le" => (&[(EM_PPC64, 64, false)], None),
        "s390x" => (&[(EM_S390, 64, true)], None),
        _ => return None,
    })
}

/// True when an image of `platform` can run code of `arch`.
pub fn runs_on(platform: &Platform, arch: &Arch) -> bool {
    let Some((machines, arm_version)) = accepted(platform) else {
        return true;
    };
    machines.contains(&(arch.machine, arch.bits, arch.big_endian))
        && match (arm_version, arch.arm_version()) {
            (Some(variant), Some(needed)) => needed <= variant,
            _ => true,
        }
}

/// How the architecture of `platform` is called in a [`Mismatch`].
pub fn platform_arch_name(platform: &Platform) -> String {
    match platform.architecture.as_str() {
        "amd64" => "x86-64".to_owned(),
        "386" => "i386".to_owned(),
        "arm64" => "aarch64".to_owned(),
        "arm" => format!("arm{}", platform.variant.as_deref().unwrap_or("v7")),
        other => other.to_owned(),
    }
}

/// An ELF file in the image of a platform that cannot run it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{platform}: {} is {} {} ELF {}, not {}", file.path, article(&file.arch.to_string()), file.arch, file.kind, platform_arch_name(platform))]
pub struct Mismatch {
    pub platform: Platform,
    pub file: ElfFile,
}

/// The first file of `files` that an image of `platform` cannot run.
pub fn check(platform: &Platform, files: &[ElfFile]) -> Result<(), Mismatch> {
    match files.iter().find(|f| !runs_on(platform, &f.arch)) {
        Some(file) => Err(Mismatch {
            platform: platform.clone(),
            file: file.clone(),
        }),
        None => Ok(()),
    }
}

/// "a" or "an" before an architecture's name, as it is read aloud
/// ("an x86-64", "an s390x", "a riscv64").
fn article(name: &str) -> &'static str {
    match name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u' | 'x') => "an",
        _ if name.starts_with("s390") => "an",
        _ => "a",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small ELF file: the header and, with `arm_cpu`, an
    /// `.ARM.attributes` section saying that `Tag_CPU_arch` and the section
    /// header table naming it (32-bit little-endian only).
    pub(crate) fn elf_bytes(
        bits: u8,
        big_endian: bool,
        elf_type: u16,
        machine: u16,
        arm_cpu: Option<u8>,
    ) -> Vec<u8> {
        let mut f = header(bits, big_endian, elf_type, machine);
        if let Some(cpu) = arm_cpu {
            let attrs = attributes(cpu);
            f.resize(0x80, 0);
            f.extend(&attrs);
            f.resize(0x100, 0);
            let mut table = vec![0u8; 80];
            table[44..48].copy_from_slice(&SHT_ARM_ATTRIBUTES.to_le_bytes());
            table[56..60].copy_from_slice(&0x80u32.to_le_bytes());
            table[60..64].copy_from_slice(&(attrs.len() as u32).to_le_bytes());
            f.extend(table);
            f[32..36].copy_from_slice(&0x100u32.to_le_bytes());
            f[46..48].copy_from_slice(&40u16.to_le_bytes());
            f[48..50].copy_from_slice(&2u16.to_le_bytes());
        }
        f.extend(b"the rest of the program");
        f
    }

    /// An ELF header (and nothing else) of the given class, byte order,
    /// type and machine, with a section header table at `shoff`.
    fn header(bits: u8, big_endian: bool, elf_type: u16, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; if bits == 32 { 52 } else { 64 }];
        h[..4].copy_from_slice(MAGIC);
        h[4] = if bits == 32 { 1 } else { 2 };
        h[5] = if big_endian { 2 } else { 1 };
        h[6] = 1;
        let put16 = |h: &mut Vec<u8>, at: usize, v: u16| {
            let b = if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            h[at..at + 2].copy_from_slice(&b);
        };
        put16(&mut h, 16, elf_type);
        put16(&mut h, 18, machine);
        h
    }

    fn platform(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn headers_give_each_platforms_architecture() {
        // (bits, big-endian, machine, name, the one platform of the table
        // that runs it)
        let table: &[(u8, bool, u16, &str, &[&str])] = &[
            (64, false, EM_X86_64, "x86-64", &["linux/amd64"]),
            (32, false, EM_386, "i386", &["linux/386", "linux/amd64"]),
            (64, false, EM_AARCH64, "aarch64", &["linux/arm64"]),
            (64, true, EM_AARCH64, "aarch64_be", &[]),
            (
                32,
                false,
                EM_ARM,
                "arm",
                &["linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
            ),
            (32, true, EM_ARM, "armeb", &[]),
            (64, false, EM_RISCV, "riscv64", &["linux/riscv64"]),
            (32, false, EM_RISCV, "riscv32", &[]),
            (64, false, EM_PPC64, "ppc64le", &["linux/ppc64le"]),
            (64, true, EM_PPC64, "ppc64", &[]),
            (64, true, EM_S390, "s390x", &["linux/s390x"]),
            (32, true, EM_S390, "s390", &[]),
            (32, false, EM_X86_64, "x32", &[]),
            (64, true, 43, "sparc64", &[]),
            (64, false, 0x1234, "machine-4660 64-bit little-endian", &[]),
        ];
        let platforms = [
            "linux/amd64",
            "linux/386",
            "linux/arm64",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/riscv64",
            "linux/ppc64le",
            "linux/s390x",
        ];
        for &(bits, be, machine, name, runs) in table {
            for elf_type in [ET_EXEC, ET_DYN] {
                let h = Header::parse(&header(bits, be, elf_type, machine)).unwrap();
                assert_eq!((h.bits, h.big_endian, h.machine), (bits, be, machine));
                let arch = h.arch(None);
                assert_eq!(arch.to_string(), name);
                for p in platforms {
                    assert_eq!(
                        runs_on(&platform(p), &arch),
                        runs.contains(&p),
                        "{name} on {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_loadable_files_count() {
        let at = |t: u16| Header::parse(&header(64, false, t, EM_X86_64)).unwrap();
        // ET_REL (objects, kernel modules) and ET_CORE never.
        for t in [1, 4] {
            assert_eq!(at(t).loadable(b"nix/store/x/lib/libc.so.6", true), None);
        }
        for t in [ET_EXEC, ET_DYN] {
            let h = at(t);
            assert_eq!(h.loadable(b"x/bin/hello", true), Some(Kind::Executable));
            assert_eq!(
                h.loadable(b"x/lib/libc.so.6", false),
                Some(Kind::SharedLibrary)
            );
            assert_eq!(
                h.loadable(b"x/lib/_ssl.cpython-311-x86_64-linux-gnu.so", false),
                Some(Kind::SharedLibrary)
            );
            // Data: firmware, test files, a name with `.so` inside.
            assert_eq!(h.loadable(b"x/lib/firmware/dsp.elf", false), None);
            assert_eq!(h.loadable(b"x/testdata/libtiffxx.so_", false), None);
            assert_eq!(h.loadable(b"x/share/libso.dir/blob", false), None);
        }
    }

    #[test]
    fn not_elf_or_short_is_none() {
        let full = header(64, false, ET_EXEC, EM_X86_64);
        for bad in [
            &b""[..],
            b"\x7fEL",
            b"#!/bin/sh\n",
            &full[..20],
            &full[..39],
        ] {
            assert_eq!(Header::parse(bad), None, "{bad:?}");
        }
        let mut class = full.clone();
        class[4] = 3;
        assert_eq!(Header::parse(&class), None);
        let mut data = full.clone();
        data[5] = 0;
        assert_eq!(Header::parse(&data), None);
        // The 32-bit header is 52 bytes; the fields read end at 50.
        assert!(Header::parse(&header(32, false, ET_EXEC, EM_386)).is_some());
    }

    /// An `.ARM.attributes` section: `aeabi`, File, CPU_name "7-A",
    /// CPU_arch `cpu`, ARM_ISA_use 1.
    fn attributes(cpu: u8) -> Vec<u8> {
        let mut file = vec![1u8, 0, 0, 0, 0];
        file.extend([5]);
        file.extend(b"7-A\0");
        file.extend([6, cpu, 8, 1]);
        let size = file.len() as u32;
        file[1..5].copy_from_slice(&size.to_le_bytes());
        let mut sub = vec![0u8; 4];
        sub.extend(b"aeabi\0");
        sub.extend(&file);
        let len = sub.len() as u32;
        sub[..4].copy_from_slice(&len.to_le_bytes());
        let mut section = vec![b'A'];
        // A vendor section of another vendor first, skipped.
        let mut other = vec![0u8; 4];
        other.extend(b"gnu\0\x01\x02");
        let olen = other.len() as u32;
        other[..4].copy_from_slice(&olen.to_le_bytes());
        section.extend(other);
        section.extend(sub);
        section
    }

    #[test]
    fn arm_versions_come_from_the_attributes() {
        // (Tag_CPU_arch, name, runs on v5, v6, v7)
        let table = [
            (4, "armv5te", [true, true, true]),
            (6, "armv6", [false, true, true]),
            (9, "armv6k", [false, true, true]),
            (10, "armv7", [false, false, true]),
            (14, "armv8-a (32-bit)", [false, false, false]),
            (99, "arm (Tag_CPU_arch 99)", [false, false, false]),
        ];
        let h = Header::parse(&header(32, false, ET_DYN, EM_ARM)).unwrap();
        assert!(h.is_arm());
        for (cpu, name, runs) in table {
            let found = arm_cpu_arch(&attributes(cpu), false);
            assert_eq!(found, Some(cpu));
            let arch = h.arch(found);
            assert_eq!(arch.to_string(), name);
            for (variant, run) in ["linux/arm/v5", "linux/arm/v6", "linux/arm/v7"]
                .iter()
                .zip(runs)
            {
                assert_eq!(runs_on(&platform(variant), &arch), run, "{name} {variant}");
            }
            assert!(!runs_on(&platform("linux/arm64"), &arch));
        }
        // Damaged or foreign sections say nothing.
        let good = attributes(10);
        for bad in [&good[..1], &good[..good.len() - 3], b"B\0\0\0\0", b""] {
            assert_eq!(arm_cpu_arch(bad, false), None, "{bad:?}");
        }
        // Only ARM keeps the attribute.
        let x86 = Header::parse(&header(64, false, ET_EXEC, EM_X86_64)).unwrap();
        assert_eq!(x86.arch(Some(10)).arm_cpu, None);
    }

    #[test]
    fn section_headers_find_the_attributes() {
        let mut h = header(32, false, ET_EXEC, EM_ARM);
        // Three 40-byte section headers at 0x100: null, .text, .ARM.attributes.
        h[32..36].copy_from_slice(&0x100u32.to_le_bytes());
        h[46..48].copy_from_slice(&40u16.to_le_bytes());
        h[48..50].copy_from_slice(&3u16.to_le_bytes());
        let parsed = Header::parse(&h).unwrap();
        assert_eq!(parsed.section_headers(), Some((0x100, 120)));
        let mut table = vec![0u8; 120];
        table[40 + 4..40 + 8].copy_from_slice(&1u32.to_le_bytes());
        table[80 + 4..80 + 8].copy_from_slice(&SHT_ARM_ATTRIBUTES.to_le_bytes());
        table[80 + 16..80 + 20].copy_from_slice(&0x80u32.to_le_bytes());
        table[80 + 20..80 + 24].copy_from_slice(&0x2au32.to_le_bytes());
        assert_eq!(arm_attributes(&parsed, &table), Some((0x80, 0x2a)));
        assert_eq!(arm_attributes(&parsed, &table[..80]), None);
        // No table.
        let bare = Header::parse(&header(32, false, ET_EXEC, EM_ARM)).unwrap();
        assert_eq!(bare.section_headers(), None);
    }

    #[test]
    fn mismatch_names_platform_file_and_both_architectures() {
        let file = |machine, bits| ElfFile {
            path: "/nix/store/aaaa-hello/bin/hello".into(),
            arch: Header::parse(&header(bits, false, ET_EXEC, machine))
                .unwrap()
                .arch(None),
            kind: Kind::Executable,
        };
        let files = [file(EM_X86_64, 64)];
        assert_eq!(check(&platform("linux/amd64"), &files), Ok(()));
        assert_eq!(
            check(&platform("linux/arm64"), &files)
                .unwrap_err()
                .to_string(),
            "linux/arm64/v8: /nix/store/aaaa-hello/bin/hello is an x86-64 ELF executable, not aarch64"
        );
        let riscv = [file(EM_RISCV, 64)];
        assert_eq!(
            check(&platform("linux/arm/v6"), &riscv)
                .unwrap_err()
                .to_string(),
            "linux/arm/v6: /nix/store/aaaa-hello/bin/hello is a riscv64 ELF executable, not armv6"
        );
        // A platform without a table refuses nothing; none is known today.
        let odd = Platform {
            os: "linux".into(),
            architecture: "mips64le".into(),
            variant: None,
        };
        assert_eq!(check(&odd, &files), Ok(()));
    }
}
