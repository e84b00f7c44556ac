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
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.admin import Admin, admin_router
from services.gateway.auth import AdminAuth
from services.gateway.console.routes import mount_console
from services.gateway.limits import (
    Network,
    RateLimiter,
    candidate_urls,
    client_ip,
    forwarded_base,
    parse_networks,
    read_form,
)
from services.gateway.outbound import Outbound, outbound_router
from services.gateway.runtime import Gateway
from services.gateway.security import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    is_call_sid,
    signature_valid_any,
)
from services.gateway.stream import PATH as STREAM_PATH
from services.gateway.stream import TwilioStream
from services.gateway.twiml import busy_twiml, connect_twiml
from shared.asyncapi import contract_app
from shared.logging import kv
from shared.metrics import BAD_MESSAGES
from shared.service import run_service
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "gateway"
XML = "application/xml"
_RATE_LIMITED = BAD_MESSAGES.labels(SERVICE, "rate_limited")
_REPLAYED = BAD_MESSAGES.labels(SERVICE, "voice_replayed")
_JUNK_LIMITED = BAD_MESSAGES.labels(SERVICE, "unsigned_rate_limited")


def _voice_urls(settings: Settings, request: Request, trusted: tuple[Network, ...]) -> list[str]:
    # Twilio signs the URL configured for the number, which is the public one plus any query.
    query = request.url.query
    peer = request.client.host if request.client else None
    fwd = forwarded_base(peer, request.headers, trusted)
    urls = candidate_urls(settings.public_url, "/voice", fwd, ws=False)
    return [u + (f"?{query}" if query else "") for u in urls]


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
            await admin.aclose()
            log.info("gateway stopped")

    # No schema or docs pages: a stranger would get every route, the operator API's included.
    app = FastAPI(
        title="voiceagent gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.gateway = gw
    trusted = parse_networks(settings.trusted_proxies)
    limiter = RateLimiter(
        rate_per_s=settings.voice_rate_per_min / 60.0, burst=settings.voice_rate_burst
    )
    admin = Admin(gateway=gw, settings=settings)
    app.state.admin = admin
    app.include_router(admin_router(admin))
    app.include_router(outbound_router(Outbound(gateway=gw, admin=admin, settings=settings)))

    # Refused webhooks (unsigned, bad signature) spend their own budget per client address:
    # someone's junk never takes the budget of signed traffic from the same address (behind
    # a proxy, or from Twilio's own egress, many callers share one).
    junk = RateLimiter(
        rate_per_s=settings.voice_unsigned_rate_per_min / 60.0,
        burst=settings.voice_unsigned_burst,
    )

    def refuse_unsigned(client: str, why: str) -> Response:
        if not junk.allow(client):
            _JUNK_LIMITED.inc()  # not logged: the limiter bounds the log lines too
            return Response("too many requests", status_code=429, headers={"Retry-After": "1"})
        log.warning("voice webhook refused", **kv(why=why))
        return Response("invalid signature", status_code=403)

    @app.post("/voice")
    async def voice(request: Request) -> Response:
        peer = request.client.host if request.client else None
        client = client_ip(peer, request.headers.get("x-forwarded-for"), trusted)
        check = settings.validate_signatures
        signature = request.headers.get(SIGNATURE_HEADER)
        if check and not signature:
            return refuse_unsigned(client, "no signature")  # the body is not even read
        params = await read_form(request)
        if params is None:
            return Response("request too large", status_code=413)
        if check and not signature_valid_any(
            auth_token=settings.twilio_auth_token.get_secret_value(),
            urls=_voice_urls(settings, request, trusted),
            params=params,
            signature=signature,
            settings_header=request.headers.get(SIGNATURE_SETTINGS_HEADER),
        ):
            return refuse_unsigned(client, "bad signature")
        if not limiter.allow(client):  # signed traffic only
            _RATE_LIMITED.inc()
            return Response("too many requests", status_code=429, headers={"Retry-After": "1"})
        call_sid = params.get("CallSid", "")
        if not is_call_sid(call_sid):
            return Response("missing or invalid CallSid", status_code=400)
        token, why = await gw.admit_call(call_sid)
        if token is None:
            if why == "replayed":
                _REPLAYED.inc()
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

    mount_console(app, gateway=gw)
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


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn settings every way of serving the gateway shares (``serve``, the tests)."""
    return {
        "log_config": None,  # our redacting root handler formats everything
        "access_log": False,  # request lines carry SIDs in query strings of some webhooks
        # Client address and scheme come from the socket; X-Forwarded-* are believed only from
        # TRUSTED_PROXIES, by our own code (services/gateway/limits.py).
        "proxy_headers": False,
        # A larger frame closes its socket (1009) before it is read: uvicorn's default of
        # 16 MiB would be buffered whole, before any authentication.
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_ping_interval": 20.0,
    }


def check_startup_settings(settings: Settings) -> str | None:
    """Why the gateway must not start with ``settings`` (one line), or None."""
    try:
        AdminAuth.from_setting(settings.admin_token.get_secret_value())
    except ValueError as e:
        return str(e)
    return None


async def serve(settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT (then drain); returns the exit code."""
    problem = check_startup_settings(settings)
    if problem is not None:
        log.error("gateway not started: %s", problem)
        return 2
    gateway = Gateway(settings=settings)
    app = create_app(settings=settings, gateway=gateway)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=10,
        **server_options(settings),
    )
    server = GatewayServer(config, gateway=gateway, grace_s=settings.drain_grace_s)
    await server.serve()
    return 0


# The bus contract of the gateway (docs/asyncapi/gateway.yaml; ``voiceagent asyncapi``).
asyncapi_app = contract_app(
    "gateway",
    receives=("transcript", "reply", "audio.out", "control", "asr.heartbeat", "turn.heartbeat"),
    sends=("audio.in", "control", "events", "asr.claim", "retry.turn", "retry.segment"),
)


def main() -> None:
    """``python -m services.gateway``."""
    run_service(SERVICE, serve)
