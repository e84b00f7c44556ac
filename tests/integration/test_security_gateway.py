"""Gateway security over HTTP: /voice rate limits and proxy trust, privileged endpoints behind a
bearer token, transcript and recording export with an append-only audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from services.gateway.app import create_app
from services.gateway.runtime import Gateway
from shared import audit, subjects
from shared.callstate import HEARD, HISTORY, call_key
from shared.settings import Settings
from tests.natsserver import private_nats_server
from voiceagent.security_cli import parse_since, run_audit

TOKEN = "test-auth-token"
PUBLIC = "https://gw.example.com"
ADMIN = "ann:ann-token-7f3e9c1b,bob:bob-token-2d8a6e40"
ANN = {"Authorization": "Bearer ann-token-7f3e9c1b"}
PRIVILEGED = ("/calls", "/websocket-status", "/websocket-metrics")


@pytest.fixture(scope="module")
def js_url() -> Iterator[str]:
    """A private NATS with JetStream (the audit stream must not land on the shared server)."""
    with private_nats_server(jetstream=True) as url:
        yield url


def settings_for(nats_url: str, redis_url: str, **over: object) -> Settings:
    base: dict[str, object] = {
        "nats_url": nats_url,
        "redis_url": redis_url,
        "twilio_auth_token": SecretStr(TOKEN),
        "public_url": PUBLIC,
        "admin_token": SecretStr(ADMIN),
        "trusted_proxies": "10.0.0.0/8",
        "voice_rate_per_min": 60.0,
        "voice_rate_burst": 3,
    }
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@contextlib.contextmanager
def client_for(settings: Settings, peer: str = "198.51.100.7") -> Iterator[TestClient]:
    app = create_app(settings=settings, gateway=Gateway(settings=settings, use_vad=False))
    with TestClient(app, client=(peer, 40000)) as c:
        yield c


def voice(c: TestClient, *, url: str = PUBLIC + "/voice", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    params = {"CallSid": "CA" + uuid.uuid4().hex, "From": "+15551234567"}
    sig = RequestValidator(TOKEN).compute_signature(url, params)
    return c.post("/voice", data=params, headers={"X-Twilio-Signature": sig, **(headers or {})})


def test_voice_rate_limit_per_source_and_forwarded_for_only_via_trusted_proxy(
    js_url: str, redis_url: str
) -> None:
    s = settings_for(js_url, redis_url)
    with client_for(s) as c:
        # Direct client: 3 burst, then 429 whatever X-Forwarded-For it invents.
        codes = [voice(c, headers={"X-Forwarded-For": f"1.1.1.{i}"}).status_code for i in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    with client_for(s, peer="10.0.0.9") as c:
        # Behind a trusted proxy, each forwarded client has its own bucket.
        first = [voice(c, headers={"X-Forwarded-For": "203.0.113.1"}).status_code for _ in range(4)]
        other = voice(c, headers={"X-Forwarded-For": "203.0.113.2"}).status_code
        assert first == [200, 200, 200, 429] and other == 200
    # Oversized bodies are refused before they are read whole.
    with client_for(s) as c:
        r = c.post("/voice", content=b"A=" + b"x" * 70_000, headers={"X-Twilio-Signature": "x"})
        assert r.status_code == 413


def test_signature_over_the_forwarded_url_counts_only_from_a_trusted_proxy(
    js_url: str, redis_url: str
) -> None:
    s = settings_for(js_url, redis_url)
    edge = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example.net"}
    with client_for(s, peer="10.0.0.9") as c:
        assert voice(c, url="https://edge.example.net/voice", headers=edge).status_code == 200
        assert voice(c).status_code == 200, "PUBLIC_URL stays valid behind the proxy"
    with client_for(s, peer="198.51.100.7") as c:
        assert voice(c, url="https://edge.example.net/voice", headers=edge).status_code == 403


def test_privileged_endpoints_need_the_bearer_token(js_url: str, redis_url: str) -> None:
    call = "CA" + uuid.uuid4().hex
    paths = [*PRIVILEGED, f"/calls/{call}/transcript", f"/calls/{call}/recording"]
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic YW5uOmFubi10b2tlbi03ZjNlOWMxYg=="},
        {"Authorization": "Bearer ann-token-7f3e9c1"},
        {"X-Admin-Token": "ann-token-7f3e9c1b"},
    ]
    with client_for(settings_for(js_url, redis_url)) as c:
        for path in paths:
            for h in bad_headers:
                r = c.get(path, headers=h)
                assert r.status_code == 401, (path, h)
                assert r.headers.get("www-authenticate") == "Bearer"
        status = c.get("/websocket-status", headers=ANN)
        assert status.status_code == 200 and status.json()["connected"] is True
        assert c.get("/calls", headers=ANN).json()["calls"] == []
        assert "voice_websocket_streams 0.0" in c.get("/websocket-metrics", headers=ANN).text
    # No ADMIN_TOKEN configured: nothing opens them, not even an empty bearer.
    with client_for(settings_for(js_url, redis_url, admin_token=SecretStr(""))) as c:
        for path in PRIVILEGED:
            assert c.get(path, headers={"Authorization": "Bearer "}).status_code == 401


def _seed_history(redis_url: str, call: str) -> None:
    r = redis.Redis.from_url(redis_url)
    entries = [
        {"role": "user", "content": "I need to move my appointment", "_turn": 1},
        {
            "role": "assistant",
            "content": "Sure. Which day works?",
            "_turn": 1,
            "_seq0": 0,
            "_segs": ["Sure.", "Which day works?"],
        },
        {"role": "assistant", "tool_calls": [{"id": "t1"}], "_turn": 1},
    ]
    r.rpush(call_key(HISTORY, call), *[json.dumps(e) for e in entries])
    r.hset(call_key(HEARD, call), "1", json.dumps({"seq": 1, "text": "Which"}))
    for k in (HISTORY, HEARD):
        r.expire(call_key(k, call), 120)
    r.close()


def test_transcript_export_is_audited_with_ids_only(js_url: str, redis_url: str) -> None:
    call, missing = "CA" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex
    _seed_history(redis_url, call)
    with client_for(settings_for(js_url, redis_url), peer="10.0.0.9") as c:
        r = c.get(f"/calls/{call}/transcript", headers={**ANN, "X-Forwarded-For": "192.0.2.44"})
        assert r.status_code == 200
        turns = r.json()["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant"]
        assert turns[0]["text"] == "I need to move my appointment"
        assert turns[1]["interrupted"] == {"seq": 1, "heard": "Which"}
        bob = {"Authorization": "Bearer bob-token-2d8a6e40"}
        assert c.get(f"/calls/{missing}/transcript", headers=bob).status_code == 404
        assert c.get("/calls/CA..%2A/transcript", headers=bob).status_code in (400, 404)

    async def read() -> list[audit.AuditRecord]:
        nc = await nats.connect(js_url)
        try:
            return await audit.query(nc, since=time.time() - 60)
        finally:
            await nc.drain()

    records = {r.call_sid: r for r in asyncio.run(read())}
    got = records[call]
    assert (got.actor, got.action, got.outcome, got.client) == (
        "ann",
        "transcript.export",
        "ok",
        "192.0.2.44",
    )
    assert (records[missing].actor, records[missing].outcome) == ("bob", "not_found")
    raw = json.dumps([r.model_dump() for r in records.values()])
    assert "appointment" not in raw and "Which" not in raw and "+1555" not in raw

    # `voiceagent audit` shows them.
    lines: list[str] = []
    args = type(
        "A",
        (),
        {
            "since": parse_since("1h"),
            "call_sid": call,
            "actor": None,
            "limit": 100,
            "json": False,
            "nats_url": js_url,
        },
    )()
    assert asyncio.run(run_audit(args, out=lines.append)) == 0  # type: ignore[arg-type]
    assert len(lines) == 1 and "ann" in lines[0] and call in lines[0]


def test_audit_stream_is_append_only(js_url: str) -> None:
    async def run() -> None:
        nc = await nats.connect(js_url)
        try:
            info = await audit.ensure_stream(nc, max_age_days=2190)
            cfg = info.config
            assert cfg.deny_delete and cfg.deny_purge and cfg.max_age == pytest.approx(2190 * 86400)
            log = audit.AuditLog(nc=nc, service="t", max_age_days=2190)
            await log.record(actor="ann", action="recording.export", call_sid="CA" + "9" * 32)
            jsm = nc.jsm()
            last = (await jsm.stream_info(subjects.AUDIT_STREAM)).state.last_seq
            with pytest.raises(Exception, match=r"(?i)delete"):
                await jsm.delete_msg(subjects.AUDIT_STREAM, last)
            with pytest.raises(Exception, match=r"(?i)purge"):
                await jsm.purge_stream(subjects.AUDIT_STREAM)
            assert (await jsm.stream_info(subjects.AUDIT_STREAM)).state.last_seq == last
        finally:
            await nc.drain()

    asyncio.run(run())


def test_export_refused_when_the_audit_trail_is_unavailable(redis_url: str) -> None:
    # A NATS without JetStream: the record cannot be stored, so the transcript is not served.
    with private_nats_server() as url:
        call = "CA" + uuid.uuid4().hex
        _seed_history(redis_url, call)
        with client_for(settings_for(url, redis_url)) as c:
            r = c.get(f"/calls/{call}/transcript", headers=ANN)
            assert r.status_code == 503 and "appointment" not in r.text


def test_recording_export_decrypts_and_is_audited(
    js_url: str, redis_url: str, tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    s = settings_for(
        js_url, redis_url, record_calls=True, recording_key=SecretStr(key), recording_dir=tmp_path
    )
    call = "CA" + uuid.uuid4().hex
    with client_for(s) as c:
        gw: Gateway = c.app.state.gateway  # type: ignore[attr-defined]
        assert gw.recordings is not None
        gw.recordings.save(call, b"\x7f" * 1600)
        r = c.get(f"/calls/{call}/recording", headers=ANN)
        assert r.status_code == 200 and r.content == b"\x7f" * 1600

    async def read() -> list[audit.AuditRecord]:
        nc = await nats.connect(js_url)
        try:
            return await audit.query(nc, call_sid=call)
        finally:
            await nc.drain()

    assert [(r.action, r.actor) for r in asyncio.run(read())] == [("recording.export", "ann")]
