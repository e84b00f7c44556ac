"""The level gate: sound well under the caller's own speech level is not the caller."""

from __future__ import annotations

import numpy as np

from shared.level import DEFAULT_SPEECH_DBFS, SILENT_DBFS, SpeechLevel, rms_dbfs


def _tone(dbfs: float) -> np.ndarray:
    t = np.arange(256, dtype=np.float32)
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 500 * t / 8000)).astype(np.float32)


def test_rms_dbfs_measures_a_window() -> None:
    assert abs(rms_dbfs(_tone(-20.0)) + 20.0) < 0.2
    assert rms_dbfs(np.zeros(256, dtype=np.float32)) == SILENT_DBFS


def test_talk_far_under_the_callers_level_becomes_silence() -> None:
    gate = SpeechLevel(margin_db=20)
    for _ in range(100):  # the caller talking at -15 dBFS
        assert gate.gate(0.99, -15.0, threshold=0.5) == 0.99
    assert -17 < gate.level_dbfs < -14
    assert gate.gate(0.97, -42.0, threshold=0.5) == 0.0  # a TV 27 dB down
    assert gate.gate(0.97, -30.0, threshold=0.5) == 0.97  # the caller's own quieter syllable


def test_a_quiet_caller_is_heard_from_the_first_word_and_lowers_the_level() -> None:
    gate = SpeechLevel(margin_db=20)
    assert gate.level_dbfs == DEFAULT_SPEECH_DBFS
    assert gate.gate(0.9, -45.0, threshold=0.5) == 0.9
    for _ in range(300):
        gate.gate(0.9, -38.0, threshold=0.5)  # the quiet caller's stressed syllables
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
