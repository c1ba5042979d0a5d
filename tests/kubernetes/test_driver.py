"""The kubernetes driver against the stand-in API server (tests/kubernetes/standin.py)."""

from __future__ import annotations

import json
import time

import pytest

from controller.drivers.kubernetes import names
from controller.drivers.kubernetes.driver import KubernetesDriver
from controller.drivers.kubernetes.observe import NOT_BUILT
from controller.drivers.kubernetes.settings import Workload
from controller.errors import Invalid, PermanentError
from controller.model import Phase
from controller.paths import Layout
from tests.kubernetes.conftest import NS
from tests.kubernetes.helpers import deployment
from tests.kubernetes.standin import FakeRunner, StandIn


def pod_of(driver: KubernetesDriver, agent: str) -> str:
    base = names.base(agent)
    return base if driver.cfg.workload is Workload.SANDBOX else f"{base}-0"


def wait_phase(driver: KubernetesDriver, agent: str, phase: Phase, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = driver.observe().get(agent)
        ready = seen is not None and (
            phase is not Phase.RUNNING or "running (ready)" in seen.detail
        )
        if seen is not None and seen.phase is phase and ready:
            return seen.detail
        time.sleep(0.05)
    raise AssertionError(f"{agent} never reached {phase}: {seen}")


def test_create_runs_the_agent_with_its_objects(
    driver: KubernetesDriver, standin: StandIn, layout: Layout
) -> None:
    lines: list[str] = []
    d = deployment("alice", cfg="c1", commit="c0ffee")
    driver.create(d, lines.append)
    assert lines == [f"alice: {NOT_BUILT}"]
    base = names.base("alice")
    assert standin.names("persistentvolumeclaims", NS) == [f"{base}-state"]
    assert standin.names("secrets", NS) == [base]
    assert standin.names("configmaps", NS) == [base]
    assert standin.names("networkpolicies", NS) == [base]
    kind = "sandboxes" if driver.cfg.workload is Workload.SANDBOX else "statefulsets"
    assert standin.names(kind, NS) == [base]
    # the swarm reads the deployed settings from the state dir, as on the other runtimes
    assert json.loads(layout.agent_settings("alice").read_text()) == d.settings
    detail = wait_phase(driver, "alice", Phase.RUNNING)
    assert "image hyperhive:latest" in detail
    seen = driver.observe()["alice"]
    assert (seen.commit, seen.config_digest, seen.build_digest) == ("c0ffee", "c1", "b1")
    assert seen.hyperhive_version == "0.1.0"
    assert NOT_BUILT in seen.detail
    pod = standin.get("pods", NS, pod_of(driver, "alice"))
    assert pod is not None
    assert pod["metadata"]["annotations"][names.ANN_COMMIT] == "c0ffee"
    # the credential the swarm issued is the one in the Secret
    secret = standin.get("secrets", NS, base)
    assert secret is not None
    import base64

    cred = layout.agent_credential("alice").read_text().strip()
    assert base64.b64decode(secret["data"]["credential"]).decode() == cred


def test_stop_keeps_the_volume_and_start_brings_it_back(
    driver: KubernetesDriver, standin: StandIn
) -> None:
    driver.create(deployment("alice"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    driver.stop("alice")
    seen = driver.observe()["alice"]
    assert seen.phase is Phase.STOPPED
    assert (
        "suspended" if driver.cfg.workload is Workload.SANDBOX else "scaled to zero"
    ) in seen.detail
    standin.wait_for(lambda: not standin.names("pods", NS))
    assert standin.names("persistentvolumeclaims", NS) == [names.pvc("alice")]
    driver.stop("alice")  # idempotent
    driver.start("alice")
    wait_phase(driver, "alice", Phase.RUNNING)
    driver.start("alice")  # idempotent: a running agent is left alone
    assert len(standin.names("pods", NS)) == 1


def test_apply_manifest_restarts_with_new_settings(
    driver: KubernetesDriver, standin: StandIn, runner: FakeRunner
) -> None:
    driver.create(deployment("alice", cfg="c1"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    pod = pod_of(driver, "alice")
    first = standin.get("pods", NS, pod)
    assert first is not None
    time.sleep(1.1)  # the restart stamp has a resolution of one second
    driver.apply_manifest(deployment("alice", cfg="c2"))
    standin.wait_for(
        lambda: (
            (p := standin.objects.get(("pods", NS, pod))) is not None
            and p["metadata"]["uid"] != first["metadata"]["uid"]
        )
    )
    wait_phase(driver, "alice", Phase.RUNNING)
    assert driver.observe()["alice"].config_digest == "c2"
    cm = standin.get("configmaps", NS, names.base("alice"))
    assert cm is not None
    assert json.loads(cm["data"]["settings.json"])["agent"] == "alice"
    assert len(runner.containers[pod]) == 2


def test_restart_replaces_the_pod(driver: KubernetesDriver, standin: StandIn) -> None:
    driver.create(deployment("alice"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    pod = pod_of(driver, "alice")
    uid = standin.get("pods", NS, pod)["metadata"]["uid"]  # type: ignore[index]
    driver.restart("alice")
    standin.wait_for(
        lambda: (
            (p := standin.objects.get(("pods", NS, pod))) is not None
            and p["metadata"]["uid"] != uid
        )
    )
    wait_phase(driver, "alice", Phase.RUNNING)


def test_a_crash_is_observed_and_start_gives_a_fresh_pod(
    driver: KubernetesDriver, standin: StandIn, runner: FakeRunner
) -> None:
    driver.create(deployment("alice"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    pod = pod_of(driver, "alice")
    standin.backoff = standin.backoff_cap = 30.0  # stay in CrashLoopBackOff while we look
    runner.crash(pod, 3)
    deadline = time.monotonic() + 10
    while (seen := driver.observe()["alice"]).phase is not Phase.FAILED:
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert "CrashLoopBackOff" in seen.detail
    assert "restarts 1, last exit code 3" in seen.detail
    # the journal shows what the crashed run wrote
    assert "crashed with 3" in driver.journal("alice")
    uid = standin.get("pods", NS, pod)["metadata"]["uid"]  # type: ignore[index]
    driver.start("alice")
    standin.wait_for(
        lambda: (
            (p := standin.objects.get(("pods", NS, pod))) is not None
            and p["metadata"]["uid"] != uid
        )
    )
    wait_phase(driver, "alice", Phase.RUNNING)


def test_the_stand_in_restarts_a_crashed_container_itself(
    driver: KubernetesDriver, standin: StandIn, runner: FakeRunner
) -> None:
    """kubelet's own restart (restartPolicy Always) is seen as restarts, not as a new pod."""
    driver.create(deployment("alice"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    pod = pod_of(driver, "alice")
    runner.crash(pod, 1)
    standin.wait_for(lambda: len(runner.containers[pod]) == 2)
    detail = wait_phase(driver, "alice", Phase.RUNNING)
    assert "restarts 1, last exit code 1" in detail


def test_destroy_keeps_a_tombstone_volume_and_create_takes_it_back(
    driver: KubernetesDriver, standin: StandIn
) -> None:
    driver.create(deployment("alice"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    pvc_uid = standin.get("persistentvolumeclaims", NS, names.pvc("alice"))["metadata"]["uid"]  # type: ignore[index]
    driver.destroy("alice")
    assert "alice" not in driver.observe()
    standin.wait_for(lambda: not standin.names("pods", NS))
    for plural in ("secrets", "configmaps", "networkpolicies", "statefulsets", "sandboxes"):
        assert standin.names(plural, NS) == [], plural
    assert [t["agent"] for t in driver.tombstones()] == ["alice"]
    driver.destroy("alice")  # idempotent
    lines: list[str] = []
    driver.create(deployment("alice"), lines.append)
    assert any("restored" in line for line in lines)
    pvc = standin.get("persistentvolumeclaims", NS, names.pvc("alice"))
    assert pvc is not None and pvc["metadata"]["uid"] == pvc_uid
    assert names.TOMBSTONE not in pvc["metadata"]["labels"]
    assert driver.tombstones() == []
    wait_phase(driver, "alice", Phase.RUNNING)


def test_purge_deletes_the_volume(driver: KubernetesDriver, standin: StandIn) -> None:
    driver.create(deployment("alice"), lambda _: None)
    driver.destroy("alice")
    assert driver.purge("alice") is True
    assert standin.names("persistentvolumeclaims", NS) == []
    assert driver.purge("alice") is False


def test_two_agents_and_the_manager_are_told_apart(driver: KubernetesDriver) -> None:
    for name in ("manager", "alice", "web-2"):
        driver.create(deployment(name), lambda _: None)
    for name in ("manager", "alice", "web-2"):
        wait_phase(driver, name, Phase.RUNNING)
    driver.stop("alice")
    seen = driver.observe()
    assert sorted(seen) == ["alice", "manager", "web-2"]
    assert seen["alice"].phase is Phase.STOPPED
    assert seen["manager"].phase is Phase.RUNNING


def test_start_of_an_agent_never_deployed_is_permanent(driver: KubernetesDriver) -> None:
    with pytest.raises(PermanentError, match="never deployed"):
        driver.start("ghost")
    driver.stop("ghost")  # nothing to stop: no-op
    assert driver.journal("ghost") == ""


def test_journal_reads_the_pod_log(driver: KubernetesDriver) -> None:
    driver.create(deployment("alice"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    assert "started hyperhive:latest" in driver.journal("alice", "hyperhive-agent.service", 5)
    with pytest.raises(Invalid):
        driver.journal("alice", "sshd.service")
    with pytest.raises(Invalid):
        driver.journal("alice", lines=0)
    with pytest.raises(Invalid):
        driver.journal("../x")


def test_journal_reads_are_bounded(
    driver: KubernetesDriver, standin: StandIn, runner: FakeRunner
) -> None:
    """An agent owns its log: one endless line must not fill the controller's memory."""
    from urllib.parse import parse_qs, urlsplit

    from controller.drivers.kubernetes.api import LOG_LIMIT_BYTES

    driver.create(deployment("alice"), lambda _: None)
    wait_phase(driver, "alice", Phase.RUNNING)
    pod = pod_of(driver, "alice")
    runner.containers[pod][-1].lines.append("x" * (3 * LOG_LIMIT_BYTES))
    got = driver.journal("alice", lines=5)
    assert got.startswith(f"{pod}: started") and len(got.encode()) == LOG_LIMIT_BYTES
    [(_, path)] = [r for r in standin.requests if r[1].split("?")[0].endswith("/log")][-1:]
    q = parse_qs(urlsplit(path).query)
    assert q["tailLines"] == ["5"] and q["limitBytes"] == [str(LOG_LIMIT_BYTES)]
    # a server that ignores limitBytes: the driver stops reading at the limit all the same
    standin.honour_limit_bytes = False
    assert len(driver.journal("alice", lines=5).encode()) == LOG_LIMIT_BYTES


def test_a_change_behind_our_back_is_replaced_on_apply(
    driver: KubernetesDriver, standin: StandIn
) -> None:
    """create over an existing object re-reads it and replaces it with its resourceVersion."""
    driver.create(deployment("alice", cfg="c1"), lambda _: None)
    base = names.base("alice")
    standin.patch(
        "configmaps", NS, base, {"data": {"settings.json": "{}"}}, "application/merge-patch+json"
    )
    driver.create(deployment("alice", cfg="c2"), lambda _: None)
    cm = standin.get("configmaps", NS, base)
    assert cm is not None and json.loads(cm["data"]["settings.json"])["agent"] == "alice"
    puts = [p for m, p in standin.requests if m == "PUT" and "/configmaps/" in p]
    assert puts


def test_generation_moves_with_watch_events(driver: KubernetesDriver, standin: StandIn) -> None:
    g0 = driver.generation()
    deadline = time.monotonic() + 10
    while not driver.watching:
        assert time.monotonic() < deadline, "the watch never started"
        driver.generation()
        time.sleep(0.05)
    quiet = driver.generation()
    assert driver.generation() == quiet  # no event, no change: the swarm may serve its view
    standin.create(
        "pods",
        NS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x", "labels": names.labels("alice")},
            "spec": {"containers": [{"name": "harness", "image": "i"}]},
        },
    )
    while driver.generation() == quiet:
        assert time.monotonic() < deadline, "no watch event"
        time.sleep(0.05)
    assert driver.generation() > g0


def test_login_state_follows_the_namespace_secret(
    driver: KubernetesDriver, standin: StandIn
) -> None:
    logged, why = driver.login_state("alice")
    assert logged is None and "hyperhive-anthropic" in why
    standin.create(
        "secrets",
        NS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hyperhive-anthropic"},
            "stringData": {"ANTHROPIC_API_KEY": "sk-test"},
        },
    )
    driver._login = None  # past its cache time
    assert driver.login_state("alice")[0] is True


def test_api_errors_become_transient_or_permanent(
    driver: KubernetesDriver, standin: StandIn
) -> None:
    from controller.errors import TransientError

    kind = "sandboxes" if driver.cfg.workload is Workload.SANDBOX else "statefulsets"
    standin.faults[("GET", kind)] = 500
    with pytest.raises(TransientError, match="500"):
        driver.observe()
    standin.faults[("GET", kind)] = 429
    with pytest.raises(TransientError, match="429"):
        driver.observe()
    # missing RBAC is for the operator to fix: permanent, naming the Role
    standin.faults[("POST", "secrets")] = 403
    with pytest.raises(PermanentError, match=r"role\.yaml"):
        driver.create(deployment("alice"), lambda _: None)
    driver.create(deployment("alice"), lambda _: None)  # the next try goes through
    assert "alice" in driver.observe()


def test_an_unreachable_api_server_is_transient(layout: Layout) -> None:
    from controller.config import Config
    from controller.drivers.kubernetes.api import KubeApi
    from controller.errors import TransientError
    from tests.realserve import free_port

    api = KubeApi.for_server(f"http://127.0.0.1:{free_port()}", NS, "t")
    d = KubernetesDriver(layout, Config(), api)
    with pytest.raises(TransientError):
        d.observe()
    d.close()


def test_a_driver_without_a_cluster_or_a_listener_refuses_to_start(
    layout: Layout, tmp_path: object
) -> None:
    """The controller logs the reason and exits 2 (a ConfigError is a ValueError)."""
    from dataclasses import replace
    from pathlib import Path

    from controller.config import Config, ConfigError, TcpListen
    from controller.drivers.kubernetes.settings import KubeSettings

    with pytest.raises(ConfigError, match="api:"):
        KubernetesDriver(layout, Config())
    missing = Path(str(tmp_path)) / "no-such-kubeconfig"
    cfg = Config(
        api=TcpListen("127.0.0.1", 0),
        kubernetes=replace(KubeSettings(), kubeconfig=str(missing)),
    )
    with pytest.raises(ConfigError, match="cannot load a cluster config"):
        KubernetesDriver(layout, cfg)


def test_web_upstream_is_the_pods_service_with_the_credential(
    driver: KubernetesDriver, layout: Layout
) -> None:
    from controller.dashboard.upstream import TcpUpstream

    assert driver.web_upstream("alice") == layout.agent_web_sock("alice")  # never deployed
    driver.create(deployment("alice", port=8123), lambda _: None)
    up = driver.web_upstream("alice")
    assert isinstance(up, TcpUpstream)
    assert (up.host, up.port) == ("hh-alice-agent.hyperhive.svc", 8123)
    assert up.token == layout.agent_credential("alice").read_text().strip()
    assert up.token not in repr(up)  # never in a log line


def test_a_new_image_in_the_config_is_rebuilt(
    driver: KubernetesDriver, standin: StandIn, layout: Layout
) -> None:
    """The operator moves kubernetes.image: observe reports drift, and the rebuild the plan
    asks for rolls the pod onto the new image."""
    from dataclasses import replace

    from controller.config import Config

    driver.create(deployment("alice"), lambda _: None)
    assert driver.observe()["alice"].build_digest == "b1"
    moved = KubernetesDriver(
        layout,
        Config(kubernetes=replace(driver.cfg, image="hyperhive:2")),
        driver.api,
    )
    seen = moved.observe()["alice"]
    assert seen.build_digest == "b1+image", (seen, moved.cfg.image)
    moved.rebuild(deployment("alice"), lambda _: None)
    assert moved.observe()["alice"].build_digest == "b1"
    pod = pod_of(driver, "alice")
    standin.wait_for(
        lambda: (
            (p := standin.objects.get(("pods", NS, pod))) is not None
            and p["spec"]["containers"][0]["image"] == "hyperhive:2"
        )
    )
