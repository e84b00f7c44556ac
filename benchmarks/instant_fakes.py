"""The cloud fakes with instant answers, in one process, for ``voiceagent bench --mode instant``.

- Deepgram (:class:`~devkit.fakes.deepgram.FakeDeepgram`) with a scripted recognizer: an
  energy detector that reports speech start at once, and a final with a fixed transcript as
  soon as the endpointing silence has passed (no whisper: no recognition time).
- OpenAI (:class:`~devkit.fakes.openai.FakeOpenAI`) with no delay between chunks.
- ElevenLabs (:class:`~devkit.fakes.elevenlabs.FakeElevenLabs`) on espeak-ng (~3 ms per
  sentence).

What remains of voice-to-voice latency is endpointing (caller silence, by design) plus our own
overhead: the bus hops, the workers and the gateway. Run as
``python -m benchmarks.instant_fakes``: prints one JSON line with the three URLs, serves until
SIGTERM or stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator

import numpy as np

from services.asr.providers.base import AsrProvider, SpeechEvent
from shared.audio import FRAME_MS, ulaw_to_float

API_KEY = "bench-key"
SCRIPTED_TEXT = "What are your opening hours?"
SPEECH_RMS = 0.01  # about -40 dBFS: the simulator's speech/silence threshold


def is_speech(chunk: bytes) -> bool:
    """The chunk has speech energy."""
    x = ulaw_to_float(chunk)
    return bool(x.size) and float(np.sqrt(np.mean(x * x))) >= SPEECH_RMS


class ScriptedAsr(AsrProvider):
    """Energy endpointing and a fixed transcript: recognition that costs nothing."""

    name = "scripted"

    def __init__(self, *, endpointing_ms: int, text: str = SCRIPTED_TEXT) -> None:
        self.endpointing_ms = endpointing_ms
        self.text = text

    async def stream(self, audio: AsyncIterator[bytes]) -> AsyncIterator[SpeechEvent]:
        """speech_started on the first loud chunk; final after ``endpointing_ms`` of silence."""
        pos = 0.0  # ms of audio consumed
        start: int | None = None
        last_speech = 0.0
        async for chunk in audio:
            ms = len(chunk) * 1000 / 8000
            if is_speech(chunk):
                if start is None:
                    start = int(pos)
                    yield SpeechEvent(kind="speech_started", audio_ms=start)
                last_speech = pos + ms
            pos += ms
            if start is not None and pos - last_speech >= self.endpointing_ms:
                end = int(last_speech)
                yield SpeechEvent(
                    kind="final",
                    audio_ms=int(pos),
                    text=self.text,
                    confidence=0.99,
                    speech_start_ms=start,
                    speech_end_ms=end,
                )
                start = None


def scripted_recognizers(endpointing_ms: int) -> AsrProvider:
    """The :class:`~devkit.fakes.deepgram.FakeDeepgram` recognizer factory."""
    return ScriptedAsr(endpointing_ms=max(endpointing_ms, FRAME_MS))


async def serve() -> None:
    """Start the three fakes; print their URLs as one JSON line; serve until told to stop."""
    from devkit.fakes.deepgram import FakeDeepgram
    from devkit.fakes.elevenlabs import FakeElevenLabs
    from devkit.fakes.openai import FakeOpenAI

    deepgram = FakeDeepgram(
        api_key=API_KEY, recognizers=scripted_recognizers, default_endpointing_ms=0
    )
    eleven = FakeElevenLabs(api_key=API_KEY, engine="espeak")
    openai = FakeOpenAI(api_key=API_KEY, chunk_delay_s=0.0)
    deepgram.start()
    eleven.start()
    await openai.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the bench went away: stdin closed
    urls = {"deepgram": deepgram.url, "openai": openai.base_url, "elevenlabs": eleven.base_url}
    print(json.dumps(urls), flush=True)
    try:
        await stop.wait()
    finally:
        await openai.stop()
        eleven.stop()
        deepgram.stop()


def fake_env(urls: dict[str, str]) -> dict[str, str]:
    """Service environment that points every provider at the fakes."""
    return {
        "ASR_PROVIDER": "deepgram",
        "DEEPGRAM_API_KEY": API_KEY,
        "DEEPGRAM_URL": urls["deepgram"],
        "AGENT_PROVIDER": "openai",
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": urls["openai"],
        "TTS_PROVIDER": "elevenlabs",
        "ELEVENLABS_API_KEY": API_KEY,
        "ELEVENLABS_BASE_URL": urls["elevenlabs"],
    }


if __name__ == "__main__":
    asyncio.run(serve())
