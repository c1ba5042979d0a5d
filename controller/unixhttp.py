"""One JSON request over a unix socket, for short-lived processes (the CLI, the hook's poke).

``schemas.client.UnixClient`` is the client of long-lived processes (keep-alive
pool, retries, SSE). A process that makes one request and exits pays more for
importing ``http.client`` (and the email parser it pulls in) than for the
request itself, so this module speaks the one HTTP/1.1 exchange it needs with
``socket`` and ``json`` only: ``Connection: close``, the answer read to EOF
(``Content-Length`` or chunked bodies both decode).
"""

from __future__ import annotations

import json
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

MAX_ANSWER = 64 * 1024 * 1024
"""Bytes of answer read at most; a longer one is refused (``BadAnswer``)."""


class BadAnswer(Exception):
    """What came back is not an HTTP answer, or is longer than the caller allows."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: ``status`` code, the JSON ``body`` (None when empty or not JSON)."""

    status: int
    body: object

    def error(self) -> tuple[str, str, str | None]:
        """``(code, message, field)`` of an error answer ``{"error": {...}}``."""
        err = self.body.get("error") if isinstance(self.body, dict) else None
        if not isinstance(err, dict):
            return "error", f"HTTP {self.status}", None
        field = err.get("field")
        return (
            str(err.get("code") or "error"),
            str(err.get("message") or f"HTTP {self.status}"),
            None if field is None else str(field),
        )


def _gunzip(data: bytes, limit: int) -> bytes:
    # zlib alone (not the gzip module, nor hivehttp.encoding: its package imports the server)
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadAnswer(f"bad gzip body: {exc}") from None
    if len(out) > limit:
        raise BadAnswer(f"the answer is longer than {limit} bytes")
    if not d.eof:
        raise BadAnswer("truncated gzip body")
    return out


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    rest = data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def request(
    path: Path | str,
    method: str,
    url: str,
    *,
    token: str | None,
    body: object = None,
    timeout: float = 60.0,
    max_answer: int = MAX_ANSWER,
) -> Answer:
    """Send one request (JSON ``body`` unless None) to ``url`` on the unix socket ``path``.

    ``token`` goes in ``Authorization: Bearer``; ``timeout`` (seconds) bounds
    each socket operation. Raises ``OSError`` when the socket cannot be reached
    or the exchange fails (``FileNotFoundError`` / ``ConnectionRefusedError``:
    nobody listens; ``TimeoutError``), ``BadAnswer`` for an answer that is not
    HTTP or exceeds ``max_answer`` bytes. Any HTTP status is returned, not raised.
    """
    payload = b"" if body is None else json.dumps(body).encode()
    # gzip: host.sock /status is ~1.7 KiB per agent as JSON and ×40 less compressed
    lines = [
        f"{method} {url} HTTP/1.1",
        "Host: localhost",
        "Accept: application/json",
        "Accept-Encoding: gzip",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += ["Connection: close", "", ""]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall("\r\n".join(lines).encode() + payload)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_answer:
                raise BadAnswer(f"the answer is longer than {max_answer} bytes")
    raw = b"".join(chunks)
    header, sep, content = raw.partition(b"\r\n\r\n")
    head = header.decode("latin-1").split("\r\n")
    status_line = head[0].split(" ", 2)
    if not sep or len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise BadAnswer(f"not an HTTP answer: {raw[:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise BadAnswer(f"not an HTTP status: {head[0]!r}") from None
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        content = _dechunk(content)
    elif "content-length" in fields:
        try:
            length = int(fields["content-length"])
        except ValueError:
            raise BadAnswer(f"bad Content-Length {fields['content-length']!r}") from None
        if len(content) < length:
            raise BadAnswer(f"the answer ended after {len(content)} of {length} bytes")
        content = content[:length]
    if fields.get("content-encoding", "").lower() == "gzip":
        content = _gunzip(content, max_answer)
    try:
        doc: object = json.loads(content) if content else None
    except ValueError:
        doc = None
    return Answer(status, doc)
