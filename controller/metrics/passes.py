"""One reconcile pass, observed: its counters, its duration and its span.

``Swarm.reconcile`` runs every pass that writes (the serve loop's, ``POST /reconcile``'s,
``hyperhive reconcile``'s) through :func:`observed_pass`. What asked for it is
:data:`PASS_REASON`, which the serve loop sets to the request's reason around its call;
anything else (``POST /reconcile`` from the CLI or the dashboard) is ``request``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable

from controller.metrics.events import EVENTS, trigger_of
from controller.metrics.tracing import TRACING
from controller.ops import PassResult

PASS_REASON: contextvars.ContextVar[str] = contextvars.ContextVar(
    "hyperhive_pass_reason", default="request"
)
"""Why the pass running in this context was asked for (free text, ``trigger_of`` bounds it)."""


def actions_of(result: PassResult) -> list[tuple[str, str]]:
    """``(kind, "ok" | "error")`` of each action of ``result`` (an error names its action as
    ``<agent>: <kind>: <why>``)."""
    failed = {":".join(e.split(": ", 2)[:2]) for e in result.errors if e.count(": ") >= 2}
    return [
        (a.kind.value, "error" if f"{a.agent}:{a.kind.value}" in failed else "ok")
        for a in result.plan
    ]


def observed_pass(run: Callable[[], PassResult]) -> PassResult:
    """``run()`` (one pass), counted in ``hyperhive_reconcile_*`` and traced as a
    ``reconcile`` span; what it raises is counted as ``crashed`` and raised again."""
    reason = PASS_REASON.get()
    t0 = time.monotonic()
    try:
        with TRACING.pass_span(trigger_of(reason), reason) as traced:
            result = run()
            traced(len(result.plan), len(result.errors))
    except BaseException:
        EVENTS.pass_done(reason, time.monotonic() - t0, crashed=True)
        raise
    EVENTS.pass_done(reason, time.monotonic() - t0, actions_of(result), len(result.errors))
    return result
