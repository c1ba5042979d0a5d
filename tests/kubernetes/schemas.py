"""Validation of rendered objects: the Kubernetes OpenAPI schemas (``kubernetes-validate``)
and, for ``Sandbox``, the agent-sandbox CRD pinned under deploy/kubernetes/vendor/."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_CRD = ROOT / "deploy/kubernetes/vendor/agent-sandbox/agents.x-k8s.io_sandboxes.yaml"
K8S_VERSIONS = ("1.31.0", "1.35.0")
"""The Kubernetes versions docs/kubernetes.md names: every object must be valid in both."""


def _strict(schema: Any) -> Any:
    """The CRD schema with ``additionalProperties: false`` wherever it lists properties and
    does not keep unknown fields: an API server prunes unknown fields silently, so a
    misspelled field would be lost there; here it fails."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def sandbox_schema(version: str = "v1beta1") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` of the pinned Sandbox CRD, made strict."""
    crd = yaml.safe_load(SANDBOX_CRD.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = dict(_strict(v["schema"]["openAPIV3Schema"]))
            # metadata is the API server's ObjectMeta: the CRD leaves it open
            schema["properties"]["metadata"] = {"type": "object"}
            return schema
    raise KeyError(version)


def validate(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not a valid object of its kind (every version in ``K8S_VERSIONS``)."""
    if obj["kind"] == "Sandbox":
        assert obj["apiVersion"] == "agents.x-k8s.io/v1beta1"
        jsonschema.validate(obj, sandbox_schema("v1beta1"))
        # its pod template is a core PodTemplateSpec: validate it as one too
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": obj["metadata"]["name"]},
            "template": obj["spec"]["podTemplate"],
        }
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(template, version, strict=True)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
