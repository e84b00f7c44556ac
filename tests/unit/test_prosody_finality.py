"""Acoustic finality on real voices (tests/data), through 8 kHz mu-law as Twilio delivers them.

Sentence ends are the ends of the speech runs that a pause follows; fragments are the same runs
cut at the quietest 10 ms (a word boundary) in their middle. On these real voices the cue does
NOT separate the two reliably (here the cuts even decay more on average: a cut at a word
boundary ends on that word's own fade; ``docs/turn-taking.md``), so the decision weighs it low
and these tests hold what it must do anyway: judge real speech, ignore the trailing pause.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from services.asr.turntaking.prosody import Finality, finality
from shared.audio import SAMPLE_RATE, float_to_pcm16, pcm16_to_ulaw, resample, ulaw_to_float

pytest.importorskip("soxr")

DATA = Path(__file__).resolve().parent.parent / "data"
HOP = SAMPLE_RATE // 100  # 10 ms


def telephone(name: str) -> npt.NDArray[np.float32]:
    with wave.open(str(DATA / name), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32)
    x8 = resample(x / 32768.0, from_rate=rate, to_rate=SAMPLE_RATE)
    return ulaw_to_float(pcm16_to_ulaw(float_to_pcm16(x8)))


def speech_runs(x: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    """(start, end) in samples of speech followed by >= 300 ms of quiet, runs >= 600 ms."""
    n = len(x) // HOP
    db = 10 * np.log10(np.mean(x[: n * HOP].reshape(n, HOP) ** 2, axis=1) + 1e-10)
    loud = db > db.max() - 30
    runs, start, quiet = [], None, 0
    for i, on in enumerate(loud):
        if on:
            start = i if start is None else start
            quiet, last = 0, i
        elif start is not None:
            quiet += 1
            if quiet >= 30:
                if last - start >= 60:
                    runs.append((start * HOP, (last + 1) * HOP))
                start = None
    return runs


def mid_cut(x: npt.NDArray[np.float32], start: int, end: int) -> int:
    lo, hi = start + (end - start) * 2 // 5, start + (end - start) * 7 // 10
    energy = [float(np.mean(x[i : i + HOP] ** 2)) for i in range(lo, hi - HOP, HOP)]
    return lo + HOP * int(np.argmin(energy)) + HOP // 2


def scored(names: tuple[str, ...]) -> tuple[list[Finality], list[Finality]]:
    ends, cuts = [], []
    for name in names:
        x = telephone(name)
        for start, end in speech_runs(x):
            e, c = finality(x[start:end]), finality(x[start : mid_cut(x, start, end)])
            if e is not None and c is not None:
                ends.append(e)
                cuts.append(c)
    return ends, cuts


HUMAN = ("beckett.wav", "clone-test.wav", "endgame_nagg_nell.wav")


def test_every_real_speech_run_is_judged_with_a_plausible_pitch() -> None:
    ends, cuts = scored(HUMAN)
    assert len(ends) >= 8
    for f in ends + cuts:
        assert 0.0 <= f.score <= 1.0
        assert f.energy_decay >= 0.0
    # Voiced speech is found (the drop is in semitones against the speaker's own median).
    drops = [f.pitch_drop for f in ends if f.pitch_drop is not None]
    assert len(drops) >= len(ends) // 2
    assert all(abs(d) < 12 for d in drops)


def test_the_pause_after_speech_does_not_change_the_verdict() -> None:
    # The VAD hands the utterance over with some of the pause: the cue must not read the
    # silence as a fade.
    x = telephone("endgame_nagg_nell.wav")
    for start, end in speech_runs(x)[:4]:
        bare = finality(x[start:end])
        padded = finality(np.concatenate([x[start:end], np.zeros(2400, dtype=np.float32)]))
        assert bare is not None and padded is not None
        assert padded.score == pytest.approx(bare.score, abs=0.02)


def test_silence_and_scraps_are_not_judged() -> None:
    assert finality(np.zeros(SAMPLE_RATE, dtype=np.float32)) is None
    assert finality(np.zeros(100, dtype=np.float32)) is None


def test_only_telephone_rate() -> None:
    with pytest.raises(ValueError):
        finality(np.zeros(16000, dtype=np.float32), rate=16000)
