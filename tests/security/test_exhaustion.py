"""Exhaustion: open streams, slowloris, idle sockets. The operator's ``/api/state`` keeps
answering and an agent's own calls keep working.

- 30 SSE streams on ``/messages/stream`` held open by logged-in sessions (the caps
  allow 8 per session), while 40 probes of ``/api/state`` all answer; streams
  without a session are 401 at once; a 9th stream of one session is 503.
- 110 slowloris connections drip a request head a byte a second: every one is
  closed at the header deadline, and ``/api/state`` answers throughout (bounded ~15 s).
- 600 idle connections from five loopback addresses (past the listener's cap):
  the oldest idle ones are shed, ``/api/state`` answers.
- 40, then 80 (past the cap), idle connections on alice's socket: her own calls
  (with her credential) still work, and so does her harness.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from schemas.client import UnixClient
from tests.security.support import (
    SESSION_COOKIE,
    Hive,
    Tally,
    connect,
    http,
    read_reply,
    request_bytes,
)

SSE = "stream exhaustion"
SLOW = "slowloris / idle connections"
HEADER_DEADLINE = 10.0
"""``hivehttp`` ``Limits.header_timeout`` (seconds to send a whole request head)."""
SLOWLORIS = 110
SLOWLORIS_BOUND = 15.0
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 7)]
"""Source addresses of the flood: the per-client cap counts each one apart."""
PER_ADDRESS = 120
"""Connections per address: under the per-client cap (128), past the listener's (512) in all."""


def _probe(h: Hive, n: int, timeout: float = 5.0) -> list[str]:
    """``n`` probes of ``/api/state`` with the operator's cookie: the failures."""
    bad: list[str] = []
    for _ in range(n):
        try:
            r = h.dget("/api/state", timeout=timeout)
            if r.status != 200:
                bad.append(r.brief())
        except OSError as exc:
            bad.append(repr(exc))
    return bad


@contextlib.contextmanager
def _closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


def test_open_streams_do_not_starve_the_dashboard(hive: Hive, tally: Tally) -> None:
    h = hive
    host = f"127.0.0.1:{h.dashboard_port}"
    sessions = [h.cookie] + [h.new_session() for _ in range(3)]

    def open_stream(
        cookie: str | None, path: str = "/messages/stream"
    ) -> tuple[int, socket.socket]:
        s = connect(h.dash, 10)
        headers = [("Accept", "text/event-stream")]
        if cookie:
            headers.append(("Cookie", f"{SESSION_COOKIE}={cookie}"))
        s.sendall(request_bytes("GET", path, host=host, headers=headers))
        return read_reply(s).status, s

    with _closing([]) as held:
        statuses = []
        for i in range(30):
            status, s = open_stream(sessions[i // 8])
            statuses.append(status)
            held.append(s)
        tally.record(
            SSE,
            "30 logged-in streams on /messages/stream (8 per session)",
            statuses == [200] * 30,
            f"statuses {sorted(set(statuses))}",
        )
        ninth, s = open_stream(sessions[0])
        held.append(s)
        tally.record(SSE, "a 9th stream of one session", ninth == 503, f"{ninth}")
        anon = [open_stream(None)[0] for _ in range(30)]
        tally.record(
            SSE,
            "30 streams without a session (the issue's cross-origin <img> loads)",
            anon == [401] * 30,
            f"statuses {sorted(set(anon))}",
        )
        bad = _probe(h, 40)
        tally.record(
            SSE,
            "/api/state while 30 streams are held",
            not bad,
            f"{40 - len(bad)}/40 probes answered; failures: {bad[:3]}",
        )
        tally.figure(
            "/api/state while 30 SSE streams are held", f"{40 - len(bad)}/40 probes answered"
        )
    tally.assert_refused(SSE)


def test_slowloris_is_cut_at_the_header_deadline(hive: Hive, tally: Tally) -> None:
    h = hive
    start = time.monotonic()
    opened: dict[socket.socket, float] = {}
    closed: dict[socket.socket, float] = {}
    probes: list[str] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            bad = _probe(h, 1, timeout=5.0)
            probes.append(bad[0] if bad else "ok")
            time.sleep(0.2)

    with _closing([]) as socks:
        for _ in range(SLOWLORIS):
            s = connect(h.dash, 5)
            s.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{h.dashboard_port}\r\n".encode())
            s.setblocking(False)
            opened[s] = time.monotonic()
            socks.append(s)
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        next_drip = time.monotonic()
        while len(closed) < len(socks) and time.monotonic() - start < SLOWLORIS_BOUND:
            drip = time.monotonic() >= next_drip
            if drip:
                next_drip += 1.0
            for s in socks:
                if s in closed:
                    continue
                try:
                    if s.recv(4096) == b"":
                        closed[s] = time.monotonic()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    closed[s] = time.monotonic()
                    continue
                if drip:
                    try:
                        s.send(b"X")  # one more byte of a header that never ends
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[s] = time.monotonic()
            time.sleep(0.05)
        done.set()
        prober.join()
    lasted = sorted(closed[s] - opened[s] for s in closed)
    ok_probes = probes.count("ok")
    failed = [p for p in probes if p != "ok"][:3]
    tally.record(
        SLOW,
        f"{SLOWLORIS} slowloris connections (a header byte a second)",
        len(closed) == SLOWLORIS and lasted[-1] <= HEADER_DEADLINE + 3.0,
        f"{len(closed)}/{SLOWLORIS} closed by the server, after "
        + (f"{lasted[0]:.1f}-{lasted[-1]:.1f} s" if lasted else "never"),
    )
    tally.record(
        SLOW,
        f"/api/state while {SLOWLORIS} slowloris connections are open",
        ok_probes == len(probes) and len(probes) >= 10,
        f"{ok_probes}/{len(probes)} probes answered; failures: {failed}",
    )
    tally.figure(
        "slowloris",
        f"{len(closed)}/{SLOWLORIS} connections closed at "
        + (f"{lasted[0]:.1f}-{lasted[-1]:.1f} s" if lasted else "never")
        + f" (head deadline {HEADER_DEADLINE:g} s); /api/state answered {ok_probes}/{len(probes)}",
    )
    tally.assert_refused(SLOW)


def _many(h: Hive, first: bytes) -> list[socket.socket]:
    """``PER_ADDRESS`` connections from each of ``ADDRESSES`` to the dashboard, each
    having sent ``first`` (nothing when empty)."""
    socks: list[socket.socket] = []
    for addr in ADDRESSES:
        for _ in range(PER_ADDRESS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(5)
            s.bind((addr, 0))
            s.connect(h.dash)
            if first:
                s.sendall(first)
    return socks


def _still_open(socks: list[socket.socket]) -> int:
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += s.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def test_idle_connections_past_the_caps_are_shed(hive: Hive, tally: Tally) -> None:
    h = hive
    with _closing(_many(h, b"")) as socks:
        bad = _probe(h, 40)
        alive = _still_open(socks)
    held = len(socks)
    tally.record(
        SLOW,
        f"/api/state with {held} idle connections open from {len(ADDRESSES)} addresses",
        not bad,
        f"{40 - len(bad)}/40 probes answered; {alive} of the idle connections still open; "
        f"failures: {bad[:3]}",
    )
    tally.figure(
        "held connections until /api/state fails",
        f"none failed: {SLOWLORIS} slowloris, 30 SSE streams and {held} idle connections "
        f"(the listener kept {alive} of them, shedding the oldest) all left /api/state answering",
    )
    tally.assert_refused(SLOW)


def test_slow_bodies_past_the_caps_do_not_lock_the_operator_out(hive: Hive, tally: Tally) -> None:
    """A local process (another user, or an agent: it shares the host's network) sends
    request heads whose bodies never finish, from many loopback addresses: no session
    needed, since the body is read before the app looks at the cookie."""
    h = hive
    head = request_bytes(
        "POST",
        "/api/send",
        host=f"127.0.0.1:{h.dashboard_port}",
        headers=[("Content-Type", "application/json")],
        content_length=1000,
    )
    with _closing(_many(h, head + b"{")) as socks:
        time.sleep(0.3)
        bad = _probe(h, 40)
        alive = _still_open(socks)
    held = len(socks)
    tally.record(
        SLOW,
        f"/api/state with {held} unfinished request bodies from {len(ADDRESSES)} addresses",
        not bad,
        f"{40 - len(bad)}/40 probes answered; {alive} of the slow uploads still open; "
        f"failures: {bad[:3]}",
    )
    tally.figure(
        "unfinished request bodies",
        f"{held} from {len(ADDRESSES)} addresses (past the listener cap): /api/state answered "
        f"{40 - len(bad)}/40 probes, {alive} uploads kept",
    )
    tally.assert_refused(SLOW)


def test_idle_connections_do_not_starve_an_agent_socket(hive: Hive, tally: Tally) -> None:
    h = hive
    sock = h.layout.agent_sock("alice")
    own = UnixClient(str(sock), timeout=10, token=h.credential("alice"), keepalive=False)
    with _closing([]) as idle:
        for n in (40, 80):
            while len(idle) < n:
                idle.append(connect(sock, 5))
            time.sleep(0.2)
            problems: list[str] = []
            try:
                own.get("/status")
                own.post("/send", {"to": "manager", "body": f"still here with {n} idle sockets"})
            except Exception as exc:  # what failed is the finding
                problems.append(repr(exc))
            ui = h.dget("/agents/alice/api/state")
            if ui.status != 200:
                problems.append(f"alice's UI through the proxy: {ui.brief()}")
            tally.record(
                SLOW,
                f"alice's own calls with {n} idle connections on her socket",
                not problems,
                "; ".join(problems) or "status, send and her UI answered",
            )
    direct = http(
        sock, "GET", "/status", headers=[("Authorization", f"Bearer {h.credential('alice')}")]
    )
    assert direct.status == 200, direct.brief()
    tally.assert_refused(SLOW)
