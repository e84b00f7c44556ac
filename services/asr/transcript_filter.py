"""Whisper's output filtered: what it heard, or ``None`` when the sound was not words.

Whisper's own rejection rules per segment (no-speech probability, log-probability, repetition
loops), sound annotations ("[Music]") dropped, and the stock phrases it invents on noise kept
only when decoded with high confidence (measured in docs/robustness.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Protocol

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
