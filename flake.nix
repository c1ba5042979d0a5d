{
  description = "hyperhive: a swarm of Claude Code agents in NixOS containers, reconciled from git";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    # For claude-code only (overlays.claude-code): stable lags the CLI.
    nixpkgs-unstable.url = "github:NixOS/nixpkgs/nixos-unstable";
  };

  outputs =
    {
      self,
      nixpkgs,
      nixpkgs-unstable,
    }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        };

      forAllSystems = f: lib.genAttrs systems (system: f (pkgsFor system));

      # Every .nix file of the repo but the vendored nixpkgs lib (formatted
      # upstream, used by tests/nix only), for the formatting check.
      allNixFiles = lib.fileset.fileFilter (file: file.hasExt "nix") ./.;
      nixFiles = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.difference allNixFiles ./nix/vendor;
      };
    in
    {
      overlays = {
        # pkgs.hyperhive
        default = import ./nix/overlays/default.nix;
        # pkgs.claude-code from nixpkgs-unstable, unfree allowed for it alone
        claude-code = import ./nix/overlays/claude-code.nix { inherit nixpkgs-unstable; };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.hyperhive;
        hyperhive = pkgs.hyperhive;
        # the OCI image of the kubernetes runtime (docs/kubernetes.md); claude-code is unfree,
        # allowed for it alone by its overlay
        image = import ./nix/image.nix { pkgs = pkgs.extend self.overlays.claude-code; };
      });

      nixosModules = {
        # services.hyperhive, for the host
        default = import ./nix/modules/hyperhive.nix { inherit self; };
        # what every agent container shares
        harness-base = import ./nix/modules/harness-base.nix { inherit self; };
        agent = {
          imports = [
            self.nixosModules.harness-base
            ./nix/templates/agent-base.nix
          ];
        };
        manager = {
          imports = [
            self.nixosModules.harness-base
            ./nix/templates/manager.nix
          ];
        };
      };

      # mkAgent / mkSwarm for the meta flake, and the pure directory walk.
      lib = import ./nix/lib { inherit self nixpkgs; };

      # The bases the meta flake builds on. agent-base is an agent named "base";
      # a meta repo's agents are built with lib.mkSwarm.
      nixosConfigurations = {
        agent-base = self.lib.mkAgent { name = "base"; };
        manager = self.lib.mkAgent { name = "manager"; };
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.hyperhive.python.withPackages (
              ps:
              pkgs.hyperhive.pythonDependencies ps
              ++ [
                ps.mypy
                ps.pytest
                ps.pytest-timeout
                ps.types-psutil
                ps.types-pyyaml
              ]
            ))
            pkgs.git
            pkgs.nixfmt
            pkgs.ruff
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);

      checks = forAllSystems (
        pkgs:
        {
          package = pkgs.hyperhive;

          formatting = pkgs.runCommand "hyperhive-nixfmt" { nativeBuildInputs = [ pkgs.nixfmt ]; } ''
            find ${nixFiles} -name '*.nix' -print0 | xargs -0 nixfmt --check
            touch $out
          '';

          agents-walk = import ./nix/tests/agents-walk.nix { inherit pkgs; };
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self; });
        }
      );
    };
}
