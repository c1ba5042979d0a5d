# `import nixpkgs { system, overlays, config }` of the nixpkgs stand-in: the
# package set of ./pkgs.nix. Overlays are not applied: the stand-in set already
# has what hyperhive's overlays add (hyperhive, claude-code).
{
  system ? "x86_64-linux",
  ...
}:
import ./pkgs.nix { inherit system; }
