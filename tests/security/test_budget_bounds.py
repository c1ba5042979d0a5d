"""Attacks on the swarm-wide budget with made-up spend (docs/budgets.md#agent-reported-spend).

Spend is what agents report, so one agent must not be able to hold the others: on a real
``hyperhive serve`` with a $1 swarm budget (the ``new_hive`` of test_new_surfaces), alice
reports $1M for a turn she was never given, through ``POST /spend`` and through her own
turn-stats file, and floods zero-cost reports. Bob must still take his messages, alice is
the one held (her condition says her reports were clamped), and the ledger stays small.
"""

from __future__ import annotations

import sqlite3
import time

from controller.budget.wiring import LEDGER_FILE
from tests.security import test_new_surfaces as surfaces
from tests.security.support import Tally, http
from tests.security.test_new_surfaces import NewHive, stats_db

new_hive = surfaces.new_hive  # the same real serve (a fixture)

FORGED = "agent API: made-up spend holds only its reporter"
FLOOD = "agent API: spend reports cannot grow the ledger"


def _recv(h: NewHive, agent: str) -> dict[str, object]:
    reply = http(h.api, "POST", "/recv", headers=[h.auth(agent)], body={"wait_seconds": 0})
    assert reply.status == 200, reply.brief()
    doc = reply.json()
    assert isinstance(doc, dict)
    return doc


def test_made_up_spend_holds_only_its_reporter(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    now = time.time()
    alice = h.agent("alice")
    alice.post("/spend", {"turn_id": 1, "started_at": now, "cost_usd": 1e6, "tokens": 10**12})
    con = stats_db(h, "alice")
    con.execute(
        "INSERT INTO turns (id, started_at, model, result_kind, input_tokens, cost_usd) "
        "VALUES (2, ?, 'claude', 'ok', 1000000, 1000000.0)",
        (now + 0.5,),
    )
    con.close()
    time.sleep(1.5)  # the swarm-wide ingest of the stats files is reused for a second
    h.admin.post("/send", {"to": "bob", "body": "real work"})
    doc = _recv(h, "bob")
    got = doc.get("message") is not None and not doc.get("held")
    tally.record(FORGED, "alice reports $2M: bob still gets his message", got, str(doc)[:300])
    mine = _recv(h, "alice")
    held = str(mine.get("held") or "")
    tally.record(FORGED, "alice, who made it up, is held and told her reports were clamped",
                 "clamped" in held, held[:300])  # fmt: skip
    swarm = h.admin.get("/budget")["swarm"]
    bounded = swarm["spent_usd"] < 1e3 and swarm["level"] != "exceeded"
    tally.record(FORGED, "the swarm counts alice at most a few turns' ceiling", bounded,
                 str(swarm)[:300])  # fmt: skip
    tally.assert_refused(FORGED)


def test_spend_reports_cannot_grow_the_ledger(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    now = time.time()
    for i in range(1, 301):
        body = {"turn_id": i, "started_at": now, "cost_usd": 0.0, "tokens": 0}
        reply = http(h.api, "POST", "/spend", headers=[h.auth("bob")], body=body)
        assert reply.status < 500, reply.brief()
    con = sqlite3.connect(h.layout.state / LEDGER_FILE)
    (rows,) = con.execute("SELECT COUNT(*) FROM spend WHERE agent = 'bob'").fetchone()
    con.close()
    tally.record(FLOOD, "300 zero-cost reports for turns never delivered: at most a few kept",
                 rows <= 10, f"{rows} rows in budget.sqlite")  # fmt: skip
    tally.assert_refused(FLOOD)
