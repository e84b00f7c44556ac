"""End-of-turn evaluation: the plain silence timer vs smart endpointing, on synthesized callers.

Each case is one caller turn spoken by the offline Piper voice: sentences with a pause in the
middle ("I'd like to book an appointment for ... next Tuesday at ten.") and short complete
sentences. Both rules see the same Silero VAD scores and the real whisper decodes; the smart
rule is the provider's :class:`~services.asr.turntaking.smart_endpointing.TurnEnder` on a virtual
clock: a decode started at audio position *p* is back at *p* + the decode latency, as if the
audio arrived in real time (so a case takes about its decodes' time, not its length). The
latency is :data:`DECODE_MS` (whisper tiny.en on one idle core) unless ``decode_ms=None`` asks
for each decode's measured wall time: on a busy shared machine that is noise, not the rule.

Measured per rule: premature cut-offs (a one-sentence turn that came out as more than one
transcript: the agent would have answered half a sentence), end-of-turn delay (end of the
caller's speech to the final transcript being available; mean over all cases and over the
short complete sentences alone) and whisper decodes. ``voiceagent bench`` prints the table
(:func:`run_bench`); docs/decisions/0013-smart-endpointing.md records a run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from shared.audio import SAMPLE_RATE, ulaw_to_float
from shared.settings import Settings

LEAD_MS = 300
DECODE_MS = 500  # whisper tiny.en, a few seconds of speech, one idle core (FACTS: ~450 ms)
TAIL_MS = 2500  # longer than ENDPOINTING_MAX_MS plus a decode: every turn ends in the audio


@dataclass(frozen=True)
class Case:
    """One caller turn: ``parts`` spoken with ``pause_ms`` of silence between them."""

    name: str
    parts: tuple[str, ...]
    pause_ms: int = 700

    @property
    def paused(self) -> bool:
        return len(self.parts) > 1

    @property
    def complete(self) -> bool:
        """The turn ends with a finished sentence."""
        return self.parts[-1].rstrip().endswith((".", "?", "!"))


CASES: tuple[Case, ...] = (
    Case("book-for", ("I'd like to book an appointment for", "next Tuesday at ten."), 700),
    Case("name-is", ("My name is", "John Smith."), 700),
    Case("because", ("I need to move my appointment because", "I have to work that day."), 800),
    Case("and", ("I want to cancel my appointment and", "book a new one."), 700),
    Case("question", ("What time do you close today?",)),
    Case("yes", ("Yes, that works for me.",)),
    Case("statement", ("I want to cancel my appointment.",)),
    # A turn that really ends unfinished: the price of the rule (it waits the maximum).
    Case("trailing-off", ("Actually, I was wondering if",)),
)


@dataclass(frozen=True)
class Final:
    """A transcript as the agent would get it: words, end of its speech, when it was ready."""

    text: str
    end: int  # samples
    ready: int  # samples (virtual clock)


@dataclass
class CaseResult:
    case: Case
    finals: list[Final] = field(default_factory=list)
    decodes: int = 0

    @property
    def spoken(self) -> list[Final]:
        return [f for f in self.finals if f.text.strip()]

    @property
    def premature(self) -> bool:
        return len(self.spoken) > 1

    @property
    def delay_ms(self) -> float:
        last = self.spoken[-1] if self.spoken else None
        return 0.0 if last is None else (last.ready - last.end) * 1000 / SAMPLE_RATE


@dataclass(frozen=True)
class RuleResult:
    """One rule over the case set."""

    rule: str
    cases: list[CaseResult]

    @property
    def premature(self) -> int:
        return sum(c.premature for c in self.cases)

    @property
    def mean_delay_ms(self) -> float:
        return float(np.mean([c.delay_ms for c in self.cases]))

    @property
    def short_delay_ms(self) -> float:
        short = [c.delay_ms for c in self.cases if not c.case.paused and c.case.complete]
        return float(np.mean(short)) if short else 0.0

    @property
    def max_delay_ms(self) -> float:
        return max(c.delay_ms for c in self.cases)

    @property
    def decodes(self) -> int:
        return sum(c.decodes for c in self.cases)


Synth = Callable[[str], bytes]
Decode = Callable[[npt.NDArray[np.float32]], tuple[str, float] | None]


def _case_audio(case: Case, synth: Synth) -> npt.NDArray[np.float32]:
    silence = np.zeros(SAMPLE_RATE * case.pause_ms // 1000, dtype=np.float32)
    pieces = [np.zeros(SAMPLE_RATE * LEAD_MS // 1000, dtype=np.float32)]
    for i, part in enumerate(case.parts):
        if i:
            pieces.append(silence)
        pieces.append(ulaw_to_float(synth(part)))
    pieces.append(np.zeros(SAMPLE_RATE * TAIL_MS // 1000, dtype=np.float32))
    return np.concatenate(pieces).astype(np.float32)


def _vad_scores(audio: npt.NDArray[np.float32]) -> list[float]:
    from services.asr.segmenter import WINDOW, new_vad

    vad = new_vad()
    n = len(audio) - len(audio) % WINDOW
    return [
        float(vad.process(memoryview(np.array(audio[i : i + WINDOW], dtype=np.float32).data)))
        for i in range(0, n, WINDOW)
    ]


class _Decoder:
    """Whisper on a slice of the case audio: its text and latency in samples. Results are
    shared by both rules (the same slice decodes the same); ``count`` counts requests."""

    def __init__(
        self,
        audio: npt.NDArray[np.float32],
        decode: Decode,
        decode_ms: int | None,
        memo: dict[tuple[int, int], tuple[tuple[str, float] | None, int]],
    ) -> None:
        self.audio = audio
        self.decode = decode
        self.decode_ms = decode_ms
        self.memo = memo
        self.count = 0

    def __call__(self, start: int, end: int) -> tuple[str, tuple[str, float] | None, int]:
        from services.asr.segmenter import SPEECH_PAD_MS, ms_to_samples

        self.count += 1
        if (start, end) not in self.memo:
            pad = ms_to_samples(SPEECH_PAD_MS)
            began = time.perf_counter()
            result = self.decode(self.audio[max(0, start - pad) : end + pad].copy())
            took = int((time.perf_counter() - began) * SAMPLE_RATE)
            self.memo[(start, end)] = (result, took)
        result, took = self.memo[(start, end)]
        if self.decode_ms is not None:
            took = self.decode_ms * SAMPLE_RATE // 1000
        return (result[0] if result else ""), result, took


def run_plain(
    case: Case, audio: npt.NDArray[np.float32], scores: list[float], dec: _Decoder, s: Settings
) -> CaseResult:
    """The single silence timer (``ENDPOINTING_MS``): every VAD stop is a turn."""
    from services.asr.segmenter import Endpointer

    ep = Endpointer(
        threshold=s.vad_threshold, min_speech_ms=s.min_speech_ms, endpointing_ms=s.endpointing_ms
    )
    res = CaseResult(case)
    for p in [*scores, None]:
        b = ep.push(p) if p is not None else ep.flush()
        if b is not None and b.kind == "stop":
            text, _, took = dec(b.start, b.end)
            res.finals.append(Final(text, b.end, ep.position + took))
    res.decodes = dec.count
    return res


def run_smart(
    case: Case, audio: npt.NDArray[np.float32], scores: list[float], dec: _Decoder, s: Settings
) -> CaseResult:
    """:class:`TurnEnder` as the provider runs it, decodes landing on a virtual clock."""
    from services.asr.segmenter import Endpointer
    from services.asr.turntaking.smart_endpointing import (
        Action,
        Drop,
        EndTurn,
        Speculate,
        TurnEnder,
    )

    ep = Endpointer(
        threshold=s.vad_threshold,
        min_speech_ms=s.min_speech_ms,
        endpointing_ms=s.endpointing_min_ms,
    )
    ender = TurnEnder(max_ms=max(s.endpointing_max_ms, s.endpointing_min_ms))
    res = CaseResult(case)
    attempts: dict[int, tuple[int, tuple[str, float] | None]] = {}  # gen -> (ready, result)
    inflight: set[int] = set()

    def apply(actions: Sequence[Action], at: int) -> None:
        for a in actions:
            if isinstance(a, Speculate):
                _, result, took = dec(a.start, a.end)
                attempts[a.gen] = (at + took, result)
                inflight.add(a.gen)
            elif isinstance(a, Drop):
                inflight.discard(a.gen)
            elif isinstance(a, EndTurn):
                if a.gen is not None and a.gen in attempts:
                    inflight.discard(a.gen)
                    ready, result = attempts[a.gen]
                    text = result[0] if result else ""
                    res.finals.append(Final(text, a.end, max(at, ready)))
                else:
                    text, _, took = dec(a.start, a.end)
                    res.finals.append(Final(text, a.end, at + took))

    for p in scores:
        for gen in sorted(inflight):
            ready, result = attempts[gen]
            if ready <= ep.position and gen in inflight:
                inflight.discard(gen)
                apply(ender.decoded(gen, result, onset_pending=ep.onset_pending), ready)
        b = ep.push(p)
        if b is not None:
            apply(ender.boundary(b), ep.position)
        apply(ender.tick(ep.position, onset_pending=ep.onset_pending), ep.position)
    b = ep.flush()
    if b is not None:
        apply(ender.boundary(b), ep.position)
    apply(ender.flush(), ep.position)
    res.decodes = dec.count
    return res


def evaluate(
    cases: Sequence[Case] = CASES,
    *,
    settings: Settings | None = None,
    synth: Synth | None = None,
    decode: Decode | None = None,
    decode_ms: int | None = DECODE_MS,
) -> list[RuleResult]:
    """The rules over ``cases``: the ``ENDPOINTING_MS`` timer, the smart rule, and a timer as long
    as ``ENDPOINTING_MAX_MS`` (blocking: whisper and Piper run in this thread)."""
    s = settings or Settings()
    if synth is None:
        from devkit.voices import synthesize

        synth = synthesize
    if decode is None:
        from services.asr.whisper_engine import get_engine

        engine = get_engine(
            threads=max(1, s.asr_threads), decoders=1, min_window_s=s.asr_min_window_s
        )
        decode = engine.transcribe
    plain, smart, long = [], [], []
    patient = s.model_copy(update={"endpointing_ms": s.endpointing_max_ms})
    for case in cases:
        audio = _case_audio(case, synth)
        scores = _vad_scores(audio)
        memo: dict[tuple[int, int], tuple[tuple[str, float] | None, int]] = {}
        plain.append(run_plain(case, audio, scores, _Decoder(audio, decode, decode_ms, memo), s))
        smart.append(run_smart(case, audio, scores, _Decoder(audio, decode, decode_ms, memo), s))
        long.append(
            run_plain(case, audio, scores, _Decoder(audio, decode, decode_ms, memo), patient)
        )
    return [
        RuleResult(f"timer {s.endpointing_ms} ms", plain),
        RuleResult(f"smart {s.endpointing_min_ms}-{s.endpointing_max_ms} ms", smart),
        RuleResult(f"timer {s.endpointing_max_ms} ms", long),  # the other way to stop cut-offs
    ]


def table(results: Sequence[RuleResult]) -> str:
    """The comparison as a fixed-width table."""
    n = len(results[0].cases) if results else 0
    paused = sum(c.case.paused for c in results[0].cases) if results else 0
    lines = [
        f"end of turn on {n} synthesized turns ({paused} with a pause mid-sentence)",
        f"{'rule':<22} {'cut-offs':>8} {'delay ms':>9} {'short ms':>9} {'max ms':>7} "
        f"{'decodes':>8}",
    ]
    for r in results:
        lines.append(
            f"{r.rule:<22} {r.premature:>5}/{paused:<2} {r.mean_delay_ms:>9.0f} "
            f"{r.short_delay_ms:>9.0f} {r.max_delay_ms:>7.0f} {r.decodes:>8}"
        )
    lines.append(
        "cut-offs: paused sentences answered in pieces; delay: end of speech to final "
        "transcript (mean; short: complete one-sentence turns only)"
    )
    return "\n".join(lines)


async def run_bench() -> str:
    """``voiceagent bench``'s endpointing table (whisper and Piper in a worker thread)."""
    results = await asyncio.to_thread(evaluate)
    return table(results)
