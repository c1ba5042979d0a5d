"""controller.unixhttp: one request over a real unix socket, against the real admin app
and against raw servers that answer in the shapes HTTP allows (and some it does not)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api_agent import FakeOps

from controller.api import make_admin_app
from controller.auth import ensure_operator_key
from controller.broker import Broker
from controller.paths import Layout
from controller.unixhttp import BadAnswer, request
from hivehttp import serve_unix


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    layout = Layout(tmp_path / "state", tmp_path / "run")
    broker = Broker(layout.state / "broker.sqlite")
    key = ensure_operator_key(layout)
    listener = serve_unix(make_admin_app(broker, FakeOps(), key), layout.host_sock)
    try:
        yield layout.host_sock, key
    finally:
        listener.stop(timeout=3.0)
        broker.close()


def test_get_and_post_with_the_key(admin: tuple[Path, str]) -> None:
    path, key = admin
    status = request(path, "GET", "/status", token=key)
    assert status.status == 200 and isinstance(status.body, dict)
    poke = request(path, "POST", "/poke", token=key, body={})
    assert (poke.status, poke.body) == (202, {"accepted": True})


def test_error_answers_name_code_and_field(admin: tuple[Path, str]) -> None:
    path, key = admin
    refused = request(path, "GET", "/status", token="x" * 43)
    assert refused.status == 401 and refused.error()[0] == "unauthorized"
    bad = request(path, "POST", "/poke", token=key, body={"surprise": 1})
    assert bad.status == 400
    code, message, field = bad.error()
    assert (code, field) == ("invalid", "surprise") and "surprise" in message, bad


def test_nobody_listening(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        request(tmp_path / "absent.sock", "GET", "/status", token=None)


def raw_server(path: Path, answer: bytes) -> threading.Thread:
    """Answer one connection with ``answer`` (after reading the request head), then close."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            conn.sendall(answer)
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_chunked_answer(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    body = b'{"a": [1, 2, 3], "b": "chunked"}'
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
    )
    t = raw_server(
        sock, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    assert request(sock, "GET", "/", token=None).body == {"a": [1, 2, 3], "b": "chunked"}
    t.join(5)


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
    ],
)
def test_answers_that_are_not_http_are_refused(tmp_path: Path, answer: bytes) -> None:
    sock = tmp_path / "s.sock"
    t = raw_server(sock, answer)
    with pytest.raises(BadAnswer):
        request(sock, "GET", "/", token=None)
    t.join(5)


def test_an_answer_longer_than_allowed_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    t = raw_server(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b" " * 5000)
    with pytest.raises(BadAnswer, match="longer than"):
        request(sock, "GET", "/", token=None, max_answer=1000)
    t.join(5)


class BigStatusOps(FakeOps):
    """``FakeOps`` whose ``/status`` is large and repetitive, as at 200 agents."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.body = json.dumps(
            {"agents": [{"name": f"a{i:03}", "phase": "running"} for i in range(200)]}
        ).encode()

    def status_json(self) -> bytes:
        self.calls += 1
        return self.body  # the same bytes object while nothing moved, as the swarm does


def test_status_goes_gzipped_and_decodes_to_the_same_document(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "state", tmp_path / "run")
    broker = Broker(layout.state / "broker.sqlite")
    key = ensure_operator_key(layout)
    ops = BigStatusOps()
    listener = serve_unix(make_admin_app(broker, ops, key), layout.host_sock)
    try:
        answer = request(layout.host_sock, "GET", "/status", token=key)
        assert answer.status == 200 and answer.body == json.loads(ops.body)
        # what went over the socket: gzip, far smaller, with Vary
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(layout.host_sock))
            s.sendall(
                b"GET /status HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip\r\n"
                b"Authorization: Bearer " + key.encode() + b"\r\nConnection: close\r\n\r\n"
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, content = raw.partition(b"\r\n\r\n")
        assert (
            b"content-encoding: gzip" in head.lower() and b"vary: accept-encoding" in head.lower()
        )
        assert len(content) * 10 < len(ops.body)
        assert gzip.decompress(content) == ops.body
        # a client that does not ask for gzip gets the document as it is
        plain = request(layout.host_sock, "GET", "/status", token=key)
        assert plain.body == json.loads(ops.body)
    finally:
        listener.stop(timeout=3.0)
        broker.close()


def test_a_gzip_answer_that_inflates_past_the_limit_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    packed = gzip.compress(b"[" + b"0," * 5000 + b"0]")
    t = raw_server(
        sock,
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
        + packed,
    )
    with pytest.raises(BadAnswer, match="longer than"):
        request(sock, "GET", "/", token=None, max_answer=1000)
    t.join(5)


def test_a_truncated_gzip_answer_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    packed = gzip.compress(b'{"a": 1}' * 100)[:-12]
    t = raw_server(
        sock,
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
        + packed,
    )
    with pytest.raises(BadAnswer, match="gzip"):
        request(sock, "GET", "/", token=None)
    t.join(5)
