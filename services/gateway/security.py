"""Twilio request signatures and the per-call stream token.

Both ``/voice`` and the WebSocket upgrade are signed by Twilio (``X-Twilio-Signature``) over the
*public* URL, which is rebuilt from ``PUBLIC_URL``, never from the local socket (behind a proxy
the two differ). The stream token is a second, call-bound check on the ``start`` message: an
HMAC over the call SID and an expiry, so any gateway replica can verify a token another replica
issued; single use is enforced per process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from twilio.request_validator import RequestValidator, get_signature_algorithm

from shared.logging import kv

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-twilio-signature"
SIGNATURE_SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"


def signature_valid(
    *,
    auth_token: str,
    url: str,
    params: Mapping[str, Any],
    signature: str | None,
    settings_header: str | None = None,
) -> bool:
    """Whether ``signature`` is Twilio's for ``url`` and ``params`` (False when missing)."""
    if not signature or not auth_token:
        return False
    algorithm = get_signature_algorithm(settings_header)
    return bool(RequestValidator(auth_token).validate(url, params, signature, algorithm))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CallTokens:
    """Short-lived, single-use tokens bound to a call SID (``<expiry>.<nonce>.<mac>``)."""

    def __init__(
        self, *, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hashlib.sha256(b"voiceagent call token\0" + secret).digest()
        self._ttl = ttl_s
        self._clock = clock
        self._used: dict[str, float] = {}  # nonce -> expiry (replays refused until then)
        self._issued: dict[str, float] = {}  # nonce -> expiry (admitted, stream not started)

    @classmethod
    def from_auth_token(cls, auth_token: str, *, ttl_s: float) -> CallTokens:
        """Keyed by the Twilio auth token (every replica agrees); random if there is none."""
        secret = auth_token.encode() if auth_token else secrets.token_bytes(32)
        return cls(secret=secret, ttl_s=ttl_s)

    def _mac(self, call_sid: str, expiry: int, nonce: str) -> str:
        msg = f"{call_sid}.{expiry}.{nonce}".encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest()[:18])

    def issue(self, call_sid: str) -> str:
        """A new token for ``call_sid``."""
        self._prune()
        expiry = int(self._clock() + self._ttl) + 1
        nonce = _b64(secrets.token_bytes(12))
        self._issued[nonce] = expiry
        return f"{expiry}.{nonce}.{self._mac(call_sid, expiry, nonce)}"

    def redeem(self, token: str | None, call_sid: str) -> bool:
        """True once for a valid, unexpired token of ``call_sid``; False ever after."""
        if not token or len(token) > 128:
            return False
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expiry, nonce, mac = int(parts[0]), parts[1], parts[2]
        if expiry < self._clock():
            return False
        if not hmac.compare_digest(mac, self._mac(call_sid, expiry, nonce)):
            return False
        self._prune()
        if nonce in self._used:
            return False
        self._used[nonce] = expiry
        self._issued.pop(nonce, None)
        return True

    @property
    def pending(self) -> int:
        """Calls admitted by ``/voice`` whose stream has not started (nor expired) yet."""
        self._prune()
        return len(self._issued)

    def _prune(self) -> None:
        now = self._clock()
        for table in (self._used, self._issued):
            if table and min(table.values()) < now:
                for nonce in [n for n, exp in table.items() if exp < now]:
                    del table[nonce]


def signature_valid_any(
    *,
    auth_token: str,
    urls: list[str],
    params: Mapping[str, Any],
    signature: str | None,
    settings_header: str | None = None,
) -> bool:
    """Whether ``signature`` is Twilio's for one of ``urls`` (PUBLIC_URL's first, then a
    trusted proxy's ``X-Forwarded-Proto``/``-Host`` view of the same path)."""
    return any(
        signature_valid(
            auth_token=auth_token,
            url=url,
            params=params,
            signature=signature,
            settings_header=settings_header,
        )
        for url in urls
    )


class SharedTokenLedger:
    """Single use across gateway replicas: the first ``SET NX`` of a token's nonce in Redis wins.

    Twilio may reach any replica, and each :class:`CallTokens` only remembers the tokens it
    redeemed itself. With Redis, a replayed token is refused by every replica. When Redis does
    not answer, the in-process check still holds (a Redis outage degrades, never kills a call).
    """

    def __init__(self, *, redis: Any, timeout_s: float = 0.3) -> None:
        self._redis = redis
        self._timeout = timeout_s

    @classmethod
    def from_settings(cls, settings: Any) -> SharedTokenLedger | None:
        if not settings.redis_url:
            return None
        from redis.asyncio import Redis

        from shared.callstate import redis_options

        client = Redis.from_url(
            settings.redis_url,
            socket_timeout=0.3,
            socket_connect_timeout=0.3,
            **redis_options(settings),
        )
        return cls(redis=client)

    async def first_use(self, token: str) -> bool:
        """True unless another replica (or this one) already used ``token``."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expiry, nonce = int(parts[0]), parts[1]
        key = f"va:tok:{nonce}"
        try:
            ok = await asyncio.wait_for(
                self._redis.set(key, b"1", nx=True, exat=max(expiry, int(time.time()) + 1)),
                self._timeout,
            )
        except Exception as e:  # Redis down or slow: the in-process check stands
            log.warning("token ledger unavailable", **kv(error=type(e).__name__))
            return True
        return bool(ok)

    async def aclose(self) -> None:
        await self._redis.aclose()
