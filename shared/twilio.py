"""Twilio bidirectional Media Streams protocol: the messages, exactly as Twilio sends them.

Used by the gateway (to parse what Twilio sends and build what it may send back) and by the
simulated caller (to speak the same protocol from Twilio's side).
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# Twilio sends 160-byte frames; allow generous slack but refuse absurd payloads.
MAX_MEDIA_PAYLOAD_B64 = 8 * 1024


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Connected(_In):
    event: Literal["connected"]
    protocol: str = "Call"
    version: str = "1.0.0"


class MediaFormat(_In):
    encoding: str
    sample_rate: int = Field(alias="sampleRate")
    channels: int


class StartInfo(_In):
    stream_sid: str = Field(alias="streamSid", max_length=64)
    account_sid: str = Field(alias="accountSid", max_length=64)
    call_sid: str = Field(alias="callSid", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    tracks: list[str] = Field(default_factory=list, max_length=4)
    custom_parameters: dict[str, str] = Field(
        default_factory=dict, alias="customParameters", max_length=32
    )
    media_format: MediaFormat = Field(alias="mediaFormat")


class Start(_In):
    event: Literal["start"]
    sequence_number: str | int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid", max_length=64)
    start: StartInfo


class MediaInfo(_In):
    track: str = "inbound"
    chunk: str | int | None = None
    timestamp: str | int | None = None
    payload: str = Field(max_length=MAX_MEDIA_PAYLOAD_B64)


class Media(_In):
    event: Literal["media"]
    sequence_number: str | int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid", max_length=64)
    media: MediaInfo

    def audio(self) -> bytes:
        """The raw mu-law bytes (raises ``binascii.Error`` on bad base64)."""
        return base64.b64decode(self.media.payload, validate=True)


class DtmfInfo(_In):
    track: str = "inbound_track"
    digit: str = Field(pattern=r"^[0-9*#A-Da-dw]$")


class DtmfMsg(_In):
    event: Literal["dtmf"]
    sequence_number: str | int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid", max_length=64)
    dtmf: DtmfInfo


class MarkInfo(_In):
    name: str = Field(max_length=256)


class Mark(_In):
    event: Literal["mark"]
    sequence_number: str | int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid", max_length=64)
    mark: MarkInfo


class StopInfo(_In):
    account_sid: str | None = Field(default=None, alias="accountSid")
    call_sid: str | None = Field(default=None, alias="callSid")


class Stop(_In):
    event: Literal["stop"]
    sequence_number: str | int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid", max_length=64)
    stop: StopInfo | None = None


TwilioInbound = Annotated[
    Connected | Start | Media | DtmfMsg | Mark | Stop, Field(discriminator="event")
]
_inbound = TypeAdapter[TwilioInbound](TwilioInbound)


def parse_inbound(text: str | bytes) -> Connected | Start | Media | DtmfMsg | Mark | Stop:
    """Parse one Twilio text frame; raises ``pydantic.ValidationError`` if it is not valid."""
    return _inbound.validate_json(text)


# ---------------------------------------------------------------- what we may send to Twilio


def media_message(stream_sid: str, mulaw: bytes) -> str:
    """``media`` frame: base64 mu-law 8 kHz, no file header."""
    payload = base64.b64encode(mulaw).decode()
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    """``mark`` frame: Twilio echoes it once the audio sent before it has played."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """``clear`` frame: Twilio drops its buffered audio and echoes pending marks."""
    return json.dumps({"event": "clear", "streamSid": stream_sid})
