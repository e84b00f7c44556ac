"""Loopback ports and servers: a free port, whether a server listens, waiting until it does.

Shared by the stack (:mod:`voiceagent.stack`) and the provider-fake plan
(:mod:`voiceagent.cloud`), which otherwise would import each other.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping


def reachable(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """A TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(
    ports: Mapping[str, int], *, timeout_s: float = 60.0, what: str = "servers"
) -> None:
    """Until every server (by name) accepts TCP on its loopback port.

    ``TimeoutError`` names the missing ones (``what`` names the kind in the message).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = dict(ports)
    while pending:
        for name, port in list(pending.items()):
            if await asyncio.to_thread(reachable, "127.0.0.1", port, timeout=0.2):
                del pending[name]
        if pending:
            if loop.time() > deadline:
                missing = ", ".join(sorted(pending))
                raise TimeoutError(f"{what} not listening after {timeout_s:.0f} s: {missing}")
            await asyncio.sleep(0.1)


__all__ = ["free_port", "reachable", "wait_listening"]
