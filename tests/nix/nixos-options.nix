# The NixOS options hyperhive's modules set, declared by hand with the types
# NixOS 25.11 gives them (nixos/modules/…, cited per option), for evaluating the
# modules with the real module system (`lib.evalModules` of the vendored nixpkgs
# lib) where no nixpkgs checkout exists: CI's Debian nix-instantiate.
#
# It is a stand-in for the NixOS module tree, not a copy of it: only the options
# the modules (and the VM test's node) set, with their real types, so that a
# misspelled option ("The option `…' does not exist") or a value of the wrong
# type ("A definition for option `…' is not of type …") fails here the way it
# fails on a host. What it does not do: build anything, or check the options
# NixOS would derive from these (unit files, /etc). An option a module starts to
# set must be declared here first, with its NixOS type.
#
# system.build.toplevel stands in for the system: like NixOS' it refuses failed
# assertions; unlike it, it forces every option value (so every type is
# checked) and carries them as `summary` for the tests to read.
{
  lib,
  pkgs,
  config,
  ...
}:
let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-lib.nix: unitNameType
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix: unitOption. Lists concatenate (repeatable
  # directives); anything else must be defined once, or identically.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    description = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: builtins.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  # nixos/lib/systemd-unit-options.nix: checkService, the two directives whose
  # values NixOS checks at evaluation.
  serviceValueOneOf =
    attrs: key: values:
    !(attrs ? ${key}) || builtins.elem (attrs.${key}.content or attrs.${key}) values;
  checkService =
    attrs:
    serviceValueOneOf attrs "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ]
    && serviceValueOneOf attrs "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-watchdog"
      "on-abort"
      "always"
    ];

  listOfUnits =
    description:
    mkOption {
      type = types.listOf unitNameType;
      default = [ ];
      inherit description;
    };

  # nixos/lib/systemd-unit-options.nix: commonUnitOptions + serviceOptions (the
  # ones a service definition in this repo may use).
  serviceModule = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether the unit is enabled.";
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
        description = "Description of this unit.";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "URIs of documentation.";
      };
      wantedBy = listOfUnits "Units that want this unit.";
      requiredBy = listOfUnits "Units that require this unit.";
      wants = listOfUnits "Units this unit wants.";
      requires = listOfUnits "Units this unit requires.";
      after = listOfUnits "Units this unit starts after.";
      before = listOfUnits "Units this unit starts before.";
      bindsTo = listOfUnits "Units this unit is bound to.";
      partOf = listOfUnits "Units this unit is part of.";
      conflicts = listOfUnits "Units this unit conflicts with.";
      onFailure = listOfUnits "Units activated when this unit fails.";
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
        description = "The [Unit] section.";
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
        description = "The [Service] section.";
      };
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
        description = "Environment variables of the service.";
      };
      path = mkOption {
        type = types.listOf (
          types.oneOf [
            types.package
            types.str
          ]
        );
        default = [ ];
        description = "Packages on the service's PATH.";
      };
      script = mkOption {
        type = types.lines;
        default = "";
        description = "The service's main process, as shell.";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
        description = "Shell run before the main process.";
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
        description = "Items whose change restarts the service.";
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
        description = "Restart on a configuration switch if changed.";
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
        description = "Stop, then start, on a configuration switch.";
      };
    };
  };

  # nixos/modules/system/boot/systemd/tmpfiles.nix: settings.<name>.<path>.<type>
  tmpfilesEntry =
    { name, ... }:
    {
      options = {
        type = mkOption {
          type = types.str;
          default = name;
          description = "The tmpfiles.d line type.";
        };
        mode = mkOption {
          type = types.str;
          default = "-";
          description = "File access mode.";
        };
        user = mkOption {
          type = types.str;
          default = "-";
          description = "Owner.";
        };
        group = mkOption {
          type = types.str;
          default = "-";
          description = "Group.";
        };
        age = mkOption {
          type = types.str;
          default = "-";
          description = "Cleanup age.";
        };
        argument = mkOption {
          type = types.str;
          default = "";
          description = "Type-specific argument.";
        };
      };
    };

  # nixos/modules/system/etc/etc.nix: environment.etc.<name>
  etcEntry =
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether this file is generated.";
        };
        target = mkOption {
          type = types.str;
          default = name;
          description = "Path relative to /etc.";
        };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
          description = "Text of the file.";
        };
        source = mkOption {
          type = types.path;
          description = "Path of the source file.";
        };
        mode = mkOption {
          type = types.str;
          default = "symlink";
          description = "Mode of the file, or symlink.";
        };
        user = mkOption {
          type = types.str;
          default = "+0";
          description = "Owner.";
        };
        group = mkOption {
          type = types.str;
          default = "+0";
          description = "Group.";
        };
      };
      config.source = lib.mkIf (config.text != null) (
        lib.mkDerivedConfig { value = config.text; } (pkgs.writeText "etc-${name}")
      );
    };

  # nixos/modules/programs/git.nix: programs.git.config, a gitini or a list of them
  gitini = types.attrsOf (types.attrsOf types.anything);
  gitConfigType = types.either gitini (types.listOf gitini) // {
    merge =
      loc: defs:
      let
        unordered = builtins.filter (def: !builtins.isList def.value) defs;
        ordered = lib.concatMap (def: def.value) (builtins.filter (def: builtins.isList def.value) defs);
      in
      [ (gitini.merge loc unordered) ] ++ ordered;
  };

  # nixos/modules/misc/nixpkgs.nix: overlays and config
  overlayType = lib.mkOptionType {
    name = "nixpkgs-overlay";
    description = "nixpkgs overlay";
    check = lib.isFunction;
    merge = lib.mergeOneOption;
  };
  configType = lib.mkOptionType {
    name = "nixpkgs-config";
    description = "nixpkgs config";
    check = x: builtins.isAttrs x || lib.isFunction x;
    merge =
      _loc: defs:
      lib.foldr (def: acc: lib.recursiveUpdate acc (if lib.isFunction def.value then def.value { } else def.value)) { } defs;
  };

  # nixos/modules/config/nix.nix: nix.settings' free-form values
  confAtom =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        types.package
      ]
    )
    // {
      description = "Nix config atom (null, bool, int, float, str, path or package)";
    };

  # Every option value, forced, with functions and packages made printable: what
  # the stand-in toplevel checks and the tests read.
  render =
    value:
    if lib.isDerivation value then
      value.outPath
    else if lib.isFunction value then
      "<function>"
    else if builtins.isAttrs value then
      builtins.mapAttrs (_: render) value
    else if builtins.isList value then
      map render value
    else if builtins.isPath value then
      toString value
    else
      value;

  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  summary = render (removeAttrs config [
    "_module"
    "system"
  ]) // {
    system = render (removeAttrs config.system [ "build" ]);
  };
in
{
  options = {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
      description = "Conditions that must hold, with the message shown when they do not.";
    };
    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
      description = "Messages shown when the system is built.";
    };

    # nixos/modules/misc/version.nix, nixos/modules/system/activation/top-level.nix
    system.stateVersion = mkOption {
      type = types.str;
      default = "25.11";
      description = "The NixOS release the system's state was first created with.";
    };
    system.build = mkOption {
      type = types.submoduleWith {
        modules = [ { freeformType = types.lazyAttrsOf (types.uniq types.unspecified); } ];
      };
      default = { };
      description = "Derivations of the system.";
    };

    # nixos/modules/misc/nixpkgs.nix
    nixpkgs.hostPlatform = mkOption {
      type = types.either types.str types.attrs;
      description = "The platform the system runs on.";
    };
    nixpkgs.overlays = mkOption {
      type = types.listOf overlayType;
      default = [ ];
      description = "Overlays of the system's nixpkgs.";
    };
    nixpkgs.config = mkOption {
      type = configType;
      default = { };
      description = "The system's nixpkgs configuration.";
    };

    # nixos/modules/virtualisation/nixos-containers.nix
    boot.isNspawnContainer = mkOption {
      type = types.bool;
      default = false;
      description = "Whether this NixOS machine is an nspawn container.";
    };
    boot.enableContainers = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to enable support for NixOS containers.";
    };

    # nixos/modules/tasks/network-interfaces.nix
    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
      description = "The name of the machine: a DNS label.";
    };
    networking.useDHCP = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to use DHCP on every interface.";
    };

    # nixos/modules/services/networking/firewall.nix
    networking.firewall.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to enable the firewall.";
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      description = "TCP ports open to the outside.";
    };
    networking.firewall.allowedTCPPortRanges = mkOption {
      type = types.listOf (types.attrsOf types.port);
      default = [ ];
      description = "Ranges of TCP ports open to the outside.";
    };

    # nixos/modules/misc/documentation.nix
    documentation.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to install documentation.";
    };

    # nixos/modules/config/system-path.nix, nixos/modules/system/etc/etc.nix
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "Packages in the system profile.";
    };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule etcEntry);
      default = { };
      description = "Files in /etc.";
    };

    # nixos/modules/programs/git.nix
    programs.git.enable = lib.mkEnableOption "git";
    programs.git.config = mkOption {
      type = gitConfigType;
      default = [ ];
      description = "The system-wide git configuration.";
    };

    # nixos/modules/system/boot/systemd.nix, …/systemd/tmpfiles.nix
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
      description = "systemd services.";
    };
    systemd.tmpfiles.settings = mkOption {
      type = types.attrsOf (types.attrsOf (types.attrsOf (types.submodule tmpfilesEntry)));
      default = { };
      description = "tmpfiles.d entries: file name, path, type.";
    };

    # nixos/modules/config/nix.nix
    nix.package = mkOption {
      type = types.package;
      default = pkgs.nix;
      description = "The Nix package of the system.";
    };
    nix.settings = mkOption {
      type = types.submodule {
        freeformType = types.attrsOf (types.either confAtom (types.listOf confAtom));
        options.substituters = mkOption {
          type = types.listOf types.str;
          default = [ "https://cache.nixos.org/" ];
          description = "Binary caches.";
        };
      };
      default = { };
      description = "nix.conf settings.";
    };

    # nixos/modules/services/misc/forgejo.nix (nix/modules/forge.nix sets these)
    services.forgejo.enable = lib.mkEnableOption "Forgejo";
    services.forgejo.package = mkOption {
      type = types.package;
      default = pkgs.forgejo;
      description = "The Forgejo package.";
    };
    services.forgejo.user = mkOption {
      type = types.str;
      default = "forgejo";
      description = "User account under which Forgejo runs.";
    };
    services.forgejo.stateDir = mkOption {
      type = types.str;
      default = "/var/lib/forgejo";
      description = "Forgejo data directory.";
    };
    services.forgejo.database.type = mkOption {
      type = types.enum [
        "sqlite3"
        "mysql"
        "postgres"
      ];
      default = "sqlite3";
      description = "Database engine to use.";
    };
    services.forgejo.settings = mkOption {
      # pkgs.formats.ini's value type, with server.HTTP_PORT a port as NixOS declares it
      type = types.submodule {
        freeformType = types.attrsOf (
          types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.bool
                types.int
                types.float
                types.str
              ]
            )
          )
        );
        options.server.HTTP_PORT = mkOption {
          type = types.port;
          default = 3000;
          description = "Listen port.";
        };
      };
      default = { };
      description = "app.ini of Forgejo, section by section.";
    };

    # nixos/modules/virtualisation/qemu-vm.nix (the VM test's node)
    virtualisation.memorySize = mkOption {
      type = types.ints.positive;
      default = 1024;
      description = "Memory of the VM in MiB.";
    };
    virtualisation.cores = mkOption {
      type = types.ints.positive;
      default = 1;
      description = "CPUs of the VM.";
    };
    virtualisation.diskSize = mkOption {
      type = types.nullOr types.ints.positive;
      default = 1024;
      description = "Disk of the VM in MiB.";
    };
    virtualisation.writableStore = mkOption {
      type = types.bool;
      default = true;
      description = "Whether the VM's store is writable.";
    };
    virtualisation.additionalPaths = mkOption {
      type = types.listOf types.path;
      default = [ ];
      description = "Store paths copied into the VM's store.";
    };
  };

  config.system.build.toplevel =
    if failedAssertions != [ ] then
      throw "\nFailed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failedAssertions}"
    else
      {
        type = "derivation";
        name = "nixos-system-${config.networking.hostName}";
        outPath = builtins.deepSeq summary "/nix/store/00000000000000000000000000000000-nixos-system-${config.networking.hostName}";
        inherit summary;
      };
}
