"""Running ``nix-instantiate`` from the Nix tests: a daemon-less, store-less evaluator.

CI installs Debian's ``nix-bin`` (2.8: no flakes by default, no nixpkgs, no
network). Every evaluation runs against the ``dummy://`` store with its state,
config and cache in a temporary directory: no daemon, no /nix, nothing written
to a store. When ``nix-instantiate`` is missing the tests skip on a developer's
machine and FAIL in CI (``CI=true``), so CI can never pass without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NIX_INSTANTIATE = shutil.which("nix-instantiate")
ROOT = Path(__file__).resolve().parents[2]
VENDORED_LIB = ROOT / "nix" / "vendor" / "nixpkgs-lib" / "lib"
MISSING = "nix-instantiate not found: apt-get install nix-bin to run the Nix checks"


def require_nix() -> Any:
    """A module-level ``pytestmark``: skip without nix-instantiate, but fail in CI."""
    if NIX_INSTANTIATE is None and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(MISSING, pytrace=False)
    return pytest.mark.skipif(NIX_INSTANTIATE is None, reason=MISSING)


def nix_str(text: str) -> str:
    """A Nix string literal for ``text``."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'


def nix_path(path: Path | str) -> str:
    """A Nix path expression for an absolute filesystem path (any characters)."""
    return f"(/. + {nix_str(str(Path(path).resolve()))})"


def nix_list(items: list[str]) -> str:
    """A Nix list of string literals."""
    return "[ " + " ".join(nix_str(i) for i in items) + " ]"


def make_env(home: Path) -> dict[str, str]:
    """Environment for a daemon-less, store-less nix-instantiate with its files under ``home``."""
    for sub in ("state", "conf", "cache", "config"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "NIX_REMOTE": "dummy://",
            "NIX_STATE_DIR": str(home / "state"),
            "NIX_CONF_DIR": str(home / "conf"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "NIX_PATH": "",
        }
    )
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``nix-instantiate *args`` from the repo root; no exit check."""
    assert NIX_INSTANTIATE is not None, MISSING
    return subprocess.run(
        [NIX_INSTANTIATE, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def run_nix(args: list[str], env: dict[str, str]) -> str:
    """``nix-instantiate *args``'s stdout; the test fails with stderr if it fails."""
    proc = run(args, env)
    if proc.returncode != 0:
        pytest.fail(f"nix-instantiate {' '.join(args)[:200]} failed:\n{proc.stderr}")
    return proc.stdout


def nix_eval(expr: str, env: dict[str, str]) -> Any:
    """Evaluate ``expr`` strictly and return it as JSON data."""
    return json.loads(run_nix(["--eval", "--strict", "--json", "--expr", expr], env))


def nix_eval_error(expr: str, env: dict[str, str]) -> str:
    """Evaluate ``expr`` strictly, expecting an evaluation error; return the error text."""
    proc = run(["--eval", "--strict", "--json", "--expr", expr], env)
    assert proc.returncode != 0, f"expected an evaluation error, got: {proc.stdout[:500]}"
    return proc.stderr
