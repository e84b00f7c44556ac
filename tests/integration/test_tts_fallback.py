"""The worker when its provider misbehaves: retries, espeak fallback, barge-in mid-synthesis.

The worker runs in-process (so a misbehaving provider can stand in for a cloud vendor) on its
own NATS server; the espeak fallback is the real engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from prometheus_client import REGISTRY

from services.tts.providers.base import TtsProvider
from services.tts.providers.espeak import EspeakTts
from services.tts.worker import TtsWorker
from shared import subjects
from shared.bus import make_broker
from shared.errors import ProviderError
from shared.messages import CallEnded, Interrupt
from shared.settings import Settings
from tests.integration.test_tts_worker import Call, assert_well_formed, rms

pytestmark = pytest.mark.integration

TONE = bytes([0x10, 0x90] * 80)  # 160 bytes of loud mu-law: 20 ms


def retries(provider: str) -> float:
    labels = {"service": "tts", "provider": provider}
    return REGISTRY.get_sample_value("voice_provider_retries_total", labels) or 0.0


class Broken(TtsProvider):
    """A vendor returning 503 on every request."""

    name = "broken"

    def __init__(self) -> None:
        self.attempts = 0

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.attempts += 1
        raise ProviderError("503", provider=self.name, retryable=True)
        yield b""  # pragma: no cover - makes this an async generator


class Hanging(TtsProvider):
    """A vendor that accepts the request and never answers."""

    name = "hanging"

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        await asyncio.sleep(3600)
        yield b""  # pragma: no cover


class Streaming(TtsProvider):
    """A vendor streaming 20 ms chunks slowly (5 s of audio over ~2.5 s), or dying midway."""

    name = "streaming"

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.sent = 0
        self.closed = asyncio.Event()
        self.fail_after = fail_after

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        try:
            for _ in range(250):
                if self.fail_after is not None and self.sent == self.fail_after:
                    raise ProviderError("socket dropped", provider=self.name, retryable=False)
                await asyncio.sleep(0.01)
                self.sent += 1
                yield TONE
        finally:
            self.closed.set()


@pytest.fixture(scope="module")
async def espeak() -> EspeakTts:
    e = EspeakTts(settings=Settings(_env_file=None))  # type: ignore[call-arg]
    await e.warm_up()
    return e


class Stack:
    """Starts an in-process worker on a given provider, then a simulated call."""

    def __init__(self, url: str, fallback: TtsProvider) -> None:
        self.url = url
        self.fallback = fallback
        self.workers: list[TtsWorker] = []
        self.calls: list[Call] = []

    async def start(self, provider: TtsProvider) -> Call:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, nats_url=self.url, provider_timeout_s=2.0, provider_retries=2
        )
        broker = make_broker(settings, name="tts-test")
        worker = TtsWorker(
            settings=settings, provider=provider, fallback=self.fallback, broker=broker
        )
        worker.attach()
        await worker.start()
        self.workers.append(worker)
        call = Call(await nats.connect(self.url))
        await call.listen()
        self.calls.append(call)
        return call

    async def close(self) -> None:
        for c in self.calls:
            await c.nc.close()
        for w in self.workers:
            await w.broker.stop()


@pytest.fixture
async def stack(private_nats: str, espeak: EspeakTts) -> AsyncIterator[Stack]:
    s = Stack(private_nats, espeak)
    yield s
    await s.close()


async def test_failing_provider_is_retried_then_espeak_speaks(stack: Stack) -> None:
    broken = Broken()
    call = await stack.start(broken)
    retries_before = retries("broken")
    await call.say(1, 0, "Your table is booked for seven.", last=True)
    seg = await call.ended(1, 0)
    assert_well_formed(seg, turn=1, seq=0)
    assert rms(seg.audio) > 0.02 and len(seg.audio) / 8000 > 1.0
    assert broken.attempts == 3
    assert retries("broken") - retries_before == 2
    await asyncio.sleep(0.1)
    done = [e for e in call.events if e.name == "tts.segment_done" and e.turn == 1]
    assert done and done[0].data["provider"] == "espeak" and done[0].data["fallback"] is True


async def test_hanging_provider_times_out_into_the_fallback(stack: Stack) -> None:
    call = await stack.start(Hanging())
    t0 = time.monotonic()
    await call.say(1, 0, "One moment please.", last=True)
    seg = await call.ended(1, 0, wait_s=10)
    assert rms(seg.audio) > 0.02
    assert time.monotonic() - t0 < 4.0  # within the provider deadline, not an hour


async def test_barge_in_stops_a_synthesis_in_flight(stack: Stack) -> None:
    streaming = Streaming()
    call = await stack.start(streaming)
    await call.say(5, 0, "A very long answer that the caller will cut short.")
    seg = call.seg(5, 0)
    deadline = time.monotonic() + 5
    while len(seg.chunks) < 5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    await call.nc.publish(
        subjects.control(call.sid), Interrupt(call_sid=call.sid, turn=5).to_bytes()
    )
    await call.ended(5, 0, wait_s=1)
    await asyncio.wait_for(streaming.closed.wait(), 1)  # the provider stream was closed
    assert_well_formed(seg, turn=5, seq=0)
    assert len(seg.chunks) < 100 and streaming.sent < 100


async def test_call_end_stops_a_synthesis_in_flight(stack: Stack) -> None:
    streaming = Streaming()
    call = await stack.start(streaming)
    await call.say(1, 0, "Something long.")
    seg = call.seg(1, 0)
    deadline = time.monotonic() + 5
    while not seg.chunks:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    await call.nc.publish(subjects.control(call.sid), CallEnded(call_sid=call.sid).to_bytes())
    await asyncio.wait_for(streaming.closed.wait(), 1)
    assert streaming.sent < 100


async def test_failure_after_audio_began_ends_the_segment_without_repeating_it(
    stack: Stack,
) -> None:
    call = await stack.start(Streaming(fail_after=3))
    await call.say(1, 0, "Half a sentence.", last=True)
    seg = await call.ended(1, 0)
    assert_well_formed(seg, turn=1, seq=0)
    assert seg.audio == TONE * 3  # what was said stays said; espeak does not start over
