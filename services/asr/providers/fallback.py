"""A cloud recognizer with the local one behind it, for the calls the cloud one gives up on.

:class:`FallbackProvider` streams every call through its primary. When the primary gives up on
a call (a :class:`~shared.errors.ProviderError` after its own reconnects and retries), the
worker asks :meth:`FallbackProvider.take_over` for the recognizer that carries the rest of
that call: the fallback, built and warmed up on first need and shared by every call of the
process, or ``None`` when it cannot load (the worker then restarts the primary as usual).
The worker says so on the bus (``StageFailed`` once, the ``asr.fallback`` event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from services.asr.providers.base import AsrProvider, SpeechEvent
from shared.errors import ProviderError
from shared.logging import kv

log = logging.getLogger(__name__)


class FallbackProvider(AsrProvider):
    """``primary`` for every call; ``make_fallback()`` for the calls it failed."""

    def __init__(self, *, primary: AsrProvider, make_fallback: Callable[[], AsrProvider]) -> None:
        self.primary = primary
        # The worker's provider is still the primary: claims, transcripts and usage name it.
        self.name = primary.name
        self.default_max_calls = primary.default_max_calls
        self._make_fallback = make_fallback
        self._fallback: AsrProvider | None = None
        self._failed = False  # the fallback could not load: never try again
        self._lock = asyncio.Lock()

    def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        """The primary's stream of the call."""
        return self.primary.stream(audio)

    async def warm_up(self) -> None:
        """Warm up the primary (the fallback loads when a call first needs it)."""
        await self.primary.warm_up()

    async def aclose(self) -> None:
        """Close the primary, and the fallback if it was loaded."""
        await self.primary.aclose()
        if self._fallback is not None:
            await self._fallback.aclose()

    async def take_over(self, error: Exception) -> AsrProvider | None:
        """The recognizer for the rest of a call the primary failed with ``error``.

        ``None`` when the failure is not the provider's (a bug: restart the primary) or when
        the fallback is not installed or does not load.
        """
        if not isinstance(error, ProviderError):
            return None
        async with self._lock:
            if self._fallback is None and not self._failed:
                try:
                    fallback = self._make_fallback()
                    await fallback.warm_up()
                except Exception as e:  # the 'local' extra is missing or its model is broken
                    self._failed = True
                    log.error("no local recognizer to fall back to", **kv(error=str(e)))
                    return None
                self._fallback = fallback
            return self._fallback
