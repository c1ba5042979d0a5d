"""The reconcile pass: decisions → observe → plan → execute → record.

1. decisions (ref work, docs/approvals.md): a ``building/<id>`` left without outcome
   by a crash is finished by this pass (never re-applied); every ``approved/<id>``
   without outcome is applied to main (fast-forward or merge) and gets
   ``building/<id>`` — a conflict gets ``failed/<id>`` instead, main untouched; every
   ``denied/<id>`` is reported to the manager exactly once; a main that moved with
   no deploy (an operator push) gets a new id + ``building/<id>``.
2. observe → crash watch → plan (``controller.plan``) → execute
   (``controller.swarm.execute``).
3. record: ``deployed/<id>`` when every agent a build touches converged, else
   ``failed/<id>`` with the errors; ``ApprovalResolved`` events to the manager;
   per-agent conditions to status.json; login / needs-update transitions.

A pass whose inputs did not move since a pass that planned nothing is skipped
(``SwarmCore.quiet_key``). ``dry_run`` plans without executing or writing anything;
ref work it would do is returned in ``PassResult.pending``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from controller.metarepo import ApplyFailed, Build
from controller.model import Action, DesiredState, ObservedAgent
from controller.ops import PassResult, ProposalKind
from controller.plan import agent_order, plan, plan_agent
from controller.swarm.core import SwarmCore
from controller.swarm.events import Events
from controller.swarm.execute import Executor
from controller.swarm.record import Recorder
from controller.swarm.watch import CrashWatch
from schemas.wire import rfc3339

log = logging.getLogger("hyperhive.swarm")


class Reconciler:
    """Runs reconcile passes over ``core`` (serialized by ``core.pass_lock``)."""

    def __init__(
        self,
        core: SwarmCore,
        events: Events,
        executor: Executor,
        watch: CrashWatch,
        recorder: Recorder,
    ) -> None:
        self.core = core
        self.events = events
        self.executor = executor
        self.watch = watch
        self.recorder = recorder
        self._quiet: tuple[Any, ...] | None = None  # the key of the last pass with no plan

    def reconcile(self, dry_run: bool = False) -> PassResult:
        """Run one pass now (serialized with other passes and lifecycle verbs).

        ``dry_run``: plan only; write nothing (no refs, no status, no processes);
        ref work that is due is listed in ``PassResult.pending``.
        """
        with self.core.pass_lock:
            if dry_run:
                return self._dry_run()
            return self.run_pass()

    def run_pass(self) -> PassResult:
        """One real pass; the caller holds ``core.pass_lock``."""
        with self.core.meta.pass_scope():
            return self._pass_scoped()

    def _dry_run(self) -> PassResult:
        pending: list[str] = []
        for b in self.core.meta.open_builds():
            pending.append(f"building/{b.id}: record the outcome of {b.title or b.commit[:12]}")
        for id in self.core.meta.approved_unapplied():
            pending.append(f"approved/{id}: apply proposal/{id} to main and deploy it")
        for d in self.core.meta.denied_unnotified():
            pending.append(f"denied/{d.id}: tell the manager")
        main, last = self.core.meta.main_commit(), self.core.meta.last_deploy()
        if main != last:
            pending.append(f"main {main[:12]}: not deployed yet (pushed); deploy it")
        desired, invalid = self.core.meta.desired_checked()
        observed = {n: o for n, o in self.core.view.observed().items() if n not in invalid}
        actions = plan(desired, observed, held=frozenset(self.core.holds))
        return PassResult(tuple(actions), (), True, tuple(pending))

    def _decisions(self, errors: list[str]) -> list[Build]:
        meta = self.core.meta
        builds: list[Build] = list(meta.open_builds())
        for b in builds:
            log.info("building/%d found without outcome: finishing it in this pass", b.id)
        # an operator push first, so it gets its own id before approvals merge onto it
        pushed = meta.record_push()
        if pushed is not None:
            builds.append(pushed)
        for id in meta.approved_unapplied():
            try:
                builds.append(meta.apply_approved(id))
            except ApplyFailed as exc:
                p = meta.proposal(id)
                meta.finish(id, False, f"not applied: {exc}")
                self.events.approval(id, p.kind.value, p.agents, "failed", f"not applied: {exc}")
                errors.append(f"proposal/{id}: {exc}")
        for d in meta.denied_unnotified():
            if self.events.approval(d.id, d.kind.value, d.agents, "denied", d.note):
                meta.mark_notified(d.id)
        return builds

    def _pass_scoped(self) -> PassResult:
        now = self.core.clock()
        errors: list[str] = []
        builds = self._decisions(errors)
        desired, invalid = self.core.meta.desired_checked()
        for b in builds:
            for name in list(self.core.holds):
                if b.touches(name):
                    del self.core.holds[name]
        # the view is fresh enough while the driver reports no change and the crash watch's
        # period has not run out (what it cannot report, the watch's own observe finds)
        recent = time.monotonic() - self.core.view.at < self.core.config.crash_watch_seconds
        observed = self.core.view.observed() if recent and not builds else self.core.view.observe()
        quiet = self.core.quiet_key(desired, invalid)
        if not builds and not errors and quiet == self._quiet:
            # nothing moved since a pass that planned nothing: it plans nothing again
            # (the plan is a function of desired, observed, invalid and holds, all in the key)
            errors += [f"{name}: {why}" for name, why in invalid.items()]
            self.core.last_pass = {"at": rfc3339(now), "plan": [], "errors": errors, "builds": []}
            return PassResult((), tuple(errors))
        self.watch.phases(desired, observed, now)
        plannable = {n: o for n, o in observed.items() if n not in invalid}
        actions = plan(desired, plannable, held=frozenset(self.core.holds))
        done = self.executor.execute_all(actions, desired, observed, now)
        for action in actions:
            outcome = done.get(action.agent, "")
            if outcome.startswith("error: "):
                errors.append(f"{action.agent}: {action.kind.value}: {outcome[7:]}")
        after = self.core.view.observe() if actions else observed
        for b in builds:
            self._finish_build(b, desired, invalid, after, actions, done)
        if builds:
            with contextlib.suppress(Exception):
                self.core.meta.sync_manager_clone()
        self.watch.follow(after)
        for name, why in invalid.items():
            errors.append(f"{name}: {why}")
        self.core.last_pass = {
            "at": rfc3339(now),
            "plan": [a.to_json() for a in actions],
            "errors": list(errors),
            "builds": [b.id for b in builds],
        }
        self.watch.flags(desired, after)
        self.recorder.record(desired, invalid, after, now)
        self._quiet = None if actions or builds else self.core.quiet_key(desired, invalid)
        return PassResult(tuple(actions), tuple(errors))

    def _finish_build(
        self,
        b: Build,
        desired: DesiredState,
        invalid: Mapping[str, str],
        after: Mapping[str, ObservedAgent],
        actions: list[Action],
        done: Mapping[str, str],
    ) -> None:
        names = sorted(
            {
                n
                for n in set(desired.agents) | set(after) | set(invalid) | set(b.agents)
                if b.touches(n)
            },
            key=agent_order,
        )
        problems: list[str] = []
        for name in names:
            if name in invalid:
                problems.append(f"{name}: {invalid[name]}")
                continue
            outcome = done.get(name, "")
            if outcome.startswith(("error: ", "skipped: ")):
                problems.append(f"{name}: {outcome.partition(': ')[2]}")
                continue
            left = plan_agent(
                desired.agents.get(name),
                after.get(name),
                desired.hyperhive_version,
                name in self.core.holds,
            )
            if left is not None:
                problems.append(f"{name}: still needs {left.kind.value} ({left.reason})")
        steps = [f"{a.agent}: {a.kind.value}" for a in actions if b.touches(a.agent)]
        what = "; ".join(steps) if steps else "no runtime change needed"
        title = b.title or b.commit[:12]
        subject = title if title.startswith(f"{b.kind.value} ") else f"{b.kind.value}: {title}"
        if problems:
            message = f"failed {b.commit[:12]} ({subject})\n\n" + "\n".join(problems)
            note = "; ".join(problems)
        else:
            message = f"deployed {b.commit[:12]} ({subject})\n\n{what}"
            note = what
        ok = not problems
        for name in names:  # each touched agent's own history says what this deploy did to it
            mine = [p.partition(": ")[2] for p in problems if p.startswith(f"{name}: ")]
            step = next((a.kind.value for a in actions if a.agent == name), "no runtime change")
            if mine:
                text = f"failed/{b.id} {b.commit[:12]} ({subject}): " + "; ".join(mine)
                self.events.record(name, "DeployFailed", text)
            elif ok:
                text = f"deployed/{b.id} {b.commit[:12]} ({subject}): {step}"
                self.events.record(name, "Deployed", text)
        agents = b.agents if not b.flake_changed else tuple(names)
        if b.base is not None or b.kind is not ProposalKind.PUSH:
            # (the bootstrap deploy of a new meta repo approves nothing: not announced)
            self.events.approval(b.id, b.kind.value, agents, "deployed" if ok else "failed", note)
        self.core.meta.finish(b.id, ok, message)
        log.info("%s/%d: %s", "deployed" if ok else "failed", b.id, note)
