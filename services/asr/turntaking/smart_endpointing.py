"""Smart end of turn for the local recognizer: a short pause ends a complete sentence, a long
one ends anything (``SMART_ENDPOINTING``, decision record 0013). It sits above the VAD
segmenter (:mod:`services.asr.segmenter`) and the whisper engine
(:mod:`services.asr.whisper_engine`), below the provider that runs it.

A single silence timer has to choose between cutting callers off mid-sentence ("I'd like to
book an appointment for ... next Tuesday") and making every answer wait. Here the VAD endpointer
runs with the short pause (``ENDPOINTING_MIN_MS``); at each pause the utterance so far is
decoded speculatively, and:

- the words are a complete sentence (:func:`looks_complete`) or not speech at all: the turn ends
  as soon as the decode is back (unless the caller has already started speaking again);
- otherwise the turn stays open: speech within ``ENDPOINTING_MAX_MS`` of the pause continues the
  same utterance (one transcript for the whole sentence), and the turn ends at that maximum.

The decode made at the last pause is the final transcript (no second decode of the same audio).
At most ``max_speculations`` decodes are made per utterance; after that, pauses only merge and
the turn is decoded once, at the maximum. :class:`TurnEnder` is the pure decision logic (no
I/O, positions in 8 kHz samples); the provider runs the decodes, the evaluation in
:mod:`benchmarks.endpointing` replays it on a virtual clock.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from services.asr.providers.base import CpuMeter, SpeechEvent
from services.asr.segmenter import (
    MAX_UTTERANCE_MS,
    SPEECH_PAD_MS,
    Boundary,
    Endpointer,
    SampleBuffer,
    ms_to_samples,
    samples_to_ms,
)
from services.asr.whisper_engine import Decoded, WhisperEngine, decode_final, final_event

MAX_SPECULATIONS = 3

# A sentence ending in one of these words is not finished, whatever whisper's punctuation says
# (it likes to put a period after "... for").
INCOMPLETE_ENDINGS = frozenset(
    """
    a an the and but or nor so because since though although if unless then than that which who
    whom whose where when while whether to of for with at on in into onto from by about like as
    until till after before between through over under per via my your our their his her its
    this these those is are was were am be been being do does did have has had will would can
    could should shall may might must need want um uh er erm uhm hmm also plus just well i i'm
    i'd i'll we we're you're it's there's
    """.split()
)
_WORD = re.compile(r"[a-z0-9']+")
_TRAILING_OFF = ("...", "…", ",", ";", ":", "-", "—")


def looks_complete(text: str) -> bool:
    """Whether ``text`` reads as a finished turn: terminal punctuation, and no trailing
    conjunction, preposition, article or filler ("... for.", "and um", "because...")."""
    t = text.strip().replace("’", "'")
    if not t or t.endswith(_TRAILING_OFF) or t[-1] not in ".?!":
        return False
    words = _WORD.findall(t.lower())
    return bool(words) and words[-1] not in INCOMPLETE_ENDINGS


@dataclass(frozen=True, slots=True)
class Begin:
    """A new utterance started at ``start`` (publish ``speech_started``)."""

    start: int


@dataclass(frozen=True, slots=True)
class Speculate:
    """Decode samples ``start``..``end`` now, as attempt ``gen``."""

    gen: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Drop:
    """Speech resumed: attempt ``gen`` is stale (cancel it if it has not started)."""

    gen: int


@dataclass(frozen=True, slots=True)
class Interim:
    """Attempt's words, not a finished sentence: publish them as an interim transcript."""

    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class EndTurn:
    """The turn is over: ``start``..``end``; its transcript is attempt ``gen`` (``None``: decode
    it now)."""

    start: int
    end: int
    gen: int | None


Action = Begin | Speculate | Drop | Interim | EndTurn


class TurnEnder:
    """Turns VAD boundaries (cut at the short pause) into turns, one call, no I/O."""

    def __init__(
        self,
        *,
        max_ms: int,
        max_speculations: int = MAX_SPECULATIONS,
        max_utterance_ms: int = MAX_UTTERANCE_MS,
    ) -> None:
        self._max = ms_to_samples(max_ms)
        self._max_spec = max_speculations
        self._max_len = ms_to_samples(max_utterance_ms)
        self._start: int | None = None  # onset of the open turn
        self._end = 0  # end of its last speech, while paused
        self._paused = False
        self._gen = 0  # last attempt issued
        self._pending_gen: int | None = None  # the attempt that covers the paused turn
        self._result: Decoded = None
        self._decoded = False
        self._specs = 0

    @property
    def open_from(self) -> int | None:
        """Onset of the turn still open (its audio must be kept), if any."""
        return self._start

    @property
    def paused(self) -> bool:
        """A turn is open and the caller is in a pause."""
        return self._paused

    def boundary(self, b: Boundary) -> list[Action]:
        """A VAD boundary (the endpointer runs with the short pause)."""
        if b.kind == "start":
            if self._paused:  # the same sentence goes on: merge
                self._paused = False
                stale = self._pending_gen
                self._pending_gen, self._decoded, self._result = None, False, None
                return [Drop(stale)] if stale is not None else []
            self._start, self._specs = b.start, 0
            return [Begin(b.start)]
        start = self._start if self._start is not None else b.start
        if b.forced or b.end - start >= self._max_len:
            return [self._end_turn(start, b.end, None)]
        self._start, self._end, self._paused = start, b.end, True
        self._decoded, self._result = False, None
        if self._specs >= self._max_spec:
            self._pending_gen = None
            return []
        self._specs += 1
        self._gen += 1
        self._pending_gen = self._gen
        return [Speculate(self._gen, start, b.end)]

    def decoded(self, gen: int, result: Decoded, *, onset_pending: bool) -> list[Action]:
        """Attempt ``gen`` is back (ignored unless it covers the paused turn)."""
        if not self._paused or gen != self._pending_gen:
            return []
        self._decoded, self._result = True, result
        if self._ends_now(onset_pending):
            assert self._start is not None
            return [self._end_turn(self._start, self._end, gen)]
        if result is not None:
            return [Interim(result[0], self._start or 0, self._end)]
        return []

    def tick(self, position: int, *, onset_pending: bool) -> list[Action]:
        """Audio advanced to ``position`` (after each VAD window)."""
        if not self._paused:
            return []
        assert self._start is not None
        if position - self._end >= self._max or (self._decoded and self._ends_now(onset_pending)):
            return [self._end_turn(self._start, self._end, self._pending_gen)]
        return []

    def flush(self) -> list[Action]:
        """End of stream (after the endpointer's own flush): close a paused turn."""
        if not self._paused or self._start is None:
            return []
        return [self._end_turn(self._start, self._end, self._pending_gen)]

    def _ends_now(self, onset_pending: bool) -> bool:
        # Speech that may be the sentence going on: wait until the VAD has decided.
        if onset_pending:
            return False
        return self._result is None or looks_complete(self._result[0])

    def _end_turn(self, start: int, end: int, gen: int | None) -> EndTurn:
        self._start, self._paused, self._pending_gen = None, False, None
        self._decoded, self._result, self._specs = False, None, 0
        return EndTurn(start, end, gen)


# --------------------------------------------------------------------------- provider side


class SmartTurns:
    """Runs :class:`TurnEnder` inside :class:`~services.asr.providers.local.LocalAsr`: decodes
    in the shared whisper engine, events on the call's ordered output queue."""

    def __init__(
        self,
        *,
        max_ms: int,
        endpointer: Endpointer,
        buf: SampleBuffer,
        engine: WhisperEngine,
        out: asyncio.Queue[Any],
        meter: CpuMeter | None = None,
    ) -> None:
        self.ender = TurnEnder(max_ms=max_ms)
        self._meter = meter  # the call's CPU account (its decodes add to it)
        self._ep = endpointer
        self._buf = buf
        self._engine = engine
        self._out = out
        self._attempts: dict[int, asyncio.Future[Decoded]] = {}

    def keep_from(self, endpointer_keep: int) -> int:
        """The earliest sample still needed (an open turn's onset, minus the pad)."""
        start = self.ender.open_from
        if start is None:
            return endpointer_keep
        return min(endpointer_keep, max(0, start - ms_to_samples(SPEECH_PAD_MS)))

    def boundary(self, b: Boundary) -> None:
        self._apply(self.ender.boundary(b))

    def tick(self) -> None:
        if self.ender.paused:
            self._apply(self.ender.tick(self._ep.position, onset_pending=self._ep.onset_pending))

    def flush(self) -> None:
        self._apply(self.ender.flush())

    def _samples(self, start: int, end: int) -> npt.NDArray[np.float32]:
        pad = ms_to_samples(SPEECH_PAD_MS)
        return self._buf.slice(start - pad, end + pad).copy()

    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Begin):
                ms = samples_to_ms(a.start)
                self._out.put_nowait(
                    SpeechEvent(kind="speech_started", audio_ms=ms, speech_start_ms=ms)
                )
            elif isinstance(a, Speculate):
                fut = asyncio.wrap_future(
                    self._engine.submit(self._samples(a.start, a.end), meter=self._meter)
                )
                self._attempts[a.gen] = fut
                fut.add_done_callback(partial(self._done, a.gen))
            elif isinstance(a, Drop):
                stale = self._attempts.pop(a.gen, None)
                if stale is not None:
                    stale.cancel()  # still queued behind other calls' decodes: never run it
            elif isinstance(a, Interim):
                self._out.put_nowait(
                    SpeechEvent(
                        kind="interim",
                        audio_ms=samples_to_ms(a.end),
                        text=a.text,
                        speech_start_ms=samples_to_ms(a.start),
                        speech_end_ms=samples_to_ms(a.end),
                    )
                )
            else:
                self._end(a)

    def _end(self, a: EndTurn) -> None:
        start_ms, end_ms = samples_to_ms(a.start), samples_to_ms(a.end)
        self._out.put_nowait(
            SpeechEvent(
                kind="speech_stopped",
                audio_ms=end_ms,
                speech_start_ms=start_ms,
                speech_end_ms=end_ms,
            )
        )
        attempt = self._attempts.pop(a.gen, None) if a.gen is not None else None
        if attempt is not None:  # the last pause's decode is the final: no second decode
            final = final_event(attempt, start_ms, end_ms)
        else:
            samples = self._samples(a.start, a.end)
            final = decode_final(self._engine, samples, start_ms, end_ms, self._meter)
        self._out.put_nowait(asyncio.ensure_future(final))

    def _done(self, gen: int, fut: asyncio.Future[Decoded]) -> None:
        if fut.cancelled() or gen not in self._attempts:
            return
        # A failed decode ends the turn; the final then raises the error, in order.
        result = None if fut.exception() is not None else fut.result()
        self._apply(self.ender.decoded(gen, result, onset_pending=self._ep.onset_pending))
