"""Call state in Redis, with an in-process fallback so a Redis outage degrades, never kills a call.

Every write goes to a local mirror as well as to Redis; reads come from Redis while it answers
and from the mirror while it does not. So during an outage a replica still sees everything it
wrote itself (all of a call's turns, in a single-replica deployment), and when Redis answers
again it is used again at once (it is retried every ``retry_after_s``, with short timeouts so a
dead Redis costs a turn at most one timeout). Writes made only to the mirror during an outage
are not copied back to Redis. Counters never go backwards across an outage (see :meth:`incr`).

With ``url=""`` (single-process dev mode) the mirror is the only store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from shared.callstate import call_key as call_key  # the layout the gateway reads too
from shared.callstate import redis_client
from shared.logging import kv
from shared.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
MIRROR_TTL_S = 2 * 3600.0  # the mirror only has to outlive a call, not Redis's TTL
_SWEEP_EVERY_S = 60.0

_DELETE_IF_EQUAL = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

_RENEW_IF_EQUAL = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class _Missing:
    pass


_MISSING = _Missing()


class MemoryStore:
    """The in-process mirror: a dict of values with expiry times."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[Any, float]] = {}
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S

    def get(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item[0]

    def put(self, key: str, value: Any, ttl_s: float) -> None:
        now = time.monotonic()
        self._data[key] = (value, now + ttl_s)
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY_S
            for k in [k for k, (_, exp) in self._data.items() if exp <= now]:
                del self._data[k]

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class Store:
    """Redis (``redis.asyncio``) behind a circuit breaker, mirrored in memory."""

    def __init__(
        self,
        *,
        url: str,
        retry_after_s: float = 1.0,
        op_timeout_s: float = 0.5,
        mirror_ttl_s: float = MIRROR_TTL_S,
        settings: Settings | None = None,
    ) -> None:
        self.memory = MemoryStore()
        self._retry_after_s = retry_after_s
        self._op_timeout_s = op_timeout_s
        self._mirror_ttl_s = mirror_ttl_s if url else float("inf")
        self._down = False
        self._down_until = 0.0
        self._redis: aioredis.Redis | None = None
        if url:
            # settings: TLS, AUTH / ElastiCache IAM and Redis Cluster (shared/callstate.py).
            self._redis = redis_client(
                url,
                settings=settings,
                decode_responses=True,
                socket_connect_timeout=op_timeout_s,
                socket_timeout=op_timeout_s,
                # One immediate retry replaces a pooled connection Redis closed on restart.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=15,
            )

    @property
    def uses_redis(self) -> bool:
        """Whether a Redis URL is configured (not whether it answers right now)."""
        return self._redis is not None

    @property
    def redis_up(self) -> bool:
        """Whether the last Redis operation succeeded."""
        return self._redis is not None and not self._down

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except (RedisError, OSError):
                pass

    def _mirror_ttl(self, ttl_s: float) -> float:
        return min(ttl_s, self._mirror_ttl_s)

    async def _call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T | _Missing:
        """Run ``op`` on Redis, or return ``_MISSING`` when Redis is absent or failing."""
        r = self._redis
        if r is None or (self._down and time.monotonic() < self._down_until):
            return _MISSING
        try:
            result = await asyncio.wait_for(op(r), self._op_timeout_s * 3)
        except (RedisError, OSError, TimeoutError) as e:
            if not self._down:
                log.warning("redis unavailable; using in-process state", **kv(error=repr(e)))
            self._down = True
            self._down_until = time.monotonic() + self._retry_after_s
            return _MISSING
        if self._down:
            self._down = False
            log.info("redis available again")
        return result

    # ------------------------------------------------------------------ lists

    async def rpush(self, key: str, values: list[str], *, ttl_s: float, max_len: int) -> None:
        """Append ``values`` to a list, keep its last ``max_len`` items, refresh its TTL."""
        if not values:
            return
        local = list(cast(list[str], self.memory.get(key) or []))
        local.extend(values)
        self.memory.put(key, local[-max_len:], self._mirror_ttl(ttl_s))

        async def op(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=True) as p:
                p.rpush(key, *values)
                p.ltrim(key, -max_len, -1)
                p.expire(key, int(ttl_s))
                await p.execute()

        await self._call(op)

    async def lrange(self, key: str) -> list[str]:
        """The whole list (empty when missing)."""

        async def op(r: aioredis.Redis) -> list[str]:
            return cast(list[str], await r.lrange(key, 0, -1))

        got = await self._call(op)
        if isinstance(got, _Missing):
            return list(cast(list[str], self.memory.get(key) or []))
        return got

    async def take_list(self, key: str) -> list[str]:
        """The whole list, deleted in the same step (``LRANGE`` + ``DEL`` in one transaction:
        of two replicas taking at once, one gets the items)."""
        local = list(cast(list[str], self.memory.get(key) or []))
        self.memory.delete(key)

        async def op(r: aioredis.Redis) -> list[str]:
            async with r.pipeline(transaction=True) as p:
                p.lrange(key, 0, -1)
                p.delete(key)
                items, _ = await p.execute()
            return cast(list[str], items)

        got = await self._call(op)
        return local if isinstance(got, _Missing) else got

    # ------------------------------------------------------------------ hashes

    async def hset(
        self, key: str, field: str, value: str, *, ttl_s: float, only_new: bool = False
    ) -> None:
        """Set one hash field (``only_new``: keep an existing value) and refresh the TTL."""
        local = dict(cast(dict[str, str], self.memory.get(key) or {}))
        if not (only_new and field in local):
            local[field] = value
        self.memory.put(key, local, self._mirror_ttl(ttl_s))

        async def op(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=True) as p:
                if only_new:
                    p.hsetnx(key, field, value)
                else:
                    p.hset(key, field, value)
                p.expire(key, int(ttl_s))
                await p.execute()

        await self._call(op)

    async def hgetall(self, key: str) -> dict[str, str]:
        """All fields of a hash (empty when missing)."""

        async def op(r: aioredis.Redis) -> dict[str, str]:
            return cast(dict[str, str], await r.hgetall(key))

        got = await self._call(op)
        if isinstance(got, _Missing):
            return dict(cast(dict[str, str], self.memory.get(key) or {}))
        return got

    # ------------------------------------------------------------------ counters and flags

    async def incr(self, key: str, *, ttl_s: float, at_least: int = 1) -> int:
        """Increment a counter; the result is always above any value this process returned,
        and at least ``at_least``.

        After an outage Redis may hold a value below the ids handed out meanwhile (from memory,
        or by other replicas before a restart lost its data); the counter is then moved past
        them, so ids never go backwards.
        """
        local = int(self.memory.get(key) or 0)

        async def op(r: aioredis.Redis) -> int:
            async with r.pipeline(transaction=True) as p:
                p.incr(key)
                p.expire(key, int(ttl_s))
                res = await p.execute()
            return int(res[0])

        got = await self._call(op)
        value = local + 1 if isinstance(got, _Missing) else got
        if value <= local or value < at_least:
            value = max(local + 1, at_least)

            async def resync(r: aioredis.Redis) -> None:
                await r.set(key, value, ex=int(ttl_s))

            await self._call(resync)
        self.memory.put(key, value, self._mirror_ttl(ttl_s))
        return value

    async def swap(self, key: str, value: str, *, ttl_s: float) -> str | None:
        """Set ``key`` to ``value``; return the previous value (``None`` when unset)."""
        old_local = cast(str | None, self.memory.get(key))
        self.memory.put(key, value, self._mirror_ttl(ttl_s))

        async def op(r: aioredis.Redis) -> str | None:
            return cast(str | None, await r.set(key, value, ex=int(ttl_s), get=True))

        got = await self._call(op)
        return old_local if isinstance(got, _Missing) else got

    async def set_if_absent(self, key: str, value: str, *, ttl_s: float) -> bool:
        """``SET key value NX PX``: True if this call set it (a lease or idempotency mark).

        While Redis is down the mirror decides alone: this replica still never takes the same
        key twice, but another replica might (availability over exclusivity in an outage).
        """
        took_local = self.memory.get(key) is None
        if took_local:
            self.memory.put(key, value, self._mirror_ttl(ttl_s))

        async def op(r: aioredis.Redis) -> bool:
            return bool(await r.set(key, value, nx=True, px=max(1, int(ttl_s * 1000))))

        got = await self._call(op)
        if isinstance(got, _Missing):
            return took_local
        if not got and took_local:
            self.memory.delete(key)  # someone else holds it in Redis
        return got

    async def renew_if_equal(self, key: str, value: str, *, ttl_s: float) -> bool:
        """Refresh ``key``'s TTL while it still holds ``value``; False if someone else's now."""
        if self.memory.get(key) in (None, value):
            self.memory.put(key, value, self._mirror_ttl(ttl_s))

        async def op(r: aioredis.Redis) -> bool:
            res = await r.eval(_RENEW_IF_EQUAL, 1, key, value, max(1, int(ttl_s * 1000)))
            return bool(res)

        got = await self._call(op)
        return True if isinstance(got, _Missing) else got

    async def get(self, key: str) -> str | None:
        """``GET key`` (the mirror's value while Redis is down)."""
        local = cast(str | None, self.memory.get(key))

        async def op(r: aioredis.Redis) -> str | None:
            return cast(str | None, await r.get(key))

        got = await self._call(op)
        return local if isinstance(got, _Missing) else got

    async def put(self, key: str, value: str, *, ttl_s: float) -> None:
        """``SET key value EX``."""
        self.memory.put(key, value, self._mirror_ttl(ttl_s))

        async def op(r: aioredis.Redis) -> None:
            await r.set(key, value, ex=max(1, int(ttl_s)))

        await self._call(op)

    async def delete_if_equal(self, key: str, value: str) -> None:
        """Delete ``key`` only if it still holds ``value`` (atomic in Redis)."""
        if self.memory.get(key) == value:
            self.memory.delete(key)

        async def op(r: aioredis.Redis) -> None:
            await r.eval(_DELETE_IF_EQUAL, 1, key, value)

        await self._call(op)

    async def delete(self, *keys: str) -> None:
        """Delete keys everywhere."""
        for k in keys:
            self.memory.delete(k)

        async def op(r: aioredis.Redis) -> None:
            await r.delete(*keys)

        await self._call(op)

    def forget_local(self, *keys: str) -> None:
        """Drop keys from the mirror only (another replica owns the shared cleanup)."""
        for k in keys:
            self.memory.delete(k)
