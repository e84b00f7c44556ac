"""ElevenLabsTts through the official SDK against the local fake (real HTTP, no internet)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest

from devkit.fakes.elevenlabs import FakeElevenLabs
from services.tts.providers.elevenlabs import ElevenLabsTts
from shared.audio import FRAME_BYTES, duration_ms, ulaw_to_float
from shared.backoff import stream_with_retries
from shared.errors import ProviderAuthError, ProviderError, ProviderTimeout
from shared.settings import Settings

KEY = "fake-key-123"
SENTENCE = "Your appointment is confirmed for Tuesday morning."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeElevenLabs]:
    with FakeElevenLabs(api_key=KEY, engine="espeak") as f:
        yield f


@pytest.fixture
def server(fake: FakeElevenLabs) -> Iterator[FakeElevenLabs]:
    fake.reset()
    yield fake
    fake.reset()


def _settings(fake: FakeElevenLabs, **over: object) -> Settings:
    base: dict[str, object] = {
        "elevenlabs_base_url": fake.base_url,
        "elevenlabs_api_key": KEY,
        "provider_timeout_s": 1.0,
    }
    return Settings(**(base | over))  # type: ignore[arg-type]


@pytest.fixture
async def tts(server: FakeElevenLabs) -> AsyncIterator[ElevenLabsTts]:
    provider = ElevenLabsTts(settings=_settings(server))
    yield provider
    await provider.aclose()


async def _collect(tts: ElevenLabsTts, text: str) -> list[bytes]:
    return [c async for c in tts.synthesize(text)]


def _retrying(tts: ElevenLabsTts, text: str) -> AsyncIterator[bytes]:
    # The worker's policy: retry until the first audio, inside a deadline.
    return stream_with_retries(
        lambda: tts.synthesize(text),
        service="tts",
        provider=tts.name,
        attempts=3,
        deadline_s=6.0,
        first_item_timeout_s=2.0,
    )


async def test_speaks_the_sentence_as_twilio_ready_mulaw(
    tts: ElevenLabsTts, server: FakeElevenLabs
) -> None:
    chunks = await _collect(tts, SENTENCE)
    audio = b"".join(chunks)
    assert chunks and all(len(c) % FRAME_BYTES == 0 for c in chunks)
    assert len(chunks[0]) < len(chunks[1])  # small first chunk: playback starts early
    # A sentence of eight words lasts seconds, not milliseconds or minutes.
    assert 1500 < duration_ms(audio) < 8000
    samples = ulaw_to_float(audio)
    assert float(np.sqrt(np.mean(samples**2))) > 0.02  # speech, not silence
    assert audio[:4] != b"RIFF"  # raw, no WAV header
    (req,) = server.requests
    assert req.voice_id == tts.voice and req.key_ok
    assert req.query["output_format"] == "ulaw_8000"
    assert req.body["text"] == SENTENCE and req.body["model_id"] == "eleven_flash_v2_5"


async def test_sdk_lists_the_fakes_voices(tts: ElevenLabsTts) -> None:
    await tts.warm_up()  # GET /v1/voices through the SDK, parsed into its models
    voices = await tts._client.voices.get_all()
    assert tts.voice in {v.voice_id for v in voices.voices}


async def test_refused_key_fails_fast_without_retry(
    tts: ElevenLabsTts, server: FakeElevenLabs
) -> None:
    server.inject("401", times=-1)
    start = time.monotonic()
    with pytest.raises(ProviderAuthError):
        async for _ in _retrying(tts, SENTENCE):
            pass
    assert time.monotonic() - start < 1.0
    assert len(server.requests) == 1


async def test_wrong_key_is_an_auth_error(server: FakeElevenLabs) -> None:
    provider = ElevenLabsTts(settings=_settings(server, elevenlabs_api_key="wrong"))
    try:
        with pytest.raises(ProviderAuthError) as info:
            await _collect(provider, SENTENCE)
        assert info.value.status == 401
    finally:
        await provider.aclose()


async def test_rate_limit_waits_retry_after_then_succeeds(
    tts: ElevenLabsTts, server: FakeElevenLabs
) -> None:
    server.inject("429", times=1, retry_after_s=0.5)
    start = time.monotonic()
    audio = b"".join([c async for c in _retrying(tts, SENTENCE)])
    assert time.monotonic() - start >= 0.5  # honoured the server's Retry-After
    assert duration_ms(audio) > 1500
    assert [r.fault for r in server.requests] == ["429", None]


async def test_server_error_is_retried(tts: ElevenLabsTts, server: FakeElevenLabs) -> None:
    server.inject("500", times=2)
    audio = b"".join([c async for c in _retrying(tts, SENTENCE)])
    assert duration_ms(audio) > 1500
    assert [r.fault for r in server.requests] == ["500", "500", None]


async def test_persistent_server_error_gives_up_inside_the_deadline(
    tts: ElevenLabsTts, server: FakeElevenLabs
) -> None:
    server.inject("500", times=-1)
    start = time.monotonic()
    with pytest.raises(ProviderError) as info:
        async for _ in _retrying(tts, SENTENCE):
            pass
    assert info.value.status == 500
    assert time.monotonic() - start < 6.0 and len(server.requests) == 3


async def test_hang_is_a_timeout_within_the_deadline(
    tts: ElevenLabsTts, server: FakeElevenLabs
) -> None:
    server.inject("hang", times=-1, hang_s=20)
    start = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await _collect(tts, SENTENCE)
    assert time.monotonic() - start < 2.0  # PROVIDER_TIMEOUT_S=1 plus slack


async def test_hang_then_recovery_through_retries(
    tts: ElevenLabsTts, server: FakeElevenLabs
) -> None:
    server.inject("hang", times=1, hang_s=20)
    start = time.monotonic()
    audio = b"".join([c async for c in _retrying(tts, SENTENCE)])
    assert duration_ms(audio) > 1500 and time.monotonic() - start < 4.0


async def test_connection_cut_mid_stream_errors_after_partial_audio(
    tts: ElevenLabsTts, server: FakeElevenLabs
) -> None:
    server.inject("cut", times=1, cut_after_bytes=4000)
    got: list[bytes] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in _retrying(tts, SENTENCE):
            got.append(chunk)
    assert info.value.retryable and not isinstance(info.value, ProviderTimeout)
    assert 0 < len(b"".join(got)) <= 4000  # some audio played; no replay of it
    assert len(server.requests) == 1


async def test_fake_runs_standalone_with_faults_from_flags() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--port", str(port), "--api-key", KEY, "--fault", "429:1", "--retry-after", "0.2"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devkit.fakes.elevenlabs",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    settings = Settings(elevenlabs_base_url=f"http://127.0.0.1:{port}", elevenlabs_api_key=KEY)
    provider = ElevenLabsTts(settings=settings)
    try:
        assert proc.stdout is not None
        assert b"fake ElevenLabs on" in await asyncio.wait_for(proc.stdout.readline(), 20)
        for _ in range(100):  # the line is printed just before the socket is bound
            try:
                await provider._client.voices.get_all()
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        audio = b"".join([c async for c in _retrying(provider, SENTENCE)])
        assert duration_ms(audio) > 1500
    finally:
        await provider.aclose()
        proc.terminate()
        # uvicorn re-raises SIGTERM after its graceful shutdown
        assert await asyncio.wait_for(proc.wait(), 10) in (0, -15)
