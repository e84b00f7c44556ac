"""What the agent publishes: reply segments and call actions, turn heartbeats, events, usage."""

from __future__ import annotations

import logging
from typing import Any

from faststream.nats import NatsBroker

from services.agent.providers.base import AgentProvider, UsageReport
from shared import subjects
from shared.bus import audio_client
from shared.logging import kv
from shared.messages import BusMessage, ReplySegment, TurnHeartbeat, event
from shared.telemetry import Span, with_trace
from shared.usage import Usage, usage_event

log = logging.getLogger(__name__)

SERVICE = "agent"


class Publisher:
    """Publishes on the calls' subjects through the broker's connection."""

    def __init__(self, *, broker: NatsBroker, provider: AgentProvider) -> None:
        self._broker = broker
        self._provider = provider

    async def send(self, message: BusMessage, *, span: Span | None) -> None:
        """A reply segment or control message on the call's subject, in ``span``'s trace."""
        sid = message.call_sid
        is_reply = isinstance(message, ReplySegment)
        subject = subjects.reply(sid) if is_reply else subjects.control(sid)
        hdrs = with_trace(None, span) if span is not None else None
        await audio_client(self._broker).publish(subject, message.to_bytes(), headers=hdrs)

    async def heartbeat(self, beat: TurnHeartbeat) -> None:
        """This replica still holds the utterance's turn (services.agent.leases)."""
        await audio_client(self._broker).publish(
            subjects.turn_heartbeat(beat.call_sid), beat.to_bytes()
        )

    async def usage(self, call_sid: str, turn: int, report: UsageReport) -> None:
        """One model request's tokens on the call's events (shared.usage), for its cost."""
        usage = Usage(
            stage="llm",
            provider=self._provider.name,
            model=report.model[:64],
            prompt_tokens=report.prompt_tokens,
            completion_tokens=report.completion_tokens,
        )
        ev = usage_event(call_sid=call_sid, service=SERVICE, usage=usage, turn=turn)
        try:
            await audio_client(self._broker).publish(subjects.events(call_sid), ev.to_bytes())
        except Exception as e:  # usage is best effort, like every event
            log.debug("usage not published", **kv(error=type(e).__name__))

    async def event(self, call_sid: str, name: str, turn: int | None, **data: Any) -> None:
        """A call event (best effort: a lost event never fails a turn)."""
        ev = event(call_sid=call_sid, service=SERVICE, name=name, turn=turn, **data)
        try:
            await audio_client(self._broker).publish(subjects.events(call_sid), ev.to_bytes())
        except Exception as e:  # events are best effort
            log.debug("event not published", **kv(error=type(e).__name__))
