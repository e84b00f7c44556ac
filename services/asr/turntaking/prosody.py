"""Acoustic cues of finality at the end of an utterance, on 8 kHz telephone audio (numpy only).

A speaker who has finished tends to let the pitch fall, the energy decay and the last syllable
stretch; one who pauses mid-sentence often holds the pitch level and stops abruptly. These cues
are weak and speaker-dependent (``docs/turn-taking.md`` has what they measured): the decision in
:mod:`services.asr.turntaking.end_of_turn` weighs them low. Cheap: an autocorrelation pitch
track over the last second of speech, ~1 ms of CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RATE = 8000
_WIN = 240  # 30 ms: at least two periods of a 70 Hz voice
_HOP = 80  # 10 ms
_HOP_MS = 1000 * _HOP / RATE
_LAG_MIN = RATE // 400  # pitch 70..400 Hz
_LAG_MAX = RATE // 70
_VOICING = 0.5  # normalized autocorrelation peak for a frame to count as voiced
_SPEECH_FLOOR_DB = 35.0  # frames this far under the loudest are not speech
_TAIL_MS = 1000  # how much speech before its end is analysed
_SLOPE_MS = 300  # pitch slope over the last voiced stretch this long
_DECAY_MID = 11.0  # dB of decay that reads as neither (between the measured means)
_DECAY_GAIN = 0.25


@dataclass(frozen=True, slots=True)
class Finality:
    """Acoustic finality of the last second of speech; ``score`` in [0, 1], 1: sounds final."""

    pitch_slope: float | None  # semitones per second over the last voiced stretch
    pitch_drop: float | None  # semitones: the last voiced stretch against the tail's median
    energy_decay: float  # dB: the last 150 ms of speech under the tail's loudest 150 ms
    final_lengthening: float  # the last voiced run's length over the median voiced run's
    score: float


def _frames(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    n = 1 + max(0, (len(x) - _WIN) // _HOP)
    idx = np.arange(_WIN)[None, :] + _HOP * np.arange(n)[:, None]
    out: npt.NDArray[np.float32] = x[idx]
    return out


def _pitch(frames: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """F0 per frame in Hz (NaN: unvoiced), normalized autocorrelation with parabolic refinement."""
    f = frames - frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(f, n=2 * _WIN, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : _LAG_MAX + 2]
    energy = ac[:, :1] + 1e-12
    r = ac / energy
    band = r[:, _LAG_MIN : _LAG_MAX + 1]
    k = np.argmax(band, axis=1)
    peak = band[np.arange(len(band)), k]
    lag = (k + _LAG_MIN).astype(np.float64)
    # Parabolic interpolation around the peak for sub-sample lag.
    left = r[np.arange(len(r)), np.clip(lag.astype(int) - 1, 0, None)]
    right = r[np.arange(len(r)), np.clip(lag.astype(int) + 1, None, _LAG_MAX + 1)]
    denom = left - 2 * peak + right
    shift = np.where(np.abs(denom) > 1e-9, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0)
    f0 = RATE / (lag + np.clip(shift, -0.5, 0.5))
    out: npt.NDArray[np.float64] = np.where(peak >= _VOICING, f0, np.nan)
    return out


def _runs(mask: npt.NDArray[np.bool_], *, gap: int = 2) -> list[tuple[int, int]]:
    """Runs of True (start, end exclusive), bridging gaps of up to ``gap`` frames."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    last = -10
    for i, m in enumerate(mask):
        if not m:
            continue
        if start is None:
            start = i
        elif i - last > gap + 1:
            runs.append((start, last + 1))
            start = i
        last = i
    if start is not None:
        runs.append((start, last + 1))
    return runs


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def finality(samples: npt.NDArray[np.float32], *, rate: int = RATE) -> Finality | None:
    """Finality cues of ``samples`` (the utterance up to, and maybe a little past, its end of
    speech; 8 kHz float in [-1, 1]). ``None`` when there is too little voiced speech to judge."""
    if rate != RATE:
        raise ValueError(f"prosody runs on {RATE} Hz audio, got {rate}")
    x = np.asarray(samples, dtype=np.float32)
    if len(x) < _WIN * 4:
        return None
    # Trailing silence is not part of the speech: cut it on 10 ms blocks first, so the pause
    # the VAD hands over with the utterance does not read as a fade.
    n = len(x) // _HOP
    block_db = 10 * np.log10(
        np.mean(x[: n * _HOP].astype(np.float64).reshape(n, _HOP) ** 2, 1) + 1e-10
    )
    loud = np.nonzero(block_db > block_db.max() - _SPEECH_FLOOR_DB)[0]
    if not len(loud):
        return None
    x = x[: (int(loud[-1]) + 1) * _HOP]
    if len(x) < _WIN * 4:
        return None
    frames = _frames(x)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
    speech = db > db.max() - _SPEECH_FLOOR_DB
    end = len(frames)
    f0_all = _pitch(frames[:end])
    voiced_all = ~np.isnan(f0_all) & speech[:end]
    first = max(0, end - int(_TAIL_MS / _HOP_MS))
    f0, voiced, tail_db = f0_all[first:end], voiced_all[first:end], db[first:end]
    runs = _runs(voiced)
    if not runs or voiced.sum() < 5:
        return None

    # Pitch: the last voiced stretch (a syllable or two), in semitones.
    last_start, last_end = runs[-1]
    span = int(_SLOPE_MS / _HOP_MS)
    seg_idx = np.arange(max(last_start, last_end - span), last_end)
    seg = f0[seg_idx]
    ok = ~np.isnan(seg)
    slope: float | None = None
    drop: float | None = None
    if ok.sum() >= 4:
        st = 12 * np.log2(seg[ok])
        t = seg_idx[ok] * _HOP_MS / 1000
        slope = float(np.polyfit(t, st, 1)[0])
        ref = 12 * np.log2(np.nanmedian(f0[voiced]))
        drop = float(ref - np.median(st[-4:]))

    # Energy: the last 150 ms of speech against the loudest 150 ms of the tail.
    w = max(1, int(150 / _HOP_MS))
    smooth = np.convolve(tail_db, np.ones(w) / w, mode="valid")
    decay = float(smooth.max() - smooth[-1])

    # Final lengthening: runs over the whole utterance given (more syllables than the tail).
    all_runs = _runs(voiced_all)
    lengths = np.array([b - a for a, b in all_runs], dtype=np.float64)
    lengthening = float(lengths[-1] / max(1.0, float(np.median(lengths))))

    # Only the energy decay separated finished from cut speech on every source measured
    # (AUC 0.59-0.65: benchmarks/end_of_turn_eval.py, docs/turn-taking.md); the pitch and
    # lengthening cues went either way between voices, so they are reported, not weighed.
    z = _DECAY_GAIN * (float(np.clip(decay, 0, 25)) - _DECAY_MID)
    return Finality(
        pitch_slope=slope,
        pitch_drop=drop,
        energy_decay=decay,
        final_lengthening=lengthening,
        score=_sigmoid(z),
    )
