"""Per-call bookkeeping between a recognizer's events and the bus messages (pure logic).

:class:`UtteranceTracker` numbers utterances (increasing per call) whatever order a provider
reports an utterance's stop and final in, and keeps what the latency fields need.
:class:`AudioClock` maps a recognizer's stream positions to call positions and wall-clock time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.asr.providers.base import SpeechKind


@dataclass
class Utterance:
    """What the worker knows about the utterance in progress."""

    id: int
    started: bool = False
    stopped: bool = False
    final: bool = False
    start_ms: int | None = None  # stream position of the onset
    stopped_perf: float | None = None  # perf_counter() when the stop was reported
    endpointing_ms: float | None = None
    speech_ended_at: float | None = None  # wall clock


class UtteranceTracker:
    """Assigns utterance ids: a new one on ``speech_started``, or on any event that follows a
    finished utterance. Both "stop then final" (local) and "final then stop" orders keep one id.
    """

    def __init__(self, *, last_id: int = 0) -> None:
        self._next = last_id + 1
        self.current: Utterance | None = None

    def _new(self) -> Utterance:
        self.current = Utterance(id=self._next)
        self._next += 1
        return self.current

    def on(self, kind: SpeechKind) -> Utterance:
        """The utterance an event of ``kind`` belongs to (updating its state)."""
        u = self.current
        if kind == "speech_started":
            u = self._new()
            u.started = True
        elif kind == "speech_stopped":
            if u is None or u.stopped:
                u = self._new()
            u.stopped = True
        elif kind == "interim":
            if u is None or u.final:
                u = self._new()
        else:  # final
            if u is None or u.final:
                u = self._new()
            u.final = True
        return u

    @property
    def next_id(self) -> int:
        """The id the next new utterance will get."""
        return self._next

    @property
    def idle(self) -> bool:
        """No utterance is waiting for its final (a safe moment to hand the call over)."""
        return self.current is None or self.current.final

    def abandon(self) -> None:
        """The recognizer restarted: whatever was in progress will not complete."""
        if self.current is not None:
            self.current.final = True
            self.current.stopped = True


class AudioClock:
    """Positions and times of the audio a recognizer consumed.

    ``offset_ms`` maps stream positions (ms since the recognizer's first frame) to call
    positions (the Twilio media timestamp of that frame, when the gateway sent it).
    """

    def __init__(self) -> None:
        self.offset_ms = 0
        self.stream_ms = 0.0  # end of the last consumed frame, stream position
        self.last_wall = 0.0  # wall clock when that frame was sent (or received)
        self.total_ms = 0.0  # audio consumed by every recognizer of the call

    def start_stream(self, first_ts_ms: int | None) -> None:
        """A recognizer (re)starts; its position 0 is the frame about to be consumed."""
        self.offset_ms = first_ts_ms if first_ts_ms is not None else round(self.total_ms)
        self.stream_ms = 0.0

    def consumed(self, nbytes: int, wall: float) -> None:
        """One frame of 8 kHz mu-law was handed to the recognizer."""
        ms = nbytes / 8.0
        self.stream_ms += ms
        self.total_ms += ms
        self.last_wall = wall

    def call_ms(self, stream_ms: int) -> int:
        """A stream position as a position in the call's audio."""
        return self.offset_ms + stream_ms

    def lag_ms(self, stream_ms: int) -> float:
        """Audio consumed after ``stream_ms`` (e.g. the endpointing delay of a stop)."""
        return max(0.0, self.stream_ms - stream_ms)

    def wall_at(self, stream_ms: int) -> float:
        """Wall clock of stream position ``stream_ms`` (audio arrives in real time)."""
        if not self.last_wall:
            return time.time()
        return self.last_wall - self.lag_ms(stream_ms) / 1000.0
