"""Bounded audio subscriptions: a consumer that falls behind drops, is counted and reported."""

from __future__ import annotations

import asyncio
import uuid

from shared import bus, subjects
from shared.metrics import SLOW_CONSUMER_DROPS
from shared.settings import Settings


async def test_slow_consumer_drops_are_counted_and_reported_once(nats_url: str) -> None:
    sid = "CA" + uuid.uuid4().hex
    reported: list[str] = []
    bus.on_slow_consumer(reported.append)
    nc = await bus.connect(Settings(nats_url=nats_url), name="test-slow-consumer")
    release = asyncio.Event()
    got: list[bytes] = []

    async def stuck(msg: object) -> None:
        await release.wait()  # a consumer that stopped keeping up
        got.append(b"")

    before = SLOW_CONSUMER_DROPS.labels("audio.in")._value.get()
    try:
        await nc.subscribe(subjects.audio_in(sid, "asr-1"), cb=stuck, pending_msgs_limit=10)
        for _ in range(50):
            await nc.publish(subjects.audio_in(sid, "asr-1"), b"\xff" * 160)
        await nc.flush()
        await asyncio.sleep(0.3)
        dropped = SLOW_CONSUMER_DROPS.labels("audio.in")._value.get() - before
        assert 30 <= dropped <= 40  # all but the pending limit (and the one in the callback)
        assert reported.count(subjects.audio_in(sid, "asr-1")) == 1  # reported once, not per frame
        release.set()
        await asyncio.sleep(0.1)
        assert 10 <= len(got) <= 11  # what was kept is still delivered
    finally:
        release.set()
        bus._slow_consumer_hooks.remove(reported.append)
        await nc.close()
