"""Any recognizer's events through the one end-of-turn decision (``SMART_ENDPOINTING``).

The recognizer runs with the short pause (``ENDPOINTING_MIN_MS``) and closes a segment at each;
:class:`CallTurns` keeps the call's last seconds of audio, feeds the segments to the
:class:`~services.asr.turntaking.turn_gate.TurnGate` and asks
:func:`~services.asr.turntaking.end_of_turn.decide` about each pause, with the acoustic
finality of the speech that ended it (:mod:`services.asr.turntaking.prosody`). The gate's clock
is the audio itself: every frame the recognizer consumes advances it, so a held turn ends after
the same pause whether the recognizer is local or remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import numpy.typing as npt

from services.asr.providers.base import SpeechEvent
from services.asr.turntaking.end_of_turn import (
    FUNCTION_WORDS,
    Action,
    EndOfTurnPolicy,
    Evidence,
    Word,
    decide,
    is_filler,
)
from services.asr.turntaking.prosody import Finality, finality
from services.asr.turntaking.turn_gate import Segment, TurnGate, Verdict
from shared.answers import AnswerKind
from shared.audio import ulaw_to_float
from shared.level import rms_dbfs

_QUOTED = re.compile(r"'([^']*)'")
TAIL_MS = 3000  # audio kept for the acoustic cue (the last second of a segment, with slack)
ACOUSTIC_MS = 1000
_BYTES_PER_MS = 8  # 8 kHz mu-law
SOUNDING_MARGIN_DB = 15.0  # within this of the last segment's loud frames: the caller again
RECENT_MS = 60
# A resumed number ("one, two, ...") dips between its words: the loudest RECENT_MS of the last
# SOUNDING_LOOKBACK_MS counts, so one dip in the grace does not end the turn under its onset.
SOUNDING_LOOKBACK_MS = 200
SOUNDING_STEP_MS = 20
SOUNDING_FLOOR_DBFS = -55.0  # quieter than this is silence, whatever the caller's level


class CallTurns:
    """One call's turn-taking across its recognizer streams (restarts keep the gate)."""

    def __init__(self, *, policy: EndOfTurnPolicy, rejoin_ms: int, acoustic: bool = True) -> None:
        self._policy = policy
        self._acoustic = acoustic
        self._rejoin_ms = rejoin_ms
        self.gate = TurnGate(decide=self._decide, rejoin_ms=rejoin_ms)
        self._tail = bytearray()
        self._tail_end_ms = 0  # stream position of the tail's last byte
        self._position = 0
        self._expects: AnswerKind | None = None  # what the agent's last reply asked for
        self._level: float | None = None  # the held segment's speech level (dBFS)
        self._level_of = -1  # ...of the segment ending here

    def _decide(self, segments: Sequence[Segment]) -> Verdict:
        words = tuple(
            Word(text=w, confidence=s.confidence) for s in segments for w in s.text.split()
        )
        last = segments[-1]
        evidence = Evidence(
            words=words,
            pause_ms=max(1.0, float(self._position - last.end_ms)),
            text=" ".join(s.text for s in segments),
            expects=self._expects,
            acoustic=self._finality(last.end_ms) if self._acoustic else None,
            confidence=min(
                (s.confidence for s in segments if s.confidence is not None), default=None
            ),
        )
        d = decide(evidence, self._policy)
        wait = self._policy.max_wait_ms if d.action is Action.LISTEN else d.wait_ms
        complete = d.completeness >= (self._policy.complete_at + self._policy.incomplete_at) / 2
        return Verdict(wait_ms=wait, reason=safe_reason(d.reason), complete=complete)

    def _finality(self, end_ms: int) -> Finality | None:
        speech = self._audio(end_ms - ACOUSTIC_MS, min(end_ms, self._tail_end_ms))
        if len(speech) < 200 * _BYTES_PER_MS:
            return None
        return finality(speech)

    def _keep(self, chunk: bytes) -> None:
        self._tail += chunk
        self._position += len(chunk) // _BYTES_PER_MS
        self._tail_end_ms = self._position
        excess = len(self._tail) - TAIL_MS * _BYTES_PER_MS
        if excess > 0:
            del self._tail[:excess]

    def _sounding(self) -> bool:
        """A :data:`RECENT_MS` of the last :data:`SOUNDING_LOOKBACK_MS` of audio is at the level
        of the held segment's speech (its loud 20 ms blocks), not line noise: the caller may be
        speaking again."""
        segs = self.gate.held
        if not segs:
            return False
        last = segs[-1]
        if self._level_of != last.end_ms:
            speech = self._audio(last.start_ms, last.end_ms)
            blocks = [rms_dbfs(speech[i : i + 160]) for i in range(0, len(speech) - 159, 160)]
            self._level = float(np.percentile(blocks, 90)) if blocks else None
            self._level_of = last.end_ms
        if self._level is None:
            return False
        now = self._tail_end_ms
        ends = range(now, now - SOUNDING_LOOKBACK_MS, -SOUNDING_STEP_MS)
        # Only what came after the segment's end: never its own speech.
        recent = max(rms_dbfs(self._audio(max(e - RECENT_MS, last.end_ms), e)) for e in ends)
        return recent > SOUNDING_FLOOR_DBFS and recent >= self._level - SOUNDING_MARGIN_DB

    def _audio(self, start_ms: int, end_ms: int) -> npt.NDArray[np.float32]:
        """The tail's audio between two stream positions (what of it is still kept)."""
        first = self._tail_end_ms - len(self._tail) // _BYTES_PER_MS
        a = max(0, start_ms - first)
        b = max(a, end_ms - first)
        return ulaw_to_float(bytes(self._tail[a * _BYTES_PER_MS : b * _BYTES_PER_MS]))

    def _tick(self, position_ms: int) -> list[SpeechEvent]:
        return self.gate.tick(position_ms=position_ms, sounding=self._sounding)

    def expect(self, kind: AnswerKind | None) -> None:
        """What the agent's reply just asked for (``AgentAsked``): words that do not answer it
        yet ("It's") wait like a fragment; ``None``: nothing in particular."""
        self._expects = kind

    def hear(self, chunk: bytes) -> list[SpeechEvent]:
        """The recognizer is about to consume ``chunk`` (mu-law): keep it for the acoustic cue
        and advance the gate's clock (ends a held turn whose pause is long enough)."""
        self._keep(chunk)
        return self._tick(self._position)

    def on_event(self, ev: SpeechEvent) -> list[SpeechEvent]:
        """A recognizer event, at the audio heard so far."""
        return self.gate.on_event(ev, position_ms=self._position)

    def flush(self) -> list[SpeechEvent]:
        """The recognizer's stream ended: close a held turn."""
        return self.gate.flush(position_ms=self._position)

    def restart(self) -> None:
        """A (re)started recognizer counts from its first frame: a fresh gate on its positions."""
        self._position = 0
        self._tail_end_ms = 0
        self._tail.clear()
        self._level, self._level_of = None, -1
        self.gate = TurnGate(decide=self._decide, rejoin_ms=self._rejoin_ms)

    async def stream(
        self,
        recognize: Callable[[AsyncIterator[bytes]], AsyncIterator[SpeechEvent]],
        audio: AsyncIterator[bytes],
    ) -> AsyncIterator[SpeechEvent]:
        """The recognizer's events over ``audio``, turns ended by the decision."""
        self.restart()
        queue: asyncio.Queue[SpeechEvent | int | BaseException | None] = asyncio.Queue()

        async def tapped() -> AsyncIterator[bytes]:
            async for chunk in audio:
                self._keep(chunk)
                queue.put_nowait(self._position)
                yield chunk

        async def pump() -> None:
            try:
                async for ev in recognize(tapped()):
                    queue.put_nowait(ev)
                queue.put_nowait(None)
            except BaseException as e:  # handed to the reader, in order
                queue.put_nowait(e)

        task = asyncio.create_task(pump())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, int):
                    events = self._tick(item)
                else:
                    events = self.on_event(item)
                for ev in events:
                    yield ev
            for ev in self.flush():
                yield ev
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def safe_reason(reason: str) -> str:
    """The decision's reason without the caller's words (events are not PHI): quoted words
    stay only when they are function words or fillers ("trailing 'for'")."""

    def keep(m: re.Match[str]) -> str:
        words = m.group(1).split()
        return m.group(0) if all(w in FUNCTION_WORDS or is_filler(w) for w in words) else "…"

    return _QUOTED.sub(keep, reason) or "complete"
