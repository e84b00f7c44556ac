"""Silence watchdog and call-length guard of one call (no I/O, no clock of its own).

They live in the gateway because it owns the call: any worker may restart, the guards go on.

- Silence: after ``SILENCE_REPROMPT_S`` with neither caller speech nor agent audio, ask the agent
  to reprompt (``Prompt(reason="silence")``); after a second silence, to say goodbye
  (``"silence_final"``: the agent then publishes ``Hangup``). If the call is still up
  ``SILENCE_HANGUP_S`` after that (agent down), the gateway ends it itself.
- Length: at ``MAX_CALL_S``, ``Prompt(reason="call_limit")``; the gateway ends the call once the
  agent's goodbye has played, or ``CALL_LIMIT_GRACE_S`` later at the latest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PromptReason = Literal["silence", "silence_final", "call_limit"]
CALLER_SPEECH_CAP_S = 60.0  # a speech start never followed by a stop stops counting after this


@dataclass(frozen=True, slots=True)
class AskPrompt:
    """Publish ``Prompt(reason)``."""

    reason: PromptReason
    silence_s: float = 0.0


@dataclass(frozen=True, slots=True)
class EndCall:
    """End the call now (``reason`` goes into ``CallEnded``)."""

    reason: str


GuardAction = AskPrompt | EndCall


class CallGuards:
    """Decides when to reprompt, say goodbye, and end the call. Times are monotonic seconds."""

    def __init__(
        self,
        *,
        started: float,
        silence_s: float,
        hangup_s: float,
        max_call_s: float,
        limit_grace_s: float,
    ) -> None:
        self._silence_s = silence_s
        self._hangup_s = hangup_s
        self._max_call_s = max_call_s
        self._grace_s = limit_grace_s
        self._started = started
        self._last_activity = started
        self._prompts = 0
        self._final_at: float | None = None
        self._limit_at: float | None = None
        self._speaking_since: float | None = None
        self._ended = False

    @property
    def limit_reached(self) -> bool:
        """The call-limit prompt went out."""
        return self._limit_at is not None

    def caller_activity(self, now: float) -> None:
        """The caller spoke (or pressed a key): silence is over, prompts start again."""
        self._last_activity = max(self._last_activity, now)
        self._prompts = 0
        self._final_at = None

    def caller_speaking(self, speaking: bool, now: float) -> None:
        """The recognizer says the caller started (True) or stopped (False) speaking."""
        self._speaking_since = now if speaking else None
        self.caller_activity(now)

    def agent_activity(self, now: float) -> None:
        """Agent text or audio: the silence timer restarts (the prompt count does not)."""
        self._last_activity = max(self._last_activity, now)

    def tick(self, now: float, *, agent_busy: bool) -> list[GuardAction]:
        """What to do now; ``agent_busy``: agent audio is queued or playing."""
        if self._ended:
            return []
        actions: list[GuardAction] = []
        if self._max_call_s > 0:
            if self._limit_at is None and now - self._started >= self._max_call_s:
                self._limit_at = now
                actions.append(AskPrompt("call_limit"))
            elif self._limit_at is not None and now - self._limit_at >= self._grace_s:
                self._ended = True
                return [EndCall("call_limit")]
        speaking = (
            self._speaking_since is not None and now - self._speaking_since < CALLER_SPEECH_CAP_S
        )
        if agent_busy or speaking:
            self._last_activity = now
        if self._final_at is not None:
            if now - self._final_at >= self._hangup_s:
                self._ended = True
                actions.append(EndCall("silence"))
            return actions
        silent = now - self._last_activity
        if self._limit_at is None and silent >= self._silence_s:
            self._prompts += 1
            self._last_activity = now
            if self._prompts == 1:
                actions.append(AskPrompt("silence", round(silent, 1)))
            else:
                self._final_at = now
                actions.append(AskPrompt("silence_final", round(silent, 1)))
        return actions
