"""G.711 mu-law codec: known values and agreement of both backends."""

from __future__ import annotations

import numpy as np
import pytest

from shared import audio

# ITU-T G.711 mu-law reference points (code -> linear, 16-bit scale).
KNOWN_DECODE = {
    0xFF: 0,
    0x7F: 0,
    0x80: 32124,
    0x00: -32124,
    0xF0: 120,
    0x70: -120,
    0xDF: 396,
    0xEF: 132,
}


@pytest.mark.parametrize(("code", "linear"), sorted(KNOWN_DECODE.items()))
def test_decode_known_values(code: int, linear: int) -> None:
    pcm = np.frombuffer(audio.ulaw_to_pcm16(bytes([code])), dtype=np.int16)
    assert int(pcm[0]) == linear


def test_encode_known_values() -> None:
    samples = np.array([0, 32767, -32768, 120, -120], dtype=np.int16)
    assert audio.pcm16_to_ulaw(samples.tobytes()) == bytes([0xFF, 0x80, 0x00, 0xF0, 0x70])


def test_numpy_backend_matches_active_backend_on_every_value() -> None:
    every_code = bytes(range(256))
    assert audio._numpy_ulaw2lin(every_code) == audio.ulaw_to_pcm16(every_code)
    every_sample = np.arange(-32768, 32768, dtype=np.int16).tobytes()
    assert audio._numpy_lin2ulaw(every_sample) == audio.pcm16_to_ulaw(every_sample)


def test_round_trip_is_stable() -> None:
    codes = bytes(range(256))
    # Decoding then encoding returns the same code (0x7F and 0xFF both mean zero).
    back = audio.pcm16_to_ulaw(audio.ulaw_to_pcm16(codes))
    assert all(b == c or {b, c} == {0x7F, 0xFF} for b, c in zip(back, codes, strict=True))


def test_resample_to_twilio_rate_keeps_duration_and_tone() -> None:
    rate = 22050
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16).tobytes()
    mulaw = audio.pcm16_to_ulaw8k(tone, rate=rate)
    assert abs(audio.duration_ms(mulaw) - 1000) < 2
    x = audio.ulaw_to_float(mulaw)
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2  # 1 s of audio: bin == Hz


def test_frames_split_into_twilio_frames() -> None:
    chunks = audio.frames(b"\xff" * 500)
    assert [len(c) for c in chunks] == [160, 160, 160, 20]
