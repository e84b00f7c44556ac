"""Twilio Media Streams messages, in the exact shapes Twilio sends and accepts (FACTS.md)."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from shared.twilio import (
    Connected,
    DtmfMsg,
    Mark,
    Media,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_inbound,
)

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA2d8f0a0a1bbd4c2d9a0b7a6c2f3e4d5a"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"
FRAME = bytes(range(160))

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"token": "123.abc.def", "callSid": CALL},
    },
    "streamSid": STREAM,
}
MEDIA = {
    "event": "media",
    "sequenceNumber": "3",
    "media": {
        "track": "inbound",
        "chunk": "1",
        "timestamp": "5",
        "payload": base64.b64encode(FRAME).decode(),
    },
    "streamSid": STREAM,
}
DTMF = {
    "event": "dtmf",
    "streamSid": STREAM,
    "sequenceNumber": "5",
    "dtmf": {"track": "inbound_track", "digit": "1"},
}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {"name": "3:0"}}
STOP = {
    "event": "stop",
    "sequenceNumber": "5",
    "streamSid": STREAM,
    "stop": {"accountSid": ACCOUNT, "callSid": CALL},
}


def test_parses_every_inbound_shape() -> None:
    assert isinstance(parse_inbound(json.dumps(CONNECTED)), Connected)
    start = parse_inbound(json.dumps(START))
    assert isinstance(start, Start)
    assert start.stream_sid == STREAM and start.start.call_sid == CALL
    assert start.start.custom_parameters == {"token": "123.abc.def", "callSid": CALL}
    assert start.start.media_format.sample_rate == 8000
    media = parse_inbound(json.dumps(MEDIA))
    assert isinstance(media, Media)
    assert media.audio() == FRAME and media.media.chunk == "1" and media.media.timestamp == "5"
    dtmf = parse_inbound(json.dumps(DTMF))
    assert isinstance(dtmf, DtmfMsg) and dtmf.dtmf.digit == "1"
    mark = parse_inbound(json.dumps(MARK))
    assert isinstance(mark, Mark) and mark.mark.name == "3:0"
    stop = parse_inbound(json.dumps(STOP))
    assert isinstance(stop, Stop) and stop.stop is not None and stop.stop.call_sid == CALL


@pytest.mark.parametrize(
    "bad",
    [
        "{",
        json.dumps({"event": "unknown", "streamSid": STREAM}),
        json.dumps({"event": "media", "streamSid": STREAM}),
        json.dumps({**MEDIA, "media": {"payload": "A" * 10_000}}),
        json.dumps({**DTMF, "dtmf": {"digit": "55"}}),
        json.dumps({**START, "start": {**START["start"], "callSid": "CA1.>"}}),  # type: ignore[dict-item]
        json.dumps([1, 2]),
    ],
)
def test_rejects_malformed_unknown_and_oversized(bad: str) -> None:
    with pytest.raises(ValidationError):
        parse_inbound(bad)


def test_bad_base64_payload_is_an_error_not_garbage_audio() -> None:
    media = parse_inbound(json.dumps({**MEDIA, "media": {"payload": "@@not-base64@@"}}))
    assert isinstance(media, Media)
    with pytest.raises(ValueError):
        media.audio()


def test_outbound_messages_are_exactly_what_twilio_accepts() -> None:
    media = json.loads(media_message(STREAM, FRAME))
    assert media == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(FRAME).decode()},
    }
    assert json.loads(mark_message(STREAM, "2:1")) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "2:1"},
    }
    assert json.loads(clear_message(STREAM)) == {"event": "clear", "streamSid": STREAM}
