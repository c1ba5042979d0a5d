"""The Nix tests catch what a real host would refuse: broken copies of the modules.

Each case copies ``flake.nix`` and ``nix/`` into a temporary checkout, breaks one
line of a module (a misspelled option, a value of the wrong type, a bad unit
name, a bad ``Type=``), evaluates that checkout's system the way test_nix.py
does (real ``lib.evalModules``, NixOS' option types from
``tests/nix/nixos-options.nix``), and asserts that evaluation fails with the
module system's own error, naming the option. The same for bad values a user
could set: a port of 0, an agent name ending in ``-``, a misspelled option in
an agent's agent.nix.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nix.nixeval import ROOT, make_env, nix_eval, nix_eval_error, nix_path, require_nix

pytestmark = require_nix()

STAND_INS = ROOT / "tests" / "nix"
NIXPKGS = f"(import {nix_path(STAND_INS / 'nixpkgs-stand-in' / 'flake-input.nix')})"


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    yield make_env(tmp_path_factory.mktemp("nix-home"))


def checkout(tmp: Path) -> Path:
    """flake.nix and nix/ (without the vendored lib, which nothing here imports) in ``tmp``."""
    src = tmp / "src"
    src.mkdir()
    shutil.copy(ROOT / "flake.nix", src / "flake.nix")
    shutil.copytree(ROOT / "nix", src / "nix", ignore=shutil.ignore_patterns("vendor"))
    return src


def hyperhive(src: Path) -> str:
    return f"(import {nix_path(STAND_INS / 'hyperhive-flake.nix')} {{ src = {nix_path(src)}; }})"


def host_toplevel(src: Path, config: str = "{ }") -> str:
    """The host module of ``src`` enabled (with both firewall blocks), forced."""
    return f"""
      ({NIXPKGS}.lib.nixosSystem {{
        modules = [
          {hyperhive(src)}.nixosModules.default
          {{
            nixpkgs.hostPlatform = "x86_64-linux";
            services.hyperhive = {{ enable = true; openFirewall = true; openAgentPorts = true; }};
          }}
          {config}
        ];
      }}).config.system.build.toplevel.outPath
    """


def agent_toplevel(src: Path, name: str = "alice", modules: str = "") -> str:
    """An agent container of ``src`` (mkAgent), forced."""
    return (
        f'({hyperhive(src)}.lib.mkAgent {{ name = "{name}"; modules = [ {modules} ]; }})'
        ".config.system.build.toplevel.outPath"
    )


@dataclass(frozen=True)
class Break:
    """One line of a module, broken: ``old`` becomes ``new`` in ``path``."""

    id: str
    path: str
    old: str
    new: str
    errors: tuple[str, ...]  # substrings of nix-instantiate's error message


BREAKS = [
    Break(
        "misspelled-option",
        "nix/modules/hyperhive.nix",
        "          serviceConfig = {\n            # READY=1",
        "          serviceConfg = {\n            # READY=1",
        ("The option `systemd.services.hyperhive.serviceConfg' does not exist.",),
    ),
    Break(
        "misspelled-nested-option",
        "nix/modules/harness-base.nix",
        "      hostName = lib.mkDefault",
        "      hostname = lib.mkDefault",
        ("The option `networking.hostname' does not exist.",),
    ),
    Break(
        "string-for-a-port",
        "nix/modules/hyperhive.nix",
        "allowedTCPPorts = [ cfg.dashboard.port ];",
        "allowedTCPPorts = [ (toString cfg.dashboard.port) ];",
        (
            "A definition for option `networking.firewall.allowedTCPPorts.",
            "is not of type `16 bit unsigned integer; between 0 and 65535 (both inclusive)'.",
        ),
    ),
    Break(
        "string-for-a-bool",
        "nix/modules/harness-base.nix",
        "boot.isNspawnContainer = true;",
        'boot.isNspawnContainer = "true";',
        ("A definition for option `boot.isNspawnContainer' is not of type `boolean'.",),
    ),
    Break(
        "not-a-unit-name",
        "nix/modules/harness-base.nix",
        'wantedBy = [ "multi-user.target" ];',
        'wantedBy = [ "multi-user" ];',
        ("A definition for option `systemd.services.hyperhive-agent.wantedBy.",),
    ),
    Break(
        "bad-service-type",
        "nix/modules/harness-base.nix",
        'Type = "notify";',
        'Type = "notfy";',
        ("A definition for option `systemd.services.hyperhive-agent.serviceConfig'",),
    ),
]


@pytest.mark.parametrize("case", BREAKS, ids=[b.id for b in BREAKS])
def test_a_broken_module_fails_naming_the_option(
    case: Break, tmp_path: Path, nix_env: dict[str, str]
) -> None:
    src = checkout(tmp_path)
    expr = host_toplevel(src) if case.path.endswith("hyperhive.nix") else agent_toplevel(src)
    # the unbroken copy evaluates: the failure below is the broken line's alone
    assert nix_eval(expr, nix_env).startswith("/nix/store/")
    module = src / case.path
    text = module.read_text()
    assert text.count(case.old) == 1, f"{case.path} no longer has {case.old!r}"
    module.write_text(text.replace(case.old, case.new))
    err = nix_eval_error(expr, nix_env)
    for expected in case.errors:
        assert expected in err, err


def test_port_zero_is_refused_by_the_module(tmp_path: Path, nix_env: dict[str, str]) -> None:
    """types.port took 0; the controller's schema does not (ports.manager >= 1)."""
    err = nix_eval_error(
        host_toplevel(ROOT, "{ services.hyperhive.settings.ports.agent_base = 0; }"), nix_env
    )
    assert "A definition for option `services.hyperhive.settings.ports.agent_base'" in err
    assert "is not of type `integer between 1 and 65535 (both inclusive)'" in err


def test_a_name_ending_in_dash_is_refused(nix_env: dict[str, str]) -> None:
    """web- would be hostname h-web-, which NixOS refuses: the name option says so first."""
    err = nix_eval_error(agent_toplevel(ROOT, "web-"), nix_env)
    assert "A definition for option `hyperhive.agent.name' is not of type `agent name" in err
    assert "not ending in '-'" in err


def test_frontend_in_agent_nix_points_to_the_manifest(nix_env: dict[str, str]) -> None:
    """The seeds' hyperhive.frontend in agent.nix fails with where it lives here instead."""
    err = nix_eval_error(
        agent_toplevel(ROOT, modules='{ hyperhive.frontend.extraFiles = { "game" = ./.; }; }'),
        nix_env,
    )
    assert "hyperhive.frontend is set in alice's agent.nix" in err
    assert "spec.frontend in agents/alice/agent.yaml" in err


def test_a_misspelled_option_in_agent_nix(nix_env: dict[str, str]) -> None:
    err = nix_eval_error(
        agent_toplevel(ROOT, modules="{ environment.systemPackage = [ ]; }"), nix_env
    )
    assert "The option `environment.systemPackage' does not exist." in err


@pytest.mark.parametrize("bad", ["she/her\\n", "", "x" * 33])
def test_operator_pronouns_must_be_one_short_line(bad: str, nix_env: dict[str, str]) -> None:
    """As the controller's schema says (operator_pronouns: 1-32 characters, one line)."""
    err = nix_eval_error(
        host_toplevel(ROOT, f'{{ services.hyperhive.operatorPronouns = "{bad}"; }}'), nix_env
    )
    assert "A definition for option `services.hyperhive.operatorPronouns'" in err


@pytest.mark.parametrize(
    ("setting", "option"),
    [
        ("budget.usdPerDay = -1;", "services.hyperhive.settings.budget.usdPerDay"),
        ('budget.tokensPerDay = "lots";', "services.hyperhive.settings.budget.tokensPerDay"),
        ("budget.warnAt = 1.5;", "services.hyperhive.settings.budget.warnAt"),
        ("budget.usdPerDya = 5;", "services.hyperhive.settings.budget.usdPerDya"),
    ],
)
def test_swarm_budget_is_typed(setting: str, option: str, nix_env: dict[str, str]) -> None:
    """The swarm budget's fields have the config schema's types and ranges."""
    err = nix_eval_error(
        host_toplevel(ROOT, f"{{ services.hyperhive.settings.{setting} }}"), nix_env
    )
    assert f"option `{option}'" in err
