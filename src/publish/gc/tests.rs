use std::io;

use super::*;
use crate::oci::media_type::{MEDIA_TYPE_CONFIG, MEDIA_TYPE_TAR_GZIP};

/// A registry in memory, with its clock, noting what it deletes.
struct Mem {
    objects: BTreeMap<String, (Vec<u8>, SystemTime)>,
    now: SystemTime,
    deleted: Vec<String>,
}

impl Mem {
    fn new() -> Mem {
        Mem {
            objects: BTreeMap::new(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            deleted: Vec::new(),
        }
    }

    fn add(&mut self, key: String, bytes: &[u8], age: Duration) {
        self.objects.insert(key, (bytes.to_vec(), self.now - age));
    }

    /// An index of one manifest of `config` and `layers` under
    /// `repository:tag`, written `age` ago. Returns its digest and the keys
    /// of its manifests and blobs.
    fn image(
        &mut self,
        repository: &str,
        tag: &str,
        config: &[u8],
        layers: &[&[u8]],
        age: Duration,
    ) -> (Digest, Vec<String>) {
        let mut keys = Vec::new();
        let mut blob = |mem: &mut Mem, media_type: &'static str, bytes: &[u8]| {
            let d = Descriptor::new(media_type, Digest::of(bytes), bytes.len() as u64);
            let key = blob_key(repository, &d.digest);
            mem.add(key.clone(), bytes, age);
            keys.push(key);
            d
        };
        let config = blob(self, MEDIA_TYPE_CONFIG, config);
        let layers: Vec<Descriptor> = layers
            .iter()
            .map(|l| blob(self, MEDIA_TYPE_TAR_GZIP, l))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config, "layers": layers}))
        .unwrap();
        let md = Descriptor::new(
            MEDIA_TYPE_MANIFEST,
            Digest::of(&manifest),
            manifest.len() as u64,
        );
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [md]}))
        .unwrap();
        let root = Digest::of(&index);
        for (d, bytes) in [(&md.digest, &manifest), (&root, &index)] {
            let key = manifest_key(repository, d.as_str());
            self.add(key.clone(), bytes, age);
            keys.push(key);
        }
        self.add(manifest_key(repository, tag), &index, age);
        (root, keys)
    }
}

impl Objects for Mem {
    type Error = io::Error;

    fn list(&mut self) -> Result<Listing, io::Error> {
        Ok(Listing {
            objects: self
                .objects
                .iter()
                .map(|(k, (b, m))| Stored {
                    key: k.clone(),
                    size: b.len() as u64,
                    modified: *m,
                })
                .collect(),
            now: self.now,
        })
    }

    fn read(&mut self, key: &str) -> Result<Vec<u8>, io::Error> {
        self.objects
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn delete(&mut self, key: &str) -> Result<(), io::Error> {
        self.objects.remove(key);
        self.deleted.push(key.to_owned());
        Ok(())
    }

    fn put(&mut self, key: &str, bytes: &[u8], _: &str) -> Result<(), io::Error> {
        let now = self.now;
        self.objects.insert(key.to_owned(), (bytes.to_vec(), now));
        Ok(())
    }

    fn settle(
        &mut self,
        _: &[Stored],
        _: &[String],
        _: Option<Grace>,
    ) -> Result<Option<Vec<Stored>>, io::Error> {
        Ok(None)
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

#[test]
fn keys_say_what_they_are() {
    let d = Digest::of(b"x");
    let m = format!("v2/a/manifests/b/manifests/{d}");
    assert_eq!(
        Key::parse(&m),
        Key::Manifest {
            repository: "a/manifests/b",
            digest: d.clone()
        }
    );
    assert_eq!(
        Key::parse("v2/team/app/manifests/1.0"),
        Key::Tag {
            repository: "team/app",
            tag: "1.0"
        }
    );
    let b = format!("v2/app/blobs/{d}");
    assert_eq!(
        Key::parse(&b),
        Key::Blob {
            repository: "app",
            digest: d
        }
    );
    assert_eq!(
        Key::parse("v2/app/tags/list"),
        Key::TagList { repository: "app" }
    );
    for other in [
        "v2/index.html",
        "objects.json",
        "v2/app/blobs/x",
        "v2/app/manifests/sha256:00",
        "v2/app/manifests/.hidden",
    ] {
        assert_eq!(Key::parse(other), Key::Other, "{other}");
    }
}

#[test]
fn only_what_no_tag_reaches_goes_manifests_first() {
    let mut mem = Mem::new();
    let (_, one) = mem.image("app", "1.0", b"c1", &[b"base", b"one"], DAY);
    let (_, two) = mem.image("app", "2.0", b"c2", &[b"base", b"two"], DAY);
    mem.image("other", "latest", b"c1", &[b"base", b"one"], DAY);
    let r = untag(&mut mem, "mem", "app", "1.0").unwrap();
    assert_eq!(r.tags, ["2.0"]);
    assert_eq!(mem.deleted, ["v2/app/manifests/1.0"]);
    mem.deleted.clear();
    assert_eq!(
        mem.read("v2/app/tags/list").unwrap(),
        br#"{"name":"app","tags":["2.0"]}"#
    );
    // app:1.0's config, its layer `one`, its manifest and index, not
    // `base` (2.0 has it), and nothing of the other repository.
    let want: BTreeSet<String> = one.iter().filter(|k| !two.contains(k)).cloned().collect();
    assert_eq!(want.len(), 4);

    let before = mem.objects.clone();
    let dry = collect(&mut mem, "mem", HOUR, true).unwrap();
    assert_eq!(mem.objects, before, "a dry run deletes nothing");
    let r = collect(&mut mem, "mem", HOUR, false).unwrap();
    assert_eq!(r.removed, dry.removed);
    assert_eq!(mem.deleted.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(
        mem.deleted
            .iter()
            .map(|k| k.contains("/blobs/"))
            .collect::<Vec<_>>(),
        [false, false, true, true],
        "manifests before blobs: {:?}",
        mem.deleted
    );
    assert_eq!((r.tags, r.removed_manifests, r.removed_blobs), (2, 2, 2));
    assert_eq!(r.bytes_freed, r.removed_bytes);
    assert_eq!(
        r.removed.iter().map(|g| g.size).sum::<u64>(),
        r.removed_bytes
    );
    // Nothing left to collect; the last tag of a repository takes its
    // list with it, and then everything of the repository goes.
    assert!(collect(&mut mem, "mem", HOUR, false)
        .unwrap()
        .removed
        .is_empty());
    untag(&mut mem, "mem", "other", "latest").unwrap();
    assert!(!mem.objects.contains_key("v2/other/tags/list"));
    collect(&mut mem, "mem", HOUR, false).unwrap();
    assert!(mem.objects.keys().all(|k| k.starts_with("v2/app/")));
}

#[test]
fn young_objects_stay_until_the_grace_period_ends() {
    let mut mem = Mem::new();
    mem.image("app", "1.0", b"c1", &[b"one"], DAY);
    // Uploaded a moment ago, not yet tagged.
    let stray = blob_key("app", &Digest::of(b"new"));
    mem.add(stray.clone(), b"new", Duration::from_secs(5));
    let r = collect(&mut mem, "mem", HOUR, false).unwrap();
    assert!(r.removed.is_empty());
    assert_eq!(
        r.kept,
        [Gone {
            key: stray,
            size: 3
        }]
    );
    let r = collect(&mut mem, "mem", Duration::ZERO, false).unwrap();
    assert_eq!(r.removed.len(), 1);
}

#[test]
fn a_damaged_tag_stops_everything() {
    let (mem, keys) = {
        let mut mem = Mem::new();
        mem.image("app", "1.0", b"c1", &[b"one"], DAY);
        let (_, keys) = mem.image("app", "2.0", b"c2", &[b"two"], DAY);
        mem.add(blob_key("app", &Digest::of(b"old")), b"old", DAY);
        (mem, keys)
    };
    // keys: config, layer, manifest, index.
    let manifest = &keys[2];
    type Damaging<'a> = Box<dyn Fn(&mut Mem) + 'a>;
    let cases: Vec<(&str, Damaging)> = vec![
        (
            "is missing",
            Box::new(|m: &mut Mem| {
                m.objects.remove(manifest);
            }),
        ),
        (
            "hashes to",
            Box::new(|m: &mut Mem| {
                if let Some((b, _)) = m.objects.get_mut(manifest) {
                    b[0] = b' ';
                }
            }),
        ),
        (
            "has 3 bytes",
            Box::new(|m: &mut Mem| {
                m.objects.insert(manifest.clone(), (b"{ }".to_vec(), m.now));
            }),
        ),
        (
            "not valid JSON",
            Box::new(|m: &mut Mem| {
                m.objects
                    .insert("v2/app/manifests/2.0".into(), (b"{".to_vec(), m.now));
            }),
        ),
    ];
    for (problem, damage) in cases {
        let mut mem = Mem {
            objects: mem.objects.clone(),
            now: mem.now,
            deleted: Vec::new(),
        };
        damage(&mut mem);
        let e = collect(&mut mem, "mem", Duration::ZERO, false).unwrap_err();
        let text = format!("{e}: {}", e.source_text());
        assert!(text.starts_with("tag app:2.0 cannot be read"), "{text}");
        assert!(text.contains(problem), "{problem}: {text}");
        assert!(!e.is_usage());
        assert!(
            mem.deleted.is_empty(),
            "{problem}: deleted {:?}",
            mem.deleted
        );
    }
}

#[test]
fn untag_names_a_missing_tag() {
    let mut mem = Mem::new();
    mem.image("app", "1.0", b"c1", &[b"one"], DAY);
    let e = untag(&mut mem, "mem", "app", "2.0").unwrap_err();
    assert!(e.is_usage());
    assert_eq!(e.to_string(), "no tag app:2.0");
    assert!(mem.deleted.is_empty());
}

trait SourceText {
    fn source_text(&self) -> String;
}

impl<E: std::error::Error> SourceText for E {
    fn source_text(&self) -> String {
        let mut parts = Vec::new();
        let mut s = self.source();
        while let Some(e) = s {
            parts.push(e.to_string());
            s = e.source();
        }
        parts.join(": ")
    }
}
