"""The embedded recognizer reports what each call cost in CPU (issue 15: embedded providers
report CPU-seconds; the price table turns them into money, shared/cost.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from services.asr.providers.base import CALL_CPU, CpuMeter
from services.asr.providers.local import LocalAsr
from shared.audio import frames
from shared.settings import Settings
from tests.speech import silence_mulaw, synthesize_mulaw

pytestmark = pytest.mark.integration


async def _feed(audio: bytes) -> AsyncIterator[bytes]:
    for frame in frames(audio):
        yield frame
        await asyncio.sleep(0)


async def _recognize(asr: LocalAsr, audio: bytes, meter: CpuMeter) -> list[str]:
    """One call's recognition, its CPU on ``meter`` (as the ASR worker sets it per call)."""
    CALL_CPU.set(meter)  # this task's context only: the other call keeps its own meter
    return [ev.text async for ev in asr.stream(_feed(audio)) if ev.kind == "final"]


async def test_each_call_is_charged_the_cpu_its_own_recognition_took() -> None:
    asr = LocalAsr(settings=Settings(_env_file=None))
    await asr.warm_up()
    speech = silence_mulaw(300) + synthesize_mulaw("I would like to book an appointment.")
    quiet = silence_mulaw(len(speech) // 8)  # as long, but nothing to decode
    talker, silent = CpuMeter(), CpuMeter()
    cpu0 = time.process_time()
    finals, nothing = await asyncio.gather(
        asyncio.create_task(_recognize(asr, speech + silence_mulaw(1500), talker)),
        asyncio.create_task(_recognize(asr, quiet + silence_mulaw(1500), silent)),
    )
    spent = time.process_time() - cpu0
    assert any("appointment" in t.lower() for t in finals), finals
    assert not any(t.strip() for t in nothing), nothing
    # Both paid for their VAD (the same length of audio); the caller who spoke also for a
    # decode (whisper's encoder alone is tens of ms); together never more than the process spent.
    assert silent.seconds > 0, silent.seconds
    assert talker.seconds > silent.seconds + 0.05, (talker.seconds, silent.seconds)
    assert talker.seconds + silent.seconds <= spent + 0.01, (talker.seconds, silent.seconds, spent)
    # ...and a good share of it (the rest is this test feeding frames): whisper computes on
    # CTranslate2's own threads, which the account must see (counting only the thread that
    # asked for the decode charged ~5% of a decode).
    assert talker.seconds + silent.seconds >= 0.35 * spent, (talker.seconds, silent.seconds, spent)
