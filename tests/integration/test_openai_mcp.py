"""MCP tools over streamable HTTP against the fake MCP server: discovery, calls, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from services.agent.mcp_tools import McpTools
from voiceagent.fakes.mcp_server import FakeMcpServer, insurance_status, lab_status


@pytest.fixture
async def server() -> AsyncIterator[FakeMcpServer]:
    async with FakeMcpServer() as s:
        yield s


@pytest.fixture
async def tools(server: FakeMcpServer) -> AsyncIterator[McpTools]:
    t = McpTools(url=server.url, call_timeout_s=0.5, connect_timeout_s=1.0)
    assert await t.start()
    yield t
    await t.aclose()


async def test_every_tool_is_offered_as_an_openai_function(tools: McpTools) -> None:
    by_name = {s["function"]["name"]: s for s in tools.schemas}
    assert set(by_name) == {"check_insurance", "get_lab_results_status"}
    params = by_name["check_insurance"]["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["member_id"]
    assert by_name["get_lab_results_status"]["function"]["description"]


async def test_calls_return_the_servers_answer(tools: McpTools) -> None:
    assert await tools.call("check_insurance", {"member_id": "A-77"}) == insurance_status("A-77")
    assert await tools.call("get_lab_results_status", {"order_id": "L900"}) == lab_status("L900")


async def test_tool_failures_come_back_as_text_for_the_model(
    tools: McpTools, server: FakeMcpServer
) -> None:
    refused = await tools.call("check_insurance", {"member_id": "no digits"})
    assert refused.startswith("Tool error:") and "No record" in refused
    bad_args = await tools.call("check_insurance", {})
    assert bad_args.startswith("Tool error:")
    assert (await tools.call("delete_everything", {})).startswith("Tool error:")

    server.tool_delay_s = 2.0
    started = time.monotonic()
    slow = await tools.call("check_insurance", {"member_id": "A-77"})
    assert slow.startswith("Tool error:") and "in time" in slow
    assert time.monotonic() - started < 1.0


async def test_builtin_names_win_over_mcp_tools(server: FakeMcpServer) -> None:
    t = McpTools(url=server.url, reserved={"check_insurance"})
    await t.start()
    try:
        assert t.names == {"get_lab_results_status"}
        assert (await t.call("check_insurance", {"member_id": "A1"})).startswith("Tool error:")
    finally:
        await t.aclose()


async def test_a_server_that_comes_up_later_is_picked_up() -> None:
    late = FakeMcpServer()
    url = await late.start()
    await late.stop()
    port = int(url.split(":")[2].split("/")[0])
    t = McpTools(url=url, call_timeout_s=0.5, connect_timeout_s=0.5)
    try:
        assert not await t.start()
        assert t.schemas == []
        assert (await t.call("check_insurance", {"member_id": "A1"})).startswith("Tool error:")
        async with FakeMcpServer(port=port):
            for _ in range(40):  # first reconnect is 1 s after the failed attempt
                if t.connected:
                    break
                await asyncio.sleep(0.1)
            assert t.names == {"check_insurance", "get_lab_results_status"}
            assert await t.call("check_insurance", {"member_id": "A1"}) == insurance_status("A1")
    finally:
        await t.aclose()


async def test_a_lost_server_is_an_error_text_then_reconnected(server: FakeMcpServer) -> None:
    port = int(server.url.split(":")[2].split("/")[0])
    t = McpTools(url=server.url, call_timeout_s=0.5, connect_timeout_s=0.5)
    await t.start()
    try:
        await server.stop()
        lost = await t.call("check_insurance", {"member_id": "A1"})
        assert lost.startswith("Tool error:")
        async with FakeMcpServer(port=port):
            for _ in range(40):
                if await t.call("check_insurance", {"member_id": "A1"}) == insurance_status("A1"):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the MCP session was not re-established")
    finally:
        await t.aclose()
