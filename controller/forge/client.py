"""A small client of Forgejo's REST API (``/api/v1``), over the standard library's HTTP.

Only the calls the controller makes, named after their operation in Forgejo's OpenAPI
spec (``templates/swagger/v1_json.tmpl``). Blocking (call it from a worker thread); one
connection per call, ``timeout`` seconds per request.

Auth: the admin token (``Authorization: token …``) for the admin calls, and with a
``Sudo: <user>`` header to act as an agent's user (notifications, subscriptions);
basic auth with a user's password for that user's tokens (Forgejo takes only basic auth
there). Errors: ``ForgeDown`` (no answer, 5xx: try again later) and ``ForgeError``
(any other non-2xx, with its status and Forgejo's ``message``).
"""

from __future__ import annotations

import base64
import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit


class ForgeDown(Exception):
    """The forge did not answer, or answered 5xx: nothing happened, try again later."""


class ForgeError(Exception):
    """A non-2xx answer that is not the forge being down: ``status`` and Forgejo's message."""

    def __init__(self, status: int, message: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Auth:
    """How a request authenticates: ``token`` (+ ``sudo``), or ``user`` + ``password``."""

    token: str | None = None
    sudo: str | None = None
    user: str | None = None
    password: str | None = None

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` (and ``Sudo``) headers."""
        if self.token is not None:
            h = {"Authorization": f"token {self.token}"}
            if self.sudo:
                h["Sudo"] = self.sudo
            return h
        raw = f"{self.user}:{self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def q(segment: str) -> str:
    """One URL path segment, escaped."""
    return quote(segment, safe="")


class ForgeClient:
    """Forgejo at ``base_url`` (``http://localhost:3000``), administered with ``admin_token``."""

    def __init__(self, base_url: str, admin_token: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"forge url {base_url!r}: want http(s)://host[:port][/prefix]")
        self.base_url = base_url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.admin = Auth(token=admin_token)
        self.timeout = timeout

    def as_user(self, user: str) -> Auth:
        """The admin token acting as ``user`` (``Sudo``)."""
        return Auth(token=self.admin.token, sudo=user)

    # ------------------------------------------------------------------ transport

    def request(
        self,
        method: str,
        path: str,
        auth: Auth,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``method /api/v1<path>`` → the parsed JSON answer (None for an empty body);
        ``timeout`` (seconds) overrides the client's.

        Raises ``ForgeDown`` or ``ForgeError``."""
        target = f"{self._prefix}/api/v1{path}"
        if query:
            target += "?" + urlencode(query)
        what = f"{method} {path}"
        conn: http.client.HTTPConnection
        wait = self.timeout if timeout is None else timeout
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=wait)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=wait)
        headers = {"Accept": "application/json", **auth.headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise ForgeDown(f"{what}: {exc}") from exc
        finally:
            conn.close()
        doc: Any = None
        if raw.strip():
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        if resp.status >= 500:
            raise ForgeDown(f"{what}: HTTP {resp.status}")
        if resp.status >= 300:
            message = doc.get("message") if isinstance(doc, dict) else None
            raise ForgeError(resp.status, str(message or raw[:200]), what)
        return doc

    def alive(self, timeout: float = 3.0) -> bool:
        """``getVersion`` answers within ``timeout`` seconds."""
        try:
            self.request("GET", "/version", self.admin, timeout=timeout)
        except (ForgeDown, ForgeError):
            return False
        return True

    # ------------------------------------------------------------------ users

    def get_user(self, user: str) -> dict[str, Any] | None:
        """``userGet``: the user, or None when it does not exist."""
        try:
            doc = self.request("GET", f"/users/{q(user)}", self.admin)
        except ForgeError as exc:
            if exc.status == 404:
                return None
            raise
        return doc if isinstance(doc, dict) else None

    def create_user(self, user: str, email: str, password: str) -> None:
        """``adminCreateUser`` (no password change forced, no mail sent)."""
        self.request("POST", "/admin/users", self.admin, {
            "username": user, "email": email, "password": password,
            "must_change_password": False, "send_notify": False, "visibility": "public",
        })  # fmt: skip

    def set_password(self, user: str, password: str) -> None:
        """``adminEditUser``: a new password (login_name / source_id: older Forgejos need them)."""
        self.request("PATCH", f"/admin/users/{q(user)}", self.admin, {
            "login_name": user, "source_id": 0, "password": password,
            "must_change_password": False,
        })  # fmt: skip

    def whoami(self, token: str) -> str | None:
        """``userGetCurrent`` with ``token``: its user's login, None if the token is refused."""
        try:
            doc = self.request("GET", "/user", Auth(token=token))
        except ForgeError as exc:
            if exc.status in (401, 403):
                return None
            raise
        return str(doc.get("login")) if isinstance(doc, dict) else None

    # ------------------------------------------------------------------ tokens

    def create_token(self, user: str, password: str, name: str, scopes: list[str]) -> str:
        """``userCreateToken`` → the token (``sha1``), shown only this once."""
        doc = self.request("POST", f"/users/{q(user)}/tokens", Auth(user=user, password=password),
                           {"name": name, "scopes": scopes})  # fmt: skip
        token = doc.get("sha1") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise ForgeError(201, "the answer has no sha1", f"POST /users/{user}/tokens")
        return token

    def delete_token(self, user: str, password: str, name: str) -> bool:
        """``userDeleteAccessToken`` by name; False when there was no such token."""
        try:
            self.request("DELETE", f"/users/{q(user)}/tokens/{q(name)}",
                         Auth(user=user, password=password))  # fmt: skip
        except ForgeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # ------------------------------------------------------------------ notifications

    def unread(self, user: str, limit: int = 50, pages: int = 10) -> list[dict[str, Any]]:
        """``notifyGetList``: ``user``'s unread notification threads (up to ``pages`` pages
        of ``limit``; the rest come at the next call, once these are read)."""
        out: list[dict[str, Any]] = []
        for page in range(1, pages + 1):
            doc = self.request("GET", "/notifications", self.as_user(user), query={
                "status-types": "unread", "limit": str(limit), "page": str(page),
            })  # fmt: skip
            rows = [t for t in doc if isinstance(t, dict)] if isinstance(doc, list) else []
            out.extend(rows)
            if len(rows) < limit:
                break
        return out

    def mark_read(self, user: str, thread_id: int) -> None:
        """``notifyReadThread``: mark one thread read."""
        self.request("PATCH", f"/notifications/threads/{int(thread_id)}", self.as_user(user),
                     query={"to-status": "read"})  # fmt: skip

    def get_url(self, user: str, api_url: str) -> Any:
        """GET an API URL the forge handed out (a notification's subject / comment), as
        ``user``; None unless it lies under this forge's ``/api/v1/``."""
        base = f"{self.base_url}/api/v1/"
        if not api_url.startswith(base):
            return None
        try:
            return self.request("GET", "/" + api_url[len(base) :], self.as_user(user))
        except ForgeError:
            return None

    # ------------------------------------------------------------------ subscriptions

    def subscriptions(self, user: str) -> list[str]:
        """``userListSubscriptions``: full names (``owner/repo``) of the repos ``user`` watches."""
        doc = self.request("GET", f"/users/{q(user)}/subscriptions", self.as_user(user),
                           query={"limit": "50"})  # fmt: skip
        if not isinstance(doc, list):
            return []
        return [str(r["full_name"]) for r in doc if isinstance(r, dict) and r.get("full_name")]

    def unwatch(self, user: str, full_name: str) -> None:
        """``userCurrentDeleteSubscription`` as ``user``."""
        owner, _, repo = full_name.partition("/")
        self.request("DELETE", f"/repos/{q(owner)}/{q(repo)}/subscription", self.as_user(user))
