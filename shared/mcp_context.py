"""What the agent tells its MCP (records) server about the call, in each request's ``_meta``.

The contract between the agent and a records server (``devkit.fakes.mcp_server`` implements
the server side):

- every tool call carries :data:`CALL_SID`, the call it is made for;
- the verification tool (``MCP_VERIFY_TOOL``, default ``verify_member``) checks the caller's
  member id and date of birth and, when they match, answers structured content
  ``{"verified": true, "member_id": ..., "verification": <proof>}``; ``<proof>`` is opaque to
  the agent (the fake signs call SID and member id with its own key);
- every other tool call of a verified call also carries :data:`MEMBER_ID` and
  :data:`VERIFICATION` (that proof), and the server refuses a lookup about anyone else, or
  without a valid proof for this call SID.
"""

from __future__ import annotations

CALL_SID = "voiceagent/call_sid"
MEMBER_ID = "voiceagent/member_id"
VERIFICATION = "voiceagent/verification"
