"""NATS_URL as one URL or a cluster's comma-separated list, everywhere it is read."""

from __future__ import annotations

import pytest

from shared.settings import Settings, nats_servers
from tests.natsserver import free_port, private_nats_server
from voiceagent.stack import Stack, nats_reachable


def test_a_cluster_list_becomes_one_url_per_node() -> None:
    s = Settings(_env_file=None, nats_url="nats://n1:4222, nats://n2:4222,n3:4223")
    assert s.nats_servers == ["nats://n1:4222", "nats://n2:4222", "nats://n3:4223"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("nats://127.0.0.1:14231,nats:", None),  # the value: a port-less node is fine
        ("nats://a:4222;nats://b:4222", "no port number"),
        ("http://a:4222", "scheme 'http'"),
        ("nats://:4222", "names no host"),
        (" , ", "NATS_URL is empty"),
    ],
)
def test_unusable_values_are_named_in_one_line(value: str, says: str | None) -> None:
    if says is None:
        assert nats_servers(value) == ["nats://127.0.0.1:14231", "nats://nats:"]
        return
    with pytest.raises(ValueError, match=says) as e:
        nats_servers(value)
    assert "\n" not in str(e.value) and str(e.value).startswith("NATS_URL")


def test_the_stack_uses_a_listed_cluster_when_any_node_answers() -> None:
    with private_nats_server() as url:
        dead = f"nats://127.0.0.1:{free_port()}"
        listed = f"{dead},{url}"
        assert nats_reachable(listed)
        stack = Stack(env={"NATS_URL": listed}, output=None)
        specs, info = stack._resolve()
        assert not stack.started_nats  # no nats-server of its own: the cluster answers
        assert info.nats_url == listed
        assert all(spec.name != "nats" for spec in specs)


def test_the_stack_refuses_an_unusable_list_in_one_line() -> None:
    stack = Stack(env={"NATS_URL": "nats://127.0.0.1:14231,nats://x:port"}, output=None)
    with pytest.raises(RuntimeError, match=r"^NATS_URL: 'nats://x:port' has no port number"):
        stack._resolve()
