"""The post-receive poke: ``POST /poke`` on host.sock so the controller runs a pass now.

Sent with the operator key (``<state>/operator.key``) as its bearer
credential. When the controller is down, or the key cannot be read (a pusher
who is not the operator), it says so and exits 0: the push already happened,
and the next pass picks the change up.

Why ``controller.unixhttp`` rather than ``schemas.client``: the poke runs after
every push and the controller starts its pass only when the poke arrives, so
the hook's start-up time is on the approval path; ``http.client`` (with the
email parser it imports) would cost more than the request.
"""

from __future__ import annotations

from typing import TextIO

from controller.auth.operator import load_operator_key
from controller.auth.secretfile import CredentialError
from controller.hooks.updates import MANAGER_PREFIX, parse_updates
from controller.paths import Layout
from controller.unixhttp import BadAnswer, request

TIMEOUT = 5.0
"""Seconds for connecting, sending and reading the answer."""
MAX_ANSWER = 64 * 1024
"""Bytes of answer read at most (the poke's answer is ``{"accepted": true}``)."""


def _refusal(status: int, message: str) -> str:
    return f"the operator key was refused: {message}" if status == 401 else message


def post_receive(layout: Layout, stdin: TextIO, stderr: TextIO) -> int:
    """Poke the controller (``POST /poke``); always 0 — the push already happened."""
    updates = parse_updates(stdin.read().splitlines())
    refs = ", ".join(u.ref.removeprefix("refs/tags/").removeprefix("refs/heads/") for u in updates)
    if updates and all(u.ref.startswith(MANAGER_PREFIX) for u in updates):
        # the manager's hand-over of a commit: desired state did not move, no pass to ask for
        print(f"hyperhive: received {refs}; propose it with request_apply_commit", file=stderr)
        return 0
    not_running = (
        f"hyperhive: received {refs}; the controller is not running — it acts on this "
        "when it starts"
    )
    try:
        key = load_operator_key(layout)
    except CredentialError as exc:
        if not layout.host_sock.exists():
            print(not_running, file=stderr)
        else:
            print(
                f"hyperhive: received {refs}; could not poke the controller: {exc.message}; "
                "it acts on this at its next pass",
                file=stderr,
            )
        return 0
    try:
        answer = request(
            layout.host_sock,
            "POST",
            "/poke",
            token=key,
            body={},
            timeout=TIMEOUT,
            max_answer=MAX_ANSWER,
        )
    except (FileNotFoundError, ConnectionRefusedError):
        print(not_running, file=stderr)
        return 0
    except (OSError, BadAnswer) as exc:
        print(f"hyperhive: received {refs}; could not poke the controller: {exc}", file=stderr)
        return 0
    if answer.status >= 300:
        why = _refusal(answer.status, answer.error()[1])
        print(f"hyperhive: received {refs}; could not poke the controller: {why}", file=stderr)
        return 0
    print(
        f"hyperhive: received {refs}; the controller is reconciling "
        "(git fetch --tags to see deployed/<id> or failed/<id>)",
        file=stderr,
    )
    return 0
