"""Process-wide gateway state: the bus connection, admission, live calls, draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from nats.aio.client import Client as NATS

from services.gateway.bargein import VadPool
from services.gateway.call import CallSession
from services.gateway.outbound_records import OutboundRecords
from services.gateway.recording import recording_store
from services.gateway.security import CallTokens, SharedTokenLedger
from shared import bus, callevents
from shared.logging import kv
from shared.metrics import ACTIVE_CALLS
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "gateway"
CONNECT_WAIT_S = 5.0  # startup waits this long for NATS, then serves (healthz 503) meanwhile
END_WAIT_S = 5.0  # shutdown: time left to calls to publish CallEnded after their socket closed

_ACTIVE = ACTIVE_CALLS.labels(SERVICE)


class Gateway:
    """Everything the HTTP and WebSocket handlers share in one gateway process."""

    def __init__(
        self,
        *,
        settings: Settings,
        gateway_id: str | None = None,
        vad_pool: VadPool | None = None,
        use_vad: bool = True,
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id or (
            f"{settings.service_name or SERVICE}-{socket.gethostname()}-{os.getpid()}-"
            f"{uuid.uuid4().hex[:6]}"
        )
        self.tokens = CallTokens.from_auth_token(
            settings.twilio_auth_token.get_secret_value(), ttl_s=settings.call_token_ttl_s
        )
        self.vad_pool = vad_pool if vad_pool is not None else (VadPool() if use_vad else None)
        self.recordings = recording_store(settings)  # None unless RECORD_CALLS
        self.token_ledger = SharedTokenLedger.from_settings(settings)  # None without Redis
        self.outbound = OutboundRecords.from_settings(settings)  # calls this platform placed
        self.nc: NATS | None = None
        self.calls: dict[str, CallSession] = {}
        self.streams: set[asyncio.Task[None]] = set()
        self.draining = False
        self._connect_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ bus

    @property
    def connected(self) -> bool:
        """The bus connection is up."""
        return self.nc is not None and self.nc.is_connected

    async def start(self) -> None:
        """Connect to NATS (in the background if it is not up yet) and load the VAD."""
        s = self.settings
        if s.validate_signatures and not s.twilio_auth_token.get_secret_value():
            log.error("TWILIO_AUTH_TOKEN is empty: every Twilio request will be refused")
        if not s.validate_signatures:
            log.warning("Twilio signature validation is OFF (never do this in production)")
        self._connect_task = asyncio.create_task(self._connect(), name="gateway-nats-connect")
        await asyncio.wait({self._connect_task}, timeout=CONNECT_WAIT_S)
        if self.vad_pool is not None:
            await self.vad_pool.warm_up()
        log.info(
            "gateway ready",
            **kv(
                gateway=self.gateway_id,
                stream_url=s.stream_url,
                max_calls=s.max_calls,
                nats=self.connected,
                vad=self.vad_pool is not None and self.vad_pool.available,
            ),
        )

    async def _connect(self) -> None:
        # nats-py keeps trying until the server answers (max_reconnect_attempts=-1).
        self.nc = await bus.connect(self.settings, name=self.settings.service_name or SERVICE)
        log.info("nats connected")
        await callevents.ensure_stream(self.nc, self.settings)  # never raises

    async def stop(self) -> None:
        """Refuse new calls, end the ones left, drain the bus connection."""
        self.draining = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connect_task
        for session in list(self.calls.values()):
            session.request_close(after_turn=None, reason="shutdown")
        if self.streams:
            await asyncio.wait(set(self.streams), timeout=END_WAIT_S)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.vad_pool is not None:
            self.vad_pool.close()
        if self.token_ledger is not None:
            with contextlib.suppress(Exception):
                await self.token_ledger.aclose()
        with contextlib.suppress(Exception):
            await self.outbound.aclose()

    # ------------------------------------------------------------------ admission

    def admit(self, call_sid: str) -> str | None:
        """A stream token for a new call, or None (draining, bus down, at capacity)."""
        if self.draining or not self.connected:
            return None
        if len(self.calls) + self.tokens.pending >= self.settings.max_calls:
            return None
        return self.tokens.issue(call_sid)

    def begin_drain(self) -> None:
        """Stop taking calls (healthz 503, ``/voice`` apologizes); current calls go on."""
        if not self.draining:
            self.draining = True
            log.info("draining", **kv(calls=len(self.calls)))

    async def wait_calls_done(self, timeout_s: float) -> bool:
        """Wait until no call is live (True) or ``timeout_s`` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ calls

    def add_call(self, session: CallSession) -> bool:
        """Register a started call (False if that SID is already live here)."""
        if session.call_sid in self.calls:
            return False
        self.calls[session.call_sid] = session
        self._idle.clear()
        _ACTIVE.inc()
        return True

    def remove_call(self, session: CallSession) -> None:
        """Forget an ended call."""
        if self.calls.get(session.call_sid) is session:
            del self.calls[session.call_sid]
            _ACTIVE.dec()
        if not self.calls:
            self._idle.set()
