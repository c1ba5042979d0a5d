# Fallback meta flake, used only when the source tree's nix/templates/meta-flake.nix
# is not available (e.g. an installed wheel). Same shape: every agents/<name>/
# with an agent.yaml becomes nixosConfigurations.<name>.
{
  description = "hyperhive meta repo: the desired state of one swarm";

  inputs = {
    hyperhive.url = "@HYPERHIVE_FLAKE@";
    nixpkgs.follows = "hyperhive/nixpkgs";
  };

  outputs =
    { hyperhive, ... }@inputs:
    {
      nixosConfigurations = hyperhive.lib.mkSwarm {
        dir = ./agents;
        system = "x86_64-linux";
        flakeInputs = builtins.removeAttrs inputs [ "self" ];
      };
    };
}
