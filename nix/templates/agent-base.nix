# nixosConfigurations.agent-base: an agent container (`h-<name>`). The meta
# flake builds nixosConfigurations.<name> from this plus agents/<name>/agent.nix,
# which is where an agent gets its tools, e.g.
#
#   { pkgs, flakeInputs, ... }:
#   {
#     environment.systemPackages = [
#       pkgs.ripgrep
#       flakeInputs.some-mcp-server.packages.${pkgs.stdenv.hostPlatform.system}.default
#     ];
#   }
#
# (`flakeInputs`: every input of the meta flake but `self`.)
{
  hyperhive.agent.flavor = "agent";
}
