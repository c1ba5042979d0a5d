# services.hyperhive.metrics / services.hyperhive.otel: Prometheus /metrics and
# OpenTelemetry export of the controller (docs/observability.md).
#
# Prometheus on the same host, scraping the controller every 15 s (uncomment). Every
# scrape needs a bearer token: tokenFile's, or without it the one the controller makes
# at /var/lib/hyperhive/metrics.token (0600, root). The token file must be readable by
# the prometheus user, e.g. a copy it owns:
#
#   services.hyperhive.metrics = {
#     enable = true;
#     port = 9469;
#     tokenFile = "/run/keys/hyperhive-metrics-token";  # else /var/lib/hyperhive/metrics.token
#   };
#   services.prometheus = {
#     enable = true;
#     scrapeConfigs = [
#       {
#         job_name = "hyperhive";
#         static_configs = [ { targets = [ "127.0.0.1:9469" ]; } ];
#         authorization.credentials_file = "/run/keys/hyperhive-metrics-token";
#         # (or bearer_token_file on Prometheus before 2.26)
#       }
#     ];
#     # the example alert rules (crash loop, stalled, dead letters, inbox age):
#     # ruleFiles = [ "${hyperhive}/docs/observability/alerts.rules.yml" ];
#   };
#
# The Grafana dashboard is docs/observability/grafana-dashboard.json (import it, or
# provision it through services.grafana.provision.dashboards).
{
  config,
  lib,
  ...
}:

let
  cfg = config.services.hyperhive;
  mcfg = cfg.metrics;
  ocfg = cfg.otel;
  loopback = builtins.elem mcfg.address [
    "127.0.0.1"
    "::1"
    "localhost"
  ];
in
{
  _file = toString ./metrics.nix;
  key = "hyperhive/nix/modules/metrics.nix";

  options.services.hyperhive.metrics = {
    enable = lib.mkEnableOption ''
      the controller's Prometheus endpoint, `GET /metrics` on its own TCP port: agents
      by phase and condition, crash restarts, reconcile passes, turns, tokens and cost per
      agent and model, inbox depth and age, HTTP requests (docs/observability.md)
    '';

    address = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = ''
        Address `/metrics` listens on. Anything but a loopback address needs
        {option}`services.hyperhive.metrics.tokenFile`: the series name every agent.
      '';
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 9469;
      description = "TCP port of `/metrics`.";
    };

    tokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/keys/hyperhive-metrics-token";
      description = ''
        File holding the bearer token every scrape must send
        (`authorization.credentials_file` in the scrape config). Not in the Nix store:
        give a path the controller (root) reads at start. Null: the controller makes
        its own, `/var/lib/hyperhive/metrics.token` (0600): scrapes need it either way.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the metrics port in the firewall (with a non-loopback address).";
    };
  };

  options.services.hyperhive.otel = {
    endpoint = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "http://127.0.0.1:4318";
      description = ''
        OTLP/HTTP endpoint of an OpenTelemetry collector: the controller exports a span
        per reconcile pass and deploy, every agent a span per turn (`invoke_agent`) with
        one per tool call (`execute_tool`). Off when null (the default).
      '';
    };

    claudeCode = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Also turn on Claude Code's own telemetry in every agent
        (`CLAUDE_CODE_ENABLE_TELEMETRY=1`; its metrics and events go to the same endpoint,
        each series with the resource attribute `hyperhive.agent`).
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      (lib.mkIf mcfg.enable {
        assertions = [
          {
            assertion = loopback || mcfg.tokenFile != null;
            message = ''
              services.hyperhive.metrics.address is ${mcfg.address}, not a loopback address:
              set services.hyperhive.metrics.tokenFile too.
            '';
          }
        ];
        services.hyperhive.settings.metrics = {
          host = mcfg.address;
          inherit (mcfg) port;
          token_file = mcfg.tokenFile;
        };
        networking.firewall.allowedTCPPorts = lib.optional mcfg.openFirewall mcfg.port;
      })
      (lib.mkIf (ocfg.endpoint != null) {
        services.hyperhive.settings.otel = {
          inherit (ocfg) endpoint;
          claude_code = ocfg.claudeCode;
        };
      })
    ]
  );
}
