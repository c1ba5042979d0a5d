"""The hive forge against the stand-in Forgejo (tests/forge/standin.py): provisioning,
tokens, notification delivery into a real broker, skip reasons, repo watches, purge."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import tombstones
from controller.broker import Broker
from controller.forge.client import ForgeClient, ForgeDown
from controller.forge.hive import TOKEN_NAME, TOKEN_SCOPES, HiveForge
from controller.forge.notify import SENDER
from controller.forge.worker import ForgeWorker
from controller.model import AgentManifest, DesiredAgent, DesiredState, ForgeSpec
from controller.paths import Layout
from tests.forge.standin import StandinForgejo


@pytest.fixture
def standin() -> Iterator[StandinForgejo]:
    s = StandinForgejo().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker.sqlite")
    try:
        yield b
    finally:
        b.close()


def make_hive(tmp_path: Path, standin: StandinForgejo, broker: Broker) -> HiveForge:
    layout = Layout.for_state(tmp_path / "state", tmp_path / "run")

    def send(recipient: str, body: str, key: str) -> object:
        return broker.send(SENDER, recipient, body, idempotency_key=key, idempotency_owner=SENDER)

    return HiveForge(layout, ForgeClient(standin.url, standin.admin_token, timeout=5), send)


def forge_msgs(broker: Broker, agent: str) -> list[str]:
    return [m.body for m in broker.messages(0, 1000) if m.sender == SENDER and m.recipient == agent]


def test_provisioning_is_idempotent_and_the_token_is_the_agents(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    assert hive.ensure("alice") == "issued"
    path = hive.token_path("alice")
    assert path == tmp_path / "state" / "agents" / "alice" / "state" / "forge-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert hive.client.whoami(token) == "alice"
    (live,) = standin.user_tokens("alice")
    assert (live.name, live.scopes) == (TOKEN_NAME, TOKEN_SCOPES)
    assert "write:admin" not in live.scopes and "all" not in live.scopes
    url_file = path.with_name("forge-url")
    assert url_file.read_text().strip() == standin.url
    # deploy again: the working token is kept, nothing new is made
    assert hive.ensure("alice") == "kept"
    assert [t.sha1 for t in standin.user_tokens("alice")] == [token]
    # the agent lost (or broke) its file: a new token replaces the old one on the forge too
    path.write_text("garbage\n")
    assert hive.ensure("alice") == "issued"
    (again,) = standin.user_tokens("alice")
    assert again.sha1 != token and again.sha1 == path.read_text().strip()
    # the manager gets its own user the same way
    assert hive.ensure("manager") == "issued"
    assert hive.client.whoami(hive.token_path("manager").read_text().strip()) == "manager"


def test_provisioning_takes_over_an_existing_user(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    standin._add_user("bob")  # made by hand earlier; its password is unknown to us
    standin._add_token("bob", TOKEN_NAME, ["all"])  # and an old, too wide token
    hive = make_hive(tmp_path, standin, broker)
    assert hive.ensure("bob") == "issued"
    (tok,) = standin.user_tokens("bob")
    assert tok.scopes == TOKEN_SCOPES


def test_a_forge_that_is_down_is_an_error_not_a_crash(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    standin.down = True
    with pytest.raises(ForgeDown):
        hive.ensure("alice")
    assert not hive.token_path("alice").exists()


def setup_threads(standin: StandinForgejo) -> dict[str, int]:
    """One notification of each kind for alice; returns thread ids by expected reason."""
    standin._add_user("carol")
    standin.issue("carol/site", 1, "Header is broken", "carol")
    cid = standin.comment("carol/site", 1, "carol", "@alice could you look?")
    standin.issue("carol/site", 2, "Fix the header", "carol", is_pull=True,
                  requested_reviewers=["alice"])  # fmt: skip
    standin.issue("carol/site", 3, "Docs", "carol", assignees=["alice"])
    standin.issue("carol/site", 4, "Alice's idea", "alice")
    standin.issue("carol/site", 5, "Chatter", "carol")
    standin.comment("carol/site", 5, "alice", "I agree")
    standin.issue("carol/site", 6, "Release notes", "carol")
    t = "2026-12-07T12:00:0{}Z"
    return {
        "mention": standin.notify("alice", "carol/site", 1, comment_id=cid, updated_at=t.format(1)),
        "review_requested": standin.notify("alice", "carol/site", 2, updated_at=t.format(2)),
        "assigned": standin.notify("alice", "carol/site", 3, updated_at=t.format(3)),
        "author": standin.notify("alice", "carol/site", 4, updated_at=t.format(4)),
        "participating": standin.notify("alice", "carol/site", 5, updated_at=t.format(5)),
        "subscribed": standin.notify("alice", "carol/site", 6, updated_at=t.format(6)),
    }


def test_notifications_become_inbox_messages_then_are_marked_read(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    hive.ensure("alice")
    ids = setup_threads(standin)
    got = hive.pump("alice", ForgeSpec())
    assert (got.delivered, got.skipped) == (6, 0)
    assert standin.unread("alice") == []
    msgs = forge_msgs(broker, "alice")
    assert len(msgs) == 6
    reasons = [m.rsplit("(", 1)[1].split(")", 1)[0] for m in msgs]
    assert reasons == list(ids)  # oldest first, each with its reason
    cid = standin.issues[("carol/site", 1)].comments[0]["id"]
    assert msgs[0] == (
        f'[carol/site] issue #1 "Header is broken" (mention): '
        f"{standin.url}/carol/site/issues/1#issuecomment-{cid}"
    )
    assert msgs[1] == (
        f'[carol/site] PR #2 "Fix the header" (review_requested): {standin.url}/carol/site/pulls/2'
    )
    assert all("\n" not in m for m in msgs)
    # nothing new: nothing more
    assert hive.pump("alice", ForgeSpec()).delivered == 0
    assert len(forge_msgs(broker, "alice")) == 6


def test_skip_notify_reasons_drop_but_mark_read(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    hive.ensure("alice")
    setup_threads(standin)
    got = hive.pump("alice", ForgeSpec(skip_notify_reasons=("subscribed", "participating")))
    assert (got.delivered, got.skipped) == (4, 2)
    assert standin.unread("alice") == []
    text = "\n".join(forge_msgs(broker, "alice"))
    assert "(subscribed)" not in text and "(participating)" not in text
    assert "(mention)" in text and "(review_requested)" in text


def test_a_notification_is_delivered_once_even_if_marking_it_read_failed(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    hive.ensure("alice")
    standin.issue("carol/site", 1, "Hello", "carol", body="@alice hi")
    tid = standin.notify("alice", "carol/site", 1)
    # the broker took the message, then the forge went away before the mark
    real_mark = hive.client.mark_read

    def down(user: str, thread_id: int) -> None:
        raise ForgeDown("gone")

    hive.client.mark_read = down  # type: ignore[method-assign]
    with pytest.raises(ForgeDown):
        hive.pump("alice", ForgeSpec())
    assert standin.unread("alice") == [tid]
    hive.client.mark_read = real_mark  # type: ignore[method-assign]
    assert hive.pump("alice", ForgeSpec()).delivered == 1  # the same message again: a duplicate
    assert standin.unread("alice") == []
    assert len(forge_msgs(broker, "alice")) == 1
    # a later update of the same thread is a new message
    standin.threads[tid].unread = True
    standin.threads[tid].updated_at = "2026-12-07T13:00:00Z"
    hive.pump("alice", ForgeSpec())
    assert len(forge_msgs(broker, "alice")) == 2


def test_redeploy_clears_repo_watches_unless_kept(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    for agent in ("alice", "bob"):
        hive.ensure(agent)
        hive.deployed(agent, "v1", ForgeSpec(keep_subscriptions=agent == "bob"))
        standin.watch(agent, "carol/site")
        standin.watch(agent, "carol/docs")
    # a restart (same version) keeps everything
    hive.deployed("alice", "v1", ForgeSpec())
    assert standin.watches["alice"] == {"carol/site", "carol/docs"}
    # a rebuild clears alice's watches; bob keeps his (spec.forge.keepSubscriptions)
    hive.deployed("alice", "v2", ForgeSpec())
    hive.deployed("bob", "v2", ForgeSpec(keep_subscriptions=True))
    assert standin.watches["alice"] == set()
    assert standin.watches["bob"] == {"carol/site", "carol/docs"}


def desired(*names: str, commit: str = "c1") -> DesiredState:
    return DesiredState(
        commit=commit,
        agents={
            n: DesiredAgent(n, AgentManifest(name=n), commit, f"cfg-{n}", "build") for n in names
        },
        hyperhive_version="0",
    )


def test_worker_provisions_pumps_and_revokes_after_purge(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    want = {"d": desired("manager", "alice")}
    worker = ForgeWorker(hive, lambda: want["d"], poll_seconds=1)
    for agent in ("manager", "alice"):
        hive.layout.agent_dir(agent).mkdir(parents=True)
        worker.on_deploy(agent)
    assert hive.read_token("alice") and hive.read_token("manager")
    # a token file lost while the controller ran: the next tick makes a new one
    hive.token_path("manager").unlink()
    standin.issue("carol/site", 1, "Hello", "carol", body="@alice hi")
    standin.notify("alice", "carol/site", 1)
    worker.tick()
    assert hive.read_token("manager")
    assert len(forge_msgs(broker, "alice")) == 1
    # alice destroyed (a tombstone keeps her state): her token stays
    want["d"] = desired("manager")
    tombstones.bury(hive.layout, "alice", 1.0, {})
    worker.tick()
    assert len(standin.user_tokens("alice")) == 1
    # purged: the state is gone, so is her token on the forge; her user and repos stay
    for _, path, _ in tombstones.moved(hive.layout, "alice"):
        shutil.rmtree(path)
    worker.tick()
    assert standin.user_tokens("alice") == []
    assert "alice" in standin.users
    assert "alice" not in hive.known()


def test_a_deploy_while_the_forge_is_down_catches_up_on_the_next_tick(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    want = {"d": desired("alice")}
    worker = ForgeWorker(hive, lambda: want["d"], poll_seconds=1)
    hive.layout.agent_dir("alice").mkdir(parents=True)
    standin.down = True
    worker.on_deploy("alice")  # the deploy goes on without a token
    assert hive.read_token("alice") is None
    standin.down = False
    worker.tick()
    assert hive.read_token("alice") is not None
    standin.watch("alice", "carol/site")
    worker.tick()  # same version: the watch stays
    assert standin.watches["alice"] == {"carol/site"}
    # a new version deployed while the forge was down: the next tick clears the watches
    standin.down = True
    want["d"] = DesiredState("c2", {"alice": DesiredAgent(
        "alice", AgentManifest(name="alice"), "c2", "cfg-alice-2", "build")}, "0")  # fmt: skip
    worker.on_deploy("alice")
    standin.down = False
    worker.tick()
    assert standin.watches["alice"] == set()


def test_concurrent_provisioning_issues_one_token(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    """The deploy hook and the worker's tick may both find the token missing at once."""
    import threading

    hive = make_hive(tmp_path, standin, broker)
    held = standin.stall("POST", "/users/alice/tokens")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(hive.ensure("alice")))
               for _ in range(2)]  # fmt: skip
    for t in threads:
        t.start()
    assert standin.stalled.wait(10)
    held.set()
    standin.release()
    for t in threads:
        t.join(20)
    assert sorted(results) == ["issued", "kept"]
    (tok,) = standin.user_tokens("alice")
    assert hive.read_token("alice") == tok.sha1


def test_more_unread_notifications_than_a_page_are_all_delivered(
    tmp_path: Path, standin: StandinForgejo, broker: Broker
) -> None:
    hive = make_hive(tmp_path, standin, broker)
    hive.ensure("alice")
    standin.issue("carol/site", 1, "Busy", "carol", body="@alice")
    for i in range(120):
        standin.notify(
            "alice", "carol/site", 1, updated_at=f"2026-12-07T12:{i // 60:02d}:{i % 60:02d}Z"
        )
    assert hive.pump("alice", ForgeSpec()).delivered == 120
    assert standin.unread("alice") == []
    assert len(forge_msgs(broker, "alice")) == 120


def test_idempotency_keys_fit_the_broker() -> None:
    from controller.forge.notify import idempotency_key

    assert idempotency_key({"id": 7, "updated_at": "2026-12-07T12:00:00Z"}) == (
        "forge:7:2026-12-07T12:00:00Z"
    )
    assert len(idempotency_key({"id": 7, "updated_at": "x" * 500})) <= 128
