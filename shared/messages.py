"""Versioned message models for text and control traffic on the bus (JSON).

Audio never goes through these models: it crosses the bus as raw bytes with headers
(see :mod:`shared.headers`). Every model carries ``v`` (schema version) and ``type``
(discriminator), so a consumer can reject what it does not understand instead of guessing.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.answers import AnswerKind
from shared.outbound import AnsweredBy, OutboundContext

SCHEMA_VERSION = 1


def now() -> float:
    """Wall-clock seconds, the timestamp every message carries."""
    return time.time()


class BusMessage(BaseModel):
    """Base of every JSON message on the bus: schema version, call SID, timestamp."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = SCHEMA_VERSION
    call_sid: str = Field(min_length=1, max_length=64)
    at: float = Field(default_factory=now)

    def to_bytes(self) -> bytes:
        """JSON encoding used on the bus."""
        return self.model_dump_json().encode()


# ---------------------------------------------------------------- voice.<call>.transcript


class SpeechStarted(BusMessage):
    """The recognizer's VAD heard the caller start speaking."""

    type: Literal["speech_started"] = "speech_started"
    utterance_id: int
    audio_ms: int = Field(description="position in the call's inbound audio")


class SpeechStopped(BusMessage):
    """The caller stopped speaking (end of utterance by VAD / endpointing)."""

    type: Literal["speech_stopped"] = "speech_stopped"
    utterance_id: int
    audio_ms: int
    speech_ms: int = Field(description="length of the utterance's speech")


class Transcript(BusMessage):
    """Interim or final words of one utterance."""

    type: Literal["transcript"] = "transcript"
    utterance_id: int
    text: str
    is_final: bool
    confidence: float | None = None
    speech_start_ms: int | None = None
    speech_end_ms: int | None = None
    endpointing_ms: float | None = Field(
        default=None, description="last speech to end-of-utterance decision"
    )
    asr_ms: float | None = Field(default=None, description="end-of-utterance to final text")
    speech_ended_at: float | None = Field(
        default=None, description="wall clock of the end of caller speech (latency origin)"
    )
    continues: int | None = Field(
        default=None,
        description="on a final: the utterance this one goes on from (a fragment ended by the "
        "end-of-turn wait); its words are included and its reply is withdrawn",
    )


TranscriptMsg = Annotated[SpeechStarted | SpeechStopped | Transcript, Field(discriminator="type")]

# ---------------------------------------------------------------- voice.<call>.reply


class ReplySegment(BusMessage):
    """One sentence of an agent reply; TTS turns it into one audio segment."""

    type: Literal["segment"] = "segment"
    turn: int = Field(ge=0)
    seq: int = Field(ge=0)
    text: str
    last: bool = Field(description="no further segment of this turn follows")
    utterance_id: int | None = Field(default=None, description="caller utterance it answers")
    speech_ended_at: float | None = None
    cacheable: bool = Field(
        default=False,
        description="fixed prompt (greeting, reprompt, apology): TTS caches its audio at once",
    )


ReplyMsg = Annotated[ReplySegment, Field(discriminator="type")]

# ---------------------------------------------------------------- voice.<call>.control


class CallStarted(BusMessage):
    """Gateway: the Twilio stream started; workers may set up state for the call."""

    type: Literal["call_started"] = "call_started"
    stream_sid: str
    gateway_id: str
    parameters: dict[str, str] = Field(default_factory=dict)
    outbound: OutboundContext | None = Field(
        default=None, description="set on calls we placed: why, with what, who answered"
    )


class CallEnded(BusMessage):
    """Gateway: the call is over; every service forgets it."""

    type: Literal["call_ended"] = "call_ended"
    reason: str = "stop"


class Interrupt(BusMessage):
    """The caller barged in on ``turn``: stop generating, synthesizing and playing it."""

    type: Literal["interrupt"] = "interrupt"
    turn: int


class Played(BusMessage):
    """Gateway: what the caller actually heard of one segment (from Twilio marks)."""

    type: Literal["played"] = "played"
    turn: int
    seq: int
    heard_text: str
    complete: bool


class Hangup(BusMessage):
    """Agent: end the call once ``after_turn`` has been played."""

    type: Literal["hangup"] = "hangup"
    after_turn: int | None = None
    reason: str = "agent"


class Transfer(BusMessage):
    """Agent: transfer the caller to ``to`` once ``after_turn`` has been played."""

    type: Literal["transfer"] = "transfer"
    to: str
    after_turn: int | None = None


class Dtmf(BusMessage):
    """Gateway: the caller pressed a key."""

    type: Literal["dtmf"] = "dtmf"
    digit: str = Field(pattern=r"^[0-9*#A-Da-dw]$")


class Prompt(BusMessage):
    """Gateway: the agent should speak now without caller input.

    ``silence``: nobody spoke for ``SILENCE_REPROMPT_S`` (ask "are you still there?");
    ``silence_final``: a second silence (say goodbye, then publish :class:`Hangup`);
    ``call_limit``: the call reached ``MAX_CALL_S`` (say goodbye; the gateway ends the call).
    """

    type: Literal["prompt"] = "prompt"
    reason: Literal["silence", "silence_final", "call_limit"]
    silence_s: float = Field(default=0.0, ge=0, description="seconds of silence so far")


class StageFailed(BusMessage):
    """A stage gave up on its provider for this call: the agent apologizes out loud."""

    type: Literal["stage_failed"] = "stage_failed"
    service: str
    reason: str = ""


class AmdResult(BusMessage):
    """Gateway: Twilio's answering-machine detection answered for an outbound call.

    Published by whichever gateway replica received Twilio's AMD callback; the replica holding
    the media stream then starts the call (:class:`CallStarted` with ``outbound.answered_by``).
    """

    type: Literal["amd_result"] = "amd_result"
    answered_by: AnsweredBy
    detection_ms: int | None = Field(default=None, ge=0)


class AgentAsked(BusMessage):
    """Agent: what its reply just finished asking the caller for (``None``: nothing in
    particular). The ASR's end-of-turn decision waits for such an answer ("What is your date of
    birth?" is not answered by "It's"); only the kind travels, never the words."""

    type: Literal["agent_asked"] = "agent_asked"
    turn: int = Field(ge=0)
    expects: AnswerKind | None = None


ControlMsg = Annotated[
    CallStarted
    | CallEnded
    | Interrupt
    | Played
    | Hangup
    | Transfer
    | Dtmf
    | StageFailed
    | Prompt
    | AmdResult
    | AgentAsked,
    Field(discriminator="type"),
]

# ---------------------------------------------------------------- voice.<call>.events

EventValue = str | int | float | bool | None


class Event(BusMessage):
    """Lifecycle and timing record for tailing and dashboards. Never carries PHI."""

    type: Literal["event"] = "event"
    service: str
    name: str
    turn: int | None = None
    data: dict[str, EventValue] = Field(default_factory=dict)


EventMsg = Annotated[Event, Field(discriminator="type")]

# ---------------------------------------------------------------- voice._sys.asr.* (claims)


class AsrClaim(BusMessage):
    """Gateway -> ASR queue group (request): please recognize this call."""

    type: Literal["asr_claim"] = "asr_claim"
    gateway_id: str
    attempt: int = 0
    last_utterance_id: int = Field(
        default=0,
        ge=0,
        description="highest utterance id already seen on this call (re-claims after failover): "
        "the worker numbers the call's utterances from the next one",
    )


class AsrClaimReply(BusMessage):
    """ASR worker -> gateway (reply): accepted (and by whom) or refused (at capacity)."""

    type: Literal["asr_claim_reply"] = "asr_claim_reply"
    worker_id: str
    accepted: bool


class AsrHeartbeat(BusMessage):
    """ASR worker -> gateway, every ``HEARTBEAT_S``: this worker still holds the call."""

    type: Literal["asr_heartbeat"] = "asr_heartbeat"
    worker_id: str


class TurnHeartbeat(BusMessage):
    """Agent replica -> gateway, every ``HEARTBEAT_S`` while it answers an utterance."""

    type: Literal["turn_heartbeat"] = "turn_heartbeat"
    utterance_id: int
    worker_id: str


HEARTBEAT_S = 0.5
HEARTBEAT_MISSES = 3  # missed heartbeats before the gateway claims the call again


# ---------------------------------------------------------------- parsing

_transcript = TypeAdapter[TranscriptMsg](TranscriptMsg)
_reply = TypeAdapter[ReplyMsg](ReplyMsg)
_control = TypeAdapter[ControlMsg](ControlMsg)
_event = TypeAdapter[EventMsg](EventMsg)


def parse_transcript(data: bytes | str) -> SpeechStarted | SpeechStopped | Transcript:
    """Parse a ``.transcript`` message; raises ``pydantic.ValidationError`` on bad input."""
    return _transcript.validate_json(data)


def parse_reply(data: bytes | str) -> ReplySegment:
    """Parse a ``.reply`` message; raises ``pydantic.ValidationError`` on bad input."""
    return _reply.validate_json(data)


def parse_control(
    data: bytes | str,
) -> (
    CallStarted
    | CallEnded
    | Interrupt
    | Played
    | Hangup
    | Transfer
    | Dtmf
    | StageFailed
    | Prompt
    | AmdResult
    | AgentAsked
):
    """Parse a ``.control`` message; raises ``pydantic.ValidationError`` on bad input."""
    return _control.validate_json(data)


def parse_event(data: bytes | str) -> Event:
    """Parse an ``.events`` message; raises ``pydantic.ValidationError`` on bad input."""
    return _event.validate_json(data)


def event(*, call_sid: str, service: str, name: str, turn: int | None = None, **data: Any) -> Event:
    """Build an :class:`Event` (helper so services do not repeat field names).

    ``data`` passes the log-field classification (``shared.logging.FIELDS``): events are for
    tailing and dashboards, so PHI-bearing or unknown fields never reach the bus in clear.
    """
    from shared.logging import field_value

    clean = {k: field_value(k, v) for k, v in data.items()}
    return Event(call_sid=call_sid, service=service, name=name, turn=turn, data=clean)
