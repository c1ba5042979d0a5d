"""Proposal verbs: the manager proposes (spawn, apply a commit), the operator decides.

Thin over ``controller.metarepo.MetaRepo`` (the ref state machine of
docs/approvals.md); a decision asks for a pass.
"""

from __future__ import annotations

import logging

from controller.ops import Proposal
from controller.swarm.core import SwarmCore

log = logging.getLogger("hyperhive.swarm")


class Proposals:
    """Proposal and decision verbs over ``core.meta``."""

    def __init__(self, core: SwarmCore) -> None:
        self.core = core

    def request_spawn(self, name: str) -> Proposal:
        """``proposal/<id>`` adding ``agents/<name>/agent.yaml``; see ``MetaRepo.propose_spawn``."""
        p = self.core.meta.propose_spawn(name)
        log.info("proposal/%d: spawn %s (pending operator approval)", p.id, name)
        return p

    def request_apply_commit(self, commit: str, note: str) -> Proposal:
        """Import ``commit`` from ``<state>/manager/meta`` as ``proposal/<id>``.

        NotFound (no such commit), Invalid (a manifest fails the schema, field =
        the file), Conflict (nothing to change / already pending / in main).
        """
        p = self.core.meta.propose_commit(commit, self.core.layout.manager_meta, note)
        log.info("proposal/%d: apply %s (pending operator approval)", p.id, p.commit[:12])
        return p

    def proposals(self, pending_only: bool = False) -> list[Proposal]:
        """Every proposal/deploy, newest first (or only those awaiting a decision)."""
        return self.core.meta.proposals(pending_only)

    def proposal(self, id: int) -> Proposal:
        """One proposal or deploy; NotFound."""
        return self.core.meta.proposal(id)

    def approve(self, id: int, note: str = "") -> Proposal:
        """Write ``approved/<id>`` and ask for a pass. NotFound / Conflict."""
        p = self.core.meta.approve(id, note)
        self.core.requests.request(f"approved/{id}")
        return p

    def deny(self, id: int, note: str) -> Proposal:
        """Annotated ``denied/<id>`` (reason: ``note``) and a pass request; NotFound, Conflict."""
        p = self.core.meta.deny(id, note)
        self.core.requests.request(f"denied/{id}")
        return p
