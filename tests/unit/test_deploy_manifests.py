"""Deployment files: every Kubernetes manifest validates offline, the compose file is sane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.gateway.limits import parse_networks

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.35.0"
SERVICES = ("gateway", "asr", "agent", "tts")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [
            (f"{path.relative_to(ROOT)}:{d['kind']}/{d['metadata']['name']}", d)
            for d in _docs(path)
        ]
    return out


MANIFESTS = _all_manifests()


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=[n for n, _ in MANIFESTS])
def test_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        # CRD: no schema ships offline; check what KEDA requires.
        assert doc["kind"] == "ScaledObject"
        assert doc["spec"]["scaleTargetRef"]["name"] in SERVICES
        assert doc["spec"]["triggers"]
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_existing_files() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).exists(), res


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in MANIFESTS if d["kind"] == "Deployment"}


def test_every_service_has_a_probed_bounded_deployment() -> None:
    deps = _deployments()
    assert set(SERVICES) <= set(deps)
    for name in SERVICES:
        pod = deps[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["voiceagent", name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        # Liveness must not fail while draining, or the kubelet kills live calls.
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_gateway_drains_and_carries_websockets() -> None:
    gw = _deployments()["gateway"]["spec"]["template"]["spec"]
    assert gw["terminationGracePeriodSeconds"] >= 600
    ingress = next(d for _, d in MANIFESTS if d["kind"] == "Ingress")
    assert (
        int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
        >= 900
    )


def test_workers_autoscale_and_have_disruption_budgets() -> None:
    kinds = {
        (d["kind"], d.get("spec", {}).get("scaleTargetRef", {}).get("name")) for _, d in MANIFESTS
    }
    pdbs = {d["metadata"]["name"] for _, d in MANIFESTS if d["kind"] == "PodDisruptionBudget"}
    for name in ("asr", "agent", "tts"):
        assert ("HorizontalPodAutoscaler", name) in kinds
    assert set(SERVICES) <= pdbs


def test_helm_values_turn_jetstream_on() -> None:
    nats = yaml.safe_load((ROOT / "deploy" / "helm" / "nats-values.yaml").read_text())
    assert nats["config"]["jetstream"]["enabled"] is True
    assert yaml.safe_load((ROOT / "deploy" / "helm" / "redis-values.yaml").read_text())


NATS_AUTH = ROOT / "deploy" / "nats" / "auth.conf"


def test_helm_nats_has_the_shipped_users_and_their_passwords() -> None:
    nats = yaml.safe_load((ROOT / "deploy" / "helm" / "nats-values.yaml").read_text())
    auth = NATS_AUTH.read_text()
    # The chart includes a verbatim copy of the file the integration test proves.
    assert nats["config"]["merge"]["00$include"] == "auth.conf"
    assert nats["configMap"]["merge"]["data"]["auth.conf"] == auth
    env = nats["container"]["env"]
    for user in (*SERVICES, "operator"):
        var = f"{user.upper()}_NATS_PASSWORD"
        assert f"${var}" in auth
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "voiceagent-nats", "key": user}


def test_every_service_connects_as_its_own_nats_user() -> None:
    auth = NATS_AUTH.read_text()
    for name, dep in _deployments().items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["NATS_USER"]["value"] == name
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "voiceagent-nats",
            "key": name,
        }
        assert env["NATS_INBOX_PREFIX"]["value"] == f"_INBOX_{name}"
        assert f"user: {name}\n" in auth and f'"_INBOX_{name}.>"' in auth


def test_compose_runs_the_stack_with_jetstream() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"nats", "redis", *SERVICES} <= set(services)
    assert "-js" in services["nats"]["command"]
    for name in SERVICES:
        assert services[name]["command"] == ["voiceagent", name]
        assert "nats://nats:4222" in str(services[name]["environment"])
    assert services["ngrok"]["profiles"] == ["ngrok"]


def test_dockerfile_runs_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "\nUSER " in text and "USER root" not in text


def test_the_ingress_exposes_only_twilios_paths_and_trusts_only_itself() -> None:
    ingress = next(d for _, d in MANIFESTS if d["kind"] == "Ingress")
    paths = [
        (p["path"], p["pathType"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]
    assert sorted(paths) == [("/twilio-stream", "Exact"), ("/voice", "Exact")]
    (container,) = _deployments()["gateway"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRUSTED_PROXIES"], "behind the ingress, every caller would share one address"
    parse_networks(env["TRUSTED_PROXIES"])  # a valid CIDR list


def test_recordings_have_a_writable_volume_under_a_read_only_root() -> None:
    pod = _deployments()["gateway"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = mounts[env["RECORDING_DIR"]]
    (spec,) = [v for v in pod["volumes"] if v["name"] == volume]
    assert "emptyDir" in spec or "persistentVolumeClaim" in spec
    assert not any(m.get("readOnly") for m in container["volumeMounts"] if m["name"] == volume)
