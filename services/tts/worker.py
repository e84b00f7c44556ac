"""TTS worker: reply segments in (queue group ``tts``), 8 kHz mu-law chunks out.

Stateless between segments, so any replica takes any segment. Per call it keeps only what
barge-in needs: the turns interrupted lately (bounded) and the segments in flight, which it
synthesizes one at a time in arrival order (the caller hears segment 0 first; running its
successors in parallel would only slow it down).

Every segment received ends with a chunk carrying ``Va-Last: 1`` (possibly empty), also when
its text is empty, its synthesis failed, or its turn was interrupted: the gateway never waits
for audio that will not come.

A segment whose replica died mid-way comes again on ``voice.<call>.retry.segment`` (same queue
group, same handling): the gateway keeps the chunks it already has (docs/failover.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from faststream.nats import NatsBroker, NatsMessage

from services.tts.calls import CallRegistry
from services.tts.prompt_cache import PromptCache
from services.tts.providers.base import NEEDED_AT, TtsProvider
from services.tts.providers.fallback import FallbackProvider
from services.tts.segment_out import SegmentOut
from shared import subjects
from shared.asyncapi import contract_app
from shared.audio import SAMPLE_RATE
from shared.backoff import stream_with_retries
from shared.bus import audio_client, make_broker
from shared.errors import ProviderError
from shared.handler import parse_for_subject
from shared.logging import kv
from shared.messages import (
    CallEnded,
    Interrupt,
    ReplySegment,
    event,
    parse_control,
    parse_reply,
)
from shared.metrics import PROVIDER_ERRORS, STAGE_LATENCY
from shared.service import Health, run_service, serve_metrics, stop_event, worker_id
from shared.settings import Settings
from shared.telemetry import start_span, traceparent_of
from shared.usage import Usage, usage_event

log = logging.getLogger(__name__)

SERVICE = "tts"
DRAIN_TIMEOUT_S = 30.0


async def _raw_body(msg: NatsMessage) -> bytes:
    # FastStream would json-decode by content type before our handler could count bad input.
    return msg.body


class TtsWorker:
    """Turns reply segments into audio on the bus. Attach to a broker before starting it."""

    def __init__(
        self,
        *,
        settings: Settings,
        provider: TtsProvider,
        fallback: TtsProvider | None,
        broker: NatsBroker,
        cache: PromptCache | None = None,
    ) -> None:
        self._settings = settings
        self.worker_id = worker_id(settings.service_name or SERVICE)
        self._provider = provider
        self._cache = cache  # prompt audio cache (services/tts/prompt_cache.py); None: off
        # ``fallback`` speaks the sentences the provider fails before their first audio.
        self._voice = FallbackProvider(primary=provider, fallback=fallback)
        self._broker = broker
        self._calls = CallRegistry()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reply_sub: Any = None
        self._retry_sub: Any = None

    @property
    def broker(self) -> NatsBroker:
        """The broker this worker is attached to."""
        return self._broker

    def attach(self) -> None:
        """Subscribe: replies through the queue group, control on a plain subscription."""
        self._reply_sub = self._broker.subscriber(
            subjects.ALL_REPLY, queue=subjects.QUEUE_TTS, decoder=_raw_body
        )
        self._reply_sub(self.on_reply)
        # The gateway re-sends a segment whose audio stalled (docs/failover.md).
        self._retry_sub = self._broker.subscriber(
            subjects.ALL_RETRY_SEGMENT, queue=subjects.QUEUE_TTS, decoder=_raw_body
        )
        self._retry_sub(self.on_reply)
        self._broker.subscriber(subjects.ALL_CONTROL, decoder=_raw_body)(self.on_control)

    async def start(self) -> None:
        """Start the broker; returns once the server has our subscriptions (ready to serve)."""
        await self._broker.start()
        await audio_client(self._broker).flush()

    # ------------------------------------------------------------------ handlers

    async def on_reply(self, body: bytes, msg: NatsMessage) -> None:
        """Start synthesizing one segment (returns at once; the work runs in a task)."""
        received = time.perf_counter()
        seg = parse_for_subject(
            parse_reply, body, msg.raw_message.subject, service=SERVICE, source="reply"
        )
        if seg is None:
            return
        task = asyncio.create_task(self._segment(seg, received, traceparent_of(msg.headers)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._calls.track(seg.call_sid, seg.turn, task)

    async def on_control(self, body: bytes, msg: NatsMessage) -> None:
        """Interrupt: drop the turn's pending and running segments. CallEnded: forget it."""
        ctl = parse_for_subject(
            parse_control, body, msg.raw_message.subject, service=SERVICE, source="control"
        )
        if ctl is None:
            return
        call_sid = ctl.call_sid
        if isinstance(ctl, Interrupt):
            running = self._calls.interrupt(call_sid, ctl.turn)
            log.info("turn interrupted", **kv(call=call_sid, turn=ctl.turn, cancelled=running))
        elif isinstance(ctl, CallEnded):
            self._calls.end(call_sid)

    # ------------------------------------------------------------------ one segment

    async def _segment(
        self, seg: ReplySegment, received: float, traceparent: str | None = None
    ) -> None:
        span = start_span(
            "tts.segment",
            parent=traceparent,
            call_sid=seg.call_sid,
            turn=seg.turn,
            seq=seg.seq,
            provider=self._provider.name,
        )
        out = SegmentOut(nc=audio_client(self._broker), seg=seg, traceparent=span.traceparent)
        try:
            await self._segment_out(seg, out, received)
        finally:
            span.set(chunks=out.chunks, audio_bytes=out.audio_bytes)
            span.end()

    async def _segment_out(self, seg: ReplySegment, out: SegmentOut, received: float) -> None:
        try:
            async with self._calls.get(seg.call_sid).lock:
                if not self._calls.is_cancelled(seg.call_sid, seg.turn):
                    await self._speak(seg, out, received)
        except asyncio.CancelledError:
            log.info("segment cancelled", **kv(call=seg.call_sid, turn=seg.turn, seq=seg.seq))
            await self._close(out, seg)
            raise
        except Exception:  # never let one segment take the worker down
            log.exception("segment failed", **kv(call=seg.call_sid, turn=seg.turn, seq=seg.seq))
        await self._close(out, seg)

    async def _close(self, out: SegmentOut, seg: ReplySegment) -> None:
        try:
            await out.close()
        except Exception as e:  # connection closed at shutdown: nothing left to tell
            log.warning("could not end segment", **kv(call=seg.call_sid, error=type(e).__name__))

    async def _speak(self, seg: ReplySegment, out: SegmentOut, received: float) -> None:
        start = time.perf_counter()
        used = self._provider.name
        fallback = False
        first_at: float | None = None
        if seg.text.strip():

            def failed(provider: str, e: Exception) -> None:
                if not isinstance(e, ProviderError):  # ProviderErrors are counted by the retrier
                    PROVIDER_ERRORS.labels(SERVICE, provider, "unexpected").inc()
                log.warning(
                    "tts provider failed",
                    **kv(call=seg.call_sid, provider=provider, error=type(e).__name__),
                )

            call = self._calls.get(seg.call_sid)
            # Local synthesizers do first what plays first (services/tts/deadline_pool.py).
            needed = NEEDED_AT.set(call.needed_at(seg.turn, time.monotonic()))
            try:
                first = self._primary(seg.text, cacheable=seg.cacheable)
                speech = self._voice.speak(seg.text, first=first, on_failure=failed)
                async for chunk in speech:
                    first_at = first_at or self._first_audio(seg, received, speech.provider)
                    await out.send(chunk)
                    call.sent(seg.turn, len(chunk) / SAMPLE_RATE, time.monotonic())
                used, fallback = speech.provider, speech.fell_back
            finally:
                NEEDED_AT.reset(needed)
        synth_s = time.perf_counter() - start
        STAGE_LATENCY.labels(SERVICE, "tts_segment").observe(synth_s)
        await self._event(
            seg,
            "tts.segment_done",
            audio_ms=round(out.audio_bytes / 8, 1),
            synth_ms=round(synth_s * 1000, 1),
            chunks=out.chunks,
            provider=used,
            fallback=fallback,
            worker=self.worker_id,
        )
        if seg.text.strip() and out.audio_bytes:
            await self._usage(seg, used, synth_s)

    async def _usage(self, seg: ReplySegment, provider: str, synth_s: float) -> None:
        """Characters synthesized (shared.usage); embedded engines add their busy seconds."""
        cloud = provider == "elevenlabs"
        usage = Usage(
            stage="tts",
            provider=provider,
            model=self._settings.elevenlabs_model if cloud else "",
            chars=len(seg.text.strip()),
            cpu_s=0.0 if cloud else round(synth_s, 4),
        )
        ev = usage_event(call_sid=seg.call_sid, service=SERVICE, usage=usage, turn=seg.turn)
        try:
            await audio_client(self._broker).publish(subjects.events(seg.call_sid), ev.to_bytes())
        except Exception as e:  # usage is best effort, like every event
            log.debug("usage not published", **kv(error=type(e).__name__))

    def _primary(self, text: str, *, cacheable: bool = False) -> AsyncIterator[bytes]:
        s = self._settings
        attempts = max(1, s.provider_retries + 1)
        cache, provider = self._cache, self._provider

        def make() -> AsyncIterator[bytes]:
            # Cached prompts skip synthesis; misses go to the provider (and may be stored).
            if cache is not None:
                return cache.synthesize(provider, text, cacheable=cacheable)
            return provider.synthesize(text)

        return stream_with_retries(
            make,
            service=SERVICE,
            provider=self._provider.name,
            attempts=attempts,
            deadline_s=s.provider_timeout_s,
            first_item_timeout_s=max(1.0, s.provider_timeout_s / attempts),
            idle_timeout_s=s.provider_timeout_s,
        )

    def _first_audio(self, seg: ReplySegment, received: float, provider: str) -> float:
        now = time.perf_counter()
        STAGE_LATENCY.labels(SERVICE, "tts_first_audio").observe(now - received)
        data: dict[str, Any] = {
            "ms": round((now - received) * 1000, 1),
            "provider": provider,
            "seq": seg.seq,
            "worker": self.worker_id,  # which replica made it (failover tests, tail)
        }
        if seg.speech_ended_at is not None:  # end of caller speech -> first reply audio
            data["since_speech_end_ms"] = round((time.time() - seg.speech_ended_at) * 1000, 1)
        task = asyncio.create_task(self._event(seg, "tts.first_audio", **data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return now

    async def _event(self, seg: ReplySegment, name: str, **data: Any) -> None:
        ev = event(call_sid=seg.call_sid, service=SERVICE, name=name, turn=seg.turn, **data)
        try:
            await audio_client(self._broker).publish(subjects.events(seg.call_sid), ev.to_bytes())
        except Exception as e:  # events are best effort
            log.debug("event not published", **kv(error=type(e).__name__))

    # ------------------------------------------------------------------ shutdown

    async def drain(self, *, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop taking segments, let the received ones finish (up to ``timeout_s``)."""
        for handle in (self._reply_sub, self._retry_sub):
            sub = getattr(handle, "subscription", None)
            if sub is None:
                continue
            try:
                # nats-py drain: unsubscribe, then hand over what was already delivered.
                await sub.drain()
            except Exception as e:
                log.warning("reply subscription drain failed", **kv(error=type(e).__name__))
            handle.subscription = None  # FastStream must not unsubscribe it again
        pending = set(self._tasks)
        if pending:
            log.info("draining segments", **kv(segments=len(pending)))
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()


async def run(settings: Settings) -> int:
    """Run the worker until SIGTERM/SIGINT, then drain and return the exit code."""
    from services.tts.providers.select import start_fallback, start_provider

    stop = stop_event()
    health = Health(service=settings.service_name or SERVICE)
    serve_metrics(settings.metrics_port, health=health)
    provider = await start_provider(settings)
    fallback = await start_fallback(settings, provider=provider)
    broker = make_broker(settings, name=settings.service_name or SERVICE)
    health.watch_broker(broker)
    cache = PromptCache.from_settings(settings)
    worker = TtsWorker(
        settings=settings, provider=provider, fallback=fallback, broker=broker, cache=cache
    )
    worker.attach()
    await worker.start()
    log.info(
        "tts worker ready",
        **kv(provider=provider.name, fallback=fallback.name if fallback else None),
    )
    health.start_ticker()
    await stop.wait()
    health.draining = True
    log.info("tts worker draining")
    await worker.drain()
    await broker.stop()
    await provider.aclose()
    await cache.aclose()
    log.info("tts worker stopped")
    return 0


# The bus contract of this service (docs/asyncapi/tts.yaml; ``voiceagent asyncapi``).
asyncapi_app = contract_app(
    "tts", receives=("reply", "control", "retry.segment"), sends=("audio.out", "events")
)


def main() -> None:
    """``python -m services.tts``."""
    run_service(SERVICE, run)
