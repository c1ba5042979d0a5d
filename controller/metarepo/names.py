"""The meta repo's names and limits (pure constants, no I/O).

The ref names the hooks judge live in ``controller.hooks.updates`` (stdlib only,
so a hook never imports pygit2 to read them) and are re-exported from here; a
test checks both packages hand out the same objects.
"""

from __future__ import annotations

from controller.hooks.updates import (
    LAST_DEPLOY_REF,
    MAIN_REF,
    MANAGER_PREFIX,
    NOTES_REF,
    TAG_PREFIXES,
    parse_id,
    tag_ref,
)

NOTIFIED_PREFIX = "refs/hyperhive/notified/"
"""``refs/hyperhive/notified/<id>``: the manager was told about ``denied/<id>``."""
DECISION_PREFIXES = ("approved", "denied")
OUTCOMES = frozenset({"deployed", "failed"})
"""The tag prefixes that close an id."""
FLAKE_FILE = "flake.nix"
LOCK_FILE = "flake.lock"
AGENTS_DIR = "agents"
CONTROLLER_NAME = "hyperhive"
CONTROLLER_EMAIL = "hyperhive@localhost"
MAX_DIFF_CHARS = 200_000
"""A proposal's diff is cut after this many characters."""
RACY_NS = 2_000_000_000
"""Ref storage changed within this many nanoseconds is too recent to trust its stat."""

MAX_PROPOSAL_BLOB_BYTES = 32 * 1024 * 1024
"""Largest file a proposal may add (the largest custom front-end file served)."""
MAX_PROPOSAL_NEW_BYTES = 64 * 1024 * 1024
"""Most bytes of new files one proposal may add (a push's limit over HTTP too)."""
MAX_PROPOSAL_OBJECT_BYTES = 4 * 1024 * 1024
"""Largest commit, tree or tag a proposal may bring (a meta repo's are a few KiB)."""

GIT_CONFIG = {
    # main only moves forward: its history is the audit trail of desired state.
    "receive.denyNonFastForwards": "true",
    # deletes are judged by the pre-receive hook (controller refs and decisions
    # are protected; an operator's own scratch branches may be deleted).
    "receive.denyDeletes": "false",
    "receive.fsckObjects": "true",
    "core.logAllRefUpdates": "true",
    # the reflogs are the audit trail: kept, never expired. Expiring them is also what made
    # `git gc` (the controller's after a manager push, and git's own gc --auto after a
    # receive) lock every ref, main and the notes included, while it ran: a controller
    # write in that window failed with "failed to lock file".
    "gc.reflogExpire": "never",
    "gc.reflogExpireUnreachable": "never",
}
"""meta.git's receive config, (re)written at every start when it differs."""

__all__ = [
    "AGENTS_DIR",
    "CONTROLLER_EMAIL",
    "CONTROLLER_NAME",
    "DECISION_PREFIXES",
    "FLAKE_FILE",
    "GIT_CONFIG",
    "LAST_DEPLOY_REF",
    "LOCK_FILE",
    "MAIN_REF",
    "MANAGER_PREFIX",
    "MAX_DIFF_CHARS",
    "MAX_PROPOSAL_BLOB_BYTES",
    "MAX_PROPOSAL_NEW_BYTES",
    "MAX_PROPOSAL_OBJECT_BYTES",
    "NOTES_REF",
    "NOTIFIED_PREFIX",
    "OUTCOMES",
    "RACY_NS",
    "TAG_PREFIXES",
    "parse_id",
    "tag_ref",
]
