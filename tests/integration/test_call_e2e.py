"""A whole call through the real system: four service processes, real NATS and Redis.

The simulated caller speaks Twilio's protocol (signed webhook, signed WebSocket, 20 ms mu-law
frames on a real-time clock, marks echoed as played); a separate bus subscription checks what
crossed NATS, so the assertions do not rest on the simulator alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats
import numpy as np
import pytest

from devkit.simulator import SimulatedCall, new_sid, place_call, say, word_recall
from shared import headers as H
from shared import subjects
from shared.audio import ulaw_to_float
from shared.messages import (
    CallEnded,
    Played,
    ReplySegment,
    Transcript,
    parse_control,
    parse_reply,
    parse_transcript,
)
from voiceagent.cli import result_summary
from voiceagent.stack import Stack, free_port

pytestmark = pytest.mark.integration

TOKEN = "e2e-" + "5" * 28
SENTENCE = "What are your opening hours?"


def rms(mulaw: bytes | bytearray) -> float:
    x = ulaw_to_float(bytes(mulaw))
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


# A short script keeps the call (played in real time) short: the greeting lists the topics.
KNOWLEDGE = """# Test Clinic

## opening hours, open, hours, time
We open at nine.
"""


@pytest.fixture(scope="module")
async def stack(
    nats_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    port = free_port()
    knowledge = tmp_path_factory.mktemp("e2e") / "knowledge.md"
    knowledge.write_text(KNOWLEDGE)
    env = {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "ASR_PROVIDER": "local",
        "AGENT_PROVIDER": "local",
        "TTS_PROVIDER": "local",
        "LOG_FORMAT": "text",
        "KNOWLEDGE_FILE": str(knowledge),
    }
    st = Stack(env=env, output=None, service_output=None)
    await st.start()
    try:
        await st.wait_ready(timeout_s=150)
    except TimeoutError as e:
        logs = "\n".join(st.supervisor.recent_output()[-60:]) if st.supervisor else ""
        await st.stop()
        pytest.fail(f"{e}\n--- service output ---\n{logs}")
    yield st
    await st.stop()


@dataclass
class BusLog:
    """Everything published on one call's subjects (and its ASR heartbeats), timestamped."""

    messages: list[tuple[float, str, bytes, dict[str, str]]] = field(default_factory=list)

    async def on_msg(self, msg: Any) -> None:
        self.messages.append((time.monotonic(), msg.subject, msg.data, dict(msg.headers or {})))

    def on(self, subject: str) -> list[bytes]:
        return [d for _, s, d, _ in self.messages if s == subject]

    def since(self, t: float) -> list[str]:
        return [s for at, s, _, _ in self.messages if at > t]


def _service_logs(st: Stack) -> str:
    return "\n".join(st.supervisor.recent_output()[-80:]) if st.supervisor else ""


async def test_a_call_is_greeted_understood_answered_and_forgotten(
    stack: Stack, nats_url: str
) -> None:
    assert stack.info is not None
    sid = new_sid("CA")
    nc = await nats.connect(nats_url)
    bus = BusLog()
    await nc.subscribe(subjects.call_all(sid), cb=bus.on_msg)
    await nc.subscribe(subjects.asr_heartbeat(sid), cb=bus.on_msg)
    await nc.flush()
    try:
        result = await place_call(
            [say(SENTENCE)],
            gateway_url=stack.info.gateway_url,
            public_url=stack.info.public_url,
            auth_token=TOKEN,
            nats_url=nats_url,
            call_sid=sid,
            greeting_timeout_s=30,
            reply_timeout_s=30,
        )
        summary = json.dumps(result_summary(result), indent=1)
        ctx = f"\nresult: {summary}\n--- service output ---\n{_service_logs(stack)}"

        assert result.ended_by == "caller", ctx
        assert result.protocol_errors == [], ctx
        # The greeting: media on our streamSid (validated strictly), real sound, then silence.
        greeting = result.greeting
        assert greeting.first_audio_at is not None, "no greeting heard" + ctx
        assert greeting.reply_ms > 500 and rms(greeting.reply_audio) > 0.02, ctx

        # The caller's words reached the agent as a final transcript with the right words.
        finals = [
            m
            for m in map(parse_transcript, bus.on(subjects.transcript(sid)))
            if isinstance(m, Transcript) and m.is_final
        ]
        heard = " ".join(m.text for m in finals)
        assert word_recall(SENTENCE, heard) >= 0.6, f"recognized {heard!r}" + ctx

        # A reply was synthesized for a later turn than the greeting and came back as media.
        segments = [m for m in map(parse_reply, bus.on(subjects.reply(sid)))]
        assert isinstance(segments[0], ReplySegment)
        turns = sorted({s.turn for s in segments})
        assert len(turns) >= 2, f"reply turns {turns}" + ctx
        out_turns = {h.get(H.TURN) for _, s, _, h in bus.messages if s.endswith(".audio.out")}
        assert str(turns[-1]) in out_turns, ctx
        answer = result.turns[0]
        assert answer.first_audio_at is not None, "no reply heard" + ctx
        assert answer.reply_ms > 500 and rms(answer.reply_audio) > 0.02, ctx
        assert answer.latency_ms is not None and answer.latency_ms < 8000, ctx

        # Marks: every mark the gateway sent was echoed once played, and the gateway told the
        # bus what the caller heard.
        assert result.marks_received, "the gateway sent no marks" + ctx
        assert sorted(result.marks_echoed) == sorted(result.marks_received), ctx
        control = [parse_control(d) for d in bus.on(subjects.control(sid))]
        assert any(isinstance(m, Played) and m.complete for m in control), ctx

        # After `stop`: the gateway ends the call, and every service forgets it.
        deadline = time.monotonic() + 5
        while not any(isinstance(m, CallEnded) for m in control):
            assert time.monotonic() < deadline, "no CallEnded after stop" + ctx
            await asyncio.sleep(0.1)
            control = [parse_control(d) for d in bus.on(subjects.control(sid))]
        await asyncio.sleep(1.5)  # in-flight messages land; heartbeats must stop
        quiet_from = time.monotonic()
        await asyncio.sleep(2.0)
        late = bus.since(quiet_from)
        assert late == [], f"still traffic after the call ended: {late}" + ctx
    finally:
        await nc.close()


async def test_a_webhook_not_signed_by_twilio_is_refused(stack: Stack) -> None:
    assert stack.info is not None
    call = SimulatedCall(
        gateway_url=stack.info.gateway_url,
        public_url=stack.info.public_url,
        auth_token="not-the-token",
        greeting_timeout_s=1,
    )
    result = await call.run([])
    assert result.ended_by == "rejected"
    assert result.media_received == 0
