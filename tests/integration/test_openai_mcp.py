"""MCP tools over streamable HTTP against the fake MCP server: discovery, calls, failures.

The fake answers lookups only for a member verified on the call (``_meta``, see
``shared/mcp_context.py``); :func:`_lookup` verifies first, as the agent does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devkit.fakes.mcp_server import MEMBERS, FakeMcpServer, insurance_status, lab_status
from services.agent.mcp_tools import McpTools, result_text
from shared import mcp_context

A = "MBR-12345"


async def _lookup(
    tools: McpTools, name: str = "check_insurance", args: dict[str, Any] | None = None
) -> str:
    """Verify member A on a fresh call, then run ``name`` for that call."""
    sid = "CA" + uuid.uuid4().hex
    born = MEMBERS[A].date_of_birth.isoformat()
    got = await tools.invoke(
        "verify_member", {"member_id": A, "date_of_birth": born}, meta={mcp_context.CALL_SID: sid}
    )
    if isinstance(got, str):
        return got
    proof = (got.structured_content or {}).get("verification")
    if not isinstance(proof, str):
        return result_text(got)
    meta = {mcp_context.CALL_SID: sid, mcp_context.MEMBER_ID: A, mcp_context.VERIFICATION: proof}
    return await tools.call(name, {"member_id": A} if args is None else args, meta=meta)


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
    assert set(by_name) == {"verify_member", "check_insurance", "get_lab_results_status"}
    params = by_name["check_insurance"]["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["member_id"]
    assert by_name["get_lab_results_status"]["function"]["description"]


async def test_calls_return_the_servers_answer(tools: McpTools) -> None:
    assert await _lookup(tools) == insurance_status(A)
    lab = await _lookup(tools, "get_lab_results_status", {"order_id": "L-55"})
    assert lab == lab_status("L-55")


async def test_tool_failures_come_back_as_text_for_the_model(
    tools: McpTools, server: FakeMcpServer
) -> None:
    refused = await _lookup(tools, "check_insurance", {"member_id": "no digits"})
    assert refused.startswith("Tool error:") and "No record" in refused
    bad_args = await _lookup(tools, "check_insurance", {})
    assert bad_args.startswith("Tool error:")
    assert (await tools.call("delete_everything", {})).startswith("Tool error:")

    server.tool_delay_s = 2.0
    started = time.monotonic()
    slow = await tools.call("verify_member", {"member_id": A, "date_of_birth": "1980-04-12"})
    assert slow.startswith("Tool error:") and "in time" in slow
    assert time.monotonic() - started < 1.0


async def test_builtin_names_win_over_mcp_tools(server: FakeMcpServer) -> None:
    t = McpTools(url=server.url, reserved={"check_insurance"})
    await t.start()
    try:
        assert t.names == {"verify_member", "get_lab_results_status"}
        assert (await t.call("check_insurance", {"member_id": A})).startswith("Tool error:")
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
        assert (await _lookup(t)).startswith("Tool error:")
        async with FakeMcpServer(port=port):
            for _ in range(40):  # first reconnect is 1 s after the failed attempt
                if t.connected:
                    break
                await asyncio.sleep(0.1)
            assert t.names == {"verify_member", "check_insurance", "get_lab_results_status"}
            assert await _lookup(t) == insurance_status(A)
    finally:
        await t.aclose()


async def test_a_lost_server_is_an_error_text_then_reconnected(server: FakeMcpServer) -> None:
    port = int(server.url.split(":")[2].split("/")[0])
    t = McpTools(url=server.url, call_timeout_s=0.5, connect_timeout_s=0.5)
    await t.start()
    try:
        await server.stop()
        lost = await _lookup(t)
        assert lost.startswith("Tool error:")
        async with FakeMcpServer(port=port):
            for _ in range(40):
                if await _lookup(t) == insurance_status(A):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the MCP session was not re-established")
    finally:
        await t.aclose()
