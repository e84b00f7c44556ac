"""Turn leases on a real Redis: one replica per utterance, taken over only once the holder died."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from services.agent.leases import DONE, TurnLeases, lease_key
from services.agent.store import Store

pytestmark = pytest.mark.integration


async def test_one_replica_answers_an_utterance_and_takes_over_only_a_lapsed_lease(
    redis_url: str,
) -> None:
    sid = "CA" + uuid.uuid4().hex
    a_store, b_store = Store(url=redis_url), Store(url=redis_url)
    a = TurnLeases(store=a_store, owner="agent-a", lease_s=0.4, renew_s=0.1)
    b = TurnLeases(store=b_store, owner="agent-b", lease_s=0.4, renew_s=0.1)
    try:
        assert await a.acquire(sid, 1)
        assert not await b.acquire(sid, 1)  # a re-sent transcript while A answers

        # A renews while its turn runs: B stays out; at the end the utterance is done for good.
        beats = 0

        async def beat() -> None:
            nonlocal beats
            beats += 1

        turn = asyncio.create_task(asyncio.sleep(0.8))
        holding = asyncio.create_task(a.hold(sid, 1, turn, beat=beat))
        await asyncio.sleep(0.6)
        assert not await b.acquire(sid, 1)
        await holding
        assert beats >= 5
        assert not await b.acquire(sid, 1)
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert await r.get(lease_key(sid, 1)) == DONE
        finally:
            await r.aclose()

        # A takes utterance 2 and dies (never renews): B takes it once the lease lapsed.
        assert await a.acquire(sid, 2)
        assert not await b.acquire(sid, 2)
        await asyncio.sleep(0.5)
        assert await b.acquire(sid, 2)
        assert not await a.acquire(sid, 2)
        # Turns without an utterance id (greeting, keys) are never leased.
        assert await a.acquire(sid, None) and await b.acquire(sid, None)
    finally:
        await a_store.aclose()
        await b_store.aclose()


async def test_without_redis_a_replica_still_never_answers_twice() -> None:
    store = Store(url="")
    leases = TurnLeases(store=store, owner="agent-a")
    sid = "CA" + uuid.uuid4().hex
    assert await leases.acquire(sid, 1)
    assert not await leases.acquire(sid, 1)
