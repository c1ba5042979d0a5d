"""The whole first story, end to end, with every real component.

A real ``hyperhive serve`` (local runtime) runs real ``hyperhive-agent serve``
harnesses (under bubblewrap when it is installed, as users run them), which run
the real ``claude`` CLI against a fake Messages API served here on loopback. The
"model" is the script below: it reads what each request contains and answers
with text or MCP tool calls, so the whole loop — wake, turn, MCP tool, broker,
proposal, git approval, deploy — runs for real.

The operator is driven on the new trust model: the CLI and the push hook read the
operator key from the state dir (host.sock answers nothing without it), the test's
own calls send the operator key or the agent's credential
(``tests/e2e/credentials.py``), and the browser logs in to the dashboard with the
URL ``hyperhive dashboard`` prints and reaches alice's UI through the dashboard's
``/agents/alice/`` (``tests/e2e/browser.py``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from schemas.client import ApiError, UnixClient
from tests.e2e.browser import Browser
from tests.e2e.credentials import agent_client
from tests.e2e.swarm import Swarm
from tests.fakeapi import Reply, Request, reply_text, reply_tool_use
from tests.realserve import wait_for
from tests.storyswarm import is_manager, require_claude, scripted_swarm

pytestmark = pytest.mark.e2e

require_claude()  # skips this module without the claude CLI


# --- the scripted model ------------------------------------------------------


def model_script(req: Request) -> Reply:
    """What the fake model answers, by what the request contains."""
    text = req.last_user_text
    if req.tool_results:
        last = req.tool_results[-1]
        if is_manager(req) and last.is_error and "invalid agent name" in last.text:
            return reply_tool_use("mcp__hyperhive__request_spawn", {"name": "alice"})
        return reply_text("done.")
    if is_manager(req):
        if "please spawn alice" in text:
            # a name the controller must refuse; the model sees why and retries
            return reply_tool_use("mcp__hyperhive__request_spawn", {"name": "Alice!"})
        if "please spawn bob" in text:
            return reply_tool_use("mcp__hyperhive__request_spawn", {"name": "bob"})
        if "ApprovalResolved" in text and "deployed" in text and "alice" in text:
            return reply_tool_use(
                "mcp__hyperhive__send", {"to": "alice", "body": "hello alice, please reply"}
            )
        if "alice here" in text:
            # a threaded question to a peer: alice must answer on the thread
            return reply_tool_use(
                "mcp__hyperhive__ask", {"to": "alice", "question": "which colour do you like?"}
            )
        return reply_text("noted.")
    if "which colour do you like?" in text:
        thread = re.search(r'thread="(\d+)"', text)
        assert thread is not None, text
        return reply_tool_use(
            "mcp__hyperhive__answer", {"thread": int(thread.group(1)), "body": "violet, thanks"}
        )
    if "hello alice" in text:
        return reply_tool_use(
            "mcp__hyperhive__send", {"to": "manager", "body": "hi manager, alice here"}
        )
    return reply_text("ok.")


# --- the swarm under test ----------------------------------------------------


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    with scripted_swarm(tmp_path, model_script, agent_ports=59) as s:
        yield s


def test_the_whole_story(swarm: Swarm) -> None:
    s = swarm

    # 1. first start creates meta.git with the manager and starts the manager's harness
    s.start()
    wait_for("the manager running", lambda: s.phase("manager") == "running")
    assert (s.state / "meta.git").is_dir()
    ls = s.git(
        "--git-dir", str(s.state / "meta.git"), "ls-tree", "-r", "--name-only", "main", cwd=s.tmp
    )
    assert "agents/manager/agent.yaml" in ls.split()
    assert "flake.nix" in ls.split()
    # a second controller on the same state dir refuses to start
    second = s.cli("serve", "--config", str(s.tmp / "config.json"), check=False)
    assert second.returncode != 0
    assert "another controller" in (second.stdout + second.stderr)

    # 2-4. the operator writes to the manager; its turn proposes a spawn, first with a bad name
    t0 = time.monotonic()
    s.cli("send", "manager", "please spawn alice")
    wait_for(
        "the manager's turn",
        lambda: s.requests_where(
            lambda r: is_manager(r) and "please spawn alice" in r.last_user_text
        ),
    )
    s.timings["send → manager's claude request"] = time.monotonic() - t0
    refused = wait_for(
        "the refusal of 'Alice!' reaching the model",
        lambda: s.requests_where(
            lambda r: any(tr.is_error and "invalid agent name" in tr.text for tr in r.tool_results)
        ),
    )
    assert refused
    pending = wait_for("proposal/1", lambda: json.loads(s.cli("pending", "-o", "json").stdout))
    assert [p["id"] for p in pending] == [1], pending
    assert pending[0]["agents"] == ["alice"]
    assert "agents/alice/agent.yaml" in pending[0]["diff"]
    assert s.tags("proposal") == ["proposal/1"]  # the refused name left no ref behind
    text = s.cli("pending").stdout
    assert "proposal/1" in text and "+apiVersion: hyperhive/v1" in text

    # 5. the operator approves with plain git: clone, tag, push
    s.git("clone", "-q", str(s.state / "meta.git"), str(s.tmp / "m"), cwd=s.tmp)
    s.git("tag", "approved/1", "proposal/1")
    t_push = time.monotonic()
    said = s.push("approved/1")
    # the post-receive hook read the operator key and poked the controller over host.sock
    assert "received approved/1; the controller is reconciling" in said, said
    wait_for("alice running", lambda: s.phase("alice") == "running", timeout=60, interval=0.05)
    s.timings["git push approved/1 → alice running"] = time.monotonic() - t_push
    wait_for("deployed/1", lambda: "deployed/1" in s.tags("deployed"))
    if shutil.which("bwrap"):  # sandboxed, as users run it: the outer process is bwrap
        for name, pids in s.harness_procs().items():
            assert [psutil.Process(p).name() for p in pids] == ["bwrap"], (name, pids)
            conditions = s.admin.get(f"/agents/{name}")["conditions"]
            isolated = next(c for c in conditions if c["type"] == "Isolated")
            assert (isolated["status"], isolated["reason"]) == ("True", "Bubblewrap"), isolated
    assert "building/1" in s.tags("building")
    main = s.git("--git-dir", str(s.state / "meta.git"), "rev-parse", "main", cwd=s.tmp).strip()
    assert "agents/alice/agent.yaml" in s.git(
        "--git-dir", str(s.state / "meta.git"), "ls-tree", "-r", "--name-only", main, cwd=s.tmp
    )
    # forged controller refs are refused by the hook
    s.git("tag", "deployed/77", "proposal/1")
    forged = subprocess.run(
        ["git", "push", "origin", "deployed/77"],
        cwd=s.tmp / "m",
        env=s.env,
        capture_output=True,
        text=True,
    )
    assert forged.returncode != 0
    assert "deployed/77" not in s.tags("deployed")

    # 5-6. the manager hears ApprovalResolved, writes alice; alice answers the manager
    wait_for(
        "alice's answer to reach the manager's turn",
        lambda: s.requests_where(lambda r: is_manager(r) and "alice here" in r.last_user_text),
        timeout=90,
    )
    msgs = s.messages()
    flow = {(m["from"], m["to"], m["kind"]) for m in msgs}
    assert ("operator", "manager", "message") in flow
    assert ("manager", "alice", "message") in flow
    assert ("alice", "manager", "message") in flow
    events = [m for m in msgs if m["kind"] == "event"]
    assert any(e["event"]["type"] == "ApprovalResolved" and e["event"]["id"] == 1 for e in events)
    # a threaded ask/answer between two agents, both on the real CLI
    wait_for(
        "alice's answer on the thread to reach the manager",
        lambda: s.requests_where(lambda r: is_manager(r) and "violet, thanks" in r.last_user_text),
        timeout=90,
    )
    msgs = s.messages()
    [question] = [m for m in msgs if m["kind"] == "question"]
    [answer] = [m for m in msgs if m["kind"] == "answer"]
    assert (question["from"], question["to"]) == ("manager", "alice")
    assert (answer["from"], answer["to"], answer["thread"]) == (
        "alice",
        "manager",
        question["thread"],
    )
    manager_status = agent_client(s.state, "manager").get("/status")
    assert manager_status["open_threads"] == 0
    with pytest.raises(ApiError) as no_key:  # a socket without its credential answers nothing
        UnixClient(str(s.state / "run" / "manager" / "mcp.sock"), timeout=10).get("/status")
    assert no_key.value.status == 401
    human = s.cli("messages").stdout
    assert "alice → manager" in human and "hi manager, alice here" in human

    # 6b. the dashboard: nothing before the login; the URL `hyperhive dashboard` prints logs in
    web = Browser(s.dashboard_port)
    refused = web.get("/api/state")
    assert refused.status == 401 and refused.json()["error"]["code"] == "unauthorized"
    page = web.get("/")
    assert page.status == 401 and "hyperhive dashboard" in page.text
    assert web.get("/agents/alice/api/state").status == 401
    assert web.get("/agents/alice/").status == 401
    url = s.cli("dashboard").stdout.strip().splitlines()[-1]
    login, landed = web.open_login(url)
    assert login.status == 303 and login.header("Location") == "/", login
    cookie = login.header("Set-Cookie")
    assert "hyperhive_session=" in cookie, cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    assert landed.status == 200 and "text/html" in landed.header("Content-Type")
    assert Browser(s.dashboard_port).open_login(url)[0].status == 401  # the URL works once
    dash = web.get("/api/state")
    assert dash.status == 200 and "alice" in json.dumps(dash.json())
    # alice's UI through the dashboard: the page is the controller's, the API alice's
    ui = web.get("/agents/alice/")
    assert ui.status == 200 and "text/html" in ui.header("Content-Type")
    alice_ui = web.get("/agents/alice/api/state")
    assert alice_ui.status == 200, alice_ui
    assert alice_ui.json()["agent"] == "alice" and alice_ui.json()["model"] == "claude-test"
    assert alice_ui.header("X-Content-Type-Options") == "nosniff"
    assert "sandbox" in alice_ui.header("Content-Security-Policy")
    status, ctype, head = web.stream_head("/agents/alice/events/stream", want_lines=1)
    assert status == 200 and ctype.startswith("text/event-stream"), (status, ctype, head)
    assert any(line.startswith("data:") for line in head), head
    sent = web.post("/agents/alice/api/send", {"body": "a word from the dashboard"})
    assert sent.status == 200, sent
    wait_for(
        "alice's turn on what the operator sent through the dashboard",
        lambda: s.requests_where(
            lambda r: not is_manager(r) and "a word from the dashboard" in r.last_user_text
        ),
    )
    assert any(
        (m["from"], m["to"], m["body"]) == ("operator", "alice", "a word from the dashboard")
        for m in s.messages()
    )

    # 8. a second proposal, denied with a reason the manager gets
    s.cli("send", "manager", "please spawn bob")
    wait_for("proposal/2", lambda: "proposal/2" in s.tags("proposal"))
    s.cli("deny", "2", "--note", "not now")
    assert "denied/2" in s.tags("denied")
    wait_for(
        "the denial reaching the manager",
        lambda: s.requests_where(lambda r: is_manager(r) and "not now" in r.last_user_text),
    )
    again = s.cli("approve", "2", check=False)
    assert again.returncode != 0 and "denied" in (again.stdout + again.stderr)
    missing = s.cli("approve", "99", check=False)
    assert missing.returncode != 0 and "99" in (missing.stdout + missing.stderr)
    assert s.cli("reconcile", "--dry-run", check=False).returncode == 0

    # 9 + 7. stop the controller; agents keep running; the operator pushes a model change to main
    before = s.harness_procs()
    assert set(before) == {"manager", "alice"} and all(len(v) == 1 for v in before.values()), before
    n_msgs = len(s.messages())
    s.stop()
    assert s.harness_procs() == before
    s.git("pull", "-q", "origin", "main")
    manifest = s.tmp / "m" / "agents" / "alice" / "agent.yaml"
    manifest.write_text(manifest.read_text().replace("claude-test", "claude-alt"))
    assert "claude-alt" in manifest.read_text()
    s.git("commit", "-qam", "alice: switch model")
    said = s.push("main")  # the hook cannot poke a stopped controller; that is fine
    assert "the controller is not running" in said, said
    dry = s.cli("reconcile", "--dry-run", check=False)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "alice" in dry.stdout and "apply-manifest" in dry.stdout
    applied = s.cli("reconcile", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    settings = json.loads((s.state / "agents" / "alice" / "settings.json").read_text())
    assert settings["model"] == "claude-alt"
    after_apply = s.harness_procs()
    assert after_apply["alice"] != before["alice"], "alice's harness was not restarted"
    assert after_apply["manager"] == before["manager"], "the manager was restarted for nothing"
    assert s.cli("reconcile", "--dry-run", check=False).returncode == 0
    deployed = s.tags("deployed")

    # restart: everything found again, nothing duplicated, nothing redeployed, nothing lost
    s.start()
    wait_for("alice running after restart", lambda: s.phase("alice") == "running")
    time.sleep(1.0)
    assert s.harness_procs() == after_apply
    assert s.tags("deployed") == deployed
    assert len(s.messages()) >= n_msgs
    # the browser's session survives the restart (it is signed with the operator key)
    relogged = web.get("/agents/alice/api/state")
    assert relogged.status == 200 and relogged.json()["model"] == "claude-alt", relogged
    s.cli("send", "alice", "hello alice, it is the operator")
    wait_for(
        "alice's turn on the new model",
        lambda: s.requests_where(
            lambda r: (
                not is_manager(r) and r.model == "claude-alt" and "hello alice" in r.last_user_text
            )
        ),
    )

    # every turn was counted, per agent and per model, with the fake's token numbers; a
    # turn's stats row is written when the turn ends, after the request seen above
    def models_counted() -> set[str]:
        by_model = json.loads(s.cli("stats", "--by", "model", "-o", "json").stdout)
        return {g["key"] for g in by_model["groups"]}

    wait_for("alice's turn on the new model in the stats", lambda: "claude-alt" in models_counted())
    stats = json.loads(s.cli("stats", "-o", "json").stdout)
    groups = {g["key"]: g for g in stats["groups"]}
    assert {"manager", "alice"} <= set(groups), groups
    assert groups["alice"]["turns"] >= 2 and groups["manager"]["turns"] >= 4
    assert stats["total"]["input_tokens"] > 0 and stats["total"]["output_tokens"] > 0
    by_model = json.loads(s.cli("stats", "--by", "model", "-o", "json").stdout)
    assert {"claude-test", "claude-alt"} <= {g["key"] for g in by_model["groups"]}
    assert "alice" in s.cli("stats").stdout

    for k, v in s.timings.items():
        print(f"timing: {k}: {v * 1000:.0f} ms")
