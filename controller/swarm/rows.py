"""Status rows: one ``AgentStatus`` per agent from desired + observed state and the
bookkeeping (holds, failures, crashes, login, ports), with conditions merged over
the previous ones (``controller.status``).

A row whose inputs did not change is reused, and so is its JSON (a no-op pass or a
repeated ``status`` costs no per-agent work). Whether an agent is logged in is read
from its claude dir, re-read only when that dir or claude's settings.json changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.model import DesiredState, ObservedAgent, Phase
from controller.plan import agent_order, plan_agent
from controller.status import (
    AgentFacts,
    AgentStatus,
    compute_conditions,
    driver_isolation,
    env_drift,
    merge_conditions,
)
from controller.swarm.core import HOLD_REASON, WEB_PORT_FILE, SwarmCore, desired_key
from controller.swarm.reports import passed_env
from schemas.names import MANAGER

# environment variables that authenticate the claude CLI (docs/claude-cli.md)
CREDENTIAL_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")


class Rows:
    """Builds and caches the per-agent status rows over ``core``."""

    def __init__(self, core: SwarmCore) -> None:
        self.core = core
        self._rows_lock = threading.RLock()
        self._row_cache: dict[str, tuple[tuple[Any, ...], AgentStatus]] = {}
        self._list_cache: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        self._json_rows: dict[str, tuple[AgentStatus, dict[str, Any]]] = {}
        self._login_cache: dict[str, tuple[tuple[int, ...], tuple[bool | None, str]]] = {}
        self._claude_dirs: dict[str, str] = {}
        # what the driver passes through now (fixed for its lifetime): compared with reports
        self._passed = passed_env(core.driver)

    def logged_in(self, agent: str) -> tuple[bool | None, str]:
        """Whether ``agent`` has claude credentials, and how; re-read only when its claude
        dir or claude's settings.json changed (two ``stat`` calls otherwise). A runtime
        whose agents keep their login out of the controller's sight answers for itself
        (its driver's ``login_state``: the kubernetes runtime)."""
        probe = getattr(self.core.driver, "login_state", None)
        if callable(probe):
            state: tuple[bool | None, str] = probe(agent)
            return state
        claude = self._claude_dirs.get(agent)
        if claude is None:
            claude = self._claude_dirs[agent] = str(self.core.layout.agent_claude(agent))
        key: list[int] = []
        for path in (claude, f"{claude}/settings.json"):
            try:
                st = os.stat(path)
                key += (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                key += (0, 0, 0)
        cached = self._login_cache.get(agent)
        if cached is not None and cached[0] == tuple(key):
            return cached[1]
        found = self._read_login(Path(claude))
        # a change within the last tick may be followed by another with the same mtime
        if all(time.time_ns() - m > 50_000_000 for m in key[1::3]):
            self._login_cache[agent] = (tuple(key), found)
        else:
            self._login_cache.pop(agent, None)
        return found

    def _read_login(self, claude: Path) -> tuple[bool | None, str]:
        if (claude / ".credentials.json").exists():
            return True, "claude credentials present"
        # a key or token pasted in the agent UI lands in the env block of claude's own
        # settings.json, which the CLI reads before the process environment (docs/turn-loop.md)
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((claude / "settings.json").read_text())
            if isinstance(doc, dict):
                env_block = doc.get("env")
                if isinstance(env_block, dict) and any(env_block.get(k) for k in CREDENTIAL_VARS):
                    return True, "API key or token stored in the agent's claude settings"
                if doc.get("apiKeyHelper"):
                    return True, "apiKeyHelper set in the agent's claude settings"
        env = getattr(self.core.driver, "env", None)
        if isinstance(env, Mapping) and any(env.get(k) for k in CREDENTIAL_VARS):
            return True, "API key or token passed through from the controller's environment"
        return False, "no claude credentials; log in from the agent's web UI"

    def port_of(self, agent: str) -> int | None:
        """The agent's web UI port from its ``web-port`` file (cached), None before it has one."""
        if agent not in self.core.ports:
            port = None
            with contextlib.suppress(OSError, ValueError):
                port = int((self.core.layout.agent_dir(agent) / WEB_PORT_FILE).read_text().strip())
            self.core.ports[agent] = port
        return self.core.ports[agent]

    def rows(
        self,
        desired: DesiredState,
        invalid: Mapping[str, str],
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> list[AgentStatus]:
        """Status rows; a row whose inputs did not change is reused (a no-op pass is cheap)."""
        with self._rows_lock:
            return self._rows_locked(desired, invalid, observed, now)

    def _rows_locked(
        self,
        desired: DesiredState,
        invalid: Mapping[str, str],
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> list[AgentStatus]:
        builds_nix = bool(getattr(self.core.driver, "builds_nix", True))
        names = sorted(set(desired.agents) | set(observed) | set(invalid), key=agent_order)
        rows: list[AgentStatus] = []
        for name in names:
            want = desired.agents.get(name)
            have = observed.get(name)
            raw_hold = self.core.holds.get(name)
            hold = dict(raw_hold) if raw_hold is not None else None
            key_ = desired_key(want)
            fail = self.core.failures.get(name)
            failure = fail.failure if fail is not None and fail.key == key_ else None
            c = self.core.crashes.get(name)
            crash = c.state if c is not None and c.key == key_ else None
            login = self.logged_in(name)
            port = self.port_of(name)
            isolation = driver_isolation(self.core.driver, name)
            report = self.core.reports.get(name)
            drift = env_drift(report, self._passed)
            budget = self.core.budget_hold(name)
            key = (
                want,
                have,
                hold,
                failure,
                crash,
                invalid.get(name),
                login,
                port,
                builds_nix,
                desired.commit,
                isolation,
                report,
                drift,
                budget,
            )
            cached = self._row_cache.get(name)
            if cached is not None and cached[0] == key:
                rows.append(cached[1])
                continue
            pending = None
            if name not in invalid:
                pending = plan_agent(want, have, desired.hyperhive_version, hold is not None)
            facts = AgentFacts(
                name=name,
                desired=want,
                observed=have,
                pending=pending,
                failure=failure,
                held=hold is not None,
                invalid=invalid.get(name),
                builds_nix=builds_nix,
                runtime=self.core.driver.name,
                logged_in=login[0],
                login_reason=login[1],
                crash=crash,
                version=desired.hyperhive_version,
                isolation=isolation,
                report=report if have is not None and have.phase is Phase.RUNNING else None,
                env_drift=drift,
                budget_hold=budget,
            )
            previous = cached[1].conditions if cached else self.core.conditions.get(name, ())
            conditions = merge_conditions(previous, compute_conditions(facts), now, desired.commit)
            extra: dict[str, Any] = {
                "flavor": "manager" if name == MANAGER else "agent",
                "commit": have.commit if have else None,
                "since": have.since if have else None,
                "hyperhive_version": have.hyperhive_version if have else None,
            }
            if crash is not None:
                extra["crashes"] = len(crash.times)
            if report is not None and have is not None and have.phase is Phase.RUNNING:
                extra["harness"] = report.to_json()
            if drift:
                extra["env_stale"] = list(drift)
            row = AgentStatus(
                name=name,
                phase=(have.phase if have else Phase.ABSENT).value,
                conditions=conditions,
                observed_commit=have.commit if have else None,
                desired_commit=want.commit if want else None,
                held=hold.get("reason", HOLD_REASON) if hold is not None else None,
                web_port=port,
                model=want.manifest.model if want else None,
                suspended=bool(want and want.manifest.suspend),
                detail=have.detail if have else "",
                extra=extra,
            )
            self._row_cache[name] = (key, row)
            rows.append(row)
        for gone in set(self._row_cache) - set(names):
            del self._row_cache[gone]
        return rows

    def docs(self) -> list[dict[str, Any]]:
        """``AgentStatus.to_json`` of every row, reused while nothing they show changed
        (observed and desired state, holds, failures, crashes, events). Shared: copy before
        changing one."""
        desired, invalid = self.core.meta.desired_checked()
        observed = self.core.view.observed()
        key = (
            self.core.view.rev,
            self.core.reports.rev,
            desired.commit,
            id(desired),
            self.core.rev,
            json.dumps(self.core.holds, sort_keys=True, default=str),
        )
        with self._rows_lock:
            cached = self._list_cache
            if cached is not None and cached[0] == key:
                return cached[1]
            docs = self._json_locked(self.rows(desired, invalid, observed, self.core.clock()))
            self._list_cache = (key, docs)
            return docs

    def json_of(self, rows: list[AgentStatus]) -> list[dict[str, Any]]:
        """``AgentStatus.to_json`` of each of ``rows``, reused for a row that is the very
        object encoded last time (a row is rebuilt only when an input changed): status.json
        and ``docs`` share the encoding. Shared: copy before changing one."""
        with self._rows_lock:
            return self._json_locked(rows)

    def _json_locked(self, rows: list[AgentStatus]) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        json_rows: dict[str, tuple[AgentStatus, dict[str, Any]]] = {}
        for r in rows:
            prev = self._json_rows.get(r.name)
            doc = prev[1] if prev is not None and prev[0] is r else r.to_json()
            json_rows[r.name] = (r, doc)
            docs.append(doc)
        self._json_rows = json_rows
        return docs
