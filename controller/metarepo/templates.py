"""The first contents of a new meta repo: the meta flake and the manager's manifest."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import controller
from controller.config import Config


def flake_template(config: Config) -> str:
    """The meta flake for a new repo.

    ``nix/templates/meta-flake.nix`` of the source tree when present (the NixOS
    side owns it), else ``controller/templates/meta-flake.nix``; ``@HYPERHIVE_FLAKE@``
    is replaced by ``config.hyperhive_flake``.
    """
    tree_file = Path(controller.__file__).resolve().parent.parent / "nix/templates/meta-flake.nix"
    if tree_file.is_file():
        text = tree_file.read_text()
    else:
        text = resources.files("controller").joinpath("templates/meta-flake.nix").read_text()
    return text.replace("@HYPERHIVE_FLAKE@", config.hyperhive_flake)


def manager_template(config: Config) -> str:
    """The manager's first ``agents/manager/agent.yaml`` (``controller/templates``)."""
    text = resources.files("controller").joinpath("templates/manager.agent.yaml").read_text()
    return text.replace("@MODEL@", config.default_model)
