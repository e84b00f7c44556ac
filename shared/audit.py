"""Audit trail (HIPAA 164.312(b)): who read or exported call data, and when.

Records go to the JetStream stream ``VOICE_AUDIT`` (subjects ``audit.>``), configured append-only:
limits retention with ``max_age`` (``AUDIT_MAX_AGE_DAYS``), ``deny_delete`` and ``deny_purge``,
so neither a client nor an operator's API call can remove a record before it ages out. A record
holds identifiers only (actor name, action, call SID, outcome, client IP of the actor), never
PHI: no transcript text, no phone numbers.

Writers publish with a JetStream acknowledgement: an export whose audit record cannot be stored
is refused (no audit, no export). ``voiceagent audit`` reads the stream with :func:`query`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import subjects

Outcome = Literal["ok", "not_found", "denied", "error"]


class AuditRecord(BaseModel):
    """One access to call data. Identifiers only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = 1
    at: float = Field(default_factory=time.time)
    actor: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    action: str = Field(max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)*$")
    call_sid: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    outcome: Outcome = "ok"
    client: str = Field(default="", max_length=64)
    service: str = Field(default="", max_length=64)
    target: str = Field(
        default="", max_length=64, description="whom it concerned, as a tag (shared.redact)"
    )
    detail: str = Field(default="", max_length=64, pattern=r"^[a-z0-9_.:-]*$")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def stream_config(*, max_age_days: float, replicas: int = 1) -> api.StreamConfig:
    """The append-only stream: time-limited retention, no delete, no purge, file storage.

    ``replicas``: copies kept by a NATS cluster (``JETSTREAM_REPLICAS``; 3 survives a node).
    """
    return api.StreamConfig(
        name=subjects.AUDIT_STREAM,
        description="voiceagent audit trail: access to transcripts and recordings (ids only)",
        subjects=[subjects.AUDIT_ALL],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=max_age_days * 86400.0,
        storage=api.StorageType.FILE,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        num_replicas=replicas,
    )


async def ensure_stream(nc: NATS, *, max_age_days: float, replicas: int = 1) -> api.StreamInfo:
    """Create the audit stream if it does not exist yet (an existing one is left as it is)."""
    jsm = nc.jsm()
    try:
        return await jsm.stream_info(subjects.AUDIT_STREAM)
    except NotFoundError:
        return await jsm.add_stream(stream_config(max_age_days=max_age_days, replicas=replicas))


class AuditLog:
    """Writes audit records for one service (acknowledged by JetStream)."""

    def __init__(self, *, nc: NATS, service: str, max_age_days: float, timeout_s: float = 2.0):
        self._nc = nc
        self._service = service
        self._max_age_days = max_age_days
        self._timeout = timeout_s
        self._ready = False

    async def record(
        self,
        *,
        actor: str,
        action: str,
        call_sid: str | None = None,
        outcome: Outcome = "ok",
        client: str = "",
        target: str = "",
        detail: str = "",
    ) -> AuditRecord:
        """Store one record; raises if JetStream did not acknowledge it."""
        if not self._ready:
            await ensure_stream(self._nc, max_age_days=self._max_age_days)
            self._ready = True
        rec = AuditRecord(
            actor=actor,
            action=action,
            call_sid=call_sid,
            outcome=outcome,
            client=client[:64],
            service=self._service,
            target=target,
            detail=detail,
        )
        js = self._nc.jetstream(timeout=self._timeout)
        await js.publish(subjects.audit(action), rec.to_bytes(), stream=subjects.AUDIT_STREAM)
        return rec


async def query(
    nc: NATS,
    *,
    since: float | None = None,
    call_sid: str | None = None,
    actor: str | None = None,
    limit: int = 1000,
    fetch_timeout_s: float = 0.5,
) -> list[AuditRecord]:
    """Records since ``since`` (epoch seconds; all when None), filtered, oldest first."""
    js = nc.jetstream()
    if since is None:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE
        )
    else:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME, ack_policy=api.AckPolicy.NONE
        )
        # nats-py sends this field as given: the server wants RFC 3339 text.
        start = datetime.fromtimestamp(since, tz=UTC).isoformat().replace("+00:00", "Z")
        config.opt_start_time = start  # type: ignore[assignment]
    config.inactive_threshold = 30.0
    sub = await js.pull_subscribe(subjects.AUDIT_ALL, stream=subjects.AUDIT_STREAM, config=config)
    out: list[AuditRecord] = []
    try:
        while len(out) < limit:
            try:
                msgs = await sub.fetch(batch=200, timeout=fetch_timeout_s)
            except TimeoutError:
                break
            for m in msgs:
                try:
                    rec = AuditRecord.model_validate_json(m.data)
                except ValidationError:
                    continue  # not ours: the stream only takes audit.>, but never trust input
                if call_sid is not None and rec.call_sid != call_sid:
                    continue
                if actor is not None and rec.actor != actor:
                    continue
                out.append(rec)
            pending = msgs[-1].metadata.num_pending if msgs else 0
            if not pending:
                break
    finally:
        await sub.unsubscribe()
    return out[:limit]
