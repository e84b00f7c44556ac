"""Audio cache for fixed prompts, so a greeting or an apology costs no synthesis after once.

Which segments are cached (at most ``TTS_CACHE_MAX_CHARS`` characters, whitespace collapsed):

- a segment the agent marks ``cacheable`` (greeting, "are you still there?", apologies,
  fallbacks) is stored on its first synthesis;
- any other short segment is stored the second time its exact text is asked for within an
  hour: prompts that repeat across calls get cached without anyone listing them, one-off
  sentences never take Redis memory (only a small counter that expires).

Key ``va:tts:1:<provider>:<voice>:<model>:<sha256 of text>``, value the raw 8 kHz mu-law of
the whole segment, expiring after ``TTS_CACHE_TTL_S``. Only complete syntheses are stored
(never audio cut by an error or a barge-in). It works for every provider: for Piper it saves
CPU, for ElevenLabs money and a round trip.

Redis trouble never fails a segment: the provider synthesizes, and Redis is left alone for
a few seconds before the next try. With ``REDIS_URL`` empty a bounded in-process LRU is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

from services.tts.providers.base import CHUNK_BYTES, TtsProvider
from shared.audio import frames
from shared.logging import kv
from shared.metrics import TTS_CACHE
from shared.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "va:tts:1"
SEEN_WINDOW_S = 3600  # a text asked for twice within this window is a repeated prompt
MAX_AUDIO_BYTES = 30 * 8000  # 30 s: nothing longer is a "prompt"
REDIS_TIMEOUT_S = 0.25
REDIS_BACKOFF_S = 5.0


def normalize(text: str) -> str:
    """The text as cached: trimmed, inner whitespace collapsed (case kept: it can matter)."""
    return " ".join(text.split())


def identity(provider: TtsProvider) -> tuple[str, str, str]:
    """(provider, voice, model) of a provider, from its optional ``voice``/``model`` attributes."""
    return (
        provider.name,
        str(getattr(provider, "voice", "") or "-"),
        str(getattr(provider, "model", "") or "-"),
    )


def cache_key(provider: TtsProvider, text: str) -> str:
    """Redis key of ``text`` spoken by ``provider`` (``text`` already normalized)."""
    name, voice, model = identity(provider)
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{KEY_PREFIX}:{name}:{voice}:{model}:{digest}"


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class _Store(Protocol):
    async def lookup(self, key: str, *, count: bool) -> tuple[bytes | None, int]: ...
    async def store(self, key: str, audio: bytes) -> None: ...
    async def aclose(self) -> None: ...


class _MemoryStore:
    """Single-process fallback: LRU of ``entries`` segments plus seen-counters."""

    def __init__(self, *, entries: int, ttl_s: int) -> None:
        self._entries = entries
        self._ttl = ttl_s
        self._audio: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    async def lookup(self, key: str, *, count: bool) -> tuple[bytes | None, int]:
        now = time.monotonic()
        hit = self._audio.get(key)
        if hit is not None and hit[0] > now:
            self._audio.move_to_end(key)
            return hit[1], 0
        self._audio.pop(key, None)
        if not count:
            return None, 0
        until, n = self._seen.pop(key, (0.0, 0))
        if until <= now:
            until, n = now + min(self._ttl, SEEN_WINDOW_S), 0
        self._seen[key] = (until, n + 1)
        while len(self._seen) > self._entries * 4:
            self._seen.popitem(last=False)
        return None, n + 1

    async def store(self, key: str, audio: bytes) -> None:
        self._audio[key] = (time.monotonic() + self._ttl, audio)
        self._audio.move_to_end(key)
        while len(self._audio) > self._entries:
            self._audio.popitem(last=False)

    async def aclose(self) -> None:
        self._audio.clear()
        self._seen.clear()


class _RedisStore:
    """Audio and counters in Redis, one round trip per lookup."""

    def __init__(
        self, *, url: str, ttl_s: int, timeout_s: float, settings: Settings | None = None
    ) -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from shared.callstate import redis_client

        self._ttl = ttl_s
        self._timeout = timeout_s
        # No client-side retries: a slow Redis must cost a segment at most one timeout.
        self._redis: Any = redis_client(
            url,
            settings=settings,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    async def lookup(self, key: str, *, count: bool) -> tuple[bytes | None, int]:
        seen_key = key + ":seen"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            if count:
                pipe.incr(seen_key)
                pipe.expire(seen_key, min(self._ttl, SEEN_WINDOW_S))
            res = await asyncio.wait_for(pipe.execute(), self._timeout)
        audio = res[0] if isinstance(res[0], bytes) else None
        return audio, int(res[1]) if count else 0

    async def store(self, key: str, audio: bytes) -> None:
        await asyncio.wait_for(self._redis.set(key, audio, ex=self._ttl), self._timeout)

    async def aclose(self) -> None:
        await self._redis.aclose()


class PromptCache:
    """Wraps a provider's :meth:`~TtsProvider.synthesize` with the prompt audio cache."""

    def __init__(
        self,
        *,
        redis_url: str,
        ttl_s: int,
        max_chars: int,
        memory_entries: int = 256,
        timeout_s: float = REDIS_TIMEOUT_S,
        settings: Settings | None = None,
    ) -> None:
        self.enabled = ttl_s > 0 and max_chars > 0
        self.max_chars = max_chars
        self._store: _Store = (
            _RedisStore(url=redis_url, ttl_s=ttl_s, timeout_s=timeout_s, settings=settings)
            if redis_url
            else _MemoryStore(entries=memory_entries, ttl_s=ttl_s)
        )
        self._down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PromptCache:
        """The cache as configured (``REDIS_URL``, ``TTS_CACHE_TTL_S``, ``TTS_CACHE_MAX_CHARS``)."""
        return cls(
            redis_url=settings.redis_url,
            ttl_s=settings.tts_cache_ttl_s,
            max_chars=settings.tts_cache_max_chars,
            settings=settings,
        )

    def _available(self) -> bool:
        return self.enabled and time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException, what: str) -> None:
        TTS_CACHE.labels("error").inc()
        if time.monotonic() >= self._down_until:
            log.warning("tts cache unavailable", **kv(op=what, error=type(exc).__name__))
        self._down_until = time.monotonic() + REDIS_BACKOFF_S

    async def synthesize(
        self, provider: TtsProvider, text: str, *, cacheable: bool = False
    ) -> AsyncIterator[bytes]:
        """Yield the audio of ``text``: from the cache when there, else from ``provider``.

        ``cacheable`` marks a fixed prompt: store it on first synthesis. Errors of the provider
        propagate unchanged (the worker retries); cache errors are only logged.
        """
        norm = normalize(text)
        if not norm or len(norm) > self.max_chars or not self._available():
            stream = provider.synthesize(text)
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await _aclose(stream)
            return
        key = cache_key(provider, norm)
        audio: bytes | None = None
        seen = 0
        try:
            audio, seen = await self._store.lookup(key, count=not cacheable)
        except Exception as e:  # any Redis/network failure: synthesize as if uncached
            self._failed(e, "lookup")
        if audio:
            TTS_CACHE.labels("hit").inc()
            for piece in frames(audio, size=CHUNK_BYTES):
                yield piece
            return
        TTS_CACHE.labels("miss").inc()
        keep = cacheable or seen >= 2
        buf = bytearray()
        stream = provider.synthesize(text)
        try:
            async for chunk in stream:
                if keep:
                    buf += chunk
                yield chunk
        finally:
            # Closed at once on barge-in or error: frees the provider's connection / thread.
            await _aclose(stream)
        # Reached only when the provider finished: cut or failed audio is never stored.
        if keep and buf and len(buf) <= MAX_AUDIO_BYTES and self._available():
            try:
                await self._store.store(key, bytes(buf))
                TTS_CACHE.labels("stored").inc()
            except Exception as e:
                self._failed(e, "store")

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        try:
            await self._store.aclose()
        except Exception as e:  # shutting down: nothing left to protect
            log.debug("tts cache close failed", **kv(error=type(e).__name__))
