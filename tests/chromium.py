"""Headless Chromium for the browser tests (driven by ``playwright-core`` from node).

``CHROMIUM`` is the browser the node scripts launch (``$HYPERHIVE_CHROMIUM``, default
``/usr/bin/chromium``); ``skip_reason()`` says why a browser test cannot run here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = os.environ.get("HYPERHIVE_CHROMIUM", "/usr/bin/chromium")


def skip_reason() -> str | None:
    """Why a browser test must skip (no chromium, no node, no playwright-core in the
    repo's ``node_modules``), or None when it can run."""
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (set HYPERHIVE_CHROMIUM)"
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core missing: run `npm install` in the repo root"
    return None
