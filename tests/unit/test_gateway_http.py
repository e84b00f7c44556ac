"""Gateway HTTP side: /voice signatures and TwiML, the WebSocket upgrade check, health, tokens."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

from services.gateway.app import create_app
from services.gateway.runtime import Gateway
from services.gateway.security import CallTokens
from services.gateway.twiml import PARAM_CALL_SID, PARAM_TOKEN, connect_twiml
from shared.settings import Settings

TOKEN = "test-auth-token"
PUBLIC = "https://gw.example.com"


def make_settings(nats_url: str, **over: object) -> Settings:
    base: dict[str, object] = {
        "nats_url": nats_url,
        "twilio_auth_token": SecretStr(TOKEN),
        "public_url": PUBLIC,
        "max_calls": 2,
    }
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def client(nats_url: str) -> Iterator[TestClient]:
    settings = make_settings(nats_url)
    app = create_app(settings=settings, gateway=Gateway(settings=settings, use_vad=False))
    with TestClient(app) as c:
        yield c


def sid() -> str:
    return "CA" + uuid.uuid4().hex


def form(call_sid: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "+15551234567",
        "To": "+15557654321",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


def signed_post(client: TestClient, params: dict[str, str], *, url: str = PUBLIC + "/voice"):  # type: ignore[no-untyped-def]
    sig = RequestValidator(TOKEN).compute_signature(url, params)
    return client.post("/voice", data=params, headers={"X-Twilio-Signature": sig})


def stream_of(twiml: str) -> ET.Element:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    connect = root.find("Connect")
    assert connect is not None, twiml
    stream = connect.find("Stream")
    assert stream is not None
    return stream


def test_voice_answers_connect_stream_with_call_bound_parameters(client: TestClient) -> None:
    call = sid()
    r = signed_post(client, form(call))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    stream = stream_of(r.text)
    assert stream.get("url") == "wss://gw.example.com/twilio-stream"
    assert "?" not in (stream.get("url") or "")
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params[PARAM_CALL_SID] == call
    assert params[PARAM_TOKEN]
    # The token is for this call only, and only once.
    tokens: CallTokens = client.app.state.gateway.tokens  # type: ignore[attr-defined]
    assert not tokens.redeem(params[PARAM_TOKEN], sid())
    assert tokens.redeem(params[PARAM_TOKEN], call)
    assert not tokens.redeem(params[PARAM_TOKEN], call)


def test_voice_refuses_bad_or_missing_signature(client: TestClient) -> None:
    params = form(sid())
    assert client.post("/voice", data=params).status_code == 403
    wrong = RequestValidator("another-token").compute_signature(PUBLIC + "/voice", params)
    r = client.post("/voice", data=params, headers={"X-Twilio-Signature": wrong})
    assert r.status_code == 403
    # Signed over the local socket's URL instead of the public one: refused.
    r = signed_post(client, params, url="http://testserver/voice")
    assert r.status_code == 403
    # A tampered parameter breaks the signature.
    sig = RequestValidator(TOKEN).compute_signature(PUBLIC + "/voice", params)
    tampered = dict(params, From="+15550000000")
    r = client.post("/voice", data=tampered, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 403


def test_voice_over_capacity_apologizes_and_hangs_up(client: TestClient) -> None:
    for _ in range(2):  # max_calls=2: admitted calls count until their stream starts
        assert stream_of(signed_post(client, form(sid())).text) is not None
    r = signed_post(client, form(sid()))
    root = ET.fromstring(r.text)
    assert root.find("Connect") is None
    assert root.find("Say") is not None and (root.find("Say").text or "").strip()  # type: ignore[union-attr]
    assert root.find("Hangup") is not None


def test_draining_turns_calls_away_and_health_fails(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    client.app.state.gateway.begin_drain()  # type: ignore[attr-defined]
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "draining"
    assert client.get("/livez").status_code == 200  # a liveness probe must not kill the drain
    root = ET.fromstring(signed_post(client, form(sid())).text)
    assert root.find("Connect") is None and root.find("Hangup") is not None


def test_metrics_exposes_gateway_series(client: TestClient) -> None:
    signed_post(client, form(sid()))
    text = client.get("/metrics").text
    assert "voice_active_calls" in text and "voice_frames_total" in text


def test_no_api_schema_or_docs_for_strangers(client: TestClient) -> None:
    # The route list (the operator API's included) is not served to whoever asks.
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 404, path


def test_stream_upgrade_with_bad_or_missing_signature_is_refused(client: TestClient) -> None:
    wrong = RequestValidator("another-token").compute_signature(
        "wss://gw.example.com/twilio-stream", {}
    )
    for headers in ({}, {"X-Twilio-Signature": wrong}):
        with pytest.raises(WebSocketDisconnect) as e:
            with client.websocket_connect("/twilio-stream", headers=headers):
                pass
        assert e.value.code == 1008


def test_stream_upgrade_signed_over_wss_url_is_accepted(client: TestClient) -> None:
    sig = RequestValidator(TOKEN).compute_signature("wss://gw.example.com/twilio-stream", {})
    with client.websocket_connect("/twilio-stream", headers={"X-Twilio-Signature": sig}) as ws:
        ws.send_text('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        ws.send_text("not json")  # dropped, the socket stays open
        ws.send_text('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        ws.close()


def test_health_is_503_without_the_bus() -> None:
    settings = make_settings("nats://127.0.0.1:1")
    gw = Gateway(settings=settings, use_vad=False)
    import services.gateway.runtime as runtime

    old, runtime.CONNECT_WAIT_S = runtime.CONNECT_WAIT_S, 0.2
    try:
        with TestClient(create_app(settings=settings, gateway=gw)) as c:
            r = c.get("/healthz")
            assert r.status_code == 503 and r.json()["status"] == "disconnected"
            root = ET.fromstring(signed_post(c, form(sid())).text)
            assert root.find("Hangup") is not None
    finally:
        runtime.CONNECT_WAIT_S = old


def test_call_tokens_expire_and_verify_across_replicas() -> None:
    now = [1000.0]
    a = CallTokens(secret=b"k", ttl_s=60, clock=lambda: now[0])
    b = CallTokens(secret=b"k", ttl_s=60, clock=lambda: now[0])
    other = CallTokens(secret=b"other", ttl_s=60, clock=lambda: now[0])
    call = sid()
    t1, t2 = a.issue(call), a.issue(call)
    assert not other.redeem(t1, call)
    assert b.redeem(t1, call)  # another replica with the same auth token accepts it
    now[0] += 120
    assert not a.redeem(t2, call)  # expired
    assert not a.redeem("garbage", call) and not a.redeem(None, call)


def test_connect_twiml_rejects_query_strings() -> None:
    with pytest.raises(ValueError):
        connect_twiml(stream_url="wss://h/twilio-stream?x=1", call_sid="CA1", token="t")
