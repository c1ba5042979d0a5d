"""argv, environment, --mcp-config and tool lists for the claude CLI."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from harness import claude
from harness.config import McpServerSpec


def argv(**kw: object) -> list[str]:
    args: dict[str, object] = {
        "claude_bin": "/bin/claude",
        "model": "haiku",
        "mcp_config": Path("/state/hyperhive-mcp.json"),
        "allow": claude.allowed_tools("agent", {}),
        "continue_session": True,
    }
    args.update(kw)
    return claude.build_argv(**args)  # type: ignore[arg-type]


def test_argv_uses_flag_equals_value_and_no_prompt() -> None:
    a = argv()
    assert a[:5] == ["/bin/claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert "--model=haiku" in a
    assert "--mcp-config=/state/hyperhive-mcp.json" in a
    assert "--strict-mcp-config" in a
    assert "--tools=Bash,Edit,Glob,Grep,Read,Write" in a
    allow = next(x for x in a if x.startswith("--allowedTools="))
    assert allow == "--allowedTools=" + ",".join(
        ["Bash", "Edit", "Glob", "Grep", "Read", "Write"]
        + [f"mcp__hyperhive__{v}" for v in claude.AGENT_VERBS]
    )
    assert "--disallowedTools=WebFetch,WebSearch,Task,TodoWrite,NotebookEdit" in a
    settings = next(x for x in a if x.startswith("--settings="))
    assert json.loads(settings.removeprefix("--settings=")) == {
        "autoCompactEnabled": False,
        "autoMemoryEnabled": False,
    }
    assert a[-1] == "--continue"
    # variadic flags never appear in the two-token form that would swallow a prompt
    for flag in ("--allowedTools", "--mcp-config", "--tools", "--disallowedTools", "--model"):
        assert flag not in a
    # every element is an option: the prompt goes on stdin
    assert all(x.startswith("-") for x in a[4:])


def test_no_continue_for_a_fresh_session() -> None:
    assert "--continue" not in argv(continue_session=False)


def test_manager_allow_list() -> None:
    allow = claude.allowed_tools("manager", {})
    for verb in (
        "request_spawn",
        "request_apply_commit",
        "start",
        "kill",
        "restart",
        "update",
        "ask_operator",
        "list",
        "send",
        "recv",
    ):
        assert f"mcp__hyperhive__{verb}" in allow
    assert "mcp__hyperhive__request_spawn" not in claude.allowed_tools("agent", {})


def test_mcp_config_with_extras_and_shadowing_guard(caplog: pytest.LogCaptureFixture) -> None:
    extras = {
        "matrix": McpServerSpec("/bin/matrix-mcp", ("--room", "x"), {"TOKEN": "t"}, ("*",)),
        "game": McpServerSpec("/bin/game", (), {}, ("play", "look")),
        "hyperhive": McpServerSpec("/bin/evil", (), {}, ("*",)),
        "bad key!": McpServerSpec("/bin/x", (), {}, ("*",)),
    }
    with caplog.at_level(logging.WARNING):
        doc = claude.render_mcp_config(
            socket="/run/hive/mcp.sock", flavor="agent", agent="alice", extras=extras, python="/py"
        )
    servers = doc["mcpServers"]
    assert set(servers) == {"hyperhive", "matrix", "game"}
    assert servers["hyperhive"] == {
        "command": "/py",
        "args": ["-m", "harness.mcp_server"],
        "env": {
            "HYPERHIVE_SOCKET": "/run/hive/mcp.sock",
            "HYPERHIVE_FLAVOR": "agent",
            "HYPERHIVE_AGENT": "alice",
            "PYTHONSAFEPATH": "1",
        },
    }
    assert servers["matrix"] == {
        "command": "/bin/matrix-mcp",
        "args": ["--room", "x"],
        "env": {"TOKEN": "t"},
    }
    assert "reserved" in caplog.text and "'hyperhive'" in caplog.text
    allow = claude.allowed_tools("agent", extras)
    assert "mcp__matrix__*" in allow
    assert "mcp__game__play" in allow and "mcp__game__look" in allow
    assert not any(t.startswith("mcp__bad") for t in allow)
    assert allow.count("mcp__hyperhive__send") == 1


def test_write_mcp_config_is_private(tmp_path: Path) -> None:
    p = claude.write_mcp_config(tmp_path / "sub" / "mcp.json", {"mcpServers": {}})
    assert json.loads(p.read_text()) == {"mcpServers": {}}
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_env_sets_the_fixed_variables(tmp_path: Path) -> None:
    env = claude.build_env(
        {"ANTHROPIC_API_KEY": "k", "PATH": "/bin", "FOO": "bar"}, config_dir=tmp_path
    )
    assert env["CLAUDE_CONFIG_DIR"] == str(tmp_path)
    assert env["MCP_CONNECTION_NONBLOCKING"] == "0"
    assert env["DISABLE_AUTO_COMPACT"] == "1"
    assert env["ANTHROPIC_API_KEY"] == "k" and env["FOO"] == "bar" and env["PATH"] == "/bin"


def test_project_dir_name(tmp_path: Path) -> None:
    assert claude.project_dir_name("/tmp") == "-tmp"
    d = tmp_path / "a_b.c"
    d.mkdir()
    assert claude.project_dir_name(d) == os.path.realpath(d).replace("/", "-").replace(
        "_", "-"
    ).replace(".", "-")
    long = "/" + "x" * 250
    name = claude.project_dir_name(long)
    assert len(name) > 200 and name[:201] == ("-" + "x" * 250)[:200] + "-"
    # Java string hash of the path, base 36 (checked against docs/claude-cli.md's algorithm)
    h = 0
    for ch in long:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    h = h - 2**32 if h >= 2**31 else h
    assert int(name[201:], 36) == abs(h)


def test_session_exists(tmp_path: Path) -> None:
    cwd = tmp_path / "state"
    cwd.mkdir()
    cfg = tmp_path / "claude"
    assert not claude.session_exists(cfg, cwd)
    d = claude.project_dir(cfg, cwd)
    d.mkdir(parents=True)
    (d / "memory").mkdir()
    assert not claude.session_exists(cfg, cwd)
    (d / "0b1c.jsonl").write_text("{}\n")
    assert claude.session_exists(cfg, cwd)


def test_import_path_carries_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.path", ["", str(tmp_path), "/a", "rel", "/a", "/b"])
    assert claude.import_path(exclude=tmp_path) == os.pathsep.join(["/a", "/b"])
    doc = claude.render_mcp_config(
        socket="/s", flavor="agent", agent="a", extras={}, pythonpath="/a"
    )
    assert doc["mcpServers"]["hyperhive"]["env"]["PYTHONPATH"] == "/a"


def test_a_served_hyperhive_entry_replaces_the_stdio_server() -> None:
    """serve hands claude its own endpoint (type http, per-run bearer); extras are unchanged."""
    served = {
        "type": "http",
        "url": "http://127.0.0.1:5/mcp",
        "headers": {"Authorization": "Bearer t"},
    }
    extras = {"matrix": McpServerSpec("/bin/matrix-mcp", ("--room", "x"), {"TOKEN": "t"}, ("*",))}
    doc = claude.render_mcp_config(
        socket="/s", flavor="agent", agent="alice", extras=extras, python="/py", hyperhive=served
    )
    assert doc["mcpServers"]["hyperhive"] == served
    assert doc["mcpServers"]["matrix"]["command"] == "/bin/matrix-mcp"
