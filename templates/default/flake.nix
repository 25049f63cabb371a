{
  description = "hello: a static Go program, imaged for linux/amd64, linux/arm64, linux/arm/v7 and linux/386 with nixoci";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    nixoci = {
      url = "github:OWNER/nixoci";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      nixoci,
    }:
    let
      name = "hello";
      version = "0.1.0";
      tag = "example.org/${name}:${version}";

      # The image's platforms, each cross-compiled on the build machine with
      # the nixpkgs cross package set named here.
      targets = {
        amd64 = {
          platform = "linux/amd64";
          cross = "gnu64";
        };
        arm64 = {
          platform = "linux/arm64";
          cross = "aarch64-multiplatform";
        };
        armv7 = {
          platform = "linux/arm/v7";
          cross = "armv7l-hf-multiplatform";
        };
        "386" = {
          platform = "linux/386";
          cross = "gnu32";
        };
      };

      # The machines that build (and image) everything.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forSystems =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) systems
        );
      mapTargets =
        f:
        builtins.listToAttrs (
          map (key: {
            name = key;
            value = f key targets.${key};
          }) (builtins.attrNames targets)
        );

      perSystem =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          nixociLib = nixoci.lib.${system};

          # The program for one platform. CGO_ENABLED=0: pure Go, statically
          # linked, no libc in the image.
          mkHello =
            crossPkgs:
            crossPkgs.buildGoModule {
              pname = name;
              inherit version;
              src = pkgs.lib.fileset.toSource {
                root = ./.;
                fileset = pkgs.lib.fileset.unions [
                  ./go.mod
                  ./main.go
                ];
              };
              vendorHash = null;
              env.CGO_ENABLED = 0;
              ldflags = [
                "-s"
                "-w"
              ];
              meta.mainProgram = name;
            };

          hellos = mapTargets (_: t: mkHello pkgs.pkgsCross.${t.cross});

          # One image spec per platform: the program and how to run it.
          images = mapTargets (
            key: _:
            let
              hello = hellos.${key};
            in
            nixociLib.image {
              inherit name;
              roots = [ hello ];
              config = {
                entrypoint = [ "${hello}/bin/${name}" ];
                env.GREETING = "Hello from a Nix-built image";
                labels."org.opencontainers.image.version" = version;
              };
            }
          );

          # `--platform PLATFORM=SPEC` for each target.
          platformFlags = builtins.concatStringsSep " " (
            builtins.attrValues (mapTargets (key: t: "--platform ${t.platform}=${images.${key}}"))
          );
        in
        {
          packages =
            {
              # The program for the build machine itself: `nix run .#hello`.
              hello = mkHello pkgs;

              # The multi-platform OCI layout as a store path (Hydra, CI
              # caches): `nix build .#oci`, then `skopeo copy --all
              # oci:result:${tag} docker://…`.
              oci = nixociLib.ociLayout {
                name = "${name}-oci";
                inherit tag;
                images = builtins.listToAttrs (
                  builtins.attrValues (
                    mapTargets (
                      key: t: {
                        name = t.platform;
                        value = images.${key};
                      }
                    )
                  )
                );
              };
              default = self.packages.${system}.oci;
            }
            # hello-amd64, hello-arm64, hello-armv7, hello-386 and their
            # image specs image-amd64, …: for `nixoci build --platform`.
            // builtins.listToAttrs (
              builtins.concatLists (
                builtins.attrValues (
                  mapTargets (
                    key: _: [
                      {
                        name = "${name}-${key}";
                        value = hellos.${key};
                      }
                      {
                        name = "image-${key}";
                        value = images.${key};
                      }
                    ]
                  )
                )
              )
            );

          apps = rec {
            # `nix run` (or `nix run .#image -- -o DIR --tag REF`): builds the
            # four programs and their specs, then images them into one
            # layout, hello.oci unless told otherwise.
            image = {
              type = "app";
              program = "${pkgs.writeShellScript "${name}-image" ''
                # Defaults for the flags not given: -o ${name}.oci --tag ${tag}
                out=${name}.oci tag=${tag}
                for a in "$@"; do
                  case $a in
                    -o | -o?* | --output | --output=*) out= ;;
                    --tag | --tag=*) tag= ;;
                  esac
                done
                exec ${nixoci.packages.${system}.default}/bin/nixoci build ${platformFlags} \
                  ''${out:+-o "$out"} ''${tag:+--tag "$tag"} "$@"
              ''}";
            };
            default = image;
          };
        };
    in
    {
      packages = forSystems (system: (perSystem system).packages);
      apps = forSystems (system: (perSystem system).apps);
    };
}
