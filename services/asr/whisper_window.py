"""Whisper on a window sized to the utterance, with guards (decision record 0039).

faster-whisper pads every segment to whisper's 30 s window (3000 feature frames): most of the
cost of a 1-3 s utterance is the encoder running over silence. CTranslate2's
``Whisper.encode``/``generate`` accept a shorter window, and faster-whisper's own API does not
(its ``pad_or_trim`` always pads to 3000 frames, whatever ``chunk_length`` says), so
:class:`ShortWindow` drives the CTranslate2 model directly with faster-whisper's feature
extractor and tokenizer.

The window is ``max(ASR_MIN_WINDOW_S, audio + 1 s)``, the *audio* zero-padded before the
log-Mel (what whisper was trained on; padding the features with zeros, as faster-whisper does,
pushed no-speech probabilities up and confidences down on short windows). Measured
(docs/decisions/0039): windows under 10 s loop on one-word answers ("Hi. Hi. Hi. ..." at 7 s,
"No. No. ..." at 5 s); at 10 s none of the samples looped.

Short windows still hallucinate now and then, so :func:`judge` sorts each short decode into
speech (kept), clearly not speech (dropped) or unsure, and unsure ones are decoded again on the
full 30 s window, exactly as before this module existed. Unsure: the output hit its length bound
(tokens per second of audio), a repetition loop (compression ratio, a word or phrase said twice
in a row), more words than the audio can hold, a stock phrase whisper invents on noise (their
acceptance bars were measured on the full window), or confidence / no-speech values between the
clear bands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

WHISPER_RATE = 16000
HOP = 160  # samples per feature frame (10 ms)
FULL_WINDOW_S = 30.0
FULL_FRAMES = 3000
TAIL_S = 1.0  # padding after the audio, at least (the window is never tighter than this)

# Output length bound: real speech stays under ~4 words (~6 tokens) per second.
TOKENS_BASE = 10
TOKENS_PER_S = 8.0
WORDS_BASE = 2
WORDS_PER_S = 5.0
COMPRESSION_RATIO_MAX = 2.4  # whisper's own loop detector
# Clear bands (measured, decision record 0039, `python -m benchmarks.asr`): speech on a
# short window decoded at no-speech <= 0.34; silence and noise at no-speech >= 0.61 with
# log-probability <= -1.0, or no-speech >= 0.95 whatever the words. Between -1.0 (the filter's
# own bar) and -0.8 lies a margin decoded again on the full window: on 122 utterances the words
# kept then had the full window's WER (0.229 both).
SPEECH_NO_SPEECH_MAX = 0.45
SPEECH_LOGPROB_MIN = -0.8
NOISE_NO_SPEECH_MIN = 0.6
NOISE_LOGPROB_MAX = -1.0
SILENCE_NO_SPEECH_MIN = 0.9
# The answers whisper also invents on noise ("Okay.", "Thank you.") need a clearer decode to be
# kept from the short window: their acceptance bars were measured on the full window (noise gave
# them no-speech >= 0.55 or confidence <= 0.58 there). On the short window Piper's answers
# decoded at no-speech <= 0.09 and log-probability >= -0.4, espeak's at no-speech 0.14-0.31,
# noise at >= 0.61. Other one-word outputs are kept on the band of any speech: on the 42
# short answers whose short decode was unsure (docs/performance.md, 2026-12-02), the short
# window's words were right 30 times and the full window's 31, for 1.7 s more CPU (and delay)
# per answer. A stock answer cut short ("Thank.": espeak's "Thanks." at no-speech 0.21,
# log-probability -0.73, heard right on the full window) still goes to the full window.
ANSWER_NO_SPEECH_MAX = 0.2
ANSWER_LOGPROB_MIN = -0.5
MAX_REPEAT_NGRAM = 4
# A loop of one word shows at its second occurrence ("No? No?" for "No."); a phrase said twice
# is real speech often enough ("try again, fail again, fail better"): three times is a loop.
PHRASE_LOOP = 3

Verdict = Literal["speech", "not_speech", "unsure"]
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True, kw_only=True)
class WindowDecode:
    """One greedy decode of one window (the fields of a faster-whisper segment the filters
    read, plus what the guards need)."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    tokens: int
    token_cap: int
    audio_s: float


def window_frames(samples: int, *, min_window_s: float) -> int:
    """Feature frames of the window for ``samples`` of 16 kHz audio: ``max(min, audio + 1 s)``
    rounded up to a whole 100 ms, at most the full 30 s window."""
    seconds = max(min_window_s, samples / WHISPER_RATE + TAIL_S)
    return min(FULL_FRAMES, 10 * math.ceil(seconds * 10))


def token_cap(audio_s: float) -> int:
    """The most tokens a decode of ``audio_s`` seconds of speech may need."""
    return TOKENS_BASE + math.ceil(TOKENS_PER_S * audio_s)


def repeats(words: Sequence[str], *, max_n: int = MAX_REPEAT_NGRAM) -> bool:
    """Whether a word occurs twice in a row, or a phrase of up to ``max_n`` words three
    times in a row (whisper's repetition loops)."""
    for n in range(1, max_n + 1):
        times = 2 if n == 1 else PHRASE_LOOP
        for i in range(len(words) - times * n + 1):
            first = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == first for k in range(1, times)):
                return True
    return False


def judge(
    d: WindowDecode, *, stock_phrases: Collection[str], answers: Collection[str] = ()
) -> tuple[Verdict, str]:
    """Whether a short-window decode can be trusted, and why not.

    ``stock_phrases``: normalized phrases whisper also invents on noise; they are re-decoded on
    the full window, where their acceptance bars were measured, except the callers' ``answers``
    among them decoded clearly as speech.
    """
    words = _WORD.findall(d.text.lower().replace("’", "'"))
    if d.tokens >= d.token_cap:
        return "unsure", "token_cap"
    if d.compression_ratio > COMPRESSION_RATIO_MAX:
        return "unsure", "compression"
    if repeats(words):
        return "unsure", "repetition"
    if len(words) > WORDS_BASE + WORDS_PER_S * d.audio_s:
        return "unsure", "words_per_second"
    if d.no_speech_prob >= SILENCE_NO_SPEECH_MIN or (
        d.no_speech_prob >= NOISE_NO_SPEECH_MIN and d.avg_logprob <= NOISE_LOGPROB_MAX
    ):
        return "not_speech", "no_speech"
    if not words:
        return "unsure", "no_words"
    phrase = " ".join(words)
    clear = d.no_speech_prob <= ANSWER_NO_SPEECH_MAX and d.avg_logprob >= ANSWER_LOGPROB_MIN
    if phrase in stock_phrases:
        return ("speech", "ok") if phrase in answers and clear else ("unsure", "stock_phrase")
    if not clear and any(p.startswith(phrase) for p in stock_phrases if len(phrase) >= 4):
        # A stock answer cut short ("Thank." for espeak's "Thanks."): the full window's call.
        return "unsure", "stock_phrase"
    if d.no_speech_prob > SPEECH_NO_SPEECH_MAX or d.avg_logprob < SPEECH_LOGPROB_MIN:
        return "unsure", "uncertain"
    return "speech", "ok"


class ShortWindow:
    """Greedy whisper decodes on windows sized to the audio (thread-safe: CTranslate2 runs
    concurrent calls on its own workers)."""

    def __init__(self, *, model: Any, min_window_s: float) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._fw = model  # faster_whisper.WhisperModel
        self.min_window_s = min_window_s
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
        )
        self._tokenizer = tokenizer
        self._prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        self._suppress = get_suppressed_tokens(tokenizer, [-1])

    def features(self, audio16k: npt.NDArray[np.float32], frames: int) -> npt.NDArray[np.float32]:
        """Log-Mel features of ``audio16k`` zero-padded to ``frames`` frames."""
        padded = np.zeros(max(len(audio16k), frames * HOP), dtype=np.float32)
        padded[: len(audio16k)] = audio16k
        feats: npt.NDArray[np.float32] = self._fw.feature_extractor(padded)[..., :-1]
        return feats[:, :frames]

    def decode(self, batch: Sequence[npt.NDArray[np.float32]]) -> list[WindowDecode]:
        """Decode each utterance of ``batch`` (16 kHz audio) on its own short window, as one
        encoder and one generate call over the batch (windows padded to the longest)."""
        from faster_whisper.transcribe import get_compression_ratio, get_ctranslate2_storage

        frames = max(window_frames(len(a), min_window_s=self.min_window_s) for a in batch)
        feats = np.stack([self.features(a, frames) for a in batch])
        audio_s = [len(a) / WHISPER_RATE for a in batch]
        caps = [token_cap(s) for s in audio_s]
        model = self._fw.model
        encoded = model.encode(get_ctranslate2_storage(feats), to_cpu=False)
        results = model.generate(
            encoded,
            [self._prompt] * len(batch),
            beam_size=1,
            max_length=len(self._prompt) + max(caps),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )
        out = []
        for r, s, cap in zip(results, audio_s, caps, strict=True):
            ids = [t for t in r.sequences_ids[0][:cap] if t < self._tokenizer.eot]
            text = self._tokenizer.decode(ids).strip()
            n = len(r.sequences_ids[0])
            out.append(
                WindowDecode(
                    text=text,
                    # faster-whisper's recovery of the mean log-probability (length penalty 1)
                    avg_logprob=r.scores[0] * n / (n + 1),
                    no_speech_prob=r.no_speech_prob,
                    compression_ratio=get_compression_ratio(text) if text else 0.0,
                    tokens=n,
                    token_cap=cap,
                    audio_s=s,
                )
            )
        return out
