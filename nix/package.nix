# hyperhive: the host controller (`hyperhive`) and the in-container harness
# (`hyperhive-agent`), one Python application built from pyproject.toml with
# its dependencies from nixpkgs (plus the MCP SDK 2.x, see ./pkgs/python).
{
  lib,
  python3,
  git,
}:

let
  python = python3.override {
    self = python;
    packageOverrides = import ./pkgs/python;
  };

  pyprojectToml = lib.importTOML ../pyproject.toml;

  # pyproject.toml's [project] dependencies, from a python package set.
  pythonDependencies = ps: [
    ps.falcon
    ps.jsonschema
    # hivehttp.jsonbody: the request bodies' first decoder
    ps.msgspec
    ps.psutil
    ps.pygit2
    ps.pyyaml
    ps.sdnotify
    ps.uvicorn
    ps.httptools
    # hivehttp.loops: the event loop hivehttp serves on
    ps.uvloop
    ps.lightkube
    ps.prometheus-client
    ps.opentelemetry-sdk
    ps.opentelemetry-exporter-otlp-proto-http
    # the `postgres` extra: a NixOS host may set `broker: postgresql://...`
    ps.psycopg
    ps.psycopg-pool
  ];
in
python.pkgs.buildPythonApplication {
  pname = "hyperhive";
  inherit (pyprojectToml.project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../controller
      ../harness
      ../schemas
      ../hivehttp
      ../tests
      ./templates
      (lib.fileset.maybeMissing ../README.md)
      (lib.fileset.maybeMissing ../LICENSE)
    ];
  };

  # nix/templates/meta-flake.nix is the meta flake template; the controller
  # reads it from the source tree, or from its package data when installed.
  # Ship the canonical one as that package data.
  postPatch = ''
    install -Dm644 nix/templates/meta-flake.nix controller/templates/meta-flake.nix
  '';

  build-system = [ python.pkgs.setuptools ];

  dependencies = pythonDependencies python.pkgs;

  # The CLI talks git to the meta repo (clone / tag / push helpers); the
  # NixOS module adds nixos-container and the system profile on top.
  makeWrapperArgs = [
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [ git ])
  ];

  # The container templates and the meta flake template, for operators and
  # for tools that want them next to the binaries.
  postInstall = ''
    install -Dm644 -t $out/share/hyperhive/nix/templates nix/templates/*.nix
  '';

  nativeCheckInputs = [
    git
    python.pkgs.pytestCheckHook
    python.pkgs.pytest-timeout
  ];
  # Unit tests only: the component / integration / e2e suites start servers,
  # containers or the real claude CLI.
  enabledTestPaths = [ "tests/unit" ];

  pythonImportsCheck = [
    "controller"
    "harness"
    "schemas"
    "hivehttp"
  ];

  passthru = {
    # The interpreter with the overrides above, and the dependency list, for
    # the dev shell.
    inherit python pythonDependencies;
  };

  meta = {
    description = "Swarm of Claude Code agents in NixOS containers, reconciled from git refs";
    license = lib.licenses.mit;
    mainProgram = "hyperhive";
    platforms = lib.platforms.linux;
  };
}
