"""Outbound pacing measurement: is reply audio sent smoothly, and never too far ahead?

:func:`pacing_stats` replays the arrival times of the media frames the gateway sent (as Twilio
saw them) against Twilio's playout clock: each frame plays 20 ms after the previous one, or
at once if Twilio's buffer had run dry (an *underrun*: the caller hears a gap). From that it
reports how far ahead of real time audio was sent (must stay within ``PLAYBACK_LEAD_MS``), the
gaps, and the jitter of the send times once the lead is reached (bursts show up as large
early sends, stalls as underruns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.audio import FRAME_BYTES, SAMPLE_RATE

FRAME_S = FRAME_BYTES / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class PacingStats:
    """Result of :func:`pacing_stats` (milliseconds)."""

    frames: int
    max_lead_ms: float  # the most audio ever buffered at Twilio (sent, not yet played)
    underruns: int  # times Twilio's buffer ran dry before the last frame (audible gaps)
    max_gap_ms: float  # the longest of those gaps
    jitter_p50_ms: float  # |interval - 20 ms| between sends in steady state
    jitter_p95_ms: float
    max_burst_frames: int  # most frames sent within one 20 ms slot in steady state

    def within(self, lead_ms: float, *, slack_ms: float = 25.0) -> bool:
        """No gap, no burst, and never more than ``lead_ms`` (+ scheduling slack) ahead."""
        return self.underruns == 0 and self.max_lead_ms <= lead_ms + slack_ms


def pacing_stats(
    send_times: Sequence[float], *, frame_s: float = FRAME_S, gap_tolerance_s: float = 0.005
) -> PacingStats:
    """Pacing of one continuous stretch of audio, from each frame's send time (seconds).

    ``send_times`` are monotonic arrival times of consecutive 20 ms frames (one reply, or
    several played back to back). A frame arriving more than ``gap_tolerance_s`` after Twilio
    ran dry counts as an underrun.
    """
    n = len(send_times)
    if n == 0:
        return PacingStats(0, 0.0, 0, 0.0, 0.0, 0.0, 0)
    play_end = send_times[0]
    max_lead = 0.0
    underruns = 0
    max_gap = 0.0
    steady_from: int | None = None
    for i, t in enumerate(send_times):
        if play_end < t:
            gap = t - play_end
            if i > 0 and gap > gap_tolerance_s:
                underruns += 1
                max_gap = max(max_gap, gap)
            play_end = t
        play_end += frame_s
        lead = play_end - t
        max_lead = max(max_lead, lead)
        if steady_from is None and i > 0 and send_times[i] - send_times[i - 1] >= frame_s / 2:
            steady_from = i  # the initial lead has been sent; pacing starts here
    intervals = np.diff(np.asarray(send_times[steady_from or n :], dtype=np.float64))
    jitter = np.abs(intervals - frame_s) * 1000
    burst = 0
    if steady_from is not None:
        slots = np.floor((np.asarray(send_times[steady_from:]) - send_times[steady_from]) / frame_s)
        _, counts = np.unique(slots, return_counts=True)
        burst = int(counts.max()) if counts.size else 0
    return PacingStats(
        frames=n,
        max_lead_ms=round(max_lead * 1000, 1),
        underruns=underruns,
        max_gap_ms=round(max_gap * 1000, 1),
        jitter_p50_ms=round(float(np.percentile(jitter, 50)), 2) if jitter.size else 0.0,
        jitter_p95_ms=round(float(np.percentile(jitter, 95)), 2) if jitter.size else 0.0,
        max_burst_frames=burst,
    )
