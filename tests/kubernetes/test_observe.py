"""observe.py: phases from workloads and pods (pure), for the states a cluster reports."""

from __future__ import annotations

from typing import Any

from controller.drivers.kubernetes import names
from controller.drivers.kubernetes.observe import NOT_BUILT, observe_all, pod_phase
from controller.model import Phase

BASE = names.base("alice")


def sts(replicas: int = 1, uid: str = "u1", **ann: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": BASE,
            "uid": uid,
            "annotations": {
                names.ANN_AGENT: "alice",
                names.ANN_COMMIT: "c0",
                names.ANN_CONFIG: "cfg",
                names.ANN_BUILD: "b",
                names.ANN_VERSION: "",
                names.ANN_DEPLOYED_AT: "2026-12-07T21:00:00Z",
                names.ANN_HAS_NIX: "false",
                **ann,
            },
        },
        "spec": {"replicas": replicas},
    }


def pod(
    state: dict[str, Any] | None = None,
    phase: str = "Running",
    owner: str = "u1",
    **extra: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, **extra}
    if state is not None:
        status["containerStatuses"] = [
            {
                "name": "harness",
                "image": "hyperhive:1",
                "ready": "running" in state,
                "restartCount": 2,
                "state": state,
                "lastState": {
                    "terminated": {"exitCode": 137, "finishedAt": "2026-12-07T21:05:00Z"}
                },
            }
        ]
    return {
        "metadata": {"name": f"{BASE}-0", "ownerReferences": [{"uid": owner}]},
        "status": status,
    }


def test_running_with_its_marker() -> None:
    seen = observe_all(
        [sts(**{names.ANN_HAS_NIX: "true"})],
        [pod({"running": {"startedAt": "2026-12-07T21:06:00Z"}})],
    )
    a = seen["alice"]
    assert a.phase is Phase.RUNNING
    assert (a.commit, a.config_digest, a.build_digest, a.hyperhive_version) == (
        "c0",
        "cfg",
        "b",
        None,
    )
    assert a.since == 1796677560.0
    assert "running (ready); restarts 2, last exit code 137" in a.detail
    assert "image hyperhive:1" in a.detail and NOT_BUILT in a.detail


def test_reasons_that_need_someone_are_failed() -> None:
    for reason in (
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
    ):
        seen = observe_all([sts()], [pod({"waiting": {"reason": reason, "message": "m"}})])
        assert seen["alice"].phase is Phase.FAILED, reason
        assert f"{reason} (m)" in seen["alice"].detail
    # waiting to be created is starting, not failed
    starting = observe_all([sts()], [pod({"waiting": {"reason": "ContainerCreating"}})])
    assert starting["alice"].phase is Phase.RUNNING


def test_a_failed_or_finished_pod_is_failed() -> None:
    for phase in ("Failed", "Succeeded"):
        seen = observe_all([sts()], [pod(None, phase=phase, reason="Evicted")])
        assert seen["alice"].phase is Phase.FAILED
        assert "Evicted" in seen["alice"].detail


def test_pending_and_unschedulable_count_as_starting() -> None:
    cond = [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"}]
    seen = observe_all([sts()], [pod(None, phase="Pending", conditions=cond)])
    assert seen["alice"].phase is Phase.RUNNING
    assert "pending: 0/3 nodes are available" in seen["alice"].detail
    assert observe_all([sts()], [])["alice"].detail.startswith("waiting for pod")


def test_stopped_and_terminating() -> None:
    seen = observe_all([sts(replicas=0)], [pod({"running": {}})])
    assert seen["alice"].phase is Phase.STOPPED
    assert "scaled to zero; pod hh-alice-agent-0 is terminating" in seen["alice"].detail
    leaving = pod({"running": {}})
    leaving["metadata"]["deletionTimestamp"] = "2026-12-07T21:07:00Z"
    phase, detail, _ = pod_phase(leaving)
    assert phase is Phase.RUNNING and "being replaced" in detail


def test_a_pod_of_an_earlier_incarnation_is_not_ours() -> None:
    seen = observe_all(
        [sts(uid="new")], [pod({"waiting": {"reason": "CrashLoopBackOff"}}, owner="old")]
    )
    assert seen["alice"].phase is Phase.RUNNING
    assert "waiting for pod" in seen["alice"].detail


def test_objects_that_are_not_agents_are_ignored() -> None:
    other = sts()
    other["metadata"]["name"] = "postgres"
    forged = sts()
    forged["metadata"]["annotations"][names.ANN_AGENT] = "bob"
    assert observe_all([other, forged], []) == {}


def test_a_workload_on_another_image_is_drift() -> None:
    w = sts()
    w["spec"]["template"] = {
        "spec": {"containers": [{"name": "harness", "image": "hyperhive:old"}]}
    }
    same = observe_all([w], [], image="hyperhive:old")["alice"]
    assert same.build_digest == "b"
    moved = observe_all([w], [], image="hyperhive:new")["alice"]
    assert moved.build_digest == "b+image"  # no desired state has it: the plan rebuilds
    assert "deployed with image hyperhive:old, the config says hyperhive:new" in moved.detail
