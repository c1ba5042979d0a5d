"""An operator's first hour, with nothing but the README's commands (issue 11).

A fresh ``HOME``, a ``PATH`` with no claude on it and no ``HYPERHIVE_CLAUDE_BIN``:
``./hh serve`` must give the agents the pinned claude CLI itself. The Messages API is
the tests' fake (``tests/fakeapi``), reached through ``ANTHROPIC_BASE_URL`` as an
operator would point at a gateway. Played in order:

1. ``./hh serve``: the manager comes up and reports that it has claude and a key
   (``Ready``, ``LoggedIn``, ``Degraded=False`` on ``./hh status -o json``).
2. ``./hh send manager ...``: the first message gets a turn (the manager answers the
   operator through its MCP tool; ``./hh messages`` shows it).
3. The API answers 529: the failing condition (``Degraded`` ``ApiOverloaded``) is on
   ``./hh status -o json`` and the dashboard's ``/api/state`` within 5 s of the first failed
   request (a deadline poll);
   once the API answers 200 again the message is delivered again and answered.
4. ``serve`` restarted with another ``ANTHROPIC_API_KEY``: status names the running
   agent that does not have it (``UpToDate=False`` ``EnvChanged``) until
   ``./hh restart manager``.
5. ``serve`` with no claude CLI at all: after ``./hh restart manager`` the manager shows
   ``Ready=False`` ``ClaudeMissing`` with the way to fix it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import Browser
from tests.fakeapi import (
    FakeAnthropic,
    Request,
    Rules,
    reply_error,
    reply_text,
    reply_tool_use,
    rule,
)
from tests.realserve import ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e

HH = str(ROOT / "hh")
PATH = "/usr/bin:/bin"  # no claude here: ./hh must bring its own


class Api:
    """The fake Messages API with a switch: ``failing`` answers 529 to the manager's turns."""

    def __init__(self) -> None:
        self.failing = threading.Event()
        self.failed: list[float] = []  # time.monotonic() of every 529 served

    def answer(self, req: Request) -> Any:
        if self.failing.is_set():
            self.failed.append(time.monotonic())
            return reply_error(529, "overloaded_error", "Overloaded")
        text = req.last_user_text
        n = next((w for w in ("ping 1", "ping 2") if w in text), None)
        if n is None:
            return reply_text("nothing to do")
        return reply_tool_use("mcp__hyperhive__send", {"to": "operator", "body": f"pong {n[-1]}"})

    def rules(self) -> Rules:
        return Rules(rule(reply_text("sent"), tool_result=True), rule(self.answer))


def claude_free() -> None:
    for d in PATH.split(":"):
        assert not (Path(d) / "claude").exists(), (
            f"{d}/claude exists: the test needs a PATH without"
        )


class Operator:
    """Runs the README's commands (``./hh ...``) in a fresh HOME."""

    def __init__(self, home: Path, api: FakeAnthropic) -> None:
        self.home = home
        self.api = api
        self.dashboard = f"127.0.0.1:{free_port()}"
        self.serve: subprocess.Popen[bytes] | None = None
        self.log = home / "serve.log"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "PATH": PATH,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            # what the README says to export for a model endpoint and a key
            "ANTHROPIC_BASE_URL": self.api.base_url,
            "ANTHROPIC_API_KEY": "sk-first",
            # claude retries a 529 twice, then the turn fails and its message goes back
            "CLAUDE_CODE_MAX_RETRIES": "2",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        env.update(extra)
        return env

    def hh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [HH, *args], env=self.env(), capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"./hh {' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}"
            )
        return r

    def start(self, **extra: str) -> None:
        with open(self.log, "ab") as log:
            self.serve = subprocess.Popen(
                [HH, "serve", "--dashboard", self.dashboard],
                env=self.env(**extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wait_for("./hh status", lambda: self.hh("status", check=False).returncode == 0, 90)

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.send_signal(signal.SIGTERM)
            self.serve.wait(60)
            self.serve = None

    def manager(self) -> dict[str, Any]:
        st = json.loads(self.hh("status", "-o", "json").stdout)
        return next(a for a in st["agents"] if a["name"] == "manager")

    def cond(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.manager()["conditions"] if c["type"] == type_)

    def dashboard_degraded(self, web: Browser) -> dict[str, Any] | None:
        """The manager's ``Degraded`` condition as the dashboard's ``/api/state`` shows it."""
        state = web.get("/api/state").json()
        manager = next(a for a in state["agents"] if a["name"] == "manager")
        return next((c for c in manager["conditions"] if c["type"] == "Degraded"), None)

    def said(self, text: str) -> bool:
        out = json.loads(self.hh("messages", "-o", "json").stdout)
        rows = out if isinstance(out, list) else out.get("messages", [])
        return any(m.get("from") == "manager" and text in str(m.get("body")) for m in rows)


@pytest.fixture
def hour(tmp_path: Path) -> Iterator[tuple[Operator, Api]]:
    claude_free()
    api_state = Api()
    home = tmp_path / "h"
    home.mkdir()
    with FakeAnthropic(api_state.rules()) as api:
        op = Operator(home, api)
        try:
            yield op, api_state
        finally:
            try:
                op.hh("stop", "--all", check=False)
            finally:
                op.stop()


def test_the_first_hour(hour: tuple[Operator, Api]) -> None:
    op, api = hour
    # 1. serve as the README says: the manager reports claude and its key
    op.start()
    wait_for("the manager's report", lambda: op.cond("Degraded")["status"] == "False", 120)
    m = op.manager()
    conds = {c["type"]: c for c in m["conditions"]}
    assert conds["Ready"]["status"] == "True", conds["Ready"]
    assert conds["LoggedIn"]["status"] == "True", conds["LoggedIn"]
    assert "reported by the agent" in conds["LoggedIn"]["message"]
    assert m["harness"]["claude"]["found"] and "node_modules" in m["harness"]["claude"]["path"]

    # the dashboard, logged in with the URL `./hh dashboard` prints
    web = Browser(int(op.dashboard.rpartition(":")[2]))
    login, _ = web.open_login(op.hh("dashboard").stdout.strip().splitlines()[-1])
    assert login.status == 303, login

    # 2. the first message gets a turn
    op.hh("send", "manager", "ping 1")
    wait_for("the manager's answer", lambda: op.said("pong 1"), 120)

    # 3. the API is overloaded: status says so within 5 s of the first failed request
    api.failing.set()
    op.hh("send", "manager", "ping 2")
    wait_for("a 529 served", lambda: api.failed, 120)
    first = api.failed[0]
    seen: dict[str, Any] = {}
    shown: dict[str, Any] | None = None
    while time.monotonic() < first + 5.0 and not (seen and shown):
        if not seen:
            c = op.cond("Degraded")
            if c["status"] == "True" and c["reason"] == "ApiOverloaded":
                seen = c
        if not shown:
            d = op.dashboard_degraded(web)
            shown = d if d and d["status"] == "True" and d["reason"] == "ApiOverloaded" else None
    assert seen, f"no Degraded/ApiOverloaded within 5 s of the first 529: {op.manager()}"
    assert shown, "the dashboard did not show Degraded/ApiOverloaded within 5 s"
    assert "529" in seen["message"]
    # the turn gives up; its message goes back to the inbox and comes again once the API answers
    wait_for("claude to give up", lambda: "gave up" in op.cond("Degraded")["message"], 120)
    assert not op.said("pong 2")
    api.failing.clear()
    wait_for("the message delivered again", lambda: op.said("pong 2"), 180)
    wait_for("Degraded to clear", lambda: op.cond("Degraded")["status"] == "False", 60)

    # 4. a new key in the controller's environment: the running manager does not have it
    op.stop()
    op.start(ANTHROPIC_API_KEY="sk-second")
    drift = wait_for(
        "EnvChanged",
        lambda: (c := op.cond("UpToDate"))["reason"] == "EnvChanged" and c,
        90,
    )
    assert "ANTHROPIC_API_KEY" in drift["message"] and "restart manager" in drift["message"]
    assert "EnvChanged" in op.hh("status").stdout  # the table names it too
    op.hh("restart", "manager")
    wait_for(
        "the restarted manager's report",
        lambda: (
            op.cond("UpToDate")["status"] == "True" and op.cond("Degraded")["status"] == "False"
        ),
        90,
    )

    # 5. no claude at all: the agent says so, and how to fix it
    op.stop()
    op.start(HYPERHIVE_CLAUDE_BIN=str(op.home / "no-such-claude"))
    op.hh("restart", "manager")
    ready = wait_for(
        "ClaudeMissing", lambda: (c := op.cond("Ready"))["reason"] == "ClaudeMissing" and c, 90
    )
    assert ready["status"] == "False" and "./hh serve" in ready["message"]
    assert "ClaudeMissing" in op.hh("status").stdout
