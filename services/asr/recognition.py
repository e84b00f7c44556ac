"""Each held call's recognizer: restarted when it fails (bounded), failed over when it gives up.

One call's recognizer failing is restarted a few times (with backoff; a recognizer that ran
:data:`STABLE_S` has its budget refilled), then the call is handed back to the gateway (which
re-claims it); other calls never notice. A provider with a fallback
(:mod:`services.asr.providers.fallback`) carries the call on with it instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.asr.claims import HeldCall
from services.asr.intake import recognizer_audio
from services.asr.providers.base import CALL_CPU, AsrProvider
from services.asr.providers.fallback import FallbackProvider
from services.asr.publish import SpeechPublisher
from shared import subjects
from shared.errors import ProviderError
from shared.logging import kv
from shared.messages import StageFailed
from shared.metrics import PROVIDER_ERRORS

log = logging.getLogger(__name__)

SERVICE = "asr"
MAX_RESTARTS = 3  # recognizer restarts per call before it is handed back to the gateway
RESTART_BACKOFF_S = 0.25
STABLE_S = 60.0  # a recognizer that ran this long has its restart budget refilled


class Recognition:
    """Runs the recognizers of one worker's calls, their events published in order."""

    def __init__(
        self,
        *,
        provider: AsrProvider,
        out: SpeechPublisher,
        give_back: Callable[[str], None],
    ) -> None:
        self._provider = provider
        self._out = out
        self._give_back = give_back  # releases a call whose recognizer keeps failing

    async def run(self, call: HeldCall) -> None:
        """One call's recognizer, restarted on failure (bounded), events published in order."""
        restarts = 0
        while True:
            recognizer = call.recognizer
            provider = recognizer.name
            failure: Exception | None = None
            started = time.monotonic()
            CALL_CPU.set(call.cpu)  # this call's task: the recognizer's CPU goes on its account
            try:
                audio = recognizer_audio(call.queue, call.clock)
                events = (
                    recognizer.stream(audio)
                    if call.turns is None
                    else call.turns.stream(recognizer.stream, audio)
                )
                async for ev in events:
                    await self._out.on_speech(call, ev)
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
                await self._out.event(
                    call.sid, "asr.error", provider=provider, error=type(e).__name__
                )
            if call.closing:
                return
            if isinstance(failure, ProviderError) and await self._fail_over(call, failure):
                restarts = 0
                continue
            if time.monotonic() - started > STABLE_S:
                restarts = 0
            if restarts >= MAX_RESTARTS:
                await self._give_up(call)
                return
            restarts += 1
            await asyncio.sleep(RESTART_BACKOFF_S * 2 ** (restarts - 1))

    async def _give_up(self, call: HeldCall) -> None:
        log.error("recognizer keeps failing; releasing the call", **kv(call=call.sid))
        if not call.stage_failed:  # the fallback path may have published it already
            failed = StageFailed(call_sid=call.sid, service=SERVICE, reason="recognizer failed")
            await self._out.publish(subjects.asr_control(call.sid), failed.to_bytes())
        await self._out.event(call.sid, "asr.failed", provider=self._provider.name)
        self._give_back(call.sid)

    async def _fail_over(self, call: HeldCall, error: ProviderError) -> bool:
        """The primary recognizer gave up on this call (after its own reconnects and retries).

        Publishes :class:`StageFailed` once (the agent apologizes out loud) and, when the
        provider's fallback takes over (:mod:`services.asr.providers.fallback`), carries on with
        it for the rest of the call (True). Without one, the usual restarts follow (False).
        """
        primary = self._provider
        if call.recognizer is not primary or not isinstance(primary, FallbackProvider):
            return False
        if not call.stage_failed:
            call.stage_failed = True
            reason = f"{primary.name}: {type(error).__name__}"
            failed = StageFailed(call_sid=call.sid, service=SERVICE, reason=reason)
            await self._out.publish(subjects.asr_control(call.sid), failed.to_bytes())
        fallback = await primary.take_over(error)
        if fallback is None or call.closing:
            return False
        call.recognizer = fallback
        log.warning(
            "asr falling back to the local recognizer",
            **kv(call=call.sid, failed=primary.name, error=type(error).__name__),
        )
        await self._out.event(call.sid, "asr.fallback", provider=fallback.name, failed=primary.name)
        return True
