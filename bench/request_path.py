"""The agent socket's per-request work around the broker call, run by hand:
``.venv/bin/python bench/request_path.py [--before REV]``.

What ``controller.api.fastpath.FastVerbs.respond`` does for every ``POST /send`` and
``POST /recv`` besides awaiting its handler, timed piece by piece with ``timeit`` (best of
``--repeat``; µs per call) on the current tree, each beside the general path it stands in
for, which is still in the code:

* credential: ``AgentCredentials.header_check(agent)(header)`` (one ``stat``, one
  constant-time compare of the raw header) against ``verify(agent, bearer_token(...))``;
* body: ``hivehttp.parse_json_object`` (msgspec first) against ``parse_with_stdlib``;
* schema: ``schemas.validate.checker(ref)`` against jsonschema alone (what the fast
  check spares);
* answer: ``fastpath._encode`` (a prebuilt C encoder) against
  ``json.JSONEncoder(ensure_ascii=False).encode`` (same bytes);

then the whole ``respond`` for both verbs with handlers that answer at once (a real
credential file, a ``/send`` and a ``/recv`` body and answer as the broker bench sends
them), on the current tree and on ``--before`` (default ``075f1ae``, the tree before this
path was trimmed; ``--no-before`` skips it), each in a child process of its own,
interleaved ``--rounds`` times. Ratios are now / before. The figures are the cost without
the rest of a server around them; ``bench/broker.py`` gives the server's CPU per
delivered message (send + recv), which they are a share of.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from http_server import extract  # the bench beside this one: git archive of a rev, unpacked

REPO = Path(__file__).resolve().parents[1]
BEFORE_REV = "075f1ae"
"""main before the fast route's per-request work was trimmed (issue 10)."""

SEND = json.dumps({"to": "bob", "body": "hello there " * 4, "idempotency_key": "k-123"}).encode()
RECV = b'{"wait_seconds": 30}'
STATUS = {"unread": 3, "open_threads": 1, "pending_reminders": 0, "dead_letters": 0}
SEND_ANSWER = {"id": 12345, "duplicate": False, "status": STATUS}
MESSAGE = {
    "id": 12345,
    "from": "alice",
    "to": "bob",
    "body": "hello there " * 4,
    "kind": "message",
    "thread": None,
    "event": None,
    "sent_at": "2026-12-08T03:40:01.123456Z",
    "delivered_at": "2026-12-08T03:40:01.123456Z",
    "acked_at": None,
}
RECV_ANSWER = {"message": MESSAGE, "status": STATUS}


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best of ``repeat`` runs of ``number`` calls, in µs per call."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def _drive(coro: Any) -> Any:
    """Run a coroutine that never waits (the stub handlers answer at once)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the coroutine waited")


def _call(fn: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
    return _drive(fn(body, headers, {}))


def _errors(validator: Any, doc: Any) -> list[Any]:
    return list(validator.iter_errors(doc))


def _reference(encode: Callable[[Any], str], doc: Any) -> bytes:
    return encode(doc).encode()


def _credentials(tmp: str) -> tuple[Any, str]:
    from controller.auth import AgentCredentials
    from controller.paths import Layout

    layout = Layout(state=Path(tmp) / "state", run=Path(tmp) / "run")
    creds = AgentCredentials(layout)
    return creds, creds.issue("alice")


def respond_us(number: int, repeat: int) -> dict[str, float]:
    """``respond`` for ``/send`` and ``/recv`` on whatever tree is first on ``sys.path``."""
    from controller.api.fastpath import BearerCheck, FastRoute, FastVerbs

    async def send(doc: dict[str, Any], call: Any) -> dict[str, Any]:
        return SEND_ANSWER

    async def recv(doc: dict[str, Any], call: Any) -> dict[str, Any]:
        return RECV_ANSWER

    with tempfile.TemporaryDirectory() as tmp:
        creds, token = _credentials(tmp)
        extra = [creds.header_check("alice")] if hasattr(creds, "header_check") else []
        check = BearerCheck(lambda t: creds.verify("alice", t), "refused", *extra)
        verbs = FastVerbs(
            None,
            check,
            {
                ("POST", "/send"): FastRoute("SendRequest", send),
                ("POST", "/recv"): FastRoute("RecvRequest", recv),
            },
        )
        auth = b"Bearer " + token.encode()
        out: dict[str, float] = {}
        for name, body in (("send", SEND), ("recv", RECV)):
            fn = verbs.fast_routes[(b"POST", b"/" + name.encode())]
            headers = [
                (b"host", b"localhost"),
                (b"content-type", b"application/json"),
                (b"authorization", auth),
                (b"content-length", b"%d" % len(body)),
            ]
            status = _call(fn, body, headers)[0]
            assert status == 200, status
            out[name] = best_us(partial(_call, fn, body, headers), number, repeat)
        return out


def pieces(number: int, repeat: int) -> list[tuple[str, float, float]]:
    """``(piece, µs now, µs of the general path)`` on the current tree."""
    from controller.api.fastpath import _encode
    from controller.auth import bearer_token
    from hivehttp.jsonbody import parse_json_object, parse_with_stdlib
    from schemas.validate import _validator, checker

    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        creds, token = _credentials(tmp)
        header = b"Bearer " + token.encode()
        check = creds.header_check("alice")
        rows.append(
            (
                "credential (stat + compare)",
                best_us(lambda: check(header), number, repeat),
                best_us(
                    lambda: creds.verify("alice", bearer_token(header.decode("latin-1"))),
                    number,
                    repeat,
                ),
            )
        )
    for name, body, ref in (("send", SEND, "SendRequest"), ("recv", RECV, "RecvRequest")):
        rows.append(
            (
                f"{name} body parse",
                best_us(partial(parse_json_object, body), number, repeat),
                best_us(partial(parse_with_stdlib, body), number, repeat),
            )
        )
        doc = parse_json_object(body)
        bound = checker(f"wire#{ref}")
        full = _validator(f"wire#{ref}")
        rows.append(
            (
                f"{name} schema check",
                best_us(partial(bound, doc), number, repeat),
                best_us(partial(_errors, full, doc), number // 10, repeat),
            )
        )
    reference = json.JSONEncoder(ensure_ascii=False).encode
    for name, answer in (("send", SEND_ANSWER), ("recv", RECV_ANSWER)):
        assert _encode(answer) == reference(answer).encode()
        rows.append(
            (
                f"{name} answer encode",
                best_us(partial(_encode, answer), number, repeat),
                best_us(partial(_reference, reference, answer), number, repeat),
            )
        )
    return rows


def child(tree: Path, number: int, repeat: int) -> dict[str, float]:
    """``respond_us`` in a fresh interpreter importing ``tree`` first."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(tree),
            "--number",
            str(number),
            "--repeat",
            str(repeat),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def main() -> int:
    """Print the pieces, then ``respond`` now and before, with ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", default=BEFORE_REV, help=f"the old revision (default {BEFORE_REV})")
    ap.add_argument("--no-before", action="store_true", help="measure the current tree only")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved respond rounds (3)")
    ap.add_argument("--number", type=int, default=50_000, help="calls per timing (50000)")
    ap.add_argument("--repeat", type=int, default=5, help="timings per figure, best kept (5)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(respond_us(args.number, args.repeat)))
        return 0
    sys.path.insert(0, str(REPO))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"load average {load}; µs per call, best of {args.repeat} x {args.number}")
    print(f"{'piece':32s} {'now':>8s} {'general':>8s} {'ratio':>6s}")
    for name, fig, general in pieces(args.number, args.repeat):
        print(f"{name:32s} {fig:8.2f} {general:8.2f} {fig / general:6.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"now": REPO}
        if not args.no_before:
            trees["before"] = extract(args.before, Path(tmp))
        runs: dict[str, list[float]] = {k: [] for k in trees}
        for _ in range(args.rounds):
            for side, tree in trees.items():
                got = child(tree, args.number, args.repeat)
                runs[side].append(got["send"] + got["recv"])
                print(
                    f"respond ({side:6s}) send {got['send']:6.2f}  recv {got['recv']:6.2f}  "
                    f"per message {got['send'] + got['recv']:6.2f} µs"
                )
    now = runs["now"]
    line = f"respond per message (send + recv): now {min(now):.2f}-{max(now):.2f} µs"
    if "before" in runs:
        before = runs["before"]
        line += (
            f", before ({args.before}) {min(before):.2f}-{max(before):.2f} µs, "
            f"now / before x{min(now) / min(before):.2f} (best of each)"
        )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
