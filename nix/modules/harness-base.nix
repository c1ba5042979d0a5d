# What every agent container shares (nixosModules.agent and
# nixosModules.manager both import it): an nspawn NixOS container that runs
# the hyperhive harness, `hyperhive-agent serve`, as a Type=notify service.
#
# Bind mounts. The controller's nixos-container driver sets them up in
# EXTRA_NSPAWN_FLAGS of /etc/nixos-containers/<container>.conf
# (`nixos-container` has no --bind flag, and its start script ignores
# /run/systemd/nspawn/*.nspawn files). This module only relies on them:
#
#   host                              container                     mode
#   <run>/agents/<a>/                 /run/hive                     rw  mcp.sock (API)
#     (manager: <run>/manager/)
#   <state>/agents/<a>/claude/        /root/.claude                 rw  credentials, sessions
#   <state>/agents/<a>/state/         /state                        rw  durable notes
#   <state>/agents/<a>/settings.json  /etc/hyperhive/settings.json  ro  rendered manifest
#   <state>/manager/meta/             /meta                         rw  manager: meta clone
#
# <state> is /var/lib/hyperhive and <run> is /run/hyperhive under the host
# module. The container shares the host's network namespace
# (PRIVATE_NETWORK=0), so its web UI port is a host port.
{ self }:
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.hyperhive.agent;
  agents = import ../lib/agents.nix;
  unfree = [ "claude-code" ];
in
{
  _file = toString ./harness-base.nix;
  key = "hyperhive/nix/modules/harness-base.nix";

  options.hyperhive.frontend = lib.mkOption {
    type = lib.types.attrsOf lib.types.anything;
    default = { };
    description = ''
      Custom front-end files (the seeds' `frontend.extraFiles` / `frontend.dist`).
      Declared so that an agent.nix written for the original fails with a
      pointer instead of a missing option: hyperhive reads them from
      `spec.frontend` in the agent's manifest, where the push hook checks the
      paths and the dashboard serves them sandboxed (docs/web-ui.md).
    '';
  };

  options.hyperhive.agent = {
    name = lib.mkOption {
      # schemas/names.py's rule (nix/lib/names.json): a name ending in `-`
      # would make the hostname `h-<name>` that networking.hostName refuses.
      type = lib.types.addCheck (lib.types.strMatching agents.namePattern) agents.isAgentName // {
        description = "agent name (${agents.nameRule}; not a reserved name)";
      };
      example = "alice";
      description = ''
        The agent's logical name (`HYPERHIVE_AGENT`): `manager` for the
        manager, else the name of its directory under `agents/` in the meta
        repo. The container is `h-<name>` (the manager's is `hm1nd`).
      '';
    };

    flavor = lib.mkOption {
      type = lib.types.enum [
        "agent"
        "manager"
      ];
      default = "agent";
      description = ''
        `manager` gets the privileged API (spawn / apply-commit proposals,
        lifecycle verbs, operator questions) and the `/meta` working clone.
      '';
    };

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.hyperhive;
      defaultText = lib.literalExpression "pkgs.hyperhive";
      description = "The hyperhive package that provides `hyperhive-agent`.";
    };

    claudePackage = lib.mkOption {
      type = lib.types.package;
      default = pkgs.claude-code;
      defaultText = lib.literalExpression "pkgs.claude-code";
      description = ''
        The Claude Code CLI the harness runs for every turn; by default the one
        from nixpkgs-unstable (`overlays.claude-code`).
      '';
    };

    webTcp = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Also serve the agent's web UI on TCP (`HYPERHIVE_WEB_TCP`). Off by
        default: the UI listens on `/run/hive/web.sock` and the operator
        reaches it through the dashboard at `/agents/<name>/`. When on, every
        TCP request must carry the agent's credential as a bearer token.
      '';
    };

    webHost = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = ''
        Address the agent's web UI listens on when `webTcp` is on
        (`HYPERHIVE_WEB_HOST`).
      '';
    };

    webPort = lib.mkOption {
      type = lib.types.nullOr lib.types.port;
      default = null;
      description = ''
        Port of the agent's web UI (`HYPERHIVE_WEB_PORT`). `null` leaves it to
        `web_port` in the settings file, which the controller chooses once
        (8000 for the manager, `8100 + FNV-1a(name) % 900` for an agent) and
        keeps.
      '';
    };
  };

  config = {
    nixpkgs.overlays = [
      self.overlays.default
      self.overlays.claude-code
    ];
    # The overlay's claude-code already comes from an instance that allows it;
    # this covers pkgs.claude-code of the container's own nixpkgs as well, so
    # the operator sets nothing anywhere.
    nixpkgs.config.allowUnfreePredicate = pkg: builtins.elem (lib.getName pkg) unfree;

    boot.isNspawnContainer = true;

    networking = {
      hostName = lib.mkDefault (agents.containerName cfg.name);
      useDHCP = lib.mkDefault false;
      # The host's network namespace is shared: the host's firewall is the one
      # that applies, and nspawn withholds CAP_NET_ADMIN anyway.
      firewall.enable = lib.mkDefault false;
    };

    documentation.enable = lib.mkDefault false;

    environment.systemPackages = [
      cfg.package
      cfg.claudePackage
      pkgs.git
      # the hive forge's CLI: logged in at boot when the controller provisioned a
      # forge token (docs/forge.md); without one it is never run
      pkgs.tea
    ];

    assertions = [
      {
        assertion = config.hyperhive.frontend == { };
        message = ''
          hyperhive.frontend is set in ${cfg.name}'s agent.nix, but the controller serves
          custom front-ends from the manifest, not from the container: move it to
          spec.frontend in agents/${cfg.name}/agent.yaml (extraFiles / dist, docs/web-ui.md).
        '';
      }
    ];

    programs.git = {
      enable = true;
      config = {
        init.defaultBranch = "main";
        user = {
          name = cfg.name;
          email = "${cfg.name}@hyperhive.invalid";
        };
        # Bind-mounted from the host, where root owns them too.
        safe.directory = [
          "/meta"
          "/state"
        ];
      };
    };

    systemd.services.hyperhive-agent = {
      description = "hyperhive agent harness (${cfg.name})";
      wantedBy = [ "multi-user.target" ];
      # The host's network is shared and up before the container starts; the
      # harness retries its socket by itself.
      after = [ "network.target" ];

      # The system profile is on PATH so that whatever an agent adds in its
      # agent.nix (environment.systemPackages) reaches claude's Bash tool
      # without editing this unit.
      path = [
        cfg.claudePackage
        pkgs.git
        "/run/current-system/sw"
      ];

      environment = {
        HYPERHIVE_AGENT = cfg.name;
        HYPERHIVE_FLAVOR = cfg.flavor;
        HYPERHIVE_SOCKET = "/run/hive/mcp.sock";
        HYPERHIVE_STATE_DIR = "/state";
        HYPERHIVE_SETTINGS = "/etc/hyperhive/settings.json";
        # bound read-only by the controller; made at deploy, rotated on recreate
        HYPERHIVE_CREDENTIAL_FILE = "/etc/hyperhive/credential";
        HYPERHIVE_CLAUDE_BIN = "${cfg.claudePackage}/bin/claude";
        CLAUDE_CONFIG_DIR = "/root/.claude";
        HOME = "/root";
        # The store is read-only; updates come with a rebuild.
        DISABLE_AUTOUPDATER = "1";
        PYTHONUNBUFFERED = "1";
        # The UI always listens on /run/hive/web.sock, which the dashboard proxies at
        # /agents/<name>/; a TCP port is an opt-in that requires the agent's credential.
        HYPERHIVE_WEB_TCP = if cfg.webTcp then "1" else "0";
        HYPERHIVE_WEB_HOST = cfg.webHost;
        # null (unset): the harness reads web_port from the settings file.
        HYPERHIVE_WEB_PORT = lib.mapNullable toString cfg.webPort;
      };

      unitConfig.RequiresMountsFor = [
        "/run/hive"
        "/state"
        "/root/.claude"
      ];

      serviceConfig = {
        # READY=1 once the web UI listens (sd_notify(3)).
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe' cfg.package "hyperhive-agent"} serve";
        Restart = "always";
        RestartSec = "5s";
        # Plugin installs run before READY.
        TimeoutStartSec = "10min";
        # The harness pings WATCHDOG=1 only while its loop is within the bound of
        # what it is doing (a turn may run up to turn_timeout_seconds).
        WatchdogSec = "2min";
        # SIGTERM to the harness only, so it can end the running turn itself;
        # whatever is left gets SIGKILL after TimeoutStopSec.
        KillMode = "mixed";
        TimeoutStopSec = "30s";
      };
    };

    system.stateVersion = lib.mkDefault "25.11";
  };
}
