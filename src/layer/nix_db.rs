//! The Nix database of `--nix-db` (issue #14): the files that make `nix`
//! inside an image see the image's closure as a valid store, as
//! `dockerTools`' `includeNixDB` and nix2container's
//! `initializeNixDatabase` do, but byte-for-byte reproducible.
//!
//! [`database`] gives the bytes of `/nix/var/nix/db/db.sqlite`, and
//! [`root_entries`] every entry the root layer needs for it: the database,
//! the `schema` file (`10`, Nix 2.x's schema version, written as Nix writes
//! it: no newline) and a garbage collector root per image root under
//! `/nix/var/nix/gcroots/nixoci/`, so that `nix-collect-garbage` in the
//! container keeps the image's own closure.
//!
//! The database is Nix's schema (`schema.sql` of Nix 2.x, checked against
//! a fresh database of Nix 2.8 by `tests/nix_db.rs`): `ValidPaths`,
//! `Refs`, `DerivationOutputs`, their indices and the `DeleteSelfRefs`
//! trigger, with one `ValidPaths` row per store path and one `Refs` row per
//! reference (self-references included, as Nix records them). A row holds
//! the path, its NAR hash as `sha256:<base16>` (the form Nix stores), its
//! NAR size and the given registration time; `deriver`, `ultimate`, `sigs`
//! and `ca` are NULL, which a closure does not carry (so `nix store verify`
//! in the container finds no signatures, as with `dockerTools`). Nix opens
//! it as its own: with a writable root it switches the file to WAL on first
//! use, as it does any database.
//!
//! # Reproducible bytes
//!
//! The file is written by SQLite itself (rusqlite, `bundled`: SQLite is
//! compiled from the `libsqlite3-sys` crate, no system library), into a
//! fresh temporary directory, then read back. Its bytes depend only on what
//! is written and in which order, and on SQLite's version:
//!
//! - Settings fixed before the first table: page size [`PAGE_SIZE`] (Nix's
//!   default), `auto_vacuum = NONE`, `encoding = UTF-8`, `journal_mode =
//!   DELETE` (the header says rollback journal, bytes 18 and 19 are 1; no
//!   `-wal` file whose salts are random), `secure_delete = ON`.
//! - One write transaction creates the schema and inserts every row, so the
//!   header's file change counter and version-valid-for number are both 1
//!   and the schema cookie counts the same statements on every run.
//! - Rows go in sorted store path order (the closure's `BTreeMap`), with ids
//!   1, 2, … in that order, references in the same order: the input order of
//!   a closure cannot reach the file.
//! - Nothing else reaches the file: not the temporary path, not the clock,
//!   not the process. The rollback journal (whose header has a random
//!   nonce) is deleted at commit.
//! - The header records the SQLite version that wrote the file (bytes 96 to
//!   99, [`rusqlite::version_number`]); it is pinned by the `libsqlite3-sys`
//!   version in `Cargo.lock`. Updating that crate may change the bytes: the
//!   golden digest test of this module then fails, and the change is a
//!   deliberate edit recorded in the CHANGELOG.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use crate::closure::{Closure, ClosureError};
use crate::store_path::StorePath;

/// The content of `/nix/var/nix/db/schema`: Nix 2.x's schema version,
/// without a newline, as Nix writes it.
pub const SCHEMA_VERSION: &[u8] = b"10";

/// The database page size: SQLite's default, which Nix keeps.
pub const PAGE_SIZE: u32 = 4096;

/// Where the database goes in the image, relative to `/`.
pub const DB_PATH: &str = "nix/var/nix/db/db.sqlite";
/// Where the schema version goes in the image, relative to `/`.
pub const SCHEMA_PATH: &str = "nix/var/nix/db/schema";
/// The directory of nixoci's garbage collector roots, relative to `/`.
pub const GCROOTS_DIR: &str = "nix/var/nix/gcroots/nixoci";

/// Mode of the directories of [`root_entries`], as Nix creates them.
pub const DIR_MODE: u32 = 0o755;
/// Mode of the database and schema files, as Nix creates them.
pub const FILE_MODE: u32 = 0o644;
/// Mode of the garbage collector root symlinks.
pub const SYMLINK_MODE: u32 = 0o777;

/// Nix's `schema.sql` (Nix 2.0 to 2.x, schema version 10), statement by
/// statement. SQLite stores each statement's text from the name on, so the
/// whitespace and comments are Nix's, and `sqlite_master` reads as in a
/// database Nix created.
const SCHEMA: &str = r#"create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// Why the Nix database could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NixDbError {
    #[error("{path}: its NAR hash cannot be registered")]
    NarHash {
        path: String,
        #[source]
        source: ClosureError,
    },
    #[error("{path}: NAR size {size} is too large for the Nix database")]
    NarSize { path: String, size: u64 },
    #[error("{path} refers to {reference}, which is not in the closure")]
    Dangling { path: String, reference: String },
    #[error("the garbage collector root {0} is not in the closure")]
    MissingRoot(String),
    #[error("writing the Nix database in {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the Nix database: {what}")]
    Sqlite {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the Nix database took the {pragma} {found}, not {expected}")]
    Setting {
        pragma: &'static str,
        expected: String,
        found: String,
    },
}

/// One `ValidPaths` row and its references, by row id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row<'a> {
    id: i64,
    path: &'a str,
    hash: String,
    nar_size: i64,
    references: Vec<i64>,
}

/// The rows of `closure`, ids from 1 in store path order. Pure.
fn rows(closure: &Closure) -> Result<Vec<Row<'_>>, NixDbError> {
    let ids: std::collections::BTreeMap<&StorePath, i64> = closure.paths.keys().zip(1..).collect();
    closure
        .paths
        .iter()
        .map(|(path, info)| {
            let hash = info
                .nar_hash_base16()
                .map_err(|source| NixDbError::NarHash {
                    path: path.to_string(),
                    source,
                })?;
            let nar_size = i64::try_from(info.nar_size).map_err(|_| NixDbError::NarSize {
                path: path.to_string(),
                size: info.nar_size,
            })?;
            let references = info
                .references
                .iter()
                .map(|r| {
                    ids.get(r).copied().ok_or_else(|| NixDbError::Dangling {
                        path: path.to_string(),
                        reference: r.to_string(),
                    })
                })
                .collect::<Result<Vec<i64>, NixDbError>>()?;
            Ok(Row {
                id: ids[path],
                path: path.as_str(),
                hash,
                nar_size,
                references,
            })
        })
        .collect()
}

/// The bytes of a Nix `db.sqlite` registering every path of `closure`, each
/// with `registration_time` (seconds since 1970: the image's creation time,
/// or 1). Deterministic: the same closure and time give the same bytes on
/// any machine, with the SQLite version pinned in `Cargo.lock` (see the
/// module documentation).
///
/// Writes and removes a temporary directory under the system's.
pub fn database(closure: &Closure, registration_time: i64) -> Result<Vec<u8>, NixDbError> {
    let rows = rows(closure)?;
    let dir = tempfile::Builder::new()
        .prefix("nixoci-nix-db")
        .tempdir()
        .map_err(|source| NixDbError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let file = dir.path().join("db.sqlite");
    write_database(&file, &rows, registration_time)?;
    let bytes = fs::read(&file).map_err(|source| NixDbError::Io {
        path: file.clone(),
        source,
    })?;
    let dir_path = dir.path().to_owned();
    dir.close().map_err(|source| NixDbError::Io {
        path: dir_path,
        source,
    })?;
    Ok(bytes)
}

fn sqlite(what: &'static str) -> impl FnOnce(rusqlite::Error) -> NixDbError {
    move |source| NixDbError::Sqlite { what, source }
}

/// Writes a new database at `file` (which must not exist) and closes it.
fn write_database(file: &Path, rows: &[Row<'_>], registration_time: i64) -> Result<(), NixDbError> {
    let mut db = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite("creating the file"))?;

    // Settings that decide the bytes, before the first page is written.
    for (pragma, value) in [
        ("page_size", PAGE_SIZE.to_string()),
        ("auto_vacuum", "NONE".to_owned()),
        ("encoding", "UTF-8".to_owned()),
        ("secure_delete", "ON".to_owned()),
        ("foreign_keys", "ON".to_owned()),
        // Only how hard SQLite waits for the disk; no effect on the bytes.
        ("synchronous", "OFF".to_owned()),
    ] {
        db.pragma_update(None, pragma, &value)
            .map_err(sqlite("setting the file format"))?;
    }
    let mode: String = db
        .pragma_update_and_check(None, "journal_mode", "DELETE", |row| row.get(0))
        .map_err(sqlite("setting the journal mode"))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(NixDbError::Setting {
            pragma: "journal_mode",
            expected: "delete".to_owned(),
            found: mode,
        });
    }

    let tx = db.transaction().map_err(sqlite("starting a transaction"))?;
    tx.execute_batch(SCHEMA)
        .map_err(sqlite("creating Nix's schema"))?;
    {
        let mut path_stmt = tx
            .prepare(
                "insert into ValidPaths (id, path, hash, registrationTime, narSize) \
                 values (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(sqlite("preparing the path insert"))?;
        for row in rows {
            path_stmt
                .execute(params![
                    row.id,
                    row.path,
                    row.hash,
                    registration_time,
                    row.nar_size
                ])
                .map_err(sqlite("inserting a path"))?;
        }
        let mut ref_stmt = tx
            .prepare("insert into Refs (referrer, reference) values (?1, ?2)")
            .map_err(sqlite("preparing the reference insert"))?;
        for row in rows {
            for reference in &row.references {
                ref_stmt
                    .execute(params![row.id, reference])
                    .map_err(sqlite("inserting a reference"))?;
            }
        }
    }
    tx.commit().map_err(sqlite("committing"))?;

    let page_size: u32 = db
        .pragma_query_value(None, "page_size", |row| row.get(0))
        .map_err(sqlite("reading the page size"))?;
    if page_size != PAGE_SIZE {
        return Err(NixDbError::Setting {
            pragma: "page_size",
            expected: PAGE_SIZE.to_string(),
            found: page_size.to_string(),
        });
    }
    db.close().map_err(|(_, source)| NixDbError::Sqlite {
        what: "closing",
        source,
    })
}

/// What an entry of [`root_entries`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Vec<u8>),
    /// A symlink and its target.
    Symlink(String),
}

/// One entry the root layer needs for the Nix database. Owner 0:0, mtime
/// the layer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to `/`, without a trailing `/`: `nix/var/nix/db/db.sqlite`.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
}

/// Every entry the root layer needs so that `nix` in the image sees
/// `closure` as a valid store: the directories from `nix/var` down (the
/// layer's tar rules already write `nix/`), `db/db.sqlite` ([`database`]),
/// `db/schema` ([`SCHEMA_VERSION`]), and under [`GCROOTS_DIR`] a symlink
/// `HASH-NAME -> /nix/store/HASH-NAME` per root, so that the garbage
/// collector in the container keeps what the image holds.
///
/// Sorted by path, parents before children, so a tar writer can take them
/// in order. Nix creates the rest of `/nix/var/nix` (`profiles`,
/// `temproots`, the `big-lock` and `reserved` files) on first use, when the
/// root file system is writable.
pub fn root_entries(
    closure: &Closure,
    roots: &[StorePath],
    registration_time: i64,
) -> Result<Vec<Entry>, NixDbError> {
    let mut roots: Vec<&StorePath> = roots.iter().collect();
    roots.sort();
    roots.dedup();
    if let Some(missing) = roots.iter().find(|r| !closure.paths.contains_key(**r)) {
        return Err(NixDbError::MissingRoot(missing.to_string()));
    }
    let db = database(closure, registration_time)?;
    let dir = |path: &str| Entry {
        path: path.to_owned(),
        kind: EntryKind::Directory,
        mode: DIR_MODE,
    };
    let file = |path: &str, bytes: Vec<u8>| Entry {
        path: path.to_owned(),
        kind: EntryKind::File(bytes),
        mode: FILE_MODE,
    };
    let mut entries = vec![
        dir("nix/var"),
        dir("nix/var/nix"),
        dir("nix/var/nix/db"),
        file(DB_PATH, db),
        file(SCHEMA_PATH, SCHEMA_VERSION.to_vec()),
        dir("nix/var/nix/gcroots"),
        dir(GCROOTS_DIR),
    ];
    entries.extend(roots.into_iter().map(|root| Entry {
        path: format!("{GCROOTS_DIR}/{}", root.base_name()),
        kind: EntryKind::Symlink(root.to_string()),
        mode: SYMLINK_MODE,
    }));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::{BTreeMap, BTreeSet};

    use sha2::{Digest as _, Sha256};

    use crate::closure::PathInfo;
    use crate::store_path::StoreDir;

    const APP: &str = "/nix/store/h4yvppml6j07lw1lmsh6z8x8y5drv493-nixoci-fixture-app";
    const LIB: &str = "/nix/store/in1vmjqhx09bfq0v68dpskwccf0wgpf2-nixoci-fixture-lib";
    const BUSYBOX: &str = "/nix/store/zpya58m9bxib49ddjq6jdk22xiy6219w-busybox";
    const NOPE: &str = "/nix/store/00000000000000000000000000000000-nope";

    /// (path, NAR hash as SRI, as base16, size, references)
    const PATHS: [(&str, &str, &str, u64, &[&str]); 3] = [
        (
            APP,
            "sha256-NTYkaUID074EzDSWBhDU4HVo5MubI1PI26vNyX+agHI=",
            "353624694203d3be04cc34960610d4e07568e4cb9b2353c8dbabcdc97f9a8072",
            632,
            &[APP, LIB, BUSYBOX],
        ),
        (
            LIB,
            "sha256-+5dCUWRZvxhgYxeMkOjR7naGQyV75SvE3mnFDxuhwaE=",
            "fb9742516459bf186063178c90e8d1ee768643257be52bc4de69c50f1ba1c1a1",
            512,
            &[BUSYBOX],
        ),
        (
            BUSYBOX,
            // nix32, as older closures may carry it.
            "sha256:1q8d572y0czwykhyh20djy5lqs7f6ckbcr43ynpbrn3l7blgvb6z",
            "dfacfde83a74d8bcaef58364b62633ee684c8b970d08e8e1f4fc33e0c5290de1",
            1982760,
            &[],
        ),
    ];

    /// The sha256 of `database(&closure(), 1)`. Changes only with the
    /// schema, the rows or the SQLite version in Cargo.lock: a deliberate
    /// edit, recorded in the CHANGELOG.
    const GOLDEN_SHA256: &str = "4b67ac7a6555181029beb4ebc40d21c2372012f97fb510fdb96e641693f967b4";

    fn sp(path: &str) -> StorePath {
        StoreDir::default().parse(path).unwrap()
    }

    fn closure() -> Closure {
        let paths = PATHS
            .iter()
            .map(|(path, sri, _, size, refs)| {
                let info = PathInfo {
                    path: sp(path),
                    nar_hash: (*sri).to_owned(),
                    nar_size: *size,
                    references: refs.iter().copied().map(sp).collect(),
                };
                (sp(path), info)
            })
            .collect();
        Closure {
            version: crate::closure::CLOSURE_VERSION,
            store_dir: StoreDir::default(),
            paths,
        }
    }

    /// A closure as `nix path-info --json` prints it, entries and
    /// references in the given order.
    fn closure_from_json(order: &[usize], reverse_refs: bool) -> Closure {
        let entries: Vec<serde_json::Value> = order
            .iter()
            .map(|&i| {
                let (path, sri, _, size, refs) = PATHS[i];
                let mut refs: Vec<&str> = refs.to_vec();
                if reverse_refs {
                    refs.reverse();
                }
                serde_json::json!({
                    "path": path, "narHash": sri, "narSize": size, "references": refs
                })
            })
            .collect();
        let json = serde_json::to_vec(&entries).unwrap();
        Closure::from_path_info_json(&StoreDir::default(), &json).unwrap()
    }

    /// Opens database bytes read-only from a temporary file.
    fn open(bytes: &[u8]) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.sqlite");
        fs::write(&file, bytes).unwrap();
        let db = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        (dir, db)
    }

    type PathRow = (i64, String, String, i64, Option<String>, Option<i64>);

    fn path_rows(db: &Connection) -> Vec<PathRow> {
        let mut stmt = db
            .prepare(
                "select id, path, hash, registrationTime, deriver, narSize \
                 from ValidPaths order by id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn references(db: &Connection) -> BTreeMap<String, BTreeSet<String>> {
        let mut stmt = db
            .prepare(
                "select a.path, b.path from Refs \
                 join ValidPaths a on a.id = referrer join ValidPaths b on b.id = reference",
            )
            .unwrap();
        let pairs: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            map.entry(from).or_default().insert(to);
        }
        map
    }

    fn be32(bytes: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn rows_read_back_are_the_closure() {
        for time in [1, 1_700_000_000] {
            let bytes = database(&closure(), time).unwrap();
            let (_dir, db) = open(&bytes);
            let rows = path_rows(&db);
            // Sorted store path order, ids from 1.
            let mut expected: Vec<_> = PATHS.to_vec();
            expected.sort_by_key(|p| p.0);
            assert_eq!(rows.len(), expected.len());
            for (i, (row, (path, _, hex, size, _))) in rows.iter().zip(&expected).enumerate() {
                assert_eq!(
                    row,
                    &(
                        i as i64 + 1,
                        path.to_string(),
                        format!("sha256:{hex}"),
                        time,
                        None,
                        Some(*size as i64)
                    )
                );
            }
            let expected_refs: BTreeMap<String, BTreeSet<String>> = PATHS
                .iter()
                .filter(|p| !p.4.is_empty())
                .map(|(path, _, _, _, refs)| {
                    (
                        path.to_string(),
                        refs.iter().map(|r| r.to_string()).collect(),
                    )
                })
                .collect();
            assert_eq!(references(&db), expected_refs);
            let (ultimate, sigs, ca): (Option<i64>, Option<String>, Option<String>) = db
                .query_row(
                    "select max(ultimate), max(sigs), max(ca) from ValidPaths",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!((ultimate, sigs, ca), (None, None, None));
            let outputs: i64 = db
                .query_row("select count(*) from DerivationOutputs", [], |r| r.get(0))
                .unwrap();
            assert_eq!(outputs, 0);
            let seq: i64 = db
                .query_row(
                    "select seq from sqlite_sequence where name = 'ValidPaths'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(seq, 3, "Nix's next id follows ours");
        }
    }

    #[test]
    fn schema_is_nix_schema() {
        let (_dir, db) = open(&database(&closure(), 1).unwrap());
        let mut stmt = db
            .prepare("select type, name, tbl_name from sqlite_master order by rowid")
            .unwrap();
        let objects: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected = [
            ("table", "ValidPaths", "ValidPaths"),
            ("index", "sqlite_autoindex_ValidPaths_1", "ValidPaths"),
            ("table", "sqlite_sequence", "sqlite_sequence"),
            ("table", "Refs", "Refs"),
            ("index", "sqlite_autoindex_Refs_1", "Refs"),
            ("index", "IndexReferrer", "Refs"),
            ("index", "IndexReference", "Refs"),
            ("trigger", "DeleteSelfRefs", "ValidPaths"),
            ("table", "DerivationOutputs", "DerivationOutputs"),
            (
                "index",
                "sqlite_autoindex_DerivationOutputs_1",
                "DerivationOutputs",
            ),
            ("index", "IndexDerivationOutputs", "DerivationOutputs"),
        ];
        let expected: Vec<(String, String, String)> = expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(objects, expected);
        // The file is sound and every reference points at a path.
        let integrity: String = db
            .query_row("pragma integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
        let violations: i64 = db
            .query_row("select count(*) from pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(violations, 0);
    }

    #[test]
    fn bytes_are_reproducible() {
        let a = database(&closure(), 1).unwrap();
        let b = database(&closure(), 1).unwrap();
        assert_eq!(a, b);
        // Input order cannot reach the bytes: paths and references in any
        // order, through the JSON parser.
        for (order, reverse_refs) in [
            (&[0, 1, 2][..], false),
            (&[2, 1, 0][..], true),
            (&[1, 2, 0][..], false),
        ] {
            assert_eq!(
                database(&closure_from_json(order, reverse_refs), 1).unwrap(),
                a
            );
        }
        // The registration time is the only input besides the closure.
        assert_ne!(database(&closure(), 2).unwrap(), a);
        let digest = format!("{:x}", Sha256::digest(&a));
        assert_eq!(digest, GOLDEN_SHA256, "the golden database digest changed");
    }

    #[test]
    fn header_has_no_varying_fields() {
        let bytes = database(&closure(), 1).unwrap();
        assert_eq!(&bytes[..16], b"SQLite format 3\0");
        assert_eq!(u16::from_be_bytes([bytes[16], bytes[17]]), PAGE_SIZE as u16);
        assert_eq!((bytes[18], bytes[19]), (1, 1), "rollback journal, not WAL");
        assert_eq!(bytes.len() % PAGE_SIZE as usize, 0);
        let change_counter = be32(&bytes, 24);
        assert_eq!(change_counter, 1, "one write transaction");
        assert_eq!(be32(&bytes, 28) as usize, bytes.len() / PAGE_SIZE as usize);
        assert_eq!(be32(&bytes, 36), 0, "no free pages");
        assert_eq!(be32(&bytes, 52), 0, "no auto_vacuum");
        assert_eq!(be32(&bytes, 56), 1, "UTF-8");
        assert_eq!(be32(&bytes, 92), change_counter, "version-valid-for");
        assert_eq!(be32(&bytes, 96), rusqlite::version_number() as u32);
    }

    #[test]
    fn empty_closure_is_an_empty_store() {
        let empty = Closure {
            version: crate::closure::CLOSURE_VERSION,
            store_dir: StoreDir::default(),
            paths: BTreeMap::new(),
        };
        let (_dir, db) = open(&database(&empty, 1).unwrap());
        assert!(path_rows(&db).is_empty());
    }

    #[test]
    fn bad_closures_are_typed_errors() {
        let mut dangling = closure();
        dangling
            .paths
            .get_mut(&sp(LIB))
            .unwrap()
            .references
            .insert(sp(NOPE));
        let mut bad_hash = closure();
        bad_hash.paths.get_mut(&sp(LIB)).unwrap().nar_hash = "md5-AAAA".to_owned();
        let mut huge = closure();
        huge.paths.get_mut(&sp(LIB)).unwrap().nar_size = u64::MAX;
        let cases: [(Closure, &str); 3] = [
            (
                dangling,
                "refers to /nix/store/00000000000000000000000000000000-nope",
            ),
            (bad_hash, "its NAR hash cannot be registered"),
            (huge, "is too large for the Nix database"),
        ];
        for (closure, message) in cases {
            let err = database(&closure, 1).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
            assert!(err.to_string().contains(LIB), "{err}");
        }
    }

    #[test]
    fn root_entries_hold_the_database_and_roots() {
        let entries = root_entries(&closure(), &[sp(APP), sp(APP)], 1).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let app_root = format!("{GCROOTS_DIR}/{}", sp(APP).base_name());
        assert_eq!(
            names,
            [
                "nix/var",
                "nix/var/nix",
                "nix/var/nix/db",
                DB_PATH,
                SCHEMA_PATH,
                "nix/var/nix/gcroots",
                GCROOTS_DIR,
                app_root.as_str(),
            ]
        );
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "sorted, parents first");
        for e in &entries {
            let expected_mode = match &e.kind {
                EntryKind::Directory => DIR_MODE,
                EntryKind::File(bytes) if e.path == DB_PATH => {
                    assert_eq!(bytes, &database(&closure(), 1).unwrap());
                    FILE_MODE
                }
                EntryKind::File(bytes) => {
                    assert_eq!(bytes, b"10");
                    FILE_MODE
                }
                EntryKind::Symlink(target) => {
                    assert_eq!(target, APP);
                    SYMLINK_MODE
                }
            };
            assert_eq!(e.mode, expected_mode, "{}", e.path);
        }
        let err = root_entries(&closure(), &[sp(NOPE)], 1).unwrap_err();
        assert!(
            matches!(err, NixDbError::MissingRoot(ref p) if p == NOPE),
            "{err}"
        );
    }
}
