"""A small MCP server with clinic records tools, over the MCP streamable HTTP transport.

Tools (fake, deterministic data), following the agent's call-context contract
(:mod:`shared.mcp_context`):

- ``verify_member(member_id, date_of_birth)``: checks the pair against :data:`MEMBERS`; on a
  match answers ``{"verified": true, "member_id", "verification"}``, the proof being an HMAC of
  the call SID (``_meta``) and the member id under this server's own random key;
- ``check_insurance(member_id)``: whether a member's insurance is active, plan and copay;
- ``get_lab_results_status(order_id)``: whether a lab order's results are ready.

The two lookups answer only with a valid proof for the call SID and verified member in the
request's ``_meta``, and only about that member (their own id, their own orders); anything
else is a tool error (what the model then reads out). An ID without a digit is refused too.

In process::

    async with FakeMcpServer() as mcp:
        settings = Settings(mcp_server_url=mcp.url)   # http://127.0.0.1:PORT/mcp

Standalone: ``python -m devkit.fakes.mcp_server --port 9200``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from devkit.fakes._server import LoopbackServer, cli_parser
from shared import mcp_context

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


@dataclass(frozen=True, kw_only=True)
class Member:
    """A fake member record: who they are and their lab orders."""

    member_id: str
    date_of_birth: dt.date
    orders: tuple[str, ...] = ()


MEMBERS: Mapping[str, Member] = {
    m.member_id: m
    for m in (
        Member(member_id="MBR-12345", date_of_birth=dt.date(1980, 4, 12), orders=("L-55",)),
        Member(member_id="MBR-7", date_of_birth=dt.date(1975, 9, 30), orders=("L-77",)),
        Member(member_id="842", date_of_birth=dt.date(1990, 1, 15), orders=("L-842",)),
    )
}

NOT_MATCHED = "The member ID and date of birth do not match our records."
NOT_VERIFIED = "The caller has not been verified on this call. Verify the member first."
NOT_THEIRS = "Only the verified member's own records can be looked up on this call."

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        "january february march april may june july august september october november "
        "december".split()
    )
}
_ISO = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_US = re.compile(r"\b(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})\b")
_DIGITS = re.compile(r"^\s*(\d{2})(\d{2})(\d{4})\s*$")  # MMDDYYYY, as typed on a keypad
_MONTH_FIRST = re.compile(r"\b([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})\b", re.I)
_DAY_FIRST = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?([a-z]+)\.?,?\s+(\d{4})\b", re.I)


def parse_date(text: str) -> dt.date | None:
    """A date of birth as callers and models write it: ``1980-04-12``, ``04/12/1980``,
    ``04121980``, ``April 12, 1980``, ``12th of April 1980``; ``None`` if none is found."""
    parts: tuple[int, int, int] | None = None
    if m := _ISO.search(text):
        parts = (int(m[1]), int(m[2]), int(m[3]))
    elif m := _US.search(text) or _DIGITS.match(text):
        parts = (int(m[3]), int(m[1]), int(m[2]))
    elif (m := _MONTH_FIRST.search(text)) and m[1].lower() in _MONTHS:
        parts = (int(m[3]), _MONTHS[m[1].lower()], int(m[2]))
    elif (m := _DAY_FIRST.search(text)) and m[2].lower() in _MONTHS:
        parts = (int(m[3]), _MONTHS[m[2].lower()], int(m[1]))
    if parts is None:
        return None
    try:
        return dt.date(*parts)
    except ValueError:
        return None


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


@dataclass(frozen=True, kw_only=True)
class ToolRequest:
    """One tool call as the server saw it: arguments, call context, whether data went out."""

    name: str
    arguments: dict[str, Any]
    call_sid: str | None
    member_id: str | None
    answered: bool


class FakeMcpServer:
    """The fake MCP server.

    ``calls`` records every tool call ``(name, arguments)``; ``requests`` the same with the
    call context from ``_meta`` and whether the tool answered (:class:`ToolRequest`).
    """

    def __init__(self, *, port: int = 0, tool_delay_s: float = 0.0) -> None:
        self._port = port
        self.tool_delay_s = tool_delay_s
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[ToolRequest] = []
        self._key = secrets.token_bytes(32)
        self._server: LoopbackServer | None = None
        self.url = ""

    def proof(self, call_sid: str, member_id: str) -> str:
        """The verification proof this server issues for ``member_id`` on ``call_sid``."""
        msg = f"{call_sid}\n{member_id}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def _verified_member(self, meta: Mapping[str, Any]) -> str:
        """The member the request's ``_meta`` proves verified on its call (ToolError if not)."""
        sid, member, proof = (
            meta.get(mcp_context.CALL_SID),
            meta.get(mcp_context.MEMBER_ID),
            meta.get(mcp_context.VERIFICATION),
        )
        if not (isinstance(sid, str) and isinstance(member, str) and isinstance(proof, str)):
            raise ToolError(NOT_VERIFIED)
        if not hmac.compare_digest(self.proof(sid, member), proof):
            raise ToolError(NOT_VERIFIED)
        return member

    def _record(self, name: str, args: dict[str, Any], meta: Mapping[str, Any], ok: bool) -> None:
        sid, member = meta.get(mcp_context.CALL_SID), meta.get(mcp_context.MEMBER_ID)
        self.requests.append(
            ToolRequest(
                name=name,
                arguments=args,
                call_sid=sid if isinstance(sid, str) else None,
                member_id=member if isinstance(member, str) else None,
                answered=ok,
            )
        )

    def build(self) -> MCPServer[Any]:
        """The MCP server object (a fresh one per start: its session manager runs once)."""
        server: MCPServer[Any] = MCPServer(
            "riverside-clinic-records",
            instructions="Member verification, insurance and lab-result lookups for Riverside "
            "Family Clinic. Verify the caller before any lookup.",
            log_level="WARNING",
        )

        async def guarded(name: str, args: dict[str, Any], ctx: Context, answer: Any) -> Any:
            self.calls.append((name, args))
            meta: Mapping[str, Any] = ctx.request_context.meta or {}
            await asyncio.sleep(self.tool_delay_s)
            try:
                result = answer(meta)
            except ToolError:
                self._record(name, args, meta, False)
                raise
            self._record(name, args, meta, True)
            return result

        @server.tool(
            description="Verify the caller's identity before any lookup: the member ID on the "
            "insurance card and the date of birth (YYYY-MM-DD)."
        )
        async def verify_member(
            member_id: Annotated[str, Field(description="member ID on the insurance card")],
            date_of_birth: Annotated[str, Field(description="date of birth, YYYY-MM-DD")],
            ctx: Context,
        ) -> dict[str, Any]:
            def answer(meta: Mapping[str, Any]) -> dict[str, Any]:
                sid = meta.get(mcp_context.CALL_SID)
                if not isinstance(sid, str) or not sid:
                    raise ToolError("The call context is missing.")
                member = MEMBERS.get(member_id.strip().upper())
                if member is None or parse_date(date_of_birth) != member.date_of_birth:
                    raise ToolError(NOT_MATCHED)
                return {
                    "verified": True,
                    "member_id": member.member_id,
                    "verification": self.proof(sid, member.member_id),
                }

            args = {"member_id": member_id, "date_of_birth": date_of_birth}
            result: dict[str, Any] = await guarded("verify_member", args, ctx, answer)
            return result

        @server.tool(
            description="Check whether the verified member's insurance is active: insurer, "
            "plan and copay."
        )
        async def check_insurance(
            member_id: Annotated[str, Field(description="member ID on the insurance card")],
            ctx: Context,
        ) -> str:
            def answer(meta: Mapping[str, Any]) -> str:
                verified = self._verified_member(meta)
                if _clean_id(member_id) != verified:
                    raise ToolError(NOT_THEIRS)
                return insurance_status(member_id)

            text: str = await guarded("check_insurance", {"member_id": member_id}, ctx, answer)
            return text

        @server.tool(
            description="Tell whether the results of one of the verified member's lab orders "
            "are ready."
        )
        async def get_lab_results_status(
            order_id: Annotated[str, Field(description="lab order number given to the patient")],
            ctx: Context,
        ) -> str:
            def answer(meta: Mapping[str, Any]) -> str:
                verified = self._verified_member(meta)
                member = MEMBERS.get(verified)
                if member is None or _clean_id(order_id) not in member.orders:
                    raise ToolError(NOT_THEIRS)
                return lab_status(order_id)

            args = {"order_id": order_id}
            text: str = await guarded("get_lab_results_status", args, ctx, answer)
            return text

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
    """``python -m devkit.fakes.mcp_server --port N``."""
    parser = cli_parser("Fake MCP server (streamable HTTP at /mcp)", port=9200)
    parser.add_argument("--tool-delay", type=float, default=0.0, help="seconds per tool call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = FakeMcpServer(tool_delay_s=args.tool_delay)
    log.info("fake MCP server on http://%s:%d/mcp", args.host, args.port)
    fake.build().run("streamable-http", host=args.host, port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
