# Nix-level checks of the Nix library (nix/lib): an `image` spec and an
# `ociLayout` of two platforms (linux/amd64 and linux/arm64), built with Nix
# alone: no nixpkgs, only the nixoci package and two busybox binaries. The
# flake exposes them as `checks.<system>`; here they build with
#
#   mkdir -p /tmp/nixoci/bin && cp target/debug/nixoci /tmp/nixoci/bin/
#   nix build -f nix/checks --argstr nixoci /tmp/nixoci \
#     --argstr busyboxAmd64 ~/.cache/nixoci-dev/busybox-amd64 \
#     --argstr busyboxArm64 ~/.cache/nixoci-dev/busybox-arm64
#
# (`scripts/setup` fills the busybox folders; tests/nix_lib.rs does this
# with the binary under test).
#
# Every derivation is for `system` and its builder is that system's busybox,
# so nothing is emulated and no extra-platforms are needed: the other
# busybox is only data, put into the other platform's image. The checks verify the layouts (nixoci verify, hydra-build-products,
# the image configs); tests/nix_lib.rs also compares them with the CLI's.
#
# Attributes, all derivations:
#   hello-amd64, hello-arm64  bin/sh and bin/hello for each platform, sharing `data`
#   spec-amd64, spec-arm64    `image` specs of them (entrypoint, env, port, label)
#   layout                    `ociLayout` of both specs (x86_64-linux, aarch64-linux),
#                             tagged with the specs' tag
#   layout-plain              `ociLayout` of the plain store paths, with OCI
#                             platform keys, maxLayers, created, annotations
#   spec-rootfs-amd64, spec-rootfs-arm64
#                             `image` specs with every root filesystem argument
#                             (copyToRoot, dirs, symlinks, users, groups,
#                             includeNixDB) and config volumes and stopSignal
#   layout-rootfs             `ociLayout` of them with every build option
#                             (compression, level, layers, minLayerSize,
#                             reserveLayers)
#   spec-contents             the spec holds the roots and the config
#   layout-verified           `nixoci verify`, hydra-build-products, image configs
#   layout-plain-verified     the same for layout-plain
#   lib-eval                  evaluation-time behaviour of the library
{
  # The nixoci package, a store path string, or a folder (path or string)
  # holding `bin/nixoci`, imported into the store.
  nixoci,
  # Each: a folder (path or string) holding a static `busybox` and
  # `sh -> busybox`, imported into the store; or a busybox package (a
  # derivation with `bin/busybox` and `bin/sh`).
  busyboxAmd64,
  busyboxArm64,
  # The system that builds everything; its busybox is the builder.
  system ? builtins.currentSystem,
  # The layouts' `archCheck`: false when one busybox stands in for both
  # platforms (the flake's checks use the host's busybox for both), so that
  # the arm64 image holds an x86-64 program, or the other way round.
  archCheck ? true,
}:

let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    hasContext
    isAttrs
    isString
    storeDir
    substring
    stringLength
    tryEval
    ;

  isInStore = s: substring 0 (stringLength storeDir + 1) s == "${storeDir}/";

  nixociPkg =
    if isAttrs nixoci || (isString nixoci && hasContext nixoci) then
      nixoci
    else if isString nixoci && isInStore nixoci then
      builtins.storePath nixoci
    else
      builtins.path {
        path = nixoci;
        name = "nixoci";
      };

  busyboxDir =
    b:
    if isAttrs b then
      "${b}/bin"
    else if isString b && hasContext b then
      b
    else
      builtins.path {
        path = b;
        name = "busybox";
      };

  bbAmd64 = busyboxDir busyboxAmd64;
  bbArm64 = busyboxDir busyboxArm64;
  bbBuild =
    if system == "aarch64-linux" then
      bbArm64
    else if system == "x86_64-linux" then
      bbAmd64
    else
      throw "nix/checks: system ${system} has no busybox here (x86_64-linux or aarch64-linux)";

  lib = import ../lib {
    nixoci = nixociPkg;
    inherit system;
  };

  run =
    name: script:
    derivation {
      inherit name system;
      builder = "${bbBuild}/sh";
      args = [
        "-c"
        ''
          set -eu
          bb=${bbBuild}/busybox
          ${script}
        ''
      ];
    };

  # Platform-independent files shared by both images.
  data = run "nixoci-check-data" ''
    d=$out/share/nixoci-check
    $bb mkdir -p $d
    echo "Hello from nixoci" > $d/greeting
    $bb ln -s greeting $d/greeting-link
    $bb seq 1 20000 > $d/numbers
  '';

  mkHello =
    name: bb:
    run name ''
      $bb mkdir -p $out/bin
      $bb ln -s ${bb}/busybox $out/bin/sh
      $bb cat > $out/bin/hello <<'EOF'
      #!${bb}/sh
      read -r greeting < ${data}/share/nixoci-check/greeting
      echo "$greeting"
      echo "machine: $(uname -m)"
      EOF
      $bb chmod 555 $out/bin/hello
    '';

  helloAmd64 = mkHello "nixoci-check-hello-amd64" bbAmd64;
  helloArm64 = mkHello "nixoci-check-hello-arm64" bbArm64;

  tag = "example.org/hello:1.0";

  mkSpec =
    hello:
    lib.image {
      name = "nixoci-check-hello";
      inherit tag;
      roots = [ hello ];
      config = {
        entrypoint = [
          "${hello}/bin/sh"
          "${hello}/bin/hello"
        ];
        env = {
          GREETING_FROM = "nixoci-check";
          PATH = "${hello}/bin";
        };
        workingDir = "/";
        exposedPorts = [ 8080 ];
        labels."org.opencontainers.image.title" = "nixoci check";
      };
    };

  specAmd64 = mkSpec helloAmd64;
  specArm64 = mkSpec helloArm64;

  # Every root filesystem argument; tests/nix_lib.rs builds the same with
  # the command line's flags and compares blob for blob.
  mkRootfsSpec =
    hello:
    lib.image {
      name = "nixoci-check-rootfs";
      inherit tag;
      roots = [ hello ];
      copyToRoot = [ hello ];
      dirs = [
        {
          path = "/tmp";
          mode = "1777";
        }
        {
          path = "/var/lib/app";
          mode = "0750";
          uid = 1000;
          gid = 1000;
        }
      ];
      symlinks."/usr/bin/hello" = "${hello}/bin/hello";
      users = [
        {
          name = "app";
          uid = 1000;
          home = "/var/lib/app";
        }
      ];
      groups = [
        {
          name = "staff";
          gid = 50;
        }
      ];
      includeNixDB = true;
      perms = [
        {
          regex = "/var/lib/app";
          mode = "0700";
        }
      ];
      config = {
        entrypoint = [ "/bin/hello" ];
        user = "app";
        Volumes."/data" = { };
        stopSignal = "SIGINT";
      };
    };

  rootfsAmd64 = mkRootfsSpec helloAmd64;
  rootfsArm64 = mkRootfsSpec helloArm64;

  layoutRootfs = lib.ociLayout {
    name = "nixoci-check-rootfs-oci";
    images = {
      x86_64-linux = rootfsAmd64;
      aarch64-linux = rootfsArm64;
    };
    compression = "zstd";
    level = 5;
    layers = [ [ data ] ];
    minLayerSize = "1K";
    reserveLayers = 1;
    inherit archCheck;
  };

  # No tag: the specs' tag is used, as by `nixoci build` without --tag.
  layout = lib.ociLayout {
    name = "nixoci-check-hello-oci";
    images = {
      x86_64-linux = specAmd64;
      aarch64-linux = specArm64;
    };
    inherit archCheck;
  };

  layoutPlain = lib.ociLayout {
    name = "nixoci-check-hello-plain-oci";
    inherit tag;
    images = {
      "linux/amd64" = helloAmd64;
      "linux/arm64" = helloArm64;
    };
    maxLayers = 2;
    created = "2024-01-01T00:00:00Z";
    annotations."org.opencontainers.image.version" = "1.0";
    inherit archCheck;
  };

  # Fails the build with a message naming what is missing.
  expect = what: cmd: ''
    if ! ${cmd}; then echo "nixoci check failed: ${what}" >&2; exit 1; fi
  '';

  # Config blobs are the only uncompressed JSON blobs that hold an image's
  # environment, so grep finds them among the gzip layers.
  verify =
    name: l: configNeedle: configCount:
    run name ''
      ${expect "nixoci verify ${l}" "${nixociPkg}/bin/nixoci verify ${l} >&2"}
      ${expect "oci-layout file" "$bb test -f ${l}/oci-layout"}
      ${expect "index.json names the tag" "$bb grep -qF '${tag}' ${l}/index.json"}
      ${expect "hydra-build-products" "[ \"$($bb cat ${l}/nix-support/hydra-build-products)\" = 'file oci-layout ${l}' ]"}
      n=$($bb grep -lF '${configNeedle}' ${l}/blobs/sha256/* | $bb wc -l)
      ${expect "${toString configCount} image configs holding ${configNeedle} (found $n)" "[ $n -eq ${toString configCount} ]"}
      $bb touch $out
    '';

  # Evaluation-time behaviour: each case is true or names itself.
  libCases =
    let
      spec = lib.imageSpec;
      fails = v: !(tryEval (builtins.deepSeq v v)).success;
      hello = helloAmd64;
      base = {
        name = "x";
        roots = [ hello ];
      };
    in
    {
      "docker-style config names" =
        (spec (
          base
          // {
            config = {
              Entrypoint = [ "/bin/sh" ];
              Env = [ "A=1=2" ];
              ExposedPorts."53/udp" = { };
              WorkingDir = "/w";
            };
          }
        )).config == {
          entrypoint = [ "/bin/sh" ];
          cmd = null;
          env.A = "1=2";
          exposedPorts = [ "53/udp" ];
          workingDir = "/w";
          user = null;
          labels = { };
        };
      "ports as numbers become PORT/tcp" =
        (spec (base // { config.exposedPorts = [ 80 "81" "82/udp" ]; })).config.exposedPorts == [
          "80/tcp"
          "81/tcp"
          "82/udp"
        ];
      "contents fails (roots or copyToRoot)" = fails (spec {
        name = "x";
        contents = [ hello ];
      });
      "perms mode must be octal" = fails (spec (base // { perms = [ { regex = ".*"; mode = "0788"; } ]; }));
      "perms needs uid and gid together" = fails (spec (base // { perms = [ { regex = ".*"; uid = 1; } ]; }));
      "copyToRoot paths are roots" =
        let
          s = spec {
            name = "x";
            copyToRoot = [ hello ];
          };
        in
        s.roots == [ "${hello}" ] && s.copyToRoot == [ "${hello}" ];
      "a symlink target in the store becomes a root" =
        (spec (base // { symlinks."/bin/x" = "${data}/bin/x"; })).roots == [
          "${hello}"
          "${data}"
        ];
      "root filesystem defaults" =
        let
          s = spec (
            base
            // {
              dirs = [ "/tmp" ];
              users = [
                {
                  name = "app";
                  uid = 1000;
                }
              ];
            }
          );
        in
        s.dirs == [
          {
            path = "/tmp";
            mode = "0755";
            uid = 0;
            gid = 0;
          }
        ]
        && s.users == [
          {
            name = "app";
            uid = 1000;
            gid = 1000;
            home = "/home/app";
            shell = "/bin/sh";
          }
        ];
      "volumes and stopSignal, under either name" =
        (spec (base // { config = { volumes = [ "/a" ]; StopSignal = 2; }; })).config.volumes == [ "/a" ]
        && (spec (base // { config.Volumes."/b" = { }; })).config.volumes == [ "/b" ]
        && (spec (base // { config.StopSignal = 2; })).config.stopSignal == "2";
      "a mode that is not octal fails" = fails (spec (base // { dirs = [ { path = "/tmp"; mode = "0788"; } ]; }));
      "a mode as a number fails" = fails (spec (base // { dirs = [ { path = "/tmp"; mode = 755; } ]; }));
      "a uid that is not a number fails" = fails (spec (base // { users = [ { name = "app"; uid = "app"; } ]; }));
      "a relative symlink target fails" = fails (spec (base // { symlinks."/bin/sh" = "busybox"; }));
      "a relative dir fails" = fails (spec (base // { dirs = [ "tmp" ]; }));
      "a dir in /nix fails" = fails (spec (base // { dirs = [ "/nix/var" ]; }));
      "a relative volume fails" = fails (spec (base // { config.volumes = [ "data" ]; }));
      "includeNixDB must be a bool" = fails (spec (base // { includeNixDB = "yes"; }));
      "ociLayout passes the build options" =
        layoutRootfs.compression == "zstd"
        && layoutRootfs.level == 5
        && layoutRootfs.layers == [ [ "${data}" ] ]
        && layoutRootfs.minLayerSize == "1K"
        && layoutRootfs.reserveLayers == 1;
      "archCheck = false reaches the builder, true is the default" =
        (lib.ociLayout {
          name = "x";
          images.x86_64-linux = hello;
          archCheck = false;
        }).archCheck == false
        && !((lib.ociLayout {
          name = "x";
          images.x86_64-linux = hello;
        }) ? archCheck);
      "archCheck must be a bool" = fails (lib.ociLayout {
        name = "x";
        images.x86_64-linux = hello;
        archCheck = "no";
      }).drvPath;
      "an unknown compression fails" = fails (lib.ociLayout {
        name = "x";
        images.x86_64-linux = hello;
        compression = "xz";
      }).drvPath;
      "a path the entrypoint names becomes a root" =
        (spec (base // { config.entrypoint = [ "${data}/bin/x" ]; })).roots == [
          "${hello}"
          "${data}"
        ];
      "roots are not repeated" =
        (spec (base // { config.cmd = [ "${hello}/bin/hello" ]; })).roots == [ "${hello}" ];
      "defaults" =
        spec base == {
          nixociImageSpec = 2;
          name = "x";
          tag = null;
          roots = [ "${hello}" ];
          config = {
            entrypoint = null;
            cmd = null;
            env = { };
            workingDir = null;
            user = null;
            exposedPorts = [ ];
            labels = { };
          };
          maxLayers = 100;
          annotations = { };
          created = null;
        };
      "store names are sanitised" =
        (lib.image (base // { name = "registry.example.org/app:1.0"; })).name
        == "registry.example.org-app-1.0-spec.json";
      "the spec is an attribute of the derivation" = specAmd64.spec.name == "nixoci-check-hello";
      "no roots fails" = fails (spec { name = "x"; });
      "an unknown config key fails" = fails (spec (base // { config.entrypiont = [ "x" ]; }));
      "a config key given twice fails" = fails (
        spec (
          base
          // {
            config = {
              cmd = [ "a" ];
              Cmd = [ "b" ];
            };
          }
        )
      );
      "a string entrypoint fails" = fails (spec (base // { config.entrypoint = "/bin/sh"; }));
      "a store path without context fails" = fails (spec {
        name = "x";
        roots = [ (builtins.unsafeDiscardStringContext "${hello}") ];
      });
      "a subpath root fails" = fails (spec {
        name = "x";
        roots = [ "${hello}/bin" ];
      });
      "a bad port fails" = fails (spec (base // { config.exposedPorts = [ "http" ]; }));
      "a bad created fails" = fails (spec (base // { created = "yesterday"; }));
      "maxLayers 0 fails" = fails (spec (base // { maxLayers = 0; }));
      "an empty images fails" = fails (lib.ociLayout {
        name = "x";
        images = { };
      }).drvPath;
      "a derivation as images fails" = fails (lib.ociLayout {
        name = "x";
        images = hello;
      }).drvPath;
      "ociLayout passes only the options given" =
        !(layout ? tag)
        && !(layout ? maxLayers)
        && !(layout ? created)
        && !(layout ? compression)
        && !(layout ? layers)
        && layoutPlain.maxLayers == 2;
      "a platform that is neither a system nor os/arch fails" = fails (lib.ociLayout {
        name = "x";
        images."linux amd64" = hello;
      }).drvPath;
      "exportReferencesGraph lists every image" =
        layout.exportReferencesGraph.closure == [
          "${specArm64}"
          "${specAmd64}"
        ];
    };

  libFailures = filter (n: !libCases.${n}) (attrNames libCases);
in
{
  hello-amd64 = helloAmd64;
  hello-arm64 = helloArm64;
  spec-amd64 = specAmd64;
  spec-arm64 = specArm64;
  inherit layout;
  layout-plain = layoutPlain;
  spec-rootfs-amd64 = rootfsAmd64;
  spec-rootfs-arm64 = rootfsArm64;
  layout-rootfs = layoutRootfs;

  spec-contents = run "nixoci-check-spec-contents" ''
    s=${specAmd64}
    ${expect "the spec marker" "$bb grep -qF nixociImageSpec $s"}
    ${expect "the root" "$bb grep -qF '${helloAmd64}' $s"}
    ${expect "the env" "$bb grep -qF GREETING_FROM $s"}
    ${expect "the port" "$bb grep -qF 8080/tcp $s"}
    $bb touch $out
  '';

  layout-verified = verify "nixoci-check-layout-verified" layout "GREETING_FROM=nixoci-check" 2;
  # The plain store paths have no config; the configs still name the roots'
  # platforms and are the only blobs that mention the rootfs diff ids.
  layout-plain-verified = verify "nixoci-check-layout-plain-verified" layoutPlain "\"rootfs\"" 2;

  lib-eval =
    if libFailures == [ ] then
      run "nixoci-check-lib-eval" "$bb touch $out"
    else
      throw "nix/checks lib-eval failed: ${concatStringsSep "; " libFailures}";
}
