"""Opt-in check of the markers: ``pytest -p tests.serverguard -m "not integration"``.

While a test marked neither ``nats`` nor ``redis`` runs, starting a nats-server, a
redis-server or a service process, or a NATS or Redis client connecting to a server that
answers, is recorded; the run then fails, listing each (the marker :mod:`tests.needs` missed).
Connecting to a closed port (a test of "the server is down") is allowed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

import nats.aio.client
import pytest
import redis.asyncio.connection
import redis.connection

from voiceagent.stack import reachable

_found: list[str] = []


def _servers(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    servers = kwargs.get("servers", args[0] if args else "nats://127.0.0.1:4222")
    return [servers] if isinstance(servers, str) else list(servers)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    if any(item.get_closest_marker(m) for m in ("nats", "redis")):
        yield
        return
    mp = pytest.MonkeyPatch()
    popen_init = subprocess.Popen.__init__
    nats_connect = nats.aio.client.Client.connect
    sync_connect: Any = redis.connection.AbstractConnection.connect
    async_connect: Any = redis.asyncio.connection.AbstractConnection.connect

    def init(self: Any, args: Any, *a: Any, **k: Any) -> None:
        argv = [str(args)] if isinstance(args, str | os.PathLike) else [str(x) for x in args]
        if os.path.basename(argv[0]) in ("nats-server", "redis-server") or any(
            x.startswith("services.") for x in argv
        ):
            _found.append(f"{item.nodeid}: runs {' '.join(argv[:3])}")
        popen_init(self, args, *a, **k)

    async def connect_nats(self: Any, *a: Any, **k: Any) -> None:
        for s in _servers(a, k):
            u = urlsplit(s)
            if reachable(u.hostname or "127.0.0.1", u.port or 4222):
                _found.append(f"{item.nodeid}: reaches NATS at {s}")
        await nats_connect(self, *a, **k)

    def _note_redis(conn: Any) -> None:
        host, port = getattr(conn, "host", None), getattr(conn, "port", None)
        if host and port and reachable(host, int(port)):
            _found.append(f"{item.nodeid}: reaches Redis at {host}:{port}")

    def connect_sync(self: Any) -> None:
        _note_redis(self)
        sync_connect(self)

    async def connect_async(self: Any) -> None:
        _note_redis(self)
        await async_connect(self)

    mp.setattr(subprocess.Popen, "__init__", init)
    mp.setattr(nats.aio.client.Client, "connect", connect_nats)
    mp.setattr(redis.connection.AbstractConnection, "connect", connect_sync)
    mp.setattr(redis.asyncio.connection.AbstractConnection, "connect", connect_async)
    try:
        yield
    finally:
        mp.undo()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _found:
        terminalreporter.write_line(f"unmarked server use: {line}")
