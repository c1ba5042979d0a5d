# hyperhive.lib: what a meta flake (nix/templates/meta-flake.nix) calls.
{
  self,
  nixpkgs,
}:
let
  agents = import ./agents.nix;

  # One agent container's NixOS system: the harness base for its flavor, its
  # name, every flake input of the meta flake as `flakeInputs`, then the
  # agent's own modules (its agent.nix).
  mkAgent =
    {
      name,
      system ? "x86_64-linux",
      flavor ? agents.flavorOf name,
      modules ? [ ],
      flakeInputs ? { },
    }:
    let
      base = if flavor == "manager" then self.nixosModules.manager else self.nixosModules.agent;
      identity = {
        nixpkgs.hostPlatform = system;
        hyperhive.agent.name = name;
        _module.args.flakeInputs = flakeInputs;
      };
    in
    nixpkgs.lib.nixosSystem {
      modules = [
        base
        identity
      ]
      ++ modules;
    };

  # nixosConfigurations.<name> for every agent directory under `dir`.
  mkSwarm =
    {
      dir,
      system ? "x86_64-linux",
      flakeInputs ? { },
    }:
    builtins.mapAttrs (
      name: agent:
      mkAgent {
        inherit name system flakeInputs;
        inherit (agent) flavor;
        modules = if agent.hasAgentNix then [ agent.agentNix ] else [ ];
      }
    ) (agents.agentsFromDir dir);
in
{
  inherit agents mkAgent mkSwarm;
}
