"""The kubernetes runtime end to end, on the stand-in API server.

A real ``hyperhive serve`` with ``runtime: kubernetes`` talks to the stand-in (a kubeconfig
names it) and serves the agent API on TCP. The stand-in's node "schedules" each pod by
starting the real harness as a local process (``tests/kubernetes/node.py``), with the
pod's environment: ``HYPERHIVE_API_URL`` and the agent's credential from its Secret, its
settings from its ConfigMap, its state on its PVC's directory, and the Messages API
settings from the namespace's ``hyperhive-anthropic`` Secret — nothing passes from the
controller's environment. The harnesses run the real ``claude`` CLI against the fake
Messages API served here.

The story: the manager starts as a pod; the operator asks it for alice; its turn proposes
the spawn; the operator approves; alice runs as a StatefulSet's pod (or an agent-sandbox
Sandbox's: the story runs with both) and answers a message; the operator asks the manager
to move alice to another model: in its pod, the manager's turn commits the manifest change
in its meta clone (made by its harness from meta.git over HTTP, the controller's ``git:``
listener, with its own credential) and ``request_apply_commit`` pushes the commit to
``refs/hyperhive/manager/`` and proposes it; the operator approves and it deploys;
``hyperhive stop`` scales her to zero (the volume stays), ``start`` brings her back with the
same volume, ``destroy`` keeps the volume as a tombstone, ``purge`` deletes it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller.drivers.kubernetes import names
from tests.e2e.browser import Browser
from tests.e2e.swarm import Swarm
from tests.fakeapi import (
    OFFLINE_ENV,
    FakeAnthropic,
    Reply,
    Request,
    reply_text,
    reply_tool_use,
)
from tests.kubernetes.node import ProcessRunner
from tests.kubernetes.standin import StandIn
from tests.realserve import ROOT, free_port, wait_for
from tests.storyswarm import is_manager, require_claude, write_log_tail

pytestmark = pytest.mark.e2e

CLAUDE = require_claude()

NS = "hyperhive"


NEW_MODEL = "claude-test-b"

# the manager's turn in its pod: a manifest change committed in its meta clone
EDIT_ALICE = (
    'cd "$HYPERHIVE_META_DIR" && git fetch -q origin && git checkout -q -B work origin/main'
    f" && sed -i 's/^  model: .*/  model: {NEW_MODEL}/' agents/alice/agent.yaml"
    " && git commit -q -am 'alice: another model' && git rev-parse HEAD"
)


def model_script(req: Request) -> Reply:
    """The fake model: the manager proposes alice, then commits and proposes a change to
    her manifest; alice answers the operator's hello."""
    text = req.last_user_text
    if req.tool_results:
        # the Bash commit above prints the id first (claude may add a note on the cwd after it)
        said = req.tool_results[0].text.strip().split("\n", 1)[0]
        if is_manager(req) and re.fullmatch(r"[0-9a-f]{40}", said):
            return reply_tool_use(
                "mcp__hyperhive__request_apply_commit", {"commit": said, "note": "alice"}
            )
        return reply_text("done.")
    if is_manager(req):
        if "please spawn alice" in text:
            return reply_tool_use("mcp__hyperhive__request_spawn", {"name": "alice"})
        if "please move alice" in text:
            return reply_tool_use("Bash", {"command": EDIT_ALICE, "description": "commit"})
        return reply_text("noted.")
    if "hello alice" in text:
        return reply_tool_use(
            "mcp__hyperhive__send", {"to": "manager", "body": "hi manager, alice here, in a pod"}
        )
    return reply_text("ok.")


def kubeconfig(path: Path, standin: StandIn) -> Path:
    """A kubeconfig naming the stand-in, with its bearer token."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": standin.url}}],
        "users": [{"name": "stand-in", "user": {"token": standin.token}}],
        "contexts": [
            {
                "name": "stand-in",
                "context": {"cluster": "stand-in", "user": "stand-in", "namespace": NS},
            }
        ],
        "current-context": "stand-in",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def anthropic_secret(api: FakeAnthropic) -> dict[str, object]:
    """The namespace's ``hyperhive-anthropic`` Secret: how pods reach the (fake) Messages API."""
    import base64

    env = {"ANTHROPIC_BASE_URL": api.base_url, "ANTHROPIC_API_KEY": "test-key", **OFFLINE_ENV}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hyperhive-anthropic"},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in env.items()},
    }


@pytest.fixture(params=["statefulset", "sandbox"])
def story(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Swarm, StandIn, ProcessRunner]]:
    api = FakeAnthropic(model_script).start()
    holder: dict[str, StandIn] = {}

    def lookup(plural: str, name: str) -> dict[str, object] | None:
        return holder["s"].get(plural, NS, name)

    runner = ProcessRunner(
        lookup,
        entrypoints={"hyperhive-agent": [sys.executable, "-m", "harness"]},
        # what the agent image bakes in: python with the harness, git, the claude CLI
        image_env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "HYPERHIVE_CLAUDE_BIN": str(CLAUDE),
            "LANG": "C.UTF-8",
        },
    )
    standin = holder["s"] = StandIn(runner, backoff=0.5, backoff_cap=5.0)
    standin.start()
    standin.create("secrets", NS, anthropic_secret(api))
    s = Swarm.prepare(tmp_path, api, CLAUDE, agent_ports=9)
    api_port, git_port = free_port(), free_port()
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(
        runtime="kubernetes",
        api={"listen": f"127.0.0.1:{api_port}"},
        git={"listen": f"127.0.0.1:{git_port}"},
        kubernetes={
            "namespace": NS,
            "kubeconfig": str(kubeconfig(tmp_path / "kubeconfig", standin)),
            "image": "hyperhive:e2e",
            "workload": request.param,
            # the stand-in's pods listen on loopback (there is no cluster DNS here)
            "web_host": "127.0.0.1",
            "api_url": f"http://127.0.0.1:{api_port}",
            "meta_url": f"http://127.0.0.1:{git_port}/meta.git",
        },
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    try:
        yield s, standin, runner
    finally:
        if s.proc is not None:
            s.proc.kill()
            s.proc.wait()
        standin.stop()
        runner.stop_all()
        api.stop()
        write_log_tail(tmp_path)
        for c in runner.started:
            with contextlib.suppress(OSError):
                sys.stderr.write(f"---- {c.log_path.name} (tail) ----\n{c.log()[-2000:]}")
        shutil.rmtree(runner.root, ignore_errors=True)


def test_an_agent_spawned_on_kubernetes_answers_then_suspends_resumes_and_goes(
    story: tuple[Swarm, StandIn, ProcessRunner],
) -> None:
    s, standin, _runner = story
    alice = names.base("alice")
    sandbox = json.loads((s.tmp / "config.json").read_text())["kubernetes"]["workload"] == "sandbox"
    workloads = "sandboxes" if sandbox else "statefulsets"
    alice_pod = alice if sandbox else f"{alice}-0"

    # the manager runs as a pod whose harness reached the controller over TCP
    s.start()
    wait_for("the manager running", lambda: s.phase("manager") == "running", timeout=90)
    assert standin.names(workloads, NS) == [names.base("manager")]
    status = s.status()
    assert status["runtime"] == "kubernetes"
    assert "agents are pods" in status["runtime_note"]

    # the operator asks the manager for alice; its turn proposes her; the operator approves
    s.cli("send", "manager", "please spawn alice")
    wait_for("proposal/1", lambda: "proposal/1" in s.tags("proposal"), timeout=120)
    s.cli("approve", "1")
    wait_for("alice running", lambda: s.phase("alice") == "running", timeout=120)
    w = standin.get(workloads, NS, alice)
    assert w is not None
    assert w["spec"].get("replicas", 1) == 1
    assert w["spec"].get("operatingMode", "Running") == "Running"
    pod = standin.get("pods", NS, alice_pod)
    assert pod is not None
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["HYPERHIVE_API_URL"].startswith("http://127.0.0.1:")
    assert pod["metadata"]["annotations"][names.ANN_COMMIT] == s.agent("alice")["commit"]  # type: ignore[index]

    # the API key every pod gets from the hyperhive-anthropic Secret counts as logged in
    conds = {c["type"]: c for c in s.agent("alice")["conditions"]}  # type: ignore[index]
    assert conds["LoggedIn"]["status"] == "True", conds["LoggedIn"]
    assert conds["Isolated"]["reason"] == "Pod"

    # alice answers a message: her harness, in her "pod", ran a turn and used the broker
    s.cli("send", "alice", "hello alice")
    wait_for(
        "alice's message to the manager",
        lambda: any(
            m.get("from") == "alice" and "alice here, in a pod" in str(m.get("body"))
            for m in s.messages()
        ),
        timeout=120,
    )
    # her web UI through the dashboard: the proxy reaches her pod's TCP port with her credential
    web = Browser(s.dashboard_port)
    url = s.cli("dashboard").stdout.strip().splitlines()[-1]
    assert web.open_login(url)[0].status == 303
    alice_ui = web.get("/agents/alice/api/state")
    assert alice_ui.status == 200, alice_ui
    assert alice_ui.json()["agent"] == "alice"

    # her journal is the pod log, read through the API
    journal = s.admin.get("/agents/alice/journal?lines=200")["text"]
    assert "hyperhive-agent serve: agent alice" in journal
    assert "alice here, in a pod" in journal  # her MCP call, as the harness logged it
    pvc_uid = standin.get("persistentvolumeclaims", NS, names.pvc("alice"))["metadata"]["uid"]  # type: ignore[index]

    # the manager, in its pod, proposes a commit of its own clone: pushed over meta.git's
    # HTTP listener with its credential, proposed, approved by the operator, deployed
    s.cli("send", "manager", "please move alice to another model")
    wait_for("proposal/2", lambda: "proposal/2" in s.tags("proposal"), timeout=120)
    one = s.admin.get("/proposals/2")
    assert one["kind"] == "apply_commit", one
    assert f"+  model: {NEW_MODEL}" in one["diff"], one["diff"]
    meta_git = s.state / "meta.git"
    pushed = subprocess.run(
        ["git", "--git-dir", str(meta_git), "for-each-ref", "--format=%(refname)",
         "refs/hyperhive/manager/"], capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert pushed == []  # handed over: proposal/2 holds the commit now
    assert s.tags("proposal") and one["commit"] in subprocess.run(
        ["git", "--git-dir", str(meta_git), "rev-parse", "proposal/2^{commit}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    s.cli("approve", "2")
    wait_for("deployed/2", lambda: "deployed/2" in s.tags("deployed"), timeout=120)
    wait_for("alice running on the new model", lambda: s.phase("alice") == "running", timeout=60)

    # suspend: scaled to zero, the pod and its process gone, the volume kept
    s.cli("stop", "alice")
    wait_for("alice stopped", lambda: s.phase("alice") == "stopped", timeout=60)
    w = standin.get(workloads, NS, alice)
    assert w is not None
    assert w["spec"].get("replicas") == 0 or w["spec"].get("operatingMode") == "Suspended"
    wait_for("alice's pod gone", lambda: standin.get("pods", NS, alice_pod) is None)
    assert standin.names("persistentvolumeclaims", NS) == sorted(
        [names.pvc("alice"), names.pvc("manager")]
    )

    # resume: the same volume comes back
    s.cli("start", "alice")
    wait_for("alice running again", lambda: s.phase("alice") == "running", timeout=60)
    pvc = standin.get("persistentvolumeclaims", NS, names.pvc("alice"))
    assert pvc is not None and pvc["metadata"]["uid"] == pvc_uid

    # destroy: every object goes but the volume, kept as a tombstone
    s.cli("destroy", "alice")
    wait_for("alice gone", lambda: s.agent("alice") is None, timeout=60)
    assert standin.get(workloads, NS, alice) is None
    assert standin.get("secrets", NS, alice) is None
    pvc = standin.get("persistentvolumeclaims", NS, names.pvc("alice"))
    assert pvc is not None and pvc["metadata"]["labels"][names.TOMBSTONE] == "true"

    # purge: the volume goes too
    s.cli("purge", "alice")
    assert standin.get("persistentvolumeclaims", NS, names.pvc("alice")) is None
    assert standin.names("persistentvolumeclaims", NS) == [names.pvc("manager")]
