"""Every Redis key pattern of the services works on a real 3-master Redis Cluster.

``REDIS_CLUSTER=true`` makes the shared client factory a cluster client. Over it the agent's
history (incl. the multi-key cleanup at call end), bookings, digit collection (a transaction),
turn leases (Lua scripts), the gateway's single-use tokens, its transcript reader and the TTS
prompt cache (a pipeline over two keys) run as in production. Each value is read back with
a separate cluster client, so the in-process mirror cannot hide a Redis error; calls spread
over several masters while each call's keys share one slot (hash tags).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from services.agent.history import History, user_message
from services.agent.leases import TurnLeases, lease_key
from services.agent.store import Store
from services.agent.tools import CallTools
from services.gateway.security import SharedTokenLedger
from services.tts.prompt_cache import _RedisStore
from shared.callstate import call_key, redis_client
from shared.settings import Settings
from tests.redisservers import redis_cluster

pytestmark = pytest.mark.integration

CALLS = [f"CA{i:032x}" for i in range(1, 9)]
KINDS = ("hist", "heard", "turn", "gen", "appt", "seen", "talk", "heldk", "dgt", "dgtk", "said")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with redis_cluster(3) as ports:
        yield f"redis://127.0.0.1:{ports[0]}/0"


def _settings(url: str) -> Settings:
    return Settings(_env_file=None, redis_url=url, redis_cluster=True)  # type: ignore[call-arg]


def test_each_calls_keys_share_a_slot_and_calls_spread_over_slots() -> None:
    for sid in CALLS:
        slots = {key_slot(call_key(k, sid).encode()) for k in KINDS}
        slots.add(key_slot(lease_key(sid, 3).encode()))
        assert len(slots) == 1, f"{sid}: keys over slots {slots}"
    assert len({key_slot(call_key("hist", sid).encode()) for sid in CALLS}) > 1


async def test_agent_state_round_trips_on_the_cluster(cluster: str) -> None:
    s = _settings(cluster)
    store = Store(url=cluster, settings=s)
    raw: Any = redis_client(cluster, settings=s, decode_responses=True)
    assert isinstance(raw, RedisCluster)
    try:
        history = History(store=store)
        tools = CallTools(settings=s, store=store)
        masters: set[str] = set()
        for sid in CALLS:
            assert await history.next_turn(sid) == 1
            await history.append(sid, [user_message("hello there", turn=1)])
            assert [e["content"] for e in await history.load(sid)] == ["hello there"]
            booking = await tools.book_appointment(sid, name="Ann Lee", when="Monday at 9")
            assert [b.confirmation for b in await tools.list_appointments(sid)] == [
                booking.confirmation
            ]
            # Leases: SET NX, then the Lua renew / delete scripts on the same key.
            leases = TurnLeases(store=store, owner="agent-a")
            other = TurnLeases(store=store, owner="agent-b")
            assert await leases.acquire(sid, 1)
            assert not await other.acquire(sid, 1)
            assert await store.renew_if_equal(lease_key(sid, 1), "agent-a", ttl_s=2)
            await store.delete_if_equal(lease_key(sid, 1), "agent-a")
            # Digits: a list taken with LRANGE + DEL in one transaction.
            await store.rpush(call_key("heldk", sid), ["4", "2"], ttl_s=60, max_len=10)
            assert await store.take_list(call_key("heldk", sid)) == ["4", "2"]
            assert store.redis_up, "a Redis error was hidden by the mirror"

            # What is in Redis, read by another client, not the mirror.
            assert await raw.lrange(call_key("hist", sid), 0, -1)
            assert booking.confirmation in await raw.hgetall(call_key("appt", sid))
            assert await raw.get(call_key("turn", sid)) == "1"
            assert await raw.exists(lease_key(sid, 1)) == 0
            node = raw.get_node_from_key(call_key("hist", sid))
            masters.add(node.name)

            # The call's end drops its counters in one DEL over two keys; the history and the
            # bookings stay (transcript export) until their TTL.
            await store.put(call_key("gen", sid), "1", ttl_s=60)
            await history.end_call(sid)
            assert store.redis_up
            assert await raw.exists(call_key("turn", sid), call_key("gen", sid)) == 0
            assert await raw.exists(call_key("hist", sid), call_key("appt", sid)) == 2
        assert len(masters) >= 2, f"every call on one master: {masters}"
    finally:
        await store.aclose()
        await raw.aclose()


async def test_gateway_tokens_are_single_use_on_the_cluster(cluster: str) -> None:
    client = redis_client(cluster, settings=_settings(cluster), socket_timeout=1)
    ledger = SharedTokenLedger(redis=client, timeout_s=2)
    try:
        tokens = [f"4102444800.nonce{i}x.sig" for i in range(6)]  # nonces over several slots
        assert [await ledger.first_use(t) for t in tokens] == [True] * 6
        assert [await ledger.first_use(t) for t in tokens] == [False] * 6
    finally:
        await ledger.aclose()


async def test_prompt_cache_pipeline_works_on_the_cluster(cluster: str) -> None:
    cache = _RedisStore(url=cluster, ttl_s=60, timeout_s=2, settings=_settings(cluster))
    try:
        keys = [f"va:tts:1:local:v:m:{i:064x}" for i in range(6)]
        for key in keys:
            assert await cache.lookup(key, count=True) == (None, 1)
            await cache.store(key, b"\xff" * 160)
            assert await cache.lookup(key, count=True) == (b"\xff" * 160, 2)
    finally:
        await cache.aclose()
