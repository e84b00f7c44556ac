"""Operator tools without a bus: tail filters and colours, call summaries, health, span hygiene."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from shared import headers as H
from shared import subjects
from shared.callevents import StoredMessage, parse_events, summarize
from shared.messages import ReplySegment, Transcript, event
from shared.metrics import BUS_RECONNECTS
from shared.redact import sid_tag
from shared.service import Health, serve_http
from shared.telemetry import NO_SPAN, safe_attributes, start_span, tracing_requested, with_trace
from tests.conftest import _free_port
from voiceagent.calls import format_table
from voiceagent.replay import replay_lines
from voiceagent.tail import TailOptions, format_if_shown, format_message, parse_stages, use_color

SID = "CA" + "cd" * 16
T0 = 1_700_000_000.0


def _transcript(text: str = "my number is 415 555 0100") -> bytes:
    return Transcript(call_sid=SID, utterance_id=1, text=text, is_final=True, at=T0).to_bytes()


def test_stage_filter_keeps_only_the_named_services_and_subject_kinds() -> None:
    opts = TailOptions(stages=parse_stages("agent,events"))
    reply = ReplySegment(call_sid=SID, turn=1, seq=0, text="Hi.", last=True).to_bytes()
    ev = event(call_sid=SID, service="asr", name="asr.final", asr_ms=120.0).to_bytes()
    assert format_if_shown(subjects.reply(SID), None, reply, opts) is not None
    assert format_if_shown(subjects.events(SID), None, ev, opts) is not None  # kind: events
    assert format_if_shown(subjects.transcript(SID), None, _transcript(), opts) is None
    audio = format_if_shown(subjects.audio_in(SID, "asr-1"), {H.SEQ: "3"}, b"\xff" * 160, opts)
    assert audio is None
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("asr,llm")


def test_no_audio_hides_frames_but_not_text() -> None:
    opts = TailOptions(audio=False)
    hdrs = {H.TURN: "1", H.SEG: "0", H.CHUNK: "0", H.SERVICE: "tts"}
    assert format_if_shown(subjects.audio_out(SID), hdrs, b"\xff" * 160, opts) is None
    line = format_if_shown(subjects.transcript(SID), None, _transcript(), opts)
    assert line is not None and "[PHONE]" in line


def test_colour_only_when_asked_and_text_stays_redacted() -> None:
    plain = format_message(subjects.transcript(SID), None, _transcript())
    coloured = format_message(subjects.transcript(SID), None, _transcript(), color=True)
    assert "\x1b[" not in plain
    assert "\x1b[36m" in coloured  # asr's colour
    assert "415" not in coloured and "[PHONE]" in coloured
    bad = format_message(subjects.reply(SID), None, b"{not json", color=True)
    assert "\x1b[31m" in bad and "malformed" in bad


def test_colour_defaults_to_terminal_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(None, Tty()) and not use_color(None, io.StringIO())
    assert use_color(True, io.StringIO()) and not use_color(False, Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(None, Tty())


def _stored(seq: int, subject: str, data: bytes) -> StoredMessage:
    return StoredMessage(subject=subject, headers={}, data=data, seq=seq)


def test_replay_orders_by_stream_sequence_and_redacts() -> None:
    reply = ReplySegment(call_sid=SID, turn=1, seq=0, text="We open at nine.", last=True)
    msgs = [
        _stored(7, subjects.reply(SID), reply.to_bytes()),
        _stored(3, subjects.transcript(SID), _transcript()),
    ]
    lines = replay_lines(msgs, TailOptions())
    assert len(lines) == 2
    assert " transcript " in lines[0] and "[PHONE]" in lines[0]
    assert " reply " in lines[1] and "We open at nine." in lines[1]


def _ev(sid: str, name: str, at: float, turn: int | None = None, **data: Any) -> bytes:
    return (
        event(call_sid=sid, service="gateway", name=name, turn=turn, **data)
        .model_copy(update={"at": at})
        .to_bytes()
    )


def test_call_summaries_count_turns_and_latency_newest_first() -> None:
    other = "CA" + "ef" * 16
    raw = [
        _ev(SID, "call.started", T0),
        _ev(SID, "turn.first_audio", T0 + 1, turn=0),  # greeting: no caller speech before it
        _ev(SID, "turn.first_audio", T0 + 5, turn=1, voice_to_voice_ms=640.0),
        _ev(SID, "barge_in", T0 + 6, turn=1),
        _ev(SID, "turn.first_audio", T0 + 9, turn=2, voice_to_voice_ms=900.0),
        _ev(SID, "call.ended", T0 + 12, reason="hangup", duration_s=12.0),
        _ev(other, "call.started", T0 + 20),
        _ev(other, "asr.unavailable", T0 + 21),
    ]
    events = parse_events([_stored(i, subjects.events(SID), d) for i, d in enumerate(raw)])
    newest, first = summarize(events)
    assert newest.call_sid == other and newest.ended_at is None and newest.errors == 1
    assert first.turns == 3 and first.barge_ins == 1 and first.duration_s == 12.0
    assert first.latency_p50_ms == 770.0 and first.latency_max_ms == 900.0
    header, live, done = format_table([newest, first])
    assert "p50 ms" in header and "live" in live
    assert sid_tag(SID) in done and SID not in done
    assert "12.0 s" in done and "770" in done and "900" in done and "hangup" in done


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_worker_health_endpoints_follow_the_bus_and_draining() -> None:
    assert BUS_RECONNECTS is not None  # registered with the default registry
    health = Health(service="asr")
    connected = [False]
    health.watch(lambda: connected[0])
    port = _free_port()
    server = serve_http(port, health=health, host="127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    try:
        code, body = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["status"] == "disconnected"
        connected[0] = True
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/livez")[0] == 200
        health.draining = True
        code, body = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["status"] == "draining"
        assert _get(base + "/livez")[0] == 200  # draining is not dead: no restart mid-call
        code, body = _get(base + "/metrics")
        assert code == 200 and "voice_bus_reconnects_total" in body
        assert _get(base + "/nope")[0] == 404
    finally:
        server.shutdown()


def test_span_attributes_never_carry_text() -> None:
    attrs = safe_attributes(
        SID, turn=3, asr_ms=120.5, provider="local", text="my name is Ann", to="+15551230000"
    )
    assert attrs == {
        "voice.call": sid_tag(SID),
        "voice.turn": 3,
        "voice.asr_ms": 120.5,
        "voice.provider": "local",
    }


def test_tracing_is_off_unless_the_standard_variables_ask() -> None:
    assert not tracing_requested({})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_requested({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    )


def test_without_an_exporter_spans_are_free_and_context_passes_through() -> None:
    assert start_span("call", call_sid=SID) is NO_SPAN
    assert with_trace(None, NO_SPAN) is None
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    child = start_span("agent.turn", parent=parent, call_sid=SID)
    assert not child.recording and child.traceparent == parent  # the next hop keeps the trace
    assert with_trace({H.TURN: "1"}, child) == {H.TURN: "1", H.TRACEPARENT: parent}
