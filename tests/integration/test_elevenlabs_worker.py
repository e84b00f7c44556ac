"""The TTS worker on ElevenLabs (the fake) over a real NATS: retries, prompt cache, auth errors.

A private nats-server keeps other suites' ``tts`` queue-group members from taking these
segments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from uuid import uuid4

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from devkit.fakes.elevenlabs import FakeElevenLabs
from services.tts.prompt_cache import PromptCache
from services.tts.providers.elevenlabs import ElevenLabsTts
from services.tts.worker import TtsWorker
from shared import headers as H
from shared import subjects
from shared.audio import FRAME_BYTES, duration_ms
from shared.bus import make_broker
from shared.messages import ReplySegment
from shared.settings import Settings

KEY = "fake-key-789"
# Generous on purpose: CI machines are shared, and a slow first synthesis must not be
# mistaken for a provider fault (these tests count requests and retries, not speed).
PROVIDER_TIMEOUT_S = 9.0
SPEAK_TIMEOUT_S = 25.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeElevenLabs]:
    with FakeElevenLabs(api_key=KEY, engine="espeak") as f:
        # The fake builds its espeak synthesizer on the first request: do that here, so
        # the first test's first-audio timeout does not pay for it.
        warm = httpx.post(
            f"{f.base_url}/v1/text-to-speech/{Settings().elevenlabs_voice_id}/stream",
            params={"output_format": "ulaw_8000"},
            headers={"xi-api-key": KEY},
            json={"text": "Warming up."},
            timeout=60.0,
        )
        assert warm.status_code == 200 and warm.content
        f.reset()
        yield f


@dataclass
class Stack:
    fake: FakeElevenLabs
    nc: NATS


@pytest.fixture
async def stack(private_nats: str, redis_url: str, fake: FakeElevenLabs) -> AsyncIterator[Stack]:
    fake.reset()
    settings = Settings(
        nats_url=private_nats,
        redis_url=redis_url,
        elevenlabs_base_url=fake.base_url,
        elevenlabs_api_key=KEY,
        provider_timeout_s=PROVIDER_TIMEOUT_S,
        provider_retries=2,
        tts_cache_ttl_s=60,
    )
    provider = ElevenLabsTts(settings=settings)
    cache = PromptCache.from_settings(settings)
    broker = make_broker(settings, name="test-tts-elevenlabs")
    worker = TtsWorker(
        settings=settings, provider=provider, fallback=None, broker=broker, cache=cache
    )
    worker.attach()
    await worker.start()  # returns once NATS has its subscriptions
    nc = await nats.connect(private_nats)
    yield Stack(fake=fake, nc=nc)
    await nc.close()
    await worker.drain(timeout_s=2)
    await broker.stop()
    await provider.aclose()
    await cache.aclose()
    fake.reset()


async def _speak(nc: NATS, seg: ReplySegment, *, timeout_s: float = SPEAK_TIMEOUT_S) -> list[bytes]:
    """Publish one segment and collect its audio chunks up to the ``Va-Last`` marker."""
    chunks: list[bytes] = []
    done = asyncio.Event()

    async def on_audio(msg: Msg) -> None:
        hdrs = msg.headers or {}
        if hdrs.get(H.TURN) == str(seg.turn) and hdrs.get(H.SEG) == str(seg.seq):
            if msg.data:
                chunks.append(msg.data)
            if hdrs.get(H.LAST) == "1":
                done.set()

    sub = await nc.subscribe(subjects.audio_out(seg.call_sid), cb=on_audio)
    await nc.publish(subjects.reply(seg.call_sid), seg.to_bytes())
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await sub.unsubscribe()
    return chunks


def _segment(text: str, *, turn: int = 1, cacheable: bool = False) -> ReplySegment:
    return ReplySegment(
        call_sid="CA" + uuid4().hex, turn=turn, seq=0, text=text, last=True, cacheable=cacheable
    )


def _unique(text: str) -> str:
    # Texts are unique per run: the cache (shared Redis) must not answer for earlier runs.
    return f"{text} Reference {uuid4().hex[:6]}."


async def test_rate_limited_segment_is_retried_and_played(stack: Stack) -> None:
    stack.fake.inject("429", retry_after_s=0.3)
    chunks = await _speak(stack.nc, _segment(_unique("Let me check the schedule for you.")))
    assert duration_ms(b"".join(chunks)) > 1000
    assert all(len(c) % FRAME_BYTES == 0 for c in chunks)
    assert [r.fault for r in stack.fake.requests] == ["429", None]


async def test_greeting_is_synthesized_once_across_calls(stack: Stack) -> None:
    text = _unique("Hello, thanks for calling the clinic.")
    first = await _speak(stack.nc, _segment(text, cacheable=True))
    second = await _speak(stack.nc, _segment(text, cacheable=True))
    assert b"".join(second) == b"".join(first) and duration_ms(b"".join(first)) > 1000
    assert len(stack.fake.requests) == 1


async def test_refused_key_ends_the_segment_quickly_without_retries(stack: Stack) -> None:
    stack.fake.inject("401", times=-1)
    start = time.monotonic()
    chunks = await _speak(stack.nc, _segment(_unique("This will not be spoken.")))
    assert chunks == [] and time.monotonic() - start < 2.0
    assert len(stack.fake.requests) == 1
