"""Where everything lives on the host (DESIGN.md "Host layout").

``<state>`` is ``/var/lib/hyperhive`` under the NixOS module, else
``$XDG_STATE_HOME/hyperhive`` (``~/.local/state/hyperhive``); ``<run>`` is
``/run/hyperhive`` under the module, else ``<state>/run``. Unix socket paths
are limited to 107 bytes (sun_path), so keep ``<run>`` short.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas.names import MANAGER


def default_state_dir() -> Path:
    """``$HYPERHIVE_STATE_DIR``, else ``$XDG_STATE_HOME/hyperhive``, else ``~/.local/state/...``."""
    if env := os.environ.get("HYPERHIVE_STATE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "hyperhive"


@dataclass(frozen=True)
class Layout:
    """Every host path hyperhive uses, derived from the state and run dirs."""

    state: Path
    run: Path

    @classmethod
    def for_state(cls, state: Path, run: Path | None = None) -> Layout:
        """Layout for ``state``; ``run`` defaults to ``$HYPERHIVE_RUN_DIR`` or ``<state>/run``."""
        if run is None:
            env = os.environ.get("HYPERHIVE_RUN_DIR")
            run = Path(env) if env else state / "run"
        return cls(state.absolute(), run.absolute())

    @property
    def meta_git(self) -> Path:
        """The bare meta repo: desired state as refs."""
        return self.state / "meta.git"

    @property
    def broker_db(self) -> Path:
        """sqlite: messages, operator questions."""
        return self.state / "broker.sqlite"

    @property
    def status_file(self) -> Path:
        """Per-agent conditions, written after every reconcile pass."""
        return self.state / "status.json"

    @property
    def lock_file(self) -> Path:
        """flock'd by the running controller so a second one refuses to start."""
        return self.state / "controller.lock"

    @property
    def log_dir(self) -> Path:
        """Controller-side logs (build output, harness stdout under the local runtime)."""
        return self.state / "logs"

    @property
    def host_sock(self) -> Path:
        """Operator admin API."""
        return self.run / "host.sock"

    @property
    def manager_sock(self) -> Path:
        """The manager's API (agent verbs + privileged verbs)."""
        return self.run / "manager" / "mcp.sock"

    @property
    def manager_meta(self) -> Path:
        """The manager's working clone of the meta repo (it commits proposals there)."""
        return self.state / "manager" / "meta"

    def agent_dir(self, agent: str) -> Path:
        """``<state>/agents/<agent>/``: everything durable about one agent."""
        return self.state / "agents" / agent

    def agent_state(self, agent: str) -> Path:
        """Durable notes, event log, turn stats → ``/state`` in the container; the harness's cwd."""
        return self.agent_dir(agent) / "state"

    def agent_claude(self, agent: str) -> Path:
        """Claude credentials + sessions → ``/root/.claude`` (CLAUDE_CONFIG_DIR)."""
        return self.agent_dir(agent) / "claude"

    def agent_settings(self, agent: str) -> Path:
        """The manifest rendered at deploy time; read-only inside the container."""
        return self.agent_dir(agent) / "settings.json"

    def agent_sock_dir(self, agent: str) -> Path:
        """Socket dir bound to ``/run/hive`` in the container."""
        return self.run / "manager" if agent == MANAGER else self.run / "agents" / agent

    def agent_sock(self, agent: str) -> Path:
        """One agent's API socket; its path is the agent's identity."""
        return self.agent_sock_dir(agent) / "mcp.sock"

    def agent_credential(self, agent: str) -> Path:
        """The agent's broker credential (mode 0600): made at deploy, rotated on recreate.

        Only this agent's sandbox sees it (``/etc/hyperhive/credential`` in a container);
        the harness sends it as ``Authorization: Bearer`` on every broker request.
        """
        return self.agent_dir(agent) / "credential"

    def agent_web_sock(self, agent: str) -> Path:
        """The agent web UI's unix socket; only the controller's dashboard proxy connects."""
        return self.agent_sock_dir(agent) / "web.sock"

    @property
    def operator_key(self) -> Path:
        """The operator's secret (mode 0600), made on first start: host.sock bearer, sessions."""
        return self.state / "operator.key"

    @property
    def metrics_token(self) -> Path:
        """The /metrics scrape bearer (0600), made on first start without ``metrics.token_file``."""
        return self.state / "metrics.token"

    @property
    def tombstones(self) -> Path:
        """Where destroyed agents' state is kept until purged."""
        return self.state / "tombstones"
