"""harness.forge: tea logged in at boot when a token was left; the prompt's forge part."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from harness.forge import LOGIN_NAME, forge_access, prompt_section, tea_login
from harness.prompts import intro, kind_hint, reply_to
from schemas.wire import Message, MessageKind

FAKE_TEA = """#!/bin/sh
printf '%s\\n' "$(printf '%s ' "$@")|${GITEA_SERVER_TOKEN}" >> "$TEA_LOG"
[ "$1 $2" = "login add" ] && [ -n "$TEA_FAIL" ] && { echo "login name already exists" >&2; exit 1; }
exit 0
"""


def fake_tea(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tea = bin_dir / "tea"
    tea.write_text(FAKE_TEA)
    tea.chmod(tea.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TEA_LOG": str(tmp_path / "tea.log")}


def provision(state: Path, url: str = "http://127.0.0.1:3999") -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "forge-token").write_text("t0ken\n")
    (state / "forge-url").write_text(url + "\n")


def test_no_token_no_forge(tmp_path: Path) -> None:
    env = fake_tea(tmp_path)
    assert forge_access(tmp_path, "alice") is None
    assert tea_login(None, env) == "no forge"
    assert not (tmp_path / "tea.log").exists()  # tea never ran
    assert prompt_section(None) == ""
    assert "Forgejo" not in intro("alice", "agent", tmp_path)


def test_tea_logs_in_with_the_token_off_argv(tmp_path: Path) -> None:
    env = fake_tea(tmp_path)
    state = tmp_path / "state"
    provision(state)
    access = forge_access(state, "alice")
    assert access is not None and access.url == "http://127.0.0.1:3999"
    assert tea_login(access, env) == "logged in"
    calls = (tmp_path / "tea.log").read_text().splitlines()
    assert calls == [
        f"login delete {LOGIN_NAME} |t0ken",
        f"login add --name {LOGIN_NAME} --url http://127.0.0.1:3999 |t0ken",
    ]
    assert all("t0ken" not in c.split("|")[0] for c in calls)  # never on the command line


def test_tea_failures_are_reported_not_raised(tmp_path: Path) -> None:
    env = fake_tea(tmp_path)
    state = tmp_path / "state"
    provision(state)
    assert tea_login(forge_access(state, "alice"), {**env, "TEA_FAIL": "1"}) == (
        "failed: login name already exists"
    )
    assert tea_login(forge_access(state, "alice"), {"PATH": str(tmp_path / "nowhere")}) == "no tea"


def test_prompt_describes_forge_user_tea_and_rest(tmp_path: Path) -> None:
    provision(tmp_path, "http://localhost:3000")
    text = intro("alice", "agent", tmp_path)
    assert "Forgejo at http://localhost:3000" in text
    assert "the user `alice`" in text
    assert "`tea`" in text
    assert f"$(cat {tmp_path / 'forge-token'})" in text and "/api/v1/user" in text
    assert "the user `manager`" in intro("manager", "manager", tmp_path)


def test_forge_messages_are_explained_and_not_replied_to() -> None:
    msg = Message(id=1, sender="forge", recipient="alice", body="[a/b] PR #1 ...",
                  kind=MessageKind.MESSAGE, thread=None, event=None, sent_at=0.0)  # fmt: skip
    assert "hive forge" in kind_hint(msg)
    assert reply_to(msg) == "operator"
    assert json.dumps(kind_hint(msg))
