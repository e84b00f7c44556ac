"""The gateway's side of the ASR claim protocol (docs/subjects.md), and caller audio publishing.

One ASR worker holds each call. The link asks the ``asr`` queue group for one (request/reply),
retries on refusal or no responders, watches the worker's heartbeats, claims again after
``HEARTBEAT_MISSES`` missed ones, and keeps the last seconds of caller audio so that what was
said while no recognizer listened is replayed to the new one.

Frames are published only while a worker holds the call, on a subject addressed to that worker
(``voice.<call>.audio.in.<worker>``); until then (and between a lost worker and the next claim)
they wait in the ring buffer. This gives the recognizer every frame once, in order, after a
claim: frames still in flight to a lost worker can never reach its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.gateway.audio_batch import batcher_for
from services.gateway.transcripts import TranscriptFeed, TranscriptMessage
from shared import subjects
from shared.audio import FRAME_MS
from shared.headers import audio_in_headers
from shared.logging import kv
from shared.messages import (
    HEARTBEAT_MISSES,
    HEARTBEAT_S,
    AsrClaim,
    AsrClaimReply,
    AsrHeartbeat,
    Transcript,
)
from shared.metrics import BAD_MESSAGES, FRAMES, FRAMES_DROPPED, STAGE_LATENCY

log = logging.getLogger(__name__)

SERVICE = "gateway"
RING_S = 3.0  # caller audio kept for replay after a (re-)claim
REPLAY_MARGIN_MS = 300  # audio skipped after the last final's end on a re-claim
CLAIM_TIMEOUT_S = 1.0
REFUSED_BACKOFF_S = (0.05, 0.5)  # all replicas busy: ask again soon
UNAVAILABLE_BACKOFF_S = (0.25, 2.0)  # no ASR worker up at all

_FRAMES_IN = FRAMES.labels(SERVICE, "in")
_DROPPED_NO_ASR = FRAMES_DROPPED.labels(SERVICE, "no_asr")

EventSink = Callable[..., Awaitable[None]]


def backoff(attempt: int, bounds: tuple[float, float]) -> float:
    """Exponential delay for the ``attempt``-th retry (0-based), capped."""
    low, high = bounds
    return float(min(high, low * (2 ** min(attempt, 16))))


def replay_start(
    ring: deque[tuple[int, bytes, str, str]], received: int, final_end_ms: int | None
) -> int:
    """The frame index after which to replay ``ring`` to a newly claimed worker.

    Frames up to ``final_end_ms`` (plus :data:`REPLAY_MARGIN_MS`, as recognizers place the end
    of speech a little early) belong to utterances already transcribed: replaying them would
    make the new worker publish the same words again under a new utterance id.
    """
    if not ring:
        return received
    start = ring[0][0] - 1
    if final_end_ms is None:
        return start
    cut = final_end_ms + REPLAY_MARGIN_MS
    for n, _frame, _seq, ts in ring:
        try:
            if int(ts) >= cut:
                return n - 1
        except ValueError:
            return start  # no usable timestamps: replay everything, as before
    return received


class AsrLink:
    """Claims and keeps an ASR worker for one call; publishes the caller's audio to it."""

    traceparent: str | None = None  # the call's trace context, sent on every frame when set

    def __init__(
        self,
        *,
        nc: NATS,
        call_sid: str,
        gateway_id: str,
        event: EventSink,
        ring_s: float = RING_S,
        claim_timeout_s: float = CLAIM_TIMEOUT_S,
        heartbeat_s: float = HEARTBEAT_S,
        heartbeat_misses: int = HEARTBEAT_MISSES,
        transcripts: TranscriptFeed | None = None,
    ) -> None:
        self._nc = nc
        self._call = call_sid
        self._gateway_id = gateway_id
        self._event = event
        self._subject = ""  # voice.<call>.audio.in.<worker>, set by each claim
        self._ring: deque[tuple[int, bytes, str, str]] = deque(
            maxlen=max(1, int(ring_s * 1000 / FRAME_MS))
        )
        self._n = 0  # frames received
        self._published = 0  # highest frame index published to the current worker
        self._claimed = False
        self._claim_timeout = claim_timeout_s
        self._hb_s = heartbeat_s
        self._hb_limit = heartbeat_s * heartbeat_misses
        self._last_hb = 0.0
        self.worker_id: str | None = None
        self.claims = 0
        self.last_utterance_id = 0  # passed on re-claims so utterance ids keep increasing
        # Call position (Twilio ms) where the last final transcript ended: a re-claim replays
        # only the audio after it, so the new worker never recognizes an utterance twice.
        self.final_end_ms: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._subs: list[Subscription] = []
        self._closed = False
        # The call's one transcript subscription; a link used on its own subscribes a feed.
        self._own_feed: TranscriptFeed | None = None
        if transcripts is None:
            transcripts = self._own_feed = TranscriptFeed(nc=nc, call_sid=call_sid)
        transcripts.add(self.on_transcript)

    @property
    def claimed(self) -> bool:
        """A worker holds the call and receives live audio."""
        return self._claimed

    async def start(self) -> None:
        """Listen for heartbeats and start claiming in the background."""
        self._subs = [await self._nc.subscribe(subjects.asr_heartbeat(self._call), cb=self._on_hb)]
        if self._own_feed is not None:
            self._subs.append(await self._own_feed.subscribe())
        self._task = asyncio.create_task(self._run(), name=f"asr-link-{id(self):x}")

    async def close(self) -> None:
        """Stop claiming and watching (the worker forgets the call on ``CallEnded``)."""
        self._closed = True
        with contextlib.suppress(Exception):
            await batcher_for(self._nc).flush()  # our last frames go out before CallEnded
        self._claimed = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    # ------------------------------------------------------------------ hot path

    async def send(self, frame: bytes, seq: str, ts: str) -> None:
        """One inbound 20 ms frame: published now if a worker holds the call, else kept."""
        self._n += 1
        ring = self._ring
        if len(ring) == ring.maxlen and ring[0][0] > self._published:
            _DROPPED_NO_ASR.inc()
        ring.append((self._n, frame, seq, ts))
        _FRAMES_IN.inc()
        if self._claimed:
            self._published = self._n
            await self._publish(frame, seq, ts)

    async def _publish(self, frame: bytes, seq: str, ts: str) -> None:
        hdrs = audio_in_headers(
            seq=seq, ts_ms=ts, sent_ns=time.time_ns(), traceparent=self.traceparent
        )
        # Coalesced with other calls' frames: one socket write per batch (audio_batch.py).
        batcher_for(self._nc).add(self._subject, frame, hdrs)

    async def _flush(self) -> int:
        """Publish what the worker has not had yet; live publishing resumes when caught up."""
        sent = 0
        while True:
            pending = [f for f in self._ring if f[0] > self._published]
            if not pending:
                self._claimed = True  # no await since the check: no frame can slip between
                return sent
            for n, frame, seq, ts in pending:
                await self._publish(frame, seq, ts)
                self._published = n
                sent += 1

    # ------------------------------------------------------------------ claim / watch

    async def _on_hb(self, msg: Msg) -> None:
        try:
            hb = AsrHeartbeat.model_validate_json(msg.data)
        except ValidationError:
            BAD_MESSAGES.labels(SERVICE, "asr_heartbeat").inc()
            return
        if hb.worker_id == self.worker_id:
            self._last_hb = time.monotonic()

    async def on_transcript(self, tr: TranscriptMessage, raw: bytes) -> None:
        """A message of the call's transcript subject: only its ids and positions are used."""
        if tr.utterance_id > self.last_utterance_id:
            self.last_utterance_id = tr.utterance_id
        if isinstance(tr, Transcript) and tr.is_final and tr.speech_end_ms is not None:
            if self.final_end_ms is None or tr.speech_end_ms > self.final_end_ms:
                self.final_end_ms = tr.speech_end_ms

    async def _run(self) -> None:
        reclaim = False
        while not self._closed:
            try:
                await self._claim(reclaim=reclaim)
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the link must outlive any bus hiccup
                log.warning("asr link error", **kv(call=self._call, error=type(e).__name__))
                await asyncio.sleep(0.5)
            reclaim = True

    async def _claim(self, *, reclaim: bool) -> None:
        started = time.monotonic()
        attempt = refused = unavailable = 0
        reported = False
        while not self._closed:
            body = AsrClaim(
                call_sid=self._call,
                gateway_id=self._gateway_id,
                attempt=attempt,
                last_utterance_id=self.last_utterance_id,
            )
            attempt += 1
            try:
                msg = await self._nc.request(
                    subjects.ASR_CLAIM, body.to_bytes(), timeout=self._claim_timeout
                )
                reply = AsrClaimReply.model_validate_json(msg.data)
            except nats.errors.NoRespondersError:
                if not reported:
                    reported = True
                    log.warning("no ASR worker answers", **kv(call=self._call))
                    await self._event("asr.unavailable", attempt=attempt)
                await asyncio.sleep(backoff(unavailable, UNAVAILABLE_BACKOFF_S))
                unavailable += 1
                continue
            except nats.errors.TimeoutError:
                continue
            except ValidationError:
                BAD_MESSAGES.labels(SERVICE, "asr_claim_reply").inc()
                await asyncio.sleep(backoff(refused, REFUSED_BACKOFF_S))
                refused += 1
                continue
            if not reply.accepted:
                await asyncio.sleep(backoff(refused, REFUSED_BACKOFF_S))
                refused += 1
                continue
            self.worker_id = reply.worker_id
            self._subject = subjects.audio_in(self._call, reply.worker_id)
            self._last_hb = time.monotonic()
            self.claims += 1
            replayed = await self._flush()
            took = time.monotonic() - started
            STAGE_LATENCY.labels(SERVICE, "asr_claim").observe(took)
            data: dict[str, Any] = {
                "worker": reply.worker_id,
                "attempts": attempt,
                "ms": round(took * 1000, 1),
                "replayed_frames": replayed,
                "reclaim": reclaim,
            }
            await self._event("asr.claimed", **data)
            return

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._hb_s / 2)
            if time.monotonic() - self._last_hb > self._hb_limit:
                self._claimed = False
                # The next worker starts a fresh recognizer: give it the ring again, from the
                # end of the last utterance already transcribed.
                self._published = replay_start(self._ring, self._n, self.final_end_ms)
                log.warning("asr worker lost; claiming again", **kv(call=self._call))
                await self._event("asr.lost", worker=self.worker_id)
                self.worker_id = None
                return
