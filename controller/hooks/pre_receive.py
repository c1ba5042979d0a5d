"""The pre-receive check: refuse a forged or rewritten ref, all or nothing.

A push is refused (all of it: git applies none of its updates when the hook
exits non-zero) when it

- creates, moves or deletes a controller-owned ref: ``refs/tags/proposal/*``,
  ``building/*``, ``deployed/*``, ``failed/*``, ``refs/hyperhive/*``,
  ``refs/notes/hyperhive``;
- moves or deletes an existing decision (``approved/<id>``, ``denied/<id>``);
- creates ``approved/<id>`` / ``denied/<id>`` with a malformed id, without
  ``proposal/<id>``, when the other decision (or an outcome) exists, or pointing
  anywhere but the proposal's commit;
- deletes main, or moves it to a tree ``controller.hooks.main_check`` refuses.

A push by the manager (``HYPERHIVE_PUSHER=manager``, set by ``controller.githttp``
for the manager's credential) may touch ``refs/hyperhive/manager/*`` and nothing
else: each such ref may be created, moved or deleted and must name a commit; any
other ref refuses the whole push, and so does a push that would leave more than
``MAX_MANAGER_REFS`` refs there. The operator's pushes may not touch that
namespace (it is under the controller-owned ``refs/hyperhive/*``).

Why it is written this way: the check runs inside every ``git push``, before
the refs move, so its start-up time is on the approval path. Decisions are
judged with at most two ``git`` commands run in the hook's own environment (which
points git at receive-pack's quarantined objects): ``for-each-ref`` for the
exact refs of the ids pushed, with their object types, and ``cat-file
--batch-check`` to peel to commits what is not a commit already (an annotated
decision tag; a lightweight one is the proposal's commit id and needs no second
process). Importing pygit2 alone would cost more than both. Only a push that
moves main loads pygit2 and the manifest schema (``main_check``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from controller.hooks.updates import (
    CONTROLLER_PREFIXES,
    LAST_DEPLOY_REF,
    MAIN_REF,
    MANAGER_PREFIX,
    MAX_MANAGER_REFS,
    NOTES_REF,
    OUTCOME_PREFIXES,
    PUSHER_ENV,
    TAG_PREFIXES,
    RefUpdate,
    is_object_id,
    parse_id,
    parse_updates,
    tag_ref,
)

if TYPE_CHECKING:
    from typing import TextIO


def _git(git_dir: Path, args: Sequence[str], stdin: str = "") -> str:
    """stdout of ``git --git-dir=<git_dir> <args>``; raises ``RuntimeError`` when git fails."""
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def existing_refs(git_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """``{refname: object id}`` for those of ``names`` that exist (exact names only)."""
    return {name: oid for name, (oid, _) in typed_refs(git_dir, names).items()}


def typed_refs(git_dir: Path, names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``{refname: (object id, object type)}`` for those of ``names`` that exist (exact
    names only; the type as git names it: ``commit``, ``tag``, ...)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    fmt = "--format=%(refname) %(objectname) %(objecttype)"
    out = _git(git_dir, ["for-each-ref", fmt, "--", *wanted])
    found: dict[str, tuple[str, str]] = {}
    want = set(wanted)
    for line in out.splitlines():
        name, oid, kind = [*line.split(" "), "", ""][:3]
        if name in want:  # a pattern also matches refs below it (refs/tags/x/1/...)
            found[name] = (oid, kind)
    return found


def peel_commits(git_dir: Path, oids: Iterable[str]) -> dict[str, str | None]:
    """``{oid: the commit it peels to, or None}`` for full hex object ids.

    Anything that is not a full hex id maps to None without asking git (so a
    ref name can never be resolved by git's guessing rules here).
    """
    given = list(oids)
    ids = sorted({o for o in given if is_object_id(o)})
    peeled: dict[str, str | None] = dict.fromkeys(given)
    if not ids:
        return peeled
    out = _git(git_dir, ["cat-file", "--batch-check"], "".join(f"{o}^{{commit}}\n" for o in ids))
    lines = out.splitlines()
    if len(lines) != len(ids):
        raise RuntimeError(f"git cat-file answered {len(lines)} lines for {len(ids)} objects")
    for oid, line in zip(ids, lines, strict=True):
        parts = line.split()
        ok = len(parts) >= 2 and parts[1] == "commit" and is_object_id(parts[0])
        peeled[oid] = parts[0] if ok else None
    return peeled


def _decision(u: RefUpdate) -> tuple[str, str, int | None] | None:
    """``(prefix, short name, id)`` when ``u`` is a decision tag, else None."""
    if not u.ref.startswith("refs/tags/"):
        return None
    short = u.ref[len("refs/tags/") :]
    prefix, sep, rest = short.partition("/")
    if not sep or prefix not in ("approved", "denied"):
        return None
    return prefix, short, parse_id(rest)


def check_push(git_dir: Path, updates: Sequence[RefUpdate]) -> list[str]:
    """Refusal messages for a push (empty = accept).

    ``git_dir`` is meta.git; git run from the hook's environment sees the
    pushed (quarantined) objects. Raises ``RuntimeError`` (or ``OSError``)
    when git cannot be asked: the caller refuses the push then.
    """
    pushed = {u.ref for u in updates if not u.deletes}
    ids = {
        d[2] for u in updates if u.creates and (d := _decision(u)) is not None and d[2] is not None
    }
    typed = typed_refs(git_dir, (tag_ref(p, id) for id in ids for p in TAG_PREFIXES))
    refs = {name: oid for name, (oid, _) in typed.items()}
    # a ref git says points at a commit needs no peeling: so a lightweight approval (the
    # proposal's own commit id) is judged without a second git process
    peeled: dict[str, str | None] = {
        oid: oid for oid, kind in typed.values() if kind == "commit" and is_object_id(oid)
    }
    to_peel = [refs[tag_ref("proposal", id)] for id in ids if tag_ref("proposal", id) in refs]
    to_peel += [u.new for u in updates if u.creates and _decision(u) is not None]
    peeled.update(peel_commits(git_dir, [o for o in to_peel if o not in peeled]))

    problems: list[str] = []
    for u in updates:
        ref = u.ref
        if ref in (LAST_DEPLOY_REF, NOTES_REF) or ref.startswith("refs/hyperhive/"):
            problems.append(f"{ref}: controller-owned; pushes to it are refused")
            continue
        if ref == MAIN_REF:
            problems.extend(_check_main(git_dir, u))
            continue
        if not ref.startswith("refs/tags/"):
            continue
        short = ref[len("refs/tags/") :]
        prefix, sep, rest = short.partition("/")
        if not sep or prefix not in TAG_PREFIXES:
            continue
        if prefix in CONTROLLER_PREFIXES:
            problems.append(
                f"{short}: {prefix}/* tags are written by the controller only "
                "(approve with approved/<id>, deny with denied/<id>)"
            )
            continue
        if not u.creates:
            verb = "delete" if u.deletes else "move"
            problems.append(f"{short}: decisions are final; refusing to {verb} an existing tag")
            continue
        id = parse_id(rest)
        if id is None:
            problems.append(f"{short}: <id> must be a positive integer, like {prefix}/3")
            continue
        proposal = refs.get(tag_ref("proposal", id))
        if proposal is None:
            problems.append(f"{short}: there is no proposal/{id}")
            continue
        other = "denied" if prefix == "approved" else "approved"
        if tag_ref(other, id) in refs or tag_ref(other, id) in pushed:
            problems.append(f"{short}: proposal/{id} is already {other}")
            continue
        outcome = next((o for o in OUTCOME_PREFIXES if tag_ref(o, id) in refs), None)
        if outcome is not None:
            problems.append(f"{short}: proposal/{id} is already {outcome}")
            continue
        want, got = peeled.get(proposal), peeled.get(u.new)
        if got is None or got != want:
            problems.append(
                f"{short}: must point at proposal/{id}'s commit {want}, not {got or u.new}"
                f" (git tag {prefix}/{id} proposal/{id})"
            )
    return problems


def check_manager_push(git_dir: Path, updates: Sequence[RefUpdate]) -> list[str]:
    """Refusal messages for a push by the manager (empty = accept): only refs under
    ``refs/hyperhive/manager/`` (with a name after it), each pointing at a commit.
    Raises ``RuntimeError`` / ``OSError`` when git cannot be asked (the push is refused)."""
    problems: list[str] = []
    inside = [u for u in updates if u.ref.startswith(MANAGER_PREFIX) and u.ref != MANAGER_PREFIX]
    for u in updates:
        if u not in inside:
            problems.append(
                f"{u.ref}: the manager pushes only to {MANAGER_PREFIX}<name> (then "
                "request_apply_commit proposes the commit; the operator approves)"
            )
    peeled = peel_commits(git_dir, [u.new for u in inside if not u.deletes])
    for u in inside:
        if not u.deletes and peeled.get(u.new) is None:
            problems.append(f"{u.ref}: must point at a commit, not {u.new}")
    names = _git(git_dir, ["for-each-ref", "--format=%(refname)", MANAGER_PREFIX]).split()
    after = set(names) | {u.ref for u in inside if not u.deletes}
    after -= {u.ref for u in inside if u.deletes}
    if len(after) > MAX_MANAGER_REFS:
        problems.append(
            f"{MANAGER_PREFIX}*: would hold {len(after)} refs, more than {MAX_MANAGER_REFS}; "
            f"delete the ones no longer needed (git push origin :{MANAGER_PREFIX}<name>)"
        )
    return problems


def _check_main(git_dir: Path, u: RefUpdate) -> list[str]:
    if u.deletes:
        return ["main: deleting main is refused (it is the swarm's desired state)"]
    from controller.hooks.main_check import check_main  # pygit2 + schema: main pushes only

    return check_main(git_dir, u)


def pre_receive(git_dir: Path, stdin: TextIO, stderr: TextIO, pusher: str | None = None) -> int:
    """Check every ref update; print refusals; 1 refuses the whole push, 0 accepts.

    ``pusher`` defaults to ``$HYPERHIVE_PUSHER``: ``manager`` gets the manager's rule
    (``check_manager_push``), unset or ``operator`` the operator's (``check_push``);
    anything else refuses the push."""
    updates = parse_updates(stdin.read().splitlines())
    who = os.environ.get(PUSHER_ENV, "") if pusher is None else pusher
    try:
        if who == "manager":
            problems = check_manager_push(git_dir, updates)
        elif who in ("", "operator"):
            problems = check_push(git_dir, updates)
        else:
            problems = [f"{PUSHER_ENV}={who!r}: not a pusher meta.git knows"]
    except Exception as exc:  # a hook that crashes would print a traceback at the operator
        print(f"hyperhive: refusing the push: the hook failed: {exc}", file=stderr)
        return 1
    if problems:
        print("hyperhive: push refused:", file=stderr)
        for p in problems:
            print(f"hyperhive:   {p}", file=stderr)
        return 1
    return 0
