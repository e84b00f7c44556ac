"""An ASR worker releases each call's state when the call ends, however many calls it served.

The embedded soak (``voiceagent bench --mode embedded --soak-waves N``, docs/performance.md)
watches a worker's memory from outside; this checks the same from inside, quickly: an in-process
:class:`~services.asr.worker.AsrWorker` with the local recognizer (the real Silero VAD, the
segmenter, the end-of-turn gate) serves waves of calls, each saying a sentence twice, and after
every call ended nothing of them is left: no held call, turn gate, VAD stream or task, and
Python's object count does not grow from wave to wave. Whisper is replaced by an instant decode
(the decode pool has its own tests; the model's own memory is what the bench's soak reads).
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from concurrent.futures import Future
from typing import Any

import nats
import numpy as np
import numpy.typing as npt
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.asr.providers import local
from services.asr.providers.base import CpuMeter
from services.asr.providers.local import LocalAsr
from services.asr.worker import AsrWorker
from shared import headers as H
from shared import subjects
from shared.audio import frames
from shared.bus import make_broker
from shared.messages import AsrClaim, AsrClaimReply, CallEnded, Transcript, parse_transcript
from shared.settings import Settings
from tests.natsserver import private_nats_server
from tests.speech import silence_mulaw, synthesize_mulaw

pytestmark = pytest.mark.integration

WAVES = 5
CALLS_PER_WAVE = 6
# Objects a wave may leave behind: interpreter noise (caches filled lazily; measured +140).
# A call's state is hundreds of objects (its tasks, queues, gate, tracker, events).
OBJECT_SLACK = 400


class InstantEngine:
    """Stands in for the whisper engine: every decode is done at once, with the same words."""

    def free_worker(self) -> bool:
        return True

    def submit(
        self, samples8k: npt.NDArray[np.float32], *, meter: CpuMeter | None = None
    ) -> Future[tuple[str, float] | None]:
        f: Future[tuple[str, float] | None] = Future()
        f.set_result(("What are your opening hours?", 0.9) if len(samples8k) else None)
        return f


class TrackedLocalAsr(LocalAsr):
    """The local recognizer, counting the streams still open."""

    open_streams = 0

    async def stream(self, audio: Any) -> Any:
        TrackedLocalAsr.open_streams += 1
        try:
            async for ev in super().stream(audio):
                yield ev
        finally:
            TrackedLocalAsr.open_streams -= 1


async def _call(
    nc: NATS, audio: bytes, worker: AsrWorker, held: list[weakref.ref[Any]]
) -> tuple[str, list[Transcript]]:
    """One call from the gateway's side: claim, the caller's audio, its finals, CallEnded.
    Weak references to the worker's state of the call go to ``held``."""
    sid = "CA" + np.random.default_rng().bytes(16).hex()
    finals: asyncio.Queue[Transcript] = asyncio.Queue()

    async def on_transcript(msg: Msg) -> None:
        t = parse_transcript(msg.data)
        if isinstance(t, Transcript) and t.is_final:
            finals.put_nowait(t)

    sub = await nc.subscribe(subjects.transcript(sid), cb=on_transcript)
    claim = AsrClaim(call_sid=sid, gateway_id="gw-test")
    reply = AsrClaimReply.model_validate_json(
        (await nc.request(subjects.ASR_CLAIM, claim.to_bytes(), timeout=5)).data
    )
    assert reply.accepted
    state = worker._calls[sid]
    held += [weakref.ref(state), weakref.ref(state.turns)]
    for seq, frame in enumerate(frames(audio), start=1):
        headers = {H.SEQ: str(seq), H.TS_MS: str((seq - 1) * 20), H.SENT_NS: str(time.time_ns())}
        await nc.publish(subjects.audio_in(sid, reply.worker_id), frame, headers=headers)
        await asyncio.sleep(0.002)  # faster than real time: the gate's clock is the audio
    got = [await asyncio.wait_for(finals.get(), 15) for _ in range(2)]
    await nc.publish(subjects.control(sid), CallEnded(call_sid=sid).to_bytes())
    await sub.unsubscribe()
    return sid, got


async def _released(worker: AsrWorker, sids: list[str], wait_s: float = 10) -> None:
    deadline = time.monotonic() + wait_s
    while set(sids) & set(worker.calls) or worker._tasks or TrackedLocalAsr.open_streams:
        assert time.monotonic() < deadline, (worker.calls, TrackedLocalAsr.open_streams)
        await asyncio.sleep(0.05)


async def test_every_ended_call_leaves_nothing_behind_in_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local, "loaded_engine", lambda: InstantEngine())
    sentence = synthesize_mulaw("What are your opening hours?")
    audio = (silence_mulaw(400) + sentence + silence_mulaw(1500)) * 2
    with private_nats_server() as url:
        settings = Settings(
            _env_file=None, nats_url=url, asr_max_calls=CALLS_PER_WAVE, smart_endpointing=True
        )
        broker = make_broker(settings, name="asr-test")
        worker = AsrWorker(
            settings=settings, provider=TrackedLocalAsr(settings=settings), broker=broker
        )
        worker.attach()
        await broker.start()
        await worker.start()
        nc = await nats.connect(url)
        held: list[weakref.ref[Any]] = []  # every call's HeldCall and turn gate
        objects: list[int] = []
        try:
            for _ in range(WAVES):
                done = await asyncio.gather(
                    *(_call(nc, audio, worker, held) for _ in range(CALLS_PER_WAVE))
                )
                assert all(len(finals) == 2 and finals[1].text for _, finals in done)
                await _released(worker, [sid for sid, _ in done])
                gc.collect()
                objects.append(len(gc.get_objects()) - len(held))  # less our own weakrefs
            assert len(held) == 2 * WAVES * CALLS_PER_WAVE  # every call was seen held
            assert [r for r in held if r() is not None] == []
            # The first wave warms caches; after it, serving more calls keeps no more objects.
            assert max(objects[1:]) - objects[1] <= OBJECT_SLACK, objects
            assert worker.calls == [] and TrackedLocalAsr.open_streams == 0
        finally:
            await nc.close()
            await worker.drain(grace_s=0)
            await broker.stop()
