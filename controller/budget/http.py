"""The budget verbs over HTTP, for host.sock (the CLI) and the dashboard (the browser).

One falcon.asgi resource serves both apps (each app's own auth runs first: the
operator key on host.sock, the login session on the dashboard):

==============================  ===========================  ======================================
``GET  <prefix>``               ``?name=`` (optional)        ``Budgets.report()`` JSON
``POST <prefix>/allow``         admin#BudgetAllowRequest     ``{"result": str, "standing": {...}}``
==============================  ===========================  ======================================

host.sock serves it at ``/budget``, the dashboard at ``/api/budget``; a controller built
without budgets answers ``{"enabled": false, "agents": [], "swarm": null}`` (the page then
hides its panel). A bad body is a 400
naming the field (``usd``, ``tokens``, ``agent``, ``swarm``); an agent without a budget
or a swarm without one is a 400 naming ``agent`` / ``swarm``; an unknown ``name`` a 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import falcon
import falcon.asgi

from controller.budget.core import SWARM, BudgetError
from controller.budget.service import Budgets
from controller.errors import Invalid, NotFound
from schemas.validate import validate

Reader = Callable[[falcon.asgi.Request], Awaitable[dict[str, Any]]]


class BudgetResource:
    """``GET`` the report, ``POST …/allow`` an extension (see the module doc). ``read(req)``
    is the app's own JSON body reader; ``by`` names who grants (the audit trail)."""

    def __init__(self, budgets: Budgets | None, read: Reader, by: str = "operator") -> None:
        self.budgets = budgets
        self.read = read
        self.by = by

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The report: every agent, or ``?name=``; ``{"enabled": false, ...}`` without budgets."""
        if self.budgets is None:
            resp.media = {"enabled": False, "agents": [], "swarm": None}
            return
        name = req.get_param("name") or None
        if name is not None:
            known = await asyncio.to_thread(self.budgets.names)
            if name not in known:
                raise NotFound(
                    f"no agent named {name!r} (known: {', '.join(sorted(known)) or 'none'})",
                    "name",
                )
        resp.media = {"enabled": True, **await asyncio.to_thread(self.budgets.report, name)}

    async def on_post_allow(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Grant a one-off extension for the current window."""
        if self.budgets is None:
            raise NotFound("this controller keeps no budgets")
        doc = await self.read(req)
        validate(doc, "admin#BudgetAllowRequest")
        swarm = bool(doc.get("swarm", False))
        agent = doc.get("agent")
        if swarm == (agent is not None):
            raise Invalid("name exactly one of agent and swarm", "agent")
        scope = SWARM if swarm else str(agent)
        try:
            standing = await asyncio.to_thread(
                self.budgets.allow,
                scope,
                doc["usd"],
                doc.get("tokens", 0),
                by=self.by,
                note=str(doc.get("note", "")),
            )
        except BudgetError as exc:
            field = {"name": "agent", "scope": "swarm"}.get(exc.field, exc.field)
            raise Invalid(str(exc), field) from exc
        resp.media = {"result": standing.message(), "standing": standing.to_json()}


def add_budget_routes(
    app: Any, budgets: Budgets | None, read: Reader, prefix: str, by: str
) -> None:
    """Serve ``GET prefix`` and ``POST prefix/allow`` on ``app`` (a falcon.asgi App); with
    ``budgets`` None the report says ``"enabled": false`` and ``allow`` is a 404."""
    res = BudgetResource(budgets, read, by)
    app.add_route(prefix, res)
    app.add_route(f"{prefix}/allow", res, suffix="allow")
