"""The robustness evaluation measures what it says: its distortions and its scoring.

No stack here (``python -m benchmarks.robustness`` places the calls); these check that
the caller audio it builds really is band-limited, lossy, quiet or noisy as labelled, and that
the WER and table report misses and false transcripts.
"""

from __future__ import annotations

import numpy as np

from benchmarks.robustness import Condition, Row, Utterance, render, summary, table, wer
from devkit.caller_audio import band_limit, dropouts, hum, pink, set_level, speech_rms, white
from shared.audio import SAMPLE_RATE


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_telephone_band_removes_what_a_phone_line_cannot_carry() -> None:
    x = white(SAMPLE_RATE)
    y = band_limit(x)
    assert _band_energy(y, 0, 200) < 1e-3 * _band_energy(x, 0, 200)
    assert _band_energy(y, 3600, 4000) < 1e-3 * _band_energy(x, 3600, 4000)
    kept = _band_energy(y, 500, 3000) / _band_energy(x, 500, 3000)
    assert 0.99 < kept < 1.01


def test_dropouts_zero_about_two_percent_of_whole_frames() -> None:
    x = np.ones(SAMPLE_RATE * 20, dtype=np.float32)
    y = dropouts(x, rate=0.02)
    lost = (y.reshape(-1, 160) == 0).all(axis=1)
    assert 0.01 < lost.mean() < 0.03
    assert ((y.reshape(-1, 160) == 0).any(axis=1) == lost).all()  # only whole frames


def test_levels_and_noise_beds_are_as_labelled() -> None:
    tone = np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 440 / SAMPLE_RATE).astype(np.float32)
    quiet = set_level(tone, -45.0)
    assert abs(20 * np.log10(speech_rms(quiet)) + 45.0) < 0.5
    for bed in (white(SAMPLE_RATE), pink(SAMPLE_RATE), hum(SAMPLE_RATE)):
        assert abs(float(np.sqrt(np.mean(bed**2))) - 1.0) < 0.01
    c = Condition(
        "n", "noise", (Utterance("x", set_level(tone, -20.0)),), bed=white(4000), bed_dbfs=-30.0
    )
    noisy = render(c, c.utterances[0])
    snr = 20 * np.log10(
        speech_rms(c.utterances[0].audio) / speech_rms(noisy - c.utterances[0].audio)
    )
    assert abs(snr - 10.0) < 0.5


def test_wer_counts_substitutions_deletions_and_insertions() -> None:
    assert wer("What are your opening hours?", "what are your opening hours") == 0.0
    assert wer("book an appointment", "welcome an appointment") == 1 / 3
    assert wer("yes", "") == 1.0
    assert wer("two", "2.") == 0.0
    assert wer("a b", "a b c d") == 1.0


def test_the_table_shows_misses_and_false_transcripts() -> None:
    rows = [
        Row("said", "voice", "Yes.", heard="", replied=False),
        Row("noise", "noise-only", "", heard="Thank you.", noise_only=True, replied=True),
    ]
    text = table(rows, calls=True)
    assert "| said | 1.00 |" in text and "NO" in text
    assert "FALSE: 'Thank you.'" in text and "TURN" in text
    s = summary(rows)
    assert s["missed"] == 1 and s["false_transcripts"] == 1 and s["no_reply"] == 1
