"""The web UI while the harness starts (``harness.webstart.LateApp``), on a real listener.

Before the turn loop exists the UI socket already answers: ``/api/state`` with every key
of the real document and ``"status": "starting"``, the page and its assets as the real app
serves them; any other request is held until the real app is handed over (then answered
by it; ``/healthz`` too), or answered 503 ``starting`` when that takes too long.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import UnixHTTPConnection, request
from test_harness_web import Rig, rig

from harness import web as webmod
from harness import webstart
from harness.httpserve import UnixEndpoint, WebServer
from harness.webstart import LateApp

__all__ = ["rig"]  # the real WebApp fixture, shared with test_harness_web.py


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[LateApp, Path]]:
    late = LateApp("alice", "agent", wait=30.0)
    path = tmp_path / "web.sock"
    server = WebServer(late, UnixEndpoint(path))
    server.start()
    assert server.wait_bound(10)
    yield late, path
    server.stop()


def get(path: Path, method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return request(UnixHTTPConnection(path), method, url, body, headers)


def test_state_says_starting_with_every_key_of_the_real_document(
    front: tuple[LateApp, Path], rig: Rig
) -> None:
    late, path = front
    status, doc = get(path, "GET", "/api/state")
    assert status == 200
    assert doc["status"] == "starting" and doc["agent"] == "alice" and doc["flavor"] == "agent"
    real = rig[1].state()
    assert set(doc) == set(real)
    assert set(doc["login"]) == set(real["login"])
    assert not late.is_ready


def test_page_and_assets_answer_as_the_real_app(front: tuple[LateApp, Path], rig: Rig) -> None:
    _, path = front
    c = rig[0]
    for url in ("/", "/static/app.js", "/static/app.css"):
        conn = UnixHTTPConnection(path)
        conn.request("GET", url)
        resp = conn.getresponse()
        real = c.simulate_get(url)
        assert resp.status == 200
        assert resp.read() == real.content
        assert resp.getheader("content-type") == real.headers["content-type"]
        assert resp.getheader("cache-control") == "no-cache"
    assert dict(webstart.ASSETS) == {k: v.encode() for k, v in webmod.ASSETS.items()}


def test_other_requests_wait_for_the_real_app(front: tuple[LateApp, Path], rig: Rig) -> None:
    late, path = front
    _, app, sock, _ = rig
    sock.deliver("bob", "hello")
    got: list[tuple[int, Any]] = []

    def fetch(url: str) -> None:
        got.append(get(path, "GET", url))

    held = [threading.Thread(target=fetch, args=(u,)) for u in ("/api/turns?limit=5", "/healthz")]
    for t in held:
        t.start()
    held[0].join(0.5)
    assert all(t.is_alive() for t in held) and not got  # held: not "starting", not an error
    late.ready(app.asgi)
    for t in held:
        t.join(10)
    assert sorted(got, key=str) == sorted([(200, {"turns": []}), (200, {"ok": True})], key=str)
    status, doc = get(path, "GET", "/api/state")
    assert status == 200 and doc["status"] != "starting" and doc["model"] == "haiku"


def test_a_request_held_too_long_is_503_starting(tmp_path: Path) -> None:
    late = LateApp("alice", "agent", wait=0.1)
    path = tmp_path / "web.sock"
    server = WebServer(late, UnixEndpoint(path))
    server.start()
    try:
        assert server.wait_bound(10)
        status, doc = get(path, "POST", "/api/send", b'{"body": "hi"}')
        assert status == 503 and doc["error"]["code"] == "starting"
        conn = UnixHTTPConnection(path)
        conn.request("HEAD", "/api/state")
        assert conn.getresponse().status == 200
    finally:
        server.stop()
