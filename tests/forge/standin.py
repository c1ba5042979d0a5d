"""A stand-in Forgejo: the part of its REST API (``/api/v1``) the controller uses.

No Forgejo server can be installed on the test machines, so the forge tests run the
controller against this stand-in, a real HTTP server on loopback shaped after Forgejo's
OpenAPI spec (``templates/swagger/v1_json.tmpl``): the same paths, methods, status codes,
auth rules and JSON field names for

- ``GET /version``; ``GET /user``; ``GET /users/{username}``;
- ``POST /admin/users`` (``CreateUserOption`` → 201 ``User``, 422 when the name is taken),
  ``PATCH /admin/users/{username}`` (``EditUserOption``);
- ``GET|POST /users/{username}/tokens``, ``DELETE /users/{username}/tokens/{token}``
  (basic auth of that user, as ``reqBasicOrRevProxyAuth``: a token is refused with 401);
  ``CreateAccessTokenOption`` → 201 ``AccessToken`` with ``sha1``; a taken name is 400;
- ``GET /notifications?status-types=unread`` (``[NotificationThread]``),
  ``PATCH /notifications/threads/{id}?to-status=read`` (205);
- ``GET /repos/{owner}/{repo}/issues/{index}``, ``GET /repos/{owner}/{repo}/pulls/{index}``,
  ``GET /repos/{owner}/{repo}/issues/{index}/comments``,
  ``GET /repos/{owner}/{repo}/issues/comments/{id}``;
- ``GET /users/{username}/subscriptions``, ``DELETE /repos/{owner}/{repo}/subscription``.

Auth as Forgejo: ``Authorization: token T`` / ``Bearer T`` / ``Basic user:password``; an
admin token may act as another user with the ``Sudo`` header or ``?sudo=``. Token scopes
are checked coarsely (``read:``/``write:`` + category), like Forgejo's scope groups.

Test hooks (in-process, the server thread shares the object): ``notify(...)`` adds an
unread notification; ``stall(method, path_prefix)`` holds matching requests until
``release()`` (to kill a controller at an exact point); ``requests`` logs every call.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ALL_SCOPES = "all"


@dataclass
class User:
    id: int
    login: str
    email: str
    password: str
    admin: bool = False
    must_change_password: bool = False


@dataclass
class Token:
    id: int
    name: str
    sha1: str
    owner: str
    scopes: list[str]


@dataclass
class Thread:
    id: int
    user: str
    repo: str  # owner/name
    type: str  # Issue / Pull / Commit / Repository
    index: int
    title: str
    unread: bool = True
    updated_at: str = "2026-12-07T12:00:00Z"
    comment_id: int | None = None


@dataclass
class Issue:
    repo: str
    index: int
    title: str
    author: str
    body: str = ""
    assignees: list[str] = field(default_factory=list)
    requested_reviewers: list[str] = field(default_factory=list)
    is_pull: bool = False
    comments: list[dict[str, Any]] = field(default_factory=list)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _scope_ok(scopes: list[str], need: str) -> bool:
    """``need`` is ``read:<cat>`` or ``write:<cat>``; ``write`` implies ``read``."""
    if ALL_SCOPES in scopes:
        return True
    mode, cat = need.split(":", 1)
    return f"write:{cat}" in scopes or (mode == "read" and f"read:{cat}" in scopes)


class StandinForgejo:
    """The stand-in's state and its HTTP server (``start()`` / ``stop()``, ``url``)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.users: dict[str, User] = {}
        self.tokens: dict[str, Token] = {}  # sha1 -> token
        self.threads: dict[int, Thread] = {}
        self.issues: dict[tuple[str, int], Issue] = {}
        self.watches: dict[str, set[str]] = {}  # user -> repos (owner/name)
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, acting user
        self._stalls: list[tuple[str, str, threading.Event]] = []
        self.stalled = threading.Event()  # set when a request is held by a stall
        self.down = False  # answer every request with 503 (a forge restarting)
        admin = self._add_user("hyperhive-admin", admin=True)
        self.admin_token = self._add_token(admin.login, "controller", [ALL_SCOPES]).sha1
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ test hooks

    def _add_user(self, login: str, admin: bool = False, password: str = "") -> User:
        u = User(next(self._ids), login, f"{login}@example.org", password or secrets.token_hex(8),
                 admin=admin)  # fmt: skip
        self.users[login] = u
        return u

    def _add_token(self, owner: str, name: str, scopes: list[str]) -> Token:
        t = Token(next(self._ids), name, secrets.token_hex(20), owner, scopes)
        self.tokens[t.sha1] = t
        return t

    def issue(self, repo: str, index: int, title: str, author: str, **kw: Any) -> Issue:
        """Add an issue (or a pull request with ``is_pull=True``) the notifications refer to."""
        with self.lock:
            i = Issue(repo, index, title, author, **kw)
            self.issues[(repo, index)] = i
            return i

    def comment(self, repo: str, index: int, user: str, body: str) -> int:
        """Add a comment to an issue; returns its id."""
        with self.lock:
            cid = next(self._ids)
            self.issues[(repo, index)].comments.append({"id": cid, "user": user, "body": body})
            return cid

    def notify(self, user: str, repo: str, index: int, *, comment_id: int | None = None,
               updated_at: str = "2026-12-07T12:00:00Z") -> int:  # fmt: skip
        """Add an unread notification for ``user`` about issue/PR ``index`` of ``repo``."""
        with self.lock:
            i = self.issues[(repo, index)]
            tid = next(self._ids)
            kind = "Pull" if i.is_pull else "Issue"
            self.threads[tid] = Thread(
                tid, user, repo, kind, index, i.title, updated_at=updated_at, comment_id=comment_id
            )
            return tid

    def watch(self, user: str, repo: str) -> None:
        """``user`` watches ``repo`` (a repo subscription)."""
        with self.lock:
            self.watches.setdefault(user, set()).add(repo)

    def unread(self, user: str) -> list[int]:
        """Ids of ``user``'s unread notification threads."""
        with self.lock:
            return sorted(t.id for t in self.threads.values() if t.user == user and t.unread)

    def user_tokens(self, user: str) -> list[Token]:
        """``user``'s live tokens."""
        with self.lock:
            return [t for t in self.tokens.values() if t.owner == user]

    def stall(self, method: str, path_prefix: str) -> threading.Event:
        """Hold every ``method`` request whose API path starts with ``path_prefix`` until the
        returned event is set (or ``release()``); ``stalled`` is set when one is held."""
        ev = threading.Event()
        with self.lock:
            self._stalls.append((method, path_prefix, ev))
        return ev

    def release(self) -> None:
        """Let every stalled request go and drop the stalls."""
        with self.lock:
            stalls, self._stalls = self._stalls, []
        for _, _, ev in stalls:
            ev.set()

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandinForgejo:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    status, doc = standin.handle(method, self.path, dict(self.headers.items()), raw)
                except ApiError as e:
                    status, doc = e.status, {"message": e.message, "url": "standin"}
                body = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                if doc is not None:
                    self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ API

    def _auth(
        self, headers: dict[str, str], query: dict[str, list[str]]
    ) -> tuple[User, Token | None]:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, cred = auth.partition(" ")
        user: User | None = None
        token: Token | None = None
        if scheme.lower() in ("token", "bearer"):
            token = self.tokens.get(cred.strip())
            if token is None:
                raise ApiError(401, "token is required")
            user = self.users.get(token.owner)
        elif scheme.lower() == "basic":
            try:
                login, _, password = base64.b64decode(cred).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ApiError(401, "bad basic auth") from None
            u = self.users.get(login)
            if u is None or u.password != password:
                raise ApiError(401, "user does not exist or password is wrong")
            user = u
        if user is None:
            raise ApiError(401, "authentication required")
        sudo = next((v for k, v in headers.items() if k.lower() == "sudo"), None)
        sudo = sudo or (query.get("sudo") or [None])[0]
        if sudo:
            if not user.admin or token is None:
                raise ApiError(403, "Only administrators allowed to sudo.")
            target = self.users.get(sudo)
            if target is None:
                raise ApiError(404, "user does not exist")
            return target, token
        return user, token

    def _need(self, token: Token | None, scope: str) -> None:
        if token is not None and not _scope_ok(token.scopes, scope):
            raise ApiError(403, f"token does not have at least one of required scope(s): [{scope}]")

    def _user_json(self, u: User) -> dict[str, Any]:
        return {"id": u.id, "login": u.login, "login_name": u.login, "full_name": "",
                "email": u.email, "is_admin": u.admin, "username": u.login}  # fmt: skip

    def _repo_json(self, repo: str) -> dict[str, Any]:
        owner, name = repo.split("/", 1)
        return {"id": abs(hash(repo)) % 100000, "name": name, "full_name": repo,
                "owner": {"login": owner}, "html_url": f"{self.url}/{repo}"}  # fmt: skip

    def _thread_json(self, t: Thread) -> dict[str, Any]:
        kind = "pulls" if t.type == "Pull" else "issues"
        subject: dict[str, Any] = {
            "title": t.title,
            "url": f"{self.url}/api/v1/repos/{t.repo}/{kind}/{t.index}",
            "html_url": f"{self.url}/{t.repo}/{kind}/{t.index}",
            "type": t.type,
            "state": "open",
            "latest_comment_url": "",
            "latest_comment_html_url": "",
        }
        if t.comment_id is not None:
            subject["latest_comment_url"] = (
                f"{self.url}/api/v1/repos/{t.repo}/issues/comments/{t.comment_id}"
            )
            subject["latest_comment_html_url"] = (
                f"{self.url}/{t.repo}/{kind}/{t.index}#issuecomment-{t.comment_id}"
            )
        return {"id": t.id, "repository": self._repo_json(t.repo), "subject": subject,
                "unread": t.unread, "pinned": False, "updated_at": t.updated_at,
                "url": f"{self.url}/api/v1/notifications/threads/{t.id}"}  # fmt: skip

    def _issue_json(self, i: Issue) -> dict[str, Any]:
        kind = "pulls" if i.is_pull else "issues"
        doc: dict[str, Any] = {
            "number": i.index, "title": i.title, "body": i.body, "state": "open",
            "user": {"login": i.author},
            "assignees": [{"login": a} for a in i.assignees],
            "html_url": f"{self.url}/{i.repo}/{kind}/{i.index}",
        }  # fmt: skip
        if i.is_pull:
            doc["requested_reviewers"] = [{"login": r} for r in i.requested_reviewers]
        return doc

    def _wait_stalls(self, method: str, path: str) -> None:
        with self.lock:
            held = [ev for m, p, ev in self._stalls if m == method and path.startswith(p)]
        for ev in held:
            self.stalled.set()
            ev.wait(60)

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes
               ) -> tuple[int, Any]:  # fmt: skip
        """One API request → ``(status, JSON document or None)``; raises ``ApiError``."""
        parts = urlsplit(target)
        if not parts.path.startswith("/api/v1/"):
            raise ApiError(404, "not found")
        path = parts.path[len("/api/v1") :]
        query = parse_qs(parts.query)
        if self.down:
            raise ApiError(503, "forge is restarting")
        self._wait_stalls(method, path)
        body: dict[str, Any] = {}
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                raise ApiError(400, "body is not JSON") from None
        if path == "/version":
            return 200, {"version": "stand-in"}
        with self.lock:
            user, token = self._auth(headers, query)
            self.requests.append((method, path, user.login))
            return self._route(method, path, query, body, user, token)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any],
               user: User, token: Token | None) -> tuple[int, Any]:  # fmt: skip
        if path == "/user" and method == "GET":
            self._need(token, "read:user")
            return 200, self._user_json(user)
        if m := re.fullmatch(r"/users/([^/]+)", path):
            u = self.users.get(m[1])
            if u is None:
                raise ApiError(404, "user does not exist")
            return 200, self._user_json(u)
        if path == "/admin/users" and method == "POST":
            self._admin(user, token)
            login = body.get("username")
            if not isinstance(login, str) or not login:
                raise ApiError(422, "[Username]: Required")
            if login in self.users:
                raise ApiError(422, f"user already exists [name: {login}]")
            u = self._add_user(login, password=str(body.get("password") or ""))
            u.must_change_password = bool(body.get("must_change_password", True))
            if body.get("email"):
                u.email = str(body["email"])
            return 201, self._user_json(u)
        if (m := re.fullmatch(r"/admin/users/([^/]+)", path)) and method == "PATCH":
            self._admin(user, token)
            u = self.users.get(m[1])
            if u is None:
                raise ApiError(404, "user does not exist")
            if body.get("password"):
                u.password = str(body["password"])
            if "must_change_password" in body:
                u.must_change_password = bool(body["must_change_password"])
            return 200, self._user_json(u)
        if m := re.fullmatch(r"/users/([^/]+)/tokens(?:/([^/]+))?", path):
            if token is not None:  # reqBasicOrRevProxyAuth
                raise ApiError(401, "auth required: basic authentication only")
            if user.login != m[1] and not user.admin:
                raise ApiError(403, "user should be the site admin or the owner")
            if user.must_change_password:
                raise ApiError(
                    403, "You must change your password. Change it at: /user/change_password"
                )
            owned = [t for t in self.tokens.values() if t.owner == m[1]]
            if m[2] is None and method == "GET":
                return 200, [{"id": t.id, "name": t.name, "scopes": t.scopes,
                              "token_last_eight": t.sha1[-8:]} for t in owned]  # fmt: skip
            if m[2] is None and method == "POST":
                name = body.get("name")
                if not isinstance(name, str) or not name:
                    raise ApiError(422, "[Name]: Required")
                if any(t.name == name for t in owned):
                    raise ApiError(400, "access token name has been used already")
                scopes = body.get("scopes") or []
                t = self._add_token(m[1], name, list(scopes))
                return 201, {"id": t.id, "name": t.name, "scopes": t.scopes, "sha1": t.sha1,
                             "token_last_eight": t.sha1[-8:]}  # fmt: skip
            if m[2] is not None and method == "DELETE":
                hit = [t for t in owned if t.name == m[2] or str(t.id) == m[2]]
                if not hit:
                    raise ApiError(404, "access token does not exist")
                del self.tokens[hit[0].sha1]
                return 204, None
        if path == "/notifications" and method == "GET":
            self._need(token, "read:notification")
            types = query.get("status-types") or ["unread", "pinned"]
            rows = [
                t
                for t in self.threads.values()
                if t.user == user.login
                and (("unread" in types and t.unread) or ("read" in types and not t.unread))
            ]
            limit = int((query.get("limit") or ["50"])[0])
            page = int((query.get("page") or ["1"])[0])
            rows.sort(key=lambda t: t.id, reverse=True)
            return 200, [self._thread_json(t) for t in rows[(page - 1) * limit : page * limit]]
        if (m := re.fullmatch(r"/notifications/threads/(\d+)", path)) and method == "PATCH":
            self._need(token, "write:notification")
            t = self.threads.get(int(m[1]))
            if t is None or t.user != user.login:
                raise ApiError(404, "notification thread not found")
            status = (query.get("to-status") or ["read"])[0]
            t.unread = status == "unread"
            return 205, self._thread_json(t)
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/(issues|pulls)/(\d+)", path):
            self._need(token, "read:issue" if m[2] == "issues" else "read:repository")
            i = self.issues.get((m[1], int(m[3])))
            if i is None:
                raise ApiError(404, "issue does not exist")
            return 200, self._issue_json(i)
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments", path):
            self._need(token, "read:issue")
            i = self.issues.get((m[1], int(m[2])))
            if i is None:
                raise ApiError(404, "issue does not exist")
            return 200, [{"id": c["id"], "body": c["body"], "user": {"login": c["user"]}}
                         for c in i.comments]  # fmt: skip
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)", path):
            self._need(token, "read:issue")
            for i in self.issues.values():
                for c in i.comments:
                    if i.repo == m[1] and c["id"] == int(m[2]):
                        return 200, {"id": c["id"], "body": c["body"], "user": {"login": c["user"]}}
            raise ApiError(404, "comment does not exist")
        if (m := re.fullmatch(r"/users/([^/]+)/subscriptions", path)) and method == "GET":
            self._need(token, "read:user")
            return 200, [self._repo_json(r) for r in sorted(self.watches.get(m[1], set()))]
        if (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/subscription", path)) and method == "DELETE":
            self._need(token, "write:repository")
            self.watches.get(user.login, set()).discard(m[1])
            return 204, None
        raise ApiError(404, f"no stand-in route for {method} {path}")

    def _admin(self, user: User, token: Token | None) -> None:
        if not user.admin:
            raise ApiError(403, "must be an administrator")
        self._need(token, "write:admin")
