"""The gateway's front door against strangers, over the running gateway, real NATS and Redis.

Replayed ``/voice`` webhooks, unsigned junk from a shared address, ambiguous admin tokens,
oversized WebSocket frames, key and frame floods, recordings streamed to disk. Each test keeps
a good call (or request) beside the bad input and checks that it goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import pytest
from cryptography.fernet import Fernet
from nats.aio.client import Client as NATS
from pydantic import SecretStr
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.gateway.recording import CHUNK_BYTES, RecordingStore
from shared import subjects
from shared.messages import parse_control
from shared.settings import Settings
from tests.gatewayserver import Gw, serve_gateway
from tests.natsserver import free_port, private_nats_server
from tests.unit.test_gateway_stream import (
    TOKEN,
    Caller,
    control_of,
    new_sid,
    started_call,
    tap,
)

pytestmark = pytest.mark.integration

ADMIN = "front-door-admin-7c1d9e2f"
BASE64_ADMIN = "q83vEjRWeJA+/Zx9LmN0pQ=="  # a base64 secret: '+', '/' and '=' padding


@pytest.fixture(scope="module")
def js_url() -> Iterator[str]:
    """A private NATS with JetStream: no other run's ASR worker claims our calls."""
    with private_nats_server(jetstream=True) as url:
        yield url


@pytest.fixture
async def bus(js_url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(js_url)
    try:
        yield nc
    finally:
        await nc.drain()


def settings_for(js_url: str, redis_url: str, port: int, **over: Any) -> Settings:
    base: dict[str, Any] = {
        "nats_url": js_url,
        "redis_url": redis_url,
        "twilio_auth_token": SecretStr(TOKEN),
        "public_url": f"http://127.0.0.1:{port}",
        "ws_max_message_bytes": 4096,
        "admin_token": SecretStr(ADMIN),
    }
    base.update(over)
    return Settings(**base)


@contextlib.asynccontextmanager
async def gateway(js_url: str, redis_url: str, **over: Any) -> AsyncIterator[Gw]:
    port = free_port()
    async with serve_gateway(
        settings_for(js_url, redis_url, port, **over), port=port, use_vad=False, lifespan="on"
    ) as gw:
        yield gw


async def post_voice(
    gw: Gw,
    params: dict[str, str],
    *,
    sign: bool = True,
    peer_headers: dict[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
) -> httpx.Response:
    headers = dict(peer_headers or {})
    if sign:
        headers["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(
            gw.settings.voice_url, params
        )
    if http is not None:
        return await http.post("/voice", data=params, headers=headers)
    async with httpx.AsyncClient(base_url=gw.base) as client:
        return await client.post("/voice", data=params, headers=headers)


def answer(r: httpx.Response) -> str:
    """``connect`` (a stream token), ``busy`` (apology and hang up), or the status code."""
    if r.status_code != 200:
        return str(r.status_code)
    root = ET.fromstring(r.text)
    if root.find("Connect/Stream") is not None:
        return "connect"
    return "busy" if root.find("Hangup") is not None else r.text


async def metric(gw: Gw, name: str, **labels: str) -> float:
    """One sample of the gateway's ``/metrics`` (0 when absent)."""
    async with httpx.AsyncClient(base_url=gw.base) as http:
        text = (await http.get("/metrics")).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            got = ",".join(sorted(line[line.index("{") + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


T = TypeVar("T")


async def poll(read: Callable[[], T], done: Callable[[T], bool], within: float = 5.0) -> T:
    """``read()`` (in a thread) until ``done`` says so or ``within`` seconds passed."""
    deadline = time.monotonic() + within
    while True:
        got = await asyncio.to_thread(read)
        if done(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def _partial(directory: Path) -> tuple[list[Path], int]:
    """Recordings still being written, and how many chunks the first one has."""
    live = sorted(directory.glob(".tmp-*"))
    return live, live[0].read_bytes().count(b"\n") if live else 0


# ---------------------------------------------------------------- 1. replayed /voice


async def test_replayed_voice_gets_the_busy_twiml_on_every_replica(
    js_url: str, redis_url: str
) -> None:
    async with gateway(js_url, redis_url) as a:
        port_b = free_port()
        # Replica B behind the same public URL (Twilio signs that one URL for both).
        s_b = settings_for(js_url, redis_url, port_b, public_url=a.settings.public_url)
        async with serve_gateway(s_b, port=port_b, use_vad=False, lifespan="on") as b:
            call = new_sid()
            params = {"CallSid": call, "AccountSid": "AC" + "1" * 32, "From": "+15551112222"}
            replayed0 = await metric(
                a, "voice_bad_messages_total", service="gateway", source="voice_replayed"
            )
            first = await post_voice(a, params)
            assert answer(first) == "connect"
            # The same signed POST again: to the same replica, and to the other one.
            assert answer(await post_voice(a, params)) == "busy"
            assert answer(await post_voice(b, params)) == "busy"
            # Only one token was ever minted for the call, whichever path asks for one.
            assert await a.gateway.admit(call) is None and await b.gateway.admit(call) is None
            # A good call beside the replays is admitted by either replica.
            assert answer(await post_voice(b, {**params, "CallSid": new_sid()})) == "connect"
            assert (
                await metric(
                    a, "voice_bad_messages_total", service="gateway", source="voice_replayed"
                )
                - replayed0
                == 2  # the two replayed POSTs (both replicas share this process's registry)
            )


async def test_replayed_voice_cannot_reopen_a_stream_after_the_call_started(
    js_url: str, redis_url: str, bus: NATS
) -> None:
    async with gateway(js_url, redis_url) as gw:
        caller, _, asr = await started_call(gw, bus)
        params = {"CallSid": caller.call, "AccountSid": "AC" + "1" * 32, "From": "+15551112222"}
        assert answer(await post_voice(gw, params)) == "busy", "no second token for the call"
        # A captured start (same call, same token) on a second signed upgrade is refused.
        thief = Caller(gw, caller.call)
        thief.url, thief.params = caller.url, caller.params
        await thief.open()
        await thief.start()
        with pytest.raises(ConnectionClosed) as e:
            await thief.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1008
        # The real call goes on.
        audio_in = await tap(bus, subjects.audio_in_any(caller.call))
        await caller.media(b"\x42" * 160)
        assert await audio_in.wait_for(lambda m: m.data == b"\x42" * 160)
        asr.stop()


async def test_voice_admits_only_the_twilio_call_sid_shape(js_url: str, redis_url: str) -> None:
    async with gateway(js_url, redis_url) as gw:
        good = new_sid()
        for bad in (
            good[:-1],  # 31 hex
            good + "0",  # 33 hex
            "CA" + "g" * 32,
            "ca" + good[2:],
            "CA123",
            "CA" + "0" * 30 + "..",
            "CA" + "0" * 32 + "\n",
            "",
        ):
            r = await post_voice(gw, {"CallSid": bad, "From": "+15551112222"})
            assert r.status_code == 400, (bad, r.text)
        upper = "CA" + new_sid()[2:].upper()
        assert answer(await post_voice(gw, {"CallSid": upper})) == "connect"
        assert answer(await post_voice(gw, {"CallSid": good})) == "connect"


async def test_redis_down_admits_new_calls_and_still_refuses_a_replay_here(js_url: str) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with gateway(js_url, down) as gw:
        params = {"CallSid": new_sid(), "From": "+15551112222"}
        t0 = time.monotonic()
        assert answer(await post_voice(gw, params)) == "connect", "never block real calls"
        assert time.monotonic() - t0 < 3.0
        assert answer(await post_voice(gw, params)) == "busy", "this replica remembers"
        assert answer(await post_voice(gw, {**params, "CallSid": new_sid()})) == "connect"


# ---------------------------------------------------------------- 2. junk vs signed traffic


async def test_unsigned_junk_never_locks_out_signed_webhooks(js_url: str, redis_url: str) -> None:
    async with (
        gateway(
            js_url,
            redis_url,
            voice_rate_burst=5,
            voice_rate_per_min=60.0,
            voice_unsigned_burst=3,
            voice_unsigned_rate_per_min=1.0,  # no refill worth counting during the test
        ) as gw,
        httpx.AsyncClient(base_url=gw.base) as http,
    ):
        junk = {"CallSid": new_sid(), "From": "+15550000000"}
        limited0 = await metric(
            gw, "voice_bad_messages_total", service="gateway", source="unsigned_rate_limited"
        )
        codes = [(await post_voice(gw, junk, sign=False, http=http)).status_code for _ in range(20)]
        forged = {"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}
        codes += [
            (await post_voice(gw, junk, sign=False, peer_headers=forged, http=http)).status_code
            for _ in range(20)
        ]
        assert codes[:3] == [403, 403, 403] and set(codes[3:]) == {429}, codes
        # Same address, correctly signed: admitted, whatever junk came before.
        for _ in range(3):
            r = await post_voice(gw, {"CallSid": new_sid(), "From": "+15551112222"}, http=http)
            assert answer(r) == "connect"
        limited = await metric(
            gw, "voice_bad_messages_total", service="gateway", source="unsigned_rate_limited"
        )
        assert limited - limited0 == codes.count(429)


# ---------------------------------------------------------------- 3. ADMIN_TOKEN


async def test_a_base64_admin_token_is_one_token_and_the_console_is_on(
    js_url: str, redis_url: str
) -> None:
    async with (
        gateway(js_url, redis_url, admin_token=SecretStr(BASE64_ADMIN)) as gw,
        httpx.AsyncClient(base_url=gw.base) as http,
    ):
        ok = await http.get("/calls", headers={"Authorization": f"Bearer {BASE64_ADMIN}"})
        assert ok.status_code == 200
        for wrong in ("=", "==", BASE64_ADMIN.rstrip("="), "q83vEjRWeJA+"):
            r = await http.get("/calls", headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 401, wrong
        assert (await http.get("/console")).status_code == 200


@pytest.mark.parametrize("value", ["ann=t1,bob=t2", "ann:short"])  # the rest: unit tests
def test_an_ambiguous_admin_token_stops_the_gateway_with_one_line(
    value: str, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ADMIN_TOKEN": value,
        "PORT": str(free_port()),
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "LOG_FORMAT": "text",
    }
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=tmp_path,  # no .env of the checkout
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ADMIN_TOKEN" in ln]
    assert len(lines) == 1 and "gateway not started" in lines[0], proc.stderr
    assert "t2" not in lines[0] and "1234567890" not in lines[0]


# ---------------------------------------------------------------- 7. frame limits


async def test_an_oversized_frame_closes_only_its_own_socket(
    js_url: str, redis_url: str, bus: NATS
) -> None:
    async with gateway(js_url, redis_url) as gw:
        good, _, asr = await started_call(gw, bus)
        audio_in = await tap(bus, subjects.audio_in_any(good.call))
        bad, _, asr2 = await started_call(gw, bus)
        assert bad.ws is not None
        await bad.ws.send("x" * 5000)  # over ws_max_message_bytes=4096
        with pytest.raises(ConnectionClosed) as e:
            await bad.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009
        # Before any start too: 3 MB is never read.
        lurker = Caller(gw, new_sid())
        lurker.url = gw.settings.stream_url
        ws = await lurker.open()
        await ws.send("[" * 3_000_000)
        with pytest.raises(ConnectionClosed) as e:
            await lurker.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009
        await good.media(b"\x42" * 160)
        assert await audio_in.wait_for(lambda m: m.data == b"\x42" * 160)
        asr.stop()
        asr2.stop()


async def test_the_console_feed_refuses_a_large_first_frame_unread(
    js_url: str, redis_url: str
) -> None:
    async with gateway(js_url, redis_url, ws_max_message_bytes=64 * 1024) as gw:
        feed = gw.base.replace("http", "ws") + "/console/feed"
        async with connect(feed) as ws:
            await ws.send(json.dumps({"token": "x" * 8000}))  # under the server limit
            with pytest.raises(ConnectionClosed) as e:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert e.value.rcvd is not None and e.value.rcvd.code == 1009
        async with connect(feed) as ws:  # the operator beside it gets the feed
            await ws.send(json.dumps({"token": ADMIN}))
            hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert hello["kind"] == "hello"


# ---------------------------------------------------------------- 8. floods


async def dropped(gw: Gw, kind: str) -> float:
    return await metric(gw, "voice_stream_messages_dropped_total", service="gateway", kind=kind)


async def accounted(
    gw: Gw, kind: str, base: float, sent: int, delivered: Callable[[], int], t0: float
) -> tuple[int, int, float]:
    """Wait until every one of ``sent`` messages was delivered or counted as dropped:
    ``(delivered, dropped, seconds since t0)`` (the limiter cannot have refilled for longer)."""
    deadline = time.monotonic() + 10
    while True:
        got, lost = delivered(), int(await dropped(gw, kind) - base)
        if got + lost >= sent or time.monotonic() > deadline:
            await asyncio.sleep(0.2)  # nothing more arrives: the totals are final
            return delivered(), int(await dropped(gw, kind) - base), time.monotonic() - t0
        await asyncio.sleep(0.05)


async def test_key_and_frame_floods_are_dropped_and_counted_the_call_goes_on(
    js_url: str, redis_url: str, bus: NATS
) -> None:
    async with gateway(js_url, redis_url) as gw:
        s = gw.settings
        caller, control, asr = await started_call(gw, bus)
        audio_in = await tap(bus, subjects.audio_in_any(caller.call))

        def keys() -> int:
            return sum(parse_control(m.data).type == "dtmf" for m in control.msgs)

        t0 = time.monotonic()
        base = await dropped(gw, "dtmf")
        for _ in range(60):  # a burst of keys: once, 60 of them started 6 turns
            await caller.send(
                {"event": "dtmf", "streamSid": caller.stream_sid, "dtmf": {"digit": "1"}}
            )
        got, lost, took = await accounted(gw, "dtmf", base, 60, keys, t0)
        assert got + lost == 60 and lost > 0, (got, lost)
        assert s.stream_dtmf_burst <= got <= s.stream_dtmf_burst + s.stream_dtmf_rate_per_s * took

        await asyncio.sleep(s.stream_message_burst / s.stream_message_rate_per_s)  # refill
        n = 600  # 12 s of audio at once: a phone sends 50 frames a second
        t0 = time.monotonic()
        base = await dropped(gw, "message")
        for i in range(n):
            await caller.media(i.to_bytes(2, "big") * 80)
        got, lost, took = await accounted(gw, "message", base, n, lambda: len(audio_in.msgs), t0)
        assert got + lost == n and lost > 0, (got, lost)
        assert got <= s.stream_message_burst + s.stream_message_rate_per_s * took + 1, got
        # At a phone's pace, everything gets through again.
        await asyncio.sleep(1.0)
        for _ in range(5):
            await caller.media(b"\x42" * 160)
            await asyncio.sleep(0.02)
        await audio_in.wait_for(lambda m: sum(x.data == b"\x42" * 160 for x in audio_in.msgs) == 5)
        assert not any(parse_control(m.data).type == "call_ended" for m in control.msgs)
        asr.stop()


async def test_a_phone_paced_call_loses_nothing_to_the_limits(
    js_url: str, redis_url: str, bus: NATS
) -> None:
    async with gateway(js_url, redis_url) as gw:
        caller, control, asr = await started_call(gw, bus)
        audio_in = await tap(bus, subjects.audio_in_any(caller.call))
        base = (await dropped(gw, "message"), await dropped(gw, "dtmf"))  # process-wide counters
        for i in range(150):  # 3 s at Twilio's pace, keys pressed fast (6 a second)
            await caller.media(i.to_bytes(2, "big") * 80)
            if i % 8 == 0:
                await caller.send(
                    {"event": "dtmf", "streamSid": caller.stream_sid, "dtmf": {"digit": "2"}}
                )
            await asyncio.sleep(0.02)
        await audio_in.wait_for(lambda m: len(audio_in.msgs) == 150)
        await control.wait_for(
            lambda m: sum(parse_control(x.data).type == "dtmf" for x in control.msgs) == 19
        )
        assert (await dropped(gw, "message"), await dropped(gw, "dtmf")) == base
        asr.stop()


# ---------------------------------------------------------------- 12. recordings


async def test_recordings_stream_to_an_encrypted_file_while_the_call_goes_on(
    js_url: str, redis_url: str, bus: NATS, tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    async with gateway(
        js_url,
        redis_url,
        record_calls=True,
        recording_key=SecretStr(key),
        recording_dir=tmp_path,
        stream_message_rate_per_s=0,  # this test sends 6 s of audio at once
    ) as gw:
        caller, control, asr = await started_call(gw, bus)
        frames = [bytes([0x30 + i % 64]) * 160 for i in range(300)]  # 6 s: 3 chunks of 2 s
        for f in frames:
            await caller.media(f)
        # On disk during the call, encrypted; memory holds at most one chunk of it.
        live, lines = await poll(lambda: _partial(tmp_path), lambda r: r[1] >= 2)
        assert len(live) == 1 and lines >= 2, "audio is written as it arrives"
        data, mode = await asyncio.to_thread(lambda: (live[0].read_bytes(), live[0].stat().st_mode))
        assert frames[0] not in data and mode & 0o777 == 0o600
        assert 48_000 - CHUNK_BYTES <= lines * CHUNK_BYTES <= 48_000
        await caller.send(
            {
                "event": "stop",
                "streamSid": caller.stream_sid,
                "stop": {"accountSid": "AC1", "callSid": caller.call},
            }
        )
        await control.wait_for(control_of("call_ended"))
        store = RecordingStore(directory=tmp_path, key=key.encode(), retention_s=86400)
        audio = await poll(lambda: store.load(caller.call), lambda a: a is not None)
        assert audio == b"".join(frames)
        assert (await asyncio.to_thread(_partial, tmp_path))[0] == []
        async with httpx.AsyncClient(base_url=gw.base) as http:
            r = await http.get(
                f"/calls/{caller.call}/recording",
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
        assert r.status_code == 200 and r.content == b"".join(frames)
        asr.stop()
