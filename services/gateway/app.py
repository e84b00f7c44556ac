"""The gateway's FastAPI app: ``POST /voice``, ``WS /twilio-stream``, health and ``/metrics``.

``/healthz`` is readiness (503 while draining or without NATS); ``/livez`` is liveness.

``python -m services.gateway`` runs it under uvicorn. SIGTERM drains: healthz turns 503 and
``/voice`` apologizes at once, live calls go on for up to ``DRAIN_GRACE_S``, then uvicorn stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from types import FrameType
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MultiDict

from services.gateway.runtime import Gateway
from services.gateway.security import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, signature_valid
from services.gateway.stream import PATH as STREAM_PATH
from services.gateway.stream import TwilioStream
from services.gateway.twiml import busy_twiml, connect_twiml
from shared.logging import kv, setup_logging
from shared.settings import Settings, get_settings
from shared.subjects import call_root

log = logging.getLogger(__name__)

SERVICE = "gateway"
MAX_FORM_BYTES = 64 * 1024
XML = "application/xml"


def _valid_sid(call_sid: str) -> bool:
    try:
        call_root(call_sid)
    except ValueError:
        return False
    return True


def _voice_url(settings: Settings, request: Request) -> str:
    # Twilio signs the URL configured for the number, which is the public one plus any query.
    query = request.url.query
    return settings.voice_url + (f"?{query}" if query else "")


def create_app(*, settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """The gateway app; ``gateway`` holds its state (made from ``settings`` when omitted)."""
    gw = gateway if gateway is not None else Gateway(settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()
            log.info("gateway stopped")

    app = FastAPI(title="voiceagent gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    @app.post("/voice")
    async def voice(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return Response("request too large", status_code=413)
        params = MultiDict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if settings.validate_signatures and not signature_valid(
            auth_token=settings.twilio_auth_token.get_secret_value(),
            url=_voice_url(settings, request),
            params=params,
            signature=request.headers.get(SIGNATURE_HEADER),
            settings_header=request.headers.get(SIGNATURE_SETTINGS_HEADER),
        ):
            log.warning("voice webhook refused: bad signature")
            return Response("invalid signature", status_code=403)
        call_sid = params.get("CallSid", "")
        if not _valid_sid(call_sid):
            return Response("missing or invalid CallSid", status_code=400)
        token = gw.admit(call_sid)
        if token is None:
            why = "draining" if gw.draining else "bus down" if not gw.connected else "full"
            log.warning("call turned away", **kv(call=call_sid, why=why))
            return Response(busy_twiml(), media_type=XML)
        log.info("call admitted", **kv(call=call_sid))
        twiml = connect_twiml(stream_url=settings.stream_url, call_sid=call_sid, token=token)
        return Response(twiml, media_type=XML)

    @app.websocket(STREAM_PATH)
    async def twilio_stream(ws: WebSocket) -> None:
        stream = TwilioStream(ws=ws, gateway=gw)
        task = asyncio.current_task()
        if task is not None:
            gw.streams.add(task)
        try:
            await stream.run()
        finally:
            if task is not None:
                gw.streams.discard(task)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if gw.draining:
            return JSONResponse({"status": "draining", "calls": len(gw.calls)}, status_code=503)
        if not gw.connected:
            return JSONResponse({"status": "disconnected"}, status_code=503)
        return JSONResponse({"status": "ok", "calls": len(gw.calls)})

    @app.get("/livez")
    async def livez() -> JSONResponse:
        # Liveness stays 200 while draining: restarting a draining gateway would drop its calls.
        return JSONResponse({"status": "alive", "calls": len(gw.calls)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class GatewayServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains calls before the server stops."""

    def __init__(self, config: uvicorn.Config, *, gateway: Gateway, grace_s: float) -> None:
        super().__init__(config)
        self._gw = gateway
        self._grace = grace_s
        self._drain_task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the signal after shutdown (exit 143); a drained gateway exits 0.
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self._gw.draining
        self._gw.begin_drain()
        if first and self._gw.calls:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        else:
            self.should_exit = True  # nothing to wait for, or asked twice

    async def _drain(self) -> None:
        done = await self._gw.wait_calls_done(self._grace)
        if not done:
            log.warning("drain grace over; ending calls", **kv(calls=len(self._gw.calls)))
        self.should_exit = True


async def serve(settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT (then drain); returns the exit code."""
    gateway = Gateway(settings=settings)
    app = create_app(settings=settings, gateway=gateway)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our redacting root handler formats everything
        access_log=False,  # request lines carry SIDs in query strings of some webhooks
        proxy_headers=True,
        ws_ping_interval=20.0,
        timeout_graceful_shutdown=10,
    )
    server = GatewayServer(config, gateway=gateway, grace_s=settings.drain_grace_s)
    await server.serve()
    return 0


def main() -> None:
    """``python -m services.gateway``."""
    settings = get_settings()
    setup_logging(
        service=settings.service_name or SERVICE,
        level=settings.log_level,
        json_lines=settings.log_format == "json",
        allow_text=settings.log_transcripts,
    )
    sys.exit(asyncio.run(serve(settings)))
