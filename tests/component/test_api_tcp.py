"""The agent API on TCP (``controller.api.tcp``) with the client's URL mode (``schemas.client``).

Real listeners on the shared ``hivehttp`` core (plain HTTP and HTTPS with a self-signed
certificate made here), a real sqlite broker, ``ApiClient`` with ``http(s)://`` targets.
The end-to-end version with a real ``hyperhive serve`` and a real harness is
``tests/integration/test_tcp_api.py``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_api_agent import FakeOps

from controller.api.tcp import API_LIMITS, api_policy, make_tcp_agent_app
from controller.auth import AgentCredentials
from controller.broker import Broker
from controller.paths import Layout
from hivehttp import Listener, serve_tcp, tls_server_context
from schemas.client import ApiClient, ApiError, Unreachable, parse_target
from schemas.names import MANAGER
from tests.tlscert import self_signed

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Api:
    """One TCP agent API (plain or TLS) over a broker, with the agents' credentials."""

    layout: Layout
    broker: Broker
    creds: AgentCredentials
    listener: Listener
    cert: Path | None

    @property
    def url(self) -> str:
        scheme = "https" if self.cert is not None else "http"
        return f"{scheme}://127.0.0.1:{self.listener.port}"

    def client(self, who: str | None, **kw: float) -> ApiClient:
        token = self.creds.current(who) if who is not None else None
        ca = str(self.cert) if self.cert is not None else None
        return ApiClient(self.url, token=token, ca_file=ca, **kw)


def _api(tls: bool) -> Iterator[Api]:
    d = Path(tempfile.mkdtemp(prefix="hh-tcp-", dir="/tmp"))
    layout = Layout(state=d, run=d / "run")
    broker = Broker(layout.broker_db)
    creds = AgentCredentials(layout, rescan_every=1.0)
    for who in ("alice", "bob", MANAGER):
        creds.issue(who)
    cert = key = None
    if tls:
        cert, key = self_signed(d / "tls")
    app = make_tcp_agent_app(broker, FakeOps(), creds)
    listener = serve_tcp(
        app,
        "127.0.0.1",
        0,
        limits=API_LIMITS,
        policy=api_policy(frozenset({"hive.example"}), admit=app.admit),
        tls=tls_server_context(cert, key) if cert and key else None,
        name="agent-api-test",
    )
    try:
        yield Api(layout, broker, creds, listener, cert)
    finally:
        listener.stop(3.0)
        broker.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["http", "https"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    yield from _api(request.param == "https")


@pytest.fixture
def plain() -> Iterator[Api]:
    yield from _api(False)


def test_round_trip_and_identity_from_the_credential(api: Api) -> None:
    alice, bob = api.client("alice"), api.client("bob")
    sent = alice.post("/send", {"to": "bob", "body": "hi bob"})
    assert sent["id"] > 0
    got = bob.post("/recv", {})["message"]
    assert (got["from"], got["to"], got["body"]) == ("alice", "bob", "hi bob")
    # bob's credential in anybody's hands is bob, never alice
    assert bob.get("/status") == api.broker.status("bob").to_json()
    # keep-alive: over TLS too (a TLS 1.3 session ticket must not look like a hang-up)
    for _ in range(5):
        alice.get("/status")
    assert alice.connections_opened == 1


def test_a_body_field_cannot_choose_the_sender(api: Api) -> None:
    alice = api.client("alice")
    with pytest.raises(ApiError) as e:
        alice.post("/send", {"to": "bob", "body": "x", "from": "manager"})
    assert (e.value.status, e.value.field) == (400, "from")
    assert api.broker.status("bob").unread == 0
    # a wake's label lands in the caller's own inbox only
    alice.post("/wake", {"from": "manager", "body": "tick"})
    assert api.broker.status("bob").unread == 0
    got = alice.post("/recv", {})["message"]
    assert (got["to"], got["kind"]) == ("alice", "wake")


def test_long_poll_is_woken(api: Api) -> None:
    bob = api.client("bob", timeout=40)
    got: list[dict[str, object]] = []
    t = threading.Thread(
        target=lambda: got.append(bob.post("/recv", {"wait_seconds": 30})["message"])
    )
    t.start()
    time.sleep(0.3)
    api.client("alice").post("/send", {"to": "bob", "body": "wake up"})
    t.join(20)
    assert not t.is_alive() and got and got[0]["body"] == "wake up"  # type: ignore[index]


@pytest.mark.parametrize("token", [None, "", "x" * 43, "operator-key", "rotated"])
def test_no_or_a_wrong_credential_is_401(api: Api, token: str | None) -> None:
    if token == "operator-key":
        token = "k" * 43
    elif token == "rotated":
        token = api.creds.current("alice")
        api.creds.issue("alice")  # the old one stops working at once
    client = ApiClient(api.url, token=token or None, ca_file=str(api.cert) if api.cert else None)
    for method, path in (("GET", "/status"), ("POST", "/send"), ("GET", "/proposals")):
        with pytest.raises(ApiError) as e:
            client.call(method, path, {"to": "bob", "body": "x"} if method == "POST" else None)
        assert (e.value.status, e.value.code) == (401, "unauthorized")
    assert api.broker.status("bob").unread == 0


def test_manager_verbs_only_with_the_managers_credential(api: Api) -> None:
    with pytest.raises(ApiError) as e:
        api.client("alice").get("/list")
    assert e.value.status == 404 and "manager verb" in e.value.message
    assert "agents" in api.client(MANAGER).get("/list")


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/proposals"),
        ("POST", "/proposals/1/approve"),
        ("POST", "/reconcile"),
        ("POST", "/login"),
        ("GET", "/messages"),
        ("POST", "/agents/bob/destroy"),
        ("POST", "/poke"),
    ],
)
def test_the_admin_api_is_not_here(api: Api, method: str, path: str) -> None:
    for who in ("alice", MANAGER):
        with pytest.raises(ApiError) as e:
            api.client(who).call(method, path, {} if method == "POST" else None)
        assert e.value.status in (404, 405), (who, method, path, e.value.status)


def raw(api: Api, request: bytes) -> tuple[int, dict[str, object]]:
    """One raw request on a new plain-HTTP connection: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", api.listener.port or 0), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                break
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.partition(b"\r\n\r\n")[2] or b"{}")


def test_bad_requests_are_4xx_naming_what(plain: Api) -> None:
    token = plain.creds.current("alice")
    auth = f"Authorization: Bearer {token}\r\n".encode()

    def post(body: bytes, ctype: bytes = b"application/json", host: bytes = b"127.0.0.1") -> int:
        req = (
            b"POST /send HTTP/1.1\r\nHost: " + host + b"\r\n" + auth
            + b"Content-Type: " + ctype + b"\r\nConnection: close\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        return raw(plain, req)[0]

    assert post(b"{not json") == 400
    assert post(b'{"to": "bob"}') == 400
    assert post(b'{"to": 5, "body": "x"}') == 400
    assert post(b'{"to": "bob", "body": "x"}', ctype=b"application/x-www-form-urlencoded") == 415
    assert post(b'{"to": "bob", "body": "x"}', host=b"evil.example") == 403
    assert post(b'{"to": "bob", "body": "x"}', host=b"hive.example:7100") == 200
    assert post(b"[" * 100 + b"]" * 100) == 400
    assert post(b'{"to": "bob", "body": "\\ud800"}') == 400
    status, _ = raw(
        plain,
        b"POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n",
    )  # fmt: skip
    assert status == 413
    # without a credential the head alone is refused: nothing of the body is read
    status, _ = raw(
        plain,
        b"POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n{",
    )
    assert status == 401
    # an unknown path answers 404 only after the credential: strangers learn nothing
    nope = b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    assert raw(plain, nope + b"\r\n")[0] == 401
    assert raw(plain, nope + auth + b"\r\n")[0] == 404


def test_tls_is_required_and_checked() -> None:
    gen = _api(True)
    api = next(gen)
    try:
        # plain HTTP to the TLS port gets no answer
        with pytest.raises(Unreachable):
            ApiClient(api.url.replace("https", "http"), token="x", timeout=5).get("/status")
        # without the CA the certificate is not trusted
        with pytest.raises(Unreachable) as e:
            ApiClient(api.url, token="x", timeout=5).get("/status")
        assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)
        # the name must match: the certificate does not name 127.0.0.2
        other = api.url.replace("127.0.0.1", "127.0.0.2")
        with pytest.raises(Unreachable):
            ApiClient(other, token="x", ca_file=str(api.cert), timeout=5).get("/status")
    finally:
        next(gen, None)


def test_parse_target() -> None:
    ep = parse_target("https://hive.example/api/")
    assert (ep.host, ep.port, ep.tls, ep.prefix, ep.host_header) == (
        "hive.example", 443, True, "/api", "hive.example")  # fmt: skip
    ep = parse_target("http://[::1]:7100")
    assert (ep.host, ep.port, ep.host_header, ep.path) == ("::1", 7100, "[::1]:7100", None)
    assert parse_target("/run/hive/mcp.sock").path == "/run/hive/mcp.sock"
    for bad in ("http://", "http://u:p@h:1", "http://h:1/?q=1", "http://h:99999", "http://h#x"):
        with pytest.raises(ValueError):
            parse_target(bad)


def _credential_file(api: Api, who: str) -> Path:
    path = api.layout.state / f"{who}.credential"
    path.write_text((api.creds.current(who) or "") + "\n")
    path.chmod(0o600)
    return path


def _url_env(api: Api, who: str) -> dict[str, str]:
    env = {
        "HYPERHIVE_API_URL": api.url,
        "HYPERHIVE_SOCKET": str(api.layout.state / "no-such.sock"),
        "HYPERHIVE_FLAVOR": "agent",
        "HYPERHIVE_AGENT": who,
        "HYPERHIVE_CREDENTIAL_FILE": str(_credential_file(api, who)),
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
    }
    if api.cert is not None:
        env["HYPERHIVE_API_CA"] = str(api.cert)
    return env


def test_the_stdio_mcp_server_and_wake_speak_tcp(api: Api) -> None:
    """The fallback MCP server (claude starts it when the harness cannot serve the tools) and
    ``hyperhive-agent wake`` on ``HYPERHIVE_API_URL``, through the MCP SDK's own client."""
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = _url_env(api, "alice")

    async def session() -> str:
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "harness", "mcp"], env=env, cwd=str(REPO)
        )
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            result = await s.call_tool("send", {"to": "bob", "body": "via stdio mcp"})
            return "\n".join(getattr(c, "text", "") for c in result.content)

    text = anyio.run(session)
    assert "error" not in text.lower(), text
    got = api.client("bob").post("/recv", {})["message"]
    assert (got["from"], got["body"]) == ("alice", "via stdio mcp")
    woke = subprocess.run(
        [sys.executable, "-m", "harness", "wake", "--from", "cron", "--body", "tick"],
        env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert woke.returncode == 0, woke.stderr
    got = api.client("alice").post("/recv", {})["message"]
    assert (got["to"], got["kind"], got["body"]) == ("alice", "wake", "tick")


def test_a_stalled_tls_handshake_is_closed_and_holds_nobody_up() -> None:
    gen = _api(True)
    api = next(gen)
    try:
        stalled = [socket.create_connection(("127.0.0.1", api.listener.port or 0), timeout=40)]
        stalled[0].sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        stalled.append(socket.create_connection(("127.0.0.1", api.listener.port or 0), timeout=40))
        assert api.client("alice").get("/status")["unread"] == 0  # served meanwhile
        for s in stalled:  # the server closes them (TLS_HANDSHAKE_TIMEOUT)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""
            s.close()
    finally:
        next(gen, None)
