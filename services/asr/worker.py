"""ASR worker: claims calls, recognizes their audio, publishes speech events and transcripts.

The claim protocol is the one in ``docs/subjects.md``: claims arrive as requests to the ``asr``
queue group; an accepted call's audio arrives on the worker's one raw nats-py audio
subscription (``voice.*.audio.in.<worker>``) and feeds a bounded queue per call (the oldest
frames are dropped when the recognizer falls behind), one provider stream, and a
heartbeat every ``HEARTBEAT_S`` until the call ends. One call's recognizer failing is restarted
a few times, then the call is released (the gateway re-claims it); other calls never notice.

On SIGTERM the worker leaves the claim queue, hands each call back at its next pause between
utterances (or flushes it at the end of ``ASR_DRAIN_S``), then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from faststream.nats import NatsBroker, NatsMessage
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.asr.providers.base import CALL_CPU, AsrProvider, CpuMeter, SpeechEvent
from services.asr.utterances import AudioClock, Utterance, UtteranceTracker
from shared import headers as H
from shared import subjects
from shared.asyncapi import contract_app
from shared.audio import FRAME_MS
from shared.bus import audio_client, make_broker, on_slow_consumer
from shared.errors import ProviderError
from shared.logging import kv
from shared.messages import (
    HEARTBEAT_S,
    AsrClaim,
    AsrClaimReply,
    AsrHeartbeat,
    CallEnded,
    SpeechStarted,
    SpeechStopped,
    StageFailed,
    Transcript,
    event,
    parse_control,
)
from shared.metrics import (
    ACTIVE_CALLS,
    BAD_MESSAGES,
    FRAMES,
    FRAMES_DROPPED,
    PROVIDER_ERRORS,
    STAGE_LATENCY,
)
from shared.service import Health, run_service, serve_metrics, stop_event
from shared.service import worker_id as shared_worker_id
from shared.settings import Settings
from shared.telemetry import start_span, with_trace
from shared.usage import Usage, usage_event

log = logging.getLogger(__name__)

SERVICE = "asr"
_FRAMES_IN = FRAMES.labels(SERVICE, "in")
_QUEUE_FULL = FRAMES_DROPPED.labels(SERVICE, "queue_full")
_DUPLICATE = FRAMES_DROPPED.labels(SERVICE, "duplicate")
_NOT_HELD = FRAMES_DROPPED.labels(SERVICE, "not_held")
_BAD_AUDIO = BAD_MESSAGES.labels(SERVICE, "audio")
QUEUE_FRAMES = 250  # 5 s of audio per call waiting for its recognizer, then drop the oldest
# Frames nats-py may hold for the audio callback before dropping: 2 s of every call held.
AUDIO_PENDING_S = 2.0
MAX_RESTARTS = 3  # recognizer restarts per call before it is handed back to the gateway
RESTART_BACKOFF_S = 0.25
STABLE_S = 60.0  # a recognizer that ran this long has its restart budget refilled
FLUSH_TIMEOUT_S = 5.0  # after the audio ends, how long the last utterance may take
AUDIO_IDLE_S = 30.0  # no audio for this long: the gateway is gone, let the call go
MAX_CLOCK_SKEW_S = 5.0  # Va-Sent further than this from our clock is ignored
ENDED_REMEMBERED = 10_000  # ended calls remembered (a late claim for one is refused)

# mu-law bytes, Twilio media timestamp (ms, when sent), wall clock when the gateway sent it
Frame = tuple[bytes, int | None, float]


@dataclass(eq=False)
class _Call:
    sid: str
    queue: FrameQueue
    tracker: UtteranceTracker
    clock: AudioClock = field(default_factory=AudioClock)
    task: asyncio.Task[None] | None = None
    last_seq: int = -1
    last_audio: float = field(default_factory=time.monotonic)
    closing: bool = False
    fallback: AsrProvider | None = None  # the local recognizer, once the cloud one gave up
    stage_failed: bool = False  # StageFailed already published (the agent apologized)
    traceparent: str | None = None  # the call's trace context (from the gateway's frames)
    cpu: CpuMeter = field(default_factory=CpuMeter)  # embedded recognizers' CPU for this call


def frame_meta(headers: dict[str, str] | None, now: float) -> tuple[int | None, int | None, float]:
    """(seq, Twilio timestamp ms, sent wall clock) of an ``audio.in`` frame.

    Raises ``ValueError`` on unparsable headers. A sender clock far from ours is ignored.
    """
    if not headers:
        return None, None, now
    seq = headers.get(H.SEQ)
    ts = headers.get(H.TS_MS)
    sent = headers.get(H.SENT_NS)
    wall = now
    if sent:
        t = int(sent) / 1e9
        if abs(t - now) <= MAX_CLOCK_SKEW_S:
            wall = t
    return (int(seq) if seq else None), (int(ts) if ts else None), wall


class FrameQueue:
    """One call's frames waiting for its recognizer: bounded, the oldest dropped when full.

    A deque and one waiter future: about half the cost of an ``asyncio.Queue`` hand-off, which
    the intake pays 50 times a second per call.
    """

    __slots__ = ("_items", "_max", "_waiter")

    def __init__(self, *, maxsize: int) -> None:
        self._items: deque[Frame | None] = deque()
        self._max = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Frame | None) -> bool:
        """Enqueue without waiting; True when the oldest item had to go."""
        items = self._items
        dropped = len(items) >= self._max
        if dropped:
            items.popleft()
        items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return dropped

    async def get(self) -> Frame | None:
        """The oldest item, waiting for one if there is none."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()


async def _raw_body(msg: NatsMessage) -> bytes:
    # FastStream would json-decode by content type before our handler could count bad input.
    return msg.body


class AsrWorker:
    """Holds calls for one provider. :meth:`attach` before the broker starts, then :meth:`start`."""

    def __init__(
        self,
        *,
        settings: Settings,
        provider: AsrProvider,
        broker: NatsBroker,
        worker_id: str | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        self._broker = broker
        self.worker_id = worker_id or shared_worker_id(settings.service_name or SERVICE)
        self.max_calls = settings.asr_max_calls or provider.default_max_calls
        self._calls: dict[str, _Call] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._claim_sub: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._draining = False
        self._active = ACTIVE_CALLS.labels(SERVICE)
        self._local: AsrProvider | None = None  # fallback recognizer, built on first need
        self._local_lock = asyncio.Lock()
        self._local_failed = False
        self._audio_sub: Subscription | None = None
        self._audio_pending = max(1000, int(self.max_calls * AUDIO_PENDING_S * 1000 / FRAME_MS))

    @property
    def calls(self) -> list[str]:
        """SIDs of the calls held now."""
        return list(self._calls)

    def attach(self) -> None:
        """Subscribe: claims through the ``asr`` queue group, control on a plain subscription."""
        # Replies are sent by hand: a malformed claim gets none (FastStream would send b"").
        self._claim_sub = self._broker.subscriber(
            subjects.ASR_CLAIM, queue=subjects.QUEUE_ASR, decoder=_raw_body, no_reply=True
        )
        self._claim_sub(self.on_claim)
        self._broker.subscriber(subjects.ALL_CONTROL, decoder=_raw_body, no_reply=True)(
            self.on_control
        )

    async def start(self) -> None:
        """Start heartbeating (the broker must be connected)."""
        # Subscriptions are registered once the server has our SUBs: only then are we "ready".
        # One subscription for every held call's audio (``voice.*.audio.in.<worker>``): a
        # subscription per call cost a task hand-off per frame, a quarter of the intake.
        self._audio_sub = await self._nc.subscribe(
            subjects.worker_audio_in(self.worker_id),
            cb=self._on_audio,
            # Bounded: a worker that falls behind drops (and reports) instead of growing.
            pending_msgs_limit=self._audio_pending,
            pending_bytes_limit=self._audio_pending * 1024,
        )
        await self._nc.flush()
        self._heartbeat = asyncio.create_task(self._heartbeats())
        on_slow_consumer(self._on_slow_consumer)

    def _on_slow_consumer(self, subject: str) -> None:
        """nats-py dropped frames of a call we could not keep up with: say so on the call."""
        try:
            sid = subjects.call_sid_of(subject)
        except ValueError:
            return
        if sid in self._calls:
            self._spawn(self._event(sid, "asr.slow_consumer", limit_frames=self._audio_pending))

    @property
    def _nc(self) -> NATS:
        return audio_client(self._broker)

    # ------------------------------------------------------------------ handlers

    async def on_claim(self, body: bytes, msg: NatsMessage) -> None:
        """Accept (or refuse) a call and reply :class:`AsrClaimReply`."""
        try:
            claim = AsrClaim.model_validate_json(body)
            subjects.call_root(claim.call_sid)  # a SID that cannot address subjects is refused
        except (ValidationError, ValueError) as e:
            BAD_MESSAGES.labels(SERVICE, "claim").inc()
            log.warning("bad claim dropped", **kv(error=type(e).__name__))
            return
        accepted = await self._accept(claim)
        reply = AsrClaimReply(call_sid=claim.call_sid, worker_id=self.worker_id, accepted=accepted)
        raw: Msg = msg.raw_message
        try:
            if raw.reply:
                await raw.respond(reply.to_bytes())
            if accepted:
                await self._beat(claim.call_sid)
        except Exception as e:  # connection lost: the gateway will claim again
            log.warning("claim reply failed", **kv(call=claim.call_sid, error=type(e).__name__))

    async def on_control(self, body: bytes, msg: NatsMessage) -> None:
        """``CallEnded``: close the recognizer, unsubscribe and forget the call."""
        try:
            ctl = parse_control(body)
            call_sid = subjects.call_sid_of(msg.raw_message.subject)
            if ctl.call_sid != call_sid:
                raise ValueError("call sid does not match the subject")
        except (ValidationError, ValueError) as e:
            BAD_MESSAGES.labels(SERVICE, "control").inc()
            log.warning("bad control message dropped", **kv(error=type(e).__name__))
            return
        if isinstance(ctl, CallEnded):
            self._ended[call_sid] = None
            if len(self._ended) > ENDED_REMEMBERED:
                self._ended.popitem(last=False)
            if call_sid in self._calls:
                self._spawn(self.release(call_sid, reason="call_ended"))

    # ------------------------------------------------------------------ claims

    async def _accept(self, claim: AsrClaim) -> bool:
        sid = claim.call_sid
        held = self._calls.get(sid)
        if held is not None:
            if claim.last_utterance_id < held.tracker.next_id:
                log.info("call re-claimed; keeping its recognizer", **kv(call=sid))
                return True
            # The gateway moved the call to another worker, which recognized utterances this
            # one never heard (it kept the call until AUDIO_IDLE_S), and now back. Kept, this
            # hold would number the next utterance with an id already used, which the agents'
            # turn leases take for a turn already answered (and ignore the gateway's re-sends
            # too): the caller's sentence would go unanswered. Start afresh, as a new claim.
            self._calls.pop(sid)
            held.closing = True
            if held.task is not None:
                held.task.cancel()
            self._spawn(self._usage(held))  # the provider got that audio
            log.info("call claimed back from another worker; new recognizer", **kv(call=sid))
        if self._draining or sid in self._ended or self._audio_sub is None:
            return False  # not started yet: the gateway asks again (another worker, or us soon)
        if len(self._calls) >= self.max_calls:
            log.info("claim refused: at capacity", **kv(call=sid, calls=len(self._calls)))
            return False
        call = _Call(
            sid=sid,
            queue=FrameQueue(maxsize=QUEUE_FRAMES),
            tracker=UtteranceTracker(last_id=claim.last_utterance_id),
        )
        self._calls[sid] = call  # before any await: a concurrent re-claim finds it
        call.task = asyncio.create_task(self._run(call))
        self._active.set(len(self._calls))
        log.info(
            "call claimed", **kv(call=sid, provider=self._provider.name, attempt=claim.attempt)
        )
        self._spawn(
            self._event(sid, "asr.claimed", worker_id=self.worker_id, provider=self._provider.name)
        )
        return True

    async def _on_audio(self, msg: Msg) -> None:
        """One frame of any held call (hot path: 50 per second per call)."""
        call = self._calls.get(msg.subject.split(".", 2)[1])
        if call is None or call.closing:
            _NOT_HELD.inc()  # in flight when the call ended or moved: nobody needs it
            return
        if not msg.data:
            return
        now = time.time()
        try:
            seq, ts, wall = frame_meta(msg.headers, now)
        except ValueError:
            _BAD_AUDIO.inc()  # keep the audio: the headers are only metadata
            seq, ts, wall = None, None, now
        if seq is not None:
            if seq <= call.last_seq:  # re-sent after a re-claim: already heard
                _DUPLICATE.inc()
                return
            call.last_seq = seq
        _FRAMES_IN.inc()
        call.last_audio = time.monotonic()
        if call.traceparent is None and msg.headers:
            call.traceparent = msg.headers.get(H.TRACEPARENT)
        if call.queue.put((msg.data, ts, wall)):
            _QUEUE_FULL.inc()

    async def _frames(self, call: _Call) -> AsyncIterator[bytes]:
        """The call's queued audio, for one recognizer stream (ends at the ``None`` marker)."""
        first = True
        while True:
            item = await call.queue.get()
            if item is None:
                return
            data, ts, wall = item
            if first:
                call.clock.start_stream(ts)
                first = False
            call.clock.consumed(len(data), wall)
            yield data

    # ------------------------------------------------------------------ recognition

    async def _run(self, call: _Call) -> None:
        """One call's recognizer, restarted on failure (bounded), events published in order."""
        restarts = 0
        while True:
            recognizer = call.fallback or self._provider
            provider = recognizer.name
            failure: Exception | None = None
            started = time.monotonic()
            CALL_CPU.set(call.cpu)  # this call's task: the recognizer's CPU goes on its account
            try:
                async for ev in recognizer.stream(self._frames(call)):
                    await self._on_speech(call, ev)
                if call.closing:  # the audio ended and the recognizer flushed
                    return
                raise ProviderError("recognizer stream ended early", provider=provider)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failure = e
                kind = "provider" if isinstance(e, ProviderError) else "crash"
                PROVIDER_ERRORS.labels(SERVICE, provider, kind).inc()
                log.error(
                    "recognizer failed",
                    exc_info=not isinstance(e, ProviderError),
                    **kv(call=call.sid, provider=provider, error=type(e).__name__),
                )
                call.tracker.abandon()
                await self._event(call.sid, "asr.error", provider=provider, error=type(e).__name__)
            if call.closing:
                return
            if isinstance(failure, ProviderError) and await self._fall_back(call, failure):
                restarts = 0
                continue
            if time.monotonic() - started > STABLE_S:
                restarts = 0
            if restarts >= MAX_RESTARTS:
                await self._give_up(call)
                return
            restarts += 1
            await asyncio.sleep(RESTART_BACKOFF_S * 2 ** (restarts - 1))

    async def _give_up(self, call: _Call) -> None:
        log.error("recognizer keeps failing; releasing the call", **kv(call=call.sid))
        if not call.stage_failed:  # the fallback path may have published it already
            failed = StageFailed(call_sid=call.sid, service=SERVICE, reason="recognizer failed")
            await self._publish(subjects.asr_control(call.sid), failed.to_bytes())
        await self._event(call.sid, "asr.failed", provider=self._provider.name)
        self._spawn(self.release(call.sid, reason="failed", flush=False))

    # ------------------------------------------------------------------ cloud -> local fallback

    async def _fall_back(self, call: _Call, error: ProviderError) -> bool:
        """A cloud recognizer gave up on this call (after its own reconnects and retries).

        Publishes :class:`StageFailed` once (the agent apologizes out loud) and, when the local
        recognizer is installed, carries on with it for the rest of the call (True). Without
        one, the usual restarts of the cloud recognizer follow (False).
        """
        if call.fallback is not None or self._provider.name == "local":
            return False
        if not call.stage_failed:
            call.stage_failed = True
            reason = f"{self._provider.name}: {type(error).__name__}"
            failed = StageFailed(call_sid=call.sid, service=SERVICE, reason=reason)
            await self._publish(subjects.asr_control(call.sid), failed.to_bytes())
        local = await self._local_recognizer()
        if local is None or call.closing:
            return False
        call.fallback = local
        log.warning(
            "asr falling back to the local recognizer",
            **kv(call=call.sid, failed=self._provider.name, error=type(error).__name__),
        )
        await self._event(call.sid, "asr.fallback", provider=local.name, failed=self._provider.name)
        return True

    async def _local_recognizer(self) -> AsrProvider | None:
        """The process's local recognizer, loaded on first need (None: not installed)."""
        async with self._local_lock:
            if self._local is None and not self._local_failed:
                from services.asr.providers.select import make_local

                try:
                    local = make_local(self._settings)
                    await local.warm_up()
                except Exception as e:  # the 'local' extra is missing or its model is broken
                    self._local_failed = True
                    log.error("no local recognizer to fall back to", **kv(error=str(e)))
                    return None
                self._local = local
            return self._local

    async def _on_speech(self, call: _Call, ev: SpeechEvent) -> None:
        """Publish one recognizer event as its bus message, with timings."""
        u = call.tracker.on(ev.kind)
        clock = call.clock
        sid = call.sid
        start_ms = ev.speech_start_ms if ev.speech_start_ms is not None else u.start_ms
        if ev.kind == "speech_started":
            u.start_ms = start_ms if start_ms is not None else ev.audio_ms
            audio_ms = clock.call_ms(ev.audio_ms)
            msg = SpeechStarted(call_sid=sid, utterance_id=u.id, audio_ms=audio_ms)
            await self._publish(subjects.transcript(sid), msg.to_bytes())
            await self._event(sid, "asr.speech_started", utterance_id=u.id, audio_ms=audio_ms)
        elif ev.kind == "speech_stopped":
            self._mark_end(u, clock, ev.audio_ms)
            speech_ms = max(0, ev.audio_ms - start_ms) if start_ms is not None else 0
            stopped = SpeechStopped(
                call_sid=sid,
                utterance_id=u.id,
                audio_ms=clock.call_ms(ev.audio_ms),
                speech_ms=speech_ms,
            )
            await self._publish(subjects.transcript(sid), stopped.to_bytes())
            endpointing = round(u.endpointing_ms or 0.0, 1)
            STAGE_LATENCY.labels(SERVICE, "endpointing").observe(endpointing / 1000)
            await self._event(
                sid,
                "asr.speech_stopped",
                utterance_id=u.id,
                speech_ms=speech_ms,
                endpointing_ms=endpointing,
            )
        else:
            await self._on_text(call, u, ev, start_ms)

    async def _on_text(
        self, call: _Call, u: Utterance, ev: SpeechEvent, start_ms: int | None
    ) -> None:
        clock = call.clock
        final = ev.kind == "final"
        end_ms = ev.speech_end_ms if ev.speech_end_ms is not None else ev.audio_ms
        asr_ms: float | None = None
        if final:
            if u.stopped_perf is None:  # final before (or without) a stop
                self._mark_end(u, clock, end_ms)
            assert u.stopped_perf is not None
            asr_ms = round((time.perf_counter() - u.stopped_perf) * 1000, 1)
        msg = Transcript(
            call_sid=call.sid,
            utterance_id=u.id,
            text=ev.text,
            is_final=final,
            confidence=ev.confidence,
            speech_start_ms=clock.call_ms(start_ms) if start_ms is not None else None,
            speech_end_ms=clock.call_ms(end_ms),
            endpointing_ms=(
                round(u.endpointing_ms, 1) if final and u.endpointing_ms is not None else None
            ),
            asr_ms=asr_ms,
            speech_ended_at=u.speech_ended_at if final else None,
        )
        if not final:
            await self._publish(subjects.transcript(call.sid), msg.to_bytes())
            return
        ended = u.speech_ended_at
        span = start_span(
            "asr.utterance",
            parent=call.traceparent,
            call_sid=call.sid,
            start_ns=None if ended is None else int(ended * 1e9),
            utterance=u.id,
            asr_ms=asr_ms,
            endpointing_ms=msg.endpointing_ms,
            provider=self._provider.name,
        )
        span.end()
        hdrs = with_trace(None, span)
        await self._publish(subjects.transcript(call.sid), msg.to_bytes(), headers=hdrs)
        assert asr_ms is not None
        STAGE_LATENCY.labels(SERVICE, "asr_final").observe(asr_ms / 1000)
        log.info(
            "utterance final",
            **kv(call=call.sid, utterance_id=u.id, asr_ms=asr_ms, text=ev.text),
        )
        await self._event(
            call.sid,
            "asr.final",
            utterance_id=u.id,
            asr_ms=asr_ms,
            endpointing_ms=msg.endpointing_ms,
            speech_ms=(end_ms - start_ms) if start_ms is not None else None,
            words=len(ev.text.split()),
            empty=not ev.text.strip(),
            confidence=ev.confidence,
            provider=self._provider.name,
        )

    @staticmethod
    def _mark_end(u: Utterance, clock: AudioClock, end_stream_ms: int) -> None:
        u.stopped_perf = time.perf_counter()
        u.endpointing_ms = clock.lag_ms(end_stream_ms)
        u.speech_ended_at = clock.wall_at(end_stream_ms)

    # ------------------------------------------------------------------ release

    async def release(self, call_sid: str, *, reason: str, flush: bool = True) -> None:
        """Stop holding a call: no more heartbeats or audio; flush its last utterance if asked."""
        call = self._calls.pop(call_sid, None)
        if call is None:
            return
        call.closing = True
        self._active.set(len(self._calls))
        task = call.task
        if task is not None and task is not asyncio.current_task():
            if flush:
                call.queue.put(None)  # the recognizer flushes and ends
                _, late = await asyncio.wait({task}, timeout=FLUSH_TIMEOUT_S)
                if late:
                    task.cancel()
            else:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("call released", **kv(call=call_sid, reason=reason))
        await self._event(
            call_sid, "asr.released", reason=reason, audio_ms=round(call.clock.total_ms)
        )
        await self._usage(call)  # whatever ended the hold: the provider got that audio

    # ------------------------------------------------------------------ heartbeats

    async def _beat(self, call_sid: str) -> None:
        hb = AsrHeartbeat(call_sid=call_sid, worker_id=self.worker_id)
        await self._nc.publish(subjects.asr_heartbeat(call_sid), hb.to_bytes())

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += HEARTBEAT_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            now = time.monotonic()
            for sid, call in list(self._calls.items()):
                if now - call.last_audio > AUDIO_IDLE_S:
                    log.warning("no audio for a while; releasing the call", **kv(call=sid))
                    self._spawn(self.release(sid, reason="idle"))
                    continue
                try:
                    await self._beat(sid)
                except Exception as e:  # reconnecting: the next beat goes out after it
                    log.debug("heartbeat failed", **kv(error=type(e).__name__))

    # ------------------------------------------------------------------ plumbing

    async def _publish(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None
    ) -> None:
        try:
            await self._nc.publish(subject, data, headers=headers)
        except Exception as e:
            log.warning("publish failed", **kv(error=type(e).__name__))

    async def _usage(self, call: _Call) -> None:
        """The call's audio on the recognizer that took it (shared.usage), for its cost."""
        name = self._provider.name
        model = self._settings.deepgram_model if name == "deepgram" else ""
        usage = Usage(
            stage="asr",
            provider=name,
            model=model,
            audio_s=call.clock.total_ms / 1000,
            cpu_s=round(call.cpu.seconds, 4),
        )
        ev = usage_event(call_sid=call.sid, service=SERVICE, usage=usage)
        await self._publish(subjects.events(call.sid), ev.to_bytes())

    async def _event(self, call_sid: str, name: str, **data: Any) -> None:
        ev = event(call_sid=call_sid, service=SERVICE, name=name, **data)
        await self._publish(subjects.events(call_sid), ev.to_bytes())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, *, grace_s: float) -> None:
        """Refuse new claims; hand each call back at a pause, flush the rest after ``grace_s``."""
        self._draining = True
        sub = getattr(self._claim_sub, "subscription", None)
        if sub is not None:
            try:
                await sub.drain()  # other workers get the claims from now on
            except Exception as e:
                log.warning("claim subscription drain failed", **kv(error=type(e).__name__))
            self._claim_sub.subscription = None  # FastStream must not unsubscribe it again
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        log.info("draining calls", **kv(calls=len(self._calls), grace_s=grace_s))
        while self._calls and loop.time() < deadline:
            for sid, call in list(self._calls.items()):
                if call.tracker.idle:
                    self._spawn(self.release(sid, reason="drain"))
            await asyncio.sleep(0.05)
        for sid in list(self._calls):
            self._spawn(self.release(sid, reason="drain"))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=FLUSH_TIMEOUT_S + 1)
        await self.stop()

    async def stop(self) -> None:
        """Stop heartbeating and cancel what is left (after :meth:`drain`, nothing)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for call in list(self._calls.values()):
            if call.task is not None:
                call.task.cancel()
        for task in list(self._tasks):
            task.cancel()


async def run(settings: Settings) -> int:
    """Run the worker until SIGTERM/SIGINT, then drain and return the exit code."""
    from services.asr.providers.select import make_provider

    stop = stop_event()
    health = Health(service=settings.service_name or SERVICE)
    serve_metrics(settings.metrics_port, health=health)
    provider = make_provider(settings)
    try:
        await provider.warm_up()
    except ProviderError as e:
        if not e.retryable:  # a missing model or package will not come back by itself
            log.error("asr provider failed to start", **kv(provider=provider.name, error=str(e)))
            return 1
        log.warning("asr provider warm-up failed", **kv(provider=provider.name, error=str(e)))
    broker = make_broker(settings, name=settings.service_name or SERVICE)
    health.watch_broker(broker)
    worker = AsrWorker(settings=settings, provider=provider, broker=broker)
    worker.attach()
    await broker.start()
    await worker.start()
    log.info(
        "asr worker ready",
        **kv(provider=provider.name, worker_id=worker.worker_id, max_calls=worker.max_calls),
    )
    health.start_ticker()
    await stop.wait()
    health.draining = True
    log.info("asr worker draining", **kv(calls=len(worker.calls)))
    await worker.drain(grace_s=settings.asr_drain_s)
    await broker.stop()
    await provider.aclose()
    log.info("asr worker stopped")
    return 0


# The bus contract of this service (docs/asyncapi/asr.yaml; ``voiceagent asyncapi``).
asyncapi_app = contract_app(
    "asr",
    receives=("audio.in", "control", "asr.claim"),
    sends=("transcript", "control.asr", "events", "asr.heartbeat"),
)


def main() -> None:
    """``python -m services.asr``."""
    run_service(SERVICE, run)
