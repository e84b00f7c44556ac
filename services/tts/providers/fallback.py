"""A provider with a fallback for the sentences it fails before their first audio.

:class:`FallbackProvider` speaks each sentence with its primary (a cloud voice, or Piper) and,
when that fails before any audio came out, with its fallback (espeak-ng, which needs no
network or model). A sentence that fails after some of its audio was sent is not spoken
again: replaying it would repeat words the caller already heard. :meth:`FallbackProvider.speak`
says which provider is speaking (:attr:`Speech.provider`), for the worker's events and usage.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from services.tts.providers.base import TtsProvider

#: Told of the primary's failure (provider name, error) before the fallback takes over.
OnFailure = Callable[[str, Exception], None]


class Speech:
    """One sentence's audio: the primary's, or the fallback's when the primary failed first."""

    def __init__(
        self,
        *,
        text: str,
        primary: AsyncIterator[bytes],
        primary_name: str,
        fallback: TtsProvider | None,
        on_failure: OnFailure | None,
    ) -> None:
        self.provider = primary_name  # who is speaking (the fallback once it took over)
        self.fell_back = False
        self._text = text
        self._primary = primary
        self._fallback = fallback
        self._on_failure = on_failure
        self._chunks = self._run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def _run(self) -> AsyncIterator[bytes]:
        audio_bytes = 0
        try:
            async for chunk in self._primary:
                audio_bytes += len(chunk)
                yield chunk
            return
        except Exception as e:
            if self._on_failure is not None:
                self._on_failure(self.provider, e)
        finally:
            aclose = getattr(self._primary, "aclose", None)  # an async generator's: close it now
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        # Replaying the sentence after some of it was sent would repeat words.
        if audio_bytes or self._fallback is None:
            return
        self.provider, self.fell_back = self._fallback.name, True
        async for chunk in self._fallback.synthesize(self._text):
            yield chunk


class FallbackProvider(TtsProvider):
    """``primary``, with ``fallback`` speaking the sentences it fails before their first audio."""

    def __init__(self, *, primary: TtsProvider, fallback: TtsProvider | None) -> None:
        self.primary = primary
        self.fallback = fallback if fallback is not primary else None
        self.name = primary.name

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """The audio of ``text`` (see :meth:`speak`)."""
        return aiter(self.speak(text))

    def speak(
        self,
        text: str,
        *,
        first: AsyncIterator[bytes] | None = None,
        on_failure: OnFailure | None = None,
    ) -> Speech:
        """One sentence. ``first``: the primary's audio as the caller wants it (retried, from
        a cache...), by default its plain synthesis; ``on_failure`` is told when it fails."""
        return Speech(
            text=text,
            primary=first if first is not None else self.primary.synthesize(text),
            primary_name=self.primary.name,
            fallback=self.fallback,
            on_failure=on_failure,
        )

    async def warm_up(self) -> None:
        """Warm up the primary (the worker warms the fallback up when it selects it)."""
        await self.primary.warm_up()

    async def aclose(self) -> None:
        """Close the primary (the fallback is closed by whoever opened it)."""
        await self.primary.aclose()
