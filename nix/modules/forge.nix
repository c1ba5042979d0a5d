# services.hyperhive.forge: the hive forge, a Forgejo next to the controller (docs/forge.md).
#
# Imported by ./hyperhive.nix. With `services.hyperhive.forge.enable`:
# - NixOS' own `services.forgejo` runs Forgejo on loopback (default
#   http://localhost:3000, sqlite, no sign-up, no mail); the containers share the
#   host's network, so agents reach it at the same URL;
# - `hyperhive-forge-admin.service` (oneshot, before the controller) makes the admin
#   user `hyperhive-admin` once and writes an admin token of it to
#   `<stateDir>/forge-admin-token` (root, 0600), again only when the one there stopped
#   working;
# - the controller's config gets `forge.url` / `forge.admin_token_file`, so it makes
#   one forge user + token per agent at deploy and delivers forge notifications.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.hyperhive;
  fcfg = cfg.forge;
  forgejo = config.services.forgejo;
  url = "http://localhost:${toString fcfg.port}";
  tokenFile = "${cfg.stateDir}/forge-admin-token";
  admin = "hyperhive-admin";
  forgejoExe = "${forgejo.package}/bin/forgejo";
  curl = "${pkgs.curl}/bin/curl";
  provision = ''
    tok=${lib.escapeShellArg tokenFile}
    api=${lib.escapeShellArg "${url}/api/v1"}
    # wait for Forgejo to answer (it may still be migrating its database)
    for _ in $(seq 1 120); do
      ${curl} -fsS "$api/version" >/dev/null 2>&1 && break
      sleep 1
    done
    if [ -s "$tok" ] && ${curl} -fsS -o /dev/null \
        -H "Authorization: token $(cat "$tok")" "$api/admin/users?limit=1"; then
      exit 0  # the token there still works
    fi
    as_forgejo() {
      ${pkgs.util-linux}/bin/runuser -u ${forgejo.user} -- \
        ${forgejoExe} --work-path ${lib.escapeShellArg forgejo.stateDir} "$@"
    }
    as_forgejo admin user create --admin --username ${admin} \
      --email ${admin}@hyperhive.invalid --random-password --must-change-password=false \
      >/dev/null 2>&1 || true  # already there
    new=$(as_forgejo admin user generate-access-token --username ${admin} \
      --token-name "hyperhive-$(date +%s)" --scopes all --raw)
    umask 077
    printf '%s\n' "$new" > "$tok.tmp"
    mv "$tok.tmp" "$tok"
  '';
in
{
  _file = toString ./forge.nix;
  key = "hyperhive/nix/modules/forge.nix";

  options.services.hyperhive.forge = {
    enable = lib.mkEnableOption ''
      the hive forge: a Forgejo on this host (through NixOS' `services.forgejo`) that
      the controller administers, with one forge user and token per agent and forge
      notifications delivered to the agents' inboxes (docs/forge.md)
    '';

    port = lib.mkOption {
      type = lib.types.ints.between 1 65535;
      default = 3000;
      description = ''
        Loopback port of the forge's web UI and API (`http://localhost:<port>`), which
        the controller and the agents (sharing the host's network) use.
      '';
    };

    pollSeconds = lib.mkOption {
      type = lib.types.numbers.between 1 3600;
      default = 15;
      description = "How often the controller delivers unread forge notifications.";
    };
  };

  config = lib.mkIf (cfg.enable && fcfg.enable) {
    services.forgejo = {
      enable = true;
      database.type = lib.mkDefault "sqlite3";
      settings = {
        server = {
          HTTP_ADDR = "127.0.0.1";
          HTTP_PORT = fcfg.port;
          DOMAIN = "localhost";
          ROOT_URL = "${url}/";
        };
        service.DISABLE_REGISTRATION = lib.mkDefault true;
        # agents get notifications through the controller, not by mail
        mailer.ENABLED = lib.mkDefault false;
      };
    };

    systemd.services.hyperhive-forge-admin = {
      description = "hyperhive: an admin token of the hive forge for the controller";
      after = [ "forgejo.service" ];
      requires = [ "forgejo.service" ];
      before = [ "hyperhive.service" ];
      requiredBy = [ "hyperhive.service" ];
      script = provision;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        UMask = "0077";
      };
    };

    services.hyperhive.settings.forge = {
      inherit url;
      admin_token_file = tokenFile;
      poll_seconds = fcfg.pollSeconds;
    };
  };
}
