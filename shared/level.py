"""Level gate for voice activity: sound well under the caller's own speech level is not the caller.

Silero VAD scores any voice as speech, however distant: a TV or people talking behind the
caller keep it at 0.95-0.99 even at -50 dBFS, so a turn never ends and the greeting is cut.
:class:`SpeechLevel` follows the caller's speech level (RMS dBFS of the windows the VAD calls
speech, a slow moving average) and :meth:`SpeechLevel.gate` turns windows more than
``margin_db`` under it into silence (``VAD_LEVEL_MARGIN_DB``; 0 disables). The gate is relative
to the caller, so a quiet caller (say -45 dBFS) lowers the level and is still heard.

Talk from many voices at once (a café, a TV crowd, an open office) can sit closer to the caller
than any fixed margin allows. So, with ``background=True``, the gate also follows the background:
the quietest ~0.1 s of the last ~1.5 s (minimum statistics: between the caller's words the line
carries the background alone) is its floor; when the VAD calls the windows at that floor speech
(voices, not a hiss or a hum, which the VAD already rejects), windows less than
:data:`BACKGROUND_SPREAD_DB` over the floor are background too, though never closer than
:data:`MIN_MARGIN_DB` under the caller's level. On a quiet line or in steady noise only the
margin applies.

Pure logic, one instance per call: used by the local recognizer's endpointer
(``services/asr/providers/local.py``) and the gateway's barge-in detector
(``services/gateway/turntaking/voice_activity.py``).
"""

from __future__ import annotations

import math
from collections import deque

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
# Background floor: the minimum, over the last BACKGROUND_WINDOWS windows (~1.5 s), of the level
# averaged over BACKGROUND_SMOOTH windows (~0.1 s). Babble of several voices spans ~12 dB from
# that floor to its loudest 1 % of windows (docs/robustness.md).
BACKGROUND_WINDOWS = 47
BACKGROUND_SMOOTH = 3
BACKGROUND_SPREAD_DB = 12.0
MIN_MARGIN_DB = 10.0  # the background gate never comes closer than this to the caller's level
FLOOR_BAND_DB = 3.0  # windows this close to the floor are the background alone
BACKGROUND_RATE = 0.1  # how fast the background's "is it voices" average moves, per window


def rms_dbfs(samples: npt.NDArray[np.float32]) -> float:
    """RMS level of float samples (full scale 1.0) in dBFS (:data:`SILENT_DBFS` for nothing)."""
    if not samples.size:
        return SILENT_DBFS
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    return 10.0 * math.log10(power) if power > 1e-12 else SILENT_DBFS


class SpeechLevel:
    """Running estimate of the caller's speech level and the gate derived from it."""

    def __init__(
        self,
        *,
        margin_db: float,
        initial_dbfs: float = DEFAULT_SPEECH_DBFS,
        hold_windows: int = 0,
        background: bool = False,
    ) -> None:
        self.margin_db = max(0.0, margin_db)
        self.level_dbfs = initial_dbfs
        self._hold_windows = hold_windows
        self._run = 0  # windows of speech over the gate in a row
        self._hold = 0  # windows under the gate still let through
        self._background = background
        self._voices = 0.0  # share of floor windows the VAD calls speech (moving average)
        self._recent: deque[float] = deque(maxlen=BACKGROUND_SMOOTH)
        self._smoothed: deque[float] = deque(maxlen=BACKGROUND_WINDOWS)
        self._gate_dbfs = initial_dbfs - self.margin_db

    @property
    def enabled(self) -> bool:
        return self.margin_db > 0

    @property
    def background_dbfs(self) -> float | None:
        """Floor of the background over the last ~1.5 s (``None`` until that much was heard)."""
        if len(self._smoothed) < BACKGROUND_WINDOWS:
            return None
        return min(self._smoothed)

    @property
    def background_is_voices(self) -> bool:
        """The VAD calls the background speech (so the background gate applies)."""
        return self._voices > 0.5

    @property
    def gate_dbfs(self) -> float:
        """Windows under this level are not the caller."""
        return self._gate_dbfs

    def track(self, dbfs: float, *, speech: bool) -> None:
        """Every window's level and whether the VAD called it speech: follows the background."""
        if not self._background:
            return
        self._recent.append(dbfs)
        self._smoothed.append(sum(self._recent) / len(self._recent))
        floor = self.background_dbfs
        if floor is not None and dbfs <= floor + FLOOR_BAND_DB:
            self._voices += BACKGROUND_RATE * (float(speech) - self._voices)
        self._update_gate()

    def _update_gate(self) -> None:
        gate = self.level_dbfs - self.margin_db
        floor = self.background_dbfs
        if floor is not None and self.background_is_voices:
            gate = max(gate, min(floor + BACKGROUND_SPREAD_DB, self.level_dbfs - MIN_MARGIN_DB))
        self._gate_dbfs = gate

    def too_quiet(self, dbfs: float) -> bool:
        """The window is under the gate: too far under the caller's level, or within the
        background's own range (not the caller)."""
        return self.enabled and dbfs < self._gate_dbfs

    def may_pass(self, dbfs: float) -> bool:
        """Whether :meth:`gate` could let a window of this level through (else the VAD need
        not score it: the gate returns 0 whatever the score)."""
        return not self.too_quiet(dbfs) or self._hold > 0

    def observe(self, dbfs: float) -> None:
        """A window the VAD called speech and the gate let through: follow its level."""
        floor = self.background_dbfs
        if floor is not None and self.background_is_voices and dbfs < floor + BACKGROUND_SPREAD_DB:
            return  # a peak of the background, let through by the gate's cap: not the caller
        if dbfs >= self.level_dbfs - self.margin_db * UPDATE_FRACTION:
            rate = ATTACK if dbfs > self.level_dbfs else RELEASE
            self.level_dbfs += rate * (dbfs - self.level_dbfs)
            self._update_gate()

    def gate(self, prob: float, dbfs: float, *, threshold: float) -> float:
        """The VAD score to act on: 0 for a window under the gate, else ``prob`` (and a
        window at or above ``threshold`` updates the level)."""
        if not self.enabled:
            return prob
        self.track(dbfs, speech=prob >= threshold)
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
