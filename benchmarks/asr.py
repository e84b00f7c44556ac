"""The local recognizer's window, A/B: words and CPU of whisper's full 30 s window against the
window sized to the utterance (``ASR_MIN_WINDOW_S``, decision record 0039).

Every sample goes through both paths of one model in this process, one after the other (the
order alternates), so a busy machine slows both alike; CPU is this process's CPU time per
decode, which other load does not inflate the way it inflates wall-clock time. Samples: short
answers and sentences by the robustness voices (Piper and espeak at several rates and pitches),
two human recordings (``tests/data/``), and noise with no speech. Audio takes the caller's path
(8 kHz mu-law, 200 ms around the speech as the recognizer keeps). WER uses whisper's English
normalizer on both sides.

``python -m benchmarks.asr [--min-window-s S]`` prints the table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.audio import SAMPLE_RATE, resample, ulaw_to_float

Samples = npt.NDArray[np.float32]
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SHORT = (
    "Yes.",
    "No.",
    "Okay.",
    "Thanks.",
    "Thank you.",
    "Bye.",
    "Seven.",
    "Two.",
    "Correct.",
    "Sure.",
    "Hi.",
    "Yeah.",
)
SENTENCES = (
    "I would like to book an appointment for next Tuesday.",
    "What are your opening hours?",
    "My name is Maria Lopez.",
    "My date of birth is March fourth, nineteen eighty two.",
    "My phone number is five five five, one two three, four five six seven.",
    "Can I come in on Friday morning?",
    "I'd like to cancel my appointment.",
    "Hello, I am calling about my order. It was supposed to arrive yesterday, but nothing "
    "came, and the tracking page has not changed for three days.",
)
HUMAN = {
    "beckett.wav": "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
    "clone-test.wav": "I do. I think that America do it very well.",
}


@dataclass(frozen=True)
class Sample:
    """One utterance (or noise, ``said`` empty) as the recognizer gets it."""

    name: str
    said: str
    audio: Samples  # 8 kHz float, through mu-law


@dataclass
class PathResult:
    """What one path made of every sample."""

    heard: list[str] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


def samples(*, voices: Sequence[str] | None = None) -> list[Sample]:
    """The evaluation set (deterministic: Piper without its sampling noise where it can)."""
    from devkit import caller_audio as rb
    from devkit.voices import load_wav

    pad = np.zeros(SAMPLE_RATE // 5, dtype=np.float32)

    def phone(x: Samples) -> Samples:
        return np.concatenate([pad, ulaw_to_float(rb.to_mulaw(x)), pad])

    out: list[Sample] = []
    for vname, voice in rb.VOICES.items():
        if voices and vname not in voices:
            continue
        for text in SHORT + SENTENCES:
            out.append(Sample(f"{vname}:{text[:24]}", text, phone(voice(text))))
    for file, text in HUMAN.items():
        audio = np.concatenate([pad, ulaw_to_float(load_wav(DATA / file)), pad])
        out.append(Sample(f"human:{file}", text, audio))
    n = SAMPLE_RATE * 3 // 2
    for bname, bed in (
        ("white", rb.white(n)),
        ("pink", rb.pink(n)),
        ("hum", rb.hum(n)),
        ("babble", rb.babble(n)),
    ):
        for dbfs in (-35.0, -25.0):
            out.append(Sample(f"noise:{bname}{dbfs:.0f}", "", phone(rb.set_level(bed, dbfs))))
    out.append(Sample("noise:silence", "", phone(np.zeros(n, dtype=np.float32))))
    return out


def _timed(f: Callable[[], tuple[str, float] | None]) -> tuple[str, float]:
    c0 = time.process_time()
    r = f()
    return (r[0] if r is not None else ""), (time.process_time() - c0) * 1000


def run(
    cases: Sequence[Sample], *, min_window_s: float, threads: int = 1
) -> tuple[PathResult, PathResult, Counter[str]]:
    """Both paths over ``cases`` (blocking): (full window, short window, short outcomes)."""
    from services.asr.whisper_engine import WhisperEngine
    from services.asr.whisper_window import WHISPER_RATE

    engine = WhisperEngine(threads=threads, decoders=1, min_window_s=min_window_s)
    warm = cases[0].audio
    engine.transcribe(warm)  # first decodes allocate buffers
    engine.transcribe_full(resample(warm, from_rate=SAMPLE_RATE, to_rate=WHISPER_RATE))
    engine.outcomes.clear()
    full, short = PathResult(), PathResult()
    for i, c in enumerate(cases):
        a16 = resample(c.audio, from_rate=SAMPLE_RATE, to_rate=WHISPER_RATE)
        runs = [
            (full, partial(engine.transcribe_full, a16)),
            (short, partial(engine.transcribe, c.audio)),
        ]
        for res, f in runs if i % 2 == 0 else runs[::-1]:
            text, ms = _timed(f)
            res.heard.append(text)
            res.cpu_ms.append(ms)
    return full, short, engine.outcomes


def score(cases: Sequence[Sample], res: PathResult) -> dict[str, float]:
    """Word errors over all speech, mean per-sample WER, false transcripts, CPU."""
    from benchmarks.robustness import wer, words

    speech = [(c, h) for c, h in zip(cases, res.heard, strict=True) if c.said]
    ref_words = sum(len(words(c.said)) for c, _ in speech)
    errors = sum(wer(c.said, h) * len(words(c.said)) for c, h in speech)
    human = [wer(c.said, h) for c, h in speech if c.name.startswith("human:")]
    return {
        "wer": errors / ref_words,
        "mean_wer": statistics.fmean(wer(c.said, h) for c, h in speech),
        "human_wer": statistics.fmean(human) if human else float("nan"),
        "false": sum(1 for c, h in zip(cases, res.heard, strict=True) if not c.said and words(h)),
        "cpu_p50": statistics.median(res.cpu_ms),
        "cpu_mean": statistics.fmean(res.cpu_ms),
    }


def report(
    cases: Sequence[Sample],
    full: PathResult,
    short: PathResult,
    outcomes: Counter[str],
    *,
    min_window_s: float,
) -> str:
    """The A/B table and the samples whose words differ."""
    a, b = score(cases, full), score(cases, short)
    noise = sum(1 for c in cases if not c.said)
    lines = [
        f"{len(cases) - noise} utterances + {noise} noise-only samples, one process, "
        "both paths per sample",
        "",
        "| window | WER (all words) | mean WER | WER human | noise heard as words "
        "| CPU ms/utt p50 | mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, s in (("30 s (before)", a), (f"max({min_window_s:g} s, audio + 1 s)", b)):
        lines.append(
            f"| {label} | {s['wer']:.3f} | {s['mean_wer']:.3f} | {s['human_wer']:.3f} "
            f"| {s['false']:.0f}/{noise} | {s['cpu_p50']:.0f} | {s['cpu_mean']:.0f} |"
        )
    lines += [
        "",
        f"CPU ratio short/full: p50 {b['cpu_p50'] / a['cpu_p50']:.2f}, "
        f"mean {b['cpu_mean'] / a['cpu_mean']:.2f}",
        "short-window outcomes: "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1])),
    ]
    from benchmarks.robustness import words

    diff = [
        (c.name, f, s)
        for c, f, s in zip(cases, full.heard, short.heard, strict=True)
        if words(f) != words(s)
    ]
    lines.append(f"samples heard differently: {len(diff)}")
    lines += [f"  {n}: full {f!r} / short {s!r}" for n, f, s in diff]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.asr``: print the A/B table."""
    from shared.settings import Settings

    p = argparse.ArgumentParser(prog="python -m benchmarks.asr")
    p.add_argument("--min-window-s", type=float, default=Settings().asr_min_window_s)
    p.add_argument("--voices", default="", help="comma-separated robustness voices (all)")
    args = p.parse_args(argv)
    began = time.monotonic()
    cases = samples(voices=[v for v in args.voices.split(",") if v] or None)
    full, short, outcomes = run(cases, min_window_s=args.min_window_s)
    print(report(cases, full, short, outcomes, min_window_s=args.min_window_s))
    print(f"({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
