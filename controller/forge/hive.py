"""The hive forge, administered by the controller: users, tokens, notifications, watches.

``HiveForge`` does the forge's side of an agent's life, each step idempotent:

- ``ensure(agent)`` (at every deploy, and by the worker when the file is missing): the
  forge user ``<agent>`` exists and ``<state>/agents/<a>/state/forge-token`` (0600, the
  agent's own state: ``/state/forge-token`` in its container) holds a live token of that
  user, scoped to ``TOKEN_SCOPES``; ``forge-url`` beside it says where the forge is. A
  token that still works is kept; otherwise the user gets a fresh random password (used
  once for Forgejo's basic-auth-only token endpoints, never stored), the old
  ``hyperhive`` token is deleted and a new one made.
- ``pump(agent, spec)``: the user's unread notifications, oldest first, each delivered as
  one inbox message from ``forge`` (``controller.forge.notify``) unless its reason is in
  ``spec.skip_notify_reasons``, and marked read on the forge only **after** the broker
  committed the message. The broker send carries an idempotency key per notification
  state, so a controller killed between the send and the mark delivers it once, not twice;
  killed before the send, the notification is still unread and is delivered next time.
- ``clean_subscriptions(agent)``: unwatch every repo the user watches (at a redeploy,
  unless ``spec.keep_subscriptions``).
- ``revoke(agent)``: delete the user's ``hyperhive`` token (after a purge). The user and
  its repositories stay: they may be shared work, and a respawn gets them back.

What the controller remembers (``<state>/forge/agents.json``): per agent its forge user and
the version (manifest + build digests) last deployed, so a redeploy is told from a restart
and a purge from a destroy.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agentfile import read_small
from controller.auth.secretfile import write_secret
from controller.errors import Conflict
from controller.forge import notify
from controller.forge.client import ForgeClient, ForgeDown, ForgeError
from controller.model import ForgeSpec
from controller.paths import Layout

log = logging.getLogger("controller.forge")

TOKEN_NAME = "hyperhive"
"""The name of the token the controller makes for each agent's user."""

TOKEN_SCOPES = [
    "write:repository",
    "write:issue",
    "write:notification",
    "read:user",
    "read:organization",
    "read:misc",
]
"""What an agent may do with its token: repos, issues and pull requests, its
notifications; read users and orgs. No admin, no account settings, no packages."""

TOKEN_FILE = "forge-token"
URL_FILE = "forge-url"
EMAIL_DOMAIN = "hyperhive.invalid"

Send = Callable[[str, str, str], Any]
"""``send(recipient, body, idempotency_key)``: queue one message from ``forge``; returns
once the broker committed it (raises on failure)."""


@dataclass(frozen=True)
class PumpResult:
    """One pump of an agent's notifications: how many were delivered / skipped."""

    delivered: int = 0
    skipped: int = 0


def forge_user(agent: str) -> str:
    """The forge login of an agent (its name; ``manager`` for the manager)."""
    return agent


class HiveForge:
    """The controller's side of the hive forge for every agent (thread-safe per agent)."""

    def __init__(self, layout: Layout, client: ForgeClient, send: Send) -> None:
        self.layout = layout
        self.client = client
        self.send = send
        self._lock = threading.Lock()
        self._agent_locks: dict[str, threading.Lock] = {}
        self._record_path = layout.state / "forge" / "agents.json"
        # (inode, size, mtime) of agents.json and what it holds, as last read or written
        self._record: tuple[tuple[int, int, int], dict[str, dict[str, Any]]] | None = None

    def _agent_lock(self, agent: str) -> threading.Lock:
        with self._lock:
            return self._agent_locks.setdefault(agent, threading.Lock())

    # ------------------------------------------------------------------ record

    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._record_path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> dict[str, dict[str, Any]]:
        """The record, a copy the caller may change (under ``_lock``). Parsed again only
        when the file is not the one last read or written here: the worker's tick asks
        once per agent."""
        key = self._stat_key()
        if key is None:
            return {}
        cached = self._record
        if cached is None or cached[0] != key:
            try:
                doc = json.loads(self._record_path.read_text())
            except (OSError, ValueError):
                return {}
            parsed = (
                {str(k): dict(v) for k, v in doc.items() if isinstance(v, dict)}
                if isinstance(doc, dict)
                else {}
            )
            cached = self._record = (key, parsed)
        return {k: dict(v) for k, v in cached[1].items()}

    def _save(self, doc: dict[str, dict[str, Any]]) -> None:
        self._record_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self._record_path)
        key = self._stat_key()
        self._record = None if key is None else (key, {k: dict(v) for k, v in doc.items()})

    def _note(self, agent: str, **fields: Any) -> None:
        with self._lock:
            doc = self._load()
            doc.setdefault(agent, {}).update(fields)
            self._save(doc)

    def known(self) -> dict[str, dict[str, Any]]:
        """Agents the controller provisioned, with what it remembers of each."""
        with self._lock:
            return self._load()

    # ------------------------------------------------------------------ tokens

    def token_path(self, agent: str) -> Path:
        """``<state>/agents/<a>/state/forge-token``."""
        return self.layout.agent_state(agent) / TOKEN_FILE

    def read_token(self, agent: str) -> str | None:
        """The token in the agent's state, None when absent or empty."""
        # the agent's own dir: never follow its symlink or block on its FIFO (agentfile)
        raw = read_small(self.token_path(agent), 1024)
        text = "" if raw is None else raw.decode("ascii", errors="replace").strip()
        return text or None

    def ensure(self, agent: str) -> str:
        """Make sure ``agent`` has a forge user and a live token file; returns what it did:
        ``"kept"`` (the token works) or ``"issued"``. Raises ``ForgeDown`` / ``ForgeError``.

        One at a time per agent: the deploy hook and the worker's tick may both find the
        file missing, and the second must then keep the first's token, not replace it."""
        with self._agent_lock(agent):
            return self._ensure(agent)

    def _ensure(self, agent: str) -> str:
        user = forge_user(agent)
        token = self.read_token(agent)
        if token is not None and self.client.whoami(token) == user:
            self._write_url(agent)
            self._note(agent, user=user)
            return "kept"
        password = secrets.token_urlsafe(24)
        if self.client.get_user(user) is None:
            try:
                self.client.create_user(user, f"{user}@{EMAIL_DOMAIN}", password)
            except ForgeError as exc:
                if exc.status != 422 or self.client.get_user(user) is None:
                    raise  # 422 with no user: a name Forgejo reserves, say
                self.client.set_password(user, password)  # made meanwhile: take it over
        else:
            self.client.set_password(user, password)
        self.client.delete_token(user, password, TOKEN_NAME)
        token = self.client.create_token(user, password, TOKEN_NAME, TOKEN_SCOPES)
        write_secret(self.token_path(agent), token)
        self._write_url(agent)
        self._note(agent, user=user)
        log.info("forge: %s: issued a token for forge user %s", agent, user)
        return "issued"

    def _write_url(self, agent: str) -> None:
        path = self.layout.agent_state(agent) / URL_FILE
        want = self.client.base_url + "\n"
        if read_small(path, 4096) == want.encode():
            return
        # a new file renamed over the old: the agent may have made forge-url a symlink to
        # any file of the operator's, and writing through it would overwrite that file
        write_secret(path, self.client.base_url)

    def revoke(self, agent: str) -> bool:
        """Delete the agent user's ``hyperhive`` token and forget the agent; True if a token
        was deleted. The token file went with the agent's state (purge)."""
        user = forge_user(agent)
        deleted = False
        if self.client.get_user(user) is not None:
            password = secrets.token_urlsafe(24)
            self.client.set_password(user, password)
            deleted = self.client.delete_token(user, password, TOKEN_NAME)
        with self._lock:
            doc = self._load()
            doc.pop(agent, None)
            self._save(doc)
        log.info("forge: %s: purged; token %s", agent, "deleted" if deleted else "was gone")
        return deleted

    # ------------------------------------------------------------------ notifications

    def _reason(self, user: str, thread: dict[str, Any]) -> str:
        subject = thread.get("subject") if isinstance(thread.get("subject"), dict) else {}
        assert isinstance(subject, dict)
        issue = comment = comments = None
        if isinstance(subject.get("url"), str) and subject["url"]:
            issue = self.client.get_url(user, subject["url"])
            comments_url = subject["url"].replace("/pulls/", "/issues/") + "/comments"
            comments = self.client.get_url(user, comments_url)
        if isinstance(subject.get("latest_comment_url"), str) and subject["latest_comment_url"]:
            comment = self.client.get_url(user, subject["latest_comment_url"])
        return notify.classify(user, notify.facts_from(issue, comment, comments))

    def pump(self, agent: str, spec: ForgeSpec) -> PumpResult:
        """Deliver ``agent``'s unread notifications (see the module doc); raises ``ForgeDown``
        / ``ForgeError`` (what was delivered and marked so far stays so)."""
        user = forge_user(agent)
        delivered = skipped = 0
        for thread in notify.oldest_first(self.client.unread(user)):
            tid = int(thread.get("id") or 0)
            reason = self._reason(user, dict(thread))
            if reason in spec.skip_notify_reasons:
                skipped += 1
            else:
                try:
                    self.send(agent, notify.summary(thread, reason), notify.idempotency_key(thread))
                except Conflict:
                    # the key was used for another body: this state was delivered before
                    log.info("forge: %s: notification %d was delivered already", agent, tid)
                delivered += 1
            # only now: the broker holds the message (or it is one we drop)
            self.client.mark_read(user, tid)
        return PumpResult(delivered, skipped)

    # ------------------------------------------------------------------ subscriptions

    def clean_subscriptions(self, agent: str) -> int:
        """Unwatch every repo ``agent``'s user watches; returns how many."""
        user = forge_user(agent)
        repos = self.client.subscriptions(user)
        for full in repos:
            self.client.unwatch(user, full)
        if repos:
            log.info("forge: %s: unwatched %d repo(s)", agent, len(repos))
        return len(repos)

    def deployed(self, agent: str, version: str, spec: ForgeSpec) -> None:
        """After ``ensure``: a deploy of a new ``version`` of the agent (its manifest and
        build digests) clears its watches unless ``spec.keep_subscriptions``; the same
        version again (a start, a restart) and the first deploy do nothing."""
        seen = self.known().get(agent, {}).get("deployed")
        if seen == version:
            return
        if not spec.keep_subscriptions and seen is not None:
            self.clean_subscriptions(agent)
        self._note(agent, deployed=version)


def safe(what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``; a forge that is down or refuses is logged (the worker retries), not raised."""
    try:
        return fn()
    except ForgeDown as exc:
        log.warning("forge: %s: the forge is not answering (%s); will retry", what, exc)
    except ForgeError as exc:
        log.warning("forge: %s: %s", what, exc)
    except OSError as exc:
        log.warning("forge: %s: %s", what, exc)
    return None
