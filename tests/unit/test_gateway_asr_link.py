"""The gateway's ASR claim protocol (docs/subjects.md) against fake workers on a private NATS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gateway.asr_link import AsrLink, backoff
from shared import headers as H
from shared import subjects
from shared.messages import AsrClaim, AsrClaimReply, AsrHeartbeat, Transcript

HB = 0.05  # heartbeat period in these tests (production: 0.5 s)


@pytest.fixture(scope="module")
def nats_url(private_nats: str) -> str:
    """A private NATS: ASR workers of other test runs on the shared one would answer claims."""
    return private_nats


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


class Worker:
    """A fake ASR worker: refuses the first ``refuse`` claims, then holds the call."""

    def __init__(self, nc: NATS, call: str, name: str, *, refuse: int = 0) -> None:
        self.nc, self.call, self.name, self.refuse = nc, call, name, refuse
        self.claims: list[AsrClaim] = []
        self.audio: list[tuple[bytes, dict[str, str]]] = []
        self.beating = True
        self._subs: list[Subscription] = []
        self._hb: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subs.append(await self.nc.subscribe(subjects.ASR_CLAIM, queue="asr", cb=self._claim))
        await self.nc.flush()

    async def _claim(self, msg: Msg) -> None:
        claim = AsrClaim.model_validate_json(msg.data)
        self.claims.append(claim)
        accepted = len(self.claims) > self.refuse
        if accepted:
            audio = subjects.audio_in(self.call, self.name)
            self._subs.append(await self.nc.subscribe(audio, cb=self._audio))
            self._hb = asyncio.create_task(self._beat())
        reply = AsrClaimReply(call_sid=self.call, worker_id=self.name, accepted=accepted)
        await msg.respond(reply.to_bytes())

    async def _audio(self, msg: Msg) -> None:
        self.audio.append((msg.data, dict(msg.headers or {})))

    async def _beat(self) -> None:
        while self.beating:
            hb = AsrHeartbeat(call_sid=self.call, worker_id=self.name)
            await self.nc.publish(subjects.asr_heartbeat(self.call), hb.to_bytes())
            await asyncio.sleep(HB)

    async def die(self) -> None:
        self.beating = False
        for sub in self._subs:
            await sub.unsubscribe()
        if self._hb is not None:
            self._hb.cancel()


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, name: str, **data: Any) -> None:
        self.seen.append((name, data))

    def names(self) -> list[str]:
        return [n for n, _ in self.seen]


def frame(i: int) -> bytes:
    return bytes([i % 256]) * 160


async def until(pred: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def make_link(nc: NATS, call: str, events: Events, ring_s: float = 3.0) -> AsrLink:
    return AsrLink(
        nc=nc,
        call_sid=call,
        gateway_id="gw-test",
        event=events,
        ring_s=ring_s,
        claim_timeout_s=0.3,
        heartbeat_s=HB,
    )


async def test_refused_claims_are_retried_until_a_worker_accepts(nc: NATS) -> None:
    call = "CA" + uuid.uuid4().hex
    worker = Worker(nc, call, "asr-1", refuse=2)
    await worker.start()
    events = Events()
    link = make_link(nc, call, events)
    await link.start()
    await until(lambda: link.claimed)
    assert [c.attempt for c in worker.claims] == [0, 1, 2]
    assert link.worker_id == "asr-1"
    assert "asr.claimed" in events.names()
    await link.close()
    await worker.die()


async def test_no_asr_worker_reports_unavailable_and_audio_waits_for_one(nc: NATS) -> None:
    call = "CA" + uuid.uuid4().hex
    events = Events()
    link = make_link(nc, call, events)
    await link.start()
    for i in range(5):  # the caller speaks while no recognizer exists
        await link.send(frame(i), str(i), str(i * 20))
    await until(lambda: "asr.unavailable" in events.names())
    assert not link.claimed
    worker = Worker(nc, call, "asr-late")
    await worker.start()
    await until(lambda: link.claimed, within=5)
    await link.send(frame(5), "5", "100")
    await until(lambda: len(worker.audio) == 6)
    assert [a for a, _ in worker.audio] == [frame(i) for i in range(6)]  # once each, in order
    assert [h[H.SEQ] for _, h in worker.audio] == [str(i) for i in range(6)]
    await link.close()
    await worker.die()


async def test_missed_heartbeats_reclaim_and_replay_recent_audio(nc: NATS) -> None:
    call = "CA" + uuid.uuid4().hex
    events = Events()
    first = Worker(nc, call, "asr-a")
    await first.start()
    link = make_link(nc, call, events, ring_s=0.1)  # ring holds 5 frames
    await link.start()
    await until(lambda: link.claimed)
    for i in range(10):
        await link.send(frame(i), str(i), str(i * 20))
    await until(lambda: len(first.audio) == 10)
    said = Transcript(call_sid=call, utterance_id=4, text="hello", is_final=True)
    await nc.publish(subjects.transcript(call), said.to_bytes())
    await until(lambda: link.last_utterance_id == 4)
    await first.die()  # crashes: no more heartbeats, no more claims
    second = Worker(nc, call, "asr-b")
    await second.start()
    await until(lambda: link.worker_id == "asr-b" and link.claimed)
    for i in range(10, 12):
        await link.send(frame(i), str(i), str(i * 20))
    await until(lambda: len(second.audio) == 7)
    # The new recognizer gets the last ring of audio again, then live audio, in order.
    assert [a for a, _ in second.audio] == [frame(i) for i in range(5, 12)]
    assert second.claims[0].last_utterance_id == 4  # utterance ids go on increasing
    assert "asr.lost" in events.names()
    claimed = [d for n, d in events.seen if n == "asr.claimed"]
    assert claimed[-1]["reclaim"] is True and claimed[-1]["replayed_frames"] == 5
    await link.close()
    await second.die()


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff(i, (0.25, 2.0)) for i in range(8)]
    assert delays[0] == 0.25 and delays == sorted(delays) and max(delays) == 2.0
