"""Deployment files: every Kubernetes manifest validates offline, the compose file is sane."""

from __future__ import annotations

import re
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


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def test_compose_runs_the_stack_with_jetstream() -> None:
    services = _compose()["services"]
    assert {"nats", "redis", *SERVICES} <= set(services)
    assert "jetstream {" in (ROOT / "deploy" / "nats" / "nats-server.conf").read_text()
    for name in SERVICES:
        assert services[name]["command"] == ["voiceagent", name]
        assert services[name]["environment"]["NATS_URL"] == "nats://nats:4222"
    assert services["ngrok"]["profiles"] == ["ngrok"]


def test_compose_nats_runs_the_shipped_config_with_one_user_per_service() -> None:
    services = _compose()["services"]
    nats = services["nats"]
    # The file tests/integration/test_security_nats.py proves, mounted where -c points.
    assert nats["command"][:2] == ["-c", "/etc/nats/nats-server.conf"]
    assert "./deploy/nats:/etc/nats:ro" in nats["volumes"]
    assert "include ./auth.conf" in (ROOT / "deploy" / "nats" / "nats-server.conf").read_text()
    # The server reads every password from nats.env and refuses to start without it.
    assert nats["env_file"] == [{"path": "nats.env", "required": True}]
    assert "nats.env" in (ROOT / ".gitignore").read_text().split()
    auth = NATS_AUTH.read_text()
    for name in SERVICES:
        env = services[name]["environment"]
        var = f"{name.upper()}_NATS_PASSWORD"
        assert env["NATS_USER"] == name and f"user: {name}\n" in auth
        assert f"password: ${var}\n" in auth
        # Its own password only, interpolated (compose stops when it is missing), never the file.
        assert env["NATS_PASSWORD"].startswith("${" + var + ":?")
        assert env["NATS_INBOX_PREFIX"] == f"_INBOX_{name}"
        env_files = services[name].get("env_file", [])
        assert all("nats.env" not in str(f) for f in env_files)


def test_compose_publishes_ports_on_loopback_only_and_no_inspector() -> None:
    services = _compose()["services"]
    published = [(name, p) for name, svc in services.items() for p in svc.get("ports", [])]
    assert published  # the gateway, NATS monitoring, the tunnel's status page
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)
    # ngrok's inspector records webhook bodies and signatures: off unless asked for.
    command = services["ngrok"]["command"]
    assert "--inspect=${NGROK_INSPECT:-false}" in command


def _policies() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in MANIFESTS if d["kind"] == "NetworkPolicy"}


def _peers_and_ports(rules: list[dict[str, Any]], side: str) -> set[tuple[str, str]]:
    """(namespace or CIDR, port) pairs a list of ingress/egress rules allows."""
    out = set()
    for rule in rules:
        assert rule.get(side), f"a rule without '{side}' allows every peer: {rule}"
        assert rule.get("ports"), f"a rule without ports allows every port: {rule}"
        for peer in rule[side]:
            ns = peer.get("namespaceSelector", {}).get("matchLabels", {})
            where = ns.get("kubernetes.io/metadata.name") or peer.get("ipBlock", {}).get("cidr")
            assert where, peer
            out |= {(where, str(p["port"])) for p in rule["ports"]}
    return out


def test_every_pod_is_fenced_by_network_policies() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kust["resources"]
    policies = _policies()
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    deps = _deployments()
    allowed: dict[str, tuple[set[tuple[str, str]], set[tuple[str, str]]]] = {}
    for name in SERVICES:
        labels = deps[name]["spec"]["template"]["metadata"]["labels"]
        mine = [
            p
            for p in policies.values()
            if p["spec"]["podSelector"]
            and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert [p["metadata"]["name"] for p in mine] == [name]
        spec = mine[0]["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        allowed[name] = (
            _peers_and_ports(spec["ingress"], "from"),
            _peers_and_ports(spec["egress"], "to"),
        )
    for name, (ingress, egress) in allowed.items():
        assert {("kube-system", "53"), ("nats", "4222")} <= egress, name
        assert ("redis", "6379") in egress if name != "asr" else ("redis", "6379") not in egress
        # Only the gateway takes traffic from the ingress controller; Prometheus scrapes all.
        assert any(ns == "ingress-nginx" for ns, _ in ingress) == (name == "gateway")
        assert ("monitoring", "http" if name == "gateway" else "metrics") in ingress
    # Outside the cluster: HTTPS only, never the cloud metadata address or private ranges.
    for policy in policies.values():
        for rule in policy["spec"].get("egress", []):
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    assert "169.254.0.0/16" in peer["ipBlock"]["except"]
                    assert "10.0.0.0/8" in peer["ipBlock"]["except"]
                    assert [p["port"] for p in rule["ports"]] == [443]


REDIS_ACL = ROOT / "deploy" / "redis" / "users.acl.template"


def _acl_users() -> dict[str, list[str]]:
    lines = [x for x in REDIS_ACL.read_text().splitlines() if x and not x.startswith("#")]
    users = {}
    for line in lines:
        word, name, *rules = line.split()
        assert word == "user"
        users[name] = rules
    return users


def _key_rules(rules: list[str]) -> list[str]:
    return [r for r in rules if r.startswith(("~", "%"))]


def test_redis_acl_covers_every_key_kind_and_fences_tts_off_histories() -> None:
    users = _acl_users()
    assert users["default"] == ["off"]
    agent_src = "".join(p.read_text() for p in (ROOT / "services" / "agent").rglob("*.py"))
    from shared import callstate

    kinds = set(re.findall(r"call_key\(\s*[\"'](\w+)[\"']", agent_src))
    # Kinds named by callstate's constants (``from shared.callstate import VERIFIED`` or
    # ``callstate.VERIFIED``) count too.
    names = set(re.findall(r"callstate\.([A-Z_]+)\b", agent_src))
    for imported in re.findall(r"from shared\.callstate import ([A-Z_, ]+)", agent_src):
        names |= {n.strip() for n in imported.split(",")}
    kinds |= {getattr(callstate, n) for n in names if n != "KEY_PREFIX"}
    # ... and module constants (``OUTBOUND = "obctx"`` ... ``call_key(OUTBOUND, ...)``).
    for const in set(re.findall(r"call_key\(\s*([A-Z_]+)\s*,", agent_src)) - names:
        kinds |= set(re.findall(rf"^{const} = \"(\w+)\"", agent_src, re.M))
    assert {"hist", "heard", "lease", "appt"} <= kinds  # the scan finds what it should
    assert {f"~va:{k}:*" for k in kinds} <= set(_key_rules(users["agent"])), kinds
    from services.tts.prompt_cache import KEY_PREFIX as TTS_PREFIX

    assert TTS_PREFIX.startswith("va:tts:") and _key_rules(users["tts"]) == ["~va:tts:*"]
    gateway = _key_rules(users["gateway"])
    assert "~va:tok:*" in gateway and f"~va:{callstate.ADMITTED}:*" in gateway
    from services.gateway.dial_guards import DNC_KEY
    from services.gateway.outbound_records import KIND as OUTBOUND_KIND

    assert f"~va:{OUTBOUND_KIND}:*" in gateway and f"%R~{DNC_KEY}" in gateway
    for kind in (callstate.HISTORY, callstate.HEARD):  # read for the transcript export only
        assert f"%R~va:{kind}:*" in gateway and f"~va:{kind}:*" not in gateway
    for name in ("agent", "gateway", "tts"):
        assert f">${{{name.upper()}_REDIS_PASSWORD}}" in users[name]
        assert users[name][0] == "on" and "-@all" in users[name]
    redis_conf = (ROOT / "deploy" / "redis" / "redis.conf").read_text().splitlines()
    assert "port 0" in redis_conf and "tls-port 6379" in redis_conf  # TLS only


def test_helm_values_ship_tls_encryption_at_rest_and_the_redis_users() -> None:
    nats = yaml.safe_load((ROOT / "deploy" / "helm" / "nats-values.yaml").read_text())
    config = nats["config"]
    assert config["nats"]["tls"]["enabled"] and config["cluster"]["tls"]["enabled"]
    assert config["cluster"]["tls"]["merge"]["verify"] is True  # routes: mutual TLS
    assert config["jetstream"]["merge"]["cipher"] == "chachapoly"
    assert config["jetstream"]["merge"]["key"] == "<< $NATS_JS_KEY >>"
    assert nats["container"]["env"]["NATS_JS_KEY"]["valueFrom"]["secretKeyRef"]["name"]
    redis = yaml.safe_load((ROOT / "deploy" / "helm" / "redis-values.yaml").read_text())
    assert redis["tls"]["enabled"] is True and redis["networkPolicy"]["allowExternal"] is False
    # The chart's users are the template's, rule for rule.
    shipped = _acl_users()
    chart = {u["username"]: u for u in redis["auth"]["acl"]["users"]}
    assert set(chart) == set(shipped) - {"default"}
    for name, user in chart.items():
        rules = [r for r in shipped[name] if not r.startswith(">")]
        mine = [user["enabled"], user["channels"], *user["keys"].split(), *user["commands"].split()]
        assert sorted(mine) == sorted(rules), name


def _kustomized_deployments() -> dict[str, dict[str, Any]]:
    """The Deployments after kustomization.yaml's JSON patches (only ``add``, as it uses)."""
    import copy

    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    deps = copy.deepcopy(_deployments())
    for entry in kust.get("patches", []):
        target = entry["target"]
        assert target["kind"] == "Deployment"
        selected = [
            d
            for d in deps.values()
            if d["metadata"]["name"] == target.get("name", d["metadata"]["name"])
            and all(
                d["metadata"]["labels"].get(k) == v
                for k, v in (
                    pair.split("=") for pair in filter(None, [target.get("labelSelector")])
                )
            )
        ]
        assert selected, target
        for dep in selected:
            for op in yaml.safe_load(entry["patch"]):
                assert op["op"] == "add" and op["path"].endswith("/-"), op
                node: Any = dep
                for part in op["path"].strip("/").split("/")[:-1]:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                node.append(op["value"])
    return deps


def test_services_reach_nats_and_redis_over_tls_as_their_own_users() -> None:
    config = next(d for _, d in MANIFESTS if d["kind"] == "ConfigMap")["data"]
    assert config["NATS_URL"].startswith("tls://")
    assert config["REDIS_URL"] == ""  # each Redis user's URL comes from its own Secret key
    for name, dep in _kustomized_deployments().items():
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        ca_dir = str(Path(config["NATS_TLS_CA_FILE"]).parent)
        assert mounts[ca_dir]["readOnly"] is True, name
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[ca_dir]["name"])
        assert volume["secret"]["secretName"] == "voiceagent-tls"
        env = {e["name"]: e for e in container["env"]}
        if name == "asr":
            assert "REDIS_URL" not in env  # no Redis user for ASR
        else:
            ref = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "voiceagent-redis", "key": name}
            assert name in _acl_users()


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
