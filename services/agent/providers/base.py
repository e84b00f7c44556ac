"""The agent provider interface: a turn's input and history in, streamed text and actions out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.outbound import OutboundContext

# ``digits``: a keypad entry the agent asked for (services.agent.digits), ``text`` the digits.
TurnKind = Literal["call_started", "utterance", "dtmf", "digits", "silence", "call_limit"]


@dataclass(frozen=True, kw_only=True)
class TurnInput:
    """Why the agent is asked to speak, and what it knows.

    ``history`` is the conversation so far in chat-completions shape (``role``/``content``
    dicts, tool calls included), already truncated to what the caller actually heard.
    """

    call_sid: str
    kind: TurnKind
    text: str = ""
    keys: str = ""  # keys pressed while the caller said ``text`` (an utterance)
    history: list[dict[str, Any]] = field(default_factory=list)
    outbound: OutboundContext | None = None  # set on calls we placed (why, with what)


@dataclass(frozen=True, kw_only=True)
class HangupAction:
    """End the call after this turn's audio has played."""

    reason: str = "agent"


@dataclass(frozen=True, kw_only=True)
class TransferAction:
    """Transfer the caller to ``to`` (E.164) after this turn's audio has played."""

    to: str


@dataclass(frozen=True, kw_only=True)
class HistoryItem:
    """A non-spoken item to append to history (e.g. a tool call and its result)."""

    message: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class UsageReport:
    """What one model request used, from the provider's own usage report (for the cost)."""

    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


AgentOutput = str | HangupAction | TransferAction | HistoryItem | UsageReport


class AgentProvider(ABC):
    """A conversational agent. Implement :meth:`respond`; the worker does the rest.

    The worker cuts streamed text into sentences for TTS, stores history, handles
    interruption (by cancelling the iteration) and publishes actions as control messages.
    """

    name: str = "agent"

    @abstractmethod
    def respond(self, turn: TurnInput) -> AsyncIterator[AgentOutput]:
        """Yield reply text (any granularity: tokens or sentences) and actions, in order."""

    def cacheable(self, sentence: str) -> bool:
        """Whether ``sentence`` is fixed text (a greeting or prompt, no caller data) whose
        audio TTS may cache and reuse across calls. Default: nothing is."""
        return False

    async def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Prepare before the first call (optional)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources at shutdown (optional)."""
