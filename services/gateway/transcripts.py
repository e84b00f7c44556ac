"""One subscription to a call's transcripts, each message parsed once and given to every reader.

Three parts of the gateway follow the recognizer: the ASR link (utterance ids and where the
last final ended, for a re-claim), redelivery (the turn the agents owe the caller) and the
call's turn-taking (barge-in, guards). Readers run one after the other, in the order added,
each isolated from the others' failures.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shared import subjects
from shared.logging import kv
from shared.messages import SpeechStarted, SpeechStopped, Transcript, parse_transcript

log = logging.getLogger(__name__)

TranscriptMessage = SpeechStarted | SpeechStopped | Transcript
Reader = Callable[[TranscriptMessage, bytes], Awaitable[None]]  # (message, body as published)


class TranscriptFeed:
    """The fan-out of one call's ``voice.<call>.transcript`` subject."""

    def __init__(self, *, nc: NATS, call_sid: str) -> None:
        self._nc = nc
        self._call = call_sid
        self._readers: list[Reader] = []

    def add(self, reader: Reader) -> None:
        """Give every transcript message to ``reader`` from now on (after those added before)."""
        self._readers.append(reader)

    async def subscribe(self) -> Subscription:
        """Subscribe to the call's transcripts; the caller owns (and unsubscribes) the result."""
        return await self._nc.subscribe(subjects.transcript(self._call), cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            message = parse_transcript(msg.data)
        except ValidationError:
            return  # the agent counts bad transcripts
        for reader in self._readers:
            try:
                await reader(message, msg.data)
            except Exception:
                log.exception("transcript reader failed", **kv(call=self._call))
