"""A whole call with the three cloud providers selected, against their wire-protocol fakes.

``Stack(providers="cloud")`` starts the Deepgram, MCP and ElevenLabs fakes as processes (the
Deepgram fake recognizes with our embedded whisper) and its own nats-server; the OpenAI fake
runs in this process so a test can make its next answers fail. The simulated caller speaks
Twilio's protocol; a separate bus subscription checks what crossed NATS.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats
import numpy as np
import pytest
from openai import AsyncOpenAI

from devkit.fakes.mcp_server import insurance_status
from devkit.fakes.openai import GOODBYE, GREETING, FakeOpenAI
from devkit.simulator import CallResult, new_sid, place_call, say, word_recall
from services.agent.mcp_tools import connect_mcp
from shared import callevents, subjects
from shared.audio import ulaw_to_float
from shared.messages import ReplySegment, Transcript, parse_reply, parse_transcript
from shared.settings import Settings
from voiceagent.cli import result_summary
from voiceagent.ports import free_port, reachable
from voiceagent.stack import Stack

pytestmark = pytest.mark.integration

TOKEN = "cloud-" + "7" * 26
TEST_PRICES = Path(__file__).resolve().parents[1] / "data" / "prices_test.toml"
KEY = "sk-cloud-e2e"
# Whisper writes numbers under 1000 as plain digits ("12345" would come out as "12,345").
INSURANCE = "Can you check the insurance for member 842, date of birth January 15, 1990?"
# "That's all" ends the call even when the recognizer loses the last word: whisper tiny (inside
# the Deepgram fake) once heard Piper's "Thank you, goodbye." as "Thank you." (not reproduced in
# 40 offline decodes); what these tests check is the providers' path, not that word.
BYE = "That's all, goodbye."


def rms(mulaw: bytes | bytearray) -> float:
    x = ulaw_to_float(bytes(mulaw))
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


async def test_the_fakes_command_serves_every_provider_and_prints_its_env() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voiceagent.cli",
        "fakes",
        "--quiet",
        "--api-key",
        "cli-key",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(40):
            while not lines or "Ctrl-C stops them." not in lines[-1]:
                raw = await proc.stdout.readline()
                assert raw, "fakes exited early:\n" + "\n".join(lines)
                lines.append(raw.decode().rstrip())
        env = dict(line.split("=", 1) for line in lines if re.fullmatch(r"[A-Z_]+=\S+", line))
        assert env["ASR_PROVIDER"] == "deepgram" and env["DEEPGRAM_API_KEY"] == "cli-key"
        assert env["AGENT_PROVIDER"] == "openai" and env["TTS_PROVIDER"] == "elevenlabs"
        # The official SDKs, configured from those lines alone, reach the fakes.
        client = AsyncOpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"])
        done = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
        )
        await client.close()
        assert done.choices[0].message.content
        tools = await connect_mcp(Settings(mcp_server_url=env["MCP_SERVER_URL"]))
        assert tools is not None
        try:
            assert {"check_insurance", "get_lab_results_status"} <= tools.names
        finally:
            await tools.aclose()
        async with httpx.AsyncClient(trust_env=False) as http:
            voices = await http.get(
                env["ELEVENLABS_BASE_URL"] + "/v1/voices",
                headers={"xi-api-key": env["ELEVENLABS_API_KEY"]},
            )
        assert voices.status_code == 200
        deepgram = urlsplit(env["DEEPGRAM_URL"])
        assert reachable(deepgram.hostname or "", deepgram.port or 0)
        # Ctrl-C stops the command and every fake with it.
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        ports = [urlsplit(env[k]).port or 0 for k in env if k.endswith("_URL")]
        assert not any(reachable("127.0.0.1", p) for p in ports), "a fake outlived the command"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass
class Cloud:
    stack: Stack
    openai: FakeOpenAI

    def logs(self) -> str:
        return "\n".join(self.stack.recent_output()[-80:])


@pytest.fixture(scope="module")
async def cloud() -> AsyncIterator[Cloud]:
    port = free_port()
    env = {
        # A port with no server: the stack starts a nats-server of its own there.
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "REDIS_URL": "",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "LOG_FORMAT": "text",
        "AGENT_GREETING": "",  # the model greets: the fault test below fails that request
        "PRICES_FILE": str(TEST_PRICES),
    }
    async with FakeOpenAI(api_key=KEY) as openai:
        env |= {"OPENAI_BASE_URL": openai.base_url, "OPENAI_API_KEY": KEY}
        st = Stack(env=env, output=None, service_output=None, providers="cloud")
        try:
            await st.start()
            assert st.started_nats and st.cloud is not None
            assert set(st.cloud.ports) == {"deepgram", "mcp_server", "elevenlabs"}
            await st.wait_ready(timeout_s=120)
        except (TimeoutError, RuntimeError) as e:
            logs = "\n".join(st.recent_output()[-60:])
            await st.stop()
            pytest.fail(f"{e}\n--- service output ---\n{logs}")
        try:
            yield Cloud(stack=st, openai=openai)
        finally:
            await st.stop()


@dataclass
class Bus:
    """The call's transcripts and reply segments, as published on NATS."""

    transcripts: list[Transcript] = field(default_factory=list)
    replies: list[ReplySegment] = field(default_factory=list)

    async def on_transcript(self, msg: Any) -> None:
        m = parse_transcript(msg.data)
        if isinstance(m, Transcript) and m.is_final:
            self.transcripts.append(m)

    async def on_reply(self, msg: Any) -> None:
        m = parse_reply(msg.data)
        if isinstance(m, ReplySegment):
            self.replies.append(m)

    def reply_text(self, turn: int) -> str:
        segs = sorted((s for s in self.replies if s.turn == turn), key=lambda s: s.seq)
        return " ".join(s.text.strip() for s in segs)

    def turns(self) -> list[int]:
        return sorted({s.turn for s in self.replies})


async def call(cloud: Cloud, script: list[str]) -> tuple[CallResult, Bus, str]:
    info = cloud.stack.info
    assert info is not None
    sid = new_sid("CA")
    bus = Bus()
    nc = await nats.connect(info.nats_url)
    try:
        await nc.subscribe(subjects.transcript(sid), cb=bus.on_transcript)
        await nc.subscribe(subjects.reply(sid), cb=bus.on_reply)
        await nc.flush()
        result = await place_call(
            [say(s) for s in script],
            gateway_url=info.gateway_url,
            public_url=info.public_url,
            auth_token=TOKEN,
            nats_url=info.nats_url,
            call_sid=sid,
            greeting_timeout_s=20,
            reply_timeout_s=20,
            quiet_s=1.0,
        )
        await asyncio.sleep(0.2)  # the last bus messages land
        # Why each turn ended, for a failure's context (what an engineer tailing it would see).
        stored = await callevents.read_call(nc, sid)
    finally:
        await nc.close()
    events = callevents.parse_events(m for m in stored if m.subject.endswith(".events"))
    turns = "\n".join(
        f"{e.name} {json.dumps(e.data)}"
        for e in events
        if e.name.startswith(("asr.", "end_of_turn", "agent."))
    )
    summary = json.dumps(result_summary(result), indent=1)
    return (
        result,
        bus,
        f"\nresult: {summary}\n--- events ---\n{turns}\n--- service output ---\n{cloud.logs()}",
    )


def heard(turn: Any) -> bool:
    """The caller received real speech (valid media on the stream, not silence)."""
    return turn.first_audio_at is not None and turn.reply_ms > 500 and rms(turn.reply_audio) > 0.02


async def test_deepgram_hears_openai_calls_an_mcp_tool_elevenlabs_speaks(cloud: Cloud) -> None:
    result, bus, ctx = await call(cloud, [INSURANCE])

    assert result.ended_by == "caller", ctx
    assert result.protocol_errors == [], ctx
    assert heard(result.greeting), "no greeting heard" + ctx
    # Deepgram path: the fake's whisper recognized the caller, the provider published it.
    recognized = " ".join(t.text for t in bus.transcripts)
    assert word_recall(INSURANCE, recognized) >= 0.8, f"recognized {recognized!r}" + ctx
    # The OpenAI agent called the MCP tool and spoke its result (the fake model only quotes
    # tool results it was given).
    answer_turn = bus.turns()[-1]
    answer = bus.reply_text(answer_turn)
    assert insurance_status("842") in answer, f"agent said {answer!r} to {recognized!r}" + ctx
    # ElevenLabs audio reached the caller as Twilio media, in time.
    reply = result.turns[0]
    assert heard(reply), "no reply heard" + ctx
    # Bounded, loosely: the Deepgram fake's whisper shares two cores with everything else.
    assert reply.latency_ms is not None and reply.latency_ms < 15000, ctx
    assert sorted(result.marks_echoed) == sorted(result.marks_received), ctx


async def test_openai_errors_are_retried_and_the_call_goes_on(cloud: Cloud) -> None:
    # The next two chat completions (this call's greeting and its first retry) answer 500.
    sent_before = len(cloud.openai.requests)
    cloud.openai.inject("server_error", times=2)
    began = time.monotonic()
    result, bus, ctx = await call(cloud, [BYE])

    assert result.protocol_errors == [], ctx
    # The greeting is still heard, after the retries, inside the provider deadline.
    assert heard(result.greeting), "no greeting heard after the 500s" + ctx
    assert result.greeting.first_audio_at is not None
    assert result.greeting.first_audio_at - began < 12, ctx
    assert len(cloud.openai.requests) - sent_before >= 3, "the 500s were not retried" + ctx
    greeting = bus.reply_text(bus.turns()[0])
    assert greeting == GREETING, f"greeting {greeting!r}" + ctx
    # The call is alive: the caller's next turn is understood, answered (the model's hang-up
    # tool) and heard, then the agent ends the call.
    answer = bus.reply_text(bus.turns()[-1])
    assert answer == GOODBYE, f"agent said {answer!r}" + ctx
    assert heard(result.turns[0]), "no goodbye heard" + ctx
    assert "hangup" in result.control and result.ended_by == "gateway", ctx


async def test_a_call_costs_what_the_fakes_counted_to_the_cent(cloud: Cloud) -> None:
    import itertools

    from devkit.fakes.openai import decide
    from shared.cost import COST_EVENT, CallCost
    from shared.usage import USAGE_EVENT
    from voiceagent.calls import format_table

    info = cloud.stack.info
    assert info is not None
    sent_before = len(cloud.openai.requests)
    result, bus, ctx = await call(cloud, [BYE])
    assert result.ended_by == "gateway", ctx
    # What the fakes were asked for, counted here from their own rules (not from our events):
    # the OpenAI fake reports 100 prompt tokens per request and a token per word of content
    # (plus one per 4 characters of tool arguments); ElevenLabs got each segment's text.
    bodies = cloud.openai.requests[sent_before:]
    assert bodies and all(b["stream_options"] == {"include_usage": True} for b in bodies), ctx
    completion = 0
    for body in bodies:
        tools = [] if body.get("tool_choice") == "none" else list(body.get("tools") or [])
        d = decide(list(body["messages"]), tools, call_ids=itertools.count())
        completion += len(d.content.split()) + sum(len(c.arguments) // 4 for c in d.tool_calls)
    prompt = 100 * len(bodies)
    chars = sum(len(r.text.strip()) for r in bus.replies if r.text.strip())

    nc = await nats.connect(info.nats_url)
    try:
        deadline = time.monotonic() + 15
        while True:
            msgs = await callevents.read_call(nc, result.call_sid)
            events = callevents.parse_events(m for m in msgs if m.subject.endswith(".events"))
            costs = [e for e in events if e.name == COST_EVENT]
            if costs or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        summaries = await callevents.recent_calls(nc, since=time.time() - 300)
    finally:
        await nc.close()
    assert len(costs) == 1, [e.name for e in events] + [ctx]
    cost = CallCost.model_validate(costs[0].data)
    usages = [e.data for e in events if e.name == USAGE_EVENT]
    assert {u["stage"] for u in usages} == {"asr", "llm", "tts", "twilio"}, usages

    assert cost.llm_prompt_tokens == prompt and cost.llm_completion_tokens == completion
    assert cost.tts_chars == chars, (cost, chars)
    ended = next(e for e in events if e.name == "call.ended")
    call_s = float(ended.data["duration_s"] or 0)
    assert cost.twilio_s == pytest.approx(call_s, abs=0.01)
    # The recognizer got the call's audio from its claim (a fraction of a second in) on.
    assert call_s - 1.5 <= cost.asr_audio_s <= call_s + 0.1, (cost, call_s)

    # Priced with tests/data/prices_test.toml, to the cent.
    assert cost.cost_llm == pytest.approx(0.01 * prompt + 0.03 * completion, abs=0.005)
    assert cost.cost_tts == pytest.approx(0.02 * chars, abs=0.005)
    assert cost.cost_twilio == pytest.approx(1.00 * -(-call_s // 60), abs=0.005)
    assert cost.cost_asr == pytest.approx(0.01 * cost.asr_audio_s, abs=0.005)
    total = cost.cost_asr + cost.cost_llm + cost.cost_tts + cost.cost_twilio
    assert cost.cost_total == pytest.approx(total, abs=0.005)
    assert cost.currency == "USD" and cost.prices_date == "2026-12"

    # `voiceagent calls` shows it.
    mine = next(s for s in summaries if s.call_sid == result.call_sid)
    assert mine.cost == cost
    table = format_table([mine], show_sids=True)
    assert f"${cost.cost_total:.4f}" in table[1], table
    # Prometheus (the gateway's /metrics) counts the spend by stage and provider.
    async with httpx.AsyncClient(trust_env=False) as http:
        metrics = (await http.get(info.gateway_url + "/metrics")).text
    assert 'voice_spend_total{provider="openai",stage="llm"}' in metrics, ctx
