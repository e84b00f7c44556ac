"""A worker's /healthz, /livez and /metrics on METRICS_PORT, as Kubernetes probes see them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.natsserver import free_port, nats_server_binary, reachable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _until(url: str, code: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got, body = _get(url)
        if got == code:
            return body
        assert time.monotonic() < deadline, f"{url}: {got} {body}"
        time.sleep(0.1)


def test_tts_worker_is_ready_only_while_connected_and_alive_throughout() -> None:
    nats_port, metrics_port = free_port(), free_port()
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(nats_port)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "TTS_PROVIDER": "local",
        "LOCAL_TTS_ENGINE": "espeak",
        "REDIS_URL": "",
        "LOG_FORMAT": "text",
        "METRICS_PORT": str(metrics_port),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.tts"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        while not reachable("127.0.0.1", nats_port):
            time.sleep(0.02)
        body = _until(base + "/healthz", 200)
        assert json.loads(body)["status"] == "ok"
        assert _get(base + "/livez")[0] == 200
        code, metrics = _get(base + "/metrics")
        assert code == 200 and "voice_bus_reconnects_total" in metrics

        server.terminate()  # NATS goes away: not ready (no traffic), but alive (no restart)
        server.wait(timeout=10)
        body = _until(base + "/healthz", 503)
        assert json.loads(body)["status"] == "disconnected"
        assert _get(base + "/livez")[0] == 200

        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(base + "/healthz", 200)  # reconnected: ready again
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        for p in (worker, server):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
