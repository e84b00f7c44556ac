"""ASR worker: claims calls, recognizes their audio, publishes speech events and transcripts.

The claim protocol is the one in ``docs/subjects.md``: claims arrive as requests to the ``asr``
queue group; an accepted call's audio arrives on the worker's one raw nats-py audio
subscription (``voice.*.audio.in.<worker>``) and feeds a bounded queue per call (the oldest
frames are dropped when the recognizer falls behind), one provider stream, and a
heartbeat every ``HEARTBEAT_S`` until the call ends. One call's recognizer failing is restarted
a few times, then the call is released (the gateway re-claims it); other calls never notice.

On SIGTERM the worker leaves the claim queue, hands each call back at its next pause between
utterances (or flushes it at the end of ``ASR_DRAIN_S``), then exits 0.

This module is the bus handlers and the wiring; the layers below: :mod:`.claims` (a held
call, the claims refused), :mod:`.intake` (frame metadata, the frame queue),
:mod:`.recognition` (restarts, failover), :mod:`.publish` (recognizer events to bus messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from faststream.nats import NatsBroker, NatsMessage
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.asr.claims import EndedCalls, HeldCall
from services.asr.intake import (
    AUDIO_PENDING_S,
    QUEUE_FRAMES,
    FrameQueue,
    frame_meta,
)
from services.asr.providers.base import AsrProvider
from services.asr.providers.select import with_fallback
from services.asr.publish import SpeechPublisher
from services.asr.recognition import Recognition
from services.asr.turntaking.end_of_turn import EndOfTurnPolicy
from services.asr.turntaking.turns import CallTurns
from services.asr.utterances import UtteranceTracker
from shared import headers as H
from shared import subjects
from shared.asyncapi import contract_app
from shared.audio import FRAME_MS
from shared.bus import audio_client, make_broker, on_slow_consumer
from shared.errors import ProviderError
from shared.handler import bad_message, parse_for_subject
from shared.logging import kv
from shared.messages import (
    HEARTBEAT_S,
    AgentAsked,
    AsrClaim,
    AsrClaimReply,
    AsrHeartbeat,
    CallEnded,
    parse_control,
)
from shared.metrics import ACTIVE_CALLS, BAD_MESSAGES, FRAMES, FRAMES_DROPPED
from shared.service import Health, run_service, serve_metrics, stop_event
from shared.service import worker_id as shared_worker_id
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "asr"
_FRAMES_IN = FRAMES.labels(SERVICE, "in")
_QUEUE_FULL = FRAMES_DROPPED.labels(SERVICE, "queue_full")
_DUPLICATE = FRAMES_DROPPED.labels(SERVICE, "duplicate")
_NOT_HELD = FRAMES_DROPPED.labels(SERVICE, "not_held")
_BAD_AUDIO = BAD_MESSAGES.labels(SERVICE, "audio")
FLUSH_TIMEOUT_S = 5.0  # after the audio ends, how long the last utterance may take
AUDIO_IDLE_S = 30.0  # no audio for this long: the gateway is gone, let the call go


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
        # Any provider but the local one: the local recognizer takes over the calls it fails.
        self._provider = with_fallback(provider, settings=settings)
        self._broker = broker
        self.worker_id = worker_id or shared_worker_id(settings.service_name or SERVICE)
        self.max_calls = settings.asr_max_calls or provider.default_max_calls
        self._calls: dict[str, HeldCall] = {}
        self._ended = EndedCalls()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._claim_sub: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._draining = False
        self._active = ACTIVE_CALLS.labels(SERVICE)
        self._out = SpeechPublisher(settings=settings, provider=provider.name, nc=lambda: self._nc)
        self._publish = self._out.publish
        self._event = self._out.event
        self._recognition = Recognition(
            provider=self._provider, out=self._out, give_back=self._give_back
        )
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
            bad_message(service=SERVICE, source="claim", error=e)
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
        ctl = parse_for_subject(
            parse_control, body, msg.raw_message.subject, service=SERVICE, source="control"
        )
        if isinstance(ctl, AgentAsked):
            held = self._calls.get(ctl.call_sid)
            if held is not None and held.turns is not None:
                held.turns.expect(ctl.expects)
        if isinstance(ctl, CallEnded):
            call_sid = ctl.call_sid
            self._ended.add(call_sid)
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
            self._spawn(self._out.usage(held))  # the provider got that audio
            log.info("call claimed back from another worker; new recognizer", **kv(call=sid))
        if self._draining or sid in self._ended or self._audio_sub is None:
            return False  # not started yet: the gateway asks again (another worker, or us soon)
        if len(self._calls) >= self.max_calls:
            log.info("claim refused: at capacity", **kv(call=sid, calls=len(self._calls)))
            return False
        call = HeldCall(
            sid=sid,
            queue=FrameQueue(maxsize=QUEUE_FRAMES),
            tracker=UtteranceTracker(last_id=claim.last_utterance_id),
            recognizer=self._provider,
            turns=self._turns(),
        )
        self._calls[sid] = call  # before any await: a concurrent re-claim finds it
        call.task = asyncio.create_task(self._recognition.run(call))
        self._active.set(len(self._calls))
        log.info(
            "call claimed", **kv(call=sid, provider=self._provider.name, attempt=claim.attempt)
        )
        self._spawn(
            self._event(sid, "asr.claimed", worker_id=self.worker_id, provider=self._provider.name)
        )
        return True

    def _turns(self) -> CallTurns | None:
        """The call's end-of-turn decision (``SMART_ENDPOINTING``), whatever the recognizer."""
        s = self._settings
        if not s.smart_endpointing:
            return None
        policy = EndOfTurnPolicy(
            min_wait_ms=s.endpointing_min_ms,
            max_wait_ms=max(s.endpointing_max_ms, s.endpointing_min_ms),
        )
        return CallTurns(
            policy=policy, rejoin_ms=s.end_of_turn_rejoin_ms, acoustic=s.end_of_turn_acoustic
        )

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

    # ------------------------------------------------------------------ release

    def _give_back(self, call_sid: str) -> None:
        """Hand a call whose recognizer keeps failing back to the gateway."""
        self._spawn(self.release(call_sid, reason="failed", flush=False))

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
        await self._out.usage(call)  # whatever ended the hold: the provider got that audio

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
            await self._beat_held()

    async def _beat_held(self) -> None:
        """A heartbeat for every held call; a call without audio for ``AUDIO_IDLE_S`` is let go."""
        # Not inline in the endless loop above: its loop variable would keep the last call
        # visited alive there, recognizer state and all, after the call ended (issue 12 soak).
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
