"""Outbound calls: what a dial request asks for, and what the call's workers learn about it.

An outbound call is placed by the gateway (``POST /calls/outbound``) through Twilio's REST
API. Its purpose and parameters are kept server side, keyed by the CallSid Twilio returns, and
reach the agent on :class:`~shared.messages.CallStarted` as :class:`OutboundContext`: nothing a
caller could forge travels through Twilio. With answering-machine detection (AMD) the gateway
holds the call start until Twilio's ``AnsweredBy`` arrives (docs/decisions/0035).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Twilio's ``AnsweredBy`` values (asynchronous AMD with ``DetectMessageEnd``).
AnsweredBy = Literal[
    "human",
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "fax",
    "unknown",
]
ANSWERED_BY_VALUES: frozenset[str] = frozenset(AnsweredBy.__args__)  # type: ignore[attr-defined]

# Twilio ``CallStatus`` values that end an outbound call before anyone answered.
NOT_ANSWERED: frozenset[str] = frozenset({"busy", "no-answer", "failed", "canceled"})

PURPOSE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
PARAM_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,31}$"
MAX_PARAMS = 16
MAX_PARAM_CHARS = 200


_PARAM_NAME = re.compile(PARAM_NAME_PATTERN)


def check_params(params: dict[str, str]) -> dict[str, str]:
    """Parameter names are identifiers, values short single-line text (else ValueError)."""
    for name, value in params.items():
        if not _PARAM_NAME.fullmatch(name):
            raise ValueError(f"bad parameter name {name[:40]!r}")
        if len(value) > MAX_PARAM_CHARS or any(c in value for c in "\r\n\x00"):
            raise ValueError(f"parameter {name} is too long or not one line")
    return params


def is_person(answered_by: str | None) -> bool:
    """Only an explicit ``human`` is a person: a machine, a fax or ``unknown`` never is."""
    return answered_by == "human"


class OutboundRequest(BaseModel):
    """``POST /calls/outbound`` body (also what ``voiceagent dial`` sends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(min_length=2, max_length=32, description="destination, E.164 (+15551234567)")
    purpose: str = Field(default="reminder", pattern=PURPOSE_PATTERN)
    params: dict[str, str] = Field(default_factory=dict, max_length=MAX_PARAMS)
    amd: bool = Field(default=True, description="answering-machine detection (message end)")

    @field_validator("params")
    @classmethod
    def _params_ok(cls, value: dict[str, str]) -> dict[str, str]:
        return check_params(value)


class OutboundContext(BaseModel):
    """What the agent knows about an outbound call (on ``CallStarted.outbound``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    purpose: str = Field(pattern=PURPOSE_PATTERN)
    params: dict[str, str] = Field(default_factory=dict, max_length=MAX_PARAMS)
    amd: bool = True
    answered_by: AnsweredBy | None = Field(
        default=None, description="Twilio's AMD answer; None: AMD off (treated as a person)"
    )

    @property
    def person(self) -> bool:
        """Talk to whoever answered (AMD off, or AMD said human)."""
        return not self.amd or is_person(self.answered_by)


OutboundOutcome = Literal[
    "queued", "refused", "error", "human", "machine", "unknown", "not_answered", "completed"
]
