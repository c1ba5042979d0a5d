"""``hyperhive kube-render``: what the kubernetes runtime would apply, from desired state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from controller.config import Config
from controller.drivers.kubernetes import names
from controller.metarepo import MetaRepo
from controller.paths import Layout
from tests.kubernetes.schemas import validate
from tests.realserve import ROOT


def run_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def test_kube_render_prints_valid_objects_without_the_credential(tmp_path: Path) -> None:
    layout = Layout.for_state(tmp_path / "state", None)
    MetaRepo.open_or_init(layout, Config())  # a new meta repo: the manager at main
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"runtime": "kubernetes", "kubernetes": {"workload": "sandbox"}}))
    r = run_cli(layout.state, "kube-render", "manager", "--config", str(config))
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["PersistentVolumeClaim", "Secret", "ConfigMap", "NetworkPolicy", "Sandbox"]
    for d in docs:
        validate(d)
    secret = docs[1]
    assert secret["data"]["credential"] == "UkVEQUNURUQ="  # base64("REDACTED")
    settings = json.loads(docs[2]["data"]["settings.json"])
    assert settings["agent"] == "manager"
    assert docs[-1]["metadata"]["annotations"][names.ANN_DEPLOYED_AT] == "1970-01-01T00:00:00Z"
    # the same review twice is the same text (a diff shows only what changed)
    assert (
        run_cli(layout.state, "kube-render", "manager", "--config", str(config)).stdout == r.stdout
    )
    stopped = run_cli(layout.state, "kube-render", "manager", "--stopped")
    assert list(yaml.safe_load_all(stopped.stdout))[-1]["spec"]["replicas"] == 0


def test_kube_render_of_an_unknown_agent_says_so(tmp_path: Path) -> None:
    layout = Layout.for_state(tmp_path / "state", None)
    r = run_cli(layout.state, "kube-render", "alice")
    assert r.returncode == 2
    assert "no meta repo" in r.stderr
    MetaRepo.open_or_init(layout, Config())
    r = run_cli(layout.state, "kube-render", "alice")
    assert r.returncode == 2
    assert "no agent 'alice' at main" in r.stderr
