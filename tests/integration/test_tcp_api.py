"""The agent API on TCP and meta.git over HTTP, end to end with a real ``hyperhive serve``.

One controller per module (local runtime; its agents are stand-in processes, the
sandbox off) with ``api: {listen, tls}`` (HTTPS with a self-signed certificate made
here) and ``git: {listen}``. The manager spawns ``alice`` and ``bob`` through its
socket and the operator approves, so the controller issues their credentials.

- A real harness (``python -m harness serve``, the real claude CLI against the fake
  Messages API) run with ``HYPERHIVE_API_URL`` (and no usable socket) and alice's
  credential: the operator's message reaches it through its TCP long poll, and its
  reply, sent by claude through the harness' MCP tool, reaches the operator.
- Clients on the TCP API: a long poll woken, identity from the credential only (a body
  ``from`` is refused, another agent's credential gives that agent and nothing more),
  401 without or with a wrong credential, no admin API, 4xx for bad requests.
- The real git CLI over HTTP: clone, an approval pushed with the operator key (the
  hooks run: the proposal is deployed), and refused pushes without a credential,
  with an agent's credential, and of a forged controller ref.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas.client import ApiClient, ApiError
from schemas.names import MANAGER
from tests.fakeapi import FakeAnthropic, Rules, find_claude_cli, reply_text, reply_tool_use, rule
from tests.realserve import (
    ROOT,
    free_block,
    free_port,
    kill_agents,
    serve_argv,
    standin_env,
    wait_for,
    write_config,
)
from tests.standinserve import (
    Served,
    launch,
    request_and_approve,
    shut,
)
from tests.tlscert import self_signed

CLAUDE = find_claude_cli(ROOT)


@dataclass
class Hive(Served):
    """The running controller, its TLS agent API and its git listener."""

    api_port: int
    git_port: int
    cert: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def git_url(self) -> str:
        return f"http://127.0.0.1:{self.git_port}/meta.git"

    def tcp(self, token: str | None, timeout: float = 30.0) -> ApiClient:
        """A client of the TCP API presenting ``token``."""
        return ApiClient(self.url, timeout=timeout, token=token, ca_file=str(self.cert))

    def as_agent(self, agent: str, timeout: float = 30.0) -> ApiClient:
        return self.tcp(self.credential(agent), timeout)

    def messages(self) -> list[dict[str, Any]]:
        return list(self.admin.get("/messages?since=0&limit=1000")["messages"])

    def drain(self, agent: str) -> None:
        """Take everything in ``agent``'s inbox (the tests share the hive)."""
        c = self.as_agent(agent)
        while c.post("/recv", {})["message"] is not None:
            pass


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hive]:
    tmp = tmp_path_factory.mktemp("tcpapi")
    cert, key = self_signed(tmp / "tls")
    api_port, git_port = free_port(), free_port()
    proc, log = launch(
        tmp,
        resync_seconds=30,
        api={"listen": f"127.0.0.1:{api_port}", "tls": {"cert": str(cert), "key": str(key)}},
        git={"listen": f"127.0.0.1:{git_port}"},
    )
    h = Hive(tmp, proc, api_port, git_port, cert)
    try:
        # the manager's verbs work over TCP
        request_and_approve(h.as_agent(MANAGER), h.admin, ("alice", "bob"))
        for name in ("alice", "bob"):
            wait_for(f"{name}'s credential", lambda n=name: h.layout.agent_credential(n).exists())
        yield h
    finally:
        shut(proc, log, tmp / "state")


# ---------------------------------------------------------------------------- the API


def test_long_poll_over_tcp_is_woken(hive: Hive) -> None:
    hive.drain("bob")
    bob = hive.as_agent("bob", timeout=60)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(bob.post("/recv", {"wait_seconds": 30})))
    t.start()
    time.sleep(0.5)
    hive.as_agent("alice").post("/send", {"to": "bob", "body": "over tcp"})
    t.join(20)
    assert not t.is_alive(), "the parked recv was not woken"
    m = got[0]["message"]
    assert (m["from"], m["to"], m["body"]) == ("alice", "bob", "over tcp")


def test_identity_is_the_credentials_alone(hive: Hive) -> None:
    hive.drain("bob")
    hive.drain("alice")
    alice = hive.as_agent("alice")
    # a body field cannot choose the sender: refused, nothing delivered
    with pytest.raises(ApiError) as e:
        alice.post("/send", {"to": "bob", "body": "forged", "from": "manager"})
    assert (e.value.status, e.value.field) == (400, "from")
    assert alice.post("/send", {"to": "bob", "body": "plain"})["id"] > 0
    m = hive.as_agent("bob").post("/recv", {})["message"]
    assert (m["from"], m["body"]) == ("alice", "plain")
    assert hive.as_agent("bob").post("/recv", {})["message"] is None  # the forged one is not there
    # alice holding bob's credential is bob: bob's inbox and bob's name, nothing of alice's
    stolen = hive.tcp(hive.credential("bob"))
    stolen.post("/send", {"to": "alice", "body": "from the thief"})
    m = hive.as_agent("alice").post("/recv", {})["message"]
    assert (m["from"], m["to"]) == ("bob", "alice")
    with pytest.raises(ApiError) as e:  # and none of the manager's verbs
        stolen.get("/list")
    assert e.value.status == 404


@pytest.mark.parametrize("which", ["none", "garbage", "operator key", "manager socket path"])
def test_missing_or_wrong_credential_is_401(hive: Hive, which: str) -> None:
    token = {
        "none": None,
        "garbage": "A" * 43,
        "operator key": hive.key,
        "manager socket path": str(hive.layout.manager_sock),
    }[which]
    client = hive.tcp(token)
    for method, path, body in (
        ("GET", "/status", None),
        ("POST", "/send", {"to": "bob", "body": "x"}),
        ("POST", "/request_spawn", {"name": "mallory"}),
        ("GET", "/proposals", None),
    ):
        with pytest.raises(ApiError) as e:
            client.call(method, path, body)
        assert (e.value.status, e.value.code) == (401, "unauthorized"), (which, path)


def test_the_admin_api_is_not_served(hive: Hive) -> None:
    before = hive.admin.get("/proposals")["proposals"]
    for who in ("alice", MANAGER):
        c = hive.as_agent(who)
        for method, path in (
            ("GET", "/proposals"),
            ("POST", "/proposals/1/approve"),
            ("POST", "/reconcile"),
            ("POST", "/login"),
            ("GET", "/messages"),
            ("GET", "/messages/stream"),
            ("POST", "/agents/bob/destroy"),
            ("GET", "/tombstones"),
        ):
            with pytest.raises(ApiError) as e:
                c.call(method, path, {} if method == "POST" else None)
            assert e.value.status in (404, 405), (who, method, path, e.value.status)
    assert hive.admin.get("/proposals")["proposals"] == before
    assert "bob" in {a["name"] for a in hive.admin.get("/status")["agents"]}


def test_bad_requests_are_4xx(hive: Hive) -> None:
    alice = hive.as_agent("alice")
    for body, field in (
        ({"to": "bob"}, "body"),
        ({"to": 5, "body": "x"}, "to"),
        ({"to": "nobody-here", "body": "x"}, "to"),
    ):
        with pytest.raises(ApiError) as e:
            alice.post("/send", body)
        assert 400 <= e.value.status < 500 and e.value.field == field, (body, e.value.status)
    with pytest.raises(ApiError) as e:
        alice.post("/nope", {})
    assert e.value.status == 404
    # the Host allow-list: a name the config does not list
    evil = ApiClient(
        f"https://localhost:{hive.api_port}", token=hive.credential("alice"), ca_file=str(hive.cert)
    )
    assert evil.get("/status")["unread"] >= 0  # localhost is a loopback name: allowed
    assert "Traceback" not in hive.log()


# ---------------------------------------------------------------------------- a real harness


@pytest.mark.skipif(CLAUDE is None, reason="the claude CLI is not installed (./hh test does)")
def test_a_harness_on_hyperhive_api_url(hive: Hive, tmp_path: Path) -> None:
    hive.drain("alice")
    script = Rules(
        rule(reply_text("replied"), tool_result=True),
        rule(
            reply_tool_use("mcp__hyperhive__send", {"to": "operator", "body": "pong over tcp"}),
            contains="ping",
        ),
        default=reply_text("ok"),
    )
    fake = FakeAnthropic(script).start()
    cred = tmp_path / "credential"  # a copy, as a pod's Secret would hold it
    shutil.copy(hive.layout.agent_credential("alice"), cred)
    env = fake.cli_env(tmp_path / "home")
    state = tmp_path / "state"
    state.mkdir()
    env.update(
        HYPERHIVE_AGENT="alice",
        HYPERHIVE_FLAVOR="agent",
        HYPERHIVE_API_URL=hive.url,
        HYPERHIVE_API_CA=str(hive.cert),
        # no socket on this "machine": the path does not exist
        HYPERHIVE_SOCKET=str(tmp_path / "no-such-dir" / "mcp.sock"),
        HYPERHIVE_WEB_SOCKET=str(tmp_path / "web.sock"),
        HYPERHIVE_CREDENTIAL_FILE=str(cred),
        HYPERHIVE_STATE_DIR=str(state),
        HYPERHIVE_CLAUDE_BIN=str(CLAUDE),
        HYPERHIVE_LOG_LEVEL="DEBUG",
        PYTHONPATH=str(ROOT),
    )
    log_path = tmp_path / "harness.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "serve"],
            env=env,
            cwd=state,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for("the harness' web socket", lambda: (tmp_path / "web.sock").exists(), timeout=30)
        time.sleep(1.0)  # let its recv park on the TCP API
        hive.admin.post("/send", {"to": "alice", "body": "ping"})

        def replied() -> dict[str, Any] | None:
            for m in hive.messages():
                if m["from"] == "alice" and m["to"] == "operator":
                    return m
            return None

        m = wait_for("alice's reply through the TCP API", replied, timeout=120)
        assert m["body"] == "pong over tcp"
        text = log_path.read_text(errors="replace")
        assert hive.url in text  # it said where its API is
        assert (tmp_path / "no-such-dir").exists() is False
        # the message was acked over TCP: nothing left for alice
        wait_for("alice's inbox empty", lambda: hive.admin.get("/status") and _unread(hive) == 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        fake.stop()
    assert proc.returncode == 0, log_path.read_text(errors="replace")[-4000:]


def _unread(hive: Hive) -> int:
    return int(hive.as_agent("alice").get("/status")["unread"])


# ---------------------------------------------------------------------------- git over HTTP


def git(
    *args: str, cwd: Path | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd or "/nonexistent"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "operator",
        "GIT_AUTHOR_EMAIL": "op@example.org",
        "GIT_COMMITTER_NAME": "operator",
        "GIT_COMMITTER_EMAIL": "op@example.org",
    }
    r = subprocess.run(
        ["git", *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def bearer(token: str) -> list[str]:
    return ["-c", f"http.extraHeader=Authorization: Bearer {token}"]


def meta_tags(hive: Hive, prefix: str) -> list[str]:
    out = git("--git-dir", str(hive.layout.meta_git), "tag", "--list", f"{prefix}/*").stdout
    return sorted(out.split())


def test_git_push_approval_over_http(hive: Hive, tmp_path: Path) -> None:
    pid = hive.as_agent(MANAGER).post("/request_spawn", {"name": "carol"})["id"]
    clone = tmp_path / "m"
    git(*bearer(hive.key), "clone", "-q", hive.git_url, str(clone), cwd=tmp_path)
    git(*bearer(hive.key), "fetch", "-q", "--tags", cwd=clone)
    git("tag", f"approved/{pid}", f"proposal/{pid}", cwd=clone)

    # refused: no credential, an agent's credential (401); the manager's credential is let
    # in for its own namespace only, so the pre-receive hook refuses its approval
    for token in (None, hive.credential("alice"), hive.credential(MANAGER)):
        opts = [] if token is None else bearer(token)
        r = git(*opts, "push", "origin", f"approved/{pid}", cwd=clone, check=False)
        # git met a 401 challenge and had nothing (more) to answer it with
        said = ("401", "Authentication failed", "could not read Username")
        if token == hive.credential(MANAGER):
            said = ("the manager pushes only to refs/hyperhive/manager/",)
        assert r.returncode != 0 and any(w in r.stderr for w in said), r.stderr
        assert f"approved/{pid}" not in meta_tags(hive, "approved")
    # a forged controller ref, with the operator key: the pre-receive hook refuses it
    git("tag", "deployed/9999", f"proposal/{pid}", cwd=clone)
    r = git(*bearer(hive.key), "push", "origin", "deployed/9999", cwd=clone, check=False)
    assert r.returncode != 0 and "deployed/9999" in r.stderr, r.stderr
    assert "deployed/9999" not in meta_tags(hive, "deployed")

    # the operator's push: accepted, the hooks run, the approval is deployed
    r = git(*bearer(hive.key), "push", "origin", f"approved/{pid}", cwd=clone)
    assert f"approved/{pid}" in meta_tags(hive, "approved")
    wait_for("carol deployed", lambda: any(
        a["name"] == "carol" and a.get("phase") == "running"
        for a in hive.admin.get("/status")["agents"]), timeout=60)  # fmt: skip
    # HTTP Basic with the key as the password works too (what credential helpers store)
    basic = hive.git_url.replace("http://", f"http://operator:{hive.key}@")
    assert f"refs/tags/approved/{pid}" in git("ls-remote", basic, cwd=tmp_path).stdout
    bad = hive.git_url.replace("http://", f"http://operator:{hive.credential('alice')}@")
    assert git("ls-remote", bad, cwd=tmp_path, check=False).returncode != 0
    assert "Traceback" not in hive.log()


def test_git_serves_only_meta_git(hive: Hive, tmp_path: Path) -> None:
    for url in (
        hive.git_url.replace("meta.git", "broker.sqlite"),
        hive.git_url.replace("meta.git", "manager/meta"),
    ):
        r = git(*bearer(hive.key), "ls-remote", url, cwd=tmp_path, check=False)
        assert r.returncode != 0, url
    conn = ApiClient(f"http://127.0.0.1:{hive.git_port}", token=hive.key)
    for path in ("/meta.git/HEAD", "/meta.git/objects/info/packs", "/meta.git/config",
                 "/operator.key", "/meta.git/info/refs", "/meta.git/../operator.key",
                 "/meta.git/info/refs?service=git-upload-archive",
                 "/meta.git/../manager/meta/info/refs?service=git-upload-pack"):  # fmt: skip
        with pytest.raises(ApiError) as e:
            conn.get(path)
        assert e.value.status == 404, path


def test_a_harness_that_does_not_trust_the_certificate_says_why(hive: Hive, tmp_path: Path) -> None:
    """Without ``HYPERHIVE_API_CA`` the self-signed certificate is not trusted: the harness
    keeps retrying and its log names the reason, not only the address."""
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HYPERHIVE_AGENT": "bob",
        "HYPERHIVE_API_URL": hive.url,
        "HYPERHIVE_SOCKET": str(tmp_path / "none" / "mcp.sock"),
        "HYPERHIVE_WEB_SOCKET": str(tmp_path / "web.sock"),
        "HYPERHIVE_CREDENTIAL_FILE": str(hive.layout.agent_credential("bob")),
        "HYPERHIVE_STATE_DIR": str(state),
        "HYPERHIVE_CLAUDE_BIN": "/bin/false",
        "SSL_CERT_FILE": "/nonexistent",  # no system CA can vouch for it either
        "ANTHROPIC_API_KEY": "test-key",  # "logged in": the loop goes on to its recv
        "PYTHONPATH": str(ROOT),
    }
    log_path = tmp_path / "harness.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "serve"], env=env, cwd=state,
                                stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        wait_for(
            "the outage warning",
            lambda: "certificate verify failed" in log_path.read_text(errors="replace").lower(),
            timeout=30,
        )
        text = log_path.read_text(errors="replace")
        assert f"controller API {hive.url} unreachable" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("which", ["missing", "mismatched"])
def test_a_bad_tls_config_stops_serve_with_one_line(tmp_path: Path, which: str) -> None:
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    key = tmp_path / "nope.pem" if which == "missing" else other_key
    config = write_config(
        tmp_path / "config.json",
        manager_port=free_block(2),
        agent_range=1,
        local_sandbox=False,
        api={"listen": f"127.0.0.1:{free_port()}", "tls": {"cert": str(cert), "key": str(key)}},
    )
    r = subprocess.run(
        serve_argv(tmp_path / "state", config, run=tmp_path / "run"),
        cwd=ROOT, env=standin_env(["/bin/true"]), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    kill_agents(tmp_path / "state")
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "cannot serve the agent API" in out and "Traceback" not in out, out[-2000:]
