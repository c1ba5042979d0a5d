"""A real Prometheus scrapes a real ``hyperhive serve`` through a short story.

The controller runs real harnesses (the real ``claude`` CLI against the fake Messages API
served here): the operator asks the manager to spawn bob and approves it, bob takes a turn
with a tool call that writes to the manager, then bob's harness is killed and restarted
by the crash watch. Prometheus (Debian's ``prometheus``, run here on a temp config, data
dir and port, loading the example alert rules) scrapes ``/metrics`` every second with the
bearer token of ``metrics.token_file``; the test asks it, through its HTTP API, what an
operator would: the turn count and token sums match ``hyperhive stats``, the crash is a
restart, passes, requests and broker traffic were counted. ``promtool check metrics``
passes on a scrape.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.swarm import Swarm
from tests.fakeapi import Reply, Request, reply_text, reply_tool_use
from tests.metrics.promserver import RULES, Prometheus, promtool
from tests.realserve import free_port, wait_for
from tests.storyswarm import is_manager, require_claude, scripted_swarm, spawn_approved

pytestmark = pytest.mark.e2e

require_claude()  # skips this module without the claude CLI


def model(req: Request) -> Reply:
    text = req.last_user_text
    if req.tool_results:
        return reply_text("done.")
    if is_manager(req):
        if "please spawn bob" in text:
            return reply_tool_use("mcp__hyperhive__request_spawn", {"name": "bob"})
        return reply_text("noted.")
    if "hello bob" in text:
        return reply_tool_use("mcp__hyperhive__send", {"to": "manager", "body": "hi, bob here"})
    return reply_text("ok.")


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    with scripted_swarm(tmp_path, model, agent_ports=9) as s:
        yield s


def scrape(port: int, token: str | None) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        body: bytes = r.read()
        return body


def test_prometheus_scrapes_a_real_story(swarm: Swarm, tmp_path: Path) -> None:
    s = swarm
    port = free_port()
    token = "scrape-" + os.urandom(8).hex()
    token_file = tmp_path / "scrape.token"
    token_file.write_text(token + "\n")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["metrics"] = {"port": port, "token_file": str(token_file)}
    cfg["crash_watch_seconds"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s.start()
    wait_for("the manager running", lambda: s.phase("manager") == "running")

    # who may scrape: the token, and only the token
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(port, None)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        scrape(port, "not-it")
    assert wrong.value.code == 401

    prom = Prometheus.start(tmp_path, [f"127.0.0.1:{port}"], token_file=token_file)
    try:
        wait_for("the first scrape", lambda: prom.value('up{job="hyperhive"}') == 1.0)

        # a spawn: the manager proposes bob, the operator approves
        spawn_approved(s, "bob")
        # a turn with a tool call: bob writes to the manager
        s.cli("send", "bob", "hello bob")
        wait_for(
            "bob's message in the manager's turn",
            lambda: s.requests_where(lambda r: is_manager(r) and "bob here" in r.last_user_text),
            timeout=90,
        )
        # one crash: kill bob's harness; the crash watch restarts it
        before = s.harness_procs()["bob"]
        for pid in before:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        wait_for(
            "bob restarted",
            lambda: (
                s.harness_procs().get("bob") not in (None, before) and s.phase("bob") == "running"
            ),
            timeout=60,
        )

        s.cli("reconcile")  # the operator's own pass (POST /reconcile): trigger "request"
        body = scrape(port, token)
        checked = promtool("check", "metrics", stdin=body)
        assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()

        def agrees() -> bool:
            stats = json.loads(s.cli("stats", "-o", "json").stdout)["total"]
            turns = prom.value("sum(hyperhive_turns_total)")
            if turns is None or int(turns) != stats["turns"] or stats["turns"] < 3:
                return False
            for kind, key in (
                ("input", "input_tokens"),
                ("output", "output_tokens"),
                ("cache_read", "cache_read_tokens"),
                ("cache_write", "cache_creation_tokens"),
            ):
                got = prom.value(f'sum(hyperhive_turn_tokens_total{{type="{kind}"}})')
                if got is None or int(got) != stats[key]:
                    return False
            cost = prom.value("sum(hyperhive_turn_cost_usd_total)")
            return cost is not None and abs(cost - stats["cost_usd"]) < 1e-6

        wait_for("PromQL to agree with hyperhive stats", agrees, timeout=60, interval=1.0)
        stats = json.loads(s.cli("stats", "-o", "json", "--by", "agent").stdout)
        for group in stats["groups"]:
            got = prom.value(f'sum(hyperhive_turns_total{{agent="{group["key"]}"}})')
            assert got == group["turns"], (group["key"], got, group)
        assert stats["total"]["input_tokens"] > 0
        # bob's turn called a tool: the per-tool counter shows it
        sent = prom.value(
            'hyperhive_turn_tool_calls_total{agent="bob",tool="mcp__hyperhive__send"}'
        )
        assert sent == 1.0

        # the crash shows as a restart
        wait_for(
            "the crash in Prometheus",
            lambda: (
                prom.value('hyperhive_agent_crash_restarts_total{agent="bob"}') == 1.0
                and (
                    prom.value('max_over_time(hyperhive_agent_recent_crashes{agent="bob"}[10m])')
                    or 0
                )
                >= 1
            ),
            timeout=30,
        )
        wait_for(
            "bob running again in Prometheus",
            lambda: (
                prom.value('hyperhive_agent_phase{agent="bob",phase="running"}') == 1.0
                and prom.value('hyperhive_agents{phase="running"}') == 2.0
            ),
            timeout=30,
        )

        # reconcile passes, HTTP requests and broker traffic were counted
        assert (prom.value('sum(hyperhive_reconcile_passes_total{outcome="ok"})') or 0) >= 2
        # (the crash's own pass may be asked for by the crash watch or found by a pass
        # already under way, so its trigger is not fixed: the restart counter shows it)
        for trigger in ("startup", "approval", "request"):
            series = f'sum(hyperhive_reconcile_passes_total{{trigger="{trigger}"}})'
            # the operator's pass ran just before: wait for the scrape after it
            wait_for(f"a {trigger} pass", lambda s=series: (prom.value(s) or 0) >= 1, timeout=30)
        assert (prom.value('sum(hyperhive_reconcile_actions_total{kind="create"})') or 0) >= 1
        assert (prom.value('sum(hyperhive_http_requests_total{surface="agent"})') or 0) > 0
        assert (prom.value('sum(hyperhive_http_requests_total{surface="admin"})') or 0) > 0
        sends = 'hyperhive_http_requests_total{surface="agent",route="/send",code="2xx"}'
        assert prom.value(sends) == 1.0  # bob's one send, by route template
        assert prom.value('hyperhive_broker_messages_total{agent="bob",event="sent"}') == 1.0
        delivered = 'hyperhive_broker_messages_total{agent="bob",event="delivered"}'
        assert (prom.value(delivered) or 0) >= 1
        assert (prom.value('hyperhive_broker_messages_total{agent="bob",event="acked"}') or 0) >= 1
        assert (prom.value("hyperhive_broker_send_to_recv_seconds_count") or 0) >= 3
        # both harnesses wait in a parked recv between turns
        wait_for(
            "two parked long polls",
            lambda: prom.value("hyperhive_broker_parked_long_polls") == 2.0,
            timeout=30,
        )

        # the example alert rules loaded and evaluate (none firing in a healthy swarm)
        groups = prom.api("rules")["groups"]
        assert [g["name"] for g in groups] == ["hyperhive"]
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    finally:
        prom.stop()


def test_alert_rules_pass_promtool() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
