"""Placed outbound calls, keyed by CallSid: purpose, parameters and Twilio's AMD answer.

The record is written when ``calls.create`` returns and read by whichever gateway replica
Twilio reaches next (the TwiML webhook, the media stream's ``start``, the AMD and status
callbacks). With Redis it lives under ``va:outbound:<CallSid>`` (``OUTBOUND_RECORD_TTL_S``);
without Redis, in this process only (single-gateway development). A Redis outage falls back to
the process copy: a call placed by this replica still works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import callstate
from shared.logging import kv
from shared.outbound import AnsweredBy, OutboundContext
from shared.settings import Settings

log = logging.getLogger(__name__)

KIND = "outbound"
REDIS_TIMEOUT_S = 0.5


class OutboundRecord(BaseModel):
    """What the gateway keeps about one placed call (never the destination in clear)."""

    model_config = ConfigDict(extra="ignore")

    call_sid: str
    actor: str
    to_tag: str = Field(description="non-reversible tag of the destination (shared.redact)")
    purpose: str
    params: dict[str, str] = Field(default_factory=dict)
    amd: bool = True
    answered_by: AnsweredBy | None = None
    outcome: str = "queued"
    created_at: float = Field(default_factory=time.time)

    def context(self) -> OutboundContext:
        """The agent's view of the call."""
        return OutboundContext(
            purpose=self.purpose, params=self.params, amd=self.amd, answered_by=self.answered_by
        )


class OutboundRecords:
    """Records in Redis (shared by replicas) with a process copy."""

    def __init__(self, *, redis: Any, ttl_s: float) -> None:
        self._redis = redis
        self._ttl = ttl_s
        self._local: dict[str, tuple[float, OutboundRecord]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundRecords:
        redis = None
        if settings.redis_url:
            redis = callstate.redis_client(
                settings.redis_url,
                settings=settings,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
        return cls(redis=redis, ttl_s=settings.outbound_record_ttl_s)

    async def put(self, record: OutboundRecord) -> None:
        """Store (or update) ``record``."""
        now = time.monotonic()
        self._local = {k: v for k, v in self._local.items() if v[0] > now}
        self._local[record.call_sid] = (now + self._ttl, record)
        if self._redis is None:
            return
        key = callstate.call_key(KIND, record.call_sid)
        try:
            await asyncio.wait_for(
                self._redis.set(key, record.model_dump_json(), ex=max(1, int(self._ttl))),
                REDIS_TIMEOUT_S * 2,
            )
        except Exception as e:
            log.warning("outbound record not shared", **kv(error=type(e).__name__))

    async def get(self, call_sid: str) -> OutboundRecord | None:
        """The record of ``call_sid`` (Redis first: another replica may have updated it)."""
        if self._redis is not None:
            key = callstate.call_key(KIND, call_sid)
            try:
                raw = await asyncio.wait_for(self._redis.get(key), REDIS_TIMEOUT_S * 2)
                if raw is not None:
                    return OutboundRecord.model_validate_json(raw)
            except ValidationError:
                log.warning("unreadable outbound record", **kv(call=call_sid))
            except Exception as e:
                log.warning("outbound records unavailable", **kv(error=type(e).__name__))
        hit = self._local.get(call_sid)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    async def wait_for(self, call_sid: str, timeout_s: float) -> OutboundRecord | None:
        """The record, waiting up to ``timeout_s`` (Twilio may call back before
        ``calls.create`` returned to us and the record was written)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rec = await self.get(call_sid)
            if rec is not None or time.monotonic() >= deadline:
                return rec
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
