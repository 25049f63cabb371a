//! `build --push`: the layout built, then pushed in the same command to a
//! real Distribution registry on 127.0.0.1.
//!
//! What must hold: the registry's tag names the layout's image index (the
//! same digest), and the layout is the one a build without --push writes;
//! a second build --push after a change uploads only the new blobs and
//! asks for none of those the tag already names; a registry that is not
//! there fails the command (exit 1) with one line that says the layout is
//! written and how to push it, and the layout verifies. To an S3 bucket
//! (a real Garage), the static registry serves the layout's index under
//! the tag.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::garage::{Garage, WEB_BUCKET};
use common::publish::*;
use common::*;
use serde_json::Value;

/// The digest of the manifest or index `reference` names in the registry,
/// as skopeo reads it.
fn remote_digest(reference: &str) -> String {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"));
    let o = run_bounded(cmd, Duration::from_secs(60), "skopeo inspect --raw");
    assert!(o.status.success(), "skopeo inspect: {}", stderr(&o));
    sha256_digest(&o.stdout)
}

fn blobs_with(report: &Value, status: &str) -> Vec<String> {
    array_of(&report["blobs"])
        .iter()
        .filter(|b| str_of(&b["status"]) == status)
        .map(|b| str_of(&b["digest"]).to_owned())
        .collect()
}

#[test]
fn build_push_puts_the_layouts_image_under_the_tag() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let dest = format!("{}/app", reg.addr());
    // The registry flags serve --push (as they serve --from and --previous).
    let (out, o) = golden_variant(
        &work.join("pushed"),
        "1",
        &[
            "--json",
            "--push",
            &dest,
            "--creds",
            "a:b",
            "--timeout",
            "20s",
        ],
    );
    let report = ok_json(&o, "nixoci build --push");
    let err = stderr(&o);
    assert!(err.contains("wrote ") && err.contains("pushed "), "{err}");

    // The tag defaults to the build's; the registry names the layout's
    // index, whose digest the report gives in both places.
    let index = str_of(&report["index"]["digest"]);
    let push = &report["push"];
    assert_eq!(push["version"], 1, "{push:#}");
    assert_eq!(str_of(&push["destination"]), format!("{dest}:1"));
    assert_eq!(str_of(&push["digest"]), index);
    assert_eq!(remote_digest(&format!("{dest}:1")), index);
    assert_eq!(
        str_of(&Layout(out.clone()).tag_descriptor("app:1")["digest"]),
        index
    );
    // Every blob went up (an empty repository).
    let blobs = array_of(&push["blobs"]).len();
    assert_eq!(push["uploaded"], blobs as u64, "{push:#}");

    // The layout is the one a build without --push writes, byte for byte.
    let (plain, o) = golden_variant(&work.join("plain"), "1", &["--json"]);
    let plain_report = ok_json(&o, "nixoci build");
    assert!(plain_report.get("push").is_none(), "{plain_report:#}");
    assert_eq!(str_of(&plain_report["index"]["digest"]), index);
    assert_eq!(layout_digests(&out), layout_digests(&plain));
    assert_eq!(
        fs::read(out.join("index.json")).expect("index.json"),
        fs::read(plain.join("index.json")).expect("index.json")
    );

    let o = skopeo_pull(&format!("{dest}:1"), None, &work.join("pulled"));
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
}

#[test]
fn a_second_build_push_uploads_only_the_new_blobs() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let reg = Registry::start(&work.join("registry"), false);
    let dest = format!("{}/app:1", reg.addr());
    let dir = work.join("app");
    let (_, o) = golden_variant(&dir, "1", &["--json", "--push", &dest]);
    let first = ok_json(&o, "the first build --push");
    let first_blobs = blobs_with(&first["push"], "uploaded");
    let heads = |lines: &[String]| count(lines, "\"HEAD /v2/app/blobs/");
    let before = heads(&reg.access_lines());

    // The change: a new config per platform, the same layers; into the
    // same output and cache, as an update is built.
    let (out, o) = golden_variant(&dir, "2", &["--json", "--push", &dest]);
    let second = ok_json(&o, "the second build --push");
    let push = &second["push"];
    let uploaded = blobs_with(push, "uploaded");
    assert_eq!(uploaded.len(), 2, "one new config per platform: {push:#}");
    assert!(
        uploaded.iter().all(|b| !first_blobs.contains(b)),
        "{push:#}"
    );
    assert_eq!(push["uploaded"], 2, "{push:#}");
    assert_eq!(push["mounted"], 0, "{push:#}");
    let skipped = blobs_with(push, "skipped");
    assert_eq!(push["skipped"], skipped.len() as u64, "{push:#}");
    assert_eq!(skipped.len() + 2, array_of(&push["blobs"]).len());
    // The blobs the tag named were known before the push: not asked for.
    for b in array_of(&push["blobs"]) {
        if str_of(&b["status"]) == "skipped" {
            assert_eq!(b["attempts"], 0, "{b:#}");
        }
    }
    assert_eq!(heads(&reg.access_lines()) - before, 2);

    let index = str_of(&second["index"]["digest"]);
    assert_eq!(str_of(&push["digest"]), index);
    assert_eq!(remote_digest(&dest), index);
    assert_eq!(
        str_of(&Layout(out).tag_descriptor("app:1")["digest"]),
        index
    );
    let o = skopeo_pull(&dest, None, &work.join("pulled"));
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
}

#[test]
fn a_registry_that_is_not_there_fails_after_the_layout_is_written() {
    let tmp = tempdir();
    let work = tmp.path();
    // A port nothing listens on.
    let dest = format!("127.0.0.1:{}/app:1", free_port());
    let (out, o) = golden_variant(&work.join("app"), "1", &["--json", "--push", &dest]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // Notes of the retries (as `nixoci push` gives them), then one error.
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("nixoci: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(err.ends_with(&format!("{}\n", errors[0])), "{err}");
    let layout = format!("{}:app:1", out.display());
    assert!(
        errors[0].contains(&format!("{layout} is written but not pushed"))
            && errors[0].contains(&format!("`nixoci push {layout} {dest}`")),
        "{err}"
    );
    // One JSON document on stdout: the error.
    let json: Value = serde_json::from_slice(&o.stdout).expect("the error as JSON");
    assert_eq!(json["error"]["kind"], "failed", "{json:#}");

    // The layout is complete, and the command it names pushes it.
    run(nixoci().arg("verify").arg(&layout)).success();
    let (plain, o) = golden_variant(&work.join("plain"), "1", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(layout_digests(&out), layout_digests(&plain));
}

#[test]
fn build_push_to_a_bucket_writes_the_static_registry() {
    if !require(&["garage"]) {
        return;
    }
    let tmp = tempdir();
    let work = tmp.path();
    let g = Garage::start(&work.join("garage"));
    let dir = work.join("app");
    let dest = format!("s3://{WEB_BUCKET}/app");
    let build_s3 = |v: &str| {
        let (_, o) = golden_variant_with(&dir, v, &["--json", "--push", &dest], |c| {
            g.env(c);
        });
        ok_json(&o, "nixoci build --push s3://")
    };
    let first = build_s3("1");
    let push = &first["push"];
    assert_eq!(str_of(&push["destination"]), format!("{dest}:1"));
    assert_eq!(push["uploaded"], array_of(&push["blobs"]).len() as u64);
    let index = str_of(&first["index"]["digest"]);
    assert_eq!(str_of(&push["digest"]), index);
    // The web endpoint serves the layout's index under the tag.
    let (status, _, body) = g.web_get("/v2/app/manifests/1");
    assert_eq!(status, 200);
    assert_eq!(sha256_digest(&body), index);

    // An update: only its new configs go up.
    let second = build_s3("2");
    let push = &second["push"];
    assert_eq!(push["uploaded"], 2, "{push:#}");
    let (status, _, body) = g.web_get("/v2/app/manifests/1");
    assert_eq!(status, 200);
    assert_eq!(sha256_digest(&body), str_of(&second["index"]["digest"]));
}

#[test]
fn build_push_refuses_what_does_not_go_together() {
    let tmp = tempdir();
    let work = tmp.path();
    for (extra, says) in [
        (&["--push", "127.0.0.1:1/Bad Name"][..], "--push"),
        (&["--push", "s3://Bad_Bucket/app:1"][..], "--push"),
        (
            &["--push", "127.0.0.1:1/app", "--s3-region", "garage"][..],
            "--s3-endpoint and --s3-region are for a --push s3:// destination",
        ),
        (
            &["--s3-region", "garage"][..],
            "--s3-endpoint and --s3-region are for a --push s3:// destination",
        ),
        (
            &["--push", "s3://bucket/app", "--creds", "a:b"][..],
            "--creds is for registries",
        ),
    ] {
        let (out, o) = golden_variant(&work.join("app"), "1", extra);
        let r = Run {
            command: format!("build {extra:?}"),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: stderr(&o),
        };
        r.refused(says);
        assert!(!out.exists(), "nothing is built on a usage error");
    }
}
