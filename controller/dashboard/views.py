"""Pure views: what ``/api/state`` and friends render from ops and broker values.

No I/O here; every function takes plain values (status rows, proposals,
messages) and returns JSON-able dicts. Times become RFC 3339 strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any
from urllib.parse import quote

from controller.ops import Proposal
from schemas.names import MANAGER
from schemas.wire import rfc3339

DIFF_LIMIT = 200_000
"""Characters of a proposal diff inlined in ``/api/state``; the rest via ``/api/proposals/{id}``."""

NEGATIVE_CONDITIONS = frozenset({"Stalled", "Reconciling", "Degraded"})
"""Condition types that are good when False."""

CRASH_LOOP = "CrashLoopBackOff"
"""The condition reason of an agent that keeps crashing and is being backed off."""


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-able dict from an object with ``to_json()``, a dataclass or a mapping."""
    to_json = getattr(obj, "to_json", None)
    if callable(to_json):
        out = to_json()
        if isinstance(out, Mapping):
            return dict(out)
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot render {type(obj).__name__} as JSON")


def iso(value: Any) -> str | None:
    """RFC 3339 for unix seconds; strings pass through; anything else is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return rfc3339(float(value))
    if isinstance(value, str) and value:
        return value
    return None


def _cond_status(value: Any) -> str:
    if value is True:
        return "True"
    if value is False:
        return "False"
    text = str(value or "Unknown")
    if text.lower() in ("true", "false", "unknown"):
        return text[:1].upper() + text[1:].lower()
    return text


def normalize_conditions(raw: Any) -> list[dict[str, Any]]:
    """Conditions as a list of ``{type, status, reason, message, last_transition_time}``.

    Accepts a list of condition dicts or a mapping ``type -> dict | status``
    (``status`` may be a bool or the strings True/False/Unknown).
    """
    items: list[tuple[str, Any]] = []
    if isinstance(raw, Mapping):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        for c in raw:
            d = c if isinstance(c, Mapping) else to_dict(c)
            items.append((str(d.get("type", "")), d))
    out: list[dict[str, Any]] = []
    for ctype, value in items:
        d = dict(value) if isinstance(value, Mapping) else {"status": value}
        out.append(
            {
                "type": ctype,
                "status": _cond_status(d.get("status")),
                "reason": str(d.get("reason") or ""),
                "message": str(d.get("message") or ""),
                "last_transition_time": iso(
                    d.get("last_transition_time", d.get("lastTransitionTime", d.get("since")))
                ),
            }
        )
    return out


def needs_update(conditions: Sequence[Mapping[str, Any]]) -> bool:
    """True when ``UpToDate`` is False (or a ``NeedsUpdate`` condition is True)."""
    for c in conditions:
        if c["type"] == "UpToDate" and c["status"] == "False":
            return True
        if c["type"] == "NeedsUpdate" and c["status"] == "True":
            return True
    return False


def _bad(c: Mapping[str, Any]) -> bool:
    """True when a (normalized) condition says something is wrong."""
    if c["type"] in NEGATIVE_CONDITIONS:
        return bool(c["status"] == "True")
    return bool(c["status"] == "False")


def crash_looping(conditions: Sequence[Mapping[str, Any]]) -> bool:
    """True when a condition that is wrong has the reason ``CrashLoopBackOff`` (Stalled)."""
    return any(c["reason"] == CRASH_LOOP and _bad(c) for c in conditions)


def needs_login(conditions: Sequence[Mapping[str, Any]]) -> bool:
    """True when ``LoggedIn`` is False: someone has to log in from the agent's web UI."""
    return any(c["type"] == "LoggedIn" and c["status"] == "False" for c in conditions)


def rows(agents: Any) -> list[Mapping[str, Any]]:
    """Agent rows from a list, or from a mapping ``name -> row`` (status.json's shape)."""
    if isinstance(agents, Mapping):
        return [{"name": k, **v} for k, v in agents.items()]
    return [r if isinstance(r, Mapping) else to_dict(r) for r in agents]


def agent_url(name: str) -> str:
    """Where the dashboard serves ``name``'s web UI: ``/agents/<name>/`` on its own origin."""
    return f"/agents/{quote(name, safe='')}/"


def agent_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """One agent row from ``ops.status()["agents"]``, plus what the page derives from it.

    ``commit`` is the deployed commit (``observed_commit`` in ``controller.status``
    rows). Adds ``commit_short``, ``desired_short``, ``url`` (the agent UI behind
    the dashboard, ``/agents/<name>/``), ``needs_update`` (False for an agent stopped on
    purpose: ``suspended`` by its manifest or ``held`` by a stop request), ``commit_differs``
    (deployed and desired commits differ and the agent is out of date: the page shows
    "deployed → desired" only then) and normalized ``conditions``; other fields
    (``web_port`` included) pass through.
    """
    out = dict(row)
    spec = row.get("spec") if isinstance(row.get("spec"), Mapping) else {}
    conditions = normalize_conditions(row.get("conditions", []))
    commit = (
        row.get("observed_commit")
        or row.get("commit")
        or row.get("deployed_commit")
        or row.get("deployed")
        or None
    )
    desired = row.get("desired_commit")
    # stopped on purpose (spec.suspend, or a stop by request): the page says so instead of
    # "needs update" — an update would not start it, and nothing is wrong with it
    suspended = bool(row.get("suspended")) or any(
        c["type"] == "Ready" and c["reason"] == "Suspended" for c in conditions
    )
    held = row.get("held") or None
    stopped_on_purpose = suspended or held is not None
    outdated = (bool(row.get("needs_update")) or needs_update(conditions)) and not (
        stopped_on_purpose
    )
    port = row.get("web_port", row.get("port"))
    web_port = port if isinstance(port, int) and not isinstance(port, bool) and port > 0 else None
    out.update(
        {
            "name": str(row.get("name", "?")),
            "phase": str(row.get("phase") or "unknown"),
            "model": row.get("model") or (spec or {}).get("model") or None,
            "commit": commit if isinstance(commit, str) else None,
            "commit_short": commit[:8] if isinstance(commit, str) else None,
            "desired_short": desired[:8] if isinstance(desired, str) else None,
            # the arrow "deployed → desired" only when they differ and it matters
            "commit_differs": isinstance(desired, str)
            and isinstance(commit, str)
            and desired != commit
            and outdated,
            "suspended": suspended,
            "held": str(held) if held is not None else None,
            "web_port": web_port,
            "url": agent_url(str(row.get("name", "?"))),
            "conditions": conditions,
            "needs_update": outdated,
            "needs_login": needs_login(conditions),
            "crash_loop": crash_looping(conditions),
        }
    )
    return out


def _short(commit: Any) -> str | None:
    return commit[:8] if isinstance(commit, str) and commit else None


def describe_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``ops.describe()``: the agent row (as ``agent_view``) plus ``deploys`` and ``events``.

    Deploys get ``tag`` (``<state>/<id>``, the ref in meta.git), ``tags`` (all refs of
    the id, when given) and ``commit_short``; every time becomes RFC 3339. Events are
    newest first. ``crash`` (crash-loop back-off: ``times``, ``restart_at``, ``stalled``)
    and ``failure`` (``kind``, ``action``, ``message``, ``attempts``, ``retry_at``) pass
    through with their times converted, or are None.
    """
    out = agent_view(doc)
    deploys = []
    for d in rows(doc.get("deploys") or []):
        item = dict(d)
        state, pid = d.get("state"), d.get("id")
        item.update(
            {
                "tag": f"{state}/{pid}" if state and pid is not None else None,
                "tags": [str(t) for t in d.get("tags") or []],
                "commit_short": _short(d.get("commit")),
                "at": iso(d.get("at")),
            }
        )
        deploys.append(item)
    events = []
    for e in rows(doc.get("events") or []):
        item = dict(e)
        item.update(
            {
                "at": iso(e.get("at")),
                "type": str(e.get("type") or ""),
                "message": str(e.get("message") or ""),
            }
        )
        events.append(item)
    events.sort(key=lambda e: e["at"] or "", reverse=True)
    out["deploys"] = deploys
    out["events"] = events
    crash = doc.get("crash")
    if isinstance(crash, Mapping):
        times = crash.get("times") or []
        out["crash"] = {
            **crash,
            "times": [iso(t) for t in times] if isinstance(times, list) else [],
            "restart_at": iso(crash.get("restart_at")),
            "stalled": bool(crash.get("stalled")),
        }
    else:
        out["crash"] = None
    failure = doc.get("failure")
    if isinstance(failure, Mapping):
        out["failure"] = {**failure, "retry_at": iso(failure.get("retry_at"))}
    else:
        out["failure"] = None
    return out


def config_view(name: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """``ops.agent_config()``: ``{name, commit, commit_short, manifest, agent_nix, settings}``."""
    out = dict(doc)
    agent_nix = doc.get("agent_nix")
    out.update(
        {
            "name": name,
            "commit": doc.get("commit") if isinstance(doc.get("commit"), str) else None,
            "commit_short": _short(doc.get("commit")),
            "manifest": str(doc.get("manifest") or ""),
            "agent_nix": agent_nix if isinstance(agent_nix, str) else None,
            "settings": doc.get("settings"),
        }
    )
    return out


def tombstone_view(t: Any) -> dict[str, Any]:
    """One kept-state entry: ``{id, name, destroyed_at (RFC 3339), bytes, path, commit_short}``.

    ``id`` is what ``POST /api/tombstones/{id}/purge`` takes: the tombstone's own id
    (``<agent>-<unix seconds>``) when ``ops.tombstones()`` gives one, else the agent name.
    """
    d = to_dict(t)
    size = d.get("bytes")
    out = dict(d)
    name = str(d.get("name", "?"))
    out.update(
        {
            "id": str(d.get("id") or name),
            "name": name,
            "commit_short": _short(d.get("commit")),
            "destroyed_at": iso(d.get("destroyed_at")),
            "bytes": size if isinstance(size, int) and not isinstance(size, bool) else None,
            "path": str(d.get("path") or ""),
        }
    )
    return out


def proposal_view(p: Proposal, diff_limit: int = DIFF_LIMIT) -> dict[str, Any]:
    """``Proposal.to_json()`` with the diff capped at ``diff_limit`` characters."""
    d = p.to_json()
    d["created"] = iso(p.created_at)
    d["diff_truncated"] = len(p.diff) > diff_limit
    if d["diff_truncated"]:
        d["diff"] = p.diff[:diff_limit]
    return d


def question_view(q: Any) -> dict[str, Any]:
    """An operator question: ``{id, question, options, multi, asker, asked_at, deadline_at}``."""
    d = to_dict(q)
    options = d.get("options") or []
    out = dict(d)
    out.update(
        {
            "id": int(d["id"]),
            "question": str(d.get("question", d.get("body", ""))),
            "options": [str(o) for o in options] if isinstance(options, list | tuple) else [],
            "multi": bool(d.get("multi", False)),
            "asker": str(d.get("asker", d.get("sender", d.get("from", MANAGER)))),
            "asked_at": iso(d.get("asked_at", d.get("created_at"))),
            "deadline_at": iso(d.get("deadline_at")),
            "answer": d.get("answer"),
        }
    )
    return out


def message_view(m: Any) -> dict[str, Any]:
    """A broker message in its wire shape (``wire#Message``)."""
    return to_dict(m)
