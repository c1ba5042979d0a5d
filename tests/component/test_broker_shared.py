"""Two processes on one PostgreSQL broker database (``tests/pg.py``): competing receivers
never get the same delivery twice, and a send in one process wakes a receive parked in the
other (``LISTEN`` / ``NOTIFY``). Two ``Broker`` instances in two processes, as two
controllers sharing the database would have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from controller.broker import Broker

REPO = Path(__file__).resolve().parents[2]

_RECEIVER = """
import json, sys, threading
from controller.broker import Broker

url, names, per_name, lease = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
lease_seconds = None if lease == "none" else int(lease)
b = Broker(url)
got, lock = [], threading.Lock()

def receive(name):
    while True:
        m = b.recv(name, 30, lease_seconds)
        if m is None:
            continue
        if lease_seconds is not None:
            assert b.ack(name, [m.id]) == 1, m.id
        with lock:
            got.append([m.id, m.recipient, m.body])
        if m.body == "stop":
            return

threads = [threading.Thread(target=receive, args=(n,)) for n in names for _ in range(per_name)]
print("ready", flush=True)
for t in threads:
    t.start()
for t in threads:
    t.join()
b.close()
print(json.dumps(got), flush=True)
"""


def _receiver(url: str, names: list[str], per_name: int, lease: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, url, ",".join(names), str(per_name), lease],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _competing(url: str, lease: str) -> None:
    names = ["alice", "bob"]
    per_name = 3  # threads per inbox in each process: 12 receivers on 2 inboxes
    procs = [_receiver(url, names, per_name, lease) for _ in range(2)]
    sender = Broker(url)
    try:
        sent = {}
        for i in range(1500):
            m = sender.send("writer", names[i % 2], f"m{i}")
            sent[m.id] = m.body
        for name in names:
            for _ in range(per_name * len(procs)):
                sender.send("writer", name, "stop")
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            outs.append(json.loads(out.strip().splitlines()[-1]))
        every = [row for out in outs for row in out]
        counts = Counter(row[0] for row in every)
        assert [i for i, n in counts.items() if n > 1] == [], "a message was delivered twice"
        got = {row[0]: row[2] for row in every if row[2] != "stop"}
        assert got == sent, "a message was never delivered"
        # both processes really competed for the same inboxes
        assert all(any(row[2] != "stop" for row in out) for out in outs)
        assert sender.status("alice").unread == sender.status("bob").unread == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        sender.close()


def test_two_processes_never_deliver_a_leased_message_twice(pg_url: str) -> None:
    _competing(pg_url, "30")


def test_two_processes_never_deliver_a_plain_message_twice(pg_url: str) -> None:
    _competing(pg_url, "none")


_PARKED = """
import json, sys, time
from controller.broker import Broker
b = Broker(sys.argv[1])
print("ready", flush=True)
m = b.recv("bob", 60)
new = b.wait_for_new(int(sys.argv[2]), 60)
print(json.dumps([None if m is None else m.body, [x.body for x in new]]), flush=True)
b.close()
"""


def test_a_send_wakes_a_receive_parked_in_another_process(pg_url: str) -> None:
    here = Broker(pg_url)
    try:
        first = here.send("alice", "carol", "before")
        proc = subprocess.Popen(
            [sys.executable, "-c", _PARKED, pg_url, str(first.id)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # parked for up to 60 s each: only the NOTIFY can end them before the test's timeout
        threading.Event().wait(0.3)
        here.send("alice", "bob", "wake up")
        out, _ = proc.communicate(timeout=30)
        assert json.loads(out) == ["wake up", ["wake up"]]
    finally:
        here.close()


def test_a_parked_receive_here_wakes_on_a_send_from_another_process(pg_url: str) -> None:
    here = Broker(pg_url)
    try:
        got: dict[str, object] = {}
        t = threading.Thread(target=lambda: got.setdefault("m", here.recv("dave", 60)))
        t.start()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from controller.broker import Broker; "
                "b = Broker(sys.argv[1]); b.send('erin', 'dave', 'from afar'); b.close()",
                pg_url,
            ],
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=30,
        )
        t.join(30)
        assert not t.is_alive(), "the parked receive never woke"
        m = got["m"]
        assert m is not None and m.body == "from afar"  # type: ignore[attr-defined]
    finally:
        here.close()
