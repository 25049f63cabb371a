//! The S3 client and `nixoci push s3://…` against a real Garage
//! (tests/common/garage.rs): the object operations a static registry
//! needs, what clients pull through Garage's web endpoint, interrupted
//! pushes, and the errors a user meets.

mod common;

use std::fs;

use common::garage::{Garage, WEB_BUCKET};
use common::{require, tempdir};
use nixoci::oci::Digest;
use nixoci::publish::client::Body;
use nixoci::publish::s3::{PutMeta, S3Error};

#[test]
fn the_client_lists_heads_gets_puts_copies_and_deletes() {
    if !require(&["garage"]) {
        return;
    }
    let tmp = tempdir();
    let g = Garage::start(&tmp.path().join("garage"));
    let b = g.bucket(&format!("s3://{WEB_BUCKET}/pre/fix"));
    b.check().expect("the bucket and the key work");

    assert_eq!(b.head("a/x").unwrap(), None);
    assert_eq!(b.get("a/x").unwrap(), None);
    let d = Digest::of(b"hello");
    b.put_object(
        "a/x",
        PutMeta {
            content_type: "application/vnd.oci.image.index.v1+json",
            digest: Some(&d),
        },
        &Body::Bytes(b"hello"),
    )
    .unwrap();
    let info = b.head("a/x").unwrap().expect("the object is there");
    assert_eq!((info.key.as_str(), info.size), ("a/x", 5));
    assert_eq!(b.get("a/x").unwrap().as_deref(), Some(&b"hello"[..]));
    // The key is under the prefix, and the web endpoint serves it with
    // its content type and the digest as metadata.
    let (status, headers, body) = g.web_get("/pre/fix/a/x");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(
        header("x-amz-meta-docker-content-digest"),
        Some(d.to_string().as_str())
    );

    // A checksum that does not match is refused by Garage.
    let wrong = Digest::of(b"other");
    let e = b
        .put_object(
            "a/bad",
            PutMeta {
                content_type: "application/octet-stream",
                digest: Some(&wrong),
            },
            &Body::Bytes(b"hello"),
        )
        .unwrap_err();
    assert!(matches!(e, S3Error::Status { status: 400, .. }), "{e}");
    assert_eq!(b.head("a/bad").unwrap(), None);

    // Server-side copy, with a content type of its own.
    b.copy("a/x", "b/y", "application/json").unwrap();
    let (status, headers, body) = g.web_get("/pre/fix/b/y");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/json"));

    // A multipart upload: 11 MiB in parts of 5 MiB.
    let big: Vec<u8> = (0..11u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = tmp.path().join("big");
    fs::write(&file, &big).unwrap();
    let moved = std::sync::atomic::AtomicI64::new(0);
    b.put_multipart(
        "c/big",
        PutMeta {
            content_type: "application/octet-stream",
            digest: Some(&Digest::of(&big)),
        },
        &file,
        big.len() as u64,
        5 << 20,
        &|n| {
            moved.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .unwrap();
    assert_eq!(moved.into_inner(), big.len() as i64);
    assert_eq!(b.head("c/big").unwrap().unwrap().size, big.len() as u64);
    assert!(b.get("c/big").unwrap().unwrap() == big);

    // Every page of a listing: 1005 keys in pages of 1000.
    for i in 0..1005 {
        b.put(&format!("many/{i:04}"), "text/plain", &Body::Bytes(b"x"))
            .unwrap();
    }
    let listed = b.list("many/").unwrap();
    assert_eq!(listed.len(), 1005);
    assert_eq!(listed[0].key, "many/0000");
    assert_eq!(listed[1004].key, "many/1004");
    let all = b.list("").unwrap();
    let keys: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
    assert!(keys.contains(&"a/x") && keys.contains(&"b/y") && keys.contains(&"c/big"));

    b.delete("a/x").unwrap();
    b.delete("a/x").expect("deleting a missing key is no error");
    assert_eq!(b.head("a/x").unwrap(), None);
}

#[test]
fn the_client_names_a_wrong_secret_and_a_missing_bucket() {
    if !require(&["garage"]) {
        return;
    }
    let tmp = tempdir();
    let g = Garage::start(&tmp.path().join("garage"));
    let missing = g.bucket("s3://no-such-bucket");
    let e = missing.check().unwrap_err();
    assert!(matches!(e, S3Error::NoSuchBucket { .. }), "{e}");
    assert!(e.to_string().contains("no-such-bucket"), "{e}");

    use nixoci::publish::s3::{Bucket, S3Config, S3Credentials, S3Url};
    let config = S3Config {
        endpoint: url::Url::parse(&g.endpoint()).unwrap(),
        region: "garage".into(),
        credentials: S3Credentials::new(&g.key_id, "0".repeat(64), None, "the test"),
        path_style: true,
    };
    let b = Bucket::new(
        &config,
        &S3Url::parse("s3://localhost").unwrap(),
        Default::default(),
        Box::new(|_| {}),
    )
    .unwrap();
    let e = b.check().unwrap_err();
    assert!(e.is_auth(), "{e}");
    let shown = nixoci::error::error_chain(&e);
    assert!(shown.contains(&g.key_id), "{shown}");
    assert!(!shown.contains(&g.secret), "{shown}");
}
