"""One agent name rule: schemas/names.py, and everything that spells it, on one table.

``schemas/names.py`` is the definition. ``nix/lib/names.json`` is generated from
it (``python -m schemas.names``) and read by ``nix/lib/agents.nix``, whose
``isAgentName`` the meta flake's walk and the harness module's
``hyperhive.agent.name`` type use. The JSON schemas and the dashboard's form
spell the same pattern. The same table of good and bad names goes to each of
them here, the Nix ones through ``nix-instantiate --eval`` with the real nixpkgs
``lib``; and every good name's container name must pass NixOS'
``networking.hostName`` type, which is what ``web-`` (hostname ``h-web-``)
failed on a real host.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.names import (
    AGENT_NAME_PATTERN,
    AGENT_NAME_RE,
    MANAGER,
    OPERATOR,
    InvalidName,
    check_agent_name,
    container_name,
    is_agent_name,
    nix_names_json,
)
from schemas.names import RESERVED as RESERVED_NAMES
from tests.nix.nixeval import (
    ROOT,
    VENDORED_LIB,
    make_env,
    nix_eval,
    nix_list,
    nix_path,
    require_nix,
)

#: Valid names for a new agent.
GOOD = [
    "a",
    "z",
    "ab",
    "a1",
    "x9",
    "alice",
    "bob",
    "web-2",
    "a-b",
    "a--b",
    "a-------b",
    "abcdefghi",
    "h-web",
]
#: Names the rule refuses; the reserved ones fit the pattern but are still refused.
RESERVED = ["operator", "hyperhive", "controller", "all", "forge"]
BAD = [
    "web-",  # hostname h-web- is not a DNS label: the defect this table exists for
    "a-",
    "abcdefgh-",
    "h-web-",
    "-",
    "-x",
    "--",
    "",
    "Alice",
    "aLice",
    "2fast",
    "9",
    "a_b",
    "a.b",
    "a b",
    " alice",
    "alice ",
    "alice\n",
    "\nalice",
    "abcdefghij",
    "é",
    "aé",
    *RESERVED,
]
#: The manager is a valid name for ``is_agent_name`` and the Nix walk, never a new agent.
TABLE = [*GOOD, *BAD, MANAGER]


def test_table_is_what_it_says() -> None:
    assert set(RESERVED) == RESERVED_NAMES - {MANAGER}  # every reserved name is in the table
    for name in GOOD:
        assert check_agent_name(name) == name
        assert is_agent_name(name)
    for name in BAD:
        with pytest.raises(InvalidName):
            check_agent_name(name)
        assert not is_agent_name(name)
    with pytest.raises(InvalidName, match="reserved"):
        check_agent_name(MANAGER)
    assert is_agent_name(MANAGER)


def test_the_error_says_the_rule() -> None:
    with pytest.raises(InvalidName, match="not ending in '-'"):
        check_agent_name("web-")


def test_nix_names_json_is_generated_from_schemas_names() -> None:
    """nix/lib/names.json is current.

    Regenerate it with ``python -m schemas.names > nix/lib/names.json``."""
    assert (ROOT / "nix" / "lib" / "names.json").read_text() == nix_names_json()


# --------------------------------------------------------------- the JSON schemas


def schema_patterns() -> Iterator[tuple[str, str]]:
    """(where, pattern) of every agent-name pattern in schemas/json (they mention [a-z])."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, str) and "[a-z]" in pattern and "manager" not in where:
                yield where, pattern
            for key, value in node.items():
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}/{i}")

    for path in sorted((ROOT / "schemas" / "json").glob("*.schema.json")):
        yield from walk(json.loads(path.read_text()), path.name)


def test_json_schemas_spell_the_rule() -> None:
    """JSON Schema ``pattern`` is an unanchored search; the reserved names are the
    controller's business, some patterns add ``manager`` and ``operator``."""
    found = list(schema_patterns())
    assert {w.split("/")[0] for w, _ in found} >= {
        "admin.schema.json",
        "agent.schema.json",
        "wire.schema.json",
    }
    for where, pattern in found:
        # the recipient patterns add `|manager|operator`, the budget's `|manager`
        extras = {n for n in (MANAGER, OPERATOR) if f"|{n}" in pattern}
        for name in TABLE:
            expected = bool(AGENT_NAME_RE.fullmatch(name)) or name in extras
            assert bool(re.search(pattern, name)) == expected, (where, name)


def test_dashboard_form_spells_the_rule() -> None:
    """The spawn form's ``pattern`` attribute (a browser anchors it as ``^(?:...)$``)."""
    html = (ROOT / "controller" / "dashboard" / "assets" / "index.html").read_text()
    [pattern] = re.findall(r'<input name="name"[^>]*\bpattern="([^"]+)"', html)
    for name in TABLE:
        assert bool(re.fullmatch(pattern, name)) == bool(AGENT_NAME_RE.fullmatch(name)), name


# ------------------------------------------------------------------------ Nix

pytestmark_nix = require_nix()

AGENTS_LIB = nix_path(ROOT / "nix" / "lib" / "agents.nix")
#: NixOS' type of networking.hostName (nixos/modules/tasks/network-interfaces.nix, 25.11).
NIXOS_OPTIONS = nix_path(ROOT / "tests" / "nix" / "nixos-options.nix")


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_env(tmp_path_factory.mktemp("nix-home"))


@pytest.fixture(scope="module")
def nix_verdicts(nix_env: dict[str, str]) -> list[dict[str, Any]]:
    """For every name of TABLE, what the Nix side says about it, with the real lib."""
    harness = nix_path(ROOT / "nix" / "modules" / "harness-base.nix")
    expr = f"""
      let
        lib = import {nix_path(VENDORED_LIB)};
        agents = import {AGENTS_LIB};
        # the option's type as declared; its default (pkgs.hyperhive) is never forced
        module = (import {harness} {{ self = null; }}) {{
          inherit lib;
          pkgs = {{ }};
          config = {{ }};
        }};
        nameType = module.options.hyperhive.agent.name.type;
        nixos = import {NIXOS_OPTIONS} {{ inherit lib; pkgs = {{ }}; config = {{ }}; }};
        hostNameType = nixos.options.networking.hostName.type;
      in
      map (n: {{
        walk = agents.isAgentName n;
        container = agents.containerName n;
        option = nameType.check n;
        hostName = hostNameType.check (agents.containerName n);
      }}) {nix_list(TABLE)}
    """
    verdicts: list[dict[str, Any]] = nix_eval(expr, nix_env)
    return verdicts


@pytestmark_nix
def test_nix_rule_agrees_with_schemas_names(nix_verdicts: list[dict[str, Any]]) -> None:
    for name, got in zip(TABLE, nix_verdicts, strict=True):
        assert got["walk"] == is_agent_name(name), name
        assert got["option"] == is_agent_name(name), name
        assert got["container"] == container_name(name), name


@pytestmark_nix
def test_every_valid_name_makes_a_valid_hostname(nix_verdicts: list[dict[str, Any]]) -> None:
    for name, got in zip(TABLE, nix_verdicts, strict=True):
        if is_agent_name(name):
            assert got["hostName"], f"{container_name(name)!r} is not a NixOS hostName"
    # the defect the rule closes: web- passed the old rule, h-web- fails NixOS
    assert not nix_verdicts[TABLE.index("web-")]["hostName"]


def test_docs_spell_the_rule() -> None:
    """docs/conventions.md (the naming table) and docs/deploy.md (the option table)."""
    anchored = f"`^{AGENT_NAME_PATTERN}$`"
    conventions = (ROOT / "docs" / "conventions.md").read_text()
    [row] = [line for line in conventions.splitlines() if line.startswith("| agent name |")]
    assert anchored in row
    listed = re.findall(r"`([a-z]+)`", row.split("not ", 1)[1].split("|")[0])
    assert sorted(listed) == sorted(RESERVED_NAMES)
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    [row] = [line for line in deploy.splitlines() if line.startswith("| `hyperhive.agent.name` |")]
    assert anchored in row


def test_the_old_rule_is_spelled_nowhere() -> None:
    """The old pattern (which let ``web-`` through) is gone from every tracked file."""
    old = "[a-z0-9-]" + "{0,8}"
    proc = subprocess.run(
        ["git", "grep", "-l", "-F", old, "--", ".", ":!node_modules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout.split() == []
