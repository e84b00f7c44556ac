"""One-word answers from voices other than the bundled Piper one reach the agent.

Found by ``voiceagent.bench_robustness`` (docs/robustness.md): whisper decodes espeak-ng's
"Okay." with a no-speech probability of ~0.45, so the hallucination filter (meant for the
"okay"/"thank you" whisper invents on noise) dropped a caller's real answer. Noise still
yields nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.asr.providers.local import LocalAsr, normalize_words
from shared.audio import frames
from shared.settings import Settings
from tests.speech import silence_mulaw
from voiceagent.bench_robustness import babble, espeak, set_level, to_mulaw

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def asr() -> LocalAsr:
    provider = LocalAsr(settings=Settings(_env_file=None))
    await provider.warm_up()
    return provider


async def _feed(audio: bytes) -> AsyncIterator[bytes]:
    for frame in frames(audio):
        yield frame


async def _finals(asr: LocalAsr, audio: bytes) -> list[str]:
    return [ev.text async for ev in asr.stream(_feed(audio)) if ev.kind == "final"]


@pytest.mark.parametrize(
    ("word", "voice"),
    [("Okay.", "en-us"), ("Bye.", "en-gb")],
)
async def test_a_one_word_answer_in_an_espeak_voice_is_heard(
    asr: LocalAsr, word: str, voice: str
) -> None:
    speech = to_mulaw(
        set_level(espeak(word, voice=voice, pitch=85 if voice == "en-gb" else 50), -20)
    )
    finals = await _finals(asr, silence_mulaw(400) + speech + silence_mulaw(1200))
    heard = [w for text in finals for w in normalize_words(text)]
    assert heard == normalize_words(word), finals


async def test_background_talk_alone_gives_no_words(asr: LocalAsr) -> None:
    bed = to_mulaw(babble(8000 * 4) * 10 ** (-30 / 20))
    finals = await _finals(asr, bed)
    assert not any(normalize_words(t) for t in finals), finals
