"""TwiML answers to Twilio's ``/voice`` webhook, built with the twilio library."""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse

# <Parameter> names; they come back in the ``start`` message's ``customParameters``.
PARAM_TOKEN = "token"
PARAM_CALL_SID = "callSid"
PARAM_DIRECTION = "direction"  # "outbound" on calls we placed (the record is looked up by SID)

BUSY_MESSAGE = "Sorry, we cannot take your call right now. Please call again later."


def connect_twiml(
    *, stream_url: str, call_sid: str, token: str, extra: dict[str, str] | None = None
) -> str:
    """``<Connect><Stream>`` to our media WebSocket (bidirectional), with the call's token.

    The stream URL must not carry a query string (Twilio error 31920): values travel as
    ``<Parameter>`` elements instead.
    """
    if "?" in stream_url:
        raise ValueError("the stream URL must not have a query string")
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    stream.parameter(name=PARAM_TOKEN, value=token)
    stream.parameter(name=PARAM_CALL_SID, value=call_sid)
    for name, value in (extra or {}).items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def busy_twiml(message: str = BUSY_MESSAGE) -> str:
    """Apologize and hang up (at capacity, draining, or the bus is down)."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)
