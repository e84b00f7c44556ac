"""deploy/nats/nats-server.conf (its users in deploy/nats/auth.conf): each service's normal
traffic flows; outside its subjects it is refused (permissions violation), and no one reads
another's replies or forges audit records."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from argparse import Namespace
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import SecretStr

from devkit.call_harness import TurnBench
from devkit.fakes.twilio_rest import FakeTwilioRest
from shared import audit, bus, callevents, subjects
from shared.messages import Event, StageFailed, Transcript, Transfer
from shared.settings import Settings
from tests.natsserver import private_nats_server
from voiceagent import ops_cli
from voiceagent.tail import run_tail

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
SERVICES = ("gateway", "asr", "agent", "tts", "operator")
PASSWORDS = {s: f"pw-{s}-{uuid.uuid4().hex[:8]}" for s in SERVICES}


@pytest.fixture(scope="module")
def secured_nats() -> Iterator[str]:
    with shipped_nats_server() as url:
        yield url


@contextlib.contextmanager
def shipped_nats_server() -> Iterator[str]:
    """nats-server with deploy/nats/nats-server.conf and its users' passwords."""
    store = tempfile.mkdtemp(prefix="nats-sec-")
    env = dict(os.environ, **{f"{s.upper()}_NATS_PASSWORD": p for s, p in PASSWORDS.items()})
    # The shipped file, verbatim but for where JetStream keeps its files.
    text = CONF.read_text().replace('store_dir: "/data/nats"', f'store_dir: "{store}"')
    assert store in text
    conf = Path(store) / "nats-server.conf"
    conf.write_text(text)
    shutil.copy(CONF.parent / "auth.conf", Path(store) / "auth.conf")  # its include
    try:
        with private_nats_server(args=("-c", str(conf)), env=env) as url:
            yield url
    finally:
        shutil.rmtree(store, ignore_errors=True)


@dataclass
class Svc:
    nc: NATS
    errors: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]


async def as_service(url: str, name: str) -> Svc:
    """Connect exactly as the service would: NATS_USER/PASSWORD and its own inbox prefix."""
    settings = Settings(
        nats_url=url,
        nats_user=name,
        nats_password=SecretStr(PASSWORDS[name]),
        nats_inbox_prefix=f"_INBOX_{name}",
    )
    opts = bus.connect_options(settings, name=name)
    svc: Svc | None = None

    async def on_error(e: Exception) -> None:
        assert svc is not None
        svc.errors.append(str(e))

    opts["error_cb"] = on_error
    opts["max_reconnect_attempts"] = 0
    nc = await nats.connect(url, **opts)
    svc = Svc(nc=nc)
    return svc


@pytest.fixture
async def svcs(secured_nats: str) -> AsyncIterator[dict[str, Svc]]:
    out = {name: await as_service(secured_nats, name) for name in SERVICES}
    try:
        yield out
    finally:
        for s in out.values():
            with contextlib.suppress(Exception):
                await s.nc.close()


class Inbox:
    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.got = asyncio.Event()

    async def cb(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self.got.set()

    async def wait(self, within: float = 2.0) -> Msg:
        await asyncio.wait_for(self.got.wait(), within)
        return self.msgs[-1]


async def sub(svc: Svc, subject: str, queue: str = "") -> Inbox:
    box = Inbox()
    await svc.nc.subscribe(subject, queue=queue, cb=box.cb)
    await svc.nc.flush()
    return box


async def publish_until_received(pub: Svc, box: Inbox, subject: str) -> Msg | None:
    """Publish until the subscriber has it (None after 5 s).

    A publisher already connected can miss a subscription made on another connection for a
    few milliseconds after the subscriber's flush (server-side interest propagation); a
    refused publish never arrives however often it is sent.
    """
    for _ in range(25):
        await pub.nc.publish(subject, b"x")
        await pub.nc.flush()
        try:
            return await box.wait(0.2)
        except TimeoutError:
            continue
    return None


async def test_each_service_normal_traffic_flows(svcs: dict[str, Svc]) -> None:
    gw, asr, agent, tts = svcs["gateway"], svcs["asr"], svcs["agent"], svcs["tts"]
    call = "CA" + uuid.uuid4().hex

    # ASR claim: request/reply through the gateway's own inbox and ASR's allow_responses.
    async def answer(msg: Msg) -> None:
        await msg.respond(b"accepted")

    await asr.nc.subscribe(subjects.ASR_CLAIM, queue=subjects.QUEUE_ASR, cb=answer)
    await asr.nc.flush()
    for _ in range(25):  # interest can take a moment to reach the gateway's connection
        try:
            reply = await gw.nc.request(subjects.ASR_CLAIM, b"claim", timeout=2)
            break
        except NoRespondersError:
            await asyncio.sleep(0.2)
    assert reply.data == b"accepted"

    # The audio/text pipeline, each hop with the publisher's and subscriber's own rights.
    hops = [
        (gw, asr, subjects.audio_in(call, "asr-1")),
        (asr, agent, subjects.transcript(call)),
        (asr, gw, subjects.transcript(call)),
        (agent, tts, subjects.reply(call)),
        (agent, gw, subjects.reply(call)),
        (tts, gw, subjects.audio_out(call)),
        (gw, agent, subjects.control(call)),
        (gw, tts, subjects.control(call)),
        (gw, asr, subjects.control(call)),
        (agent, gw, subjects.control(call)),
        (agent, tts, subjects.control(call)),
        (asr, agent, subjects.asr_control(call)),
        (asr, gw, subjects.asr_heartbeat(call)),
    ]
    for pub, recv, subject in hops:
        box = await sub(recv, subject)
        msg = await publish_until_received(pub, box, subject)
        assert msg is not None, f"{subject} did not flow: {pub.errors} {recv.errors}"
        assert msg.subject == subject

    # The operator tails everything, read-only.
    tail = await sub(svcs["operator"], subjects.call_all(call))
    await tts.nc.publish(subjects.events(call), b"{}")
    assert (await tail.wait()).subject == subjects.events(call)

    # The gateway writes the audit trail (JetStream API + acks on its inbox); the operator reads it.
    log = audit.AuditLog(nc=gw.nc, service="gateway", max_age_days=1)
    await log.record(actor="ann", action="transcript.export", call_sid=call)
    records = await audit.query(svcs["operator"].nc, call_sid=call)
    assert [(r.actor, r.call_sid) for r in records] == [("ann", call)]

    for s in svcs.values():
        assert not s.violations(), s.errors


async def test_services_are_refused_outside_their_subjects(svcs: dict[str, Svc]) -> None:
    gw, asr, agent, tts, op = (svcs[s] for s in SERVICES)
    call = "CA" + uuid.uuid4().hex
    transcripts = await sub(agent, subjects.transcript(call))

    # TTS forging a transcript (what the agent would act on): refused, never delivered.
    await tts.nc.publish(subjects.transcript(call), b"forged")
    await tts.nc.flush()
    await asyncio.sleep(0.2)
    assert tts.violations() and not transcripts.msgs

    # ASR eavesdropping on replies, the agent on the gateway's reply inbox: refused.
    await asr.nc.subscribe(subjects.ALL_REPLY)
    await agent.nc.subscribe("_INBOX_gateway.>")
    # The operator publishing on a call, or anyone but the gateway forging audit records.
    await op.nc.publish(subjects.control(call), b"hangup")
    await asr.nc.publish(subjects.audit("transcript.export"), b"{}")
    # The operator deleting the audit trail via the JetStream API.
    with contextlib.suppress(Exception):
        await op.nc.request("$JS.API.STREAM.DELETE." + subjects.AUDIT_STREAM, b"", timeout=0.5)
    for s in (asr, agent, op):
        await s.nc.flush()
    await asyncio.sleep(0.3)
    assert any("subscription" in e.lower() for e in asr.violations()), asr.errors
    assert any("_inbox_gateway" in e.lower() for e in agent.violations()), agent.errors
    assert any("publish" in e.lower() and "audit" in e.lower() for e in asr.violations())
    assert any("voice." in e.lower() for e in op.violations()), op.errors
    assert any("$js.api.stream.delete" in e.lower() for e in op.violations()), op.errors

    # ASR may answer a request it received, but not publish to an inbox on its own.
    await asr.nc.publish("_INBOX_gateway.stolen", b"x")
    await asr.nc.flush()
    await asyncio.sleep(0.2)
    assert any("_inbox_gateway.stolen" in e.lower() for e in asr.violations()), asr.errors
    # Wrong password: no connection at all.
    with pytest.raises(Exception):  # noqa: B017 - nats-py raises various auth errors
        await nats.connect(
            gw.nc.connected_url.geturl() if gw.nc.connected_url else "",
            user="gateway",
            password="wrong",
            max_reconnect_attempts=0,
            allow_reconnect=False,
            connect_timeout=1,
        )
    # Only the gateway may claim an ASR worker.
    claims = await sub(asr, subjects.ASR_CLAIM, queue=subjects.QUEUE_ASR)
    with pytest.raises((NatsTimeout, NoRespondersError)):
        await tts.nc.request(subjects.ASR_CLAIM, b"claim", timeout=0.3)
    assert not claims.msgs
    assert any("voice._sys.asr.claim" in e.lower() for e in tts.violations()), tts.errors


# ------------------------------------------------------------------ who may redirect a call

DESK = "+15551230000"


async def _requests_after(fake: FakeTwilioRest, n: int, within: float = 1.0) -> int:
    """How many REST requests the fake has seen once ``n`` arrived (or ``within`` s passed)."""
    for _ in range(int(within / 0.02)):
        if len(fake.requests) >= n:
            break
        await asyncio.sleep(0.02)
    return len(fake.requests)


async def test_only_the_agent_transfers_and_only_to_the_configured_targets(
    svcs: dict[str, Svc],
) -> None:
    """The gateway's call logic connected as the gateway user, Twilio's REST API faked: ASR
    publishing a Transfer is refused by NATS; the agent's Transfer to a number outside
    TRANSFER_TARGETS is refused by the gateway (the call goes on); to the target, it is made."""
    gw, asr, agent = svcs["gateway"], svcs["asr"], svcs["agent"]
    account, token = "AC" + "7" * 32, "rest-token-" + "x" * 21
    with FakeTwilioRest(account_sid=account, auth_token=token) as fake:
        settings = Settings(
            _env_file=None,
            twilio_account_sid=account,
            twilio_auth_token=SecretStr(token),
            twilio_api_base_url=fake.base_url,
            transfer_targets=f"front_desk={DESK}",
        )
        bench = TurnBench(nc=gw.nc, settings=settings, vad_pool=None)
        await bench.start()
        call = bench.call_sid
        try:
            forged = Transfer(call_sid=call, to=DESK)
            await asr.nc.publish(subjects.control(call), forged.to_bytes())
            await asr.nc.flush()
            assert await _requests_after(fake, 1) == 0
            assert any(f'"{subjects.control(call).lower()}"' in e for e in asr.violations())

            evil = Transfer(call_sid=call, to="+19005550100")
            await agent.nc.publish(subjects.control(call), evil.to_bytes())
            await agent.nc.flush()
            for _ in range(100):
                if any(isinstance(m, StageFailed) for m in bench.tap.other):
                    break
                await asyncio.sleep(0.02)
            assert [m.reason for m in bench.tap.other if isinstance(m, StageFailed)] == ["transfer"]
            assert fake.requests == [] and not bench.leg.closed.is_set()

            good = Transfer(call_sid=call, to=DESK)
            await agent.nc.publish(subjects.control(call), good.to_bytes())
            await asyncio.wait_for(bench.leg.closed.wait(), 5)
            assert await _requests_after(fake, 1) == 1
            assert f"<Dial>{DESK}</Dial>" in fake.requests[0].form["Twiml"]
        finally:
            await bench.stop()
    assert not agent.violations() and not gw.violations(), (agent.errors, gw.errors)


# ------------------------------------------------------------------ operators and call text


async def _wait(check: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    for _ in range(int(within / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_operators_read_call_text_only_after_an_audit_record(
    svcs: dict[str, Svc], secured_nats: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``replay --show-text`` and ``tail --show-text``, connected as ``operator``: each writes
    its audit record (the only ones operator may write) before any text; no raw audio."""
    gw, asr, op = svcs["gateway"], svcs["asr"], svcs["operator"]
    call = "CA" + uuid.uuid4().hex
    # The gateway sets up both streams (operator may not create streams).
    assert await callevents.ensure_stream(gw.nc, Settings(_env_file=None, events_retention_h=1))
    await audit.ensure_stream(gw.nc, max_age_days=1)
    words = "my member id is 4 8 1 5"
    said = Transcript(call_sid=call, utterance_id=1, text=words, is_final=True)
    await asr.nc.publish(subjects.transcript(call), said.to_bytes())
    await asr.nc.flush()

    async def stored() -> bool:
        return bool(await callevents.read_call(op.nc, call))

    await _wait(stored, "the transcript in VOICE_EVENTS")

    for var, value in (("NATS_USER", "operator"), ("NATS_INBOX_PREFIX", "_INBOX_operator")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("NATS_PASSWORD", PASSWORDS["operator"])

    shown: list[str] = []
    args = Namespace(call_sid=call, show_text=True, nats_url=secured_nats, stage=None, color=False)
    assert await ops_cli.run_replay(args, out=shown.append) == 0, shown
    assert any(words in line for line in shown), shown

    lines: list[str] = []
    stop = asyncio.Event()
    tail = asyncio.create_task(
        run_tail(nats_url=secured_nats, call_sid=call, show_text=True, out=lines.append, stop=stop)
    )

    async def tail_audited() -> bool:
        return any(r.action == "call.tail" for r in await audit.query(op.nc, call_sid=call))

    try:
        await _wait(tail_audited, "the tail's audit record")
        assert not lines  # nothing shown before the record was stored

        # Raw caller audio never reaches operator; events published after it on the same
        # connection do (so the audio would have been there first).
        ev = Event(call_sid=call, service="gateway", name="probe")

        async def tail_shows_text() -> bool:
            await gw.nc.publish(subjects.audio_in(call, "asr-1"), b"\xff" * 160)
            await gw.nc.publish(subjects.events(call), ev.to_bytes())
            await asr.nc.publish(subjects.transcript(call), said.to_bytes())
            return any(words in line for line in lines) and any("probe" in x for x in lines)

        await _wait(tail_shows_text, "the tail's lines")
        assert not any("audio" in line.split()[1] for line in lines), lines
    finally:
        stop.set()
        assert await asyncio.wait_for(tail, 5) is True

    records = await audit.query(op.nc, call_sid=call)
    assert [(r.action, r.service) for r in records] == [
        ("call.replay", "cli"),
        ("call.tail", "cli"),
    ]

    # A raw client with operator's password: no audio subscription, no other audit records.
    await op.nc.subscribe(subjects.audio_in_any(call))
    await op.nc.publish(subjects.audit("transcript.export"), b"{}")
    await op.nc.flush()
    # Nor may the gateway write the operators' records.
    await gw.nc.publish(subjects.audit("call.tail"), b"{}")
    await gw.nc.flush()
    await asyncio.sleep(0.3)
    refused = " ".join(op.violations())
    assert "subscription" in refused and "audio.in" in refused, op.errors
    assert "audit.transcript.export" in refused, op.errors
    assert any("audit.call.tail" in e for e in gw.violations()), gw.errors


async def test_tail_shows_no_text_when_its_audit_record_cannot_be_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh server without the audit stream (operator may not create it): ``tail
    --show-text`` refuses before it subscribes, so it shows nothing of the call."""
    for var, value in (("NATS_USER", "operator"), ("NATS_INBOX_PREFIX", "_INBOX_operator")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("NATS_PASSWORD", PASSWORDS["operator"])
    call = "CA" + uuid.uuid4().hex
    lines: list[str] = []
    with shipped_nats_server() as url:
        shown = await asyncio.wait_for(
            run_tail(nats_url=url, call_sid=call, show_text=True, out=lines.append), 15
        )
    assert shown is False
    # Before the refusal only the client's notes on the refused stream creation, no call lines.
    assert lines[-1] == "cannot write the audit record (TimeoutError): text not shown", lines
    assert all(line.startswith("(nats: ") for line in lines[:-1]), lines


async def test_the_gateway_reads_the_event_store_for_the_console_backfill(
    svcs: dict[str, Svc],
) -> None:
    """The console's backfill runs as the gateway's user: the shipped permissions let it read
    VOICE_EVENTS (what it receives live anyway), and nothing else of JetStream."""
    from services.gateway.console import backfill

    gw, asr = svcs["gateway"], svcs["asr"]
    call = "CA" + uuid.uuid4().hex
    assert await callevents.ensure_stream(gw.nc, Settings(_env_file=None, events_retention_h=1))
    await gw.nc.publish(
        subjects.events(call),
        Event(call_sid=call, service="gateway", name="call.started").to_bytes(),
    )
    said = Transcript(call_sid=call, utterance_id=1, text="hello there", is_final=True)
    await asr.nc.publish(subjects.transcript(call), said.to_bytes())
    await asr.nc.flush()
    await gw.nc.flush()

    async def backfilled() -> bool:
        got = await backfill.load(gw.nc, local_calls=[call])
        return any(i.get("call") == call and i.get("kind") == "caller" for i in got.items)

    await _wait(backfilled, "the live call's transcript in the gateway's backfill")
    assert not gw.violations(), gw.errors
    # Still no reading of the audit trail's consumers.
    await gw.nc.publish("$JS.API.CONSUMER.CREATE.VOICE_AUDIT", b"{}")
    await gw.nc.flush()
    await asyncio.sleep(0.3)
    assert any("consumer.create.voice_audit" in e.lower() for e in gw.violations()), gw.errors
