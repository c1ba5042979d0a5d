"""``hyperhive kube-render NAME``: the objects the kubernetes runtime would apply, for review.

Reads desired state from ``<state>/meta.git`` at main (no controller needs to run, no
cluster is contacted), renders the agent's settings as a deploy would (its recorded web
port, else the one it would get) and prints every object as YAML documents, in the
order they are applied. The Secret's credential is never printed: ``REDACTED`` stands
in for it (the real one is issued at deploy and rotated on every recreate).
"""

from __future__ import annotations

import contextlib
from typing import Any

import yaml

from controller.config import Config
from controller.drivers.base import Deployment
from controller.drivers.kubernetes.render import render_agent
from controller.errors import Invalid, NotFound
from controller.manifest import render_settings
from controller.metarepo import MetaRepo
from controller.paths import Layout
from schemas.names import default_web_port

REDACTED = "REDACTED"
WEB_PORT_FILE = "web-port"


def review_objects(
    layout: Layout, cfg: Config, name: str, *, running: bool = True, now: float = 0.0
) -> list[dict[str, Any]]:
    """The objects a deploy of ``name`` (as main has it) would apply, credential redacted.

    NotFound when there is no meta repo or no such agent; Invalid when its manifest is
    invalid at main (the reason is the message). ``now`` stamps the marker (default 0:
    the output is the same on every run, so two reviews diff cleanly).
    """
    meta = MetaRepo.open(layout, cfg)
    desired, invalid = meta.desired_checked()
    if name in invalid:
        raise Invalid(f"agents/{name}/ is invalid at main: {invalid[name]}", "name")
    want = desired.agents.get(name)
    if want is None:
        raise NotFound(f"no agent {name!r} at main", "name")
    port = default_web_port(name, cfg.manager_port, cfg.agent_port_base, cfg.agent_port_range)
    with contextlib.suppress(OSError, ValueError):
        port = int((layout.agent_dir(name) / WEB_PORT_FILE).read_text().strip())
    settings = render_settings(
        want.manifest,
        web_port=port,
        dashboard_url=f"http://{cfg.dashboard_host}:{cfg.dashboard_port}",
        meta_commit=want.commit,
        hyperhive_version=meta.version,
    )
    d = Deployment(want, settings, port, meta.flake_ref(want.commit, name))
    return render_agent(d, REDACTED, cfg.kubernetes, now, running=running).all()


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """``objects`` as a multi-document YAML stream (``kubectl apply -f -`` reads it)."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
