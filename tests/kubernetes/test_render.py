"""The kubernetes runtime's objects: valid for the API server, and what they say."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import jsonschema
import kubernetes_validate
import pytest

from controller.drivers.kubernetes import names
from controller.drivers.kubernetes.render import render_agent
from controller.drivers.kubernetes.settings import EgressRule, KubeSettings, Workload
from tests.kubernetes.helpers import deployment
from tests.kubernetes.schemas import validate

BASE = KubeSettings()
VARIANTS = {
    "statefulset": BASE,
    "sandbox": replace(BASE, workload=Workload.SANDBOX),
    "configured": replace(
        BASE,
        namespace="team-a",
        storage_class="fast",
        runtime_class="gvisor",
        messages_api=(EgressRule("10.9.0.0/16", 3128),),
        controller_labels=(("app", "hh"),),
        api_url="https://hh.team-a.svc:8443",
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("agent", ["manager", "alice", "web-2"])
@pytest.mark.parametrize("running", [True, False])
def test_every_object_is_valid(variant: str, agent: str, running: bool) -> None:
    objs = render_agent(
        deployment(agent), "s3cret", VARIANTS[variant], 1_800_000_000.0, running=running
    )
    kinds = [o["kind"] for o in objs.all()]
    assert kinds[:3] == ["PersistentVolumeClaim", "Secret", "ConfigMap"]
    for obj in objs.all():
        validate(obj)


def test_a_misspelled_field_fails_validation() -> None:
    """The validation is not vacuous: a wrong field or type is refused, for both schemas."""
    objs = render_agent(deployment("alice"), "s", BASE, 0.0)
    bad = json.loads(json.dumps(objs.workload))
    bad["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    sandbox = render_agent(deployment("alice"), "s", VARIANTS["sandbox"], 0.0).workload
    sandbox["spec"]["operatingMode"] = "Paused"
    with pytest.raises(jsonschema.ValidationError):
        validate(sandbox)
    sandbox["spec"]["operatingMode"] = "Running"
    sandbox["spec"]["podTemplate"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(sandbox)


def test_names_read_back() -> None:
    assert names.base("web-2") == "hh-web-2-agent"
    assert names.agent_of("hh-web-2-agent") == "web-2"
    assert names.agent_of(names.base("manager")) == "manager"
    assert names.agent_of("hh-operator-agent") is None
    assert names.agent_of("other") is None


def test_marker_and_settings() -> None:
    d = deployment("alice", cfg="c9", commit="c0ffee", build="b7")
    objs = render_agent(d, "tok", BASE, 1_800_000_000.0)
    ann = objs.workload["metadata"]["annotations"]
    assert ann[names.ANN_COMMIT] == "c0ffee"
    assert ann[names.ANN_CONFIG] == "c9"
    assert ann[names.ANN_BUILD] == "b7"
    assert ann[names.ANN_WEB_PORT] == "8123"
    assert ann[names.ANN_DEPLOYED_AT] == "2027-01-15T08:00:00Z"
    # the pod says what it runs, and a restart stamp rolls it
    tmpl = objs.workload["spec"]["template"]["metadata"]["annotations"]
    assert tmpl[names.ANN_COMMIT] == "c0ffee"
    assert names.ANN_RESTARTED_AT in tmpl
    assert base64.b64decode(objs.secret["data"]["credential"]) == b"tok"
    assert json.loads(objs.configmap["data"]["settings.json"]) == d.settings
    assert objs.workload["spec"]["replicas"] == 1
    stopped = render_agent(d, "tok", BASE, 0.0, running=False)
    assert stopped.workload["spec"]["replicas"] == 0
    sandbox = render_agent(d, "tok", VARIANTS["sandbox"], 0.0, running=False)
    assert sandbox.service is None
    assert sandbox.workload["spec"]["operatingMode"] == "Suspended"


def test_network_policy_denies_by_default() -> None:
    cfg = VARIANTS["configured"]
    pol = render_agent(deployment("alice"), "s", cfg, 0.0).network_policy["spec"]
    assert pol["policyTypes"] == ["Ingress", "Egress"]
    assert pol["podSelector"] == {"matchLabels": {names.INSTANCE: "hh-alice-agent"}}
    (ingress,) = pol["ingress"]
    assert ingress["from"] == [{"podSelector": {"matchLabels": {"app": "hh"}}}]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8123}]
    to_controller, dns, proxy = pol["egress"]
    assert to_controller["ports"] == [{"protocol": "TCP", "port": 8443}]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert proxy == {
        "to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": 3128}],
    }


def test_pod_is_locked_down() -> None:
    spec = render_agent(deployment("alice"), "s", VARIANTS["configured"], 0.0).workload["spec"]
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["runtimeClassName"] == "gvisor"
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HYPERHIVE_API_URL"] == "https://hh.team-a.svc:8443"
    assert env["HYPERHIVE_CREDENTIAL_FILE"] == "/etc/hyperhive/credential/credential"
    assert "HYPERHIVE_META_DIR" not in env
    assert env["HYPERHIVE_WEB_ALLOWED_HOSTS"].split(",") == [
        "hh-alice-agent",
        "hh-alice-agent.team-a.svc",
        "hh-alice-agent.team-a.svc.cluster.local",
        "hh-alice-agent-0.hh-alice-agent.team-a.svc",
    ]
    # no subPath (kubelet would make a missing one root-owned): the init container makes the
    # directories the environment names, as the pod's uid
    assert all("subPath" not in m for m in c["volumeMounts"])
    (prep,) = pod["initContainers"]
    made = set(prep["command"][4:])
    assert prep["command"][:4] == ["mkdir", "-p", "-m", "0700"]
    assert {env["HYPERHIVE_STATE_DIR"], env["CLAUDE_CONFIG_DIR"], env["HOME"]} <= made
    assert c["workingDir"] in made
    mgr = render_agent(deployment("manager"), "s", BASE, 0.0).workload["spec"]["template"]["spec"]
    menv = {e["name"]: e["value"] for e in mgr["containers"][0]["env"]}
    assert menv["HYPERHIVE_META_DIR"] == "/var/lib/hyperhive/meta"
    assert menv["HYPERHIVE_META_DIR"] in mgr["initContainers"][0]["command"]


def test_the_config_section_is_read_and_checked(tmp_path: object) -> None:
    from pathlib import Path

    from controller.config import ConfigError, Runtime, load_config

    p = Path(str(tmp_path)) / "c.yaml"
    p.write_text(
        "runtime: kubernetes\n"
        "kubernetes:\n"
        "  namespace: team-a\n"
        "  image: registry.local/hyperhive-agent:0.1.0\n"
        "  workload: sandbox\n"
        "  controller_labels: {app: hh}\n"
        "  messages_api: [{cidr: 10.0.0.0/8, port: 3128}]\n"
    )
    cfg = load_config(p)
    assert cfg.resolved_runtime() is Runtime.KUBERNETES
    k = cfg.kubernetes
    assert (k.namespace, k.workload, k.image) == (
        "team-a",
        Workload.SANDBOX,
        "registry.local/hyperhive-agent:0.1.0",
    )
    assert k.controller_labels == (("app", "hh"),)
    assert k.messages_api == (EgressRule("10.0.0.0/8", 3128),)
    p.write_text("runtime: kubernetes\nkubernetes:\n  workload: deployment\n")
    with pytest.raises(ConfigError, match="workload"):
        load_config(p)


def test_the_manager_reaches_meta_git_for_its_clone() -> None:
    """The manager's pod gets ``HYPERHIVE_META_URL`` and egress to meta.git's port; other
    agents get neither; ``meta_url: null`` gives the manager neither either."""
    mgr = render_agent(deployment("manager"), "s", BASE, 0.0)
    c = mgr.workload["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HYPERHIVE_META_URL"] == "http://hyperhive-controller.hyperhive.svc:7200/meta.git"
    ports = mgr.network_policy["spec"]["egress"][0]["ports"]
    assert ports == [{"protocol": "TCP", "port": 7100}, {"protocol": "TCP", "port": 7200}]
    alice = render_agent(deployment("alice"), "s", BASE, 0.0)
    c = alice.workload["spec"]["template"]["spec"]["containers"][0]
    assert "HYPERHIVE_META_URL" not in {e["name"] for e in c["env"]}
    assert alice.network_policy["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 7100}]
    off = render_agent(deployment("manager"), "s", replace(BASE, meta_url=None), 0.0)
    c = off.workload["spec"]["template"]["spec"]["containers"][0]
    assert "HYPERHIVE_META_URL" not in {e["name"] for e in c["env"]}
    assert off.network_policy["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 7100}]
