"""The Nix side, as far as it can be checked without nixpkgs.

CI installs Debian's ``nix-bin`` (``apt-get install nix-bin``); that Nix has no
flakes by default and no nixpkgs, and there is no network to fetch one. So
this suite:

- parses every ``.nix`` file of the repo (``nix-instantiate --parse``, which
  also reports undefined variables);
- evaluates what needs no nixpkgs: the meta repo's directory walk
  (``nix/lib/agents.nix``) against a fixture tree, and the meta flake template
  together with hyperhive's ``lib.mkSwarm`` (``nixpkgs.lib.nixosSystem``
  stubbed to return its arguments);
- evaluates the two NixOS modules' own code with a stub ``lib`` (``mkOption``
  returns its arguments, ``mkIf`` / ``mkMerge`` become plain data). That checks
  the option tree, the defaults against ``schemas/json/config.schema.json``,
  the systemd units and the rendered settings; it does not run the module
  system's type checks, which ``nix flake check`` does on a NixOS machine.

Nix runs against the ``dummy://`` store with its state, config and cache in a
temporary directory: no daemon, no /nix needed, nothing written to the store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.names import container_name, is_agent_name

NIX_INSTANTIATE = shutil.which("nix-instantiate")

pytestmark = pytest.mark.skipif(
    NIX_INSTANTIATE is None,
    reason="nix-instantiate not found: apt-get install nix-bin to run the Nix checks",
)

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "node_modules", "result", "build", "dist", ".mypy_cache"}


def repo_nix_files() -> list[str]:
    """Every .nix file of the repo, relative to ROOT: tracked and new (git), else a walk."""
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        proc = subprocess.run(
            [git, "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.nix"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return sorted({line for line in proc.stdout.splitlines() if (ROOT / line).is_file()})
    found = []
    for path in ROOT.rglob("*.nix"):
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            found.append(str(path.relative_to(ROOT)))
    return sorted(found)


NIX_FILES = repo_nix_files()


def nix_str(text: str) -> str:
    """A Nix string literal for ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def nix_path(path: Path | str) -> str:
    """A Nix path expression for an absolute filesystem path (any characters)."""
    return f"(/. + {nix_str(str(Path(path).resolve()))})"


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for a daemon-less, store-less nix-instantiate."""
    home = tmp_path_factory.mktemp("nix-home")
    for sub in ("state", "conf", "cache", "config"):
        (home / sub).mkdir()
    env = dict(os.environ)
    env.update(
        {
            "NIX_REMOTE": "dummy://",
            "NIX_STATE_DIR": str(home / "state"),
            "NIX_CONF_DIR": str(home / "conf"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "NIX_PATH": "",
        }
    )
    yield env


def run_nix(args: list[str], env: dict[str, str]) -> str:
    assert NIX_INSTANTIATE is not None
    proc = subprocess.run(
        [NIX_INSTANTIATE, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"nix-instantiate {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def nix_eval(expr: str, env: dict[str, str]) -> Any:
    """Evaluate ``expr`` strictly and return it as JSON data."""
    return json.loads(run_nix(["--eval", "--strict", "--json", "--expr", expr], env))


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

MANIFEST = "apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: {name}\n"


def make_meta_tree(root: Path) -> Path:
    """A meta repo checkout: three agents and everything the walk must skip."""
    agents = root / "agents"
    for name in ("alice", "bob", "manager", "operator", "Bad_Name", "toolongname", "2fast"):
        (agents / name).mkdir(parents=True)
        (agents / name / "agent.yaml").write_text(MANIFEST.format(name=name))
    (agents / "alice" / "agent.nix").write_text(
        "{ pkgs, ... }:\n{\n  environment.systemPackages = [ pkgs.ripgrep ];\n}\n"
    )
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


NAMES = [
    "alice",
    "bob",
    "web-2",
    "a",
    "abcdefghi",
    "abcdefghij",
    "manager",
    "operator",
    "hyperhive",
    "controller",
    "all",
    "Alice",
    "2fast",
    "-x",
    "a_b",
    "",
]


def test_names_agree_with_schemas_names(nix_env: dict[str, str]) -> None:
    names = "[ " + " ".join(nix_str(n) for n in NAMES) + " ]"
    got = nix_eval(
        f"let l = import {AGENTS_LIB}; in map (n: {{ valid = l.isAgentName n;"
        f" container = l.containerName n; }}) {names}",
        nix_env,
    )
    assert [g["valid"] for g in got] == [is_agent_name(n) for n in NAMES]
    assert [g["container"] for g in got] == [container_name(n) for n in NAMES]


# ------------------------------------------------------------ meta flake template

TEMPLATE = ROOT / "nix" / "templates" / "meta-flake.nix"

STUB_NIXPKGS = "{ lib.nixosSystem = args: { nixosSystemArgs = args; }; }"


def test_template_has_one_placeholder() -> None:
    text = TEMPLATE.read_text()
    assert text.count("@HYPERHIVE_FLAKE@") == 1
    assert 'hyperhive.url = "@HYPERHIVE_FLAKE@";' in text


def test_meta_flake_builds_every_agent(tmp_path: Path, nix_env: dict[str, str]) -> None:
    """The template as the controller writes it, evaluated with hyperhive's real
    lib.mkSwarm / lib.mkAgent and nixpkgs.lib.nixosSystem stubbed."""
    make_meta_tree(tmp_path)
    flake_ref = "path:/nix/store/00000000000000000000000000000000-source"
    (tmp_path / "flake.nix").write_text(
        TEMPLATE.read_text().replace("@HYPERHIVE_FLAKE@", flake_ref)
    )
    expr = f"""
      let
        stub = {STUB_NIXPKGS};
        hyperhive = (import {nix_path(ROOT / "flake.nix")}).outputs {{
          self = hyperhive;
          nixpkgs = stub;
          nixpkgs-unstable = stub;
        }};
        meta = import {nix_path(tmp_path / "flake.nix")};
        outputs = meta.outputs {{
          self = outputs;
          inherit hyperhive;
          nixpkgs = stub;
          some-mcp = {{ }};
        }};
        describe = name: system:
          let
            modules = system.nixosSystemArgs.modules;
            base = builtins.elemAt modules 0;
            identity = builtins.elemAt modules 1;
          in {{
            base = baseNameOf (toString (builtins.elemAt base.imports 1));
            name = identity.hyperhive.agent.name;
            system = identity.nixpkgs.hostPlatform;
            flakeInputs = builtins.attrNames identity._module.args.flakeInputs;
            extra = map toString (builtins.genList
              (i: builtins.elemAt modules (i + 2)) (builtins.length modules - 2));
          }};
      in {{
        inherit (meta) inputs;
        configurations = builtins.mapAttrs describe outputs.nixosConfigurations;
      }}
    """
    got = nix_eval(expr, nix_env)
    assert got["inputs"] == {
        "hyperhive": {"url": flake_ref},
        "nixpkgs": {"follows": "hyperhive/nixpkgs"},
    }
    inputs = ["hyperhive", "nixpkgs", "some-mcp"]  # every input but self
    alice_nix = str((tmp_path / "agents" / "alice" / "agent.nix").resolve())
    assert got["configurations"] == {
        "alice": {
            "base": "agent-base.nix",
            "name": "alice",
            "system": "x86_64-linux",
            "flakeInputs": inputs,
            "extra": [alice_nix],
        },
        "bob": {
            "base": "agent-base.nix",
            "name": "bob",
            "system": "x86_64-linux",
            "flakeInputs": inputs,
            "extra": [],
        },
        "manager": {
            "base": "manager.nix",
            "name": "manager",
            "system": "x86_64-linux",
            "flakeInputs": inputs,
            "extra": [],
        },
    }


def test_flake_bases_are_agent_base_and_manager(nix_env: dict[str, str]) -> None:
    expr = f"""
      let
        stub = {STUB_NIXPKGS};
        hyperhive = (import {nix_path(ROOT / "flake.nix")}).outputs {{
          self = hyperhive;
          nixpkgs = stub;
          nixpkgs-unstable = stub;
        }};
        flake = import {nix_path(ROOT / "flake.nix")};
      in {{
        configurations = builtins.mapAttrs
          (_: s: (builtins.elemAt s.nixosSystemArgs.modules 1).hyperhive.agent.name)
          hyperhive.nixosConfigurations;
        modules = builtins.attrNames hyperhive.nixosModules;
        inputs = builtins.mapAttrs (_: i: i.url) flake.inputs;
      }}
    """
    got = nix_eval(expr, nix_env)
    assert got["configurations"] == {"agent-base": "base", "manager": "manager"}
    assert got["modules"] == ["agent", "default", "harness-base", "manager"]
    assert set(got["inputs"]) == {"nixpkgs", "nixpkgs-unstable"}


# ------------------------------------------------------- modules, with a stub lib

STUB_LIB = """
  let
    type = name: { _type = "stubType"; inherit name; };
  in {
    types = {
      str = type "str";
      bool = type "bool";
      package = type "package";
      path = type "path";
      port = type "port";
      strMatching = re: type "strMatching";
      nullOr = t: type "nullOr";
      enum = values: type "enum";
      submodule = module: { _type = "stubType"; name = "submodule"; inherit module; };
      numbers.between = lo: hi: type "between";
      ints.between = lo: hi: type "between";
    };
    mkOption = attrs: { _type = "option"; } // attrs;
    mkEnableOption = what: { _type = "option"; default = false; description = what; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkDefault = value: value;
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    getExe' = pkg: exe: "${pkg}/bin/${exe}";
    getName = pkg: pkg.pname;
    escapeShellArg = arg: arg;
    concatStringsSep = builtins.concatStringsSep;
    filterAttrsRecursive = pred: set: set;
    mapNullable = f: value: if value == null then null else f value;
    optional = cond: value: if cond then [ value ] else [ ];
    optionalAttrs = cond: set: if cond then set else { };
    versionAtLeast = a: b: builtins.compareVersions a b >= 0;
  }
"""

STUB_PKGS = """
  {
    formats.json = { }: {
      type = "json-value";
      generate = name: value: "/nix/store/00000000000000000000000000000000-${name}";
    };
    stdenv.hostPlatform.system = "x86_64-linux";
    git = "/nix/store/git";
    bubblewrap = "/nix/store/bubblewrap";
    hyperhive = "/nix/store/hyperhive";
    claude-code = "/nix/store/claude-code";
    makeWrapper = "/nix/store/make-wrapper";
    symlinkJoin = args: args // { stub = "symlinkJoin"; };
  }
"""

HOST_CONFIG = """
  {
    services.hyperhive = {
      enable = true;
      package = "/nix/store/hyperhive";
      stateDir = "/var/lib/hyperhive";
      dashboard = { address = "127.0.0.1"; port = 7000; };
      openFirewall = true;
      openAgentPorts = true;
      environmentFile = null;
      settings = {
        runtime = "nixos-container";
        hyperhive_flake = "path:/nix/store/x-source";
        ports = { manager = 8000; agent_base = 8100; agent_range = 900; };
      };
    };
    boot.enableContainers = true;
    system.stateVersion = "25.11";
    nix.package = "/nix/store/nix";
  }
"""


def option_tree(node: dict[str, Any]) -> Any:
    """Option declarations (stub mkOption output) -> nested {name: default}."""
    if node.get("_type") == "option":
        sub = node.get("type", {})
        if isinstance(sub, dict) and sub.get("name") == "submodule":
            return option_tree(sub["module"]["options"])
        return node.get("default")
    return {key: option_tree(value) for key, value in node.items()}


@pytest.fixture(scope="module")
def host_module(nix_env: dict[str, str]) -> Any:
    expr = f"""
      let
        lib = {STUB_LIB};
        m = (import {nix_path(ROOT / "nix/modules/hyperhive.nix")} {{ }}) {{
          lib = lib;
          pkgs = {STUB_PKGS};
          config = {HOST_CONFIG};
        }};
        # options without their descriptions' functions: only data survives JSON
        strip = v:
          if builtins.isAttrs v then builtins.mapAttrs (_: strip) v
          else if builtins.isFunction v then "<function>"
          else v;
      in strip {{ inherit (m) options config _file key; }}
    """
    return nix_eval(expr, nix_env)


def test_host_module_options(host_module: Any) -> None:
    tree = option_tree(host_module["options"])["services"]["hyperhive"]
    assert tree == {
        "enable": False,
        "package": "/nix/store/hyperhive",  # imported with self = null: pkgs.hyperhive
        "stateDir": "/var/lib/hyperhive",
        "dashboard": {"address": "127.0.0.1", "port": 7000},
        "openFirewall": False,
        "openAgentPorts": False,
        "environmentFile": None,
        "settings": {
            "runtime": "nixos-container",
            "hyperhive_flake": None,
            "resync_seconds": 60,
            "default_model": "haiku",
            "log_level": "info",
            "ports": {"manager": 8000, "agent_base": 8100, "agent_range": 900},
        },
    }


def test_host_module_defaults_match_the_config_schema(host_module: Any) -> None:
    schema = json.loads((ROOT / "schemas" / "json" / "config.schema.json").read_text())
    props = schema["properties"]
    module = host_module["options"]["services"]["hyperhive"]
    settings = option_tree(module["settings"])
    for key, default in settings.items():
        assert key in props, f"settings.{key} is not in config.schema.json"
        if key == "ports":
            for port, value in default.items():
                assert props["ports"]["properties"][port]["default"] == value
        elif key == "runtime":
            assert default in props["runtime"]["enum"]
        elif default is not None:
            assert props[key].get("default") == default, key
    dash = props["dashboard"]["properties"]
    assert module["dashboard"]["address"]["default"] == dash["host"]["default"]
    assert module["dashboard"]["port"]["default"] == dash["port"]["default"]
    # what the module renders itself
    for key in ("state_dir", "run_dir", "dashboard"):
        assert key in props


def test_host_module_renders_settings(host_module: Any) -> None:
    cfg = host_module["config"]
    assert cfg["_type"] == "if" and cfg["condition"] is True
    main = cfg["content"]["contents"][0]
    assert main["services"]["hyperhive"]["settings"] == {
        "state_dir": "/var/lib/hyperhive",
        "run_dir": "/run/hyperhive",
        "dashboard": {"host": "127.0.0.1", "port": 7000},
    }
    assert main["environment"]["etc"]["hyperhive/config.json"]["source"].endswith("-hyperhive.json")
    assert main["nix"]["settings"]["experimental-features"] == ["nix-command", "flakes"]
    [cli] = main["environment"]["systemPackages"]
    assert cli["paths"] == ["/nix/store/hyperhive"]
    assert "--set-default HYPERHIVE_STATE_DIR /var/lib/hyperhive" in cli["postBuild"]
    assert "--set-default HYPERHIVE_RUN_DIR /run/hyperhive" in cli["postBuild"]
    assert [a["assertion"] for a in main["assertions"]] == [True, True, True]


def test_host_module_systemd_unit(host_module: Any) -> None:
    main = host_module["config"]["content"]["contents"][0]
    unit = main["systemd"]["services"]["hyperhive"]
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
    contents = host_module["config"]["content"]["contents"]
    tmpfiles = [
        c["content"]["systemd"]["tmpfiles"]["settings"]["10-hyperhive"]
        for c in contents[1:]
        if "systemd" in c["content"]
    ]
    assert [d["d"]["mode"] for t in tmpfiles for d in t.values()] == ["0700"]
    assert service["StateDirectory"] == {"_type": "if", "condition": True, "content": "hyperhive"}
    assert service["ExecStart"] == (
        "/nix/store/hyperhive/bin/hyperhive --state-dir /var/lib/hyperhive serve"
        " --config /nix/store/00000000000000000000000000000000-hyperhive.json"
    )
    assert service["ReadWritePaths"] == ["/etc/nixos-containers", "/etc/systemd/system.control"]
    assert "/nix/store/git" in unit["path"]
    assert "/nix/store/bubblewrap" in unit["path"]
    assert "/run/current-system/sw" in unit["path"]
    assert unit["environment"]["HYPERHIVE_STATE_DIR"] == "/var/lib/hyperhive"
    assert unit["environment"]["HYPERHIVE_RUN_DIR"] == "/run/hyperhive"
    assert "multi-user.target" in unit["wantedBy"]


def test_host_module_firewall(host_module: Any) -> None:
    contents = host_module["config"]["content"]["contents"]
    blocks = [c["content"] for c in contents[1:] if c["condition"]]
    firewall = [b["networking"]["firewall"] for b in blocks if "networking" in b]
    assert firewall == [
        {"allowedTCPPorts": [7000]},
        {"allowedTCPPorts": [8000], "allowedTCPPortRanges": [{"from": 8100, "to": 8999}]},
    ]


HARNESS_CONFIG = """
  {
    hyperhive.agent = {
      name = "alice";
      flavor = "agent";
      package = "/nix/store/hyperhive";
      claudePackage = "/nix/store/claude-code";
      webTcp = false;
      webHost = "127.0.0.1";
      webPort = WEB_PORT;
    };
  }
"""


def harness_module(env: dict[str, str], web_port: str) -> Any:
    expr = f"""
      let
        self = {{
          overlays = {{ default = "overlay-default"; claude-code = "overlay-claude-code"; }};
        }};
        m = (import {nix_path(ROOT / "nix/modules/harness-base.nix")} {{ inherit self; }}) {{
          lib = {STUB_LIB};
          pkgs = {STUB_PKGS};
          config = {HARNESS_CONFIG.replace("WEB_PORT", web_port)};
        }};
        predicate = m.config.nixpkgs.config.allowUnfreePredicate;
      in {{
        options = builtins.attrNames m.options.hyperhive.agent;
        unfree = map predicate [ {{ pname = "claude-code"; }} {{ pname = "vscode"; }} ];
        inherit (m.config) boot networking;
        overlays = m.config.nixpkgs.overlays;
        unit = m.config.systemd.services.hyperhive-agent;
        packages = m.config.environment.systemPackages;
      }}
    """
    return nix_eval(expr, env)


def test_harness_base(nix_env: dict[str, str]) -> None:
    got = harness_module(nix_env, "null")
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
    assert got["boot"] == {"isNspawnContainer": True}
    assert got["networking"]["hostName"] == "h-alice"
    assert got["overlays"] == ["overlay-default", "overlay-claude-code"]
    unit = got["unit"]
    assert unit["serviceConfig"]["Type"] == "notify"
    assert unit["serviceConfig"]["ExecStart"] == "/nix/store/hyperhive/bin/hyperhive-agent serve"
    assert unit["environment"] == {
        "HYPERHIVE_AGENT": "alice",
        "HYPERHIVE_FLAVOR": "agent",
        "HYPERHIVE_SOCKET": "/run/hive/mcp.sock",
        "HYPERHIVE_STATE_DIR": "/state",
        "HYPERHIVE_SETTINGS": "/etc/hyperhive/settings.json",
        "HYPERHIVE_CREDENTIAL_FILE": "/etc/hyperhive/credential",
        "HYPERHIVE_CLAUDE_BIN": "/nix/store/claude-code/bin/claude",
        "HYPERHIVE_WEB_TCP": "0",
        "HYPERHIVE_WEB_HOST": "127.0.0.1",
        "HYPERHIVE_WEB_PORT": None,
        "CLAUDE_CONFIG_DIR": "/root/.claude",
        "HOME": "/root",
        "DISABLE_AUTOUPDATER": "1",
        "PYTHONUNBUFFERED": "1",
    }
    assert unit["path"] == ["/nix/store/claude-code", "/nix/store/git", "/run/current-system/sw"]
    assert unit["unitConfig"]["RequiresMountsFor"] == ["/run/hive", "/state", "/root/.claude"]


def test_harness_base_web_port(nix_env: dict[str, str]) -> None:
    got = harness_module(nix_env, "8123")
    assert got["unit"]["environment"]["HYPERHIVE_WEB_PORT"] == "8123"


# ------------------------------------------------------------------------ docs


def test_deploy_doc_lists_every_module_option(host_module: Any) -> None:
    """docs/deploy.md has a table row for every option of services.hyperhive."""
    doc = (ROOT / "docs" / "deploy.md").read_text()

    def leaves(tree: Any, prefix: str) -> Iterator[str]:
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}.{key}")
            else:
                yield f"{prefix}.{key}"

    tree = option_tree(host_module["options"])["services"]["hyperhive"]
    missing = [name for name in leaves(tree, "services.hyperhive") if f"`{name}`" not in doc]
    assert missing == []
