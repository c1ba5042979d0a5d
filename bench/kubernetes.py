"""Kubernetes runtime benchmark, by hand: ``.venv/bin/python bench/kubernetes.py [--agents 200]``.

On the stand-in API server of ``tests/kubernetes`` (this machine has no cluster), with the
stand-in's object validation off so the figures are the driver's and the wire's:

* ``render``  rendering one agent's objects (pure), per agent;
* ``create``  ``KubernetesDriver.create`` of ``--agents`` agents one after the other (one
  PVC check + five create calls each, over HTTP to the stand-in), per agent;
* ``observe`` ``observe()`` with every agent running (two list calls, then the pure phase
  computation), p50 / max over ``--rounds`` calls; ``pure`` the phase computation alone
  (``observe.observe_all`` on the listed objects): the rest is the wire and the stand-in,
  which deep-copies every object it lists and shares this process's GIL;
* ``watch``   from a pod event at the stand-in to ``generation()`` moving, p50.

A real API server adds its own latency (etcd writes, admission); the stand-in's is one
Python thread per request on loopback, so these are upper bounds of the driver's own cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.config import Config
from controller.drivers.kubernetes.api import KubeApi
from controller.drivers.kubernetes.driver import KubernetesDriver
from controller.drivers.kubernetes.names import SELECTOR
from controller.drivers.kubernetes.observe import observe_all
from controller.drivers.kubernetes.render import render_agent
from controller.drivers.kubernetes.settings import KubeSettings
from controller.paths import Layout
from tests.kubernetes.helpers import deployment
from tests.kubernetes.standin import FakeRunner, StandIn


def names(n: int) -> list[str]:
    return [f"a{i:04d}" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()

    cfg = replace(KubeSettings(), namespace="hyperhive")
    t0 = time.perf_counter()
    for name in names(args.agents):
        render_agent(deployment(name), "token", cfg, 0.0)
    render_ms = (time.perf_counter() - t0) * 1000 / args.agents

    standin = StandIn(FakeRunner(), validate_objects=False)
    standin.start()
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout(Path(tmp) / "s", Path(tmp) / "r")
        api = KubeApi.for_server(standin.url, "hyperhive", standin.token)
        driver = KubernetesDriver(layout, Config(kubernetes=cfg), api)
        t0 = time.perf_counter()
        for name in names(args.agents):
            driver.create(deployment(name), lambda _: None)
        create_ms = (time.perf_counter() - t0) * 1000 / args.agents
        standin.wait_for(lambda: len(standin.runs) == args.agents, timeout=120)
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            seen = driver.observe()
            times.append((time.perf_counter() - t0) * 1000)
        assert len(seen) == args.agents
        listed = (api.list("StatefulSet", SELECTOR), api.list("Pod", SELECTOR))
        pure = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            observe_all(*listed)
            pure.append((time.perf_counter() - t0) * 1000)
        driver.generation()
        standin.wait_for(lambda: driver.watching, timeout=30)
        lags = []
        runner = standin.runner
        assert isinstance(runner, FakeRunner)
        for name in names(args.agents)[: min(20, args.agents)]:
            before = driver.generation()
            t0 = time.perf_counter()
            runner.crash(f"hh-{name}-agent-0", 1)
            while driver.generation() == before:
                time.sleep(0.0005)
            lags.append((time.perf_counter() - t0) * 1000)
        driver.close()
    standin.stop()
    print(f"agents {args.agents}")
    print(f"render   {render_ms:8.3f} ms per agent")
    print(f"create   {create_ms:8.2f} ms per agent")
    print(f"observe  {statistics.median(times):8.1f} ms p50   {max(times):8.1f} ms max")
    print(f"pure     {statistics.median(pure):8.1f} ms p50 (phases from the listed objects)")
    print(f"watch    {statistics.median(lags):8.1f} ms p50 (pod event -> generation moves)")


if __name__ == "__main__":
    main()
