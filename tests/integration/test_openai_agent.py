"""The OpenAI agent through the official SDK against local fakes of the OpenAI and MCP protocols.

No internet: the SDK is pointed at ``devkit.fakes.openai`` with ``OPENAI_BASE_URL``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devkit.fakes.mcp_server import FakeMcpServer, insurance_status, lab_status
from devkit.fakes.openai import DEFAULT_ANSWER, GOODBYE, FakeOpenAI
from services.agent.mcp_tools import McpTools
from services.agent.providers.base import (
    AgentOutput,
    HangupAction,
    HistoryItem,
    TurnInput,
)
from services.agent.providers.openai import OpenAIAgent
from services.agent.providers.select import start_provider
from services.agent.sentences import SentenceSplitter
from services.agent.tools import CallTools
from shared.errors import ProviderAuthError, ProviderError, ProviderTimeout
from shared.settings import Settings

KEY = "sk-test-fake"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
async def mcp_server() -> AsyncIterator[FakeMcpServer]:
    async with FakeMcpServer() as server:
        yield server


def _settings(fake: FakeOpenAI, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": KEY,
        "openai_base_url": fake.base_url,
        "redis_url": "",
        "provider_timeout_s": 2.0,
        **kw,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _sid() -> str:
    return "CA" + uuid.uuid4().hex


async def _collect(agent: OpenAIAgent, turn: TurnInput) -> list[AgentOutput]:
    return [item async for item in agent.respond(turn)]


def _spoken(outputs: list[AgentOutput]) -> str:
    return "".join(o for o in outputs if isinstance(o, str))


def _items(outputs: list[AgentOutput]) -> list[dict[str, Any]]:
    return [o.message for o in outputs if isinstance(o, HistoryItem)]


async def test_the_model_calls_the_mcp_tool_and_speaks_its_result(
    fake: FakeOpenAI, mcp_server: FakeMcpServer
) -> None:
    settings = _settings(fake, mcp_server_url=mcp_server.url)
    tools = CallTools(settings=settings)
    mcp = McpTools(url=mcp_server.url, reserved=tools.names)
    assert await mcp.start()
    agent = OpenAIAgent(settings=settings, tools=tools, mcp=mcp)
    try:
        turn = TurnInput(
            call_sid=_sid(),
            kind="utterance",
            text="Can you check my insurance? My member ID is MBR-12345, "
            "date of birth April 12, 1980.",
        )
        outputs = await _collect(agent, turn)
    finally:
        await agent.aclose()
        await mcp.aclose()

    assert insurance_status("MBR-12345") in _spoken(outputs)
    assert mcp_server.calls == [
        ("verify_member", {"member_id": "MBR-12345", "date_of_birth": "1980-04-12"}),
        ("check_insurance", {"member_id": "MBR-12345"}),
    ]
    _, verified_msg, call_msg, result_msg = _items(outputs)
    assert verified_msg["content"].startswith("Verified")
    assert call_msg["tool_calls"][0]["function"]["name"] == "check_insurance"
    assert json.loads(call_msg["tool_calls"][0]["function"]["arguments"]) == {
        "member_id": "MBR-12345"
    }
    assert result_msg["tool_call_id"] == call_msg["tool_calls"][0]["id"]
    # Built-ins and the verification first; the PHI tools once it succeeded.
    offered = {t["function"]["name"] for t in fake.requests[0]["tools"]}
    assert {"hang_up", "book_appointment", "verify_member"} <= offered
    assert not offered & {"check_insurance", "get_lab_results_status"}
    offered = {t["function"]["name"] for t in fake.requests[1]["tools"]}
    assert {"hang_up", "check_insurance", "get_lab_results_status"} <= offered
    assert fake.requests[2]["messages"][-1] == result_msg


async def test_parallel_tool_calls_are_assembled_by_index_and_all_answered(
    fake: FakeOpenAI, mcp_server: FakeMcpServer
) -> None:
    settings = _settings(fake, mcp_server_url=mcp_server.url)
    tools = CallTools(settings=settings)
    mcp = McpTools(url=mcp_server.url, reserved=tools.names)
    await mcp.start()
    agent = OpenAIAgent(settings=settings, tools=tools, mcp=mcp)
    text = (
        "Please check my insurance, member ID MBR-7, born September 30, 1975, "
        "and my lab results for order L-77."
    )
    try:
        outputs = await _collect(agent, TurnInput(call_sid=_sid(), kind="utterance", text=text))
    finally:
        await agent.aclose()
        await mcp.aclose()

    spoken = _spoken(outputs)
    assert insurance_status("MBR-7") in spoken and lab_status("L-77") in spoken
    _, _, call_msg, *results = _items(outputs)  # verification, then the two lookups at once
    ids = [c["id"] for c in call_msg["tool_calls"]]
    assert len(set(ids)) == 2 and [r["tool_call_id"] for r in results] == ids


async def test_booking_is_stored_and_its_code_read_back(fake: FakeOpenAI) -> None:
    settings = _settings(fake)
    tools = CallTools(settings=settings)
    agent = OpenAIAgent(settings=settings, tools=tools, mcp=None)
    sid = _sid()
    text = "I'd like to book an appointment for Tuesday at 10 am, my name is Ana Lima."
    outputs = await _collect(agent, TurnInput(call_sid=sid, kind="utterance", text=text))
    await agent.aclose()

    (booking,) = await tools.list_appointments(sid)
    assert (booking.name, booking.when) == ("Ana Lima", "tuesday at 10 am")
    assert " ".join(booking.confirmation) in _spoken(outputs)


async def test_goodbye_hangs_up_after_a_spoken_farewell(fake: FakeOpenAI) -> None:
    settings = _settings(fake)
    agent = OpenAIAgent(settings=settings, tools=CallTools(settings=settings), mcp=None)
    outputs = await _collect(
        agent, TurnInput(call_sid=_sid(), kind="utterance", text="Thank you, goodbye.")
    )
    await agent.aclose()

    assert any(isinstance(o, HangupAction) for o in outputs)
    assert _spoken(outputs) == GOODBYE
    # The farewell round forbade tools, so the model could not call hang_up again.
    assert fake.requests[-1]["tool_choice"] == "none"


async def test_content_streams_in_deltas_that_make_several_sentences(fake: FakeOpenAI) -> None:
    settings = _settings(fake)
    agent = OpenAIAgent(settings=settings, tools=CallTools(settings=settings), mcp=None)
    turn = TurnInput(call_sid=_sid(), kind="utterance", text="Hi there.")
    deltas = [o for o in await _collect(agent, turn) if isinstance(o, str)]
    await agent.aclose()

    assert len(deltas) > 5 and "".join(deltas) == DEFAULT_ANSWER
    splitter = SentenceSplitter()
    sentences = [s for d in deltas for s in splitter.feed(d)] + [splitter.flush()]
    assert len(sentences) == 3


# ---------------------------------------------------------------- failures


def _agent(fake: FakeOpenAI, **kw: Any) -> OpenAIAgent:
    settings = _settings(fake, **kw)
    return OpenAIAgent(settings=settings, tools=CallTools(settings=settings), mcp=None)


def _hello() -> TurnInput:
    return TurnInput(call_sid=_sid(), kind="utterance", text="Hello?")


async def test_refused_key_fails_fast_without_retry(fake: FakeOpenAI) -> None:
    agent = _agent(fake, openai_api_key="sk-wrong")
    started = time.monotonic()
    with pytest.raises(ProviderAuthError):
        await _collect(agent, _hello())
    assert time.monotonic() - started < 0.5 and len(fake.requests) == 0  # refused at the door

    fake.inject("auth")
    agent = _agent(fake)
    with pytest.raises(ProviderAuthError):
        await _collect(agent, _hello())
    assert len(fake.requests) == 1


async def test_rate_limit_waits_retry_after_then_succeeds(fake: FakeOpenAI) -> None:
    fake.inject("rate_limit", retry_after_s=0.4)
    agent = _agent(fake)
    started = time.monotonic()
    outputs = await _collect(agent, _hello())
    assert _spoken(outputs) == DEFAULT_ANSWER
    assert time.monotonic() - started >= 0.4 and len(fake.requests) == 2


async def test_server_error_is_retried(fake: FakeOpenAI) -> None:
    fake.inject("server_error")
    outputs = await _collect(_agent(fake), _hello())
    assert _spoken(outputs) == DEFAULT_ANSWER and len(fake.requests) == 2


async def test_a_hung_server_times_out_within_the_deadline(fake: FakeOpenAI) -> None:
    fake.inject("hang", times=-1)
    agent = _agent(fake, provider_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await _collect(agent, _hello())
    assert time.monotonic() - started < 1.6


async def test_a_cut_stream_fails_after_partial_output_without_replay(fake: FakeOpenAI) -> None:
    fake.inject("cut", after_chunks=4)
    agent = _agent(fake)
    spoken: list[str] = []
    with pytest.raises(ProviderError) as caught:
        async for item in agent.respond(_hello()):
            if isinstance(item, str):
                spoken.append(item)
    assert caught.value.retryable
    assert spoken and DEFAULT_ANSWER.startswith("".join(spoken))
    assert len(fake.requests) == 1  # words already spoken are never generated twice


async def test_warm_up_failure_is_logged_not_fatal(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.inject("server_error")
    agent = _agent(fake)
    with caplog.at_level(logging.WARNING):
        await agent.warm_up()
    assert any("warm-up failed" in r.getMessage() for r in caplog.records)
    await agent.warm_up()  # and a healthy server warms up with one plain request
    assert fake.requests[-1].get("stream") is None


async def test_agent_starts_with_builtin_tools_when_mcp_is_down(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    down = FakeMcpServer()
    url = await down.start()
    await down.stop()  # a port nobody listens on any more
    settings = _settings(fake, mcp_server_url=url, provider_timeout_s=1.0)
    tools = CallTools(settings=settings)
    with caplog.at_level(logging.WARNING):
        provider, mcp = await start_provider(settings, tools)
    try:
        assert isinstance(provider, OpenAIAgent) and mcp is not None and not mcp.connected
        assert any("mcp server unreachable" in r.getMessage() for r in caplog.records)
        outputs = await _collect(provider, _hello())
        assert _spoken(outputs) == DEFAULT_ANSWER
        offered = {t["function"]["name"] for t in fake.requests[-1]["tools"]}
        assert offered == set(tools.names)
    finally:
        await provider.aclose()
        await mcp.aclose()
