"""ElastiCache IAM auth against a real redis-server: the ACL user's password is our token.

The provider signs with fixed AWS credentials (from the standard environment variables) and
a frozen clock, so the token is reproducible: the test gives the Redis ACL user exactly that
token as its password, connects through the services' client factory, then moves the clock
past the refresh point, rotates the ACL password to the token for the new time and checks
that a new connection signs and uses it (the old token is refused). The token is also checked
as a SigV4 presigned URL, recomputed here from the AWS specification.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote

import pytest
import redis
import redis.asyncio as aioredis

from shared import redis_iam
from shared.callstate import redis_client
from shared.redis_iam import REFRESH_AFTER_S, ElastiCacheIamAuth
from shared.settings import Settings
from tests.redisservers import redis_server

pytestmark = pytest.mark.integration

AKID, SECRET = "AKIDEXAMPLE000000001", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
USER, CACHE, REGION = "voiceagent-iam", "voice-cache", "eu-west-1"
T0 = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


class Clock:
    """One frozen instant for both our refresh logic and botocore's signature timestamp."""

    def __init__(self) -> None:
        self.at = T0

    def now(self) -> dt.datetime:
        return self.at

    def epoch(self) -> float:
        return self.at.timestamp()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr("botocore.auth.get_current_datetime", c.now)
    monkeypatch.setattr(redis_iam, "_now", c.epoch)
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield c


def expected_token(at: dt.datetime) -> str:
    """The SigV4 presigned ``connect`` URL for ``at``, computed from the spec (not botocore)."""
    stamp, day = at.strftime("%Y%m%dT%H%M%SZ"), at.strftime("%Y%m%d")
    scope = f"{day}/{REGION}/elasticache/aws4_request"
    params = {
        "Action": "connect",
        "User": USER,
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{AKID}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": "900",
        "X-Amz-SignedHeaders": "host",
    }
    query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    empty_body = hashlib.sha256(b"").hexdigest()  # a GET: the hash of an empty payload
    canonical = f"GET\n/\n{query}\nhost:{CACHE}\n\nhost\n{empty_body}"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{SECRET}".encode()
    for part in (day, REGION, "elasticache", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{CACHE}/?{query}&X-Amz-Signature={signature}"


def _same_token(a: str, b: str) -> bool:
    """Equal up to parameter order."""
    host_a, _, qa = a.partition("/?")
    host_b, _, qb = b.partition("/?")
    return host_a == host_b and sorted(parse_qsl(qa)) == sorted(parse_qsl(qb))


def test_the_token_is_a_sigv4_presigned_connect_request(clock: Clock) -> None:
    token = ElastiCacheIamAuth(user=USER, cache_name=CACHE, region=REGION).token()
    assert _same_token(token, expected_token(T0)), token


async def test_redis_accepts_the_token_and_a_new_one_after_the_refresh(clock: Clock) -> None:
    s = Settings(  # type: ignore[call-arg]
        _env_file=None, redis_user=USER, redis_iam_cache_name=CACHE, redis_iam_region=REGION
    )
    token0 = ElastiCacheIamAuth(user=USER, cache_name=CACHE, region=REGION).token()
    with redis_server() as port:
        admin = redis.Redis(port=port)
        admin.acl_setuser(
            "admin",
            enabled=True,
            passwords=["+admin-pw"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        admin.acl_setuser(
            USER,
            enabled=True,
            passwords=[f"+{token0}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        admin.acl_setuser("default", enabled=False)
        admin = redis.Redis(port=port, username="admin", password="admin-pw")
        url = f"redis://127.0.0.1:{port}/0"
        client: aioredis.Redis = redis_client(url, settings=s, decode_responses=True)
        try:
            assert await client.acl_whoami() == USER
            # Within the refresh window a new connection reuses the token (no re-sign).
            clock.at = T0 + dt.timedelta(seconds=REFRESH_AFTER_S - 60)
            await client.connection_pool.disconnect()
            assert await client.acl_whoami() == USER

            # Past it, a new connection signs a new token: the server now takes only that one.
            clock.at = T0 + dt.timedelta(seconds=REFRESH_AFTER_S + 1)
            token1 = expected_token(clock.at)
            assert not _same_token(token1, token0)
            admin.acl_setuser(
                USER,
                reset_passwords=True,
                passwords=[f"+{_as_signed(token1)}"],
                enabled=True,
                keys=["*"],
                channels=["*"],
                commands=["+@all"],
            )
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=port, username=USER, password=token0).ping()
            await client.connection_pool.disconnect()
            assert await client.acl_whoami() == USER
            await client.set("va:tok:x", "1")
            assert admin.get("va:tok:x") == b"1"
        finally:
            await client.aclose()


def _as_signed(spec_token: str) -> str:
    """Our provider's byte-exact token for the current frozen time (order as botocore emits)."""
    token = ElastiCacheIamAuth(user=USER, cache_name=CACHE, region=REGION).token()
    assert _same_token(token, spec_token), (token, spec_token)
    return token


def test_missing_iam_settings_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="REDIS_USER, REDIS_IAM_CACHE_NAME") as e:
        ElastiCacheIamAuth(user="", cache_name=CACHE, region=REGION)
    assert "\n" not in str(e.value)
