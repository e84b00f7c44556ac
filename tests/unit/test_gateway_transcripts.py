"""A call's transcripts reach every gateway reader once, parsed once, even when one reader fails."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from services.gateway.transcripts import TranscriptFeed, TranscriptMessage
from shared import subjects
from shared.messages import SpeechStarted, Transcript


@pytest.fixture
async def nc(private_nats: str) -> AsyncIterator[NATS]:
    client = await nats.connect(private_nats)
    try:
        yield client
    finally:
        await client.close()


async def test_every_reader_gets_each_message_in_order_despite_a_failing_one(nc: NATS) -> None:
    call = "CA" + uuid.uuid4().hex
    feed = TranscriptFeed(nc=nc, call_sid=call)
    seen: list[tuple[str, TranscriptMessage, bytes]] = []

    async def first(m: TranscriptMessage, raw: bytes) -> None:
        seen.append(("first", m, raw))
        raise RuntimeError("a broken reader")

    async def second(m: TranscriptMessage, raw: bytes) -> None:
        seen.append(("second", m, raw))

    feed.add(first)
    feed.add(second)
    sub = await feed.subscribe()
    started = SpeechStarted(call_sid=call, utterance_id=1, audio_ms=0)
    final = Transcript(call_sid=call, utterance_id=1, text="hello", is_final=True)
    await nc.publish(subjects.transcript(call), b"{not json")  # dropped before any reader
    await nc.publish(subjects.transcript(call), started.to_bytes())
    await nc.publish(subjects.transcript(call), final.to_bytes())
    await nc.flush()
    for _ in range(200):
        if len(seen) == 4:
            break
        await asyncio.sleep(0.01)
    await sub.unsubscribe()
    assert [(who, type(m).__name__) for who, m, _ in seen] == [
        ("first", "SpeechStarted"),
        ("second", "SpeechStarted"),
        ("first", "Transcript"),
        ("second", "Transcript"),
    ]
    assert seen[2][1] is seen[3][1]  # parsed once, the same message for both
    assert seen[3][2] == final.to_bytes()  # and the body as published (redelivery re-sends it)
