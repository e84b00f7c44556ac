"""Security controls as pure logic: rate limits, trusted proxies, admin auth, stream tokens,
Redis TLS options, encrypted recordings and their retention."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from services.gateway.auth import AdminAuth, parse_tokens
from services.gateway.limits import (
    RateLimiter,
    candidate_urls,
    client_ip,
    forwarded_base,
    parse_networks,
)
from services.gateway.recording import RecordingStore, recording_store
from services.gateway.security import CallTokens, SharedTokenLedger
from shared.callstate import call_key, redis_options
from shared.settings import Settings

TRUSTED = parse_networks("10.0.0.0/8, 127.0.0.1")


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_rate_limit_is_per_client_and_refills() -> None:
    clock = Clock()
    rl = RateLimiter(rate_per_s=1.0, burst=3, clock=clock)
    assert [rl.allow("1.2.3.4") for _ in range(4)] == [True, True, True, False]
    assert rl.allow("5.6.7.8"), "another client has its own bucket"
    clock.t += 1.0
    assert rl.allow("1.2.3.4") and not rl.allow("1.2.3.4")
    assert RateLimiter(rate_per_s=0, burst=1).allow("x"), "0 disables the limit"


def test_rate_limiter_memory_is_bounded_under_address_spray() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1, max_keys=100)
    for i in range(5000):
        rl.allow(f"203.0.113.{i}")
    assert len(rl._buckets) == 100


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    # An untrusted peer cannot choose its bucket by sending X-Forwarded-For.
    assert client_ip("198.51.100.7", "1.1.1.1", TRUSTED) == "198.51.100.7"
    # Behind trusted proxies: the last hop that is not one of ours is the client.
    assert client_ip("10.0.0.5", "1.1.1.1, 198.51.100.9, 10.0.0.4", TRUSTED) == "198.51.100.9"
    assert client_ip("10.0.0.5", None, TRUSTED) == "10.0.0.5"
    assert client_ip("10.0.0.5", "1.1.1.1", ()) == "10.0.0.5", "no trusted proxies configured"


def test_signed_url_candidates_public_url_first_proxy_view_only_when_trusted() -> None:
    hdrs = {"x-forwarded-proto": "https", "x-forwarded-host": "edge.example.com"}
    assert forwarded_base("198.51.100.7", hdrs, TRUSTED) is None
    fwd = forwarded_base("10.1.2.3", hdrs, TRUSTED)
    assert fwd == ("https", "edge.example.com")
    assert candidate_urls("https://gw.example.com/base", "/voice", None, ws=False) == [
        "https://gw.example.com/base/voice"
    ]
    assert candidate_urls("https://gw.example.com", "/twilio-stream", fwd, ws=True) == [
        "wss://gw.example.com/twilio-stream",
        "wss://edge.example.com/twilio-stream",
    ]
    assert candidate_urls("http://127.0.0.1:8080", "/voice", ("http", "h:1"), ws=False) == [
        "http://127.0.0.1:8080/voice",
        "http://h:1/voice",
    ]
    # Hostile host values are ignored, not spliced into a URL.
    for bad in ("evil.com/x", "a@b", "h h", ""):
        assert forwarded_base("10.1.2.3", {**hdrs, "x-forwarded-host": bad}, TRUSTED) is None


def test_admin_tokens_named_actors_and_refusals() -> None:
    auth = AdminAuth.from_setting("ann:tok-ann-1234567890,bob:tok-bob-0987654321")
    assert auth.actor("Bearer tok-ann-1234567890") == "ann"
    assert auth.actor("bearer tok-bob-0987654321") == "bob"
    for bad in (
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic tok-ann-1234567890",
        "Bearer tok-ann-123456789",
        "Bearer tok-ann-12345678901",
        "tok-ann-1234567890",
        "Bearer " + "x" * 5000,
    ):
        assert auth.actor(bad) is None, bad
    assert AdminAuth.from_setting("single").actor("Bearer single") == "admin"
    assert not AdminAuth.from_setting("").configured
    assert AdminAuth.from_setting("").actor("Bearer ") is None
    with pytest.raises(ValueError):
        parse_tokens("ann:,bob:x")


def test_admin_token_any_printable_secret_is_one_token_and_ambiguity_is_refused() -> None:
    # Base64 secrets (padding '=', '+', '/') are one token, never split at '=' (once, "abc=="
    # made "=" the admin token and refused the real one).
    for secret in ("q83vEjRWeJA+/Zx9LmN0pQ==", "dGhpcy1pcy1hLXRva2Vu=", "a+b/c", "abc-123_~!"):
        auth = AdminAuth.from_setting(secret)
        assert auth.actor(f"Bearer {secret}") == "admin", secret
        for part in ("=", "==", secret.rstrip("=")):
            if part != secret:
                assert auth.actor(f"Bearer {part}") is None, (secret, part)
    assert parse_tokens("  spaced-secret-1234  ") == {"admin": "spaced-secret-1234"}
    # Each ambiguous value is refused with one line that names ADMIN_TOKEN and never the secret.
    for bad in (
        "ann=t1,bob=t2",  # the retired name=token form
        "ann=tok-ann-1234567890",
        "ann:short",  # a named token must be a real secret
        "ann:tok-ann-1234567890,ann:tok-ann-0987654321",  # a name twice
        "ann:tok-same-1234567890,bob:tok-same-1234567890",  # a token twice
        "ann:tok:extra-1234567890",
        "has space-1234567890",
        "tab\tsecret",
        "naïve-secret-1234567890",
        "bad name:tok-ann-1234567890",
        "ann:tok-ann-1234567890,",
    ):
        with pytest.raises(ValueError) as e:
            parse_tokens(bad)
        msg = str(e.value)
        assert msg.startswith("ADMIN_TOKEN") and "\n" not in msg, bad
        assert "1234567890" not in msg and "t2" not in msg, bad


def test_stream_token_is_call_bound_single_use_and_short_lived() -> None:
    clock = Clock()
    tokens = CallTokens(secret=b"k", ttl_s=60, clock=clock)
    a, b = "CA" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex
    t = tokens.issue(a)
    assert not tokens.redeem(t, b), "bound to its call"
    assert tokens.redeem(t, a)
    assert not tokens.redeem(t, a), "single use"
    late = tokens.issue(a)
    clock.t += 62
    assert not tokens.redeem(late, a), "expired"
    forged = tokens.issue(a).rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAAAA"
    assert not tokens.redeem(forged, a)
    other_key = CallTokens(secret=b"other", ttl_s=60, clock=clock)
    assert not other_key.redeem(tokens.issue(a), a)


async def test_token_replayed_on_another_replica_is_refused_via_redis(redis_url: str) -> None:
    from redis.asyncio import Redis

    # Two replicas keyed by the same auth token: each alone would accept the token once.
    r1, r2 = CallTokens(secret=b"same", ttl_s=60), CallTokens(secret=b"same", ttl_s=60)
    l1 = SharedTokenLedger(redis=Redis.from_url(redis_url))
    l2 = SharedTokenLedger(redis=Redis.from_url(redis_url))
    call = "CA" + uuid.uuid4().hex
    tok = r1.issue(call)
    try:
        assert r1.redeem(tok, call) and await l1.first_use(tok)
        assert r2.redeem(tok, call), "replica 2 has never seen it in memory"
        assert not await l2.first_use(tok), "but the shared ledger has"
        # Redis down: the in-process check stands and calls go on.
        dead = SharedTokenLedger(redis=Redis.from_url("redis://127.0.0.1:1"), timeout_s=0.2)
        assert await dead.first_use(r1.issue(call))
        await dead.aclose()
    finally:
        await l1.aclose()
        await l2.aclose()


def test_redis_tls_and_auth_options_pass_through() -> None:
    s = Settings(
        redis_url="rediss://cache.internal:6380/0",
        redis_password=SecretStr("pw-123"),
        redis_tls_ca_file="/etc/ssl/ca.pem",
    )
    opts = redis_options(s)
    assert opts == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/ssl/ca.pem",
        "password": "pw-123",
    }
    from redis.asyncio import Redis
    from redis.asyncio.connection import SSLConnection

    client = Redis.from_url(s.redis_url, **opts)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    kw = pool.connection_kwargs
    assert kw["host"] == "cache.internal" and kw["port"] == 6380
    assert kw["password"] == "pw-123" and kw["ssl_ca_certs"] == "/etc/ssl/ca.pem"
    # A password in the URL wins over REDIS_PASSWORD.
    c2 = Redis.from_url("rediss://:inurl@h:6380/0", **opts)
    assert c2.connection_pool.connection_kwargs["password"] == "inurl"
    assert redis_options(Settings(redis_url="redis://h:6379/0")) == {}
    assert call_key("hist", "CA1") == "va:hist:{CA1}"  # hash tag: one slot per call


def test_recordings_are_encrypted_at_rest_and_tamper_evident(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    store = RecordingStore(directory=tmp_path, key=key, retention_s=86400)
    call = "CA" + uuid.uuid4().hex
    audio = b"caller said my date of birth" * 100
    path = store.save(call, audio)
    on_disk = path.read_bytes()
    assert audio[:20] not in on_disk and b"birth" not in on_disk
    assert path.stat().st_mode & 0o777 == 0o600
    assert store.load(call) == audio
    wrong = RecordingStore(directory=tmp_path, key=Fernet.generate_key(), retention_s=86400)
    assert wrong.load(call) is None
    path.write_bytes(on_disk[:-5] + b"AAAAA")
    assert store.load(call) is None, "tampering is detected, not decrypted into garbage"
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_streamed_recordings_hold_one_chunk_and_refuse_reordered_cut_or_moved_chunks(
    tmp_path: Path,
) -> None:
    key = Fernet.generate_key()
    store = RecordingStore(directory=tmp_path, key=key, retention_s=86400)
    call, other = "CA" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex
    w = store.writer(call, chunk_bytes=800)
    frames = [bytes([i]) * 160 for i in range(23)]
    for f in frames:
        w.add(f)
        assert w.buffered < 800, "bounded memory: at most one chunk is held"
    assert not store.path(call).exists(), "in place only once the call is over"
    path = w.close()
    assert store.load(call) == b"".join(frames)
    lines = path.read_bytes().split(b"\n")[:-1]
    assert len(lines) == 5  # 4 full chunks and the last (partial) one
    for tampered in (
        [lines[1], lines[0], *lines[2:]],  # reordered
        lines[:-1],  # cut before the last chunk
        [*lines[:2], *lines[3:]],  # a chunk dropped
    ):
        path.write_bytes(b"".join(x + b"\n" for x in tampered))
        assert store.load(call) is None
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    store.path(call).rename(store.path(other))
    assert store.load(other) is None, "another call's chunks do not pass as this call's"
    # Past the call's cap, frames are dropped, the writer still closes cleanly.
    capped = store.writer(call, chunk_bytes=800, max_bytes=320)
    for f in frames:
        capped.add(f)
    capped.close()
    assert store.load(call) == frames[0] + frames[1]
    # A recording written whole as one token (before streaming) still loads.
    legacy = Fernet(key).encrypt(b"old recording")
    store.path(call).write_bytes(legacy)
    assert store.load(call) == b"old recording"


def test_retention_purge_uses_the_authenticated_timestamp(tmp_path: Path) -> None:
    clock = Clock(time.time())
    store = RecordingStore(
        directory=tmp_path, key=Fernet.generate_key(), retention_s=30 * 86400, clock=clock
    )
    old, new = "CA" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex
    store.save(old, b"\x01" * 800)
    clock.t += 20 * 86400
    store.save(new, b"\x02" * 800)
    store.path(old).touch()  # a fresh mtime does not extend its life
    (tmp_path / f"CAjunk{'0' * 28}.ulaw.fernet").write_bytes(b"not a token")
    clock.t += 11 * 86400
    assert store.purge() == 2
    assert not store.path(old).exists() and store.load(new) == b"\x02" * 800


def test_recordings_off_by_default_and_need_a_valid_key(tmp_path: Path) -> None:
    assert recording_store(Settings()) is None
    with pytest.raises(ValueError, match="RECORDING_KEY is empty"):
        recording_store(Settings(record_calls=True))
    with pytest.raises(ValueError, match="not a valid Fernet key") as e:
        recording_store(Settings(record_calls=True, recording_key=SecretStr("short-secret")))
    assert "short-secret" not in str(e.value)
