"""The git CLI for tests, as an operator "op" with no system or global git config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``git *args`` in ``cwd`` with output captured as text.

    Author and committer are ``op <op@example.org>``; ``GIT_CONFIG_NOSYSTEM`` and
    ``GIT_CONFIG_GLOBAL=/dev/null`` keep the host's git config out. With ``check``
    a non-zero exit fails the test with git's stdout and stderr.
    """
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "op",
        "GIT_AUTHOR_EMAIL": "op@example.org",
        "GIT_COMMITTER_NAME": "op",
        "GIT_COMMITTER_EMAIL": "op@example.org",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    res = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res
