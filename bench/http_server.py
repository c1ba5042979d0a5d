"""Server-model benchmark, run by hand: ``.venv/bin/python bench/http_server.py``.

(Not ``bench/http.py``: run as a script, a bench's directory comes first on ``sys.path``,
and a file named ``http.py`` there would shadow the standard library's ``http`` package
for every bench.)

The same three measurements against the current tree ("after": falcon.asgi apps on
hivehttp's one asyncio loop) and against an older revision ("before", default
``b6b87e4``: falcon WSGI apps on waitress, a thread pool per listener), each
server in a child process of its own, driven over real sockets from this one:

(a) the dashboard with N open SSE streams on ``/messages/stream`` (N = 0, 30, 100,
    each on its own connection, as 30 ``<img>`` tags in a page would open them):
    ``/api/state`` latency p50/p99 and how many of ``--probes`` sequential probes
    (a new connection each, ``--probe-timeout`` seconds) succeed; how many streams
    were answered, and the server's threads. "after" logs in once (the real
    ``/login?token=`` flow) and lifts the dashboard's stream caps so that all N
    streams really stay open (the server model alone); one more row keeps the
    default caps (8 per login, 64 in all).
(b) threads, resident memory and descriptors of a process serving 0 / 50 / 200
    agent sockets (``controller.httpserve.SocketRegistry``, each checking its
    agent's credential after), idle and with 50 ``POST /recv {"wait_seconds": 60}``
    parked on 50 of them; and ``GET /status`` latency on another agent socket
    while they are parked.
(c) a trivial ``GET`` (a falcon resource answering ``{"ok": true}``) and the real
    ``GET /status`` of an agent socket over a unix socket, keep-alive: one client
    in a row (p50 / p99 µs) and ``--clients`` clients at once (requests/s).

Ratios are after / before. The real apps are used throughout
(``make_dashboard_app`` with a real ``Broker`` holding a few hundred messages and a
small fake ``SwarmOps``, ``SocketRegistry``); only the swarm behind them is a fake.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

REPO = Path(__file__).resolve().parents[1]
BEFORE_REV = "b6b87e4"
"""The last commit before issue 9: waitress everywhere, no credentials."""

AGENTS = [f"a{i}" for i in range(200)]


# ====================================================================== the server child


class FakeOps:
    """Just enough ``SwarmOps`` for ``/api/state`` and the agent sockets: ``agents`` agents,
    all Ready, no proposals, no tombstones."""

    def __init__(self, names: list[str]) -> None:
        self.names = frozenset(["manager", *names])

    def agent_names(self) -> frozenset[str]:
        return self.names

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        return ()

    def proposals(self, pending_only: bool = False) -> list[Any]:
        return []

    def tombstones(self) -> list[dict[str, Any]]:
        return []

    def version(self) -> str:
        return "1"  # nothing here ever changes

    def status(self) -> dict[str, Any]:
        now = "2026-01-01T00:00:00.000Z"

        def cond(ctype: str) -> dict[str, Any]:
            return {"type": ctype, "status": "True", "reason": "Ok", "message": "",
                    "lastTransitionTime": now}  # fmt: skip

        rows = [
            {"name": n, "phase": "Running", "observed_commit": "ab" * 20,
             "desired_commit": "ab" * 20, "held": None, "web_port": 8100 + i, "model": "haiku",
             "suspended": False, "detail": "",
             "conditions": [cond(c) for c in ("Ready", "UpToDate", "LoggedIn")]}
            for i, n in enumerate(sorted(self.names)[:12])
        ]  # fmt: skip
        return {"agents": rows, "runtime": "local", "pending_proposals": 0}

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(name)


def _old(module: str) -> Any:
    """A module of the "before" tree, untyped: its API is not today's."""
    return importlib.import_module(module)


class _Child:
    """The server side, in its own process: imports the tree it was pointed at."""

    def __init__(self, model: str, state: Path) -> None:
        self.model = model  # "after" or "before"
        self.state = state
        self.registry: Any = None
        self.broker: Any = None
        self.listeners: list[Any] = []

    def _broker(self) -> Any:
        if self.broker is None:
            from controller.broker import Broker

            self.broker = Broker(self.state / "broker.sqlite")
            for i in range(300):  # something for the inbox and the flow to show
                sender, to = ("a1", "operator") if i % 3 == 0 else ("operator", f"a{i % 12}")
                self.broker.send(sender, to, f"message {i}: " + "lorem ipsum " * 8)
        return self.broker

    def _layout(self) -> Any:
        from controller.paths import Layout

        return Layout(state=self.state, run=self.state / "run")

    def dashboard(self, caps: bool) -> dict[str, Any]:
        """Serve the dashboard on 127.0.0.1:<ephemeral>; its port and (after) a login token."""
        ops = FakeOps(AGENTS[:12])
        if self.model == "before":
            make_app = _old("controller.dashboard.app").make_dashboard_app
            # as controller/serve.py served it then
            served = _old("controller.httpserve").serve_tcp(
                make_app(ops, self._broker()), "127.0.0.1", 0, threads=24
            )
            self.listeners.append(served)
            return {"port": served.port, "login": None}
        from controller.auth import LoginTokens
        from controller.auth.secretfile import new_secret
        from controller.dashboard.app import make_dashboard_app
        from hivehttp import browser_policy, serve_tcp

        tokens = LoginTokens()
        layout = self._layout()
        lift = {} if caps else {"streams_per_session": 10_000, "streams_total": 10_000}
        app = make_dashboard_app(
            ops,
            self._broker(),
            operator_key=new_secret(),
            login_tokens=tokens,
            web_sock=layout.agent_web_sock,
            **lift,  # type: ignore[arg-type]
        )
        served = serve_tcp(app, "127.0.0.1", 0, policy=browser_policy(), name="dashboard")
        self.listeners.append(served)
        return {"port": served.port, "login": tokens.issue().token}

    def agents(self, n: int) -> dict[str, Any]:
        """Serve exactly the first ``n`` agent sockets; their paths and credentials."""
        layout = self._layout()
        names = AGENTS[:n]
        t0 = time.perf_counter()
        tokens: dict[str, str] = {}
        if self.registry is None:
            ops = FakeOps(AGENTS)
            if self.model == "before":
                self.registry = _old("controller.httpserve").SocketRegistry(
                    self._broker(), ops, layout
                )
            else:
                from controller.auth import AgentCredentials
                from controller.httpserve import SocketRegistry

                self.credentials = AgentCredentials(layout)
                self.registry = SocketRegistry(self._broker(), ops, layout, self.credentials)
        if self.model == "after":
            tokens = {a: self.credentials.ensure(a) for a in names}
        self.registry.sync(names)
        return {
            "seconds": time.perf_counter() - t0,
            "socks": {a: str(layout.agent_sock(a)) for a in names},
            "tokens": tokens,
        }

    def ping(self) -> dict[str, Any]:
        """Serve the trivial app on a unix socket; its path."""
        path = self.state / "run" / "ping.sock"
        if self.model == "before":
            import falcon

            class Ping:
                def on_get(self, req: Any, resp: Any) -> None:
                    resp.media = {"ok": True}

            wsgi = falcon.App()
            wsgi.add_route("/ping", Ping())
            # an agent socket's sizing then (4 workers)
            self.listeners.append(_old("controller.httpserve").serve_unix(wsgi, path, name="ping"))
        else:
            import falcon.asgi

            import hivehttp

            class APing:
                async def on_get(self, req: Any, resp: Any) -> None:
                    resp.media = {"ok": True}

            asgi = falcon.asgi.App()
            asgi.add_route("/ping", APing())
            self.listeners.append(hivehttp.serve_unix(asgi, path, name="ping"))
        return {"path": str(path)}

    @staticmethod
    def stats() -> dict[str, Any]:
        """Threads (every OS thread of the process), RSS (MiB) and open descriptors."""
        with open("/proc/self/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return {
            "threads": len(os.listdir("/proc/self/task")),
            "rss_mb": rss / 1024,
            "fds": len(os.listdir("/proc/self/fd")),
        }


def child_main(model: str, tree: str, state: str) -> None:
    """Serve commands from stdin, one JSON line each, answering one JSON line on stdout."""
    sys.path.insert(0, tree)
    import logging

    logging.basicConfig(level=logging.ERROR)
    child = _Child(model, Path(state))
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        try:
            res = getattr(child, op)(**cmd)
        except Exception as e:  # say it to the parent, which stops
            res = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()
    for served in child.listeners:
        served.stop(1.0)
    if child.registry is not None:
        child.registry.close_all(timeout=1.0)
    os._exit(0)  # daemon server threads need not be joined


class Server:
    """The parent's handle on one server child."""

    def __init__(self, model: str, tree: Path, workdir: Path) -> None:
        self.model = model
        state = Path(tempfile.mkdtemp(prefix=f"{model}-", dir=workdir))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                model,
                str(tree),
                str(state),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=state,
        )
        self.pid = self.proc.pid

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        """Run one command in the child; raises RuntimeError with the child's error."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.model} server exited (code {self.proc.wait(5)})")
        res: dict[str, Any] = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"{self.model} server: {res['error']}")
        return res

    def close(self) -> None:
        """Ask the child to stop; kill it if it does not within 5 s."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"op": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)


# ====================================================================== raw HTTP clients


def _connect_tcp(port: int, timeout: float) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _connect_unix(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def request_bytes(
    method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request, ready to send."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(f: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one response with a Content-Length."""
    status_line = f.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = f.read(n) if n else b""
    return status, headers, body


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


# ====================================================================== (a) streams vs state


def login(port: int, token: str | None) -> dict[str, str]:
    """The headers a logged-in browser sends (after: the session cookie from ``/login``)."""
    if token is None:
        return {}
    with _connect_tcp(port, 5) as s:
        s.sendall(request_bytes("GET", f"/login?token={token}", f"127.0.0.1:{port}"))
        status, headers, _ = read_response(s.makefile("rb"))
    cookie = headers.get("set-cookie", "").split(";", 1)[0]
    if status not in (302, 303) or not cookie:
        raise RuntimeError(f"login failed: {status} {headers}")
    return {"Cookie": cookie}


def open_streams(port: int, n: int, headers: dict[str, str]) -> tuple[list[socket.socket], Any]:
    """Open ``n`` connections and ask each for ``/messages/stream``; after a second, count the
    ones answered 200 (streaming), refused (any other status) and unanswered (queued)."""
    socks = []
    req = request_bytes("GET", "/messages/stream", f"127.0.0.1:{port}", headers)
    for _ in range(n):
        s = _connect_tcp(port, 5)
        s.sendall(req)
        socks.append(s)
    time.sleep(1.0)
    counts = {"streaming": 0, "refused": 0, "unanswered": 0}
    for s in socks:
        s.setblocking(False)
        try:
            head = s.recv(64)
        except BlockingIOError:
            head = b""
        if head.startswith(b"HTTP/1.1 200"):
            counts["streaming"] += 1
        elif head:
            counts["refused"] += 1
        else:
            counts["unanswered"] += 1
    return socks, counts


def probe_state(
    port: int, headers: dict[str, str], probes: int, timeout: float
) -> tuple[list[float], int]:
    """``probes`` sequential ``GET /api/state``, a new connection each; latencies (ms) of the
    ones answered 200 within ``timeout`` seconds, and how many were."""
    req = request_bytes("GET", "/api/state", f"127.0.0.1:{port}", headers)
    lat: list[float] = []
    for _ in range(probes):
        t0 = time.perf_counter()
        try:
            with _connect_tcp(port, timeout) as s:
                s.settimeout(timeout)
                s.sendall(req)
                status, _, body = read_response(s.makefile("rb"))
            if status == 200 and body.startswith(b"{"):
                lat.append((time.perf_counter() - t0) * 1e3)
        except OSError:
            pass
    return lat, len(lat)


def streams_vs_state(
    server: Server, n: int, probes: int, timeout: float, caps: bool
) -> dict[str, Any]:
    """(a) on a fresh server: open ``n`` streams, probe ``/api/state``, close the streams.

    A fresh server per N: under waitress a closed stream keeps its thread until the next
    heartbeat write fails (up to 15 s), which would leak into the next N.
    """
    dash = server.call("dashboard", caps=caps)
    port = dash["port"]
    headers = login(port, dash["login"])
    probe_state(port, headers, 3, timeout)  # warm
    socks, answered = open_streams(port, n, headers)
    threads = server.call("stats")["threads"]
    lat, ok = probe_state(port, headers, probes, timeout)
    for s in socks:
        s.close()
    return {"n": n, "lat": lat, "ok": ok, "threads": threads, **answered}


# ====================================================================== (b) threads


def park_recvs(socks: dict[str, str], tokens: dict[str, str], names: list[str]) -> list[Any]:
    """``POST /recv {"wait_seconds": 60}`` on each of ``names``' sockets, left parked."""
    body = b'{"wait_seconds": 60}'
    conns = []
    for a in names:
        headers = {"Authorization": f"Bearer {tokens[a]}"} if tokens else {}
        s = _connect_unix(socks[a], 5)
        s.sendall(request_bytes("POST", "/recv", "localhost", headers, body))
        conns.append(s)
    return conns


def status_latency(path: str, token: str | None, n: int = 300) -> list[float]:
    """``n`` keep-alive ``GET /status`` on one socket; latencies in µs."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = request_bytes("GET", "/status", "localhost", headers)
    lat = []
    with _connect_unix(path, 5) as s:
        f = s.makefile("rb")
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(req)
            status, _, _ = read_response(f)
            if status != 200:
                raise RuntimeError(f"GET /status: {status}")
            lat.append((time.perf_counter() - t0) * 1e6)
    return lat


def threads_by_sockets(server: Server, counts: list[int], parked: int) -> list[dict[str, Any]]:
    """(b) for each socket count: sync, stats idle, park ``parked`` recvs, stats, release."""
    out = []
    for n in counts:
        res = server.call("agents", n=n)
        idle = server.call("stats")
        row: dict[str, Any] = {"n": n, "open_s": res["seconds"], "idle": idle}
        if n >= parked > 0:
            conns = park_recvs(res["socks"], res["tokens"], AGENTS[:parked])
            time.sleep(1.0)
            row["parked"] = server.call("stats")
            other = AGENTS[parked] if n > parked else AGENTS[0]  # else beside a parked recv
            row["status_us"] = status_latency(res["socks"][other], res["tokens"].get(other))
            for s in conns:
                s.close()
            time.sleep(1.5)  # the server notices, the recvs give up
        out.append(row)
    return out


# ====================================================================== (c) trivial GET


def sequential(path: str, url: str, headers: dict[str, str], n: int) -> list[float]:
    """µs per keep-alive request, ``n`` in a row after 200 warm-up requests."""
    req = request_bytes("GET", url, "localhost", headers)
    lat = []
    with _connect_unix(path, 5) as s:
        f = s.makefile("rb")
        for i in range(n + 200):
            t0 = time.perf_counter()
            s.sendall(req)
            status, _, _ = read_response(f)
            if status != 200:
                raise RuntimeError(f"GET {url}: {status}")
            if i >= 200:
                lat.append((time.perf_counter() - t0) * 1e6)
    return lat


def concurrent(path: str, url: str, headers: dict[str, str], clients: int, seconds: float) -> float:
    """Requests/s of ``clients`` keep-alive clients sending back to back for ``seconds``."""
    req = request_bytes("GET", url, "localhost", headers)
    done = [0] * clients
    start = threading.Barrier(clients + 1)
    end = [0.0]

    def client(k: int) -> None:
        with _connect_unix(path, 10) as s:
            f = s.makefile("rb")
            start.wait()
            while time.perf_counter() < end[0]:
                s.sendall(req)
                read_response(f)
                done[k] += 1

    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    end[0] = time.perf_counter() + seconds + 0.05
    t0 = time.perf_counter()
    start.wait()
    for t in ts:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def trivial_get(server: Server, n: int, clients: int, seconds: float) -> dict[str, Any]:
    """(c) the trivial app and an agent socket's ``GET /status``."""
    ping = server.call("ping")["path"]
    res = server.call("agents", n=1)
    token = res["tokens"].get("a0")
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    out: dict[str, Any] = {}
    for label, path, url, headers in (
        ("trivial", ping, "/ping", {}),
        ("status", res["socks"]["a0"], "/status", auth),
    ):
        lat = sequential(path, url, headers, n)
        out[label] = {
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "rps": concurrent(path, url, headers, clients, seconds),
        }
    return out


# ====================================================================== the report


def ratio(after: float, before: float) -> str:
    """``x<after/before>``, or ``-`` when either is missing or zero."""
    if before != before or after != after or before == 0:
        return "-"
    return f"x{after / before:.2f}"


def fmt(v: float, unit: str = "", digits: int = 1) -> str:
    """A figure with its unit; ``-`` for NaN."""
    return "-" if v != v else f"{v:.{digits}f}{unit}"


def extract(rev: str, dest: Path) -> Path:
    """``git archive`` of ``rev`` unpacked under ``dest`` (the repository is not touched)."""
    out = dest / f"tree-{rev}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(out, filter="data")
    return out


def main() -> int:
    """Run (a), (b), (c) for "before" and "after"; print the figures and the ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", default=BEFORE_REV, help=f"the old revision (default {BEFORE_REV})")
    ap.add_argument("--no-before", action="store_true", help="measure the current tree only")
    ap.add_argument("--streams", default="0,30,100", help="(a) open streams (default 0,30,100)")
    ap.add_argument("--probes", type=int, default=20, help="(a) /api/state probes per N")
    ap.add_argument("--probe-timeout", type=float, default=2.0, help="(a) seconds per probe")
    ap.add_argument("--sockets", default="0,50,200", help="(b) agent sockets (default 0,50,200)")
    ap.add_argument("--parked", type=int, default=50, help="(b) parked recvs (default 50)")
    ap.add_argument("--requests", type=int, default=2000, help="(c) sequential requests")
    ap.add_argument("--clients", type=int, default=4, help="(c) concurrent clients")
    ap.add_argument("--seconds", type=float, default=3.0, help="(c) seconds of concurrent load")
    ap.add_argument("--parts", default="a,b,c", help="which measurements (default a,b,c)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(*args.child)
        return 0

    work = Path(tempfile.mkdtemp(prefix="hh-bench-http-", dir="/tmp"))
    models: list[tuple[str, Path]] = []
    if not args.no_before and importlib.util.find_spec("waitress") is None:
        print("waitress is not installed: measuring the current tree only "
              "(`.venv/bin/pip install waitress` for the before figures)")  # fmt: skip
        args.no_before = True
    if not args.no_before:
        models.append(("before", extract(args.before, work)))
    models.append(("after", REPO))
    streams = [int(x) for x in args.streams.split(",")]
    parts = set(args.parts.split(","))
    sockets = [int(x) for x in args.sockets.split(",")]
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load}; before = "
        f"{'-' if args.no_before else args.before} (waitress), after = this tree (hivehttp); "
        f"files in {work}",
        flush=True,
    )
    res: dict[str, dict[str, Any]] = {}
    for model, tree in models:

        def fresh(run: Any, model: str = model, tree: Path = tree) -> Any:
            server = Server(model, tree, work)
            try:
                return run(server)
            finally:
                server.close()

        r: dict[str, Any] = {}
        if "a" in parts:
            r["a"] = [
                fresh(lambda s, n=n: streams_vs_state(s, n, args.probes, args.probe_timeout, False))
                for n in streams
            ]
            print(f"  {model}: (a) done", flush=True)
        if "b" in parts:
            r["b"] = fresh(lambda s: threads_by_sockets(s, sockets, args.parked))
            print(f"  {model}: (b) done", flush=True)
        if "c" in parts:
            r["c"] = fresh(lambda s: trivial_get(s, args.requests, args.clients, args.seconds))
            print(f"  {model}: (c) done", flush=True)
        if model == "after" and "a" in parts:
            r["a_caps"] = [
                fresh(
                    lambda s: streams_vs_state(
                        s, max(streams), args.probes, args.probe_timeout, True
                    )
                )
            ]
        res[model] = r
    report(res, args)
    return 0


def report(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """Print the tables of the parts that ran."""
    before = res.get("before", {})
    after = res["after"]

    if "a" in after:
        report_a(before, after, args)
    if "b" in after:
        report_b(before, after, args)
    if "c" in after:
        report_c(before, after, args)


def report_a(before: dict[str, Any], after: dict[str, Any], args: argparse.Namespace) -> None:
    """(a): one row per N and model, with the ratios."""
    print(
        f"\n(a) /api/state with N open /messages/stream streams: {args.probes} probes, "
        f"a new connection each, {args.probe_timeout:g} s timeout"
    )
    print(
        f"  {'N':>4} {'model':7} {'streams 200/refused/queued':>27} {'threads':>7} "
        f"{'ok':>6} {'p50 ms':>8} {'p99 ms':>8}"
    )
    rows_b = {row["n"]: row for row in before.get("a", [])}
    for row in after["a"]:
        pairs = [("before", rows_b.get(row["n"])), ("after", row)]
        for model, r in pairs:
            if r is None:
                continue
            print(
                f"  {r['n']:>4} {model:7} "
                f"{r['streaming']:>11}/{r['refused']}/{r['unanswered']:<7}".ljust(47)
                + f"{r['threads']:>7} {r['ok']:>3}/{args.probes:<2} "
                f"{fmt(pct(r['lat'], 50), '', 2):>8} {fmt(pct(r['lat'], 99), '', 2):>8}"
            )
        b = rows_b.get(row["n"])
        if b is not None:
            print(
                f"  {'':4} {'ratio':7} {'':27} {'':7} {'':6} "
                f"{ratio(pct(row['lat'], 50), pct(b['lat'], 50)):>8} "
                f"{ratio(pct(row['lat'], 99), pct(b['lat'], 99)):>8}"
            )
    for r in after.get("a_caps", []):
        print(
            f"  {r['n']:>4} after, default caps (8 per login): streams "
            f"{r['streaming']}/{r['refused']}/{r['unanswered']}, threads {r['threads']}, "
            f"ok {r['ok']}/{args.probes}, p50 {fmt(pct(r['lat'], 50), ' ms', 2)}, "
            f"p99 {fmt(pct(r['lat'], 99), ' ms', 2)}"
        )


def report_b(before: dict[str, Any], after: dict[str, Any], args: argparse.Namespace) -> None:
    """(b): one row per socket count and model, with the ratios."""
    print(
        f"\n(b) a process serving N agent sockets: idle, then with {args.parked} parked recvs "
        "(threads / RSS MiB / fds), and GET /status on another socket meanwhile"
    )
    rows_b = {row["n"]: row for row in before.get("b", [])}
    for row in after["b"]:
        for model, r in (("before", rows_b.get(row["n"])), ("after", row)):
            if r is None:
                continue
            idle, parked = r["idle"], r.get("parked")
            line = (
                f"  {r['n']:>4} sockets {model:7} opened in {r['open_s']:5.2f} s | idle "
                f"{idle['threads']:>5} thr {idle['rss_mb']:6.1f} MiB {idle['fds']:>5} fd"
            )
            if parked is not None:
                lat = r["status_us"]
                line += (
                    f" | parked {parked['threads']:>5} thr {parked['rss_mb']:6.1f} MiB "
                    f"{parked['fds']:>5} fd | status p50 {pct(lat, 50):5.0f} µs "
                    f"p99 {pct(lat, 99):6.0f} µs"
                )
            print(line)
        b = rows_b.get(row["n"])
        if b is not None:
            line = (
                f"  {'':>4} ratio                          threads "
                f"{ratio(row['idle']['threads'], b['idle']['threads'])}, RSS "
                f"{ratio(row['idle']['rss_mb'], b['idle']['rss_mb'])}"
            )
            if "parked" in row and "parked" in b:
                line += (
                    f"; parked threads {ratio(row['parked']['threads'], b['parked']['threads'])}"
                    f", status p50 {ratio(pct(row['status_us'], 50), pct(b['status_us'], 50))}"
                )
            print(line)


def report_c(before: dict[str, Any], after: dict[str, Any], args: argparse.Namespace) -> None:
    """(c): the trivial GET and ``GET /status``, with the ratios."""
    nan = float("nan")
    print(
        f"\n(c) GET over a unix socket, keep-alive: one client ({args.requests} in a row) and "
        f"{args.clients} clients at once ({args.seconds:g} s)"
    )
    for label, what in (
        ("trivial", "GET /ping (a bare falcon resource)"),
        ("status", "GET /status (an agent socket, credential checked after)"),
    ):
        print(f"  {what}")
        cb = before.get("c", {}).get(label, {"p50": nan, "p99": nan, "rps": nan})
        ca = after["c"][label]
        for model, c in (("before", cb), ("after", ca)):
            if model == "before" and not before:
                continue
            print(
                f"    {model:7} p50 {fmt(c['p50'], ' µs', 0):>8}  p99 {fmt(c['p99'], ' µs', 0):>8}"
                f"  {fmt(c['rps'], ' req/s', 0):>12}"
            )
        if before:
            print(
                f"    {'ratio':7} p50 {ratio(ca['p50'], cb['p50']):>8}  "
                f"p99 {ratio(ca['p99'], cb['p99']):>8}  {ratio(ca['rps'], cb['rps']):>12}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
