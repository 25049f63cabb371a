# A stand-in for nixpkgs, for evaluating and building this repository's
# flake and its template offline (tests/nix_lib.rs):
#
#   nix flake check path:REPO --override-input nixpkgs path:STUB
#
# It holds just what flake.nix and templates/default/flake.nix use, built
# from two files the test puts next to this one (a copy of this folder):
#   nixoci/bin/nixoci        the nixoci binary under test: every
#                            rustPlatform.buildRustPackage gives it (after
#                            checking the source it is handed)
#   busybox/{busybox,sh}     a static x86-64 busybox: the builder of
#                            everything, `busybox`, and the "program" that
#                            every buildGoModule gives (a shell script)
# Nothing here compiles; it checks the flakes' wiring, not nixpkgs.
{
  description = "offline stand-in for nixpkgs (tests only)";

  outputs =
    { self }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];

      mkPkgs =
        system:
        let
          bb = ./busybox;
          run =
            name: script:
            derivation {
              inherit name system;
              builder = "${bb}/sh";
              args = [
                "-c"
                ''
                  set -eu
                  bb=${bb}/busybox
                  ${script}
                ''
              ];
            };

          platform = {
            inherit system;
            isLinux = builtins.match ".*-linux" system != null;
            isDarwin = builtins.match ".*-darwin" system != null;
          };

          # A "Go program": a script that prints who built it for where. One
          # for the build machine runs with the stub's busybox; one
          # cross-compiled for another system names /bin/sh and refers to
          # nothing, as a static Go binary would (it is read, never run:
          # the stub has no busybox of that system, and the image's
          # architecture check would refuse the build machine's).
          goModule =
            target: args:
            let
              interpreter = if target == system then "${bb}/sh" else "/bin/sh";
            in
            run "${args.pname}-${args.version}" ''
              $bb mkdir -p $out/bin
              printf '#!%s\necho "${args.pname} ${args.version} for ${target}"\n' ${interpreter} > $out/bin/${args.pname}
              $bb chmod 555 $out/bin/${args.pname}
            ''
            // {
              meta = args.meta or { };
            };

          crossSet = target: pkgs // { buildGoModule = goModule target; };

          pkgs = {
            stdenv.hostPlatform = platform;
            stdenv.buildPlatform = platform;

            lib = {
              licenses = {
                mit = "MIT";
                asl20 = "Apache-2.0";
              };
              fileset = {
                # The stub's programs need no source.
                toSource = { root, fileset }: root;
                unions = builtins.foldl' (a: b: b) null;
              };
            };

            # Checks the source the flake hands it: the crate, and nothing
            # that would rebuild nixoci when only Nix files change.
            rustPlatform.buildRustPackage =
              args:
              run "${args.pname}-${args.version}" ''
                for f in Cargo.toml Cargo.lock src/main.rs src/lib.rs; do
                  $bb test -e ${args.src}/$f || { echo "stub: src lacks $f" >&2; exit 1; }
                done
                for f in flake.nix flake.lock nix templates target docs; do
                  if $bb test -e ${args.src}/$f; then echo "stub: src has $f" >&2; exit 1; fi
                done
                $bb cmp -s ${args.cargoLock.lockFile} ${args.src}/Cargo.lock
                $bb mkdir -p $out/bin
                $bb cp ${./nixoci}/bin/nixoci $out/bin/nixoci
              ''
              // {
                inherit (args) meta;
              };

            busybox = run "busybox" ''
              $bb mkdir -p $out/bin
              $bb cp $bb $out/bin/busybox
              $bb ln -s busybox $out/bin/sh
            '';

            buildGoModule = goModule system;

            pkgsCross = {
              gnu64 = crossSet "x86_64-linux";
              aarch64-multiplatform = crossSet "aarch64-linux";
              armv7l-hf-multiplatform = crossSet "armv7l-linux";
              gnu32 = crossSet "i686-linux";
            };

            writeShellScript =
              name: text:
              run name ''
                printf '#!%s/sh\n' ${bb} > $out
                $bb cat >> $out <<'NIXOCI_STUB_EOF'
                ${text}
                NIXOCI_STUB_EOF
                $bb chmod 555 $out
              '';
          };
        in
        pkgs // { pkgsStatic = pkgs; };
    in
    {
      legacyPackages = builtins.listToAttrs (
        map (system: {
          name = system;
          value = mkPkgs system;
        }) systems
      );
    };
}
