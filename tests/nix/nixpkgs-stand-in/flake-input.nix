# The nixpkgs stand-in as a flake input: what hyperhive's flake and a meta
# flake see as `nixpkgs`. `import nixpkgs { ... }` gives ./pkgs.nix (through
# ./default.nix), `nixpkgs.lib` is the real lib (nix/vendor/nixpkgs-lib) and
# `nixpkgs.lib.nixosSystem` evaluates a system with the real module system
# against the NixOS options stand-in (../nixos-options.nix).
let
  lib = import ../../../nix/vendor/nixpkgs-lib/lib;

  nixosSystem =
    {
      modules,
      specialArgs ? { },
      ...
    }:
    lib.evalModules {
      # nixos/lib/eval-config.nix passes modulesPath; nixpkgs.nix sets pkgs
      specialArgs = {
        modulesPath = "/nix/store/00000000000000000000000000000000-nixos/modules";
      }
      // specialArgs;
      modules = [
        ../nixos-options.nix
        (
          { config, ... }:
          {
            _module.args.pkgs = import ./pkgs.nix {
              system =
                if builtins.isString config.nixpkgs.hostPlatform then
                  config.nixpkgs.hostPlatform
                else
                  config.nixpkgs.hostPlatform.system;
            };
          }
        )
      ]
      ++ modules;
    };
in
{
  outPath = ./.;
  lib = lib // {
    inherit nixosSystem;
  };
}
