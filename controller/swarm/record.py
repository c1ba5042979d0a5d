"""Recording: the end-of-pass bookkeeping and ``<state>/status.json``.

After a pass, ``record`` drops holds, failures and crashes of agents that are gone,
expires old crash records, and writes every agent's row (conditions) plus holds,
failures, crashes, recent events and purge intents to status.json — only when
something in it changed. ``save_now`` writes the bookkeeping at once (a verb that
must survive a crash before the next pass), rows as last saved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from controller.model import DesiredState, ObservedAgent
from controller.status import STATUS_VERSION, AgentStatus, save_status
from controller.swarm.core import SwarmCore
from controller.swarm.rows import Rows
from schemas.wire import rfc3339

log = logging.getLogger("hyperhive.swarm")


class Recorder:
    """Writes status.json for ``core`` from the rows ``rows`` builds."""

    def __init__(self, core: SwarmCore, rows: Rows) -> None:
        self.core = core
        self.rows = rows
        self._saved: tuple[Any, ...] | None = None
        self._recorded: tuple[Any, ...] | None = None  # what the last ``record`` saw

    def record(
        self,
        desired: DesiredState,
        invalid: Mapping[str, str],
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> None:
        """End-of-pass bookkeeping; status.json rewritten when a row or a record moved."""
        live = set(desired.agents) | set(invalid) | set(observed)
        self.core.holds = {k: v for k, v in self.core.holds.items() if k in desired.agents}
        if self.core.purging & set(desired.agents):
            # back in desired state before it was destroyed: the purge intent is void
            self.core.purging -= set(desired.agents)
            self.core.rev += 1
        for table in (self.core.failures, self.core.crashes):
            for name in [n for n in table if n not in live]:
                del table[name]
                self.core.rev += 1
        for name, c in list(self.core.crashes.items()):
            if c.state.expired(now):
                del self.core.crashes[name]
                self.core.rev += 1
        # nothing a row shows moved since the last record (a no-op pass): skip the rows
        key = self.core.quiet_key(desired, invalid)
        if key == self._recorded and self._saved is not None:
            return
        rows = self.rows.rows(desired, invalid, observed, now)
        self.core.conditions = {r.name: r.conditions for r in rows}
        self._save(rows, desired.commit, now)
        self._recorded = key

    def _extra_doc(self) -> dict[str, Any]:
        """The bookkeeping part of status.json (failures, crashes, events, purge)."""
        return {
            "failures": {
                n: {**f.failure.to_json(), "key": list(f.key)}
                for n, f in sorted(self.core.failures.items())
            },
            "crashes": {
                n: {**c.state.to_json(), "key": list(c.key)}
                for n, c in sorted(self.core.crashes.items())
            },
            "events": {
                n: list(rows) for n, rows in sorted(self.core.recent_events.items()) if rows
            },
            "purge": sorted(self.core.purging),
        }

    def _save(self, rows: list[AgentStatus], main: str, now: float) -> None:
        """Write status.json unless nothing changed since the last write."""
        holds = json.dumps(self.core.holds, sort_keys=True)
        fingerprint = (tuple(id(r) for r in rows), main, holds, self.core.rev)
        if fingerprint == self._saved:
            return
        doc: dict[str, Any] = {
            "version": STATUS_VERSION,
            "main": main,
            "runtime": self.core.driver.name,
            "agents": {r.name: doc for r, doc in zip(rows, self.rows.json_of(rows), strict=True)},
            "holds": json.loads(holds),
            **self._extra_doc(),
        }
        if {k: v for k, v in self.core.status_doc.items() if k != "updated_at"} == doc:
            self._saved = fingerprint
            self.core.rev_saved = self.core.rev
            return
        doc["updated_at"] = rfc3339(now)
        try:
            save_status(self.core.layout.status_file, doc)
        except OSError:
            log.exception("could not write %s", self.core.layout.status_file)
            return
        self.core.status_doc = doc
        self._saved = fingerprint
        self.core.rev_saved = self.core.rev

    def save_now(self) -> None:
        """Write holds, failures, crashes, events and purge intents now (rows as last saved)."""
        doc = dict(self.core.status_doc)
        doc["holds"] = self.core.holds
        doc.update(self._extra_doc())
        doc["updated_at"] = rfc3339(self.core.clock())
        try:
            save_status(self.core.layout.status_file, doc)
        except OSError:
            log.exception("could not write %s", self.core.layout.status_file)
            return
        # the rows are the ones saved last (JSON already, kept as they are); the rest is
        # copied through JSON, not shared (holds change in place)
        kept = {k: v for k, v in doc.items() if k == "agents"}
        rest = {k: v for k, v in doc.items() if k != "agents"}
        self.core.status_doc = {**json.loads(json.dumps(rest)), **kept}
        self._saved = None
        self.core.rev_saved = self.core.rev
