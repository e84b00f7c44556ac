"""Process-wide gateway state: the bus connection, admission, live calls, draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from nats.aio.client import Client as NATS
from tenacity import AsyncRetrying, retry_if_result, wait_exponential_jitter

from services.gateway.call import CallSession
from services.gateway.outbound_records import OutboundRecords
from services.gateway.recording import recording_store
from services.gateway.security import CallAdmissions, CallTokens, SharedTokenLedger
from services.gateway.turntaking.voice_activity import VadPool
from shared import audit, bus, callevents
from shared.logging import kv
from shared.metrics import ACTIVE_CALLS
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "gateway"
CONNECT_WAIT_S = 5.0  # startup waits this long for NATS, then serves (healthz 503) meanwhile
END_WAIT_S = 5.0  # shutdown: time left to calls to publish CallEnded after their socket closed
STREAMS_RETRY_MAX_S = 10.0  # stream setup is retried, at most this far apart, until it holds

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
        self.admissions = CallAdmissions.from_settings(settings)
        self.outbound = OutboundRecords.from_settings(settings)  # calls this platform placed
        self.nc: NATS | None = None
        self.calls: dict[str, CallSession] = {}
        self.streams: set[asyncio.Task[None]] = set()
        self.draining = False
        self._connect_task: asyncio.Task[None] | None = None
        self._streams_task: asyncio.Task[None] | None = None
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
        started = asyncio.get_running_loop().time()
        await asyncio.wait({self._connect_task}, timeout=CONNECT_WAIT_S)
        if self._streams_task is not None:
            # Usually the first try holds: then the streams exist before the first call.
            left = CONNECT_WAIT_S - (asyncio.get_running_loop().time() - started)
            await asyncio.wait({self._streams_task}, timeout=max(0.0, left))
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
        # A cluster that has just formed may not have a JetStream leader yet: the streams are
        # set up in the background until they hold, never once and given up on.
        self._streams_task = asyncio.create_task(self._ensure_streams(), name="gateway-streams")

    async def _ensure_streams(self) -> None:
        """Create the events and audit streams, retrying with backoff until both exist."""
        assert self.nc is not None
        nc, s = self.nc, self.settings
        want_events = s.events_retention_h > 0  # 0: events are not stored, nothing to create
        done = {"events": not want_events, "audit": False}

        async def attempt() -> bool:
            if not done["events"]:
                done["events"] = await callevents.ensure_stream(nc, s)  # never raises
            if not done["audit"]:
                try:
                    # Created here, not on the first export, so it gets JETSTREAM_REPLICAS copies.
                    await audit.ensure_stream(
                        nc, max_age_days=s.audit_max_age_days, replicas=s.jetstream_replicas
                    )
                    done["audit"] = True
                except Exception as e:
                    log.warning(
                        "audit stream not ready (exports refused until it is)",
                        **kv(error=type(e).__name__),
                    )
            return done["events"] and done["audit"]

        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.5, max=STREAMS_RETRY_MAX_S, jitter=0.2),
            retry=retry_if_result(lambda ok: not ok),
        )
        await retrying(attempt)
        log.info("streams ready", **kv(retention_h=s.events_retention_h))

    async def stop(self) -> None:
        """Refuse new calls, end the ones left, drain the bus connection."""
        self.draining = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connect_task
        if self._streams_task is not None and not self._streams_task.done():
            self._streams_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._streams_task
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
            await self.admissions.aclose()
        with contextlib.suppress(Exception):
            await self.outbound.aclose()

    # ------------------------------------------------------------------ admission

    def refusal(self) -> str | None:
        """Why no call can be admitted now (draining, bus down, full), or None."""
        if self.draining:
            return "draining"
        if not self.connected:
            return "bus down"
        if len(self.calls) + self.tokens.pending >= self.settings.max_calls:
            return "full"
        return None

    async def admit(self, call_sid: str) -> str | None:
        """A stream token for a new call, or None (see :meth:`admit_call`)."""
        token, _ = await self.admit_call(call_sid)
        return token

    async def admit_call(self, call_sid: str) -> tuple[str | None, str]:
        """``(token, "admitted")`` or ``(None, why)``: draining, bus down, full, or "replayed"
        when any replica admitted ``call_sid`` before. The one way a stream token is minted,
        so a call gets one token, ever (:class:`~services.gateway.security.CallAdmissions`)."""
        why = self.refusal()
        if why is not None:
            return None, why
        if not await self.admissions.claim_shared(call_sid):
            return None, "replayed"
        why = self.refusal()  # the Redis round trip yielded: capacity may have changed
        if why is not None:
            return None, why
        if not self.admissions.claim_local(call_sid):
            return None, "replayed"
        return self.tokens.issue(call_sid), "admitted"

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
