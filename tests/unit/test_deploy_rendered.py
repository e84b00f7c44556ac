"""What ``kubectl apply -k deploy/k8s`` applies, rendered here as kustomize would, validated
with the real Kubernetes schemas (``kubernetes-validate``); the gateway scales on the calls it
reports; grace periods and disruption budgets fit the services' drain times.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from services.agent import worker as agent_worker
from services.gateway import runtime as gateway_runtime
from services.tts import worker as tts_worker
from shared.metrics import ACTIVE_CALLS
from shared.settings import Settings
from tests.gatewayserver import serve_gateway
from voiceagent.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.35.0"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
SHUTDOWN_MARGIN_S = 5  # process exit after the drain: flush logs, close the bus


def render(*, image: str | None = None) -> list[dict[str, Any]]:
    """The kustomization's resources with its namespace and image transformers applied
    (``image``: what ``kustomize edit set image voiceagent=<image>`` would set)."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    images = copy.deepcopy(kust.get("images", []))
    if image is not None:
        name, _, tag = image.rpartition(":")
        for entry in images:
            if entry["name"] == "voiceagent":
                entry.update(newName=name, newTag=tag)
    out = []
    for res in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / res).read_text()):
            if not doc:
                continue
            if doc["kind"] not in CLUSTER_SCOPED and "namespace" in kust:
                doc["metadata"]["namespace"] = kust["namespace"]
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("containers", []):
                base, _, tag = c["image"].partition(":")
                for entry in images:
                    if entry["name"] == base:
                        c["image"] = f"{entry.get('newName', base)}:{entry.get('newTag', tag)}"
            out.append(doc)
    return out


RENDERED = render(image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/voiceagent:abc123")
BY_KIND: dict[tuple[str, str], dict[str, Any]] = {
    (d["kind"], d["metadata"]["name"]): d for d in RENDERED
}


@pytest.mark.parametrize(
    "doc", RENDERED, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in RENDERED]
)
def test_rendered_object_is_valid(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == "voiceagent"


def test_the_new_tag_reaches_every_deployment() -> None:
    deployments = [d for d in RENDERED if d["kind"] == "Deployment"]
    assert len(deployments) == 4
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["image"] == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/voiceagent:abc123"


def _configmap() -> dict[str, str]:
    data: dict[str, str] = BY_KIND[("ConfigMap", "voiceagent")]["data"]
    return data


def _setting(name: str) -> float:
    """What the pods get for ``name``: the ConfigMap's value, else the default (never this
    process's environment, which other tests may have changed)."""
    raw = _configmap().get(name.upper())
    return float(raw if raw is not None else Settings.model_fields[name].default)


def test_gateway_scales_on_the_active_calls_it_exports() -> None:
    hpa = BY_KIND[("HorizontalPodAutoscaler", "gateway-hpa")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"  # not CPU
    assert metric["pods"]["metric"]["name"] == ACTIVE_CALLS._name
    assert metric["pods"]["metric"]["selector"]["matchLabels"] == {"service": "gateway"}
    per_pod = float(metric["pods"]["target"]["averageValue"])
    assert 0 < per_pod < _setting("max_calls")  # scale before the gateway refuses calls

    keda = [d for d in yaml.safe_load_all((K8S / "optional" / "keda.yaml").read_text()) if d]
    (gw,) = [d for d in keda if d["spec"]["scaleTargetRef"]["name"] == "gateway"]
    (trigger,) = gw["spec"]["triggers"]
    assert trigger["metadata"]["query"] == f'sum({ACTIVE_CALLS._name}{{service="gateway"}})'
    assert float(trigger["metadata"]["threshold"]) == per_pod


async def test_the_gateway_serves_that_metric() -> None:
    port = free_port()
    s = Settings(  # type: ignore[call-arg]
        _env_file=None,
        public_url=f"http://127.0.0.1:{port}",
        twilio_auth_token="t" * 32,
        nats_url=f"nats://127.0.0.1:{free_port()}",  # none: /metrics does not need the bus
    )
    async with serve_gateway(s, port=port, use_vad=False) as gw:
        async with httpx.AsyncClient(trust_env=False) as client:
            text = (await client.get(f"{gw.base}/metrics")).text
    assert f'{ACTIVE_CALLS._name}{{service="gateway"}}' in text


def _pod(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = BY_KIND[("Deployment", name)]["spec"]["template"]["spec"]
    return spec


def _pre_stop_s(name: str) -> float:
    (c,) = _pod(name)["containers"]
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(cmd[1]) if cmd[:1] == ["sleep"] else 0.0


def test_grace_periods_cover_the_drain_times_in_settings() -> None:
    drains = {
        # SIGTERM: refuse new calls, let live ones end (DRAIN_GRACE_S), then CallEnded out.
        "gateway": _setting("drain_grace_s") + gateway_runtime.END_WAIT_S,
        "asr": _setting("asr_drain_s"),
        "agent": agent_worker.DRAIN_TIMEOUT_S,
        "tts": tts_worker.DRAIN_TIMEOUT_S,
    }
    for name, drain in drains.items():
        grace = _pod(name)["terminationGracePeriodSeconds"]
        need = _pre_stop_s(name) + drain + SHUTDOWN_MARGIN_S
        assert grace >= need, f"{name}: grace {grace} s < {need} s (preStop + drain + exit)"


def test_disruption_budgets_let_one_pod_drain_at_a_time_and_never_block() -> None:
    for name in ("gateway", "asr", "agent", "tts"):
        labels = BY_KIND[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        pdbs = [
            d
            for d in RENDERED
            if d["kind"] == "PodDisruptionBudget"
            and d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(pdbs) == 1, f"{name}: {len(pdbs)} PDBs"
        spec = pdbs[0]["spec"]
        hpa = next(
            d
            for d in RENDERED
            if d["kind"] == "HorizontalPodAutoscaler"
            and d["spec"]["scaleTargetRef"]["name"] == name
        )
        least = hpa["spec"]["minReplicas"]
        if "maxUnavailable" in spec:
            assert spec["maxUnavailable"] == 1
        else:
            # At the fewest replicas exactly one may go: a node drain never waits forever,
            # and never takes two gateways' calls at once.
            assert spec["minAvailable"] == least - 1 >= 1, (name, spec, least)
