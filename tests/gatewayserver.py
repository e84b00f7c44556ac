"""One way for tests to serve the real gateway app with uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import uvicorn

from devkit.fakes._server import QuietServer
from services.gateway.app import create_app, server_options
from services.gateway.runtime import Gateway
from shared.settings import Settings


@dataclass
class Gw:
    """A served gateway: its base URL, settings and runtime."""

    base: str
    settings: Settings
    gateway: Gateway


@contextlib.asynccontextmanager
async def serve_gateway(
    settings: Settings,
    *,
    port: int,
    use_vad: bool = True,
    lifespan: Literal["auto", "on", "off"] = "auto",
    stop_within: float = 15.0,
) -> AsyncIterator[Gw]:
    """Serve ``create_app(settings)`` on 127.0.0.1:``port`` for the duration of the block.

    ``settings.public_url`` should already name ``port`` (signatures are checked against it).
    """
    gateway = Gateway(settings=settings, use_vad=use_vad)
    app = create_app(settings=settings, gateway=gateway)
    server = QuietServer(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan=lifespan, **server_options(settings)
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    try:
        yield Gw(base=f"http://127.0.0.1:{port}", settings=settings, gateway=gateway)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, stop_within)
