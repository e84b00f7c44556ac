"""Agent worker turns with the OpenAI provider on a real NATS: what TTS and the gateway receive.

The SDK talks to the local fakes (OpenAI and MCP wire protocols); turns are started directly on
the worker so other suites' agent workers on the same NATS cannot take them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from devkit.fakes.mcp_server import FakeMcpServer, insurance_status
from devkit.fakes.openai import GOODBYE, FakeOpenAI
from services.agent.history import History
from services.agent.providers.select import start_provider
from services.agent.store import Store
from services.agent.tools import CallTools
from services.agent.turn import FALLBACK_TEXT, TurnJob
from services.agent.worker import AgentWorker
from shared import subjects
from shared.bus import connect, make_broker
from shared.messages import Hangup, ReplySegment, parse_control, parse_reply
from shared.settings import Settings

KEY = "sk-test-fake"


@dataclass
class Rig:
    fake: FakeOpenAI
    mcp_server: FakeMcpServer
    worker: AgentWorker
    history: History
    nc: NATS


@pytest.fixture
async def rig(nats_url: str) -> AsyncIterator[Rig]:
    async with FakeOpenAI(api_key=KEY) as fake, FakeMcpServer() as mcp_server:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            nats_url=nats_url,
            redis_url="",
            openai_api_key=KEY,  # type: ignore[arg-type]
            openai_base_url=fake.base_url,
            mcp_server_url=mcp_server.url,
            provider_timeout_s=2.0,
        )
        store = Store(url="")
        tools = CallTools(settings=settings, store=store)
        provider, mcp = await start_provider(settings, tools)
        history = History(store=store)
        broker = make_broker(settings, name="test-openai-worker")
        worker = AgentWorker(settings=settings, provider=provider, history=history, broker=broker)
        await broker.start()  # not attached: turns are started directly
        nc = await connect(settings, name="test-openai-worker-observer")
        try:
            yield Rig(fake=fake, mcp_server=mcp_server, worker=worker, history=history, nc=nc)
        finally:
            await nc.close()
            await broker.stop()
            await provider.aclose()
            if mcp is not None:
                await mcp.aclose()


async def _turn(rig: Rig, text: str) -> tuple[str, list[ReplySegment], list[Any]]:
    """Run one caller turn; the segments and control messages published for it."""
    sid = "CA" + uuid.uuid4().hex
    segments: list[ReplySegment] = []
    controls: list[Any] = []

    async def on_reply(msg: Msg) -> None:
        segments.append(parse_reply(msg.data))

    async def on_control(msg: Msg) -> None:
        controls.append(parse_control(msg.data))

    subs = [
        await rig.nc.subscribe(subjects.reply(sid), cb=on_reply),
        await rig.nc.subscribe(subjects.control(sid), cb=on_control),
    ]
    await rig.nc.flush()
    await rig.worker.start_turn(TurnJob(call_sid=sid, kind="utterance", text=text))
    await rig.nc.flush()
    for _ in range(50):
        if segments and segments[-1].last:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # let control messages published after the last segment land
    for sub in subs:
        await sub.unsubscribe()
    return sid, segments, controls


async def test_mcp_answer_is_published_sentence_by_sentence_and_remembered(rig: Rig) -> None:
    sid, segments, _ = await _turn(
        rig, "Could you check my insurance? Member ID MBR-12345, born April 12, 1980."
    )
    spoken = " ".join(s.text for s in segments if s.text)
    assert insurance_status("MBR-12345") in spoken
    assert [s.seq for s in segments] == list(range(len(segments)))
    assert segments[-1].last and not any(s.last for s in segments[:-1])
    assert len([s for s in segments if s.text]) >= 3  # one segment per sentence

    stored = await rig.history.load(sid)
    roles = [m["role"] for m in stored]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert stored[1]["tool_calls"][0]["function"]["name"] == "verify_member"
    assert stored[3]["tool_calls"][0]["function"]["name"] == "check_insurance"
    assert insurance_status("MBR-12345") in stored[4]["content"]


async def test_goodbye_publishes_hangup_after_the_farewell_turn(rig: Rig) -> None:
    _, segments, controls = await _turn(rig, "That's all, thank you. Goodbye!")
    assert " ".join(s.text for s in segments if s.text) == GOODBYE
    hangups = [c for c in controls if isinstance(c, Hangup)]
    assert len(hangups) == 1 and hangups[0].after_turn == segments[-1].turn


async def test_stream_cut_mid_reply_ends_with_the_spoken_fallback(rig: Rig) -> None:
    rig.fake.inject("cut", after_chunks=5)  # role chunk + 4 deltas: one whole sentence
    before = len(rig.fake.requests)
    _, segments, _ = await _turn(rig, "Hello?")
    texts = [s.text for s in segments]
    assert texts[0] == "I can help with that."
    assert texts[-1] == FALLBACK_TEXT and segments[-1].last
    assert len(rig.fake.requests) == before + 1  # no replay of words already spoken
