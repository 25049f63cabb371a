{
  description = "nixoci: Nix closures to multi-platform OCI image layouts, fast and bit-for-bit reproducible";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      # Where nixoci is built and runs. The images it writes are for any
      # platform (docs/design.md: x86_64-linux, aarch64-linux,
      # armv7l-linux, …).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      linuxSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forSystems =
        list: f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) list
        );

      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);

      # The crate's files only: changes to the Nix files, docs or scripts do
      # not rebuild nixoci.
      src = builtins.path {
        name = "nixoci-source";
        path = ./.;
        filter =
          path: type:
          let
            rel = builtins.substring (builtins.stringLength (toString ./.) + 1) (-1) (toString path);
            top = builtins.head (builtins.split "/" rel);
          in
          builtins.elem top [
            "Cargo.toml"
            "Cargo.lock"
            "build.rs"
            "src"
            "tests"
            "benches"
            "examples"
            "vendor"
            "README.md"
          ];
      };

      # nixoci, from this source and Cargo.lock. `static` links it with musl
      # (pkgsStatic) so the binary runs as a builder on any Linux machine,
      # in any sandbox, with no libc from the store.
      mkNixoci =
        pkgs:
        { static ? pkgs.stdenv.hostPlatform.isLinux }:
        let
          rustPlatform = if static then pkgs.pkgsStatic.rustPlatform else pkgs.rustPlatform;
        in
        rustPlatform.buildRustPackage {
          pname = "nixoci";
          inherit (cargoToml.package) version;
          inherit src;
          cargoLock.lockFile = ./Cargo.lock;
          # The unit tests. The integration tests need a Nix store, skopeo,
          # umoci and qemu (scripts/test); the Nix-level ones are `checks`.
          cargoTestFlags = [ "--lib" ];
          meta = {
            inherit (cargoToml.package) description;
            license = with pkgs.lib.licenses; [
              mit
              asl20
            ];
            mainProgram = "nixoci";
            platforms = systems;
          };
        };

      nixociLib = import ./nix/lib;
    in
    {
      packages = forSystems systems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
        in
        rec {
          default = nixoci;
          nixoci = mkNixoci pkgs { };
          # Linked against the platform's libc: no musl toolchain to build,
          # for when a static binary is not needed.
          nixoci-dynamic = mkNixoci pkgs { static = false; };
        }
      );

      apps = forSystems systems (system: {
        default = {
          type = "app";
          program = "${self.packages.${system}.default}/bin/nixoci";
          meta.description = "nixoci: build, verify and inspect OCI image layouts of Nix closures";
        };
      });

      # The Nix library (nix/lib, README.md "The Nix library"): `image` and
      # `ociLayout`, running this flake's nixoci as their builder:
      #   nixoci.lib.${system}.image { … }
      # or with any nixoci package (an overlay's, a pinned one):
      #   (nixoci.lib.withNixoci pkgs.nixoci).ociLayout { … }
      lib =
        forSystems systems (
          system:
          nixociLib {
            nixoci = self.packages.${system}.default;
            inherit system;
          }
        )
        // {
          withNixoci = nixoci: nixociLib { inherit nixoci; };
        };

      # pkgs.nixoci and pkgs.nixociLib (the library with that nixoci).
      overlays.default = final: prev: {
        nixoci = mkNixoci final { };
        nixociLib = nixociLib { nixoci = final.nixoci; };
      };

      # nix/checks: an image spec and a two-platform ociLayout, verified. The
      # host's busybox package is the builder and the content of both images:
      # the checks read layouts, they do not run images (tests/e2e.rs does).
      checks = forSystems linuxSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
        in
        import ./nix/checks {
          nixoci = self.packages.${system}.default;
          busyboxAmd64 = pkgs.busybox;
          busyboxArm64 = pkgs.busybox;
          # One busybox for both platforms: the other platform's image
          # holds the host's program, which the architecture check refuses.
          archCheck = false;
          inherit system;
        }
        // {
          package = self.packages.${system}.default;
        }
      );

      templates.default = {
        path = ./templates/default;
        description = "A static Go program cross-compiled for linux/amd64, linux/arm64, linux/arm/v7 and linux/386, imaged with nixoci";
        welcomeText = ''
          # nixoci starter

          A static Go program, cross-compiled on this machine for four
          platforms and imaged into one multi-platform OCI layout:

              nix run .#image                # writes hello.oci
              nix build .#oci                # the same layout as a store path

          See README.md for pushing it and for the flags.
        '';
      };
    };
}
