"""``HYPERHIVE_API_URL``: the harness reaching its API over TCP instead of a socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import claude
from harness.config import SettingsError, env_from
from harness.credential import BrokerTarget, broker_client, broker_target
from tests.tlscert import self_signed

BASE = {"HYPERHIVE_AGENT": "alice", "HYPERHIVE_SOCKET": "/run/hive/mcp.sock"}


def test_the_url_wins_over_the_socket(tmp_path: Path) -> None:
    ca, _ = self_signed(tmp_path)
    env = env_from({**BASE, "HYPERHIVE_API_URL": "https://hive.example:7100",
                    "HYPERHIVE_API_CA": str(ca)})  # fmt: skip
    assert env.broker == BrokerTarget("https://hive.example:7100", str(ca))
    assert env.socket == "/run/hive/mcp.sock"  # the web UI's socket still sits beside it
    client = broker_client(env.broker, "tok")
    assert client.endpoint.host == "hive.example" and client.endpoint.tls
    # plain http needs no CA (and ignores one)
    plain = {"HYPERHIVE_API_URL": "http://10.0.0.1:7100", "HYPERHIVE_API_CA": str(ca)}
    env = env_from({**BASE, **plain})
    assert env.broker == BrokerTarget("http://10.0.0.1:7100", None)


def test_without_a_url_the_socket_is_used() -> None:
    env = env_from(BASE)
    assert env.api_url is None and env.broker == BrokerTarget("/run/hive/mcp.sock")
    assert broker_target({}) == BrokerTarget("/run/hive/mcp.sock")
    assert broker_target({"HYPERHIVE_API_URL": "  "}) == BrokerTarget("/run/hive/mcp.sock")


@pytest.mark.parametrize(
    "url,says",
    [
        ("/run/hive/mcp.sock", "not an http"),
        ("ftp://hive.example", "not an http"),
        ("http://", "no host"),
        ("https://user:pw@hive.example", "user"),
        ("http://hive.example:70000", "port"),
    ],
)
def test_a_bad_url_is_a_settings_error(url: str, says: str) -> None:
    with pytest.raises(SettingsError) as e:
        env_from({**BASE, "HYPERHIVE_API_URL": url})
    assert "HYPERHIVE_API_URL" in str(e.value) and says in str(e.value)


def test_a_missing_or_bad_ca_file_is_a_settings_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    for ca in (tmp_path / "nope.pem", tmp_path / "bad.pem"):
        with pytest.raises(SettingsError) as e:
            env_from({**BASE, "HYPERHIVE_API_URL": "https://h:1", "HYPERHIVE_API_CA": str(ca)})
        assert "HYPERHIVE_API_CA" in str(e.value)


def test_the_stdio_mcp_server_is_told_the_url() -> None:
    doc = claude.render_mcp_config(
        socket="/run/hive/mcp.sock", flavor="agent", agent="alice", extras={},
        api_url="https://hive.example:7100", api_ca="/etc/ca.pem",
    )  # fmt: skip
    env = doc["mcpServers"]["hyperhive"]["env"]
    assert env["HYPERHIVE_API_URL"] == "https://hive.example:7100"
    assert env["HYPERHIVE_API_CA"] == "/etc/ca.pem"
    plain = claude.render_mcp_config(
        socket="/run/hive/mcp.sock", flavor="agent", agent="alice", extras={}
    )
    assert "HYPERHIVE_API_URL" not in plain["mcpServers"]["hyperhive"]["env"]
