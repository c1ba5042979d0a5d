"""The Nix side, evaluated with the real module system (no nixpkgs needed).

CI has Debian's ``nix-bin`` (2.8) and no nixpkgs. So this suite evaluates with
``nix-instantiate --eval --strict`` against:

- the real nixpkgs ``lib`` (``nix/vendor/nixpkgs-lib``: ``lib.evalModules``,
  ``lib.types``), and
- stand-ins for what only nixpkgs has: the NixOS options the modules set,
  declared by hand with NixOS' own types (``tests/nix/nixos-options.nix``), and a
  package set of derivation-shaped values (``tests/nix/nixpkgs-stand-in/``),
  whose ``lib.nixosSystem`` is ``lib.evalModules`` over those options.

So the host module, both container templates (``nixosConfigurations.agent-base``
and ``.manager``), ``lib.mkSwarm`` over a fixture meta tree, the meta flake
template and the VM test's node are evaluated the way ``nix flake check``
evaluates them: an unknown option or a value of the wrong type fails here
(``test_nix_catches.py`` proves it on broken copies of the modules). Nothing is
built; ``nix flake check`` on a NixOS host does that (docs/deploy.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nix.nixeval import (
    ROOT,
    make_env,
    nix_eval,
    nix_path,
    nix_str,
    require_nix,
    run_nix,
)

pytestmark = require_nix()

SKIP_DIRS = {".git", ".venv", "node_modules", "result", "build", "dist", ".mypy_cache"}
#: Vendored code is parsed by its users' evaluations, not one file at a time.
VENDOR = "nix/vendor/"


def repo_nix_files() -> list[str]:
    """Every .nix file of the repo but the vendored ones, relative to ROOT."""
    git = shutil.which("git")
    found: set[str] = set()
    if git is not None and (ROOT / ".git").exists():
        proc = subprocess.run(
            [git, "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.nix"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            found = {line for line in proc.stdout.splitlines() if (ROOT / line).is_file()}
    if not found:
        for path in ROOT.rglob("*.nix"):
            if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
                found.add(str(path.relative_to(ROOT)))
    return sorted(f for f in found if not f.startswith(VENDOR))


NIX_FILES = repo_nix_files()
NIXPKGS = f"(import {nix_path(ROOT / 'tests' / 'nix' / 'nixpkgs-stand-in' / 'flake-input.nix')})"
HYPERHIVE = f"(import {nix_path(ROOT / 'tests' / 'nix' / 'hyperhive-flake.nix')} {{ }})"


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for a daemon-less, store-less nix-instantiate."""
    yield make_env(tmp_path_factory.mktemp("nix-home"))


# --------------------------------------------------------------------------- parse


def test_repo_has_the_nix_files() -> None:
    for required in (
        "flake.nix",
        "nix/package.nix",
        "nix/modules/hyperhive.nix",
        "nix/modules/harness-base.nix",
        "nix/templates/agent-base.nix",
        "nix/templates/manager.nix",
        "nix/templates/meta-flake.nix",
        "nix/lib/agents.nix",
        "nix/tests/vm.nix",
    ):
        assert required in NIX_FILES


def test_package_has_every_python_dependency() -> None:
    """nix/package.nix lists pyproject's dependencies and its `postgres` extra, by nixpkgs name."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    names = {re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0].lower() for req in wanted}
    package = (ROOT / "nix" / "package.nix").read_text()
    listed = set(re.findall(r"^\s*ps\.([A-Za-z0-9_-]+)\s*$", package, re.MULTILINE))
    assert names == listed


@pytest.mark.parametrize("path", NIX_FILES)
def test_parses(path: str, nix_env: dict[str, str]) -> None:
    run_nix(["--parse", path], nix_env)


# ------------------------------------------------------------------ directory walk

AGENTS_LIB = nix_path(ROOT / "nix" / "lib" / "agents.nix")

EXPECTED_AGENTS = {
    "alice": {"name": "alice", "flavor": "agent", "container": "h-alice", "hasAgentNix": True},
    "bob": {"name": "bob", "flavor": "agent", "container": "h-bob", "hasAgentNix": False},
    "manager": {
        "name": "manager",
        "flavor": "manager",
        "container": "hm1nd",
        "hasAgentNix": False,
    },
}

#: alice's agent.nix: a package from nixpkgs and one from a flake input of the meta flake
ALICE_NIX = """{ pkgs, flakeInputs, ... }:
{
  environment.systemPackages = [
    pkgs.ripgrep
    flakeInputs.some-mcp.packages.${pkgs.stdenv.hostPlatform.system}.default
  ];
  systemd.services.hyperhive-agent.environment.SOME_MCP = "1";
}
"""

MANIFEST = "apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: {name}\n"


def make_meta_tree(root: Path) -> Path:
    """A meta repo checkout: three agents and everything the walk must skip."""
    agents = root / "agents"
    for name in ("alice", "bob", "manager", "operator", "Bad_Name", "toolongname", "2fast", "web-"):
        (agents / name).mkdir(parents=True)
        (agents / name / "agent.yaml").write_text(MANIFEST.format(name=name))
    (agents / "alice" / "agent.nix").write_text(ALICE_NIX)
    # bob has a directory called agent.nix: not a module
    (agents / "bob" / "agent.nix").mkdir()
    (agents / "notes").mkdir()
    (agents / "notes" / "README.md").write_text("no manifest here\n")
    (agents / "README.md").write_text("a stray file\n")
    return agents


def walk_summary(agents_dir: Path, env: dict[str, str]) -> Any:
    expr = (
        f'builtins.mapAttrs (_: a: removeAttrs a [ "agentNix" "manifest" ])'
        f" ((import {AGENTS_LIB}).agentsFromDir {nix_path(agents_dir)})"
    )
    return nix_eval(expr, env)


def test_walk_finds_exactly_the_agents(tmp_path: Path, nix_env: dict[str, str]) -> None:
    agents = make_meta_tree(tmp_path)
    assert walk_summary(agents, nix_env) == EXPECTED_AGENTS


def test_walk_points_at_agent_nix_and_manifest(tmp_path: Path, nix_env: dict[str, str]) -> None:
    agents = make_meta_tree(tmp_path)
    expr = (
        f"let w = (import {AGENTS_LIB}).agentsFromDir {nix_path(agents)}; in"
        " builtins.mapAttrs (_: a: {"
        " agentNix = if a.agentNix == null then null else toString a.agentNix;"
        " manifest = toString a.manifest; }) w"
    )
    resolved = agents.resolve()
    assert nix_eval(expr, nix_env) == {
        "alice": {
            "agentNix": str(resolved / "alice" / "agent.nix"),
            "manifest": str(resolved / "alice" / "agent.yaml"),
        },
        "bob": {"agentNix": None, "manifest": str(resolved / "bob" / "agent.yaml")},
        "manager": {"agentNix": None, "manifest": str(resolved / "manager" / "agent.yaml")},
    }


def test_walk_of_a_missing_or_empty_dir(tmp_path: Path, nix_env: dict[str, str]) -> None:
    (tmp_path / "empty").mkdir()
    assert walk_summary(tmp_path / "missing", nix_env) == {}
    assert walk_summary(tmp_path / "empty", nix_env) == {}


def test_walk_of_the_committed_fixture(nix_env: dict[str, str]) -> None:
    """nix/tests/fixtures/meta is what checks.<system>.agents-walk uses."""
    fixture = ROOT / "nix" / "tests" / "fixtures" / "meta" / "agents"
    assert walk_summary(fixture, nix_env) == EXPECTED_AGENTS


# the name rule itself: test_names.py


# ------------------------------------------------------------ meta flake template

TEMPLATE = ROOT / "nix" / "templates" / "meta-flake.nix"
FLAKE_REF = "path:/nix/store/00000000000000000000000000000000-source"
SOME_MCP = (
    '{ packages.x86_64-linux.default = { type = "derivation"; name = "some-mcp";'
    ' outPath = "/nix/store/00000000000000000000000000000000-some-mcp"; }; }'
)


def test_template_has_one_placeholder() -> None:
    text = TEMPLATE.read_text()
    assert text.count("@HYPERHIVE_FLAKE@") == 1
    assert 'hyperhive.url = "@HYPERHIVE_FLAKE@";' in text


def meta_flake(tmp_path: Path) -> str:
    """A meta repo as the controller writes it; a Nix expression for its outputs."""
    make_meta_tree(tmp_path)
    text = TEMPLATE.read_text().replace("@HYPERHIVE_FLAKE@", FLAKE_REF)
    (tmp_path / "flake.nix").write_text(text)
    return f"""
      let
        hyperhive = {HYPERHIVE};
        meta = import {nix_path(tmp_path / "flake.nix")};
        outputs = meta.outputs {{
          self = outputs;
          inherit hyperhive;
          inherit (hyperhive.inputs) nixpkgs;
          some-mcp = {SOME_MCP};
        }};
      in {{ inherit meta outputs; }}
    """


def test_meta_flake_builds_every_agent(tmp_path: Path, nix_env: dict[str, str]) -> None:
    """The template with hyperhive's real lib.mkSwarm, each agent's system evaluated
    with the real module system (every option value forced, assertions checked)."""
    expr = f"""
      let
        m = {meta_flake(tmp_path)};
        describe = name: system:
          let
            top = system.config.system.build.toplevel;
            s = top.summary;
            unit = s.systemd.services.hyperhive-agent;
          in {{
            toplevel = top.outPath;
            inherit (s.hyperhive.agent) name flavor;
            inherit (s.networking) hostName;
            platform = s.nixpkgs.hostPlatform;
            packages = s.environment.systemPackages;
            agentEnv = unit.environment.HYPERHIVE_AGENT;
            someMcp = unit.environment.SOME_MCP or null;
            mounts = unit.unitConfig.RequiresMountsFor;
          }};
      in {{
        inherit (m.meta) inputs;
        configurations = builtins.mapAttrs describe m.outputs.nixosConfigurations;
      }}
    """
    got = nix_eval(expr, nix_env)
    assert got["inputs"] == {
        "hyperhive": {"url": FLAKE_REF},
        "nixpkgs": {"follows": "hyperhive/nixpkgs"},
    }
    store = "/nix/store/00000000000000000000000000000000-"
    base = [
        f"{store}hyperhive-0.1.0",
        f"{store}claude-code-2.0.0",
        f"{store}git",
        f"{store}tea",
    ]
    configs = got["configurations"]
    assert sorted(configs) == ["alice", "bob", "manager"]
    for name, container in (("alice", "h-alice"), ("bob", "h-bob"), ("manager", "hm1nd")):
        c = configs[name]
        assert c["toplevel"] == f"{store}nixos-system-{container}"
        assert (c["name"], c["agentEnv"], c["hostName"]) == (name, name, container)
        assert c["flavor"] == ("manager" if name == "manager" else "agent")
        assert c["platform"] == "x86_64-linux"
    assert configs["alice"]["packages"] == [*base, f"{store}ripgrep", f"{store}some-mcp"]
    assert configs["alice"]["someMcp"] == "1"
    assert configs["bob"]["packages"] == base
    assert configs["bob"]["someMcp"] is None
    assert configs["manager"]["mounts"] == ["/run/hive", "/state", "/root/.claude", "/meta"]


# ------------------------------------------------------------- the flake's outputs


def test_flake_outputs(nix_env: dict[str, str]) -> None:
    """The container templates evaluate as systems; `nix flake check` covers the VM test."""
    expr = f"""
      let
        h = {HYPERHIVE};
        flake = import {nix_path(ROOT / "flake.nix")};
      in {{
        configurations = builtins.mapAttrs (_: s: {{
          toplevel = s.config.system.build.toplevel.outPath;
          name = s.config.hyperhive.agent.name;
          flavor = s.config.hyperhive.agent.flavor;
        }}) h.nixosConfigurations;
        modules = builtins.attrNames h.nixosModules;
        inputs = builtins.mapAttrs (_: i: i.url) flake.inputs;
        checks = builtins.mapAttrs (_: builtins.attrNames) h.checks;
      }}
    """
    got = nix_eval(expr, nix_env)
    store = "/nix/store/00000000000000000000000000000000-"
    assert got["configurations"] == {
        "agent-base": {
            "toplevel": f"{store}nixos-system-h-base",
            "name": "base",
            "flavor": "agent",
        },
        "manager": {
            "toplevel": f"{store}nixos-system-hm1nd",
            "name": "manager",
            "flavor": "manager",
        },
    }
    assert got["modules"] == ["agent", "default", "harness-base", "manager"]
    assert set(got["inputs"]) == {"nixpkgs", "nixpkgs-unstable"}
    assert got["checks"] == {
        "aarch64-linux": ["agents-walk", "formatting", "package"],
        "x86_64-linux": ["agents-walk", "formatting", "package", "vm"],
    }


def test_checks_evaluate(nix_env: dict[str, str]) -> None:
    """checks.x86_64-linux.vm: its node (the host module, enabled) evaluates with the
    real module system, and so do the containers it prebuilds; agents-walk's lib.runTests
    pass (it throws otherwise)."""
    expr = f"""
      let
        checks = {HYPERHIVE}.checks.x86_64-linux;
        host = checks.vm.nodes.host.summary;
      in {{
        vm = checks.vm.outPath;
        walk = checks.agents-walk.outPath;
        enabled = host.services.hyperhive.enable;
        unit = host.systemd.services.hyperhive.serviceConfig.Type;
        prebuilt = host.virtualisation.additionalPaths;
        substituters = host.nix.settings.substituters;
      }}
    """
    got = nix_eval(expr, nix_env)
    store = "/nix/store/00000000000000000000000000000000-"
    assert got["vm"] == f"{store}vm-test-run-hyperhive"
    assert got["walk"] == f"{store}hyperhive-agents-walk"
    assert (got["enabled"], got["unit"], got["substituters"]) == (True, "notify", [])
    assert got["prebuilt"][:2] == [f"{store}nixos-system-hm1nd", f"{store}nixos-system-h-alice"]


# ------------------------------------------------------------------ the host module

HOST_CONFIG = """
  {
    services.hyperhive = {
      enable = true;
      stateDir = "/srv/hive";
      dashboard = { address = "127.0.0.1"; port = 7001; };
      openFirewall = true;
      openAgentPorts = true;
      operatorPronouns = "they/them";
      settings = {
        ports = { manager = 8000; agent_base = 8100; agent_range = 900; };
        dashboard.hosts = [ "hive.example" ];
        budget.usdPerDay = 50;
      };
    };
  }
"""


def host_system(config: str) -> str:
    """A NixOS system of hyperhive's host module (from the flake) and ``config``."""
    return f"""
      {NIXPKGS}.lib.nixosSystem {{
        modules = [
          {HYPERHIVE}.nixosModules.default
          {{ nixpkgs.hostPlatform = "x86_64-linux"; }}
          {config}
        ];
      }}
    """


@pytest.fixture(scope="module")
def host(nix_env: dict[str, str]) -> Any:
    """The host system's option values, forced, and the rendered config file."""
    expr = f"""
      let
        system = {host_system(HOST_CONFIG)};
        top = system.config.system.build.toplevel;
      in {{
        toplevel = top.outPath;
        config = top.summary;
        configJson = system.config.environment.etc."hyperhive/config.json".source.text;
        cli = with builtins; (head system.config.environment.systemPackages).postBuild;
      }}
    """
    return nix_eval(expr, nix_env)


def test_host_module_evaluates(host: Any) -> None:
    assert host["toplevel"].endswith("-nixos-system-nixos")
    # openFirewall with the dashboard on loopback: NixOS shows the module's warning
    [warning] = host["config"]["warnings"]
    assert warning.startswith("services.hyperhive.openFirewall opens port 7001")
    assert host["config"]["boot"]["enableContainers"] is True
    assert host["config"]["nix"]["settings"]["experimental-features"] == ["nix-command", "flakes"]


def test_host_module_renders_settings(host: Any) -> None:
    """config.json: what `hyperhive serve --config` reads, valid against its schema."""
    from schemas.validate import validate

    rendered = json.loads(host["configJson"])
    assert rendered == {
        "runtime": "nixos-container",
        "hyperhive_flake": "path:/nix/store/00000000000000000000000000000000-source",
        "resync_seconds": 60,
        "default_model": "haiku",
        "log_level": "info",
        "ports": {"manager": 8000, "agent_base": 8100, "agent_range": 900},
        "state_dir": "/srv/hive",
        "operator_pronouns": "they/them",
        "run_dir": "/run/hyperhive",
        "dashboard": {"host": "127.0.0.1", "port": 7001, "hosts": ["hive.example"]},
        "budget": {"usdPerDay": 50},
    }
    validate(rendered, "config")
    etc = host["config"]["environment"]["etc"]["hyperhive/config.json"]
    assert etc["source"].endswith("-hyperhive.json")
    assert "--set-default HYPERHIVE_STATE_DIR /srv/hive" in host["cli"]
    assert "--set-default HYPERHIVE_RUN_DIR /run/hyperhive" in host["cli"]


def test_host_module_systemd_unit(host: Any) -> None:
    unit = host["config"]["systemd"]["services"]["hyperhive"]
    service = unit["serviceConfig"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"]
    assert service["RuntimeDirectory"] == "hyperhive"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    # the operator key, host.sock, the broker database and meta.git are root's alone
    assert service["UMask"] == "0077"
    assert service["RuntimeDirectoryMode"] == "0700"
    assert service["StateDirectoryMode"] == "0700"
    # a stateDir of its own: no StateDirectory=, a tmpfiles rule at 0700 instead
    assert "StateDirectory" not in service
    tmpfiles = host["config"]["systemd"]["tmpfiles"]["settings"]
    assert tmpfiles["10-hyperhive"]["/srv/hive"]["d"]["mode"] == "0700"
    assert tmpfiles["10-hyperhive"]["/etc/nixos-containers"]["d"]["mode"] == "0755"
    assert service["ExecStart"] == (
        "/nix/store/00000000000000000000000000000000-hyperhive-0.1.0/bin/hyperhive"
        " --state-dir /srv/hive serve"
        " --config /nix/store/00000000000000000000000000000000-hyperhive.json"
    )
    assert service["ReadWritePaths"] == ["/etc/nixos-containers", "/etc/systemd/system.control"]
    assert "EnvironmentFile" not in service
    assert any(p.endswith("-git") for p in unit["path"])
    assert any(p.endswith("-bubblewrap") for p in unit["path"])
    assert "/run/current-system/sw" in unit["path"]
    assert unit["environment"]["HYPERHIVE_STATE_DIR"] == "/srv/hive"
    assert unit["environment"]["HYPERHIVE_RUN_DIR"] == "/run/hyperhive"
    assert unit["wantedBy"] == ["multi-user.target"]


def test_host_module_firewall(host: Any) -> None:
    assert host["config"]["networking"]["firewall"] == {
        "enable": True,
        "allowedTCPPorts": [7001, 8000],
        "allowedTCPPortRanges": [{"from": 8100, "to": 8999}],
    }


def test_host_module_assertions(nix_env: dict[str, str]) -> None:
    """A host without containers fails its build with the module's message, as on NixOS."""
    from tests.nix.nixeval import nix_eval_error

    expr = host_system("{ services.hyperhive.enable = true; boot.enableContainers = false; }")
    err = nix_eval_error(f"({expr}).config.system.build.toplevel.outPath", nix_env)
    assert "Failed assertions" in err
    assert 'runtime "nixos-container" needs boot.enableContainers = true' in err


# ------------------------------------------------- module options against the schema


def option_leaves(env: dict[str, str]) -> dict[str, Any]:
    """services.hyperhive's options, submodules flattened: {dotted name: {default, type}}."""
    expr = f"""
      let
        lib = import {nix_path(ROOT / "nix" / "vendor" / "nixpkgs-lib" / "lib")};
        system = {host_system("{ }")};
        render = v:
          if lib.isDerivation v then v.outPath
          else if builtins.isAttrs v then builtins.mapAttrs (_: render) v
          else v;
        leaves = prefix: opts: lib.concatMap (name:
          let o = opts.${{name}}; loc = prefix ++ [ name ]; in
          if lib.hasPrefix "_" name then [ ]
          else if lib.isOption o then
            (if o.type.name == "submodule"
             then leaves loc (o.type.getSubOptions loc)
             else [ ])
            ++ [ {{
              name = lib.concatStringsSep "." loc;
              default = if o ? default then render o.default else null;
              type = o.type.description;
            }} ]
          else leaves loc o) (builtins.attrNames opts);
      in leaves [ "services" "hyperhive" ] system.options.services.hyperhive
    """
    return {o["name"]: o for o in nix_eval(expr, env)}


@pytest.fixture(scope="module")
def options(nix_env: dict[str, str]) -> dict[str, Any]:
    return option_leaves(nix_env)


def test_host_module_defaults_match_the_config_schema(options: dict[str, Any]) -> None:
    props = json.loads((ROOT / "schemas" / "json" / "config.schema.json").read_text())["properties"]
    prefix = "services.hyperhive.settings."
    settings = {k[len(prefix) :]: v for k, v in options.items() if k.startswith(prefix)}
    assert set(settings) >= {"runtime", "hyperhive_flake", "ports.manager", "ports.agent_base"}
    for key, option in settings.items():
        node: dict[str, Any] = {"properties": props}
        for part in key.split("."):
            assert part in node.get("properties", {}), f"settings.{key}: not in the schema"
            node = node["properties"][part]
        if key == "runtime":
            assert option["default"] in node["enum"]
        elif key not in ("hyperhive_flake", "ports"):
            assert node.get("default") == option["default"], key
    pronouns = options["services.hyperhive.operatorPronouns"]["default"]
    assert pronouns == props["operator_pronouns"]["default"] == "she/her"
    dash = props["dashboard"]["properties"]
    assert options["services.hyperhive.dashboard.address"]["default"] == dash["host"]["default"]
    assert options["services.hyperhive.dashboard.port"]["default"] == dash["port"]["default"]


def test_integer_options_have_the_schema_bounds(nix_env: dict[str, str]) -> None:
    """Every integer the module renders into config.json takes exactly the schema's range:
    what the module accepts, the controller starts with."""
    props = json.loads((ROOT / "schemas" / "json" / "config.schema.json").read_text())["properties"]
    cases = {
        "settings.ports.manager": props["ports"]["properties"]["manager"],
        "settings.ports.agent_base": props["ports"]["properties"]["agent_base"],
        "settings.ports.agent_range": props["ports"]["properties"]["agent_range"],
        "settings.resync_seconds": props["resync_seconds"],
        "dashboard.port": props["dashboard"]["properties"]["port"],
    }
    checks = " ".join(
        f"{{ name = {nix_str(name)}; values = [ ({s['minimum'] - 1}) {s['minimum']}"
        f" {s['maximum']} {s['maximum'] + 1} ]; }}"
        for name, s in cases.items()
    )
    expr = f"""
      let
        lib = import {nix_path(ROOT / "nix" / "vendor" / "nixpkgs-lib" / "lib")};
        system = {host_system("{ }")};
        opts = system.options.services.hyperhive;
        optionAt = path:
          let parts = lib.splitString "." path; in
          if builtins.head parts == "settings"
          then lib.getAttrFromPath (builtins.tail parts) (opts.settings.type.getSubOptions [ ])
          else lib.getAttrFromPath parts opts;
      in map (c: map (optionAt c.name).type.check c.values) [ {checks} ]
    """
    got = nix_eval(expr, nix_env)
    for (name, _), verdicts in zip(cases.items(), got, strict=True):
        assert verdicts == [False, True, True, False], name


# ------------------------------------------------------- the containers' harness module


def agent_system(modules: str) -> str:
    return f'{HYPERHIVE}.lib.mkAgent {{ name = "alice"; modules = [ {modules} ]; }}'


def test_harness_base(nix_env: dict[str, str]) -> None:
    expr = f"""
      let
        system = {agent_system("")};
        s = system.config.system.build.toplevel.summary;
        predicate = system.config.nixpkgs.config.allowUnfreePredicate;
      in {{
        options = builtins.attrNames (removeAttrs system.options.hyperhive.agent [ "_module" ]);
        unfree = map predicate [ {{ pname = "claude-code"; }} {{ pname = "vscode"; }} ];
        inherit (s) boot networking;
        overlays = builtins.length s.nixpkgs.overlays;
        unit = s.systemd.services.hyperhive-agent;
      }}
    """
    got = nix_eval(expr, nix_env)
    assert got["options"] == [
        "claudePackage",
        "flavor",
        "name",
        "package",
        "webHost",
        "webPort",
        "webTcp",
    ]
    assert got["unfree"] == [True, False]
    assert got["boot"] == {"isNspawnContainer": True, "enableContainers": True}
    assert got["networking"]["hostName"] == "h-alice"
    assert got["networking"]["firewall"]["enable"] is False
    assert got["overlays"] == 2
    unit = got["unit"]
    store = "/nix/store/00000000000000000000000000000000-"
    assert unit["serviceConfig"]["Type"] == "notify"
    assert unit["serviceConfig"]["ExecStart"] == f"{store}hyperhive-0.1.0/bin/hyperhive-agent serve"
    assert unit["environment"] == {
        "HYPERHIVE_AGENT": "alice",
        "HYPERHIVE_FLAVOR": "agent",
        "HYPERHIVE_SOCKET": "/run/hive/mcp.sock",
        "HYPERHIVE_STATE_DIR": "/state",
        "HYPERHIVE_SETTINGS": "/etc/hyperhive/settings.json",
        "HYPERHIVE_CREDENTIAL_FILE": "/etc/hyperhive/credential",
        "HYPERHIVE_CLAUDE_BIN": f"{store}claude-code-2.0.0/bin/claude",
        "HYPERHIVE_WEB_TCP": "0",
        "HYPERHIVE_WEB_HOST": "127.0.0.1",
        "HYPERHIVE_WEB_PORT": None,
        "CLAUDE_CONFIG_DIR": "/root/.claude",
        "HOME": "/root",
        "DISABLE_AUTOUPDATER": "1",
        "PYTHONUNBUFFERED": "1",
    }
    assert unit["path"] == [f"{store}claude-code-2.0.0", f"{store}git", "/run/current-system/sw"]
    assert unit["unitConfig"]["RequiresMountsFor"] == ["/run/hive", "/state", "/root/.claude"]


def test_harness_base_web_port(nix_env: dict[str, str]) -> None:
    expr = agent_system("{ hyperhive.agent = { webTcp = true; webPort = 8123; }; }")
    env = nix_eval(
        f"({expr}).config.system.build.toplevel.summary.systemd.services.hyperhive-agent.environment",
        nix_env,
    )
    assert (env["HYPERHIVE_WEB_TCP"], env["HYPERHIVE_WEB_PORT"]) == ("1", "8123")


# ------------------------------------------------------------------------ docs


def test_deploy_doc_lists_every_module_option(options: dict[str, Any]) -> None:
    """docs/deploy.md has a table row for every option of services.hyperhive."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    missing = [name for name in options if f"`{name}`" not in doc]
    assert missing == []
