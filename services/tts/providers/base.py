"""The TTS provider interface: text of one sentence in, 8 kHz mu-law out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from shared.audio import FRAME_BYTES

# Providers yield audio in chunks of at most this size (160 ms of 8 kHz mu-law, 8 Twilio frames):
# small enough to start playback early and to stop promptly on barge-in, large enough that a
# segment is a handful of bus messages.
CHUNK_BYTES = FRAME_BYTES * 8


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
