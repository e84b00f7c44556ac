"""Fixtures shared by the whole suite: a real NATS server and Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.natsserver import free_port, nats_server_binary, private_nats_server, reachable

__all__ = ["_free_port", "_reachable", "nats_server_binary"]


_free_port = free_port
_reachable = reachable


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """NATS with JetStream: the machine's on 127.0.0.1:4222, else one started for this run."""
    if os.environ.get("TEST_NATS_URL"):
        yield os.environ["TEST_NATS_URL"]
        return
    if _reachable("127.0.0.1", 4222):
        yield "nats://127.0.0.1:4222"
        return
    with private_nats_server(jetstream=True) as url:
        yield url


@pytest.fixture(scope="module")
def private_nats() -> Iterator[str]:
    """A nats-server of this test module's own (no JetStream): nobody else's queue-group
    members (workers on the machine's NATS) can take its messages."""
    with private_nats_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (tests that need it are skipped with a reason when it is absent)."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if not _reachable("127.0.0.1", 6379) and "TEST_REDIS_URL" not in os.environ:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    return url
