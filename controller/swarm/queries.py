"""Read-only queries: status, agent rows, describe, tombstones, journal, agent config.

Served from the observed-state cache (``controller.swarm.observe``) and the cached
rows (``controller.swarm.rows``): an unchanged swarm costs no per-agent work.
``version()`` is the token the dashboard's ETag and ``status_json``'s cache key on.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from controller import tombstones
from controller.errors import Conflict, Invalid, NotFound
from controller.ops import ProposalState
from controller.swarm.core import (
    DEPLOYS_SHOWN,
    SwarmCore,
    check_name,
    desired_key,
)
from controller.swarm.rows import Rows
from schemas.names import MANAGER


class Queries:
    """The read side of ``SwarmOps`` over ``core``."""

    def __init__(self, core: SwarmCore, rows: Rows) -> None:
        self.core = core
        self.rows = rows
        self._tomb_cache: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        self._status_cache: tuple[tuple[Any, ...], bytes] | None = None
        # by form (True: status()'s, False: list_agents'): (rows, (counts, main), listed)
        self._listed_cache: dict[bool, tuple[list[dict[str, Any]], Any, list[dict[str, Any]]]] = {}

    def version(self) -> str:
        """A token that changes whenever ``status()`` / ``tombstones()`` may change: observed
        state, agent reports, desired state, holds, failures, crashes, events, the last pass
        and refs.

        Cheap (no process probing): the dashboard derives its ETag from it.
        """
        self.core.view.observed()
        desired, _ = self.core.meta.desired_checked()
        return ".".join(
            (
                str(self.core.view.rev),
                str(self.core.reports.rev),
                desired.commit,
                str(self.core.rev),
                str(hash(json.dumps(self.core.holds, sort_keys=True, default=str))),
                str(self.core.last_pass.get("at")),
                str(self.core.meta.last_deploy()),
                str(self.core.budget_rev()),
            )
        )

    def list_agents(self) -> list[dict[str, Any]]:
        """Per-agent rows (``AgentStatus.to_json``): name, phase, conditions, commit
        (deployed) / observed_commit / desired_commit, since, web_port, model, held,
        dead_letters. Shared while nothing they show changed: copy before changing one."""
        return self._listed(self.core.broker.dead_letter_counts(), None)

    def _listed(self, dead: Mapping[str, int], main: str | None) -> list[dict[str, Any]]:
        """The rows plus ``dead_letters``; with ``main``, each condition's ``observedCommit``
        left out where it equals ``main`` (the ``status()`` form). Reused while the rows
        (``Rows.docs``, the same list while unchanged), the counts and ``main`` are."""
        docs = self.rows.docs()
        counts = tuple(sorted(dead.items()))
        slot = main is not None
        cached = self._listed_cache.get(slot)
        if cached is not None and cached[0] is docs and cached[1] == (counts, main):
            return cached[2]
        listed = [_listed_row(doc, dead, main) for doc in docs]
        # holding ``docs`` keeps the identity test sound
        self._listed_cache[slot] = (docs, (counts, main), listed)
        return listed

    def agent_names(self) -> frozenset[str]:
        """Agents in desired state plus ``manager``: the valid recipients."""
        return frozenset(self.core.meta.desired().agents) | {MANAGER}

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        """``spec.allowedRecipients`` as deployed (settings.json), else as desired.

        Empty = anyone. A non-empty list always includes ``manager``.
        """
        path = self.core.layout.agent_settings(agent)
        allowed: tuple[str, ...] | None = None
        try:
            mtime = path.stat().st_mtime_ns
            cached = self.core.recipients.get(agent)
            if cached is not None and cached[0] == mtime:
                allowed = cached[1]
            else:
                doc = json.loads(path.read_text())
                allowed = tuple(str(x) for x in doc.get("allowed_recipients") or ())
                self.core.recipients[agent] = (mtime, allowed)
        except (OSError, ValueError, AttributeError):
            want = self.core.meta.desired().agents.get(agent)
            allowed = want.manifest.allowed_recipients if want else ()
        if allowed and MANAGER not in allowed:
            allowed = (*allowed, MANAGER)
        return allowed

    def describe(self, name: str) -> dict[str, Any]:
        """One agent: its ``list_agents`` row plus ``deploys`` (newest first), ``events``
        (oldest first, the last 20), ``failure`` and ``crash`` (backoff state) and
        ``tombstones`` (kept state of earlier incarnations). NotFound when the agent is
        neither desired nor observed."""
        check_name(name)
        desired, invalid = self.core.meta.desired_checked()
        observed = self.core.view.observed()
        rows = self.rows.rows(desired, invalid, observed, self.core.clock())
        row = next((r for r in rows if r.name == name), None)
        if row is None:
            hint = ""
            if tombstones.moved(self.core.layout, name):
                hint = "; it was destroyed and its state is kept (hyperhive tombstones)"
            raise NotFound(f"no agent {name!r}{hint}", field="name")
        doc = row.to_json()
        key = desired_key(desired.agents.get(name))
        fail = self.core.failures.get(name)
        crash = self.core.crashes.get(name)
        doc["failure"] = fail.failure.to_json() if fail is not None and fail.key == key else None
        doc["crash"] = crash.state.to_json() if crash is not None and crash.key == key else None
        doc["deploys"] = self.core.meta.deploys_for(name, DEPLOYS_SHOWN)
        doc["events"] = [dict(e) for e in self.core.recent_events.get(name, ())]
        doc["tombstones"] = [
            {"id": p.name, "destroyed_at": info["destroyed_at"], "path": str(p)}
            for _, p, info in tombstones.moved(self.core.layout, name)
        ]
        return doc

    def tombstones(self) -> list[dict[str, Any]]:
        """Destroyed agents whose state is kept, oldest first: ``{"name", "id",
        "destroyed_at", "bytes", "path", "commit", "in_place"}``."""
        desired, invalid = self.core.meta.desired_checked()
        live = frozenset(desired.agents) | frozenset(invalid) | frozenset(self.core.view.observed())
        stamps = []
        for d in (self.core.layout.tombstones, self.core.layout.state / "agents"):
            try:
                st = d.stat()
                stamps.append((st.st_ino, st.st_mtime_ns))
            except OSError:
                stamps.append((0, 0))
        key = (live, *stamps)
        cached = self._tomb_cache
        if cached is not None and cached[0] == key:
            return [dict(t) for t in cached[1]]
        listing = tombstones.listing(self.core.layout, live)
        # a dir changed within the last tick may change again with the same mtime: no cache
        if all(time.time_ns() - m > 50_000_000 for _, m in stamps):
            self._tomb_cache = (key, listing)
        return [dict(t) for t in listing]

    def journal(self, name: str, unit: str | None = None, lines: int = 200) -> str:
        """The agent runtime's recent log lines (``driver.journal``): the container journal
        under nixos-container, the tail of ``<state>/logs/<a>.log`` under local.

        Invalid (name, unit, lines outside 1..5000), NotFound (unknown agent).
        """
        check_name(name)
        if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= 5000:
            raise Invalid("lines must be between 1 and 5000", field="lines")
        desired, invalid = self.core.meta.desired_checked()
        if (
            name not in desired.agents
            and name not in invalid
            and name not in self.core.view.observed()
        ):
            raise NotFound(f"no agent {name!r}", field="name")
        reader = getattr(self.core.driver, "journal", None)
        if not callable(reader):
            raise Conflict(f"the {self.core.driver.name} runtime keeps no journal")
        text = reader(name, unit, lines)
        return str(text)

    def agent_config(self, name: str) -> dict[str, Any]:
        """What ``name`` is deployed from: ``{"name", "commit" (deployed, else desired),
        "desired_commit", "manifest" (agent.yaml text), "agent_nix" (text or None),
        "settings" (the rendered settings.json, or None)}``. NotFound for an unknown agent."""
        check_name(name)
        desired, invalid = self.core.meta.desired_checked()
        have = self.core.view.observed().get(name)
        want = desired.agents.get(name)
        if want is None and have is None and name not in invalid:
            raise NotFound(f"no agent {name!r}", field="name")
        commit = (have.commit if have is not None else None) or desired.commit
        try:
            manifest, nix = self.core.meta.agent_files(commit, name)
        except NotFound:
            commit = desired.commit
            manifest, nix = self.core.meta.agent_files(commit, name)
        settings: Any = None
        with contextlib.suppress(OSError, ValueError):
            settings = json.loads(self.core.layout.agent_settings(name).read_text())
        return {
            "name": name,
            "commit": commit,
            "desired_commit": want.commit if want is not None else None,
            "manifest": manifest,
            "agent_nix": nix,
            "settings": settings,
        }

    def status_json(self) -> bytes:
        """``status()`` as compact JSON (UTF-8), encoded again only when ``version()``, the
        pending count or a dead-letter count moved: an unchanged swarm costs no per-agent
        work (host.sock ``/status``)."""
        dead = self.core.broker.dead_letter_counts()
        pending = len(self.core.meta.ids_by_state()[ProposalState.PENDING])
        key = (self.version(), pending, tuple(sorted(dead.items())))
        cached = self._status_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        doc = self._status(pending, dead)
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        self._status_cache = (key, body)
        return body

    def status(self) -> dict[str, Any]:
        """``{"agents": [rows], "pending": n, "main", "last_deploy", "runtime", "runtime_note",
        "last_pass": {"at", "plan", "errors", "builds"}, "holds", "version"}``.

        The rows are ``list_agents``' but for one thing: a condition's ``observedCommit``
        is left out where it equals ``main`` (it nearly always does; 22 % of a row). Rows
        are shared while unchanged: copy before changing one."""
        pending = len(self.core.meta.ids_by_state()[ProposalState.PENDING])
        return self._status(pending, self.core.broker.dead_letter_counts())

    def _status(self, pending: int, dead: Mapping[str, int]) -> dict[str, Any]:
        main = self.core.meta.main_commit()
        note = ""
        if not getattr(self.core.driver, "builds_nix", True):
            note = str(
                getattr(self.core.driver, "runtime_note", "")
                or "local runtime: agents are processes on this host; agent.nix is not built"
            )
        return {
            "agents": self._listed(dead, main),
            "pending": pending,
            "main": main,
            "last_deploy": self.core.meta.last_deploy(),
            "runtime": self.core.driver.name,
            "runtime_note": note,
            "last_pass": dict(self.core.last_pass),
            "holds": {k: dict(v) for k, v in self.core.holds.items()},
            "version": self.core.meta.version,
        }


def _listed_row(
    doc: Mapping[str, Any], dead: Mapping[str, int], main: str | None
) -> dict[str, Any]:
    """``doc`` plus ``dead_letters``; with ``main``, ``observedCommit`` left out of each
    condition where it equals ``main`` (a reader takes the document's ``main`` for it)."""
    row = {**doc, "dead_letters": dead.get(str(doc.get("name")), 0)}
    if main is not None:
        row["conditions"] = [
            {k: v for k, v in c.items() if k != "observedCommit"}
            if c.get("observedCommit") == main
            else c
            for c in doc.get("conditions", ())
        ]
    return row
