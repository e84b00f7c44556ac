"""PHI tools only for a caller verified in this call.

The MCP (records) server's tools read health and insurance data, so the model gets them only
once the caller has proven who they are in the current call:

- before verification the model is offered only the verification tool (``MCP_VERIFY_TOOL``,
  member id plus date of birth, checked by the server); every other MCP tool counts as
  PHI-reading (default deny) and is neither offered nor executed;
- a successful verification is kept with the call's state in Redis (``va:verified:<call>``,
  :mod:`shared.callstate`), so every agent replica sees it, and it binds the call to that one
  member: a second member cannot be verified on the same call;
- every tool call carries the call SID, and lookups the verified member id and the server's
  proof of verification, in the request's ``_meta`` (:mod:`shared.mcp_context`); the server
  refuses a lookup about anyone else;
- verification attempts (``VERIFY_ATTEMPTS_PER_CALL``) and lookups (``PHI_LOOKUPS_PER_CALL``)
  are counted per call and refused beyond their limit.

Refusals are error texts for the model to read out, never exceptions into the turn.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.agent.store import Store, call_key
from shared import mcp_context
from shared.callstate import PHI_LOOKUPS, VERIFIED, VERIFY_ATTEMPTS
from shared.logging import kv
from shared.settings import Settings

if TYPE_CHECKING:
    from services.agent.mcp_tools import McpTools

log = logging.getLogger(__name__)

# Longer than any call (MAX_CALL_S defaults to 15 min); CallEnded deletes it sooner
# (services.agent.history.History.end_call).
VERIFIED_TTL_S = 2 * 3600.0

NOT_VERIFIED = (
    "Tool error: the caller is not verified on this call. Ask for their member ID and date "
    "of birth and verify them first."
)
OTHER_MEMBER = (
    "Tool error: this call is already verified for another member. Only that member's "
    "records can be discussed on this call."
)
TOO_MANY_ATTEMPTS = (
    "Tool error: too many verification attempts on this call. Do not try again; offer to "
    "transfer the caller to the front desk."
)
TOO_MANY_LOOKUPS = (
    "Tool error: the lookup limit for this call is reached. Offer to transfer the caller to "
    "the front desk."
)


@dataclass(frozen=True, kw_only=True)
class VerifiedMember:
    """Who the caller proved to be in this call, and the server's proof of it."""

    member_id: str
    verification: str

    def to_json(self) -> str:
        return json.dumps({"member_id": self.member_id, "verification": self.verification})

    @classmethod
    def from_json(cls, data: str) -> VerifiedMember | None:
        try:
            d = json.loads(data)
            return cls(member_id=str(d["member_id"]), verification=str(d["verification"]))
        except (ValueError, KeyError, TypeError):
            return None


def verified_note(member: VerifiedMember) -> str:
    """What the model is told at each turn of a verified call (never the proof)."""
    return (
        f"The caller was verified on this call as member {member.member_id}. Discuss only "
        f"this member's records."
    )


class CallerVerification:
    """The per-call record of the verified member and the attempt and lookup counters."""

    def __init__(
        self, *, store: Store, max_attempts: int, max_lookups: int, ttl_s: float = VERIFIED_TTL_S
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.max_lookups = max_lookups
        self.ttl_s = ttl_s

    async def verified(self, call_sid: str) -> VerifiedMember | None:
        """The member verified on this call, if any."""
        data = await self.store.get(call_key(VERIFIED, call_sid))
        return VerifiedMember.from_json(data) if data else None

    async def record(self, call_sid: str, member: VerifiedMember) -> VerifiedMember:
        """Bind the call to ``member``; the member it was bound to first wins (two replicas,
        or two parallel tool calls, cannot bind it to two members)."""
        key = call_key(VERIFIED, call_sid)
        if await self.store.set_if_absent(key, member.to_json(), ttl_s=self.ttl_s):
            return member
        return await self.verified(call_sid) or member

    async def attempt(self, call_sid: str) -> bool:
        """Count a verification attempt; False beyond the limit."""
        n = await self.store.incr(call_key(VERIFY_ATTEMPTS, call_sid), ttl_s=self.ttl_s)
        return n <= self.max_attempts

    async def lookup(self, call_sid: str) -> bool:
        """Count a PHI lookup; False beyond the limit."""
        n = await self.store.incr(call_key(PHI_LOOKUPS, call_sid), ttl_s=self.ttl_s)
        return n <= self.max_lookups


def _member_of(structured: Any) -> VerifiedMember | None:
    """The verified member in the verification tool's structured answer, if it verified."""
    if isinstance(structured, dict) and set(structured) == {"result"}:
        structured = structured["result"]  # a server that wraps dict results
    if not isinstance(structured, dict) or structured.get("verified") is not True:
        return None
    member, proof = structured.get("member_id"), structured.get("verification")
    if not isinstance(member, str) or not member or not isinstance(proof, str):
        return None
    return VerifiedMember(member_id=member, verification=proof)


class PhiTools:
    """The MCP server's tools behind caller verification (see the module docstring)."""

    def __init__(
        self, *, mcp: McpTools, verification: CallerVerification, verify_tool: str
    ) -> None:
        self.mcp = mcp
        self.verification = verification
        self.verify_tool = verify_tool

    @classmethod
    def from_settings(cls, settings: Settings, *, mcp: McpTools, store: Store) -> PhiTools:
        return cls(
            mcp=mcp,
            verification=CallerVerification(
                store=store,
                max_attempts=settings.verify_attempts_per_call,
                max_lookups=settings.phi_lookups_per_call,
            ),
            verify_tool=settings.mcp_verify_tool,
        )

    def __contains__(self, name: object) -> bool:
        return name in self.mcp

    @property
    def can_verify(self) -> bool:
        """Whether the server has the verification tool (without it no PHI tool is offered)."""
        return self.verify_tool in self.mcp

    def schemas(self, verified: VerifiedMember | None) -> list[dict[str, Any]]:
        """What the model is offered: the verification tool until the caller is verified, then
        the PHI tools instead."""
        if not self.can_verify:
            return []
        return [
            s
            for s in self.mcp.schemas
            if (s["function"]["name"] == self.verify_tool) == (verified is None)
        ]

    async def verified(self, call_sid: str) -> VerifiedMember | None:
        return await self.verification.verified(call_sid)

    async def call(self, name: str, arguments: dict[str, Any], *, call_sid: str) -> str:
        """Run an MCP tool for ``call_sid`` under the rules above; a text for the model."""
        if name not in self.mcp:
            return f"Tool error: there is no tool named {name}."
        if name == self.verify_tool:
            return await self._verify(arguments, call_sid=call_sid)
        member = await self.verification.verified(call_sid) if self.can_verify else None
        if member is None:
            log.warning("phi tool refused: caller not verified", **kv(call=call_sid, tool=name))
            return NOT_VERIFIED
        if not await self.verification.lookup(call_sid):
            log.warning("phi tool refused: lookup limit", **kv(call=call_sid, tool=name))
            return TOO_MANY_LOOKUPS
        meta = {
            mcp_context.CALL_SID: call_sid,
            mcp_context.MEMBER_ID: member.member_id,
            mcp_context.VERIFICATION: member.verification,
        }
        return await self.mcp.call(name, arguments, meta=meta)

    async def _verify(self, arguments: dict[str, Any], *, call_sid: str) -> str:
        already = await self.verification.verified(call_sid)
        if already is not None:
            asked = arguments.get("member_id")
            if isinstance(asked, str) and asked.strip().upper() == already.member_id.upper():
                return f"The caller is already verified as member {already.member_id}."
            return OTHER_MEMBER
        if not await self.verification.attempt(call_sid):
            log.warning("verification refused: attempt limit", **kv(call=call_sid))
            return TOO_MANY_ATTEMPTS
        result = await self.mcp.invoke(
            self.verify_tool, arguments, meta={mcp_context.CALL_SID: call_sid}
        )
        if isinstance(result, str):
            return result  # could not ask the server: an error text already
        from services.agent.mcp_tools import result_text

        member = None if result.is_error else _member_of(result.structured_content)
        if member is None:
            log.info("caller verification failed", **kv(call=call_sid))
            # The server's words, never its proof (there is none on failure).
            text = result_text(result)
            return text if text.startswith("Tool error:") else f"Tool error: not verified. {text}"
        bound = await self.verification.record(call_sid, member)
        if bound.member_id != member.member_id:
            return OTHER_MEMBER
        log.info("caller verified", **kv(call=call_sid))
        # The proof stays out of the conversation: the model reads only who was verified.
        return (
            f"Verified: the caller is member {member.member_id}. You may now look up this "
            f"member's records. Do not discuss any other person's records on this call."
        )
