"""One trace per call across gateway, ASR, agent and TTS (in process, on a private NATS).

The services are the real ones; only the providers are scripted. Spans go to an in-memory
exporter: a caller turn must show as one trace, each stage a child of the one before it, and
no span attribute may carry the caller's words.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.agent.history import History
from services.agent.providers.base import AgentOutput, AgentProvider, TurnInput
from services.agent.store import Store
from services.agent.worker import AgentWorker
from services.asr.providers.base import AsrProvider, SpeechEvent
from services.asr.worker import AsrWorker
from services.gateway.call import CallSession
from services.tts.providers.base import TtsProvider
from services.tts.worker import TtsWorker
from shared import telemetry
from shared.bus import connect, make_broker
from shared.settings import Settings
from tests.integration.agent_bus import private_nats_server

WORDS = "my date of birth is march third"


class OneUtterance(AsrProvider):
    """Hears one final utterance after 10 frames (200 ms) of audio."""

    name = "scripted"

    async def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        n = 0
        async for _ in audio:
            n += 1
            if n == 10:
                yield SpeechEvent(kind="final", audio_ms=200, text=WORDS, speech_end_ms=180)


class Echo(AgentProvider):
    name = "scripted"

    async def respond(self, turn: TurnInput) -> AsyncIterator[AgentOutput]:
        yield "Hello." if turn.kind == "call_started" else "Thank you, noted."


class Beep(TtsProvider):
    name = "scripted"

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"\x7f" * 160


@pytest.fixture
def spans() -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_provider(None)
        provider.shutdown()


async def _wait_for(exporter: InMemorySpanExporter, name: str, n: int = 1) -> list[ReadableSpan]:
    deadline = time.monotonic() + 10
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if len(found) >= n:
            return found
        assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
        await asyncio.sleep(0.05)


async def test_a_turn_is_one_trace_through_all_four_services(spans: InMemorySpanExporter) -> None:
    with private_nats_server() as url:
        # The scripted recognizer hears one final, not audio-timed segments: no end-of-turn gate.
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            nats_url=url,
            redis_url="",
            events_retention_h=0,
            smart_endpointing=False,
        )
        brokers = [make_broker(settings, name=n) for n in ("asr", "agent", "tts")]
        asr = AsrWorker(settings=settings, provider=OneUtterance(), broker=brokers[0])
        store = Store(url="")
        agent = AgentWorker(
            settings=settings, provider=Echo(), history=History(store=store), broker=brokers[1]
        )
        tts = TtsWorker(settings=settings, provider=Beep(), fallback=None, broker=brokers[2])
        for w in (asr, agent, tts):
            w.attach()
        await brokers[0].start()
        await asr.start()
        await brokers[1].start()
        await tts.start()
        nc = await connect(settings, name="gateway-test")
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)

        async def close() -> None:
            return None

        sid = "CA" + uuid4().hex
        call = CallSession(
            nc=nc,
            settings=settings,
            call_sid=sid,
            stream_sid="MZ" + uuid4().hex,
            gateway_id="gw-test",
            send=send,
            close=close,
        )
        try:
            await call.start()
            deadline = time.monotonic() + 10
            while not call.asr.claimed:
                assert time.monotonic() < deadline, "no ASR claim"
                await asyncio.sleep(0.02)
            for i in range(15):
                await call.on_media(b"\xff" * 160, str(i + 1), str(i * 20))
            firsts = await _wait_for(spans, "gateway.first_audio", 2)  # greeting + answer
            await call.end("stop")
            await _wait_for(spans, "call")
        finally:
            await nc.close()
            await asr.drain(grace_s=0)
            await agent.drain(timeout_s=1)
            await tts.drain(timeout_s=1)
            for b in brokers:
                await b.stop()

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    (root,) = [s for s in finished if s.name == "call"]
    assert all(s.context.trace_id == root.context.trace_id for s in finished)

    def chain(span: ReadableSpan) -> list[str]:
        names = [span.name]
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    greet, answer = sorted(firsts, key=lambda s: int((s.attributes or {})["voice.turn"]))
    assert chain(answer) == [
        "gateway.first_audio",
        "tts.segment",
        "agent.turn",
        "asr.utterance",
        "call",
    ]
    # The greeting turn hangs under the call too (the agent starts it from CallStarted).
    assert chain(greet) == ["gateway.first_audio", "tts.segment", "agent.turn", "call"]
    for s in finished:
        values = [str(v) for v in (s.attributes or {}).values()]
        assert not any("birth" in v or sid in v for v in values), (s.name, values)
