"""Verbs that change agents now: start / kill / restart / update, destroy and purge.

Each runs under ``core.pass_lock`` (a transition of ours: the crash watch skips it).
``kill`` records a hold ("stopped by request") in status.json so the next pass does
not start the agent again; ``start``, ``restart``, ``update`` and the next deploy
touching the agent clear it (and any crash-loop or failure backoff). ``destroy``
removes the agent from main and runs a pass (its state becomes a tombstone);
``purge`` deletes kept state.
"""

from __future__ import annotations

import contextlib
import logging

from controller import tombstones
from controller.errors import Conflict, Invalid, NotFound, PermanentError, TransientError
from controller.model import DesiredAgent, ObservedAgent, Phase
from controller.ops import Lifecycle
from controller.swarm.core import HOLD_REASON, SwarmCore, check_name, size
from controller.swarm.events import Events
from controller.swarm.execute import Executor
from controller.swarm.graveyard import Graveyard
from controller.swarm.reconcile import Reconciler
from controller.swarm.record import Recorder
from controller.swarm.watch import CrashWatch
from schemas.names import MANAGER, is_agent_name

log = logging.getLogger("hyperhive.swarm")


class Verbs:
    """The lifecycle, destroy and purge verbs over ``core``."""

    def __init__(
        self,
        core: SwarmCore,
        events: Events,
        recorder: Recorder,
        executor: Executor,
        graveyard: Graveyard,
        reconciler: Reconciler,
        watch: CrashWatch,
    ) -> None:
        self.core = core
        self.events = events
        self.recorder = recorder
        self.executor = executor
        self.graveyard = graveyard
        self.reconciler = reconciler
        self.watch = watch

    def lifecycle(self, verb: Lifecycle, name: str) -> str:
        """start / kill / restart / update one agent now; a one-line outcome.

        NotFound for an unknown agent; Conflict when the agent's state forbids it
        (suspended in its manifest, not deployed yet) or the runtime failed.
        Start, restart and update clear a hold, a crash loop and a failure backoff.
        """
        with self.core.pass_lock:
            desired, _ = self.core.meta.desired_checked()
            observed = self.core.view.observe()
            want = desired.agents.get(name)
            have = observed.get(name)
            if want is None and have is None:
                raise NotFound(f"no agent {name!r}")
            try:
                return self._lifecycle(verb, name, want, have)
            except PermanentError as exc:
                raise Conflict(f"{verb.value} {name} failed: {exc.message}") from exc
            except TransientError as exc:
                raise Conflict(f"{verb.value} {name} failed (try again): {exc.message}") from exc
            finally:
                self._note_phase(name)

    def _note_phase(self, name: str) -> None:
        """After a verb changed an agent on purpose: the crash watch's view follows it (and
        records the phase change)."""
        if self.core.seen_phase is None:
            return
        with contextlib.suppress(Exception):
            self.watch.follow(self.core.view.observe(), only=name)

    def _lifecycle(
        self,
        verb: Lifecycle,
        name: str,
        want: DesiredAgent | None,
        have: ObservedAgent | None,
    ) -> str:
        deployed = have is not None and have.phase is not Phase.ABSENT
        # every verb stops or replaces the process: its report goes with it
        self.core.reports.forget(name)
        if verb is Lifecycle.KILL:
            self.core.holds[name] = {"reason": HOLD_REASON, "since": self.core.clock()}
            self.events.record(name, "Stopped", "stopped by request (kill)")
            self.recorder.save_now()
            self.core.driver.stop(name)
            return f"{name} stopped; it stays stopped until start, restart or its next deploy"
        if want is None:
            raise Conflict(f"{name} is being removed (not in desired state)")
        if want.manifest.suspend:
            raise Conflict(
                f"{name} is suspended by spec.suspend in agents/{name}/agent.yaml; "
                "propose a change to resume it"
            )
        self.core.holds.pop(name, None)
        self.core.failures.pop(name, None)
        self.core.crashes.pop(name, None)
        self.events.record(name, "Requested", f"{verb.value} by request")
        self.recorder.save_now()
        if not deployed:
            self.core.requests.request(f"{verb.value} {name}")
            return f"{name} is not deployed yet; a reconcile pass was requested"
        self.core.on_deploy(name)
        if verb is Lifecycle.START:
            self.core.driver.start(name)
            return f"{name} running"
        if verb is Lifecycle.RESTART:
            self.core.driver.restart(name)
            return f"{name} restarted"
        d = self.executor.deployment(want, existing=True)
        self.core.driver.rebuild(d, lambda line: log.info("[%s] %s", name, line))
        return f"{name} updated to {want.commit[:12]} and restarted"

    def destroy(self, name: str, purge: bool = False) -> str:
        """Remove ``agents/<name>/`` from main (a commit by the operator) and run a pass.

        The pass destroys the runtime and keeps the agent's state as a tombstone
        (``purge``: deletes it). An agent already gone from main but still running
        is just reconciled; one that is entirely gone but has tombstones is purged
        when ``purge``. Invalid for the manager or a bad name; NotFound otherwise.
        """
        check_name(name)
        if name == MANAGER:
            raise Invalid("the manager cannot be destroyed", field="name")
        with self.core.pass_lock:
            desired, invalid = self.core.meta.desired_checked()
            at_main = name in desired.agents or name in invalid
            running = name in self.core.view.observe()
            if not at_main and not running:
                if purge and self.graveyard.paths(name):
                    return self._purge_locked(name)
                raise NotFound(f"no agent {name!r} in desired state or running", field="name")
            if purge:
                self.core.purging.add(name)
                self.core.rev += 1
            commit = None
            if at_main:
                what = "destroy" + (" --purge" if purge else "")
                commit = self.core.meta.remove_agent(name, f"{what} {name}")
            self.recorder.save_now()
            result = self.reconciler.run_pass()
            if name in self.core.view.observe():
                errs = "; ".join(e for e in result.errors if e.startswith(f"{name}:"))
                return (
                    f"{name} removed from main"
                    + (f" ({commit[:12]})" if commit else "")
                    + f" but not destroyed yet: {errs or 'see hyperhive status ' + name}; "
                    "the next passes retry"
                )
            builds = self.core.last_pass.get("builds") or []
            tag = f" (deployed/{builds[-1]})" if builds else ""
            if purge:
                return f"{name} destroyed{tag}; its state and credentials were deleted"
            kept = tombstones.moved(self.core.layout, name)
            where = f" in {kept[-1][1]}" if kept else ""
            return (
                f"{name} destroyed{tag}; its state is kept{where} — spawning {name} again "
                f"restores it, `hyperhive purge {name}` deletes it"
            )

    def purge(self, name: str) -> str:
        """Delete the kept state of a destroyed agent: every tombstone of ``name`` (an agent
        name), or the one tombstone ``name`` (a tombstone id ``<agent>-<unix>``).

        Invalid for a bad name or the manager; Conflict while the agent is in desired state
        or still running; NotFound when nothing is kept.
        """
        m = tombstones.TOMBSTONE_ID_RE.match(name)
        agent = m.group(1) if m and not is_agent_name(name) else name
        check_name(agent)
        if agent == MANAGER:
            raise Invalid("the manager's state is never a tombstone", field="name")
        with self.core.pass_lock:
            desired, invalid = self.core.meta.desired_checked()
            if agent in desired.agents or agent in invalid:
                raise Conflict(
                    f"{agent} is in desired state (agents/{agent}/ at main); "
                    f"`hyperhive destroy {agent} --purge` removes and purges it",
                    field="name",
                )
            if agent in self.core.view.observe():
                raise Conflict(
                    f"{agent} is still being destroyed; try again after the next pass",
                    field="name",
                )
            if agent != name:
                path = self.core.layout.tombstones / name
                if not path.is_dir():
                    raise NotFound(f"no tombstone {name!r}", field="name")
                freed = self.graveyard.purge_dirs(agent, [path])
                self.recorder.save_now()
                return f"purged tombstone {name} ({size(freed)})"
            return self._purge_locked(agent)

    def _purge_locked(self, name: str) -> str:
        paths = self.graveyard.paths(name)
        if not paths:
            raise NotFound(f"nothing is kept for {name!r}", field="name")
        freed = self.graveyard.purge_dirs(name, paths)
        self.core.purging.discard(name)
        self.recorder.save_now()
        return f"purged {name}: {len(paths)} tombstone(s), {size(freed)} deleted"
