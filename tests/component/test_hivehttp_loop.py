"""Which loop a hivehttp core serves on (``hivehttp.loops``): uvloop's when it can be
imported, asyncio's when asked (``HIVEHTTP_LOOP=asyncio``) or when uvloop is missing.

The rest of the hivehttp tests run on the default (uvloop) loop; these pin the choice and
that a core on the fallback loop serves the same."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import sys
from pathlib import Path

import pytest

from hivehttp import HttpCore
from hivehttp.guard import Message, Receive, Scope, Send
from hivehttp.loops import LOOP_ENV, new_loop


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``hello`` and the peer it was told (``scope["client"]``)."""
    while True:
        msg: Message = await receive()
        if not msg.get("more_body"):
            break
    body = f"hello {scope.get('client')}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self.path))


def _serve_and_ask(core: HttpCore, tmp_path: Path) -> list[str]:
    """Serve ``hello`` on a unix socket and on TCP; one request to each, twice on one
    keep-alive connection; the bodies."""
    unix = core.serve_unix(hello, tmp_path / "s.sock")
    tcp = core.serve_tcp(hello, "127.0.0.1", 0)
    bodies = []
    u = _UnixConnection(tmp_path / "s.sock")
    for _ in range(2):
        u.request("GET", "/")
        r = u.getresponse()
        assert r.status == 200
        bodies.append(r.read().decode())
    u.close()
    assert tcp.port is not None
    t = http.client.HTTPConnection("127.0.0.1", tcp.port, timeout=10)
    t.request("GET", "/")
    r = t.getresponse()
    assert r.status == 200
    bodies.append(r.read().decode())
    t.close()
    unix.stop()
    tcp.stop()
    return bodies


def _module_of(loop: asyncio.AbstractEventLoop) -> str:
    return type(loop).__module__.split(".")[0]


async def _running() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_the_core_serves_on_uvloop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)
    core = HttpCore("test-uvloop")
    core.start()
    try:
        assert _module_of(core.loop) == "uvloop"
        assert core.call(_running()) is core.loop  # wake_async compares loops by identity
        bodies = _serve_and_ask(core, tmp_path)
    finally:
        core.stop()
    assert bodies[:2] == ["hello None", "hello None"]  # a unix peer has no address
    assert bodies[2].startswith("hello ('127.0.0.1', ")


def test_hivehttp_loop_asyncio_serves_on_the_standard_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    core = HttpCore("test-asyncio")
    core.start()
    try:
        assert _module_of(core.loop) == "asyncio"
        bodies = _serve_and_ask(core, tmp_path)
    finally:
        core.stop()
    assert bodies[:2] == ["hello None", "hello None"]
    assert bodies[2].startswith("hello ('127.0.0.1', ")


def test_without_uvloop_the_standard_loop_is_used_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)
    # stand-in for a platform without a uvloop wheel: the import fails
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with caplog.at_level(logging.INFO, logger="hivehttp.loops"):
        loop = new_loop()
    try:
        assert _module_of(loop) == "asyncio"
    finally:
        loop.close()
    assert "uvloop cannot be imported" in caplog.text


def test_a_misspelt_loop_choice_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LOOP_ENV, "uv-loop")
    with pytest.raises(ValueError, match=f"{LOOP_ENV}='uv-loop'"):
        new_loop()
