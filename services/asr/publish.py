"""Recognizer events to bus messages: speech started/stopped, transcripts, events, usage.

One :class:`SpeechPublisher` per worker. It maps a recognizer's stream positions to call
positions (:class:`~services.asr.utterances.AudioClock`), numbers utterances
(:class:`~services.asr.utterances.UtteranceTracker`) and adds the latency fields; every
publish is best effort (a lost connection is logged, never raised).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from services.asr.claims import HeldCall
from services.asr.providers.base import SpeechEvent
from services.asr.utterances import AudioClock, Utterance
from shared import subjects
from shared.logging import kv
from shared.messages import SpeechStarted, SpeechStopped, Transcript, event
from shared.metrics import STAGE_LATENCY
from shared.settings import Settings
from shared.telemetry import start_span, with_trace
from shared.usage import Usage, usage_event

log = logging.getLogger(__name__)

SERVICE = "asr"


class SpeechPublisher:
    """Publishes what the recognizers of one worker heard, with timings."""

    def __init__(self, *, settings: Settings, provider: str, nc: Callable[[], NATS]) -> None:
        self._settings = settings
        self._provider = provider  # the worker's provider: transcripts and usage name it
        self._nc = nc

    async def on_speech(self, call: HeldCall, ev: SpeechEvent) -> None:
        """Publish one recognizer event as its bus message, with timings."""
        u = call.tracker.on(ev.kind)
        clock = call.clock
        sid = call.sid
        start_ms = ev.speech_start_ms if ev.speech_start_ms is not None else u.start_ms
        if ev.kind == "speech_started":
            u.start_ms = start_ms if start_ms is not None else ev.audio_ms
            audio_ms = clock.call_ms(ev.audio_ms)
            msg = SpeechStarted(call_sid=sid, utterance_id=u.id, audio_ms=audio_ms)
            await self.publish(subjects.transcript(sid), msg.to_bytes())
            await self.event(sid, "asr.speech_started", utterance_id=u.id, audio_ms=audio_ms)
        elif ev.kind == "speech_stopped":
            _mark_end(u, clock, ev.audio_ms)
            speech_ms = max(0, ev.audio_ms - start_ms) if start_ms is not None else 0
            stopped = SpeechStopped(
                call_sid=sid,
                utterance_id=u.id,
                audio_ms=clock.call_ms(ev.audio_ms),
                speech_ms=speech_ms,
            )
            await self.publish(subjects.transcript(sid), stopped.to_bytes())
            endpointing = round(u.endpointing_ms or 0.0, 1)
            STAGE_LATENCY.labels(SERVICE, "endpointing").observe(endpointing / 1000)
            await self.event(
                sid,
                "asr.speech_stopped",
                utterance_id=u.id,
                speech_ms=speech_ms,
                endpointing_ms=endpointing,
            )
        else:
            await self._on_text(call, u, ev, start_ms)

    async def _on_text(
        self, call: HeldCall, u: Utterance, ev: SpeechEvent, start_ms: int | None
    ) -> None:
        clock = call.clock
        final = ev.kind == "final"
        end_ms = ev.speech_end_ms if ev.speech_end_ms is not None else ev.audio_ms
        asr_ms: float | None = None
        if final:
            if u.stopped_perf is None:  # final before (or without) a stop
                _mark_end(u, clock, end_ms)
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
            continues=(
                call.last_final_id
                if final and ev.end_of_turn is not None and ev.end_of_turn.continues
                else None
            ),
        )
        if not final:
            await self.publish(subjects.transcript(call.sid), msg.to_bytes())
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
            provider=self._provider,
        )
        span.end()
        hdrs = with_trace(None, span)
        await self.publish(subjects.transcript(call.sid), msg.to_bytes(), headers=hdrs)
        assert asr_ms is not None
        STAGE_LATENCY.labels(SERVICE, "asr_final").observe(asr_ms / 1000)
        log.info(
            "utterance final",
            **kv(call=call.sid, utterance_id=u.id, asr_ms=asr_ms, text=ev.text),
        )
        await self.event(
            call.sid,
            "asr.final",
            utterance_id=u.id,
            asr_ms=asr_ms,
            endpointing_ms=msg.endpointing_ms,
            speech_ms=(end_ms - start_ms) if start_ms is not None else None,
            words=len(ev.text.split()),
            empty=not ev.text.strip(),
            confidence=ev.confidence,
            provider=self._provider,
        )
        if ev.text.strip():
            call.last_final_id = u.id
        eot = ev.end_of_turn
        if eot is not None:  # why the turn ended, for an engineer tailing the call
            await self.event(
                call.sid,
                "end_of_turn",
                utterance_id=u.id,
                reason=eot.reason,
                wait_ms=eot.wait_ms,
                pause_ms=eot.pause_ms,
                segments=eot.segments,
                continues=msg.continues,
            )

    async def usage(self, call: HeldCall) -> None:
        """The call's audio on the recognizer that took it (shared.usage), for its cost."""
        name = self._provider
        model = self._settings.deepgram_model if name == "deepgram" else ""
        usage = Usage(
            stage="asr",
            provider=name,
            model=model,
            audio_s=call.clock.total_ms / 1000,
            cpu_s=round(call.cpu.seconds, 4),
        )
        ev = usage_event(call_sid=call.sid, service=SERVICE, usage=usage)
        await self.publish(subjects.events(call.sid), ev.to_bytes())

    async def event(self, call_sid: str, name: str, **data: Any) -> None:
        """One ``events`` message of the call."""
        ev = event(call_sid=call_sid, service=SERVICE, name=name, **data)
        await self.publish(subjects.events(call_sid), ev.to_bytes())

    async def publish(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None
    ) -> None:
        """Publish, logging (not raising) a failure: the call goes on without it."""
        try:
            await self._nc().publish(subject, data, headers=headers)
        except Exception as e:
            log.warning("publish failed", **kv(error=type(e).__name__))


def _mark_end(u: Utterance, clock: AudioClock, end_stream_ms: int) -> None:
    u.stopped_perf = time.perf_counter()
    u.endpointing_ms = clock.lag_ms(end_stream_ms)
    u.speech_ended_at = clock.wall_at(end_stream_ms)
