"""The simulator plays gateway audio like Twilio, in real time, against a scripted fake gateway.

No gateway, no bus: a small WebSocket server stands in for the gateway and sends media, marks
and clear at known times; we check when the simulator echoes the marks and what it played.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from twilio.request_validator import RequestValidator
from websockets.asyncio.server import ServerConnection, serve

from devkit.simulator import CallerTurn, SimulatedCall, StreamTarget
from shared.audio import FRAME_BYTES
from shared.twilio import clear_message, mark_message, media_message

TOKEN = "test-token"
TONE = bytes([0x10]) * FRAME_BYTES  # a loud mu-law value: clearly not silence (0xFF)


@dataclass
class FakeGateway:
    """Records what the simulated Twilio sends; plays a script once the stream starts."""

    script: Any
    received: list[dict[str, Any]] = field(default_factory=list)
    echo_times: dict[str, float] = field(default_factory=dict)
    signature_ok: bool = False
    stream_sid: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = f"ws://127.0.0.1:{ws.local_address[1]}/twilio-stream"
        sig = ws.request.headers.get("X-Twilio-Signature", "")
        self.signature_ok = RequestValidator(TOKEN).validate(url, {}, sig)
        play: asyncio.Task[None] | None = None
        async for raw in ws:
            msg = json.loads(raw)
            self.received.append(msg)
            if msg["event"] == "start":
                self.stream_sid = msg["streamSid"]
                play = asyncio.create_task(self.script(self, ws))
            elif msg["event"] == "mark":
                self.echo_times[msg["mark"]["name"]] = time.monotonic()
            elif msg["event"] == "stop":
                break
        if play is not None:
            await play
        self.done.set()


async def _call(
    script: Any, *, turns: list[CallerTurn] | None = None, reply_timeout_s: float = 5.0
) -> tuple[Any, FakeGateway]:
    fake = FakeGateway(script=script)
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sim = SimulatedCall(
            gateway_url=f"http://127.0.0.1:{port}",
            public_url=f"http://127.0.0.1:{port}",
            auth_token=TOKEN,
            greeting_timeout_s=2.0,
            reply_timeout_s=reply_timeout_s,
            quiet_s=0.4,
        )
        target = StreamTarget(
            url=f"ws://127.0.0.1:{port}/twilio-stream", parameters={"token": "per-call"}
        )
        result = await asyncio.wait_for(sim.stream(target, turns or []), 15)
        await asyncio.wait_for(fake.done.wait(), 5)
    return result, fake


async def test_mark_echoed_after_its_audio_played_and_clear_echoes_pending_marks() -> None:
    sent: dict[str, float] = {}

    async def script(fake: FakeGateway, ws: ServerConnection) -> None:
        sid = fake.stream_sid
        sent["first"] = time.monotonic()
        for _ in range(15):  # 300 ms, sent at once as a gateway with lead might
            await ws.send(media_message(sid, TONE))
        await ws.send(mark_message(sid, "1:0"))
        for _ in range(50):  # 1 s more, then two marks
            await ws.send(media_message(sid, TONE))
        await ws.send(mark_message(sid, "1:1"))
        await ws.send(mark_message(sid, "1:2"))
        await asyncio.sleep(0.5)  # the caller has heard ~500 ms of 1.3 s
        sent["clear"] = time.monotonic()
        await ws.send(clear_message(sid))

    result, fake = await _call(script)

    first_mark = fake.echo_times["1:0"] - sent["first"]
    assert 0.26 <= first_mark <= 0.6, f"mark echoed after {first_mark:.3f} s, not ~0.3 s"
    for name in ("1:1", "1:2"):  # echoed by the clear, long before their audio would end
        assert 0 <= fake.echo_times[name] - sent["clear"] < 0.15
    assert result.marks_echoed == ["1:0", "1:1", "1:2"]
    assert result.clears == 1
    loud = sum(1 for b in result.heard if b == TONE[0]) / 8000
    assert 0.4 <= loud <= 0.8, f"caller heard {loud:.2f} s of reply; clear should cut at ~0.5 s"
    assert result.protocol_errors == []


async def test_stream_messages_are_twilio_shaped() -> None:
    async def script(fake: FakeGateway, ws: ServerConnection) -> None:
        await ws.send(media_message(fake.stream_sid, TONE))

    turns = [
        CallerTurn(kind="wav", value="x.wav", audio=TONE * 10),
        CallerTurn(kind="dtmf", value="5"),
    ]
    result, fake = await _call(script, turns=turns, reply_timeout_s=0.5)

    assert fake.signature_ok
    events = [m["event"] for m in fake.received]
    assert events[:2] == ["connected", "start"] and events[-1] == "stop"
    start = fake.received[1]["start"]
    assert start["customParameters"] == {"token": "per-call"}
    assert start["callSid"] == result.call_sid and start["streamSid"] == result.stream_sid
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert result.stream_sid.startswith("MZ") and len(result.stream_sid) == 34
    media = [m for m in fake.received if m["event"] == "media"]
    chunks = [int(m["media"]["chunk"]) for m in media]
    assert chunks == list(range(1, len(media) + 1))
    assert [int(m["media"]["timestamp"]) for m in media[:3]] == [0, 20, 40]
    assert all(len(base64.b64decode(m["media"]["payload"])) == FRAME_BYTES for m in media)
    seqs = [int(m["sequenceNumber"]) for m in fake.received[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    # The caller's WAV went out as media, surrounded by silence frames (Twilio streams always).
    payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
    assert payloads.count(TONE) == 10 and payloads[0] == b"\xff" * FRAME_BYTES
    dtmf = [m for m in fake.received if m["event"] == "dtmf"]
    assert dtmf and dtmf[0]["dtmf"] == {"track": "inbound_track", "digit": "5"}
    # 50 frames a second on a real-time clock.
    span = len(media) * 0.02
    assert span > 1.0


async def test_bad_gateway_messages_are_reported_not_played() -> None:
    async def script(fake: FakeGateway, ws: ServerConnection) -> None:
        sid = fake.stream_sid
        await ws.send(json.dumps({"event": "hello", "streamSid": sid}))
        await ws.send(media_message("MZ" + "1" * 32, TONE))
        await ws.send(TONE)  # binary frame
        await ws.send(media_message(sid, TONE))

    result, _ = await _call(script)
    codes = sorted(int(e.split("Twilio ")[1].rstrip(")")) for e in result.protocol_errors)
    assert codes == [31924, 31950, 31951]
    assert result.media_received == 1
    assert sum(1 for b in result.heard if b == TONE[0]) == FRAME_BYTES
