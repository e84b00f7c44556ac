"""The ASR worker process (`python -m services.asr`) running Deepgram against the local fake.

Plays the gateway on a private NATS server: claims a call, publishes Twilio-sized frames,
reads what the worker publishes. Checks the provider choice from settings, a transcript
through Deepgram, and what a caller gets when Deepgram fails for good mid-call: one
``StageFailed`` (the agent apologizes) and the rest of the call recognized locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from devkit.fakes.deepgram import FakeDeepgram
from services.asr.transcript_filter import normalize_words
from shared import headers as H
from shared import subjects
from shared.audio import frames
from shared.messages import (
    AsrClaim,
    AsrClaimReply,
    CallEnded,
    Event,
    StageFailed,
    Transcript,
    parse_control,
    parse_event,
    parse_transcript,
)
from tests.serviceproc import ROOT, ServiceProcess
from tests.speech import silence_mulaw, synthesize_mulaw

pytestmark = pytest.mark.integration

KEY = "dg-worker-key"
SENTENCE = "Can I speak to the pharmacy please?"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeDeepgram]:
    with FakeDeepgram(api_key=KEY) as f:
        f.warm_up(600)
        yield f


@pytest.fixture(scope="module")
def worker(private_nats: str, fake: FakeDeepgram) -> Iterator[list[str]]:
    """The worker process with ASR_PROVIDER=auto and a Deepgram key; yields its log lines."""
    env = {
        "NATS_URL": private_nats,
        "ASR_PROVIDER": "auto",
        "DEEPGRAM_API_KEY": KEY,
        "DEEPGRAM_URL": fake.url,
        "PROVIDER_TIMEOUT_S": "3",
        "ASR_STALL_S": "2",
        "LOG_FORMAT": "text",
        "METRICS_PORT": "0",
    }
    w = ServiceProcess("asr", env=env)
    try:
        w.wait_for_log("asr worker ready", timeout=60)
        yield w.log
    finally:
        w.stop()


@pytest.fixture
async def nc(private_nats: str, worker: list[str]) -> AsyncIterator[NATS]:
    client = await nats.connect(private_nats)
    yield client
    await client.close()


class Call:
    """The gateway's side of one call."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.sid = "CA" + uuid.uuid4().hex
        self.transcripts: asyncio.Queue[Transcript] = asyncio.Queue()
        self.control: list[StageFailed] = []
        self.failed = asyncio.Event()
        self.events: list[Event] = []
        self.seq = 0
        self.worker_id = ""  # the worker that accepted the claim: audio is addressed to it

    async def start(self) -> AsrClaimReply:
        await self.nc.subscribe(subjects.transcript(self.sid), cb=self._on_transcript)
        await self.nc.subscribe(subjects.asr_control(self.sid), cb=self._on_control)
        await self.nc.subscribe(subjects.events(self.sid), cb=self._on_event)
        claim = AsrClaim(call_sid=self.sid, gateway_id="gw-test")
        reply = await self.nc.request(subjects.ASR_CLAIM, claim.to_bytes(), timeout=5)
        answer = AsrClaimReply.model_validate_json(reply.data)
        if answer.accepted:
            self.worker_id = answer.worker_id
        return answer

    async def _on_transcript(self, msg: Msg) -> None:
        m = parse_transcript(msg.data)
        if isinstance(m, Transcript) and m.is_final and m.text:
            self.transcripts.put_nowait(m)

    async def _on_control(self, msg: Msg) -> None:
        m = parse_control(msg.data)
        if isinstance(m, StageFailed):
            self.control.append(m)
            self.failed.set()

    async def _on_event(self, msg: Msg) -> None:
        self.events.append(parse_event(msg.data))

    async def send(self, audio: bytes, *, speed: float = 4.0) -> None:
        for frame in frames(audio):
            self.seq += 1
            headers = {
                H.SEQ: str(self.seq),
                H.TS_MS: str((self.seq - 1) * 20),
                H.SENT_NS: str(time.time_ns()),
            }
            await self.nc.publish(
                subjects.audio_in(self.sid, self.worker_id), frame, headers=headers
            )
            await asyncio.sleep(0.02 / speed)

    async def end(self) -> None:
        await self.nc.publish(subjects.control(self.sid), CallEnded(call_sid=self.sid).to_bytes())
        await self.nc.flush()


async def test_auto_with_a_key_runs_deepgram_and_publishes_its_transcript(
    nc: NATS, fake: FakeDeepgram, worker: list[str]
) -> None:
    fake.reset()
    assert any("asr provider selected" in ln and "provider=deepgram" in ln for ln in worker)
    # Rendered before the claim: Deepgram's deadline runs from the start of the stream.
    audio = silence_mulaw(500) + synthesize_mulaw(SENTENCE) + silence_mulaw(1500)
    call = Call(nc)
    assert (await call.start()).accepted
    await call.send(audio)
    final = await asyncio.wait_for(call.transcripts.get(), 20)
    assert {"speak", "pharmacy"} <= set(normalize_words(final.text))
    assert final.speech_start_ms is not None and 300 <= final.speech_start_ms <= 800
    assert any(c.key_ok and c.status == 101 for c in fake.connections)
    assert call.control == [], "".join(worker)  # nothing failed: no apology
    await call.end()


async def test_deepgram_failing_for_good_apologizes_once_and_goes_on_locally(
    nc: NATS, fake: FakeDeepgram
) -> None:
    fake.reset()
    fake.inject("500", times=-1)  # Deepgram is down for the rest of the call
    call = Call(nc)
    assert (await call.start()).accepted
    sender = asyncio.create_task(call.send(silence_mulaw(4000), speed=1.0))
    t0 = time.monotonic()
    await asyncio.wait_for(call.failed.wait(), 10)
    assert time.monotonic() - t0 < 3 + 1.5  # within the provider deadline, not minutes
    [failed] = call.control
    assert failed.service == "asr" and "deepgram" in failed.reason
    await sender

    # The caller goes on talking: the local recognizer hears it.
    await call.send(silence_mulaw(300) + synthesize_mulaw(SENTENCE) + silence_mulaw(1200))
    final = await asyncio.wait_for(call.transcripts.get(), 20)
    assert {"speak", "pharmacy"} <= set(normalize_words(final.text))
    names = [e.name for e in call.events]
    assert "asr.fallback" in names and "asr.failed" not in names
    assert len(call.control) == 1  # one apology, however often Deepgram was retried
    assert len(fake.connections) >= 2
    fake.clear_faults()
    with contextlib.suppress(Exception):
        await call.end()


def test_a_refused_key_stops_the_worker_at_start(private_nats: str, fake: FakeDeepgram) -> None:
    env = {
        **os.environ,
        "NATS_URL": private_nats,
        "ASR_PROVIDER": "deepgram",
        "DEEPGRAM_API_KEY": "revoked",
        "DEEPGRAM_URL": fake.url,
        "LOG_FORMAT": "text",
        "METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.asr"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "deepgram refused the API key" in done.stderr
    assert "revoked" not in done.stderr  # the key itself is never logged
