"""A recognizer that consumes audio and recognizes nothing: for capacity benchmarks.

``ASR_PROVIDER=null`` measures what one ASR worker process can take in (claims, raw audio
subscriptions, per-call queues, heartbeats) with the cost of recognition itself excluded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.asr.providers.base import AsrProvider, SpeechEvent


class NullAsr(AsrProvider):
    """Reads every chunk of a call and never reports speech."""

    name = "null"
    default_max_calls = 5000

    def __init__(self) -> None:
        self.chunks = 0

    async def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        """Drain ``audio`` until the call ends; yields nothing."""
        async for _chunk in audio:
            self.chunks += 1
        return
        yield  # pragma: no cover - makes this an async generator
