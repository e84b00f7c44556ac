"""A small MCP server with two harmless clinic tools, over the MCP streamable HTTP transport.

Tools (fake, deterministic data):

- ``check_insurance(member_id)``: whether a member's insurance is active, plan and copay;
- ``get_lab_results_status(order_id)``: whether a lab order's results are ready.

An ID without a digit is refused with a tool error (what the model then reads out).

In process::

    async with FakeMcpServer() as mcp:
        settings = Settings(mcp_server_url=mcp.url)   # http://127.0.0.1:PORT/mcp

Standalone: ``python -m voiceagent.fakes.mcp_server --port 9200``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from voiceagent.fakes._server import LoopbackServer, cli_parser

log = logging.getLogger(__name__)

PLANS = (
    ("Acme Health", "Gold", 20),
    ("Blue Valley Care", "Silver", 35),
    ("Northwind Mutual", "Bronze", 50),
)
LAB_STATES = (
    "results are ready, and the doctor has reviewed them",
    "the sample was received and results are expected within two days",
    "results are ready, and a nurse will call to go over them",
)


def _pick(key: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2s(key.encode(), digest_size=2).digest(), "big") % n


def _clean_id(value: str) -> str:
    cleaned = value.strip().upper()
    if not any(ch.isdigit() for ch in cleaned) or len(cleaned) > 32:
        raise ToolError("No record was found for that number. Please check it and try again.")
    return cleaned


def insurance_status(member_id: str) -> str:
    """The fake insurance answer for ``member_id`` (also used by tests to know what to expect)."""
    mid = _clean_id(member_id)
    insurer, plan, copay = PLANS[_pick(mid, len(PLANS))]
    return (
        f"Member {mid} has active coverage with {insurer}, {plan} plan. "
        f"The copay for an office visit is {copay} dollars."
    )


def lab_status(order_id: str) -> str:
    """The fake lab-results answer for ``order_id``."""
    oid = _clean_id(order_id)
    return f"For lab order {oid}, the {LAB_STATES[_pick(oid, len(LAB_STATES))]}."


class FakeMcpServer:
    """The fake MCP server; ``calls`` records every tool call ``(name, arguments)``."""

    def __init__(self, *, port: int = 0, tool_delay_s: float = 0.0) -> None:
        self._port = port
        self.tool_delay_s = tool_delay_s
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._server: LoopbackServer | None = None
        self.url = ""

    def build(self) -> MCPServer[Any]:
        """The MCP server object (a fresh one per start: its session manager runs once)."""
        server: MCPServer[Any] = MCPServer(
            "riverside-clinic-records",
            instructions="Insurance and lab-result lookups for Riverside Family Clinic.",
            log_level="WARNING",
        )

        @server.tool(
            description="Check whether a patient's insurance is active: insurer, plan and copay."
        )
        async def check_insurance(
            member_id: Annotated[str, Field(description="member ID on the insurance card")],
        ) -> str:
            self.calls.append(("check_insurance", {"member_id": member_id}))
            await asyncio.sleep(self.tool_delay_s)
            return insurance_status(member_id)

        @server.tool(description="Tell whether the results of a lab order are ready.")
        async def get_lab_results_status(
            order_id: Annotated[str, Field(description="lab order number given to the patient")],
        ) -> str:
            self.calls.append(("get_lab_results_status", {"order_id": order_id}))
            await asyncio.sleep(self.tool_delay_s)
            return lab_status(order_id)

        return server

    async def start(self) -> str:
        app = self.build().streamable_http_app(streamable_http_path="/mcp")
        self._server = LoopbackServer(app=app, port=self._port)
        await self._server.start()
        self.url = self._server.url + "/mcp"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def __aenter__(self) -> FakeMcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m voiceagent.fakes.mcp_server --port N``."""
    parser = cli_parser("Fake MCP server (streamable HTTP at /mcp)", port=9200)
    parser.add_argument("--tool-delay", type=float, default=0.0, help="seconds per tool call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = FakeMcpServer(tool_delay_s=args.tool_delay)
    log.info("fake MCP server on http://%s:%d/mcp", args.host, args.port)
    fake.build().run("streamable-http", host=args.host, port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
