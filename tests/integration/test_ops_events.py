"""The call event store on a private JetStream server: retention, replay, recent calls."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from uuid import uuid4

import nats
import pytest
from nats.js.errors import NotFoundError

from services.gateway.runtime import Gateway
from shared import audit, callevents, subjects
from shared import headers as H
from shared.messages import CallEnded, CallStarted, ReplySegment, Transcript, event
from shared.settings import Settings
from tests.natsserver import free_port, private_nats_server
from voiceagent import ops_cli


@pytest.fixture(scope="module")
def js_url() -> Iterator[str]:
    with private_nats_server(jetstream=True) as url:
        yield url


def _settings(url: str, **kw: object) -> Settings:
    return Settings(_env_file=None, nats_url=url, **kw)  # type: ignore[call-arg, arg-type]


async def _publish_call(nc: nats.NATS, sid: str) -> None:
    """A short call as the services would publish it (audio included: it must not be kept)."""
    pub = nc.publish
    await pub(
        subjects.control(sid),
        CallStarted(call_sid=sid, stream_sid="MZ1", gateway_id="gw").to_bytes(),
    )
    await pub(
        subjects.events(sid), event(call_sid=sid, service="gateway", name="call.started").to_bytes()
    )
    await pub(subjects.audio_in(sid, "asr-1"), b"\xff" * 160, headers={H.SEQ: "1"})
    text = "my number is 415 555 0100"
    await pub(
        subjects.transcript(sid),
        Transcript(call_sid=sid, utterance_id=1, text=text, is_final=True).to_bytes(),
    )
    seg = ReplySegment(call_sid=sid, turn=1, seq=0, text="Thanks, noted.", last=True)
    await pub(subjects.reply(sid), seg.to_bytes())
    await pub(subjects.audio_out(sid), b"\xff" * 320, headers={H.TURN: "1", H.SEG: "0"})
    v2v = event(
        call_sid=sid, service="gateway", name="turn.first_audio", turn=1, voice_to_voice_ms=700.0
    )
    await pub(subjects.events(sid), v2v.to_bytes())
    ended = event(call_sid=sid, service="gateway", name="call.ended", reason="stop", duration_s=4.5)
    await pub(subjects.control(sid), CallEnded(call_sid=sid).to_bytes())
    await pub(subjects.events(sid), ended.to_bytes())
    await nc.flush()


async def test_gateway_creates_the_stream_and_retention_follows_the_setting(js_url: str) -> None:
    gw = Gateway(settings=_settings(js_url, events_retention_h=2), use_vad=False)
    await gw.start()
    nc = await nats.connect(js_url)
    try:
        info = await nc.jsm().stream_info(subjects.EVENTS_STREAM)
        assert info.config.max_age == 2 * 3600
        assert set(info.config.subjects or []) == set(subjects.EVENTS_STREAM_SUBJECTS)
        # Idempotent, and a changed setting updates the live stream instead of failing.
        assert await callevents.ensure_stream(nc, _settings(js_url, events_retention_h=2))
        assert await callevents.ensure_stream(nc, _settings(js_url, events_retention_h=48))
        info = await nc.jsm().stream_info(subjects.EVENTS_STREAM)
        assert info.config.max_age == 48 * 3600
    finally:
        await nc.close()
        await gw.stop()


async def test_a_gateway_started_before_jetstream_creates_the_streams_once_it_is_up() -> None:
    # A cluster that has just formed (or a server restarted with JetStream) answers stream
    # setup with an error for a while: the gateway keeps trying, it does not give up once.
    port = free_port()
    with private_nats_server(port=port) as url:
        gw = Gateway(settings=_settings(url, events_retention_h=1), use_vad=False)
        await gw.start()
        assert gw.connected
    try:
        with private_nats_server(jetstream=True, port=port):
            nc = await nats.connect(url)
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        await nc.jsm().stream_info(subjects.EVENTS_STREAM)
                        await nc.jsm().stream_info(subjects.AUDIT_STREAM)
                        break
                    except NotFoundError:
                        assert time.monotonic() < deadline, "streams never created"
                        await asyncio.sleep(0.2)
            finally:
                await nc.close()
    finally:
        await gw.stop()


async def test_without_jetstream_the_platform_runs_and_says_so() -> None:
    with private_nats_server() as url:
        nc = await nats.connect(url)
        try:
            assert not await asyncio.wait_for(callevents.ensure_stream(nc, _settings(url)), 10)
        finally:
            await nc.close()


async def test_replay_and_calls_show_a_finished_call(js_url: str) -> None:
    sid = "CA" + uuid4().hex
    nc = await nats.connect(js_url)
    try:
        assert await callevents.ensure_stream(nc, _settings(js_url))
        await _publish_call(nc, sid)
        stored = await callevents.read_call(nc, sid)
        kinds = [m.subject.rsplit(".", 1)[-1] for m in stored]
        assert kinds == ["control", "events", "transcript", "reply", "events", "control", "events"]
        calls = await callevents.recent_calls(nc, since=time.time() - 60)
        mine = next(c for c in calls if c.call_sid == sid)
        assert mine.turns == 1 and mine.latency_p50_ms == 700.0 and mine.duration_s == 4.5
    finally:
        await nc.close()

    lines: list[str] = []
    args = argparse.Namespace(
        call_sid=sid, show_text=False, nats_url=js_url, stage=None, color=False
    )
    assert await ops_cli.run_replay(args, out=lines.append) == 0
    assert len(lines) == 7 and "[PHONE]" in lines[2] and "415" not in "".join(lines)
    assert "Thanks, noted." in lines[3]
    assert not any("audio" in line.split()[1] for line in lines)

    # Unredacted replay is PHI access: it is written to the audit trail first.
    shown: list[str] = []
    args = argparse.Namespace(
        call_sid=sid, show_text=True, nats_url=js_url, stage="asr", color=False
    )
    assert await ops_cli.run_replay(args, out=shown.append) == 0
    assert shown and all(" asr " in line for line in shown)
    assert "415 555 0100" in shown[0]
    nc = await nats.connect(js_url)
    try:
        records = await audit.query(nc, call_sid=sid)
        assert [r.action for r in records] == ["call.replay"]
    finally:
        await nc.close()

    table: list[str] = []
    args = argparse.Namespace(since=1.0, limit=50, show_sids=True, nats_url=js_url)
    assert await ops_cli.run_calls(args, out=table.append) == 0
    row = next(line for line in table if sid in line)
    assert "4.5 s" in row and "700" in row

    missing: list[str] = []
    args = argparse.Namespace(
        call_sid="CA" + uuid4().hex, show_text=False, nats_url=js_url, stage=None, color=False
    )
    assert await ops_cli.run_replay(args, out=missing.append) == 1
    assert "nothing stored" in missing[0]
