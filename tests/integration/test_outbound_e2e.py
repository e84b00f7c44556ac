"""Outbound calls through the real system: four service processes, real NATS and Redis.

``POST /calls/outbound`` asks the local Twilio REST fake to place the call (the twilio SDK's
``calls.create``); the fake then calls the gateway back as Twilio would: signed status
callbacks, the signed TwiML webhook, the media stream (the simulator's Twilio-faithful client)
and the signed AMD callback. What the agent said, and when, is read from the bus's stored
events; who asked and what became of each dial, from the audit trail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from redis.asyncio import Redis

from devkit.fakes.twilio_rest import Answer, FakeTwilioRest, PlacedCall
from devkit.simulator import prepare_turns, say
from shared import callevents, subjects
from shared.audit import query as audit_query
from shared.messages import CallStarted, Hangup, parse_control, parse_reply
from voiceagent.stack import Stack, free_port

pytestmark = pytest.mark.integration

TOKEN = "outbound-" + "7" * 24
ACCOUNT = "AC" + "1" * 32
ADMIN = "ops-" + "3" * 28
FROM = "+12125550100"
HUMAN = "+12125550123"
MACHINE = "+12125550124"
BUSY = "+12125550125"
NO_ANSWER = "+12125550126"
DNC = "+12125550999"
LOST_AMD = "+12125550127"
DNC_REDIS = "+12125550998"
BOOKING = "on Tuesday at 10 am"
CONFIRM = "Yes, that works for me."

KNOWLEDGE = """# Test Clinic

## opening hours, open, hours, time
We open at nine.
"""


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def fake(port: int) -> AsyncIterator[FakeTwilioRest]:
    answer = await prepare_turns([say(CONFIRM)])  # what the person says after the opening
    with FakeTwilioRest(
        account_sid=ACCOUNT, auth_token=TOKEN, gateway_url=f"http://127.0.0.1:{port}"
    ) as f:
        f.answer(HUMAN, Answer(kind="human", amd_delay_s=2.0, talk_s=1.5, turns=answer))
        f.answer(MACHINE, Answer(kind="machine_end_beep", amd_delay_s=3.0))
        f.answer(BUSY, Answer(kind="busy"))
        f.answer(NO_ANSWER, Answer(kind="no-answer"))
        f.answer(LOST_AMD, Answer(kind="human", send_amd=False))
        yield f


@pytest.fixture(scope="module")
async def stack(
    nats_url: str,
    redis_url: str,
    port: int,
    fake: FakeTwilioRest,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("outbound")
    (tmp / "knowledge.md").write_text(KNOWLEDGE)
    (tmp / "dnc.txt").write_text(f"# asked not to be called\n{DNC}\n")
    env = {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_API_BASE_URL": fake.base_url,
        "ADMIN_TOKEN": f"ops:{ADMIN}",
        "OUTBOUND_FROM_NUMBER": FROM,
        "OUTBOUND_ALLOWED_PREFIXES": "+1212",
        "OUTBOUND_HOURS": "",
        "OUTBOUND_DNC_FILE": str(tmp / "dnc.txt"),
        "OUTBOUND_AMD_TIMEOUT_S": "10",
        "SILENCE_REPROMPT_S": "20",  # a loaded test machine recognizes slowly
        "ASR_PROVIDER": "local",
        "AGENT_PROVIDER": "local",
        "TTS_PROVIDER": "local",
        "LOG_FORMAT": "text",
        "KNOWLEDGE_FILE": str(tmp / "knowledge.md"),
    }
    st = Stack(env=env, output=None, service_output=None)
    await st.start()
    try:
        await st.wait_ready(timeout_s=150)
    except TimeoutError as e:
        logs = "\n".join(st.supervisor.recent_output()[-60:]) if st.supervisor else ""
        await st.stop()
        pytest.fail(f"{e}\n--- service output ---\n{logs}")
    yield st
    await st.stop()


def _logs(st: Stack) -> str:
    return "\n".join(st.supervisor.recent_output()[-80:]) if st.supervisor else ""


async def _dial(st: Stack, body: dict[str, Any], token: str | None = ADMIN) -> httpx.Response:
    assert st.info is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.post(
            st.info.gateway_url + "/calls/outbound", json=body, headers=headers
        )


async def _finished(fake: FakeTwilioRest, call_sid: str, timeout_s: float = 90) -> PlacedCall:
    placed = fake.placed(call_sid)
    assert placed is not None, "the fake never saw calls.create"
    assert await asyncio.to_thread(placed.done.wait, timeout_s), "the placed call never ended"
    return placed


async def _stored(nats_url: str, call_sid: str) -> list[Any]:
    nc = await nats.connect(nats_url)
    try:
        await asyncio.sleep(1.0)  # the last events land in the stream
        msgs = await callevents.read_call(nc, call_sid)
    finally:
        await nc.close()
    return msgs


def _events(msgs: list[Any]) -> list[Any]:
    return callevents.parse_events(m for m in msgs if m.subject.endswith(".events"))


async def _audit(nats_url: str, call_sid: str) -> list[Any]:
    nc = await nats.connect(nats_url)
    try:
        return await audit_query(nc, since=time.time() - 600, call_sid=call_sid)
    finally:
        await nc.close()


async def test_a_person_hears_why_we_call_only_after_amd_says_human(
    stack: Stack, fake: FakeTwilioRest, nats_url: str
) -> None:
    t0 = time.time()
    resp = await _dial(stack, {"to": HUMAN, "purpose": "reminder", "params": {"booking": BOOKING}})
    assert resp.status_code == 201, resp.text
    sid = resp.json()["call_sid"]
    placed = await _finished(fake, sid)
    ctx = f"\ncallbacks: {[(u, p.get('CallStatus'), c) for u, p, c in placed.callbacks]}"
    ctx += f"\n--- service output ---\n{_logs(stack)}"

    # Twilio's side: calls.create carried AMD and the signed callbacks; every one was taken.
    create = next(r for r in fake.requests if r.path.endswith("/Calls.json"))
    assert create.form["MachineDetection"] == "DetectMessageEnd", create.form
    assert create.form["AsyncAmd"] == "true" and create.form["To"] == HUMAN
    assert all(code in (200, 204) for _, _, code in placed.callbacks), ctx
    result = placed.result
    assert result is not None and result.protocol_errors == [], ctx
    assert result.greeting.first_audio_at is not None, "the person heard nothing" + ctx

    msgs = await _stored(nats_url, sid)
    control = [parse_control(m.data) for m in msgs if m.subject == subjects.control(sid)]
    started = [c for c in control if isinstance(c, CallStarted)]
    assert len(started) == 1 and started[0].outbound is not None, ctx
    assert started[0].outbound.answered_by == "human"
    assert started[0].outbound.params == {"booking": BOOKING}
    amd_cb = next(p for u, p, _ in placed.callbacks if u.endswith("/outbound/amd"))
    assert amd_cb["AnsweredBy"] == "human"
    replies = [parse_reply(m.data) for m in msgs if m.subject == subjects.reply(sid)]
    assert replies, "the agent said nothing" + ctx
    opening = " ".join(r.text for r in replies if r.turn == replies[0].turn)
    assert "calling to confirm your appointment on Tuesday at 10 am" in opening, opening
    # Nothing was said before Twilio answered "human" (the AMD callback came ~2 s in).
    amd_at = next(e.at for e in _events(msgs) if e.name == "outbound.amd")
    assert min(r.at for r in replies) >= amd_at >= t0, ctx
    assert not any(isinstance(c, Hangup) and c.reason == "voicemail" for c in control)
    # The conversation goes on: the person's "yes" is heard and answered, then the agent ends.
    assert result.turns and result.turns[0].first_audio_at is not None, "no answer heard" + ctx
    later = " ".join(r.text for r in replies if r.turn > replies[0].turn)
    assert "We look forward to seeing you" in later, later + ctx
    assert any(isinstance(c, Hangup) and c.reason == "confirmed" for c in control), ctx
    assert result.ended_by == "gateway", ctx

    records = await _audit(nats_url, sid)
    details = [(r.action, r.actor, r.detail) for r in records]
    assert ("outbound.dial", "ops", "queued") in details, details
    assert ("outbound.result", "ops", "answered_by:human") in details, details
    assert all(HUMAN[1:] not in r.target and r.target.startswith("tel+1-") for r in records)


async def test_a_machine_gets_the_message_after_the_beep_then_the_call_ends(
    stack: Stack, fake: FakeTwilioRest, nats_url: str
) -> None:
    resp = await _dial(
        stack, {"to": MACHINE, "purpose": "reminder", "params": {"booking": BOOKING}}
    )
    assert resp.status_code == 201, resp.text
    sid = resp.json()["call_sid"]
    placed = await _finished(fake, sid)
    ctx = f"\n--- service output ---\n{_logs(stack)}"
    result = placed.result
    assert result is not None and result.ended_by == "gateway", ctx
    assert result.greeting.first_audio_at is not None, "no message left" + ctx

    msgs = await _stored(nats_url, sid)
    control = [parse_control(m.data) for m in msgs if m.subject == subjects.control(sid)]
    started = [c for c in control if isinstance(c, CallStarted)]
    assert started and started[0].outbound is not None
    assert started[0].outbound.answered_by == "machine_end_beep"
    replies = [parse_reply(m.data) for m in msgs if m.subject == subjects.reply(sid)]
    said = " ".join(r.text for r in replies)
    assert "Please call us back" in said and "Do you have a moment" not in said, said
    assert "Is that still good for you" not in said, "a voicemail was asked a question"
    assert {r.turn for r in replies} == {replies[0].turn}, "more than one turn on a machine"
    assert any(isinstance(c, Hangup) and c.reason == "voicemail" for c in control), ctx
    # The existing hang-up path: stream closed and the call completed through Twilio REST.
    assert placed.completed_by_api, ctx
    events = _events(msgs)
    ended = [e for e in events if e.name == "call.ended"]
    assert ended and ended[0].data["reason"] == "hangup:voicemail"
    # Twilio minutes at the outbound rate, priced on the call's final event.
    twilio = [e for e in events if e.name == "usage" and e.data["stage"] == "twilio"]
    assert twilio and twilio[0].data["direction"] == "outbound"
    assert any(e.name == "call.cost" and e.data["cost_twilio"] == 0.014 for e in events), [
        (e.name, e.data) for e in events if e.name == "call.cost"
    ]


async def test_no_amd_answer_in_time_is_treated_as_a_machine(
    stack: Stack, fake: FakeTwilioRest, nats_url: str
) -> None:
    resp = await _dial(stack, {"to": LOST_AMD, "params": {"booking": BOOKING}})
    assert resp.status_code == 201, resp.text
    sid = resp.json()["call_sid"]
    placed = await _finished(fake, sid)
    assert placed.result is not None and placed.result.ended_by == "gateway", _logs(stack)
    msgs = await _stored(nats_url, sid)
    events = _events(msgs)
    waited = next(e for e in events if e.name == "outbound.amd_wait")
    timeout = next(e for e in events if e.name == "outbound.amd_timeout")
    assert timeout.at - waited.at >= 9.5
    started = [parse_control(m.data) for m in msgs if m.subject == subjects.control(sid)]
    cs = [c for c in started if isinstance(c, CallStarted)]
    assert cs and cs[0].outbound is not None and cs[0].outbound.answered_by == "unknown"
    replies = [parse_reply(m.data) for m in msgs if m.subject == subjects.reply(sid)]
    assert min(r.at for r in replies) >= timeout.at
    assert "Please call us back" in " ".join(r.text for r in replies)


@pytest.mark.parametrize(("number", "status"), [(BUSY, "busy"), (NO_ANSWER, "no-answer")])
async def test_a_call_nobody_answers_is_recorded_with_the_reason(
    stack: Stack, fake: FakeTwilioRest, nats_url: str, number: str, status: str
) -> None:
    resp = await _dial(stack, {"to": number, "purpose": "reminder"})
    assert resp.status_code == 201, resp.text
    sid = resp.json()["call_sid"]
    placed = await _finished(fake, sid, timeout_s=20)
    assert placed.result is None  # no stream: nobody answered
    await asyncio.sleep(0.5)
    events = _events(await _stored(nats_url, sid))
    missed = [e for e in events if e.name == "outbound.not_answered"]
    assert missed and missed[0].data["reason"] == status, [e.name for e in events]
    records = await _audit(nats_url, sid)
    assert any(r.detail == f"not_answered:{status}" for r in records), records


async def test_dials_the_guard_rails_refuse_never_reach_twilio(
    stack: Stack, fake: FakeTwilioRest, redis_url: str
) -> None:
    before = len([r for r in fake.requests if r.path.endswith("/Calls.json")])
    assert (await _dial(stack, {"to": HUMAN}, token=None)).status_code == 401
    assert (await _dial(stack, {"to": HUMAN}, token="wrong")).status_code == 401
    r = await _dial(stack, {"to": DNC})
    assert r.status_code == 403 and r.json()["error"] == "do_not_call", r.text
    redis = Redis.from_url(redis_url)
    try:
        await redis.sadd("va:dnc", DNC_REDIS)
        r = await _dial(stack, {"to": DNC_REDIS})
        assert r.status_code == 403 and r.json()["error"] == "do_not_call", r.text
    finally:
        await redis.srem("va:dnc", DNC_REDIS)
        await redis.aclose()
    r = await _dial(stack, {"to": "+19005551234"})  # a premium-rate range: not allow-listed
    assert r.status_code == 403 and r.json()["error"] == "not_allowed", r.text
    r = await _dial(stack, {"to": "0800 123"})
    assert r.status_code == 422, r.text
    r = await _dial(stack, {"to": HUMAN, "params": {"bad name": "x"}})
    assert r.status_code == 422, r.text
    after = len([r for r in fake.requests if r.path.endswith("/Calls.json")])
    assert after == before


async def test_unsigned_outbound_callbacks_are_refused(stack: Stack) -> None:
    assert stack.info is not None
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/outbound/amd", "/outbound/status", "/outbound/twiml"):
            r = await client.post(
                stack.info.gateway_url + path,
                data={"CallSid": "CA" + "0" * 32, "AnsweredBy": "human"},
                headers={"X-Twilio-Signature": "forged"},
            )
            assert r.status_code == 403, (path, r.status_code)


async def test_voiceagent_dial_places_a_call_and_shows_a_refusal(
    stack: Stack, fake: FakeTwilioRest
) -> None:
    from voiceagent.cli import build_parser
    from voiceagent.dial import run_dial

    assert stack.info is not None
    lines: list[str] = []
    common = ["--gateway", stack.info.gateway_url, "--admin-token", ADMIN]
    args = build_parser().parse_args(
        ["dial", BUSY, "--purpose", "reminder", "--param", f"booking={BOOKING}", *common]
    )
    assert await run_dial(args, out=lines.append) == 0, lines
    sid = lines[0].split()[1]
    placed = await _finished(fake, sid, timeout_s=20)
    assert placed.to == BUSY and placed.form["MachineDetection"] == "DetectMessageEnd"

    lines.clear()
    args = build_parser().parse_args(["dial", DNC, *common])
    assert await run_dial(args, out=lines.append) == 1
    assert "do_not_call" in lines[0], lines
    lines.clear()
    args = build_parser().parse_args(["dial", HUMAN, "--param", "oops", *common])
    assert await run_dial(args, out=lines.append) == 2 and "NAME=VALUE" in lines[0]
