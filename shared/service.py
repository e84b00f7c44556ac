"""Process lifecycle shared by the workers: signals, drain, and a small /metrics + health server."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections (default 700)


def worker_id(service_name: str) -> str:
    """``<service>-<host>-<pid>``: unique per process, readable in ``tail`` and events."""
    return f"{service_name}-{socket.gethostname()}-{os.getpid()}"


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (so the service can drain, then exit 0)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def serve_metrics(port: int, *, health: Health | None = None) -> None:
    """Serve ``/metrics`` (and ``/healthz``, ``/livez`` given ``health``) on ``port`` (0: off)."""
    if port:
        serve_http(port, health=health)


class Health:
    """What a worker's ``/healthz`` and ``/livez`` report (Kubernetes readiness and liveness).

    Ready (``/healthz`` 200) means connected to NATS and not draining; alive (``/livez`` 200)
    means the event loop still turns (a wedged loop is the one failure a restart fixes).
    """

    STALL_S = 10.0  # the loop missed its tick this long: not alive

    def __init__(self, *, service: str) -> None:
        self.service = service
        self.draining = False
        self._connected: Callable[[], bool] = lambda: False
        self._tick = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None

    def watch(self, connected: Callable[[], bool]) -> None:
        """Use ``connected`` (e.g. ``lambda: broker.connection.is_connected``) for readiness."""
        self._connected = connected

    def watch_broker(self, broker: Any) -> None:
        """Readiness follows a FastStream broker's NATS connection."""

        def connected() -> bool:
            conn = broker.connection
            return conn is not None and bool(conn.is_connected)

        self._connected = connected

    def start_ticker(self) -> None:
        """Start the event-loop heartbeat ``/livez`` checks (call from the running loop)."""

        async def tick() -> None:
            while True:
                self._tick = time.monotonic()
                await asyncio.sleep(1.0)

        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(tick(), name="health-tick")

    def ready(self) -> tuple[bool, str]:
        """(ready, status word) for ``/healthz``."""
        if self.draining:
            return False, "draining"
        try:
            connected = self._connected()
        except Exception:
            connected = False
        return (True, "ok") if connected else (False, "disconnected")

    def alive(self) -> bool:
        """The event loop turned within :attr:`STALL_S` (always true before the ticker runs)."""
        return self._ticker is None or time.monotonic() - self._tick < self.STALL_S


def _handler(health: Health | None) -> type[BaseHTTPRequestHandler]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path == "/healthz" and health is not None:
                ok, status = health.ready()
                self._json(200 if ok else 503, {"status": status, "service": health.service})
            elif path == "/livez" and health is not None:
                ok = health.alive()
                self._json(200 if ok else 503, {"status": "alive" if ok else "stalled"})
            else:
                self._send(404, b"not found\n", "text/plain")

        def _json(self, code: int, body: dict[str, str]) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the logs

    return Handler


def serve_http(port: int, *, health: Health | None = None, host: str = "") -> ThreadingHTTPServer:
    """Serve ``/metrics`` (and ``/healthz``, ``/livez`` given ``health``) in a daemon thread."""
    server = ThreadingHTTPServer((host, port), _handler(health))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def run_service(service: str, run: Callable[[Any], Any], *, settings: Any | None = None) -> None:
    """A service's ``main()``: settings, redacting logs, tracing (off unless OTEL_*), run, exit.

    ``run(settings)`` is the service's async body returning its exit code.
    """
    import sys

    from shared.logging import setup_logging
    from shared.settings import get_settings
    from shared.telemetry import setup_tracing

    s = settings if settings is not None else get_settings()
    name = s.service_name or service
    from shared.bus import connect_options

    try:
        connect_options(s, name=name)  # a NATS_URL or credential that cannot work: one line
    except ValueError as e:
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(2)
    setup_logging(
        service=name,
        level=s.log_level,
        json_lines=s.log_format == "json",
        allow_text=s.log_transcripts,
    )
    setup_tracing(name)
    # Every bus message allocates a few objects; with Python's default (700) the young
    # generation was collected ~200 times a second at 1,000 calls, 15% of the ASR intake.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    sys.exit(asyncio.run(run(s)))
