"""Console endpoints: admin auth, the console call's TwiML-equivalent answer, the softphone's
upgrade token (single use, bound to its call), Twilio's checks unchanged, and the live feed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.websockets import WebSocketDisconnect

from services.gateway.app import create_app
from services.gateway.console import backfill
from services.gateway.console.feed import feed_item
from services.gateway.console.routes import twiml_parameters
from services.gateway.runtime import Gateway
from services.gateway.twiml import connect_twiml
from shared import audit, subjects
from shared.messages import Transcript, event
from shared.metrics import BAD_MESSAGES
from shared.settings import Settings

ADMIN = "console-test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def make_client(nats_url: str, **over: object) -> tuple[TestClient, Gateway]:
    base: dict[str, object] = {
        "nats_url": nats_url,
        "twilio_auth_token": SecretStr("twilio-secret"),
        "public_url": "https://gw.example.com",
        "admin_token": SecretStr(ADMIN),
        "redis_url": "",
    }
    base.update(over)
    settings = Settings(**base)  # type: ignore[arg-type]
    gw = Gateway(settings=settings, use_vad=False)
    return TestClient(create_app(settings=settings, gateway=gw)), gw


@pytest.fixture
def client(nats_url: str) -> Iterator[tuple[TestClient, Gateway]]:
    c, gw = make_client(nats_url)
    with c:
        yield c, gw


def start_frame(info: dict[str, object], *, call_sid: str | None = None) -> str:
    sid = call_sid or str(info["call_sid"])
    stream = "MZ" + uuid.uuid4().hex
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream,
            "start": {
                "streamSid": stream,
                "accountSid": info["account_sid"],
                "callSid": sid,
                "tracks": ["inbound"],
                "customParameters": info["parameters"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def wait_for(pred: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_console_is_off_without_an_admin_token(nats_url: str) -> None:
    c, _ = make_client(nats_url, admin_token=SecretStr(""))
    with c:
        page = c.get("/console")
        assert page.status_code == 404
        assert "ADMIN_TOKEN" in page.text
        assert c.post("/console/call", headers=AUTH).status_code == 404
        assert c.get("/console/static/softphone.js").status_code == 404
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect("/console/feed") as ws:
                ws.receive_text()


def test_page_is_served_with_a_strict_policy(client: tuple[TestClient, Gateway]) -> None:
    c, _ = client
    page = c.get("/console")
    assert page.status_code == 200
    assert "Call" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    js = c.get("/console/static/softphone.js")
    assert js.status_code == 200 and "text/javascript" in js.headers["content-type"]
    assert c.get("/console/static/../app.py").status_code == 404
    assert c.get("/console/static/console.html").status_code == 404  # only the listed assets


def test_console_call_needs_the_admin_token(client: tuple[TestClient, Gateway]) -> None:
    c, _ = client
    assert c.post("/console/call").status_code == 401
    r = c.post("/console/call", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_console_call_answers_what_twilio_would_get(client: tuple[TestClient, Gateway]) -> None:
    c, gw = client
    r = c.post("/console/call", headers=AUTH)
    assert r.status_code == 200, r.text
    info = r.json()
    sid = info["call_sid"]
    assert info["stream_url"] == "wss://gw.example.com/twilio-stream"
    assert info["stream_path"] == "/twilio-stream"
    assert info["parameters"]["callSid"] == sid
    # The same TwiML /voice answers, read back as Twilio would: the <Parameter>s match.
    url, params = twiml_parameters(
        connect_twiml(stream_url=info["stream_url"], call_sid=sid, token="t")
    )
    assert url == info["stream_url"] and set(params) == set(info["parameters"])
    assert gw.tokens.pending == 1  # admitted like a /voice call (counts against MAX_CALLS)


def test_softphone_socket_starts_its_call_once(client: tuple[TestClient, Gateway]) -> None:
    c, gw = client
    info = c.post("/console/call", headers=AUTH).json()
    sid = info["call_sid"]
    with c.websocket_connect("/twilio-stream", subprotocols=info["protocols"]) as ws:
        assert ws.accepted_subprotocol == "voiceagent-console"
        ws.send_text('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        ws.send_text(start_frame(info))
        assert wait_for(lambda: sid in gw.calls), "the console call did not start"
        stream = gw.calls[sid].stream_sid
        ws.send_text(json.dumps({"event": "stop", "streamSid": stream, "stop": {"callSid": sid}}))
    assert wait_for(lambda: sid not in gw.calls)
    # The upgrade token was single use.
    with pytest.raises(WebSocketDisconnect) as e:
        with c.websocket_connect("/twilio-stream", subprotocols=info["protocols"]) as ws:
            ws.receive_text()
    assert e.value.code == 1008


def test_softphone_token_cannot_start_another_call(client: tuple[TestClient, Gateway]) -> None:
    c, gw = client
    mine = c.post("/console/call", headers=AUTH).json()
    other = c.post("/console/call", headers=AUTH).json()
    # Upgrade with my console token, then try to start the other call with its own call token.
    with c.websocket_connect("/twilio-stream", subprotocols=mine["protocols"]) as ws:
        ws.send_text(start_frame(other))
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()
    assert e.value.code == 1008
    assert other["call_sid"] not in gw.calls


def test_forged_console_tokens_and_unsigned_twilio_upgrades_are_refused(
    client: tuple[TestClient, Gateway],
) -> None:
    c, _ = client
    info = c.post("/console/call", headers=AUTH).json()
    forged = [info["protocols"][0], info["protocols"][1][:-4] + "AAAA"]
    for protocols in (forged, ["voiceagent-console"], None):
        with pytest.raises(WebSocketDisconnect) as e:
            with c.websocket_connect("/twilio-stream", subprotocols=protocols) as ws:
                ws.receive_text()
        assert e.value.code == 1008


def test_feed_refuses_a_wrong_token(client: tuple[TestClient, Gateway]) -> None:
    c, _ = client
    with c.websocket_connect("/console/feed") as ws:
        ws.send_text(json.dumps({"token": "wrong"}))
        assert json.loads(ws.receive_text()) == {"kind": "error", "text": "admin token required"}
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()
    assert e.value.code == 1008


def test_feed_streams_transcripts_and_timings(client: tuple[TestClient, Gateway]) -> None:
    c, gw = client
    sid = "CA" + uuid.uuid4().hex
    opened = time.time() - 1
    with c.websocket_connect("/console/feed") as ws:
        ws.send_text(json.dumps({"token": ADMIN}))
        hello = json.loads(ws.receive_text())
        assert hello["kind"] == "hello" and isinstance(hello["calls"], list)
        assert gw.nc is not None
        said = Transcript(call_sid=sid, utterance_id=1, text="hello there", is_final=True)
        timing = event(
            call_sid=sid, service="gateway", name="turn.first_audio", turn=1, voice_to_voice_ms=812
        )
        c.portal.call(gw.nc.publish, subjects.transcript(sid), said.to_bytes())
        c.portal.call(gw.nc.publish, subjects.audio_out(sid), b"\xff" * 160)  # never shown
        c.portal.call(gw.nc.publish, subjects.events(sid), timing.to_bytes())
        items: list[dict[str, object]] = []
        while len([i for i in items if i["call"] == sid]) < 2:
            msg = json.loads(ws.receive_text())
            items += msg.get("items", [])
    mine = [i for i in items if i["call"] == sid]
    assert mine[0]["kind"] == "caller" and mine[0]["text"] == "hello there"
    assert mine[1]["name"] == "turn.first_audio"
    assert mine[1]["data"] == {"voice_to_voice_ms": 812}
    # Watching live transcripts is recorded in the audit trail (who, from where; no content).
    records = c.portal.call(partial(audit.query, gw.nc, since=opened, actor="admin"))
    assert any(r.action == "console.watch" for r in records)


def test_malformed_bus_messages_are_counted_and_dropped() -> None:
    bad = BAD_MESSAGES.labels("gateway", "console")
    before = bad._value.get()
    assert feed_item("voice.CA1.transcript", b"{not json") is None
    assert feed_item("voice.CA1.audio.out", b"\xff") is None
    assert bad._value.get() == before + 1


def test_up_prints_a_console_link_that_carries_a_single_token() -> None:
    from voiceagent.cli import console_url
    from voiceagent.stack import StackInfo

    base = {
        "gateway_url": "http://127.0.0.1:8080",
        "public_url": "http://127.0.0.1:8080",
        "nats_url": "nats://127.0.0.1:4222",
        "redis_url": "",
        "auth_token": "t",
        "account_sid": "AC1",
    }
    one = StackInfo(**base, admin_token="abc-123")
    assert console_url(one) == "http://127.0.0.1:8080/console#token=abc-123"
    pairs = StackInfo(**base, admin_token="ann=t1,bob=t2")
    assert console_url(pairs) == "http://127.0.0.1:8080/console"  # the page asks which one


def feed_until(ws: Any, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Every item the feed sends until ``done(items)`` (history and live alike)."""
    items: list[dict[str, Any]] = []
    while not done(items):
        msg = json.loads(ws.receive_text())
        items += msg.get("items", [])
    return items


def test_feed_sends_the_stored_past_first_then_live_each_message_once(
    client: tuple[TestClient, Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, gw = client
    assert gw.nc is not None
    nc = gw.nc
    portal = c.portal
    assert portal is not None
    sid = "CA" + uuid.uuid4().hex

    def said(u: int, text: str) -> bytes:
        return Transcript(call_sid=sid, utterance_id=u, text=text, is_final=True).to_bytes()

    started = event(call_sid=sid, service="gateway", name="call.started", gateway="gw")
    portal.call(nc.publish, subjects.events(sid), started.to_bytes())
    portal.call(nc.publish, subjects.transcript(sid), said(1, "before the page opened"))
    portal.call(nc.flush)
    time.sleep(0.3)  # stored by JetStream
    real_load = backfill.load

    async def load_after_one_more(*args: Any, **kwargs: Any) -> backfill.Backfill:
        # Published once the viewer is subscribed but before the store is read: both
        # the live subscription and the store have it, and the page must get it once.
        await nc.publish(subjects.transcript(sid), said(2, "while the store was read"))
        await nc.flush()
        await asyncio.sleep(0.3)
        return await real_load(*args, **kwargs)

    monkeypatch.setattr(backfill, "load", load_after_one_more)
    with c.websocket_connect("/console/feed") as ws:
        ws.send_text(json.dumps({"token": ADMIN}))
        assert json.loads(ws.receive_text())["history"] is True
        portal.call(nc.publish, subjects.transcript(sid), said(3, "after the page opened"))

        def texts(items: list[dict[str, Any]]) -> list[str]:
            return [i["text"] for i in items if i.get("call") == sid and i["kind"] == "caller"]

        items = feed_until(ws, lambda got: "after the page opened" in texts(got))
    assert texts(items) == [
        "before the page opened",
        "while the store was read",
        "after the page opened",
    ]


def test_feed_without_the_event_store_is_live_only() -> None:
    from tests.natsserver import private_nats_server

    with private_nats_server(jetstream=True) as url:  # fresh: no VOICE_EVENTS stream
        c, gw = make_client(url, events_retention_h=0.0)
        with c, c.websocket_connect("/console/feed") as ws:
            ws.send_text(json.dumps({"token": ADMIN}))
            hello = json.loads(ws.receive_text())
            assert hello["kind"] == "hello" and hello["history"] is False
            portal, sid = c.portal, "CA" + uuid.uuid4().hex
            assert portal is not None and gw.nc is not None
            said = Transcript(call_sid=sid, utterance_id=1, text="still live", is_final=True)
            portal.call(gw.nc.publish, subjects.transcript(sid), said.to_bytes())
            items = feed_until(ws, lambda got: any(i.get("call") == sid for i in got))
    assert [i["text"] for i in items if i.get("call") == sid] == ["still live"]
