"""The simulator's pure Twilio pieces: playback buffer, outbound validation, TwiML, signing."""

from __future__ import annotations

import base64
import json

import pytest
from twilio.request_validator import RequestValidator

from devkit.simulator import (
    CallRejected,
    OutClear,
    OutMark,
    OutMedia,
    PlaybackBuffer,
    ProtocolError,
    SimulatedCall,
    local_stream_url,
    parse_outbound,
    parse_twiml,
    twilio_signature,
    word_recall,
)
from shared.twilio import clear_message, mark_message, media_message

SID = "MZ" + "0" * 32


def test_mark_is_due_only_after_the_audio_before_it_has_played() -> None:
    buf = PlaybackBuffer()
    buf.add_audio(b"\x00" * 400)
    assert buf.add_mark("1:0") == []
    played, due = buf.play(160)
    assert (len(played), due) == (160, [])
    played, due = buf.play(160)
    assert (len(played), due) == (160, [])
    played, due = buf.play(160)  # the last 80 bytes play, then the mark is reached
    assert (len(played), due) == (80, ["1:0"])
    assert buf.idle


def test_mark_with_nothing_buffered_is_due_at_once() -> None:
    buf = PlaybackBuffer()
    assert buf.add_mark("0:0") == ["0:0"]


def test_audio_after_a_mark_plays_after_it_and_marks_keep_order() -> None:
    buf = PlaybackBuffer()
    buf.add_audio(b"\x01" * 160)
    buf.add_mark("a")
    buf.add_audio(b"\x02" * 160)
    buf.add_mark("b")
    played, due = buf.play(160)
    assert played == b"\x01" * 160 and due == ["a"]
    played, due = buf.play(320)
    assert played == b"\x02" * 160 and due == ["b"]


def test_clear_drops_audio_and_returns_pending_marks() -> None:
    buf = PlaybackBuffer()
    buf.add_audio(b"\x00" * 1600)
    buf.add_mark("a")
    buf.add_audio(b"\x00" * 1600)
    buf.add_mark("b")
    buf.play(160)
    assert buf.clear() == ["a", "b"]
    assert buf.buffered_bytes == 0 and buf.idle
    assert buf.play(160) == (b"", [])


def test_the_gateways_own_builders_pass_validation() -> None:
    audio = bytes(range(256))[:160]
    assert parse_outbound(media_message(SID, audio), stream_sid=SID) == OutMedia(audio)
    assert parse_outbound(mark_message(SID, "3:1"), stream_sid=SID) == OutMark("3:1")
    assert parse_outbound(clear_message(SID), stream_sid=SID) == OutClear()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff" * 160, 31950),  # binary frame
        ("not json", 31924),
        ('["media"]', 31924),
        (json.dumps({"event": "start", "streamSid": SID}), 31924),
        (json.dumps({"event": "clear", "streamSid": "MZother"}), 31951),
        (json.dumps({"event": "clear"}), 31951),
        (json.dumps({"event": "clear", "streamSid": SID, "extra": 1}), 31924),
        (json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "@@@"}}), 31924),
        (json.dumps({"event": "media", "streamSid": SID, "media": {"payload": ""}}), 31924),
        (json.dumps({"event": "media", "streamSid": SID}), 31924),
        (json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": ""}}), 31924),
        (json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": 3}}), 31924),
    ],
)
def test_messages_twilio_would_refuse_are_protocol_errors(raw: str | bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_outbound(raw, stream_sid=SID)
    assert e.value.code == code


def test_twiml_stream_url_and_parameters() -> None:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        '<Stream url="wss://example.com/twilio-stream">'
        '<Parameter name="token" value="abc"/><Parameter name="x" value=""/>'
        "</Stream></Connect></Response>"
    )
    target = parse_twiml(xml)
    assert target.url == "wss://example.com/twilio-stream"
    assert target.parameters == {"token": "abc", "x": ""}


@pytest.mark.parametrize(
    "xml",
    [
        "<Response><Reject/></Response>",
        "<Response><Say>busy</Say><Hangup/></Response>",
        "<Response><Connect><Stream/></Connect></Response>",
        "<html>oops</html>",
        "not xml",
    ],
)
def test_twiml_without_a_stream_rejects_the_call(xml: str) -> None:
    with pytest.raises(CallRejected):
        parse_twiml(xml)


def test_public_stream_url_maps_to_the_local_gateway() -> None:
    assert (
        local_stream_url("wss://abc.ngrok.app/base/twilio-stream", "http://127.0.0.1:8080")
        == "ws://127.0.0.1:8080/base/twilio-stream"
    )
    assert (
        local_stream_url("wss://h/twilio-stream", "https://gw:9443")
        == "wss://gw:9443/twilio-stream"
    )


def test_webhook_is_signed_as_twilio_signs_it() -> None:
    call = SimulatedCall(
        gateway_url="http://127.0.0.1:1", public_url="https://voice.example.com/", auth_token="t0k"
    )
    params = call.voice_params()
    assert params["CallSid"].startswith("CA") and len(params["CallSid"]) == 34
    assert params["AccountSid"].startswith("AC") and params["CallStatus"] == "ringing"
    url = "https://voice.example.com/voice"
    sig = twilio_signature(url, params, "t0k")
    assert RequestValidator("t0k").validate(url, params, sig)
    assert not RequestValidator("other").validate(url, params, sig)
    ws_sig = twilio_signature("wss://voice.example.com/twilio-stream", {}, "t0k")
    assert RequestValidator("t0k").validate("wss://voice.example.com/twilio-stream", {}, ws_sig)
    assert base64.b64decode(sig) != base64.b64decode(ws_sig)


def test_word_recall_ignores_case_and_punctuation() -> None:
    assert word_recall("What are your opening hours?", "what are your opening hours") == 1.0
    assert word_recall("Thank you, goodbye.", "thank you") == pytest.approx(2 / 3)
    assert word_recall("Hello there", "") == 0.0
