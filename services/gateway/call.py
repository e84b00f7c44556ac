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
from services.gateway.bargein import BargeInDetector, VadPool
from services.gateway.playback import (
    FirstAudio,
    Heard,
    PlaybackQueue,
    SendMark,
    SendMedia,
    Skipped,
)
from shared import headers as H
from shared import subjects
from shared.logging import kv
from shared.messages import (
    CallEnded,
    CallStarted,
    Dtmf,
    Hangup,
    Interrupt,
    Played,
    Transfer,
    event,
    parse_control,
    parse_reply,
)
from shared.metrics import BAD_MESSAGES, FRAMES, FRAMES_DROPPED, STAGE_LATENCY
from shared.settings import Settings
from shared.twilio import clear_message, mark_message, media_message

log = logging.getLogger(__name__)

SERVICE = "gateway"
HANGUP_IDLE_S = 2.0  # hang up this long after a Hangup once nothing of its turn is pending
HANGUP_MAX_WAIT_S = 60.0  # and never hold a call open longer than this for a hangup

_FRAMES_OUT = FRAMES.labels(SERVICE, "out")
_DROPPED_LATE = FRAMES_DROPPED.labels(SERVICE, "late")

ControlOut = CallStarted | CallEnded | Interrupt | Played | Dtmf
Send = Callable[[str], Awaitable[None]]
Close = Callable[[], Awaitable[None]]


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
        self.asr = AsrLink(nc=nc, call_sid=call_sid, gateway_id=gateway_id, event=self._event_named)
        self._bargein = (
            BargeInDetector(
                pool=vad_pool,
                threshold=settings.vad_threshold,
                min_speech_ms=settings.min_speech_ms,
            )
            if vad_pool is not None
            else None
        )
        self._subs: list[Subscription] = []
        self._wake = asyncio.Event()
        self._player: asyncio.Task[None] | None = None
        self._hangup_task: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self._ended = False
        self._closing = False
        self.end_reason = "stop"
        self.interrupts = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to the call's subjects, announce it, start claiming ASR and playing."""
        nc = self._nc
        self._subs = [
            await nc.subscribe(subjects.audio_out(self.call_sid), cb=self._on_audio),
            await nc.subscribe(subjects.reply(self.call_sid), cb=self._on_reply),
            await nc.subscribe(subjects.control(self.call_sid), cb=self._on_control),
        ]
        await self._control(
            CallStarted(
                call_sid=self.call_sid,
                stream_sid=self.stream_sid,
                gateway_id=self._gateway_id,
                parameters=self._parameters,
            )
        )
        await self._event_named("call.started", gateway=self._gateway_id)
        await self.asr.start()
        self._player = asyncio.create_task(self._play(), name=f"player-{id(self):x}")

    async def end(self, reason: str | None = None) -> None:
        """The stream is over: announce it, stop every task and subscription (idempotent)."""
        if self._ended:
            return
        self._ended = True
        if reason is not None and not self._closing:
            self.end_reason = reason
        for task in (self._player, self._hangup_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        await self.asr.close()
        if self._bargein is not None:
            self._bargein.stop()
        duration = round(time.monotonic() - self._started_at, 3)
        log.info("call ended", **kv(call=self.call_sid, reason=self.end_reason, seconds=duration))
        await self._control(CallEnded(call_sid=self.call_sid, reason=self.end_reason))
        await self._event_named("call.ended", reason=self.end_reason, duration_s=duration)

    # ------------------------------------------------------------------ from Twilio

    async def on_media(self, frame: bytes, seq: str, ts: str) -> None:
        """Caller audio (hot path: one call per 20 ms)."""
        await self.asr.send(frame, seq, ts)
        det = self._bargein
        if det is None:
            return
        now = time.monotonic()
        if not self.playback.is_playing(now):
            if det.active:
                det.stop()
            return
        if await det.feed(frame):
            await self.barge_in()

    async def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""
        try:
            msg = Dtmf(call_sid=self.call_sid, digit=digit)
        except ValidationError:
            BAD_MESSAGES.labels(SERVICE, "twilio").inc()
            return
        await self._control(msg)

    async def on_mark(self, name: str) -> None:
        """Twilio played everything up to mark ``name``."""
        heard = self.playback.on_mark(name)
        if heard is not None:
            await self._played(heard)
        self._wake.set()  # a pending hangup may be waiting for this mark

    # ------------------------------------------------------------------ barge-in

    async def barge_in(self) -> None:
        """The caller talks over the agent: cut the audio now, then tell the bus."""
        now = time.monotonic()
        turn = self.playback.playing_turn(now)
        if turn is None:
            return
        await self._interrupt(turn, now, publish=True)

    async def _interrupt(self, turn: int, now: float, *, publish: bool) -> None:
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
        )
        self._wake.set()

    # ------------------------------------------------------------------ from the bus

    async def _on_audio(self, msg: Msg) -> None:
        try:
            hdrs = msg.headers or {}
            turn, seq = int(hdrs[H.TURN]), int(hdrs[H.SEG])
            chunk = int(hdrs.get(H.CHUNK, "0"))
            last = hdrs.get(H.LAST) == "1"
        except (KeyError, ValueError):
            BAD_MESSAGES.labels(SERVICE, "audio_out").inc()
            return
        if turn < 0 or seq < 0 or chunk < 0:
            BAD_MESSAGES.labels(SERVICE, "audio_out").inc()
            return
        ok = self.playback.add_chunk(
            turn=turn, seq=seq, chunk=chunk, data=msg.data, last=last, now=time.monotonic()
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
                # Transfer through Twilio's REST API comes later: for now, end the stream.
                log.warning("transfer not implemented; hanging up", **kv(call=self.call_sid))
                self.request_close(after_turn=ctl.after_turn, reason="transfer")
        except Exception:
            log.exception("control handling failed", **kv(call=self.call_sid))

    # ------------------------------------------------------------------ hangup

    def request_close(self, *, after_turn: int | None, reason: str) -> None:
        """End the call once ``after_turn`` has been heard (now if None or already played)."""
        if self._closing or self._ended:
            return
        if self._hangup_task is not None:
            self._hangup_task.cancel()
        self._hangup_task = asyncio.create_task(self._close_after(after_turn, reason))

    async def _close_after(self, after_turn: int | None, reason: str) -> None:
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
        self._closing = True
        self.end_reason = reason
        await self._event_named("call.hangup", reason=reason, after_turn=after_turn)
        await self._close_stream()

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
        data: dict[str, Any] = {"seq": action.seq}
        if action.speech_ended_at is not None:
            latency = max(0.0, time.time() - action.speech_ended_at)
            STAGE_LATENCY.labels(SERVICE, "voice_to_voice").observe(latency)
            data["voice_to_voice_ms"] = round(latency * 1000, 1)
        await self._event_named("turn.first_audio", turn=action.turn, **data)

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
            await self._nc.publish(subjects.control(self.call_sid), msg.to_bytes())
        except Exception as e:
            log.warning("control publish failed", **kv(call=self.call_sid, error=type(e).__name__))

    async def _event_named(self, name: str, *, turn: int | None = None, **data: Any) -> None:
        ev = event(call_sid=self.call_sid, service=SERVICE, name=name, turn=turn, **data)
        try:
            await self._nc.publish(subjects.events(self.call_sid), ev.to_bytes())
        except Exception as e:  # events are best effort
            log.debug("event not published", **kv(error=type(e).__name__))
