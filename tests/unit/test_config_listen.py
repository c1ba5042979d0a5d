"""The config's optional TCP listeners: ``api:`` (the agent API) and ``git:`` (meta.git)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import Config, TcpListen, config_from_dict
from schemas.validate import ValidationFailed


def test_off_by_default() -> None:
    assert Config().api is None and Config().git is None
    assert config_from_dict({}).api is None


def test_api_and_git() -> None:
    cfg = config_from_dict(
        {
            "api": {
                "listen": "0.0.0.0:7100",
                "hosts": ["Hive.Example"],
                "tls": {"cert": "/c.pem", "key": "/k.pem"},
                "per_client": 500,
            },
            "git": {"listen": "[::1]:7200"},
        }
    )
    assert cfg.api == TcpListen(
        "0.0.0.0", 7100, ("hive.example",), Path("/c.pem"), Path("/k.pem"), None, 500
    )
    assert cfg.api.scheme == "https"
    assert cfg.git == TcpListen("::1", 7200)
    assert cfg.git.scheme == "http"


@pytest.mark.parametrize(
    "doc",
    [
        {"api": {}},
        {"api": {"listen": "7100"}},
        {"api": {"listen": "host:99999"}},
        {"api": {"listen": "h:1", "tls": {"cert": "/c"}}},
        {"api": {"listen": "h:1", "extra": 1}},
        {"git": {"listen": "h:1", "per_client": 0}},
        {"api": {"listen": "h:1", "hosts": ["bad host"]}},
    ],
)
def test_bad_listeners_are_refused_naming_the_field(doc: dict[str, object]) -> None:
    with pytest.raises(ValidationFailed) as e:
        config_from_dict(doc)
    assert (e.value.field or "").split(".")[0].split("/")[0] in ("api", "git"), e.value.field
