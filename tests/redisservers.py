"""Private redis-servers for tests: a 3-master Redis Cluster on loopback, ACL-only servers."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

from voiceagent.stack import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def redis_server_binary() -> str:
    """The machine's redis-server; RuntimeError (one line) when it is not installed."""
    if not Path(REDIS_SERVER).exists():
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return REDIS_SERVER


def redis_answers(url: str) -> bool:
    """Redis at ``url`` answers PING (within a second)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_ping(port: int, proc: subprocess.Popen[bytes], **auth: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2, **auth).ping():  # type: ignore[arg-type]
                return
        except redis.AuthenticationError:
            return  # up, and refusing us: that is the point of an ACL server
        except redis.RedisError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_server(args: Sequence[str] = ()) -> Iterator[int]:
    """A plain redis-server with ``args``; yields its port."""
    port = free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ping(port, proc)
        yield port
    finally:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """A real Redis Cluster of ``masters`` masters, no replicas; yields the ports."""
    work = tempfile.mkdtemp(prefix="redis-cluster-")
    ports = [free_port() for _ in range(masters)]
    # The cluster bus defaults to port + 10000, past 65535 for many free ports: name it.
    buses = [free_port() for _ in range(masters)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, bus in zip(ports, buses, strict=True):
            argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            argv += ["--appendonly", "no", "--cluster-enabled", "yes", "--dir", work]
            argv += ["--cluster-config-file", f"nodes-{port}.conf", "--cluster-port", str(bus)]
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port, proc in zip(ports, procs, strict=True):
            _wait_ping(port, proc)
        made = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=False,
            capture_output=True,
            timeout=30,
        )
        if made.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create: {made.stdout!r} {made.stderr!r}")
        deadline = time.monotonic() + 20
        while any(
            b"cluster_state:ok"
            not in subprocess.run(
                [REDIS_CLI, "-p", str(p), "cluster", "info"], capture_output=True, check=False
            ).stdout
            for p in ports
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)
