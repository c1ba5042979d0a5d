# The meta repo's directory walk, as pure builtins (no nixpkgs, no lib), so CI
# can evaluate it with a bare `nix-instantiate --eval` against a fixture tree.
#
#   (import ./agents.nix).agentsFromDir ./agents
#   => {
#        alice = {
#          name = "alice";
#          flavor = "agent";
#          container = "h-alice";
#          hasAgentNix = true;
#          agentNix = ./agents/alice/agent.nix;
#          manifest = ./agents/alice/agent.yaml;
#        };
#        manager = {
#          name = "manager";
#          flavor = "manager";
#          container = "hm1nd";
#          hasAgentNix = false;
#          agentNix = null;
#          manifest = ./agents/manager/agent.yaml;
#        };
#      }
#
# An agent is a directory `agents/<name>/` that holds an `agent.yaml` manifest
# and whose name is a valid agent name. The rule itself is schemas/names.py's,
# read from ./names.json (which `python -m schemas.names` writes; a test keeps it
# current and feeds the same table of names to both sides).
# Anything else under agents/ (stray files, a directory without a manifest, a
# badly named directory) is skipped rather than thrown on: the controller
# validates names and manifests and reports them, and one bad directory must
# not break the build of every other agent in the swarm.
let
  names = builtins.fromJSON (builtins.readFile ./names.json);
  inherit (names) manager managerContainer reserved;

  # The name rule as a regular expression body (builtins.match anchors it).
  namePattern = names.pattern;
  # The same rule in words, for option descriptions and errors.
  nameRule = names.rule;

  # schemas/names.py: is_agent_name — the manager, or a name matching the
  # pattern that is not reserved.
  isAgentName =
    name:
    builtins.isString name
    && (
      name == manager
      || (builtins.match namePattern name != null && !(builtins.elem name reserved))
    );

  # schemas/names.py: container_name
  containerName =
    name: if name == manager then managerContainer else "${names.containerPrefix}${name}";

  flavorOf = name: if name == manager then "manager" else "agent";

  isRegularFile = entries: file: (entries.${file} or null) == "regular";

  # One agent directory -> its description, or null when it is not an agent.
  describe =
    dir: name:
    let
      agentDir = dir + "/${name}";
      entries = builtins.readDir agentDir;
      hasAgentNix = isRegularFile entries "agent.nix";
    in
    if isAgentName name && isRegularFile entries "agent.yaml" then
      {
        inherit name hasAgentNix;
        flavor = flavorOf name;
        container = containerName name;
        manifest = agentDir + "/agent.yaml";
        agentNix = if hasAgentNix then agentDir + "/agent.nix" else null;
      }
    else
      null;

  agentsFromDir =
    dir:
    if !(builtins.pathExists dir) then
      { }
    else
      let
        entries = builtins.readDir dir;
        dirs = builtins.filter (name: entries.${name} == "directory") (builtins.attrNames entries);
        described = map (name: {
          inherit name;
          value = describe dir name;
        }) dirs;
      in
      builtins.listToAttrs (builtins.filter (entry: entry.value != null) described);
in
{
  inherit
    agentsFromDir
    containerName
    flavorOf
    isAgentName
    namePattern
    nameRule
    reserved
    ;
}
