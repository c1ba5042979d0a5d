"""The operator's browser, reduced to what the e2e story needs: HTTP/1.1 with a cookie jar.

``Browser(port)`` talks to a dashboard on ``127.0.0.1:<port>``. ``open_login(url)``
opens the URL ``hyperhive dashboard`` printed the way a browser does: it keeps the
``Set-Cookie`` of the answer and follows its redirect, and returns both hops so the
story can check the 303 and the cookie's attributes. Every later request sends the
kept cookies; a POST sends a JSON body with the dashboard's own ``Origin``, as its
page's ``fetch`` does. ``stream_head`` reads the start of an SSE answer and hangs up.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: ``status``, ``headers`` (lower-cased names; repeated ones joined
    by ``\\n``) and the whole ``body`` (bytes)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        """The header ``name`` (any case), ``""`` when absent."""
        return self.headers.get(name.lower(), "")

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text (invalid UTF-8 replaced)."""
        return self.body.decode("utf-8", "replace")


@dataclass
class Browser:
    """A cookie-keeping HTTP client for the dashboard on ``127.0.0.1:port``."""

    port: int
    timeout: float = 15.0
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The dashboard's own origin (what its page sends as ``Origin``)."""
        return f"http://127.0.0.1:{self.port}"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Host": f"127.0.0.1:{self.port}", "Accept": "*/*"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        headers.update(extra or {})
        return headers

    def _keep_cookies(self, resp: http.client.HTTPResponse) -> None:
        for raw in resp.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                if morsel["max-age"] in ("0", 0) or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request on a fresh connection; keeps any cookie the answer sets."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=self._headers(headers))
            resp = conn.getresponse()
            data = resp.read()
            self._keep_cookies(resp)
            names: dict[str, str] = {}
            for k, v in resp.getheaders():
                names[k.lower()] = f"{names[k.lower()]}\n{v}" if k.lower() in names else v
            return Answer(resp.status, names, data)
        finally:
            conn.close()

    def get(self, path: str) -> Answer:
        """``GET path`` with the kept cookies."""
        return self.request("GET", path)

    def post(self, path: str, doc: Any) -> Answer:
        """``POST path`` with ``doc`` as JSON from the dashboard's own page."""
        return self.request(
            "POST",
            path,
            body=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json", "Origin": self.origin},
        )

    def open_login(self, url: str) -> tuple[Answer, Answer]:
        """Open a login URL (``http://host:port/login?token=…``) and follow its redirect.

        Returns ``(the login answer, the answer of the page it redirected to)``; when
        the login answer is not a redirect, the second is the same answer.
        """
        parts = urllib.parse.urlsplit(url)
        assert parts.port == self.port, f"{url} is not this dashboard (port {self.port})"
        first = self.get(f"{parts.path}?{parts.query}")
        if first.status not in (301, 302, 303, 307, 308):
            return first, first
        location = urllib.parse.urlsplit(urllib.parse.urljoin(url, first.header("Location")))
        assert location.port == self.port, f"the login redirected off the dashboard: {location}"
        path = location.path + (f"?{location.query}" if location.query else "")
        return first, self.get(path)

    def stream_head(
        self, path: str, want_lines: int = 3, max_lines: int = 2000
    ) -> tuple[int, str, list[str]]:
        """Open an SSE ``path``; ``(status, content type, first non-empty lines)``, then hang up.

        Reads until ``want_lines`` lines starting with ``data:`` were seen (or
        ``max_lines`` lines, or the timeout: ``TimeoutError`` / ``OSError``).
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers=self._headers({"Accept": "text/event-stream"}))
            resp = conn.getresponse()
            ctype = resp.getheader("Content-Type") or ""
            lines: list[str] = []
            if resp.status != 200:
                resp.read()
                return resp.status, ctype, lines
            data = 0
            for _ in range(max_lines):
                raw = resp.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    continue
                lines.append(line)
                data += line.startswith("data:")
                if data >= want_lines:
                    break
            return resp.status, ctype, lines
        finally:
            conn.close()
