"""The operator dashboard: static shell, a JSON state snapshot, action endpoints, live SSE.

``make_dashboard_app(ops, broker)`` returns a WSGI ``falcon.App`` (served with
waitress on TCP, default 127.0.0.1:7000). Everything it does to the swarm goes
through ``SwarmOps`` (the same verbs as the admin socket and the CLI, so no
surface drifts); messages and operator questions go through the broker.

Endpoints (every error is ``{"error": {"code", "message", "field"}}`` with a 4xx):

==========================================  =================================================
``GET  /``                                  the page (static ``assets/index.html``)
``GET  /static/{file}``                     ``app.css``, ``app.js``, ``favicon.svg``
``GET  /api/state``                         snapshot the page renders (ETag, 304)
``GET  /api/proposals/{id}``                one proposal with its full diff
``POST /api/proposals/{id}/approve``        ``{"note"?}`` → Proposal
``POST /api/proposals/{id}/deny``           ``{"note"}`` (required) → Proposal
``POST /api/spawn``                         ``{"name"}`` → Proposal (a spawn to approve)
``POST /api/send``                          ``{"to", "body"}`` sent as ``operator``
``GET  /api/agents/{name}``                 describe: conditions, deploys, events
``GET  /api/agents/{name}/journal``         ``?unit=harness|machine&lines=1..5000`` → text
``GET  /api/agents/{name}/config``          manifest YAML, agent.nix, rendered settings
``POST /api/agents/{name}/{verb}``          verb = start / kill / restart / update
``POST /api/agents/{name}/destroy``         ``{"purge"?}``; state kept as a tombstone unless purge
``POST /api/tombstones/{id}/purge``         ``{}``: delete a destroyed agent's kept state
``POST /api/reconcile``                     ``{"dry_run"?}`` → PassResult
``POST /api/questions/{id}/answer``         ``{"answer"}`` (a list is joined with ", ")
``POST /api/questions/{id}/cancel``         ``{}``
``GET  /messages/stream``                   SSE message flow (``Last-Event-ID`` / ``?since=`` /
                                            ``?backlog=N``), heartbeat comment every 15 s
==========================================  =================================================

POST bodies may be JSON or ``application/x-www-form-urlencoded``. A POST whose
``Origin`` is another site is refused (403): the dashboard has no login, so this
is what keeps a random web page from approving proposals through the operator's
browser.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from importlib import resources
from typing import Any, Protocol

import falcon

from controller.drivers.journal import HARNESS_UNIT
from controller.errors import (
    Forbidden,
    HyperhiveError,
    Invalid,
    NotFound,
    TransientError,
)
from controller.ops import Lifecycle, Proposal, ProposalState, SwarmOps
from schemas.names import MANAGER, OPERATOR, is_agent_name
from schemas.validate import ValidationFailed, validate
from schemas.wire import Message, rfc3339

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
"""Largest POST body accepted (a message body is at most 64 KiB)."""

HEARTBEAT_SECONDS = 15.0
"""SSE heartbeat comment interval; also how long a dead client can hold a thread."""

BACKLOG_MAX = 500
"""Most messages a new SSE connection may ask to be replayed (``?backlog=N``)."""

INBOX_LIMIT = 40
"""Messages to the operator shown in the inbox (newest last)."""

HISTORY_LIMIT = 8
"""Decided proposals / deploys shown under "recent decisions"."""

HISTORY_TTL = 15.0
"""Seconds the history list is reused between snapshots."""

DIFF_LIMIT = 200_000
"""Characters of a proposal diff inlined in ``/api/state``; the rest via ``/api/proposals/{id}``."""

JOURNAL_LINES = 200
"""Journal lines returned when ``?lines=`` is not given."""

JOURNAL_MAX_LINES = 5000
"""Most journal lines one request may ask for."""

JOURNAL_UNITS: dict[str, str | None] = {
    "harness": HARNESS_UNIT,
    HARNESS_UNIT: HARNESS_UNIT,
    "machine": None,
}
"""``?unit=`` values: the harness service (the default) or the whole machine journal."""

NEGATIVE_CONDITIONS = frozenset({"Stalled", "Reconciling"})
"""Condition types that are good when False."""

CRASH_LOOP = "CrashLoopBackOff"
"""The condition reason of an agent that keeps crashing and is being backed off."""

_TOMBSTONE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,8}-[0-9]{1,12}$")
"""A tombstone id: ``<agent>-<unix seconds>`` (the directory under ``<state>/tombstones/``)."""

_STATIC_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\.(css|js|svg|png|ico|html)$")
_CONTENT_TYPES = {
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "ico": "image/x-icon",
    "html": "text/html; charset=utf-8",
}


class DashboardBroker(Protocol):
    """The broker methods the dashboard calls (``controller.broker.Broker`` has them all).

    ``questions`` returns operator questions as objects with ``to_json()``,
    dataclasses or mappings; the dashboard reads ``id``, ``question``,
    ``options``, ``multi``, ``asked_at``/``created_at``, ``deadline_at``,
    ``answer`` from them and passes other fields through. Optional extra used
    when present: a ``closed`` flag (ends open streams).
    """

    def last_id(self) -> int:
        """The newest message id (0 when there is none); ids only grow."""
        ...

    def messages(self, since_id: int, limit: int) -> list[Message]:
        """Every message with ``id > since_id``, oldest first, at most ``limit``."""
        ...

    def wait_for_new(self, since_id: int, timeout: float) -> list[Message]:
        """Messages with ``id > since_id``; parks up to ``timeout`` seconds if there are none."""
        ...

    def send(self, sender: str, recipient: str, body: str) -> Message:
        """Queue a plain message."""
        ...

    def recent(self, recipient: str, limit: int) -> list[Message]:
        """Messages to or from ``recipient``, newest last (non-mutating)."""
        ...

    def questions(self, pending_only: bool) -> Sequence[Any]:
        """Operator questions (only unanswered ones if ``pending_only``)."""
        ...

    def answer_question(self, id: int, answer: str) -> object:
        """Resolve a question; NotFound / Conflict (already resolved)."""
        ...

    def cancel_question(self, id: int) -> object:
        """Resolve a question as ``[cancelled]``; NotFound / Conflict."""
        ...


# --------------------------------------------------------------------------- helpers


def _error_body(code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def _to_dict(obj: Any) -> dict[str, Any]:
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


def _iso(value: Any) -> str | None:
    """RFC 3339 for unix seconds; strings pass through; anything else is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return rfc3339(float(value))
    if isinstance(value, str) and value:
        return value
    return None


def _parse_id(raw: str, field: str) -> int:
    """A positive integer path parameter, else Invalid naming ``field``."""
    if not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise Invalid(f"{field} must be a positive integer, got {raw!r}", field)
    return int(raw)


def _int_param(req: falcon.Request, name: str, lo: int, hi: int) -> int | None:
    """An optional integer query parameter in ``[lo, hi]``, else Invalid naming it."""
    raw = req.get_param(name)
    if raw is None:
        return None
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise Invalid(f"{name} must be an integer from {lo} to {hi}, got {raw!r}", name)
    return int(raw)


def _truthy(value: Any, field: str) -> bool:
    """A boolean from JSON or a form value (``1/0``, ``true/false``, ``on/off``, ``yes/no``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "on", "yes"):
            return True
        if low in ("", "0", "false", "off", "no"):
            return False
    raise Invalid(f"{field} must be a boolean", field)


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
            d = c if isinstance(c, Mapping) else _to_dict(c)
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
                "last_transition_time": _iso(
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


def _rows(agents: Any) -> list[Mapping[str, Any]]:
    """Agent rows from a list, or from a mapping ``name -> row`` (status.json's shape)."""
    if isinstance(agents, Mapping):
        return [{"name": k, **v} for k, v in agents.items()]
    return [r if isinstance(r, Mapping) else _to_dict(r) for r in agents]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def agent_view(row: Mapping[str, Any], host: str) -> dict[str, Any]:
    """One agent row from ``ops.status()["agents"]``, plus what the page derives from it.

    ``commit`` is the deployed commit (``observed_commit`` in ``controller.status``
    rows). Adds ``commit_short``, ``desired_short``, ``url`` (the agent UI at
    ``http://<host>:<web_port>/``), ``needs_update`` and normalized
    ``conditions``; other fields pass through.
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
            "web_port": web_port,
            "url": f"http://{_url_host(host)}:{web_port}/" if web_port else None,
            "conditions": conditions,
            "needs_update": bool(row.get("needs_update")) or needs_update(conditions),
            "needs_login": needs_login(conditions),
            "crash_loop": crash_looping(conditions),
        }
    )
    return out


def _short(commit: Any) -> str | None:
    return commit[:8] if isinstance(commit, str) and commit else None


def describe_view(doc: Mapping[str, Any], host: str) -> dict[str, Any]:
    """``ops.describe()``: the agent row (as ``agent_view``) plus ``deploys`` and ``events``.

    Deploys get ``tag`` (``<state>/<id>``, the ref in meta.git), ``tags`` (all refs of
    the id, when given) and ``commit_short``; every time becomes RFC 3339. Events are
    newest first. ``crash`` (crash-loop back-off: ``times``, ``restart_at``, ``stalled``)
    and ``failure`` (``kind``, ``action``, ``message``, ``attempts``, ``retry_at``) pass
    through with their times converted, or are None.
    """
    out = agent_view(doc, host)
    deploys = []
    for d in _rows(doc.get("deploys") or []):
        item = dict(d)
        state, pid = d.get("state"), d.get("id")
        item.update(
            {
                "tag": f"{state}/{pid}" if state and pid is not None else None,
                "tags": [str(t) for t in d.get("tags") or []],
                "commit_short": _short(d.get("commit")),
                "at": _iso(d.get("at")),
            }
        )
        deploys.append(item)
    events = []
    for e in _rows(doc.get("events") or []):
        item = dict(e)
        item.update(
            {
                "at": _iso(e.get("at")),
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
            "times": [_iso(t) for t in times] if isinstance(times, list) else [],
            "restart_at": _iso(crash.get("restart_at")),
            "stalled": bool(crash.get("stalled")),
        }
    else:
        out["crash"] = None
    failure = doc.get("failure")
    if isinstance(failure, Mapping):
        out["failure"] = {**failure, "retry_at": _iso(failure.get("retry_at"))}
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
    d = _to_dict(t)
    size = d.get("bytes")
    out = dict(d)
    name = str(d.get("name", "?"))
    out.update(
        {
            "id": str(d.get("id") or name),
            "name": name,
            "commit_short": _short(d.get("commit")),
            "destroyed_at": _iso(d.get("destroyed_at")),
            "bytes": size if isinstance(size, int) and not isinstance(size, bool) else None,
            "path": str(d.get("path") or ""),
        }
    )
    return out


def proposal_view(p: Proposal, diff_limit: int = DIFF_LIMIT) -> dict[str, Any]:
    """``Proposal.to_json()`` with the diff capped at ``diff_limit`` characters."""
    d = p.to_json()
    d["created"] = _iso(p.created_at)
    d["diff_truncated"] = len(p.diff) > diff_limit
    if d["diff_truncated"]:
        d["diff"] = p.diff[:diff_limit]
    return d


def question_view(q: Any) -> dict[str, Any]:
    """An operator question: ``{id, question, options, multi, asker, asked_at, deadline_at}``."""
    d = _to_dict(q)
    options = d.get("options") or []
    out = dict(d)
    out.update(
        {
            "id": int(d["id"]),
            "question": str(d.get("question", d.get("body", ""))),
            "options": [str(o) for o in options] if isinstance(options, list | tuple) else [],
            "multi": bool(d.get("multi", False)),
            "asker": str(d.get("asker", d.get("sender", d.get("from", MANAGER)))),
            "asked_at": _iso(d.get("asked_at", d.get("created_at"))),
            "deadline_at": _iso(d.get("deadline_at")),
            "answer": d.get("answer"),
        }
    )
    return out


def message_view(m: Any) -> dict[str, Any]:
    """A broker message in its wire shape (``wire#Message``)."""
    return _to_dict(m)


def sse_frame(m: Message) -> bytes:
    """One SSE event: ``id: <message id>``, ``event: message``, the wire JSON as data."""
    data = json.dumps(message_view(m), separators=(",", ":"), default=str)
    return f"id: {m.id}\nevent: message\ndata: {data}\n\n".encode()


# --------------------------------------------------------------------------- request bodies


def read_body(req: falcon.Request) -> dict[str, Any]:
    """The POST body as a dict: JSON object or urlencoded form (repeated keys become lists).

    Empty body → ``{}``. Raises Invalid (field ``(root)``) for malformed bodies,
    413 for bodies over ``MAX_BODY_BYTES`` and 415 for other media types.
    """
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description=f"body larger than {MAX_BODY_BYTES} bytes")
    raw = req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description=f"body larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    ctype = (req.content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid("body is not UTF-8", "(root)") from e
    if ctype == "application/x-www-form-urlencoded":
        form: dict[str, Any] = {}
        for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
            if key in form:
                prev = form[key]
                form[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                form[key] = value
        return form
    if ctype in ("", "application/json", "text/plain") or ctype.endswith("+json"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise Invalid(f"body is not valid JSON: {e}", "(root)") from e
        if not isinstance(doc, dict):
            raise Invalid("body must be a JSON object", "(root)")
        return doc
    raise falcon.HTTPUnsupportedMediaType(
        description="send application/json or application/x-www-form-urlencoded"
    )


def _checked(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    validate(doc, ref)
    return doc


# --------------------------------------------------------------------------- the app


class Dashboard:
    """The dashboard's responders; one instance per app (routes use suffixes)."""

    def __init__(
        self,
        ops: SwarmOps,
        broker: DashboardBroker,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stop: threading.Event | None = None,
    ) -> None:
        self.ops = ops
        self.broker = broker
        self.heartbeat_seconds = heartbeat_seconds
        self.stop = stop or threading.Event()
        self._history_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._logged: dict[str, str] = {}

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        """Middleware hook: any POST may have decided or deployed something."""
        if req.method == "POST":
            self._history_cache = None

    # ----------------------------------------------------------------- static

    def on_get_index(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The page shell."""
        self._static(resp, "index.html")

    def on_get_static(self, req: falcon.Request, resp: falcon.Response, file: str) -> None:
        """One asset from ``controller/dashboard/assets`` (names only, no paths)."""
        if not _STATIC_RE.match(file) or file == "index.html":
            raise NotFound(f"no static file {file!r}", "file")
        self._static(resp, file)

    def _static(self, resp: falcon.Response, name: str) -> None:
        asset = resources.files("controller.dashboard").joinpath("assets", name)
        if not asset.is_file():
            raise NotFound(f"no static file {name!r}", "file")
        resp.data = asset.read_bytes()
        resp.content_type = _CONTENT_TYPES[name.rsplit(".", 1)[1]]
        resp.cache_control = ["no-cache"]

    # ----------------------------------------------------------------- state

    def state(self, host: str) -> dict[str, Any]:
        """The snapshot ``/api/state`` serves; a failing section is reported, not fatal."""
        errors: dict[str, str] = {}

        def section(name: str, fn: Callable[[], Any], default: Any) -> Any:
            try:
                return fn()
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"
                if self._logged.get(name) != errors[name]:  # once per distinct failure
                    log.exception("dashboard: %s failed", name)
                return default

        status: dict[str, Any] = section("status", self.ops.status, {})
        agents = section(
            "agents",
            lambda: sorted(
                (agent_view(r, host) for r in _rows(status.get("agents", []))),
                key=lambda a: (a["name"] != MANAGER, a["name"]),
            ),
            [],
        )
        swarm = {k: v for k, v in status.items() if k != "agents"}
        proposals = section(
            "proposals",
            lambda: [proposal_view(p) for p in self.ops.proposals(pending_only=True)],
            [],
        )
        history = section("history", self._history, [])
        tombstones = section(
            "tombstones",
            lambda: sorted(
                (tombstone_view(t) for t in self.ops.tombstones()),
                key=lambda t: t["destroyed_at"] or "",
                reverse=True,
            ),
            [],
        )
        questions = section(
            "questions",
            lambda: [question_view(q) for q in self.broker.questions(pending_only=True)],
            [],
        )
        inbox = section("inbox", self._inbox, [])
        recipients = section("recipients", lambda: sorted(self.ops.agent_names() - {OPERATOR}), [])
        self._logged = dict(errors)
        return {
            "swarm": swarm,
            "agents": agents,
            "proposals": proposals,
            "history": history,
            "tombstones": tombstones,
            "questions": questions,
            "inbox": inbox,
            "recipients": recipients,
            "errors": errors,
        }

    def _history(self) -> list[dict[str, Any]]:
        """Recent decided proposals; cached for ``HISTORY_TTL`` s (listing every proposal
        may be costly), dropped at once by the dashboard's own decisions."""
        cached = self._history_cache
        if cached is not None and time.monotonic() - cached[0] < HISTORY_TTL:
            return cached[1]
        rows = [
            proposal_view(p, diff_limit=0)
            for p in self.ops.proposals()
            if p.state is not ProposalState.PENDING
        ][:HISTORY_LIMIT]
        self._history_cache = (time.monotonic(), rows)
        return rows

    def _inbox(self) -> list[dict[str, Any]]:
        rows = [m for m in self.broker.recent(OPERATOR, INBOX_LIMIT * 3) if m.recipient == OPERATOR]
        return [message_view(m) for m in rows[-INBOX_LIMIT:]]

    def on_get_state(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``GET /api/state``: agents, proposals, kept state, questions, inbox, recipients."""
        body = json.dumps(self.state(req.host), separators=(",", ":"), default=str).encode()
        etag = hashlib.sha256(body).hexdigest()[:32]
        resp.etag = etag
        resp.cache_control = ["no-cache"]
        if any(str(t) == etag for t in req.if_none_match or ()):
            resp.status = falcon.HTTP_304
            return
        resp.data = body
        resp.content_type = falcon.MEDIA_JSON

    def on_get_proposal(self, req: falcon.Request, resp: falcon.Response, pid: str) -> None:
        """``GET /api/proposals/{id}``: one proposal, full diff."""
        resp.media = self.ops.proposal(_parse_id(pid, "id")).to_json()

    # ----------------------------------------------------------------- actions

    def on_post_approve(self, req: falcon.Request, resp: falcon.Response, pid: str) -> None:
        """``POST /api/proposals/{id}/approve`` with an optional ``note``."""
        pid_ = _parse_id(pid, "id")
        doc = _checked(read_body(req), "wire#DecisionRequest")
        resp.media = self.ops.approve(pid_, str(doc.get("note", "")).strip()).to_json()

    def on_post_deny(self, req: falcon.Request, resp: falcon.Response, pid: str) -> None:
        """``POST /api/proposals/{id}/deny``; ``note`` (the reason) is required."""
        pid_ = _parse_id(pid, "id")
        doc = _checked(read_body(req), "wire#DecisionRequest")
        note = str(doc.get("note", "")).strip()
        if not note:
            raise Invalid("a reason is required to deny: the manager reads it", "note")
        resp.media = self.ops.deny(pid_, note).to_json()

    def on_post_spawn(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``POST /api/spawn``: propose a new agent (approve it like any proposal)."""
        doc = _checked(read_body(req), "wire#SpawnRequest")
        resp.status = falcon.HTTP_201
        resp.media = self.ops.request_spawn(str(doc["name"]).strip()).to_json()

    def on_post_send(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``POST /api/send``: a message from ``operator`` to an agent or the manager."""
        doc = _checked(read_body(req), "wire#OperatorSendRequest")
        to = str(doc["to"])
        if to == OPERATOR:
            raise Invalid("the operator cannot message itself", "to")
        known = self.ops.agent_names()
        if to not in known:
            names = ", ".join(sorted(known - {OPERATOR})) or "none"
            raise NotFound(f"no agent named {to!r} (known: {names})", "to")
        m = self.broker.send(OPERATOR, to, str(doc["body"]))
        resp.status = falcon.HTTP_201
        resp.media = {"id": m.id, "message": message_view(m)}

    def on_post_lifecycle(
        self, req: falcon.Request, resp: falcon.Response, name: str, verb: str
    ) -> None:
        """``POST /api/agents/{name}/{start|kill|restart|update}`` → ``{"result": str}``."""
        try:
            lifecycle = Lifecycle(verb)
        except ValueError as e:
            verbs = ", ".join(v.value for v in Lifecycle)
            raise NotFound(f"unknown verb {verb!r}; use one of {verbs}", "verb") from e
        if not is_agent_name(name):
            raise NotFound(f"no agent named {name!r}", "name")
        read_body(req)  # drain; no fields
        resp.media = {"agent": name, "verb": verb, "result": self.ops.lifecycle(lifecycle, name)}

    def on_post_reconcile(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``POST /api/reconcile``: run one pass now (or ``dry_run``: only plan it)."""
        doc = read_body(req)
        if "dry_run" in doc:
            doc["dry_run"] = _truthy(doc["dry_run"], "dry_run")
        _checked(doc, "wire#ReconcileRequest")
        resp.media = self.ops.reconcile(dry_run=bool(doc.get("dry_run", False))).to_json()

    def on_post_answer(self, req: falcon.Request, resp: falcon.Response, qid: str) -> None:
        """``POST /api/questions/{id}/answer`` with ``answer`` (a list of choices is joined)."""
        qid_ = _parse_id(qid, "id")
        doc = read_body(req)
        answer = doc.get("answer")
        if isinstance(answer, list) and all(isinstance(a, str) for a in answer):
            doc["answer"] = ", ".join(a.strip() for a in answer if a.strip())
        _checked(doc, "wire#AnswerQuestionRequest")
        if not str(doc["answer"]).strip():
            raise Invalid("an answer is required (or cancel the question)", "answer")
        result = self.broker.answer_question(qid_, str(doc["answer"]).strip())
        resp.media = {"id": qid_, "answered": True, "result": _jsonable(result)}

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response, qid: str) -> None:
        """``POST /api/questions/{id}/cancel``: the manager gets ``[cancelled]``."""
        qid_ = _parse_id(qid, "id")
        read_body(req)
        result = self.broker.cancel_question(qid_)
        resp.media = {"id": qid_, "cancelled": True, "result": _jsonable(result)}

    # ----------------------------------------------------------------- one agent

    def on_get_describe(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """``GET /api/agents/{name}``: conditions in full, last deploys, recent events."""
        _check_agent(name)
        with _agent_not_found(name):
            doc = self.ops.describe(name)
        resp.media = describe_view(doc, req.host)

    def on_get_journal(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """``GET /api/agents/{name}/journal?unit=harness|machine&lines=N`` → ``{"text", ..}``."""
        _check_agent(name)
        raw_unit = req.get_param("unit") or "harness"
        if raw_unit not in JOURNAL_UNITS:
            raise Invalid(
                f"unit {raw_unit!r} is not allowed: use 'harness' ({HARNESS_UNIT}) "
                "or 'machine' (the whole machine journal)",
                "unit",
            )
        unit = JOURNAL_UNITS[raw_unit]
        lines = _int_param(req, "lines", 1, JOURNAL_MAX_LINES) or JOURNAL_LINES
        with _agent_not_found(name):
            text = self.ops.journal(name, unit=unit, lines=lines)
        resp.cache_control = ["no-store"]
        resp.media = {
            "agent": name,
            "unit": unit,
            "lines": lines,
            "text": text,
            "fetched_at": rfc3339(time.time()),
        }

    def on_get_config(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """``GET /api/agents/{name}/config``: what the agent is deployed from."""
        _check_agent(name)
        with _agent_not_found(name):
            doc = self.ops.agent_config(name)
        resp.media = config_view(name, doc)

    def on_post_destroy(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """``POST /api/agents/{name}/destroy`` with ``{"purge"?}``: its state is kept unless
        ``purge``. The manager cannot be destroyed."""
        _check_agent(name)
        doc = read_body(req)
        for key in doc:
            if key != "purge":
                raise Invalid(f"unknown field {key!r}; destroy takes only 'purge'", key)
        purge = _truthy(doc.get("purge", False), "purge")
        if name == MANAGER:
            raise Invalid("the manager cannot be destroyed (it is required infrastructure)", "name")
        with _agent_not_found(name):
            result = self.ops.destroy(name, purge=purge)
        resp.media = {"agent": name, "purged": purge, "result": result}

    def on_post_purge(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """``POST /api/tombstones/{id}/purge``: delete a destroyed agent's kept state.

        ``id`` is a tombstone id (``<agent>-<unix seconds>``) or an agent name.
        """
        if name == MANAGER or not (is_agent_name(name) or _TOMBSTONE_ID_RE.fullmatch(name)):
            raise NotFound(f"no kept state for {name!r}", "name")
        extra = sorted(read_body(req))
        if extra:
            raise Invalid(f"unknown field {extra[0]!r}; purge takes no fields", extra[0])
        with _agent_not_found(name):
            result = self.ops.purge(name)
        resp.media = {"agent": name, "purged": True, "result": result}

    # ----------------------------------------------------------------- SSE

    def on_get_stream(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``GET /messages/stream``: every broker message as SSE, live.

        Start point: ``Last-Event-ID`` (browser reconnect) or ``?since=ID`` →
        everything after it; else ``?backlog=N`` (≤ 500) most recent, then live.
        """
        header = req.get_header("Last-Event-ID")
        since: int | None = None
        if header is not None and header.strip():
            if not header.strip().isdigit():
                raise Invalid("Last-Event-ID must be a message id", "Last-Event-ID")
            since = int(header.strip())
        elif req.get_param("since") is not None:
            since = _int_param(req, "since", 0, 2**62)
        backlog = _int_param(req, "backlog", 0, BACKLOG_MAX) or 0
        if since is None:
            latest = int(self.broker.last_id())
            since = max(0, latest - backlog) if backlog else latest
        resp.content_type = "text/event-stream; charset=utf-8"
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = self._events(since)

    def _events(self, since: int) -> Iterator[bytes]:
        last = since
        yield f"retry: 3000\n: hyperhive message flow from id {since}\n\n".encode()
        try:
            while True:  # catch up with pages of history first
                page = self.broker.messages(last, 200)
                for m in page:
                    if m.id > last:
                        last = m.id
                        yield sse_frame(m)
                if len(page) < 200:
                    break
            while not self.stop.is_set():
                started = time.monotonic()
                fresh = [
                    m for m in self.broker.wait_for_new(last, self.heartbeat_seconds) if m.id > last
                ]
                if not fresh:
                    if getattr(self.broker, "closed", False) is True:
                        return  # shutting down; the browser reconnects to the next controller
                    # a broker that returns early must not turn this into a busy loop
                    self.stop.wait(self.heartbeat_seconds - (time.monotonic() - started))
                    yield b": heartbeat\n\n"
                    continue
                for m in fresh:
                    last = m.id
                    yield sse_frame(m)
        except GeneratorExit:
            raise
        except Exception as e:  # broker trouble: end the stream, the browser reconnects
            log.exception("dashboard: message stream failed")
            yield f": stream error: {type(e).__name__}\n\n".encode()


def _check_agent(name: str) -> None:
    """404 naming ``name`` for a path parameter that cannot be an agent."""
    if not is_agent_name(name):
        raise NotFound(f"no agent named {name!r}", "name")


@contextlib.contextmanager
def _agent_not_found(name: str) -> Iterator[None]:
    """Re-raise ``NotFound`` from an agent-scoped op as naming ``name`` (the path parameter)."""
    try:
        yield
    except NotFound as e:
        if e.field in (None, "name", "agent", "container"):
            raise NotFound(e.message, "name") from e
        raise


def _jsonable(value: object) -> Any:
    """Best-effort JSON view of a broker return value (None, scalars, to_json, mappings)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return _to_dict(value)
    except TypeError:
        return str(value)


# --------------------------------------------------------------------------- errors + CSRF


def _handle_hyperhive(
    req: falcon.Request, resp: falcon.Response, ex: HyperhiveError, params: dict[str, Any]
) -> None:
    status = 503 if isinstance(ex, TransientError) else ex.status
    if status >= 500:
        log.warning("dashboard: %s %s: %s", req.method, req.path, ex.message)
    resp.status = status
    resp.media = _error_body(ex.code, ex.message, ex.field)


def _handle_validation(
    req: falcon.Request, resp: falcon.Response, ex: ValidationFailed, params: dict[str, Any]
) -> None:
    resp.status = 400
    resp.media = _error_body("invalid", f"{ex.field}: {ex.reason}", ex.field)


def _handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
) -> None:
    log.exception("dashboard: %s %s failed", req.method, req.path)
    resp.status = 500
    resp.media = _error_body("internal", f"internal error: {type(ex).__name__}: {ex}", None)


def _serialize_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    title = re.sub(r"^\d+\s*", "", ex.title or "error")
    code = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "error"
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(_error_body(code, ex.description or ex.title or code, None)).encode()


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


class _SameOrigin:
    """Middleware: refuse state-changing requests sent by another site's page (CSRF).

    Browsers send ``Origin`` on cross-origin POSTs; curl and the CLI send none,
    so they pass. ``Sec-Fetch-Site: cross-site`` is refused as well.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Check ``Origin`` / ``Sec-Fetch-Site`` of every non-GET request."""
        if req.method in ("GET", "HEAD", "OPTIONS"):
            return
        if (req.get_header("Sec-Fetch-Site") or "").lower() == "cross-site":
            raise Forbidden("cross-site request refused", "Origin")
        origin = req.get_header("Origin")
        if origin is None:
            return
        o = urllib.parse.urlsplit(origin)
        h = urllib.parse.urlsplit("//" + (req.get_header("Host") or ""))
        try:
            o_port, h_port = o.port, h.port
        except ValueError as e:
            raise Forbidden(f"malformed Origin or Host ({origin!r})", "Origin") from e
        same_host = bool(o.hostname) and (o.hostname or "").lower() == (h.hostname or "").lower()
        # Host without a port (e.g. behind a TLS proxy): the host name must match;
        # with one, the origin's (explicit or default) port must match it too.
        same_port = h_port is None or (o_port or _default_port(o.scheme)) == h_port
        if not (same_host and same_port):
            raise Forbidden(f"cross-origin request from {origin!r} refused", "Origin")


def make_dashboard_app(
    ops: SwarmOps,
    broker: DashboardBroker,
    *,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    stop: threading.Event | None = None,
) -> falcon.App[falcon.Request, falcon.Response]:
    """Build the dashboard WSGI app.

    ``heartbeat_seconds`` is the SSE heartbeat interval; setting ``stop`` ends
    open SSE streams within one heartbeat (for a clean shutdown). Each open
    stream holds one waitress thread: size ``threads`` for the tabs you expect.
    """
    dash = Dashboard(ops, broker, heartbeat_seconds=heartbeat_seconds, stop=stop)
    app = falcon.App(middleware=_SameOrigin())
    app.add_middleware(dash)  # process_response: drop the history cache after a POST
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(HyperhiveError, _handle_hyperhive)
    app.add_error_handler(ValidationFailed, _handle_validation)
    app.set_error_serializer(_serialize_http_error)
    app.add_route("/", dash, suffix="index")
    app.add_route("/static/{file}", dash, suffix="static")
    app.add_route("/api/state", dash, suffix="state")
    app.add_route("/api/proposals/{pid}", dash, suffix="proposal")
    app.add_route("/api/proposals/{pid}/approve", dash, suffix="approve")
    app.add_route("/api/proposals/{pid}/deny", dash, suffix="deny")
    app.add_route("/api/spawn", dash, suffix="spawn")
    app.add_route("/api/send", dash, suffix="send")
    app.add_route("/api/agents/{name}", dash, suffix="describe")
    app.add_route("/api/agents/{name}/journal", dash, suffix="journal")
    app.add_route("/api/agents/{name}/config", dash, suffix="config")
    app.add_route("/api/agents/{name}/destroy", dash, suffix="destroy")
    app.add_route("/api/agents/{name}/{verb}", dash, suffix="lifecycle")
    app.add_route("/api/tombstones/{name}/purge", dash, suffix="purge")
    app.add_route("/api/reconcile", dash, suffix="reconcile")
    app.add_route("/api/questions/{qid}/answer", dash, suffix="answer")
    app.add_route("/api/questions/{qid}/cancel", dash, suffix="cancel")
    app.add_route("/messages/stream", dash, suffix="stream")
    return app
