# claude-code from nixpkgs-unstable: the stable channel lags too far behind the
# CLI. claude-code is unfree; the unstable instance imported here allows that
# one package and nothing else, so neither the host's operator nor an agent's
# agent.nix has to set allowUnfree (a container evaluates its own nixpkgs, so a
# host-level allowUnfree would not reach it anyway).
{ nixpkgs-unstable }:
final: prev:
let
  unstable = import nixpkgs-unstable {
    inherit (prev.stdenv.hostPlatform) system;
    config.allowUnfreePredicate =
      pkg: builtins.elem (nixpkgs-unstable.lib.getName pkg) [ "claude-code" ];
  };
in
{
  inherit (unstable) claude-code;
}
