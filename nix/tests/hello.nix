# Hermetic test closures for the demo and the integration tests: no nixpkgs,
# only two static busybox binaries (x86-64 and aarch64) from the host.
#
#   nix build --json --no-link -f nix/tests/hello.nix \
#     --argstr busyboxAmd64 ~/.cache/nixoci-dev/busybox-amd64 \
#     --argstr busyboxArm64 ~/.cache/nixoci-dev/busybox-arm64 \
#     hello-amd64 hello-arm64
#
# (`scripts/setup` fills those folders.) Building `hello-arm64` needs
# `extra-platforms = aarch64-linux`; every builder is the x86-64 busybox, so
# no emulation is needed at build time.
#
# Closures:
#   hello-amd64 = { busybox (x86-64), data, hello-amd64 }
#   hello-arm64 = { busybox (aarch64), data, hello-arm64 }
# `data` is the same store path in both, so a multi-platform image stores it
# once. Each hello output holds `bin/sh` (a symlink to its own busybox) and
# `bin/hello`, so one entrypoint fits every platform:
#   [ "{root}/bin/sh", "{root}/bin/hello" ]
# It prints "Hello from nixoci" and then "machine: <uname -m>" (x86_64 or
# aarch64, the latter under qemu-aarch64-static).
{
  # Folders holding `busybox` (static) and `sh -> busybox`; paths or strings.
  busyboxAmd64,
  busyboxArm64,
}:

let
  importBusybox =
    dir:
    builtins.path {
      path = dir;
      name = "busybox";
    };

  bbAmd64 = importBusybox busyboxAmd64;
  bbArm64 = importBusybox busyboxArm64;

  # A derivation whose builder is the x86-64 busybox shell; there is no PATH,
  # so every tool is called as `$bb TOOL`.
  run =
    name: system: script:
    derivation {
      inherit name system;
      builder = "${bbAmd64}/sh";
      args = [
        "-c"
        ''
          set -eu
          bb=${bbAmd64}/busybox
          ${script}
        ''
      ];
    };

  # Platform-independent files shared by both images: a few regular files,
  # an executable, a symlink, an empty file, a name longer than the 100 bytes
  # a plain tar header holds, and a file big enough to be worth compressing.
  data = run "nixoci-hello-data" "x86_64-linux" ''
    d=$out/share/nixoci-hello
    $bb mkdir -p $d/empty-dir $d/nested/deeper
    echo "Hello from nixoci" > $d/greeting
    $bb ln -s greeting $d/greeting-link
    $bb ln -s ../greeting $d/nested/up-link
    printf 'nixoci test data\nshared by every platform of the image\n' > $d/README
    : > $d/nested/empty-file
    printf '#!/bin/sh\necho not run\n' > $d/nested/deeper/script
    $bb chmod 755 $d/nested/deeper/script
    long=this-file-name-is-deliberately-long-so-the-full-path-in-the-tar-needs-a-pax-header-to-be-stored-whole
    echo long > $d/nested/deeper/$long
    $bb seq 1 40000 > $d/numbers
  '';

  mkHello =
    name: system: bb:
    run name system ''
      $bb mkdir -p $out/bin
      $bb ln -s ${bb}/busybox $out/bin/sh
      $bb cat > $out/bin/hello <<'EOF'
      #!${bb}/sh
      # `uname` is a busybox applet that this shell runs without exec: under
      # qemu-user without binfmt_misc an aarch64 program cannot exec another.
      read -r greeting < ${data}/share/nixoci-hello/greeting
      echo "$greeting"
      echo "machine: $(uname -m)"
      EOF
      $bb chmod 555 $out/bin/hello
    '';
in
{
  inherit data;
  busybox-amd64 = bbAmd64;
  busybox-arm64 = bbArm64;
  hello-amd64 = mkHello "nixoci-hello-amd64" "x86_64-linux" bbAmd64;
  hello-arm64 = mkHello "nixoci-hello-arm64" "aarch64-linux" bbArm64;
}
