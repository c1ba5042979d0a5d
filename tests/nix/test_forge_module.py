"""nix/modules/forge.nix (``services.hyperhive.forge``) evaluated with the real module system.

The host module with the forge on: NixOS' ``services.forgejo`` (declared with its NixOS
types in tests/nix/nixos-options.nix) runs on loopback, the admin-token unit runs before
the controller, and the controller's config gets ``forge`` (valid against its schema).
A value of the wrong type fails the evaluation as it would on a host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.nix.nixeval import make_env, nix_eval, nix_eval_error, require_nix
from tests.nix.test_nix import host_system

pytestmark = require_nix()

FORGE_ON = """{
  services.hyperhive.enable = true;
  services.hyperhive.forge.enable = true;
  services.hyperhive.forge.port = 3300;
}"""


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    yield make_env(tmp_path_factory.mktemp("nix-home"))


def evaluate(config: str, env: dict[str, str]) -> Any:
    expr = f"""
      let
        system = {host_system(config)};
        top = system.config.system.build.toplevel;
      in {{
        config = top.summary;
        configJson = system.config.environment.etc."hyperhive/config.json".source.text;
        script = system.config.systemd.services.hyperhive-forge-admin.script or null;
      }}
    """
    return nix_eval(expr, env)


def test_forge_off_by_default(nix_env: dict[str, str]) -> None:
    got = evaluate("{ services.hyperhive.enable = true; }", nix_env)
    assert got["config"]["services"]["forgejo"]["enable"] is False
    assert "hyperhive-forge-admin" not in got["config"]["systemd"]["services"]
    assert "forge" not in json.loads(got["configJson"])


def test_forge_on_runs_forgejo_and_wires_the_controller(nix_env: dict[str, str]) -> None:
    from schemas.validate import validate

    got = evaluate(FORGE_ON, nix_env)
    forgejo = got["config"]["services"]["forgejo"]
    assert forgejo["enable"] is True
    assert forgejo["database"]["type"] == "sqlite3"
    server = forgejo["settings"]["server"]
    assert (server["HTTP_ADDR"], server["HTTP_PORT"]) == ("127.0.0.1", 3300)
    assert server["ROOT_URL"] == "http://localhost:3300/"
    assert forgejo["settings"]["service"]["DISABLE_REGISTRATION"] is True
    unit = got["config"]["systemd"]["services"]["hyperhive-forge-admin"]
    assert unit["after"] == ["forgejo.service"] and unit["requires"] == ["forgejo.service"]
    assert unit["before"] == ["hyperhive.service"]
    assert unit["requiredBy"] == ["hyperhive.service"]
    assert unit["serviceConfig"]["Type"] == "oneshot"
    rendered = json.loads(got["configJson"])
    validate(rendered, "config")
    assert rendered["forge"] == {
        "url": "http://localhost:3300",
        "admin_token_file": "/var/lib/hyperhive/forge-admin-token",
        "poll_seconds": 15,
    }
    script = got["script"]
    assert "generate-access-token --username hyperhive-admin" in script
    assert "--scopes all --raw" in script
    assert "/var/lib/hyperhive/forge-admin-token" in script


def test_a_mistyped_forge_option_fails_the_evaluation(nix_env: dict[str, str]) -> None:
    bad = FORGE_ON.replace("port = 3300", "port = 0")
    err = nix_eval_error(f"({host_system(bad)}).config.system.build.toplevel.outPath", nix_env)
    assert "services.hyperhive.forge.port" in err and "is not of type" in err
    typo = FORGE_ON.replace("forge.port", "forge.prot")
    err = nix_eval_error(f"({host_system(typo)}).config.system.build.toplevel.outPath", nix_env)
    assert "services.hyperhive.forge.prot" in err and "does not exist" in err
