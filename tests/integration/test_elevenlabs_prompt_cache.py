"""Prompt audio cache: fixed prompts are synthesized once, then served from Redis."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY

from devkit.fakes.elevenlabs import FakeElevenLabs
from services.tts.prompt_cache import PromptCache, cache_key, normalize
from services.tts.providers.base import TtsProvider
from services.tts.providers.elevenlabs import ElevenLabsTts
from services.tts.providers.espeak import EspeakTts
from shared.audio import duration_ms
from shared.errors import ProviderError
from shared.metrics import TTS_CACHE
from shared.settings import Settings

KEY = "fake-key-456"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeElevenLabs]:
    with FakeElevenLabs(api_key=KEY, engine="espeak") as f:
        yield f


@pytest.fixture
async def tts(fake: FakeElevenLabs) -> AsyncIterator[ElevenLabsTts]:
    fake.reset()
    provider = ElevenLabsTts(
        settings=Settings(
            elevenlabs_base_url=fake.base_url, elevenlabs_api_key=KEY, provider_timeout_s=2.0
        )
    )
    yield provider
    await provider.aclose()
    fake.reset()


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[PromptCache]:
    c = PromptCache(redis_url=redis_url, ttl_s=60, max_chars=160)
    yield c
    await c.aclose()


def _prompt(words: str) -> str:
    # Unique per test run so runs sharing the Redis database never see each other's entries.
    return f"{words} Reference {uuid4().hex[:6]}."


async def _say(
    cache: PromptCache, tts: TtsProvider, text: str, *, cacheable: bool = False
) -> bytes:
    return b"".join([c async for c in cache.synthesize(tts, text, cacheable=cacheable)])


def _hits() -> float:
    TTS_CACHE.labels("hit")  # make the series exist before the first hit
    return REGISTRY.get_sample_value("voice_tts_cache_total", {"result": "hit"}) or 0.0


async def test_fixed_prompt_is_synthesized_once(
    cache: PromptCache, tts: ElevenLabsTts, fake: FakeElevenLabs
) -> None:
    text = _prompt("Thanks for calling Sunrise Clinic, how can I help?")
    first = await _say(cache, tts, text, cacheable=True)
    second = await _say(cache, tts, text, cacheable=True)
    assert duration_ms(first) > 1000
    assert second == first
    assert len(fake.requests) == 1  # the second one cost nothing at ElevenLabs


async def test_repeated_short_text_is_cached_from_its_second_use(
    cache: PromptCache, tts: ElevenLabsTts, fake: FakeElevenLabs
) -> None:
    text = _prompt("Are you still there?")
    audio = [await _say(cache, tts, text) for _ in range(3)]
    assert len(fake.requests) == 2  # first: counted only; second: synthesized and stored
    assert audio[2] == audio[1]  # the third is the stored second (synthesis is not bit-exact)


async def test_one_off_and_long_sentences_are_not_stored(
    cache: PromptCache, tts: ElevenLabsTts, fake: FakeElevenLabs
) -> None:
    long_text = _prompt("Let me read your whole appointment summary. " * 5)
    assert len(normalize(long_text)) > cache.max_chars
    for _ in range(3):
        await _say(cache, tts, long_text, cacheable=True)
    assert len(fake.requests) == 3


async def test_cut_audio_is_never_cached(
    cache: PromptCache, tts: ElevenLabsTts, fake: FakeElevenLabs
) -> None:
    text = _prompt("I'm sorry, I didn't catch that.")
    fake.inject("cut", cut_after_bytes=1600)
    with pytest.raises(ProviderError):
        await _say(cache, tts, text, cacheable=True)
    whole = await _say(cache, tts, text, cacheable=True)
    again = await _say(cache, tts, text, cacheable=True)
    assert again == whole and duration_ms(whole) > 1000
    assert len(fake.requests) == 2


async def test_cache_key_separates_voices_and_models(tts: ElevenLabsTts) -> None:
    other = ElevenLabsTts(
        settings=Settings(elevenlabs_voice_id="EXAVITQu4vr4xnSDxMaL", elevenlabs_api_key=KEY)
    )
    try:
        assert cache_key(tts, "Hello.") != cache_key(other, "Hello.")
        assert cache_key(tts, "Hello.").startswith("va:tts:1:elevenlabs:21m00Tcm4TlvDq8ikWAM:")
    finally:
        await other.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_still_speaks_without_delay(
    tts: ElevenLabsTts, fake: FakeElevenLabs
) -> None:
    down = PromptCache(redis_url=f"redis://127.0.0.1:{_closed_port()}/0", ttl_s=60, max_chars=160)
    try:
        text = _prompt("One moment please.")
        start = time.monotonic()
        audio = [await _say(down, tts, text, cacheable=True) for _ in range(3)]
        assert all(duration_ms(a) > 800 for a in audio)
        assert len(fake.requests) == 3
        assert time.monotonic() - start < 3.0
    finally:
        await down.aclose()


async def test_local_engine_is_cached_in_memory_without_redis() -> None:
    memory = PromptCache(redis_url="", ttl_s=60, max_chars=160)
    espeak = EspeakTts(settings=Settings(local_tts_engine="espeak"))
    text = _prompt("Goodbye, and have a nice day.")
    before = _hits()
    first = await _say(memory, espeak, text, cacheable=True)
    second = await _say(memory, espeak, text, cacheable=True)
    assert second == first and duration_ms(first) > 1000
    assert _hits() == before + 1
    await memory.aclose()


async def test_local_engine_is_cached_in_redis(cache: PromptCache) -> None:
    espeak = EspeakTts(settings=Settings(local_tts_engine="espeak"))
    text = _prompt("Please hold while I check.")
    before = _hits()
    first = await _say(cache, espeak, text, cacheable=True)
    second = await _say(cache, espeak, text, cacheable=True)
    assert second == first and _hits() == before + 1
