"""Joins a recognizer's segments into turns by the end-of-turn decision (pure logic, no clock).

Every recognizer runs with a short pause (``ENDPOINTING_MIN_MS``): each pause closes a segment,
with its words. The gate holds the turn open across segments and asks
:mod:`services.asr.turntaking.end_of_turn` how long the pause must last before the turn is
over: a finished answer ends at once, a fragment ("my date of birth is") waits up to
``END_OF_TURN_MAX_WAIT_MS``. Speech that resumes within the wait continues the same turn (one
transcript). A turn that had to end on a fragment (the longest wait ran out) stays joinable
for ``END_OF_TURN_REJOIN_MS``: if the caller goes on, the next turn is published as its
continuation (``continues``), with the words of both, and the agent withdraws its reply to the
fragment. A turn that ended as finished stays joinable for :data:`COMPLETE_REJOIN_MS`: a clause
that reads finished before a comma pause ("Can you check the insurance for member 842, | date of
birth ...") is continued by the words that follow it at once, before its reply can be heard.

A pause is silence: while the audio sounds like the caller again (``sounding``: the caller's
speech level, not line noise) the turn is not ended for up to :data:`SOUNDING_GRACE_MS` more, so
a recognizer slow to confirm the resumed speech ("one, two, ..." said in short words) does not
see its turn cut under it.

Positions are ms of the recognizer's input stream; the caller of :meth:`TurnGate.tick` says how
far the audio has advanced, so the gate runs on virtual time in tests and benches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from services.asr.providers.base import EndOfTurn, SpeechEvent


@dataclass(frozen=True, slots=True)
class Segment:
    """Words the recognizer closed at one pause (stream positions in ms)."""

    text: str
    confidence: float | None
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """How long the pause after the words so far must last before the turn is over."""

    wait_ms: int  # pause (from the end of speech) that ends the turn; 0: at once
    reason: str  # why, for the ``end_of_turn`` event ("complete", "trailing_word", ...)
    complete: bool  # the words read as finished (a fragment stays joinable for longer)


Decide = Callable[[Sequence[Segment]], Verdict]
SOUNDING_GRACE_MS = 500  # the recognizer's onset confirmation (min speech) plus a window or two
# Speech resuming this soon after a finished-looking turn ended continues it: inside a comma
# pause (300 ms ended the turn; the clause goes on by ~700 ms), before the reply is audible.
COMPLETE_REJOIN_MS = 400


@dataclass(slots=True)
class _Ended:
    segments: list[Segment]
    ended_ms: int  # when the turn was ended (the rejoin window runs from there)
    rejoin_ms: int  # speech starting within this of ``ended_ms`` continues the turn


class TurnGate:
    """One call's turns, from a recognizer's segments and the end-of-turn decision."""

    def __init__(self, *, decide: Decide, rejoin_ms: int) -> None:
        self._decide = decide
        self._rejoin_ms = rejoin_ms
        self._segs: list[Segment] = []  # the open turn's words so far
        self._open = False  # a turn is open (its speech_started published)
        self._speaking = False  # the recognizer has a segment in progress
        self._seg_start: int | None = None
        self._verdict: Verdict | None = None
        self._continues = False
        self._own = 0  # segments of words the open turn added (a continuation starts with old ones)
        self._sound_end = 0  # end of the last wordless sound inside the held turn
        self._last: _Ended | None = None
        self._rejoin_of_last = rejoin_ms  # the continued turn's own window (a noise keeps it)

    @property
    def held(self) -> Sequence[Segment]:
        """The open turn's words so far."""
        return self._segs

    @property
    def holding(self) -> bool:
        """Words are held, waiting for the pause to end the turn."""
        return bool(self._segs) and not self._speaking

    def on_event(self, ev: SpeechEvent, *, position_ms: int) -> list[SpeechEvent]:
        """A recognizer event (``position_ms``: audio consumed so far)."""
        out: list[SpeechEvent] = []
        if ev.kind == "speech_started":
            start = ev.speech_start_ms if ev.speech_start_ms is not None else ev.audio_ms
            self._speaking, self._seg_start, self._verdict = True, start, None
            if not self._open:
                out.extend(self._open_turn(start, ev))
        elif ev.kind == "interim":
            if not self._open:
                out.extend(self._open_turn(self._start_of(ev), None))
            out.append(replace(ev, text=self._joined(ev.text), speech_start_ms=self._turn_start()))
        elif ev.kind == "final":
            out.extend(self._on_final(ev, position_ms))
        # speech_stopped: the segment's end comes with its final; published when the turn ends
        return out

    def tick(
        self, *, position_ms: int, sounding: Callable[[], bool] | None = None
    ) -> list[SpeechEvent]:
        """The audio advanced to ``position_ms``: end the turn when its pause is long enough
        (``sounding``, asked only then: the audio just heard is at the caller's speech level)."""
        if not self.holding or self._verdict is None:
            return []
        pause = position_ms - self._segs[-1].end_ms
        quiet = position_ms - max(self._segs[-1].end_ms, self._sound_end)
        if quiet < self._verdict.wait_ms:
            return []
        if (
            sounding is not None
            and quiet < self._verdict.wait_ms + SOUNDING_GRACE_MS
            and sounding()
        ):
            return []
        return self._end(self._verdict, pause)

    def flush(self, *, position_ms: int) -> list[SpeechEvent]:
        """The stream ended: close a held turn."""
        if not self._own:  # nothing new since the last turn ended
            self._segs, self._open, self._continues = [], False, False
            return []
        verdict = Verdict(wait_ms=0, reason="stream_end", complete=True)
        return self._end(verdict, position_ms - self._segs[-1].end_ms)

    # ------------------------------------------------------------------ internals

    def _start_of(self, ev: SpeechEvent) -> int:
        return ev.speech_start_ms if ev.speech_start_ms is not None else ev.audio_ms

    def _open_turn(self, start: int, ev: SpeechEvent | None) -> list[SpeechEvent]:
        self._open, self._own = True, 0
        last = self._last
        self._continues = bool(last and start - last.ended_ms <= last.rejoin_ms and last.segments)
        if self._continues and last is not None:
            self._segs = list(last.segments)  # the decision sees the whole sentence
            self._rejoin_of_last = last.rejoin_ms
        self._last = None
        return [ev] if ev is not None else []

    def _on_final(self, ev: SpeechEvent, position_ms: int) -> list[SpeechEvent]:
        out: list[SpeechEvent] = []
        start = ev.speech_start_ms if ev.speech_start_ms is not None else self._seg_start
        end = ev.speech_end_ms if ev.speech_end_ms is not None else ev.audio_ms
        self._speaking, self._seg_start = False, None
        if not ev.text.strip():
            if not self._own:
                # not speech (a cough, noise): end at once, as an empty final, so a paused
                # barge-in reverts without waiting; a fragment before it stays joinable
                return self._empty(ev)
            # A sound with no words inside a held turn ("um" heard as nothing, a cough): the
            # words stand, and the pause they wait for counts from the end of that sound.
            self._sound_end = max(self._sound_end, end)
            self._verdict = self._decide(self._segs)
            return self.tick(position_ms=position_ms)
        if not self._open:
            out.extend(self._open_turn(start if start is not None else end, None))
        self._own += 1
        self._segs.append(
            Segment(
                text=ev.text.strip(),
                confidence=ev.confidence,
                start_ms=start if start is not None else end,
                end_ms=end,
            )
        )
        self._verdict = self._decide(self._segs)
        ended = self.tick(position_ms=position_ms)
        if ended:
            return out + ended
        # Held: the words so far as an interim, so a barge-in is confirmed without waiting
        out.append(
            SpeechEvent(
                kind="interim",
                audio_ms=end,
                text=join_text(s.text for s in self._segs),
                speech_start_ms=self._segs[0].start_ms,
                speech_end_ms=end,
            )
        )
        return out

    def _empty(self, ev: SpeechEvent) -> list[SpeechEvent]:
        end = ev.speech_end_ms if ev.speech_end_ms is not None else ev.audio_ms
        start = ev.speech_start_ms if ev.speech_start_ms is not None else end
        if self._continues and self._segs:  # the fragment before stays joinable
            self._last = _Ended(segments=self._segs, ended_ms=end, rejoin_ms=self._rejoin_of_last)
        self._segs, self._open, self._continues, self._verdict = [], False, False, None
        self._sound_end = 0
        ended = EndOfTurn(reason="not_speech", wait_ms=0, pause_ms=0, segments=0, continues=False)
        return [
            SpeechEvent(
                kind="speech_stopped", audio_ms=end, speech_start_ms=start, speech_end_ms=end
            ),
            replace(ev, speech_start_ms=start, speech_end_ms=end, end_of_turn=ended),
        ]

    def _end(self, verdict: Verdict, pause_ms: int) -> list[SpeechEvent]:
        segs = self._segs
        start, end = segs[0].start_ms, segs[-1].end_ms
        confidences = [s.confidence for s in segs if s.confidence is not None]
        text = join_text(s.text for s in segs)
        ended = EndOfTurn(
            reason=verdict.reason,
            wait_ms=verdict.wait_ms,
            pause_ms=pause_ms,
            segments=len(segs),
            continues=self._continues,
        )
        rejoin = min(self._rejoin_ms, COMPLETE_REJOIN_MS) if verdict.complete else self._rejoin_ms
        self._last = _Ended(segments=list(segs), ended_ms=end + pause_ms, rejoin_ms=rejoin)
        self._segs, self._open, self._verdict, self._continues = [], False, None, False
        self._own, self._sound_end = 0, 0
        return [
            SpeechEvent(
                kind="speech_stopped", audio_ms=end, speech_start_ms=start, speech_end_ms=end
            ),
            SpeechEvent(
                kind="final",
                audio_ms=end,
                text=text,
                confidence=min(confidences) if confidences else None,
                speech_start_ms=start,
                speech_end_ms=end,
                end_of_turn=ended,
            ),
        ]

    def _joined(self, text: str) -> str:
        return join_text([*(s.text for s in self._segs), text])

    def _turn_start(self) -> int | None:
        return self._segs[0].start_ms if self._segs else self._seg_start


def join_text(parts: Iterable[str]) -> str:
    """Segments' words as one sentence: a recognizer's period before words that go on in lower
    case was a pause, not the end ("appointment for. next Tuesday" -> "... for next Tuesday")."""
    out = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if out and part[0].islower() and out.endswith("."):
            out = out[:-1]
        out = f"{out} {part}" if out else part
    return out
