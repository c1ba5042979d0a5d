"""Fixtures of the kubernetes runtime tests: a stand-in API server and a driver on it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller.config import Config
from controller.drivers.kubernetes.api import KubeApi
from controller.drivers.kubernetes.driver import KubernetesDriver
from controller.drivers.kubernetes.settings import KubeSettings, Workload
from controller.paths import Layout
from tests.kubernetes.standin import FakeRunner, StandIn

NS = "hyperhive"


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def standin(runner: FakeRunner) -> Iterator[StandIn]:
    s = StandIn(runner)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "state", tmp_path / "run")


def make_driver(layout: Layout, standin: StandIn, workload: Workload) -> KubernetesDriver:
    cfg = Config(kubernetes=replace(KubeSettings(), namespace=NS, workload=workload))
    api = KubeApi.for_server(standin.url, NS, standin.token)
    return KubernetesDriver(layout, cfg, api)


@pytest.fixture(params=[Workload.STATEFULSET, Workload.SANDBOX], ids=["statefulset", "sandbox"])
def driver(
    request: pytest.FixtureRequest, layout: Layout, standin: StandIn
) -> Iterator[KubernetesDriver]:
    d = make_driver(layout, standin, request.param)
    yield d
    d.close()
