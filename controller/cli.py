"""``hyperhive``: the operator's command line.

Every verb except ``serve`` talks to a running controller over its admin socket
(``<run>/host.sock``), sending the operator key (``<state>/operator.key``, made by
``hyperhive serve``) as its bearer credential; ``reconcile`` runs the pass
in-process when no controller is running. ``--state-dir`` / ``--run-dir`` (or
``HYPERHIVE_STATE_DIR`` / ``HYPERHIVE_RUN_DIR``) select the instance.
``hyperhive dashboard`` prints a one-time login URL for the dashboard.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller import __version__
from controller.paths import Layout, default_state_dir
from schemas.names import AGENT_NAME_RULE

# Imported where used, not here: every verb (and --help, --version) pays for this
# module's imports, and `hyperhive status` should cost little more than starting
# Python (bench/push.py). schemas.client (http.client) and the operator key are
# for the verbs that talk to host.sock, controller.config (yaml, jsonschema) for
# serve/reconcile, schemas.wire (jsonschema) for formatting messages and times.
if TYPE_CHECKING:
    from schemas.client import UnixClient

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2

EPILOG = """\
approvals with plain git (a denial's tag message is the reason the manager gets;
-c names the tagger, so it works without a git identity):
  git clone <state>/meta.git meta && cd meta
  git tag approved/1 proposal/1 && git push origin approved/1
  git -c user.name=operator -c user.email=operator@localhost \\
    tag -a denied/2 -m "not now" proposal/2 && git push origin denied/2

stopping everything: `hyperhive stop --all` stops every agent (each stays stopped,
across controller restarts, until `hyperhive start NAME`, restart or its next
deploy), then stop `hyperhive serve` (Ctrl-C / SIGTERM);
stopping only the controller leaves the agents running, and the next `serve`
adopts them.
"""

ID_MAX = 2**63 - 1
"""The largest id the controller accepts (a signed 64-bit integer)."""

TOMBSTONE_ID_MAX = 40
"""Characters of a tombstone id (``<agent>-<digits>``) at most."""

NAME_RULE = AGENT_NAME_RULE
"""The agent naming rule in words (``schemas.names.AGENT_NAME_RULE``), for error messages."""


class CliError(Exception):
    """A failure to report on stderr with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def _shown(text: str) -> str:
    """``text`` quoted for an error message: at most 40 characters, escapes visible."""
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


def agent_name(text: str) -> str:
    """An argparse ``type``: ``text`` if it is an agent name (or ``manager``).

    Raises ``argparse.ArgumentTypeError`` in plain words (argparse exits 2 before any
    request is made)."""
    from schemas.names import AGENT_NAME_RE

    if not AGENT_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an agent name ({NAME_RULE})")
    return text


def name_or_tombstone(text: str) -> str:
    """An argparse ``type``: an agent name or a tombstone id (``alice-1700000000``).

    Raises ``argparse.ArgumentTypeError`` in plain words."""
    from schemas.names import AGENT_NAME_RE

    agent, sep, digits = text.rpartition("-")
    if AGENT_NAME_RE.fullmatch(text) or (
        len(text) <= TOMBSTONE_ID_MAX
        and sep
        and digits.isascii()
        and digits.isdigit()
        and AGENT_NAME_RE.fullmatch(agent)
    ):
        return text
    raise argparse.ArgumentTypeError(
        f"{_shown(text)} is neither an agent name ({NAME_RULE}) nor a tombstone id "
        "(NAME-DIGITS, as `hyperhive tombstones` lists them)"
    )


def positive_id(text: str) -> int:
    """An argparse ``type``: a proposal or message id, 1 .. 2**63-1.

    Raises ``argparse.ArgumentTypeError`` in plain words."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= ID_MAX:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an id (a whole number from 1)")
    return int(text)


def since_id(text: str) -> int:
    """An argparse ``type``: a message id to start after, 0 .. 2**63-1.

    Raises ``argparse.ArgumentTypeError`` in plain words."""
    if not (text.isascii() and text.isdigit()) or int(text) > ID_MAX:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a message id (0 or more)")
    return int(text)


def count(text: str) -> int:
    """An argparse ``type``: a message count, 1 .. 1000 (what the controller serves at once).

    Raises ``argparse.ArgumentTypeError`` in plain words."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a count from 1 to 1000")
    return int(text)


def seg(value: str | int) -> str:
    """``value`` percent-encoded as one URL path segment (``/`` and ``?`` included)."""
    import urllib.parse

    return urllib.parse.quote(str(value), safe="")


def _layout(args: argparse.Namespace) -> Layout:
    state = Path(args.state_dir) if args.state_dir else default_state_dir()
    return Layout.for_state(state, Path(args.run_dir) if args.run_dir else None)


def _operator_key(layout: Layout) -> str:
    """The operator key, or ``CliError`` with a one-line reason (missing, unreadable)."""
    from controller.auth.operator import load_operator_key
    from controller.auth.secretfile import CredentialError

    try:
        return load_operator_key(layout)
    except CredentialError as exc:
        raise CliError(exc.message, EXIT_ERROR) from exc


def _client(args: argparse.Namespace, timeout: float = 60.0) -> UnixClient:
    from schemas.client import UnixClient

    layout = _layout(args)
    return UnixClient(str(layout.host_sock), timeout=timeout, token=_operator_key(layout))


def _call(
    args: argparse.Namespace, method: str, url: str, body: Any = None, timeout: float = 60.0
) -> Any:
    """One request to host.sock; its JSON answer, or ``CliError`` saying what went wrong.

    A verb makes one request and exits, so it goes through ``controller.unixhttp``
    (``socket`` + ``json``), not ``schemas.client`` (``http.client``).
    """
    from controller.unixhttp import BadAnswer, request

    layout = _layout(args)
    key = _operator_key(layout)
    try:
        answer = request(layout.host_sock, method, url, token=key, body=body, timeout=timeout)
    except (OSError, BadAnswer) as exc:
        raise CliError(
            f"no controller answers on {layout.host_sock} — is `hyperhive serve` running "
            f"with this --state-dir ({layout.state})?",
            EXIT_ERROR,
        ) from exc
    if answer.status >= 400:
        _, message, field = answer.error()
        if answer.status == 401:
            message = f"the credential sent to {layout.host_sock} was refused: {message}"
        where = f" (field: {field})" if field else ""
        raise CliError(f"{message}{where}", EXIT_FAIL)
    return answer.body


def _ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    s = max(0, int((now or time.time()) - ts))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# --- verbs -------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config
    from controller.serve import run_daemon

    try:
        cfg = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_ERROR) from exc
    return run_daemon(
        cfg,
        args.state_dir,
        args.run_dir,
        dashboard=args.dashboard,
        reset_broker=bool(args.reset_broker),
    )


def _print_plan(result: dict[str, Any]) -> None:
    plan = result.get("plan", [])
    pending = result.get("pending", [])
    for item in pending:
        print(f"pending: {item}")
    if not plan and not pending:
        print("in sync: nothing to do")
    for a in plan:
        print(f"{a['action']:<15} {a['agent']:<10} {a['reason']}")
    for e in result.get("errors", []):
        print(f"error: {e}", file=sys.stderr)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from controller.auth.operator import load_operator_key
    from controller.auth.secretfile import CredentialError
    from schemas.client import ApiError, UnixClient, Unreachable

    body = {"dry_run": bool(args.dry_run)}
    layout = _layout(args)
    if args.dry_run and not layout.state.is_dir():
        # a dry run never writes: planning against a mistyped path would create a state dir
        raise CliError(
            f"no state dir at {layout.state} (a dry run creates nothing); "
            "check --state-dir / $HYPERHIVE_STATE_DIR",
            EXIT_ERROR,
        )
    try:
        key: str | None = load_operator_key(layout)
    except CredentialError as exc:
        key, key_error = None, exc.message  # fine while no controller runs: the pass is local
    try:
        result: dict[str, Any] = UnixClient(str(layout.host_sock), timeout=3600, token=key).post(
            "/reconcile", body
        )
    except Unreachable:
        if args.dry_run and not layout.meta_git.is_dir():
            # the in-process pass would bootstrap meta.git and the manager's clone first
            print(
                f"hyperhive reconcile: {layout.state} holds no meta.git: nothing to plan "
                "(a dry run creates nothing; `hyperhive serve` makes it)",
                file=sys.stderr,
            )
            return EXIT_ERROR
        from controller.config import load_config
        from controller.serve import one_shot_pass

        try:
            cfg = load_config(Path(args.config) if args.config else None)
            result = one_shot_pass(cfg, args.state_dir, args.run_dir, dry_run=bool(args.dry_run))
        except Exception as exc:
            print(f"hyperhive reconcile: {exc}", file=sys.stderr)
            return EXIT_ERROR
    except ApiError as exc:
        message = key_error if key is None and exc.status == 401 else exc.message
        print(f"hyperhive reconcile: {message}", file=sys.stderr)
        return EXIT_ERROR
    _print_plan(result)
    if args.dry_run:
        # pending ref work (an approval not yet merged, a push not yet deployed) counts too
        in_sync = result.get("in_sync", not result.get("plan"))
        return EXIT_OK if in_sync else EXIT_FAIL
    return EXIT_OK if not result.get("errors") else EXIT_FAIL


def _cond_summary(conds: list[dict[str, Any]]) -> str:
    marks = []
    for c in conds:
        s = c.get("status")
        mark = "+" if s == "True" else "-" if s == "False" else "?"
        marks.append(f"{c.get('type')}{mark}")
    return " ".join(marks) or "-"


def _when(ts: Any) -> str:
    return f"{_ago(float(ts))} ago" if isinstance(ts, int | float) and ts else "-"


def _describe(a: dict[str, Any]) -> None:
    from schemas.wire import parse_rfc3339

    now = time.time()
    print(f"Name:        {a.get('name')}")
    print(f"Phase:       {a.get('phase')}" + (f"  ({a['detail']})" if a.get("detail") else ""))
    print(f"Deployed:    {str(a.get('commit') or '-')[:12]}")
    print(f"Desired:     {str(a.get('desired_commit') or '-')[:12]}")
    print(f"Model:       {a.get('model') or '-'}")
    if a.get("hyperhive_version"):
        print(f"Hyperhive:   {a['hyperhive_version']}")
    if a.get("web_port"):
        print(f"Web UI:      http://127.0.0.1:{a['web_port']}/")
    if a.get("held"):
        print(f"Held:        {a['held']} (hyperhive start/restart clears it)")
    if a.get("suspended"):
        print("Suspended:   spec.suspend is true")
    crash = a.get("crash")
    if crash:
        state = "crash loop (Stalled)" if crash.get("stalled") else "backing off"
        print(f"Crashes:     {len(crash.get('times', []))} in the last 10 minutes, {state}")
    fail = a.get("failure")
    if fail:
        print(
            f"Last error:  {fail.get('action')} ({fail.get('kind')}, attempt "
            f"{fail.get('attempts')}): {fail.get('message')}"
        )
    print("Conditions:")
    rows = [["  TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
    for c in a.get("conditions", []):
        since = "-"
        with contextlib.suppress(Exception):
            since = _ago(parse_rfc3339(str(c.get("lastTransitionTime"))), now)
        rows.append(
            [
                f"  {c.get('type')}",
                str(c.get("status")),
                str(c.get("reason")),
                since,
                str(c.get("message") or ""),
            ]
        )
    print(_table(rows))
    deploys = a.get("deploys") or []
    print("Deploys:" if deploys else "Deploys:     none touched this agent yet")
    if deploys:
        rows = [["  ID", "STATE", "KIND", "AGE", "TAGS", "TITLE"]]
        for d in deploys:
            rows.append(
                [
                    f"  {d.get('id')}",
                    str(d.get("state")),
                    str(d.get("kind")),
                    _ago(d.get("at"), now),
                    " ".join(d.get("tags", [])),
                    str(d.get("title") or ""),
                ]
            )
        print(_table(rows))
        failed = next((d for d in deploys if d.get("state") == "failed"), None)
        if failed and failed is deploys[0]:
            note = str(failed.get("note") or "").strip().splitlines()
            if note:
                print(f"  failed/{failed['id']}: " + " | ".join(note[-3:]))
    events = a.get("events") or []
    print("Events:" if events else "Events:      none recorded")
    if events:
        rows = [["  AGE", "TYPE", "MESSAGE"]]
        for e in events:
            rows.append([f"  {_ago(e.get('at'), now)}", str(e.get("type")), str(e.get("message"))])
        print(_table(rows))
    stones = a.get("tombstones") or []
    if stones:
        print(f"Tombstones:  {len(stones)} earlier incarnation(s) kept (hyperhive tombstones)")


def cmd_status(args: argparse.Namespace) -> int:
    if args.name:
        a = _call(args, "GET", f"/agents/{seg(args.name)}")
        if args.output == "json":
            print(json.dumps(a, indent=2))
        else:
            _describe(a)
        return EXIT_OK
    st = _call(args, "GET", "/status")
    agents: list[dict[str, Any]] = st.get("agents", [])
    if args.output == "json":
        print(json.dumps(st, indent=2))
        return EXIT_OK
    print(
        f"runtime {st.get('runtime', '?')}  main {str(st.get('main') or '-')[:12]}  "
        f"pending proposals {st.get('pending', 0)}"
    )
    if st.get("runtime_note"):
        print(st["runtime_note"])
    if not agents:
        print("no agents yet — the manager proposes spawns; `hyperhive pending` lists them")
        return EXIT_OK
    rows = [["AGENT", "STATE", "DEPLOYED", "CONDITIONS", "AGE"]]
    for a in agents:
        rows.append(
            [
                str(a.get("name")),
                _state(a),
                str(a.get("commit") or "-")[:12],
                _cond_summary(a.get("conditions", [])),
                _ago(a.get("since")),
            ]
        )
    print(_table(rows))
    for line in _problems(agents):
        print(line)
    return EXIT_OK


def _state(a: dict[str, Any]) -> str:
    """The phase, or the reason that matters more (Stalled, Reconciling) — like kubectl's STATUS."""
    conds = {c.get("type"): c for c in a.get("conditions", [])}
    stalled = conds.get("Stalled", {})
    if stalled.get("status") == "True":
        return str(stalled.get("reason"))
    rec = conds.get("Reconciling", {})
    if rec.get("status") == "True":
        return str(rec.get("reason"))
    ready = conds.get("Ready", {})
    if ready.get("status") == "False" and ready.get("reason") not in (None, "Stopped"):
        return str(ready.get("reason"))
    degraded = conds.get("Degraded", {})
    if degraded.get("status") == "True":
        return str(degraded.get("reason"))
    return str(a.get("phase"))


def _problems(agents: list[dict[str, Any]]) -> list[str]:
    """One line per condition an operator should act on (what is wrong and how to fix it),
    as the agents themselves reported it."""
    out: list[str] = []
    for a in agents:
        for c in a.get("conditions", []):
            t, s, r = c.get("type"), c.get("status"), c.get("reason")
            bad = (
                (t == "Ready" and s == "False" and r == "ClaudeMissing")
                or (t == "LoggedIn" and s == "False")
                or (t == "Degraded" and s == "True" and r != "ClaudeMissing")
                or (t == "UpToDate" and s == "False" and r == "EnvChanged")
            )
            if bad:
                out.append(f"{a.get('name')}: {t} {r}: {c.get('message') or ''}".rstrip())
    return out


def cmd_pending(args: argparse.Namespace) -> int:
    data = _call(args, "GET", "/proposals?pending=1")
    props: list[dict[str, Any]] = data.get("proposals", [])
    if args.output == "json":
        print(json.dumps(props, indent=2))
        return EXIT_OK
    if not props:
        print("no pending proposals")
        return EXIT_OK
    for p in props:
        agents = ",".join(p.get("agents", [])) or "-"
        print(
            f"proposal/{p['id']}  {p['kind']}  {agents}  {p['title']}  "
            f"({_ago(p.get('created_at'))} ago)"
        )
        if p.get("note"):
            print(f"  note: {p['note']}")
        if not args.no_diff and p.get("diff"):
            for line in p["diff"].rstrip("\n").splitlines():
                print(f"  {line}")
        print(
            f"  approve: hyperhive approve {p['id']}    "
            f"deny: hyperhive deny {p['id']} --note REASON"
        )
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    p = _call(args, "POST", f"/proposals/{seg(args.id)}/approve", {"note": args.note or ""})
    print(f"approved proposal/{p['id']} ({p['title']}); the controller deploys it now")
    return EXIT_OK


def cmd_deny(args: argparse.Namespace) -> int:
    p = _call(args, "POST", f"/proposals/{seg(args.id)}/deny", {"note": args.note})
    print(f"denied proposal/{p['id']} ({p['title']}): {args.note}")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    body = sys.stdin.read() if args.body == "-" else args.body
    r = _call(args, "POST", "/send", {"to": args.to, "body": body})
    print(f"sent message {r['id']} to {args.to}")
    return EXIT_OK


def _fmt_message(m: dict[str, Any]) -> str:
    from schemas.wire import Message

    msg = Message.from_json(m)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(msg.sent_at))
    tag = "" if msg.kind == "message" else f"[{msg.kind}] "
    body = msg.body.replace("\n", "\n    ")
    return f"{when}  {msg.sender} → {msg.recipient}  {tag}{body}"


def _messages_after(args: argparse.Namespace, since: int, limit: int) -> list[dict[str, Any]]:
    data = _call(args, "GET", f"/messages?since={since}&limit={limit}")
    msgs: list[dict[str, Any]] = data.get("messages", [])
    return msgs


def _last_message_id(args: argparse.Namespace) -> int:
    """The newest message's id (0: none), found with ``GET /messages?since=S&limit=1``.

    host.sock pages oldest first from ``since``, so the newest id is found by doubling
    ``since`` until nothing follows, then bisecting: about 2·log2(id) short requests.
    """
    if not _messages_after(args, 0, 1):
        return 0
    lo, hi = 0, 1  # some message is newer than lo; find hi with none newer
    while _messages_after(args, hi, 1):
        lo, hi = hi, min(hi * 2, ID_MAX)
        if hi == ID_MAX:
            break
    while hi - lo > 1:  # invariant: a message newer than lo, none newer than hi
        mid = (lo + hi) // 2
        if _messages_after(args, mid, 1):
            lo = mid
        else:
            hi = mid
    return hi


def _newest_messages(args: argparse.Namespace, n: int) -> list[dict[str, Any]]:
    """The newest ``n`` messages, oldest first (ids may have gaps: widen until ``n`` or all)."""
    last = _last_message_id(args)
    span = n
    while True:
        since = max(0, last - span)
        msgs = _messages_after(args, since, 1000)
        if len(msgs) >= n or since == 0 or len(msgs) == 1000:
            return msgs[-n:]
        span *= 4


def cmd_messages(args: argparse.Namespace) -> int:
    if args.since is not None:
        msgs = _messages_after(args, args.since, args.limit)
    else:
        msgs = _newest_messages(args, args.limit)
    if args.output == "json" and not args.follow:
        print(json.dumps(msgs, indent=2))
        return EXIT_OK
    for m in msgs:
        print(_fmt_message(m), flush=True)
    if not args.follow:
        if not msgs:
            print('no messages yet — try `hyperhive send manager "hello"`')
        return EXIT_OK
    from schemas.client import Unreachable

    last = int(msgs[-1]["id"]) if msgs else (args.since or _last_message_id(args))
    client = _client(args, timeout=3600)
    while True:
        try:
            for event, data_s in client.stream(f"/messages/stream?since={last}"):
                if event == "message":
                    m = json.loads(data_s)
                    last = max(last, int(m["id"]))
                    print(_fmt_message(m), flush=True)
        except (Unreachable, OSError):
            time.sleep(1.0)
        except KeyboardInterrupt:
            return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    from schemas.wire import parse_rfc3339

    r = _call(args, "POST", "/login", {})
    url = r.get("url")
    if not url:
        raise CliError("the controller did not say where its dashboard listens", EXIT_ERROR)
    print(url)
    until = time.strftime("%H:%M:%S", time.localtime(parse_rfc3339(r["expires_at"])))
    print(f"open it in your browser: it logs you in once, until {until}", file=sys.stderr)
    return EXIT_OK


def cmd_destroy(args: argparse.Namespace) -> int:
    r = _call(
        args, "POST", f"/agents/{seg(args.name)}/destroy", {"purge": bool(args.purge)}, timeout=3600
    )
    print(r.get("result", f"destroy {args.name} requested"))
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    r = _call(args, "POST", f"/tombstones/{seg(args.name)}/purge", {})
    print(r.get("result", f"purged {args.name}"))
    return EXIT_OK


_VERB_PATH = {"start": "start", "stop": "kill", "restart": "restart"}
"""CLI verb → the lifecycle verb host.sock names (``controller.ops.Lifecycle``)."""


def cmd_lifecycle(args: argparse.Namespace) -> int:
    verb = _VERB_PATH[args.verb]
    if args.all:
        if args.verb != "stop":
            raise CliError("--all only goes with stop", EXIT_ERROR)
        if args.name:
            raise CliError("give NAME or --all, not both", EXIT_ERROR)
        names = [str(a.get("name")) for a in _call(args, "GET", "/status").get("agents", [])]
    elif not args.name:
        raise CliError(f"which agent? `hyperhive {args.verb} NAME`", EXIT_ERROR)
    else:
        names = [args.name]
    failed = 0
    for name in names:
        try:
            r = _call(args, "POST", f"/agents/{seg(name)}/{verb}", {}, timeout=3600)
            print(f"{name}: {r.get('result', f'{args.verb} requested')}")
        except CliError as exc:
            if not args.all:
                raise
            failed += 1
            print(f"hyperhive stop: {name}: {exc}", file=sys.stderr)
    if args.all and not names:
        print("no agents to stop")
    return EXIT_FAIL if failed else EXIT_OK


def _size(n: Any) -> str:
    size = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def cmd_tombstones(args: argparse.Namespace) -> int:
    stones: list[dict[str, Any]] = _call(args, "GET", "/tombstones").get("tombstones", [])
    if args.output == "json":
        print(json.dumps(stones, indent=2))
        return EXIT_OK
    if not stones:
        print("no tombstones: no destroyed agent's state is kept")
        return EXIT_OK
    rows = [["ID", "AGENT", "DESTROYED", "SIZE", "PATH"]]
    for t in stones:
        where = str(t.get("path")) + (" (kept in place)" if t.get("in_place") else "")
        rows.append(
            [
                str(t.get("id")),
                str(t.get("name")),
                _when(t.get("destroyed_at")),
                _size(t.get("bytes")),
                where,
            ]
        )
    print(_table(rows))
    print(
        "spawning an agent of that name restores its newest tombstone; "
        "`hyperhive purge NAME|ID` deletes"
    )
    return EXIT_OK


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_since(text: str) -> float:
    """``30m`` / ``12h`` / ``7d`` → seconds. Raises ``argparse.ArgumentTypeError``."""
    unit = text[-1:]
    try:
        n = float(text[:-1]) if unit in _SINCE_UNITS else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes a duration like 30m, 12h or 7d, not {text!r}"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError("--since must not be negative")
    return n * _SINCE_UNITS.get(unit, 1)


def cmd_stats(args: argparse.Namespace) -> int:
    # turn stats live in each agent's state dir: read them directly (read-only), so
    # this works whether or not the controller is running
    from controller.stats import load_rows, render_stats, stats_json

    layout = _layout(args)
    since = time.time() - args.since if args.since is not None else None
    rows = load_rows(layout, [args.name] if args.name else None, since)
    if args.name and not rows and not layout.agent_state(args.name).is_dir():
        raise CliError(f"no agent {args.name!r} under {layout.state}")
    if args.output == "json":
        print(json.dumps(stats_json(rows, args.by), indent=2))
    else:
        print(render_stats(rows, args.by), end="")
    return EXIT_OK


def cmd_budget(args: argparse.Namespace) -> int:
    from controller.budget.render import render_budget

    if args.allow is not None or args.allow_tokens:
        if not args.name and not args.swarm:
            raise CliError("--allow needs an agent NAME, or --swarm for the swarm-wide budget")
        body: dict[str, Any] = {"usd": args.allow or 0.0}
        if args.allow_tokens:
            body["tokens"] = args.allow_tokens
        if args.note:
            body["note"] = args.note
        body.update({"swarm": True} if args.swarm else {"agent": args.name})
        answer = _call(args, "POST", "/budget/allow", body)
        return _emit(args, answer, f"extended: {answer.get('result')}\n")
    url = "/budget" + (f"?name={args.name}" if args.name else "")
    report = _call(args, "GET", url)
    return _emit(args, report, render_budget(report))


def _emit(args: argparse.Namespace, doc: Any, text: str) -> int:
    """Print ``doc`` as JSON with ``-o json``, else ``text`` (which ends its own lines)."""
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(text, end="")
    return EXIT_OK


def _add_budget_parser(sub: Any) -> None:
    bu = sub.add_parser(
        "budget",
        help="spend against budget per agent and UTC day; --allow grants an extension",
        description="Show each agent's spend in the current window (the UTC day) against "
        "spec.budget, and the swarm-wide budget of the controller config. An agent over "
        "budget is HELD: it takes no new turn and its messages wait in its inbox until the "
        "next UTC day or an extension. `--allow USD` grants a one-off extension for the "
        "current window (recorded, and sent to the manager and the operator as a "
        "BudgetExtended event). See docs/budgets.md.",
    )
    bu.add_argument("name", nargs="?", type=agent_name, help="only this agent")
    bu.add_argument("--allow", type=float, metavar="USD", help="extend today's dollar limit")
    bu.add_argument("--allow-tokens", type=int, default=0, metavar="N",
                    help="extend today's token limit")  # fmt: skip
    bu.add_argument("--swarm", action="store_true", help="extend the swarm-wide budget")
    bu.add_argument("--note", default="", help="why (kept with the grant)")
    bu.add_argument("-o", "--output", choices=["table", "json"], default="table")
    bu.set_defaults(fn=cmd_budget)


def cmd_kube_render(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config
    from controller.drivers.kubernetes.review import review_objects, to_yaml
    from controller.errors import HyperhiveError

    try:
        cfg = load_config(Path(args.config) if args.config else None)
        objects = review_objects(_layout(args), cfg, args.name, running=not args.stopped)
    except (ConfigError, HyperhiveError) as exc:
        raise CliError(str(exc), EXIT_ERROR) from exc
    print(to_yaml(objects), end="")
    return EXIT_OK


def _add_kube_render_parser(sub: Any) -> None:
    kr = sub.add_parser(
        "kube-render",
        help="print the Kubernetes objects the kubernetes runtime would apply for an agent",
        description="Render, from desired state at main in <state>/meta.git, every object "
        "the kubernetes runtime applies for NAME (PVC, Secret, ConfigMap, Service, "
        "NetworkPolicy, StatefulSet or Sandbox) as YAML, for review: no controller or "
        "cluster is contacted, and the Secret's credential is a placeholder (REDACTED). "
        "See docs/kubernetes.md.",
        epilog="examples:\n  hyperhive kube-render alice --config /etc/hyperhive/config.yaml"
        "\n  hyperhive kube-render alice | kubectl apply --dry-run=server -f -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kr.add_argument("name", type=agent_name, metavar="NAME", help="the agent (or manager)")
    kr.add_argument("--config", help="controller config file (its kubernetes: section)")
    kr.add_argument(
        "--stopped", action="store_true", help="render it stopped (scaled to zero / Suspended)"
    )
    kr.set_defaults(fn=cmd_kube_render)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for ``hyperhive``."""
    p = argparse.ArgumentParser(
        prog="hyperhive",
        description="Run and steer a swarm of Claude Code agents whose desired state "
        "is a git repo.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hyperhive {__version__}")
    p.add_argument(
        "--state-dir",
        help="state directory (default: $HYPERHIVE_STATE_DIR or $XDG_STATE_HOME/hyperhive)",
    )
    p.add_argument(
        "--run-dir", help="socket directory (default: $HYPERHIVE_RUN_DIR or <state>/run)"
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = sub.add_parser(
        "serve",
        help="run the controller: reconcile loop, broker, sockets, dashboard",
        description="Run the controller in the foreground (a systemd Type=notify service "
        "under NixOS). Creates <state>/meta.git on first start, starts the manager, "
        "serves the admin socket, the agent sockets and the dashboard, and reconciles "
        "on every git push, CLI request and resync tick.",
    )
    s.add_argument(
        "--config", help="controller config file (YAML or JSON; schemas/json/config.schema.json)"
    )
    s.add_argument(
        "--dashboard", metavar="HOST:PORT", help="dashboard bind address (default 127.0.0.1:7000)"
    )
    s.add_argument(
        "--reset-broker",
        action="store_true",
        help="start with an empty broker when <state>/broker.sqlite is missing, emptied or "
        "damaged although agents have run here (a damaged file is moved aside, never "
        "deleted); without it the controller refuses to start and says why",
    )
    s.set_defaults(fn=cmd_serve)

    r = sub.add_parser(
        "reconcile",
        help="run one reconcile pass (or --dry-run to print the plan)",
        description="Run one reconcile pass and exit non-zero if anything failed. With "
        "--dry-run, print the plan and change nothing: exit 0 in sync, 1 changes pending, "
        "2 error (like `flux diff`). Uses the running controller if there is one.",
    )
    r.add_argument("--dry-run", action="store_true", help="only print the plan")
    r.add_argument("--config", help="controller config file, when no controller is running")
    r.set_defaults(fn=cmd_reconcile)

    st = sub.add_parser(
        "status",
        help="agents, their state and conditions; or one agent in depth",
        description="Without NAME: a table of agents — STATE (the phase, or what matters "
        "more: Stalled / Reconciling reasons such as CrashLoopBackOff, RetryScheduled, or "
        "what the agent reports: ClaudeMissing, ApiOverloaded...), the deployed meta "
        "commit, the conditions at a glance (Ready, Reconciling, Stalled, UpToDate, "
        "LoggedIn, Degraded; + true, - false, ? unknown) and how long it has been in its "
        "phase; below it, one line per problem an agent reported, with the fix. With NAME: "
        "the agent described — every condition with its reason, message "
        "and age, the last deploys that touched it with their tags (proposal/approved/"
        "building/deployed|failed), crash and retry backoff, and its recent events.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  hyperhive status\n  hyperhive status alice\n"
        "  hyperhive status alice -o json | jq '.conditions'",
    )
    st.add_argument(
        "name", nargs="?", type=agent_name, help="describe this agent (GET /agents/NAME)"
    )
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.set_defaults(fn=cmd_status)

    pe = sub.add_parser("pending", help="proposals awaiting approval, with their diffs")
    pe.add_argument("-o", "--output", choices=["text", "json"], default="text")
    pe.add_argument("--no-diff", action="store_true", help="hide the diffs")
    pe.set_defaults(fn=cmd_pending)

    a = sub.add_parser("approve", help="approve proposal ID (same as pushing approved/ID)")
    a.add_argument("id", type=positive_id)
    a.add_argument("--note", default="", help="optional note kept with the approval")
    a.set_defaults(fn=cmd_approve)

    d = sub.add_parser("deny", help="deny proposal ID with a reason the manager gets")
    d.add_argument("id", type=positive_id)
    d.add_argument("--note", required=True, help="why; delivered to the manager")
    d.set_defaults(fn=cmd_deny)

    se = sub.add_parser("send", help="send a message to an agent as the operator")
    se.add_argument("to", type=agent_name, help="recipient: manager or an agent name")
    se.add_argument("body", help="message text, or - to read stdin")
    se.set_defaults(fn=cmd_send)

    m = sub.add_parser(
        "messages",
        help="the message flow between agents and the operator",
        description="Print the newest messages, oldest first (like `tail`); --since ID "
        "prints the ones after message ID instead, --follow keeps printing new ones.",
    )
    m.add_argument("--follow", "-f", action="store_true", help="keep printing new messages")
    m.add_argument(
        "--limit",
        type=count,
        default=200,
        metavar="N",
        help="how many: the newest N (default 200, at most 1000)",
    )
    m.add_argument(
        "--since",
        type=since_id,
        metavar="ID",
        help="the (first N) messages after message ID instead of the newest",
    )
    m.add_argument("-o", "--output", choices=["text", "json"], default="text")
    m.set_defaults(fn=cmd_messages)

    de = sub.add_parser(
        "destroy",
        help="remove an agent: a commit on main, then its container goes",
        description="Remove agents/NAME/ from main (a commit authored by the operator, "
        "exactly like `git rm -r agents/NAME && git push`) and run a reconcile pass: the "
        "agent's container or process is destroyed and the deploy is tagged "
        "deployed/<id>. Its state — notes, claude credentials and sessions, home, web "
        "port — is kept as a tombstone under <state>/tombstones/ (see `hyperhive "
        "tombstones`); spawning NAME again restores it. To stop an agent without "
        "destroying it, set spec.suspend: true in its manifest, or `kill` it.",
        epilog="examples:\n  hyperhive destroy alice\n  hyperhive destroy alice --purge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    de.add_argument("name", type=agent_name, help="the agent (never the manager)")
    de.add_argument(
        "--purge",
        action="store_true",
        help="also delete its state and credentials for good (no tombstone; no undo)",
    )
    de.set_defaults(fn=cmd_destroy)

    pu = sub.add_parser(
        "purge",
        help="delete a destroyed agent's kept state (its tombstones)",
        description="Delete what `destroy` kept of an agent: every tombstone of NAME, or "
        "the one tombstone ID (as `hyperhive tombstones` lists it) — notes, claude "
        "credentials and sessions, home, logs. There is no undo. Refused while the agent "
        "is still in desired state (use `hyperhive destroy NAME --purge`).",
    )
    pu.add_argument(
        "name", metavar="NAME|ID", type=name_or_tombstone, help="an agent name or a tombstone id"
    )
    pu.set_defaults(fn=cmd_purge)

    db = sub.add_parser(
        "dashboard",
        help="print a one-time login URL for the dashboard",
        description="Ask the running controller for a one-time dashboard login URL and print "
        "it. Opening it logs the browser in (an HttpOnly session cookie, valid 30 days); "
        "the URL itself works once, within 10 minutes. Needs the operator key "
        "(<state>/operator.key), like every verb.",
    )
    db.set_defaults(fn=cmd_dashboard)

    tb = sub.add_parser(
        "tombstones",
        help="destroyed agents whose state is kept",
        description="List the kept state of destroyed agents: id, agent, when it was "
        "destroyed, its size and where it is. Spawning an agent of the same name restores "
        "the newest one; `hyperhive purge` deletes them.",
    )
    tb.add_argument("-o", "--output", choices=["table", "json"], default="table")
    tb.set_defaults(fn=cmd_tombstones)

    sa = sub.add_parser(
        "stats",
        help="turn statistics: turns, outcomes, tokens, cost, durations",
        description="Summarise the harness's per-turn records (one row per claude turn: model, "
        "wake source, result, tokens, cost, tool calls) by agent, model or deployed meta "
        "commit, with p50/p95 turn durations. Reads the agents' state dirs directly, so it "
        "works with or without a running controller.",
    )
    sa.add_argument("name", nargs="?", type=agent_name, help="only this agent")
    sa.add_argument(
        "--by",
        choices=["agent", "model", "commit"],
        default="agent",
        help="how to group the turns (default: agent)",
    )
    sa.add_argument(
        "--since",
        type=_parse_since,
        metavar="DURATION",
        help="only turns started in the last DURATION (e.g. 30m, 12h, 7d)",
    )
    sa.add_argument("-o", "--output", choices=["table", "json"], default="table")
    sa.set_defaults(fn=cmd_stats)
    _add_budget_parser(sub)
    _add_kube_render_parser(sub)

    lifecycle_help = {
        "start": "start a stopped agent now (clears a hold)",
        "stop": "stop an agent now; it stays stopped until start, restart or its next deploy",
        "restart": "restart an agent now (clears a hold)",
    }
    for verb, text in lifecycle_help.items():
        lc = sub.add_parser(
            verb,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. The agent stays in desired state: "
            "this is not `destroy`. Stopping `hyperhive serve` alone leaves the agents "
            "running (the next serve adopts them); to stop everything run `hyperhive stop "
            "--all`, then stop serve.",
        )
        lc.add_argument(
            "name",
            nargs="?" if verb == "stop" else None,
            type=agent_name,
            metavar="NAME",
            help="the agent (manager included)",
        )
        if verb == "stop":
            lc.add_argument(
                "--all",
                action="store_true",
                help="stop every agent, the manager too (then stop serve: nothing keeps running)",
            )
        else:
            lc.set_defaults(all=False)
        lc.set_defaults(fn=cmd_lifecycle)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperhive`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except CliError as exc:
        print(f"hyperhive {args.verb}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`hyperhive status | head -1`): nothing more to say, and the
        # interpreter's own flush of stdout at exit must not fail again with a traceback
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a process killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
