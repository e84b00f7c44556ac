"""The embedded recognizer (Silero VAD + whisper tiny.en) on real synthesized speech.

Audio takes the caller's path: Piper speech -> 8 kHz mu-law -> 20 ms frames, as the gateway
publishes it. The model loads once for the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from services.asr.providers.base import SpeechEvent
from services.asr.providers.local import LocalAsr
from services.asr.transcript_filter import normalize_words
from services.asr.turntaking.end_of_turn import EndOfTurnPolicy
from services.asr.turntaking.turns import CallTurns
from shared.audio import frames, ulaw_to_float
from shared.settings import Settings
from tests.speech import noise_mulaw, silence_mulaw, synthesize_mulaw

BOOKING = "I would like to book an appointment for next Tuesday."
NAME = "My name is John Smith."


@pytest.fixture(scope="module")
async def asr() -> LocalAsr:
    provider = LocalAsr(settings=Settings(_env_file=None, endpointing_ms=600, min_speech_ms=200))
    await provider.warm_up()
    return provider


async def _feed(audio: bytes, *, frame_s: float = 0.0) -> AsyncIterator[bytes]:
    for frame in frames(audio):
        yield frame
        if frame_s:
            await asyncio.sleep(frame_s)


async def recognize(asr: LocalAsr, audio: bytes) -> list[SpeechEvent]:
    return [ev async for ev in asr.stream(_feed(audio))]


def speech_bounds_ms(mulaw: bytes) -> tuple[int, int]:
    """Where the synthesized speech really starts and ends (first/last loud sample)."""
    x = np.abs(ulaw_to_float(mulaw))
    loud = np.flatnonzero(x > 0.02)
    return int(loud[0] // 8), int(loud[-1] // 8)


def kinds(events: list[SpeechEvent]) -> list[str]:
    """The event kinds, interims aside (an early decode's words so far: see below)."""
    return [e.kind for e in events if e.kind != "interim"]


def settled(events: list[SpeechEvent]) -> list[SpeechEvent]:
    return [e for e in events if e.kind != "interim"]


async def test_final_transcript_has_the_words_and_plausible_timestamps(asr: LocalAsr) -> None:
    speech = synthesize_mulaw(BOOKING)
    onset, offset = speech_bounds_ms(speech)
    events = settled(await recognize(asr, silence_mulaw(500) + speech + silence_mulaw(1000)))

    assert kinds(events) == ["speech_started", "speech_stopped", "final"]
    started, stopped, final = events
    assert normalize_words(final.text) == normalize_words(BOOKING)
    assert final.confidence is not None and final.confidence > 0.5
    # Onset is timestamped where speech began, not where min_speech_ms confirmed it.
    assert abs(started.audio_ms - (500 + onset)) <= 120
    assert abs(stopped.audio_ms - (500 + offset)) <= 250
    assert final.speech_start_ms == started.audio_ms
    assert final.speech_end_ms == stopped.audio_ms


async def test_two_utterances_come_out_in_order(asr: LocalAsr) -> None:
    audio = (
        silence_mulaw(300)
        + synthesize_mulaw(BOOKING)
        + silence_mulaw(1200)
        + synthesize_mulaw(NAME)
        + silence_mulaw(800)
    )
    events = settled(await recognize(asr, audio))

    assert kinds(events) == ["speech_started", "speech_stopped", "final"] * 2
    first, second = events[2], events[5]
    assert normalize_words(first.text) == normalize_words(BOOKING)
    assert {"john", "smith"} <= set(normalize_words(second.text))
    assert events[3].audio_ms > events[1].audio_ms  # second onset after first end


async def test_a_pause_after_a_fragment_does_not_split_the_utterance(asr: LocalAsr) -> None:
    """The recognizer cuts at the short pause; the end-of-turn decision (as the worker runs it)
    keeps the turn open after "... for" and joins what follows: one transcript."""
    audio = (
        silence_mulaw(300)
        + synthesize_mulaw("I would like to book an appointment for")
        + silence_mulaw(900)
        + synthesize_mulaw("next Tuesday.")
        + silence_mulaw(1200)
    )
    turns = CallTurns(policy=EndOfTurnPolicy(min_wait_ms=300, max_wait_ms=2000), rejoin_ms=1500)
    # The gate's clock is the audio: feed it in real time, as on a call (faster, a loaded
    # machine's decode latency would be multiplied into audio time).
    events = [ev async for ev in turns.stream(asr.stream, _feed(audio, frame_s=0.02))]

    # The held fragment is published as an interim (a barge-in sees its words early).
    held = [e for e in events if e.kind == "interim"]
    events = [e for e in events if e.kind != "interim"]
    assert kinds(events) == ["speech_started", "speech_stopped", "final"]
    words = normalize_words(events[2].text)
    assert "appointment" in words and "tuesday" in words
    assert events[2].end_of_turn is not None and events[2].end_of_turn.segments == 2
    assert held and "appointment" in normalize_words(held[0].text)


def _decodes() -> int:
    from services.asr.whisper_engine import loaded_engine

    engine = loaded_engine()
    assert engine is not None
    return sum(engine.outcomes.values())


async def test_the_decode_started_at_the_pause_is_the_final(asr: LocalAsr) -> None:
    """ASR_EARLY_DECODE_MS: the words are decoded once the pause begins, and that decode is the
    utterance's final when the pause closes it (one decode, not two)."""
    audio = silence_mulaw(300) + synthesize_mulaw(NAME) + silence_mulaw(900)
    before = _decodes()
    events = await recognize(asr, audio)

    # Its words go out as an interim before the pause has closed the utterance.
    assert [e.kind for e in events] == ["speech_started", "interim", "speech_stopped", "final"]
    assert {"john", "smith"} <= set(normalize_words(events[3].text))
    assert events[1].text == events[3].text
    assert events[1].speech_end_ms == events[3].speech_end_ms
    assert _decodes() - before == 1


async def test_speech_resuming_after_the_early_decode_is_in_the_final(asr: LocalAsr) -> None:
    """A pause longer than the early decode but shorter than the segment's: the early decode is
    dropped and the final covers the words on both sides of the pause."""
    first, second = synthesize_mulaw("My name is"), synthesize_mulaw("John Smith.")
    # The voices' own leading and trailing silence cut off: the pause is the 200 ms between.
    first = first[: (speech_bounds_ms(first)[1] + 20) * 8]
    second = second[max(0, speech_bounds_ms(second)[0] - 20) * 8 :]
    audio = silence_mulaw(300) + first + silence_mulaw(200) + second + silence_mulaw(900)
    events = await recognize(asr, audio)

    finals = [e for e in events if e.kind == "final"]
    assert len(finals) == 1
    assert {"name", "john", "smith"} <= set(normalize_words(finals[0].text))
    # The dropped decode's words were still the words so far: an interim, before the final.
    interims = [i for i, e in enumerate(events) if e.kind == "interim"]
    assert interims and interims[0] < events.index(finals[0])
    assert "name" in normalize_words(events[interims[0]].text)


async def test_speech_cut_off_by_the_end_of_the_call_is_still_transcribed(asr: LocalAsr) -> None:
    events = settled(await recognize(asr, silence_mulaw(300) + synthesize_mulaw(NAME)))

    assert kinds(events) == ["speech_started", "speech_stopped", "final"]
    assert {"john", "smith"} <= set(normalize_words(events[2].text))


@pytest.mark.parametrize(
    "audio",
    [silence_mulaw(3000), noise_mulaw(3000, level=0.05), noise_mulaw(3000, level=0.3, seed=1)],
    ids=["silence", "quiet-noise", "loud-noise"],
)
async def test_silence_and_noise_produce_no_events(asr: LocalAsr, audio: bytes) -> None:
    assert await recognize(asr, audio) == []


async def test_calls_are_independent_streams(asr: LocalAsr) -> None:
    """Two concurrent calls: each gets its own words (no state shared but the model)."""
    a = silence_mulaw(200) + synthesize_mulaw(BOOKING) + silence_mulaw(800)
    b = silence_mulaw(600) + synthesize_mulaw(NAME) + silence_mulaw(800)
    ev_a, ev_b = await asyncio.gather(recognize(asr, a), recognize(asr, b))

    finals_a = [normalize_words(e.text) for e in ev_a if e.kind == "final"]
    assert finals_a == [normalize_words(BOOKING)]
    finals_b = [e for e in ev_b if e.kind == "final"]
    assert len(finals_b) == 1 and {"john", "smith"} <= set(normalize_words(finals_b[0].text))
