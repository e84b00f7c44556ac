"""The gateway's media stream end to end on a real server, real NATS, and a Twilio-like client.

A fake ASR worker (claim responder + heartbeats) and bus publishers stand in for the workers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
import pytest
import uvicorn
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import SecretStr
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.gateway.app import GatewayServer, create_app
from services.gateway.runtime import Gateway
from shared import headers as H
from shared import subjects
from shared.messages import (
    AsrClaim,
    AsrClaimReply,
    AsrHeartbeat,
    Hangup,
    Interrupt,
    ReplySegment,
    Transcript,
    parse_control,
    parse_event,
)
from shared.settings import Settings
from tests.gatewayserver import Gw, serve_gateway
from tests.natsserver import free_port

TOKEN = "stream-test-token"


@pytest.fixture(scope="module")
def nats_url(private_nats: str) -> str:
    """A private NATS: ASR workers of other test runs on the shared one would claim our calls."""
    return private_nats


@pytest.fixture
async def gw(nats_url: str) -> AsyncIterator[Gw]:
    port = free_port()
    settings = Settings(
        nats_url=nats_url,
        twilio_auth_token=SecretStr(TOKEN),
        public_url=f"http://127.0.0.1:{port}",
        ws_max_message_bytes=4096,
        playback_lead_ms=100,
    )
    async with serve_gateway(settings, port=port, lifespan="on") as gw:
        yield gw


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.drain()


@dataclass
class Tap:
    """Every message on one subject."""

    msgs: list[Msg] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def cb(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self.event.set()

    async def wait_for(self, pred: Any, within: float = 5.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            for m in self.msgs:
                found = pred(m)
                if found:
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("expected message not seen")
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), remaining)


async def tap(nc: NATS, subject: str) -> Tap:
    t = Tap()
    await nc.subscribe(subject, cb=t.cb)
    await nc.flush()
    return t


def control_of(kind: str) -> Any:
    def pred(m: Msg) -> Any:
        c = parse_control(m.data)
        return c if c.type == kind else None

    return pred


def event_named(name: str) -> Any:
    def pred(m: Msg) -> Any:
        e = parse_event(m.data)
        return e if e.name == name else None

    return pred


class FakeAsr:
    """Answers claims for one call like an ASR worker, and heartbeats while it holds it."""

    def __init__(self, nc: NATS, call_sid: str) -> None:
        self.nc, self.call = nc, call_sid
        self.claims: list[AsrClaim] = []
        self._hb: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.nc.subscribe(subjects.ASR_CLAIM, queue="asr-test-" + self.call, cb=self._on)
        await self.nc.flush()

    async def _on(self, msg: Msg) -> None:
        claim = AsrClaim.model_validate_json(msg.data)
        if claim.call_sid != self.call:
            return  # another test's call: let its own responder answer
        self.claims.append(claim)
        reply = AsrClaimReply(call_sid=self.call, worker_id="asr-fake", accepted=True)
        await msg.respond(reply.to_bytes())
        if self._hb is None:
            self._hb = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            hb = AsrHeartbeat(call_sid=self.call, worker_id="asr-fake")
            await self.nc.publish(subjects.asr_heartbeat(self.call), hb.to_bytes())
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self._hb is not None:
            self._hb.cancel()


class Caller:
    """Twilio's side of one call: the webhook, the signed upgrade, the stream messages."""

    def __init__(self, gw: Gw, call_sid: str) -> None:
        self.gw, self.call = gw, call_sid
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.ws: ClientConnection | None = None
        self.url = ""
        self.params: dict[str, str] = {}
        self.seq = 0
        self.chunk = 0

    async def dial(self) -> None:
        params = {"CallSid": self.call, "AccountSid": "AC" + "1" * 32, "From": "+15551112222"}
        url = self.gw.settings.voice_url
        sig = RequestValidator(TOKEN).compute_signature(url, params)
        async with httpx.AsyncClient(base_url=self.gw.base) as http:
            r = await http.post("/voice", data=params, headers={"X-Twilio-Signature": sig})
        assert r.status_code == 200
        stream = ET.fromstring(r.text).find("Connect/Stream")
        assert stream is not None, r.text
        self.url = stream.get("url") or ""
        self.params = {p.get("name") or "": p.get("value") or "" for p in stream}

    async def open(self, *, sign_url: str | None = None) -> ClientConnection:
        sig = RequestValidator(TOKEN).compute_signature(sign_url or self.url, {})
        self.ws = await connect(self.url, additional_headers={"X-Twilio-Signature": sig})
        return self.ws

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.ws is not None
        self.seq += 1
        obj.setdefault("sequenceNumber", str(self.seq))
        await self.ws.send(json.dumps(obj))

    async def start(self, params: dict[str, str] | None = None) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(
            {
                "event": "start",
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": "AC" + "1" * 32,
                    "callSid": self.call,
                    "tracks": ["inbound"],
                    "customParameters": self.params if params is None else params,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

    async def media(self, frame: bytes) -> None:
        self.chunk += 1
        await self.send(
            {
                "event": "media",
                "streamSid": self.stream_sid,
                "media": {
                    "track": "inbound",
                    "chunk": str(self.chunk),
                    "timestamp": str(self.chunk * 20),
                    "payload": base64.b64encode(frame).decode(),
                },
            }
        )

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        assert self.ws is not None
        raw = await asyncio.wait_for(self.ws.recv(), within)
        assert isinstance(raw, str), "Twilio accepts text frames only"
        msg: dict[str, Any] = json.loads(raw)
        return msg


def new_sid() -> str:
    return "CA" + uuid.uuid4().hex


async def started_call(gw: Gw, bus: NATS) -> tuple[Caller, Tap, FakeAsr]:
    call = new_sid()
    asr = FakeAsr(bus, call)
    await asr.start()
    control = await tap(bus, subjects.control(call))
    caller = Caller(gw, call)
    await caller.dial()
    await caller.open()
    await caller.start()
    await control.wait_for(control_of("call_started"))
    return caller, control, asr


async def test_call_lifecycle_audio_dtmf_and_stop(gw: Gw, bus: NATS) -> None:
    call = new_sid()
    control = await tap(bus, subjects.control(call))
    audio_in = await tap(bus, subjects.audio_in_any(call))
    events = await tap(bus, subjects.events(call))
    caller = Caller(gw, call)
    await caller.dial()
    await caller.open()
    await caller.start()
    started = await control.wait_for(control_of("call_started"))
    assert started.stream_sid == caller.stream_sid
    assert "token" not in started.parameters and started.parameters["callSid"] == call
    # Frames spoken before any ASR worker holds the call are kept, then replayed in order.
    frames = [bytes([i]) * 160 for i in range(1, 6)]
    for f in frames[:3]:
        await caller.media(f)
    await asyncio.sleep(0.2)
    assert audio_in.msgs == []
    asr = FakeAsr(bus, call)
    await asr.start()
    await events.wait_for(event_named("asr.claimed"))
    for f in frames[3:]:
        await caller.media(f)
    await audio_in.wait_for(lambda m: len(audio_in.msgs) >= 5)
    assert [m.data for m in audio_in.msgs] == frames
    hdrs = audio_in.msgs[0].headers or {}
    assert hdrs[H.SEQ] == "1" and hdrs[H.TS_MS] == "20" and int(hdrs[H.SENT_NS]) > 0
    assert asr.claims[0].gateway_id == gw.gateway.gateway_id

    await caller.send(
        {
            "event": "dtmf",
            "streamSid": caller.stream_sid,
            "dtmf": {"track": "inbound_track", "digit": "5"},
        }
    )
    dtmf = await control.wait_for(control_of("dtmf"))
    assert dtmf.digit == "5"

    await caller.send(
        {
            "event": "stop",
            "streamSid": caller.stream_sid,
            "stop": {"accountSid": "AC1", "callSid": call},
        }
    )
    ended = await control.wait_for(control_of("call_ended"))
    assert ended.reason == "stop"
    with pytest.raises(ConnectionClosed):
        await caller.recv()
    assert call not in gw.gateway.calls
    asr.stop()


async def test_bad_frames_are_dropped_and_the_call_goes_on(gw: Gw, bus: NATS) -> None:
    caller, control, asr = await started_call(gw, bus)
    audio_in = await tap(bus, subjects.audio_in_any(caller.call))
    assert caller.ws is not None
    await caller.ws.send("{not json")
    await caller.ws.send(json.dumps({"event": "banana", "streamSid": caller.stream_sid}))
    await caller.ws.send(json.dumps({"event": "media", "streamSid": caller.stream_sid}))
    await caller.ws.send(
        json.dumps({"event": "media", "streamSid": caller.stream_sid, "media": {"payload": "***"}})
    )
    # A frame over WS_MAX_MESSAGE_BYTES closes its socket (1009) unread: see
    # test_security_front_door.py::test_an_oversized_frame_closes_only_its_own_socket
    await caller.ws.send(b"\x00\x01")  # binary frames are not Twilio's
    await caller.send(  # another stream's media
        {"event": "media", "streamSid": "MZother", "media": {"payload": "AAAA"}}
    )
    await caller.media(b"\x42" * 160)
    msg = await audio_in.wait_for(lambda m: m if m.data == b"\x42" * 160 else None)
    assert msg is not None
    assert len(audio_in.msgs) == 1
    assert not any(parse_control(m.data).type == "call_ended" for m in control.msgs)
    asr.stop()


async def test_start_with_wrong_call_sid_or_replayed_token_closes_1008(gw: Gw, bus: NATS) -> None:
    caller = Caller(gw, new_sid())
    await caller.dial()
    await caller.open()
    await caller.start(params=dict(caller.params, callSid=new_sid()))
    with pytest.raises(ConnectionClosed) as e:
        await caller.recv()
    assert e.value.rcvd is not None and e.value.rcvd.code == 1008

    # A valid start uses the token up; replaying it on a second socket is refused.
    caller2 = Caller(gw, new_sid())
    await caller2.dial()
    await caller2.open()
    await caller2.start()
    replay = Caller(gw, caller2.call)
    replay.url, replay.params = caller2.url, caller2.params
    await replay.open()
    await replay.start()
    with pytest.raises(ConnectionClosed) as e:
        await replay.recv()
    assert e.value.rcvd is not None and e.value.rcvd.code == 1008
    assert caller2.ws is not None
    await caller2.ws.close()


async def test_upgrade_signed_over_another_url_is_refused(gw: Gw) -> None:
    caller = Caller(gw, new_sid())
    await caller.dial()
    with pytest.raises(InvalidStatus) as e:
        await caller.open(sign_url="wss://elsewhere.example.com/twilio-stream")
    assert e.value.response.status_code == 403


async def publish_turn(
    bus: NATS, call: str, turn: int, texts: list[str], audio: list[bytes]
) -> None:
    """Reply text, then each segment's audio in reverse segment order and two chunks each."""
    for seq, text in enumerate(texts):
        seg = ReplySegment(
            call_sid=call,
            turn=turn,
            seq=seq,
            text=text,
            last=seq == len(texts) - 1,
            speech_ended_at=time.time() - 0.5,
        )
        await bus.publish(subjects.reply(call), seg.to_bytes())
    for seq in reversed(range(len(texts))):
        data = audio[seq]
        half = len(data) // 2
        for chunk, body, last in ((1, data[half:], True), (0, data[:half], False)):
            hdrs = {H.TURN: str(turn), H.SEG: str(seq), H.CHUNK: str(chunk)}
            if last:
                hdrs[H.LAST] = "1"
            await bus.publish(subjects.audio_out(call), body, headers=hdrs)
    await bus.flush()


async def test_reply_audio_played_in_order_with_marks_and_played_reports(gw: Gw, bus: NATS) -> None:
    caller, control, asr = await started_call(gw, bus)
    events = await tap(bus, subjects.events(caller.call))
    seg0, seg1 = b"\x10" * 480, b"\x20" * 320
    await publish_turn(bus, caller.call, 1, ["Hello there.", "How can I help?"], [seg0, seg1])
    got = b""
    marks: list[str] = []
    while len(marks) < 2:
        msg = await caller.recv()
        assert msg["streamSid"] == caller.stream_sid
        assert msg["event"] in ("media", "mark")
        if msg["event"] == "media":
            assert set(msg) == {"event", "streamSid", "media"}
            got += base64.b64decode(msg["media"]["payload"])
        else:
            marks.append(msg["mark"]["name"])
            assert got == (seg0 if len(marks) == 1 else seg0 + seg1)
    assert marks == ["1:0", "1:1"]
    first = await events.wait_for(event_named("turn.first_audio"))
    assert first.turn == 1 and 400 <= first.data["voice_to_voice_ms"] < 5000
    for name in marks:  # Twilio echoes marks once played
        await caller.mark(name)
    played = await control.wait_for(
        lambda m: (c := parse_control(m.data)).type == "played" and c.seq == 1 and c
    )
    assert played.complete and played.heard_text == "How can I help?"
    asr.stop()


async def test_hangup_waits_for_the_turn_to_be_heard(gw: Gw, bus: NATS) -> None:
    caller, control, asr = await started_call(gw, bus)
    hangup = Hangup(call_sid=caller.call, after_turn=2)
    await publish_turn(bus, caller.call, 2, ["Goodbye."], [b"\x30" * 320])
    await bus.publish(subjects.control(caller.call), hangup.to_bytes())
    msgs = [await caller.recv() for _ in range(3)]  # two frames and the mark
    assert msgs[-1]["event"] == "mark"
    await asyncio.sleep(0.3)
    assert caller.call in gw.gateway.calls  # not before Twilio played it
    await caller.mark(msgs[-1]["mark"]["name"])
    with pytest.raises(ConnectionClosed):
        while True:
            await caller.recv()
    ended = await control.wait_for(control_of("call_ended"))
    assert ended.reason.startswith("hangup")
    asr.stop()


async def test_interrupt_from_the_bus_clears_twilio_and_reports_heard(gw: Gw, bus: NATS) -> None:
    caller, control, asr = await started_call(gw, bus)
    long_audio = b"\x40" * 8000 * 3  # 3 s: still playing when interrupted
    await publish_turn(bus, caller.call, 5, ["one two three four five six"], [long_audio])
    await caller.recv()
    await asyncio.sleep(0.3)
    await bus.publish(
        subjects.control(caller.call), Interrupt(call_sid=caller.call, turn=5).to_bytes()
    )
    while (msg := await caller.recv())["event"] != "clear":
        assert msg["event"] == "media"
    assert msg == {"event": "clear", "streamSid": caller.stream_sid}
    played = await control.wait_for(control_of("played"))
    assert not played.complete and played.turn == 5
    assert "one two three four five six".startswith(played.heard_text)
    with pytest.raises(TimeoutError):
        await caller.recv(within=0.3)  # nothing more of that turn
    asr.stop()


def speech() -> bytes:
    """A few seconds of synthetic human speech (espeak-ng), 8 kHz mu-law."""
    pytest.importorskip("espeakng_loader")
    from services.tts.providers.espeak import EspeakTts

    async def synth() -> bytes:
        tts = EspeakTts(settings=Settings())
        await tts.warm_up()
        out = b""
        async for c in tts.synthesize("Wait, wait, I would like to book a table for two."):
            out += c
        return out

    result: list[bytes] = []

    def run() -> None:
        result.append(asyncio.run(synth()))

    import threading

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return result[0]


async def test_caller_speech_over_agent_audio_barges_in(gw: Gw, bus: NATS) -> None:
    voice = await asyncio.to_thread(speech)
    caller, control, asr = await started_call(gw, bus)
    text = "This is a long answer that the caller will not wait for."
    await publish_turn(bus, caller.call, 7, [text], [b"\xff" * 8000 * 5])
    await caller.recv()
    sent_at = time.monotonic()
    cleared = asyncio.Event()

    async def read() -> None:
        while (await caller.recv())["event"] != "clear":
            pass
        cleared.set()

    reader = asyncio.create_task(read())
    for i in range(0, len(voice) - 160, 160):  # real time, like Twilio
        if cleared.is_set():
            break
        await caller.media(voice[i : i + 160])
        await asyncio.sleep(max(0.0, sent_at + (i // 160 + 1) * 0.02 - time.monotonic()))
    await asyncio.wait_for(reader, 2)
    took = time.monotonic() - sent_at
    assert took < 1.5, f"barge-in took {took:.2f}s"
    # The clear paused the turn; the caller's words (from the recognizer) confirm the barge-in.
    words = Transcript(
        call_sid=caller.call, utterance_id=1, text="Stop, a question.", is_final=True
    )
    await bus.publish(subjects.transcript(caller.call), words.to_bytes())
    interrupt = await control.wait_for(control_of("interrupt"))
    assert interrupt.turn == 7
    played = await control.wait_for(control_of("played"))
    assert played.turn == 7 and not played.complete and text.startswith(played.heard_text)
    await asyncio.sleep(0.3)  # our own Interrupt comes back on control: no second report
    kinds = [parse_control(m.data).type for m in control.msgs]
    assert kinds.count("played") == 1 and kinds.count("interrupt") == 1
    asr.stop()


async def test_sigterm_drains_live_calls_then_stops(nats_url: str, bus: NATS) -> None:
    port = free_port()
    settings = Settings(
        nats_url=nats_url,
        twilio_auth_token=SecretStr(TOKEN),
        public_url=f"http://127.0.0.1:{port}",
        drain_grace_s=10,
    )
    gateway = Gateway(settings=settings, use_vad=False)

    class Server(GatewayServer):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        create_app(settings=settings, gateway=gateway), host="127.0.0.1", port=port, log_config=None
    )
    server = Server(config, gateway=gateway, grace_s=settings.drain_grace_s)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    gw = Gw(base=f"http://127.0.0.1:{port}", settings=settings, gateway=gateway)
    caller = Caller(gw, new_sid())
    control = await tap(bus, subjects.control(caller.call))
    await caller.dial()
    await caller.open()
    await caller.start()
    await control.wait_for(control_of("call_started"))

    server.handle_exit(signal.SIGTERM, None)
    async with httpx.AsyncClient(base_url=gw.base) as http:
        r = await http.get("/healthz")
        assert r.status_code == 503
        params = {"CallSid": new_sid()}
        sig = RequestValidator(TOKEN).compute_signature(settings.voice_url, params)
        r = await http.post("/voice", data=params, headers={"X-Twilio-Signature": sig})
        assert ET.fromstring(r.text).find("Hangup") is not None  # new calls turned away
    await asyncio.sleep(0.3)
    assert not task.done()  # the live call goes on
    await caller.media(b"\x01" * 160)
    await caller.send({"event": "stop", "streamSid": caller.stream_sid})
    await asyncio.wait_for(task, 10)  # the last call ended: the server stops by itself
    ended = await control.wait_for(control_of("call_ended"))
    assert ended.reason == "stop"
