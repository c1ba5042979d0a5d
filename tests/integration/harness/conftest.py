"""Shares the ``start`` fixture of test_harness_serve.py (a ``serve`` subprocess with the fake
API and a stand-in socket) with the other test modules of this directory."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_harness_serve import start  # noqa: F401
