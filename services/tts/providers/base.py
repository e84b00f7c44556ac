"""The TTS provider interface: text of one sentence in, 8 kHz mu-law out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextvars import ContextVar

from shared.audio import FRAME_BYTES

# Providers yield audio in chunks of at most this size (160 ms of 8 kHz mu-law, 8 Twilio frames):
# small enough to start playback early and to stop promptly on barge-in, large enough that a
# segment is a handful of bus messages.
CHUNK_BYTES = FRAME_BYTES * 8

#: When the audio of the segment being synthesized starts to be needed (``time.monotonic()``),
#: set by the worker around :meth:`TtsProvider.synthesize`: "now" for a reply's first segment,
#: later for one that plays after the audio already sent (a context variable, so the one-method
#: interface stays as it is). Providers that compute locally order their work by it.
NEEDED_AT: ContextVar[float | None] = ContextVar("tts_needed_at", default=None)


class TtsProvider(ABC):
    """A speech synthesizer. Implement :meth:`synthesize`; the worker does the rest."""

    name: str = "tts"

    @abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield 8 kHz mu-law audio of ``text`` (no header), in chunks, as soon as available.

        Raise :class:`shared.errors.ProviderError` on failure.
        """

    async def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Load models / open connections before the first segment (optional)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources at shutdown (optional)."""
