"""The agent's security controls over the real components: a real nats-server (the agent worker
attached to it, turns started by transcripts as ASR publishes them), Redis, and the local fakes
of the OpenAI and MCP wire protocols.

Floods (issue 13, item 8): every completion carries ``max_tokens``; the history sent to the
model stays within ``AGENT_HISTORY_MAX_TOKENS`` and always ends with the caller's latest words.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.agent.history import History, estimate_tokens, spoken_message, user_message
from services.agent.providers.openai import load_prompt
from services.agent.providers.select import start_provider
from services.agent.store import Store
from services.agent.tools import CallTools
from services.agent.worker import AgentWorker
from shared import subjects
from shared.bus import make_broker
from shared.messages import Event, ReplySegment, Transcript
from shared.settings import Settings
from tests.integration.agent_bus import CallTap, connect, new_sid, private_nats_server
from voiceagent.fakes.mcp_server import FakeMcpServer
from voiceagent.fakes.openai import DEFAULT_ANSWER, FakeOpenAI

pytestmark = pytest.mark.integration

KEY = "sk-test-fake"
MAX_TOKENS = 60
HISTORY_BUDGET = 600


@pytest.fixture(scope="module")
def bus() -> Iterator[str]:
    with private_nats_server() as url:
        yield url


@dataclass
class Rig:
    fake: FakeOpenAI
    mcp_server: FakeMcpServer
    history: History
    nats_url: str

    async def tap(self, sid: str) -> CallTap:
        return await CallTap(await connect(self.nats_url), sid).start()


async def _rig(bus: str, redis_url: str, **overrides: Any) -> AsyncIterator[Rig]:
    async with FakeOpenAI(api_key=KEY) as fake, FakeMcpServer() as mcp_server:
        values: dict[str, Any] = {
            "nats_url": bus,
            "redis_url": redis_url,
            "openai_api_key": KEY,
            "openai_base_url": fake.base_url,
            "mcp_server_url": mcp_server.url,
            "provider_timeout_s": 3.0,
            "openai_max_tokens": MAX_TOKENS,
            "agent_history_max_tokens": HISTORY_BUDGET,
            **overrides,
        }
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        store = Store(url=redis_url)
        tools = CallTools(settings=settings, store=store)
        provider, mcp = await start_provider(settings, tools)
        assert provider.name == "openai" and mcp is not None and mcp.connected
        history = History(store=store)
        broker = make_broker(settings, name="test-security-agent")
        worker = AgentWorker(settings=settings, provider=provider, history=history, broker=broker)
        worker.attach()
        await broker.start()
        try:
            yield Rig(fake=fake, mcp_server=mcp_server, history=history, nats_url=bus)
        finally:
            await broker.stop()
            await provider.aclose()
            await mcp.aclose()
            await store.aclose()


@pytest.fixture
async def rig(bus: str, redis_url: str) -> AsyncIterator[Rig]:
    async for r in _rig(bus, redis_url):
        yield r


async def _say(tap: CallTap, text: str, utterance_id: int) -> str:
    """The caller says ``text`` (a final transcript, as ASR publishes it); what the agent said."""
    await tap.send(
        subjects.transcript(tap.sid),
        Transcript(call_sid=tap.sid, utterance_id=utterance_id, text=text, is_final=True),
    )

    def answered() -> bool:
        turns = {s.turn for s in tap.of(ReplySegment) if s.utterance_id == utterance_id}
        # Done: the reply is out and stored (the next turn reads it).
        return any(e.turn in turns for e in tap.of(Event, name="agent.turn_done"))

    await tap.wait_for(answered, within=10.0, what=f"the reply to utterance {utterance_id}")
    segs = [s for s in tap.of(ReplySegment) if s.utterance_id == utterance_id]
    return " ".join(s.text for s in sorted(segs, key=lambda s: s.seq) if s.text)


# ---------------------------------------------------------------------- floods (item 8)


async def test_a_long_call_sends_a_bounded_history_that_ends_with_the_latest_words(
    rig: Rig,
) -> None:
    sid = new_sid()
    filler = "I would like to know a little more about that, if you do not mind telling me. " * 3
    for turn in range(1, 61):  # a long call: 120 stored messages, far beyond the budget
        await rig.history.append(
            sid,
            [
                user_message(f"question {turn}: {filler}", turn=turn),
                spoken_message([f"Answer {turn}. {filler}"], turn=turn, seq0=0),
            ],
        )
    stored = await rig.history.load(sid)
    assert sum(estimate_tokens(m) for m in stored) > 10 * HISTORY_BUDGET
    tap = await rig.tap(sid)
    before = len(rig.fake.requests)
    latest = "One more thing, please."
    said = await _say(tap, latest, utterance_id=1)
    await tap.stop()

    assert said == DEFAULT_ANSWER  # the model answered the latest words
    requests = rig.fake.requests[before:]
    assert requests, "the model was never asked"
    for body in requests:
        assert body["max_tokens"] == MAX_TOKENS
        messages = body["messages"]
        assert messages[0] == {"role": "system", "content": load_prompt(None)}
        assert messages[-1] == {"role": "user", "content": latest}
        sent = messages[1:-1]
        assert sum(estimate_tokens(m) for m in sent) <= HISTORY_BUDGET
        # The newest turns went, oldest dropped first, in order.
        assert 2 <= len(sent) < len(stored) and sent == stored[-len(sent) :]
    # Storage keeps the whole call (the export sees it); only what the model reads is bounded.
    assert len(await rig.history.load(sid)) == len(stored) + 2


async def test_a_reply_is_cut_at_max_tokens(bus: str, redis_url: str) -> None:
    async for rig in _rig(bus, redis_url, openai_max_tokens=5):
        tap = await rig.tap(new_sid())
        said = await _say(tap, "Hello there.", utterance_id=1)
        await tap.stop()
        assert rig.fake.requests[-1]["max_tokens"] == 5
        assert said and len(said.split()) <= 5  # the fake honours it, as a real model does
        assert DEFAULT_ANSWER.startswith(said)
