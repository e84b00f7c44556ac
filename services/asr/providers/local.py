"""Embedded offline recognizer: the VAD segmenter and the whisper engine, one stream per call.

Per call the audio is scored by a Silero VAD of its own (:mod:`services.asr.segmenter`, run
inline: a thread hop would cost as much as the work) and cut into utterances; each finished
utterance (padded a little) is transcribed by the process's shared whisper engine
(:mod:`services.asr.whisper_engine`) while the call's VAD keeps consuming audio. With
``SMART_ENDPOINTING`` (the default) utterances are cut at the short pause
(``ENDPOINTING_MIN_MS``) and the worker's end-of-turn decision joins them into turns
(:mod:`services.asr.turntaking`), as for every recognizer. Windows far
under the caller's own speech level count as silence whatever the VAD says
(:mod:`shared.level`, ``VAD_LEVEL_MARGIN_DB``): talk in the background does not hold a turn open.

The words are decoded as soon as the speech has paused ``ASR_EARLY_DECODE_MS`` (a ``pause``
boundary), when a decoder is free: when the pause goes on to close the utterance, its final
is that decode, ready up to ``ENDPOINTING_MIN_MS - ASR_EARLY_DECODE_MS`` sooner; when the
caller speaks again first, the decode is dropped (cancelled if it has not started). Either way
its words go out as an ``interim`` as soon as they are known (the words so far): the gateway
tells "mm-hm" from "No." over agent audio by them without waiting for the pause to end.

Events of one call come out in order: a finished utterance's final precedes the next
utterance's ``speech_started``.

A final with empty text means the sound was not words (a cough, a door, whisper declining
it): consumers should treat the utterance's ``speech_started`` as a false alarm.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.asr.providers.base import CALL_CPU, AsrProvider, CpuMeter, SpeechEvent
from services.asr.segmenter import (
    SPEECH_PAD_MS,
    WINDOW,
    Boundary,
    Endpointer,
    SampleBuffer,
    ms_to_samples,
    new_vad,
    samples_to_ms,
)
from services.asr.whisper_engine import (
    PROVIDER,
    Decoded,
    WhisperEngine,
    final_event,
    get_engine,
    interim_event,
    loaded_engine,
)
from shared.audio import SAMPLE_RATE, ulaw_to_float
from shared.errors import ProviderError
from shared.level import HOLD_WINDOWS, SpeechLevel, rms_dbfs
from shared.settings import Settings

_END = object()


@dataclass(slots=True)
class _EarlyDecode:
    """The decode started at a pause, for the utterance span it covers."""

    start: int
    end: int
    future: Future[Decoded]

    def matches(self, b: Boundary) -> bool:
        return not b.forced and (b.start, b.end) == (self.start, self.end)


class LocalAsr(AsrProvider):
    """Offline recognizer (VAD endpointing + whisper tiny.en), one stream per call."""

    name = PROVIDER
    default_max_calls = max(4, 10 * (os.cpu_count() or 1))

    def __init__(self, *, settings: Settings) -> None:
        self._settings = settings
        self._threads = max(1, settings.asr_threads)
        self._decoders = max(1, settings.asr_decoders)
        self._min_window_s = settings.asr_min_window_s
        self._batch = max(1, settings.asr_batch)

    async def _engine(self) -> WhisperEngine:
        engine = loaded_engine()
        if engine is not None:
            return engine
        return await asyncio.to_thread(
            get_engine,
            threads=self._threads,
            decoders=self._decoders,
            min_window_s=self._min_window_s,
            batch=self._batch,
        )

    async def warm_up(self) -> None:
        """Load the model and run one decode (the first one allocates buffers)."""
        engine = await self._engine()
        rng = np.random.default_rng(0)
        tone = (0.05 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
        await asyncio.wrap_future(engine.submit(tone))
        await asyncio.to_thread(new_vad)

    async def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        """Recognize one call; see the module docstring."""
        engine = await self._engine()
        vad = await asyncio.to_thread(new_vad)
        out: asyncio.Queue[Any] = asyncio.Queue()
        meter = CALL_CPU.get()
        reader = asyncio.create_task(self._read(audio, vad, engine, out, meter))
        try:
            while True:
                item = await out.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, asyncio.Future):
                    item = await item
                    if item is None:  # an early decode that heard nothing (or was dropped)
                        continue
                yield item
        finally:
            reader.cancel()
            while not out.empty():
                left = out.get_nowait()
                if isinstance(left, asyncio.Future):
                    left.cancel()
                    if left.done() and not left.cancelled():
                        left.exception()  # retrieved: no "never retrieved" warning

    async def _read(
        self,
        audio: AsyncIterator[bytes],
        vad: Any,
        engine: WhisperEngine,
        out: asyncio.Queue[Any],
        meter: CpuMeter | None = None,
    ) -> None:
        """Consume the call's audio: VAD, boundaries, and decode tasks, in order, on ``out``;
        the CPU time of the VAD and of the call's decodes goes to ``meter``."""
        s = self._settings
        # Smart end of turn: segments close at the short pause, and the worker's end-of-turn
        # decision joins them into turns (services/asr/turntaking/).
        smart = s.smart_endpointing
        ep = Endpointer(
            threshold=s.vad_threshold,
            min_speech_ms=s.min_speech_ms,
            endpointing_ms=s.endpointing_min_ms if smart else s.endpointing_ms,
            early_ms=s.asr_early_decode_ms,
        )
        early: list[_EarlyDecode] = []  # at most one: the current pause's
        buf = SampleBuffer()
        # Background talk well under the caller's own level is silence (shared/level.py).
        level = SpeechLevel(
            margin_db=s.vad_level_margin_db, hold_windows=HOLD_WINDOWS, background=True
        )
        pending = np.zeros(0, dtype=np.float32)
        try:
            async for chunk in audio:
                if not chunk:
                    continue
                samples = ulaw_to_float(chunk)
                buf.append(samples)
                pending = np.concatenate((pending, samples)) if len(pending) else samples
                n = len(pending) - len(pending) % WINDOW
                started = time.thread_time()
                for i in range(0, n, WINDOW):
                    window = np.array(pending[i : i + WINDOW], dtype=np.float32)  # writable
                    prob = float(vad.process(memoryview(window.data)))  # always: VAD state
                    b = ep.push(level.gate(prob, rms_dbfs(window), threshold=s.vad_threshold))
                    if b is not None:
                        self._boundary(b, buf, engine, out, meter, early)
                if meter is not None:
                    meter.add(time.thread_time() - started)
                pending = pending[n:]
                buf.trim(ep.keep_from)
            b = ep.flush()
            if b is not None:
                self._boundary(b, buf, engine, out, meter, early)
            out.put_nowait(_END)
        except asyncio.CancelledError:
            for e in early:
                e.future.cancel()
            raise
        except Exception as e:  # hand the failure to the consumer, in order
            out.put_nowait(
                e
                if isinstance(e, ProviderError)
                else ProviderError(f"local asr failed: {type(e).__name__}", provider=PROVIDER)
            )

    def _boundary(
        self,
        b: Boundary,
        buf: SampleBuffer,
        engine: WhisperEngine,
        out: asyncio.Queue[Any],
        meter: CpuMeter | None,
        early: list[_EarlyDecode],
    ) -> None:
        start_ms, end_ms = samples_to_ms(b.start), samples_to_ms(b.end)
        reuse = early.pop() if early else None
        if reuse is not None and (b.kind != "stop" or not reuse.matches(b)):
            reuse.future.cancel()  # speech resumed: that decode's words are not the utterance's
            reuse = None
        pad = ms_to_samples(SPEECH_PAD_MS)
        if b.kind == "pause":
            # Speculate only on a free decoder: under load a wasted decode delays other calls'.
            if engine.free_worker():
                samples = buf.slice(b.start - pad, b.end + pad).copy()
                decode = engine.submit(samples, meter=meter)
                early.append(_EarlyDecode(b.start, b.end, decode))
                out.put_nowait(interim_event(decode, start_ms, end_ms))
            return
        if b.kind == "start":
            out.put_nowait(
                SpeechEvent(kind="speech_started", audio_ms=start_ms, speech_start_ms=start_ms)
            )
            return
        out.put_nowait(
            SpeechEvent(
                kind="speech_stopped",
                audio_ms=end_ms,
                speech_start_ms=start_ms,
                speech_end_ms=end_ms,
            )
        )
        if reuse is not None:
            future = reuse.future
        else:
            samples = buf.slice(b.start - pad, b.end + pad).copy()
            future = engine.submit(samples, meter=meter)
        out.put_nowait(
            asyncio.ensure_future(final_event(asyncio.wrap_future(future), start_ms, end_ms))
        )
