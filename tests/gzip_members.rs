//! Multi-member gzip layers: a gzip layer is a series of independent gzip
//! members, one per chunk of the tar stream (RFC 1952 allows it, bgzip does
//! it), and every consumer reads the whole stream back, byte for byte.
//!
//! One image is built once per test process, by the real binary, from a fake
//! store tree (`--closure-json`, `--store-root`): the static x86-64 busybox
//! and a store path holding `data.bin`, 6 MiB of text-like and random bytes
//! in turns, so its layer spans several chunks. The image (linux/amd64) runs
//! `busybox sha256sum data.bin`. Every test checks first that the data layer
//! has at least two gzip members, then reads the image with one consumer and
//! compares what comes back (the layer's tar with its `diff_id`, `data.bin`
//! with the input's SHA-256), not only that it loads: `gzip -d`, `pigz -d`,
//! skopeo (to `dir:`, decompressed, and to `docker-archive:`), umoci, podman,
//! Docker 20.10 (`docker load` of `nixoci save -o -`, `docker pull` from a
//! Distribution registry on 127.0.0.1) and containerd (`ctr images pull`
//! from that registry, then `ctr run`).
//!
//! A missing tool skips a test with a printed reason, except under `CI=true`.

mod common;

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::publish::{noise, Registry};
use common::runtime::{Docker, Podman, Runtime};
use common::*;
use serde_json::{json, Value};
use sha2::Digest as _;

/// The image's tag in the layout.
const MEMBERS_TAG: &str = "example.org/members:1.0";
/// The repository and tag it gets in the registry and the runtimes.
const REPO: &str = "nixoci-test/members:1.0";
/// The limit of one step of a consumer (a decompression, a copy, a pull, a
/// run).
const STEP_LIMIT: Duration = Duration::from_secs(120);

const DATA_PATH: &str = "/nix/store/0m1n2b3v4c5x6z7l8k9j0h1g2f3d4s5a-mixed-data";
const BUSYBOX_PATH: &str = "/nix/store/1a2s3d4f5g6h7j8k9l0z1x2c3v4b5n6m-busybox";
/// Bytes of `data.bin`: several 1 MiB chunks of tar stream.
const DATA_SIZE: usize = 6 << 20;
/// Bytes of each run of text or noise in `data.bin`.
const RUN: usize = 192 << 10;

/// The image every test reads.
struct Image {
    layout: PathBuf,
    /// The folder the tests write their scratch files under.
    work: PathBuf,
    /// The amd64 manifest's descriptor in the image index.
    descriptor: Value,
    /// The layer holding `data.bin`: its digest and `diff_id`.
    digest: String,
    diff_id: String,
    /// Its number of gzip members.
    members: usize,
    /// Lowercase hex SHA-256 of `data.bin`.
    data_sha: String,
}

/// `data.bin` inside the image, absolute.
fn data_file() -> String {
    format!("{DATA_PATH}/data.bin")
}

/// The image, built on first use; panics (failing the test) when the
/// build fails or the data layer is a single gzip member.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    let image = IMAGE.get_or_init(build_image);
    assert!(
        image.members >= 2,
        "the data layer {} (data.bin: {DATA_SIZE} bytes) is {} gzip member(s); \
         expected one per chunk of the tar stream",
        image.digest,
        image.members
    );
    image
}

/// Text lines and noise in turns, [`RUN`] bytes each.
fn mixed_data() -> Vec<u8> {
    let mut data = Vec::with_capacity(DATA_SIZE + RUN);
    let mut line = 0u64;
    let mut seed = 11;
    while data.len() < DATA_SIZE {
        let end = data.len() + RUN;
        while data.len() < end {
            data.extend_from_slice(
                format!("{line:08} nixoci writes gzip layers as many members\n").as_bytes(),
            );
            line += 1;
        }
        data.truncate(end);
        data.extend_from_slice(&noise(RUN, seed));
        seed += 1;
    }
    data.truncate(DATA_SIZE);
    data
}

fn hex_sha256(bytes: &[u8]) -> String {
    sha256_digest(bytes)
        .strip_prefix("sha256:")
        .map(str::to_owned)
        .unwrap_or_default()
}

fn build_image() -> Image {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gzip-members");
    if work.exists() {
        fs::remove_dir_all(&work).expect("removing the last run's files");
    }
    let store = work.join("store-root/nix/store");
    let (data_dir, bb_dir) = (
        store.join(&DATA_PATH[11..]),
        store.join(&BUSYBOX_PATH[11..]),
    );
    fs::create_dir_all(&data_dir).expect("creating the fake store");
    fs::create_dir_all(&bb_dir).expect("creating the fake store");
    let data = mixed_data();
    fs::write(data_dir.join("data.bin"), &data).expect("writing data.bin");
    let busybox = busybox_dirs()
        .unwrap_or_else(|e| panic!("the test busybox: {e}"))
        .amd64
        .join("busybox");
    fs::copy(&busybox, bb_dir.join("busybox")).expect("copying busybox");

    // NAR hashes only need to follow the content (the layer cache's key).
    let nar_hash = |path: &str, content: &[u8]| {
        let mut seed = path.as_bytes().to_vec();
        seed.extend_from_slice(content);
        let digest: [u8; 32] = sha2::Sha256::digest(&seed).into();
        format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    let bb_bytes = fs::read(bb_dir.join("busybox")).expect("reading busybox");
    let closure = json!([
        {"path": DATA_PATH, "narHash": nar_hash(DATA_PATH, &data),
         "narSize": DATA_SIZE + 400, "references": [BUSYBOX_PATH]},
        {"path": BUSYBOX_PATH, "narHash": nar_hash(BUSYBOX_PATH, &bb_bytes),
         "narSize": bb_bytes.len() + 400, "references": []},
    ]);
    let closure_file = work.join("closure.json");
    fs::write(&closure_file, closure.to_string()).expect("writing the closure");

    let layout = work.join("members.oci");
    let o = output_of(
        nixoci()
            .arg("build")
            .arg("--platform")
            .arg(format!("linux/amd64={DATA_PATH}"))
            .arg("--closure-json")
            .arg(&closure_file)
            .arg("--store-root")
            .arg(work.join("store-root"))
            .args(["--entrypoint", &format!("{BUSYBOX_PATH}/busybox")])
            .args(["--entrypoint", "sha256sum", "--entrypoint", &data_file()])
            .args(["--tag", MEMBERS_TAG, "-o"])
            .arg(&layout)
            // A cold layer cache of the test's own: the layers come from
            // the encoder under test.
            .env("XDG_CACHE_HOME", work.join("cache")),
    );
    assert!(o.status.success(), "nixoci build failed:\n{}", stderr(&o));

    let l = Layout(layout.clone());
    let (_, images) = l.image(MEMBERS_TAG);
    let [amd64] = images.as_slice() else {
        panic!("expected one platform, found {images:?}");
    };
    assert_eq!(amd64.platform, "linux/amd64");
    let layers = array_of(&amd64.manifest["layers"]);
    let i = layers
        .iter()
        .position(|d| {
            d["annotations"]["dev.nixoci.store-paths"]
                .as_str()
                .is_some_and(|p| p.split(' ').any(|n| n == &DATA_PATH[11..]))
        })
        .unwrap_or_else(|| panic!("no layer holds {DATA_PATH}: {layers:?}"));
    assert_eq!(
        layers[i]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
        "the default compression"
    );
    let digest = amd64.layers[i].clone();
    let diff_id = str_of(&amd64.config["rootfs"]["diff_ids"][i]).to_owned();
    let members = gzip_members(&l.blob(&digest));
    Image {
        layout,
        work,
        descriptor: amd64.descriptor.clone(),
        digest,
        diff_id,
        members,
        data_sha: hex_sha256(&data),
    }
}

/// The number of gzip members of `blob`, read one by one with flate2's
/// single-member decoder until nothing remains; panics on a damaged member
/// or trailing bytes that are no member.
fn gzip_members(blob: &[u8]) -> usize {
    let mut rest = blob;
    let mut n = 0;
    while !rest.is_empty() {
        let mut member = flate2::bufread::GzDecoder::new(rest);
        std::io::copy(&mut member, &mut std::io::sink()).unwrap_or_else(|e| {
            panic!(
                "gzip member {n} at byte {}: {e}",
                blob.len() - member.get_ref().len()
            )
        });
        rest = member.into_inner();
        n += 1;
    }
    n
}

/// The content of the regular file `path` (absolute, as in the image) in a
/// layer tar, or `None`.
fn file_in_tar(tar: &[u8], path: &str) -> Option<Vec<u8>> {
    let want = path.trim_start_matches('/');
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("reading a tar") {
        let mut entry = entry.expect("reading a tar entry");
        let name = entry.path().expect("a tar entry's path").into_owned();
        let name = name.to_string_lossy();
        if name.trim_start_matches("./").trim_start_matches('/') == want {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("reading a tar entry");
            return Some(bytes);
        }
    }
    None
}

/// Checks that `tar` is the data layer's tar, byte for byte (its `diff_id`),
/// and that `data.bin` in it is the input.
#[track_caller]
fn check_layer_tar(image: &Image, tar: &[u8], what: &str) {
    assert_eq!(
        sha256_digest(tar),
        image.diff_id,
        "{what}: the decompressed layer is not the tar stream nixoci hashed"
    );
    let data = file_in_tar(tar, &data_file())
        .unwrap_or_else(|| panic!("{what}: no {} in the layer", data_file()));
    assert_eq!(hex_sha256(&data), image.data_sha, "{what}: data.bin");
}

/// Checks the output of the image's entrypoint (`sha256sum data.bin`).
#[track_caller]
fn check_sha256sum(image: &Image, r: &Run, what: &str) {
    assert_eq!(
        r.stdout.split_whitespace().collect::<Vec<_>>(),
        [image.data_sha.as_str(), &data_file()],
        "{what}: {}",
        r.describe()
    );
}

/// Runs `cmd` within [`STEP_LIMIT`], as a [`Run`].
fn step(mut cmd: Command, what: &str) -> Run {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = run_bounded(&mut cmd, STEP_LIMIT, what);
    Run {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh scratch folder for one test.
fn scratch(image: &Image, name: &str) -> PathBuf {
    let d = image.work.join(name);
    if d.exists() {
        fs::remove_dir_all(&d).expect("removing a scratch folder");
    }
    fs::create_dir_all(&d).expect("creating a scratch folder");
    d
}

/// The layout and its tag, as skopeo and `nixoci push` name an image.
fn layout_ref(image: &Image) -> String {
    format!("{}:{MEMBERS_TAG}", image.layout.display())
}

#[test]
fn the_data_layer_is_several_gzip_members_of_the_same_tar() {
    if !require(&["busybox"]) {
        return;
    }
    let image = image();
    let blob = Layout(image.layout.clone()).blob(&image.digest);
    let mut tar = Vec::new();
    flate2::bufread::MultiGzDecoder::new(blob.as_slice())
        .read_to_end(&mut tar)
        .expect("decoding every member");
    check_layer_tar(image, &tar, "flate2 MultiGzDecoder");
}

#[test]
fn gzip_and_pigz_decompress_every_member() {
    if !require(&["busybox", "gzip", "pigz"]) {
        return;
    }
    let image = image();
    let blob = Layout(image.layout.clone()).blob_path(&image.digest);
    for tool in ["gzip", "pigz"] {
        let mut c = Command::new(tool);
        c.arg("-dc")
            .stdin(fs::File::open(&blob).expect("opening the layer blob"));
        let out = run_bounded(c, STEP_LIMIT, tool);
        assert!(out.status.success(), "{tool} -dc failed: {}", stderr(&out));
        check_layer_tar(image, &out.stdout, &format!("{tool} -d"));
        // And the tool's own test of the file.
        let mut t = Command::new(tool);
        t.arg("-t").arg(&blob).stdin(Stdio::null());
        step(t, tool).success();
    }
}

#[test]
fn skopeo_copies_every_member_to_dir_and_docker_archive() {
    if !require(&["busybox", "skopeo"]) {
        return;
    }
    let image = image();
    let work = scratch(image, "skopeo");
    let src = format!("oci:{}", layout_ref(image));

    // dir:, decompressed by skopeo: the layer is stored as its tar.
    let dir = work.join("dir");
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "copy", "--quiet", "--dest-decompress"])
        .arg(&src)
        .arg(format!("dir:{}", dir.display()));
    step(c, "skopeo copy to dir:").success();
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).expect("dir:'s manifest"))
            .expect("dir:'s manifest is JSON");
    let hex = image.diff_id.trim_start_matches("sha256:");
    assert!(
        array_of(&manifest["layers"])
            .iter()
            .any(|l| l["digest"] == image.diff_id.as_str()),
        "skopeo dir: lists the decompressed layer: {manifest}"
    );
    let tar = fs::read(dir.join(hex)).expect("the decompressed layer in dir:");
    check_layer_tar(image, &tar, "skopeo copy --dest-decompress dir:");

    // docker-archive: holds the layers as tars, which skopeo decompresses.
    let archive = work.join("docker-archive.tar");
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "copy", "--quiet"])
        .arg(&src)
        .arg(format!("docker-archive:{}:{REPO}", archive.display()));
    step(c, "skopeo copy to docker-archive:").success();
    let archive = fs::read(&archive).expect("reading the docker archive");
    let manifest: Value = serde_json::from_slice(
        &file_in_tar(&archive, "manifest.json").expect("manifest.json in the archive"),
    )
    .expect("the archive's manifest.json is JSON");
    let found = array_of(&manifest[0]["Layers"])
        .iter()
        .map(|l| file_in_tar(&archive, str_of(l)).expect("a layer in the archive"))
        .find(|tar| sha256_digest(tar) == image.diff_id)
        .unwrap_or_else(|| panic!("no layer of the archive is the data layer: {manifest}"));
    check_layer_tar(image, &found, "skopeo copy docker-archive:");
}

#[test]
fn umoci_unpacks_every_member() {
    if !require(&["busybox", "umoci", "chroot"]) {
        return;
    }
    let image = image();
    let work = scratch(image, "umoci");
    let bundle = umoci_unpack(&image.layout, &image.descriptor, &work, "members");
    let data = fs::read(bundle.join("rootfs").join(&data_file()[1..])).expect("data.bin unpacked");
    assert_eq!(hex_sha256(&data), image.data_sha, "umoci unpack: data.bin");
    // The unpacked image's entrypoint agrees.
    check_sha256sum(image, &run_bundle(&bundle, None), "umoci bundle");
}

#[test]
fn podman_runs_an_image_of_multi_member_layers() {
    if !require(&["busybox"]) {
        return;
    }
    let Some(podman) = Podman::new() else {
        return;
    };
    let image = image();
    // podman pulls from the layout itself (the name it stores the image
    // under follows the folder, members.oci).
    let mut pull = podman.command();
    pull.arg("pull")
        .arg("--quiet")
        .arg(format!("oci:{}", layout_ref(image)));
    let id = step(pull, "podman pull oci:").success().stdout;
    let id = id.trim();
    check_sha256sum(image, &podman.run(id, None, &[]), "podman run");
}

/// `nixoci push` of the image to a Distribution registry; returns
/// `127.0.0.1:PORT/REPO`.
fn push(image: &Image, reg: &Registry) -> String {
    let dest = format!("{}/{REPO}", reg.addr());
    let o = output_of(nixoci().arg("push").arg(layout_ref(image)).arg(&dest));
    assert!(o.status.success(), "nixoci push failed:\n{}", stderr(&o));
    dest
}

#[test]
fn docker_loads_and_pulls_an_image_of_multi_member_layers() {
    if !require(&["busybox", "docker-registry"]) {
        return;
    }
    let Some(docker) = Docker::start() else {
        return;
    };
    let image = image();
    let work = scratch(image, "docker");

    // nixoci save -o - | docker load
    let save_log = work.join("save.log");
    let mut save = nixoci()
        .args(["save", "-o", "-"])
        .arg(format!("oci:{}", layout_ref(image)))
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&save_log).expect("creating save.log"))
        .spawn()
        .expect("starting nixoci save");
    let mut load = docker.command();
    load.arg("load")
        .stdin(save.stdout.take().expect("save's stdout"));
    let loaded = step(load, "docker load").success();
    // docker load has read the whole archive: save has finished, or
    // finishes at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let saved = loop {
        if let Some(status) = save.try_wait().expect("waiting for nixoci save") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = save.kill();
            let _ = save.wait();
            panic!("nixoci save did not end after docker load had read it all");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        saved.success(),
        "nixoci save: {}",
        fs::read_to_string(&save_log).unwrap_or_default()
    );
    assert!(loaded.stdout.contains(MEMBERS_TAG), "{}", loaded.describe());
    check_sha256sum(image, &docker.run(MEMBERS_TAG, None, &[]), "docker load");
    // Gone again, so the pull below must fetch and decompress every layer.
    let mut rmi = docker.command();
    rmi.args(["rmi", MEMBERS_TAG]);
    step(rmi, "docker rmi").success();

    // nixoci push, docker pull (127.0.0.0/8 is an insecure registry to
    // Docker by default: plain HTTP).
    let reg = Registry::start(&work.join("registry"), false);
    let remote = push(image, &reg);
    let mut pull = docker.command();
    pull.arg("pull").arg(&remote);
    step(pull, "docker pull").success();
    check_sha256sum(image, &docker.run(&remote, None, &[]), "docker pull");
}

#[test]
fn containerd_pulls_and_runs_an_image_of_multi_member_layers() {
    if !require(&["busybox", "docker-registry", "ctr"]) {
        return;
    }
    // The containerd of the Docker harness; dockerd itself stays idle.
    let Some(docker) = Docker::start() else {
        return;
    };
    let image = image();
    let work = scratch(image, "containerd");
    let reg = Registry::start(&work.join("registry"), false);
    let remote = push(image, &reg);

    // The native snapshotter copies files: no overlay mounts to leave behind.
    let mut pull = docker.ctr();
    pull.args(["images", "pull", "--plain-http", "--snapshotter", "native"])
        .arg(&remote);
    step(pull, "ctr images pull").success();
    let mut run = docker.ctr();
    run.args(["run", "--rm", "--snapshotter", "native"])
        .arg(&remote)
        .arg("nixoci-test-members");
    check_sha256sum(image, &step(run, "ctr run"), "ctr run");
}
