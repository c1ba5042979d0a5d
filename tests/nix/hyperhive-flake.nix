# hyperhive's flake as `nix` would see it, with the nixpkgs stand-in for both
# nixpkgs inputs: its outputs, `outPath` (a fake store path of the source) and
# `inputs`, as a flake's `self` has them. `src`: the checkout whose flake.nix
# it is (tests/nix/test_nix_catches.py evaluates broken copies).
{
  src ? ../..,
}:
let
  flake = import (src + "/flake.nix");
  nixpkgs = import ./nixpkgs-stand-in/flake-input.nix;
  inputs = {
    inherit nixpkgs;
    nixpkgs-unstable = nixpkgs;
  };
  self =
    flake.outputs (inputs // { inherit self; })
    // {
      outPath = "/nix/store/00000000000000000000000000000000-source";
      inherit inputs;
    };
in
self
