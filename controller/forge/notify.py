"""Forge notifications → inbox messages: the pure part (reasons, summaries, keys).

Forgejo's ``NotificationThread`` says *what* changed (``subject``: an issue, a pull
request, a commit) but not *why* the user was told, so the reason is derived from the
subject, as GitHub names its reasons, in this order (the first that holds):

==================  ===============================================================
``mention``         the newest comment (or the issue's text) names ``@<user>``
``review_requested`` a pull request asks the user for a review
``assigned``        the user is an assignee
``author``          the user opened the issue or pull request
``participating``   the user commented on it
``subscribed``      none of the above: the user watches the repository
==================  ===============================================================

``spec.forge.skipNotifyReasons`` lists reasons to drop. A delivered notification is one
line from ``forge`` in the agent's inbox, e.g.
``[alice/site] PR #4 "Fix the header" (review_requested): http://localhost:3000/alice/site/pulls/4``
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SENDER = "forge"
"""The ``from`` of every forge message (a reserved name: no agent can be called that)."""

REASONS = ("mention", "review_requested", "assigned", "author", "participating", "subscribed")
"""Every reason, strongest first (the schema's enum for ``spec.forge.skipNotifyReasons``)."""

_KIND = {"Pull": "PR", "Issue": "issue", "Commit": "commit", "Repository": "repo"}
MAX_TITLE = 160
MAX_KEY = 120


@dataclass(frozen=True)
class Facts:
    """What the forge says about a notification's subject, for ``classify``.

    ``text``: the newest comment's body (or the issue's body when there is none);
    ``commenters``: logins of everyone who commented."""

    author: str | None = None
    assignees: tuple[str, ...] = ()
    requested_reviewers: tuple[str, ...] = ()
    text: str = ""
    commenters: tuple[str, ...] = ()


def _logins(rows: Any) -> tuple[str, ...]:
    if not isinstance(rows, list):
        return ()
    return tuple(
        str(r["login"]) for r in rows if isinstance(r, dict) and isinstance(r.get("login"), str)
    )


def facts_from(issue: Any, comment: Any, comments: Any) -> Facts:
    """``Facts`` from the forge's ``Issue`` / ``PullRequest``, newest ``Comment`` and
    ``[Comment]`` documents (any may be None: what is missing counts as absent)."""
    issue = issue if isinstance(issue, Mapping) else {}
    user = issue.get("user")
    author = str(user["login"]) if isinstance(user, Mapping) and "login" in user else None
    text = ""
    if isinstance(comment, Mapping) and isinstance(comment.get("body"), str):
        text = comment["body"]
    elif isinstance(issue.get("body"), str):
        text = issue["body"]
    commenters = tuple(
        str(c["user"]["login"])
        for c in (comments if isinstance(comments, list) else [])
        if isinstance(c, Mapping) and isinstance(c.get("user"), Mapping) and "login" in c["user"]
    )
    return Facts(
        author=author,
        assignees=_logins(issue.get("assignees")),
        requested_reviewers=_logins(issue.get("requested_reviewers")),
        text=text,
        commenters=commenters,
    )


def mentions(text: str, user: str) -> bool:
    """``@user`` in ``text`` as a whole handle (not ``@username2`` or ``mail@user.org``)."""
    pattern = rf"(?<![\w.@-])@{re.escape(user)}(?![\w-])"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def classify(user: str, facts: Facts) -> str:
    """The notification's reason for ``user`` (one of ``REASONS``)."""
    if facts.text and mentions(facts.text, user):
        return "mention"
    if user in facts.requested_reviewers:
        return "review_requested"
    if user in facts.assignees:
        return "assigned"
    if facts.author == user:
        return "author"
    if user in facts.commenters:
        return "participating"
    return "subscribed"


def link(thread: Mapping[str, Any]) -> str:
    """The web link of a notification: its newest comment, else its subject, else the repo."""
    subject = thread.get("subject") if isinstance(thread.get("subject"), Mapping) else {}
    assert isinstance(subject, Mapping)
    for key in ("latest_comment_html_url", "html_url"):
        if isinstance(subject.get(key), str) and subject[key]:
            return str(subject[key])
    repo = thread.get("repository")
    if isinstance(repo, Mapping) and isinstance(repo.get("html_url"), str):
        return str(repo["html_url"])
    return ""


def index_of(thread: Mapping[str, Any]) -> str | None:
    """The issue / PR number from a notification's subject URL, as text; None if it has none."""
    subject = thread.get("subject")
    url = subject.get("url") if isinstance(subject, Mapping) else None
    if isinstance(url, str) and (m := re.search(r"/(?:issues|pulls)/(\d+)$", url)):
        return m[1]
    return None


def summary(thread: Mapping[str, Any], reason: str) -> str:
    """The one-line inbox message for a notification (no newlines; title cut at 160)."""
    subject = thread.get("subject") if isinstance(thread.get("subject"), Mapping) else {}
    assert isinstance(subject, Mapping)
    repo = thread.get("repository")
    full = str(repo.get("full_name")) if isinstance(repo, Mapping) else "?"
    kind = _KIND.get(str(subject.get("type")), str(subject.get("type") or "notification"))
    num = index_of(thread)
    what = f"{kind} #{num}" if num else kind
    title = " ".join(str(subject.get("title") or "").split())
    if len(title) > MAX_TITLE:
        title = title[: MAX_TITLE - 1] + "…"
    return f'[{full}] {what} "{title}" ({reason}): {link(thread)}'.replace("\n", " ")


def idempotency_key(thread: Mapping[str, Any]) -> str:
    """The broker idempotency key of one notification state: thread id + update time, so
    a redelivery after a crash is a duplicate and a later update is a new message."""
    key = f"forge:{thread.get('id')}:{thread.get('updated_at') or ''}"
    if len(key) > MAX_KEY:  # the broker takes keys of up to 128 characters
        key = "forge:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def oldest_first(threads: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Threads ordered by update time, then id (the forge lists newest first)."""
    return sorted(threads, key=lambda t: (str(t.get("updated_at") or ""), int(t.get("id") or 0)))
