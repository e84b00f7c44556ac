"""The console's latency picture: a turn's stages add up to its voice-to-voice time, the join
of the services' events into turns (in any arrival order), and the system's p50/p95."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from services.gateway.console.feed import feed_item
from services.gateway.console.latency import StageWindow, TurnLatencies, breakdown, percentile
from shared import subjects
from shared.messages import CallStarted, Dtmf, event

SID = "CA" + "1" * 32


def ev(name: str, turn: int | None = None, at: float = 100.0, **data: Any) -> dict[str, Any]:
    msg = event(call_sid=SID, service="x", name=name, turn=turn, **data).model_copy(
        update={"at": at}
    )
    item = feed_item(subjects.events(SID), msg.to_bytes())
    assert item is not None
    return item


def test_parts_add_up_to_voice_to_voice_and_overhead_is_the_rest() -> None:
    parts, scaled = breakdown(
        {"endpointing": 200.04, "recognition": 250.03, "agent": 310.02, "tts": 140.04}, 1000.0
    )
    assert parts == {
        "endpointing": 200.0,
        "recognition": 250.0,
        "agent": 310.0,
        "tts": 140.0,
        "overhead": 100.0,
    }
    assert not scaled


def test_stages_reported_longer_than_measured_are_scaled_to_fit() -> None:
    # Clocks of different machines: the stages claim 1200 ms of an 800 ms turn.
    parts, scaled = breakdown(
        {"endpointing": 300, "recognition": 300, "agent": 300, "tts": 300}, 800.0
    )
    assert scaled and parts["overhead"] == 0.0
    assert sum(parts.values()) == pytest.approx(800.0, abs=1e-9)
    assert parts["endpointing"] == pytest.approx(200.0, abs=0.1)


def test_odd_values_still_sum_exactly() -> None:
    parts, _ = breakdown({"endpointing": 333.33, "recognition": 333.33, "agent": 333.33}, 999.9)
    assert round(sum(parts.values()), 6) == 999.9
    assert min(parts.values()) >= 0


def turn_events() -> list[dict[str, Any]]:
    return [
        ev("asr.final", utterance_id=3, endpointing_ms=220, asr_ms=260),
        ev("agent.turn_started", 2, kind="utterance", utterance_id=3),
        ev("agent.first_sentence", 2, ms=420),
        ev("tts.first_audio", 2, ms=500, seq=1),  # a later sentence: not the turn's first
        ev("tts.first_audio", 2, ms=160, seq=0),
        ev("turn.first_audio", 2, at=117.25, seq=0, voice_to_voice_ms=1250),
    ]


@pytest.mark.parametrize("order", list(itertools.permutations(range(6)))[::37])
def test_turn_breakdown_is_the_same_whatever_order_events_arrive(order: tuple[int, ...]) -> None:
    events = turn_events()
    tl = TurnLatencies()
    last = None
    for i in order:
        last = tl.on_item(events[i]) or last
    assert last is not None
    assert last["parts"] == {
        "endpointing": 220.0,
        "recognition": 260.0,
        "agent": 420.0,
        "tts": 160.0,
        "overhead": 190.0,
    }
    assert last["missing"] == [] and last["turn"] == 2 and last["at"] == 117.25


def test_an_ended_call_is_not_followed_again_by_the_events_after_its_end() -> None:
    tl = TurnLatencies()
    for item in turn_events():
        tl.on_item(item)
    assert len(tl) == 1
    tl.on_item(ev("call.ended", reason="stop"))
    tl.on_item(ev("asr.released", reason="call_ended"))  # both come after call.ended
    tl.on_item(ev("call.cost", total_usd=0.01))
    assert len(tl) == 0


def test_a_stage_not_reported_is_named_and_counted_as_overhead() -> None:
    tl = TurnLatencies()
    tl.on_item(ev("agent.first_sentence", 0, ms=300))
    lat = tl.on_item(ev("turn.first_audio", 0, voice_to_voice_ms=900))
    assert lat is not None
    assert lat["missing"] == ["endpointing", "recognition", "tts"]
    assert lat["parts"]["overhead"] == 600.0


def test_a_turn_without_caller_speech_has_no_bar() -> None:
    tl = TurnLatencies()
    assert tl.on_item(ev("turn.first_audio", 0, seq=0)) is None  # greeting: no voice_to_voice


def test_system_window_percentiles_and_expiry() -> None:
    w = StageWindow(window_s=300)
    for turn, v2v in enumerate([1000.0, 1250.0, 1100.0]):
        tl = TurnLatencies()
        for e in turn_events():
            e = {**e, "turn": turn if e["turn"] is not None else None}
            if e["name"] == "turn.first_audio":
                e = {**e, "data": {**e["data"], "voice_to_voice_ms": v2v}, "at": 1000.0 + turn}
            lat = tl.on_item(e)
            if lat is not None:
                w.add(lat)
    snap = w.snapshot(now=1010.0)
    assert snap["voice_to_voice"] == {"p50": 1100.0, "p95": 1250.0, "n": 3}
    assert snap["agent"]["n"] == 3
    assert w.snapshot(now=1000.0 + 1 + 300.5)["voice_to_voice"]["n"] == 1  # the others aged out
    assert w.snapshot(now=5000.0) == {}


def test_percentile_nearest_rank() -> None:
    assert percentile([5.0], 95) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_control_on_the_feed_never_carries_a_calls_start_parameters() -> None:
    started = CallStarted(
        call_sid=SID, stream_sid="MZ1", gateway_id="gw", parameters={"token": "stream-secret"}
    )
    assert feed_item(subjects.control(SID), started.to_bytes()) is None
    key = feed_item(subjects.control(SID), Dtmf(call_sid=SID, digit="5").to_bytes())
    assert key is not None and key["kind"] == "control" and key["digit"] == "5"
