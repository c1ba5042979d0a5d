"""The model a turn runs with: settings.json ``model``, or the operator's ``/model`` override.

The override is persisted in ``<state>/hyperhive-model`` as JSON::

    {"model": "sonnet", "settings_model": "haiku", "set_at": 1795342504.3}

``settings_model`` is the settings.json model at the time of the override. When
the harness starts with a different settings model (a deploy changed
``spec.model``), the deploy wins: the override file is dropped. A file that
cannot be parsed is dropped too. Failing to persist is logged, not fatal —
the override still applies until the harness restarts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Model names the UI accepts: aliases (``haiku``, ``sonnet[1m]``) and full ids.
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,99}$")


class InvalidModel(ValueError):
    """A model name that is not acceptable; ``str()`` says why."""


def check_model(name: object) -> str:
    """Return ``name`` if it looks like a model name, else raise ``InvalidModel``."""
    if not isinstance(name, str) or not MODEL_RE.match(name):
        raise InvalidModel(
            "model: must be 1-100 characters: a letter or digit, then letters, digits or ._:@/[]- "
            "(e.g. 'haiku', 'sonnet', 'claude-opus-4-1')"
        )
    return name


class ModelStore:
    """Resolves and persists the effective model.

    ``settings_model`` is the deployed default; ``path`` the override file.
    """

    def __init__(
        self, path: Path, settings_model: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.settings_model = settings_model
        self._clock = clock
        self._override: str | None = self._load()

    def _drop(self, why: str) -> None:
        log.info("dropping model override %s: %s", self.path, why)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc)

    def _load(self) -> str | None:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return None
        try:
            doc = json.loads(raw)
            model = check_model(doc["model"])
            base = doc["settings_model"]
        except (ValueError, KeyError, TypeError) as exc:
            self._drop(f"unreadable ({exc})")
            return None
        if base != self.settings_model:
            self._drop(
                f"settings model changed from {base!r} to {self.settings_model!r} (the deploy wins)"
            )
            return None
        return model

    @property
    def override(self) -> str | None:
        """The operator's override, or ``None``."""
        return self._override

    def current(self) -> str:
        """The model the next turn uses."""
        return self._override or self.settings_model

    def set(self, model: str) -> str:
        """Override the model (validated); persist it; return the effective model.

        Setting the settings model itself clears the override. Raises ``InvalidModel``.
        """
        check_model(model)
        if model == self.settings_model:
            self.clear()
            return model
        self._override = model
        doc = {"model": model, "settings_model": self.settings_model, "set_at": self._clock()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning(
                "cannot persist model override to %s: %s (applies until restart)", self.path, exc
            )
        return model

    def clear(self) -> None:
        """Drop the override; the settings model applies again."""
        self._override = None
        if self.path.exists():
            self._drop("cleared")
