"""``voiceagent calls``: recent calls with duration, turns and latency, from stored events."""

from __future__ import annotations

import time
from collections.abc import Sequence

from shared.callevents import CallSummary
from shared.redact import sid_tag

HEADER = (
    "started", "call", "duration", "turns", "p50 ms", "max ms", "barge-ins", "errors", "cost",
    "asr/llm/tts/twilio", "end",
)  # fmt: skip


def cost_cells(c: CallSummary) -> tuple[str, str]:
    """The call's total cost and its split by stage (``-`` until the gateway priced it)."""
    k = c.cost
    if k is None:
        return "-", "-"
    unit = "$" if k.currency == "USD" else k.currency + " "
    stages = "/".join(f"{v:.4f}" for v in (k.cost_asr, k.cost_llm, k.cost_tts, k.cost_twilio))
    return f"{unit}{k.cost_total:.4f}", stages


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def call_rows(calls: Sequence[CallSummary], *, show_sids: bool = False) -> list[tuple[str, ...]]:
    """Table rows (strings) of ``calls``; SIDs as their log tag unless ``show_sids``."""
    rows: list[tuple[str, ...]] = []
    for c in calls:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.started_at))
        live = c.ended_at is None
        rows.append(
            (
                started,
                c.call_sid if show_sids else sid_tag(c.call_sid),
                "live" if live else _num(c.duration_s, "{:.1f} s"),
                str(c.turns),
                _num(c.latency_p50_ms),
                _num(c.latency_max_ms),
                str(c.barge_ins),
                str(c.errors),
                *cost_cells(c),
                "" if live else c.end_reason,
            )
        )
    return rows


def format_table(calls: Sequence[CallSummary], *, show_sids: bool = False) -> list[str]:
    """Aligned text lines: a header, then one line per call (newest first)."""
    rows = [HEADER, *call_rows(calls, show_sids=show_sids)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
