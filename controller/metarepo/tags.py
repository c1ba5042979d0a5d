"""The tag index as values: which refs each id has, and what state that means (pure).

``split_tag`` parses a ref name; ``Index`` holds, per id, the target of each tag
prefix and whether the manager was notified, and ``classify`` derives the ids a
pass must look at (the state machine of docs/approvals.md) so a pass is
O(open ids). ``state_of`` names an id's ``ProposalState``. Nothing here reads
the repo: ``controller.metarepo.index`` builds these from the ref storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pygit2

from controller.metarepo.names import OUTCOMES, TAG_PREFIXES, parse_id
from controller.ops import ProposalState


def split_tag(refname: str) -> tuple[str, int] | None:
    """``refs/tags/approved/3`` → ``("approved", 3)``; None for any other ref."""
    if not refname.startswith("refs/tags/"):
        return None
    prefix, sep, rest = refname[len("refs/tags/") :].partition("/")
    if not sep or prefix not in TAG_PREFIXES:
        return None
    id = parse_id(rest)
    return None if id is None else (prefix, id)


@dataclass
class Entry:
    """The refs of one id: ``targets`` maps tag prefix → the ref's target (a commit or an
    annotated tag); ``notified`` is True when ``refs/hyperhive/notified/<id>`` exists."""

    targets: dict[str, pygit2.Oid] = field(default_factory=dict)
    notified: bool = False


@dataclass
class Index:
    """Every id's ``Entry``, the highest id seen, and the ref storage's ``fingerprint``
    when it was read (``racy``: too recent to trust, so the next lookup re-reads)."""

    entries: dict[int, Entry]
    max_id: int
    fingerprint: tuple[Any, ...]
    racy: bool
    # ids needing attention, computed once per rebuild so a pass is O(open ids)
    open_builds: list[int] = field(default_factory=list)
    approved: list[int] = field(default_factory=list)
    denied: list[int] = field(default_factory=list)
    open_proposals: list[int] = field(default_factory=list)
    # ids per state (``by_state``), made on first use after each ``classify``
    _by_state: Mapping[ProposalState, tuple[int, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def classify(self) -> None:
        """(Re)fill the open-id lists from ``entries``, ascending ids; call it after every
        change to ``entries`` (it also drops ``by_state``'s cache)."""
        self._by_state = None
        self.open_builds.clear()
        self.approved.clear()
        self.denied.clear()
        self.open_proposals.clear()
        for id in sorted(self.entries):
            e = self.entries[id]
            t = e.targets
            if "building" in t and not (OUTCOMES & t.keys()):
                self.open_builds.append(id)
            if "proposal" not in t:
                continue
            if "approved" in t and not ({"building", "denied"} | OUTCOMES) & t.keys():
                self.approved.append(id)
            if "denied" in t and not e.notified:
                self.denied.append(id)
            if "denied" not in t and not ({"building"} | OUTCOMES) & t.keys():
                self.open_proposals.append(id)

    def by_state(self) -> Mapping[ProposalState, tuple[int, ...]]:
        """The ids of proposals and deploys (ids with ``proposal`` or ``building``) per
        state, ascending; kept until the next ``classify`` (the entries changed), so a
        caller asking again between ref changes pays nothing (read-only: it is shared)."""
        cached = self._by_state
        if cached is not None:
            return cached
        lists: dict[ProposalState, list[int]] = {s: [] for s in ProposalState}
        for id in sorted(self.entries):
            e = self.entries[id]
            if "proposal" in e.targets or "building" in e.targets:
                lists[state_of(e)].append(id)
        out = MappingProxyType({s: tuple(ids) for s, ids in lists.items()})
        self._by_state = out
        return out


_STATES = (
    ("failed", ProposalState.FAILED),
    ("deployed", ProposalState.DEPLOYED),
    ("building", ProposalState.BUILDING),
    ("denied", ProposalState.DENIED),
    ("approved", ProposalState.APPROVED),
)


def state_of(e: Entry) -> ProposalState:
    """The state an id's refs put it in: the furthest of failed, deployed, building,
    denied, approved it has, else pending."""
    for prefix, state in _STATES:
        if prefix in e.targets:
            return state
    return ProposalState.PENDING
