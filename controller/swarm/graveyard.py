"""Tombstones: a destroyed agent's state kept (or purged), restored when it is spawned again.

``bury`` runs after a destroy (the broker's open threads with the agent are closed,
its failure and crash records dropped, its state moved under ``<state>/tombstones``
by ``controller.tombstones`` — or deleted when a purge was asked for); ``restore``
runs before a create; ``purge_dirs`` deletes kept state (and, once nothing of the
agent is left, its logs and recent events).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from controller import tombstones
from controller.swarm.core import SwarmCore
from controller.swarm.events import Events

log = logging.getLogger("hyperhive.swarm")


class Graveyard:
    """Keeps, restores and purges destroyed agents' state for ``core``."""

    def __init__(self, core: SwarmCore, events: Events) -> None:
        self.core = core
        self.events = events

    def bury(self, name: str, commit: str | None, main: str) -> None:
        """After a destroy: keep the agent's state as a tombstone, or delete it (purge)."""
        self.core.forget_caches(name)
        # peers waiting on an answer from a gone agent would wait forever
        try:
            self.core.broker.close_threads(name, f"{name} was destroyed")
        except Exception:
            log.exception("%s: could not close its open threads", name)
        self.core.failures.pop(name, None)
        self.core.crashes.pop(name, None)
        self.core.rev += 1
        if name in self.core.purging:
            self.core.purging.discard(name)
            self.purge_dirs(name, [self.core.layout.agent_dir(name)])
            return
        try:
            path = tombstones.bury(
                self.core.layout, name, self.core.clock(), {"commit": commit, "main": main}
            )
        except OSError as exc:
            log.error(
                "%s: could not move its state to %s: %s", name, self.core.layout.tombstones, exc
            )
            self.events.record(name, "TombstoneFailed", f"state kept in place: {exc}")
            return
        if path is not None:
            self.events.record(name, "Tombstoned", f"state kept in {path}")
            log.info("%s: state kept as tombstone %s", name, path)

    def restore(self, name: str) -> None:
        """Before a create: bring back the newest tombstone of ``name`` (notes, login, port)."""
        try:
            src = tombstones.restore(self.core.layout, name)
        except OSError as exc:
            log.error("%s: could not restore its tombstone: %s", name, exc)
            return
        if src is not None:
            self.core.forget_caches(name)
            self.events.record(name, "Restored", f"state restored from tombstone {src.name}")
            log.info("%s: restored state from tombstone %s", name, src)

    def purge_dirs(self, name: str, paths: list[Path]) -> int:
        """Delete ``paths`` (kept state of ``name``); returns the bytes freed."""
        freed = 0
        for p in paths:
            freed += tombstones.dir_bytes(p)
            try:
                tombstones.remove(p)
            except FileNotFoundError:
                continue
        if (
            not tombstones.moved(self.core.layout, name)
            and not self.core.layout.agent_dir(name).exists()
        ):
            for log_file in (
                self.core.layout.log_dir / f"{name}.log",
                self.core.layout.log_dir / f"{name}.log.1",
                self.core.layout.log_dir / f"{name}.build.log",
            ):
                with contextlib.suppress(FileNotFoundError):
                    log_file.unlink()
            self.core.recent_events.pop(name, None)
            # a runtime that keeps state of its own (kubernetes: the agent's PVC) drops it too
            drop = getattr(self.core.driver, "purge", None)
            if callable(drop):
                try:
                    drop(name)
                except Exception as exc:
                    log.error("%s: could not purge its runtime state: %s", name, exc)
                    self.events.record(name, "PurgeFailed", f"runtime state kept: {exc}")
        self.core.forget_caches(name)
        self.core.rev += 1
        log.info("%s: purged %d path(s), %d bytes", name, len(paths), freed)
        return freed

    def paths(self, name: str) -> list[Path]:
        """Every kept state dir of ``name``: its tombstones and a state dir left in place."""
        paths = [p for _, p, _ in tombstones.moved(self.core.layout, name)]
        agent_dir = self.core.layout.agent_dir(name)
        if agent_dir.is_dir():
            paths.append(agent_dir)
        return paths
