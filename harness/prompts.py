"""Wake prompts: what claude reads on stdin for one inbox message.

Templates live in ``harness/prompts/`` (``string.Template`` syntax, ``$name``):
``agent.md`` / ``manager.md`` introduce the role and the tools (plus the hive forge,
``harness.forge.prompt_section``, when the controller provisioned one) and are
prepended when a session starts fresh (first turn, after ``/new``, after a
compaction); ``wake.md`` is the per-message part. Message bodies are
substituted verbatim (a ``$`` in a body is safe: substitution is one pass).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template

from harness.forge import forge_access, prompt_section
from schemas.names import DEFAULT_OPERATOR_PRONOUNS, OPERATOR
from schemas.wire import Message, MessageKind, rfc3339

FORGE = "forge"
"""Sender of the hive forge's notifications (controller.forge.notify.SENDER)."""

_KIND_LABEL = {
    MessageKind.MESSAGE: "message",
    MessageKind.EVENT: "controller event",
    MessageKind.QUESTION: "question",
    MessageKind.ANSWER: "answer",
    MessageKind.REMINDER: "reminder",
    MessageKind.WAKE: "wake-up",
}

_MANAGER_HINT = (
    "\nAs the manager you can also propose swarm changes (`mcp__hyperhive__request_spawn`, "
    "`request_apply_commit`), run lifecycle verbs (`start` / `kill` / `restart` / `update`), "
    "`list` the agents and `ask_operator` for a decision."
)


@cache
def template(name: str) -> Template:
    """Load ``harness/prompts/<name>.md`` as a ``string.Template``."""
    text = resources.files("harness").joinpath(f"prompts/{name}.md").read_text(encoding="utf-8")
    return Template(text)


def kind_hint(msg: Message) -> str:
    """One or two sentences on what this kind of message asks of the agent."""
    if msg.kind == MessageKind.QUESTION:
        return (
            f"This is a threaded question (thread {msg.thread}). Answer it with "
            f"`mcp__hyperhive__answer(thread={msg.thread}, body=...)`."
        )
    if msg.kind == MessageKind.ANSWER:
        return f"This answers the question you asked in thread {msg.thread}."
    if msg.kind == MessageKind.REMINDER:
        return "This is a reminder you scheduled yourself with `mcp__hyperhive__remind`."
    if msg.kind == MessageKind.EVENT:
        payload = json.dumps(msg.event, sort_keys=True) if msg.event else "{}"
        return f"This is a typed event from the hyperhive controller: `{payload}`."
    if msg.kind == MessageKind.WAKE:
        if msg.sender == OPERATOR:
            return "The operator wrote this in your web UI."
        return (
            f"This wake-up was dropped into your inbox by a local tool labelled {msg.sender!r} "
            "(not a peer agent)."
        )
    if msg.sender == OPERATOR:
        return "The operator (a human) sent this."
    if msg.sender == FORGE:
        return (
            "This is a notification from the hive forge (Forgejo): open the link and act "
            "there with `tea` or the REST API; `forge` takes no replies."
        )
    return ""


def reply_to(msg: Message) -> str:
    """Who a reply goes to: the sender, or the operator for wake-ups from local tools."""
    if (msg.kind == MessageKind.WAKE and msg.sender != OPERATOR) or msg.sender == FORGE:
        return OPERATOR
    return msg.sender


def intro(
    agent: str,
    flavor: str,
    state_dir: Path | str,
    operator_pronouns: str = DEFAULT_OPERATOR_PRONOUNS,
) -> str:
    """The role introduction for a fresh session (``agent.md`` or ``manager.md``).

    ``operator_pronouns`` (e.g. ``"they/them"``, settings ``operator_pronouns``) is how
    the prompt refers to the operator and asks the agent to."""
    name = "manager" if flavor == "manager" else "agent"
    text = (
        template(name)
        .substitute(agent=agent, state_dir=str(state_dir), operator_pronouns=operator_pronouns)
        .strip()
    )
    return text + prompt_section(forge_access(Path(state_dir), agent))


def wake_prompt(
    msg: Message,
    *,
    agent: str,
    flavor: str,
    state_dir: Path | str,
    fresh_session: bool,
    operator_pronouns: str = DEFAULT_OPERATOR_PRONOUNS,
) -> str:
    """The stdin prompt for one wake: [intro +] the message, its kind, how to reply."""
    body = (
        template("wake")
        .substitute(
            agent=agent,
            kind=_KIND_LABEL.get(msg.kind, str(msg.kind)),
            sender=msg.sender,
            id=msg.id,
            sent_at=rfc3339(msg.sent_at) if msg.sent_at else "unknown time",
            thread_attr=f' thread="{msg.thread}"' if msg.thread is not None else "",
            body=msg.body,
            kind_hint=kind_hint(msg),
            reply_to=reply_to(msg),
            flavor_hint=_MANAGER_HINT if flavor == "manager" else "",
        )
        .strip()
    )
    if fresh_session:
        return intro(agent, flavor, state_dir, operator_pronouns) + "\n\n---\n\n" + body + "\n"
    return body + "\n"
