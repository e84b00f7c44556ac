"""Process lifecycle shared by the workers: signals, drain, and a small /metrics server."""

from __future__ import annotations

import asyncio
import signal


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (so the service can drain, then exit 0)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def serve_metrics(port: int) -> None:
    """Serve Prometheus ``/metrics`` on ``port`` in a background thread (0: disabled)."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port)
