"""Where a turn's voice-to-voice time went, and the system's recent per-stage percentiles.

A turn's latency (end of caller speech to first reply audio sent, the gateway's
``turn.first_audio`` ``voice_to_voice_ms``) is split into the stage timings the services report
in their events, the same values they observe in their ``voice_stage_seconds`` metrics:

- ``endpointing``: end of speech until the recognizer called the turn over (``asr.final``);
- ``recognition``: from there to the final transcript (``asr.final`` ``asr_ms``);
- ``agent``: transcript received until the first sentence (``agent.first_sentence`` ``ms``);
- ``tts``: sentence received until its first audio (``tts.first_audio`` ``ms``, first segment);
- ``overhead``: the rest (bus hops, queueing, the gateway's playback): ours.

The parts always add up to the measured voice-to-voice time. When the reported stages exceed
it (clocks of different machines), they are scaled down to fit and the breakdown says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Item = dict[str, Any]

STAGES = ("endpointing", "recognition", "agent", "tts", "overhead")
MEASURED = STAGES[:-1]
WINDOW_S = 300.0  # the system view: turns whose first audio went out in the last five minutes
MAX_CALLS = 2000  # calls followed at once (one whose end never came is forgotten, oldest first)
_FOLLOWED = frozenset(
    {
        "asr.final",
        "agent.turn_started",
        "agent.first_sentence",
        "tts.first_audio",
        "turn.first_audio",
    }
)


def _ms(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        return None
    return float(v)


def breakdown(parts: dict[str, float | None], v2v_ms: float) -> tuple[dict[str, float], bool]:
    """``parts`` (missing: 0) plus overhead, summing to ``v2v_ms`` to the 0.1 ms; True if scaled."""
    known = {k: parts.get(k) or 0.0 for k in MEASURED}
    total = sum(known.values())
    scaled = total > v2v_ms
    if scaled and total > 0:
        known = {k: v * v2v_ms / total for k, v in known.items()}
    out = {k: round(v, 1) for k, v in known.items()}
    rest = round(v2v_ms - sum(out.values()), 1)
    if rest < 0:  # rounding: take the tenth off the largest part
        big = max(out, key=lambda k: out[k])
        out[big] = round(out[big] + rest, 1)
        rest = 0.0
    out["overhead"] = rest
    return out, scaled


@dataclass
class _Turn:
    utterance: int | None = None
    agent: float | None = None
    tts: float | None = None
    tts_seq: int | None = None
    v2v: float | None = None
    at: float = 0.0


@dataclass
class _Call:
    asr: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    turns: dict[int, _Turn] = field(default_factory=dict)


class TurnLatencies:
    """Feed event items in; get a ``latency`` item whenever a turn's breakdown is (re)known."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}

    def __len__(self) -> int:
        """Calls followed now."""
        return len(self._calls)

    def on_item(self, item: Item) -> Item | None:
        """One feed item (only ``event`` items matter); the turn's updated breakdown or None."""
        if item.get("kind") != "event":
            return None
        name, sid, data = item.get("name"), str(item.get("call")), item.get("data") or {}
        if name == "call.ended":
            self._calls.pop(sid, None)
            return None
        if name not in _FOLLOWED:
            # Not a timing (e.g. asr.released, call.cost, sent after call.ended): following
            # the call for it would keep an ended call until MAX_CALLS pushed it out.
            return None
        call = self._calls.get(sid)
        if call is None:
            if len(self._calls) >= MAX_CALLS:
                del self._calls[next(iter(self._calls))]
            call = self._calls[sid] = _Call()
        if name == "asr.final":
            u = data.get("utterance_id")
            if isinstance(u, int):
                call.asr[u] = (_ms(data.get("endpointing_ms")), _ms(data.get("asr_ms")))
                return self._utterance_turn(sid, call, u)
            return None
        turn_no = item.get("turn")
        if not isinstance(turn_no, int):
            return None
        turn = call.turns.setdefault(turn_no, _Turn())
        if name == "agent.turn_started":
            u = data.get("utterance_id")
            turn.utterance = u if isinstance(u, int) else None
        elif name == "agent.first_sentence" and turn.agent is None:
            turn.agent = _ms(data.get("ms"))
        elif name == "tts.first_audio":
            seq = data.get("seq")
            seq = seq if isinstance(seq, int) else 0
            if turn.tts_seq is None or seq < turn.tts_seq:  # the turn's first sentence
                turn.tts, turn.tts_seq = _ms(data.get("ms")), seq
        elif name == "turn.first_audio" and turn.v2v is None:
            turn.v2v = _ms(data.get("voice_to_voice_ms"))
            turn.at = float(item.get("at") or 0.0)
        else:
            return None
        return self._item(sid, call, turn_no, turn)

    def _utterance_turn(self, sid: str, call: _Call, utterance: int) -> Item | None:
        for no, turn in call.turns.items():
            if turn.utterance == utterance:
                return self._item(sid, call, no, turn)
        return None

    @staticmethod
    def _item(sid: str, call: _Call, no: int, turn: _Turn) -> Item | None:
        if turn.v2v is None:
            return None
        endpointing, recognition = (
            call.asr.get(turn.utterance, (None, None))
            if turn.utterance is not None
            else (None, None)
        )
        reported = {
            "endpointing": endpointing,
            "recognition": recognition,
            "agent": turn.agent,
            "tts": turn.tts,
        }
        parts, scaled = breakdown(reported, turn.v2v)
        return {
            "kind": "latency",
            "call": sid,
            "turn": no,
            "at": turn.at,
            "voice_to_voice_ms": turn.v2v,
            "parts": parts,
            "missing": [k for k, v in reported.items() if v is None],
            "scaled": scaled,
        }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class StageWindow:
    """The latest breakdown of each turn of the last ``window_s``: p50/p95 per stage."""

    def __init__(self, *, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._turns: dict[tuple[str, int], Item] = {}

    def add(self, latency: Item) -> None:
        """A ``latency`` item (a later one for the same turn replaces it)."""
        self._turns[(latency["call"], latency["turn"])] = latency

    def snapshot(self, now: float) -> dict[str, dict[str, float | int]]:
        """``{stage: {"p50", "p95", "n"}}`` over the window (stages with no sample left out)."""
        cutoff = now - self.window_s
        for key in [k for k, v in self._turns.items() if v["at"] < cutoff]:
            del self._turns[key]
        out: dict[str, dict[str, float | int]] = {}
        columns: dict[str, list[float]] = {s: [] for s in (*STAGES, "voice_to_voice")}
        for lat in self._turns.values():
            columns["voice_to_voice"].append(lat["voice_to_voice_ms"])
            for stage in STAGES:
                if stage not in lat["missing"]:
                    columns[stage].append(lat["parts"][stage])
        for stage, values in columns.items():
            if values:
                out[stage] = {
                    "p50": round(percentile(values, 50), 1),
                    "p95": round(percentile(values, 95), 1),
                    "n": len(values),
                }
        return out


def latencies_of(items: Iterable[Item]) -> list[Item]:
    """Every breakdown the items yield, in order (each turn's latest last)."""
    tl = TurnLatencies()
    return [lat for item in items if (lat := tl.on_item(item)) is not None]
