"""meta.git hooks, driven by real `git clone` / `git tag` / `git push` against the bare repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_agent import FakeOps

from controller.api import make_admin_app
from controller.auth import ensure_operator_key
from controller.broker import Broker
from controller.config import Config
from controller.hooks.script import watch_marker
from controller.metarepo import MetaRepo, tag_ref
from controller.metarepo.bootstrap import install_hooks
from controller.paths import Layout
from hivehttp import serve_unix
from tests.gitutil import git

CFG = Config(default_model="haiku")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "state", tmp_path / "run")


@pytest.fixture
def meta(layout: Layout) -> MetaRepo:
    return MetaRepo.open_or_init(layout, CFG)


@pytest.fixture
def work(meta: MetaRepo, tmp_path: Path) -> Path:
    """The operator's clone of meta.git, with every tag fetched."""
    w = tmp_path / "op"
    git("clone", "-q", str(meta.path), str(w))
    return w


def fetch(work: Path) -> None:
    git("fetch", "-q", "--tags", "--force", "origin", cwd=work)


def push(work: Path, *refspecs: str) -> subprocess.CompletedProcess[str]:
    return git("push", "origin", *refspecs, cwd=work, check=False)


def refused(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0, res.stderr
    assert "pre-receive hook declined" in res.stderr
    for w in words:
        assert w in res.stderr, res.stderr


def tags(meta: MetaRepo) -> set[str]:
    return {r.name for r in meta.repo.references.iterator() if r.name.startswith("refs/tags/")}


def test_approve_with_a_pushed_tag(meta: MetaRepo, work: Path) -> None:
    p = meta.propose_spawn("alice")
    fetch(work)
    git("tag", "approved/1", "proposal/1", cwd=work)
    res = push(work, "approved/1")
    assert res.returncode == 0, res.stderr
    assert "controller is not running" in res.stderr  # post-receive says so and exits 0
    assert meta.approved_unapplied() == [p.id]


def test_annotated_approval_and_denial(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.propose_spawn("bob")
    fetch(work)
    git("tag", "-a", "approved/1", "-m", "looks good", "proposal/1", cwd=work)
    git("tag", "-a", "denied/2", "-m", "no more bobs", "proposal/2", cwd=work)
    res = push(work, "approved/1", "denied/2")
    assert res.returncode == 0, res.stderr
    assert meta.proposal(1).note == "looks good"
    assert meta.proposal(2).note == "no more bobs"


@pytest.mark.parametrize("prefix", ["proposal", "building", "deployed", "failed"])
def test_forged_controller_tags_refused(meta: MetaRepo, work: Path, prefix: str) -> None:
    before = tags(meta)
    git("tag", f"{prefix}/5", "HEAD", cwd=work)
    refused(push(work, f"{prefix}/5"), f"{prefix}/5", "controller only")
    assert tags(meta) == before


def test_controller_bookkeeping_refs_refused(meta: MetaRepo, work: Path) -> None:
    # last-deploy already points at the genesis commit: moving it elsewhere is refused
    git("commit", "-q", "--allow-empty", "-m", "scratch", cwd=work)
    refused(push(work, "HEAD:refs/hyperhive/last-deploy"), "controller-owned")
    refused(push(work, "HEAD:refs/hyperhive/other"), "controller-owned")
    refused(push(work, "HEAD:refs/notes/hyperhive"), "controller-owned")


def test_decisions_are_final(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.propose_spawn("bob")
    meta.approve(1)
    fetch(work)
    # move approved/1 elsewhere
    git("tag", "-f", "approved/1", "proposal/2", cwd=work)
    refused(push(work, "--force", "approved/1"), "decisions are final", "move")
    # delete it
    refused(push(work, ":refs/tags/approved/1"), "decisions are final", "delete")
    # deny what is approved
    git("tag", "-a", "denied/1", "-m", "changed my mind", "proposal/1", cwd=work)
    refused(push(work, "denied/1"), "already approved")
    assert meta.proposal(1).state.value == "approved"


def test_decision_checks(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.propose_spawn("bob")
    fetch(work)
    git("tag", "approved/7", "HEAD", cwd=work)
    refused(push(work, "approved/7"), "there is no proposal/7")
    git("tag", "approved/01", "proposal/1", cwd=work)
    refused(push(work, "approved/01"), "positive integer")
    git("tag", "approved/1", "proposal/2", cwd=work)
    refused(push(work, "approved/1"), "must point at proposal/1's commit")
    git("tag", "-f", "approved/2", "proposal/2", cwd=work)
    git("tag", "-a", "denied/2", "-m", "no", "proposal/2", cwd=work)
    refused(push(work, "approved/2", "denied/2"), "already")
    assert meta.approved_unapplied() == []
    assert tags(meta) == {"refs/tags/proposal/1", "refs/tags/proposal/2"}


def test_approving_a_deployed_id_is_refused(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.approve(1)
    meta.apply_approved(1)
    fetch(work)
    git("tag", "-a", "denied/1", "-m", "late", "proposal/1", cwd=work)
    refused(push(work, "denied/1"), "already approved")


def test_main_push_validates_manifests(meta: MetaRepo, work: Path) -> None:
    main = meta.main_commit()
    (work / "agents/alice").mkdir()
    (work / "agents/alice/agent.yaml").write_text(
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: alice}\n"
        "spec: {model: 'no spaces'}\n"
    )
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "alice", cwd=work)
    refused(push(work, "main"), "agents/alice/agent.yaml", "spec.model")
    assert meta.main_commit() == main

    (work / "agents/alice/agent.yaml").write_text(
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: bob}\n"
    )
    git("commit", "-q", "-am", "alice named bob", cwd=work)
    refused(push(work, "main"), "agents/alice/agent.yaml", "metadata.name")

    (work / "agents/alice/agent.yaml").write_text(
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: alice}\nspec: {model: sonnet}\n"
    )
    git("commit", "-q", "-am", "alice ok", cwd=work)
    res = push(work, "main")
    assert res.returncode == 0, res.stderr
    assert meta.desired().agents["alice"].manifest.model == "sonnet"


def test_main_push_keeps_manager_and_flake(meta: MetaRepo, work: Path) -> None:
    git("rm", "-q", "-r", "agents/manager", cwd=work)
    git("commit", "-q", "-m", "bye", cwd=work)
    refused(push(work, "main"), "agents/manager/agent.yaml", "must stay")
    git("reset", "-q", "--hard", "origin/main", cwd=work)
    git("rm", "-q", "flake.nix", cwd=work)
    git("commit", "-q", "-m", "no flake", cwd=work)
    refused(push(work, "main"), "flake.nix")


def test_main_is_fast_forward_only_and_undeletable(meta: MetaRepo, work: Path) -> None:
    git("commit", "-q", "--allow-empty", "-m", "one", cwd=work)
    assert push(work, "main").returncode == 0
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "other", cwd=work)
    res = push(work, "--force", "main")
    assert res.returncode != 0
    res = push(work, ":main")
    assert res.returncode != 0


def test_operator_branches_are_free(meta: MetaRepo, work: Path) -> None:
    git("commit", "-q", "--allow-empty", "-m", "wip", cwd=work)
    assert push(work, "HEAD:refs/heads/wip").returncode == 0
    assert push(work, ":refs/heads/wip").returncode == 0


@pytest.fixture
def poke_server(layout: Layout) -> Iterator[FakeOps]:
    """The real host.sock app (fake swarm ops) with the install's operator key."""
    broker = Broker(layout.state / "broker.sqlite")
    ops = FakeOps()
    listener = serve_unix(
        make_admin_app(broker, ops, ensure_operator_key(layout)), layout.host_sock
    )
    try:
        yield ops
    finally:
        listener.stop(timeout=3.0)
        broker.close()


def _approve_by_push(meta: MetaRepo, work: Path) -> subprocess.CompletedProcess[str]:
    meta.propose_spawn("alice")
    fetch(work)
    git("tag", "approved/1", "proposal/1", cwd=work)
    res = push(work, "approved/1")
    assert res.returncode == 0, res.stderr
    return res


def test_post_receive_pokes_the_controller(
    meta: MetaRepo, work: Path, poke_server: FakeOps
) -> None:
    res = _approve_by_push(meta, work)
    assert poke_server.passes == ["hook"]
    assert "the controller is reconciling" in res.stderr


def test_post_receive_without_the_operator_key_still_accepts_the_push(
    meta: MetaRepo, work: Path, layout: Layout, poke_server: FakeOps
) -> None:
    """A pusher who cannot read operator.key: the push stands, the poke is skipped."""
    layout.operator_key.write_text("x" * 43 + "\n")  # not the server's key
    res = _approve_by_push(meta, work)
    assert poke_server.passes == []
    assert "could not poke the controller" in res.stderr
    assert "operator key" in res.stderr
    layout.operator_key.unlink()
    git("tag", "denied/2", "proposal/1", cwd=work)  # any push runs the hook again
    res = push(work, "HEAD:refs/heads/wip")
    assert res.returncode == 0, res.stderr
    assert poke_server.passes == []
    assert str(layout.operator_key) in res.stderr and "hyperhive serve" in res.stderr


def test_post_receive_skips_the_poke_while_the_ref_watch_is_on(
    meta: MetaRepo, work: Path, layout: Layout, poke_server: FakeOps
) -> None:
    """The ref watch started the pass already: a push of decision tags only starts no
    Python (no poke) and says so; anything else, or a marker whose pid is gone, pokes."""
    marker = watch_marker(layout)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{os.getpid()}\n")
    res = _approve_by_push(meta, work)
    assert poke_server.passes == []
    assert "hyperhive: received approved/1; the controller is reconciling" in res.stderr
    assert push(work, "HEAD:refs/heads/wip").returncode == 0  # not a decision
    assert poke_server.passes == ["hook"]
    meta.propose_spawn("bob")
    fetch(work)
    git("tag", "approved/2", "proposal/2", cwd=work)
    res = push(work, "approved/2", "HEAD:refs/heads/wip2")  # a mixed push
    assert res.returncode == 0, res.stderr
    assert poke_server.passes == ["hook"] * 2
    gone = subprocess.Popen(["true"])
    gone.wait()
    for text in (f"{gone.pid}\n", "-1\n", ""):
        marker.write_text(text)
        n = len(poke_server.passes)
        id = meta.propose_spawn(f"c{n}").id
        fetch(work)
        git("tag", "-a", "-m", "no", f"denied/{id}", f"proposal/{id}", cwd=work)
        res = push(work, f"denied/{id}")
        assert res.returncode == 0, res.stderr
        assert len(poke_server.passes) == n + 1, text
        assert "the controller is reconciling" in res.stderr


def test_pre_receive_judges_the_plainest_decision_without_python(
    meta: MetaRepo, work: Path, layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script accepts one decision on (or peeling to) its proposal's commit by itself;
    everything else needs the Python check — here a python that cannot run, so each such
    push is refused (never waved through), and git applies none of it."""
    install_hooks(layout, python="/nonexistent/python")
    for name in ("alice", "bob", "carol", "dave"):
        meta.propose_spawn(name)
    fetch(work)
    git("tag", "approved/1", "proposal/1", cwd=work)
    assert push(work, "approved/1").returncode == 0  # no python needed
    git("tag", "denied/2", "proposal/2", cwd=work)
    assert push(work, "denied/2").returncode == 0
    head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    proposal3 = git("rev-parse", "proposal/3", cwd=work).stdout.strip()
    for refspec, why in (
        ("refs/tags/approved/1:refs/tags/denied/1", "the other decision exists"),
        (f"{head}:refs/tags/approved/3", "not the proposal's commit"),
        (f"{proposal3}:refs/tags/approved/03", "a leading zero"),
        (f"{proposal3}:refs/tags/approved/9", "no proposal/9"),
        (f"{proposal3}:refs/tags/deployed/3", "a controller-owned tag"),
    ):
        res = push(work, refspec)
        assert res.returncode != 0, why
        assert "pre-receive hook declined" in res.stderr, why
    git("tag", "-a", "-m", "ok", "approved/3", "proposal/3", cwd=work)
    assert push(work, "approved/3").returncode == 0  # annotated: peels to the proposal's
    git("tag", "-a", "-m", "no", "denied/4", head, cwd=work)
    assert push(work, "denied/4").returncode != 0  # annotated, elsewhere: Python's
    git("tag", "approved/4", "proposal/4", cwd=work)
    git("tag", "approved/5x", "proposal/4", cwd=work)
    assert push(work, "approved/4", "approved/5x").returncode != 0  # two lines
    with monkeypatch.context() as m:
        m.setenv("HYPERHIVE_PUSHER", "manager")  # git passes it on to the hook
        assert push(work, "approved/4").returncode != 0  # not the operator's: Python's
    assert {"refs/tags/approved/1", "refs/tags/denied/2", "refs/tags/approved/3"} <= tags(meta)
    assert not {"refs/tags/approved/4", "refs/tags/denied/4", "refs/tags/denied/1"} & tags(meta)
    install_hooks(layout)  # the real python: the same pushes get the Python check's reasons
    refused(push(work, "denied/4"), "must point at proposal/4's commit")
    assert push(work, "approved/4").returncode == 0


# ---------------------------------------------------------------- fast start


def test_metarepo_takes_its_ref_names_from_the_hooks() -> None:
    """One definition: metarepo imports the names the light hook modules define."""
    from controller import metarepo
    from controller.hooks import updates

    for name in ("MAIN_REF", "NOTES_REF", "LAST_DEPLOY_REF", "TAG_PREFIXES"):
        assert getattr(updates, name) is getattr(metarepo, name), name
    assert metarepo.parse_id is updates.parse_id and metarepo.tag_ref is updates.tag_ref
    for text, want in (("1", 1), ("12", 12), ("01", None), ("0", None), ("", None), ("x", None)):
        assert updates.parse_id(text) == want, text


HEAVY = ("pygit2", "jsonschema", "yaml", "http.client", "argparse", "falcon", "uvicorn")

_RUN_AND_LIST = """
import json, sys
from {module} import main
code = main({argv!r})
heavy = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.__stdout__)
"""


def run_listing_imports(
    module: str, argv: list[str], stdin: str = "", cwd: Path | None = None
) -> dict[str, Any]:
    """Run ``module.main(argv)`` in a fresh Python: its exit code, the heavy modules it loaded."""
    code = _RUN_AND_LIST.format(module=module, argv=argv, heavy=HEAVY)
    res = subprocess.run(
        [sys.executable, "-c", code], input=stdin, capture_output=True, text=True, cwd=cwd
    )
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    out["stderr"] = res.stderr
    return out


def _hook_argv(kind: str, layout: Layout) -> list[str]:
    return [kind, "--state-dir", str(layout.state), "--run-dir", str(layout.run)]


def test_approval_check_and_poke_load_no_heavy_module(
    meta: MetaRepo, layout: Layout, work: Path, poke_server: FakeOps
) -> None:
    """An approval's pre-receive check and the poke run without pygit2, jsonschema, http.client."""
    meta.propose_spawn("alice")
    commit = str(meta.repo.references[tag_ref("proposal", 1)].target)
    line = f"{'0' * 40} {commit} refs/tags/approved/1\n"
    pre = run_listing_imports("controller.hook", _hook_argv("pre-receive", layout), line)
    assert (pre["code"], pre["heavy"]) == (0, []), pre
    post = run_listing_imports("controller.hook", _hook_argv("post-receive", layout), line)
    assert (post["code"], post["heavy"]) == (0, []), post
    assert poke_server.passes == ["hook"]
    assert "the controller is reconciling" in post["stderr"]
    # a forged tag is refused the same way, still without pygit2
    forged = f"{'0' * 40} {commit} refs/tags/deployed/1\n"
    pre = run_listing_imports("controller.hook", _hook_argv("pre-receive", layout), forged)
    assert (pre["code"], pre["heavy"]) == (1, []), pre
    assert "controller only" in pre["stderr"]


def test_a_main_push_still_loads_the_manifest_check(meta: MetaRepo, layout: Layout) -> None:
    main = meta.main_commit()
    line = f"{main} {main} refs/heads/main\n"
    pre = run_listing_imports("controller.hook", _hook_argv("pre-receive", layout), line)
    assert pre["code"] == 0 and "pygit2" in pre["heavy"] and "jsonschema" in pre["heavy"], pre


@pytest.mark.parametrize(
    "argv",
    [[], ["pre-receive"], ["pre-receive", "--state-dir", "/s"], ["push", "--state-dir", "/s"]],
)
def test_hook_with_bad_arguments_refuses(argv: list[str]) -> None:
    """A hook script that lost its arguments refuses (exit 2) rather than accepting blind."""
    res = subprocess.run(
        [sys.executable, "-m", "controller.hook", *argv], capture_output=True, text=True
    )
    assert res.returncode == 2 and "usage:" in res.stderr


def test_git_guessing_rules_cannot_stand_in_for_a_proposal(meta: MetaRepo, work: Path) -> None:
    """``refs/refs/tags/proposal/9`` is an operator's own ref, never proposal/9."""
    git("commit", "-q", "--allow-empty", "-m", "decoy", cwd=work)
    assert push(work, "HEAD:refs/refs/tags/proposal/9").returncode == 0
    assert push(work, "HEAD:refs/tags/refs/tags/proposal/9").returncode == 0
    git("tag", "approved/9", "HEAD", cwd=work)
    refused(push(work, "approved/9"), "there is no proposal/9")


def test_a_decision_on_the_proposals_tree_is_refused(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    fetch(work)
    git("tag", "approved/1", "proposal/1^{tree}", cwd=work)
    refused(push(work, "approved/1"), "must point at proposal/1's commit")
    assert meta.approved_unapplied() == []


def test_cli_status_and_version_load_no_heavy_module(
    layout: Layout, poke_server: FakeOps, tmp_path: Path
) -> None:
    args = ["--state-dir", str(layout.state), "--run-dir", str(layout.run)]
    status = run_listing_imports("controller.cli", [*args, "status"])
    assert status["code"] == 0, status
    assert [m for m in status["heavy"] if m != "argparse"] == [], status
    res = subprocess.run(
        [sys.executable, "-c", "from controller.cli import main; main(['--version'])"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stdout.startswith("hyperhive ")
