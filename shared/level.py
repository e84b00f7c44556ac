"""Level gate for voice activity: sound well under the caller's own speech level is not the caller.

Silero VAD scores any voice as speech, however distant: a TV or people talking behind the
caller keep it at 0.95-0.99 even at -50 dBFS, so a turn never ends and the greeting is cut.
:class:`SpeechLevel` follows the caller's speech level (RMS dBFS of the windows the VAD calls
speech, a slow moving average) and :meth:`SpeechLevel.gate` turns windows more than
``margin_db`` under it into silence (``VAD_LEVEL_MARGIN_DB``; 0 disables). The gate is relative
to the caller, so a quiet caller (say -45 dBFS) lowers the level and is still heard.

Pure logic, one instance per call: used by the local recognizer's endpointer
(``services/asr/providers/local.py``) and the gateway's barge-in detector
(``services/gateway/bargein.py``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

DEFAULT_SPEECH_DBFS = -30.0  # before the caller has said anything: a quiet-ish phone talker
SILENT_DBFS = -120.0  # level reported for digital silence
# Per 32 ms window of speech. Rising faster than falling makes the level follow the caller's
# stressed syllables (the weak ones sit 10-20 dB lower and would drag a plain mean into the
# range of background talk): ~0.3 s to rise, ~1.6 s to fall.
ATTACK = 0.1
RELEASE = 0.02
# Only windows this close to the level (a fraction of the margin) move it: background talk
# peaking just above the gate must not drag the caller's level down to its own.
UPDATE_FRACTION = 0.5
# The recognizer keeps the VAD's own trailing hangover (``hold_windows``) after a run of
# ``HOLD_AFTER_RUN`` windows of speech over the gate: a word's soft ending sits under the gate
# too, and without it every pause would end ~0.15 s sooner than without the gate. Background
# peaks rarely clear the gate that many windows running, so they do not re-arm it.
HOLD_AFTER_RUN = 5
HOLD_WINDOWS = 4  # 128 ms


def rms_dbfs(samples: npt.NDArray[np.float32]) -> float:
    """RMS level of float samples (full scale 1.0) in dBFS (:data:`SILENT_DBFS` for nothing)."""
    if not samples.size:
        return SILENT_DBFS
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    return 10.0 * math.log10(power) if power > 1e-12 else SILENT_DBFS


class SpeechLevel:
    """Running estimate of the caller's speech level and the gate derived from it."""

    def __init__(
        self, *, margin_db: float, initial_dbfs: float = DEFAULT_SPEECH_DBFS, hold_windows: int = 0
    ) -> None:
        self.margin_db = max(0.0, margin_db)
        self.level_dbfs = initial_dbfs
        self._hold_windows = hold_windows
        self._run = 0  # windows of speech over the gate in a row
        self._hold = 0  # windows under the gate still let through

    @property
    def enabled(self) -> bool:
        return self.margin_db > 0

    def too_quiet(self, dbfs: float) -> bool:
        """The window is more than the margin under the caller's level (not the caller)."""
        return self.enabled and dbfs < self.level_dbfs - self.margin_db

    def may_pass(self, dbfs: float) -> bool:
        """Whether :meth:`gate` could let a window of this level through (else the VAD need
        not score it: the gate returns 0 whatever the score)."""
        return not self.too_quiet(dbfs) or self._hold > 0

    def observe(self, dbfs: float) -> None:
        """A window the VAD called speech and the gate let through: follow its level."""
        if dbfs >= self.level_dbfs - self.margin_db * UPDATE_FRACTION:
            rate = ATTACK if dbfs > self.level_dbfs else RELEASE
            self.level_dbfs += rate * (dbfs - self.level_dbfs)

    def gate(self, prob: float, dbfs: float, *, threshold: float) -> float:
        """The VAD score to act on: 0 for a window under the gate, else ``prob`` (and a
        window at or above ``threshold`` updates the level)."""
        if not self.enabled:
            return prob
        if self.too_quiet(dbfs):
            self._run = 0
            if self._hold > 0:
                self._hold -= 1
                return prob
            return 0.0
        if prob >= threshold:
            self.observe(dbfs)
            self._run += 1
            if self._run >= HOLD_AFTER_RUN:
                self._hold = self._hold_windows
        else:
            self._run = 0
        return prob
