"""settings.json and the environment contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import SettingsError, env_from, load_settings, parse_settings, web_port


def test_full_settings(tmp_path: Path) -> None:
    doc = {
        "agent": "alice",
        "flavor": "agent",
        "model": "sonnet",
        "allowed_recipients": ["bob"],
        "mcp_servers": {
            "m": {"command": "/bin/m", "args": ["-x"], "env": {"A": "b"}, "allowedTools": ["t"]}
        },
        "plugins": [],
        "marketplaces": [],
        "web_port": 8123,
        "dashboard_url": "http://127.0.0.1:7000",
        "meta_commit": "abc123",
        "hyperhive_version": "0.1.0",
    }
    p = tmp_path / "settings.json"
    p.write_text(json.dumps(doc))
    s = load_settings(p, agent="alice", flavor="agent")
    assert s.model == "sonnet" and s.web_port == 8123 and s.meta_commit == "abc123"
    assert s.mcp_servers["m"].allowed_tools == ("t",) and s.mcp_servers["m"].args == ("-x",)


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    s = load_settings(tmp_path / "nope.json", agent="bob", flavor="agent")
    assert s.agent == "bob" and s.model == "haiku" and s.mcp_servers == {}


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"flavor": "boss"}, "flavor"),
        ({"model": 5}, "model"),
        ({"web_port": 70000}, "web_port"),
        ({"mcp_servers": {"k": {"args": []}}}, "mcp_servers.k.command"),
        ({"mcp_servers": {"k": {"command": "x", "env": {"A": 1}}}}, "mcp_servers.k.env"),
        ({"plugins": "x"}, "plugins"),
    ],
)
def test_bad_fields_are_named(doc: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        parse_settings(doc, agent="a", flavor="agent")


def test_malformed_json(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text("{nope")
    with pytest.raises(SettingsError, match="cannot read settings"):
        load_settings(p, agent="a", flavor="agent")


def test_env_contract(tmp_path: Path) -> None:
    env = env_from(
        {
            "HYPERHIVE_AGENT": "alice",
            "HYPERHIVE_FLAVOR": "agent",
            "HYPERHIVE_SOCKET": "/s.sock",
            "HYPERHIVE_STATE_DIR": str(tmp_path),
            "HYPERHIVE_WEB_PORT": "8555",
            "CLAUDE_CONFIG_DIR": "/c",
            "HYPERHIVE_CLAUDE_BIN": "/opt/claude",
        }
    )
    assert env.socket == "/s.sock" and env.state_dir == tmp_path and env.web_port == 8555
    assert env.claude_bin == "/opt/claude" and str(env.config_dir) == "/c" and not env.is_manager
    assert env_from({"HYPERHIVE_FLAVOR": "manager"}).agent == "manager"
    with pytest.raises(SettingsError, match="HYPERHIVE_AGENT"):
        env_from({})
    with pytest.raises(SettingsError, match="HYPERHIVE_WEB_PORT"):
        env_from({"HYPERHIVE_AGENT": "a", "HYPERHIVE_WEB_PORT": "http"})


def test_web_port_precedence(tmp_path: Path) -> None:
    s = parse_settings({"web_port": 8200}, agent="alice", flavor="agent")
    env = env_from({"HYPERHIVE_AGENT": "alice"})
    assert web_port(env, s) == 8200
    assert web_port(env_from({"HYPERHIVE_AGENT": "alice", "HYPERHIVE_WEB_PORT": "9000"}), s) == 9000
    none = parse_settings({}, agent="alice", flavor="agent")
    assert 8100 <= web_port(env, none) < 9000
    assert (
        web_port(
            env_from({"HYPERHIVE_FLAVOR": "manager"}),
            parse_settings({}, agent="manager", flavor="manager"),
        )
        == 8000
    )


def test_turn_time_limit_precedence() -> None:
    from harness.config import turn_timeout

    env = env_from({"HYPERHIVE_AGENT": "alice"})
    assert turn_timeout(env, parse_settings({}, agent="alice", flavor="agent")) == 1800
    s = parse_settings({"turn_timeout_seconds": 600}, agent="alice", flavor="agent")
    assert turn_timeout(env, s) == 600
    fast = env_from({"HYPERHIVE_AGENT": "alice", "HYPERHIVE_TURN_TIMEOUT": "2.5"})
    assert turn_timeout(fast, s) == 2.5
    for bad in (0, -1, "60", True, 10**9):
        with pytest.raises(SettingsError, match="turn_timeout_seconds"):
            parse_settings({"turn_timeout_seconds": bad}, agent="alice", flavor="agent")
    for bad_env in ("soon", "0", "1e12"):
        with pytest.raises(SettingsError, match="HYPERHIVE_TURN_TIMEOUT"):
            env_from({"HYPERHIVE_AGENT": "a", "HYPERHIVE_TURN_TIMEOUT": bad_env})


def test_watchdog_interval() -> None:
    from harness.serve import watchdog_interval

    assert watchdog_interval({}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}, 7) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "7"}, 7) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}, 7) is None
