"""G.711 mu-law <-> 16-bit PCM, and resampling helpers.

``audioop`` is used where it exists (C speed, Python <= 3.12, or ``audioop-lts`` on 3.13+);
otherwise an exact numpy implementation of the same ITU-T G.711 tables. Both give identical
bytes (tests check it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 mu-law bytes per Twilio frame
MULAW_SILENCE = 0xFF

_BIAS = 0x84


def _build_decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> npt.NDArray[np.uint8]:
    # Indexed by the 16-bit sample reinterpreted as uint16 (65536 entries). Same arithmetic as
    # CPython's audioop (14-bit magnitude, bias 33, clip 8159) so both backends agree bit for bit.
    pcm = np.arange(65536, dtype=np.int32)
    pcm = np.where(pcm >= 32768, pcm - 65536, pcm) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 33
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    seg = np.searchsorted(seg_end, mag, side="left")
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


_DECODE = _build_decode_table()
_ENCODE: npt.NDArray[np.uint8] | None = None


def _numpy_ulaw2lin(data: bytes) -> bytes:
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def _numpy_lin2ulaw(data: bytes) -> bytes:
    global _ENCODE
    if _ENCODE is None:
        _ENCODE = _build_encode_table()
    samples = np.frombuffer(data, dtype=np.int16).view(np.uint16)
    out: bytes = _ENCODE[samples].tobytes()
    return out


try:  # pragma: no cover - which branch runs depends on the interpreter
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop as _audioop

    def ulaw_to_pcm16(data: bytes) -> bytes:
        """Decode mu-law bytes to little-endian 16-bit PCM."""
        return _audioop.ulaw2lin(data, 2)

    def pcm16_to_ulaw(data: bytes) -> bytes:
        """Encode little-endian 16-bit PCM to mu-law bytes."""
        return _audioop.lin2ulaw(data, 2)

    BACKEND = "audioop"
except ImportError:  # pragma: no cover
    ulaw_to_pcm16 = _numpy_ulaw2lin
    pcm16_to_ulaw = _numpy_lin2ulaw
    BACKEND = "numpy"


def ulaw_to_float(data: bytes) -> npt.NDArray[np.float32]:
    """Decode mu-law bytes to float32 samples in [-1, 1)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0


def float_to_pcm16(samples: npt.NDArray[np.floating]) -> bytes:
    """Float samples in [-1, 1] to 16-bit PCM bytes (clipped)."""
    clipped = np.clip(samples, -1.0, 32767 / 32768)
    out: bytes = (clipped * 32768.0).astype(np.int16).tobytes()
    return out


def resample(
    samples: npt.NDArray[np.float32], *, from_rate: int, to_rate: int
) -> npt.NDArray[np.float32]:
    """High-quality resampling (soxr, from the ``local`` extra)."""
    if from_rate == to_rate:
        return samples
    import soxr

    out: npt.NDArray[np.float32] = soxr.resample(samples, from_rate, to_rate).astype(np.float32)
    return out


def pcm16_to_ulaw8k(pcm: bytes, *, rate: int) -> bytes:
    """16-bit PCM at ``rate`` to 8 kHz mu-law (what Twilio plays)."""
    if rate == SAMPLE_RATE:
        return pcm16_to_ulaw(pcm)
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    return pcm16_to_ulaw(float_to_pcm16(resample(x, from_rate=rate, to_rate=SAMPLE_RATE)))


def duration_ms(mulaw: bytes) -> float:
    """Playing time of 8 kHz mu-law bytes."""
    return len(mulaw) * 1000.0 / SAMPLE_RATE


def frames(mulaw: bytes, *, size: int = FRAME_BYTES) -> list[bytes]:
    """Split audio into Twilio-sized frames (the last one may be short)."""
    return [mulaw[i : i + size] for i in range(0, len(mulaw), size)]
