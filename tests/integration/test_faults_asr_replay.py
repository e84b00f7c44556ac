"""The gateway's ASR link over a real NATS, against two scripted ASR workers (protocol peers).

Worker 1 holds the call and dies (its heartbeats stop); the link claims again within 2 s and
worker 2 gets the caller's audio from just after the last final transcript: what worker 1 had
already transcribed is not replayed (no utterance twice), what came after it is (no words lost),
and the claim carries the last utterance id (ids keep increasing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from services.gateway.asr_link import REPLAY_MARGIN_MS, AsrLink
from shared import headers as H
from shared import subjects
from shared.messages import AsrClaim, AsrClaimReply, AsrHeartbeat, Transcript

pytestmark = pytest.mark.integration


class ScriptedWorker:
    """Accepts claims for one call, heartbeats every 0.5 s, records the audio frames' ``Va-Ts``."""

    def __init__(self, nc: NATS, call_sid: str, worker_id: str) -> None:
        self.nc, self.sid, self.id = nc, call_sid, worker_id
        self.claims: list[AsrClaim] = []
        self.ts: list[int] = []
        self._subs: list[Any] = []
        self._beats: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def on_audio(msg: Any) -> None:
            self.ts.append(int(msg.headers[H.TS_MS]))

        async def on_claim(msg: Any) -> None:
            self.claims.append(AsrClaim.model_validate_json(msg.data))
            if self._beats is None:  # the audio subscription comes with the claim
                audio = subjects.audio_in(self.sid, self.id)
                self._subs.append(await self.nc.subscribe(audio, cb=on_audio))
                self._beats = asyncio.create_task(self._beat())
            reply = AsrClaimReply(call_sid=self.sid, worker_id=self.id, accepted=True)
            await msg.respond(reply.to_bytes())

        self._subs = [
            await self.nc.subscribe(subjects.ASR_CLAIM, queue=subjects.QUEUE_ASR, cb=on_claim)
        ]
        await self.nc.flush()

    async def _beat(self) -> None:
        hb = AsrHeartbeat(call_sid=self.sid, worker_id=self.id)
        while True:
            await self.nc.publish(subjects.asr_heartbeat(self.sid), hb.to_bytes())
            await asyncio.sleep(0.5)

    async def die(self) -> None:
        """As SIGKILL looks from the bus: no more heartbeats, replies or audio."""
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
        for sub in self._subs:
            await sub.unsubscribe()


async def test_a_reclaim_replays_only_the_audio_after_the_last_final(private_nats: str) -> None:
    sid = "CA" + uuid.uuid4().hex
    nc = await nats.connect(private_nats)
    events: list[tuple[str, dict[str, Any]]] = []

    async def event(name: str, **data: Any) -> None:
        events.append((name, data))

    w1, w2 = ScriptedWorker(nc, sid, "asr-w1"), ScriptedWorker(nc, sid, "asr-w2")
    link = AsrLink(nc=nc, call_sid=sid, gateway_id="gw-test", event=event)
    sent = 0

    async def caller() -> None:  # 20 ms frames in real time, Twilio timestamps from 0
        nonlocal sent
        while True:
            await link.send(b"\xff" * 160, str(sent + 1), str(sent * 20))
            sent += 1
            await asyncio.sleep(0.02)

    talking: asyncio.Task[None] | None = None
    try:
        await w1.start()
        await link.start()
        talking = asyncio.create_task(caller())
        for _ in range(100):
            if link.worker_id == "asr-w1":
                break
            await asyncio.sleep(0.02)
        assert link.worker_id == "asr-w1"
        await asyncio.sleep(0.7)
        # Worker 1 finished utterance 3, which ended at the call position 600 ms.
        done = Transcript(
            call_sid=sid, utterance_id=3, text="hello", is_final=True, speech_end_ms=600
        )
        await nc.publish(subjects.transcript(sid), done.to_bytes())
        await nc.flush()
        await asyncio.sleep(0.2)
        await w2.start()
        await w1.die()
        died = time.monotonic()
        for _ in range(150):
            if link.worker_id == "asr-w2":
                break
            await asyncio.sleep(0.02)
        assert link.worker_id == "asr-w2", events
        assert time.monotonic() - died < 2.0
        await asyncio.sleep(0.3)

        assert w2.claims and w2.claims[-1].last_utterance_id == 3
        # Replayed from just after the final's end (+ margin), then live, every frame once.
        first = min(w2.ts)
        assert first == 600 + REPLAY_MARGIN_MS, w2.ts[:5]
        assert w2.ts == list(range(first, first + 20 * len(w2.ts), 20))
        assert ("asr.lost", {"worker": "asr-w1"}) in events
    finally:
        if talking is not None:
            talking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talking
        await link.close()
        await nc.close()
