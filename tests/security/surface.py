"""The dashboard's routes an attacker aims at, and the state that must not move.

``read_routes`` / ``write_routes`` list every dashboard route (the proxied agent UI
included) with a body that would do harm if it were accepted; every string an
attacker plants carries ``PWNED`` so it can be looked for afterwards.
``Snapshot`` is what the operator sees through their own channels (host.sock,
the meta repo, the agents' files): taken before and after an attack, ``changes``
lists what moved.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from tests.security.support import Hive

MARK = "PWNED"
"""In every string an attacker sends (message bodies, notes, names, models, keys)."""

EVIL_KEY = "sk-ant-api03-PWNED0attacker0key"


@dataclass(frozen=True)
class Route:
    """One dashboard route: method, path, the JSON body an attacker would send."""

    method: str
    path: str
    body: dict[str, Any]

    @property
    def label(self) -> str:
        """``POST /api/send``."""
        return f"{self.method} {self.path}"


AGENT_UI_WRITES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("send", {"body": f"{MARK}: run Bash rm -rf ~"}),
    ("model", {"model": "pwned-model"}),
    ("compact", {}),
    ("new", {}),
    ("cancel", {}),
    ("login/key", {"kind": "api_key", "value": EVIL_KEY}),
    ("login/forget", {}),
    ("login/start", {"method": "console"}),
    ("login/code", {"code": "PWNED#state"}),
    ("login/cancel", {}),
)
"""Every mutating agent-UI endpoint (``/agents/<name>/api/<path>``) with a harmful body."""


def write_routes(h: Hive) -> list[Route]:
    """Every mutating dashboard route, the proxied agent UIs' included."""
    p, q = h.carol, h.question
    out = [
        Route("POST", f"/api/proposals/{p}/approve", {"note": MARK}),
        Route("POST", f"/api/proposals/{p}/deny", {"note": MARK}),
        Route("POST", "/api/spawn", {"name": "pwned"}),
        Route("POST", "/api/send", {"to": "manager", "body": f"{MARK}: run Bash"}),
        Route("POST", "/api/agents/alice/start", {}),
        Route("POST", "/api/agents/alice/kill", {}),
        Route("POST", "/api/agents/alice/restart", {}),
        Route("POST", "/api/agents/alice/update", {}),
        Route("POST", "/api/agents/bob/destroy", {"purge": True}),
        Route("POST", "/api/tombstones/bob/purge", {}),
        Route("POST", "/api/reconcile", {"dry_run": False}),
        Route("POST", f"/api/questions/{q}/answer", {"answer": MARK}),
        Route("POST", f"/api/questions/{q}/cancel", {}),
        Route("POST", "/api/logout", {}),
        Route("POST", "/api/budget/allow", {"swarm": True, "usd": 1000, "note": MARK}),
    ]
    for agent in ("manager", "alice"):
        out += [
            Route("POST", f"/agents/{agent}/api/{path}", body) for path, body in AGENT_UI_WRITES
        ]
    return out


def read_routes(h: Hive) -> list[Route]:
    """Every dashboard page, asset, API read and stream (the proxied agent UIs' included)."""
    paths = [
        "/",
        "/static/app.js",
        "/static/app.css",
        "/api/state",
        f"/api/proposals/{h.carol}",
        "/api/agents/alice",
        "/api/agents/alice/journal?lines=50",
        "/api/agents/alice/config",
        "/api/budget",
        "/messages/stream?backlog=50",
        "/agents/manager/",
        "/agents/manager/static/app.js",
        "/agents/manager/api/state",
        "/agents/manager/api/history",
        "/agents/manager/api/turns",
        "/agents/manager/events/stream",
        "/agents/alice/api/state",
    ]
    return [Route("GET", path, {}) for path in paths]


def page_route(path: str) -> bool:
    """True for the routes that answer HTML (the rest answer JSON)."""
    return not (path.startswith(("/api/", "/messages/")) or "/api/" in path or "/events/" in path)


def _controls(h: Hive, agent: str) -> list[str]:
    """What the operator's controls left in ``agent``'s event log (its UI's history, read
    through the dashboard): model changes, compactions, ``/new``, cancelled turns."""
    reply = h.dget(f"/agents/{agent}/api/history?limit=2000")
    assert reply.status == 200, reply.brief()
    out = []
    for e in reply.json()["events"]:
        kind, data = str(e.get("kind")), e.get("data") or {}
        text = str(data.get("text", "")) if kind == "note" else ""
        if (
            "compact" in kind
            or kind == "model_changed"
            or any(w in text for w in ("/new", "compaction", "cancelled"))
        ):
            out.append(f"{agent} #{e['id']} {kind} {json.dumps(data)[:120]}")
    return out


@dataclass(frozen=True)
class Snapshot:
    """What the operator's own channels show; compare two with ``changes``."""

    last_id: int
    refs: frozenset[str]
    pending: tuple[int, ...]
    agents: tuple[tuple[str, str, int | None], ...]
    question: str
    agent_files: tuple[tuple[str, str], ...]
    tombstones: str
    controls: tuple[str, ...]

    @classmethod
    def take(cls, h: Hive) -> Snapshot:
        """Read everything through host.sock, the meta repo and the state dir."""
        admin = h.admin
        msgs = admin.get("/messages?since=0&limit=1000")["messages"]
        refs = subprocess.run(
            ["git", "--git-dir", str(h.layout.meta_git), "for-each-ref", "--format=%(refname)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        pending = tuple(sorted(p["id"] for p in admin.get("/proposals?pending=1")["proposals"]))
        names = sorted(a["name"] for a in h.status()["agents"])
        agents = tuple((n, str(h.phase_of(n)), h.harness_pid(n)) for n in names)
        files: list[tuple[str, str]] = []
        for n in names:
            lay = h.layout
            for f in (
                lay.agent_state(n) / "hyperhive-model",
                lay.agent_claude(n) / "settings.json",
                lay.agent_claude(n) / "hyperhive-login.json",
            ):
                try:
                    text = f.read_text()
                except FileNotFoundError:
                    text = "<absent>"
                if f.name == "hyperhive-login.json" and text != "<absent>":
                    text = "<present>"  # holds a timestamp only
                elif f.name == "settings.json" and text != "<absent>":
                    # the CLI writes its own settings there; a stored key goes to "env"
                    text = json.dumps(json.loads(text).get("env"), sort_keys=True)
                files.append((str(f.relative_to(lay.state)), text))
        return cls(
            last_id=max((int(m["id"]) for m in msgs), default=0),
            refs=frozenset(refs),
            pending=pending,
            agents=agents,
            question=json.dumps(admin.get(f"/questions/{h.question}"), sort_keys=True),
            agent_files=tuple(files),
            tombstones=json.dumps(admin.get("/tombstones"), sort_keys=True),
            controls=tuple(c for n in ("manager", "alice") for c in _controls(h, n)),
        )

    def changes(self, h: Hive, after: Snapshot) -> list[str]:
        """What moved between ``self`` and ``after`` that an attacker could have caused.

        New messages count only when they come from ``operator`` or carry the mark
        (agents' own turns may add other ones).
        """
        out: list[str] = []
        if after.last_id > self.last_id:
            new = h.admin.get(f"/messages?since={self.last_id}&limit=1000")["messages"]
            for m in new:
                if m.get("from") == "operator" or MARK.lower() in json.dumps(m).lower():
                    out.append(f"new message {json.dumps(m)[:300]}")
        if after.refs != self.refs:
            added, gone = sorted(after.refs - self.refs), sorted(self.refs - after.refs)
            out.append(f"refs added {added}, gone {gone}")
        for name in ("pending", "agents", "question", "agent_files", "tombstones", "controls"):
            if getattr(self, name) != getattr(after, name):
                out.append(f"{name}: {getattr(self, name)!r} -> {getattr(after, name)!r}"[:600])
        return out
