# checks.<system>.agents-walk: nix/lib/agents.nix against the fixture meta
# tree in ./fixtures/meta (alice has an agent.nix, bob does not, manager is the
# manager; operator is reserved, notes/ has no agent.yaml, README.md is a file).
# tests/nix/test_nix.py runs the same walk with a bare nix-instantiate.
{ pkgs }:
let
  inherit (pkgs) lib;
  agents = import ../lib/agents.nix;
  walked = agents.agentsFromDir ./fixtures/meta/agents;
  summary = builtins.mapAttrs (
    _: agent:
    removeAttrs agent [
      "agentNix"
      "manifest"
    ]
  ) walked;

  failures = lib.runTests {
    testSummary = {
      expr = summary;
      expected = {
        alice = {
          name = "alice";
          flavor = "agent";
          container = "h-alice";
          hasAgentNix = true;
        };
        bob = {
          name = "bob";
          flavor = "agent";
          container = "h-bob";
          hasAgentNix = false;
        };
        manager = {
          name = "manager";
          flavor = "manager";
          container = "hm1nd";
          hasAgentNix = false;
        };
      };
    };

    testAgentNix = {
      expr = map (agent: agent.agentNix) [
        walked.alice
        walked.bob
      ];
      expected = [
        ./fixtures/meta/agents/alice/agent.nix
        null
      ];
    };

    testMissingDir = {
      expr = agents.agentsFromDir ./fixtures/no-such-dir;
      expected = { };
    };

    testNames = {
      expr = map agents.isAgentName [
        "alice"
        "web-2"
        "manager"
        "operator"
        "hyperhive"
        "Alice"
        "2fast"
        "toolongname"
        ""
        "web-"
        "a"
      ];
      expected = [
        true
        true
        true
        false
        false
        false
        false
        false
        false
        false
        true
      ];
    };
  };
in
if failures == [ ] then
  pkgs.runCommand "hyperhive-agents-walk" { } "touch $out"
else
  throw "nix/lib/agents.nix: ${builtins.toJSON failures}"
