"""Attacks on the two opt-in TCP listeners: the agent API (``api:``) and meta.git (``git:``).

A real ``hyperhive serve`` of its own (local runtime, stand-in agents, the sandbox
off: the attacks are on the controller's listeners, not on the agents) with both
listeners on loopback; the manager spawned ``alice`` and ``bob`` and the operator
approved, then ``dave`` was spawned and destroyed (his credential is a dead one);
``carol`` is proposed and pending, the target of the git attacks.

Replayed, each counted in the session's tally:

- **no or a wrong credential** on every verb of the agent API (none, garbage, the
  operator key, a destroyed agent's and a rotated credential, the credential in
  another scheme, a query string or a cookie): 401 before anything runs;
- **impersonation**: alice's credential with sender fields in every body, proxy
  headers naming someone else, and paths that name another agent or a manager
  verb: refused, or attributed to alice and nobody else;
- **the admin API** (every host.sock route) with the manager's credential: 404/405;
- **rebinding and cross-site**: a foreign ``Host``, a foreign ``Origin`` or
  ``Sec-Fetch-Site``, a form or ``text/plain`` body, with a valid credential;
- **hostile bodies**: too large, too deep, lone surrogates, invalid UTF-8;
- **exhaustion**: idle and slowloris connections from one address past the
  per-client cap while a legitimate agent keeps being answered;
- **meta.git**: pushes and fetches without the operator key (none, an agent's, as
  bearer or Basic), a cross-site push riding on Basic credentials, a foreign
  ``Host``, the dumb protocol's files and other paths, a forged controller ref
  pushed with the key (the pre-receive hook refuses it);
- **the manager on meta.git**: its own credential is let in for
  ``refs/hyperhive/manager/*`` only; an approval, main, a tag, a branch, a
  controller ref, another namespace, a mixed push: all refused by the hook, and
  nothing moves; then its legitimate push and ``request_apply_commit``.

Then the legitimate flow works in the same run: alice messages bob over TCP, the
operator approves carol with ``git push`` over HTTP.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.auth import AgentCredentials
from schemas.client import ApiClient, ApiError
from schemas.names import MANAGER
from tests.realserve import (
    free_port,
    wait_for,
)
from tests.security.support import Reply, Tally, connect, http, read_reply, request_bytes
from tests.standinserve import (
    Served,
    launch,
    request_and_approve,
    shut,
)

NO_CREDENTIAL = "TCP agent API: no or wrong credential (401)"
IMPERSONATION = "TCP agent API: impersonation"
ADMIN = "TCP agent API: admin routes (404)"
REBIND = "TCP agent API: rebinding / cross-site (403/415)"
BODIES = "TCP agent API: hostile bodies (4xx)"
EXHAUST = "TCP agent API: connection exhaustion"
GIT = "meta.git over HTTP: without the operator key"
GIT_MANAGER = "meta.git over HTTP: the manager outside refs/hyperhive/manager/*"

AGENT_VERBS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("POST", "/send", {"to": "bob", "body": "PWNED"}),
    ("POST", "/recv", {}),
    ("POST", "/ack", {"ids": [1]}),
    ("POST", "/release", {}),
    ("POST", "/ask", {"to": "bob", "question": "PWNED?"}),
    ("POST", "/answer", {"thread": 1, "body": "PWNED"}),
    ("POST", "/remind", {"after_seconds": 1, "body": "PWNED"}),
    ("POST", "/recent", {}),
    ("GET", "/status", {}),
    ("POST", "/wake", {"from": "operator", "body": "PWNED"}),
)
MANAGER_VERBS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("POST", "/request_spawn", {"name": "pwned"}),
    ("POST", "/request_apply_commit", {"commit": "0" * 40}),
    ("POST", "/start", {"name": "bob"}),
    ("POST", "/kill", {"name": "bob"}),
    ("POST", "/restart", {"name": "bob"}),
    ("POST", "/update", {"name": "bob"}),
    ("POST", "/ask_operator", {"question": "PWNED?"}),
    ("GET", "/list", {}),
)
ADMIN_ROUTES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("GET", "/proposals?pending=1", {}),
    ("GET", "/proposals/1", {}),
    ("POST", "/proposals/1/approve", {"note": "PWNED"}),
    ("POST", "/proposals/1/deny", {"note": "PWNED"}),
    ("POST", "/reconcile", {}),
    ("POST", "/poke", {}),
    ("POST", "/login", {}),
    ("GET", "/messages?since=0", {}),
    ("GET", "/messages/stream", {}),
    ("GET", "/questions?pending=1", {}),
    ("POST", "/questions/1/answer", {"answer": "PWNED"}),
    ("GET", "/agents/bob", {}),
    ("POST", "/agents/bob/destroy", {}),
    ("GET", "/agents/bob/journal", {}),
    ("GET", "/agents/bob/config", {}),
    ("POST", "/agents/bob/kill", {}),
    ("GET", "/tombstones", {}),
    ("POST", "/tombstones/dave/purge", {}),
)


@dataclass
class TcpHive(Served):
    """The controller with both TCP listeners; credentials read as the operator would."""

    api_port: int
    git_port: int
    carol: int = 0
    dead: str = ""
    rotated: str = ""

    @property
    def api(self) -> tuple[str, int]:
        return ("127.0.0.1", self.api_port)

    @property
    def git_addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.git_port)

    def snapshot(self) -> dict[str, Any]:
        """What must not move: messages, proposals, agents, meta.git's refs."""
        refs = self.refs()
        return {
            "messages": [
                (m["id"], m["from"], m["to"])
                for m in self.admin.get("/messages?since=0&limit=1000")["messages"]
            ],
            "proposals": [(p["id"], p["state"]) for p in self.admin.get("/proposals")["proposals"]],
            "agents": sorted(a["name"] for a in self.admin.get("/status")["agents"]),
            "refs": refs,
        }


def auth(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


@pytest.fixture(scope="module")
def tcp_hive() -> Iterator[TcpHive]:
    tmp = Path(tempfile.mkdtemp(prefix="hhtcp-", dir="/tmp"))
    api_port, git_port = free_port(), free_port()
    try:
        proc, log = launch(
            tmp,
            resync_seconds=30,
            api={"listen": f"127.0.0.1:{api_port}", "per_client": 16},
            git={"listen": f"127.0.0.1:{git_port}"},
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    h = TcpHive(tmp, proc, api_port, git_port)
    try:
        manager = ApiClient(f"http://127.0.0.1:{api_port}", token=h.credential(MANAGER))
        request_and_approve(manager, h.admin, ("alice", "bob", "dave"))
        for name in ("alice", "bob", "dave"):
            wait_for(f"{name}'s credential", lambda n=name: h.layout.agent_credential(n).exists())
        h.dead = h.credential("dave")
        h.admin.post("/agents/dave/destroy", {})
        wait_for(
            "dave's credential removed", lambda: not h.layout.agent_credential("dave").exists()
        )
        h.carol = int(manager.post("/request_spawn", {"name": "carol"})["id"])
        yield h
    finally:
        shut(proc, log, tmp / "state")
        shutil.rmtree(tmp, ignore_errors=True)


def _refused_401(reply: Reply) -> tuple[bool, str]:
    return reply.status == 401 and reply.error.get("code") == "unauthorized", reply.brief()


def test_no_or_wrong_credential_is_401_everywhere(tcp_hive: TcpHive, tally: Tally) -> None:
    h = tcp_hive
    before = h.snapshot()
    alice = h.credential("alice")
    basic = base64.b64encode(f"alice:{alice}".encode()).decode()
    variants: list[tuple[str, list[tuple[str, str]], str]] = [
        ("no credential", [], ""),
        ("garbage bearer", [auth("A" * 43)], ""),
        ("the operator key", [auth(h.key)], ""),
        ("a destroyed agent's credential", [auth(h.dead)], ""),
        ("alice's credential as Basic", [("Authorization", f"Basic {basic}")], ""),
        ("alice's credential with another scheme", [("Authorization", f"Token {alice}")], ""),
        ("alice's credential in the query", [], f"?access_token={alice}"),
        ("alice's credential as a cookie", [("Cookie", f"hyperhive_session={alice}")], ""),
        ("empty bearer", [("Authorization", "Bearer ")], ""),
        ("over-long bearer", [auth(alice * 8)], ""),
    ]
    for method, path, body in AGENT_VERBS + MANAGER_VERBS + ADMIN_ROUTES:
        for what, headers, query in variants:
            reply = http(h.api, method, path + query, headers=headers,
                         body=body if method == "POST" else b"")  # fmt: skip
            ok, detail = _refused_401(reply)
            tally.record(NO_CREDENTIAL, f"{method} {path} ({what})", ok, detail)
    # a rotated credential: the old one stops at once (rotation = what recreate does)
    old = h.credential("bob")
    AgentCredentials(h.layout).issue("bob")  # as the controller does at recreate
    for method, path, body in AGENT_VERBS:
        reply = http(h.api, method, path, headers=[auth(old)],
                     body=body if method == "POST" else b"")  # fmt: skip
        ok, detail = _refused_401(reply)
        tally.record(NO_CREDENTIAL, f"{method} {path} (bob's rotated credential)", ok, detail)
    after = h.snapshot()
    tally.record(NO_CREDENTIAL, "state afterwards", after == before, "state moved")
    tally.assert_refused(NO_CREDENTIAL)


def test_no_one_can_speak_as_another(tcp_hive: TcpHive, tally: Tally) -> None:
    h = tcp_hive
    alice = auth(h.credential("alice"))
    start = max([m[0] for m in h.snapshot()["messages"]] or [0])
    sender_fields = ("from", "sender", "identity", "agent", "as", "on_behalf_of")
    for method, path, body in AGENT_VERBS:
        if method != "POST":
            continue
        for field in sender_fields:
            doc = {**body, field: "manager"}
            if path == "/wake" and field == "from":
                continue  # a wake's label: lands in alice's own inbox (checked below)
            reply = http(h.api, method, path, headers=[alice], body=doc)
            refused = reply.status == 400 and reply.error.get("field") == field
            tally.record(IMPERSONATION, f"{path} with body {field}=manager", refused, reply.brief())
    proxy_headers = [
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-User", "manager"),
        ("X-Remote-User", "manager"),
        ("X-Hyperhive-Agent", "manager"),
        ("Forwarded", "for=10.0.0.1;by=manager"),
        ("Remote-User", "manager"),
    ]
    for name, value in proxy_headers:
        reply = http(h.api, "POST", "/send", headers=[alice, (name, value)],
                     body={"to": "bob", "body": f"via {name}"})  # fmt: skip
        tally.record(IMPERSONATION, f"/send with {name}: {value}", reply.status == 200,
                     reply.brief())  # fmt: skip
        reply = http(h.api, "GET", "/list", headers=[alice, (name, value)])
        tally.record(IMPERSONATION, f"manager's /list with {name}: {value}",
                     reply.status == 404, reply.brief())  # fmt: skip
    for method, path, body in MANAGER_VERBS:
        for variant in (path, f"/manager{path}", f"/agents/manager{path}", f"{path}?as=manager"):
            reply = http(h.api, method, variant, headers=[alice],
                         body=body if method == "POST" else b"")  # fmt: skip
            tally.record(IMPERSONATION, f"alice: {method} {variant}", reply.status in (404, 405),
                         reply.brief())  # fmt: skip
    # paths that name bob: never bob's inbox (404, or alice's own)
    for variant in ("/agents/bob/recv", "/bob/recv", "//recv?agent=bob", "/recv?agent=bob",
                    "/recv/../bob/recv"):  # fmt: skip
        reply = http(h.api, "POST", variant, headers=[alice], body={})
        doc = reply.json() or {}
        msg = doc.get("message") if isinstance(doc, dict) else None
        own = reply.status == 200 and (msg is None or msg.get("to") == "alice")
        tally.record(IMPERSONATION, f"alice: POST {variant}",
                     reply.status in (404, 405) or own, reply.brief())  # fmt: skip
    # wake's label cannot reach anyone else's inbox
    reply = http(h.api, "POST", "/wake", headers=[alice], body={"from": "manager", "body": "w"})
    tally.record(IMPERSONATION, "/wake from=manager (own inbox only)", reply.status == 200,
                 reply.brief())  # fmt: skip
    # everything that got in is alice's, and only alice's and bob's inboxes moved
    new = [
        m
        for m in h.admin.get(f"/messages?since={start}&limit=1000")["messages"]
        if m["kind"] != "event"
    ]
    strays = [
        m for m in new
        if not (m["from"] == "alice" or (m["kind"] == "wake" and m["to"] == "alice"))
    ]  # fmt: skip
    tally.record(IMPERSONATION, "messages attributed to anyone but alice", not strays,
                 json.dumps(strays)[:300])  # fmt: skip
    tally.assert_refused(IMPERSONATION)


def test_the_admin_api_is_not_on_the_agent_listener(tcp_hive: TcpHive, tally: Tally) -> None:
    h = tcp_hive
    before = h.snapshot()
    for who in (MANAGER, "alice"):
        for method, path, body in ADMIN_ROUTES:
            reply = http(h.api, method, path, headers=[auth(h.credential(who))],
                         body=body if method == "POST" else b"")  # fmt: skip
            tally.record(ADMIN, f"{who}: {method} {path}", reply.status in (404, 405),
                         reply.brief())  # fmt: skip
    tally.record(ADMIN, "state afterwards", h.snapshot() == before, "state moved")
    tally.assert_refused(ADMIN)


def test_rebinding_and_cross_site_are_refused(tcp_hive: TcpHive, tally: Tally) -> None:
    h = tcp_hive
    before = h.snapshot()
    mgr = auth(h.credential(MANAGER))
    port = h.api_port
    for method, path, body in AGENT_VERBS + MANAGER_VERBS:
        for host in (f"evil.example:{port}", f"127.0.0.1.nip.io:{port}"):
            reply = http(h.api, method, path, headers=[mgr], host=host,
                         body=body if method == "POST" else b"")  # fmt: skip
            ok = reply.status == 403 and reply.error.get("code") == "bad_host"
            tally.record(REBIND, f"{method} {path} Host: {host}", ok, reply.brief())
        if method != "POST":
            continue
        for what, extra in (
            ("Origin of a page", [("Origin", "http://127.0.0.2:8080")]),
            ("opaque Origin", [("Origin", "null")]),
            ("Sec-Fetch-Site: cross-site", [("Sec-Fetch-Site", "cross-site")]),
        ):
            reply = http(h.api, method, path, headers=[mgr, *extra], body=body)
            tally.record(REBIND, f"{path} ({what})", reply.status == 403, reply.brief())
        for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
            reply = http(h.api, method, path, headers=[mgr, ("Content-Type", ctype)],
                         body=json.dumps(body))  # fmt: skip
            tally.record(REBIND, f"{path} as {ctype}", reply.status == 415, reply.brief())
    tally.record(REBIND, "state afterwards", h.snapshot() == before, "state moved")
    tally.assert_refused(REBIND)


def test_hostile_bodies_are_4xx(tcp_hive: TcpHive, tally: Tally) -> None:
    h = tcp_hive
    alice = auth(h.credential("alice"))
    json_ct = ("Content-Type", "application/json")
    cases: list[tuple[str, bytes, int, list[tuple[str, str]]]] = [
        ("1 GiB announced", b"", 413, [("Content-Length", str(1 << 30))]),
        ("100k-deep JSON", b"[" * 100_000 + b"]" * 100_000, 400, []),
        ("lone surrogate", b'{"to": "bob", "body": "\\ud800"}', 400, []),
        ("invalid UTF-8", b'{"to": "bob", "body": "\xff\xfe"}', 400, []),
        ("NaN", b'{"to": "bob", "body": NaN}', 400, []),
        ("not an object", b'["to", "bob"]', 400, []),
        ("int past 64 bits", b'{"ids": [' + b"9" * 30 + b"]}", 400, []),
    ]
    for what, raw, want, extra in cases:
        headers = [alice, json_ct]
        length = None
        for k, v in extra:
            if k == "Content-Length":
                length = int(v)
        path = "/ack" if "ids" in what or "64 bits" in what else "/send"
        with connect(h.api, 15) as s:
            s.sendall(request_bytes("POST", path, host=f"127.0.0.1:{h.api_port}",
                                    headers=headers, body=raw, content_length=length))  # fmt: skip
            reply = read_reply(s)
        tally.record(BODIES, f"{path}: {what}", reply.status == want, reply.brief())
    assert "Traceback" not in h.log()
    tally.assert_refused(BODIES)


def test_one_address_cannot_starve_the_listener(tcp_hive: TcpHive, tally: Tally) -> None:
    h = tcp_hive
    bob = ApiClient(f"http://127.0.0.1:{h.api_port}", token=h.credential("bob"), timeout=10)
    held: list[socket.socket] = []
    try:
        # 60 idle connections and 20 slowloris heads from one address (the cap is 16)
        for _ in range(60):
            held.append(socket.create_connection(h.api, timeout=5))
        for _ in range(20):
            s = socket.create_connection(h.api, timeout=5)
            s.sendall(b"POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(s)
        answered = 0
        for _ in range(20):
            try:
                bob.close()  # a new connection each time: it must be admitted
                bob.get("/status")
                answered += 1
            except (OSError, ApiError):  # counted: not answered
                pass
        tally.record(EXHAUST, "bob's requests with 80 connections held from his address",
                     answered == 20, f"{answered} of 20 answered")  # fmt: skip
    finally:
        for s in held:
            s.close()
    tally.assert_refused(EXHAUST)


def _git(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "operator",
        "GIT_AUTHOR_EMAIL": "op@example.org",
        "GIT_COMMITTER_NAME": "operator",
        "GIT_COMMITTER_EMAIL": "op@example.org",
    }
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {r.stderr}")
    return r


def test_meta_git_only_for_the_operator(tcp_hive: TcpHive, tally: Tally, tmp_path: Path) -> None:
    h = tcp_hive
    url = f"http://127.0.0.1:{h.git_port}/meta.git"
    key = ["-c", f"http.extraHeader=Authorization: Bearer {h.key}"]
    clone = tmp_path / "m"
    _git(*key, "clone", "-q", url, str(clone), cwd=tmp_path, check=True)
    _git(*key, "fetch", "-q", "--tags", cwd=clone, check=True)
    pid = h.carol
    _git("tag", f"approved/{pid}", f"proposal/{pid}", cwd=clone, check=True)
    _git("tag", "deployed/9999", f"proposal/{pid}", cwd=clone, check=True)
    before = h.snapshot()
    header = "http.extraHeader=Authorization: "
    tokens = {
        "no credential": [],
        "alice's credential": ["-c", f"{header}Bearer {h.credential('alice')}"],
        "a destroyed agent's": ["-c", f"{header}Bearer {h.dead}"],
        "the key in another scheme": ["-c", f"{header}Token {h.key}"],
    }
    for what, opts in tokens.items():
        r = _git(*opts, "push", "origin", f"approved/{pid}", cwd=clone)
        tally.record(GIT, f"push an approval ({what})", r.returncode != 0, r.stderr[-200:])
        r = _git(*opts, "ls-remote", url, cwd=tmp_path)
        tally.record(GIT, f"ls-remote ({what})", r.returncode != 0, r.stderr[-200:])
    for user_pw in (f"operator:{h.credential('alice')}", f"alice:{h.credential('alice')}",
                    f"{h.key}:", "operator:"):  # fmt: skip
        basic_url = url.replace("http://", f"http://{user_pw}@")
        r = _git("push", basic_url, f"approved/{pid}", cwd=clone)
        tally.record(GIT, f"push with Basic {user_pw.split(':')[0][:8]}:…", r.returncode != 0,
                     r.stderr[-200:])  # fmt: skip
    # a forged controller ref with the operator's key: the hooks run as for a local push
    r = _git(*key, "push", "origin", "deployed/9999", cwd=clone)
    tally.record(GIT, "push a forged deployed/ tag with the key (pre-receive)",
                 r.returncode != 0 and "deployed/9999" in r.stderr, r.stderr[-300:])  # fmt: skip
    # raw requests: a page riding on remembered Basic credentials, foreign Host, other paths
    basic = base64.b64encode(f"operator:{h.key}".encode()).decode()
    op_basic = ("Authorization", f"Basic {basic}")
    raws: list[tuple[str, str, str, list[tuple[str, str]], str | None, set[int]]] = [
        ("cross-site push form", "POST", "/meta.git/git-receive-pack",
         [op_basic, ("Origin", "http://evil.example"),
          ("Content-Type", "application/x-git-receive-pack-request")], None, {403}),
        ("Sec-Fetch-Site cross-site", "POST", "/meta.git/git-receive-pack",
         [op_basic, ("Sec-Fetch-Site", "cross-site")], None, {403}),
        ("rebinding Host", "GET", "/meta.git/info/refs?service=git-upload-pack",
         [op_basic], f"evil.example:{h.git_port}", {403}),
        ("dumb HEAD", "GET", "/meta.git/HEAD", [op_basic], None, {404}),
        ("dumb packs", "GET", "/meta.git/objects/info/packs", [op_basic], None, {404}),
        ("config", "GET", "/meta.git/config", [op_basic], None, {404}),
        ("operator.key", "GET", "/operator.key", [op_basic], None, {404}),
        ("traversal", "GET", "/meta.git/../operator.key", [op_basic], None, {404}),
        ("other repo", "GET", "/manager/meta/info/refs?service=git-upload-pack", [op_basic],
         None, {404}),
        ("upload-archive", "POST", "/meta.git/git-upload-archive", [op_basic], None, {404}),
        ("no key, info/refs", "GET", "/meta.git/info/refs?service=git-receive-pack", [], None,
         {401}),

    ]  # fmt: skip
    for what, method, path, headers, host, want in raws:
        reply = http(h.git_addr, method, path, headers=headers, host=host,
                     body=b"0000" if method == "POST" else b"")  # fmt: skip
        tally.record(GIT, f"{what}: {method} {path}", reply.status in want, reply.brief())
    # a 64 MiB push announced without the key: refused from the head, nothing buffered
    for what, headers in (
        ("no key", []),
        ("alice's credential", [auth(h.credential("alice"))]),
    ):
        with connect(h.git_addr, 15) as s:
            s.sendall(request_bytes("POST", "/meta.git/git-receive-pack",
                                    host=f"127.0.0.1:{h.git_port}", headers=headers,
                                    body=b"0000", content_length=64 << 20))  # fmt: skip
            reply = read_reply(s)
        tally.record(GIT, f"64 MiB push announced ({what})", reply.status == 401, reply.brief())
    after = h.snapshot()
    tally.record(GIT, "meta.git refs and proposals afterwards", after == before, "state moved")
    tally.assert_refused(GIT)

    # the legitimate flow, in the same run: the operator's push approves carol
    r = _git(*key, "push", "origin", f"approved/{pid}", cwd=clone, check=True)
    wait_for("carol running", lambda: any(
        a["name"] == "carol" and a.get("phase") == "running"
        for a in h.admin.get("/status")["agents"]), timeout=60)  # fmt: skip


def test_the_manager_is_held_to_its_namespace_on_meta_git(
    tcp_hive: TcpHive, tally: Tally, tmp_path: Path
) -> None:
    h = tcp_hive
    url = f"http://127.0.0.1:{h.git_port}/meta.git"
    mine = ["-c", f"http.extraHeader=Authorization: Bearer {h.credential(MANAGER)}"]
    clone = tmp_path / "mgr"
    _git(*mine, "clone", "-q", url, str(clone), cwd=tmp_path, check=True)
    _git(*mine, "fetch", "-q", "--tags", cwd=clone, check=True)
    (clone / "agents" / "zed").mkdir(parents=True)
    (clone / "agents" / "zed" / "agent.yaml").write_text(
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: zed\nspec:\n  model: haiku\n"
    )
    _git("add", "-A", cwd=clone, check=True)
    _git("commit", "-q", "-m", "zed", cwd=clone, check=True)
    head = _git("rev-parse", "HEAD", cwd=clone, check=True).stdout.strip()
    manager = ApiClient(f"http://127.0.0.1:{h.api_port}", token=h.credential(MANAGER))
    pid = int(manager.post("/request_spawn", {"name": "yve"})["id"])
    _git(*mine, "fetch", "-q", "--tags", cwd=clone, check=True)
    wait_for("no deploy under way", lambda: all(
        p["state"] not in ("approved", "building")
        for p in h.admin.get("/proposals")["proposals"]), timeout=60)  # fmt: skip
    before = h.snapshot()
    attempts = {
        "an approval of a pending proposal": [f"proposal/{pid}:refs/tags/approved/{pid}"],
        "a denial": [f"proposal/{pid}:refs/tags/denied/{pid}"],
        "main (fast-forward)": ["HEAD:refs/heads/main"],
        "main deleted": [":refs/heads/main"],
        "a new branch": ["HEAD:refs/heads/x"],
        "a plain tag": ["HEAD:refs/tags/v1"],
        "a forged deployed/ tag": ["HEAD:refs/tags/deployed/9999"],
        "last-deploy": ["HEAD:refs/hyperhive/last-deploy"],
        "the notes": ["HEAD:refs/notes/hyperhive"],
        "a look-alike namespace": ["HEAD:refs/hyperhive/managers/x"],
        "its namespace and main together": [
            "HEAD:refs/hyperhive/manager/w",
            "HEAD:refs/heads/main",
        ],
    }
    for what, refspecs in attempts.items():
        forced = [spec if spec.startswith(":") else f"+{spec}" for spec in refspecs]
        r = _git(*mine, "push", "origin", *forced, cwd=clone)
        tally.record(GIT_MANAGER, f"push {what}", r.returncode != 0 and
                     "the manager pushes only to refs/hyperhive/manager/" in r.stderr,
                     r.stderr[-300:])  # fmt: skip
    # Basic auth with the manager's credential is the same manager: same refusal
    basic_url = url.replace("http://", f"http://manager:{h.credential(MANAGER)}@")
    r = _git("push", basic_url, "HEAD:refs/heads/main", cwd=clone)
    tally.record(GIT_MANAGER, "push main with Basic manager:<credential>", r.returncode != 0,
                 r.stderr[-200:])  # fmt: skip
    # another agent's credential is not the manager's: 401 before git runs
    alice = ["-c", f"http.extraHeader=Authorization: Bearer {h.credential('alice')}"]
    r = _git(*alice, "push", "origin", "HEAD:refs/hyperhive/manager/alice", cwd=clone)
    tally.record(GIT_MANAGER, "push to the namespace with alice's credential",
                 r.returncode != 0, r.stderr[-200:])  # fmt: skip
    after = h.snapshot()
    tally.record(GIT_MANAGER, "meta.git refs and proposals afterwards", after == before,
                 "state moved")  # fmt: skip
    tally.assert_refused(GIT_MANAGER)

    # legitimate: its namespace, then request_apply_commit over TCP proposes that commit
    _git(*mine, "push", "origin", f"HEAD:refs/hyperhive/manager/{head}", cwd=clone, check=True)
    p = manager.post("/request_apply_commit", {"commit": head, "note": "zed"})
    assert h.admin.get(f"/proposals/{p['id']}")["commit"] == head


def test_the_legitimate_flow_still_works(tcp_hive: TcpHive) -> None:
    h = tcp_hive
    alice = ApiClient(f"http://127.0.0.1:{h.api_port}", token=h.credential("alice"))
    bob = ApiClient(f"http://127.0.0.1:{h.api_port}", token=h.credential("bob"), timeout=40)
    while bob.post("/recv", {})["message"] is not None:
        pass
    alice.post("/send", {"to": "bob", "body": "still here"})
    m = bob.post("/recv", {"wait_seconds": 10})["message"]
    assert (m["from"], m["body"]) == ("alice", "still here")
    assert "Traceback" not in h.log()
