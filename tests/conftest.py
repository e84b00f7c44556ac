"""Fixtures shared by the whole suite (a real NATS, a real Redis) and its markers.

Each test is marked from what it uses (see :mod:`tests.needs`): ``nats``, ``redis``, and
``integration`` for anything under ``tests/integration/`` or needing a server or a service
process. A server a test needs is the one named by ``TEST_NATS_URL`` / ``TEST_REDIS_URL``, else
the machine's on its default port, else one this run starts; never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.natsserver import free_port, nats_server_binary, private_nats_server, reachable
from tests.needs import needs_of
from tests.redisservers import redis_answers, redis_server, redis_server_binary
from voiceagent.stack import nats_reachable

__all__ = ["_free_port", "_reachable", "nats_server_binary"]


_free_port = free_port
_reachable = reachable

INTEGRATION_DIR = Path(__file__).parent / "integration"
_started: list[str] = []  # servers this run started, told in the terminal summary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        found = needs_of(item)
        for name in sorted(found - {m.name for m in item.iter_markers()}):
            item.add_marker(name)
        if found or INTEGRATION_DIR in Path(str(item.path)).parents:
            if item.get_closest_marker("integration") is None:
                item.add_marker("integration")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _started:
        terminalreporter.write_line(f"started by the suite: {line}")


def _fail_unless(binary: Callable[[], str], why: str) -> None:
    """Fail the test in one line, ``why`` with the problem filled in, when ``binary`` is
    missing (a server it needs does not answer and the suite cannot start one)."""
    try:
        binary()
    except RuntimeError as e:
        problem = str(e)
    else:
        return
    pytest.fail(why.format(problem), pytrace=False)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """NATS with JetStream: TEST_NATS_URL's, else the machine's on 127.0.0.1:4222, else one
    started for this run."""
    wanted = os.environ.get("TEST_NATS_URL") or "nats://127.0.0.1:4222"
    if nats_reachable(wanted):
        yield wanted
        return
    _fail_unless(nats_server_binary, f"NATS at {wanted} does not answer and {{}}: start one")
    with private_nats_server(jetstream=True) as url:
        _started.append(f"nats-server -js at {url} ({wanted} did not answer)")
        yield url


@pytest.fixture(scope="module")
def private_nats() -> Iterator[str]:
    """A nats-server of this test module's own (no JetStream): nobody else's queue-group
    members (workers on the machine's NATS) can take its messages."""
    _fail_unless(nats_server_binary, "this module starts a nats-server of its own: {}")
    with private_nats_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Redis: TEST_REDIS_URL's, else the machine's (db 15) on 127.0.0.1:6379, else a
    redis-server started for this run (loopback, free port, no persistence)."""
    wanted = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"
    if redis_answers(wanted):
        yield wanted
        return
    _fail_unless(redis_server_binary, f"Redis at {wanted} does not answer and {{}}: start one")
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        _started.append(f"redis-server at {url} ({wanted} did not answer)")
        yield url
