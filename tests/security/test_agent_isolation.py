"""Agents are isolated from each other and from the operator's powers (local runtime).

``probe.py`` runs inside an agent's sandbox exactly as the local driver runs the
harness: the argv from ``LocalDriver.command`` (the driver's own builder, with the
probe as the harness command), the environment from ``agent_env``, the agent's
state dir as cwd, a new session. From there it tries other agents' files, sockets
and credentials, host.sock, broker.sqlite, meta.git, operator.key and the
controller's ``/proc/<pid>/environ``; all must fail, while its own socket, state
and credential work. From outside, a credential on another agent's socket (or on
host.sock) is a 401, and nothing in the state dir is open to other local users.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_config
from controller.drivers.local import LocalDriver, agent_env
from schemas.client import ApiError, UnixClient
from tests.security.support import Hive, Tally, wait_for

CATEGORY = "agent isolation"
PROBE = Path(__file__).with_name("probe.py")


def _driver(h: Hive) -> LocalDriver:
    """The driver ``hyperhive serve`` builds for this config, running the probe instead."""
    cfg = load_config(h.tmp / "config.json")
    argv = [sys.executable, "-c", PROBE.read_text()]
    return LocalDriver(h.layout, cfg, h.env, argv=argv, sandbox=cfg.local_sandbox)


def _run_probe(h: Hive, agent: str, others: list[str]) -> dict[str, dict[str, Any]]:
    driver = _driver(h)
    bwrap, why = driver.bwrap()
    if bwrap is None:
        pytest.skip(f"no bubblewrap sandbox on this machine ({why}); CI installs bubblewrap")
    lay = h.layout
    args = {
        "self": agent,
        "others": others,
        "state": str(lay.state),
        "run": str(lay.run),
        "controller": h.proc.pid if h.proc else 0,
        "dashboard": h.dashboard_port,
        "sockets": {
            f"{a}/{k}": str(lay.agent_sock(a) if k == "mcp" else lay.agent_web_sock(a))
            for a in [agent, *others]
            for k in ("mcp", "web")
        },
        "home": str(Path(os.path.expanduser("~"))),
        "outside": str(h.tmp / "controller.log"),
    }
    # a JSON argument, never a bare path: the sandbox binds back /tmp paths in argv
    driver.argv = (*driver.argv, json.dumps(args))
    argv = driver.command(agent)
    assert os.path.basename(argv[0]) == "bwrap", argv[:3]
    env = agent_env(lay, agent, 0, h.env)
    env.update(HYPERHIVE_SANDBOX="bwrap", TMPDIR="/tmp")  # as LocalDriver._spawn does
    res = subprocess.run(
        argv,
        cwd=lay.agent_state(agent),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out: dict[str, dict[str, Any]] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize(
    ("agent", "others"), [("alice", ["bob", "manager"]), ("manager", ["alice"])]
)
def test_an_agent_cannot_reach_past_its_sandbox(
    hive: Hive, tally: Tally, agent: str, others: list[str]
) -> None:
    h = hive
    isolated = [
        c
        for a in h.status()["agents"]
        if a["name"] == agent
        for c in a.get("conditions", [])
        if c.get("type") == "Isolated"
    ]
    seen = _run_probe(h, agent, others)
    assert isolated and isolated[0]["status"] in (True, "True"), isolated
    for name, result in seen.items():
        if name.startswith("own: "):
            assert result["ok"], f"{agent} cannot {name[5:]}: {result['what']}"
        elif name.startswith("observe: "):
            tally.figure(f"inside {agent}'s sandbox, {name[9:]}", result["what"])
        else:
            tally.record(CATEGORY, f"{agent}: {name}", not result["ok"], result["what"])
    tally.assert_refused(CATEGORY)


def test_a_credential_works_only_on_its_own_socket(hive: Hive, tally: Tally) -> None:
    h = hive
    lay = h.layout
    creds = {a: h.credential(a) for a in ("manager", "alice", "bob")}
    creds["the operator key"] = h.key
    creds["no credential"] = ""
    sockets = {a: lay.agent_sock(a) for a in ("manager", "alice", "bob")}
    sockets["host.sock"] = lay.host_sock
    for holder, token in creds.items():
        for owner, path in sockets.items():
            mine = holder == owner or (holder == "the operator key" and owner == "host.sock")
            client = UnixClient(str(path), timeout=10, token=token or None)
            try:
                client.get("/status")
                status = 200
            except ApiError as exc:
                status = exc.status
            if mine:
                assert status == 200, f"{holder} on its own {owner}: {status}"
                continue
            tally.record(
                CATEGORY,
                f"{holder}'s credential on {owner}'s socket",
                status == 401,
                f"answered {status}",
            )
            # and what it would be used for: approve carol, send as the socket's owner
            if owner == "host.sock":
                path, body = f"/proposals/{h.carol}/approve", {}
            else:
                path, body = "/send", {"to": "manager", "body": "PWNED: sent as someone else"}
            try:
                client.post(path, body)
                status = 200
            except ApiError as exc:
                status = exc.status
            tally.record(
                CATEGORY,
                f"POST {path} on {owner}'s socket with {holder}'s credential",
                status == 401,
                f"answered {status}",
            )
    tally.assert_refused(CATEGORY)


def test_the_state_dir_is_the_operators_alone(hive: Hive, tally: Tally) -> None:
    h = hive
    lay = h.layout
    top = stat.S_IMODE(h.state.stat().st_mode)
    tally.record(
        CATEGORY,
        "another local user enters the state dir",
        top & 0o077 == 0,
        f"{h.state} is {oct(top)}",
    )
    secrets = [
        lay.broker_db,
        lay.broker_db.with_name("broker.sqlite-wal"),
        lay.meta_git,
        lay.meta_git / "config",
        lay.log_dir,
        *sorted(lay.log_dir.glob("*.log")),
        lay.operator_key,
        lay.host_sock,
        *(lay.agent_credential(a) for a in ("manager", "alice", "bob")),
        *(lay.agent_claude(a) for a in ("manager", "alice", "bob")),
        *(lay.agent_sock_dir(a) for a in ("manager", "alice", "bob")),
    ]
    for p in secrets:
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except FileNotFoundError:  # absent (a WAL checkpointed away): nothing to read
            continue
        tally.record(
            CATEGORY,
            f"another local user reads {p.relative_to(h.state)}",
            mode & 0o077 == 0,
            f"mode {oct(mode)}",
        )
    # behind the 0700 state dir, what else carries group/other bits (settings.json is 0444
    # on purpose: read-only for its harness)
    loose = [
        str(p.relative_to(h.state))
        for p, mode in modes_under(h.state)
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077
    ]
    tally.figure(
        "state dir paths with group/other bits (behind the 0700 state dir)",
        f"{len(loose)}" + (f", e.g. {loose[:4]}" if loose else ""),
    )
    tally.assert_refused(CATEGORY)


def modes_under(root: Path) -> list[tuple[Path, int]]:
    """``(path, st_mode)`` of everything under ``root`` (symlinks not followed). The hive is
    running: its agents' claude CLIs make and remove lock and temporary files meanwhile
    (``.claude.json.lock``), so an entry gone between its listing and its ``lstat`` (or a
    directory gone before it is listed) is skipped: what is gone cannot be read."""
    out: list[tuple[Path, int]] = []
    for top, dirs, files in os.walk(root, onerror=lambda exc: None):
        for name in dirs + files:
            p = Path(top) / name
            try:
                out.append((p, p.lstat().st_mode))
            except FileNotFoundError:
                continue
    return out


HOSTILE_UI = r"""
import json, os, socket, sys
a = json.loads(sys.argv[1])
path = a["sock"]
os.unlink(path)  # an agent owns its socket dir: it can put its own server there
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(16)
SCRIPT = b"<script>fetch('/api/proposals/1/approve',{method:'POST'})</script>"
ANSWERS = {
    "/api/state": (b"200 OK", [b"Content-Type: text/html"], SCRIPT),
    "/api/history": (b"200 OK", [b"Content-Type: text/html; x=application/json"], SCRIPT),
    "/api/turns": (b"200 OK", [
        b"Content-Type: application/json",
        b"Set-Cookie: hyperhive_session=planted; Path=/",
        b"Access-Control-Allow-Origin: *",
        b"Access-Control-Allow-Credentials: true",
        b"Content-Security-Policy: default-src *",
        b"Refresh: 0; url=http://evil.example/",
    ], b'{"x": "' + SCRIPT.replace(b'"', b"'") + b'"}'),
    "/api/send": (b"302 Found", [b"Location: http://evil.example/", b"Content-Type: text/html"],
                  SCRIPT),
    "/events/stream": (b"200 OK", [b"Content-Type: text/event-stream"],
                       b"data: " + SCRIPT + b"\n\n"),
}
seen = []
with open(a["log"], "w") as log:
    for _ in range(len(ANSWERS)):
        c, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += c.recv(65536)
        head = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        target = head[0].split(" ")[1].split("?")[0]
        log.write(json.dumps({"target": target, "headers": head[1:]}) + "\n")
        log.flush()
        status, headers, body = ANSWERS.get(target, (b"404 Not Found", [], b""))
        c.sendall(b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
                  + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        c.close()
"""


def test_a_hostile_agent_ui_cannot_act_on_the_dashboard_origin(
    hive: Hive, tally: Tally, tmp_path: Path
) -> None:
    """Bob (untrusted: he runs whatever his model decides) replaces the server on his own
    web.sock with one answering script, cookies, CORS grants and redirects. Through the
    dashboard's proxy none of it reaches the operator's browser as something that runs or
    sticks, and the operator's cookie never reaches bob."""
    h = hive
    driver = _driver(h)
    if driver.bwrap()[0] is None:
        pytest.skip("no bubblewrap sandbox on this machine; CI installs bubblewrap")
    sock = h.layout.agent_web_sock("bob")
    log = h.layout.agent_state("bob") / "hostile-ui.log"
    driver.argv = (
        sys.executable,
        "-c",
        HOSTILE_UI,
        json.dumps({"sock": str(sock), "log": str(log)}),
    )
    env = agent_env(h.layout, "bob", 0, h.env)
    env.update(HYPERHIVE_SANDBOX="bwrap", TMPDIR="/tmp")
    before = sock.stat().st_ino
    proc = subprocess.Popen(
        driver.command("bob"),
        cwd=h.layout.agent_state("bob"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for("bob's own server", lambda: sock.exists() and sock.stat().st_ino != before)
        replies = {
            path: h.dget(f"/agents/bob{path}")
            for path in ("/api/state", "/api/history", "/api/turns", "/events/stream")
        }
        replies["/api/send"] = h.dpost("/agents/bob/api/send", {"body": "hello bob"})
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for path in ("/api/state", "/api/history", "/api/send"):
        r = replies[path]
        tally.record(
            CATEGORY,
            f"bob's UI answers {path} with HTML/script (or a redirect) through the proxy",
            r.status == 502 and b"<script" not in r.body,
            r.brief(),
        )
    for path in ("/api/turns", "/events/stream"):
        r = replies[path]
        names = {k for k, _ in r.headers}
        ok = (
            r.header("content-security-policy") == "default-src 'none'; sandbox"
            and r.header("x-content-type-options") == "nosniff"
            and not names & {"set-cookie", "access-control-allow-origin", "refresh", "location"}
            and (r.header("content-type") or "").split(";")[0]
            in ("application/json", "text/event-stream")
        )
        tally.record(
            CATEGORY,
            f"bob's UI answers {path} with a cookie, CORS grants and its own CSP",
            ok,
            f"{r.status} {r.headers}",
        )
    got = [json.loads(line) for line in log.read_text().splitlines()]
    leaked = [
        g
        for g in got
        if any(x.lower().startswith(("cookie:", "authorization:")) for x in g["headers"])
    ]
    tally.record(
        CATEGORY,
        "the operator's cookie or credential reaches bob through the proxy",
        len(got) == 5 and not leaked,
        f"{len(got)} requests reached bob; with the operator's cookie: {leaked}",
    )
    # the operator puts bob's real UI back: restart him from the dashboard
    assert h.dpost("/api/agents/bob/restart", {}).status == 200
    wait_for("bob's UI back", lambda: h.dget("/agents/bob/api/state").status == 200, timeout=60)
    tally.assert_refused(CATEGORY)
