"""The level gate: sound well under the caller's own speech level is not the caller."""

from __future__ import annotations

import numpy as np

from shared.level import DEFAULT_SPEECH_DBFS, SILENT_DBFS, SpeechLevel, rms_dbfs


def _tone(dbfs: float) -> np.ndarray:
    t = np.arange(256, dtype=np.float32)
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 500 * t / 8000)).astype(np.float32)


def _speak(gate: SpeechLevel, dbfs: float, windows: int) -> None:
    """The caller talking at ``dbfs``: syllables, and between words the line's quiet."""
    for i in range(windows):
        syllable = i % 8 < 6
        gate.gate(0.99 if syllable else 0.1, dbfs if syllable else dbfs - 30, threshold=0.5)


def _babble(gate: SpeechLevel, dbfs: float, windows: int, *, seed: int = 0) -> list[float]:
    """Several voices far away at ``dbfs`` RMS: scored as speech, levels spread over ~12 dB.
    Returns what the gate made of each window."""
    rng = np.random.default_rng(seed)
    return [
        gate.gate(0.95, float(dbfs + np.clip(rng.normal(0, 3), -7, 5)), threshold=0.5)
        for _ in range(windows)
    ]


def test_rms_dbfs_measures_a_window() -> None:
    assert abs(rms_dbfs(_tone(-20.0)) + 20.0) < 0.2
    assert rms_dbfs(np.zeros(256, dtype=np.float32)) == SILENT_DBFS


def test_talk_far_under_the_callers_level_becomes_silence() -> None:
    gate = SpeechLevel(margin_db=20)
    for _ in range(100):  # the caller talking at -15 dBFS
        assert gate.gate(0.99, -15.0, threshold=0.5) == 0.99
    _speak(gate, -15.0, 80)
    assert -17 < gate.level_dbfs < -14
    assert gate.gate(0.97, -42.0, threshold=0.5) == 0.0  # a TV 27 dB down
    assert gate.gate(0.97, -30.0, threshold=0.5) == 0.97  # the caller's own quieter syllable


def test_a_quiet_caller_is_heard_from_the_first_word_and_lowers_the_level() -> None:
    gate = SpeechLevel(margin_db=20)
    assert gate.level_dbfs == DEFAULT_SPEECH_DBFS
    assert gate.gate(0.9, -45.0, threshold=0.5) == 0.9
    _speak(gate, -38.0, 300)  # the quiet caller's stressed syllables
    assert gate.level_dbfs < -35
    assert gate.gate(0.9, -52.0, threshold=0.5) == 0.9


def test_background_peaks_do_not_drag_the_level_down() -> None:
    gate = SpeechLevel(margin_db=20)
    for _ in range(100):
        gate.gate(0.99, -15.0, threshold=0.5)
    before = gate.level_dbfs
    for _ in range(500):  # babble just above the gate, scored as speech
        gate.gate(0.9, -33.0, threshold=0.5)
    assert abs(gate.level_dbfs - before) < 0.1


def test_margin_zero_disables_the_gate() -> None:
    gate = SpeechLevel(margin_db=0)
    assert gate.gate(0.9, -90.0, threshold=0.5) == 0.9
    assert gate.level_dbfs == DEFAULT_SPEECH_DBFS


def test_after_a_run_of_speech_a_words_soft_ending_is_held_but_not_after_a_peak() -> None:
    gate = SpeechLevel(margin_db=20, hold_windows=2)
    gate.gate(0.99, -30.0, threshold=0.5)  # one background peak over the gate
    assert gate.gate(0.9, -60.0, threshold=0.5) == 0.0
    for _ in range(5):  # a syllable of the caller
        gate.gate(0.99, -30.0, threshold=0.5)
    assert gate.gate(0.9, -60.0, threshold=0.5) == 0.9
    assert gate.gate(0.9, -60.0, threshold=0.5) == 0.9
    assert gate.gate(0.9, -60.0, threshold=0.5) == 0.0


def test_babble_within_the_margin_is_background_once_its_floor_is_known() -> None:
    gate = SpeechLevel(margin_db=20, background=True)
    _speak(gate, -20.0, 120)  # the caller, at -20 dBFS with the room quiet
    assert gate.gate(0.9, -34.0, threshold=0.5) == 0.9  # within 20 dB: could be the caller
    _babble(gate, -35.0, 100)  # then people talk behind, 15 dB under the caller (3 s)
    heard = _babble(gate, -35.0, 200, seed=1)
    assert sum(p > 0 for p in heard) <= 10, "a pause under babble is a pause"
    longest, run = 0, 0
    for p in heard:
        run = run + 1 if p == 0 else 0
        longest = max(longest, run)
    assert longest >= 20  # 0.64 s: the recognizer's endpointer ends the turn (it needs 0.3 s)
    assert gate.background_dbfs is not None and -43 < gate.background_dbfs < -38
    assert gate.gate(0.99, -22.0, threshold=0.5) == 0.99  # the caller still is


def test_the_background_gate_stays_clear_of_the_callers_level() -> None:
    gate = SpeechLevel(margin_db=20, background=True)
    _speak(gate, -20.0, 120)
    _babble(gate, -24.0, 200)  # background almost as loud as the caller
    assert gate.gate_dbfs <= gate.level_dbfs - 10
    assert gate.gate(0.99, gate.level_dbfs - 8, threshold=0.5) == 0.99


def test_a_quiet_line_or_steady_noise_keeps_the_plain_margin() -> None:
    gate = SpeechLevel(margin_db=20, background=True)
    _speak(gate, -20.0, 200)
    assert gate.gate_dbfs == gate.level_dbfs - 20
    for i in range(300):  # hiss at -30 dBFS (the VAD does not call it speech), the caller over it
        talking = i % 40 < 20
        gate.gate(0.99 if talking else 0.05, -20.0 if talking else -30.0, threshold=0.5)
    assert not gate.background_is_voices
    assert gate.gate_dbfs == gate.level_dbfs - 20
