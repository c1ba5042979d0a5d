"""One real ``hyperhive serve`` for the whole security session, and the report.

The session's hive: local runtime (agents under bubblewrap when it works here),
real ``python -m harness serve`` agents running the real claude CLI against the
fake Messages API (``tests/fakeapi``, answering "ok."), a free dashboard port,
state in a fresh dir under ``/tmp`` (short: unix socket paths are limited).
Set up the way the operator would: the manager proposes alice and bob over its
socket and the operator approves both with ``hyperhive approve``; a third
proposal (carol) and an operator question stay pending as targets; the
operator logs in through the URL ``hyperhive dashboard`` prints.

At the end the tally of attacks tried and refused, and the figures for the
note, are printed (always; ``-s`` also shows the tests' own lines).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeapi import FakeAnthropic, Reply, Request, reply_text

try:
    from tests.security import support
except pytest.skip.Exception:  # no claude CLI: every module here skips itself at import
    support = None  # type: ignore[assignment]

LAST = ("test_operator_flow.py",)
"""Modules run after every other security test (the legitimate flow, then the log check)."""


def _model(_req: Request) -> Reply:
    return reply_text("ok.")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The operator's own flow runs after the attacks, in the same run (stable otherwise)."""
    here = Path(__file__).parent
    last = [i for i in items if i.path.parent == here and i.path.name in LAST]
    if last:
        items[:] = [i for i in items if i not in last] + last


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the tally (attacks tried / refused, figures) when any security test ran."""
    if support is not None and (support.TALLY.attacks or support.TALLY.figures):
        terminalreporter.write_line(support.TALLY.summary())


@pytest.fixture(scope="session")
def tally() -> support.Tally:
    """The session's tally of attacks and figures."""
    return support.TALLY


def _has_ref(h: support.Hive, ref: str) -> bool:
    git = ["git", "--git-dir", str(h.layout.meta_git), "rev-parse", "--verify", "-q", ref]
    return subprocess.run(git, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def hive() -> Iterator[support.Hive]:
    """The running hive: manager, alice and bob running; carol pending; the operator logged in."""
    api = FakeAnthropic(_model).start()
    root = Path(tempfile.mkdtemp(prefix="hhsec-", dir="/tmp"))
    h = support.Hive.prepare(root, api, support.CLAUDE, agent_ports=19)
    h.env.update(support.OPERATOR_OTEL)  # the operator's collector credential, for the replay
    try:
        h.start()
        h.wait_running("manager")
        ids = [h.deploy(name) for name in ("alice", "bob")]
        h.wait_running("alice", "bob")
        # an agent runs before its pass records the outcome: wait for the tags too, so that
        # no test's before/after snapshot sees the deploy land
        for pid in ids:
            support.wait_for(
                f"deployed/{pid}",
                lambda pid=pid: _has_ref(h, f"refs/tags/deployed/{pid}"),
                timeout=60,
            )
        manager = h.agent_client("manager")
        h.carol = int(manager.post("/request_spawn", {"name": "carol"})["id"])
        h.question = int(
            manager.post("/ask_operator", {"question": "may I deploy on friday?"})["id"]
        )
        url = h.cli("dashboard").stdout.strip().splitlines()[-1]
        assert url.startswith(h.origin + "/login?token="), url
        login = h.redeem(url)
        assert login.status == 303, login.brief()
        h.cookie = support.cookie_of(login) or ""
        assert h.cookie, login.headers
        support.wait_for("the dashboard with a session", lambda: h.dget("/api/state").status == 200)
        yield h
    finally:
        h.stop_everything()
        api.stop()
        log = h.log_text()
        if log:
            sys.stderr.write("---- controller log (tail) ----\n" + log[-4000:])
        shutil.rmtree(root, ignore_errors=True)
