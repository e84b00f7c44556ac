"""The agent's security controls over the real components: a real nats-server (the agent worker
attached to it, turns started by transcripts as ASR publishes them), Redis, and the local fakes
of the OpenAI and MCP wire protocols.

PHI (issue 13, item 5): the records server's lookups are offered and run only for a caller
verified (member id + date of birth, checked by the MCP server) in the same call, for that one
member, within a per-call budget; the server gets the call SID and the verified identity in
``_meta`` and refuses anything else.

Floods (issue 13, item 8): every completion carries ``max_tokens``; the history sent to the
model stays within ``AGENT_HISTORY_MAX_TOKENS`` and always ends with the caller's latest words.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from mcp import Client

from devkit.fakes.mcp_server import NOT_MATCHED, NOT_THEIRS, FakeMcpServer, insurance_status
from devkit.fakes.openai import ASK_VERIFY, DEFAULT_ANSWER, FakeOpenAI
from services.agent.history import History, estimate_tokens, spoken_message, user_message
from services.agent.mcp_tools import McpTools
from services.agent.providers.openai import load_prompt
from services.agent.providers.select import start_provider
from services.agent.store import Store, call_key
from services.agent.tools import CallTools
from services.agent.verification import (
    NOT_VERIFIED,
    OTHER_MEMBER,
    TOO_MANY_ATTEMPTS,
    TOO_MANY_LOOKUPS,
    PhiTools,
)
from services.agent.worker import AgentWorker
from shared import mcp_context, subjects
from shared.bus import make_broker
from shared.callstate import VERIFIED
from shared.messages import CallEnded, Event, ReplySegment, Transcript
from shared.settings import Settings
from tests.integration.agent_bus import CallTap, connect, new_sid, private_nats_server

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


# ---------------------------------------------------------------------- PHI tools (item 5)

A, A_BORN = "MBR-12345", "April 12, 1980"  # devkit.fakes.mcp_server.MEMBERS
B = "MBR-7"
PHI_TOOLS = {"check_insurance", "get_lab_results_status"}


def _offered(body: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in body.get("tools") or ()}


async def _verified_in_redis(redis_url: str, sid: str) -> str | None:
    """What another agent replica would read: the call's verification record in Redis."""
    other = Store(url=redis_url)
    try:
        data = await other.get(call_key(VERIFIED, sid))
    finally:
        await other.aclose()
    return json.loads(data)["member_id"] if data else None


async def test_before_verification_no_phi_tool_is_offered_or_reached(rig: Rig) -> None:
    tap = await rig.tap(new_sid())
    before = len(rig.fake.requests)
    said = await _say(tap, f"Can you check my insurance? My member ID is {A}.", 1)
    await tap.stop()

    assert said == ASK_VERIFY  # asked to verify, not given A's coverage
    assert insurance_status(A) not in said
    for body in rig.fake.requests[before:]:
        offered = _offered(body)
        assert "verify_member" in offered and not offered & PHI_TOOLS
    assert rig.mcp_server.calls == []


async def test_after_verifying_a_member_another_members_lookup_is_refused(
    rig: Rig, redis_url: str
) -> None:
    sid = new_sid()
    tap = await rig.tap(sid)
    first = len(rig.fake.requests)
    said = await _say(tap, f"Check my insurance please. Member ID {A}, date of birth {A_BORN}.", 1)
    assert insurance_status(A) in said
    bodies = rig.fake.requests[first:]
    # Round 1 offered only the verification; the lookup came once it had succeeded.
    assert not _offered(bodies[0]) & PHI_TOOLS and PHI_TOOLS <= _offered(bodies[1])
    assert "verify_member" not in _offered(bodies[1])
    verify, lookup = rig.mcp_server.requests
    assert (verify.name, verify.call_sid, verify.answered) == ("verify_member", sid, True)
    assert (lookup.name, lookup.call_sid, lookup.member_id) == ("check_insurance", sid, A)
    assert await _verified_in_redis(redis_url, sid) == A  # any replica sees it

    second = len(rig.fake.requests)
    said = await _say(tap, f"Now check the insurance for member {B}, please.", 2)
    await tap.stop()
    assert insurance_status(B) not in said and insurance_status(A) not in said
    assert NOT_THEIRS in said  # the caller hears the refusal
    refused = rig.mcp_server.requests[-1]
    assert refused.arguments == {"member_id": B} and refused.member_id == A
    assert not refused.answered
    # The next turn's model knows who is verified; the server's proof never reaches it.
    notes = rig.fake.requests[second]["messages"][1]
    assert notes["role"] == "system" and A in notes["content"]
    proof = rig.mcp_server.proof(sid, A)
    assert not any(proof in json.dumps(body) for body in rig.fake.requests)


async def test_a_wrong_date_of_birth_does_not_verify(rig: Rig, redis_url: str) -> None:
    sid = new_sid()
    tap = await rig.tap(sid)
    said = await _say(tap, f"Check my insurance. Member ID {A}, date of birth May 1, 1980.", 1)
    assert NOT_MATCHED in said and insurance_status(A) not in said
    assert [r.name for r in rig.mcp_server.requests] == ["verify_member"]
    assert not rig.mcp_server.requests[0].answered
    assert await _verified_in_redis(redis_url, sid) is None
    before = len(rig.fake.requests)
    said = await _say(tap, f"Just check the insurance for {A}.", 2)
    await tap.stop()
    assert said == ASK_VERIFY
    assert not any(_offered(b) & PHI_TOOLS for b in rig.fake.requests[before:])


async def test_call_end_forgets_the_verification(rig: Rig, redis_url: str) -> None:
    sid = new_sid()
    tap = await rig.tap(sid)
    await _say(tap, f"Check my insurance. Member ID {A}, date of birth {A_BORN}.", 1)
    assert await _verified_in_redis(redis_url, sid) == A
    await tap.send(subjects.control(sid), CallEnded(call_sid=sid))
    await tap.stop()
    for _ in range(50):
        if await _verified_in_redis(redis_url, sid) is None:
            break
        await asyncio.sleep(0.05)
    assert await _verified_in_redis(redis_url, sid) is None


@pytest.fixture
async def phi(redis_url: str) -> AsyncIterator[tuple[PhiTools, FakeMcpServer]]:
    """The gate the OpenAI agent runs its MCP tools through, over Redis and the MCP fake."""
    async with FakeMcpServer() as server:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            redis_url=redis_url,
            verify_attempts_per_call=2,
            phi_lookups_per_call=2,
        )
        store = Store(url=redis_url)
        mcp = McpTools(url=server.url, call_timeout_s=2.0, connect_timeout_s=2.0)
        assert await mcp.start()
        try:
            yield PhiTools.from_settings(settings, mcp=mcp, store=store), server
        finally:
            await mcp.aclose()
            await store.aclose()


async def test_phi_tools_run_only_for_the_verified_member_within_the_limits(
    phi: tuple[PhiTools, FakeMcpServer],
) -> None:
    gate, server = phi
    sid = new_sid()
    assert {s["function"]["name"] for s in gate.schemas(None)} == {"verify_member"}
    # A model that calls a tool it was not offered gets a refusal; the server sees nothing.
    refused = await gate.call("check_insurance", {"member_id": A}, call_sid=sid)
    assert refused == NOT_VERIFIED and server.calls == []

    wrong = {"member_id": A, "date_of_birth": "1980-04-13"}
    assert NOT_MATCHED in await gate.call("verify_member", wrong, call_sid=sid)
    right = {"member_id": A, "date_of_birth": "1980-04-12"}
    assert (await gate.call("verify_member", right, call_sid=sid)).startswith("Verified")
    verified = await gate.verified(sid)
    assert verified is not None and verified.member_id == A
    assert verified.verification not in str(server.calls)  # the proof is not an argument
    assert {s["function"]["name"] for s in gate.schemas(verified)} == PHI_TOOLS
    # One member per call: the other member's date of birth does not switch the call to them.
    b = {"member_id": B, "date_of_birth": "1975-09-30"}
    assert await gate.call("verify_member", b, call_sid=sid) == OTHER_MEMBER

    lab = await gate.call("get_lab_results_status", {"order_id": "L-77"}, call_sid=sid)
    assert NOT_THEIRS in lab  # B's order
    assert await gate.call("check_insurance", {"member_id": A}, call_sid=sid) == (
        insurance_status(A)
    )
    seen = len(server.calls)
    assert await gate.call("check_insurance", {"member_id": A}, call_sid=sid) == TOO_MANY_LOOKUPS
    assert len(server.calls) == seen  # over the limit: never sent

    other = new_sid()  # attempts are limited per call: guessing dates of birth stops
    for _ in range(2):
        assert NOT_MATCHED in await gate.call("verify_member", wrong, call_sid=other)
    assert await gate.call("verify_member", right, call_sid=other) == TOO_MANY_ATTEMPTS
    assert await gate.verified(other) is None


async def test_the_records_server_refuses_lookups_without_a_valid_proof() -> None:
    async with FakeMcpServer() as server, Client(server.url) as client:
        sid = new_sid()
        bare = await client.call_tool("check_insurance", {"member_id": A})
        assert bare.is_error and insurance_status(A) not in str(bare.content)
        forged = {
            mcp_context.CALL_SID: sid,
            mcp_context.MEMBER_ID: A,
            mcp_context.VERIFICATION: "0" * 64,
        }
        got = await client.call_tool("check_insurance", {"member_id": A}, meta=forged)
        assert got.is_error and insurance_status(A) not in str(got.content)
        # A proof is bound to its call: A's proof from another call opens nothing here.
        elsewhere = {**forged, mcp_context.VERIFICATION: server.proof(new_sid(), A)}
        got = await client.call_tool("check_insurance", {"member_id": A}, meta=elsewhere)
        assert got.is_error
        ok = await client.call_tool(
            "verify_member",
            {"member_id": A, "date_of_birth": "1980-04-12"},
            meta={mcp_context.CALL_SID: sid},
        )
        proof = (ok.structured_content or {})["verification"]
        valid = {**forged, mcp_context.VERIFICATION: proof}
        got = await client.call_tool("check_insurance", {"member_id": A}, meta=valid)
        assert not got.is_error and got.content[0].text == insurance_status(A)  # type: ignore[union-attr]
        got = await client.call_tool("check_insurance", {"member_id": B}, meta=valid)
        assert got.is_error and NOT_THEIRS in str(got.content)
