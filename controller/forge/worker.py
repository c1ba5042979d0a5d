"""The forge worker: one thread that keeps every agent's forge side in step.

Level-triggered like the reconcile loop: every ``poll_seconds`` (and at once after a
deploy) it looks at the desired agents and

- provisions an agent whose token file is missing (a deploy while the forge was down),
  and clears the watches of an agent deployed in a new version meanwhile;
- pumps each agent's unread notifications into its inbox (``HiveForge.pump``);
- revokes the token of an agent it provisioned that is gone for good: not desired, no
  state dir and no tombstone (``hyperhive purge`` / ``destroy --purge``).

A forge that is down or refuses is logged and retried on the next tick; nothing here
stops the controller. ``on_deploy(agent)`` runs in the pass (before the agent's harness
starts, so ``tea`` finds its token at boot), with the client's short timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

from controller import tombstones
from controller.forge.hive import HiveForge, safe
from controller.model import DesiredState
from schemas.names import MANAGER

log = logging.getLogger("controller.forge")


class ForgeWorker:
    """Runs ``HiveForge`` for the swarm: ``on_deploy`` hook, ``tick()``, ``run(stop)``."""

    def __init__(
        self,
        hive: HiveForge,
        desired: Callable[[], DesiredState],
        poll_seconds: float = 15.0,
    ) -> None:
        self.hive = hive
        self.desired = desired
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._down = False  # the last tick found the forge not answering

    def on_deploy(self, agent: str) -> None:
        """Before ``agent`` (re)starts: its user and token, and a redeploy clears its
        watches unless ``spec.forge.keepSubscriptions``. Never raises; a forge that does
        not answer within 3 s is left to the next tick (the deploy goes on)."""
        self._wake.set()
        if not self.hive.client.alive():
            log.warning("forge: %s: the forge is not answering; provisioning later", agent)
            return
        if safe(f"{agent}: provisioning", lambda: self.hive.ensure(agent)) is not None:
            self._versions(agent)

    def _versions(self, agent: str, desired: DesiredState | None = None) -> None:
        want = (desired or self.desired()).agents.get(agent)
        if want is not None:
            version = f"{want.config_digest}:{want.build_digest}"
            safe(f"{agent}: repo watches",
                 lambda: self.hive.deployed(agent, version, want.manifest.forge))  # fmt: skip

    def _gone(self, agent: str) -> bool:
        layout = self.hive.layout
        return not layout.agent_dir(agent).exists() and not tombstones.moved(layout, agent)

    def tick(self) -> None:
        """One round: provision what lacks a token, pump notifications, revoke the purged.
        A forge that does not answer is logged once (and once when it is back)."""
        if not self.hive.client.alive():
            if not self._down:
                log.warning("forge: %s is not answering; retrying every %.0f s",
                            self.hive.client.base_url, self.poll_seconds)  # fmt: skip
            self._down = True
            return
        if self._down:
            log.info("forge: %s answers again", self.hive.client.base_url)
        self._down = False
        desired = self.desired()
        for agent in sorted(desired.agents, key=lambda n: (n != MANAGER, n)):
            if not self.hive.layout.agent_dir(agent).exists():
                continue  # not deployed yet: on_deploy provisions it
            missing = self.hive.read_token(agent) is None
            if missing and safe(f"{agent}: provisioning", partial(self.hive.ensure, agent)) is None:
                continue
            # a deploy the forge missed (it was down) catches up here
            self._versions(agent, desired)
            spec = desired.agents[agent].manifest.forge
            got = safe(f"{agent}: notifications", partial(self.hive.pump, agent, spec))
            if got is not None and (got.delivered or got.skipped):
                log.info("forge: %s: %d notification(s) delivered, %d skipped",
                         agent, got.delivered, got.skipped)  # fmt: skip
        for agent in sorted(set(self.hive.known()) - set(desired.agents)):
            if self._gone(agent):
                safe(f"{agent}: revoking", partial(self.hive.revoke, agent))

    def run(self, stop: threading.Event) -> None:
        """``tick()`` every ``poll_seconds`` (sooner after a deploy) until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("forge: tick failed; trying again")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if stop.is_set():
                return

    def start(self, stop: threading.Event) -> threading.Thread:
        """``run(stop)`` on a daemon thread; returns it."""
        t = threading.Thread(target=self.run, args=(stop,), name="forge", daemon=True)
        t.start()
        return t

    def poke(self) -> None:
        """Run the next tick now (also wakes ``run`` so a ``stop`` is seen at once)."""
        self._wake.set()
