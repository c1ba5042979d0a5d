"""Benchmark: a no-op reconcile pass must not grow with history (tags, commits).

Builds a meta repo with ``--agents`` agents at main, ``--history`` commits behind
main and, per run, ``--tags`` outcome tags (packed, as after ``git gc``), then
times passes of a real ``Swarm`` + ``MetaRepo`` against an in-memory driver that
reports every agent in sync (so the figure is the reconcile core: refs, desired
state, plan, status — not process probing):

- a **no-op pass** (nothing changed), ``--passes`` times;
- a **changed pass**: one agent's manifest changed on main (an operator push), so
  the pass records the push, re-reads that one agent, applies its manifest and
  tags ``deployed/<id>`` — ``--changes`` times, a different agent each time;
- **/status**: ``Swarm.status_json()`` on the idle swarm (host.sock ``/status`` without the
  HTTP: the pending count from the ref index, the cached body), ``--passes`` times.

Git objects read are counted by a pass-through object-database backend (reads
that miss libgit2's object cache)::

    .venv/bin/python bench/reconcile.py                 # 200 agents; 0 / 1,000 / 10,000 tags
    .venv/bin/python bench/reconcile.py --tags 0,10000 --passes 100

Exit status 1 when the median no-op pass with the most tags is more than
``--max-ratio`` times the one with the fewest (plus 1 ms of noise allowance), or
when a no-op pass reads any git object.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pygit2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.config import Config
from controller.drivers.base import Deployment, LineSink
from controller.metarepo import RACY_NS, MetaRepo
from controller.model import ObservedAgent, Phase
from controller.paths import Layout
from controller.swarm import Swarm


class InSyncDriver:
    """Reports every desired agent running at its desired digests; does nothing."""

    name = "bench"
    builds_nix = True

    def __init__(self, meta: MetaRepo) -> None:
        self.meta = meta
        self.observed: dict[str, ObservedAgent] = {}

    def sync(self) -> None:
        d = self.meta.desired()
        self.observed = {
            n: ObservedAgent(
                n, Phase.RUNNING, a.commit, a.config_digest, a.build_digest, d.hyperhive_version
            )
            for n, a in d.agents.items()
        }

    def observe(self) -> dict[str, ObservedAgent]:
        return dict(self.observed)

    def _deployed(self, d: Deployment) -> None:
        a = d.agent
        self.observed[a.name] = ObservedAgent(
            a.name, Phase.RUNNING, a.commit, a.config_digest, a.build_digest, self.meta.version
        )

    def create(self, d: Deployment, log: LineSink) -> None:
        self._deployed(d)

    def rebuild(self, d: Deployment, log: LineSink) -> None:
        self._deployed(d)

    def apply_manifest(self, d: Deployment) -> None:
        self._deployed(d)

    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def restart(self, name: str) -> None: ...
    def destroy(self, name: str) -> None: ...


class CountingBackend(pygit2.OdbBackend):
    """Serves every object from the repo's own object database, counting reads."""

    def __init__(self, objects: str) -> None:
        super().__init__()
        self.inner = pygit2.Odb(objects)
        self.reads = 0

    def read_cb(self, oid: pygit2.Oid) -> tuple[int, bytes]:
        self.reads += 1
        typ, data = self.inner.read(oid)[:2]
        return typ, data

    def read_prefix_cb(self, oid: pygit2.Oid) -> tuple[int, bytes, pygit2.Oid]:
        self.reads += 1
        typ, data = self.inner.read(oid)[:2]
        return typ, data, oid

    def read_header_cb(self, oid: pygit2.Oid) -> tuple[int, int]:
        typ, data = self.inner.read(oid)[:2]
        return typ, len(data)

    def exists_cb(self, oid: pygit2.Oid) -> bool:
        return bool(self.inner.exists(oid))

    def exists_prefix_cb(self, oid: pygit2.Oid) -> pygit2.Oid:
        return oid

    def refresh_cb(self) -> None:
        return None

    def write_cb(self, oid: pygit2.Oid, data: bytes, typ: int) -> None:
        self.inner.write(typ, data)

    def __iter__(self) -> Any:
        return iter(self.inner)


def count_reads(meta: MetaRepo) -> CountingBackend:
    """Route ``meta.repo``'s object reads through a ``CountingBackend``."""
    backend = CountingBackend(str(meta.path / "objects"))
    odb = pygit2.Odb()
    odb.add_backend(backend, 1)
    meta.repo.set_odb(odb)
    return backend


def change_one(meta: MetaRepo, name: str, n: int) -> None:
    """Commit on main changing ``agents/<name>/agent.yaml`` (like an operator push)."""
    repo = meta.repo
    sig = pygit2.Signature("bench", "bench@localhost")
    main = repo.references["refs/heads/main"].target
    tree = repo[main].peel(pygit2.Tree)
    agents = tree["agents"]
    agent_tb = repo.TreeBuilder(agents[name])  # type: ignore[index,arg-type]
    text = (
        "apiVersion: hyperhive/v1\nkind: Agent\n"
        f"metadata:\n  name: {name}\nspec:\n  model: haiku\n  allowedRecipients: [a{n:03d}]\n"
    )
    agent_tb.insert("agent.yaml", repo.create_blob(text.encode()), pygit2.GIT_FILEMODE_BLOB)
    agents_tb = repo.TreeBuilder(agents)  # type: ignore[arg-type]
    agents_tb.insert(name, agent_tb.write(), pygit2.GIT_FILEMODE_TREE)
    root_tb = repo.TreeBuilder(tree)
    root_tb.insert("agents", agents_tb.write(), pygit2.GIT_FILEMODE_TREE)
    repo.create_commit("refs/heads/main", sig, sig, f"{name}: change {n}", root_tb.write(), [main])


class NullBroker:
    """The ``EventSink`` a pass writes to, doing nothing: the figure is the reconcile core."""

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> None:
        return None

    def close_threads(self, agent: str, reason: str | None = None) -> int:
        return 0

    def dead_letter_counts(self) -> dict[str, int]:
        return {}


def agents_tree(repo: pygit2.Repository, tree: pygit2.Tree, agents: int) -> pygit2.Oid:
    """``tree`` with ``agents`` manifests (``a000``, ``a001``, …) added under ``agents/``."""
    agents_tb = repo.TreeBuilder(tree["agents"])  # type: ignore[arg-type]
    for i in range(agents):
        name = f"a{i:03d}"
        text = (
            "apiVersion: hyperhive/v1\nkind: Agent\n"
            f"metadata:\n  name: {name}\nspec:\n  model: haiku\n"
        )
        tb = repo.TreeBuilder()
        tb.insert("agent.yaml", repo.create_blob(text.encode()), pygit2.GIT_FILEMODE_BLOB)
        agents_tb.insert(name, tb.write(), pygit2.GIT_FILEMODE_TREE)
    root_tb = repo.TreeBuilder(tree)
    root_tb.insert("agents", agents_tb.write(), pygit2.GIT_FILEMODE_TREE)
    return root_tb.write()


def build_repo(root: Path, agents: int, history: int) -> MetaRepo:
    layout = Layout(root / "state", root / "run")
    meta = MetaRepo.open_or_init(layout, Config())
    repo = meta.repo
    sig = pygit2.Signature("bench", "bench@localhost")
    main = repo.references["refs/heads/main"].target
    top = agents_tree(repo, repo[main].peel(pygit2.Tree), agents)
    parent = main
    for i in range(history):
        parent = repo.create_commit(None, sig, sig, f"history {i}", top, [parent])
    tip = repo.create_commit(None, sig, sig, f"{agents} agents", top, [parent])
    repo.references.create("refs/heads/main", tip, force=True)
    return meta


def add_tags(meta: MetaRepo, count: int) -> None:
    """``count`` tags: per id proposal, approved, building, annotated deployed."""
    repo = meta.repo
    main = repo.references["refs/heads/main"].target
    sig = pygit2.Signature("hyperhive", "hyperhive@localhost")
    start = meta.refs.refresh().max_id + 1
    ids = range(start, start + max(count // 4, 0))
    for i in ids:
        for prefix in ("proposal", "approved", "building"):
            repo.references.create(f"refs/tags/{prefix}/{i}", main)
        repo.create_tag(
            f"deployed/{i}", main, pygit2.enums.ObjectType.COMMIT, sig, f"deployed {i}\n"
        )
    subprocess.run(["git", "--git-dir", str(meta.path), "pack-refs", "--all"], check=True)


def run(
    tags: int, agents: int, history: int, passes: int, changes: int
) -> tuple[float, float, float, float, float]:
    """``(no-op median ms, objects read per no-op pass, changed median ms, objects per change,
    /status median ms)``."""
    with tempfile.TemporaryDirectory(prefix="hh-bench-") as tmp:
        meta = build_repo(Path(tmp), agents, history)
        add_tags(meta, tags)
        layout = meta.layout
        fresh = MetaRepo.open(layout, Config())
        counter = count_reads(fresh)
        driver = InSyncDriver(fresh)
        driver.sync()
        swarm = Swarm(layout, Config(), fresh, NullBroker(), driver)
        swarm.reconcile()  # records the push, writes status once
        time.sleep(RACY_NS / 1e9 + 0.1)  # let ref-storage timestamps age past the racy window
        swarm.reconcile()
        samples, reads = [], []
        for _ in range(passes):
            before = counter.reads
            t0 = time.perf_counter()
            result = swarm.reconcile()
            samples.append(time.perf_counter() - t0)
            reads.append(counter.reads - before)
            assert not result.plan and result.ok, result
        changed, changed_reads = [], []
        for n in range(changes):
            name = f"a{(n * 7) % agents:03d}"
            change_one(fresh, name, n)
            before = counter.reads
            t0 = time.perf_counter()
            result = swarm.reconcile()
            changed.append(time.perf_counter() - t0)
            changed_reads.append(counter.reads - before)
            assert [a.agent for a in result.plan] == [name] and result.ok, result
        swarm.status_json()
        time.sleep(RACY_NS / 1e9 + 0.1)  # the changed passes' tags, too, age past that window
        status = []
        for _ in range(passes):
            t0 = time.perf_counter()
            swarm.status_json()
            status.append(time.perf_counter() - t0)
        return (
            statistics.median(samples) * 1000,
            statistics.mean(reads),
            statistics.median(changed) * 1000 if changed else 0.0,
            statistics.mean(changed_reads) if changed_reads else 0.0,
            statistics.median(status) * 1000,
        )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--tags", default="0,1000,10000", help="comma-separated tag counts")
    p.add_argument("--history", type=int, default=2000, help="commits behind main")
    p.add_argument("--passes", type=int, default=50, help="no-op passes per tag count")
    p.add_argument("--changes", type=int, default=5, help="changed passes per tag count")
    p.add_argument("--max-ratio", type=float, default=2.0)
    args = p.parse_args()
    counts = [int(x) for x in args.tags.split(",")]
    print(f"reconcile pass, {args.agents} agents, {args.history} commits of history")
    print(
        f"{'tags':>8}  {'no-op ms':>9}  {'objs read':>9}  {'1 changed ms':>12}  {'objs read':>9}"
        f"  {'/status ms':>10}"
    )
    results = []
    noop_reads = 0.0
    for n in counts:
        ms, reads, cms, creads, sms = run(n, args.agents, args.history, args.passes, args.changes)
        results.append(ms)
        noop_reads = max(noop_reads, reads)
        print(f"{n:>8}  {ms:>9.3f}  {reads:>9.1f}  {cms:>12.3f}  {creads:>9.1f}  {sms:>10.3f}")
    lo, hi = results[0], results[-1]
    ok = hi <= lo * args.max_ratio + 1.0 and noop_reads == 0
    verdict = "ok" if ok else "GROWS WITH HISTORY" if noop_reads == 0 else "NO-OP READS OBJECTS"
    print(f"no-op ratio {hi / lo if lo else float('inf'):.2f} ({verdict})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
