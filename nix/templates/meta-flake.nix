# The meta repo's flake: the swarm's desired state as NixOS systems.
#
# The hyperhive controller writes this file into a new meta repo, with the
# hyperhive flake reference in place of the placeholder below. Every
# directory agents/<name>/ that holds an agent.yaml becomes
# nixosConfigurations.<name>: hyperhive's agent base (the manager's base for
# agents/manager/) plus agents/<name>/agent.nix when there is one. The
# controller builds it with `nixos-container create|update <container>
# --flake <meta>#<name>`.
#
# To give an agent a flake that is not in nixpkgs (an MCP server, say), add it
# under `inputs` and use it from that agent's agent.nix, which receives every
# input but `self` as the module argument `flakeInputs`:
#
#   inputs.some-mcp.url = "github:OWNER/some-mcp";
#
#   # agents/alice/agent.nix
#   { pkgs, flakeInputs, ... }:
#   {
#     environment.systemPackages = [
#       flakeInputs.some-mcp.packages.${pkgs.stdenv.hostPlatform.system}.default
#     ];
#   }
#
# (flakeInputs is a module argument, so agent.nix cannot use it in `imports`.)
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
        # The host's platform; aarch64 hosts use "aarch64-linux".
        system = "x86_64-linux";
        flakeInputs = builtins.removeAttrs inputs [ "self" ];
      };
    };
}
