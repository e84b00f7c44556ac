"""The claim side of the ASR worker: what a held call is, and which claims it refuses.

The protocol is the one in ``docs/subjects.md``: the gateway claims a call through the ``asr``
queue group, the worker that accepts holds it and heartbeats it every ``HEARTBEAT_S``; a
worker refuses when it is draining, not started yet, at capacity, or when the call ended
(:class:`EndedCalls`: a late claim for one is refused).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from services.asr.intake import FrameQueue
from services.asr.providers.base import AsrProvider, CpuMeter
from services.asr.turntaking.turns import CallTurns
from services.asr.utterances import AudioClock, UtteranceTracker

ENDED_REMEMBERED = 10_000  # ended calls remembered (a late claim for one is refused)


@dataclass(eq=False)
class HeldCall:
    """One call this worker holds: its audio queue, recognizer task and bookkeeping."""

    sid: str
    queue: FrameQueue
    tracker: UtteranceTracker
    recognizer: AsrProvider  # the one running now (a failover's fallback once it took over)
    clock: AudioClock = field(default_factory=AudioClock)
    task: asyncio.Task[None] | None = None
    last_seq: int = -1
    last_audio: float = field(default_factory=time.monotonic)
    closing: bool = False
    stage_failed: bool = False  # StageFailed already published (the agent apologized)
    traceparent: str | None = None  # the call's trace context (from the gateway's frames)
    cpu: CpuMeter = field(default_factory=CpuMeter)  # embedded recognizers' CPU for this call
    turns: CallTurns | None = None  # the end-of-turn decision over the recognizer's segments
    last_final_id: int | None = None  # the last utterance with words (a continuation's origin)


class EndedCalls:
    """The calls that ended lately (bounded: the oldest forgotten first)."""

    def __init__(self, *, size: int = ENDED_REMEMBERED) -> None:
        self._sids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, call_sid: str) -> None:
        self._sids[call_sid] = None
        if len(self._sids) > self._size:
            self._sids.popitem(last=False)

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._sids
