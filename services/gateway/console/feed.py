"""The console's live feed: bus traffic of every call, as small JSON items for the page.

Each console viewer gets its own raw nats-py subscriptions to transcripts, replies and events
(never audio) and a bounded queue: a slow browser loses items (counted), never slows the bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shared import subjects
from shared.logging import kv
from shared.messages import (
    SpeechStarted,
    SpeechStopped,
    Transcript,
    parse_event,
    parse_reply,
    parse_transcript,
)
from shared.metrics import BAD_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "gateway"
QUEUE_MAX = 1000  # items buffered per viewer before new ones are dropped
FEED_SUBJECTS = (subjects.ALL_TRANSCRIPT, subjects.ALL_REPLY, subjects.ALL_EVENTS)

_BAD = BAD_MESSAGES.labels(SERVICE, "console")

Item = dict[str, Any]


def feed_item(subject: str, data: bytes) -> Item | None:
    """One bus message as a console item, or None (not shown, or malformed: counted)."""
    try:
        call = subjects.call_sid_of(subject)
        kind = subject.rsplit(".", 1)[-1]
        if kind == "transcript":
            msg = parse_transcript(data)
            if isinstance(msg, Transcript):
                return {
                    "kind": "caller",
                    "call": call,
                    "at": msg.at,
                    "utterance": msg.utterance_id,
                    "text": msg.text,
                    "final": msg.is_final,
                    "asr_ms": msg.asr_ms,
                    "endpointing_ms": msg.endpointing_ms,
                }
            if isinstance(msg, SpeechStarted | SpeechStopped):
                return {"kind": msg.type, "call": call, "at": msg.at, "utterance": msg.utterance_id}
            return None
        if kind == "reply":
            seg = parse_reply(data)
            return {
                "kind": "agent",
                "call": call,
                "at": seg.at,
                "turn": seg.turn,
                "seq": seg.seq,
                "text": seg.text,
                "last": seg.last,
            }
        if kind == "events":
            ev = parse_event(data)
            return {
                "kind": "event",
                "call": call,
                "at": ev.at,
                "service": ev.service,
                "name": ev.name,
                "turn": ev.turn,
                "data": ev.data,
            }
    except (ValidationError, ValueError):
        _BAD.inc()
        return None
    return None


class FeedQueue:
    """Bus messages -> bounded queue of items for one viewer."""

    def __init__(self, *, maxsize: int = QUEUE_MAX) -> None:
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0

    async def on_msg(self, msg: Msg) -> None:
        """nats-py callback."""
        item = feed_item(msg.subject, msg.data)
        if item is None:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1


async def subscribe_feed(nc: NATS, on_msg: Callable[[Msg], Awaitable[None]]) -> list[Subscription]:
    """Subscribe ``on_msg`` to every call's transcripts, replies and events."""
    subs: list[Subscription] = []
    try:
        for subject in FEED_SUBJECTS:
            subs.append(await nc.subscribe(subject, cb=on_msg))
    except Exception:
        await unsubscribe_all(subs)
        raise
    return subs


async def unsubscribe_all(subs: list[Subscription]) -> None:
    """Drop subscriptions (errors ignored: the connection may be gone)."""
    for sub in subs:
        try:
            await sub.unsubscribe()
        except Exception as e:
            log.debug("console unsubscribe failed", **kv(error=type(e).__name__))
