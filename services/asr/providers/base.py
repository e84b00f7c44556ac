"""The ASR provider interface: one streaming recognizer per call."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

SpeechKind = Literal["speech_started", "speech_stopped", "interim", "final"]


class CpuMeter:
    """CPU seconds one call's recognition cost on this machine (embedded engines add to it
    from any thread; the call's usage report reads it, :mod:`shared.usage`)."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._seconds += max(0.0, seconds)

    @property
    def seconds(self) -> float:
        return self._seconds


#: The meter of the call being recognized, set by the worker around :meth:`AsrProvider.stream`
#: (a context variable, so the one-method provider interface stays as it is; cloud providers
#: leave it alone: their cost is the audio they were sent).
CALL_CPU: ContextVar[CpuMeter | None] = ContextVar("asr_call_cpu", default=None)


@dataclass(frozen=True, kw_only=True)
class EndOfTurn:
    """Why a turn ended (the ``end_of_turn`` event of the call): set on a turn's final."""

    reason: str  # "complete", "trailing word 'for'", "not_speech", "stream_end", ...
    wait_ms: int  # the pause the words needed before the turn could end
    pause_ms: int  # the pause when it ended
    segments: int  # recognizer segments joined into this turn
    continues: bool  # it goes on from the previous turn (whose reply is withdrawn)


@dataclass(frozen=True, kw_only=True)
class SpeechEvent:
    """What a recognizer noticed in the caller's audio.

    ``audio_ms`` is the position in the call's inbound audio (ms since the stream began) where
    the event happened: the speech onset for ``speech_started``, the end of speech otherwise.
    """

    kind: SpeechKind
    audio_ms: int
    text: str = ""
    confidence: float | None = None
    speech_start_ms: int | None = None
    speech_end_ms: int | None = None
    end_of_turn: EndOfTurn | None = None  # on a final: why the turn ended (the turn gate's)


class AsrProvider(ABC):
    """A speech recognizer. Implement :meth:`stream`; the worker does the rest."""

    name: str = "asr"
    #: calls one worker process holds when ``ASR_MAX_CALLS`` is 0 (CPU-bound providers: fewer)
    default_max_calls: int = 200

    @abstractmethod
    def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        """Recognize one call.

        ``audio`` yields 8 kHz mu-law chunks (normally 20 ms) and ends when the call ends.
        Yield events as they happen; finish when ``audio`` is exhausted and all speech is
        flushed. Raise :class:`shared.errors.ProviderError` for failures the worker should
        report; a provider that can reconnect on its own should do so before raising.
        """

    async def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Load models / open pools before the first call (optional)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources at shutdown (optional)."""
