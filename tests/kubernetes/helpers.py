"""Shared builders for the kubernetes runtime tests."""

from __future__ import annotations

from controller.drivers.base import Deployment
from controller.model import AgentManifest, DesiredAgent


def deployment(
    name: str, cfg: str = "c1", port: int = 8123, commit: str = "abc123", build: str = "b1"
) -> Deployment:
    """A Deployment of ``name`` as the swarm would hand it to a driver."""
    agent = DesiredAgent(
        name=name,
        manifest=AgentManifest(name=name, model="haiku"),
        commit=commit,
        config_digest=cfg,
        build_digest=build,
        has_nix=True,
    )
    settings = {"agent": name, "model": "haiku", "web_port": port, "hyperhive_version": "0.1.0"}
    return Deployment(agent, settings, port, f"git+file:///x?rev={commit}#{name}")
