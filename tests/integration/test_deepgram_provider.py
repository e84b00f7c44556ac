"""DeepgramAsr through the official SDK against the local fake (real WebSocket, no internet).

The fake really recognizes the audio (our embedded whisper underneath), so these tests check
words a caller said, through every failure Deepgram's socket can show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from devkit.fakes.deepgram import FakeDeepgram
from services.asr.providers import deepgram as deepgram_mod
from services.asr.providers.base import SpeechEvent
from services.asr.providers.deepgram import DeepgramAsr
from services.asr.transcript_filter import normalize_words
from shared.audio import frames
from shared.errors import ProviderAuthError, ProviderError, ProviderTimeout
from shared.settings import Settings
from tests.conftest import _free_port
from tests.speech import silence_mulaw, synthesize_mulaw

pytestmark = pytest.mark.integration

KEY = "dg-test-key"
SHORT = "Can I speak to the pharmacy please?"
LONG = "My name is John Smith and I would like to book an appointment for next Tuesday morning."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeDeepgram]:
    with FakeDeepgram(api_key=KEY) as f:
        f.warm_up(600)  # load whisper before the first test's clock starts
        yield f


@pytest.fixture
def server(fake: FakeDeepgram) -> Iterator[FakeDeepgram]:
    fake.reset()
    yield fake
    fake.reset()


def settings(fake: FakeDeepgram, **over: object) -> Settings:
    base: dict[str, object] = {
        "deepgram_url": fake.url,
        "deepgram_api_key": KEY,
        "endpointing_ms": 600,
        "asr_stall_s": 2.5,
        "provider_timeout_s": 6.0,
    }
    return Settings(**(base | over))  # type: ignore[arg-type]


def utterance(text: str, *, lead_ms: int = 600, tail_ms: int = 1500) -> bytes:
    return silence_mulaw(lead_ms) + synthesize_mulaw(text) + silence_mulaw(tail_ms)


async def paced(audio: bytes, *, speed: float) -> AsyncIterator[bytes]:
    """Twilio-sized frames at ``speed`` x real time (1.0: a live caller)."""
    t0 = time.monotonic()
    for i, frame in enumerate(frames(audio)):
        due = t0 + i * 0.02 / speed
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        yield frame


async def recognize(asr: DeepgramAsr, audio: AsyncIterator[bytes]) -> list[SpeechEvent]:
    return [ev async for ev in asr.stream(audio)]


def finals(events: list[SpeechEvent]) -> list[str]:
    return [e.text for e in events if e.kind == "final" and e.text]


def heard(events: list[SpeechEvent], sentence: str, *, key: tuple[str, ...]) -> list[str]:
    """The final words, checked against what was said (Piper renders each run a little
    differently, so whisper may miss one filler word; the key words must be there)."""
    said = normalize_words(" ".join(finals(events)))
    expected = normalize_words(sentence)
    assert all(k in said for k in key), said
    assert len(set(expected) - set(said)) <= 1, said
    return said


async def test_a_caller_at_real_time_pace_gets_words_and_speech_events(
    server: FakeDeepgram,
) -> None:
    asr = DeepgramAsr(settings=settings(server))
    lead_ms = 600
    speech = synthesize_mulaw(SHORT)
    audio = silence_mulaw(lead_ms) + speech + silence_mulaw(1500)
    events = await asyncio.wait_for(recognize(asr, paced(audio, speed=1.0)), 30)

    kinds = [e.kind for e in events]
    assert kinds[0] == "speech_started"
    assert kinds.index("speech_stopped") < kinds.index("final")
    heard(events, SHORT, key=("speak", "pharmacy"))
    started = events[0]
    final = next(e for e in events if e.kind == "final")
    # Positions are in the call's audio: onset near the end of the lead silence, end of
    # speech near the end of the spoken words.
    assert abs(started.audio_ms - lead_ms) < 300
    speech_end = lead_ms + len(speech) // 8
    assert final.speech_end_ms is not None and abs(final.speech_end_ms - speech_end) < 400
    [conn] = server.connections
    assert conn.query == {
        "model": "nova-3",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": "300",  # ENDPOINTING_MIN_MS: our end-of-turn decision does the rest
        "utterance_end_ms": "1000",
        "vad_events": "true",
    }
    assert conn.key_ok and conn.close_stream and conn.audio_bytes == len(audio)


async def test_a_wrong_key_fails_fast_without_retrying(server: FakeDeepgram) -> None:
    asr = DeepgramAsr(settings=settings(server, deepgram_api_key="wrong"))
    t0 = time.monotonic()
    with pytest.raises(ProviderAuthError) as err:
        await recognize(asr, paced(silence_mulaw(3000), speed=1.0))
    assert time.monotonic() - t0 < 1.0
    assert err.value.status == 401 and not err.value.retryable
    assert len(server.connections) == 1
    with pytest.raises(ProviderAuthError):  # the worker's start-up check says it first
        await asr.warm_up()


async def test_warm_up_checks_the_key_and_tolerates_an_unreachable_deepgram(
    server: FakeDeepgram,
) -> None:
    await DeepgramAsr(settings=settings(server)).warm_up()
    [conn] = server.connections
    for _ in range(100):  # the fake's thread reads the CloseStream in its own time
        if conn.close_stream:
            break
        await asyncio.sleep(0.02)
    assert conn.key_ok and conn.close_stream and conn.audio_bytes == 0
    nowhere = Settings(deepgram_url=f"ws://127.0.0.1:{_free_port()}", deepgram_api_key=KEY)
    await DeepgramAsr(settings=nowhere).warm_up()  # logged, not raised: it may come back


async def test_rate_limited_then_served_after_retry_after(server: FakeDeepgram) -> None:
    server.inject("429", times=1, retry_after_s=0.6)
    asr = DeepgramAsr(settings=settings(server))
    t0 = time.monotonic()
    events = await recognize(asr, paced(utterance(SHORT), speed=4.0))
    assert [c.status for c in server.connections] == [429, 101]
    heard(events, SHORT, key=("speak", "pharmacy"))
    assert time.monotonic() - t0 >= 0.6  # it waited as told


async def test_server_errors_are_retried(server: FakeDeepgram) -> None:
    server.inject("500", times=2)
    asr = DeepgramAsr(settings=settings(server))
    events = await recognize(asr, paced(utterance(SHORT), speed=4.0))
    assert [c.status for c in server.connections] == [500, 500, 101]
    heard(events, SHORT, key=("speak", "pharmacy"))
    # Nothing was lost while refused: the audio held back went out once connected.
    assert server.connections[-1].audio_bytes == len(utterance(SHORT))


async def test_errors_past_the_deadline_end_the_stream(server: FakeDeepgram) -> None:
    server.inject("500", times=-1)
    asr = DeepgramAsr(settings=settings(server, provider_timeout_s=1.5))
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await recognize(asr, paced(silence_mulaw(10_000), speed=1.0))
    assert err.value.status == 500
    assert time.monotonic() - t0 < 1.5 + 0.5
    assert len(server.connections) >= 3  # retried with backoff meanwhile


async def test_a_hanging_server_times_out_within_the_deadline(server: FakeDeepgram) -> None:
    server.inject("hang", times=-1)
    deadline_s, stall_s = 3.0, 1.0
    asr = DeepgramAsr(settings=settings(server, provider_timeout_s=deadline_s, asr_stall_s=stall_s))
    t0 = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await recognize(asr, paced(utterance(LONG, tail_ms=10_000), speed=1.0))
    elapsed = time.monotonic() - t0
    assert stall_s <= elapsed < deadline_s + 1.0
    assert len(server.connections) >= 2  # it did try a fresh socket before giving up


async def test_a_cut_connection_reconnects_and_loses_no_words(server: FakeDeepgram) -> None:
    lead_ms = 500
    audio = utterance(LONG, lead_ms=lead_ms)
    cut_ms = lead_ms + 2000  # about "...Smith and I would like..." of the sentence
    server.inject("cut", times=1, cut_after_bytes=cut_ms * 8)
    asr = DeepgramAsr(settings=settings(server))
    events = await recognize(asr, paced(audio, speed=4.0))

    first, second = server.connections
    assert first.fault == "cut" and first.ended == "cut"
    # The second socket got the unfinalized audio again (from before the cut), then the rest.
    assert second.audio_bytes > len(audio) - cut_ms * 8
    said = normalize_words(" ".join(finals(events)))
    for word in ("john", "smith", "would", "like", "book", "appointment"):
        assert word in said, f"{word!r} lost around the cut: {said}"
    assert said.count("smith") == 1  # re-sent audio is not transcribed twice
    assert [e.kind for e in events].count("speech_started") == 1


async def test_a_pause_in_the_audio_keeps_the_socket_alive(
    server: FakeDeepgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deepgram closes a socket idle for 10 s; shrink both clocks to keep the test short.
    monkeypatch.setattr(deepgram_mod, "KEEPALIVE_S", 0.3)
    monkeypatch.setattr(server, "idle_timeout_s", 1.5)

    async def audio_with_a_gap() -> AsyncIterator[bytes]:
        async for f in paced(silence_mulaw(400), speed=4.0):
            yield f
        await asyncio.sleep(2.5)  # the gateway stalled: no frames for longer than the limit
        async for f in paced(utterance(SHORT), speed=4.0):
            yield f

    asr = DeepgramAsr(settings=settings(server))
    events = await recognize(asr, audio_with_a_gap())
    [conn] = server.connections
    assert conn.keep_alives >= 4 and conn.ended != "idle"
    heard(events, SHORT, key=("speak", "pharmacy"))
    assert conn.audio_bytes == len(silence_mulaw(400)) + len(utterance(SHORT))  # one socket


async def test_the_fake_flushes_on_finalize_for_the_sdks_own_socket(server: FakeDeepgram) -> None:
    from deepgram import AsyncDeepgramClient
    from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results

    client = AsyncDeepgramClient(
        api_key=KEY, environment=deepgram_mod.environment(settings(server))
    )
    got: list[object] = []
    async with client.listen.v1.connect(
        model="nova-3", encoding="mulaw", sample_rate=8000, channels=1, interim_results="true"
    ) as conn:
        # No pause after the words: only the Finalize can end the utterance.
        for piece in frames(silence_mulaw(300) + synthesize_mulaw(SHORT), size=1600):
            await conn.send_media(piece)
        await conn.send_keep_alive()
        await conn.send_finalize()
        async with asyncio.timeout(15):
            while not (isinstance(m := await conn.recv(), ListenV1Results) and m.from_finalize):
                got.append(m)
        flushed = m
        await conn.send_close_stream()
        async with asyncio.timeout(15):
            while not isinstance(last := await conn.recv(), ListenV1Metadata):
                got.append(last)
    assert flushed.is_final and "pharmacy" in flushed.channel.alternatives[0].transcript.lower()
    assert last.duration > 1.0
    [record] = server.connections
    assert record.keep_alives == 1 and record.finalizes == 1 and record.close_stream
