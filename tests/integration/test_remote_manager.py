"""A remote manager hands its commit over meta.git's HTTP listener, end to end.

A real ``hyperhive serve`` (local runtime, agents as stand-in processes, sandbox off)
with the agent API on TCP (``api:``) and meta.git over HTTP (``git:``). The manager is
played the way its kubernetes pod plays it: a meta clone *outside* the controller's
state dir, made by ``harness.metaclone.ensure_clone`` with the real git CLI, its remote
the git listener and its credential read from the manager's credential file by a git
credential helper; its calls go to the TCP agent API with its bearer credential.

- The MCP tool ``request_apply_commit`` (the harness's ``McpHandler``, as claude calls
  it) pushes the commit to ``refs/hyperhive/manager/<id>`` and proposes it; the
  proposal shows the diff; the operator approves; the new agent runs.
- The same by hand: ``git push`` to a name in the namespace, then
  ``POST /request_apply_commit`` with the commit's short id.
- Refused, each with a message that says why: another agent's credential (401 before
  git runs), the manager pushing main, a tag, a branch, a controller ref (pre-receive
  hook), a commit never pushed (404 naming the namespace), a commit whose manifest is
  bad (400 naming the file). Nothing in meta.git moves for any of them.
- The credential is in no URL and no git config, only in its file.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.mcp_server import McpHandler
from harness.metaclone import META_DIR_VAR, META_URL_VAR, MetaCloneError, ensure_clone, push_commit
from schemas.client import ApiClient, ApiError
from schemas.names import MANAGER
from tests.realserve import (
    free_port,
    wait_for,
)
from tests.standinserve import Served, launch, shut

GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "manager",
    "GIT_AUTHOR_EMAIL": "manager@hyperhive.local",
    "GIT_COMMITTER_NAME": "manager",
    "GIT_COMMITTER_EMAIL": "manager@hyperhive.local",
}


@dataclass
class Hive(Served):
    api_port: int
    git_port: int

    @property
    def git_url(self) -> str:
        return f"http://127.0.0.1:{self.git_port}/meta.git"

    def tcp(self, agent: str) -> ApiClient:
        token = self.credential(agent)
        return ApiClient(f"http://127.0.0.1:{self.api_port}", timeout=30, token=token)

    def running(self, name: str) -> bool:
        return any(
            a["name"] == name and a.get("phase") == "running"
            for a in self.admin.get("/status")["agents"]
        )


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hive]:
    tmp = tmp_path_factory.mktemp("remotemgr")
    api_port, git_port = free_port(), free_port()
    proc, log = launch(
        tmp,
        resync_seconds=30,
        api={"listen": f"127.0.0.1:{api_port}"},
        git={"listen": f"127.0.0.1:{git_port}"},
    )
    h = Hive(tmp, proc, api_port, git_port)
    try:
        yield h
    finally:
        shut(proc, log, tmp / "state")
        assert "Traceback" not in (tmp / "serve.log").read_text(errors="replace")


def git(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True,
                       timeout=120, check=False)  # fmt: skip
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def manifest(name: str, model: str = "haiku") -> str:
    return (
        f"apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n"
        f"  model: {model}\n"
    )


def commit(clone: Path, name: str, model: str = "haiku") -> str:
    """On top of origin/main (fetched): add ``agents/<name>/agent.yaml``; the commit id."""
    git("fetch", "-q", "origin", cwd=clone)
    git("checkout", "-q", "-B", "work", "origin/main", cwd=clone)
    path = clone / "agents" / name / "agent.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest(name, model))
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", f"add {name}", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone).stdout.strip()


@pytest.fixture(scope="module")
def pod_clone(hive: Hive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manager's clone as its pod has it: elsewhere, remote = the git listener."""
    clone = tmp_path_factory.mktemp("pod") / "meta"
    clone.mkdir()  # an empty directory, as the pod's init container leaves it
    cred = hive.layout.agent_credential(MANAGER)
    assert ensure_clone(clone, hive.git_url, cred, environ=GIT_ENV) is True
    assert ensure_clone(clone, hive.git_url, cred, environ=GIT_ENV) is False  # idempotent
    return clone


def test_the_credential_is_in_no_url_and_no_config(hive: Hive, pod_clone: Path) -> None:
    secret = hive.layout.agent_credential(MANAGER).read_text().strip()
    config = (pod_clone / ".git" / "config").read_text()
    assert secret not in config
    assert git("remote", "get-url", "origin", cwd=pod_clone).stdout.strip() == hive.git_url
    assert str(hive.layout.agent_credential(MANAGER)) in config  # the helper reads the file
    assert (
        git("rev-parse", "main", cwd=pod_clone).stdout.strip()
        == git(
            "--git-dir", str(hive.layout.meta_git), "rev-parse", "main", cwd=hive.tmp
        ).stdout.strip()
    )


def test_the_mcp_tool_pushes_then_proposes_and_the_operator_deploys(
    hive: Hive, pod_clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = commit(pod_clone, "alice")
    for var, value in GIT_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv(META_DIR_VAR, str(pod_clone))
    monkeypatch.setenv(META_URL_VAR, hive.git_url)
    mcp = McpHandler("manager", hive.tcp(MANAGER))
    out = mcp.call_tool("request_apply_commit", {"commit": "HEAD", "note": "alice joins"})
    text = out["content"][0]["text"]
    assert out["isError"] is False, text
    assert f"commit {c} proposed as proposal #" in text
    # pushed, proposed from meta.git (the controller's own copy of the clone never had it),
    # then handed over: the namespace ref is gone, proposal/<id> holds the commit
    assert "refs/hyperhive/manager/" not in hive.refs()
    local = hive.layout.manager_meta
    assert git("cat-file", "-e", f"{c}^{{commit}}", cwd=local, check=False).returncode != 0
    pending = [p for p in hive.admin.get("/proposals")["proposals"] if p["state"] == "pending"]
    (p,) = [p for p in pending if p["commit"] == c]
    one = hive.admin.get(f"/proposals/{p['id']}")
    assert one["kind"] == "apply_commit" and one["note"] == "alice joins"
    assert "agents/alice/agent.yaml" in one["diff"] and "+  model: haiku" in one["diff"]
    hive.admin.post(f"/proposals/{p['id']}/approve", {})
    wait_for("alice running", lambda: hive.running("alice"), timeout=90)
    wait_for("deployed/<id>", lambda: hive.admin.get(f"/proposals/{p['id']}")["state"]
             == "deployed", timeout=60)  # fmt: skip


def test_the_mcp_tool_takes_back_a_refused_commit(
    hive: Hive, pod_clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = commit(pod_clone, "fay", model="no good")
    for var, value in GIT_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv(META_DIR_VAR, str(pod_clone))
    monkeypatch.setenv(META_URL_VAR, hive.git_url)
    out = McpHandler("manager", hive.tcp(MANAGER)).call_tool(
        "request_apply_commit", {"commit": bad}
    )
    text = out["content"][0]["text"]
    assert out["isError"] is True and "spec.model" in text, text
    assert "refs/hyperhive/manager/" not in hive.refs()  # its pushed ref was deleted again
    # and a commit the clone does not have: nothing pushed, the tool says why
    out = McpHandler("manager", hive.tcp(MANAGER)).call_tool(
        "request_apply_commit", {"commit": "0123456789abcdef"}
    )
    text = out["content"][0]["text"]
    assert out["isError"] is True and "nothing was proposed" in text, text


def test_a_push_by_hand_then_a_request_by_short_id(hive: Hive, pod_clone: Path) -> None:
    c = commit(pod_clone, "bob")
    git("push", "-q", "origin", "HEAD:refs/hyperhive/manager/bob", cwd=pod_clone)
    p = hive.tcp(MANAGER).post("/request_apply_commit", {"commit": c[:12]})
    assert hive.admin.get(f"/proposals/{p['id']}")["commit"] == c
    hive.admin.post(f"/proposals/{p['id']}/deny", {"note": "not now"})


def test_refusals_say_why_and_move_nothing(hive: Hive, pod_clone: Path, tmp_path: Path) -> None:
    c = commit(pod_clone, "carol")
    before = hive.refs()
    # another agent's credential: 401 before git runs (alice is an agent now)
    alice_clone = tmp_path / "alice"
    with pytest.raises(MetaCloneError, match=r"401|Authentication failed"):
        ensure_clone(alice_clone, hive.git_url, hive.layout.agent_credential("alice"),
                     environ=GIT_ENV)  # fmt: skip
    # the manager outside its namespace: the pre-receive hook's message reaches it
    for refspec in ("HEAD:refs/heads/main", "HEAD:refs/heads/carol", "HEAD:refs/tags/carol",
                    "HEAD:refs/tags/approved/1", "HEAD:refs/hyperhive/last-deploy"):  # fmt: skip
        r = git("push", "origin", f"+{refspec}", cwd=pod_clone, check=False)
        assert r.returncode != 0, refspec
        assert "the manager pushes only to refs/hyperhive/manager/<name>" in r.stderr, r.stderr
    assert hive.refs() == before
    # a commit that was never pushed: 404 that names the namespace
    with pytest.raises(ApiError) as e:
        hive.tcp(MANAGER).post("/request_apply_commit", {"commit": c})
    assert (e.value.status, e.value.field) == (404, "commit")
    assert "refs/hyperhive/manager/" in e.value.message
    # a bad manifest: the namespace takes it, the proposal refuses it, naming the file
    bad = commit(pod_clone, "eve", model="3")
    assert push_commit(pod_clone, bad, environ=GIT_ENV) == bad
    with pytest.raises(ApiError) as e:
        hive.tcp(MANAGER).post("/request_apply_commit", {"commit": bad})
    assert (e.value.status, e.value.field) == (400, "agents/eve/agent.yaml")
    assert "proposal" not in {
        line.split()[0].split("/")[2] for line in hive.refs().splitlines()
        if line.split()[1] == bad and line.startswith("refs/tags/")
    }  # fmt: skip
    # an agent cannot call request_apply_commit at all
    with pytest.raises(ApiError) as e:
        hive.tcp("alice").post("/request_apply_commit", {"commit": c})
    assert e.value.status in (403, 404)
