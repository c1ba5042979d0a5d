"""A message is not spent on a turn that never reached the model: the real ``serve`` (with the
real claude CLI against the fake Messages API, or none at all) and a stand-in socket.

The message goes back to the inbox (``POST /release``, never ``/ack``), the harness backs off,
and the message gets its turn once claude can run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from test_harness_serve import CLI, Agent, pytestmark, wait_for  # noqa: F401

from tests.fakeapi import Rules, reply_error, reply_text


def _released(a: Agent, msg_id: int) -> bool:
    return any(ids is not None and msg_id in ids for ids in list(a.sock.released))


def test_missing_claude_releases_the_message_and_runs_it_once_claude_exists(
    start: Callable[..., Agent], tmp_path: Path
) -> None:
    assert CLI is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"  # missing for now
    a = start(
        Rules(default=reply_text("hello from the model")),
        extra_env={"HYPERHIVE_CLAUDE_BIN": str(claude)},
    )
    mid = a.sock.deliver("operator", "are you there?")
    assert wait_for(lambda: _released(a, mid), 30), a.log()
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "failed" and row["message_id"] == mid
    assert "cannot start claude" in row["note"] and "returned to the inbox" in row["note"]
    assert mid not in a.sock.acked
    assert not a.api.requests  # nothing reached the Messages API
    # the agent tells the controller it has no claude (its conditions: ClaudeMissing)
    assert wait_for(lambda: a.sock.reports, 30)
    assert a.sock.reports[-1]["claude"] == {"found": False, "path": str(claude), "version": None}
    assert a.sock.reports[-1]["turn"]["unreached"] == "claude_missing"
    # a turn that never ran is not a failure the manager has to hear about
    assert not any(s["to"] == "manager" for s in a.sock.sent)

    claude.symlink_to(CLI)  # the binary appears: the back-off ends early, the message comes back
    assert wait_for(lambda: mid in a.sock.acked, 60), a.log()
    rows = a.wait_turns(2, 30)  # the ack may land before the turn's stats row
    assert [r["result_kind"] for r in rows] == ["failed", "ok"]
    assert rows[1]["message_id"] == mid
    assert a.api.requests
    assert a.sock.acked.count(mid) == 1
    assert wait_for(lambda: a.sock.reports[-1]["turn"]["outcome"] == "ok", 30)
    found = a.sock.reports[-1]
    assert found["claude"]["found"] and "Claude Code" in found["claude"]["version"]


def test_overloaded_api_releases_the_message_until_the_api_answers(
    start: Callable[..., Agent],
) -> None:
    a = start(Rules(default=reply_error(529, "overloaded_error", "Overloaded")))
    mid = a.sock.deliver("operator", "hello")
    assert wait_for(lambda: _released(a, mid), 60), a.log()
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "failed" and "returned to the inbox" in row["note"]
    assert mid not in a.sock.acked
    assert not any(s["to"] == "manager" for s in a.sock.sent)
    # the agent reported the API's answer, and that claude gave up on it
    assert wait_for(lambda: bool((a.sock.reports or [{}])[-1].get("api")), 30)
    api = a.sock.reports[-1]["api"]
    assert api["status"] == 529 and api["gave_up"] is True
    assert a.sock.reports[-1]["credentials"]["present"] is True

    a.api.set_script(Rules(default=reply_text("back online")))
    # the harness waits out its back-off (30 s) before the next recv, then the message is run
    assert wait_for(lambda: mid in a.sock.acked, 90), a.log()
    rows = a.wait_turns(2, 30)  # the ack may land before the turn's stats row
    assert [r["result_kind"] for r in rows] == ["failed", "ok"]
    assert rows[-1]["message_id"] == mid
    assert wait_for(lambda: a.sock.reports[-1]["api"] is None, 30)  # healthy again


def test_a_server_error_spends_the_message_as_before(
    start: Callable[..., Agent],
) -> None:
    a = start(Rules(default=reply_error(500, "api_error", "boom")))
    mid = a.sock.deliver("bob", "break please")
    assert wait_for(lambda: mid in a.sock.acked, 60), a.log()
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "failed" and "returned to the inbox" not in (row["note"] or "")
    assert not _released(a, mid)
