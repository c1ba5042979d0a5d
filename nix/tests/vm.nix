# checks.x86_64-linux.vm: a NixOS host with services.hyperhive enabled boots,
# the controller reports READY with its sockets listening, serves the
# dashboard, pings the watchdog, deploys the manager container, and spawns an
# agent that the operator pushes to the meta repo. It needs KVM and a few GB of
# memory, so it runs on a real NixOS machine:
#
#   nix build .#checks.x86_64-linux.vm -L
{ self }:
{ lib, ... }:
let
  system = "x86_64-linux";

  # The VM has no network, so whatever a deploy needs must already be in its
  # store: the systems the meta flake will evaluate to for the manager and for
  # `alice` (who has no agent.nix), prebuilt here, and the sources it evaluates
  # them from (hyperhive and its locked inputs).
  prebuilt = map (name: (self.lib.mkAgent { inherit name system; }).config.system.build.toplevel) [
    "manager"
    "alice"
  ];
  sources = [
    self.outPath
    self.inputs.nixpkgs.outPath
    self.inputs.nixpkgs-unstable.outPath
  ];
in
{
  name = "hyperhive";

  nodes.host =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      services.hyperhive.enable = true;

      virtualisation = {
        memorySize = 6144;
        cores = 2;
        diskSize = 16384;
        writableStore = true;
        additionalPaths = prebuilt ++ sources;
      };

      nix.settings = {
        substituters = lib.mkForce [ ];
        flake-registry = "";
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.git
      ];
    };

  testScript = ''
    def fnv1a_32(data: bytes) -> int:
        h = 0x811C9DC5
        for b in data:
            h ^= b
            h = (h * 0x01000193) & 0xFFFFFFFF
        return h


    ALICE_PORT = 8100 + fnv1a_32(b"alice") % 900
    MANIFEST = "apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: alice\n"


    def unit_property(name: str) -> str:
        return host.succeed(
            f"systemctl show --property={name} --value hyperhive.service"
        ).strip()


    start_all()

    with subtest("READY comes after the sockets listen"):
        # Type=notify: the unit is active only once the controller sent READY=1.
        host.wait_for_unit("hyperhive.service", timeout=1800)
        host.succeed("test -S /run/hyperhive/host.sock")
        # Any HTTP answer (a 404 included) proves the admin socket accepts.
        host.succeed(
            "curl --silent --output /dev/null "
            "--unix-socket /run/hyperhive/host.sock http://hyperhive/"
        )

    with subtest("the dashboard answers"):
        host.wait_for_open_port(7000)
        host.succeed("curl --fail --silent --output /dev/null http://127.0.0.1:7000/")

    with subtest("STATUS= carries the one-line summary"):
        host.wait_until_succeeds(
            "systemctl show --property=StatusText --value hyperhive.service"
            " | grep -E '^[0-9]+/[0-9]+ agents ready, [0-9]+ pending proposals?$'",
            timeout=120,
        )

    with subtest("the loop pings the watchdog"):
        before = unit_property("WatchdogTimestampMonotonic")
        host.wait_until_succeeds(
            "test \"$(systemctl show --property=WatchdogTimestampMonotonic"
            f" --value hyperhive.service)\" != '{before}'",
            timeout=400,
        )

    with subtest("the manager container runs its harness"):
        host.wait_for_unit("container@hm1nd.service", timeout=1800)
        host.wait_until_succeeds(
            "nixos-container run hm1nd -- systemctl is-active hyperhive-agent.service",
            timeout=600,
        )
        host.wait_for_open_port(8000)

    with subtest("an agent pushed to main gets a container"):
        host.succeed("git clone /var/lib/hyperhive/meta.git /root/meta")
        host.succeed("mkdir -p /root/meta/agents/alice")
        host.succeed(f"printf '%s' '{MANIFEST}' > /root/meta/agents/alice/agent.yaml")
        host.succeed(
            "git -C /root/meta add agents/alice",
            "git -C /root/meta -c user.name=operator -c user.email=operator@localhost"
            " commit --message 'spawn alice'",
            "git -C /root/meta push origin HEAD:main",
        )
        host.wait_for_unit("container@h-alice.service", timeout=1800)
        host.wait_until_succeeds(
            "nixos-container run h-alice -- systemctl is-active hyperhive-agent.service",
            timeout=600,
        )
        host.wait_for_open_port(ALICE_PORT)
        host.succeed("test -S /run/hyperhive/agents/alice/mcp.sock")

    with subtest("sockets and containers survive a controller restart"):
        host.succeed("systemctl restart hyperhive.service")
        host.wait_for_unit("hyperhive.service", timeout=600)
        host.succeed("test -d /run/hyperhive/agents/alice")
        host.succeed("nixos-container run h-alice -- systemctl is-active hyperhive-agent.service")
        host.wait_until_succeeds("test -S /run/hyperhive/agents/alice/mcp.sock", timeout=120)
  '';
}
