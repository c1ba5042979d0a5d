"""A small HTTP/1.1 client over a unix socket (or TCP), for the agent UI proxy.

An agent's UI is reached on its unix socket; under the kubernetes runtime, where a pod has
no socket the controller can open, on its TCP port (``TcpUpstream``: host, port and the
agent's credential, sent as ``Authorization: Bearer``, which the harness's TCP listener
requires).

One request per connection (``Connection: close``); the response head is
read whole (at most ``MAX_HEAD_BYTES``), the body is handed out chunk by
chunk as it arrives (``Content-Length``, ``chunked`` or until EOF), so an
event stream passes through live and a large body never sits in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_HEAD_BYTES = 64 * 1024
"""Largest response status line + headers accepted from an agent."""

READ_BYTES = 64 * 1024
"""Largest piece of body handed on at once."""


@dataclass(frozen=True)
class TcpUpstream:
    """An agent UI on TCP: ``host``:``port``, answering only ``Bearer <token>``."""

    host: str
    port: int
    token: str = field(repr=False)


Upstream = Path | TcpUpstream
"""Where an agent's UI is: its unix socket, or its TCP port."""


class UpstreamDown(Exception):
    """Nobody answers on the socket (missing, refused, not a socket, no permission)."""


class BadUpstream(Exception):
    """The peer answered something that is not an HTTP/1.1 response, or too slowly."""


@dataclass(frozen=True)
class Head:
    """A response head: ``status`` and ``headers`` (lower-case names, in order)."""

    status: int
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The last value of header ``name`` (lower case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class Response:
    """An open response: ``head``, then ``chunks()`` once; ``close()`` drops the connection."""

    def __init__(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        has_body: bool,
    ) -> None:
        self.head = head
        self._reader = reader
        self._writer = writer
        self._has_body = has_body

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._writer.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, de-chunked, piece by piece as it arrives; raises BadUpstream on a
        malformed or cut-off body. Callers bound the wait for each piece themselves."""
        if not self._has_body:
            return
        te = (self.head.get("transfer-encoding") or "").lower()
        length = self.head.get("content-length")
        try:
            if "chunked" in te:
                async for piece in self._chunked():
                    yield piece
            elif length is not None:
                if not length.strip().isdigit():
                    raise BadUpstream(f"bad Content-Length {length[:40]!r}")
                left = int(length)
                while left > 0:
                    piece = await self._reader.read(min(left, READ_BYTES))
                    if not piece:
                        raise BadUpstream("the body ended early")
                    left -= len(piece)
                    yield piece
            else:
                while piece := await self._reader.read(READ_BYTES):
                    yield piece
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise BadUpstream(f"malformed body: {type(e).__name__}") from e
        except OSError as e:
            raise BadUpstream(f"connection failed: {e}") from e

    async def _chunked(self) -> AsyncIterator[bytes]:
        while True:
            line = await self._reader.readuntil(b"\r\n")
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 16:
                raise BadUpstream("bad chunk size")
            size = int(size_text, 16)
            if size == 0:
                while await self._reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers: dropped
                return
            while size > 0:
                piece = await self._reader.readexactly(min(size, READ_BYTES))
                size -= len(piece)
                yield piece
            if await self._reader.readexactly(2) != b"\r\n":
                raise BadUpstream("chunk not followed by CRLF")


def _parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
        raise BadUpstream(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(parts[1])
    if not 200 <= status <= 599:
        raise BadUpstream(f"unexpected status {status}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise BadUpstream(f"malformed header line {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    return Head(status, tuple(headers))


async def request(
    path: Upstream,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
    *,
    timeout: float = 30.0,
) -> Response:
    """Send one request to the HTTP server on unix socket ``path`` (or at a
    ``TcpUpstream``, with its bearer token); the response head.

    ``target`` is the request target (path and query, already percent-encoded,
    no spaces or controls); ``headers`` must not hold Host, Connection or
    Content-Length (set here). Connecting and reading the head must finish
    within ``timeout`` seconds. Raises ``UpstreamDown`` when nothing listens
    there and ``BadUpstream`` for a malformed or late response.
    """
    extra: list[tuple[str, str]] = []
    try:
        if isinstance(path, TcpUpstream):
            extra.append(("Authorization", f"Bearer {path.token}"))
            where = f"{path.host}:{path.port}"
            opening = asyncio.open_connection(path.host, path.port, limit=MAX_HEAD_BYTES)
        else:
            where = str(path)
            opening = asyncio.open_unix_connection(str(path), limit=MAX_HEAD_BYTES)
        reader, writer = await asyncio.wait_for(opening, timeout)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        raise UpstreamDown(f"no server on {where}") from e
    except TimeoutError as e:
        raise BadUpstream(f"connecting took longer than {timeout:g} s") from e
    except OSError as e:  # not a socket, permission denied, path too long, no such host
        raise UpstreamDown(f"cannot connect to {where}: {e.strerror or e}") from e
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in [*headers, *extra]]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await asyncio.wait_for(writer.drain(), timeout)
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        head = _parse_head(raw[:-4])
    except BaseException as e:
        writer.close()
        if isinstance(e, TimeoutError):
            raise BadUpstream(f"no answer within {timeout:g} s") from e
        if isinstance(e, asyncio.LimitOverrunError):
            raise BadUpstream(f"response head larger than {MAX_HEAD_BYTES} bytes") from e
        if isinstance(e, asyncio.IncompleteReadError):
            raise BadUpstream("the connection closed before a response") from e
        if isinstance(e, OSError):
            raise BadUpstream(f"connection failed: {e}") from e
        raise
    has_body = method != "HEAD" and head.status not in (204, 304)
    return Response(head, reader, writer, has_body)


async def next_piece(
    pieces: AsyncIterator[bytes], gone: asyncio.Event, idle: float | None
) -> bytes | None:
    """The next body piece; None at the end, when ``gone`` is set first, or after ``idle``
    seconds without one (None: wait as long as it takes)."""
    step = asyncio.ensure_future(pieces.__anext__())
    waiter = asyncio.ensure_future(gone.wait())
    try:
        done, _ = await asyncio.wait({step, waiter}, timeout=idle, return_when="FIRST_COMPLETED")
        if step not in done:
            return None
        try:
            return step.result()
        except StopAsyncIteration:
            return None
    finally:
        for f in (step, waiter):
            if not f.done():
                f.cancel()
                with contextlib.suppress(BaseException):
                    await f
