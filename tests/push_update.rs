//! `push` of an update to a tag the registry already holds, against a real
//! Distribution registry.
//!
//! What must hold: the blobs the tag's current image names are not asked
//! for with a `HEAD` each (only the new ones are); and when the registry
//! lost one of them under a live manifest, the manifest it refuses sends
//! the push back to a `HEAD` for every blob, which uploads the lost one, and
//! the image pulls back whole.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::publish::*;
use common::*;
use serde_json::Value;

/// The golden two-platform image with `--env V=<v>` (a new config per
/// platform for each `v`, the same layers), tagged `app:1` in `dir`.
fn layout(dir: &Path, v: &str) -> PathBuf {
    let (out, o) = golden_variant(dir, v, &[]);
    assert!(o.status.success(), "nixoci build: {}", stderr(&o));
    out
}

fn push(layout: &Path, reg: &Registry) -> Value {
    let o = output_of(nixoci().args([
        "push",
        "--json",
        layout.to_str().expect("utf-8"),
        &format!("{}/app:1", reg.addr()),
    ]));
    ok_json(&o, "nixoci push")
}

fn status_of(report: &Value, digest: &str) -> (String, u64) {
    let b = array_of(&report["blobs"])
        .iter()
        .find(|b| str_of(&b["digest"]) == digest)
        .unwrap_or_else(|| panic!("{digest} not in {report:#}"));
    (
        str_of(&b["status"]).to_owned(),
        b["attempts"].as_u64().expect("attempts"),
    )
}

fn blobs_of(report: &Value) -> Vec<String> {
    array_of(&report["blobs"])
        .iter()
        .map(|b| str_of(&b["digest"]).to_owned())
        .collect()
}

fn pulls_back(reg: &Registry, work: &Path, name: &str) {
    let o = skopeo_pull(&format!("{}/app:1", reg.addr()), None, &work.join(name));
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
}

#[test]
fn an_update_asks_only_for_the_blobs_the_tag_does_not_name() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let first = layout(&work.join("one"), "1");
    let first_blobs = blobs_of(&push(&first, &reg));
    let heads = |lines: &[String]| count(lines, "\"HEAD /v2/app/blobs/");
    let before = heads(&reg.access_lines());
    assert_eq!(
        before,
        first_blobs.len(),
        "the first push asks for each blob"
    );

    let second = layout(&work.join("two"), "2");
    let report = push(&second, &reg);
    let blobs = blobs_of(&report);
    let new: Vec<&String> = blobs.iter().filter(|b| !first_blobs.contains(b)).collect();
    assert_eq!(new.len(), 2, "one new config per platform: {new:?}");
    // Only the two new configs are asked for.
    assert_eq!(heads(&reg.access_lines()) - before, 2);
    for b in &blobs {
        let expected = if new.contains(&b) {
            ("uploaded".to_owned(), 1)
        } else {
            ("skipped".to_owned(), 0)
        };
        assert_eq!(status_of(&report, b), expected, "{b}");
    }
    pulls_back(&reg, work, "pulled");
}

#[test]
fn a_blob_the_registry_lost_under_the_tag_is_found_and_uploaded() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let first = layout(&work.join("one"), "1");
    push(&first, &reg);

    // The repository forgets one layer that its tag's manifests still name
    // (as a blob DELETE would leave it).
    let second = layout(&work.join("two"), "2");
    let layer = {
        let (_, images) = Layout(second.clone()).image("app:1");
        images[0].layers[0].clone()
    };
    let link = work
        .join("registry/data/docker/registry/v2/repositories/app/_layers/sha256")
        .join(&layer["sha256:".len()..]);
    assert!(link.is_dir(), "{} is not there", link.display());
    fs::remove_dir_all(&link).expect("removing the layer's link");

    let report = push(&second, &reg);
    assert_eq!(status_of(&report, &layer), ("uploaded".to_owned(), 1));
    let lines = reg.access_lines();
    assert!(
        count(&lines, &format!("\"HEAD /v2/app/blobs/{layer}")) >= 1,
        "{lines:#?}"
    );
    pulls_back(&reg, work, "pulled");
}
