# A stand-in for the nixpkgs package set, for evaluating hyperhive's Nix code
# where there is no nixpkgs (CI's Debian nix-instantiate, no network). Packages
# are derivation-shaped attribute sets (`type = "derivation"`, a fake store
# path): they pass `types.package` and interpolate like packages, and nothing is
# ever built. `lib` is the real one (nix/vendor/nixpkgs-lib), and
# `formats.json`'s type is the JSON value type nixpkgs' pkgs-lib declares.
{
  system ? "x86_64-linux",
}:
let
  lib = import ../../../nix/vendor/nixpkgs-lib/lib;

  hash = "00000000000000000000000000000000";
  package =
    name: attrs:
    {
      type = "derivation";
      inherit name system;
      pname = (builtins.parseDrvName name).name;
      outPath = "/nix/store/${hash}-${name}";
      drvPath = "/nix/store/${hash}-${name}.drv";
      outputs = [ "out" ];
      meta = { };
    }
    // attrs;
  simple = name: package name { };

  # pkgs/pkgs-lib/formats.nix: json's type, the recursive JSON value
  jsonValue =
    with lib.types;
    let
      valueType =
        nullOr (oneOf [
          bool
          int
          float
          str
          path
          (attrsOf valueType)
          (listOf valueType)
        ])
        // {
          description = "JSON value";
        };
    in
    valueType;

  pkgs = {
    inherit lib;
    stdenv.hostPlatform.system = system;

    formats.json =
      { }:
      {
        type = jsonValue;
        # the text is kept for the tests, which read what would be written
        generate = name: value: package name { text = builtins.toJSON value; };
      };

    writeText = name: text: package name { inherit text; };
    runCommand =
      name: env: script:
      package name { inherit env script; };
    symlinkJoin = args: package args.name { inherit (args) paths; postBuild = args.postBuild or ""; };
    mkShell = args: package "nix-shell" { inherit args; };

    # pkgs.testers.runNixOSTest: evaluates every node with the NixOS options
    # stand-in (../nixos-options.nix) and forces their systems; runs nothing.
    testers.runNixOSTest =
      test:
      let
        flakeInput = import ./flake-input.nix;
        t = if lib.isFunction test then test { inherit lib; } else test;
        nodes = builtins.mapAttrs (
          name: node:
          (flakeInput.lib.nixosSystem {
            modules = [
              node
              {
                networking.hostName = lib.mkDefault name;
                # the test framework builds nodes for the host's platform
                nixpkgs.hostPlatform = lib.mkDefault system;
              }
            ];
          }).config.system.build.toplevel
        ) t.nodes;
      in
      package "vm-test-run-${t.name}" {
        inherit nodes;
        inherit (t) testScript;
        # forcing the check's path forces every node
        outPath = builtins.deepSeq (builtins.mapAttrs (_: n: n.outPath) nodes) "/nix/store/${hash}-vm-test-run-${t.name}";
      };

    hyperhive = package "hyperhive-0.1.0" {
      python = simple "python3-3.12";
      pythonDependencies = _ps: [ ];
    };
    claude-code = simple "claude-code-2.0.0";
  }
  // lib.genAttrs [
    "bubblewrap"
    "curl"
    "forgejo"
    "git"
    "makeWrapper"
    "nix"
    "nixfmt"
    "nixfmt-tree"
    "ripgrep"
    "ruff"
    "tea"
    "util-linux"
  ] simple;
in
pkgs
