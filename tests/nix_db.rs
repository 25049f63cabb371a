//! `layer::nix_db` against the real Nix (issue #14): the hello closure copied
//! into a temporary root with the database and root entries nixoci writes,
//! then read by Nix itself through `local?root=ROOT`.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use nixoci::closure::Closure;
use nixoci::layer::nix_db::{self, Entry, EntryKind};
use nixoci::store_path::{StoreDir, StorePath};
use rusqlite::{Connection, OpenFlags};

use common::{hello, nix, require, run};

/// The registration time the tests give: any fixed time.
const TIME: i64 = 1_700_000_000;

/// `nix path-info --json --recursive ROOT` of the real store, as a closure.
fn closure_of(root: &str) -> Closure {
    let r = run(nix().args(["path-info", "--json", "--recursive", root]));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    Closure::from_path_info_json(&StoreDir::default(), r.stdout.as_bytes()).unwrap()
}

fn store_arg(root: &Path) -> String {
    format!("local?root={}", root.display())
}

/// Writes `entries` under `root`, as a root layer would unpack.
fn unpack(root: &Path, entries: &[Entry]) {
    for e in entries {
        let path = root.join(&e.path);
        match &e.kind {
            EntryKind::Directory => fs::create_dir_all(&path).unwrap(),
            EntryKind::File(bytes) => fs::write(&path, bytes).unwrap(),
            EntryKind::Symlink(target) => symlink(target, &path).unwrap(),
        }
        if !matches!(e.kind, EntryKind::Symlink(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(e.mode)).unwrap();
        }
    }
}

/// A temporary directory that can be removed although it holds read-only
/// store paths.
struct Root(tempfile::TempDir);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.0.path())
            .status();
    }
}

/// `type, name, tbl_name, rootpage, sql` of every schema object.
type SchemaRow = (String, String, String, i64, Option<String>);

fn schema_of(file: &Path) -> Vec<SchemaRow> {
    let db = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = db
        .prepare("select type, name, tbl_name, rootpage, sql from sqlite_master order by rowid")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn nix_sees_the_closure_as_a_valid_store() {
    if !require(&["nix", "nix-store", "cp", "chmod", "busybox"]) {
        return;
    }
    let h = hello();
    let closure = closure_of(&h.amd64);
    let root_path = StorePath::from_absolute(&h.amd64).unwrap();
    assert_eq!(closure.paths.len(), h.closure_amd64.len());

    let root = Root(tempfile::tempdir().unwrap());
    let store = root.0.path().join("nix/store");
    fs::create_dir_all(&store).unwrap();
    for path in closure.paths.keys() {
        let r = run(Command::new("cp").arg("-a").arg(path.as_str()).arg(&store));
        assert_eq!(r.code, Some(0), "{}", r.describe());
    }
    let entries = nix_db::root_entries(&closure, std::slice::from_ref(&root_path), TIME).unwrap();
    unpack(root.0.path(), &entries);
    // Two builds, the same bytes.
    let db = fs::read(root.0.path().join(nix_db::DB_PATH)).unwrap();
    assert_eq!(nix_db::database(&closure, TIME).unwrap(), db);

    // Every path listed with its hash, size and references, read by Nix.
    let r = run(nix()
        .args(["path-info", "--json", "--recursive", "--store"])
        .arg(store_arg(root.0.path()))
        .arg(&h.amd64));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let seen = Closure::from_path_info_json(&StoreDir::default(), r.stdout.as_bytes()).unwrap();
    assert_eq!(seen, closure);
    let value: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    for entry in value.as_array().unwrap() {
        assert_eq!(entry["registrationTime"], TIME, "{entry}");
    }

    // The NAR hashes are those of the copied contents.
    let r = run(nix()
        .args(["store", "verify", "--no-trust", "--recursive", "--store"])
        .arg(store_arg(root.0.path()))
        .arg(&h.amd64));
    assert_eq!(r.code, Some(0), "{}", r.describe());

    // The garbage collector keeps the closure: the root is a root.
    let r = run(Command::new("nix-store")
        .env("NIX_CONFIG", common::nix_config())
        .args(["--gc", "--print-dead", "--store"])
        .arg(store_arg(root.0.path())));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    for path in closure.paths.keys() {
        assert!(
            !r.stdout.contains(path.as_str()) && !r.stderr.contains(path.as_str()),
            "{path} would be collected:\n{}",
            r.describe()
        );
    }
    // Without the root, the same command would collect them all.
    fs::remove_dir_all(root.0.path().join(nix_db::GCROOTS_DIR)).unwrap();
    let r = run(Command::new("nix-store")
        .env("NIX_CONFIG", common::nix_config())
        .args(["--gc", "--print-dead", "--store"])
        .arg(store_arg(root.0.path())));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    for path in closure.paths.keys() {
        assert!(
            r.stdout.contains(path.as_str()) || r.stderr.contains(path.as_str()),
            "{path} would not be collected without its root:\n{}",
            r.describe()
        );
    }

    // And `store verify` above did check the hashes: a wrong one fails.
    let db = Connection::open(root.0.path().join(nix_db::DB_PATH)).unwrap();
    let zeros = format!("sha256:{}", "0".repeat(64));
    let changed = db
        .execute(
            "update ValidPaths set hash = ?1 where path = ?2",
            (&zeros, &h.amd64),
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let r = run(nix()
        .args(["store", "verify", "--no-trust", "--store"])
        .arg(store_arg(root.0.path()))
        .arg(&h.amd64));
    assert_ne!(r.code, Some(0), "{}", r.describe());
    assert!(r.stderr.contains(&h.amd64), "{}", r.describe());
}

#[test]
fn schema_is_the_one_nix_creates() {
    if !require(&["nix"]) {
        return;
    }
    // A store Nix creates from nothing.
    let fresh = Root(tempfile::tempdir().unwrap());
    let r = run(nix()
        .args(["path-info", "--all", "--store"])
        .arg(store_arg(fresh.0.path())));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let db_dir = fresh.0.path().join("nix/var/nix/db");
    assert_eq!(
        fs::read(db_dir.join("schema")).unwrap(),
        nix_db::SCHEMA_VERSION
    );

    let empty = Closure {
        version: nixoci::closure::CLOSURE_VERSION,
        store_dir: StoreDir::default(),
        paths: Default::default(),
    };
    let ours = tempfile::tempdir().unwrap();
    let file = ours.path().join("db.sqlite");
    fs::write(&file, nix_db::database(&empty, TIME).unwrap()).unwrap();
    assert_eq!(schema_of(&file), schema_of(&db_dir.join("db.sqlite")));
}

/// `nixoci build --nix-db`: unpacked by umoci, the image is a store Nix
/// reads: the closure listed with its hashes, registered at time 1; two
/// builds give the same root layer.
#[test]
fn build_with_nix_db_gives_an_image_nix_reads() {
    if !require(&["nix", "umoci", "root", "busybox"]) {
        return;
    }
    let h = hello();
    let work = Root(tempfile::tempdir().unwrap());
    let build = |name: &str| {
        let out = work.0.path().join(name);
        let report = run(common::nixoci()
            .args(["build", "--nix-db", "--json", "--tag", "t"])
            .arg("--platform")
            .arg(format!("linux/amd64={}", h.amd64))
            .arg("-o")
            .arg(&out))
        .success()
        .json();
        (out, report)
    };
    let (out, report) = build("a.oci");
    let (_, again) = build("b.oci");
    let top = |r: &serde_json::Value| {
        r["platforms"][0]["layers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone()
    };
    assert_eq!(top(&report), top(&again), "the root layer is reproducible");

    let manifest = &report["platforms"][0]["manifest"];
    let descriptor = serde_json::json!({
        "mediaType": manifest["mediaType"],
        "digest": manifest["digest"],
        "size": manifest["size"],
    });
    let bundle = common::umoci_unpack(&out, &descriptor, work.0.path(), "db");
    let rootfs = bundle.join("rootfs");
    let r = run(nix()
        .args(["path-info", "--json", "--recursive", "--store"])
        .arg(store_arg(&rootfs))
        .arg(&h.amd64));
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let seen = Closure::from_path_info_json(&StoreDir::default(), r.stdout.as_bytes()).unwrap();
    assert_eq!(seen, closure_of(&h.amd64));
    let value: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    for entry in value.as_array().unwrap() {
        assert_eq!(entry["registrationTime"], 1, "{entry}");
    }
    let r = run(nix()
        .args(["store", "verify", "--no-trust", "--recursive", "--store"])
        .arg(store_arg(&rootfs))
        .arg(&h.amd64));
    assert_eq!(r.code, Some(0), "{}", r.describe());
}
