//! Golden test: a tiny committed store tree gives exact, committed digests
//! and manifest JSON. A change here changes every user's digests: make it
//! on purpose, regenerate with `UPDATE_GOLDEN=1 cargo test --test golden`,
//! and say so in CHANGELOG.md.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

const AMD64_ROOT: &str = "/nix/store/1s2v3w4x5y6z7a8b9c0d1f2g3h4i5j6k-hello";
const ARM64_ROOT: &str = "/nix/store/2c3d4f5g6h7i8j9k0l1m2n3p4q5r6s7v-hello";

fn build(out: &Path) -> serde_json::Value {
    let fx = fixtures();
    let output = Command::new(env!("CARGO_BIN_EXE_nixoci"))
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("NIX_STORE_DIR")
        .args([
            "build",
            "--json",
            "--no-cache",
            "--tag",
            "example.org/hello:1.0",
        ])
        .args(["--platform", &format!("linux/amd64={AMD64_ROOT}")])
        .args(["--platform", &format!("linux/arm64={ARM64_ROOT}")])
        .args(["--entrypoint", "{root}/bin/hello", "--env", "GREETING=hi"])
        .arg("--closure-json")
        .arg(fx.join("closure.json"))
        .arg("--store-root")
        .arg(fx.join("root"))
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The digests that the fixture must give, as committed.
fn summary(report: &serde_json::Value, layout: &Path) -> serde_json::Value {
    let index_json = std::fs::read_to_string(layout.join("index.json")).unwrap();
    serde_json::json!({
        "indexJson": index_json,
        "index": report["index"]["digest"],
        "platforms": report["platforms"].as_array().unwrap().iter().map(|p| serde_json::json!({
            "platform": p["platform"],
            "manifest": p["manifest"]["digest"],
            "config": p["config"]["digest"],
            "layers": p["layers"],
        })).collect::<Vec<_>>(),
        "layers": report["layers"].as_array().unwrap().iter().map(|l| serde_json::json!({
            "storePaths": l["storePaths"],
            "diffId": l["diffId"],
            "digest": l["digest"],
            "size": l["size"],
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn fixture_tree_gives_committed_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hello.oci");
    let report = build(&out);
    let got = summary(&report, &out);

    let amd64 = &report["platforms"][0];
    assert_eq!(amd64["platform"], "linux/amd64");
    let manifest_hex = amd64["manifest"]["digest"].as_str().unwrap()[7..].to_owned();
    let manifest = std::fs::read_to_string(out.join("blobs/sha256").join(manifest_hex)).unwrap();

    let expected_path = fixtures().join("expected.json");
    let manifest_path = fixtures().join("manifest-amd64.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let mut text = serde_json::to_string_pretty(&got).unwrap();
        text.push('\n');
        std::fs::write(&expected_path, text).unwrap();
        std::fs::write(&manifest_path, &manifest).unwrap();
        eprintln!("golden files rewritten");
        return;
    }
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
    assert_eq!(
        got, expected,
        "digests changed; if on purpose, run UPDATE_GOLDEN=1 and record it in CHANGELOG.md"
    );
    assert_eq!(manifest, std::fs::read_to_string(&manifest_path).unwrap());

    // Two platforms share the greeting path: its layer is one blob in both.
    let layers = report["layers"].as_array().unwrap();
    let shared = layers
        .iter()
        .find(|l| l["storePaths"][0].as_str().unwrap().ends_with("-greeting"))
        .unwrap();
    for p in report["platforms"].as_array().unwrap() {
        assert!(p["layers"].as_array().unwrap().contains(&shared["digest"]));
    }
    assert_eq!(layers.len(), 3);

    let verify = Command::new(env!("CARGO_BIN_EXE_nixoci"))
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
