"""The call event store: JetStream stream ``VOICE_EVENTS`` for ``voiceagent replay``, ``calls``
and the web console's history (docs/console.md).

It captures every per-call message except audio (``voice.*.events``, ``.control``,
``.transcript``, ``.reply``) as it is published: no service writes to it explicitly. Retention is
``EVENTS_RETENTION_H`` hours (``max_age``) and ``EVENTS_MAX_MB`` (oldest dropped first).
Transcripts and replies are PHI: see docs/observability.md for access control and encryption
at rest (a NATS server setting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import median

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from pydantic import ValidationError

from shared import subjects
from shared.cost import COST_EVENT, CallCost
from shared.logging import kv
from shared.messages import Event, parse_event
from shared.settings import Settings

log = logging.getLogger(__name__)

FETCH_BATCH = 500


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored bus message, in stream order."""

    subject: str
    headers: dict[str, str]
    data: bytes
    seq: int


def stream_config(*, retention_h: float, max_mb: int, replicas: int = 1) -> api.StreamConfig:
    """The events stream: file storage, limits retention by age and size, ``replicas`` copies."""
    return api.StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="voiceagent call events, control, transcripts and replies (PHI; no audio)",
        subjects=list(subjects.EVENTS_STREAM_SUBJECTS),
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=retention_h * 3600.0,
        max_bytes=max_mb * 1024 * 1024,
        storage=api.StorageType.FILE,
        allow_rollup_hdrs=False,
        num_replicas=replicas,
    )


async def ensure_stream(nc: NATS, settings: Settings) -> bool:
    """Create or update the stream to the configured retention (idempotent; False: not stored).

    Never raises: without JetStream the platform runs, only replay is unavailable.
    """
    if settings.events_retention_h <= 0:
        return False
    config = stream_config(
        retention_h=settings.events_retention_h,
        max_mb=settings.events_max_mb,
        replicas=settings.jetstream_replicas,
    )
    jsm = nc.jsm()
    try:
        try:
            info = await jsm.stream_info(subjects.EVENTS_STREAM)
        except NotFoundError:
            await jsm.add_stream(config)
            log.info("events stream created", **kv(retention_h=settings.events_retention_h))
            return True
        have = info.config
        changed = (have.max_age, have.max_bytes, have.num_replicas or 1) != (
            config.max_age,
            config.max_bytes,
            config.num_replicas,
        )
        # A stream made before a subject was added (voice.*.control.asr) must take it too.
        if changed or sorted(have.subjects or []) != sorted(config.subjects or []):
            await jsm.update_stream(config)
            log.info("events stream updated", **kv(retention_h=settings.events_retention_h))
        return True
    except (ServiceUnavailableError, BadRequestError, TimeoutError) as e:
        log.warning("events stream unavailable (is JetStream on?)", **kv(error=type(e).__name__))
    except Exception as e:
        log.warning("events stream setup failed", **kv(error=type(e).__name__))
    return False


async def read(
    nc: NATS,
    filter_subject: str,
    *,
    since: float | None = None,
    limit: int = 100_000,
    fetch_timeout_s: float = 0.5,
) -> list[StoredMessage]:
    """Stored messages on ``filter_subject`` (since ``since``, epoch s), in publish order.

    Raises :class:`nats.js.errors.NotFoundError` when the stream does not exist.
    """
    js = nc.jetstream()
    await nc.jsm().stream_info(subjects.EVENTS_STREAM)  # NotFoundError when absent
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True
    )
    if since is None:
        config.deliver_policy = api.DeliverPolicy.ALL
    else:
        config.deliver_policy = api.DeliverPolicy.BY_START_TIME
        # nats-py sends this field as given: the server wants RFC 3339 text.
        start = datetime.fromtimestamp(since, tz=UTC).isoformat().replace("+00:00", "Z")
        config.opt_start_time = start  # type: ignore[assignment]
    sub = await js.pull_subscribe(filter_subject, stream=subjects.EVENTS_STREAM, config=config)
    out: list[StoredMessage] = []
    try:
        if not (await sub.consumer_info()).num_pending:
            return out  # nothing stored: skip the fetch's wait for messages that never come
        while len(out) < limit:
            try:
                msgs = await sub.fetch(batch=FETCH_BATCH, timeout=fetch_timeout_s)
            except TimeoutError:
                break
            for m in msgs:
                out.append(
                    StoredMessage(
                        subject=m.subject,
                        headers=dict(m.headers or {}),
                        data=m.data,
                        seq=m.metadata.sequence.stream,
                    )
                )
            if not msgs or not msgs[-1].metadata.num_pending:
                break
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    return out[:limit]


async def read_call(nc: NATS, call_sid: str) -> list[StoredMessage]:
    """Everything stored for one call, in publish order.

    One filter per stored kind, merged by stream sequence: ``voice.<call>.*`` is not a subset
    of the stream's subjects (it would also match audio), which older servers refuse.
    """
    root = subjects.call_root(call_sid)
    kinds = [s.split(".", 2)[2] for s in subjects.EVENTS_STREAM_SUBJECTS]
    found = [m for kind in kinds for m in await read(nc, f"{root}.{kind}")]
    return sorted(found, key=lambda m: m.seq)


async def read_calls(
    nc: NATS,
    since: dict[str, float],
    *,
    kinds: Iterable[str] = ("transcript", "reply", "control"),
    concurrency: int = 8,
) -> list[StoredMessage]:
    """What is stored of several calls (``since``: call SID -> epoch s), merged in stream order.

    One filtered read per call and kind (the server picks the call's messages out of the
    stream), ``concurrency`` at a time: how the console catches up on live calls.
    """
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(subject: str, start: float) -> list[StoredMessage]:
        async with gate:
            return await read(nc, subject, since=start)

    jobs = [
        one(f"{subjects.call_root(sid)}.{kind}", start)
        for sid, start in since.items()
        for kind in kinds
    ]
    found = [m for part in await asyncio.gather(*jobs) for m in part]
    return sorted(found, key=lambda m: m.seq)


# ------------------------------------------------------------------ call summaries


@dataclass(slots=True)
class CallSummary:
    """What ``voiceagent calls`` shows for one call (from its events only: no PHI)."""

    call_sid: str
    started_at: float
    ended_at: float | None = None
    duration_s: float | None = None
    end_reason: str = ""
    turns: int = 0
    barge_ins: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    cost: CallCost | None = None  # from the gateway's ``call.cost`` (shared.cost)

    @property
    def latency_p50_ms(self) -> float | None:
        """Median voice-to-voice latency over the call's turns."""
        return median(self.latencies_ms) if self.latencies_ms else None

    @property
    def latency_max_ms(self) -> float | None:
        """Worst voice-to-voice latency of the call."""
        return max(self.latencies_ms) if self.latencies_ms else None


_ERROR_EVENTS = frozenset({"asr.error", "asr.failed", "asr.unavailable", "agent.error"})


def summarize(events: Iterable[Event]) -> list[CallSummary]:
    """Per-call summaries from events (any order of calls; events of a call in order)."""
    calls: dict[str, CallSummary] = {}
    for ev in events:
        s = calls.get(ev.call_sid)
        if s is None:
            s = calls[ev.call_sid] = CallSummary(call_sid=ev.call_sid, started_at=ev.at)
        s.started_at = min(s.started_at, ev.at)
        if ev.name == "call.ended":
            s.ended_at = ev.at
            dur = ev.data.get("duration_s")
            s.duration_s = float(dur) if isinstance(dur, int | float) else None
            s.end_reason = str(ev.data.get("reason") or "")
        elif ev.name == "turn.first_audio":
            s.turns += 1
            v2v = ev.data.get("voice_to_voice_ms")
            if isinstance(v2v, int | float) and not isinstance(v2v, bool):
                s.latencies_ms.append(float(v2v))
        elif ev.name == "barge_in":
            s.barge_ins += 1
        elif ev.name == COST_EVENT:
            with contextlib.suppress(ValidationError):
                s.cost = CallCost.model_validate(ev.data)
        elif ev.name == "outbound.not_answered" and s.ended_at is None:
            s.ended_at = ev.at
            s.duration_s = 0.0
            s.end_reason = f"not_answered:{ev.data.get('reason') or ''}"
        elif ev.name in _ERROR_EVENTS or ev.name.endswith(".failed"):
            s.errors += 1
    return sorted(calls.values(), key=lambda c: c.started_at, reverse=True)


def parse_events(messages: Iterable[StoredMessage]) -> list[Event]:
    """The valid :class:`Event` bodies among ``messages`` (others are skipped)."""
    out: list[Event] = []
    for m in messages:
        try:
            out.append(parse_event(m.data))
        except (ValidationError, ValueError):
            continue
    return out


async def recent_calls(nc: NATS, *, since: float, limit: int = 50) -> list[CallSummary]:
    """Summaries of calls with events since ``since`` (epoch s), newest first."""
    msgs = await read(nc, subjects.ALL_EVENTS, since=since)
    return summarize(parse_events(msgs))[:limit]
