"""In-memory fakes for the dashboard tests: a ``SwarmOps``, a broker, demo data, a server.

``FakeOps`` records every call in ``calls`` (and keeps kept state, deploys,
events, journals and configs per agent); ``FakeBroker`` keeps messages and
operator questions in lists and wakes ``wait_for_new`` / ``wait_for_new_async``
on ``send``. ``serve(app)`` serves an ASGI app with ``hivehttp.serve_tcp`` on
127.0.0.1:<ephemeral> under the dashboard's browser policy.
Run ``python tests/component/dashboard_fakes.py`` to browse the demo dashboard
(it prints a login URL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import falcon.testing

import hivehttp
from controller.auth import LoginTokens, SessionSigner
from controller.dashboard import make_dashboard_app
from controller.drivers.journal import HARNESS_UNIT
from controller.errors import Conflict, Invalid, NotFound
from controller.model import Action, ActionKind
from controller.ops import Lifecycle, PassResult, Proposal, ProposalKind, ProposalState
from schemas.names import (
    MANAGER,
    OPERATOR,
    InvalidName,
    check_agent_name,
    container_name,
    default_web_port,
)
from schemas.wire import Message, MessageKind, rfc3339

BASE_TIME = time.time()  # demo data is "recent" relative to import time


def _cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(BASE_TIME - 600),
    }


def _deploy(
    id: int, state: str, commit: str, title: str, note: str, ago: float
) -> dict[str, Any]:  # the shape of controller.metarepo.MetaRepo.deploys_for
    tags = [f"proposal/{id}", f"approved/{id}", f"building/{id}", f"{state}/{id}"]
    return {
        "id": id,
        "kind": "apply_commit",
        "state": state,
        "title": title,
        "commit": commit,
        "note": note,
        "at": BASE_TIME - ago,
        "tags": tags,
    }


def _event(ago: float, type: str, message: str) -> dict[str, Any]:
    return {"at": BASE_TIME - ago, "type": type, "message": message}


def _agent(
    name: str, phase: str, model: str, commit: str | None, *conds: dict[str, Any]
) -> dict[str, Any]:
    return {  # the shape of controller.status.AgentStatus.to_json()
        "name": name,
        "phase": phase,
        "observed_commit": commit,
        "desired_commit": commit,
        "held": None,
        "web_port": default_web_port(name),
        "model": model,
        "suspended": False,
        "detail": "",
        "conditions": list(conds),
    }


SPAWN_DIFF = """diff --git a/agents/dave/agent.yaml b/agents/dave/agent.yaml
new file mode 100644
--- /dev/null
+++ b/agents/dave/agent.yaml
@@ -0,0 +1,7 @@
+apiVersion: hyperhive/v1
+kind: Agent
+metadata:
+  name: dave
+spec:
+  model: haiku
+  allowedRecipients: [manager, alice]
"""

APPLY_DIFF = """diff --git a/agents/alice/agent.nix b/agents/alice/agent.nix
--- a/agents/alice/agent.nix
+++ b/agents/alice/agent.nix
@@ -1,5 +1,6 @@
 { pkgs, ... }:
 {
-  environment.systemPackages = [ pkgs.jq ];
+  environment.systemPackages = [ pkgs.jq pkgs.ripgrep ];
+  services.redis.servers.cache.enable = true;
 }
diff --git a/agents/alice/agent.yaml b/agents/alice/agent.yaml
--- a/agents/alice/agent.yaml
+++ b/agents/alice/agent.yaml
@@ -4,4 +4,4 @@ metadata:
 spec:
-  model: haiku
+  model: sonnet
"""


MANIFEST = """apiVersion: hyperhive/v1
kind: Agent
metadata:
  name: {name}
spec:
  model: {model}
  allowedRecipients: [manager]
"""

AGENT_NIX = """{ pkgs, ... }:
{
  environment.systemPackages = [ pkgs.jq ];
}
"""


def _journal_lines(name: str, machine: bool, n: int = 60) -> list[str]:
    """Plausible ``journalctl --output=short-iso`` lines for one agent's container."""
    host = container_name(name)
    out = []
    t0 = BASE_TIME - 60 * n
    for i in range(n):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(t0 + 60 * i))
        if machine and i % 4 == 0:
            out.append(f"{stamp} {host} systemd[1]: Started hyperhive-agent.service.")
        elif machine and i % 4 == 2:
            out.append(f"{stamp} {host} systemd-networkd[88]: host0: link is up")
        else:
            turn = i // 2 + 1
            what = (
                f"turn {turn} start: 1 message from manager"
                if i % 2 == 0
                else f"turn {turn} end: ok in {3 + i % 5}.{i % 10}s, {i % 4 + 1} tool calls"
            )
            out.append(f"{stamp} {host} hyperhive-agent[412]: {what}")
    return out


class FakeOps:
    """A ``SwarmOps`` over dicts; records calls as ``(verb, *args)`` tuples in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.main_commit = "9f2c4e1a7b3d5f60c1e2a3b4c5d6e7f8a9b0c1d2"
        self.agents: dict[str, dict[str, Any]] = {}
        self.props: dict[int, Proposal] = {}
        self.kept: dict[str, dict[str, Any]] = {}
        self.deploys: dict[str, list[dict[str, Any]]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.nix: dict[str, str] = {}
        self.crashes: dict[str, dict[str, Any]] = {}
        self.runtime = "local"
        self.fail_status = False

    # --- helpers for tests
    def add_agent(self, row: dict[str, Any]) -> None:
        """Add or replace one status row."""
        self.agents[row["name"]] = row

    def add_tombstone(self, name: str, destroyed_at: float, size: int) -> str:
        """Add one kept-state entry (shaped like ``controller.tombstones.listing``); its id."""
        tid = f"{name}-{int(destroyed_at)}"
        self.kept[tid] = {
            "name": name,
            "id": tid,
            "destroyed_at": destroyed_at,
            "bytes": size,
            "path": f"/var/lib/hyperhive/tombstones/{tid}",
            "commit": self.main_commit,
            "in_place": False,
        }
        return tid

    def _known(self, name: str) -> dict[str, Any]:
        if name not in self.agents:
            raise NotFound(f"no agent named {name!r}", "name")
        return self.agents[name]

    def add_proposal(self, p: Proposal) -> None:
        """Add or replace one proposal."""
        self.props[p.id] = p

    def _set_state(self, id: int, state: ProposalState, note: str) -> Proposal:
        p = self.proposal(id)
        if p.state is not ProposalState.PENDING:
            raise Conflict(f"proposal {id} is already {p.state}", "id")
        q = dataclasses.replace(p, state=state, note=note or p.note)
        self.props[id] = q
        return q

    # --- SwarmOps
    def request_spawn(self, name: str) -> Proposal:
        """Propose a spawn (Invalid / Conflict like the real one)."""
        self.calls.append(("request_spawn", name))
        try:
            check_agent_name(name)
        except InvalidName as e:
            raise Invalid(str(e), "name") from e
        if name in self.agents:
            raise Conflict(f"agent {name!r} exists", "name")
        pid = max(self.props, default=0) + 1
        p = Proposal(
            id=pid,
            kind=ProposalKind.SPAWN,
            state=ProposalState.PENDING,
            commit=f"{pid:040x}",
            base=self.main_commit,
            title=f"spawn {name}",
            agents=(name,),
            diff=SPAWN_DIFF.replace("dave", name),
            note="requested from the dashboard",
            created_at=time.time(),
        )
        self.props[pid] = p
        return p

    def request_apply_commit(self, commit: str, note: str) -> Proposal:
        """Not used by the dashboard."""
        raise NotFound(f"no commit {commit}", "commit")

    def lifecycle(self, verb: Lifecycle, name: str) -> str:
        """Record the verb; NotFound for an unknown agent."""
        if name not in self.agents:
            raise NotFound(f"no agent named {name!r}", "name")
        self.calls.append(("lifecycle", str(verb), name))
        return f"{verb} {name}: ok"

    def list_agents(self) -> list[dict[str, Any]]:
        """Status rows."""
        return [dict(a) for a in self.agents.values()]

    def agent_names(self) -> frozenset[str]:
        """Agents plus the manager."""
        return frozenset(self.agents) | {MANAGER}

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        """Anyone."""
        return ()

    def proposals(self, pending_only: bool = False) -> list[Proposal]:
        """Newest first."""
        ps = sorted(self.props.values(), key=lambda p: p.id, reverse=True)
        return [p for p in ps if p.state is ProposalState.PENDING] if pending_only else ps

    def proposal(self, id: int) -> Proposal:
        """One proposal or NotFound."""
        if id not in self.props:
            raise NotFound(f"no proposal {id}", "id")
        return self.props[id]

    def approve(self, id: int, note: str = "") -> Proposal:
        """Record and mark approved."""
        with self.lock:
            p = self._set_state(id, ProposalState.APPROVED, note)
            self.calls.append(("approve", id, note))
            return p

    def deny(self, id: int, note: str) -> Proposal:
        """Record and mark denied."""
        with self.lock:
            p = self._set_state(id, ProposalState.DENIED, note)
            self.calls.append(("deny", id, note))
            return p

    def reconcile(self, dry_run: bool = False) -> PassResult:
        """A one-action plan."""
        self.calls.append(("reconcile", dry_run))
        plan = (Action(ActionKind.REBUILD, "alice", "agent.nix changed"),)
        return PassResult(plan=plan, dry_run=dry_run)

    def request_pass(self, reason: str) -> None:
        """Record."""
        self.calls.append(("request_pass", reason))

    def describe(self, name: str) -> dict[str, Any]:
        """The status row plus deploys and events (NotFound for an unknown agent)."""
        row = dict(self._known(name))
        self.calls.append(("describe", name))
        row["deploys"] = list(self.deploys.get(name, []))
        row["events"] = list(self.events.get(name, []))
        row["crash"] = self.crashes.get(name)
        row["failure"] = None
        return row

    def destroy(self, name: str, purge: bool = False) -> str:
        """Drop the agent; keep a tombstone unless ``purge`` (Invalid for the manager)."""
        if name == MANAGER:
            raise Invalid("the manager cannot be destroyed", "name")
        self._known(name)
        with self.lock:
            self.calls.append(("destroy", name, purge))
            del self.agents[name]
            if purge:
                return f"destroyed {name} and purged its state"
            self.add_tombstone(name, time.time(), 3_145_728)
            return f"destroyed {name}; its state is kept until purged"

    def purge(self, name: str) -> str:
        """Delete a tombstone by id, or every one of an agent name (NotFound / Conflict)."""
        if name in self.agents:
            raise Conflict(f"{name} is still in desired state; destroy it first", "name")
        ids = [k for k, t in self.kept.items() if name in (k, t["name"])]
        if not ids:
            raise NotFound(f"no kept state for {name!r}", "name")
        with self.lock:
            self.calls.append(("purge", name))
            for k in ids:
                del self.kept[k]
        return f"purged {name}"

    def tombstones(self) -> list[dict[str, Any]]:
        """Kept state of destroyed agents."""
        return [dict(t) for t in self.kept.values()]

    def journal(self, name: str, unit: str | None = None, lines: int = 200) -> str:
        """Generated log lines; the same checks as the real one."""
        self._known(name)
        if unit is not None and unit != HARNESS_UNIT:
            raise Invalid(f"unit {unit!r} is not allowed", "unit")
        if not 1 <= lines <= 5000:
            raise Invalid(f"lines must be from 1 to 5000, got {lines}", "lines")
        self.calls.append(("journal", name, unit, lines))
        return "\n".join(_journal_lines(name, machine=unit is None)[-lines:]) + "\n"

    def agent_config(self, name: str) -> dict[str, Any]:
        """Manifest, agent.nix (when the agent has one) and rendered settings."""
        row = self._known(name)
        self.calls.append(("agent_config", name))
        return {
            "commit": row.get("observed_commit"),
            "manifest": MANIFEST.format(name=name, model=row.get("model") or "haiku"),
            "agent_nix": self.nix.get(name),
            "settings": {
                "model": row.get("model"),
                "allowedRecipients": [MANAGER],
                "permissions": {"allow": ["Bash", "Edit", "Read", "mcp__hyperhive__*"]},
            },
        }

    def version(self) -> str:
        """A token over everything the agent cards and tombstones show (the swarm's is cheaper)."""
        return str(hash(json.dumps([self.agents, self.kept, self.crashes], default=str)))

    def status_json(self) -> bytes:
        """``status()`` encoded."""
        return json.dumps(self.status(), default=str).encode()

    def status(self) -> dict[str, Any]:
        """Summary with agents."""
        if self.fail_status:
            raise RuntimeError("status exploded")
        return {
            "agents": self.list_agents(),
            "pending": len(self.proposals(pending_only=True)),
            "main_commit": self.main_commit,
            "runtime": self.runtime,
        }


@dataclasses.dataclass
class FakeQuestion:
    """An operator question as the broker might return it (a dataclass)."""

    id: int
    question: str
    options: list[str]
    multi: bool
    asked_at: float
    deadline_at: float | None = None
    answer: str | None = None
    asker: str = MANAGER


class FakeBroker:
    """The broker surface the dashboard uses, in memory."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.cond = threading.Condition()
        self.msgs: list[Message] = []
        self.qs: dict[int, FakeQuestion] = {}

    def send(
        self,
        sender: str,
        recipient: str,
        body: str,
        *,
        kind: MessageKind = MessageKind.MESSAGE,
        event: dict[str, Any] | None = None,
    ) -> Message:
        """Append and wake waiters."""
        with self.cond:
            m = Message(
                id=len(self.msgs) + 1,
                sender=sender,
                recipient=recipient,
                body=body,
                kind=kind,
                event=event,
                sent_at=self.clock(),
            )
            self.msgs.append(m)
            self.cond.notify_all()
            return m

    def messages(self, since_id: int = 0, limit: int = 200) -> list[Message]:
        """Oldest first, ids > since_id."""
        with self.cond:
            return [m for m in self.msgs if m.id > since_id][:limit]

    def wait_for_new(self, since_id: int, timeout: float) -> list[Message]:
        """Park until something newer than since_id exists."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                fresh = [m for m in self.msgs if m.id > since_id]
                left = deadline - time.monotonic()
                if fresh or left <= 0:
                    return fresh[:200]
                self.cond.wait(left)

    async def wait_for_new_async(
        self,
        since_id: int,
        timeout: float,
        limit: int = 200,
        *,
        abandoned: asyncio.Event | None = None,
    ) -> list[Message]:
        """``wait_for_new`` on the event loop: checks every 20 ms (a fake may poll)."""
        deadline = time.monotonic() + timeout
        while True:
            fresh = self.messages(since_id, limit)
            if fresh or time.monotonic() >= deadline:
                return fresh
            if abandoned is not None and abandoned.is_set():
                return []
            await asyncio.sleep(0.02)

    def last_id(self) -> int:
        """The newest message id (0 when there is none)."""
        with self.cond:
            return max((m.id for m in self.msgs), default=0)

    def recent(self, recipient: str, limit: int = 20) -> list[Message]:
        """To or from recipient, newest last."""
        with self.cond:
            rows = [m for m in self.msgs if recipient in (m.sender, m.recipient)]
            return rows[-limit:]

    def ask_operator(
        self,
        question: str,
        options: Sequence[str] = (),
        multi: bool = False,
        ttl: float | None = None,
    ) -> int:
        """Queue a question (test helper)."""
        qid = len(self.qs) + 1
        now = self.clock()
        self.qs[qid] = FakeQuestion(
            qid, question, list(options), multi, now, None if ttl is None else now + ttl
        )
        return qid

    def questions(self, pending_only: bool = True) -> list[FakeQuestion]:
        """Questions, oldest first."""
        return [q for q in self.qs.values() if not pending_only or q.answer is None]

    def _resolve(self, id: int, answer: str) -> FakeQuestion:
        q = self.qs.get(id)
        if q is None:
            raise NotFound(f"no question {id}", "id")
        if q.answer is not None:
            raise Conflict(f"question {id} is already answered", "id")
        q.answer = answer
        return q

    def answer_question(self, id: int, answer: str) -> FakeQuestion:
        """Resolve with the answer."""
        return self._resolve(id, answer)

    def cancel_question(self, id: int) -> FakeQuestion:
        """Resolve as cancelled."""
        return self._resolve(id, "[cancelled]")


def demo() -> tuple[FakeOps, FakeBroker]:
    """A small swarm worth looking at: four agents, two proposals, questions, chatter."""
    ops = FakeOps()
    c1 = ops.main_commit
    c0 = "77aa01bd3c5e9f1021324354657687980a1b2c3d"
    ok = _cond("Ready", "True", "Running", "harness up, web UI answering")
    ops.add_agent(
        _agent(
            MANAGER,
            "running",
            "sonnet",
            c1,
            ok,
            _cond("UpToDate", "True", "AtMain"),
            _cond("LoggedIn", "True", "SessionFound"),
        )
    )
    ops.add_agent(
        _agent(
            "alice",
            "running",
            "haiku",
            c0,
            ok,
            _cond("UpToDate", "False", "NewCommit", f"deployed {c0[:8]}, main is {c1[:8]}"),
            _cond("LoggedIn", "True", "SessionFound"),
        )
    )
    ops.agents["alice"]["desired_commit"] = c1
    ops.add_agent(
        _agent(
            "bob",
            "failed",
            "haiku",
            c1,
            _cond("Ready", "False", "StartFailed", "hyperhive-agent exited 1 (see logs/bob.log)"),
            _cond("Stalled", "True", "CrashLoopBackOff", "exited 5 times in 10m; next start in 5m"),
            _cond("LoggedIn", "False", "NeedsLogin", "no claude credentials"),
        )
    )
    ops.add_agent(
        _agent(
            "carol",
            "stopped",
            "opus",
            c1,
            _cond("Ready", "False", "Suspended", "spec.suspend is true"),
            _cond("UpToDate", "True", "AtMain"),
        )
    )
    ops.nix["alice"] = AGENT_NIX
    ops.add_tombstone("frank", BASE_TIME - 2 * 86400, 18_874_368)
    ops.deploys["alice"] = [
        _deploy(4, "deployed", c0, "alice: jq", "deployed in 38s", 9000),
        _deploy(2, "deployed", "e" * 40, "spawn alice", "deployed in 52s", 86400),
    ]
    ops.deploys["bob"] = [
        _deploy(6, "deployed", "c" * 40, "bob: allow messages to alice", "deployed in 41s", 3600),
        _deploy(3, "failed", "f" * 40, "bob: redis", "build: attribute 'redis' missing", 7000),
    ]
    ops.events["bob"] = [
        _event(900, "ContainerCrash", "exited 1 (restarts: 5)"),
        _event(600, "CrashLoopBackOff", "backing off 5m before the next start"),
        _event(3600, "Deployed", "deployed/6 at cccccccc"),
    ]
    ops.crashes["bob"] = {
        "times": [BASE_TIME - 900 + 120 * i for i in range(5)],
        "restart_at": BASE_TIME + 300,
        "stalled": False,
    }
    ops.events["alice"] = [
        _event(9000, "Deployed", f"deployed/4 at {c0[:8]}"),
        _event(8990, "Started", "harness up"),
    ]
    ops.add_proposal(
        Proposal(
            7, ProposalKind.SPAWN, ProposalState.PENDING, "a" * 40, c1, "spawn dave",
            ("dave",), SPAWN_DIFF, "a reviewer for alice's PRs", BASE_TIME - 300,
        )
    )  # fmt: skip
    ops.add_proposal(
        Proposal(
            8, ProposalKind.APPLY_COMMIT, ProposalState.PENDING, "b" * 40, c1,
            "alice: ripgrep, a redis cache and sonnet", ("alice",), APPLY_DIFF,
            "alice asked for faster search and a scratch cache", BASE_TIME - 120,
        )
    )  # fmt: skip
    ops.add_proposal(
        Proposal(
            6, ProposalKind.APPLY_COMMIT, ProposalState.DEPLOYED, "c" * 40, c0,
            "bob: allow messages to alice", ("bob",), "", "deployed in 41s", BASE_TIME - 3600,
        )
    )  # fmt: skip
    ops.add_proposal(
        Proposal(
            5, ProposalKind.SPAWN, ProposalState.DENIED, "d" * 40, c0, "spawn eve",
            ("eve",), "", "not now: one reviewer is enough", BASE_TIME - 7200,
        )
    )  # fmt: skip
    clock = iter(BASE_TIME - 900 + 37 * i for i in range(1000))
    broker = FakeBroker(clock=lambda: next(clock, time.time()))
    broker.send(OPERATOR, MANAGER, "spin up a reviewer for alice's pull requests")
    broker.send(MANAGER, "alice", "what do you need to go faster on search?")
    broker.send("alice", MANAGER, "ripgrep, and a redis to cache embeddings")
    broker.send(MANAGER, OPERATOR, "proposed #7 (spawn dave) and #8 (alice: ripgrep + redis)")
    broker.send("alice", "bob", "can you review src/broker.py when you are up?")
    broker.send(
        "hyperhive",
        MANAGER,
        "ContainerCrash: bob exited (restarts: 5)",
        kind=MessageKind.EVENT,
        event={"type": "ContainerCrash", "agent": "bob", "restarts": 5},
    )
    broker.send(MANAGER, OPERATOR, "bob keeps crashing: he needs a login (LoggedIn=False)")
    broker.clock = time.time
    broker.ask_operator("Which model should dave run?", ["haiku", "sonnet", "opus"])
    broker.ask_operator(
        "Which repos may dave review?", ["hyperhive", "infra", "website"], multi=True, ttl=900
    )
    broker.ask_operator("Anything I should know before refactoring the broker schema?")
    return ops, broker


# --------------------------------------------------------------------------- test helpers

KEY = "test-operator-key-0123456789abcdef"
"""The operator key every test app signs sessions with."""

TEST_HOSTS = frozenset({"falconframework.org", "hive.example"})
"""Hosts the test policy allows besides loopback (falcon.testing's default Host)."""


def make_app(
    ops: FakeOps,
    broker: Any,
    *,
    tokens: LoginTokens | None = None,
    socks: Path | None = None,
    **kw: Any,
) -> Any:
    """The dashboard over ``ops`` / ``broker``; agent UI sockets at ``<socks>/<name>.sock``."""
    base = socks or Path("/nonexistent")
    return make_dashboard_app(
        ops,
        broker,
        operator_key=KEY,
        login_tokens=tokens or LoginTokens(),
        web_sock=lambda name: base / f"{name}.sock",
        **kw,
    )


def guarded(app: Any) -> Any:
    """``app`` behind the policy ``hyperhive serve`` gives the dashboard listener."""
    guard = hivehttp.guarded(app, hivehttp.browser_policy(TEST_HOSTS))

    async def listed(scope: Any, receive: Any, send: Any) -> None:
        # falcon.testing hands headers over as a one-shot iterator (the ASGI spec allows
        # any iterable); the guard reads them before the app does
        if scope["type"] == "http":
            scope["headers"] = [tuple(h) for h in scope["headers"]]
        await guard(scope, receive, send)

    return listed


def session_cookie(signer: SessionSigner | None = None) -> str:
    """A ``Cookie`` header value with a valid session."""
    return f"hyperhive_session={(signer or SessionSigner(KEY)).issue()}"


def logged_in(app: Any) -> falcon.testing.TestClient:
    """A test client for ``app`` (guarded) that sends a valid session cookie."""
    return falcon.testing.TestClient(guarded(app), headers={"Cookie": session_cookie()})


class SSE:
    """A minimal SSE reader over http.client: ``next_event()`` → (id, event, data) or a comment."""

    def __init__(
        self, base: str, path: str, headers: dict[str, str] | None = None, login: bool = True
    ) -> None:
        u = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
        sent = {"Cookie": session_cookie()} if login else {}
        self.conn.request("GET", path, headers={**sent, **(headers or {})})
        self.resp = self.conn.getresponse()

    def next_block(self) -> dict[str, str]:
        """The next blank-line-terminated block as a dict (``":"`` holds comments)."""
        block: dict[str, str] = {}
        while True:
            line = self.resp.readline().decode()  # de-chunked by http.client
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\r\n")
            if not line:
                if block:
                    return block
                continue
            key, _, value = line.partition(":")
            block[key or ":"] = (block.get(key or ":", "") + value.lstrip(" ")).strip()

    def next_message(self) -> dict[str, str]:
        """Skip comments / retry blocks, return the next ``event: message`` block."""
        while True:
            b = self.next_block()
            if b.get("event") == "message":
                return b

    def close(self) -> None:
        """Drop the connection."""
        self.conn.close()


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` on 127.0.0.1:<ephemeral> (``hivehttp``, the browser policy
    ``hyperhive serve`` uses); yields the base URL."""
    listener = hivehttp.serve_tcp(
        app, "127.0.0.1", 0, policy=hivehttp.browser_policy(), name="dashboard-test"
    )
    try:
        yield f"http://127.0.0.1:{listener.port}"
    finally:
        listener.stop()


class FakeAgentUi:
    """A stand-in for an agent's web UI: a real ``falcon.asgi`` app for a unix socket.

    Records the headers (lower-case names) and body of every request in
    ``seen``; ``GET /api/state`` answers JSON, ``POST /api/send`` echoes,
    ``GET /api/html`` / ``/api/plain`` answer HTML / text (the proxy must not
    pass them), ``GET /api/cookie`` sets a cookie, ``GET /api/big?n=`` streams
    ``n`` bytes of JSON, and ``GET /events/stream`` sends each string
    ``push()``-ed as an SSE event as soon as it is pushed.
    """

    def __init__(self, name: str) -> None:
        import falcon.asgi

        self.name = name
        self.seen: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.streams_open = 0
        app = falcon.asgi.App()
        app.add_route("/api/{what}", self)
        app.add_route("/events/stream", self, suffix="events")
        self.app = app

    def push(self, data: str) -> None:
        """Queue one event for every open stream (thread-safe: a list append)."""
        self.events.append(data)

    async def _record(self, req: Any) -> None:
        self.seen.append(
            {
                "method": req.method,
                "path": req.path,
                "query": req.query_string,
                "headers": {k.lower(): v for k, v in req.headers.items()},
                "body": (await req.stream.read()).decode(),
            }
        )

    async def on_get(self, req: Any, resp: Any, what: str) -> None:
        """The GET endpoints (see the class doc)."""
        await self._record(req)
        if what == "html":
            resp.content_type = "text/html"
            resp.text = "<script>alert(document.cookie)</script>"
        elif what == "plain":
            resp.content_type = "text/plain"
            resp.text = "just text"
        elif what == "big":
            n = int(req.get_param("n") or "0")

            async def chunks() -> Any:
                yield b'{"pad": "'
                for _ in range(n // 65536):
                    yield b"x" * 65536
                yield b'"}'

            resp.content_type = "application/json"
            resp.stream = chunks()
        else:
            if what == "cookie":
                resp.set_cookie("agent_was_here", "1", secure=False)
            resp.media = {"agent": self.name, "what": what}
            if what == "state":  # enough of the harness's shape for its page to render
                resp.media.update({"flavor": "agent", "model": "haiku", "status": "idle"})

    async def on_post(self, req: Any, resp: Any, what: str) -> None:
        """Echo the body back."""
        await self._record(req)
        resp.media = {"agent": self.name, "what": what, "echo": self.seen[-1]["body"]}

    async def on_get_events(self, req: Any, resp: Any) -> None:
        """SSE: every pushed string, as it comes (polled every 10 ms)."""
        await self._record(req)

        gone = hivehttp.disconnected(req.scope)

        async def events() -> Any:
            sent = 0
            self.streams_open += 1
            try:
                yield b"retry: 1000\n\n"
                while not gone.is_set():
                    while sent < len(self.events):
                        yield f"event: x\ndata: {self.events[sent]}\n\n".encode()
                        sent += 1
                    await asyncio.sleep(0.01)
            finally:
                self.streams_open -= 1

        resp.content_type = "text/event-stream"
        resp.stream = events()


@contextmanager
def serve_agent_ui(ui: FakeAgentUi, path: Any) -> Iterator[FakeAgentUi]:
    """Serve ``ui`` on the unix socket ``path`` (``hivehttp.serve_unix``) while in the block."""
    listener = hivehttp.serve_unix(ui.app, path, name=f"fake-ui-{ui.name}")
    try:
        yield ui
    finally:
        listener.stop()


if __name__ == "__main__":  # a demo dashboard to look at
    import sys
    import tempfile
    from pathlib import Path

    ops_, broker_ = demo()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7000
    socks = Path(tempfile.mkdtemp(prefix="hh-demo-"))

    def chatter() -> None:
        n = 0
        while True:
            time.sleep(7)
            n += 1
            broker_.send("alice", "bob", f"heartbeat {n}: still grepping")

    threading.Thread(target=chatter, daemon=True).start()
    tokens = LoginTokens()
    app_ = make_dashboard_app(
        ops_,
        broker_,
        operator_key="demo-operator-key",
        login_tokens=tokens,
        web_sock=lambda name: socks / name / "web.sock",
    )
    hivehttp.serve_tcp(app_, "127.0.0.1", port, policy=hivehttp.browser_policy())
    print(f"open http://127.0.0.1:{port}/login?token={tokens.issue().token}", flush=True)
    threading.Event().wait()
