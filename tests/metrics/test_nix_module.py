"""nix/modules/metrics.nix (``services.hyperhive.metrics`` / ``.otel``) evaluated with the
real module system: off by default; on, the controller's config gets ``metrics`` and
``otel`` (valid against its schema); a non-loopback address without a token file fails the
evaluation as it would on a host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.validate import validate
from tests.nix.nixeval import make_env, nix_eval, nix_eval_error, require_nix
from tests.nix.test_nix import host_system

pytestmark = require_nix()


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
      }}
    """
    return nix_eval(expr, env)


def test_metrics_and_otel_are_off_by_default(nix_env: dict[str, str]) -> None:
    got = json.loads(evaluate("{ services.hyperhive.enable = true; }", nix_env)["configJson"])
    assert "metrics" not in got and "otel" not in got


def test_metrics_on_renders_the_controller_config(nix_env: dict[str, str]) -> None:
    got = evaluate(
        """{
          services.hyperhive.enable = true;
          services.hyperhive.metrics.enable = true;
          services.hyperhive.metrics.port = 9500;
          services.hyperhive.otel.endpoint = "http://127.0.0.1:4318";
          services.hyperhive.otel.claudeCode = true;
        }""",
        nix_env,
    )
    rendered = json.loads(got["configJson"])
    validate(rendered, "config")
    assert rendered["metrics"] == {"host": "127.0.0.1", "port": 9500}
    assert rendered["otel"] == {"endpoint": "http://127.0.0.1:4318", "claude_code": True}
    assert 9500 not in got["config"]["networking"]["firewall"]["allowedTCPPorts"]


def test_a_public_address_needs_a_token_file(nix_env: dict[str, str]) -> None:
    public = """{
      services.hyperhive.enable = true;
      services.hyperhive.metrics.enable = true;
      services.hyperhive.metrics.address = "0.0.0.0";
    }"""
    err = nix_eval_error(f"({host_system(public)}).config.system.build.toplevel.outPath", nix_env)
    assert "set services.hyperhive.metrics.tokenFile too" in err
    with_token = public.replace(
        "}",
        """  services.hyperhive.metrics.tokenFile = "/run/keys/scrape";
          services.hyperhive.metrics.openFirewall = true;
        }""",
    )
    got = evaluate(with_token, nix_env)
    rendered = json.loads(got["configJson"])
    validate(rendered, "config")
    assert rendered["metrics"] == {
        "host": "0.0.0.0",
        "port": 9469,
        "token_file": "/run/keys/scrape",
    }
    assert 9469 in got["config"]["networking"]["firewall"]["allowedTCPPorts"]
