"""The TTS worker as a real process (`python -m services.tts`) on a real NATS server.

The server is private to this module: other TTS workers running on the machine's NATS (in the
same `tts` queue group) would otherwise take some of these segments.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import nats
import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import headers as H
from shared import subjects
from shared.audio import ulaw_to_float
from shared.messages import Event, Interrupt, ReplySegment, parse_event
from tests.serviceproc import ServiceProcess

pytestmark = pytest.mark.integration


class Worker(ServiceProcess):
    """`python -m services.tts` with its stderr collected line by line."""

    def __init__(self, nats_url: str) -> None:
        env = {
            "NATS_URL": nats_url,
            "TTS_PROVIDER": "local",
            "LOCAL_TTS_ENGINE": "piper",
            "ELEVENLABS_API_KEY": "",
            "REDIS_URL": "",
            "LOG_FORMAT": "text",
            "METRICS_PORT": "0",
        }
        super().__init__("tts", env=env)


@pytest.fixture(scope="module")
def worker(private_nats: str) -> Iterator[Worker]:
    w = Worker(private_nats)
    w.wait_for_log("tts worker ready")
    yield w
    assert w.stop() == 0


@dataclass
class Segment:
    chunks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def audio(self) -> bytes:
        return b"".join(data for _, data in self.chunks)


PROBE_TURN = 1_000_000


class Call:
    """One simulated call: publishes agent replies, receives the audio the gateway would."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.sid = "CA" + uuid.uuid4().hex
        self.segments: dict[tuple[int, int], Segment] = {}
        self.events: list[Event] = []

    async def listen(self) -> None:
        """Subscribe, then make sure a worker reaches us: nats-server 2.15 may not route a
        new subscription to an already-connected publisher for a few ms even after a flush."""
        await self.nc.subscribe(subjects.audio_out(self.sid), cb=self._on_audio)
        await self.nc.subscribe(subjects.events(self.sid), cb=self._on_event)
        await self.nc.flush()
        probe = self.seg(PROBE_TURN, 0)
        for _ in range(100):
            await self.say(PROBE_TURN, 0, "")  # an empty segment comes back as its marker
            try:
                await asyncio.wait_for(probe.done.wait(), 0.1)
                return
            except TimeoutError:
                continue
        raise AssertionError("no TTS worker answers")

    def seg(self, turn: int, seq: int) -> Segment:
        return self.segments.setdefault((turn, seq), Segment())

    async def _on_audio(self, msg: Msg) -> None:
        h = dict(msg.headers or {})
        s = self.seg(int(h[H.TURN]), int(h[H.SEG]))
        s.chunks.append((h, msg.data))
        if h.get(H.LAST) == "1":
            s.done.set()

    async def _on_event(self, msg: Msg) -> None:
        self.events.append(parse_event(msg.data))

    async def say(self, turn: int, seq: int, text: str, *, last: bool = False) -> None:
        seg = ReplySegment(call_sid=self.sid, turn=turn, seq=seq, text=text, last=last)
        await self.nc.publish(subjects.reply(self.sid), seg.to_bytes())

    async def ended(self, turn: int, seq: int, wait_s: float = 15) -> Segment:
        s = self.seg(turn, seq)
        await asyncio.wait_for(s.done.wait(), wait_s)
        return s


@pytest.fixture
async def call(private_nats: str, worker: Worker) -> AsyncIterator[Call]:
    nc = await nats.connect(private_nats)
    c = Call(nc)
    await c.listen()
    yield c
    await nc.close()


def rms(mulaw: bytes) -> float:
    return float(np.sqrt(np.mean(ulaw_to_float(mulaw) ** 2))) if mulaw else 0.0


def assert_well_formed(seg: Segment, *, turn: int, seq: int) -> None:
    """Chunks numbered 0..n, every header right, exactly one Va-Last, on the last chunk."""
    numbers = [int(h[H.CHUNK]) for h, _ in seg.chunks]
    assert numbers == list(range(len(numbers)))
    for h, _ in seg.chunks:
        assert h[H.SCHEMA] == H.AUDIO_OUT_SCHEMA
        assert h[H.ENCODING] == H.MULAW_8K
        assert h[H.SERVICE] == "tts"
        assert (h[H.TURN], h[H.SEG]) == (str(turn), str(seq))
    assert [h.get(H.LAST) for h, _ in seg.chunks].count("1") == 1
    assert seg.chunks[-1][0].get(H.LAST) == "1"


async def test_a_turn_becomes_audio_segment_by_segment(call: Call) -> None:
    await call.say(1, 0, "Hello, thanks for calling the clinic.")
    await call.say(1, 1, "How can I help you today?", last=True)
    first, second = await call.ended(1, 0), await call.ended(1, 1)
    for seq, seg, words in ((0, first, 6), (1, second, 6)):
        assert_well_formed(seg, turn=1, seq=seq)
        seconds = len(seg.audio) / 8000
        assert 0.15 * words <= seconds <= 0.6 * words
        assert rms(seg.audio) > 0.02
    await asyncio.sleep(0.1)  # events are published right after the audio
    names = [(e.name, e.turn) for e in call.events]
    assert names.count(("tts.first_audio", 1)) == 2
    assert names.count(("tts.segment_done", 1)) == 2
    first_audio = [e for e in call.events if e.name == "tts.first_audio"]
    assert all(0 < float(e.data["ms"] or 0) < 5000 for e in first_audio)


async def test_empty_text_still_ends_its_segment(call: Call) -> None:
    await call.say(1, 0, "")
    await call.say(1, 1, "   ", last=True)
    for seq in (0, 1):
        seg = await call.ended(1, seq)
        assert_well_formed(seg, turn=1, seq=seq)
        assert seg.audio == b""


async def test_interrupted_turn_gets_no_more_audio(call: Call) -> None:
    await call.say(2, 0, "Let me look that up for you.")
    assert (await call.ended(2, 0)).audio
    await call.nc.publish(
        subjects.control(call.sid), Interrupt(call_sid=call.sid, turn=2).to_bytes()
    )
    await call.nc.flush()
    await asyncio.sleep(0.2)
    await call.say(2, 1, "Your appointment is on Monday at ten.")
    await call.say(2, 2, "Is there anything else?", last=True)
    await call.say(3, 0, "Sure, go ahead.", last=True)
    assert (await call.ended(3, 0)).audio  # the next turn is spoken as usual...
    for seq in (1, 2):  # ...and the interrupted one's later segments are silent
        seg = call.seg(2, seq)
        assert seg.audio == b""
        assert seg.done.is_set()  # but still closed with a Va-Last marker (docs/subjects.md)


async def test_malformed_replies_do_not_stop_the_worker(call: Call, worker: Worker) -> None:
    subject = subjects.reply(call.sid)
    await call.nc.publish(subject, b"{not json")
    await call.nc.publish(subject, b'{"type": "segment", "text": "no call, turn or seq"}')
    await call.nc.publish(subject, b"\xff\xfe\x00")
    other = ReplySegment(call_sid="CA" + uuid.uuid4().hex, turn=1, seq=0, text="Hi.", last=True)
    await call.nc.publish(subject, other.to_bytes())  # call SID does not match the subject
    await call.say(4, 0, "Still here.", last=True)
    seg = await call.ended(4, 0)
    assert rms(seg.audio) > 0.02
    assert worker.proc.poll() is None
    assert not call.segments.get((1, 0))


async def test_sigterm_finishes_the_segment_in_flight_then_exits_zero(private_nats: str) -> None:
    # Its own process: the module's worker keeps serving the other tests.
    w = Worker(private_nats)
    try:
        w.wait_for_log("tts worker ready")
        nc = await nats.connect(private_nats)
        c = Call(nc)
        await c.listen()
        text = "This is the first sentence. " + "And here is another one to say. " * 4
        await c.say(1, 0, text, last=True)
        seg = c.seg(1, 0)
        deadline = time.monotonic() + 15
        while not seg.chunks:
            assert time.monotonic() < deadline, "no audio before SIGTERM"
            await asyncio.sleep(0.005)
        w.proc.send_signal(signal.SIGTERM)
        await c.ended(1, 0)
        assert_well_formed(seg, turn=1, seq=0)
        assert len(seg.audio) / 8000 > 5  # all five sentences, not just the first
        await nc.close()
        assert await asyncio.to_thread(w.proc.wait, 30) == 0
    finally:
        w.stop()
