"""A real ``hyperhive serve`` whose agents are a stand-in process (no claude), reached as the
operator and as its agents: what the TCP agent API tests and benches share.

- ``STANDIN``: the stand-in agent (a Python script that sleeps until SIGTERM);
- ``launch(tmp, **config)``: write the stand-in and a local-runtime config under ``tmp``
  (``manager_port`` block, 7 agent ports, no sandbox, plus ``config``), start ``serve`` on
  ``tmp/state`` and ``tmp/run`` logging to ``tmp/serve.log``, and wait for host.sock and
  the manager's credential;
- ``shut(proc, log, state)``: stop it, kill the agents it left, close its log;
- ``operator_key`` / ``admin_client`` / ``credential`` / ``meta_refs``: what the operator
  reads from the state dir;
- ``request_and_approve(manager, admin, names)``: the manager proposes each agent, the
  operator approves it;
- ``Served``: the base of the tests' handles on such a ``serve`` (its dir and process, and
  the operator's reads above as properties).

Used by ``tests/integration/test_tcp_api.py``, ``tests/integration/test_remote_manager.py``,
``tests/security/test_tcp_surfaces.py``, ``tests/security/test_new_surfaces.py`` and
``bench/mcp_call.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from controller.paths import Layout
from schemas.client import ApiClient
from schemas.names import MANAGER
from tests.realserve import (
    ROOT,
    free_block,
    kill_agents,
    serve_argv,
    standin_env,
    stop,
    wait_for,
    write_config,
)

STANDIN = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(1)
"""
"""The stand-in agent: sleeps until SIGTERM, then exits 0."""


def operator_key(layout: Layout) -> str:
    """The operator key the controller wrote (``<state>/operator.key``)."""
    return layout.operator_key.read_text().strip()


def admin_client(layout: Layout, timeout: float = 30.0) -> ApiClient:
    """The operator's client on host.sock (``timeout`` seconds per request)."""
    return ApiClient(str(layout.host_sock), timeout=timeout, token=operator_key(layout))


def credential(layout: Layout, agent: str) -> str:
    """``agent``'s credential as the controller wrote it; FileNotFoundError before that."""
    return layout.agent_credential(agent).read_text().strip()


def meta_refs(layout: Layout) -> str:
    """meta.git's refs, one ``<refname> <object id>`` line each."""
    return subprocess.run(
        ["git", "--git-dir", str(layout.meta_git), "for-each-ref",
         "--format=%(refname) %(objectname)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def launch(tmp: Path, **config: Any) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """``hyperhive serve`` on ``tmp/state`` with stand-in agents and ``config`` (keys of
    ``write_config``) on top of the local runtime's defaults here; returns the process and
    its open log (``tmp/serve.log``) once host.sock answers and the manager's credential
    exists (60 s each at most). Stop it with :func:`shut`."""
    script = tmp / "standin.py"
    script.write_text(STANDIN)
    path = write_config(
        tmp / "config.json",
        manager_port=free_block(8),
        agent_range=7,
        local_sandbox=False,
        **config,
    )
    layout = Layout(tmp / "state", tmp / "run")
    log = (tmp / "serve.log").open("ab")
    proc = subprocess.Popen(
        serve_argv(layout.state, path, run=layout.run),
        cwd=ROOT,
        env=standin_env([sys.executable, str(script)]),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for("host.sock", lambda: admin_client(layout).get("/status"), timeout=60)
        wait_for("the manager's credential", lambda: layout.agent_credential(MANAGER).exists())
    except BaseException:
        shut(proc, log, layout.state)
        raise
    return proc, log


def shut(proc: subprocess.Popen[bytes], log: IO[bytes], state: Path) -> None:
    """Stop ``serve`` (SIGTERM, then SIGKILL), kill the agents it left under ``state``, and
    close its log."""
    stop(proc)
    kill_agents(state)
    log.close()


def request_and_approve(manager: ApiClient, admin: ApiClient, names: Iterable[str]) -> None:
    """For each of ``names``: the manager's ``request_spawn`` and the operator's approval of
    that proposal (the agents start later: wait for what the test needs)."""
    for name in names:
        pid = manager.post("/request_spawn", {"name": name})["id"]
        admin.post(f"/proposals/{pid}/approve", {})


@dataclass
class Served:
    """A ``serve`` started by :func:`launch` on ``tmp``, as the operator reaches it; tests
    subclass it with the ports of their listeners."""

    tmp: Path
    proc: subprocess.Popen[bytes]

    @property
    def layout(self) -> Layout:
        """``tmp/state`` and ``tmp/run``."""
        return Layout(self.tmp / "state", self.tmp / "run")

    @property
    def key(self) -> str:
        """The operator key."""
        return operator_key(self.layout)

    @property
    def admin(self) -> ApiClient:
        """The operator's client on host.sock."""
        return admin_client(self.layout)

    def credential(self, agent: str) -> str:
        """``agent``'s credential."""
        return credential(self.layout, agent)

    def refs(self) -> str:
        """meta.git's refs (:func:`meta_refs`)."""
        return meta_refs(self.layout)

    def log(self) -> str:
        """What ``serve`` logged so far."""
        return (self.tmp / "serve.log").read_text(errors="replace")
