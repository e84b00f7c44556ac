"""One call in the gateway: bus side of a Twilio media stream, independent of the socket.

The session is handed two callables by the socket layer: ``send(text)`` (a Twilio text frame)
and ``close()`` (end the media stream, which ends the call). Everything else is here: the
lifecycle messages, the ASR link, the playback loop, barge-in, marks, hangup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.gateway.asr_link import AsrLink
from services.gateway.call_control import CallControl
from services.gateway.playback import (
    FirstAudio,
    Heard,
    PlaybackQueue,
    SendMark,
    SendMedia,
    Skipped,
)
from services.gateway.redelivery import Redelivery
from services.gateway.transcripts import TranscriptFeed, TranscriptMessage
from services.gateway.turntaking.barge_in import BargeInArbiter, BargeInPolicy, Decision
from services.gateway.turntaking.call_guards import AskPrompt, CallGuards, EndCall
from services.gateway.turntaking.voice_activity import BargeInDetector, VadPool
from shared import subjects
from shared.backchannel import parse_backchannels
from shared.cost import COST_EVENT, price_call, price_table
from shared.headers import parse_audio_out
from shared.logging import kv
from shared.messages import (
    AmdResult,
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    Hangup,
    Interrupt,
    Played,
    Prompt,
    SpeechStarted,
    SpeechStopped,
    StageFailed,
    Transfer,
    event,
    parse_control,
    parse_event,
    parse_reply,
)
from shared.metrics import BAD_MESSAGES, FRAMES, FRAMES_DROPPED, SPEND, STAGE_LATENCY
from shared.outbound import OutboundContext
from shared.settings import Settings
from shared.telemetry import start_span, with_trace
from shared.twilio import clear_message, mark_message, media_message
from shared.usage import Usage, usage_event, usage_of

log = logging.getLogger(__name__)

SERVICE = "gateway"
AUDIO_OUT_PENDING_MSGS = 4000  # TTS chunks held for one call's callback before dropping
HANGUP_IDLE_S = 2.0  # hang up this long after a Hangup once nothing of its turn is pending
HANGUP_MAX_WAIT_S = 60.0  # and never hold a call open longer than this for a hangup
GUARD_TICK_S = 0.1  # barge-in decisions and the silence/length guards are checked this often
COST_WAIT_S = 6.0  # after the call: wait this long at most for ASR's usage (it flushes first)
COST_SETTLE_S = 0.3  # and this long for reports still in flight
_PRICING: set[asyncio.Task[None]] = set()  # calls being priced after they ended

_FRAMES_OUT = FRAMES.labels(SERVICE, "out")
_DROPPED_LATE = FRAMES_DROPPED.labels(SERVICE, "late")

ControlOut = CallStarted | CallEnded | Interrupt | Played | Dtmf | Prompt | StageFailed
Send = Callable[[str], Awaitable[None]]
Close = Callable[[], Awaitable[None]]
AmdLookup = Callable[[], Awaitable[str | None]]


class CallSession:
    """The gateway's state for one call (created on Twilio's ``start``)."""

    def __init__(
        self,
        *,
        nc: NATS,
        settings: Settings,
        call_sid: str,
        stream_sid: str,
        gateway_id: str,
        send: Send,
        close: Close,
        parameters: dict[str, str] | None = None,
        vad_pool: VadPool | None = None,
        segment_timeout_s: float | None = None,
        call_control: CallControl | None = None,
        outbound: OutboundContext | None = None,
        amd_lookup: AmdLookup | None = None,
    ) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self._nc = nc
        self._settings = settings
        self._gateway_id = gateway_id
        self._send_text = send
        self._close_stream = close
        self._parameters = parameters or {}
        timeout = {} if segment_timeout_s is None else {"segment_timeout_s": segment_timeout_s}
        self.playback = PlaybackQueue(lead_s=settings.playback_lead_ms / 1000, **timeout)
        # One transcript subscription for the call; its readers, in order: the ASR link's ids,
        # redelivery's owed turn, then turn-taking (_on_transcript).
        self._transcripts = TranscriptFeed(nc=nc, call_sid=call_sid)
        self.asr = AsrLink(
            nc=nc,
            call_sid=call_sid,
            gateway_id=gateway_id,
            event=self._event_named,
            transcripts=self._transcripts,
        )
        # Re-sends turns and segments lost with a dying agent or TTS replica (failover.md).
        self.redelivery = Redelivery(
            nc=nc,
            call_sid=call_sid,
            event=self._event_named,
            done_turn=lambda: self.playback.done_turn,
        )
        self._transcripts.add(self.redelivery.on_message)
        self._transcripts.add(self._on_transcript)
        # One trace per call: every stage's spans hang under this one (off: a no-op span).
        self.trace = start_span("call", call_sid=call_sid, service=SERVICE)
        self.asr.traceparent = self.trace.traceparent
        self._turn_trace: dict[int, str] = {}  # turn -> traceparent of its first audio chunk
        self._bargein = (
            BargeInDetector(
                pool=vad_pool,
                threshold=settings.vad_threshold,
                min_speech_ms=settings.barge_in_min_speech_ms,
                level_margin_db=settings.vad_level_margin_db,
            )
            if vad_pool is not None
            else None
        )
        self._caller_talking = False  # the recognizer's view: between speech start and stop
        self._subs: list[Subscription] = []
        self._wake = asyncio.Event()
        self._player: asyncio.Task[None] | None = None
        self._hangup_task: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self._ended = False
        self._closing = False
        self.end_reason = "stop"
        self.interrupts = 0
        self.false_interruptions = 0
        self._call_control = call_control or CallControl.from_settings(settings)
        self._rest_tasks: set[asyncio.Task[bool]] = set()
        self._arbiter = BargeInArbiter(
            policy=BargeInPolicy(
                min_words=settings.barge_in_min_words,
                confirm_speech_ms=settings.barge_in_confirm_speech_ms,
                timeout_s=settings.false_interruption_timeout_ms / 1000,
                backchannels=parse_backchannels(settings.backchannel_words),
                short_sound_ms=settings.barge_in_short_sound_ms,
                quick_revert_ms=settings.barge_in_quick_revert_ms,
                soft_pause_ms=settings.barge_in_soft_pause_ms,
            )
        )
        self._guards = CallGuards(
            started=self._started_at,
            silence_s=settings.silence_reprompt_s,
            hangup_s=settings.silence_hangup_s,
            max_call_s=settings.max_call_s,
            limit_grace_s=settings.call_limit_grace_s,
        )
        self._guard_task: asyncio.Task[None] | None = None
        self._max_turn = -1  # latest agent turn seen on the bus
        self._limit_floor: int | None = None  # turns up to this one predate the call-limit prompt
        self._audio_since = 0.0  # when the latest turn's first audio went out
        # An outbound call with AMD is held (no CallStarted, no ASR, caller audio dropped)
        # until Twilio says who answered: a voicemail greeting is never taken for a person.
        self._outbound = outbound
        self._amd_lookup = amd_lookup
        self.holding = outbound is not None and outbound.amd and outbound.answered_by is None
        self._begun = False
        self._amd_task: asyncio.Task[None] | None = None
        self.usages: list[Usage] = []  # every stage's usage reports, priced at the end
        self._asr_usage = asyncio.Event()
        self._usage_sub: Subscription | None = None

    @property
    def age_s(self) -> float:
        """Seconds since the call's stream started."""
        return time.monotonic() - self._started_at

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to the call's subjects, announce it, start claiming ASR and playing."""
        nc = self._nc
        self._subs = [
            # Bounded (about 3 minutes of reply audio): a stalled loop drops and reports
            # (voice_slow_consumer_drops_total) instead of growing without limit.
            await nc.subscribe(
                subjects.audio_out(self.call_sid),
                cb=self._on_audio,
                pending_msgs_limit=AUDIO_OUT_PENDING_MSGS,
                pending_bytes_limit=AUDIO_OUT_PENDING_MSGS * 2048,
            ),
            await nc.subscribe(subjects.reply(self.call_sid), cb=self._on_reply),
            await nc.subscribe(subjects.control(self.call_sid), cb=self._on_control),
            await self._transcripts.subscribe(),
        ]
        self._usage_sub = await nc.subscribe(subjects.events(self.call_sid), cb=self._on_event)
        self._player = asyncio.create_task(self._play(), name=f"player-{id(self):x}")
        if not self.holding:
            await self._begin(None)
            return
        await self._event_named(
            "outbound.amd_wait", timeout_s=self._settings.outbound_amd_timeout_s
        )
        self._amd_task = asyncio.create_task(self._amd_wait(), name=f"amd-{id(self):x}")

    async def _begin(self, answered_by: str | None) -> None:
        """Announce the call (workers set up, the agent opens) and start recognizing."""
        if self._begun or self._ended:
            return
        self._begun = True
        self.holding = False
        outbound = self._outbound
        if outbound is not None and answered_by is not None:
            outbound = outbound.model_copy(update={"answered_by": answered_by})
        await self._control(
            CallStarted(
                call_sid=self.call_sid,
                stream_sid=self.stream_sid,
                gateway_id=self._gateway_id,
                parameters=self._parameters,
                outbound=outbound,
            )
        )
        await self._event_named("call.started", gateway=self._gateway_id)
        await self.asr.start()
        await self.redelivery.start()
        self._guard_task = asyncio.create_task(self._guard(), name=f"guard-{id(self):x}")

    async def _amd_wait(self) -> None:
        """The AMD answer may have come before the stream started; else wait, then give up
        (treated as ``unknown``: a message is left, never a conversation)."""
        if self._amd_lookup is not None:
            with contextlib.suppress(Exception):
                known = await self._amd_lookup()
                if known is not None:
                    await self._begin(known)
                    return
        await asyncio.sleep(self._settings.outbound_amd_timeout_s)
        if self.holding:
            log.warning("no amd answer; treating as unknown", **kv(call=self.call_sid))
            await self._event_named("outbound.amd_timeout")
            await self._begin("unknown")

    async def end(self, reason: str | None = None) -> None:
        """The stream is over: announce it, stop every task and subscription (idempotent)."""
        if self._ended:
            return
        self._ended = True
        if reason is not None and not self._closing:
            self.end_reason = reason
        for task in (self._player, self._hangup_task, self._guard_task, self._amd_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        await self.asr.close()
        await self.redelivery.close()
        if self._bargein is not None:
            self._bargein.stop()
        duration = round(time.monotonic() - self._started_at, 3)
        log.info("call ended", **kv(call=self.call_sid, reason=self.end_reason, seconds=duration))
        await self._control(CallEnded(call_sid=self.call_sid, reason=self.end_reason))
        await self._event_named("call.ended", reason=self.end_reason, duration_s=duration)
        self.trace.set(reason=self.end_reason, duration_s=duration, interrupts=self.interrupts)
        self.trace.end()
        direction = "outbound" if self._outbound is not None else "inbound"
        twilio = Usage(stage="twilio", provider="twilio", call_s=duration, direction=direction)
        self.usages.append(twilio)
        await self._publish_event(
            usage_event(call_sid=self.call_sid, service=SERVICE, usage=twilio)
        )
        task = asyncio.create_task(self._price(), name=f"price-{id(self):x}")
        _PRICING.add(task)
        task.add_done_callback(_PRICING.discard)

    # ------------------------------------------------------------------ cost

    async def _on_event(self, msg: Msg) -> None:
        """Usage reports of the other stages (ours are added where they are made)."""
        try:
            ev = parse_event(msg.data)
        except ValidationError:
            return
        if ev.service == SERVICE:
            return
        usage = usage_of(ev)
        if usage is not None:
            self.usages.append(usage)
            if usage.stage == "asr":
                self._asr_usage.set()

    async def _price(self) -> None:
        """Once the stages have reported, publish ``call.cost`` and count the spend."""
        try:
            if self._begun:  # ASR held the call: it reports once it has flushed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._asr_usage.wait(), COST_WAIT_S)
            await asyncio.sleep(COST_SETTLE_S)
            if self._usage_sub is not None:
                with contextlib.suppress(Exception):
                    await self._usage_sub.unsubscribe()
            table = price_table(self._settings.prices_file)
            cost, spend = price_call(self.usages, table)
            for (stage, provider), amount in spend.items():
                if amount > 0:
                    SPEND.labels(stage, provider).inc(amount)
            await self._event_named(COST_EVENT, **cost.model_dump())
        except Exception:
            log.exception("call not priced", **kv(call=self.call_sid))

    # ------------------------------------------------------------------ from Twilio

    async def on_media(self, frame: bytes, seq: str, ts: str) -> None:
        """Caller audio (hot path: one call per 20 ms)."""
        if self.holding:
            return  # before the AMD answer: a machine's greeting must not become a turn
        await self.asr.send(frame, seq, ts)
        det = self._bargein
        if det is None:
            return
        now = time.monotonic()
        arb = self._arbiter
        if not arb.holding and not self.playback.is_playing(now):
            if det.active:
                det.stop()
            if self._caller_talking:
                det.learn_level(frame)
            return
        before = det.total_speech_ms
        fired = await det.feed(frame)
        if det.speaking:
            self._guards.caller_activity(now)
        if det.onset and arb.probe(now):
            await self._hold(now)  # the lead plays on: nothing is lost if it was nothing
        if fired and not arb.paused:
            await self.barge_in()
        elif arb.holding:
            await self._decide(
                arb.on_vad(
                    speech_ms=det.total_speech_ms - before,
                    speaking=det.speaking,
                    now=now,
                    sounding=det.sounding,
                )
            )

    async def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""
        try:
            msg = Dtmf(call_sid=self.call_sid, digit=digit)
        except ValidationError:
            BAD_MESSAGES.labels(SERVICE, "twilio").inc()
            return
        self._guards.caller_activity(time.monotonic())
        await self._control(msg)

    async def on_mark(self, name: str) -> None:
        """Twilio played everything up to mark ``name``."""
        heard = self.playback.on_mark(name)
        if heard is not None:
            await self._played(heard)
        self._wake.set()  # a pending hangup may be waiting for this mark

    # ------------------------------------------------------------------ barge-in

    async def barge_in(self) -> None:
        """The caller talks over the agent: pause the turn (``clear`` Twilio's buffer now), or
        with the soft pause hold it (Twilio's lead plays out; :meth:`_stop_held` clears later).

        Nothing crosses the bus yet: :mod:`services.gateway.turntaking.barge_in` confirms the
        interruption (``Interrupt`` + ``Played``, see :meth:`_confirm`) or reverts it (the
        unheard remainder plays, see :meth:`_revert`).
        """
        if self._arbiter.paused:
            return
        now = time.monotonic()
        # Soft pause (VAD only, not the recognizer's late onset): hold, clear later if need be.
        det = self._bargein
        soft = self._arbiter.policy.soft_pause_ms > 0 and det is not None and det.active
        if soft:
            turn = self.playback.playing_turn(now) if self.playback.held else await self._hold(now)
        else:
            turn = self.playback.pause(now)
        if turn is None:
            self._arbiter.done()
            self.playback.resume(now)
            return
        if not soft:
            await self._send(clear_message(self.stream_sid))
        speech_ms = det.speech_ms if det is not None else 0.0
        self._arbiter.pause(turn, now, speech_ms=speech_ms, soft=soft)
        await self._event_named(
            "barge_in.held" if soft else "barge_in.paused", turn=turn, speech_ms=round(speech_ms)
        )

    async def _decide(self, decision: Decision) -> None:
        if decision is Decision.CONFIRM:
            await self._confirm()
        elif decision is Decision.REVERT:
            await self._revert()
        elif decision is Decision.STOP:
            await self._stop_held()
        elif decision is Decision.RELEASE:
            self.playback.resume(time.monotonic())
            self._wake.set()

    async def _hold(self, now: float) -> int | None:
        """Stop feeding Twilio; its mark says when the buffered lead has played out."""
        hold = self.playback.hold(now)
        if hold is None:
            return None
        await self._send(mark_message(self.stream_sid, hold.mark))
        return hold.turn

    async def _stop_held(self) -> None:
        """A held sound went on: drop what Twilio still buffers (``clear``), keep the rest."""
        turn = self._arbiter.turn
        if turn is None:
            return
        now = time.monotonic()
        drained = self.playback.drained  # Twilio holds nothing: no clear, nothing rewound
        if self.playback.pause(now) is not None and not drained:
            await self._send(clear_message(self.stream_sid))
        await self._event_named(
            "barge_in.paused", turn=turn, why=self._arbiter.reason, cleared=not drained
        )

    async def _confirm(self) -> None:
        """A real interruption: give the paused turn up and tell the bus."""
        turn = self._arbiter.turn
        if turn is None:
            return
        await self._interrupt(turn, time.monotonic(), publish=True)

    async def _revert(self) -> None:
        """A false interruption: play the unheard remainder from where it was cut."""
        turn = self._arbiter.turn
        if turn is None:
            return
        self._arbiter.done()
        self.playback.resume(time.monotonic())
        self.false_interruptions += 1
        self._wake.set()
        await self._event_named("barge_in.reverted", turn=turn, why=self._arbiter.reason)

    async def _interrupt(self, turn: int, now: float, *, publish: bool) -> None:
        paused = self._arbiter.turn
        if paused is not None and paused <= turn:
            self._arbiter.done()
        result = self.playback.interrupt(turn, now)
        if result.clear:
            await self._send(clear_message(self.stream_sid))
        if self._bargein is not None:
            self._bargein.stop()
        if not result.clear and not result.heard:
            return  # nothing of that turn was queued or playing here
        self.interrupts += 1
        if publish:
            await self._control(Interrupt(call_sid=self.call_sid, turn=turn))
        for heard in result.heard:
            await self._played(heard)
        await self._event_named(
            "barge_in" if publish else "interrupted",
            turn=turn,
            cleared=result.clear,
            dropped_segments=result.dropped_segments,
            why=self._arbiter.reason if publish else "bus",
        )
        self._wake.set()

    # ------------------------------------------------------------------ from the bus

    async def _on_audio(self, msg: Msg) -> None:
        try:
            meta = parse_audio_out(msg.headers)
        except ValueError:
            BAD_MESSAGES.labels(SERVICE, "audio_out").inc()
            return
        turn, seq, chunk, last = meta.turn, meta.seg, meta.chunk, meta.last
        if chunk == 0 and turn not in self._turn_trace and meta.traceparent is not None:
            self._turn_trace[turn] = meta.traceparent
        self._max_turn = max(self._max_turn, turn)
        now = time.monotonic()
        self.redelivery.on_chunk(turn, seq, last, now)
        ok = self.playback.add_chunk(
            turn=turn, seq=seq, chunk=chunk, data=msg.data, last=last, now=now
        )
        if ok:
            self._wake.set()
        elif msg.data:
            _DROPPED_LATE.inc(len(msg.data) // 160 or 1)

    async def _on_reply(self, msg: Msg) -> None:
        try:
            seg = parse_reply(msg.data)
        except ValidationError:
            BAD_MESSAGES.labels(SERVICE, "reply").inc()
            return
        self._max_turn = max(self._max_turn, seg.turn)
        self._guards.agent_activity(time.monotonic())
        self.redelivery.on_segment(seg, msg.data, time.monotonic())
        if self.playback.add_reply(
            turn=seg.turn,
            seq=seg.seq,
            text=seg.text,
            last=seg.last,
            speech_ended_at=seg.speech_ended_at,
            now=time.monotonic(),
        ):
            self._wake.set()

    async def _on_control(self, msg: Msg) -> None:
        try:
            ctl = parse_control(msg.data)
        except ValidationError:
            BAD_MESSAGES.labels(SERVICE, "control").inc()
            return
        try:
            if isinstance(ctl, Interrupt):
                # Ours come back too; the queue ignores a turn already stopped.
                await self._interrupt(ctl.turn, time.monotonic(), publish=False)
            elif isinstance(ctl, Hangup):
                self.request_close(after_turn=ctl.after_turn, reason=f"hangup:{ctl.reason}")
            elif isinstance(ctl, Transfer):
                self.request_close(after_turn=ctl.after_turn, reason="transfer", transfer_to=ctl.to)
            elif isinstance(ctl, AmdResult) and self.holding:
                await self._begin(ctl.answered_by)
        except Exception:
            log.exception("control handling failed", **kv(call=self.call_sid))

    # ------------------------------------------------------------------ hangup

    def request_close(
        self, *, after_turn: int | None, reason: str, transfer_to: str | None = None
    ) -> None:
        """End the call once ``after_turn`` has been heard (now if None or already played).

        With ``transfer_to``, the call is redirected there through Twilio's REST API instead;
        if that fails, the call stays up and the agent is told (``StageFailed``).
        """
        if self._closing or self._ended:
            return
        if self._hangup_task is not None:
            self._hangup_task.cancel()
        self._hangup_task = asyncio.create_task(self._close_after(after_turn, reason, transfer_to))

    async def _close_after(
        self, after_turn: int | None, reason: str, transfer_to: str | None = None
    ) -> None:
        if after_turn is not None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            idle_since: float | None = None
            while not self.playback.turn_played(after_turn):
                now = loop.time()
                if self.playback.idle(after_turn, now):
                    idle_since = idle_since or now
                    if now - idle_since >= HANGUP_IDLE_S:
                        break
                else:
                    idle_since = None
                if now - start >= HANGUP_MAX_WAIT_S:
                    break
                await asyncio.sleep(0.05)
        if transfer_to is not None and not await self._transfer(transfer_to):
            return
        self._closing = True
        self.end_reason = reason
        await self._event_named("call.hangup", reason=reason, after_turn=after_turn)
        await self._close_stream()
        if transfer_to is None and self._call_control.enabled:
            # Belt and braces: the REST API ends the call even if Twilio missed the close.
            await self._rest(self._call_control.hangup(self.call_sid))

    # ------------------------------------------------------------------ playback

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self.playback
        while True:
            self._wake.clear()
            actions, wake_at = queue.poll(loop.time())
            for action in actions:
                if isinstance(action, SendMedia):
                    await self._send(media_message(self.stream_sid, action.data))
                    _FRAMES_OUT.inc()
                elif isinstance(action, SendMark):
                    await self._send(mark_message(self.stream_sid, action.name))
                elif isinstance(action, FirstAudio):
                    await self._first_audio(action)
                elif isinstance(action, Skipped):
                    FRAMES_DROPPED.labels(SERVICE, "segment_" + action.reason).inc()
                    await self._event_named(
                        "playback.skipped", turn=action.turn, seq=action.seq, why=action.reason
                    )
            if actions:
                continue  # sending took time: poll again before sleeping
            timer = None if wake_at is None else loop.call_at(wake_at, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    async def _first_audio(self, action: FirstAudio) -> None:
        self._audio_since = time.monotonic()
        floor = self._limit_floor
        if floor is not None and action.turn > floor:
            # The agent's answer to the call-limit prompt: end the call once it has played.
            self._limit_floor = None
            self.request_close(after_turn=action.turn, reason="call_limit")
        data: dict[str, Any] = {"seq": action.seq}
        if action.speech_ended_at is not None:
            latency = max(0.0, time.time() - action.speech_ended_at)
            STAGE_LATENCY.labels(SERVICE, "voice_to_voice").observe(latency)
            data["voice_to_voice_ms"] = round(latency * 1000, 1)
        parent = self._turn_trace.pop(action.turn, None) or self.trace.traceparent
        start_ns = None if action.speech_ended_at is None else int(action.speech_ended_at * 1e9)
        span = start_span(
            "gateway.first_audio",
            parent=parent,
            call_sid=self.call_sid,
            start_ns=start_ns,
            turn=action.turn,
            seq=action.seq,
            voice_to_voice_ms=data.get("voice_to_voice_ms"),
        )
        span.end()
        await self._event_named("turn.first_audio", turn=action.turn, **data)

    # ------------------------------------------------------------------ turn-taking, guards

    async def _on_transcript(self, tr: TranscriptMessage, raw: bytes) -> None:
        """The recognizer's view of the caller: confirms or reverts a paused barge-in."""
        try:
            now = time.monotonic()
            arb = self._arbiter
            if isinstance(tr, SpeechStarted):
                arb.on_speech_started(tr.utterance_id, now)
                self._guards.caller_speaking(True, now)
                self._caller_talking = True
                vad = self._bargein is not None and self._bargein.active
                if not vad and self.playback.is_playing(now):
                    await self.barge_in()  # no VAD here: the recognizer's onset is the fast path
            elif isinstance(tr, SpeechStopped):
                arb.on_speech_stopped(tr.utterance_id, now)
                self._guards.caller_speaking(False, now)
                self._caller_talking = False
            else:
                if tr.text.strip():
                    self._guards.caller_activity(now)
                words = arb.interrupts_playback(
                    utterance_id=tr.utterance_id, text=tr.text, playing_since=self._audio_since
                )
                decision = arb.on_transcript(
                    utterance_id=tr.utterance_id, text=tr.text, is_final=tr.is_final, now=now
                )
                if words and self.playback.is_playing(now):
                    await self.barge_in()  # words the VAD did not catch: cut and confirm
                    decision = Decision.CONFIRM
                    arb.reason = "words"
                await self._decide(decision)
        except Exception:
            log.exception("transcript handling failed", **kv(call=self.call_sid))

    async def _guard(self) -> None:
        """Barge-in timeouts, silence watchdog and call-length guard, every ``GUARD_TICK_S``."""
        while True:
            await asyncio.sleep(GUARD_TICK_S)
            try:
                now = time.monotonic()
                if self._arbiter.holding:
                    await self._decide(self._arbiter.tick(now))
                if self._closing:
                    continue
                # Audible or paused agent audio: a reply whose audio never comes is not "busy"
                # (a dead TTS must still end in a reprompt and a hang-up, not dead air).
                busy = self.playback.paused or self.playback.is_playing(now)
                for action in self._guards.tick(now, agent_busy=busy):
                    if isinstance(action, AskPrompt):
                        if action.reason == "call_limit":
                            self._limit_floor = self._max_turn
                        await self._control(
                            Prompt(
                                call_sid=self.call_sid,
                                reason=action.reason,
                                silence_s=action.silence_s,
                            )
                        )
                        await self._event_named("prompt", reason=action.reason)
                    elif isinstance(action, EndCall) and not self._closing:
                        turn = self._max_turn if self._max_turn >= 0 else None
                        self.request_close(after_turn=turn, reason=action.reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("call guard failed", **kv(call=self.call_sid))

    async def _rest(self, request: Awaitable[bool]) -> bool:
        """Run a REST request to completion even if the call ends meanwhile."""
        task = asyncio.ensure_future(request)
        self._rest_tasks.add(task)
        task.add_done_callback(self._rest_tasks.discard)
        return await asyncio.shield(task)

    async def _transfer(self, to: str) -> bool:
        """Redirect the call to ``to`` (REST ``<Dial>``); on failure the agent is told."""
        ok = self._call_control.enabled and await self._rest(
            self._call_control.transfer(self.call_sid, to)
        )
        await self._event_named(
            "call.transfer",
            outcome="done" if ok else "failed",
            provider="twilio_rest" if self._call_control.enabled else "none",
        )
        if not ok:
            log.warning("transfer failed; the call goes on", **kv(call=self.call_sid))
            await self._control(
                StageFailed(call_sid=self.call_sid, service=SERVICE, reason="transfer")
            )
        return ok

    # ------------------------------------------------------------------ output helpers

    async def _send(self, text: str) -> None:
        try:
            await self._send_text(text)
        except Exception as e:  # the socket is gone: the stream handler ends the call
            log.debug("send to twilio failed", **kv(call=self.call_sid, error=type(e).__name__))

    async def _played(self, heard: Heard) -> None:
        await self._control(
            Played(
                call_sid=self.call_sid,
                turn=heard.turn,
                seq=heard.seq,
                heard_text=heard.text,
                complete=heard.complete,
            )
        )

    async def _control(self, msg: ControlOut) -> None:
        try:
            hdrs = with_trace(None, self.trace)
            await self._nc.publish(subjects.control(self.call_sid), msg.to_bytes(), headers=hdrs)
        except Exception as e:
            log.warning("control publish failed", **kv(call=self.call_sid, error=type(e).__name__))

    async def _event_named(self, name: str, *, turn: int | None = None, **data: Any) -> None:
        ev = event(call_sid=self.call_sid, service=SERVICE, name=name, turn=turn, **data)
        await self._publish_event(ev)

    async def _publish_event(self, ev: Event) -> None:
        try:
            await self._nc.publish(subjects.events(self.call_sid), ev.to_bytes())
        except Exception as e:  # events are best effort
            log.debug("event not published", **kv(error=type(e).__name__))
