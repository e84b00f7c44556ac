"""What each stage of a call used: the ``usage`` events on ``voice.<call>.events``.

Every stage reports its own quantities as it goes (the gateway prices them at the end of the
call, :mod:`shared.cost`): ASR audio seconds per provider (at the end of the call), LLM prompt
and completion tokens from the provider's own usage report (per model round), TTS characters
per synthesized segment (prompt-cache hits included: an upper bound), Twilio call seconds and
direction (at the end of the call). Embedded engines report ``cpu_s``: the CPU seconds of this
call's work, the engine's own native threads included (``services/asr/engine_cpu.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.messages import Event, event

USAGE_EVENT = "usage"
Stage = Literal["asr", "llm", "tts", "twilio"]
STAGES: tuple[Stage, ...] = ("asr", "llm", "tts", "twilio")


class Usage(BaseModel):
    """One usage report (a stage, a provider, and the quantities it used)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    stage: Stage
    provider: str = Field(min_length=1, max_length=64)
    model: str = Field(default="", max_length=64)
    audio_s: float = Field(default=0.0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    chars: int = Field(default=0, ge=0)
    cpu_s: float = Field(default=0.0, ge=0)
    call_s: float = Field(default=0.0, ge=0)
    direction: Literal["", "inbound", "outbound"] = ""


def usage_event(*, call_sid: str, service: str, usage: Usage, turn: int | None = None) -> Event:
    """The ``usage`` event carrying ``usage`` (zero quantities left out)."""
    data = usage.model_dump(exclude_defaults=True)
    data["stage"], data["provider"] = usage.stage, usage.provider
    return event(call_sid=call_sid, service=service, name=USAGE_EVENT, turn=turn, **data)


def usage_of(ev: Event) -> Usage | None:
    """The usage an event reports (None: not a valid usage event)."""
    if ev.name != USAGE_EVENT:
        return None
    try:
        return Usage.model_validate(ev.data)
    except ValueError:
        return None
