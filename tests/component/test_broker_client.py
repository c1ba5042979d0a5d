"""``schemas.client.UnixClient`` against real hivehttp servers: persistent connections,
reconnects after a server restart or an idle close, per-thread connections for long polls,
the bearer credential and its 401s, and the 2-4-8-16-30 s retry schedule."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hivehttp import serve_unix
from schemas import client as client_mod
from schemas.client import RETRY_DELAYS, ApiError, UnixClient, Unreachable

TOKEN = "t" * 43


def _app() -> Any:
    """Echo app (ASGI): ``/sleep?S`` sleeps S seconds first, ``/fail`` answers a JSON 404,
    ``/private`` a JSON 401 unless the bearer is ``TOKEN``; others echo path, body length
    and the Authorization header."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        if path == "/sleep":
            await asyncio.sleep(float(scope["query_string"] or 0.5))
        status, doc = 200, {"path": path, "len": len(body), "auth": auth}
        if path == "/fail":
            status, doc = 404, {"error": {"code": "not_found", "message": "no"}}
        if path == "/private" and auth != f"Bearer {TOKEN}":
            status = 401
            doc = {"error": {"code": "unauthorized", "message": "needs alice's credential"}}
        raw = json.dumps(doc).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    return app


@pytest.fixture
def sock_path() -> Path:
    return Path(tempfile.mkdtemp(prefix="hh-cl-", dir="/tmp")) / "api.sock"


def test_one_connection_for_many_requests(sock_path: Path) -> None:
    served = serve_unix(_app(), sock_path)
    try:
        c = UnixClient(str(sock_path))
        for i in range(50):
            assert c.post("/x", {"i": i})["path"] == "/x"
        assert c.connections_opened == 1
        with pytest.raises(ApiError):
            c.get("/fail")
        assert c.get("/y")["path"] == "/y"
        assert c.connections_opened == 1  # an error status does not cost the connection
        off = UnixClient(str(sock_path), keepalive=False)
        for _ in range(5):
            off.get("/z")
        assert off.connections_opened == 5
        c.close()
    finally:
        served.stop()


def test_reconnects_after_the_server_restarts(sock_path: Path) -> None:
    served = serve_unix(_app(), sock_path)
    c = UnixClient(str(sock_path))
    assert c.get("/a")["path"] == "/a"
    served.stop()
    served = serve_unix(_app(), sock_path)
    try:
        # the pooled connection is dead; it is noticed before use, no retry needed
        assert c.get("/b")["path"] == "/b"
        assert c.connections_opened == 2
    finally:
        served.stop()
    with pytest.raises(Unreachable):
        c.get("/c")


def test_idle_connections_expire(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = serve_unix(_app(), sock_path)
    try:
        c = UnixClient(str(sock_path))
        c.get("/a")
        monkeypatch.setattr(client_mod, "MAX_IDLE_SECONDS", 0.05)
        time.sleep(0.1)
        c.get("/b")
        assert c.connections_opened == 2
    finally:
        served.stop()


def test_a_long_poll_does_not_block_the_same_clients_other_calls(sock_path: Path) -> None:
    served = serve_unix(_app(), sock_path)
    try:
        c = UnixClient(str(sock_path))
        c.get("/warm")
        t = threading.Thread(target=c.get, args=("/sleep?1.0",))
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        for _ in range(5):
            c.get("/quick")
        assert time.monotonic() - t0 < 0.5
        t.join(5)
        assert c.connections_opened == 2
        # many threads at once: each has its own connection; only POOL_SIZE stay idle
        ts = [threading.Thread(target=c.get, args=("/sleep?0.3",)) for _ in range(4)]
        for x in ts:
            x.start()
        for x in ts:
            x.join(5)
        assert len(c._pool) <= client_mod.POOL_SIZE
    finally:
        served.stop()


def test_server_closing_an_idle_connection_midway_is_retried_safely(sock_path: Path) -> None:
    """A pooled connection whose server end closes between the liveness check and the
    write: the request was never read, so it goes out once more on a new connection."""
    served = serve_unix(_app(), sock_path)
    try:
        c = UnixClient(str(sock_path))
        c.get("/a")
        conn, _ = c._pool[0]
        assert conn.sock is not None
        conn.sock.shutdown(socket.SHUT_WR)  # our writes now fail with EPIPE
        conn.dropped = lambda: False  # type: ignore[method-assign]
        assert c.post("/b", {"x": 1})["path"] == "/b"
        assert c.connections_opened == 2
    finally:
        served.stop()


def test_retry_schedule_is_2_4_8_16_30(sock_path: Path) -> None:
    slept: list[float] = []
    c = UnixClient(str(sock_path), sleep=slept.append)
    with pytest.raises(Unreachable):
        c.call("GET", "/x", retry=True)
    assert tuple(slept) == RETRY_DELAYS
    slept.clear()
    with pytest.raises(Unreachable):
        c.call("GET", "/x")  # retry=False: no sleeping
    assert slept == []


def test_the_token_goes_out_as_a_bearer_credential(sock_path: Path) -> None:
    served = serve_unix(_app(), sock_path)
    try:
        assert UnixClient(str(sock_path)).get("/x")["auth"] == ""
        c = UnixClient(str(sock_path), token=TOKEN)
        assert c.get("/x")["auth"] == f"Bearer {TOKEN}"
        assert c.post("/private", {})["auth"] == f"Bearer {TOKEN}"
        with pytest.raises(ApiError) as err:
            UnixClient(str(sock_path)).post("/private", {})
        assert (err.value.status, err.value.code) == (401, "unauthorized")
        assert "no credential was sent" in err.value.message
        assert "needs alice's credential" in err.value.message
        with pytest.raises(ApiError) as err:
            UnixClient(str(sock_path), token="wrong").get("/private")
        assert "credential sent to" in err.value.message and "refused" in err.value.message
        with pytest.raises(ApiError) as err:
            next(iter(UnixClient(str(sock_path)).stream("/private")))
        assert err.value.status == 401 and "no credential was sent" in err.value.message
    finally:
        served.stop()


def test_the_response_reader_handles_every_framing() -> None:
    """Content-Length, chunked, an interim 100, HEAD and 204 without a body, a body that
    runs to the end of the connection, and a close before any answer."""
    import http.client as hc
    import socket as so

    from schemas.client import _read_response

    def read(raw: bytes, *, head: bool = False, close: bool = False) -> tuple[int, bytes, bool]:
        a, b = so.socketpair()
        with a, b:
            b.sendall(raw)
            if close:
                b.shutdown(so.SHUT_WR)
            r = _read_response(a, head=head)
            return r.status, r.body, r.will_close

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    assert read(ok) == (200, b"{}", False)
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    )
    assert read(chunked) == (200, b"abcde", False)
    assert read(b"HTTP/1.1 100 Continue\r\n\r\n" + ok) == (200, b"{}", False)
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head=True) == (200, b"", False)
    assert read(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, b"", False)
    to_eof = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    assert read(to_eof, close=True) == (200, b"all of it", True)
    assert read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") == (200, b"", True)
    with pytest.raises(hc.RemoteDisconnected):
        read(b"", close=True)
    with pytest.raises(hc.IncompleteRead):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)
    with pytest.raises(hc.BadStatusLine):
        read(b"SSH-2.0-x\r\n\r\n")
