"""The shipped NATS cluster: config file, Helm values and the services' settings agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONF = (ROOT / "deploy" / "nats" / "cluster.conf").read_text()
HELM = yaml.safe_load((ROOT / "deploy" / "helm" / "nats-values.yaml").read_text())
CONFIGMAP = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())


def _code(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_cluster_conf_has_authenticated_routes_jetstream_and_the_service_users() -> None:
    code = _code(CONF)
    assert re.search(r"cluster\s*{[^}]*authorization\s*{\s*user:\s*route", code)
    assert "password: $NATS_ROUTE_PASSWORD" in code
    assert "listen: $NATS_CLUSTER_LISTEN" in code  # not a -cluster flag: it drops the auth
    assert re.findall(r"\$NATS_ROUTE_\d", code) == [
        "$NATS_ROUTE_1",
        "$NATS_ROUTE_2",
        "$NATS_ROUTE_3",
    ]
    assert re.search(r"jetstream\s*{\s*store_dir:", code)
    assert "server_name: $NATS_SERVER_NAME" in code  # JetStream clusters need unique names
    assert re.search(r"^include \./auth\.conf$", code, re.M)


def test_helm_runs_the_same_three_node_cluster() -> None:
    cluster = HELM["config"]["cluster"]
    assert cluster["enabled"] is True and cluster["replicas"] == 3
    assert cluster["routeURLs"]["user"] == "route"
    assert "password" not in cluster["routeURLs"]  # given at install time, never committed
    assert HELM["config"]["jetstream"]["enabled"] is True
    assert HELM["config"]["merge"]["00$include"] == "auth.conf"


def test_services_list_every_node_and_replicate_streams_on_all() -> None:
    data = CONFIGMAP["data"]
    s = Settings(_env_file=None, nats_url=data["NATS_URL"])
    assert len(s.nats_servers) == HELM["config"]["cluster"]["replicas"]
    assert int(data["JETSTREAM_REPLICAS"]) == HELM["config"]["cluster"]["replicas"]
