"""Broker benchmark, run by hand: ``.venv/bin/python bench/broker.py [--agents 50]``.

The stacks below in the same run, each with ``--agents`` receivers parked in a
long poll, on both stores (sqlite, and PostgreSQL: a server the bench starts as the tests
do, ``tests/pg.py``, or ``--pg-url``; ``--no-postgres`` skips it):

* ``floor``  bare sqlite (WAL, synchronous=NORMAL) + one ``threading.Condition``
  per recipient: the least any sqlite broker in Python can cost;
* ``pgfloor`` the same on PostgreSQL with psycopg: one autocommit INSERT per send, one
  ``UPDATE … FOR UPDATE SKIP LOCKED`` claim, a condition per recipient in this process
  (no NOTIFY): the least a PostgreSQL broker in Python can cost;
* ``broker`` ``controller.broker.Broker`` called in-process (``broker-pg``: on PostgreSQL);
* ``http``   the real thing: one agent socket per receiver (``SocketRegistry``:
  the agent apps on hivehttp's one event loop, each checking its agent's
  credential; their JSON verbs served by hivehttp's fast routes), clients
  ``POST /recv {"wait_seconds": 30}`` and a sender
  ``POST /send`` over unix sockets, with ``schemas.client.UnixClient``'s
  persistent connections and each agent's bearer credential;
  (``http-pg``: the broker on PostgreSQL);
* ``http-nk`` the same with ``keepalive=False``: a new connection per request
  (what the client did before keep-alive).

Figures: send→recv wake latency (p50 / p99, one message in flight at a time,
measured from just before the send call to the moment the parked receiver has
it) and sustained send throughput (``--senders`` threads sending for
``--seconds`` while the receivers drain). Ratios are against each store's floor, and
PostgreSQL's against sqlite's, side by side. For the HTTP stacks, the connections the
clients opened per delivered message.

Last, the cost of request validation (``schemas.validate``): every ``$ref``
resolved through the ``referencing`` registry per call (how it was) against
the compiled, ref-free validator per definition (how it is).
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.auth import AgentCredentials
from controller.broker import Broker
from controller.httpserve import SocketRegistry
from controller.paths import Layout
from hivehttp.server import default_core
from schemas.client import UnixClient

Send = Callable[[str, str], None]
Recv = Callable[[str], "str | None"]


class FloorBroker:
    """The floor: INSERT + COMMIT + notify; claim with one UPDATE ... RETURNING."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE m (id INTEGER PRIMARY KEY AUTOINCREMENT, r TEXT, body TEXT, acked REAL)"
        )
        self.conn.execute("CREATE INDEX m_pending ON m(r, id) WHERE acked IS NULL")
        self.db = threading.Lock()
        self.wait = threading.Lock()
        self.conds: dict[str, threading.Condition] = {}

    def send(self, recipient: str, body: str) -> None:
        with self.db:
            self.conn.execute("INSERT INTO m (r, body) VALUES (?, ?)", (recipient, body))
        with self.wait:
            cond = self.conds.get(recipient)
            if cond is not None:
                cond.notify_all()

    def recv(self, recipient: str, wait: float) -> str | None:
        deadline = time.monotonic() + wait
        with self.wait:
            cond = self.conds.setdefault(recipient, threading.Condition(self.wait))
        while True:
            with self.wait:
                with self.db:
                    rows = self.conn.execute(
                        "UPDATE m SET acked = 1 WHERE id = (SELECT id FROM m WHERE r = ? "
                        "AND acked IS NULL ORDER BY id LIMIT 1) RETURNING body",
                        (recipient,),
                    ).fetchall()
                if rows:
                    return str(rows[0][0])
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                cond.wait(left)


class PgFloor:
    """The PostgreSQL floor: autocommit INSERT + notify; claim with one UPDATE ... RETURNING
    over ``FOR UPDATE SKIP LOCKED``; connections from a pool of 8, as the store's (a
    connection per parked thread makes every statement dearer: PostgreSQL's snapshots scan
    every backend); a receiver reads its inbox's sequence before the claim and parks only
    while it has not moved (no lost wake-up, no lock held across a round trip)."""

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.pool: Any = ConnectionPool(
            url, kwargs={"autocommit": True}, min_size=1, max_size=8, open=True
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE m (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "r text, body text, acked float8)"
            )
            conn.execute("CREATE INDEX m_pending ON m (r, id) WHERE acked IS NULL")
        self.wait = threading.Lock()
        self.conds: dict[str, threading.Condition] = {}
        self.seq: dict[str, int] = {}

    def send(self, recipient: str, body: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO m (r, body) VALUES (%s, %s)", (recipient, body))
        with self.wait:
            self.seq[recipient] = self.seq.get(recipient, 0) + 1
            cond = self.conds.get(recipient)
            if cond is not None:
                cond.notify_all()

    def recv(self, recipient: str, wait: float) -> str | None:
        deadline = time.monotonic() + wait
        with self.wait:
            cond = self.conds.setdefault(recipient, threading.Condition(self.wait))
        while True:
            with self.wait:
                seen = self.seq.get(recipient, 0)
            with self.pool.connection() as conn:
                row = conn.execute(
                    "UPDATE m SET acked = 1 WHERE id = (SELECT id FROM m WHERE r = %s "
                    "AND acked IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                    "RETURNING body",
                    (recipient,),
                ).fetchone()
            if row is not None:
                return str(row[0])
            with self.wait:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self.seq.get(recipient, 0) == seen:
                    cond.wait(left)


class OpsStub:
    """Just enough ``SwarmOps`` for the agent sockets."""

    def __init__(self, names: list[str]) -> None:
        self.names = frozenset(names)

    def agent_names(self) -> frozenset[str]:
        return self.names

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        return ()

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(name)


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def run(
    label: str,
    send: Send,
    recv: Recv,
    agents: list[str],
    samples: int,
    seconds: float,
    senders: int,
    make_send: Callable[[], Send] | None = None,
) -> dict[str, float]:
    """Latency with ``agents`` parked receivers, then throughput; returns the figures."""
    got: dict[str, float] = {}
    arrived = threading.Condition()
    stop = threading.Event()
    received = [0]

    def receiver(name: str) -> None:
        while not stop.is_set():
            body = recv(name)
            if body is None:
                continue
            now = time.perf_counter()
            with arrived:
                received[0] += 1
                if body.startswith("lat:"):
                    got[body] = now
                    arrived.notify_all()

    threads = [threading.Thread(target=receiver, args=(a,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    time.sleep(0.5)  # everyone parked

    lat: list[float] = []
    rng = random.Random(1)
    for i in range(samples):
        key = f"lat:{i}"
        to = rng.choice(agents)
        t0 = time.perf_counter()
        send(to, key)
        with arrived:
            while key not in got:
                if not arrived.wait(10):
                    raise RuntimeError(f"{label}: message {i} never arrived")
        lat.append(got[key] - t0)

    count = [0]
    count_lock = threading.Lock()
    end = time.monotonic() + seconds

    def sender(k: int) -> None:
        fn = make_send() if make_send else send
        r = random.Random(k)
        n = 0
        while time.monotonic() < end:
            fn(r.choice(agents), f"tp:{k}:{n}")
            n += 1
        with count_lock:
            count[0] += n

    before = received[0]
    t0 = time.perf_counter()
    ts = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    drained_by = time.monotonic() + 30
    while received[0] - before < count[0] and time.monotonic() < drained_by:
        time.sleep(0.05)
    drain = time.perf_counter() - t0
    stop.set()
    out = {
        "messages": float(received[0] - before + len(lat)),
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3,
        "send_per_s": count[0] / elapsed,
        "delivered_per_s": (received[0] - before) / drain,
    }
    print(
        f"{label:7s} wake p50 {out['p50_ms']:7.3f} ms  p99 {out['p99_ms']:7.3f} ms  "
        f"mean {out['mean_ms']:7.3f} ms | sends {out['send_per_s']:8.0f}/s  "
        f"delivered {out['delivered_per_s']:8.0f}/s ({count[0]} msgs)",
        flush=True,
    )
    return out


def serve_agents(
    broker: Broker, layout: Layout, names: list[str], known: list[str]
) -> tuple[SocketRegistry, dict[str, str]]:
    """Issue a credential for each of ``names`` and serve their sockets; the registry and
    the tokens (agent → credential)."""
    credentials = AgentCredentials(layout)
    tokens = {a: credentials.issue(a) for a in names}
    registry = SocketRegistry(broker, OpsStub(known), layout, credentials)
    registry.sync(names)
    return registry, tokens


def http_clients(
    state: str,
    tokens: dict[str, str],
    agents: list[str],
    samples: int,
    seconds: float,
    senders: int,
    keepalive: bool,
    out: Any,
    label_pg: bool = False,
) -> None:
    """Child process: drive the agent sockets under ``state`` and send the figures back."""
    layout = Layout(state=Path(state), run=Path(state) / "run")
    clients = {
        a: UnixClient(str(layout.agent_sock(a)), timeout=60, keepalive=keepalive, token=tokens[a])
        for a in agents
    }
    sending: list[UnixClient] = []

    def h_recv(a: str) -> str | None:
        m = clients[a].post("/recv", {"wait_seconds": 30})["message"]
        return None if m is None else str(m["body"])

    def make_sender() -> Send:
        c = UnixClient(
            str(layout.agent_sock("bench")), timeout=30, keepalive=keepalive, token=tokens["bench"]
        )
        sending.append(c)

        def send(to: str, body: str) -> None:
            c.post("/send", {"to": to, "body": body})

        return send

    label = ("http" if keepalive else "http-nk") + ("-pg" if label_pg else "")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = run(label, make_sender(), h_recv, agents, samples, seconds, senders, make_sender)
    cpu = time.process_time() - cpu0
    res["client_cpu"] = cpu / (time.perf_counter() - wall0)
    print(
        f"{'':7s} client process busy {res['client_cpu'] * 100:.0f} % of a core, "
        f"{cpu / max(res['messages'], 1.0) * 1e6:.0f} µs CPU per delivered message",
        flush=True,
    )
    opened = sum(c.connections_opened for c in [*clients.values(), *sending])
    res["conns_per_msg"] = opened / max(res["messages"], 1.0)
    print(f"{'':7s} connections opened per delivered message: {res['conns_per_msg']:.3f}")
    out.send(res)


def on_loop(fn: Callable[[], object]) -> None:
    """Run ``fn`` on hivehttp's loop thread and wait for it."""
    done = threading.Event()

    def call() -> None:
        fn()
        done.set()

    default_core().loop.call_soon_threadsafe(call)
    done.wait(5)


def http_stack(
    d: Path,
    agents: list[str],
    samples: int,
    seconds: float,
    senders: int,
    keepalive: bool,
    pg_url: str | None = None,
    profile: str | None = None,
) -> dict[str, float]:
    """Serve one agent socket per receiver (plus the sender's) and drive them from a child;
    the broker on sqlite, or on ``pg_url``. ``profile``: write a cProfile of the server's
    loop thread there (pstats format, in the loop thread's CPU seconds; a clock read per
    call makes the figures ~5 times the unprofiled ones, so read it for shares of small
    functions only; a sampling profiler, e.g. ``py-spy record --nonblocking``, distorts less)."""
    sub = d / (("ka" if keepalive else "nk") + ("-pg" if pg_url else ""))
    hb = Broker(pg_url or sub / "http.sqlite")
    layout = Layout(state=sub, run=sub / "run")
    registry, tokens = serve_agents(hb, layout, [*agents, "bench"], [*agents, "bench", "manager"])
    # the loop thread's CPU time, not wall time: a wall-clock profile charges a syscall
    # with the time the thread sat preempted by the clients on a busy 2-core box
    prof = cProfile.Profile(time.thread_time) if profile else None
    if prof is not None:
        on_loop(prof.enable)
    # the clients (receivers and senders) run in another process, as the harnesses do,
    # so they do not compete with the server for this process' GIL
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=http_clients,
        args=(str(sub), tokens, agents, samples, seconds, senders, keepalive, child, bool(pg_url)),
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    proc.start()
    res: dict[str, float] = parent.recv()
    # this process only serves while the child drives it: its CPU time is the server's
    cpu = time.process_time() - cpu0
    res["server_cpu"] = cpu / (time.perf_counter() - wall0)
    res["server_us_per_msg"] = cpu / max(res["messages"], 1.0) * 1e6
    print(
        f"{'':7s} server process busy {res['server_cpu'] * 100:.0f} % of a core, "
        f"{res['server_us_per_msg']:.0f} µs CPU per delivered message (send + recv)",
        flush=True,
    )
    if prof is not None and profile is not None:
        on_loop(prof.disable)
        prof.dump_stats(profile)
        print(f"{'':7s} server loop profile: {profile} (python -m pstats {profile})")
    for a in agents:  # wake the parked receivers so they see their stop flag
        hb.send("bench", a, "bye")
    proc.join(60)
    registry.close_all(timeout=3.0)
    hb.close()
    return res


def _sequential_client(path: str, token: str, n: int, rounds: int, out: Any) -> None:
    """Child process: per request kind, alternating rounds of ``n`` sequential calls with a
    new connection per request and with keep-alive; the median round of each."""
    clients = {
        False: UnixClient(path, keepalive=False, token=token),
        True: UnixClient(path, keepalive=True, token=token),
    }
    res: dict[str, dict[bool, float]] = {}
    for label in ("status", "send"):
        per: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for keepalive, c in clients.items():
                c.get("/status")  # warm
                t0 = time.perf_counter()
                for i in range(n):
                    if label == "status":
                        c.get("/status")
                    else:
                        c.post("/send", {"to": "a0", "body": f"seq {r} {i}"})
                per[keepalive].append((time.perf_counter() - t0) / n * 1e6)
        res[label] = {k: statistics.median(v) for k, v in per.items()}
    out.send(res)


def inprocess_send_us(d: Path, n: int = 300, rounds: int = 7) -> float:
    """µs per in-process ``Broker.send``, one caller in a row (median of ``rounds``)."""
    b = Broker(d / "inproc-send.sqlite")
    per = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for i in range(n):
            b.send("bench", "a0", f"seq {r} {i}")
        per.append((time.perf_counter() - t0) / n * 1e6)
    b.close()
    return statistics.median(per)


def sequential_http(d: Path, n: int = 300, rounds: int = 7) -> dict[str, dict[bool, float]]:
    """µs per request for one client calling in a row (the harness' recv → ack → status
    pattern), with and without keep-alive: the connection cost alone. ``POST /send`` with
    keep-alive is the server half of an MCP tool call (claude → tool → broker → result),
    printed beside an in-process ``Broker.send``."""
    sub = d / "seq"
    hb = Broker(sub / "http.sqlite")
    layout = Layout(state=sub, run=sub / "run")
    registry, tokens = serve_agents(hb, layout, ["bench"], ["a0", "bench", "manager"])
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_sequential_client,
        args=(str(layout.agent_sock("bench")), tokens["bench"], n, rounds, child),
    )
    proc.start()
    results: dict[str, dict[bool, float]] = parent.recv()
    proc.join(60)
    print(
        "\none client, sequential requests, µs per request, median of "
        f"{rounds} rounds (new connection → keep-alive):"
    )
    for label, r in results.items():
        print(f"  {label:7s} {r[False]:7.0f} → {r[True]:5.0f} µs  (x{r[False] / r[True]:.2f})")
    registry.close_all(timeout=3.0)
    hb.close()
    floor = inprocess_send_us(sub)
    ka = results["send"][True]
    print(
        f"  tool call's broker round trip: POST /send {ka:.0f} µs vs in-process Broker.send "
        f"{floor:.0f} µs (x{ka / floor:.1f}); target ≤ 2,000 µs: "
        f"{'met' if ka <= 2000 else 'MISSED'}"
    )
    return results


def validation_cost(n: int = 3000) -> None:
    """µs per ``validate`` call: registry-resolved ``$ref`` (before) vs compiled (now)."""
    import jsonschema
    from jsonschema import Draft202012Validator

    from schemas.validate import _registry, validate

    cases = [
        ("wire#SendRequest", {"to": "bob", "body": "hello there", "idempotency_key": "k-1"}),
        ("wire#RecvRequest", {"wait_seconds": 30, "lease_seconds": 600}),
        ("wire#AckRequest", {"ids": [1, 2, 3]}),
        ("events", {"type": "ContainerCrash", "agent": "alice", "restarts": 2}),
    ]
    print("\nrequest validation, µs per call (registry $ref lookups → compiled):")
    for ref, doc in cases:
        name, _, definition = ref.partition("#")
        target = f"{name}.schema.json" + (f"#/$defs/{definition}" if definition else "")
        old = Draft202012Validator({"$ref": target}, registry=_registry())

        def before(v: Any = old, d: Any = doc) -> None:
            jsonschema.exceptions.best_match(v.iter_errors(d))

        def after(r: str = ref, d: Any = doc) -> None:
            validate(d, r)

        timings = []
        for fn in (before, after):
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            timings.append((time.perf_counter() - t0) / n * 1e6)
        print(
            f"  {ref:18s} {timings[0]:7.1f} → {timings[1]:6.1f} µs  "
            f"(x{timings[0] / timings[1]:.1f} faster)"
        )


class Postgres:
    """Fresh databases for the PostgreSQL stacks: on a server started as the tests start
    theirs (``tests/pg.py``), or on ``url`` (a role that may CREATE DATABASE)."""

    def __init__(self, url: str | None) -> None:
        self.server: Any = None
        if url is None:
            from tests.pg import PgServer

            self.server = PgServer.start()
            url = self.server.url("postgres")
        self.admin = url
        self.made: list[str] = []

    def new_db(self) -> str:
        """The URL of a new empty database."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = f"hh_bench_{len(self.made) + 1}_{int(time.time())}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        self.made.append(name)
        # a URL, not a key=value conninfo: ``Broker`` opens a PostgreSQL store only for a
        # ``postgresql://`` URL (a conninfo string is refused, see ``Broker``)
        parts = {k: str(v) for k, v in conninfo_to_dict(self.admin).items() if k != "dbname"}
        return f"postgresql:///{quote(name, safe='')}?{urlencode(parts, quote_via=quote)}"

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.admin) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def close(self) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
        if self.server is not None:
            self.server.stop()


def in_process(label: str, b: Broker, agents: list[str], args: Any) -> dict[str, float]:
    """``run`` against ``b`` called in-process."""

    def b_recv(a: str) -> str | None:
        m = b.recv(a, 1.0)
        return None if m is None else m.body

    def b_send(to: str, body: str) -> None:
        b.send("bench", to, body)

    try:
        return run(label, b_send, b_recv, agents, args.samples, args.seconds, args.senders)
    finally:
        b.close()


def side_by_side(rows: dict[str, tuple[dict[str, float], dict[str, float]]]) -> None:
    """One line per stack: sqlite's figures, PostgreSQL's, and their ratio."""
    print("\nside by side (sqlite | PostgreSQL | PostgreSQL / sqlite):")
    print(f"  {'':8s} {'wake p50 ms':>23s} {'wake p99 ms':>25s} {'sends/s':>25s}")
    for label, (lite, pg) in rows.items():
        cells = []
        for key, fmt in (("p50_ms", "7.3f"), ("p99_ms", "7.3f"), ("send_per_s", "7.0f")):
            a, b = lite[key], pg[key]
            cells.append(f"{a:{fmt}} | {b:{fmt}} x{b / a:5.2f}")
        print(f"  {label:8s} " + "   ".join(cells))


def targets(
    label: str, http: dict[str, float], floor: dict[str, float], inproc: dict[str, float]
) -> None:
    """Issue 10's socket-path targets for one store."""
    ratio = http["send_per_s"] / inproc["send_per_s"]
    print(f"\ntargets (issue 10), over the socket path, broker on {label}:")
    print(
        f"  wake p50 {http['p50_ms']:.3f} ms (floor {floor['p50_ms']:.3f}, "
        f"x{http['p50_ms'] / floor['p50_ms']:.1f}); target ≤ 0.5 ms: "
        f"{'met' if http['p50_ms'] <= 0.5 else 'MISSED'}"
    )
    print(
        f"  wake p99 {http['p99_ms']:.3f} ms (floor {floor['p99_ms']:.3f}, "
        f"x{http['p99_ms'] / floor['p99_ms']:.1f}); target ≤ 2 ms: "
        f"{'met' if http['p99_ms'] <= 2.0 else 'MISSED'}"
    )
    print(
        f"  durable sends {http['send_per_s']:.0f}/s (in-process Broker "
        f"{inproc['send_per_s']:.0f}/s, x{ratio:.2f}); target ≥ 2,000/s and ≥ x0.6: "
        f"{'met' if http['send_per_s'] >= 2000 and ratio >= 0.6 else 'MISSED'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--agents", type=int, default=50, help="parked receivers (default 50)")
    ap.add_argument("--samples", type=int, default=500, help="latency samples (default 500)")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput phase (default 5)")
    ap.add_argument("--senders", type=int, default=4, help="sender threads (default 4)")
    ap.add_argument(
        "--no-close-run", action="store_true", help="skip the http run without keep-alive"
    )
    ap.add_argument(
        "--pg-url",
        help="a PostgreSQL database whose role may CREATE DATABASE (default: start a "
        "server in a temp dir, as the tests do)",
    )
    ap.add_argument("--no-postgres", action="store_true", help="sqlite only")
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the server loop during the sqlite http stack into FILE (pstats, the "
        "loop thread's CPU time; ~5x slower while profiled)",
    )
    ap.add_argument(
        "--no-extras", action="store_true", help="skip the sequential and validation runs"
    )
    args = ap.parse_args()
    agents = [f"a{i}" for i in range(args.agents)]
    d = Path(tempfile.mkdtemp(prefix="hh-bench-", dir="/tmp"))
    pg = None if args.no_postgres else Postgres(args.pg_url)
    print(
        f"{args.agents} parked receivers, {args.samples} latency samples, "
        f"{args.senders} senders x {args.seconds:.0f} s; sqlite {sqlite3.sqlite_version}, "
        f"PostgreSQL {pg.version() if pg else '(skipped)'}, "
        f"python {sys.version.split()[0]}, files in {d}",
        flush=True,
    )
    try:
        floor = FloorBroker(d / "floor.sqlite")
        res_floor = run(
            "floor",
            floor.send,
            lambda a: floor.recv(a, 1.0),
            agents,
            args.samples,
            args.seconds,
            args.senders,
        )
        res_broker = in_process("broker", Broker(d / "broker.sqlite"), agents, args)
        http = http_stack(
            d, agents, args.samples, args.seconds, args.senders, True, profile=args.profile
        )
        stacks = [("broker", res_broker, res_floor), ("http", http, res_floor)]
        if pg is not None:
            pgfloor = PgFloor(pg.new_db())
            res_pgfloor = run(
                "pgfloor",
                pgfloor.send,
                lambda a: pgfloor.recv(a, 1.0),
                agents,
                args.samples,
                args.seconds,
                args.senders,
            )
            res_bpg = in_process("broker-pg", Broker(pg.new_db()), agents, args)
            http_pg = http_stack(
                d, agents, args.samples, args.seconds, args.senders, True, pg.new_db()
            )
            stacks += [("broker-pg", res_bpg, res_pgfloor), ("http-pg", http_pg, res_pgfloor)]
        if not args.no_close_run:
            nk = http_stack(d, agents, args.samples, args.seconds, args.senders, False)
            stacks.append(("http-nk", nk, res_floor))

        print(
            "\nratios against the floor of the same store (lower latency / higher throughput "
            "is better):"
        )
        for label, res, base in stacks:
            print(
                f"  {label:9s} p50 x{res['p50_ms'] / base['p50_ms']:6.1f}   "
                f"p99 x{res['p99_ms'] / base['p99_ms']:6.1f}   "
                f"throughput x{res['send_per_s'] / base['send_per_s']:6.3f}"
            )
        if pg is not None:
            side_by_side(
                {
                    "floor": (res_floor, res_pgfloor),
                    "broker": (res_broker, res_bpg),
                    "http": (http, http_pg),
                }
            )
        targets("sqlite", http, res_floor, res_broker)
        if pg is not None:
            targets("PostgreSQL", http_pg, res_pgfloor, res_bpg)
        if not args.no_close_run:
            ka = http
            print(
                f"\nkeep-alive gain (http vs http-nk): p50 {nk['p50_ms']:.3f} → "
                f"{ka['p50_ms']:.3f} ms, p99 {nk['p99_ms']:.3f} → {ka['p99_ms']:.3f} ms, "
                f"sends {nk['send_per_s']:.0f} → {ka['send_per_s']:.0f}/s "
                f"(x{ka['send_per_s'] / nk['send_per_s']:.2f}), connections per message "
                f"{nk['conns_per_msg']:.2f} → {ka['conns_per_msg']:.3f}"
            )
        if not args.no_extras:
            sequential_http(d)
            validation_cost()
    finally:
        if pg is not None:
            pg.close()


if __name__ == "__main__":
    main()
