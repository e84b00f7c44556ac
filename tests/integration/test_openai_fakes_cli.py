"""``python -m devkit.fakes.openai`` and ``python -m devkit.fakes.mcp_server`` serve."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest
from mcp import Client
from openai import AsyncOpenAI

from devkit.fakes.mcp_server import insurance_status
from devkit.fakes.openai import DEFAULT_ANSWER
from shared import mcp_context
from tests.natsserver import free_port


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(150):
        assert proc.poll() is None, "the fake exited at start-up"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    pytest.fail(f"nothing listening on {port}")


@pytest.fixture
def fakes() -> Iterator[tuple[int, int, list[subprocess.Popen[bytes]]]]:
    oai, mcp = free_port(), free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "devkit.fakes.openai", "--port", str(oai),
             "--api-key", "sk-cli", "--fault", "rate_limit:1", "--retry-after", "0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "devkit.fakes.mcp_server", "--port", str(mcp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        yield oai, mcp, procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


async def test_both_fakes_run_as_processes(
    fakes: tuple[int, int, list[subprocess.Popen[bytes]]],
) -> None:
    oai, mcp, procs = fakes
    await _wait_listening(oai, procs[0])
    await _wait_listening(mcp, procs[1])

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{oai}/v1", api_key="sk-cli", max_retries=0)
    messages = [{"role": "user", "content": "Hello"}]
    with pytest.raises(openai.RateLimitError):  # --fault rate_limit:1
        await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    reply = await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == DEFAULT_ANSWER
    await client.close()

    ctx = {mcp_context.CALL_SID: "CA" + "5" * 32}
    async with Client(f"http://127.0.0.1:{mcp}/mcp") as session:
        refused = await session.call_tool("check_insurance", {"member_id": "842"}, meta=ctx)
        verified = await session.call_tool(
            "verify_member", {"member_id": "842", "date_of_birth": "1990-01-15"}, meta=ctx
        )
        proof = (verified.structured_content or {})["verification"]
        ctx |= {mcp_context.MEMBER_ID: "842", mcp_context.VERIFICATION: proof}
        result = await session.call_tool("check_insurance", {"member_id": "842"}, meta=ctx)
    assert refused.is_error  # not verified on this call yet
    assert result.content[0].text == insurance_status("842")  # type: ignore[union-attr]
