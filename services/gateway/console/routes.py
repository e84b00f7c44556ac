"""HTTP and WebSocket endpoints of the console (mounted by the gateway app).

- ``GET /console`` and ``/console/static/*``: the page (no data in it; it asks for the token).
- ``POST /console/call`` (admin bearer): admit a call exactly as ``POST /voice`` does and hand
  the browser what Twilio would get from our TwiML, plus a console token for the upgrade.
- ``WS /console/feed``: the first text frame is ``{"token": ADMIN_TOKEN}``; then the socket
  carries the stored past (:mod:`~services.gateway.console.backfill`), then live items (see
  :mod:`services.gateway.console.feed`) and the system's recent latency. Opening it is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from pathlib import Path
from xml.etree import ElementTree

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.gateway.console import backfill
from services.gateway.console.auth import (
    CONSOLE_PROTOCOL,
    CONSOLE_TOKEN_PREFIX,
    console_auth,
    console_tokens,
    token_actor,
)
from services.gateway.console.feed import FeedQueue, Item, subscribe_feed, unsubscribe_all
from services.gateway.console.latency import StageWindow, TurnLatencies
from services.gateway.limits import client_ip, parse_networks
from services.gateway.runtime import Gateway
from services.gateway.stream import PATH as STREAM_PATH
from services.gateway.twiml import connect_twiml
from shared.audit import AuditLog
from shared.logging import kv

log = logging.getLogger(__name__)

SERVICE = "gateway"
STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "console.js": "text/javascript",
    "timeline.js": "text/javascript",
    "softphone.js": "text/javascript",
    "mic-worklet.js": "text/javascript",
    "console.css": "text/css",
}
AUTH_TIMEOUT_S = 10.0
FIRST_FRAME_MAX = 4096  # {"token": ...} is well under this; more is refused unparsed
HISTORY_BATCH = 500  # stored items per frame on opening
HISTORY_TIMEOUT_S = 15.0  # past this, the viewer gets the live feed without the past
STATS_EVERY_S = 2.0  # the system view's refresh
DEDUP_HOLD_S = 10.0  # how long live copies of stored messages are looked out for
POLICY_VIOLATION = 1008
DISABLED = "console disabled: set ADMIN_TOKEN (voiceagent up sets one and prints the URL)\n"
# The page loads only its own scripts and talks only to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob:; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def new_console_sid() -> str:
    """A CallSid for a browser call (Twilio's shape: ``CA`` + 32 hex)."""
    return "CA" + uuid.uuid4().hex


def twiml_parameters(twiml: str) -> tuple[str, dict[str, str]]:
    """The stream URL and ``<Parameter>``s of a ``<Connect><Stream>`` answer (as Twilio reads)."""
    root = ElementTree.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    if stream is None:
        raise ValueError("no <Connect><Stream> in the TwiML")
    params = {
        p.attrib["name"]: p.attrib.get("value", "")
        for p in stream.findall("Parameter")
        if "name" in p.attrib
    }
    return stream.attrib.get("url", ""), params


def mount_console(app: FastAPI, *, gateway: Gateway) -> None:
    """Add the console's routes to the gateway app."""
    settings = gateway.settings
    auth = console_auth(settings)
    trusted = parse_networks(settings.trusted_proxies)
    audit: list[AuditLog] = []  # made on first use (needs the bus connection)

    def _disabled() -> Response:
        return Response(DISABLED, status_code=404, media_type="text/plain")

    @app.get("/console")
    async def console_page() -> Response:
        if not auth.configured:
            return _disabled()
        return FileResponse(
            STATIC_DIR / "console.html", media_type="text/html", headers=SECURITY_HEADERS
        )

    @app.get("/console/static/{name}")
    async def console_static(name: str) -> Response:
        if not auth.configured or name not in STATIC_FILES:
            return Response("not found", status_code=404)
        return FileResponse(
            STATIC_DIR / name, media_type=STATIC_FILES[name], headers=SECURITY_HEADERS
        )

    @app.post("/console/call")
    async def console_call(request: Request) -> Response:
        if not auth.configured:
            return _disabled()
        actor = auth.actor(request.headers.get("authorization"))
        if actor is None:
            return JSONResponse(
                {"error": "admin token required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        call_sid = new_console_sid()
        token = await gateway.admit(call_sid)
        if token is None:
            why = (
                "draining" if gateway.draining else "bus down" if not gateway.connected else "full"
            )
            log.warning("console call turned away", **kv(call=call_sid, why=why))
            return JSONResponse({"error": f"no call possible now ({why})"}, status_code=503)
        stream_url, parameters = twiml_parameters(
            connect_twiml(stream_url=settings.stream_url, call_sid=call_sid, token=token)
        )
        upgrade = console_tokens(gateway).issue(call_sid)
        log.info("console call admitted", **kv(call=call_sid, actor=actor))
        return JSONResponse(
            {
                "call_sid": call_sid,
                "account_sid": settings.twilio_account_sid or "AC" + "0" * 32,
                "stream_url": stream_url,
                "stream_path": STREAM_PATH,
                "parameters": parameters,
                "protocols": [CONSOLE_PROTOCOL, f"{CONSOLE_TOKEN_PREFIX}{call_sid}.{upgrade}"],
            },
            headers={"Cache-Control": "no-store"},
        )

    @app.websocket("/console/feed")
    async def console_feed(ws: WebSocket) -> None:
        if not auth.configured:
            await ws.close(code=POLICY_VIOLATION)
            return
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT_S)
            if len(first) > FIRST_FRAME_MAX:
                log.warning("console feed refused: first frame too large")
                await _close(ws, 1009, "first frame too large")
                return
            presented = json.loads(first).get("token")
        except (TimeoutError, ValueError, AttributeError, WebSocketDisconnect, KeyError):
            presented = None
        actor = token_actor(auth, presented if isinstance(presented, str) else None)
        if actor is None:
            log.warning("console feed refused: bad admin token")
            await _close(ws, POLICY_VIOLATION, "admin token required")
            return
        nc = gateway.nc
        if nc is None or not gateway.connected:
            await _close(ws, 1011, "the gateway is not connected to the bus")
            return
        peer = ws.client.host if ws.client is not None else None
        client = client_ip(peer, ws.headers.get("x-forwarded-for"), trusted)
        try:
            if not audit:
                audit.append(
                    AuditLog(nc=nc, service=SERVICE, max_age_days=settings.audit_max_age_days)
                )
            await audit[0].record(actor=actor, action="console.watch", client=client)
        except Exception as e:
            log.error("console feed refused: audit record not stored", **kv(error=type(e).__name__))
            await _close(ws, 1011, "audit trail unavailable")
            return
        await _serve_feed(ws, gateway)


async def _close(ws: WebSocket, code: int, why: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps({"kind": "error", "text": why}))
        await ws.close(code=code)


def _hello(gateway: Gateway, *, history: bool) -> str:
    now = time.time()
    calls = [{"call": sid, "started_at": now - s.age_s} for sid, s in gateway.calls.items()]
    return json.dumps(
        {"kind": "hello", "gateway": gateway.gateway_id, "calls": calls, "history": history}
    )


class _Viewer:
    """One viewer's derived state: turn breakdowns, the system window, the live calls."""

    def __init__(self) -> None:
        self.latencies = TurnLatencies()
        self.window = StageWindow()
        self.live: set[str] = set()

    def on_item(self, item: Item) -> Item | None:
        """Track ``item``; the turn breakdown it completes, if any."""
        if item.get("kind") == "event":
            if item.get("name") == "call.started":
                self.live.add(item["call"])
            elif item.get("name") == "call.ended":
                self.live.discard(item["call"])
        lat = self.latencies.on_item(item)
        if lat is not None:
            self.window.add(lat)
        return lat

    def stats(self, gateway: Gateway, dropped: int) -> str:
        now = time.time()
        return json.dumps(
            {
                "kind": "stats",
                "at": now,
                "window_s": self.window.window_s,
                "stages": self.window.snapshot(now),
                "live_calls": len(self.live | set(gateway.calls)),
                "local_calls": len(gateway.calls),
                "dropped": dropped,
            }
        )


async def _send_history(ws: WebSocket, gateway: Gateway, viewer: _Viewer) -> set[bytes]:
    """The stored past (live calls so far, ended calls): sent before the live items."""
    assert gateway.nc is not None
    try:
        async with asyncio.timeout(HISTORY_TIMEOUT_S):
            history = await backfill.load(gateway.nc, local_calls=list(gateway.calls))
    except Exception as e:  # no stream (EVENTS_RETENTION_H=0, no JetStream, no read right)
        log.warning("console history unavailable", **kv(error=type(e).__name__))
        await ws.send_text(_hello(gateway, history=False))
        return set()
    await ws.send_text(_hello(gateway, history=True))
    items = list(history.items)
    for ev in history.events:  # every call of the window counts in the system view
        lat = viewer.on_item(ev)
        if lat is not None and lat["call"] in history.live:
            items.append(lat)
    viewer.live = history.live | set(gateway.calls)
    for i in range(0, len(items), HISTORY_BATCH):
        batch = items[i : i + HISTORY_BATCH]
        await ws.send_text(json.dumps({"kind": "batch", "items": batch, "history": True}))
    ended = sum(1 for i in history.items if i["kind"] == "summary")
    await ws.send_text(json.dumps({"kind": "history", "live": len(history.live), "ended": ended}))
    return history.keys


async def _serve_feed(ws: WebSocket, gateway: Gateway) -> None:
    assert gateway.nc is not None
    feed = FeedQueue()
    try:
        # Live first, then the store: a message published meanwhile is in one or both.
        subs = await subscribe_feed(gateway.nc, feed.on_msg)
    except Exception as e:
        log.warning("console feed failed to subscribe", **kv(error=type(e).__name__))
        await _close(ws, 1011, "the gateway is not connected to the bus")
        return
    log.info("console feed opened")

    async def reader() -> None:
        # The page sends nothing after its token; a receive returns when it goes away.
        with contextlib.suppress(Exception):
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return

    gone = asyncio.create_task(reader())
    viewer = _Viewer()
    loop = asyncio.get_running_loop()
    try:
        seen = await _send_history(ws, gateway, viewer)
        forget_at = loop.time() + DEDUP_HOLD_S
        stats_at = loop.time()
        while not gone.done():
            if loop.time() >= stats_at:
                await ws.send_text(viewer.stats(gateway, feed.dropped))
                stats_at = loop.time() + STATS_EVERY_S
            if seen and loop.time() >= forget_at:
                seen = set()  # what was stored before we read it has all arrived by now
            get = asyncio.create_task(feed.queue.get())
            await asyncio.wait(
                {get, gone},
                timeout=max(0.0, stats_at - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not get.done():
                get.cancel()
                continue
            entries = [get.result()]
            while not feed.queue.empty() and len(entries) < 100:
                entries.append(feed.queue.get_nowait())
            items: list[Item] = []
            for key, item in entries:
                if key in seen:
                    continue  # already sent from the store
                items.append(item)
                lat = viewer.on_item(item)
                if lat is not None:
                    items.append(lat)
            if items:
                await ws.send_text(json.dumps({"kind": "batch", "items": items}))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        gone.cancel()
        await unsubscribe_all(subs)
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close()
        log.info("console feed closed", **kv(dropped=feed.dropped))
