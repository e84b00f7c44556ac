"""Redelivery of work lost with a dying agent or TTS replica: the gateway's watchdog (failover.md).

Agent and TTS work travels as core NATS queue-group messages: if the replica that got one
dies, the message dies with it. The gateway owns the call, so it notices and sends the work
again to the same queue group on a retry subject:

- **Turns.** A final, non-empty transcript whose reply has not finished (no segment of that
  utterance with ``last``) and has made no progress (no segment, no agent
  :class:`~shared.messages.TurnHeartbeat`) for ``turn_retry_s`` is re-sent on
  ``voice.<call>.retry.turn``. Agents take a lease per utterance (``services/agent/leases.py``),
  so a re-sent transcript is answered only if its first replica died.
- **Segments.** The segment next in playback order whose audio has not ended (no ``Va-Last``)
  and has received nothing for ``segment_stall_s`` is re-sent on ``voice.<call>.retry.segment``.
  The playback queue keeps chunks by ``(turn, seq, chunk)`` and drops those it already has, so
  the new synthesis fills in only what the lost one did not deliver: the segment plays once.

Both are bounded (a few retries each) and stop for turns already played or interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.gateway.transcripts import TranscriptMessage
from shared import subjects
from shared.logging import kv
from shared.messages import ReplySegment, Transcript, TurnHeartbeat
from shared.metrics import BAD_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "gateway"
TURN_RETRY_S = 1.0  # no reply progress for an utterance this long: send it again
TURN_RETRY_WINDOW_S = 15.0  # stop re-sending an utterance this long after its final
SEGMENT_STALL_S = 1.0  # the next segment to play got no audio for this long: synthesize again
SEGMENT_RETRIES = 2
MAX_WATCHED_SEGMENTS = 256
TICK_S = 0.25

EventSink = Callable[..., Awaitable[None]]


@dataclass
class _Turn:
    utterance_id: int
    raw: bytes  # the Transcript as published by ASR
    final_at: float
    progress_at: float
    turn: int | None = None  # the reply's turn, once a segment arrived
    retries: int = 0


@dataclass
class _Segment:
    raw: bytes  # the ReplySegment as published by the agent
    progress_at: float
    retries: int = 0


class Redelivery:
    """Watches one call's replies and re-sends lost agent and TTS work. See module docstring.

    It reads the call's transcripts through :class:`~services.gateway.transcripts.TranscriptFeed`
    (:meth:`on_message`).
    """

    def __init__(
        self,
        *,
        nc: NATS,
        call_sid: str,
        event: EventSink,
        done_turn: Callable[[], int],
        turn_retry_s: float = TURN_RETRY_S,
        segment_stall_s: float = SEGMENT_STALL_S,
    ) -> None:
        self._nc = nc
        self._call = call_sid
        self._event = event
        self._done_turn = done_turn
        self._turn_retry_s = turn_retry_s
        self._stall_s = segment_stall_s
        self._turn: _Turn | None = None
        self._segs: dict[tuple[int, int], _Segment] = {}
        self._head: tuple[int, int] | None = None
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self.turn_retries = 0
        self.segment_retries = 0

    async def start(self) -> None:
        """Watch the agents' heartbeats and start the redelivery loop."""
        self._subs = [
            await self._nc.subscribe(subjects.turn_heartbeat(self._call), cb=self._on_beat),
        ]
        self._task = asyncio.create_task(self._run(), name=f"redelivery-{id(self):x}")

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    # ------------------------------------------------------------------ input

    async def on_message(self, message: TranscriptMessage, raw: bytes) -> None:
        """A message of the call's transcript subject (a reader of its ``TranscriptFeed``)."""
        if isinstance(message, Transcript):
            self.on_transcript(message, raw, time.monotonic())

    async def _on_beat(self, msg: Msg) -> None:
        try:
            hb = TurnHeartbeat.model_validate_json(msg.data)
        except ValidationError:
            BAD_MESSAGES.labels(SERVICE, "turn_heartbeat").inc()
            return
        self.on_heartbeat(hb.utterance_id, time.monotonic())

    def on_heartbeat(self, utterance_id: int, now: float) -> None:
        """An agent replica is working on ``utterance_id``: do not re-send it."""
        t = self._turn
        if t is not None and t.utterance_id == utterance_id:
            t.progress_at = now

    def on_transcript(self, tr: Transcript, raw: bytes, now: float) -> None:
        """A transcript: a final, non-empty one is a turn the agents owe the caller."""
        if not tr.is_final or not tr.text.strip():
            return
        if self._turn is not None and tr.utterance_id <= self._turn.utterance_id:
            return
        self._turn = _Turn(utterance_id=tr.utterance_id, raw=raw, final_at=now, progress_at=now)

    def on_segment(self, seg: ReplySegment, raw: bytes, now: float) -> None:
        """A reply segment (from ``voice.<call>.reply``)."""
        t = self._turn
        if t is not None and seg.utterance_id == t.utterance_id:
            t.progress_at = now
            t.turn = seg.turn
            if seg.last:
                self._turn = None  # the reply is complete: the segments are watched from here
        key = (seg.turn, seg.seq)
        if key not in self._segs and len(self._segs) < MAX_WATCHED_SEGMENTS:
            self._segs[key] = _Segment(raw=raw, progress_at=now)

    def on_chunk(self, turn: int, seq: int, last: bool, now: float) -> None:
        """An audio chunk (hot path: a dict lookup)."""
        seg = self._segs.get((turn, seq))
        if seg is None:
            return
        if last:
            del self._segs[(turn, seq)]
        else:
            seg.progress_at = now

    # ------------------------------------------------------------------ retries

    def due(self, now: float) -> tuple[bytes | None, bytes | None]:
        """(transcript to re-send, segment to re-send) now, each possibly None."""
        done = self._done_turn()
        turn_raw = seg_raw = None
        t = self._turn
        if t is not None:
            if (t.turn is not None and t.turn <= done) or now - t.final_at > TURN_RETRY_WINDOW_S:
                self._turn = None  # played, interrupted, or given up on
            elif now - t.progress_at >= self._turn_retry_s:
                t.retries += 1
                t.progress_at = now
                turn_raw = t.raw
        for key in [k for k in self._segs if k[0] <= done]:
            del self._segs[key]
        if self._segs:
            key = min(self._segs)
            seg = self._segs[key]
            if key != self._head:
                # Newly next in line: its replica may have been busy with the one before.
                self._head = key
                seg.progress_at = max(seg.progress_at, now)
            if now - seg.progress_at >= self._stall_s:
                if seg.retries >= SEGMENT_RETRIES:
                    del self._segs[key]  # playback skips it on its own timeout
                else:
                    seg.retries += 1
                    seg.progress_at = now
                    seg_raw = seg.raw
        return turn_raw, seg_raw

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                turn_raw, seg_raw = self.due(time.monotonic())
                if turn_raw is not None:
                    self.turn_retries += 1
                    await self._nc.publish(subjects.retry_turn(self._call), turn_raw)
                    log.info("turn re-sent to the agents", **kv(call=self._call))
                    await self._event("agent.retry", retries=self.turn_retries)
                if seg_raw is not None:
                    self.segment_retries += 1
                    await self._nc.publish(subjects.retry_segment(self._call), seg_raw)
                    log.info("segment re-sent to TTS", **kv(call=self._call))
                    await self._event("tts.retry", retries=self.segment_retries)
            except Exception as e:  # reconnecting: try again next tick
                log.debug("retry publish failed", **kv(call=self._call, error=type(e).__name__))
