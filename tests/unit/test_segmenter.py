"""The segmenter's end of speech: where a voice's energy ends, and pauses counted from there."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.asr.segmenter import (
    END_BLOCK,
    WINDOW,
    Boundary,
    Endpointer,
    SampleBuffer,
    ms_to_samples,
    speech_end,
)

Audio = npt.NDArray[np.float32]


def noise(level: float, n: int, seed: int) -> Audio:
    return (level * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def db(x: float) -> float:
    return float(10 ** (x / 20))


def test_the_end_is_where_the_loud_speech_stops() -> None:
    # 1 s at -20 dBFS, then 100 ms of a tail 30 dB under it (the VAD's hangover)
    voice, tail = noise(0.1, 8000, seed=1), noise(0.1 * db(-30), ms_to_samples(100), seed=2)
    x = np.concatenate([voice, tail])
    assert speech_end(x, margin_db=20, max_advance=ms_to_samples(128)) == len(voice)


def test_a_soft_ending_within_the_margin_is_speech() -> None:
    voice, soft = noise(0.1, 8000, seed=1), noise(0.1 * db(-12), ms_to_samples(100), seed=2)
    x = np.concatenate([voice, soft])
    assert speech_end(x, margin_db=20, max_advance=ms_to_samples(128)) == len(x)


def test_the_end_moves_back_at_most_max_advance() -> None:
    voice, quiet = noise(0.1, 8000, seed=1), np.zeros(ms_to_samples(500), dtype=np.float32)
    x = np.concatenate([voice, quiet])
    end = speech_end(x, margin_db=20, max_advance=ms_to_samples(128))
    assert end == len(x) - 6 * END_BLOCK  # whole 20 ms blocks: 120 of the 128 ms
    assert speech_end(x, margin_db=20, max_advance=0) == len(x)


def test_too_little_audio_keeps_the_vad_s_end() -> None:
    assert speech_end(noise(0.1, END_BLOCK - 1, seed=1)) == END_BLOCK - 1


def _endpointer(audio: SampleBuffer | None) -> Endpointer:
    return Endpointer(
        threshold=0.5, min_speech_ms=200, endpointing_ms=300, early_ms=100, audio=audio
    )


def _run(ep: Endpointer, probs: list[float]) -> list[tuple[Boundary, int]]:
    out = []
    for p in probs:
        b = ep.push(p)
        if b is not None:
            out.append((b, ep.position))
    return out


def test_with_the_audio_a_pause_runs_from_the_speech_s_energy_end() -> None:
    """The VAD says speech for 3 windows (96 ms) after the voice went quiet: the pause and
    the stop come that much sooner, and the utterance ends where the voice did."""
    probs = [0.0] * 5 + [0.9] * 30 + [0.0] * 20
    voice_end = 32 * WINDOW  # the last 3 speech windows are the VAD's hangover
    x = np.zeros(len(probs) * WINDOW, dtype=np.float32)
    x[5 * WINDOW : voice_end] = noise(0.1, voice_end - 5 * WINDOW, seed=1)
    x[voice_end : 35 * WINDOW] = noise(0.1 * db(-35), 3 * WINDOW, seed=2)
    buf = SampleBuffer()
    buf.append(x)
    plain = _run(_endpointer(None), probs)
    dated = _run(_endpointer(buf), probs)
    assert [b.kind for b, _ in plain] == [b.kind for b, _ in dated] == ["start", "pause", "stop"]
    (_, _), (_, at0), (stop0, stop_at0) = plain
    (_, _), (pause1, at1), (stop1, stop_at1) = dated
    assert stop0.end == 35 * WINDOW
    assert voice_end <= stop1.end < voice_end + END_BLOCK  # blocks aligned on the VAD's end
    assert pause1.end == stop1.end  # the early decode covers the span the stop closes
    # 300 ms of real silence, not 300 ms after the hangover: the first window past it
    assert stop_at1 - WINDOW < stop1.end + ms_to_samples(300) <= stop_at1
    assert stop_at0 - stop_at1 == 3 * WINDOW
    assert at1 - WINDOW < pause1.end + ms_to_samples(100) <= at1 < at0


def test_with_the_audio_a_voice_loud_to_the_vad_s_end_ends_there() -> None:
    """Reverberant speech (loud until the VAD lets go): the same boundaries as without."""
    probs = [0.0] * 5 + [0.9] * 30 + [0.0] * 20
    x = np.zeros(len(probs) * WINDOW, dtype=np.float32)
    x[5 * WINDOW : 35 * WINDOW] = noise(0.1, 30 * WINDOW, seed=1)
    buf = SampleBuffer()
    buf.append(x)
    assert _run(_endpointer(buf), probs) == _run(_endpointer(None), probs)
