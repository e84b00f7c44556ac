"""The console's live feed: bus traffic of every call, as small JSON items for the page.

Each console viewer gets its own raw nats-py subscriptions to transcripts, replies, control and
events (never audio) and a bounded queue: a slow browser loses items (counted), never slows the
bus. Control messages are reduced to what the timeline draws (keys, played, interrupt, prompt,
hangup, transfer): never a call's start parameters (they carry its stream token).
"""

from __future__ import annotations

import asyncio
import hashlib
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
    CallEnded,
    Dtmf,
    Hangup,
    Interrupt,
    Played,
    Prompt,
    SpeechStarted,
    SpeechStopped,
    StageFailed,
    Transcript,
    Transfer,
    parse_control,
    parse_event,
    parse_reply,
    parse_transcript,
)
from shared.metrics import BAD_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "gateway"
QUEUE_MAX = 1000  # items buffered per viewer before new ones are dropped
FEED_SUBJECTS = (
    subjects.ALL_TRANSCRIPT,
    subjects.ALL_REPLY,
    subjects.ALL_CONTROL,
    subjects.ALL_EVENTS,
)

_BAD = BAD_MESSAGES.labels(SERVICE, "console")

Item = dict[str, Any]


def message_key(subject: str, data: bytes) -> bytes:
    """Identity of one bus message (its subject and bytes): the same message stored and live."""
    return hashlib.blake2b(subject.encode() + b"\0" + data, digest_size=16).digest()


def control_item(call: str, data: bytes) -> Item | None:
    """A control message as the timeline needs it (None: not drawn)."""
    ctl = parse_control(data)
    base: Item = {"kind": "control", "call": call, "at": ctl.at, "type": ctl.type}
    if isinstance(ctl, Dtmf):
        base["digit"] = ctl.digit
    elif isinstance(ctl, Played):
        base.update(turn=ctl.turn, seq=ctl.seq, complete=ctl.complete)
    elif isinstance(ctl, Interrupt):
        base["turn"] = ctl.turn
    elif isinstance(ctl, Prompt):
        base["reason"] = ctl.reason
    elif isinstance(ctl, Hangup):
        base.update(after_turn=ctl.after_turn, reason=ctl.reason)
    elif isinstance(ctl, Transfer):
        base["after_turn"] = ctl.after_turn  # not the number: the console shows no PII it need not
    elif isinstance(ctl, StageFailed):
        base.update(service=ctl.service, reason=ctl.reason)
    elif isinstance(ctl, CallEnded):
        base["reason"] = ctl.reason
    else:
        return None  # call_started: its parameters hold the call's stream token
    return base


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
                    "speech_ended_at": msg.speech_ended_at,
                }
            if isinstance(msg, SpeechStopped):
                return {
                    "kind": msg.type,
                    "call": call,
                    "at": msg.at,
                    "utterance": msg.utterance_id,
                    "speech_ms": msg.speech_ms,
                }
            if isinstance(msg, SpeechStarted):
                return {"kind": msg.type, "call": call, "at": msg.at, "utterance": msg.utterance_id}
            return None
        if kind == "control":
            return control_item(call, data)
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
    """Bus messages -> bounded queue of (message key, item) for one viewer."""

    def __init__(self, *, maxsize: int = QUEUE_MAX) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Item]] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0

    async def on_msg(self, msg: Msg) -> None:
        """nats-py callback."""
        item = feed_item(msg.subject, msg.data)
        if item is None:
            return
        try:
            self.queue.put_nowait((message_key(msg.subject, msg.data), item))
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
