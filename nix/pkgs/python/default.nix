# Python packages hyperhive needs that nixpkgs does not have at the required
# version: the MCP SDK 2.x (`mcp.server.MCPServer`; nixpkgs ships 1.x, whose
# FastMCP API the harness does not use) and what it newly depends on.
#
# All four are pure-Python (py3-none-any) wheels from PyPI. The hashes are the
# sha256 of those wheel files as PyPI serves them; Nix checks them on the first
# build. To bump a version: change it here, set `hash = lib.fakeHash;`, build,
# and copy the hash Nix prints.
#
# Used as a python `packageOverrides` (see ../../package.nix).
final: prev: {
  httpcore2 = final.callPackage ./httpcore2.nix { };
  httpx2 = final.callPackage ./httpx2.nix { };
  mcp-types = final.callPackage ./mcp-types.nix { };
  mcp = final.callPackage ./mcp.nix { };
  # the kubernetes runtime's client (docs/kubernetes.md)
  lightkube-models = final.callPackage ./lightkube-models.nix { };
  lightkube = final.callPackage ./lightkube.nix { };
}
