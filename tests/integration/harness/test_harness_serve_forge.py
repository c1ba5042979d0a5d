"""The hive forge inside a running harness (``python -m harness serve``, the real claude CLI
against the fake Messages API): with the controller's ``forge-token`` in its state dir, the
harness logs ``tea`` in at boot (a stand-in ``tea`` on PATH records how it was called),
the role intro tells the model about the forge, and a ``forge`` message wakes a turn whose
prompt says what it is; without a token, ``tea`` never runs."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_harness_serve import CLI, Agent, wait_for

from tests.fakeapi import Rules, reply_text

pytestmark = pytest.mark.skipif(CLI is None, reason="the claude CLI is not installed")

STANDIN_TEA = """#!/bin/sh
printf '%s|%s\\n' "$*" "$GITEA_SERVER_TOKEN" >> "$TEA_LOG"
"""


def tea_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "teabin"
    bin_dir.mkdir()
    tea = bin_dir / "tea"
    tea.write_text(STANDIN_TEA)
    tea.chmod(tea.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TEA_LOG": str(tmp_path / "tea.log")}


def test_tea_login_prompt_and_forge_messages(start: Callable[..., Agent], tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "forge-token").write_text("f0rge-token\n")
    (state / "forge-url").write_text("http://127.0.0.1:3999\n")
    a = start(Rules(default=reply_text("ok")), extra_env=tea_env(tmp_path))
    log = tmp_path / "tea.log"
    assert wait_for(lambda: log.exists() and "login add" in log.read_text(), 20), a.log()
    assert log.read_text().splitlines() == [
        "login delete hyperhive|f0rge-token",
        "login add --name hyperhive --url http://127.0.0.1:3999|f0rge-token",
    ]
    a.sock.deliver("forge", '[carol/site] PR #4 "Fix" (review_requested): http://x/pulls/4')
    a.wait_turns(1)
    prompt = a.api.parsed[0].last_user_text
    assert "The hive forge: a Forgejo at http://127.0.0.1:3999" in prompt
    assert "the user `alice`" in prompt and "`tea`" in prompt
    assert f"$(cat {state / 'forge-token'})" in prompt
    assert "notification from the hive forge" in prompt
    assert 'mcp__hyperhive__send(to="operator"' in prompt


def test_no_token_no_tea(start: Callable[..., Agent], tmp_path: Path) -> None:
    a = start(Rules(default=reply_text("ok")), extra_env=tea_env(tmp_path))
    a.sock.deliver("operator", "hello")
    a.wait_turns(1)
    assert not (tmp_path / "tea.log").exists()
    assert "Forgejo" not in a.api.parsed[0].last_user_text
