"""Fuzz the gateway (hypothesis): malformed, truncated, oversized and hostile Twilio messages
and HTTP requests, while a good call runs beside them.

Proof: the gateway never crashes (no 5xx, healthz stays 200), nothing of the good call reaches a
hostile socket, nothing a hostile socket sends reaches the good call's audio, and the good call
gets every one of its frames, in order, and its reply audio. Bounded to run in well under 30 s;
tests/fuzz/ has the long atheris run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from pydantic import SecretStr
from twilio.request_validator import RequestValidator
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as sync_connect

from shared import headers as H
from shared import subjects
from shared.messages import AsrClaim, AsrClaimReply, AsrHeartbeat
from shared.settings import Settings
from tests.gatewayserver import Gw, serve_gateway
from tests.natsserver import free_port

TOKEN = "fuzz-auth-token"
ADMIN = "fuzz-admin-token-0b9d"
WS_LIMIT = 4096


@pytest.fixture
async def gw(private_nats: str) -> AsyncIterator[Gw]:
    port = free_port()
    s = Settings(
        nats_url=private_nats,
        redis_url="",
        twilio_auth_token=SecretStr(TOKEN),
        admin_token=SecretStr(ADMIN),
        public_url=f"http://127.0.0.1:{port}",
        ws_max_message_bytes=WS_LIMIT,
        max_calls=10_000,
        voice_rate_per_min=0,  # the fuzzer is one client; rate limits have their own test
        playback_lead_ms=100,
        silence_reprompt_s=600.0,  # the good call sends no speech: no silence hangup mid-test
    )
    async with serve_gateway(s, port=port, use_vad=False, stop_within=20) as gw:
        yield gw


def dial(base: str, s: Settings, call: str) -> tuple[str, dict[str, str]]:
    """POST /voice as Twilio would; the stream URL and its <Parameter>s."""
    params = {"CallSid": call, "AccountSid": "AC" + "1" * 32, "From": "+15551112222"}
    sig = RequestValidator(TOKEN).compute_signature(s.voice_url, params)
    r = httpx.post(base + "/voice", data=params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 200, r.text
    stream = ET.fromstring(r.text).find("Connect/Stream")
    assert stream is not None, r.text
    return stream.get("url") or "", {p.get("name") or "": p.get("value") or "" for p in stream}


def start_msg(call: str, stream_sid: str, params: dict[str, str]) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": "AC" + "1" * 32,
                "callSid": call,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media_msg(stream_sid: str, frame: bytes, n: int) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(n + 2),
            "streamSid": stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(n),
                "timestamp": str(n * 20),
                "payload": base64.b64encode(frame).decode(),
            },
        }
    )


# ------------------------------------------------------------------ hostile input strategies

GOOD: dict[str, str] = {}  # the good call's ids, filled in before the fuzzing starts

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=20,
)
events = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "clear", "x"])


@st.composite
def twilio_like(draw: st.DrawFn, stream_sid: str) -> str:
    """Messages shaped like Twilio's, with hostile fields (often aimed at the good call)."""
    target = draw(st.sampled_from([stream_sid, GOOD.get("stream", ""), "MZ" + "0" * 32]))
    kind = draw(events)
    body: dict[str, Any] = {"event": kind, "streamSid": target}
    if kind == "media":
        payload = draw(
            st.one_of(
                st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
                st.text(max_size=200),  # not base64
                st.just("A" * 9000),  # over the media payload limit
            )
        )
        body["media"] = {
            "track": draw(st.sampled_from(["inbound", "outbound", ""])),
            "payload": payload,
        }
    elif kind == "start":
        call = draw(st.sampled_from([GOOD.get("call", ""), "CA" + "9" * 32, "CA.*.>", ""]))
        params = draw(st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=4))
        body["start"] = {
            "streamSid": target,
            "accountSid": "AC1",
            "callSid": call,
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
    elif kind == "mark":
        body["mark"] = {"name": draw(st.text(max_size=300))}
    elif kind == "dtmf":
        body["dtmf"] = {"digit": draw(st.text(max_size=3))}
    elif kind == "stop":
        body["stop"] = {"callSid": GOOD.get("call", "")}
    else:
        body[draw(st.text(max_size=8))] = draw(json_values)
    text = json.dumps(body)
    if draw(st.booleans()) and len(text) > 2:  # truncated
        text = text[: draw(st.integers(1, len(text) - 1))]
    return text


def hostile_frames(stream_sid: str) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        twilio_like(stream_sid),
        st.text(max_size=300),
        st.binary(max_size=300),
        json_values.map(json.dumps),
        st.integers(WS_LIMIT + 1, 40_000).map(
            lambda n: json.dumps({"event": "media", "x": "y" * n})
        ),
        st.integers(100, 5000).map(lambda n: "[" * n),  # deep nesting
        st.just('{"event":"media","streamSid":"' + "M" * 5000 + '"}'),
    )


@st.composite
def hostile_session(draw: st.DrawFn) -> tuple[bool, list[str | bytes], str]:
    started = draw(st.booleans())
    stream_sid = "MZ" + uuid.uuid4().hex
    frames = draw(st.lists(hostile_frames(stream_sid), min_size=1, max_size=8))
    return started, frames, stream_sid


http_paths = st.sampled_from(
    [
        "/voice",
        "/calls",
        "/websocket-status",
        "/websocket-metrics",
        "/healthz",
        "/calls/CA1/transcript",
        "/calls/%2e%2e/recording",
        "/twilio-stream",
        "/nope",
    ]
)
# h11 (the client) refuses leading/trailing whitespace: strip it, keep the rest hostile.
header_values = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80
).map(str.strip)


def run_hostile(gw: Gw, seen_by_hostiles: list[str]) -> None:
    """Runs in a thread (sync clients) while the good call streams in the event loop."""
    s = gw.settings

    @settings(
        max_examples=20,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(hostile_session())
    def sockets(session: tuple[bool, list[str | bytes], str]) -> None:
        started, frames, stream_sid = session
        call = "CA" + uuid.uuid4().hex
        url, params = dial(gw.base, s, call)
        sig = RequestValidator(TOKEN).compute_signature(url, {})
        with sync_connect(
            url, additional_headers={"X-Twilio-Signature": sig}, open_timeout=5, max_size=2**20
        ) as ws:
            try:
                if started:
                    ws.send(start_msg(call, stream_sid, params))
                for f in frames:
                    ws.send(f)
                with contextlib.suppress(TimeoutError):
                    while True:
                        got = ws.recv(timeout=0.05)
                        seen_by_hostiles.append(got if isinstance(got, str) else got.hex())
            except ConnectionClosed as e:
                # 1009: a frame over WS_MAX_MESSAGE_BYTES, refused by the server unread.
                assert e.rcvd is None or e.rcvd.code in (1000, 1008, 1009), e
        # A start without the token, or for the good call, never gets in.

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(
        http_paths,
        st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
        st.dictionaries(
            st.sampled_from(
                [
                    "authorization",
                    "x-twilio-signature",
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "content-type",
                ]
            ),
            header_values,
            max_size=4,
        ),
        st.one_of(
            st.binary(max_size=2000),
            st.just(b"CallSid=" + b"A" * 70_000),
            st.dictionaries(st.text(max_size=10), st.text(max_size=50)).map(
                lambda d: httpx.QueryParams(d).__str__().encode()
            ),
        ),
    )
    def requests(path: str, method: str, headers: dict[str, str], body: bytes) -> None:
        r = httpx.request(method, gw.base + path, headers=headers, content=body, timeout=5)
        assert r.status_code < 500, (method, path, r.status_code)
        if path in ("/calls", "/websocket-status", "/websocket-metrics") or "transcript" in path:
            assert r.status_code in (401, 404, 405), (path, r.status_code)
        assert GOOD["call"] not in r.text

    # Unsigned or wrongly signed upgrades are refused before any message is read.
    for sig in ({}, {"X-Twilio-Signature": "AAAA"}):
        with pytest.raises(InvalidStatus):
            sync_connect(
                gw.base.replace("http", "ws") + "/twilio-stream",
                additional_headers=sig,
                open_timeout=5,
            )
    sockets()
    requests()


async def test_fuzzed_gateway_keeps_the_good_call_whole(gw: Gw) -> None:
    from websockets.asyncio.client import connect

    bus = await nats.connect(gw.settings.nats_url)
    call, stream_sid = "CA" + uuid.uuid4().hex, "MZ" + uuid.uuid4().hex
    GOOD.update(call=call, stream=stream_sid)
    received: list[bytes] = []

    async def on_audio(msg: Msg) -> None:
        received.append(msg.data)

    async def on_claim(msg: Msg) -> None:
        claim = AsrClaim.model_validate_json(msg.data)
        ok = claim.call_sid == call
        await msg.respond(
            AsrClaimReply(call_sid=claim.call_sid, worker_id="asr-fuzz", accepted=ok).to_bytes()
        )

    async def beat() -> None:
        while True:
            hb = AsrHeartbeat(call_sid=call, worker_id="asr-fuzz")
            await bus.publish(subjects.asr_heartbeat(call), hb.to_bytes())
            await asyncio.sleep(0.5)

    await bus.subscribe(subjects.audio_in(call, "asr-fuzz"), cb=on_audio)
    await bus.subscribe(subjects.ASR_CLAIM, cb=on_claim)
    await bus.flush()
    beater = asyncio.create_task(beat())

    url, params = await asyncio.to_thread(dial, gw.base, gw.settings, call)
    sig = RequestValidator(TOKEN).compute_signature(url, {})
    ws = await connect(url, additional_headers={"X-Twilio-Signature": sig})
    await ws.send(start_msg(call, stream_sid, params))
    sent: list[bytes] = []
    stop = threading.Event()

    async def talk() -> None:
        n = 0
        while not stop.is_set():
            frame = n.to_bytes(4, "big") * 40  # 160 bytes, unique per frame
            await ws.send(media_msg(stream_sid, frame, n))
            sent.append(frame)
            n += 1
            await asyncio.sleep(0.02)

    talker = asyncio.create_task(talk())
    seen_by_hostiles: list[str] = []
    try:
        await asyncio.wait_for(asyncio.to_thread(run_hostile, gw, seen_by_hostiles), 120)
    finally:
        stop.set()
        await talker

    # The good call still plays reply audio, in order, with its mark.
    reply = b"\x55" * 320
    hdrs = {H.TURN: "1", H.SEG: "0", H.CHUNK: "0", H.LAST: "1"}
    await bus.publish(subjects.audio_out(call), reply, headers=hdrs)
    got = b""
    with contextlib.suppress(TimeoutError):
        while len(got) < len(reply):
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert msg["streamSid"] == stream_sid
            if msg["event"] == "media":
                got += base64.b64decode(msg["media"]["payload"])
    assert got == reply, "the good call stopped playing audio"

    deadline = time.monotonic() + 5
    while len(received) < len(sent) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await ws.close()
    beater.cancel()
    await bus.drain()

    assert len(sent) > 100
    assert received == sent, "the good call lost, reordered or gained frames"
    assert not any(call in m or stream_sid in m for m in seen_by_hostiles), "leak to a hostile"
    async with httpx.AsyncClient(base_url=gw.base) as http:
        assert (await http.get("/healthz")).status_code == 200
