"""The crash and flag watch: what changed between passes, and what it means.

``tick`` (called by the serve loop every few seconds, never waiting for a running
pass) observes; an agent that was running and is now stopped or failed, with no
transition of ours under way, crashed: the manager gets a ``ContainerCrash``
(coalesced while unread) and the agent is restarted at once, then with exponential
backoff (``controller.status.crash_backoff``); after ``CRASH_LIMIT`` crashes in
``CRASH_WINDOW`` it is Stalled (CrashLoopBackOff). ``flags`` fires ``NeedsLogin`` /
``LoggedIn`` / ``NeedsUpdate`` on transitions only; the first pass after a start
seeds every agent's state silently. Every phase an agent moves to, on purpose or not, is
a ``PhaseChanged`` event in its recent events (``follow``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from controller.metrics.events import EVENTS
from controller.model import DesiredAgent, DesiredState, ObservedAgent, Phase
from controller.plan import plan
from controller.status import CRASH_WINDOW, CrashState
from controller.swarm.core import CrashRecord, SwarmCore, desired_key
from controller.swarm.events import Events
from controller.swarm.execute import Executor
from controller.swarm.record import Recorder
from controller.swarm.rows import Rows
from schemas.wire import EventType

log = logging.getLogger("hyperhive.swarm")


class CrashWatch:
    """Crash detection and login / update transitions over ``core``."""

    def __init__(
        self,
        core: SwarmCore,
        events: Events,
        rows: Rows,
        executor: Executor,
        recorder: Recorder,
    ) -> None:
        self.core = core
        self.events = events
        self.rows = rows
        self.executor = executor
        self.recorder = recorder

    def tick(self) -> list[str]:
        """One crash-watch tick between passes: observe, report crashes and transitions.

        Never waits for a running pass (it returns ``[]`` at once: a pass is a
        transition under way). Requests a pass when an agent crashed or when an
        action is due (a backoff ran out); returns the reasons it requested one.
        Before the first pass has seeded the watch, does nothing.
        """
        if not self.core.pass_lock.acquire(blocking=False):
            return []
        try:
            if self.core.seen_phase is None:
                return []
            now = self.core.clock()
            desired, invalid = self.core.meta.desired_checked()
            observed = self.core.view.observe()
            reasons = [f"crash: {n}" for n in self.phases(desired, observed, now)]
            self.flags(desired, observed)
            if not reasons:
                plannable = {n: o for n, o in observed.items() if n not in invalid}
                for a in plan(desired, plannable, held=frozenset(self.core.holds)):
                    if self.executor.gate(a, desired, now) is None:
                        reasons.append(f"due: {a.agent} {a.kind.value}")
                        break
            if self.core.rev != self.core.rev_saved:
                self.recorder.save_now()
            rotate = getattr(self.core.driver, "rotate_logs", None)
            if callable(rotate):
                try:
                    rotate()
                except OSError:
                    log.exception("log rotation failed")
            for r in reasons:
                self.core.requests.request(r)
            return reasons
        finally:
            self.core.pass_lock.release()

    def follow(self, observed: Mapping[str, ObservedAgent], only: str | None = None) -> None:
        """The watch's view follows ``observed`` (only agent ``only``, when given), with a
        ``PhaseChanged`` event for every agent whose phase moved since it was last seen
        (none while the first pass seeds the view)."""
        seen = self.core.seen_phase
        now = {n: o for n, o in observed.items() if only is None or n == only}
        if seen is None:
            if only is None:
                self.core.seen_phase = {n: o.phase for n, o in now.items()}
            return
        names = set(now) | ({only} & set(seen) if only is not None else set(seen))
        for name in sorted(names):
            before = seen.get(name, Phase.ABSENT)
            o = now.get(name)
            after = o.phase if o is not None else Phase.ABSENT
            if after is before:
                continue
            why = f": {o.detail}" if o is not None and o.detail and after is Phase.FAILED else ""
            self.events.record(name, "PhaseChanged", f"{before.value} → {after.value}{why}")
        if only is None:
            self.core.seen_phase = {n: o.phase for n, o in now.items()}
        elif only in now:
            seen[only] = now[only].phase
        else:
            seen.pop(only, None)

    def phases(
        self, desired: DesiredState, observed: Mapping[str, ObservedAgent], now: float
    ) -> list[str]:
        """Crash detection: running before, stopped/failed now, not on purpose. Returns names."""
        seen = self.core.seen_phase
        self.follow(observed)
        if seen is None:
            return []  # the first pass only seeds: no events for what happened before we ran
        crashed: list[str] = []
        for name, o in observed.items():
            if seen.get(name) is not Phase.RUNNING or o.phase not in (Phase.STOPPED, Phase.FAILED):
                continue
            want = desired.agents.get(name)
            if want is None or want.manifest.suspend or name in self.core.holds:
                continue
            self._on_crash(name, want, o, now)
            crashed.append(name)
        return crashed

    def _on_crash(self, name: str, want: DesiredAgent, o: ObservedAgent, now: float) -> None:
        key = desired_key(want)
        prev = self.core.crashes.get(name)
        state = prev.state if prev is not None and prev.key == key else CrashState()
        state = state.crashed(now)
        self.core.crashes[name] = CrashRecord(state, key)
        self.core.rev += 1
        EVENTS.crashed(name)  # hyperhive_agent_crash_restarts_total (controller.metrics)
        n = len(state.times)
        what = o.detail or f"{o.phase.value} without being asked to"
        minutes = int(CRASH_WINDOW // 60)
        if state.stalled:
            note = (
                f"{what}; crashed {n} times in {minutes} minutes: not restarted any more "
                "(Stalled, CrashLoopBackOff) until it is started by request or its desired "
                "state changes"
            )
            key_ = f"crashloop:{name}:{int(state.times[0])}"
            self.events.record(name, "CrashLoopBackOff", note)
            log.error("%s: crash loop: %s", name, note)
        else:
            wait = max(0.0, (state.restart_at or now) - now)
            when = "restarting now" if wait <= 0 else f"restarting in {int(wait)} s"
            note = f"{what}; {when} (crash {n} in {minutes} minutes)"
            key_ = f"crash:{name}"
            self.events.record(name, "Crashed", note)
            log.warning("%s: crashed: %s", name, note)
        self.events.emit(
            {"type": EventType.CONTAINER_CRASH.value, "agent": name, "restarts": n, "note": note},
            key_,
        )

    def flags(self, desired: DesiredState, observed: Mapping[str, ObservedAgent]) -> None:
        """``NeedsLogin`` / ``LoggedIn`` / ``NeedsUpdate`` on transitions (seeded on first use).

        Only deployed agents count. A newly deployed agent that is not logged in
        gets ``NeedsLogin`` (one that existed at start-up was seeded silently);
        ``NeedsUpdate`` fires when an up-to-date agent becomes stale and stays so
        after the pass (suspended, held, a failing rebuild) — a successful rebuild
        is announced by ``Rebuilt`` instead.
        """
        login: dict[str, bool] = {}
        stale: dict[str, bool] = {}
        for name, want in desired.agents.items():
            o = observed.get(name)
            if o is None or o.phase is Phase.ABSENT:
                continue
            report = self.core.reports.get(name) if o.phase is Phase.RUNNING else None
            known = self.core.seen_login
            if report is not None:  # what the agent says it has beats the controller's reading
                login[name] = report.credentials and not report.credentials_rejected
            elif self.core.reports.awaited(name) and known is not None and name in known:
                login[name] = known[name]  # a new harness has not reported yet: no flapping
            else:
                login[name] = bool(self.rows.logged_in(name)[0])
            stale[name] = o.build_digest != want.build_digest or (
                o.hyperhive_version is not None and o.hyperhive_version != desired.hyperhive_version
            )
        prev_login, prev_stale = self.core.seen_login, self.core.seen_stale
        self.core.seen_login, self.core.seen_stale = login, stale
        if prev_login is None or prev_stale is None:
            return
        for name, ok in login.items():
            before = prev_login.get(name)
            if ok and before is False:
                self.events.record(name, "LoggedIn", "claude credentials appeared")
                self.events.emit(
                    {"type": EventType.LOGGED_IN.value, "agent": name}, f"login:{name}:in"
                )
            elif not ok and before is not False:
                why = "claude credentials are gone" if before else "deployed without credentials"
                self.events.record(name, "NeedsLogin", f"{why}; log in from the agent's web UI")
                self.events.emit(
                    {"type": EventType.NEEDS_LOGIN.value, "agent": name}, f"login:{name}:needs"
                )
        for name, st in stale.items():
            if st and prev_stale.get(name) is False:
                o = observed[name]
                if o.hyperhive_version and o.hyperhive_version != desired.hyperhive_version:
                    note = f"hyperhive {o.hyperhive_version} → {desired.hyperhive_version}"
                else:
                    note = "agent.nix or the flake changed; it needs a rebuild"
                self.events.record(name, "NeedsUpdate", note)
                self.events.emit(
                    {"type": EventType.NEEDS_UPDATE.value, "agent": name, "note": note},
                    f"update:{name}:{desired.agents[name].build_digest}",
                )
