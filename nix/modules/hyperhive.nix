# services.hyperhive: the hyperhive controller on a NixOS host.
#
# flake.nix exports it as
#   nixosModules.default = import ./nix/modules/hyperhive.nix { inherit self; };
# so the package and the flake reference the meta repo builds against default
# to this very flake. Imported any other way (`{ self = null; }`), set
# `package` and `settings.hyperhive_flake` yourself.
{ self ? null }:
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.hyperhive;

  settingsFormat = pkgs.formats.json { };
  # JSON is YAML: `hyperhive serve --config` reads it and validates it against
  # schemas/json/config.schema.json before doing anything else.
  configFile = settingsFormat.generate "hyperhive.json" (
    lib.filterAttrsRecursive (_: value: value != null) cfg.settings
  );

  runDir = "/run/hyperhive";
  defaultStateDir = "/var/lib/hyperhive";
  # The nixos-container driver writes <name>.conf here; older stateVersions
  # use /etc/containers, which it does not know about.
  containersConfDir = "/etc/nixos-containers";
  # Per-container resource limits (spec.resources) are systemd drop-ins here:
  # read before /etc/systemd/system (a store symlink on NixOS), kept across reboots.
  systemdControlDir = "/etc/systemd/system.control";
  system = pkgs.stdenv.hostPlatform.system;
  agentPorts = cfg.settings.ports;

  # The operator's CLI, pointed at this host's state and sockets even under
  # sudo (which drops the environment).
  cli = pkgs.symlinkJoin {
    name = "hyperhive-cli";
    paths = [ cfg.package ];
    nativeBuildInputs = [ pkgs.makeWrapper ];
    postBuild = ''
      wrapProgram $out/bin/hyperhive \
        --set-default HYPERHIVE_STATE_DIR ${lib.escapeShellArg cfg.stateDir} \
        --set-default HYPERHIVE_RUN_DIR ${runDir}
    '';
  };
  dashboardOnLoopback = builtins.elem cfg.dashboard.address [
    "127.0.0.1"
    "::1"
    "localhost"
  ];
in
{
  _file = toString ./hyperhive.nix;
  key = "hyperhive/nix/modules/hyperhive.nix";
  imports = [
    ./forge.nix # services.hyperhive.forge: the hive forge (docs/forge.md)
    ./metrics.nix # services.hyperhive.metrics / otel: Prometheus and OpenTelemetry
  ];

  options.services.hyperhive = {
    enable = lib.mkEnableOption "hyperhive, a swarm of Claude Code agents in NixOS containers";

    package = lib.mkOption {
      type = lib.types.package;
      default = if self != null then self.packages.${system}.default else pkgs.hyperhive;
      defaultText = lib.literalExpression ''
        hyperhive.packages.''${pkgs.stdenv.hostPlatform.system}.default
      '';
      description = ''
        The hyperhive package: the controller (`hyperhive`, also put on the
        system PATH for the operator) and the harness.
      '';
    };

    stateDir = lib.mkOption {
      type = lib.types.strMatching "/.+";
      default = defaultStateDir;
      example = "/srv/hyperhive";
      description = ''
        Where the controller keeps its state: the meta repo (`meta.git`), the
        broker database, and per agent the durable notes, the claude
        credentials and the rendered settings file that are bind-mounted into
        its container. Rendered into `settings.state_dir`.
      '';
    };

    dashboard = {
      address = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = ''
          Address the dashboard listens on. It needs a login (`sudo hyperhive
          dashboard` prints a one-time URL) and answers only to loopback names
          and `settings.dashboard.hosts`; it speaks plain HTTP, so keep it on
          loopback and reach it through an SSH tunnel or a TLS reverse proxy.
        '';
      };

      port = lib.mkOption {
        type = lib.types.port;
        default = 7000;
        description = "TCP port of the dashboard.";
      };
    };

    operatorPronouns = lib.mkOption {
      # one line, as settings.operator_pronouns in the controller's config schema
      type = lib.types.strMatching "[^[:cntrl:]]{1,32}";
      default = "she/her";
      example = "they/them";
      description = ''
        How the agents' prompts refer to the operator, and the pronouns they are
        asked to use for them. Rendered into `settings.operator_pronouns`; an
        agent picks a change up at its next deploy (a manifest change, an
        upgrade, or *update* in the dashboard).
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the dashboard port in the firewall.";
    };

    openAgentPorts = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open the per-agent web UI ports in the firewall: the manager's
        (`settings.ports.manager`) and the agents' range (`agent_base` up to
        `agent_base + agent_range - 1`). The containers share the host's
        network, so these are host ports; they only listen beyond loopback
        if an agent's agent.nix sets `hyperhive.agent.webTcp` and
        `hyperhive.agent.webHost`; each TCP request then needs that agent's
        credential. The operator normally reaches agent UIs through the
        dashboard at `/agents/<name>/` instead.
      '';
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/secrets/hyperhive.env";
      description = ''
        A file of `NAME=value` lines for the controller's environment, kept out
        of the Nix store (`EnvironmentFile=`). Under the `local` runtime the
        controller passes `ANTHROPIC_*` and `CLAUDE_CODE_*` through to every
        agent.
      '';
    };

    settings = lib.mkOption {
      default = { };
      description = ''
        The controller's configuration file (`hyperhive serve --config`),
        rendered as JSON; see `schemas/json/config.schema.json`. `state_dir`,
        `run_dir` and `dashboard` are set from {option}`services.hyperhive.stateDir`
        and {option}`services.hyperhive.dashboard`. The controller refuses to
        start on an unknown key or a bad value and names it in the journal.
      '';
      type = lib.types.submodule {
        freeformType = settingsFormat.type;

        options = {
          runtime = lib.mkOption {
            type = lib.types.enum [
              "auto"
              "local"
              "nixos-container"
            ];
            default = "nixos-container";
            description = ''
              Runtime driver: `nixos-container` runs every agent in its own
              container (`h-<name>`, the manager `hm1nd`); `local` runs them as
              plain processes; `auto` picks `nixos-container` when it is on
              PATH.
            '';
          };

          hyperhive_flake = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = if self != null then "path:${self}" else null;
            defaultText = lib.literalExpression ''"path:''${hyperhive}"'';
            example = "github:OWNER/hyperhive";
            description = ''
              Flake reference of hyperhive that the meta repo's flake uses as
              its `hyperhive` input (and whose nixpkgs it follows). The default
              is the store path of the flake this module came from, so
              containers are built from exactly the revision the host runs and
              are rebuilt when the host moves to a new one.
            '';
          };

          resync_seconds = lib.mkOption {
            type = lib.types.numbers.between 1 86400;
            default = 60;
            description = ''
              Seconds between periodic reconcile passes. A push to the meta
              repo triggers a pass at once; this is the fallback.
            '';
          };

          default_model = lib.mkOption {
            type = lib.types.str;
            default = "haiku";
            description = "Claude model of an agent whose manifest names none.";
          };

          log_level = lib.mkOption {
            type = lib.types.enum [
              "debug"
              "info"
              "warning"
              "error"
            ];
            default = "info";
            description = "Controller log level (the journal).";
          };

          budget = lib.mkOption {
            default = null;
            example = lib.literalExpression "{ usdPerDay = 50; warnAt = 0.9; }";
            description = ''
              Swarm-wide spend per UTC day, summed over every agent: over it, no
              agent takes a new turn until the next UTC day or an extension
              (`hyperhive budget --swarm --allow USD`). Per-agent budgets are
              `spec.budget` in each agent's manifest (docs/budgets.md).
            '';
            # as `budget` in schemas/json/config.schema.json; null fields are left out
            type = lib.types.nullOr (
              lib.types.submodule {
                options = {
                  usdPerDay = lib.mkOption {
                    type = lib.types.nullOr (lib.types.numbers.between 0 1000000);
                    default = null;
                    description = "US dollars per UTC day.";
                  };
                  tokensPerDay = lib.mkOption {
                    type = lib.types.nullOr (lib.types.ints.between 0 1000000000000);
                    default = null;
                    description = "Input, output and cache-write tokens per UTC day.";
                  };
                  warnAt = lib.mkOption {
                    type = lib.types.nullOr (lib.types.numbers.between 0.01 1);
                    default = null;
                    description = "Fraction of a limit at which a BudgetWarning goes out (0.8 when unset).";
                  };
                };
              }
            );
          };

          ports = {
            manager = lib.mkOption {
              # not types.port: the controller's config schema refuses 0
              type = lib.types.ints.between 1 65535;
              default = 8000;
              description = "Web UI port of the manager.";
            };

            agent_base = lib.mkOption {
              # not types.port: the controller's config schema refuses 0
              type = lib.types.ints.between 1 65535;
              default = 8100;
              description = "First web UI port of the agents.";
            };

            agent_range = lib.mkOption {
              type = lib.types.ints.between 1 10000;
              default = 900;
              description = ''
                Number of agent web UI ports: an agent gets
                `agent_base + FNV-1a(name) % agent_range`, kept once chosen.
              '';
            };
          };
        };
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = cfg.settings.hyperhive_flake != null;
            message = ''
              services.hyperhive.settings.hyperhive_flake is not set. Import the module
              from hyperhive's flake (hyperhive.nixosModules.default), or set it to a flake
              reference of hyperhive, e.g. "github:OWNER/hyperhive".
            '';
          }
          {
            assertion = cfg.settings.runtime != "nixos-container" || config.boot.enableContainers;
            message = ''
              services.hyperhive: runtime "nixos-container" needs boot.enableContainers = true.
            '';
          }
          {
            assertion =
              cfg.settings.runtime != "nixos-container"
              || lib.versionAtLeast config.system.stateVersion "22.05";
            message = ''
              services.hyperhive: runtime "nixos-container" writes ${containersConfDir}/<name>.conf,
              which nixos-container uses from system.stateVersion 22.05 on.
            '';
          }
        ];

        warnings = lib.optional (cfg.openFirewall && dashboardOnLoopback) ''
          services.hyperhive.openFirewall opens port ${toString cfg.dashboard.port}, but the
          dashboard listens on ${cfg.dashboard.address} only (services.hyperhive.dashboard.address).
        '';

        services.hyperhive.settings = {
          state_dir = cfg.stateDir;
          operator_pronouns = cfg.operatorPronouns;
          run_dir = runDir;
          dashboard = {
            host = cfg.dashboard.address;
            port = cfg.dashboard.port;
          };
        };

        boot.enableContainers = lib.mkDefault true;
        # nixos-container create|update --flake
        nix.settings.experimental-features = [
          "nix-command"
          "flakes"
        ];

        environment.systemPackages = [ cli ];
        # The same file the service reads, for the operator's CLI runs.
        environment.etc."hyperhive/config.json".source = configFile;

        # Writable for the service under ProtectSystem (ReadWritePaths).
        systemd.tmpfiles.settings."10-hyperhive".${containersConfDir}.d = {
          mode = "0755";
          user = "root";
          group = "root";
        };
        systemd.tmpfiles.settings."10-hyperhive-limits".${systemdControlDir}.d = {
          mode = "0755";
          user = "root";
          group = "root";
        };

        systemd.services.hyperhive = {
          description = "hyperhive controller";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [
            "network-online.target"
            "nix-daemon.socket"
          ];

          # git for the meta repo; nixos-container (and systemctl, machinectl)
          # from the system profile, which is where the host's containers
          # module puts the nixos-container matching its configuration.
          path = [
            pkgs.git
            # the hourly event-log sweep runs in a sandbox that sees one agent's state only
            pkgs.bubblewrap
            config.nix.package
            "/run/current-system/sw"
          ];

          environment = {
            HYPERHIVE_STATE_DIR = cfg.stateDir;
            HYPERHIVE_RUN_DIR = runDir;
            # Builds go through nix-daemon, never the service's own sandbox.
            NIX_REMOTE = "daemon";
            HOME = cfg.stateDir;
            XDG_CACHE_HOME = "/var/cache/hyperhive";
            PYTHONUNBUFFERED = "1";
          };

          serviceConfig = {
            # READY=1 after the sockets listen and the first reconcile pass is
            # done, WATCHDOG=1 from the loop every WatchdogSec/2, STATUS= with
            # agents ready / total and pending proposals (sd_notify(3)).
            Type = "notify";
            NotifyAccess = "main";
            WatchdogSec = "5min";
            # The first pass may build the manager's container from scratch;
            # the controller extends this with EXTEND_TIMEOUT_USEC while it builds.
            TimeoutStartSec = "30min";
            TimeoutStopSec = "2min";
            ExecStart = lib.concatStringsSep " " [
              (lib.getExe' cfg.package "hyperhive")
              "--state-dir"
              (lib.escapeShellArg cfg.stateDir)
              "serve"
              "--config"
              "${configFile}"
            ];
            EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
            Restart = "on-failure";
            RestartSec = "5s";

            # Sockets (and the per-agent socket directories the containers
            # bind-mount) survive a restart of the controller.
            # root's alone: the operator key, host.sock, the broker database and
            # meta.git are the operator's (agents reach only their own bind mounts)
            RuntimeDirectory = "hyperhive";
            RuntimeDirectoryMode = "0700";
            RuntimeDirectoryPreserve = "yes";
            StateDirectory = lib.mkIf (cfg.stateDir == defaultStateDir) "hyperhive";
            StateDirectoryMode = "0700";
            CacheDirectory = "hyperhive";
            UMask = "0077";

            # Hardening that leaves nixos-container working: it writes
            # /etc/nixos-containers, /var/lib/nixos-containers and
            # /nix/var/nix/profiles/per-container, enters containers with
            # nsenter, and starts container@<name> through systemd (so the
            # containers never run inside this unit). Not set, on purpose:
            # RestrictNamespaces (nsenter), MemoryDenyWriteExecute (cffi in
            # pygit2), PrivateDevices / ProtectClock (device policy),
            # CapabilityBoundingSet (it is root's job).
            NoNewPrivileges = true;
            PrivateTmp = true;
            ProtectHome = true;
            ProtectSystem = "full";
            ReadWritePaths = [
              containersConfDir
              systemdControlDir
            ];
            ProtectKernelModules = true;
            ProtectKernelLogs = true;
            ProtectKernelTunables = true;
            ProtectControlGroups = true;
            ProtectHostname = true;
            LockPersonality = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            RestrictAddressFamilies = [
              "AF_UNIX"
              "AF_INET"
              "AF_INET6"
              "AF_NETLINK"
            ];
            SystemCallArchitectures = "native";
          };
        };
      }

      (lib.mkIf (cfg.stateDir != defaultStateDir) {
        systemd.tmpfiles.settings."10-hyperhive".${cfg.stateDir}.d = {
          mode = "0700";
          user = "root";
          group = "root";
        };
      })

      (lib.mkIf cfg.openFirewall {
        networking.firewall.allowedTCPPorts = [ cfg.dashboard.port ];
      })

      (lib.mkIf cfg.openAgentPorts {
        networking.firewall = {
          allowedTCPPorts = [ agentPorts.manager ];
          allowedTCPPortRanges = [
            {
              from = agentPorts.agent_base;
              to = agentPorts.agent_base + agentPorts.agent_range - 1;
            }
          ];
        };
      })
    ]
  );
}
