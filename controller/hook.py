"""meta.git server-side hooks: guard the ref state machine, poke the controller.

Installed by ``MetaRepo.install_hooks`` as small shell scripts that exec
``<python> -m controller.hook pre-receive|post-receive --state-dir S --run-dir R``.

``pre-receive`` refuses a push (all of it: git pushes are atomic per hook) that

- creates, moves or deletes a controller-owned ref: ``refs/tags/proposal/*``,
  ``building/*``, ``deployed/*``, ``failed/*``, ``refs/hyperhive/*``,
  ``refs/notes/hyperhive``;
- moves or deletes an existing decision (``approved/<id>``, ``denied/<id>``);
- creates ``approved/<id>`` / ``denied/<id>`` with a malformed id, without
  ``proposal/<id>``, when the other decision (or an outcome) exists, or pointing
  anywhere but the proposal's commit;
- deletes main, or moves it to a tree whose changed manifests fail the schema,
  whose ``metadata.name`` differs from the directory, or that drops ``flake.nix``
  or the manager's manifest (the message names the file and the field).

``post-receive`` does ``POST /poke`` on ``<run>/host.sock`` (with the operator
key, ``<state>/operator.key``, as its bearer credential) so the controller runs
a pass at once; when the controller is down, or the key cannot be read (a
pusher who is not the operator), it says so and exits 0 (the next pass picks
the change up).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pygit2

from controller.auth.operator import load_operator_key
from controller.auth.secretfile import CredentialError
from controller.metarepo import (
    CONTROLLER_PREFIXES,
    LAST_DEPLOY_REF,
    MAIN_REF,
    NOTES_REF,
    TAG_PREFIXES,
    parse_id,
    tag_ref,
    tree_errors,
)
from controller.paths import Layout
from schemas.client import ApiError, UnixClient, Unreachable

ZERO = "0" * 40


@dataclass(frozen=True)
class RefUpdate:
    """One line of hook input: ``<old> <new> <ref>`` (all-zero id = absent)."""

    old: str
    new: str
    ref: str

    @property
    def creates(self) -> bool:
        """The ref did not exist before."""
        return set(self.old) == {"0"}

    @property
    def deletes(self) -> bool:
        """The push removes the ref."""
        return set(self.new) == {"0"}


def parse_updates(lines: Sequence[str]) -> list[RefUpdate]:
    """Parse hook stdin lines; blank lines are skipped."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            out.append(RefUpdate(parts[0], parts[1], parts[2]))
    return out


def _peel_commit(repo: pygit2.Repository, hex_: str) -> str | None:
    try:
        return str(repo[hex_].peel(pygit2.Commit).id)
    except (KeyError, ValueError, pygit2.GitError):
        return None


def _ref_exists(repo: pygit2.Repository, name: str) -> bool:
    return repo.references.get(name) is not None


def check_push(repo: pygit2.Repository, updates: Sequence[RefUpdate]) -> list[str]:
    """Refusal messages for a push (empty = accept). ``repo`` must see the pushed objects."""
    problems: list[str] = []
    pushed = {u.ref for u in updates if not u.deletes}
    for u in updates:
        ref = u.ref
        if ref in (LAST_DEPLOY_REF, NOTES_REF) or ref.startswith("refs/hyperhive/"):
            problems.append(f"{ref}: controller-owned; pushes to it are refused")
            continue
        if ref == MAIN_REF:
            problems.extend(_check_main(repo, u))
            continue
        if not ref.startswith("refs/tags/"):
            continue
        prefix, sep, rest = ref[len("refs/tags/") :].partition("/")
        if not sep or prefix not in TAG_PREFIXES:
            continue
        short = ref[len("refs/tags/") :]
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
        proposal = repo.references.get(tag_ref("proposal", id))
        if proposal is None:
            problems.append(f"{short}: there is no proposal/{id}")
            continue
        other = "denied" if prefix == "approved" else "approved"
        if _ref_exists(repo, tag_ref(other, id)) or tag_ref(other, id) in pushed:
            problems.append(f"{short}: proposal/{id} is already {other}")
            continue
        for outcome in ("building", "deployed", "failed"):
            if _ref_exists(repo, tag_ref(outcome, id)):
                problems.append(f"{short}: proposal/{id} is already {outcome}")
                break
        else:
            want = _peel_commit(repo, str(proposal.target))
            got = _peel_commit(repo, u.new)
            if got is None or got != want:
                problems.append(
                    f"{short}: must point at proposal/{id}'s commit {want}, not {got or u.new}"
                    f" (git tag {prefix}/{id} proposal/{id})"
                )
    return problems


def _check_main(repo: pygit2.Repository, u: RefUpdate) -> list[str]:
    if u.deletes:
        return ["main: deleting main is refused (it is the swarm's desired state)"]
    try:
        new = repo[u.new].peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        return [f"main: {u.new} is not a commit"]
    old_tree = None
    if not u.creates:
        try:
            old = repo[u.old].peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            old = None
        if old is not None:
            old_tree = old.tree
            if old.id != new.id and not repo.descendant_of(new.id, old.id):
                return ["main: only fast-forward pushes are accepted (pull/rebase first)"]
    return [f"main: {msg}" for _, msg in tree_errors(repo, new.tree, old_tree)]


def open_repo(path: Path) -> pygit2.Repository:
    """Open meta.git seeing a pushed-but-quarantined object store (receive-pack's tmp objdir)."""
    repo = pygit2.Repository(str(path))
    for var in ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY"):
        d = os.environ.get(var)
        if d and Path(d).is_dir():
            repo.odb.add_disk_alternate(d)
    return repo


def pre_receive(layout: Layout, stdin: TextIO, stderr: TextIO) -> int:
    """Check every ref update; print refusals; 1 refuses the whole push, 0 accepts."""
    updates = parse_updates(stdin.read().splitlines())
    try:
        repo = open_repo(layout.meta_git)
        problems = check_push(repo, updates)
    except Exception as exc:  # a hook that crashes would print a traceback at the operator
        print(f"hyperhive: refusing the push: the hook failed: {exc}", file=stderr)
        return 1
    if problems:
        print("hyperhive: push refused:", file=stderr)
        for p in problems:
            print(f"hyperhive:   {p}", file=stderr)
        return 1
    return 0


def post_receive(layout: Layout, stdin: TextIO, stderr: TextIO) -> int:
    """Poke the controller (``POST /poke``); always 0 — the push already happened."""
    updates = parse_updates(stdin.read().splitlines())
    refs = ", ".join(u.ref.removeprefix("refs/tags/").removeprefix("refs/heads/") for u in updates)
    not_running = (
        f"hyperhive: received {refs}; the controller is not running — it acts on this "
        "when it starts"
    )
    try:
        key = load_operator_key(layout)
    except CredentialError as exc:
        if not layout.host_sock.exists():
            print(not_running, file=stderr)
        else:
            print(
                f"hyperhive: received {refs}; could not poke the controller: {exc.message}; "
                "it acts on this at its next pass",
                file=stderr,
            )
        return 0
    try:
        UnixClient(str(layout.host_sock), timeout=5.0, token=key).post("/poke", {})
    except Unreachable:
        print(not_running, file=stderr)
        return 0
    except (ApiError, OSError, ValueError) as exc:
        print(f"hyperhive: received {refs}; could not poke the controller: {exc}", file=stderr)
        return 0
    print(
        f"hyperhive: received {refs}; the controller is reconciling "
        "(git fetch --tags to see deployed/<id> or failed/<id>)",
        file=stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m controller.hook pre-receive|post-receive --state-dir S --run-dir R``."""
    p = argparse.ArgumentParser(prog="controller.hook")
    p.add_argument("kind", choices=["pre-receive", "post-receive"])
    p.add_argument("--state-dir", required=True)
    p.add_argument("--run-dir", required=True)
    args = p.parse_args(argv)
    layout = Layout(Path(args.state_dir), Path(args.run_dir))
    if args.kind == "pre-receive":
        return pre_receive(layout, sys.stdin, sys.stderr)
    return post_receive(layout, sys.stdin, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
