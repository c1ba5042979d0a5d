"""Wake prompts: who, from whom, what kind, how to reply."""

from __future__ import annotations

from harness.prompts import wake_prompt
from schemas.wire import Message, MessageKind


def msg(**kw: object) -> Message:
    args: dict[str, object] = {
        "id": 12,
        "sender": "bob",
        "recipient": "alice",
        "body": "hi alice",
        "sent_at": 1.0,
    }
    args.update(kw)
    return Message(**args)  # type: ignore[arg-type]


def test_message_prompt_names_agent_sender_body_kind_and_tools() -> None:
    p = wake_prompt(msg(), agent="alice", flavor="agent", state_dir="/state", fresh_session=False)
    assert "alice" in p and "**bob**" in p and "message #12" in p
    assert '<message from="bob" kind="message">\nhi alice\n</message>' in p
    assert 'mcp__hyperhive__send(to="bob"' in p and "mcp__hyperhive__recv" in p
    assert "request_spawn" not in p
    assert "You are **alice**" not in p  # no intro on a continued session


def test_fresh_session_gets_the_intro() -> None:
    p = wake_prompt(msg(), agent="alice", flavor="agent", state_dir="/state", fresh_session=True)
    assert p.startswith("You are **alice**")
    assert "`/state`" in p and "mcp__hyperhive__remind" in p


def test_manager_prompt_mentions_manager_tools() -> None:
    p = wake_prompt(
        msg(recipient="manager"),
        agent="manager",
        flavor="manager",
        state_dir="/s",
        fresh_session=False,
    )
    assert "request_spawn" in p and "ask_operator" in p
    intro = wake_prompt(
        msg(), agent="manager", flavor="manager", state_dir="/s", fresh_session=True
    )
    assert "the manager of a hyperhive swarm" in intro and "request_apply_commit" in intro


def test_question_prompt_says_how_to_answer() -> None:
    p = wake_prompt(
        msg(kind=MessageKind.QUESTION, thread=7),
        agent="alice",
        flavor="agent",
        state_dir="/s",
        fresh_session=False,
    )
    assert 'thread="7"' in p and "mcp__hyperhive__answer(thread=7" in p


def test_event_prompt_carries_the_payload() -> None:
    ev = {"type": "ContainerCrash", "agent": "bob"}
    p = wake_prompt(
        msg(kind=MessageKind.EVENT, sender="hyperhive", event=ev, body="bob crashed"),
        agent="manager",
        flavor="manager",
        state_dir="/s",
        fresh_session=False,
    )
    assert "controller event" in p and '"type": "ContainerCrash"' in p


def test_wake_from_a_tool_replies_to_the_operator() -> None:
    p = wake_prompt(
        msg(kind=MessageKind.WAKE, sender="matrix: new dm"),
        agent="alice",
        flavor="agent",
        state_dir="/s",
        fresh_session=False,
    )
    assert "local tool labelled 'matrix: new dm'" in p
    assert 'send(to="operator"' in p


def test_operator_wake() -> None:
    p = wake_prompt(
        msg(kind=MessageKind.WAKE, sender="operator"),
        agent="alice",
        flavor="agent",
        state_dir="/s",
        fresh_session=False,
    )
    assert "The operator wrote this" in p and 'send(to="operator"' in p


def test_dollar_and_braces_in_body_are_verbatim() -> None:
    body = "cost is $5 and ${HOME} {x} $$"
    p = wake_prompt(
        msg(body=body), agent="alice", flavor="agent", state_dir="/s", fresh_session=True
    )
    assert body in p
