# pkgs.hyperhive, built with the python3 of the nixpkgs it is applied to.
final: prev: {
  hyperhive = final.callPackage ../package.nix { };
}
