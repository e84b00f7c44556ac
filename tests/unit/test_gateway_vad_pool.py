"""The gateway's VAD model pool: reuse while busy, memory back after a busy hour, no model for
silence (the pool is exercised with stand-in models: what is checked is the lending)."""

from __future__ import annotations

import asyncio

import numpy as np

from services.gateway.turntaking.voice_activity import BargeInDetector, VadPool


class StandIn:
    """A model that counts its work (always says: speech)."""

    def __init__(self) -> None:
        self.windows = 0

    def process(self, data: memoryview) -> float:
        self.windows += 1
        return 0.9

    def reset(self) -> None:
        pass


def pool_of(n: int, **kw: float) -> tuple[VadPool, list[StandIn]]:
    models = [StandIn() for _ in range(n)]
    pool = VadPool(threads=1, load=models.pop, **kw)  # type: ignore[arg-type]
    return pool, models


async def test_idle_models_beyond_the_warm_few_are_dropped_after_idle_s() -> None:
    pool, _ = pool_of(0, keep_min=2, idle_s=0.05)
    given = [StandIn() for _ in range(6)]
    for vad in given:
        pool.release(vad)
    assert pool.idle == 6
    await asyncio.sleep(0.2)
    assert pool.idle == 2  # the two most recently used stay warm
    assert pool.take() is given[-1]
    pool.close()


async def test_taking_never_waits_for_a_model_to_load() -> None:
    pool, _ = pool_of(3)
    assert pool.take() is None  # nothing loaded yet: the caller goes on, one is loading
    for _ in range(100):
        if pool.idle:
            break
        await asyncio.sleep(0.01)
    taken = pool.take()
    assert isinstance(taken, StandIn)
    for _ in range(100):  # taking the last one starts loading a spare
        if pool.idle:
            break
        await asyncio.sleep(0.01)
    assert pool.idle == 1
    pool.close()


async def test_silence_and_line_noise_borrow_no_model() -> None:
    pool, models = pool_of(1)
    det = BargeInDetector(pool=pool, threshold=0.5, min_speech_ms=100, level_margin_db=20.0)
    silence = bytes([0xFF]) * 160  # mu-law digital silence
    for _ in range(50):
        assert not await det.feed(silence)
    assert det.active and pool.idle == 0 and models  # listening, yet no model was needed
    rng = np.random.default_rng(1)
    loud = bytes(rng.integers(0, 0x7F, 160, dtype=np.uint8))  # loud: scored
    # No model is ready yet: nothing is decided unjudged; once it is loaded, it decides.
    assert not any([await det.feed(loud) for _ in range(20)])  # 400 ms, loads not run yet
    for _ in range(100):
        if not models:
            break
        await asyncio.sleep(0.01)
    assert any([await det.feed(loud) for _ in range(10)])
    det.stop()
    assert not models and pool.idle == 1  # loaded for this call, then given back
